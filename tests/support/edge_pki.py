"""Certificates of a federation with edge relays, in memory: what the signed-envelope
tests sign with and check against (a root CA, sites behind two edges, a direct site,
and a site of another federation)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization

from gateway.core.identity import Peer, Role
from gateway.core.signing import CertificateChecker, Signer
from gateway.core.site_signing import CarriedEnvelopes
from gateway.provisioning.certs import CertificateAuthority

EDGES = {"edge-a": ("site-a1", "site-a2"), "edge-b": ("site-b1",)}
"""Which sites sit behind which edge relay (as the relay kit's ``edges`` says)."""


def _signer(ca: CertificateAuthority, name: str, role: Role) -> Signer:
    cert, key = ca.issue(name, role)
    return Signer(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


@dataclass(frozen=True)
class EdgePKI:
    ca_pem: bytes
    signers: dict[str, Signer]
    """Every participant's signer by name: the sites, the edges (role edge), the relay."""
    foreign: Signer
    """A site named ``site-a1`` whose certificate another federation's CA issued."""

    @classmethod
    def create(cls) -> EdgePKI:
        ca = CertificateAuthority.create("edges")
        roles = {"site-a1": Role.SITE, "site-a2": Role.SITE, "site-b1": Role.SITE}
        roles |= {"site-d": Role.SITE, "edge-a": Role.EDGE, "edge-b": Role.EDGE}
        roles |= {"relay": Role.RELAY}
        signers = {name: _signer(ca, name, role) for name, role in roles.items()}
        foreign = _signer(CertificateAuthority.create("other"), "site-a1", Role.SITE)
        return cls(
            ca_pem=ca.cert.public_bytes(serialization.Encoding.PEM),
            signers=signers,
            foreign=foreign,
        )

    def peer(self, name: str) -> Peer:
        return self.signers[name].peer

    def carried(self, revoked: Callable[[Peer], str | None] | None = None) -> CarriedEnvelopes:
        """The central relay's checks, with the edges of :data:`EDGES`."""
        return CarriedEnvelopes(CertificateChecker(self.ca_pem, revoked=revoked), edges=EDGES)
