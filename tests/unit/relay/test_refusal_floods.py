"""Refusal floods: the pure meter (blocking, aggregated log lines), the dispatcher that
uses it, and a flooding site disconnected by the tcps and https transports."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import pytest

from gateway.core.config import Budgets
from gateway.core.exceptions import RelayBusyError
from gateway.core.identity import Peer, Role
from gateway.proto.envelope_pb2 import ORIGIN_GATEWAY, ORIGIN_UPSTREAM, Envelope, Reply
from gateway.relay.dispatcher import Dispatcher
from gateway.relay.lgc import Upstream
from gateway.transport import connect, listen
from gateway.transport.admission import Admission
from gateway.transport.refusals import RefusalMeter, RefusalPolicy
from tests.support.pki import FederationKits

POLICY = RefusalPolicy(rate=10.0, burst=20.0, block_seconds=30.0, log_interval=60.0)
EVIL = Peer("site-2", Role.SITE)
UNIT = 0.1


def test_the_first_refusal_is_logged_and_the_rest_of_the_interval_make_one_line() -> None:
    meter = RefusalMeter(POLICY)
    first = meter.refused("site:evil", "AuthError", "not part of job a", now=0.0)
    assert [line.message for line in first] == ["refused call"]
    quiet = [meter.refused("site:evil", "AuthError", f"job {i}", now=i / 100) for i in range(1, 15)]
    assert all(lines == [] for lines in quiet)
    (summary,) = meter.flush(now=60.0)
    assert summary.message == "refused calls"
    assert summary.extra["more"] == 14 and summary.extra["last_reason"] == "job 14"
    assert meter.flush(now=61.0) == []


def test_a_peer_that_empties_its_bucket_is_blocked_for_a_while_and_others_are_not() -> None:
    meter = RefusalMeter(POLICY)
    lines = [meter.refused("site:evil", "AuthError", "no", now=0.0) for _ in range(21)]
    assert lines[-1][-1].message == "blocking a peer that keeps being refused"
    assert meter.blocks == 1
    assert meter.blocked("site:evil", now=1.0) and meter.blocked("site:evil", now=29.9)
    assert not meter.blocked("site:honest", now=1.0)
    assert not meter.blocked("site:evil", now=30.0)
    unblocked = [line for line in meter.flush(now=60.0) if line.message == "unblocked a peer"]
    assert unblocked[0].extra["calls_refused_while_blocked"] == 2


def test_refusals_at_the_allowed_rate_never_block() -> None:
    meter = RefusalMeter(POLICY)
    for i in range(10_000):  # 10 per second for 1000 s
        meter.refused("site:stale", "UnknownJobError", "no such job", now=i / 10)
    assert meter.blocks == 0


def test_a_flood_of_ten_thousand_refusals_makes_a_handful_of_log_lines() -> None:
    meter = RefusalMeter(POLICY)
    lines = []
    for i in range(10_000):  # 1000 per second, for 10 s
        now = i / 1000
        if not meter.blocked("site:evil", now):
            lines += meter.refused("site:evil", "AuthError", "not part of job", now)
    lines += meter.flush(now=70.0)
    assert len(lines) <= 5, lines


def test_a_blocked_peers_refusals_are_held_until_the_block_ends_and_only_so_many() -> None:
    meter = RefusalMeter(RefusalPolicy(rate=1.0, burst=1.0, block_seconds=8.0, hold_calls=2))
    assert meter.hold("site:evil", now=0.0) == 0.0  # not blocked: refused at once
    meter.refused("site:evil", "AuthError", "no", now=0.0)
    meter.refused("site:evil", "AuthError", "no", now=0.0)  # blocked until 8.0
    assert meter.hold("site:evil", now=1.0) == 5.0  # hold_seconds
    assert meter.hold("site:evil", now=6.0) == 2.0  # until the block ends
    assert meter.hold("site:evil", now=6.0) == 0.0  # two held already
    meter.unhold("site:evil")
    meter.unhold("site:evil")
    assert meter.hold("site:evil", now=8.0) == 0.0  # the block is over


def test_a_peer_with_held_calls_is_not_forgotten() -> None:
    meter = RefusalMeter(RefusalPolicy(rate=1.0, burst=1.0, block_seconds=8.0))
    meter.refused("site:evil", "AuthError", "no", now=0.0)
    meter.refused("site:evil", "AuthError", "no", now=0.0)
    assert meter.hold("site:evil", now=1.0) > 0
    meter.flush(now=3600.0)
    meter.unhold("site:evil")  # would fail with a KeyError had it been forgotten
    meter.flush(now=3601.0)
    assert meter._peers == {}


def test_idle_peers_are_forgotten() -> None:
    meter = RefusalMeter(POLICY)
    for i in range(100):
        meter.refused(f"site:{i}", "AuthError", "no", now=0.0)
    meter.flush(now=3600.0)
    assert meter._peers == {}


def _fleet(job: str) -> Envelope:
    return Envelope(job_id=job, site="site-2", message_id=uuid.uuid4().hex, method="PullMessages")


async def test_the_dispatcher_blocks_a_flooding_site_and_logs_a_bounded_number_of_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    dispatcher = Dispatcher(
        admission=Admission(refusals=RefusalMeter(POLICY)), clock=lambda: now[0]
    )
    with caplog.at_level(logging.WARNING, logger="gateway.relay.dispatcher"):
        replies = []
        for i in range(5000):
            now[0] = i / 1000
            replies.append(await dispatcher.handle(EVIL, _fleet(f"job-{i}")))
    assert all(r.origin == ORIGIN_GATEWAY for r in replies)
    assert {r.http_status for r in replies[:20]} == {404}  # refused for what they are
    assert {r.http_status for r in replies[30:]} == {503}  # then blocked: busy, unlooked-at
    assert "refused too often" in replies[-1].detail
    assert len(caplog.records) <= 4, [r.getMessage() for r in caplog.records]


class _Answering(Upstream):
    """The job's SuperLink as the relay sees it: answers every call at once."""

    async def call(self, envelope: Envelope, *, timeout: float) -> Reply:
        return Reply(message_id=envelope.message_id, origin=ORIGIN_UPSTREAM, http_status=200)

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize("scheme", ["grpcs", "https", "tcps"])
async def test_a_blocked_site_is_answered_late_and_refused_on_reconnect_while_others_are_served(
    scheme: str, federation: FederationKits
) -> None:
    policy = RefusalPolicy(rate=1.0, burst=5.0, block_seconds=3.0, hold_seconds=5 * UNIT)
    admission = Admission(Budgets(), refusals=RefusalMeter(policy))
    dispatcher = Dispatcher(admission=admission)
    dispatcher.add_job("job-a", frozenset({"site-1"}), _Answering())
    server = listen(
        f"{scheme}://127.0.0.1:0",
        tls=federation.relay,
        handler=dispatcher.handle,
        admission=admission,
    )
    await server.start()
    url = f"{scheme}://localhost:{server.port}"
    evil = connect(url, tls=federation.sites["site-2"])
    honest = connect(url, tls=federation.sites["site-1"])
    try:
        statuses = []
        for _ in range(6):
            statuses.append((await evil.send(_fleet("job-a"), timeout=50 * UNIT)).http_status)
        assert statuses == [403] * 6  # not part of job-a; the sixth empties the bucket
        started = time.monotonic()
        with pytest.raises(RelayBusyError, match="refused too often"):
            await evil.send(_fleet("job-a"), timeout=50 * UNIT)
        assert time.monotonic() - started >= 5 * UNIT  # held: a tarpit
        with pytest.raises(RelayBusyError):  # a new connection (or call) is refused too
            await evil.send(_fleet("job-a"), timeout=50 * UNIT)
        mine = Envelope(job_id="job-a", site="site-1", message_id="m1", method="PullMessages")
        assert (await honest.send(mine, timeout=50 * UNIT)).http_status == 200
        await asyncio.sleep(30 * UNIT)  # the block ends
        reply = await evil.send(_fleet("job-a"), timeout=50 * UNIT)
        assert reply.http_status == 403
    finally:
        await evil.aclose()
        await honest.aclose()
        await server.aclose()
