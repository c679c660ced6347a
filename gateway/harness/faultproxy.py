"""A fault-injection TCP proxy for loopback tests and benchmarks.

Placed between a site and the relay, it forwards raw bytes (so TLS, gRPC and
any other protocol pass through untouched) and breaks the path on purpose:
connection cuts, latency, stalls and truncated chunks. Two layers, as elsewhere
in the gateway:

* :class:`FaultSchedule` is pure: a seeded plan that, given a connection's
  index, the time and the sizes of the chunks it carries, decides every fault.
  It never reads a clock and never imports asyncio, so the same seed fed the
  same events gives the same decisions and a failing run can be replayed.
* :class:`FaultProxy` is the asyncio shell: it accepts, dials the target,
  moves bytes, sleeps until each chunk's release time and cuts when told to.

Every random draw comes from a stream of its own (per connection, per
direction), so decisions do not depend on how the two directions or several
connections interleave, and turning one fault on does not reshuffle the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import socket
import struct
from dataclasses import dataclass

log = logging.getLogger(__name__)

_LINGER_RESET = struct.pack("ii", 1, 0)


class Direction(enum.Enum):
    """Which way a chunk travels through the proxy."""

    TO_TARGET = "to_target"
    TO_CLIENT = "to_client"


class Fault(enum.Enum):
    """The kinds of fault the proxy injects."""

    DROP = "drop"
    """Close both sides abruptly (an RST where the platform allows it)."""
    DELAY = "delay"
    """Hold every chunk for some milliseconds (latency, not a bandwidth cap)."""
    STALL = "stall"
    """Stop forwarding for some seconds, then go on."""
    TRUNCATE = "truncate"
    """Forward only the start of a chunk, then drop."""


def _check_range(name: str, value: tuple[float, float], minimum: float) -> None:
    low, high = value
    if not minimum <= low <= high:
        raise ValueError(f"{name} must be (low, high) with {minimum} <= low <= high, not {value}")


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be within [0, 1], not {value}")


@dataclass(frozen=True, kw_only=True)
class FaultConfig:
    """What to break and how often; every fault is off unless set.

    Ranges are ``(low, high)`` and values are drawn uniformly from them.
    """

    seed: int
    """Seeds every decision: the same seed gives the same schedule."""
    drop_every: tuple[float, float] | None = None
    """Cut each connection this many seconds after it was accepted, so a client
    that reconnects at once sees a cut every ``low``..``high`` seconds; ``None``
    never cuts on time. ``(2.0, 5.0)`` keeps a gRPC channel reconnecting."""
    drop_after_bytes: tuple[int, int] | None = None
    """Cut each connection once it has carried this many bytes, both ways
    together, mid-chunk if need be: a cut that does not depend on timing."""
    delay_ms: tuple[float, float] | None = None
    """Latency added to every chunk, in milliseconds; ``None`` adds none."""
    stall_probability: float = 0.0
    """Chance that a chunk starts a stall of the whole connection."""
    stall_seconds: tuple[float, float] = (0.5, 2.0)
    """How long a stall holds the connection."""
    truncate_probability: float = 0.0
    """Chance that a chunk is cut short: only its start is forwarded, then drop."""

    def __post_init__(self) -> None:
        if self.drop_every is not None:
            _check_range("drop_every", self.drop_every, 0.0)
            if self.drop_every[0] <= 0.0:
                raise ValueError(f"drop_every must be positive, not {self.drop_every}")
        if self.drop_after_bytes is not None:
            _check_range("drop_after_bytes", self.drop_after_bytes, 1)
        if self.delay_ms is not None:
            _check_range("delay_ms", self.delay_ms, 0.0)
        _check_range("stall_seconds", self.stall_seconds, 0.0)
        _check_probability("stall_probability", self.stall_probability)
        _check_probability("truncate_probability", self.truncate_probability)


@dataclass(frozen=True, kw_only=True)
class ChunkDecision:
    """What to do with one chunk read from one side."""

    release_at: float
    """When to forward it, on the clock the caller passes as ``now``; never
    before the previous chunk in the same direction, so order is kept."""
    forward: int
    """How many leading bytes of the chunk to forward."""
    delay: float
    """Latency added to this chunk, in seconds."""
    stall: float
    """Seconds of stall this chunk starts; 0.0 when it starts none."""
    cut: Fault | None
    """:attr:`Fault.DROP` or :attr:`Fault.TRUNCATE`: close both sides once the
    ``forward`` bytes are out; ``None`` to go on."""


def _rng(seed: int, index: int, stream: str) -> random.Random:
    # String seeds are hashed with SHA-512, so streams are stable across runs
    # and independent of PYTHONHASHSEED.
    return random.Random(f"faultproxy/{seed}/{index}/{stream}")


def _scale(unit: float, bounds: tuple[float, float]) -> float:
    low, high = bounds
    return low + (high - low) * unit


class ConnectionFaults:
    """The faults of one connection: a pure state machine fed chunk by chunk."""

    def __init__(self, config: FaultConfig, index: int, *, now: float) -> None:
        self.config = config
        self.index = index
        self.deadline: float | None = None
        """When the connection is cut (``now`` + a lifetime drawn from ``drop_every``)."""
        if config.drop_every is not None:
            lifetime = _scale(_rng(config.seed, index, "life").random(), config.drop_every)
            self.deadline = now + lifetime
        self.byte_limit: int | None = None
        """Bytes, both ways together, after which the connection is cut."""
        if config.drop_after_bytes is not None:
            self.byte_limit = _rng(config.seed, index, "bytes").randint(*config.drop_after_bytes)
        self.carried = 0
        self.cut: Fault | None = None
        self._rngs = {d: _rng(config.seed, index, d.value) for d in Direction}
        self._last_release = dict.fromkeys(Direction, now)
        self._stall_until = now

    def on_chunk(self, direction: Direction, size: int, now: float) -> ChunkDecision:
        """Decide the fate of a chunk of ``size`` bytes read at ``now``."""
        if size <= 0:
            raise ValueError(f"a chunk has at least one byte, not {size}")
        # Always the same five draws, whatever is enabled.
        stall_unit, stall_len, delay_unit, trunc_unit, keep_unit = (
            self._rngs[direction].random() for _ in range(5)
        )
        if self.cut is not None:
            return ChunkDecision(release_at=now, forward=0, delay=0.0, stall=0.0, cut=self.cut)
        if self.deadline is not None and now >= self.deadline:
            self.cut = Fault.DROP
            return ChunkDecision(release_at=now, forward=0, delay=0.0, stall=0.0, cut=self.cut)
        config = self.config
        delay = 0.0 if config.delay_ms is None else _scale(delay_unit, config.delay_ms) / 1000
        release = max(now + delay, self._last_release[direction], self._stall_until)
        stall = 0.0
        if stall_unit < config.stall_probability:
            stall = _scale(stall_len, config.stall_seconds)
            release += stall
            self._stall_until = release
        self._last_release[direction] = release
        forward = size
        if self.byte_limit is not None and self.carried + size >= self.byte_limit:
            forward, self.cut = self.byte_limit - self.carried, Fault.DROP
        elif trunc_unit < config.truncate_probability:
            forward, self.cut = int(keep_unit * size), Fault.TRUNCATE
        self.carried += forward
        return ChunkDecision(
            release_at=release, forward=forward, delay=delay, stall=stall, cut=self.cut
        )


class FaultSchedule:
    """The seeded plan of faults for every connection, by accept order."""

    def __init__(self, config: FaultConfig) -> None:
        self.config = config

    def connection(self, index: int, *, now: float) -> ConnectionFaults:
        """The faults of the ``index``-th connection (from 0), accepted at ``now``."""
        return ConnectionFaults(self.config, index, now=now)


@dataclass
class ProxyStats:
    """Counters since the proxy started."""

    connections: int = 0
    """Connections accepted."""
    active: int = 0
    """Connections alive now."""
    connect_failures: int = 0
    """Accepted connections reset because the target could not be reached."""
    drops: int = 0
    """Connections cut by ``drop_every``, ``drop_after_bytes`` or :meth:`FaultProxy.cut_all`."""
    truncations: int = 0
    """Connections cut short in the middle of a chunk."""
    stalls: int = 0
    """Stalls started."""
    bytes_to_target: int = 0
    """Bytes forwarded from clients to the target (handed to the kernel)."""
    bytes_to_client: int = 0
    """Bytes forwarded from the target to clients (handed to the kernel)."""


def _linger_reset(sock: socket.socket | None) -> None:
    """Make the next close of ``sock`` send an RST instead of a FIN."""
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)


def _reset(writer: asyncio.StreamWriter) -> None:
    _linger_reset(writer.get_extra_info("socket"))
    writer.transport.abort()


_Item = tuple[ChunkDecision, bytes] | None
"""A chunk on its way through a link, or ``None`` for end of stream."""


class _Link:
    """One proxied connection: a reader and a writer task for each direction."""

    def __init__(self, proxy: FaultProxy, client: socket.socket, faults: ConnectionFaults) -> None:
        self._proxy = proxy
        self._client_sock = client
        self.faults = faults
        self.task: asyncio.Task[None] | None = None
        self._client: asyncio.StreamWriter | None = None
        self._target: asyncio.StreamWriter | None = None
        self._pumps: list[asyncio.Task[None]] = []
        self._over = False

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        proxy = self._proxy
        deadline = self.faults.deadline
        timer = None if deadline is None else loop.call_at(deadline, self.cut, Fault.DROP)
        try:
            try:
                target_r, self._target = await asyncio.open_connection(
                    proxy.target_host, proxy.target_port
                )
            except OSError as exc:
                proxy.stats.connect_failures += 1
                log.debug("connection %d: target unreachable: %s", self.faults.index, exc)
                return
            client_r, self._client = await asyncio.open_connection(sock=self._client_sock)
            for writer in (self._client, self._target):
                # drain() then waits until every byte is in the kernel.
                writer.transport.set_write_buffer_limits(high=0)
            to_target: asyncio.Queue[_Item] = asyncio.Queue(proxy.queue_chunks)
            to_client: asyncio.Queue[_Item] = asyncio.Queue(proxy.queue_chunks)
            self._pumps = [
                loop.create_task(self._read(Direction.TO_TARGET, client_r, to_target)),
                loop.create_task(self._write(Direction.TO_TARGET, self._target, to_target)),
                loop.create_task(self._read(Direction.TO_CLIENT, target_r, to_client)),
                loop.create_task(self._write(Direction.TO_CLIENT, self._client, to_client)),
            ]
            await asyncio.wait(self._pumps)
        finally:
            if timer is not None:
                timer.cancel()
            await self._close()

    async def _close(self) -> None:
        for pump in self._pumps:
            pump.cancel()
        for outcome in await asyncio.gather(*self._pumps, return_exceptions=True):
            if isinstance(outcome, Exception):
                log.warning("connection %d: unexpected error", self.faults.index, exc_info=outcome)
                self._over = True
        graceful, self._over = not self._over, True
        if self._client is None:
            _linger_reset(self._client_sock)
            self._client_sock.close()
        writers = [w for w in (self._client, self._target) if w is not None]
        for writer in writers:
            if graceful:
                writer.close()
            else:
                _reset(writer)
        for writer in writers:
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def finished(self, task: asyncio.Task[None]) -> None:
        # A task cancelled before its first step never ran its finally clause.
        self._client_sock.close()
        self._proxy._forget(self)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("connection %d: unexpected error", self.faults.index, exc_info=exc)

    def cut(self, fault: Fault | None) -> bool:
        """Reset both sides now; count ``fault`` unless the link was already over."""
        first, self._over = not self._over, True
        if first:
            reason = "reset mirrored" if fault is None else fault.value
            log.debug("connection %d: cut (%s)", self.faults.index, reason)
            stats = self._proxy.stats
            if fault is Fault.DROP:
                stats.drops += 1
            elif fault is Fault.TRUNCATE:
                stats.truncations += 1
        for writer in (self._client, self._target):
            if writer is not None:
                _reset(writer)
        current = asyncio.current_task()
        if self._pumps:
            for pump in self._pumps:
                if pump is not current:
                    pump.cancel()
        elif self.task is not None and self.task is not current:
            self.task.cancel()  # still dialling the target
        return first

    async def _read(
        self, direction: Direction, reader: asyncio.StreamReader, queue: asyncio.Queue[_Item]
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await reader.read(self._proxy.read_size):
                decision = self.faults.on_chunk(direction, len(data), loop.time())
                await queue.put((decision, data))
                if decision.cut is not None:
                    return
            await queue.put(None)
        except OSError as exc:
            log.debug("connection %d: %s read failed: %s", self.faults.index, direction.value, exc)
            self.cut(None)

    async def _write(
        self, direction: Direction, writer: asyncio.StreamWriter, queue: asyncio.Queue[_Item]
    ) -> None:
        loop = asyncio.get_running_loop()
        stats = self._proxy.stats
        try:
            while (item := await queue.get()) is not None:
                decision, data = item
                if decision.stall > 0:
                    stats.stalls += 1
                wait = decision.release_at - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if decision.forward:
                    writer.write(data[: decision.forward])
                    await writer.drain()
                    if direction is Direction.TO_TARGET:
                        stats.bytes_to_target += decision.forward
                    else:
                        stats.bytes_to_client += decision.forward
                if decision.cut is not None:
                    self.cut(decision.cut)
                    return
            if writer.can_write_eof():
                writer.write_eof()  # mirror a half-close
        except OSError as exc:
            log.debug("connection %d: %s write failed: %s", self.faults.index, direction.value, exc)
            self.cut(None)


class FaultProxy:
    """Forward ``listen_host:port`` to ``target_host:target_port``, breaking it on schedule.

    Use as ``async with FaultProxy(...) as proxy`` or call :meth:`start` and
    :meth:`aclose`. Needs an event loop with ``add_reader`` (any Unix loop).
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        config: FaultConfig | None = None,
        *,
        listen_host: str = "127.0.0.1",
        read_size: int = 64 * 1024,
        queue_chunks: int = 16,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.config = config if config is not None else FaultConfig(seed=0)
        self.schedule = FaultSchedule(self.config)
        self.listen_host = listen_host
        """A literal address: the listening socket is bound without a lookup."""
        self.read_size = read_size
        """Largest chunk read at once; every fault decision is per chunk."""
        self.queue_chunks = queue_chunks
        """Chunks held per direction (while delayed or stalled) before reading pauses."""
        self.stats = ProxyStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: socket.socket | None = None
        self._port: int | None = None
        self._links: set[_Link] = set()
        self._paused = False
        self._closed = False

    @property
    def port(self) -> int:
        """The port bound on ``listen_host``; kept across :meth:`pause` and :meth:`resume`."""
        if self._port is None:
            raise RuntimeError("the proxy is not started")
        return self._port

    @property
    def paused(self) -> bool:
        return self._paused

    async def start(self) -> None:
        """Bind ``listen_host`` on a free port and start accepting."""
        if self._loop is not None:
            raise RuntimeError("the proxy was already started")
        self._loop = asyncio.get_running_loop()
        self._listen(0)

    def pause(self) -> None:
        """Close the listening socket: new connections are refused, live ones go on."""
        self._require_running()
        if not self._paused:
            self._paused = True
            self._stop_listening()
            log.debug("proxy on port %s paused", self._port)

    def resume(self) -> None:
        """Listen again on the same port.

        Raises ``OSError`` in the unlikely case another socket took the port meanwhile.
        """
        self._require_running()
        if self._paused:
            self._listen(self.port)
            self._paused = False
            log.debug("proxy on port %s resumed", self._port)

    def cut_all(self) -> int:
        """Reset every live connection now; return how many were cut (counted as drops)."""
        return sum(link.cut(Fault.DROP) for link in list(self._links))

    async def aclose(self) -> None:
        """Stop listening, reset every connection and wait until all are gone."""
        if self._closed:
            return
        self._closed = True
        self._stop_listening()
        links = list(self._links)
        for link in links:
            link.cut(None)
        tasks = [link.task for link in links if link.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        # Aborted transports close their sockets in a callback of the next iteration.
        await asyncio.sleep(0)

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _require_running(self) -> None:
        if self._loop is None or self._closed:
            raise RuntimeError("the proxy is not running")

    def _listen(self, port: int) -> None:
        assert self._loop is not None
        family = socket.AF_INET6 if ":" in self.listen_host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            # Also lets resume() bind while connections accepted earlier still hold the port.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.listen_host, port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._listener = sock
        self._port = sock.getsockname()[1]
        self._loop.add_reader(sock.fileno(), self._accept_ready)

    def _stop_listening(self) -> None:
        if self._listener is not None and self._loop is not None:
            self._loop.remove_reader(self._listener.fileno())
            self._listener.close()
        self._listener = None

    def _accept_ready(self) -> None:
        assert self._loop is not None
        while self._listener is not None:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. the client gave up while queued
                log.debug("accept failed: %s", exc)
                return
            client.setblocking(False)
            index = self.stats.connections
            self.stats.connections += 1
            self.stats.active += 1
            faults = self.schedule.connection(index, now=self._loop.time())
            link = _Link(self, client, faults)
            link.task = self._loop.create_task(link.run(), name=f"faultproxy-link-{index}")
            link.task.add_done_callback(link.finished)
            self._links.add(link)
            log.debug("connection %d accepted", index)

    def _forget(self, link: _Link) -> None:
        self._links.discard(link)
        self.stats.active -= 1
