"""Hostile load on a real relay process (``flgate relay start``): authenticated sites
``evil``... flood it with large envelopes, stuck handshakes and refused calls, an admin
submits an archive bomb, and the relay keeps its memory, its event loop and its log
bounded, goes on serving the admin, and runs the honest sites' Flower job to the same
result. Figures from ``/proc`` (peak and current RSS) and the relay's own log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Iterator
from pathlib import Path

import pytest

from gateway.control.client import control_call
from gateway.control.jobs.store import JobStore
from gateway.core.config import MiB
from gateway.core.exceptions import ConfigError, GatewayError, RelayBusyError
from gateway.flower.process import free_port
from gateway.proto.control_pb2 import JobInfo, SubmitJobRequest
from gateway.proto.envelope_pb2 import KIND_ADMIN, Envelope
from gateway.transport import connect
from tests.support.archives import ZeroRunGzip, app_members, file_info
from tests.support.federation import RunningFederation, until_state, wait_online
from tests.support.paths import QUICKSTART

pytestmark = pytest.mark.e2e

SCHEMES = ("grpcs", "https", "tcps")
BODY = int(63.5 * MiB)
PEAK_RSS_MIB = 600
"""The issue's target for the relay's peak RSS with the default budgets."""
HONEST = ["honest", "honest-2"]
EVIL = ["evil", "evil-2", "evil-3", "evil-4"]


def _rss_mib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) // 1024
    raise AssertionError(f"no {key} for process {pid}")


@pytest.fixture(scope="module")
def hostile(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningFederation, dict[str, int]]]:
    """A relay on grpcs, https and tcps, the honest sites' agents, the evil sites' kits."""
    fed = RunningFederation.create(tmp_path_factory.mktemp("hostile"), [*HONEST, *EVIL])
    ports = {"https": free_port(), "tcps": free_port()}
    extra = [
        arg
        for scheme, port in ports.items()
        for arg in ("--listen", f"{scheme}://127.0.0.1:{port}")
    ]
    fed.start_relay(extra)
    ports["grpcs"] = fed.relay_port
    for site in HONEST:
        fed.start_site(site)
    try:
        yield fed, ports
    finally:
        fed.close()


def _url(ports: dict[str, int], scheme: str) -> str:
    return f"{scheme}://localhost:{ports[scheme]}"


def _foreign(size: int = 0, site: str = "evil") -> Envelope:
    return Envelope(
        job_id="not-a-job",
        site=site,
        message_id=uuid.uuid4().hex,
        method="PushObject",
        body=b"\0" * size,
    )


async def _admin_is_served(fed: RunningFederation) -> None:
    admin = fed.admin()
    try:
        sites = await asyncio.wait_for(admin.list_sites(), 30)
    finally:
        await admin.aclose()
    assert {site.name for site in sites} <= {*HONEST, *EVIL}


@pytest.mark.parametrize(
    "senders",
    [pytest.param({"evil": scheme}, id=f"one-site-{scheme}") for scheme in SCHEMES]
    + [
        pytest.param(
            dict(zip(EVIL, [*SCHEMES, "grpcs"], strict=True)), id="four-sites-all-transports"
        )
    ],
)
def test_forty_large_envelopes_at_once_keep_the_relay_within_its_memory_budget(
    hostile: tuple[RunningFederation, dict[str, int]], senders: dict[str, str]
) -> None:
    fed, ports = hostile
    assert fed.relay is not None
    sites = list(senders)

    async def attack() -> Counter[str]:
        site_of = [sites[i % len(sites)] for i in range(40)]
        clients = [connect(_url(ports, senders[site]), tls=fed.site_tls[site]) for site in site_of]

        async def one(index: int) -> str:
            try:
                reply = await clients[index].send(_foreign(BODY, site_of[index]), timeout=120)
            except RelayBusyError:
                return "busy"
            except GatewayError as exc:
                return type(exc).__name__
            return str(reply.http_status)

        try:
            return Counter(await asyncio.gather(*(one(i) for i in range(40))))
        finally:
            for client in clients:
                await client.aclose()

    outcomes = asyncio.run(attack())
    # Refused unread ("busy"), or admitted and answered: no such job (404). On 2 shared
    # cores an admitted tcps call may outlast its client's liveness window (the relay
    # reads and drops the refused frames too), which that client reports as ConnectError.
    assert set(outcomes) <= {"busy", "404", "ConnectError"} and outcomes["busy"] >= 20, outcomes
    peak = _rss_mib(fed.relay.pid, "VmHWM")
    print(f"40 x 63.5 MiB from {senders}: {dict(outcomes)}; relay peak RSS so far {peak} MiB")
    assert peak <= PEAK_RSS_MIB
    asyncio.run(_admin_is_served(fed))


def test_stuck_handshakes_are_closed_soon_and_memory_is_given_back(
    hostile: tuple[RunningFederation, dict[str, int]],
) -> None:
    fed, ports = hostile
    assert fed.relay is not None
    log = fed.root / "relay.out"
    before = _rss_mib(fed.relay.pid, "VmRSS")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))
    # From another loopback address than the honest sites' (Linux routes all of
    # 127/8 here), as a flood would come from another host.
    stuck = [
        socket.create_connection(("127.0.0.1", ports[scheme]), source_address=("127.0.0.2", 0))
        for scheme in SCHEMES
        for _ in range(1000)
    ]
    started = time.monotonic()
    try:
        for sock in stuck:
            sock.settimeout(max(0.1, started + 15 - time.monotonic()))
            with contextlib.suppress(ConnectionResetError):  # refused at once, unread
                assert sock.recv(1) == b"", "the relay answered a connection that sent nothing"
        closed_after = time.monotonic() - started
    finally:
        for sock in stuck:
            sock.close()
    assert closed_after < 15
    time.sleep(3)  # the relay collects what the failed handshakes left 2 s after them
    after = _rss_mib(fed.relay.pid, "VmRSS")
    print(f"3000 stuck handshakes: all closed in {closed_after:.1f} s; RSS {before} -> {after} MiB")
    assert after - before <= 50
    assert "refused or failed TLS connections" in log.read_text()
    asyncio.run(_admin_is_served(fed))


async def _honest_job(fed: RunningFederation) -> tuple[JobInfo, float]:
    """The honest sites' job, to its end: its summary and how long it took."""
    admin = fed.admin()
    try:
        await wait_online(admin, len(HONEST))
        started = time.monotonic()
        info = await admin.submit(QUICKSTART, sites=HONEST, name="honest")
        done = await until_state(admin, info.job_id)
        return done, time.monotonic() - started
    finally:
        await admin.aclose()


async def _flood_until(
    fed: RunningFederation, ports: dict[str, int], stop: asyncio.Event
) -> Counter[str]:
    """200 calls in flight at once from ``evil`` for a job it is not in, until ``stop``."""
    client = connect(_url(ports, "grpcs"), tls=fed.site_tls["evil"])
    seen: Counter[str] = Counter()

    async def caller() -> None:
        while not stop.is_set():
            try:
                seen[str((await client.send(_foreign(), timeout=10)).http_status)] += 1
            except RelayBusyError:
                seen["busy"] += 1

    try:
        await asyncio.gather(*(caller() for _ in range(200)))
    finally:
        await client.aclose()
    return seen


def test_a_refusal_flood_is_blocked_makes_a_few_log_lines_and_the_honest_job_goes_on(
    hostile: tuple[RunningFederation, dict[str, int]],
) -> None:
    fed, ports = hostile
    alone, alone_seconds = asyncio.run(_honest_job(fed))
    assert alone.state == "finished", alone
    log = fed.root / "relay.out"
    size_before = log.stat().st_size

    async def job_under_flood() -> tuple[JobInfo, float, Counter[str], float]:
        stop = asyncio.Event()
        started = time.monotonic()
        flood = asyncio.create_task(_flood_until(fed, ports, stop))
        try:
            done, seconds = await _honest_job(fed)
        finally:
            stop.set()
            seen = await flood
        return done, seconds, seen, time.monotonic() - started

    flooded, flooded_seconds, seen, flood_seconds = asyncio.run(job_under_flood())
    asyncio.run(_admin_is_served(fed))
    grown = log.stat().st_size - size_before
    # The job's time under flood against alone goes to the closing note, not into a
    # timed assertion; it must finish with the same result.
    print(f"honest job: {alone_seconds:.1f} s alone, {flooded_seconds:.1f} s under flood")
    assert flooded.state == "finished", flooded
    assert json.loads(flooded.result_json) == json.loads(alone.result_json)
    assert sum(seen.values()) > 1000 and seen["busy"] > seen["404"], seen
    assert grown <= MiB * max(flood_seconds, 60) / 60, (
        f"the relay's log grew {grown} bytes in {flood_seconds:.0f} s"
    )
    assert "blocking a peer that keeps being refused" in log.read_text()


def _bombs() -> dict[str, bytes]:
    """Archives of a valid app plus zeros: one member of 8 GiB; five of 64 MiB (each
    within the unpack limit, 320 MiB in all, so the relay unpacks 256 MiB first)."""
    one = ZeroRunGzip()
    five = ZeroRunGzip()
    for info, data in app_members():
        one.member(info, data)
        five.member(info, data)
    one.member(file_info("tiny_app/weights.bin", 8 * 1024 * MiB))
    for index in range(5):
        five.member(file_info(f"tiny_app/part-{index}.bin", 64 * MiB))
    return {"one-member-of-8-GiB": one.finish(), "five-members-of-64-MiB": five.finish()}


async def _slowest_ping_while(fed: RunningFederation, work: Awaitable[None]) -> float:
    """Seconds of the slowest of the admin calls made every 50 ms while ``work`` runs."""
    admin = fed.admin()
    slowest = 0.0
    done = asyncio.Event()

    async def ping() -> None:
        nonlocal slowest
        while not done.is_set():
            started = time.monotonic()
            await admin.list_sites()
            slowest = max(slowest, time.monotonic() - started)
            await asyncio.sleep(0.05)

    pinger = asyncio.create_task(ping())
    try:
        await asyncio.sleep(0.5)  # the pinger's connection is open
        await work
    finally:
        done.set()
        await pinger
        await admin.aclose()
    return slowest


def test_archive_bombs_are_refused_without_stalling_the_relay_or_leaving_files(
    hostile: tuple[RunningFederation, dict[str, int]],
) -> None:
    fed, _ = hostile
    jobs = fed.root / "relay" / "jobs"
    before = sorted(jobs.rglob("*")) if jobs.exists() else []

    async def submit(archive: bytes) -> None:
        client = connect(fed.relay_url, tls=fed.admin_tls)
        request = SubmitJobRequest(app_archive=archive, sites=HONEST, name="bomb")
        try:
            with pytest.raises(ConfigError, match="limit of 256 MiB") as refused:
                await control_call(client, KIND_ADMIN, "SubmitJob", request, JobInfo, timeout=120)
            assert str(fed.root) not in str(refused.value)  # no paths of the relay's own
        finally:
            await client.aclose()

    for name, archive in _bombs().items():
        slowest = asyncio.run(_slowest_ping_while(fed, submit(archive)))
        print(f"archive bomb {name}: slowest admin call while it was refused {slowest:.3f} s")
        # The bound is 250 ms; on 2 shared cores a call itself may take some
        # of that, so this asserts a loop that was never blocked for a second (an
        # unpack on the loop stalled it for 20 s).
        assert slowest < 1.0, (name, slowest)
        assert (sorted(jobs.rglob("*")) if jobs.exists() else []) == before


def test_sigterm_under_load_stops_the_relay_at_once_without_a_traceback(
    hostile: tuple[RunningFederation, dict[str, int]],
) -> None:
    fed, ports = hostile
    relay = fed.relay
    assert relay is not None

    async def jobs_now() -> dict[str, tuple[str, str]]:
        admin = fed.admin()
        try:
            return {j.job_id: (j.state, j.result_json) for j in await admin.list_jobs()}
        finally:
            await admin.aclose()

    before = asyncio.run(jobs_now())

    async def load_then_stop() -> float:
        client = connect(_url(ports, "tcps"), tls=fed.site_tls["honest"])

        async def caller() -> None:
            with contextlib.suppress(GatewayError):
                while True:
                    await client.send(_foreign(), timeout=10)

        callers = [asyncio.create_task(caller()) for _ in range(50)]
        await asyncio.sleep(2)
        stopped = time.monotonic()
        os.killpg(relay.pid, signal.SIGTERM)
        while relay.poll() is None and time.monotonic() - stopped < 15:
            await asyncio.sleep(0.1)
        elapsed = time.monotonic() - stopped
        for task in callers:
            task.cancel()
        await asyncio.gather(*callers, return_exceptions=True)
        await client.aclose()
        return elapsed

    elapsed = asyncio.run(load_then_stop())
    assert relay.returncode == 0 and elapsed < 10, (relay.returncode, elapsed)
    assert "Traceback" not in (fed.root / "relay.out").read_text()
    store = JobStore(fed.root / "relay" / "jobs.db")
    try:
        kept = {r.job_id: (r.state, r.result_json) for r in store.list()}
    finally:
        store.close()
    assert kept == before  # every job and its result, as the relay reported them
