"""The relay authorizes an envelope an edge relay carries by the site that signed it.

The dispatcher opens the signed envelope (:mod:`gateway.core.site_signing`), then
checks and runs it exactly as if the site had connected itself: the same job
membership, the same Fleet-method rule and the same dedup scope, so a call is run
at most once whichever way its retries come.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.control.relay_api import ControlService
from gateway.core import fleet
from gateway.core.site_signing import REFUSAL_HEADER, sign_envelope
from gateway.proto.control_pb2 import PollTasksRequest
from gateway.proto.envelope_pb2 import (
    KIND_ADMIN,
    KIND_AGENT,
    KIND_FLEET,
    ORIGIN_GATEWAY,
    Envelope,
    Kind,
    Reply,
)
from gateway.relay.dispatcher import Dispatcher
from tests.support.edge_pki import EdgePKI
from tests.support.relay import CountingUpstream, fleet_call, offline_job_manager


@pytest.fixture(scope="module")
def pki() -> EdgePKI:
    return EdgePKI.create()


@pytest.fixture
async def relay(tmp_path: Path, pki: EdgePKI) -> AsyncIterator[tuple[Dispatcher, CountingUpstream]]:
    sites = frozenset({"site-a1", "site-a2", "site-b1", "site-d"})
    manager = offline_job_manager(tmp_path, known_sites=sites)
    dispatcher = Dispatcher(ledger=True)
    dispatcher.control = ControlService(manager).handle
    dispatcher.carried = pki.carried()
    upstream = CountingUpstream()
    dispatcher.add_job("job-1", frozenset({"site-a1", "site-b1", "site-d"}), upstream)
    yield dispatcher, upstream
    await manager.aclose()


def call(
    site: str,
    method: str = "PushMessages",
    *,
    message_id: str = "m1",
    job: str = "job-1",
    kind: Kind = KIND_FLEET,
    body: bytes = b"",
) -> Envelope:
    return fleet_call(method, message_id, job=job, site=site, kind=kind, body=body)


def signed(pki: EdgePKI, site: str, envelope: Envelope | None = None) -> Envelope:
    return sign_envelope(pki.signers[site], envelope or call(site), now=time.time())


def assert_refused(reply: Reply, detail: str) -> None:
    assert (reply.origin, reply.http_status, reply.grpc_code) == (
        ORIGIN_GATEWAY,
        403,
        fleet.PERMISSION_DENIED,
    ), reply.detail
    assert detail in reply.detail


async def test_a_carried_call_runs_as_the_sites_own(
    relay: tuple[Dispatcher, CountingUpstream], pki: EdgePKI
) -> None:
    dispatcher, upstream = relay
    reply = await dispatcher.handle(pki.peer("edge-a"), signed(pki, "site-a1"))
    assert (reply.http_status, reply.message_id, upstream.calls) == (200, "m1", 1)


async def test_a_call_is_run_once_whichever_way_its_retries_come(
    relay: tuple[Dispatcher, CountingUpstream], pki: EdgePKI
) -> None:
    """Same dedup scope as a direct call: a retry of the id, re-signed, through the edge
    or from the site itself, gets the kept reply."""
    dispatcher, upstream = relay
    for _ in range(2):
        assert (
            await dispatcher.handle(pki.peer("edge-a"), signed(pki, "site-a1"))
        ).http_status == 200
    assert (await dispatcher.handle(pki.peer("site-a1"), call("site-a1"))).http_status == 200
    assert dispatcher.stats.ledger == {"m1": 1}
    assert upstream.calls == 1


async def test_a_carried_agent_poll_is_answered_for_the_site(
    relay: tuple[Dispatcher, CountingUpstream], pki: EdgePKI
) -> None:
    dispatcher, _ = relay
    poll = call(
        "site-b1",
        "PollTasks",
        job="",
        kind=KIND_AGENT,
        body=PollTasksRequest(wait_ms=0).SerializeToString(),
    )
    reply = await dispatcher.handle(pki.peer("edge-b"), signed(pki, "site-b1", poll))
    assert reply.http_status == 200, reply.detail


async def test_a_carried_site_keeps_the_job_membership_check(
    relay: tuple[Dispatcher, CountingUpstream], pki: EdgePKI
) -> None:
    dispatcher, upstream = relay
    reply = await dispatcher.handle(pki.peer("edge-a"), signed(pki, "site-a2", call("site-a2")))
    assert_refused(reply, "site 'site-a2' is not part of job 'job-1'")
    assert upstream.calls == 0


@pytest.mark.parametrize(
    ("carrier", "signer", "site", "detail"),
    [
        ("edge-a", "edge-a", "site-a1", "the envelope is signed by edge:edge-a, not by a site"),
        ("edge-b", "site-a1", "site-a1", "site:site-a1 is not provisioned behind edge relay"),
        ("site-a1", "site-b1", "site-b1", "site:site-a1 is a site certificate, not an edge"),
    ],
    ids=["forged-by-edge", "site-of-another-edge", "site-as-edge"],
)
async def test_refusals_leave_the_relay_serving(
    relay: tuple[Dispatcher, CountingUpstream],
    pki: EdgePKI,
    carrier: str,
    signer: str,
    site: str,
    detail: str,
) -> None:
    dispatcher, upstream = relay
    forged = sign_envelope(pki.signers[signer], call(site), now=time.time())
    assert_refused(await dispatcher.handle(pki.peer(carrier), forged), detail)
    assert upstream.calls == 0
    # The same relay serves the genuine call at once (no 401, nothing blocked).
    genuine = await dispatcher.handle(pki.peer("edge-a"), signed(pki, "site-a1"))
    assert genuine.http_status == 200 and upstream.calls == 1


async def test_a_replayed_envelope_is_refused_and_marked_for_the_edge(
    relay: tuple[Dispatcher, CountingUpstream], pki: EdgePKI
) -> None:
    dispatcher, upstream = relay
    outer = signed(pki, "site-a1")
    assert (await dispatcher.handle(pki.peer("edge-a"), outer)).http_status == 200
    replayed = await dispatcher.handle(pki.peer("edge-a"), outer)
    assert_refused(replayed, "replayed envelope: site:site-a1's signed envelope (message m1")
    assert [(h.name, h.value) for h in replayed.headers] == [(REFUSAL_HEADER, b"replay")]
    assert upstream.calls == 1


async def test_an_edge_certificate_is_refused_for_admin_commands(
    relay: tuple[Dispatcher, CountingUpstream], pki: EdgePKI
) -> None:
    """Unsigned, it is the edge's own call; signed by a site, the site is no admin."""
    dispatcher, _ = relay
    listing = call("", "ListJobs", job="", kind=KIND_ADMIN)
    assert_refused(
        await dispatcher.handle(pki.peer("edge-a"), listing),
        "edge:edge-a is an edge relay: it carries only envelopes signed by the sites behind it",
    )
    as_site = call("site-a1", "ListJobs", job="", kind=KIND_ADMIN)
    assert_refused(
        await dispatcher.handle(pki.peer("edge-a"), signed(pki, "site-a1", as_site)),
        "site:site-a1 may not call 'ListJobs': it needs a admin certificate",
    )


async def test_a_relay_without_edges_refuses_signed_envelopes(pki: EdgePKI) -> None:
    dispatcher = Dispatcher()
    dispatcher.add_job("job-1", frozenset({"site-a1"}), CountingUpstream())
    reply = await dispatcher.handle(pki.peer("edge-a"), signed(pki, "site-a1"))
    assert_refused(reply, "this relay checks no site signatures; it serves no edge relays")
