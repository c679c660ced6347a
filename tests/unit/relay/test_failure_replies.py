"""What the gateway answers when it refuses a call or fails on its own, caller by caller.

The site forwarder, the relay dispatcher, the LGC and the relay's control API answer
through ``reply_for_error``. Refusals keep their statuses (403 auth, 404 unknown job or
method, 400 malformed, 409 job state); the gateway's own failures are 503 when the call
surely did not reach the SuperLink and 504 when it may have, and the relay's dedup runs a
503'd id again but never a 504'd one.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from aiohttp import web

from gateway.control.jobs.store import FINISHED, JobRecord
from gateway.control.relay_api import ControlService
from gateway.core import fleet
from gateway.core.envelope import make_envelope, now_ms, upstream_reply
from gateway.core.exceptions import (
    AuthError,
    ConnectError,
    DeadlineError,
    FrameTooLargeError,
)
from gateway.core.identity import AdminRole, Peer, Role
from gateway.proto.control_pb2 import JobRef, ShipLogsRequest
from gateway.proto.envelope_pb2 import (
    DIALECT_GRPC,
    DIALECT_HTTP,
    KIND_ADMIN,
    KIND_AGENT,
    KIND_FLEET,
    ORIGIN_GATEWAY,
    Dialect,
    Envelope,
    Kind,
    Reply,
)
from gateway.relay.dispatcher import Dispatcher
from gateway.relay.lgc import upstream_for
from gateway.reliable import MemoryDedupStore, ReliableReceiver, RetryPolicy
from gateway.site.call_window import CallWindow
from gateway.site.forwarder import JobForwarder
from gateway.transport import TransportClient
from tests.support.relay import CountingUpstream, offline_job_manager

SITE = Peer("site-1", Role.SITE)
ADMIN = Peer("admin", Role.ADMIN, admin_role=AdminRole.PROJECT_ADMIN)
MEMBER = Peer("member", Role.ADMIN, admin_role=AdminRole.MEMBER)


def _envelope(
    *,
    method: str = "PullMessages",
    job: str = "job-1",
    site: str = "site-1",
    deadline_ms: int = 10_000,
    message_id: str | None = None,
    kind: Kind = KIND_FLEET,
    body: bytes = b"request",
    dialect: Dialect = DIALECT_HTTP,
) -> Envelope:
    envelope = make_envelope(
        job_id=job,
        site=site,
        method=method,
        dialect=dialect,
        headers=[],
        body=body,
        deadline_unix_ms=now_ms() + deadline_ms,
        message_id=message_id,
    )
    envelope.kind = kind
    return envelope


# --- the site forwarder --------------------------------------------------------------


class _FailingClient(TransportClient):
    """A transport whose every send fails with a fresh ``error``."""

    def __init__(self, error: type[Exception]) -> None:
        self.error = error
        self.sends = 0

    async def send(self, envelope: Envelope, *, timeout: float) -> Reply:
        self.sends += 1
        raise self.error("relay path broken")

    async def aclose(self) -> None:
        pass


FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.02, jitter=0.0, deadline=0.2)


@pytest.mark.parametrize(
    ("error", "status", "grpc_code"),
    [
        # The relay refused this site's certificate: the gateway's failure, never a 403
        # (Flower reads "run not running").
        (AuthError, 503, fleet.UNAVAILABLE),
        # The sender retried until its deadline and gave up: 503, which Flower retries
        # with a call of its own.
        (ConnectError, 503, fleet.UNAVAILABLE),
        (FrameTooLargeError, 413, fleet.RESOURCE_EXHAUSTED),
    ],
)
async def test_the_forwarder_answers_path_failures_from_their_kind(
    error: type[Exception], status: int, grpc_code: int
) -> None:
    client = _FailingClient(error)
    forwarder = JobForwarder(job_id="job-1", site="site-1", client=client, policy=FAST)
    reply = await forwarder.forward("PullMessages", DIALECT_HTTP, [], b"x")
    assert (reply.origin, reply.http_status, reply.grpc_code) == (ORIGIN_GATEWAY, status, grpc_code)
    assert reply.detail.startswith("gateway: ") and "relay path broken" in reply.detail
    assert reply.message_id
    assert forwarder.window.counts(time.monotonic()) == (1, 1)  # the gateway's own error


class _AnsweringClient(TransportClient):
    """A transport on which the SuperLink answers every call with ``status``."""

    def __init__(self, status: int) -> None:
        self.status = status

    async def send(self, envelope: Envelope, *, timeout: float) -> Reply:
        return Reply(message_id=envelope.message_id, http_status=self.status)

    async def aclose(self) -> None:
        pass


async def test_the_jobs_of_a_site_count_every_reply_in_its_one_window() -> None:
    window = CallWindow()
    ok = JobForwarder(job_id="job-1", site="site-1", client=_AnsweringClient(200), window=window)
    refused = JobForwarder(
        job_id="job-2", site="site-1", client=_AnsweringClient(500), window=window
    )
    broken = JobForwarder(
        job_id="job-3",
        site="site-1",
        client=_FailingClient(ConnectError),
        policy=FAST,
        window=window,
    )
    for forwarder in (ok, ok, refused, broken):
        await forwarder.forward("PullMessages", DIALECT_HTTP, [], b"x")
    # The SuperLink's 500 and the gateway's 503 alike are errors the SuperNode got.
    assert window.counts(time.monotonic()) == (4, 2)


async def test_the_forwarder_answers_a_passed_deadline_with_504() -> None:
    """The request may have reached the relay and run: 504, not 503."""
    forwarder = JobForwarder(job_id="job-1", site="site-1", client=_FailingClient(ConnectError))

    async def deadline(envelope: Envelope, *, budget: float | None = None) -> Reply:
        raise DeadlineError("no reply in time")

    forwarder.sender.send = deadline  # type: ignore[method-assign]
    reply = await forwarder.forward("PullMessages", DIALECT_HTTP, [], b"x")
    assert (reply.http_status, reply.grpc_code) == (504, fleet.UNAVAILABLE)


# --- the dispatcher ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "envelope", "status", "grpc_code", "needle"),
    [
        (ADMIN, _envelope(site=""), 403, fleet.PERMISSION_DENIED, "not a site certificate"),
        (SITE, _envelope(site="site-2"), 403, fleet.PERMISSION_DENIED, "claims 'site-2'"),
        (SITE, _envelope(job="job-9"), 404, fleet.NOT_FOUND, "not running on this relay"),
        (Peer("site-3", Role.SITE), _envelope(site=""), 403, fleet.PERMISSION_DENIED, "not part"),
        (SITE, _envelope(method="../v1/control"), 404, fleet.NOT_FOUND, "not a Fleet API method"),
        (SITE, _envelope(deadline_ms=-1000), 504, fleet.UNAVAILABLE, "deadline passed"),
        (SITE, _envelope(kind=KIND_ADMIN), 404, fleet.NOT_FOUND, "runs no job manager"),
    ],
)
async def test_the_dispatcher_refuses_with_the_kinds_status(
    peer: Peer, envelope: Envelope, status: int, grpc_code: int, needle: str
) -> None:
    dispatcher = Dispatcher()
    upstream = CountingUpstream()
    dispatcher.add_job("job-1", frozenset({"site-1", "site-2"}), upstream)
    reply = await dispatcher.handle(peer, envelope)
    assert (reply.origin, reply.http_status, reply.grpc_code) == (ORIGIN_GATEWAY, status, grpc_code)
    assert needle in reply.detail and reply.message_id == envelope.message_id
    assert upstream.calls == 0


async def test_a_revoked_certificate_is_refused_with_403() -> None:
    dispatcher = Dispatcher()
    dispatcher.revoked = lambda peer: "certificate 7 was revoked"
    reply = await dispatcher.handle(SITE, _envelope())
    assert (reply.http_status, reply.detail) == (403, "certificate 7 was revoked")
    assert dispatcher.stats.refused["job-1"] == 1


# --- the LGC -------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_lgc_answers_503_when_it_cannot_connect_and_the_id_may_run_again() -> None:
    upstream = upstream_for(DIALECT_HTTP, f"127.0.0.1:{_closed_port()}")
    relay = ReliableReceiver(MemoryDedupStore())
    envelope = _envelope()
    try:
        reply = await relay.handle(envelope.message_id, lambda: upstream.call(envelope, timeout=5))
    finally:
        await upstream.aclose()
    assert (reply.origin, reply.http_status, reply.grpc_code) == (ORIGIN_GATEWAY, 503, 14)
    assert "cannot reach the job's SuperLink" in reply.detail
    # Surely not delivered: the id is forgotten, so the site's retry executes it.
    assert relay.protocol.abandoned == 1
    healthy = await relay.handle(
        envelope.message_id,
        lambda: asyncio.sleep(0, upstream_reply(envelope.message_id, http_status=200, grpc_code=0)),
    )
    assert healthy.http_status == 200


class _SlowSuperLink:
    """Counts requests; answers after ``delay`` seconds, or drops the connection."""

    def __init__(self, *, delay: float = 0.0, drop: bool = False) -> None:
        self.delay = delay
        self.drop = drop
        self.requests = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.requests += 1
        if self.drop:
            assert request.transport is not None
            request.transport.close()
        await asyncio.sleep(self.delay)
        return web.Response(body=b"late", content_type="application/protobuf")


@pytest.fixture
async def serve() -> AsyncIterator[list[web.AppRunner]]:
    runners: list[web.AppRunner] = []
    yield runners
    for runner in runners:
        await runner.cleanup()


async def _start(superlink: _SlowSuperLink, runners: list[web.AppRunner]) -> int:
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", superlink.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    runners.append(runner)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("superlink", "needle"),
    [
        (_SlowSuperLink(delay=2.0), "did not answer PullMessages in time"),
        (_SlowSuperLink(drop=True), "dropped PullMessages"),
    ],
)
async def test_lgc_answers_504_when_the_call_may_have_reached_the_superlink_and_never_reruns(
    superlink: _SlowSuperLink, needle: str, serve: list[web.AppRunner]
) -> None:
    port = await _start(superlink, serve)
    upstream = upstream_for(DIALECT_HTTP, f"127.0.0.1:{port}")
    relay = ReliableReceiver(MemoryDedupStore())
    envelope = _envelope()
    try:
        replies = [
            await relay.handle(envelope.message_id, lambda: upstream.call(envelope, timeout=0.5))
            for _ in range(2)
        ]
    finally:
        await upstream.aclose()
    for reply in replies:
        assert (reply.origin, reply.http_status, reply.grpc_code) == (ORIGIN_GATEWAY, 504, 14)
        assert needle in reply.detail
    # The SuperLink saw it once; the retry got the kept 504 instead of a second run.
    assert superlink.requests == 1 and relay.protocol.cache_hits == 1


async def test_grpc_lgc_answers_504_when_the_superlink_is_too_slow() -> None:
    async def pull(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.sleep(2)
        return request

    handler = grpc.method_handlers_generic_handler(
        "flwr.proto.Fleet", {"PullMessages": grpc.unary_unary_rpc_method_handler(pull)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    upstream = upstream_for(DIALECT_GRPC, f"127.0.0.1:{port}")
    try:
        reply = await upstream.call(_envelope(dialect=DIALECT_GRPC), timeout=0.3)
    finally:
        await upstream.aclose()
        await server.stop(grace=None)
    assert (reply.origin, reply.http_status, reply.grpc_code) == (ORIGIN_GATEWAY, 504, 14)


# --- the relay's control API -----------------------------------------------------------


@pytest.fixture
async def control(tmp_path: Path) -> AsyncIterator[ControlService]:
    manager = offline_job_manager(tmp_path)
    manager.store.add(
        JobRecord(job_id="done", name="n", state=FINISHED, sites=("site-1",), submitted_by="admin")
    )
    yield ControlService(manager)
    await manager.aclose()


def _call(method: str, body: bytes, *, kind: Kind = KIND_ADMIN) -> Envelope:
    return _envelope(method=method, job="", site="", kind=kind, body=body)


@pytest.mark.parametrize(
    ("peer", "envelope", "status", "grpc_code", "needle"),
    [
        # An unknown job is its own kind now, not found by matching the text "no job".
        (ADMIN, _call("GetJob", JobRef(job_id="nope").SerializeToString()), 404, 5, "no job"),
        (ADMIN, _call("AbortJob", JobRef(job_id="nope").SerializeToString()), 404, 5, "no job"),
        (ADMIN, _call("AbortJob", JobRef(job_id="done").SerializeToString()), 409, 6, "ended"),
        (
            SITE,
            _call(
                "ShipLogs",
                ShipLogsRequest(job_id="done", data=b"x").SerializeToString(),
                kind=KIND_AGENT,
            ),
            200,
            0,
            "",
        ),
        (
            Peer("site-2", Role.SITE),
            _call(
                "ShipLogs",
                ShipLogsRequest(job_id="done", data=b"x").SerializeToString(),
                kind=KIND_AGENT,
            ),
            409,
            6,
            "not part of job",
        ),
        (MEMBER, _call("AbortJob", JobRef(job_id="done").SerializeToString()), 403, 7, "only"),
        (SITE, _call("GetJob", b""), 403, 7, "needs a admin certificate"),
        (ADMIN, _call("GetJob", b"\xff"), 400, 3, "malformed GetJob request"),
        (ADMIN, _call("Nope", b""), 404, 5, "no operation 'Nope'"),
        (ADMIN, _call("GetJob", b"", kind=KIND_FLEET), 400, 3, "unknown envelope kind"),
    ],
)
async def test_the_control_api_answers_with_the_kinds_status(
    control: ControlService,
    peer: Peer,
    envelope: Envelope,
    status: int,
    grpc_code: int,
    needle: str,
) -> None:
    reply = await control.handle(peer, envelope)
    assert (reply.http_status, reply.grpc_code) == (status, grpc_code), reply.detail
    assert needle in reply.detail
