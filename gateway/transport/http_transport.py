"""HTTPS transport (``https://``): one POST per call, for networks that pass only HTTP.

Each call is ``POST /flgate/v1/call`` with the serialized Envelope as body;
the answer is ``200`` with the serialized Reply, whatever the Reply's own
status (a refusal by the relay is a Reply too). Non-200 statuses are the
transport's own failures, with a plain-text reason: ``400`` a body that is not
an Envelope, ``403`` a certificate that names no participant, ``413`` a body
or reply over the frame limit, ``503`` a call the relay did not admit, unread
(over its budgets, judged by ``Content-Length``; retried).

The relay requires a client certificate signed by the federation's root CA
and takes the peer's identity from it. The client keeps a pool of keep-alive
connections (HTTP/1.1 carries one call per connection at a time). Plain
``http://`` is deliberately absent: without a client certificate a peer has
no identity.
"""

from __future__ import annotations

import asyncio
import io
import logging
import ssl
import time

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from google.protobuf.message import DecodeError

from ..core.config import READ_BUFFER_BYTES, Limits, TLSConfig
from ..core.exceptions import (
    AnswerTimeoutError,
    AuthError,
    ConnectError,
    DeadlineError,
    FrameTooLargeError,
    MaybeDeliveredError,
    NotDeliveredError,
    RelayBusyError,
    TransportError,
)
from ..core.identity import Peer
from ..observability import metrics
from ..proto.envelope_pb2 import Envelope, Reply
from . import interface
from .admission import Admission, Refusal
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
from .http1_client import Http1Client
from .tls_listener import TLSListener

log = logging.getLogger(__name__)

PATH = "/flgate/v1/call"
CONTENT_TYPE = "application/protobuf"
_HEADERS = (("content-type", CONTENT_TYPE.encode()),)

DEFAULT_MAX_CONNECTIONS = 100
"""Connections a client keeps at most; more concurrent calls wait for one."""
DEFAULT_KEEPALIVE_TIMEOUT = 15.0
"""Seconds a client keeps an idle connection (the relay keeps it 75 s)."""
_SERVER_KEEPALIVE_TIMEOUT = 75.0
_SHUTDOWN_TIMEOUT = 1.0  # seconds for calls in flight when the relay closes (as grpcs)
_NO_LIMIT = 2**62
_STREAMED = 1024 * 1024  # larger bodies go out in chunks, not in one write


def _body(data: bytes) -> bytes | io.BytesIO:
    return io.BytesIO(data) if len(data) > _STREAMED else data


class _QuietBadRequests(logging.Filter):
    """aiohttp logs every malformed request at ERROR with a traceback; on a
    relay that faces the internet that is one warning line with the reason."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = "refused a malformed https request: %s", (exc.message,)
            record.exc_info = record.exc_text = None
        return True


_server_log = logging.getLogger(f"{__name__}.server")
_server_log.addFilter(_QuietBadRequests())


def _too_large(what: str, size: int, limit: int) -> str:
    return f"{what} of {size} bytes exceeds the frame limit of {limit} bytes"


class HttpTransportClient(interface.TransportClient):
    """A site's connection pool to the relay's ``https://`` port (see :mod:`.http1_client`)."""

    def __init__(
        self,
        url: interface.TransportURL,
        tls: TLSConfig | None,
        limits: Limits,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT,
    ) -> None:
        assert tls is not None  # https only; enforced by registry.connect
        self._where = f"relay at {url.hostport}"
        self._limit = frame_limit(limits)
        self._http = Http1Client(
            url.host,
            url.port,
            ssl_context=client_ssl_context(tls),
            max_connections=max_connections,
            idle_seconds=keepalive_timeout,
            max_body_bytes=self._limit,
        )
        self._closed = False

    async def send(self, envelope: Envelope, *, timeout: float) -> Reply:
        if self._closed:
            raise ConnectError(f"the client of the {self._where} is closed")
        data = envelope.SerializeToString()
        if self._limit is not None and len(data) > self._limit:
            metrics.oversized("http")
            raise FrameTooLargeError(_too_large("envelope", len(data), self._limit))
        try:
            response = await self._http.post(PATH, _HEADERS, data, timeout=timeout)
        except FrameTooLargeError as exc:
            metrics.oversized("http")
            raise FrameTooLargeError(f"the {self._where} sent {exc} (of this site)") from exc
        except NotDeliveredError as exc:
            raise self._translate(
                exc, ConnectError(f"connection to the {self._where} failed: {exc}")
            ) from exc
        except AnswerTimeoutError as exc:
            raise DeadlineError(f"no reply from the {self._where} within {timeout:g} s") from exc
        except MaybeDeliveredError as exc:
            lost = isinstance(exc.__cause__, OSError)  # not a malformed answer
            failure = (
                ConnectError(f"the connection to the {self._where} was lost: {exc}")
                if lost
                else TransportError(f"the call to the {self._where} failed: {exc}")
            )
            raise self._translate(exc, failure) from exc
        status, body = response.status, response.body
        if status == 200:
            try:
                return Reply.FromString(body)
            except DecodeError as exc:
                raise TransportError(f"the {self._where} sent a malformed reply: {exc}") from exc
        reason = body[:500].decode("utf-8", errors="replace")
        if status == 413:
            raise FrameTooLargeError(f"the {self._where} refused the frame: {reason}")
        if status in (401, 403):
            raise AuthError(f"the {self._where} refused this participant's identity: {reason}")
        if status == 503:
            raise RelayBusyError(f"the {self._where} did not admit the call: {reason}")
        raise TransportError(f"the {self._where} failed the call (HTTP {status}): {reason}")

    def _translate(self, exc: Exception, otherwise: Exception) -> Exception:
        """A TLS certificate failure is an :class:`AuthError` (never retried)."""
        cause = exc.__cause__
        if isinstance(cause, ssl.SSLCertVerificationError):
            return AuthError(f"the certificate of the {self._where} failed verification: {cause}")
        if certificate_refused(exc):
            return AuthError(f"the {self._where} refused this participant's certificate: {cause}")
        return otherwise

    async def aclose(self) -> None:
        self._closed = True
        self._http.close()


class HttpTransportServer(interface.TransportServer):
    """The relay's ``https://`` listener."""

    def __init__(
        self,
        url: interface.TransportURL,
        tls: TLSConfig | None,
        limits: Limits,
        handler: interface.Handler,
        *,
        admission: Admission | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        """``admission``: shared with the relay's other listeners; by default one of
        this listener's own with the default budgets."""
        assert tls is not None
        self._url = url
        self._tls = tls
        self._handshake_timeout = handshake_timeout
        self._listener: TLSListener | None = None
        self._limit = frame_limit(limits)
        self._handler = handler
        self._admission = admission or Admission(max_frame_bytes=self._limit)
        self._connections: dict[asyncio.BaseTransport, str] = {}
        """Each open connection that carried a call, and its peer (for the connection budget)."""
        app = web.Application(client_max_size=self._limit or _NO_LIMIT)
        app.router.add_post(PATH, self._call)
        self._runner = web.AppRunner(
            app,
            access_log=None,
            logger=_server_log,
            handler_cancellation=True,  # as grpcs: a call whose site hung up is cancelled
            keepalive_timeout=_SERVER_KEEPALIVE_TIMEOUT,
            shutdown_timeout=_SHUTDOWN_TIMEOUT,
            read_bufsize=READ_BUFFER_BYTES,
        )
        self._port = 0

    @property
    def connections(self) -> int:
        return sum(1 for transport in self._connections if not transport.is_closing())

    @property
    def port(self) -> int:
        return self._port

    async def start(self) -> None:
        context = server_ssl_context(self._tls)
        await self._runner.setup()
        assert self._runner.server is not None
        # Not web.TCPSite: it offers no TLS handshake timeout, nor caps on pending
        # handshakes, nor says which failed (see tls_listener).
        listener = TLSListener(
            self._runner.server,
            context,
            self._admission.handshakes,
            handshake_timeout=self._handshake_timeout,
        )
        try:
            self._port = await listener.start(self._url.host, self._url.port)
        except OSError as exc:
            await self._runner.cleanup()
            raise ConnectError(f"cannot listen on {self._url}: {exc}") from exc
        self._listener = listener
        log.info(
            "relay listening", extra={"url": f"{self._url.scheme}://{self._url.host}:{self._port}"}
        )

    async def _call(self, request: web.Request) -> web.Response:
        transport = request.transport
        try:
            peer = peer_from_ssl_object(
                transport.get_extra_info("ssl_object") if transport is not None else None
            )
        except AuthError as exc:
            log.warning("refused an https peer", extra={"error": str(exc)})
            return web.Response(status=403, text=str(exc))
        if self._limit is not None and (request.content_length or 0) > self._limit:
            return self._too_large(peer, request.content_length or 0)
        assert transport is not None
        refusal = self._admission.blocked(str(peer), time.monotonic()) or self._connection(
            transport, str(peer)
        )
        if refusal is not None:
            await hold_refusal(self._admission.refusals, str(peer))
            return web.Response(status=503, text=refusal.message, headers={"Connection": "close"})
        # Without a Content-Length the body may be as large as the frame limit.
        size = request.content_length if request.content_length is not None else self._limit
        grant = self._admission.admit_call(str(peer), size or 0)
        if isinstance(grant, Refusal):
            return web.Response(status=503, text=grant.message)
        try:
            return await self._answer(peer, request)
        finally:
            self._admission.release(grant)

    def _connection(self, transport: asyncio.BaseTransport, peer: str) -> Refusal | None:
        """Count ``transport`` against its peer's connection budget the first time it
        carries a call; forget connections that closed since."""
        if transport in self._connections:
            return None
        for known in [t for t in self._connections if t.is_closing()]:
            self._admission.close_connection(self._connections.pop(known))
        refusal = self._admission.open_connection(peer)
        if refusal is None:
            self._connections[transport] = peer
        return refusal

    async def _answer(self, peer: Peer, request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._too_large(peer, None)
        try:
            envelope = Envelope.FromString(body)
        except DecodeError as exc:
            log.warning("refused a malformed envelope", extra={"peer": str(peer)})
            return web.Response(status=400, text=f"the body is not a serialized Envelope: {exc}")
        del body
        reply = await call_handler(self._handler, peer, envelope)
        data = reply.SerializeToString()
        if self._limit is not None and len(data) > self._limit:
            metrics.oversized("http")
            return web.Response(status=413, text=_too_large("reply", len(data), self._limit))
        return web.Response(body=_body(data), content_type=CONTENT_TYPE)

    def _too_large(self, peer: Peer, size: int | None) -> web.Response:
        assert self._limit is not None
        text = (
            _too_large("envelope", size, self._limit)
            if size is not None
            else f"envelope exceeds the frame limit of {self._limit} bytes"
        )
        metrics.oversized("http")
        log.warning("refused an oversized envelope", extra={"peer": str(peer), "error": text})
        return web.Response(status=413, text=text)

    async def aclose(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        await self._runner.cleanup()
        if listener is not None:
            await listener.wait_closed()
        for peer in self._connections.values():
            self._admission.close_connection(peer)
        self._connections.clear()
