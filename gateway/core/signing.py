"""Signatures made with a participant's key and checks of the certificate beside them, no I/O.

Where no connection proves who wrote something (an entry in a Redis stream, a
relay's share on the scale-out board), the writer signs it with the private key
of its participant certificate, ECDSA over SHA-256, and sends the certificate
along. A reader believes it only when :class:`CertificateChecker` finds that
certificate chained to the federation's root CA, valid now and not revoked,
and the signature verifies with the certificate's key (:func:`signature_matches`).
What is signed, and how it is framed, is the business of each format that uses
these primitives.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from .config import TLSConfig
from .exceptions import AuthError, ConfigError
from .identity import Peer, peer_from_certificate

_SIGNATURE = ec.ECDSA(hashes.SHA256())


class Signer:
    """Signs with a participant's key; the key must belong to the certificate."""

    def __init__(self, *, cert_pem: bytes, key_pem: bytes) -> None:
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
            cert = x509.load_pem_x509_certificate(cert_pem)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise ConfigError(f"cannot load the participant's certificate or key: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError("redis transports need an ECDSA key (as issued by flgate)")
        if cert.public_key() != key.public_key():
            raise ConfigError("the participant's private key does not belong to its certificate")
        self._key = key
        self.cert_pem = cert_pem
        self.peer = peer_from_certificate(cert)

    @classmethod
    def of(cls, tls: TLSConfig) -> Signer:
        """The signer of the participant whose certificate and key ``tls`` names."""
        return cls(cert_pem=tls.cert.read_bytes(), key_pem=tls.key.read_bytes())

    def sign(self, payload: bytes) -> bytes:
        """A DER ECDSA (SHA-256) signature of ``payload``."""
        return self._key.sign(payload, _SIGNATURE)


def signature_matches(key: ec.EllipticCurvePublicKey, signature: bytes, payload: bytes) -> bool:
    """Whether ``signature`` is :meth:`Signer.sign`'s of ``payload`` with ``key``'s private key."""
    try:
        key.verify(signature, payload, _SIGNATURE)
    except InvalidSignature:
        return False
    return True


MAX_CERT_BYTES = 16 * 1024
"""The largest certificate a signed entry or envelope may carry."""
MAX_SIGNATURE_BYTES = 256
"""The largest signature a signed entry or envelope may carry (ECDSA P-256 DER: ~72)."""


def staleness(ts_ms: int, *, now: float, max_skew: float, signer: str) -> str | None:
    """Why a signed timestamp (ms since the epoch) is not fresh at ``now``, or ``None``
    when it is within ``max_skew`` seconds of it; ``signer`` names whose clock to check."""
    skew = now - ts_ms / 1000
    if abs(skew) <= max_skew:
        return None
    return (
        f"its timestamp is {skew:+.1f} s from the relay's clock "
        f"(at most {max_skew:g} s allowed; check the {signer}'s clock)"
    )


@dataclass(frozen=True)
class _Known:
    peer: Peer
    key: ec.EllipticCurvePublicKey
    not_before: float
    not_after: float


def _ts(value: dt.datetime) -> float:
    return value.timestamp()


def _utc(timestamp: float) -> str:
    return f"{dt.datetime.fromtimestamp(timestamp, dt.timezone.utc):%Y-%m-%d %H:%M} UTC"


class CertificateChecker:
    """Verifies participants' certificates against the federation's root CA.

    Full RFC 5280 path validation (with a client-auth key usage) is costly, so a
    certificate that passed once is remembered by its digest; its validity
    period (and the CA's) and, given ``revoked`` (the federation's revocation
    list), its revocation are still checked on every use.
    """

    def __init__(
        self,
        ca_pem: bytes,
        *,
        cache_size: int = 1024,
        revoked: Callable[[Peer], str | None] | None = None,
    ) -> None:
        try:
            roots = x509.load_pem_x509_certificates(ca_pem)
        except ValueError as exc:
            raise ConfigError(f"cannot load the federation's root CA: {exc}") from exc
        self._store = Store(roots)
        self._ee_policy = ExtensionPolicy.webpki_defaults_ee().may_be_present(
            x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
        )
        self._cache: dict[bytes, _Known] = {}
        self._cache_size = cache_size
        self.revoked = revoked
        """Why a peer is revoked, or None; may be set once the revocation list is known."""

    def check(self, cert_pem: bytes, *, now: float) -> tuple[Peer, ec.EllipticCurvePublicKey]:
        """The peer and public key of a certificate valid at ``now``; else ``AuthError``."""
        digest = hashlib.sha256(cert_pem).digest()
        known = self._cache.get(digest)
        if known is None:
            known = self._verify(cert_pem, now)
            if len(self._cache) >= self._cache_size:
                del self._cache[next(iter(self._cache))]
            self._cache[digest] = known
        if now > known.not_after:
            raise AuthError(
                f"the certificate of {known.peer} (or its CA) expired on {_utc(known.not_after)}; "
                "it needs a new kit"
            )
        if now < known.not_before:
            raise AuthError(
                f"the certificate of {known.peer} is not valid before {_utc(known.not_before)}; "
                "check the clocks"
            )
        revocation = self.revoked(known.peer) if self.revoked is not None else None
        if revocation is not None:
            raise AuthError(revocation)
        return known.peer, known.key

    def _verify(self, cert_pem: bytes, now: float) -> _Known:
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError as exc:
            raise AuthError(f"the certificate is not valid PEM: {exc}") from exc
        when = dt.datetime.fromtimestamp(now, dt.timezone.utc)
        verifier = (
            PolicyBuilder()
            .store(self._store)
            .time(when)
            .extension_policies(
                ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=self._ee_policy
            )
            .build_client_verifier()
        )
        try:
            chain = verifier.verify(cert, []).chain
        except VerificationError as exc:
            reason = str(exc)
            if when > cert.not_valid_after_utc:
                expired = _utc(cert.not_valid_after_utc.timestamp())
                reason = f"it expired on {expired}; it needs a new kit"
            raise AuthError(
                f"the certificate of {cert.subject.rfc4514_string()!r} is not one of this "
                f"federation's (or not valid now): {reason}"
            ) from exc
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise AuthError("the certificate's key is not an ECDSA key")
        return _Known(
            peer=peer_from_certificate(cert),
            key=key,
            not_before=max(_ts(c.not_valid_before_utc) for c in chain),
            not_after=min(_ts(c.not_valid_after_utc) for c in chain),
        )
