"""Identities of participants, read from verified X.509 certificates.

The relay never trusts a name that a peer claims: a peer *is* the common name
(CN) of the client certificate that TLS verified against the federation's root
CA, and its role is the certificate's organizational unit (OU). An admin's
certificate also says what the admin may do, in its ``title`` attribute
(:class:`AdminRole`); the serial number lets the relay refuse a revoked one.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.x509.oid import NameOID

from .exceptions import AuthError


class Role(str, enum.Enum):
    """What a certificate allows its holder to be."""

    RELAY = "relay"
    SITE = "site"
    ADMIN = "admin"
    EDGE = "edge"
    """An edge relay: carries the envelopes of the sites provisioned behind it to the
    central relay. It is no site and no admin: every check that asks for one of those
    roles refuses it, so it can neither call the Fleet API nor the control plane itself."""


class AdminRole(str, enum.Enum):
    """What an admin certificate allows (its subject's ``title`` attribute)."""

    PROJECT_ADMIN = "project_admin"
    """Everything: submit, read, abort and download any job."""
    MEMBER = "member"
    """Submit, list and read any job; abort and download only its own jobs."""


@dataclass(frozen=True)
class Peer:
    """A verified participant: its name and role, from its certificate.

    Two peers are equal when name and role are: the serial and the admin role
    describe the certificate, not who the peer is.
    """

    name: str
    role: Role
    serial: int = field(default=0, compare=False)
    """The certificate's serial number (0 when not known), for revocation checks."""
    admin_role: AdminRole | None = field(default=None, compare=False)
    """An admin's permissions; ``None`` for relays and sites."""

    @property
    def admin_role_name(self) -> str:
        """An admin's role as its refusals and pages name it (``member`` when unset)."""
        return (self.admin_role or AdminRole.MEMBER).value

    def may_manage(self, submitted_by: str) -> bool:
        """Whether this admin may abort or download a job that ``submitted_by`` submitted."""
        if self.role is not Role.ADMIN:
            return False
        return self.admin_role is AdminRole.PROJECT_ADMIN or submitted_by == self.name

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
    admin_role = _admin_role(cert, name) if role is Role.ADMIN else None
    return Peer(name=name, role=role, serial=cert.serial_number, admin_role=admin_role)


def _admin_role(cert: x509.Certificate, name: str) -> AdminRole:
    """The admin role in the subject's title; none at all means the least, ``member``."""
    titles = cert.subject.get_attributes_for_oid(NameOID.TITLE)
    if not titles:
        return AdminRole.MEMBER
    if len(titles) > 1:
        raise AuthError(f"certificate of {name!r} has {len(titles)} admin roles (title); needs one")
    text = titles[0].value
    text = text.decode() if isinstance(text, bytes) else str(text)
    try:
        return AdminRole(text)
    except ValueError:
        raise AuthError(
            f"certificate of {name!r} has unknown admin role {text!r} "
            f"(known: {', '.join(r.value for r in AdminRole)})"
        ) from None


@functools.lru_cache(maxsize=4096)
def peer_from_pem(pem: bytes) -> Peer:
    """The peer a PEM-encoded (verified) certificate identifies.

    Cached by the certificate's bytes: the relay reads the client certificate
    on every call, and parsing it was about 5 % of its CPU under load. A
    failure is not cached (it raises); revocation is checked by serial after.
    """
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise AuthError(f"peer certificate is not valid PEM: {exc}") from exc
    return peer_from_certificate(cert)
