"""TCP transport (``tcps://``): length-prefixed frames over one TLS connection per site.

The frames and every rule about them live in the pure core
:mod:`gateway.transport.framing`; the classes here only move bytes, keep time
and match replies to calls by request id, so that many calls share one
connection. The relay requires a client certificate signed by the federation's
root CA and takes the peer's identity from it. Plain ``tcp://`` is
deliberately absent: without a client certificate a peer has no identity.

Liveness: a client pings when it has received nothing for
``heartbeat_interval`` seconds and declares the connection dead when nothing
(pong or other data) arrives within ``heartbeat_timeout`` after the ping; its
calls in flight then fail with ``ConnectError`` and the next send reconnects.
The relay closes a connection that sent nothing for ``idle_timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
import time
from typing import cast

from google.protobuf.message import DecodeError

from ..core.config import STREAM_READ_LIMIT, Limits, TLSConfig
from ..core.exceptions import (
    AuthError,
    ConnectError,
    DeadlineError,
    FrameTooLargeError,
    RelayBusyError,
    TransportError,
)
from ..core.identity import Peer
from ..observability import metrics
from ..proto.envelope_pb2 import Envelope, Reply
from . import interface
from .admission import Admission, Grant, Refusal
from .common import (
    HANDSHAKE_TIMEOUT,
    call_handler,
    certificate_refused,
    client_ssl_context,
    frame_limit,
    hold_refusal,
    peer_from_ssl_object,
    server_ssl_context,
)
from .framing import (
    ASK_PAYLOAD,
    Admitted,
    ErrorCode,
    Frame,
    FrameProtocol,
    FrameType,
    FramingError,
    PeerError,
    Side,
    Skipped,
)
from .tls_listener import TLSListener

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_INTERVAL = 15.0
"""Seconds without received data after which a client pings the relay."""
DEFAULT_HEARTBEAT_TIMEOUT = 10.0
"""Seconds a client waits for any data after a ping before it drops the connection."""
DEFAULT_IDLE_TIMEOUT = 60.0
"""Seconds without received data after which the relay closes a connection."""
DEFAULT_CONNECT_TIMEOUT = 10.0
"""Seconds for TCP connect, TLS handshake and the first ping's pong."""

ASK_ABOVE = 1024 * 1024
"""A request with a larger payload is announced first (ask) and sent once admitted
(go): refused unasked, the relay would still have to read it to the end."""
_READ_CHUNK = 256 * 1024
# After an error frame, input is read and dropped until the peer is quiet for
# _LINGER_QUIET seconds (at most _LINGER): closing with unread input would
# reset the connection and could destroy the error frame before the peer reads it.
_LINGER = 2.0
_LINGER_QUIET = 0.2
_CLOSE_TIMEOUT = 1.0  # seconds for a graceful TLS close before the socket is aborted
_CLOSES_CONNECTION = frozenset({ErrorCode.MALFORMED, ErrorCode.TOO_LARGE, ErrorCode.TRUNCATED})


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), _CLOSE_TIMEOUT)
    except (asyncio.TimeoutError, OSError):
        writer.transport.abort()


def _peer_error(event: PeerError, where: str) -> Exception:
    """The exception for a call that the relay refused with an error frame."""
    if event.code == ErrorCode.TOO_LARGE:
        return FrameTooLargeError(f"{where} refused the frame: {event.message}")
    if event.code == ErrorCode.REFUSED:
        return AuthError(f"{where} refused this participant's identity: {event.message}")
    if event.code == ErrorCode.BUSY:
        return RelayBusyError(f"{where} did not admit the call: {event.message}")
    if event.request_id == 0:
        return ConnectError(f"{where} closed the connection: {event.message}")
    return TransportError(f"{where} refused the call: {event.message}")


def _connection_error(exc: BaseException, where: str) -> Exception:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return AuthError(f"the certificate of the {where} failed verification: {exc}")
    if certificate_refused(exc):
        return AuthError(f"the {where} refused this participant's certificate: {exc}")
    return ConnectError(f"connection to the {where} failed: {exc}")


class _ClientConnection:
    """One TLS connection of a client: request ids, a reader task, heartbeats."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        where: str,
        max_payload: int | None,
        heartbeat_interval: float | None,
        heartbeat_timeout: float,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._where = where
        self._protocol = FrameProtocol(Side.CLIENT, max_payload=max_payload)
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Reply]] = {}
        self._pongs: dict[int, asyncio.Future[None]] = {}
        self._gos: dict[int, asyncio.Future[None]] = {}
        """Large requests asked for and not yet admitted (go) or refused."""
        self._loop = asyncio.get_running_loop()
        self._last_rx = self._loop.time()
        self._error: Exception | None = None
        self._draining = False  # the relay announced that it closes this connection
        self._writes_waiting = 0
        """Calls whose frame is still going out (``drain`` pending): a ping waits behind them."""
        self._tasks = [asyncio.create_task(self._read_loop())]
        if heartbeat_interval is not None:
            self._tasks.append(
                asyncio.create_task(self._heartbeat(heartbeat_interval, heartbeat_timeout))
            )

    @property
    def usable(self) -> bool:
        """False once the connection failed or the relay announced its close."""
        return self._error is None and not self._draining

    @property
    def alive(self) -> bool:
        """False once the connection failed (every call in flight has failed too)."""
        return self._error is None

    async def check(self) -> None:
        """Ping and wait for the pong: proves that the relay accepted this
        participant's certificate (with TLS 1.3 it may refuse it only after the
        client's side of the handshake is done) and speaks this protocol."""
        if self._error is not None:
            raise type(self._error)(str(self._error))
        token = next(self._ids)
        pong: asyncio.Future[None] = self._loop.create_future()
        self._pongs[token] = pong
        try:
            self._writer.write(self._protocol.frame(FrameType.PING, token))
            await pong
        finally:
            self._pongs.pop(token, None)

    async def call(self, payload: bytes) -> Reply:
        if self._error is not None:
            raise type(self._error)(str(self._error))
        request_id = next(self._ids)
        data = self._protocol.frame(FrameType.REQUEST, request_id, payload)
        if len(payload) > ASK_ABOVE:
            await self._ask(request_id, len(payload))
        future: asyncio.Future[Reply] = self._loop.create_future()
        self._pending[request_id] = future
        try:
            self._writer.write(data)
            self._writes_waiting += 1
            try:
                await self._writer.drain()
            except OSError as exc:
                self._fail(_connection_error(exc, self._where))
            finally:
                self._writes_waiting -= 1
            return await future
        finally:
            self._pending.pop(request_id, None)

    async def _ask(self, request_id: int, length: int) -> None:
        """Until the relay admits the request (go); raises what it answered instead."""
        go: asyncio.Future[None] = self._loop.create_future()
        self._gos[request_id] = go
        try:
            self._writer.write(
                self._protocol.frame(FrameType.ASK, request_id, ASK_PAYLOAD.pack(length))
            )
            await go
        except asyncio.CancelledError:  # gave up (a deadline): the relay may have admitted it
            if self._error is None:
                frame = (ErrorCode.CANCELLED, "the call was given up", request_id)
                self._writer.write(self._protocol.error_frame(frame))
            raise
        finally:
            self._gos.pop(request_id, None)

    async def aclose(self) -> None:
        self._fail(ConnectError(f"the connection to the {self._where} was closed"), abort=False)
        await _close(self._writer)
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _fail(self, error: Exception, *, abort: bool = True) -> None:
        """Fail every call in flight with (a copy of) ``error`` and stop using the connection."""
        if self._error is not None:
            return
        self._error = error
        log.info("relay connection lost", extra={"relay": self._where, "error": str(error)})
        waiters: list[asyncio.Future[Reply] | asyncio.Future[None]] = [
            *self._pending.values(),
            *self._pongs.values(),
            *self._gos.values(),
        ]
        for future in waiters:
            if not future.done():
                future.set_exception(type(error)(str(error)))
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        if abort:
            self._writer.transport.abort()

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self._reader.read(_READ_CHUNK)
                if not data:
                    self._protocol.receive_eof()
                    self._dispatch()
                    self._fail(ConnectError(f"the {self._where} closed the connection"))
                    return
                self._last_rx = self._loop.time()
                self._protocol.receive_data(data)
                self._dispatch()
        except OSError as exc:  # ssl.SSLError is an OSError
            self._fail(_connection_error(exc, self._where))
        except Exception as exc:
            log.exception("tcps client connection failed", extra={"relay": self._where})
            self._fail(TransportError(f"the connection to the {self._where} failed: {exc!r}"))

    def _dispatch(self) -> None:
        for event in self._protocol.events():
            if isinstance(event, Frame):
                if event.type is FrameType.REPLY:
                    self._resolve(event.request_id, event.payload)
                elif event.type is FrameType.PING:
                    self._writer.write(
                        self._protocol.frame(FrameType.PONG, event.request_id, event.payload)
                    )
                elif event.type in (FrameType.PONG, FrameType.GO):
                    waiters = self._pongs if event.type is FrameType.PONG else self._gos
                    waiter = waiters.get(event.request_id)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(None)
            elif isinstance(event, PeerError):
                if event.request_id == 0:
                    self._fail(_peer_error(event, self._where))
                    return
                if event.code in _CLOSES_CONNECTION:
                    self._draining = True  # calls in flight may still be answered
                future = self._pending.get(event.request_id) or self._gos.get(event.request_id)
                if future is not None and not future.done():
                    future.set_exception(_peer_error(event, self._where))
            elif isinstance(event, FramingError):
                self._writer.write(self._protocol.error_frame(event))
                self._fail(ConnectError(f"the {self._where} sent bad frames: {event.message}"))
                return

    def _resolve(self, request_id: int, payload: bytes | bytearray) -> None:
        future = self._pending.get(request_id)
        if future is None or future.done():
            return  # the caller gave up (timeout); the late reply is dropped
        try:
            future.set_result(Reply.FromString(cast(bytes, payload)))  # upb parses any buffer
        except DecodeError as exc:
            future.set_exception(TransportError(f"the {self._where} sent a malformed reply: {exc}"))

    async def _heartbeat(self, interval: float, timeout: float) -> None:
        transport = self._writer.transport
        while True:
            idle = self._loop.time() - self._last_rx
            if idle < interval:
                await asyncio.sleep(interval - idle)
                continue
            sent_at = self._loop.time()
            backlog = transport.get_write_buffer_size()
            self._writer.write(self._protocol.frame(FrameType.PING, 0))
            await asyncio.sleep(timeout)
            if self._last_rx >= sent_at:
                continue
            if self._writes_waiting or (backlog and transport.get_write_buffer_size() < backlog):
                # Large frames are still going out, the ping behind them; the calls'
                # own deadlines bound the wait.
                continue
            self._fail(
                ConnectError(
                    f"no data from the {self._where} for {timeout:g} s after a ping;"
                    " the connection is presumed dead"
                )
            )
            return


class TcpTransportClient(interface.TransportClient):
    """A site's connection to the relay's ``tcps://`` port, opened on the first send."""

    def __init__(
        self,
        url: interface.TransportURL,
        tls: TLSConfig | None,
        limits: Limits,
        *,
        heartbeat_interval: float | None = DEFAULT_HEARTBEAT_INTERVAL,
        heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        """``heartbeat_interval=None`` turns heartbeats off (the relay's idle
        timeout then closes a connection without traffic)."""
        assert tls is not None  # tcps only; enforced by registry.connect
        self._url = url
        self._where = f"relay at {url.hostport}"
        self._ssl = client_ssl_context(tls)
        self._limit = frame_limit(limits)
        self._heartbeat_interval = heartbeat_interval
        self._heartbeat_timeout = heartbeat_timeout
        self._connect_timeout = connect_timeout
        self._connection: _ClientConnection | None = None
        self._connecting: asyncio.Task[_ClientConnection] | None = None
        self._retired: set[_ClientConnection] = set()
        self._closed = False

    async def send(self, envelope: Envelope, *, timeout: float) -> Reply:
        if self._closed:
            raise ConnectError(f"the client of the {self._where} is closed")
        payload = envelope.SerializeToString()
        if self._limit is not None and len(payload) > self._limit:
            metrics.oversized("tcp")
            raise FrameTooLargeError(
                f"envelope of {len(payload)} bytes exceeds the frame limit of {self._limit} bytes"
            )
        try:
            return await asyncio.wait_for(self._send(payload), timeout)
        except asyncio.TimeoutError as exc:
            raise DeadlineError(f"no reply from the {self._where} within {timeout:g} s") from exc

    async def _send(self, payload: bytes) -> Reply:
        connection = await self._connect()
        return await connection.call(payload)

    async def _connect(self) -> _ClientConnection:
        connection = self._connection
        if connection is not None and connection.usable:
            return connection
        if self._connecting is None:
            # Concurrent first sends share one attempt; a caller's timeout must
            # not cancel it for the others, hence the shield.
            self._connecting = task = asyncio.create_task(self._open())
            task.add_done_callback(self._opened)
        task = self._connecting
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if self._closed and task.cancelled():
                raise ConnectError(f"the client of the {self._where} was closed") from None
            raise

    def _opened(self, task: asyncio.Task[_ClientConnection]) -> None:
        self._connecting = None
        if task.cancelled() or task.exception() is not None:
            return  # also marks the exception retrieved when every caller gave up
        old, self._connection = self._connection, task.result()
        # A connection that the relay is closing may still deliver replies to
        # its calls in flight; it is closed by the relay, or by aclose().
        self._retired = {c for c in self._retired if c.alive}
        if old is not None and old.alive:
            self._retired.add(old)

    async def _open(self) -> _ClientConnection:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self._url.host,
                    self._url.port,
                    ssl=self._ssl,
                    ssl_handshake_timeout=self._connect_timeout,
                    limit=STREAM_READ_LIMIT,
                ),
                self._connect_timeout,
            )
        except asyncio.TimeoutError as exc:
            raise ConnectError(
                f"cannot reach the {self._where} within {self._connect_timeout:g} s"
            ) from exc
        except OSError as exc:
            raise _connection_error(exc, self._where) from exc
        connection = _ClientConnection(
            reader,
            writer,
            where=self._where,
            max_payload=self._limit,
            heartbeat_interval=self._heartbeat_interval,
            heartbeat_timeout=self._heartbeat_timeout,
        )
        try:
            await asyncio.wait_for(connection.check(), self._connect_timeout)
        except BaseException as exc:
            await connection.aclose()
            if isinstance(exc, asyncio.TimeoutError):
                raise ConnectError(f"no answer to a ping from the {self._where}") from exc
            if type(exc) is ConnectError:
                # With TLS 1.3 a relay that refuses the client certificate
                # often just closes the connection after the handshake.
                raise ConnectError(
                    f"{exc} before answering the first ping; it may refuse this"
                    " participant's certificate (another CA?)"
                ) from exc
            raise
        return connection

    async def aclose(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(BaseException):
                await self._connecting
        connections = [*self._retired, *([self._connection] if self._connection else [])]
        self._connection = None
        self._retired.clear()
        for connection in connections:
            await connection.aclose()


class _ServerConnection:
    """One site's connection at the relay: its verified peer and its calls in flight."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        handler: interface.Handler,
        *,
        max_payload: int | None,
        idle_timeout: float | None,
        admission: Admission,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._handler = handler
        self._admission = admission
        self._grants: dict[int, Grant] = {}
        self._refusals: dict[int, Refusal] = {}
        self._blocked = False
        """The peer got blocked (refused too often): close after answering."""
        self._protocol = FrameProtocol(Side.SERVER, max_payload=max_payload, admit=self._admit)
        self._idle_timeout = idle_timeout
        self._loop = asyncio.get_running_loop()
        self._last_rx = self._loop.time()
        self._calls: set[asyncio.Task[None]] = set()
        self._peer: Peer | None = None

    async def run(self) -> None:
        try:
            self._peer = peer_from_ssl_object(self._writer.get_extra_info("ssl_object"))
        except AuthError as exc:
            log.warning("refused a tcps peer", extra={"error": str(exc)})
            self._writer.write(self._protocol.error_frame((ErrorCode.REFUSED, str(exc), 0)))
            await _close(self._writer)
            return
        refusal = self._admission.blocked(
            str(self._peer), time.monotonic()
        ) or self._admission.open_connection(str(self._peer))
        if refusal is not None:
            await hold_refusal(self._admission.refusals, str(self._peer))
            if refusal.budget != "blocked":  # a blocked peer's are counted, logged unblocked
                log.warning(
                    "refused a tcps connection",
                    extra={"peer": str(self._peer), "error": refusal.message},
                )
            await self._say_last(self._protocol.error_frame((ErrorCode.BUSY, refusal.message, 0)))
            await _close(self._writer)
            return
        watchdog = asyncio.create_task(self._watchdog()) if self._idle_timeout else None
        try:
            await self._serve(self._peer)
        except OSError as exc:
            log.info("tcps connection lost", extra={"peer": str(self._peer), "error": str(exc)})
        except Exception:  # one connection's failure must never reach the server
            log.exception("tcps connection failed", extra={"peer": str(self._peer)})
        finally:
            if watchdog is not None:
                watchdog.cancel()
            for call in list(self._calls):
                call.cancel()
            await asyncio.gather(*self._calls, return_exceptions=True)
            for grant in self._grants.values():  # admitted, payload never complete
                self._admission.release(grant)
            self._grants.clear()
            self._admission.close_connection(str(self._peer))
            await _close(self._writer)

    async def _serve(self, peer: Peer) -> None:
        while True:
            data = await self._reader.read(_READ_CHUNK)
            if not data:
                self._protocol.receive_eof()
            else:
                self._last_rx = self._loop.time()
                self._protocol.receive_data(data)
            for event in self._protocol.events():
                if isinstance(event, FramingError):
                    await self._refuse(peer, event)
                    return
                if isinstance(event, PeerError) and event.code == ErrorCode.CANCELLED:
                    grant = self._grants.pop(event.request_id, None)
                    if grant is not None:  # asked for, admitted, then given up
                        self._admission.release(grant)
                elif isinstance(event, PeerError):
                    log.info(
                        "tcps peer reported an error",
                        extra={"peer": str(peer), "code": event.code, "error": event.message},
                    )
                    if event.request_id == 0:
                        return
                elif isinstance(event, Skipped):
                    refusal = self._refusals.pop(event.request_id)
                    await hold_refusal(self._admission.refusals, str(peer))  # if blocked
                    self._writer.write(
                        self._protocol.error_frame(
                            (ErrorCode.BUSY, refusal.message, event.request_id)
                        )
                    )
                    if self._blocked:  # it must reconnect, and is refused
                        frame = (ErrorCode.BUSY, refusal.message, 0)
                        await self._say_last(self._protocol.error_frame(frame))
                        return
                elif isinstance(event, Admitted):  # asked for, admitted: let it come
                    self._writer.write(self._protocol.frame(FrameType.GO, event.request_id))
                elif event.type is FrameType.REQUEST:
                    self._start_call(peer, event.request_id, event.payload)
                elif event.type is FrameType.PING:
                    self._writer.write(
                        self._protocol.frame(FrameType.PONG, event.request_id, event.payload)
                    )
            if not data:
                return

    async def _refuse(self, peer: Peer, error: FramingError) -> None:
        if error.code == ErrorCode.TOO_LARGE:
            metrics.oversized("tcp")
        log.warning(
            "refused bad tcps frames",
            extra={"peer": str(peer), "code": error.code.name, "error": error.message},
        )
        await self._say_last(self._protocol.error_frame(error))

    async def _say_last(self, frame: bytes) -> None:
        """Send the connection's last frame (an error), then drop input while the peer
        sends, before the caller closes (see ``_LINGER``)."""
        self._writer.write(frame)
        with contextlib.suppress(asyncio.TimeoutError, OSError):
            await asyncio.wait_for(self._discard_input(), _LINGER)

    async def _discard_input(self) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            while await asyncio.wait_for(self._reader.read(_READ_CHUNK), _LINGER_QUIET):
                pass

    def _admit(self, request_id: int, length: int) -> bool:
        """On a request's header: admit its payload, or skip it and answer "busy"."""
        assert self._peer is not None
        blocked = self._admission.blocked(str(self._peer), time.monotonic())
        self._blocked = self._blocked or blocked is not None
        decision = blocked or self._admission.admit_call(str(self._peer), length)
        if isinstance(decision, Refusal):
            self._refusals[request_id] = decision
            return False
        previous = self._grants.pop(request_id, None)
        if previous is not None:  # the peer reused a request id still in flight
            self._admission.release(previous)
        self._grants[request_id] = decision
        return True

    def _start_call(self, peer: Peer, request_id: int, payload: bytes | bytearray) -> None:
        grant = self._grants.pop(request_id)
        try:
            envelope = Envelope.FromString(cast(bytes, payload))  # upb parses any buffer
        except DecodeError as exc:
            self._admission.release(grant)
            message = f"request {request_id} is not a serialized Envelope: {exc}"
            self._writer.write(
                self._protocol.error_frame((ErrorCode.BAD_ENVELOPE, message, request_id))
            )
            return
        del payload  # the envelope holds the body now; the frame's buffer can go
        call = asyncio.create_task(self._answer(peer, request_id, envelope, grant))
        self._calls.add(call)
        call.add_done_callback(self._calls.discard)

    async def _answer(self, peer: Peer, request_id: int, envelope: Envelope, grant: Grant) -> None:
        try:
            await self._reply(peer, request_id, envelope)
        finally:
            self._admission.release(grant)

    async def _reply(self, peer: Peer, request_id: int, envelope: Envelope) -> None:
        reply = await call_handler(self._handler, peer, envelope)
        try:
            data = self._protocol.frame(FrameType.REPLY, request_id, reply.SerializeToString())
        except FrameTooLargeError as exc:
            metrics.oversized("tcp")
            data = self._protocol.error_frame((ErrorCode.TOO_LARGE, str(exc), request_id))
        if self._writer.is_closing():
            return
        self._writer.write(data)
        with contextlib.suppress(OSError):
            await self._writer.drain()

    async def _watchdog(self) -> None:
        assert self._idle_timeout is not None
        while True:
            idle = self._loop.time() - self._last_rx
            if idle >= self._idle_timeout:
                log.info("closing an idle tcps connection", extra={"peer": str(self._peer)})
                self._writer.transport.abort()
                return
            await asyncio.sleep(self._idle_timeout - idle)


class TcpTransportServer(interface.TransportServer):
    """The relay's ``tcps://`` listener."""

    def __init__(
        self,
        url: interface.TransportURL,
        tls: TLSConfig | None,
        limits: Limits,
        handler: interface.Handler,
        *,
        admission: Admission | None = None,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        """``admission``: shared with the relay's other listeners; by default one of
        this listener's own with the default budgets."""
        assert tls is not None
        self._url = url
        self._tls = tls
        self._limit = frame_limit(limits)
        self._handler = handler
        self._admission = admission or Admission(max_frame_bytes=self._limit)
        self._idle_timeout = idle_timeout
        self._handshake_timeout = handshake_timeout
        self._listener: TLSListener | None = None
        self._closing = False
        self._connections: set[asyncio.Task[None]] = set()
        self._port = 0

    @property
    def connections(self) -> int:
        return len(self._connections)

    @property
    def port(self) -> int:
        return self._port

    async def start(self) -> None:
        # Not asyncio.start_server(ssl=...): it can neither cap pending handshakes nor
        # say which failed (see tls_listener).
        listener = TLSListener(
            self._stream_protocol,
            server_ssl_context(self._tls),
            self._admission.handshakes,
            handshake_timeout=self._handshake_timeout,
        )
        try:
            self._port = await listener.start(self._url.host, self._url.port)
        except OSError as exc:
            raise ConnectError(f"cannot listen on {self._url}: {exc}") from exc
        self._listener = listener
        log.info(
            "relay listening", extra={"url": f"{self._url.scheme}://{self._url.host}:{self._port}"}
        )

    def _stream_protocol(self) -> asyncio.StreamReaderProtocol:
        """What ``asyncio.start_server`` makes for each connection: ``_accept`` runs
        once the connection is made, with a reader and a writer."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=STREAM_READ_LIMIT, loop=loop)
        return asyncio.StreamReaderProtocol(reader, self._accept, loop=loop)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            connection = _ServerConnection(
                reader,
                writer,
                self._handler,
                max_payload=self._limit,
                idle_timeout=self._idle_timeout,
                admission=self._admission,
            )
            await connection.run()
        except asyncio.CancelledError:
            if not self._closing:
                raise
            # Cancelled by aclose: end quietly, as asyncio's stream callback (3.11)
            # would log a cancelled connection task as an error with its traceback.
        finally:
            self._connections.discard(task)

    async def aclose(self) -> None:
        if self._listener is None:
            return
        self._closing = True
        self._listener.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._listener.wait_closed()
        self._listener = None
