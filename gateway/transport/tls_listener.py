"""The listening socket of the tcps and https servers: TCP first, TLS only once admitted.

``loop.create_server(ssl=...)`` begins a TLS handshake for every connection it
accepts, allocating its TLS state at once, and says nothing about a handshake that
fails or never ends. Here the listener accepts the TCP connections itself
(``loop.sock_accept``) and asks the pure core :class:`~.handshakes.PendingHandshakes`
with the source address before the event loop has read a byte of it (the ClientHello
waits in the kernel). A refused connection is closed unread; an admitted socket goes
to ``loop.connect_accepted_socket(ssl=...)`` in a task the listener keeps (closing
the listener cancels it), which makes the server's protocol only once the handshake
succeeded and gives it what came along with the client's last handshake message. A
handshake that times out or fails is counted. The core's log lines are written here,
at WARNING.

Not ``loop.start_tls`` on an accepted transport: on uvloop a transport starts reading
when its ``connection_made`` returns, so a ClientHello could reach the accepting
protocol instead of TLS, and the handshake would stall.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import socket
import ssl
from collections.abc import Callable

from ..core.memory import give_free_memory_back
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


_BACKLOG = 100
"""The kernel's queue of connections not yet accepted (``loop.create_server``'s default)."""
_BIND_ATTEMPTS = 5
"""Tries to find one free port for every address of the host when asked for port 0."""


def _bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address of ``host`` ("" or "0.0.0.0": all of them),
    as ``loop.create_server`` binds them, but on one port even when ``port`` is 0:
    the first address picks it and the others take the same.
    Raises ``OSError`` when an address cannot be bound."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    addresses = list(dict.fromkeys((family, address) for family, _, _, _, address in infos))
    for attempt in range(_BIND_ATTEMPTS):
        sockets: list[socket.socket] = []
        chosen = port
        try:
            for family, address in addresses:
                sock = socket.socket(family, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((address[0], chosen, *address[2:]))
                chosen = sock.getsockname()[1]
                sock.listen(_BACKLOG)
                sock.setblocking(False)
            return sockets
        except OSError as exc:
            for sock in sockets:
                sock.close()
            # Port 0's pick was free on the first address only: pick again.
            if port != 0 or exc.errno != errno.EADDRINUSE or attempt == _BIND_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


class TLSListener:
    """Accepts TCP connections, admits their TLS handshakes, serves the good ones."""

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
        self._sockets: list[socket.socket] = []
        self._accepting: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._log_check: asyncio.TimerHandle | None = None
        self._collect: asyncio.TimerHandle | None = None
        self._closing = False

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host``:``port`` (0: a free one); return the bound port.
        Raises ``OSError`` when the address cannot be bound."""
        loop = asyncio.get_running_loop()
        self._sockets = _bind(host, port)
        self._accepting = [loop.create_task(self._accept(sock)) for sock in self._sockets]
        self._schedule_log_check()
        bound: int = self._sockets[0].getsockname()[1]
        return bound

    async def _accept(self, listening: socket.socket) -> None:
        """Accept connections until the listener closes; one that fails to be accepted
        (a reset before ``accept``, too many open files) does not stop the next."""
        loop = asyncio.get_running_loop()
        while not self._closing:
            try:
                sock, address = await loop.sock_accept(listening)
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("cannot accept a connection", extra={"error": str(exc)})
                    await asyncio.sleep(0.1)  # as asyncio's own server: wait for descriptors
                continue
            self.accepted(sock, address)

    def accepted(self, sock: socket.socket, address: object) -> None:
        """A TCP connection arrived, nothing read yet: begin its handshake or close it."""
        loop = asyncio.get_running_loop()
        source = source_of(address)
        if self._closing or not self._handshakes.admit(source, loop.time()):
            sock.close()
            self._write_log()
            return
        task = loop.create_task(self._handshake(sock, source))
        self._tasks.add(task)
        task.add_done_callback(lambda task: self._ended(task, sock, source))

    async def _handshake(self, sock: socket.socket, source: str) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        sock.setblocking(False)
        try:
            await loop.connect_accepted_socket(
                self._protocol_factory,
                sock,
                ssl=self._context,
                ssl_handshake_timeout=self._timeout,
            )
        except OSError as exc:  # ssl.SSLError is an OSError
            sock.close()
            now = loop.time()
            self._handshakes.failed(source, _failure(exc, now - started, self._timeout), now)
            self._collect_soon()
        except Exception:  # one connection's failure must never reach the listener
            sock.close()
            log.exception("TLS handshake failed unexpectedly", extra={"source": source})

    def _ended(self, task: asyncio.Task[None], sock: socket.socket, source: str) -> None:
        """Every admitted handshake ends here, exactly once, even if its task was
        cancelled before it began."""
        self._tasks.discard(task)
        if task.cancelled():
            sock.close()
        self._handshakes.done(source)
        self._write_log()

    def _collect_soon(self) -> None:
        """Run the cyclic garbage collector shortly after failed handshakes, once per
        :data:`_COLLECT_DELAY` at most. A failed handshake leaves reference cycles
        (asyncio's TLS protocol, its transport and waiter) holding its buffers, about
        300 KiB; a relay that otherwise allocates little would not collect them for a
        long time, and 1000 stuck handshakes left 77 MiB behind after they closed. Then
        the heaps' free pages go back to the system (see :mod:`gateway.core.memory`)."""
        if self._collect is None and not self._closing:
            loop = asyncio.get_running_loop()
            self._collect = loop.call_later(_COLLECT_DELAY, self._collected)

    def _collected(self) -> None:
        self._collect = None
        gc.collect()
        give_free_memory_back()  # what the collected buffers freed, inside the heaps

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
        for task in self._accepting:
            task.cancel()
        for sock in self._sockets:
            sock.close()
        for timer in (self._log_check, self._collect):
            if timer is not None:
                timer.cancel()
        self._log_check = self._collect = None
        for task in self._tasks:
            task.cancel()

    async def wait_closed(self) -> None:
        """Wait until the cancelled handshakes and the accepting tasks ended; call
        :meth:`close` first, and close the established connections before this."""
        await asyncio.gather(*self._tasks, *self._accepting, return_exceptions=True)
        self._accepting, self._sockets = [], []
        self._write_log()
