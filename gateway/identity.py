"""Identities of participants, read from verified X.509 certificates.

The relay never trusts a name that a peer claims: a peer *is* the common name
(CN) of the client certificate that TLS verified against the federation's root
CA, and its role is the certificate's organizational unit (OU).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

from .exceptions import AuthError


class Role(str, enum.Enum):
    """What a certificate allows its holder to be."""

    RELAY = "relay"
    SITE = "site"
    ADMIN = "admin"


@dataclass(frozen=True)
class Peer:
    """A verified participant: its name and role, from its certificate."""

    name: str
    role: Role

    def __str__(self) -> str:
        return f"{self.role.value}:{self.name}"


def _single_attribute(subject: x509.Name, oid: x509.ObjectIdentifier, label: str) -> str:
    values = subject.get_attributes_for_oid(oid)
    if len(values) != 1:
        raise AuthError(f"certificate subject must have exactly one {label}, has {len(values)}")
    value = values[0].value
    return value.decode() if isinstance(value, bytes) else str(value)


def peer_from_certificate(cert: x509.Certificate) -> Peer:
    """The peer a (verified) certificate identifies."""
    name = _single_attribute(cert.subject, NameOID.COMMON_NAME, "common name (CN)")
    role_text = _single_attribute(
        cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME, "organizational unit (OU, the role)"
    )
    try:
        role = Role(role_text)
    except ValueError:
        raise AuthError(f"certificate of {name!r} has unknown role {role_text!r}") from None
    return Peer(name=name, role=role)


def peer_from_pem(pem: bytes) -> Peer:
    """The peer a PEM-encoded (verified) certificate identifies."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise AuthError(f"peer certificate is not valid PEM: {exc}") from exc
    return peer_from_certificate(cert)
