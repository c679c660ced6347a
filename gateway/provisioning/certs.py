"""Issue X.509 certificates from a federation root CA (ECDSA P-256).

Every participant's certificate carries its name as CN and its role as OU (see
:mod:`gateway.core.identity`); an admin's also carries its admin role as ``title``.
Server certificates (the relay) also carry the DNS names and IP addresses that
sites dial, as subject alternative names.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..core.config import TLSConfig
from ..core.exceptions import ConfigError
from ..core.identity import AdminRole, Role

DEFAULT_VALIDITY = dt.timedelta(days=365)


@dataclass(frozen=True)
class CertificateAuthority:
    """A root CA: its certificate and private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(
        cls, project: str, *, validity: dt.timedelta = DEFAULT_VALIDITY
    ) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, f"{project} root CA"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, project),
            ]
        )
        now = dt.datetime.now(dt.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(cert=cert, key=key)

    @classmethod
    def load(cls, cert_pem: bytes, key_pem: bytes) -> CertificateAuthority:
        """The CA from its PEM files; ``ConfigError`` if they do not belong together."""
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
            key = serialization.load_pem_private_key(key_pem, password=None)
        except ValueError as exc:
            raise ConfigError(f"cannot load the root CA: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError("the root CA key is not an ECDSA key (as created by flgate)")
        if cert.public_key() != key.public_key():
            raise ConfigError("the root CA key does not belong to the root CA certificate")
        return cls(cert=cert, key=key)

    def issue(
        self,
        name: str,
        role: Role,
        *,
        hosts: tuple[str, ...] = (),
        validity: dt.timedelta = DEFAULT_VALIDITY,
        not_before: dt.datetime | None = None,
        admin_role: AdminRole | None = None,
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A certificate for participant ``name``; ``hosts`` make it a server cert too.

        An admin certificate always names its admin role (``project_admin`` unless
        ``admin_role`` says otherwise): a relay reads a missing one as ``member``.
        """
        if admin_role is not None and role is not Role.ADMIN:
            raise ValueError(f"an admin role is for admin certificates, not {role.value}")
        key = ec.generate_private_key(ec.SECP256R1())
        start = not_before or dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
        org = self.cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        attributes = [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role.value),
            *org,
        ]
        if role is Role.ADMIN:
            title = (admin_role or AdminRole.PROJECT_ADMIN).value
            attributes.append(x509.NameAttribute(NameOID.TITLE, title))
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attributes))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if hosts:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_general_name(h) for h in hosts]), critical=False
            )
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        return builder.sign(self.key, hashes.SHA256()), key


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_private(path: Path, data: bytes) -> None:
    """Write a secret readable by its owner only (0600), never world-readable."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def write_participant(
    directory: Path,
    ca: CertificateAuthority,
    name: str,
    role: Role,
    *,
    hosts: tuple[str, ...] = (),
) -> TLSConfig:
    """Issue a certificate for ``name`` and write rootCA.pem, <name>.crt, <name>.key."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = ca.issue(name, role, hosts=hosts)
    tls = TLSConfig(
        ca_cert=directory / "rootCA.pem",
        cert=directory / f"{name}.crt",
        key=directory / f"{name}.key",
    )
    tls.ca_cert.write_bytes(cert_pem(ca.cert))
    tls.cert.write_bytes(cert_pem(cert))
    write_private(tls.key, key_pem(key))
    return tls
