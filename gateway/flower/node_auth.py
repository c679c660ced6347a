"""Flower's SuperNode authentication: node key pairs, signed timestamps, SuperLink TLS.

Facts of flwr 1.41 (the same in 1.39) that this module rests on, never importing flwr:

- A node key is an ECDSA key on a NIST curve (Flower documents P-384, i.e.
  ``ssh-keygen -t ecdsa -b 384``). ``flower-supernode --auth-supernode-private-key``
  reads the private key in **OpenSSH** format; ``flwr supernode register`` reads
  the public key as one **OpenSSH** line.
- On every Fleet call the SuperNode sends its public key as PEM
  SubjectPublicKeyInfo, base64-encoded (``flwr-public-key``), an ISO-8601
  timestamp (``flwr-timestamp``) and an ECDSA-SHA256 signature over the
  timestamp's ASCII bytes, base64-encoded (``flwr-signature``). The SuperLink
  accepts a timestamp between -5 s and +305 s old.
- ``flower-superlink --enable-supernode-auth`` refuses ``--insecure``, and
  ``flower-supernode --auth-supernode-private-key`` refuses ``--insecure`` too
  (exit code 303). So with node auth, the job's SuperLink serves TLS to the
  relay and each site's LGS serves TLS to its SuperNode, both on loopback with
  certificates from a CA of their own (:func:`write_loopback_tls`).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ..core.config import LoopbackTLS
from ..core.exceptions import ConfigError
from ..core.identity import Role
from ..provisioning.certs import CertificateAuthority, cert_pem, key_pem, write_private

PRIVATE_KEY_FILE = "flower-node.key"
PUBLIC_KEY_FILE = "flower-node.pub"
PUBLIC_KEY_HEADER = "flwr-public-key"
TIMESTAMP_HEADER = "flwr-timestamp"
SIGNATURE_HEADER = "flwr-signature"
NIST_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
"""The NIST curves Flower accepts (it also takes P-192/P-224; we never make those)."""


def generate_node_key(private_path: Path, public_path: Path | None = None) -> str:
    """Write a new P-384 node key pair; return the public key's OpenSSH line.

    The private key is written in OpenSSH format, readable by its owner only
    (0600), because that is the only format ``flower-supernode`` reads.
    """
    key = ec.generate_private_key(ec.SECP384R1())
    private_path.parent.mkdir(parents=True, exist_ok=True)
    write_private(
        private_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    line = openssh_public_key(key.public_key())
    if public_path is not None:
        public_path.write_text(line + "\n")
    return line


def _check_curve(key: object, what: str) -> ec.EllipticCurvePublicKey:
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise ConfigError(f"{what} is not an ECDSA key; make one with `ssh-keygen -t ecdsa -b 384`")
    if not isinstance(public.curve, NIST_CURVES):
        raise ConfigError(f"{what} uses curve {public.curve.name}; Flower needs a NIST curve")
    return public


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """A node's private key in OpenSSH format; the error says what to fix.

    Like ssh, a key that others can read is refused: whoever reads it can act
    as this site's SuperNode.
    """
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the Flower node key {path}: {exc.strerror}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"the Flower node key {path} is readable by others (mode {stat.S_IMODE(mode):o}); "
            f"run `chmod 600 {path}`"
        )
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(
            f"{path} is not an unencrypted OpenSSH private key ({exc}); make one with "
            f"`ssh-keygen -t ecdsa -b 384 -N '' -f {path.name}`"
        ) from exc
    _check_curve(key, str(path))
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def load_public_key(line: str | bytes) -> ec.EllipticCurvePublicKey:
    """A public key from its OpenSSH line (``ecdsa-sha2-nistp384 AAAA... comment``)."""
    data = line.encode() if isinstance(line, str) else line
    try:
        key = serialization.load_ssh_public_key(data.strip())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"not an OpenSSH public key: {exc}") from exc
    return _check_curve(key, "the public key")


def openssh_public_key(key: ec.EllipticCurvePublicKey) -> str:
    """The one-line OpenSSH form that ``flwr supernode register`` reads."""
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode("ascii")


def flower_public_key(key: ec.EllipticCurvePublicKey) -> bytes:
    """The bytes Flower stores for a node and sends (base64) as ``flwr-public-key``."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """``SHA256:...`` as ``ssh-keygen -l`` prints it: safe to log, easy to compare."""
    blob = base64.b64decode(openssh_public_key(key).split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def sign_timestamp(key: ec.EllipticCurvePrivateKey, timestamp: str) -> bytes:
    """Flower's node signature: ECDSA-SHA256 over the timestamp's ASCII bytes."""
    return key.sign(timestamp.encode("ascii"), ec.ECDSA(hashes.SHA256()))


def verify_timestamp(key: ec.EllipticCurvePublicKey, timestamp: str, signature: bytes) -> bool:
    """True when ``signature`` is ``key``'s signature of ``timestamp``."""
    try:
        key.verify(signature, timestamp.encode("ascii"), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def fleet_auth_headers(
    key: ec.EllipticCurvePrivateKey, *, now: dt.datetime | None = None
) -> dict[str, str]:
    """The headers a flwr >= 1.40 SuperNode puts on each Fleet HTTP call."""
    timestamp = (now or dt.datetime.now(dt.timezone.utc)).isoformat()
    return {
        PUBLIC_KEY_HEADER: base64.b64encode(flower_public_key(key.public_key())).decode("ascii"),
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: base64.b64encode(sign_timestamp(key, timestamp)).decode("ascii"),
    }


def write_loopback_tls(directory: Path, *, name: str) -> LoopbackTLS:
    """TLS material for one loopback server, from a CA made for it alone.

    Flower speaks node authentication only over TLS, on both hops that it
    sees: SuperNode -> LGS on a site, and relay -> SuperLink. Both servers are
    on 127.0.0.1 and only local processes connect, so a CA whose key is never
    written to disk, with one certificate for 127.0.0.1, is all the trust needed.
    """
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    ca = CertificateAuthority.create(f"{name} loopback")
    cert, key = ca.issue(name, Role.RELAY, hosts=("127.0.0.1", "localhost"))
    tls = LoopbackTLS.in_directory(directory)
    tls.ca_cert.write_bytes(cert_pem(ca.cert))
    tls.cert.write_bytes(cert_pem(cert))
    write_private(tls.key, key_pem(key))
    return tls
