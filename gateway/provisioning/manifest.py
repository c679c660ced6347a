"""A kit's signed manifest: the SHA-256 of every file, signed with the root CA key.

``manifest.json`` lists each file of the kit with its hash; ``manifest.sig`` is
an ECDSA (SHA-256) signature over the exact bytes of ``manifest.json``, made by
the federation's root CA, base64 encoded. Whoever holds the CA certificate can
thus tell a kit as provisioned from one that was edited since. Files that the
manifest does not list (a workspace, the relay's ``crl.pem``, which the CA signs
itself) are not covered and a kit must not depend on them being genuine.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from ..core.exceptions import ConfigError

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
FORMAT = 1
_SIGNATURE_ALGORITHM = ec.ECDSA(hashes.SHA256())


class ManifestError(ConfigError):
    """A kit whose manifest does not vouch for its files; the message says which."""


@dataclass(frozen=True)
class Manifest:
    """What a kit holds: its participant, and each file's SHA-256 (hex)."""

    project: str
    participant: str
    role: str
    files: Mapping[str, str]

    def to_bytes(self) -> bytes:
        data = {
            "format": FORMAT,
            "project": self.project,
            "participant": self.participant,
            "role": self.role,
            "files": dict(sorted(self.files.items())),
        }
        return (json.dumps(data, indent=2) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        try:
            parsed: Any = json.loads(data)
            if not isinstance(parsed, dict) or parsed.get("format") != FORMAT:
                raise ValueError(f"unknown manifest format {parsed.get('format')!r}")
            files = parsed["files"]
            if not isinstance(files, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in files.items()
            ):
                raise ValueError("'files' must map file names to hashes")
            return cls(
                project=str(parsed["project"]),
                participant=str(parsed["participant"]),
                role=str(parsed["role"]),
                files=files,
            )
        except (ValueError, KeyError, AttributeError) as exc:
            raise ManifestError(f"{MANIFEST} is malformed: {exc}") from None


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(
    kit: Path, names: Iterable[str], *, project: str, participant: str, role: str
) -> Manifest:
    """The manifest of the files ``names`` of ``kit`` as they are now."""
    return Manifest(
        project=project,
        participant=participant,
        role=role,
        files={name: file_hash(kit / name) for name in names},
    )


def sign(manifest: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    """The contents of ``manifest.sig`` for the exact bytes ``manifest``."""
    return base64.b64encode(key.sign(manifest, _SIGNATURE_ALGORITHM)) + b"\n"


def write(kit: Path, manifest: Manifest, key: ec.EllipticCurvePrivateKey) -> None:
    """Write ``manifest.json`` and its signature ``manifest.sig`` into ``kit``."""
    data = manifest.to_bytes()
    (kit / MANIFEST).write_bytes(data)
    (kit / SIGNATURE).write_bytes(sign(data, key))


def verify(kit: Path, ca_cert: x509.Certificate) -> Manifest:
    """The kit's manifest, if ``ca_cert`` signed it and every listed file matches.

    Raises :class:`ManifestError` naming the first problem found.
    """
    try:
        data = (kit / MANIFEST).read_bytes()
        encoded = (kit / SIGNATURE).read_bytes()
    except FileNotFoundError as exc:
        raise ManifestError(
            f"{Path(exc.filename).name} is missing: not a kit made by `flgate provision`"
        ) from None
    try:
        signature = base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error:
        raise ManifestError(f"{SIGNATURE} is not base64: the kit was edited") from None
    public_key = ca_cert.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise ManifestError("the root CA's key is not an ECDSA key; not a flgate kit")
    try:
        public_key.verify(signature, data, _SIGNATURE_ALGORITHM)
    except InvalidSignature:
        raise ManifestError(
            f"the signature in {SIGNATURE} does not match {MANIFEST} under the root CA: "
            "the manifest was edited, or the kit comes from another federation"
        ) from None
    manifest = Manifest.from_bytes(data)
    for name, expected in sorted(manifest.files.items()):
        path = kit / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ManifestError(f"{MANIFEST} lists {name!r}, which is outside the kit")
        if not path.is_file():
            raise ManifestError(f"{name} is missing from the kit")
        if file_hash(path) != expected:
            raise ManifestError(
                f"{name} was changed after provisioning (its SHA-256 does not match "
                f"{MANIFEST}); restore it or ask the project admin for a new kit"
            )
    return manifest
