"""HTTP/1.1 to one server: pooled keep-alive connections, answers parsed by llhttp.

Two clients use it: the relay's LGC (to a job's SuperLink) and a site's
``https://`` transport (to the relay). Why not aiohttp's client: under the
bench's capacity load its request machinery (``ClientRequest``, the payload
registry, timeout handles, response objects) was about a third of the relay's
CPU per call (py-spy, issue 19). Both talk to one known server and need nothing
beyond HTTP/1.1 itself: no redirects, cookies, proxies or decompression. This
module writes a request's head, lets ``httptools`` (llhttp, the parser aiohttp
uses too) read the answer, and keeps idle connections for the next call.

Its errors say whether the request can have reached the server, which is what
the reliable layer needs: :class:`NotDeliveredError` when no byte of it was
written (no connection; the OS or TLS error is its ``__cause__``),
:class:`MaybeDeliveredError` once it was (no answer in time, connection dropped,
malformed answer; a lost connection's ``OSError`` is its ``__cause__``), and
:class:`FrameTooLargeError` for an answer over the size limit. A request is
never resent here.
"""

from __future__ import annotations

import asyncio
import collections
import re
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import httptools

from ..core.exceptions import (
    AnswerTimeoutError,
    FrameTooLargeError,
    MaybeDeliveredError,
    NotDeliveredError,
    ProtocolError,
)

IDLE_SECONDS = 2.0
"""How long an idle connection is kept for reuse. Below uvicorn's keep-alive
timeout (5 s, Flower's SuperLink does not change it), so a kept connection is
never the one the server is closing just as a request goes out on it."""

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""An HTTP header name (RFC 9110's token)."""


@dataclass(frozen=True)
class Response:
    """An answer as it came: status, headers (names lower-cased) and the whole body."""

    status: int
    headers: list[tuple[str, bytes]]
    body: bytes


def _check_header(name: str, value: bytes) -> None:
    if not _TOKEN.fullmatch(name):
        raise ProtocolError(f"header name {name!r} is not an HTTP token")
    if b"\r" in value or b"\n" in value or b"\0" in value:
        raise ProtocolError(f"header {name!r} has a line break or NUL in its value")


def request_head(
    method: str, path: str, host: str, headers: Iterable[tuple[str, bytes]], body_length: int
) -> bytes:
    """The bytes of a request's head, with ``Host`` and ``Content-Length`` of its own.

    Header values come from a site: one with a line break could smuggle a second
    request to the SuperLink, so it is refused (:class:`ProtocolError`, a 400),
    as are names that are not HTTP tokens.
    """
    lines = [f"{method} {path} HTTP/1.1\r\nhost: {host}\r\n".encode("latin-1")]
    for name, value in headers:
        if name in ("host", "content-length", "transfer-encoding"):
            continue
        _check_header(name, value)
        lines.append(name.encode("latin-1") + b": " + value + b"\r\n")
    lines.append(b"content-length: %d\r\n\r\n" % body_length)
    return b"".join(lines)


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, max_body_bytes: int | None) -> None:
        self._max_body = max_body_bytes
        self._size = 0
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._answer: asyncio.Future[Response] | None = None
        self._headers: list[tuple[str, bytes]] = []
        self._body: list[bytes] = []
        self.reusable = False
        self.idle_since = 0.0

    @property
    def open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        why = f"the connection closed before the answer{f' ({exc})' if exc else ''}"
        self._fail(MaybeDeliveredError(why), cause=exc or ConnectionAbortedError(why))

    def data_received(self, data: bytes) -> None:
        if self._answer is None:
            self.close()  # bytes nobody asked for: the connection is out of step
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(MaybeDeliveredError(f"a malformed answer ({exc})"), cause=exc)
            self.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1").lower(), value))

    def on_headers_complete(self) -> None:
        if self._max_body is None:
            return
        for name, value in self._headers:
            if name == "content-length" and value.isdigit() and int(value) > self._max_body:
                self._too_large(int(value))

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._max_body is not None and self._size > self._max_body:
            self._too_large(self._size)
            return
        self._body.append(body)

    def _too_large(self, size: int) -> None:
        self._fail(
            FrameTooLargeError(
                f"an answer of {size} bytes or more exceeds the limit of {self._max_body} bytes"
            )
        )
        self.close()  # the rest of the answer is not read

    def on_message_complete(self) -> None:
        answer, self._answer = self._answer, None
        self.reusable = self._parser.should_keep_alive()
        response = Response(self._parser.get_status_code(), self._headers, b"".join(self._body))
        self._headers, self._body, self._size = [], [], 0
        if answer is not None and not answer.done():
            answer.set_result(response)

    def _fail(self, error: Exception, cause: BaseException | None = None) -> None:
        answer, self._answer = self._answer, None
        if answer is not None and not answer.done():
            error.__cause__ = cause
            answer.set_exception(error)

    def send(self, head: bytes, body: bytes) -> asyncio.Future[Response]:
        if self._transport is None or self._answer is not None:
            raise RuntimeError("one request at a time on a connection that is open")
        self.reusable = False
        self._answer = asyncio.get_running_loop().create_future()
        self._transport.writelines((head, body))
        return self._answer

    def expire(self) -> None:
        """The deadline passed: fail the call and drop the connection (it is out of step)."""
        self._fail(AnswerTimeoutError("no answer in time"))
        self.close()

    def close(self) -> None:
        self.reusable = False
        if self._transport is not None:
            self._transport.close()


class Http1Client:
    """Requests to one ``host:port``, over TLS with ``ssl_context``, on pooled connections.

    ``max_connections`` caps the connections (calls in flight); more calls wait
    for one, within their timeout. ``None`` (the LGC's choice, as it had with
    aiohttp's ``limit=0``): each call in flight has its own, the relay's
    admission budgets bound them. ``idle_seconds``: how long an idle connection
    is kept for reuse; ``max_body_bytes``: the largest answer body read.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None,
        max_connections: int | None = None,
        idle_seconds: float = IDLE_SECONDS,
        max_body_bytes: int | None = None,
    ) -> None:
        self._host, self._port = host, port
        self._authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._ssl = ssl_context
        self._slots = asyncio.Semaphore(max_connections) if max_connections else None
        self._idle_seconds = idle_seconds
        self._max_body = max_body_bytes
        self._idle: collections.deque[_Connection] = collections.deque()

    async def _connection(self, timeout: float) -> _Connection:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()  # the most recently used one
            if connection.open and now - connection.idle_since < self._idle_seconds:
                return connection
            connection.close()
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(self._max_body),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                ),
                timeout,
            )
        except (OSError, asyncio.TimeoutError) as exc:
            raise NotDeliveredError(
                f"cannot connect to {self._authority}: {exc or 'no answer in time'}"
            ) from exc
        return connection

    async def post(
        self, path: str, headers: Iterable[tuple[str, bytes]], body: bytes, *, timeout: float
    ) -> Response:
        """POST ``body`` to ``path``; the answer, or an error that says whether it can have run."""
        head = request_head("POST", path, self._authority, headers, len(body))
        deadline = time.monotonic() + timeout
        if self._slots is None:
            return await self._post(head, body, deadline)
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout)
        except asyncio.TimeoutError:
            raise NotDeliveredError(
                f"no connection to {self._authority} came free in {timeout:g} s"
            ) from None
        try:
            return await self._post(head, body, deadline)
        finally:
            self._slots.release()

    async def _post(self, head: bytes, body: bytes, deadline: float) -> Response:
        connection = await self._connection(max(0.0, deadline - time.monotonic()))
        answer = connection.send(head, body)
        timer = asyncio.get_running_loop().call_later(
            max(0.0, deadline - time.monotonic()), connection.expire
        )
        try:
            response = await answer
        except BaseException:
            connection.close()  # failed or cancelled mid-call: the connection is out of step
            raise
        finally:
            timer.cancel()
        if connection.reusable and connection.open:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        else:
            connection.close()
        return response

    def close(self) -> None:
        """Close the idle connections (calls in flight close theirs when they end)."""
        while self._idle:
            self._idle.pop().close()
