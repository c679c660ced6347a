"""Revocation: the federation's certificate revocation list (X.509 CRL).

``flgate provision revoke`` writes a CRL signed by the root CA; the relay reads
it through :class:`RevocationList`, which checks the CA's signature and reads
the file again whenever it changes, so a running relay refuses a revoked
certificate without a restart. The CRL is the only thing the relay needs: it is
signed by the CA, so a copy can travel to the relay by any means (it is kept out
of the relay kit's manifest for that reason).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ..core.config import TLSConfig
from ..core.exceptions import ConfigError
from ..core.identity import Peer
from .certs import CertificateAuthority

log = logging.getLogger(__name__)

REASONS = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key_compromise": x509.ReasonFlags.key_compromise,
    "affiliation_changed": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessation_of_operation": x509.ReasonFlags.cessation_of_operation,
}
"""Reasons an operator may give (RFC 5280 reason codes)."""


@dataclass(frozen=True)
class Revocation:
    """One revoked certificate, as the CRL records it."""

    serial: int
    revoked_at: dt.datetime
    reason: str = "unspecified"

    def describe(self, peer: Peer | None = None) -> str:
        """Why a certificate is refused, in words an operator can act on."""
        who = f"the certificate of {peer}" if peer is not None else "this certificate"
        return (
            f"{who} (serial {self.serial:x}) was revoked on "
            f"{self.revoked_at:%Y-%m-%d %H:%M} UTC ({self.reason}) by the federation's "
            "revocation list; ask the project admin for a new kit"
        )


def build_crl(
    ca: CertificateAuthority,
    revoked: Iterable[Revocation],
    *,
    now: dt.datetime | None = None,
) -> x509.CertificateRevocationList:
    """A CRL signed by ``ca`` listing ``revoked`` (valid until the CA expires)."""
    last = now or dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(last)
        .next_update(max(ca.cert.not_valid_after_utc, last + dt.timedelta(days=1)))
    )
    for item in revoked:
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(item.serial)
            .revocation_date(item.revoked_at)
            .add_extension(x509.CRLReason(REASONS[item.reason]), critical=False)
            .build()
        )
        builder = builder.add_revoked_certificate(entry)
    return builder.sign(ca.key, hashes.SHA256())


def crl_pem(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.PEM)


def parse_crl(data: bytes, ca_cert: x509.Certificate) -> dict[int, Revocation]:
    """The revocations of a PEM CRL that ``ca_cert`` signed; ``ConfigError`` otherwise."""
    try:
        crl = x509.load_pem_x509_crl(data)
    except ValueError as exc:
        raise ConfigError(f"not a PEM certificate revocation list: {exc}") from exc
    public_key = ca_cert.public_key()
    if crl.issuer != ca_cert.subject or not (
        isinstance(public_key, ec.EllipticCurvePublicKey) and crl.is_signature_valid(public_key)
    ):
        raise ConfigError(
            "the revocation list is not signed by this federation's root CA; "
            "copy state/crl.pem from the provisioning workspace"
        )
    revocations: dict[int, Revocation] = {}
    for entry in crl:
        reason = "unspecified"
        try:
            flag = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
            reason = flag.name
        except x509.ExtensionNotFound:
            pass
        revocations[entry.serial_number] = Revocation(
            serial=entry.serial_number,
            revoked_at=entry.revocation_date_utc,
            reason=reason,
        )
    return revocations


class RevocationList:
    """The CRL file the relay checks every peer against, re-read when it changes.

    A file that turns unreadable or invalid while the relay runs keeps the last
    good list in force (and is logged): an attacker who can damage the file must
    not un-revoke anyone by doing so.
    """

    def __init__(
        self, path: Path, ca_cert: x509.Certificate, *, check_interval: float = 1.0
    ) -> None:
        self.path = path
        self._ca = ca_cert
        self._interval = check_interval
        self._next_check = 0.0
        self._stamp: tuple[int, int, int] | None = None
        try:
            self._revoked = parse_crl(path.read_bytes(), ca_cert)
            self._stamp = self._stat()
        except OSError as exc:
            raise ConfigError(f"cannot read the revocation list {path}: {exc}") from exc
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc

    def _stat(self) -> tuple[int, int, int]:
        info = os.stat(self.path)
        return info.st_mtime_ns, info.st_size, info.st_ino

    def _refresh(self) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + self._interval
        try:
            stamp = self._stat()
            if stamp == self._stamp:
                return
            revoked = parse_crl(self.path.read_bytes(), self._ca)
        except (OSError, ConfigError) as exc:
            log.error(
                "revocation list unusable; keeping the last good one",
                extra={"path": str(self.path), "error": str(exc)},
            )
            return
        self._stamp = stamp
        if revoked != self._revoked:
            log.info(
                "revocation list reloaded",
                extra={"path": str(self.path), "revoked": len(revoked)},
            )
        self._revoked = revoked

    def lookup(self, serial: int) -> Revocation | None:
        """The revocation of certificate ``serial``, if it is revoked."""
        self._refresh()
        return self._revoked.get(serial)

    def refusal(self, peer: Peer) -> str | None:
        """Why ``peer`` is refused, or ``None`` if its certificate is not revoked."""
        revocation = self.lookup(peer.serial)
        return revocation.describe(peer) if revocation is not None else None


def tls_ca(tls: TLSConfig) -> x509.Certificate:
    """The root CA certificate of a participant's TLS files (what signs the CRL)."""
    try:
        return x509.load_pem_x509_certificate(tls.ca_cert.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the root CA {tls.ca_cert}: {exc}") from exc
