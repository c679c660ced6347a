"""Site-signed envelopes: what an edge relay may carry to the central relay, and what not."""

from __future__ import annotations

import time

import pytest

from gateway.core.envelope import make_envelope, now_ms
from gateway.core.exceptions import AuthError, ReplayError
from gateway.core.identity import Peer
from gateway.core.site_signing import NonceWindow, sign_envelope
from gateway.proto.envelope_pb2 import DIALECT_HTTP, Envelope
from tests.support.edge_pki import EdgePKI


@pytest.fixture(scope="module")
def pki() -> EdgePKI:
    return EdgePKI.create()


def call(site: str, *, body: bytes = b"model", message_id: str = "m1") -> Envelope:
    return make_envelope(
        job_id="job-1",
        site=site,
        method="PushMessages",
        dialect=DIALECT_HTTP,
        headers=[("flwr-timestamp", b"1")],
        body=body,
        deadline_unix_ms=now_ms() + 10_000,
        message_id=message_id,
    )


def signed(pki: EdgePKI, site: str, envelope: Envelope | None = None, *, at: float = 0) -> Envelope:
    return sign_envelope(pki.signers[site], envelope or call(site), now=at or time.time())


def test_an_edge_carries_an_envelope_of_a_site_behind_it(pki: EdgePKI) -> None:
    inner = call("site-a1")
    outer = signed(pki, "site-a1", inner)
    assert outer.body == b"" and not outer.headers  # the edge sees the routing fields only
    site, opened = pki.carried().open(pki.peer("edge-a"), outer, now=time.time())
    assert site == pki.peer("site-a1")
    assert opened == inner


def test_a_site_carries_its_own_signed_envelope(pki: EdgePKI) -> None:
    site, _ = pki.carried().open(pki.peer("site-d"), signed(pki, "site-d"), now=time.time())
    assert site == pki.peer("site-d")


def test_an_edge_may_not_carry_a_site_behind_another_edge(pki: EdgePKI) -> None:
    with pytest.raises(AuthError) as refused:
        pki.carried().open(pki.peer("edge-b"), signed(pki, "site-a1"), now=time.time())
    assert str(refused.value) == (
        "site:site-a1 is not provisioned behind edge relay 'edge-b' (it is provisioned "
        "behind edge relay 'edge-a'); edge:edge-b may carry only its own sites' envelopes"
    )


def test_an_edge_may_not_carry_a_site_that_dials_the_relay_directly(pki: EdgePKI) -> None:
    with pytest.raises(AuthError, match="it is provisioned to dial the relay directly"):
        pki.carried().open(pki.peer("edge-a"), signed(pki, "site-d"), now=time.time())


def test_an_edge_cannot_forge_a_sites_envelope_with_its_own_key(pki: EdgePKI) -> None:
    forged = sign_envelope(pki.signers["edge-a"], call("site-a1"), now=time.time())
    with pytest.raises(AuthError, match=r"^the envelope is signed by edge:edge-a, not by a site$"):
        pki.carried().open(pki.peer("edge-a"), forged, now=time.time())


def test_an_edge_cannot_change_a_signed_envelope(pki: EdgePKI) -> None:
    outer = signed(pki, "site-a1")
    inner = Envelope.FromString(outer.signed.envelope)
    inner.body = b"poisoned model"
    outer.signed.envelope = inner.SerializeToString()
    with pytest.raises(AuthError) as refused:
        pki.carried().open(pki.peer("edge-a"), outer, now=time.time())
    assert str(refused.value) == (
        "the site signature does not match the certificate of site:site-a1: "
        "edge:edge-a may not speak for a site"
    )


def test_an_edge_cannot_reroute_a_signed_envelope(pki: EdgePKI) -> None:
    outer = signed(pki, "site-a1")
    outer.job_id = "job-2"
    with pytest.raises(AuthError, match=r"changed the routing fields \(job_id\)"):
        pki.carried().open(pki.peer("edge-a"), outer, now=time.time())


def test_an_unsigned_envelope_from_an_edge_is_refused(pki: EdgePKI) -> None:
    with pytest.raises(AuthError, match="it carries only envelopes signed by the sites"):
        pki.carried().open(pki.peer("edge-a"), call("site-a1"), now=time.time())


def test_a_site_certificate_cannot_act_as_an_edge(pki: EdgePKI) -> None:
    with pytest.raises(AuthError) as refused:
        pki.carried().open(pki.peer("site-a2"), signed(pki, "site-a1"), now=time.time())
    assert str(refused.value) == (
        "site:site-a2 is a site certificate, not an edge relay: it may not carry the "
        "envelopes of site:site-a1"
    )


@pytest.mark.parametrize("carrier", ["relay"])
def test_other_roles_carry_nothing(pki: EdgePKI, carrier: str) -> None:
    with pytest.raises(AuthError, match="may not carry site-signed envelopes"):
        pki.carried().open(pki.peer(carrier), signed(pki, "site-a1"), now=time.time())


def test_a_replayed_envelope_is_refused_once_accepted(pki: EdgePKI) -> None:
    carried = pki.carried()
    outer = signed(pki, "site-a1")
    carried.open(pki.peer("edge-a"), outer, now=time.time())
    with pytest.raises(ReplayError, match=r"^replayed envelope: site:site-a1's signed envelope"):
        carried.open(pki.peer("edge-a"), outer, now=time.time())
    # A retry is signed afresh (new nonce), under the same message id: accepted.
    carried.open(pki.peer("edge-a"), signed(pki, "site-a1"), now=time.time())


def test_a_refused_forgery_does_not_burn_the_genuine_nonce(pki: EdgePKI) -> None:
    carried = pki.carried()
    genuine = signed(pki, "site-a1")
    wrong_edge = Envelope()
    wrong_edge.CopyFrom(genuine)
    with pytest.raises(AuthError):
        carried.open(pki.peer("edge-b"), wrong_edge, now=time.time())
    carried.open(pki.peer("edge-a"), genuine, now=time.time())


def test_a_stale_signature_is_refused(pki: EdgePKI) -> None:
    now = time.time()
    with pytest.raises(AuthError, match=r"^stale site signature: its timestamp is \+61\.0 s"):
        pki.carried().open(pki.peer("edge-a"), signed(pki, "site-a1", at=now - 61), now=now)


def test_a_revoked_site_is_refused_through_its_edge(pki: EdgePKI) -> None:
    def revoked(peer: Peer) -> str | None:
        return f"{peer} is revoked" if peer.name == "site-a1" else None

    carried = pki.carried(revoked)
    with pytest.raises(AuthError, match="refused: site:site-a1 is revoked"):
        carried.open(pki.peer("edge-a"), signed(pki, "site-a1"), now=time.time())
    carried.open(pki.peer("edge-a"), signed(pki, "site-a2"), now=time.time())


def test_a_certificate_of_another_federation_is_refused(pki: EdgePKI) -> None:
    outer = sign_envelope(pki.foreign, call("site-a1"), now=time.time())
    with pytest.raises(AuthError, match="is not one of this federation's"):
        pki.carried().open(pki.peer("edge-a"), outer, now=time.time())


def test_nonces_are_forgotten_after_the_window_and_bounded() -> None:
    window = NonceWindow(10.0, limit=3)
    assert window.first_use("a", 0.0)
    assert not window.first_use("a", 9.0)
    assert window.first_use("a", 10.5)  # stale by then anyway: the timestamp check refuses it
    for nonce in "bcd":
        assert window.first_use(nonce, 11.0)
    assert len(window) == 3  # "a" went first, at the limit
