"""The listening socket of the tcps and https servers: TCP first, TLS only once admitted.

``loop.create_server(ssl=...)`` begins a TLS handshake for every connection it
accepts, allocating its TLS state at once, and says nothing about a handshake that
fails or never ends. Here a connection is accepted as plain TCP; its protocol pauses
reading in ``connection_made``, before the event loop reads a byte (the ClientHello
waits in the kernel), and asks the pure core :class:`~.handshakes.PendingHandshakes`
with the source address. A refused connection is aborted unread; an admitted one is
upgraded by ``loop.start_tls``, in a task the listener keeps (closing the listener
cancels it). ``start_tls`` never calls the new protocol's ``connection_made``: once
the handshake succeeded, the server's protocol is told here, and is given what TLS
may already have delivered (a request sent along with the client's last handshake
message). A handshake that times out or fails is aborted and counted. The core's
log lines are written here, at WARNING.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import ssl
from collections.abc import Callable

from .common import certificate_refused
from .handshakes import PendingHandshakes, source_of

log = logging.getLogger(__name__)

_LOG_CHECKS_PER_INTERVAL = 4
"""How often per log interval the listener asks for the lines of floods that stopped."""
_COLLECT_DELAY = 2.0
"""Seconds after a failed handshake before the garbage collector runs (see ``_collect_soon``)."""


def _failure(exc: BaseException, elapsed: float, timeout: float) -> str:
    """How a handshake failed, for the log."""
    if elapsed >= timeout:  # asyncio aborts it with a ConnectionAbortedError
        return f"no TLS handshake within {timeout:g} s"
    detail = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or exc
    if certificate_refused(exc):
        return f"certificate refused: {detail}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {detail}"
    return f"closed during the handshake ({type(exc).__name__})"


class _Handover(asyncio.Protocol):
    """The protocol of a connection during its handshake, for the server's protocol.

    ``start_tls`` wakes its caller when the handshake is done, and delivers in the
    same step any application data that came with it: to this protocol, which keeps
    it for the server's protocol until that one is told of its connection.
    """

    def __init__(self) -> None:
        self._protocol: asyncio.Protocol | None = None
        self._data: list[bytes] = []
        self._eof = False

    def data_received(self, data: bytes) -> None:
        if self._protocol is not None:
            self._protocol.data_received(data)
        else:
            self._data.append(data)

    def eof_received(self) -> bool | None:
        if self._protocol is not None:
            return self._protocol.eof_received()
        self._eof = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._protocol is not None:
            self._protocol.connection_lost(exc)

    def hand_over(self, transport: asyncio.Transport, protocol: asyncio.Protocol) -> None:
        """Make ``protocol`` the connection's protocol, as if it had been from the start."""
        transport.set_protocol(protocol)
        self._protocol = protocol
        protocol.connection_made(transport)
        data, self._data = self._data, []
        for chunk in data:
            protocol.data_received(chunk)
        if self._eof:
            protocol.eof_received()


class _Accepting(asyncio.Protocol):
    """A new TCP connection's protocol until its TLS handshake begins."""

    def __init__(self, listener: TLSListener) -> None:
        self._listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()  # before the loop reads a byte: it is start_tls's
        self._listener.accepted(transport)


class TLSListener:
    """Accepts TCP connections, admits their TLS handshakes, hands over the good ones."""

    def __init__(
        self,
        protocol_factory: Callable[[], asyncio.Protocol],
        context: ssl.SSLContext,
        handshakes: PendingHandshakes,
        *,
        handshake_timeout: float,
    ) -> None:
        """``protocol_factory``: the server's protocol of a connection whose handshake
        succeeded. ``handshakes``: shared by the relay's listeners."""
        self._protocol_factory = protocol_factory
        self._context = context
        self._handshakes = handshakes
        self._timeout = handshake_timeout
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._log_check: asyncio.TimerHandle | None = None
        self._collect: asyncio.TimerHandle | None = None
        self._closing = False

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host``:``port`` (0: a free one); return the bound port.
        Raises ``OSError`` when the address cannot be bound."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Accepting(self), host, port, reuse_address=True
        )
        self._schedule_log_check()
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    def accepted(self, transport: asyncio.Transport) -> None:
        """A TCP connection arrived (reading paused): begin its handshake or abort it."""
        loop = asyncio.get_running_loop()
        source = source_of(transport.get_extra_info("peername"))
        if self._closing or not self._handshakes.admit(source, loop.time()):
            transport.abort()
            self._write_log()
            return
        task = loop.create_task(self._handshake(transport, source))
        self._tasks.add(task)
        task.add_done_callback(lambda task: self._ended(task, transport, source))

    async def _handshake(self, transport: asyncio.Transport, source: str) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        handover = _Handover()
        try:
            tls = await loop.start_tls(
                transport,
                handover,
                self._context,
                server_side=True,
                ssl_handshake_timeout=self._timeout,
            )
        except OSError as exc:  # ssl.SSLError is an OSError
            transport.abort()
            now = loop.time()
            self._handshakes.failed(source, _failure(exc, now - started, self._timeout), now)
            self._collect_soon()
            return
        except Exception:  # one connection's failure must never reach the listener
            transport.abort()
            log.exception("TLS handshake failed unexpectedly", extra={"source": source})
            return
        if tls is None or tls.is_closing():
            return  # the peer closed right after its handshake
        try:
            handover.hand_over(tls, self._protocol_factory())
        except Exception:
            tls.abort()
            log.exception("a TLS connection could not be served", extra={"source": source})

    def _ended(self, task: asyncio.Task[None], transport: asyncio.Transport, source: str) -> None:
        """Every admitted handshake ends here, exactly once, even if its task was
        cancelled before it began."""
        self._tasks.discard(task)
        if task.cancelled():
            transport.abort()
        self._handshakes.done(source)
        self._write_log()

    def _collect_soon(self) -> None:
        """Run the cyclic garbage collector shortly after failed handshakes, once per
        :data:`_COLLECT_DELAY` at most. A failed handshake leaves reference cycles
        (asyncio's TLS protocol, its transport and waiter) holding its buffers, about
        300 KiB; a relay that otherwise allocates little would not collect them for a
        long time, and 1000 stuck handshakes left 77 MiB behind after they closed."""
        if self._collect is None and not self._closing:
            loop = asyncio.get_running_loop()
            self._collect = loop.call_later(_COLLECT_DELAY, self._collected)

    def _collected(self) -> None:
        self._collect = None
        gc.collect()

    def _write_log(self) -> None:
        for line in self._handshakes.log_lines(asyncio.get_running_loop().time()):
            log.warning(line.message, extra=line.extra)

    def _schedule_log_check(self) -> None:
        period = self._handshakes.log_interval / _LOG_CHECKS_PER_INTERVAL
        self._log_check = asyncio.get_running_loop().call_later(period, self._check_log)

    def _check_log(self) -> None:
        self._write_log()
        self._schedule_log_check()

    def close(self) -> None:
        """Stop listening and cancel the handshakes in progress (established
        connections are the server's to close)."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for timer in (self._log_check, self._collect):
            if timer is not None:
                timer.cancel()
        self._log_check = self._collect = None
        for task in self._tasks:
            task.cancel()

    async def wait_closed(self) -> None:
        """Wait until the cancelled handshakes ended and the server closed; call
        :meth:`close` first, and close the established connections before this."""
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        self._write_log()
