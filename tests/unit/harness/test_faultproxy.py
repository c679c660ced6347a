"""The fault-injection proxy: its pure schedule, then the proxy on real sockets (port 0)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.core.identity import Role
from gateway.harness.faultproxy import (
    ChunkDecision,
    Direction,
    Fault,
    FaultConfig,
    FaultProxy,
    FaultSchedule,
)
from gateway.provisioning.certs import CertificateAuthority, cert_pem, key_pem

pytestmark = pytest.mark.timeout(30)

UNIT = 1.0
"""Seconds; every timeout below is a multiple of it."""
HOST = "127.0.0.1"

# ---------------------------------------------------------------------------
# The pure schedule: events in, decisions out, no clock.

EVERYTHING = FaultConfig(
    seed=7,
    drop_every=(2.0, 5.0),
    drop_after_bytes=(50_000, 90_000),
    delay_ms=(1.0, 50.0),
    stall_probability=0.2,
    stall_seconds=(0.1, 0.3),
    truncate_probability=0.05,
)


def trace(config: FaultConfig, connections: int = 4) -> list[Any]:
    """Feed the same chunks to every connection; return what was decided."""
    schedule = FaultSchedule(config)
    out: list[Any] = []
    for index in range(connections):
        faults = schedule.connection(index, now=10.0)
        decisions: list[ChunkDecision] = []
        for step in range(40):
            direction = Direction.TO_TARGET if step % 3 else Direction.TO_CLIENT
            decisions.append(faults.on_chunk(direction, 1000 + 37 * step, 10.0 + 0.05 * step))
        out.append((faults.deadline, faults.byte_limit, decisions))
    return out


def test_same_seed_same_decisions_other_seed_others() -> None:
    assert trace(EVERYTHING) == trace(EVERYTHING)
    other = FaultConfig(**{**EVERYTHING.__dict__, "seed": 8})
    assert trace(other) != trace(EVERYTHING)


def test_connections_differ_but_stay_in_range() -> None:
    schedule = FaultSchedule(EVERYTHING)
    lifetimes = {schedule.connection(i, now=0.0).deadline for i in range(20)}
    assert len(lifetimes) == 20
    assert all(d is not None and 2.0 <= d <= 5.0 for d in lifetimes)


def test_defaults_inject_nothing() -> None:
    faults = FaultSchedule(FaultConfig(seed=1)).connection(0, now=5.0)
    assert faults.deadline is None and faults.byte_limit is None
    for step in range(100):
        now = 5.0 + step
        decision = faults.on_chunk(Direction.TO_CLIENT, 4096, now)
        assert decision == ChunkDecision(
            release_at=now, forward=4096, delay=0.0, stall=0.0, cut=None
        )


def test_enabling_a_fault_does_not_reshuffle_the_others() -> None:
    truncating = FaultConfig(seed=3, truncate_probability=0.1)
    with_delay = FaultConfig(seed=3, truncate_probability=0.1, delay_ms=(5.0, 10.0))

    def cuts(config: FaultConfig) -> list[tuple[int, Fault | None]]:
        return [(d.forward, d.cut) for (_, _, ds) in trace(config, 8) for d in ds]

    assert cuts(truncating) == cuts(with_delay)
    assert any(cut is Fault.TRUNCATE for _, cut in cuts(truncating))


def test_delay_keeps_order_and_stall_holds_both_directions() -> None:
    config = FaultConfig(seed=2, delay_ms=(0.0, 100.0), stall_probability=1.0, stall_seconds=(1, 1))
    faults = FaultSchedule(config).connection(0, now=0.0)
    first = faults.on_chunk(Direction.TO_TARGET, 10, 0.0)
    assert first.stall == 1.0 and first.release_at >= 1.0
    second = faults.on_chunk(Direction.TO_CLIENT, 10, 0.01)
    assert second.release_at >= first.release_at + 1.0  # held by the first stall, then its own
    releases = [faults.on_chunk(Direction.TO_TARGET, 10, 0.02).release_at for _ in range(10)]
    assert releases == sorted(releases)


def test_byte_limit_cuts_mid_chunk_and_then_nothing_passes() -> None:
    faults = FaultSchedule(FaultConfig(seed=0, drop_after_bytes=(10, 10))).connection(0, now=0.0)
    assert faults.on_chunk(Direction.TO_TARGET, 6, 0.0).forward == 6
    cut = faults.on_chunk(Direction.TO_CLIENT, 6, 0.0)
    assert (cut.forward, cut.cut) == (4, Fault.DROP)
    after = faults.on_chunk(Direction.TO_TARGET, 6, 0.0)
    assert (after.forward, after.cut) == (0, Fault.DROP)


def test_deadline_drops_and_truncation_forwards_less() -> None:
    faults = FaultSchedule(FaultConfig(seed=0, drop_every=(1.0, 1.0))).connection(0, now=3.0)
    assert faults.deadline == 4.0
    assert faults.on_chunk(Direction.TO_TARGET, 5, 3.5).cut is None
    assert faults.on_chunk(Direction.TO_TARGET, 5, 4.0).cut is Fault.DROP
    faults = FaultSchedule(FaultConfig(seed=0, truncate_probability=1.0)).connection(0, now=0.0)
    decision = faults.on_chunk(Direction.TO_CLIENT, 1000, 0.0)
    assert decision.cut is Fault.TRUNCATE and 0 <= decision.forward < 1000


@pytest.mark.parametrize(
    "bad",
    [
        {"drop_every": (0.0, 1.0)},
        {"drop_every": (3.0, 2.0)},
        {"drop_after_bytes": (0, 10)},
        {"delay_ms": (-1.0, 1.0)},
        {"stall_probability": 1.5},
        {"truncate_probability": -0.1},
        {"stall_seconds": (2.0, 1.0)},
    ],
)
def test_config_rejects_nonsense(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        FaultConfig(seed=0, **bad)


# ---------------------------------------------------------------------------
# The proxy on real sockets.


@dataclass
class EchoServer:
    """Echoes every byte back and records what each connection received."""

    context: ssl.SSLContext | None = None
    received: list[bytearray] = field(default_factory=list)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, HOST, 0, ssl=self.context)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        seen = bytearray()
        self.received.append(seen)
        try:
            while data := await reader.read(65536):
                seen += data
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except OSError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            self.tasks.discard(task)

    async def aclose(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    server = EchoServer()
    await server.start()
    yield server
    await server.aclose()


@contextlib.asynccontextmanager
async def proxy_to(echo: EchoServer, **config: Any) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(HOST, echo.port, FaultConfig(seed=11, **config)) as proxy:
        yield proxy


@contextlib.asynccontextmanager
async def client(
    port: int, **kwargs: Any
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(HOST, port, **kwargs)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def echo_through(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes
) -> bytes:
    """Send while reading, so that large payloads cannot fill every buffer and block."""

    async def send() -> None:
        writer.write(payload)
        await writer.drain()

    sender = asyncio.create_task(send())
    try:
        return await asyncio.wait_for(reader.readexactly(len(payload)), 5 * UNIT)
    finally:
        await sender


async def read_until_gone(reader: asyncio.StreamReader) -> bytes:
    """Everything the peer sent before its EOF or reset."""
    got = bytearray()
    with contextlib.suppress(OSError):
        while data := await asyncio.wait_for(reader.read(65536), 2 * UNIT):
            got += data
    return bytes(got)


async def eventually(condition: Callable[[], bool]) -> None:
    for _ in range(100):
        if condition():
            return
        await asyncio.sleep(UNIT / 100)
    assert condition()


async def test_clean_pass_through_both_ways(echo: EchoServer) -> None:
    payload = random.Random(1).randbytes(1024 * 1024)
    async with proxy_to(echo) as proxy:
        async with client(proxy.port) as (reader, writer):
            assert await echo_through(reader, writer, payload) == payload
            writer.write_eof()  # the half-close travels to the echo server and back
            assert await asyncio.wait_for(reader.read(), UNIT) == b""
        await eventually(lambda: proxy.stats.active == 0)
        stats = proxy.stats
        assert stats.bytes_to_target == stats.bytes_to_client == len(payload)
        assert (stats.connections, stats.drops, stats.truncations, stats.stalls) == (1, 0, 0, 0)
    assert bytes(echo.received[0]) == payload


async def test_drop_cuts_on_time_and_new_connections_work(echo: EchoServer) -> None:
    loop = asyncio.get_running_loop()
    async with proxy_to(echo, drop_every=(0.2, 0.2)) as proxy:
        for accepted in (1, 2):
            start = loop.time()
            async with client(proxy.port) as (reader, writer):
                writer.write(b"ping")
                # Echoed at once, then cut; only a badly overloaded machine misses the echo.
                assert b"ping".startswith(await read_until_gone(reader))
                assert loop.time() - start >= 0.15
            assert (proxy.stats.connections, proxy.stats.drops) == (accepted, accepted)


async def test_drop_after_bytes_cuts_mid_reply(echo: EchoServer) -> None:
    async with proxy_to(echo, drop_after_bytes=(10, 10)) as proxy:
        async with client(proxy.port) as (reader, writer):
            writer.write(b"abcdef")
            got = await read_until_gone(reader)
        assert b"abcd".startswith(got)
        await eventually(lambda: proxy.stats.active == 0)
        assert (proxy.stats.bytes_to_target, proxy.stats.bytes_to_client) == (6, 4)
        assert proxy.stats.drops == 1


async def test_truncate_forwards_a_prefix_then_closes(echo: EchoServer) -> None:
    payload = bytes(range(256)) * 4
    async with proxy_to(echo, truncate_probability=1.0) as proxy:
        async with client(proxy.port) as (reader, writer):
            writer.write(payload)
            got = await read_until_gone(reader)
        await eventually(lambda: proxy.stats.active == 0)
        assert proxy.stats.truncations == 1
        assert proxy.stats.bytes_to_target < len(payload)
    await eventually(lambda: not echo.tasks)
    arrived = bytes(echo.received[0])
    assert len(arrived) < len(payload) and payload.startswith(arrived)
    assert arrived.startswith(got)


async def test_delay_adds_latency(echo: EchoServer) -> None:
    loop = asyncio.get_running_loop()
    async with (
        proxy_to(echo, delay_ms=(100.0, 100.0)) as proxy,
        client(proxy.port) as (reader, writer),
    ):
        start = loop.time()
        assert await echo_through(reader, writer, b"slow") == b"slow"
        assert loop.time() - start >= 0.18  # 100 ms each way


async def test_stall_holds_then_continues(echo: EchoServer) -> None:
    loop = asyncio.get_running_loop()
    config = {"stall_probability": 1.0, "stall_seconds": (0.15, 0.15)}
    async with proxy_to(echo, **config) as proxy:
        async with client(proxy.port) as (reader, writer):
            start = loop.time()
            assert await echo_through(reader, writer, b"held") == b"held"
            assert loop.time() - start >= 0.25
        assert proxy.stats.stalls >= 2


async def test_cut_all_resets_every_live_connection(echo: EchoServer) -> None:
    async with proxy_to(echo) as proxy:
        async with client(proxy.port) as one, client(proxy.port) as two:
            for reader, writer in (one, two):
                assert await echo_through(reader, writer, b"hi") == b"hi"
            assert proxy.cut_all() == 2
            with pytest.raises(ConnectionResetError):  # an RST, not a polite FIN
                await asyncio.wait_for(one[0].read(), UNIT)
            assert await read_until_gone(two[0]) == b""
        await eventually(lambda: proxy.stats.active == 0)
        assert proxy.stats.drops == 2
        assert proxy.cut_all() == 0
        async with client(proxy.port) as (reader, writer):
            assert await echo_through(reader, writer, b"back") == b"back"


async def test_pause_refuses_new_connections_and_resume_reopens(echo: EchoServer) -> None:
    async with proxy_to(echo) as proxy, client(proxy.port) as (reader, writer):
        port = proxy.port
        proxy.pause()
        assert proxy.paused
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(HOST, port)
        assert await echo_through(reader, writer, b"still") == b"still"
        proxy.resume()
        assert proxy.port == port
        async with client(port) as (reader2, writer2):
            assert await echo_through(reader2, writer2, b"open") == b"open"
        assert proxy.stats.connections == 2


async def test_unreachable_target_resets_the_client() -> None:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        closed_port = probe.getsockname()[1]
    async with FaultProxy(HOST, closed_port) as proxy:
        async with client(proxy.port) as (reader, _):
            assert await read_until_gone(reader) == b""
        await eventually(lambda: proxy.stats.active == 0)
        assert proxy.stats.connect_failures == 1


def _proxy_tasks() -> list[asyncio.Task[Any]]:
    """Tasks running the proxy's per-connection coroutines (``_Link.run`` and its pumps)."""
    tasks = asyncio.all_tasks()
    return [t for t in tasks if getattr(t.get_coro(), "__qualname__", "").startswith("_Link.")]


async def test_aclose_leaves_no_task_even_mid_stall(echo: EchoServer) -> None:
    loop = asyncio.get_running_loop()
    proxy = FaultProxy(
        HOST, echo.port, FaultConfig(seed=5, stall_probability=1.0, stall_seconds=(30, 30))
    )
    await proxy.start()
    async with client(proxy.port) as (idle, _), client(proxy.port) as (stalled, writer):
        writer.write(b"stuck")
        await eventually(lambda: proxy.stats.stalls == 1)
        assert len(_proxy_tasks()) >= 2
        start = loop.time()
        await proxy.aclose()
        assert loop.time() - start < 5 * UNIT  # far below the 30 s stall
        assert _proxy_tasks() == []
        assert await read_until_gone(idle) == b""
        assert await read_until_gone(stalled) == b""
    await proxy.aclose()  # idempotent
    with pytest.raises(RuntimeError):
        proxy.pause()


async def test_tls_passes_through_untouched(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("t")
    cert, key = ca.issue("relay", Role.RELAY, hosts=(HOST,))
    (tmp_path / "relay.crt").write_bytes(cert_pem(cert))
    (tmp_path / "relay.key").write_bytes(key_pem(key))
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(tmp_path / "relay.crt", tmp_path / "relay.key")
    client_context = ssl.create_default_context(cadata=cert_pem(ca.cert).decode())
    echo = EchoServer(context=server_context)
    await echo.start()
    payload = random.Random(2).randbytes(200_000)
    try:
        async with FaultProxy(HOST, echo.port, FaultConfig(seed=0, delay_ms=(1, 5))) as proxy:
            async with client(proxy.port, ssl=client_context, server_hostname=HOST) as (r, w):
                peer = w.get_extra_info("peercert")
                assert (("commonName", "relay"),) in peer["subject"]
                assert await echo_through(r, w, payload) == payload
            await eventually(lambda: proxy.stats.active == 0)
            # TLS records are larger than the plaintext: the proxy saw ciphertext.
            assert proxy.stats.bytes_to_target > len(payload)
            assert proxy.stats.bytes_to_client > len(payload)
    finally:
        await echo.aclose()
    assert bytes(echo.received[0]) == payload
