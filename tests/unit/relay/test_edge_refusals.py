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
from gateway.core.envelope import make_envelope, now_ms
from gateway.core.identity import Peer, Role
from gateway.proto.control_pb2 import JobRef, PollTasksRequest
from gateway.proto.envelope_pb2 import (
    DIALECT_HTTP,
    KIND_ADMIN,
    KIND_AGENT,
    KIND_FLEET,
    ORIGIN_GATEWAY,
    Envelope,
    Kind,
)
from gateway.relay.dispatcher import Dispatcher
from tests.support.relay import CountingUpstream, offline_job_manager


def _envelope(kind: Kind, method: str, body: bytes, *, job: str, site: str) -> Envelope:
    envelope = make_envelope(
        job_id=job,
        site=site,
        method=method,
        dialect=DIALECT_HTTP,
        headers=[],
        body=body,
        deadline_unix_ms=now_ms() + 10_000,
    )
    envelope.kind = kind
    return envelope


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
            _envelope(KIND_FLEET, "PullMessages", b"", job="job-1", site="site-1"),
            "edge:site-1 is not a site certificate; only sites call the Fleet API",
        ),
        (
            Peer("site-1", Role.EDGE),
            _envelope(
                KIND_AGENT,
                "PollTasks",
                PollTasksRequest(wait_ms=0).SerializeToString(),
                job="",
                site="site-1",
            ),
            "edge:site-1 may not call 'PollTasks': it needs a site certificate",
        ),
        (
            Peer("admin", Role.EDGE),
            _envelope(KIND_ADMIN, "ListJobs", b"", job="", site=""),
            "edge:admin may not call 'ListJobs': it needs a admin certificate",
        ),
        (
            Peer("admin", Role.EDGE),
            _envelope(
                KIND_ADMIN, "AbortJob", JobRef(job_id="job-1").SerializeToString(), job="", site=""
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
    reply = await relay.handle(
        site, _envelope(KIND_FLEET, "PullMessages", b"", job="job-1", site="site-1")
    )
    assert reply.http_status == 200 and upstream.calls == 1
    poll = _envelope(
        KIND_AGENT,
        "PollTasks",
        PollTasksRequest(wait_ms=0).SerializeToString(),
        job="",
        site="site-1",
    )
    assert (await relay.handle(site, poll)).http_status == 200
