"""The LGS for flwr >= 1.40: protobuf over HTTP/1.1, ``POST /v1/fleet/<name>``.

Why not aiohttp's server: for one local SuperNode and one route, its machinery (request
handler, application, router, ``Response``/``StreamWriter``) took 35-40% of the site's
CPU under load (200 synthetic nodes, constant answers), more than the forwarding
(~26%). Here llhttp (``httptools``) parses and an ``asyncio.Protocol`` moves bytes.

The decisions are plain functions (:func:`route`, :func:`reply_response`,
:func:`error_response`, :func:`body_too_large`); :class:`_Connection` feeds the parser,
queues complete requests, writes their answers in order and keeps flow control:
reading pauses when a client sends while its call is handled (pipelining; a SuperNode
waits for each answer, so it never pays for the pause), an answer waits while the
transport asks to pause writing, and a body is never buffered past
``limits.max_frame_bytes`` (413 on its ``Content-Length``, or when a chunked body
crosses it). Malformed input gets 400; both close the connection.

A client that goes away while its call is forwarded does not cancel the forward: the
call may already have left for the relay, whose reliable receiver runs each message id
at most once (``gateway.site.forwarder``); cancelling would not undo it, only cut its
reply out of the metrics and the call window and tear a send on the site's one shared
connection to the relay. The forward ends within its budget; its answer is dropped
(as aiohttp >= 3.9 did: it does not cancel handlers).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import logging
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import cast
from urllib.parse import unquote

import httptools

from ..core import fleet
from ..core.config import Limits, LoopbackTLS
from ..core.envelope import header_pairs
from ..proto.envelope_pb2 import DIALECT_HTTP, Reply
from .lgs import REFUSAL_DETAIL, Forward, LocalGatewayServer

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024
"""Request line and headers of one request; more is refused (431). Flower sends < 1 KiB."""
SHUTDOWN_GRACE = fleet.DEFAULT_CALL_BUDGET + 5.0
"""Seconds ``aclose`` waits for calls in flight: a forward ends within its budget."""
LINGER_SECONDS = 2.0
"""How long a connection the LGS closes keeps reading, and dropping, what its client
still sends (the rest of a refused body), so that the client reads its 413 or 400."""
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_SINGLE_WRITE_BYTES = 64 * 1024  # smaller bodies go out in one buffer with their head
_PROTOBUF = fleet.PROTOBUF_MEDIA_TYPE.encode()
_OCTETS = b"application/octet-stream"  # aiohttp's type for an untyped body
_REASONS = {status.value: status.phrase for status in HTTPStatus}
# Framing of this hop, written here and never taken from a reply.
_OWN_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


# --- pure part: what to answer ------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _routed(http_method: bytes, target: bytes) -> tuple[str, str, str | None]:
    """(method, path, Fleet method) of a request line: a SuperNode calls a few paths."""
    method = http_method.decode("latin-1")
    path = request_path(target)
    return method, path, route(method, path)


def request_path(target: bytes) -> str:
    """The decoded path of a request target (no query or fragment), as aiohttp's
    ``request.path`` gives it."""
    path = target.partition(b"?")[0].partition(b"#")[0].decode("latin-1")
    return unquote(path) if "%" in path else path


def route(http_method: str, path: str) -> str | None:
    """The Fleet method a request calls; None for anything the LGS refuses."""
    return fleet.method_from_http_path(path) if http_method == "POST" else None


def refusal_detail(http_method: str, path: str) -> str:
    return REFUSAL_DETAIL.format(what="POST /v1/fleet/*", request=f"{http_method} {path}")


def body_too_large(limit: int, length: int | None = None) -> str:
    """Why a body was refused: its ``Content-Length``, or a chunked body that crossed it."""
    size = "a chunked body" if length is None else f"{length} bytes"
    return f"request body over the gateway's frame limit: {size} > {limit} bytes"


def response_head(
    status: int,
    headers: Iterable[tuple[str, bytes]],
    length: int,
    *,
    close: bool,
    http10: bool = False,
) -> bytes:
    """Status line and headers, ``Content-Length: length`` and, when needed, the
    ``Connection`` header (``close``; ``keep-alive`` for an HTTP/1.0 client that asked)."""
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}".encode("latin-1")]
    for name, value in headers:
        line = name.encode("latin-1") + b": " + value
        # Never the framing of this hop, nor a line break that would start another header.
        if name.lower() not in _OWN_HEADERS and b"\n" not in line and b"\r" not in line:
            lines.append(line)
    lines.append(b"content-length: %d" % length)
    if close:
        lines.append(b"connection: close")
    elif http10:
        lines.append(b"connection: keep-alive")
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


def _json_body(status: int, detail: str) -> bytes:
    return json.dumps({"code": status, "detail": detail}).encode()


def error_response(status: int, detail: str, *, close: bool, http10: bool = False) -> bytes:
    """A whole response with the JSON error body ``{"code": status, "detail": detail}``."""
    body = _json_body(status, detail)
    head = response_head(
        status, [("content-type", b"application/json")], len(body), close=close, http10=http10
    )
    return head + body


def reply_response(reply: Reply, *, close: bool, http10: bool = False) -> tuple[bytes, bytes]:
    """(head, body) of the response that answers ``reply``: the reply's status, body and
    headers; a JSON error body for an error without one; protobuf unless typed."""
    headers = header_pairs(reply.headers)
    body = reply.body
    if reply.http_status != 200 and not body:
        body = _json_body(reply.http_status, reply.detail or "error")
        headers = [(n, v) for n, v in headers if n.lower() != "content-type"]
        headers.append(("content-type", b"application/json"))
    elif not any(name.lower() == "content-type" for name, _ in headers):
        headers.append(("content-type", _PROTOBUF if reply.http_status == 200 else _OCTETS))
    head = response_head(reply.http_status, headers, len(body), close=close, http10=http10)
    return head, body


# --- the thin shell: bytes in, bytes out ---------------------------------------------


@dataclass(slots=True)
class _Pending:
    """One complete request waiting for its answer: a call to forward, or a ready answer."""

    method: str | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    body: bytes = b""
    answer: bytes = b""
    close: bool = False
    http10: bool = False


class _Connection(asyncio.Protocol):
    """One client connection: llhttp's callbacks collect requests, one task answers them."""

    def __init__(self, server: HttpLGS) -> None:
        self._server = server
        self._limit = server._max_body
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._queue: collections.deque[_Pending] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self._writable: asyncio.Future[None] | None = None
        self._closing = False  # no more requests are read; close after the queued answers
        self._lost = False
        self._eof = False
        self._paused = False
        self._continue_due = False
        self._linger: asyncio.TimerHandle | None = None
        self._new_request()

    def _new_request(self) -> None:
        self._url = b""
        self._head_bytes = 0
        self._headers: list[tuple[str, bytes]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._method: str | None = None
        self._refusal = ""
        self._headers_done = False
        self._length = 0
        self._expect = False
        self._keep_alive = True
        self._http10 = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, only alike.
        self._transport = cast(asyncio.Transport, transport)
        self._server._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = self._closing = True
        self._queue.clear()
        self._server._connections.discard(self)
        if self._linger is not None:
            self._linger.cancel()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    def eof_received(self) -> bool | None:
        # The client sent all it will: answer what is queued, then close (TLS closes anyway).
        self._closing = self._eof = True
        return True if self._task is not None and not self._server._ssl else None

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if not self._closing:
                self._refuse(400, "protocol upgrades are not served")
        except httptools.HttpParserError as exc:
            if not self._closing:  # else: bytes after a request that closes the connection
                self._refuse(400, f"malformed HTTP request: {exc}")
        if self._task is not None and not self._paused and self._transport is not None:
            # More bytes while a call is answered (pipelining): the rest waits in the kernel.
            self._paused = True
            self._transport.pause_reading()
        self._serve()

    # llhttp's callbacks (each ignored once the connection closes)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._headers_done:
            return  # a chunked body's trailer: not forwarded
        self._count_head(len(name) + len(value))
        value = value.strip(b" \t")
        lower = name.lower()
        if lower == b"content-length":
            self._length = int(value)  # llhttp has checked its digits
        elif lower == b"expect":
            self._expect = value.lower() == b"100-continue"
        self._headers.append((name.decode("latin-1"), value))

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES and not self._closing:
            self._refuse(431, f"request head over {MAX_HEAD_BYTES} bytes")

    def on_headers_complete(self) -> None:
        self._headers_done = True
        if self._closing:
            return
        if self._parser.should_upgrade():
            self._refuse(400, "protocol upgrades are not served")
            return
        http_method, path, self._method = _routed(self._parser.get_method(), self._url)
        self._keep_alive = self._parser.should_keep_alive()
        self._http10 = self._parser.get_http_version() == "1.0"
        if self._method is None:
            log.warning("refused non-Fleet request", extra={"path": path})
            # Answered once its body has been read (and dropped).
            self._refusal = refusal_detail(http_method, path)
        elif self._limit is not None and self._length > self._limit:
            self._refuse(413, body_too_large(self._limit, self._length))
            return
        self._continue_due = self._expect

    def on_body(self, body: bytes) -> None:
        if self._closing or self._method is None:
            return
        self._size += len(body)
        if self._limit is not None and self._size > self._limit:
            self._refuse(413, body_too_large(self._limit))
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._closing:
            return
        self._continue_due = False
        close = not self._keep_alive
        if self._method is None:
            answer = error_response(404, self._refusal, close=close, http10=self._http10)
            self._queue.append(_Pending(answer=answer, close=close))
        else:
            headers = fleet.forwardable_http_headers(self._headers)
            call = _Pending(self._method, headers, b"".join(self._body), close=close)
            call.http10 = self._http10
            self._queue.append(call)
        self._closing = close
        self._new_request()

    # answering

    def _refuse(self, status: int, detail: str) -> None:
        """Queue an error answer after those pending, then close: the rest of the
        stream cannot be trusted to start a request."""
        self._queue.append(_Pending(answer=error_response(status, detail, close=True), close=True))
        self._closing = True

    def _serve(self) -> None:
        """Start answering the queue (reading pauses meanwhile), or ask for a body."""
        transport = self._transport
        if self._task is not None or transport is None or self._lost:
            return
        if self._queue:
            self._task = asyncio.get_running_loop().create_task(self._answer())
            self._server._tasks.add(self._task)
            self._task.add_done_callback(self._server._tasks.discard)
        elif self._closing:
            self._finish(transport)
        elif self._continue_due:
            self._continue_due = False
            transport.write(CONTINUE)

    async def _answer(self) -> None:
        transport = self._transport
        assert transport is not None
        try:
            while self._queue and not self._lost:
                item = self._queue.popleft()
                if item.method is not None:
                    reply = await self._server._forward(
                        item.method, DIALECT_HTTP, item.headers, item.body
                    )
                    if self._lost:
                        break  # the client is gone: its answer is dropped
                    close = item.close or (self._closing and not self._queue)
                    head, body = reply_response(reply, close=close, http10=item.http10)
                    if len(body) < _SINGLE_WRITE_BYTES:
                        transport.write(head + body)
                    else:
                        transport.write(head)
                        transport.write(body)
                else:
                    transport.write(item.answer)
                if item.close:
                    self._closing = True
                    self._queue.clear()
                if self._writable is not None:
                    await self._writable
        except Exception:
            log.exception("LGS handler failed")
            self._queue.clear()
            self._closing = True
            if not self._lost:
                transport.write(error_response(500, "gateway: internal error", close=True))
        finally:
            self._task = None
        if not self._lost:
            if self._paused and not self._closing:
                self._paused = False
                transport.resume_reading()
            self._serve()

    def _finish(self, transport: asyncio.Transport) -> None:
        """Close after the last answer: end our half, drop what the client still sends
        for :data:`LINGER_SECONDS` (closing with unread bytes would reset the socket and
        lose the answer), close when the client closes its half or the time is up."""
        if transport.is_closing() or self._linger is not None:
            return
        if self._eof or not transport.can_write_eof():  # the client is done, or TLS
            transport.close()
            return
        transport.write_eof()
        transport.resume_reading()
        self._linger = asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.close)

    def shutdown(self) -> None:
        """Take no more requests; close once the answers in flight are written."""
        self._closing = True
        if self._task is None and self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class HttpLGS(LocalGatewayServer):
    """Impersonates a flwr >= 1.40 SuperLink's Fleet API."""

    def __init__(
        self, forward: Forward, limits: Limits = Limits(), *, tls: LoopbackTLS | None = None
    ) -> None:
        self._forward = forward
        self._max_body = limits.max_frame_bytes
        self._ssl: ssl.SSLContext | None = None
        if tls is not None:
            self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._ssl.load_cert_chain(tls.cert, tls.key)
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._port = 0

    @property
    def port(self) -> int:
        return self._port

    async def start(self, port: int = 0) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, port))
        except OSError:
            sock.close()
            raise
        self._port = sock.getsockname()[1]
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), sock=sock, ssl=self._ssl, backlog=128
        )

    async def aclose(self) -> None:
        """Stop listening, close idle connections, give calls in flight
        :data:`SHUTDOWN_GRACE` to be answered, then cancel what is left."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for connection in list(self._connections):
            connection.shutdown()
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=SHUTDOWN_GRACE)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        for connection in list(self._connections):
            connection.abort()
        await server.wait_closed()
