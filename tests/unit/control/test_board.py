"""The board on which relays sharing one Redis exchange their jobs' needs (scale-out)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest

from gateway.control.board import BoardView, RedisBoard, Share, newest, seal, unseal
from gateway.core.exceptions import AuthError, ProtocolError
from gateway.core.identity import Role
from gateway.core.signing import CertificateChecker, Signer
from gateway.proto.control_pb2 import JobInfo, SiteJob, SiteJobState, SiteStatus
from gateway.provisioning.certs import CertificateAuthority, write_participant
from tests.support.redis import RedisPKI, RedisServers


def share(relay: str = "relay-a", *, job: str = "job-1", when: float = 100.0) -> Share:
    return Share(
        relay=relay,
        written=when,
        tasks={"site-1": [SiteJob(job_id=job, partition_id=0, num_partitions=2)]},
        jobs=[JobInfo(job_id=job, state="running", sites=["site-1", "site-2"])],
        seen={"site-1": when},
        reports={job: {"site-1": (when, SiteJobState(job_id=job, state="running"))}},
        node_keys={"site-1": f"ecdsa-sha2-nistp384 AAAA{relay}"},
        statuses={"site-1": (when, status(relay))},
    )


def status(relay: str) -> SiteStatus:
    """A status that tells which relay heard it: its transport is the relay's name."""
    return SiteStatus(transport=relay, flower_version="1.41.0", rtt_ms=2.5, calls_last_minute=9)


def signer(pki: RedisPKI) -> Signer:
    relay = pki.federation.relay
    return Signer.of(relay)


def checker(pki: RedisPKI) -> CertificateChecker:
    return CertificateChecker(pki.federation.relay.ca_cert.read_bytes())


def test_a_share_survives_encoding() -> None:
    original = share()
    assert Share.decode(original.encode()) == original


def test_a_share_of_a_relay_that_predates_statuses_decodes_without_them() -> None:
    older = json.loads(share().encode())
    del older["statuses"]
    assert Share.decode(json.dumps(older).encode()).statuses == {}


@pytest.mark.parametrize("data", [b"", b"{}", b"not json", b'{"relay": 1}'])
def test_malformed_shares_are_refused(data: bytes) -> None:
    with pytest.raises(ProtocolError, match="malformed relay share"):
        Share.decode(data)


def test_a_relay_signed_share_is_accepted(redis_pki: RedisPKI) -> None:
    sealed = seal(share(), signer(redis_pki))
    assert unseal(sealed, checker(redis_pki), now=time.time()) == share()


def test_a_share_signed_by_a_site_is_refused(redis_pki: RedisPKI) -> None:
    site = redis_pki.federation.sites["site-1"]
    sealed = seal(share(), Signer.of(site))
    with pytest.raises(AuthError, match="not a relay"):
        unseal(sealed, checker(redis_pki), now=time.time())


def test_an_edited_share_is_refused(redis_pki: RedisPKI) -> None:
    sealed = json.loads(seal(share(), signer(redis_pki)))
    sealed["payload"] = base64.b64encode(share(job="job-forged").encode()).decode()
    with pytest.raises(AuthError, match="signature does not match"):
        unseal(json.dumps(sealed).encode(), checker(redis_pki), now=time.time())


def test_a_share_from_another_federation_is_refused(
    redis_pki: RedisPKI,
    tmp_path: Path,
) -> None:
    other = write_participant(
        tmp_path / "other", CertificateAuthority.create("other"), "relay", Role.RELAY
    )
    foreign = Signer.of(other)
    with pytest.raises(AuthError):
        unseal(seal(share(), foreign), checker(redis_pki), now=time.time())


def test_the_view_merges_the_other_relays_shares() -> None:
    a = share("relay-a", job="job-1", when=100.0)
    b = share("relay-b", job="job-2", when=200.0)
    b.reports["job-1"] = {"site-1": (300.0, SiteJobState(job_id="job-1", state="failed"))}
    view = BoardView((a, b))
    assert [t.job_id for t in view.tasks("site-1")] == ["job-1", "job-2"]
    assert view.tasks("site-9") == []
    assert view.seen() == {"site-1": 200.0}
    owner = view.job("job-2")
    assert owner is not None and owner[0] == "relay-b"
    assert view.job("job-9") is None
    report = view.report("job-1", "site-1")
    assert report is not None and report[1].state == "failed"  # the newest of the two
    assert view.task_ids() == {("site-1", "job-1"), ("site-1", "job-2")}
    assert view.node_keys() == {"site-1": "ecdsa-sha2-nistp384 AAAArelay-b"}
    assert view.status("site-1") == (200.0, status("relay-b"))  # the newest of the two
    assert view.status("site-9") is None
    local = (400.0, SiteJobState(job_id="job-1", state="running"))
    assert newest([report, local]) == local[1]
    assert newest([None, None]) is None


async def test_relays_see_each_other_through_redis(
    redis_servers: RedisServers,
    redis_pki: RedisPKI,
    tmp_path: Path,
) -> None:
    second = write_participant(tmp_path / "relay-2", redis_pki.ca, "relay-2", Role.RELAY)
    url = redis_servers.tls.url
    a = RedisBoard(url, redis_pki.federation.relay, relay="relay-a", namespace="board-test")
    b = RedisBoard(url, second, relay="relay-b", namespace="board-test")
    try:
        assert (await a.exchange(share("relay-a", job="job-1"))).shares == ()
        seen_by_b = await b.exchange(share("relay-b", job="job-2"))
        assert [s.relay for s in seen_by_b.shares] == ["relay-a"]
        seen_by_a = await a.exchange(share("relay-a", job="job-1"))
        assert [j.job_id for j in seen_by_a.jobs()] == ["job-2"]
        assert seen_by_a.status("site-1") == (100.0, status("relay-b"))
        await a.aclose()  # a relay that stops withdraws its share at once
        assert (await b.exchange(share("relay-b", job="job-2"))).shares == ()
    finally:
        await b.aclose()


def test_a_share_of_a_revoked_relay_is_refused(redis_pki: RedisPKI) -> None:
    revoking = CertificateChecker(
        redis_pki.federation.relay.ca_cert.read_bytes(),
        revoked=lambda peer: f"{peer} was revoked",
    )
    with pytest.raises(AuthError, match="was revoked"):
        unseal(seal(share(), signer(redis_pki)), revoking, now=time.time())
