"""An edge relay's certificate (OU ``edge``) is refused by every role check on the relay.

Edge relays are provisioned before the edge relay process exists: until it does, and
after, an edge certificate may carry sites' envelopes but never call the Fleet API, the
agent operations or the admin operations itself, whatever name it has.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.control.relay_api import ControlService
from gateway.core import fleet
from gateway.core.identity import Peer, Role
from gateway.proto.control_pb2 import JobRef, PollTasksRequest
from gateway.proto.envelope_pb2 import (
    KIND_ADMIN,
    KIND_AGENT,
    ORIGIN_GATEWAY,
    Envelope,
)
from gateway.relay.dispatcher import Dispatcher
from tests.support.relay import CountingUpstream, fleet_call, offline_job_manager


@pytest.fixture
async def dispatcher(tmp_path: Path) -> AsyncIterator[tuple[Dispatcher, CountingUpstream]]:
    manager = offline_job_manager(tmp_path, known_sites=frozenset({"site-1"}))
    dispatcher = Dispatcher()
    dispatcher.control = ControlService(manager).handle
    upstream = CountingUpstream()
    dispatcher.add_job("job-1", frozenset({"site-1"}), upstream)
    yield dispatcher, upstream
    await manager.aclose()


# The edge certificates are named like the participants they might pose as: only the
# role (the certificate's OU) can refuse them.
@pytest.mark.parametrize(
    ("peer", "envelope", "needle"),
    [
        (
            Peer("site-1", Role.EDGE),
            fleet_call("PullMessages", job="job-1"),
            "edge:site-1 is not a site certificate; only sites call the Fleet API",
        ),
        (
            Peer("site-1", Role.EDGE),
            fleet_call(
                "PollTasks",
                job="",
                kind=KIND_AGENT,
                body=PollTasksRequest(wait_ms=0).SerializeToString(),
            ),
            "edge:site-1 may not call 'PollTasks': it needs a site certificate",
        ),
        (
            Peer("admin", Role.EDGE),
            fleet_call("ListJobs", job="", site="", kind=KIND_ADMIN),
            "edge:admin may not call 'ListJobs': it needs a admin certificate",
        ),
        (
            Peer("admin", Role.EDGE),
            fleet_call(
                "AbortJob",
                job="",
                site="",
                kind=KIND_ADMIN,
                body=JobRef(job_id="job-1").SerializeToString(),
            ),
            "edge:admin may not call 'AbortJob': it needs a admin certificate",
        ),
    ],
    ids=["fleet", "agent", "admin-read", "admin-abort"],
)
async def test_an_edge_certificate_is_refused_for_fleet_agent_and_admin_calls(
    dispatcher: tuple[Dispatcher, CountingUpstream], peer: Peer, envelope: Envelope, needle: str
) -> None:
    relay, upstream = dispatcher
    reply = await relay.handle(peer, envelope)
    assert (reply.origin, reply.http_status, reply.grpc_code) == (
        ORIGIN_GATEWAY,
        403,
        fleet.PERMISSION_DENIED,
    ), reply.detail
    assert reply.detail == needle
    assert upstream.calls == 0


async def test_the_same_calls_from_a_site_certificate_pass_the_role_check(
    dispatcher: tuple[Dispatcher, CountingUpstream],
) -> None:
    """The refusals above are the role's: the same envelopes from a site get through."""
    relay, upstream = dispatcher
    site = Peer("site-1", Role.SITE)
    reply = await relay.handle(site, fleet_call("PullMessages", job="job-1"))
    assert reply.http_status == 200 and upstream.calls == 1
    poll = fleet_call(
        "PollTasks", job="", kind=KIND_AGENT, body=PollTasksRequest(wait_ms=0).SerializeToString()
    )
    assert (await relay.handle(site, poll)).http_status == 200
