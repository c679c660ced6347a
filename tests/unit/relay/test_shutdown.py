"""Stopping a relay under load: in phases, every call it took answered, its stores last.

Real parts only: redis-server (over TLS where the federation's PKI signs it), the
transports, the SQLite stores, and a small HTTP server standing in for a job's
SuperLink. The CLI tests run ``flgate relay start`` and ``flgate site start`` as
processes of their own, with no job, so no Flower process starts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from gateway.control.relay_app import RelayApp
from gateway.core.config import TLSConfig
from gateway.core.envelope import make_envelope, new_message_id, now_ms
from gateway.core.exceptions import DeadlineError, GatewayError, JobError
from gateway.flower.install import FlowerInstalls
from gateway.proto.control_pb2 import ListJobsRequest, PollTasksRequest
from gateway.proto.envelope_pb2 import DIALECT_HTTP, KIND_ADMIN, KIND_AGENT, Envelope, Kind
from gateway.relay.server import Relay
from gateway.reliable import DedupStoreError, SqliteDedupStore, State, dedup_key
from gateway.transport import TransportClient, connect
from tests.support.paths import REPO
from tests.support.pki import FederationKits
from tests.support.redis import RedisPKI, RedisServers
from tests.support.relay import flower_not_installed

JOB = "job-a"
STOP_LIMIT = 10.0
"""Seconds from SIGTERM to exit that the relay must keep (issue 14's acceptance)."""


@dataclass
class SlowSuperLink:
    """Answers every POST after ``delay`` seconds, or once ``release`` is set if it has no
    delay; counts the requests that reached it."""

    delay: float | None = 0.5
    release: asyncio.Event = field(default_factory=asyncio.Event)
    started: int = 0
    port: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.started += 1
        if self.delay is None:
            await self.release.wait()
        else:
            await asyncio.sleep(self.delay)
        return web.Response(body=b"done:" + body, content_type="application/protobuf")


async def _serve(superlink: SlowSuperLink) -> web.AppRunner:
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", superlink.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    superlink.port = tcp._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner


def fleet_call(body: bytes = b"x") -> Envelope:
    return make_envelope(
        job_id=JOB,
        site="site-1",
        method="PullMessages",
        dialect=DIALECT_HTTP,
        headers=[],
        body=body,
        deadline_unix_ms=now_ms() + 30_000,
    )


def control_call(kind: Kind, method: str, body: bytes) -> Envelope:
    return Envelope(
        kind=kind,
        message_id=new_message_id(),
        method=method,
        body=body,
        deadline_unix_ms=now_ms() + 30_000,
    )


def poll(wait_ms: int) -> Envelope:
    return control_call(
        KIND_AGENT, "PollTasks", PollTasksRequest(wait_ms=wait_ms).SerializeToString()
    )


def record_of(store: SqliteDedupStore, envelope: Envelope) -> State | None:
    record = store.get(dedup_key(dedup_key("site-1", JOB), envelope.message_id))
    return None if record is None else record.state


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Error records, and any record that carries a traceback, from the gateway's code."""
    return [
        f"{r.name}: {r.getMessage()} {getattr(r, 'error', '')}"
        for r in caplog.records
        if r.name.startswith("gateway") and (r.levelno >= logging.ERROR or r.exc_info)
    ]


@dataclass
class FleetRelay:
    relay: Relay
    superlink: SlowSuperLink
    store_path: Path
    grpcs: TransportClient
    redis: TransportClient


@pytest.fixture
async def fleet_relay(
    tmp_path: Path, federation: FederationKits, redis_servers: RedisServers
) -> AsyncIterator[FleetRelay]:
    """A relay on grpcs and redis with a SQLite dedup store, routing job-a to a SuperLink
    that takes half a second per call."""
    superlink = SlowSuperLink(delay=0.5)
    runner = await _serve(superlink)
    store_path = tmp_path / "dedup.db"
    relay = Relay(
        listen_urls=["grpcs://127.0.0.1:0", redis_servers.plain.url],
        tls=federation.relay,
        dedup_store=SqliteDedupStore(store_path),
    )
    await relay.start()
    relay.add_job(
        JOB,
        sites=frozenset({"site-1"}),
        dialect=DIALECT_HTTP,
        superlink=f"127.0.0.1:{superlink.port}",
    )
    site = federation.sites["site-1"]
    grpcs = connect(f"grpcs://localhost:{relay.ports[0]}", tls=site)
    redis = connect(redis_servers.plain.url, tls=site)
    try:
        yield FleetRelay(relay, superlink, store_path, grpcs, redis)
    finally:
        superlink.release.set()
        await grpcs.aclose()
        await redis.aclose()
        await relay.aclose()
        await runner.cleanup()


async def test_fleet_calls_in_flight_when_a_relay_stops_are_answered_and_their_replies_kept(
    fleet_relay: FleetRelay, caplog: pytest.LogCaptureFixture
) -> None:
    path = fleet_relay
    calls = [fleet_call(str(i).encode()) for i in range(20)]
    clients = [path.grpcs, path.redis]
    sent = [
        asyncio.create_task(clients[i % 2].send(call, timeout=20)) for i, call in enumerate(calls)
    ]
    while path.superlink.started < len(calls):
        await asyncio.sleep(0.01)

    closing = asyncio.create_task(path.relay.aclose())
    await asyncio.sleep(0.05)  # the relay drains: a new call is refused, not run
    late = await path.grpcs.send(fleet_call(b"late"), timeout=5)
    await closing
    replies = await asyncio.gather(*sent)

    assert [r.http_status for r in replies] == [200] * len(calls)
    assert [r.body for r in replies] == [b"done:" + c.body for c in calls]
    assert late.http_status == 503 and "stopping" in late.detail
    assert path.superlink.started == len(calls)
    with SqliteDedupStore(path.store_path) as store:
        assert {record_of(store, c) for c in calls} == {State.COMPLETED}
        assert record_of(store, fleet_call(b"late")) is None
    assert errors_logged(caplog) == []


async def test_calls_that_outlast_the_drain_are_answered_504_and_never_run_again(
    fleet_relay: FleetRelay, caplog: pytest.LogCaptureFixture
) -> None:
    path = fleet_relay
    path.superlink.delay = None  # it answers only when the test ends
    calls = [fleet_call(b"grpcs"), fleet_call(b"redis")]
    sent = [
        asyncio.create_task(client.send(call, timeout=20))
        for client, call in zip([path.grpcs, path.redis], calls, strict=True)
    ]
    while path.superlink.started < len(calls):
        await asyncio.sleep(0.01)

    started = time.monotonic()
    assert await path.relay.drain(timeout=0.3) == len(calls)
    await path.relay.aclose()
    replies = await asyncio.gather(*sent)

    assert time.monotonic() - started < 3
    assert [r.http_status for r in replies] == [504, 504]
    assert all("may have reached the SuperLink" in r.detail for r in replies), [
        r.detail for r in replies
    ]
    with SqliteDedupStore(path.store_path) as store:
        # Pending, as after a crash: a retry of the same id is refused, never run twice.
        assert {record_of(store, c) for c in calls} == {State.PENDING}
    assert errors_logged(caplog) == []


async def test_a_closed_dedup_store_refuses_every_use_with_its_own_error(tmp_path: Path) -> None:
    store = SqliteDedupStore(tmp_path / "dedup.db")
    store.mark_pending("m", 1.0)
    store.close()
    store.close()  # a second close does nothing
    for use in (lambda: store.get("m"), lambda: store.mark_completed("m", b"", 2.0), store.__len__):
        with pytest.raises(DedupStoreError, match="is closed"):
            use()


# -- the relay process: job manager, control plane, Redis -----------------------


@pytest.fixture
async def relay_app(
    tmp_path: Path, redis_servers: RedisServers, redis_pki: RedisPKI
) -> AsyncIterator[RelayApp]:
    """A relay with its job manager (no job) on the TLS redis-server."""
    app = RelayApp(
        listen_urls=[redis_servers.tls.url],
        tls=redis_pki.federation.relay,
        workspace=tmp_path / "relay",
        installs=FlowerInstalls((flower_not_installed(tmp_path / "no-flower-here"),)),
    )
    await app.start()
    try:
        yield app
    finally:
        await app.aclose()


@dataclass
class Flood:
    """Calls sent in loops until stopped; what each got back, by status or error."""

    outcomes: dict[str, int] = field(default_factory=dict)
    running: bool = True
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self, client: TransportClient, make: Callable[[], Envelope], loops: int) -> None:
        async def loop() -> None:
            while self.running:
                try:
                    reply = await client.send(make(), timeout=3)
                    outcome = str(reply.http_status)
                except GatewayError as exc:
                    outcome = type(exc).__name__
                self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

        self.tasks += [asyncio.create_task(loop()) for _ in range(loops)]

    async def stop(self) -> None:
        self.running = False
        await asyncio.gather(*self.tasks)


async def _until(check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_a_relay_stopped_under_a_flood_of_redis_polls_answers_them_before_closing_its_stores(
    relay_app: RelayApp,
    redis_servers: RedisServers,
    redis_pki: RedisPKI,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before, the job store closed first and the polls in flight then read it: a
    ``sqlite3.ProgrammingError`` traceback and a 500 for each."""
    site = connect(redis_servers.tls.url, tls=redis_pki.federation.sites["site-1"])
    admin = connect(redis_servers.tls.url, tls=redis_pki.federation.admin)
    flood = Flood()
    flood.start(site, lambda: poll(wait_ms=300), loops=10)
    list_jobs = ListJobsRequest().SerializeToString()
    flood.start(admin, lambda: control_call(KIND_ADMIN, "ListJobs", list_jobs), loops=10)
    try:
        await _until(lambda: flood.outcomes.get("200", 0) > 20 and relay_app.in_flight > 0)
        await relay_app.aclose()
    finally:
        await flood.stop()
        await site.aclose()
        await admin.aclose()

    # Answered, refused as the relay stopped (503), or never read (left in Redis).
    assert set(flood.outcomes) <= {"200", "503", DeadlineError.__name__}, flood.outcomes
    assert errors_logged(caplog) == []
    with pytest.raises(JobError, match=r"job store .* is closed"):
        relay_app.manager.store.list()


async def test_a_relay_answers_its_long_polls_at_once_when_it_stops(
    relay_app: RelayApp, redis_servers: RedisServers, redis_pki: RedisPKI
) -> None:
    site = connect(redis_servers.tls.url, tls=redis_pki.federation.sites["site-1"])
    try:
        waiting = asyncio.create_task(site.send(poll(wait_ms=20_000), timeout=30))
        await _until(lambda: relay_app.in_flight == 1)
        started = time.monotonic()
        await relay_app.aclose()
        reply = await waiting
    finally:
        await site.aclose()

    assert time.monotonic() - started < 2
    assert reply.http_status == 503 and "stopping" in reply.detail


# -- `flgate relay start` and `flgate site start` as processes ---------------------


def _no_flower(directory: Path) -> Path:
    """A bin directory that passes the relay's checks for Flower (``flwr --version`` names
    a supported release); nothing else here may run."""
    directory.mkdir()
    for name in ("flower-superlink", "flower-supernode", "flwr"):
        program = directory / name
        program.write_text(
            '#!/bin/sh\n[ "$1" = --version ] && echo "Flower version: 1.42.0" && exit 0\n'
            "echo 'no Flower in this test' >&2\nexit 1\n"
        )
        program.chmod(0o755)
    return directory


def _tls_args(tls: TLSConfig) -> list[str]:
    return ["--ca", str(tls.ca_cert), "--cert", str(tls.cert), "--key", str(tls.key)]


def _flgate(*argv: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLGATE_")}
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", *argv],
        cwd=REPO,
        env=dict(env, PYTHONUNBUFFERED="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def _read_line_with(process: subprocess.Popen[str], text: str) -> str:
    assert process.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 60)
    while text not in line:
        assert line, f"exited before saying {text!r}: {process.communicate()}"
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 60)
    return line


async def _stop(process: subprocess.Popen[str]) -> tuple[int | None, float, str]:
    """SIGTERM; the exit code (None if still running after the limit), seconds, stderr."""
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        code: int | None = await asyncio.to_thread(process.wait, STOP_LIMIT)
    except subprocess.TimeoutExpired:
        code = None
        process.kill()
    took = time.monotonic() - started
    _, stderr = await asyncio.to_thread(process.communicate)
    return code, took, stderr


async def test_relay_start_exits_0_within_10_s_of_sigterm_under_a_redis_call_flood(
    tmp_path: Path, redis_servers: RedisServers, redis_pki: RedisPKI
) -> None:
    fed = redis_pki.federation
    relay = _flgate(
        "relay", "start", "--listen", redis_servers.tls.url, *_tls_args(fed.relay),
        "--workspace", str(tmp_path / "relay"), "--flower-bin", str(_no_flower(tmp_path / "bin")),
    )  # fmt: skip
    try:
        await _read_line_with(relay, "relay listening on")
        site = connect(redis_servers.tls.url, tls=fed.sites["site-1"])
        admin = connect(redis_servers.tls.url, tls=fed.admin)
        flood = Flood()
        flood.start(site, lambda: poll(wait_ms=500), loops=20)
        list_jobs = ListJobsRequest().SerializeToString()
        flood.start(admin, lambda: control_call(KIND_ADMIN, "ListJobs", list_jobs), loops=20)
        await _until(lambda: flood.outcomes.get("200", 0) > 50, timeout=30)
        code, took, stderr = await _stop(relay)
        await flood.stop()
        await site.aclose()
        await admin.aclose()
    finally:
        if relay.poll() is None:
            relay.kill()
            relay.wait()

    assert code == 0, stderr
    assert took < STOP_LIMIT
    assert "Traceback" not in stderr
    assert "relay stopping: draining" in stderr and "relay stopped" in stderr
    assert "500" not in flood.outcomes and "409" not in flood.outcomes, flood.outcomes


async def test_site_start_exits_0_on_sigterm_without_a_traceback(
    tmp_path: Path, redis_servers: RedisServers, redis_pki: RedisPKI
) -> None:
    """No relay reads the site's polls here: the stop must not wait for their answers."""
    site = _flgate(
        "site", "start", "--relay", redis_servers.tls.url,
        *_tls_args(redis_pki.federation.sites["site-1"]),
        "--workspace", str(tmp_path / "site"), "--flower-bin", str(_no_flower(tmp_path / "bin")),
    )  # fmt: skip
    try:
        await _read_line_with(site, "dialing")
        await asyncio.sleep(0.5)  # its first poll is in flight
        code, took, stderr = await _stop(site)
    finally:
        if site.poll() is None:
            site.kill()
            site.wait()

    assert code == 0, stderr
    assert took < STOP_LIMIT
    assert "Traceback" not in stderr and "site stopped" in stderr
