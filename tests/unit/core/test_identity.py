"""Who a certificate says its holder is: name (CN) and role (OU), edge relays included."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from gateway.core.exceptions import AuthError
from gateway.core.identity import Peer, Role, peer_from_certificate, peer_from_pem
from gateway.provisioning.certs import CertificateAuthority, cert_pem


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("identity")


def test_an_edge_certificate_names_the_edge_role(ca: CertificateAuthority) -> None:
    cert, _ = ca.issue("edge-1", Role.EDGE, hosts=("edge-1.plant.local",))
    ou = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    assert [a.value for a in ou] == ["edge"]
    peer = peer_from_pem(cert_pem(cert))
    assert peer == Peer("edge-1", Role.EDGE)
    assert (peer.admin_role, peer.serial, str(peer)) == (None, cert.serial_number, "edge:edge-1")


def test_an_edge_is_neither_a_site_nor_an_admin_of_the_same_name(
    ca: CertificateAuthority,
) -> None:
    edge = peer_from_certificate(ca.issue("alice", Role.EDGE)[0])
    assert edge != Peer("alice", Role.SITE) and edge != Peer("alice", Role.ADMIN)
    assert not edge.may_manage("alice")


def test_a_role_no_release_knows_is_refused_with_the_name_and_the_role(
    ca: CertificateAuthority,
) -> None:
    """What a relay of before edge relays does with an edge certificate, and this one
    with any other OU."""
    cert, key = ca.issue("x", Role.SITE)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "x"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "gateway"),
        ]
    )
    odd = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(cert.issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
        .sign(ca.key, cert.signature_hash_algorithm)  # type: ignore[arg-type]
    )
    with pytest.raises(AuthError, match="certificate of 'x' has unknown role 'gateway'"):
        peer_from_certificate(odd)
