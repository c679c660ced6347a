"""gRPC transport (``grpcs://``): one HTTP/2 connection per site, many calls in flight.

The relay requires a client certificate signed by the federation's root CA and
takes the peer's identity from that verified certificate. Plain ``grpc://`` is
deliberately absent: without a client certificate a peer has no identity.

gRPC core accepts connections and does their TLS handshakes itself, out of the
relay's sight: unlike tcps and https, grpcs has no budget of handshakes per source
address, and no log of refused or failed handshakes. It caps the connections open
at once instead, pending and established together (``Budgets.grpcs_connections``;
gRPC closes a connection over it as soon as it is accepted), and drops a handshake
after the handshake timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import NoReturn, cast

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

from ..core.config import Limits, TLSConfig
from ..core.exceptions import (
    AuthError,
    ConnectError,
    DeadlineError,
    FrameTooLargeError,
    RelayBusyError,
    TransportError,
)
from ..core.identity import Peer, peer_from_pem
from ..observability import metrics
from ..proto.envelope_pb2 import Envelope, Reply
from . import interface
from .admission import Admission, Refusal
from .common import HANDSHAKE_TIMEOUT, call_handler, frame_limit, hold_refusal

log = logging.getLogger(__name__)

_METHOD = "/flgate.v1.Relay/Call"
_BUSY = "flgate-busy"
"""Trailing metadata key of a call the relay did not admit (answered UNAVAILABLE)."""
_SIZE = "flgate-size"
"""Metadata key: the serialized envelope's size, so the relay admits it before reading it."""
_ADMITTED = "flgate-admitted"
"""Initial metadata key: the relay admitted a call that the site sends in chunks."""
CHUNK_BYTES = 1024 * 1024
"""A larger envelope is sent as a stream of messages of this size (see ``_RelayService``)."""

_KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


def _size_options(limits: Limits) -> list[tuple[str, int]]:
    limit = frame_limit(limits)
    size = -1 if limit is None else limit
    return [("grpc.max_receive_message_length", size), ("grpc.max_send_message_length", size)]


def _translate(exc: grpc.aio.AioRpcError, target: str) -> TransportError | AuthError:
    code, details = exc.code(), exc.details() or ""
    where = f"relay at {target}"
    if any(key == _BUSY for key, _ in exc.trailing_metadata() or ()):
        return RelayBusyError(f"{where} did not admit the call: {details}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineError(f"no reply from the {where} before the deadline")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return FrameTooLargeError(f"{where} refused the frame: {details}")
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return AuthError(f"{where} refused this site's identity: {details}")
    if code == grpc.StatusCode.UNAVAILABLE:
        return ConnectError(f"cannot reach the {where}: {details}")
    return TransportError(f"{where} failed the call ({code.name}): {details}")


class GrpcTransportClient(interface.TransportClient):
    """A site's channel to the relay's ``Relay/Call`` service."""

    def __init__(self, url: interface.TransportURL, tls: TLSConfig | None, limits: Limits) -> None:
        assert tls is not None  # grpcs only; enforced by registry.connect
        ca, cert, key = tls.read()
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )
        self._target = url.hostport
        self._limit = frame_limit(limits)
        self._channel = grpc.aio.secure_channel(
            self._target, credentials, options=_size_options(limits) + _KEEPALIVE_OPTIONS
        )
        self._call = self._channel.unary_unary(
            _METHOD, request_serializer=None, response_deserializer=Reply.FromString
        )
        self._stream = self._channel.stream_unary(
            _METHOD, request_serializer=None, response_deserializer=Reply.FromString
        )

    async def send(self, envelope: Envelope, *, timeout: float) -> Reply:
        data = envelope.SerializeToString()
        if self._limit is not None and len(data) > self._limit:
            message = f"envelope of {len(data)} bytes exceeds the frame limit of {self._limit}"
            metrics.oversized("grpc")
            raise FrameTooLargeError(message)
        metadata = ((_SIZE, str(len(data))),)
        try:
            if len(data) <= CHUNK_BYTES:
                reply: Reply = await self._call(data, timeout=timeout, metadata=metadata)
            else:
                reply = await self._send_in_chunks(data, timeout, metadata)
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc, self._target) from exc
        return reply

    async def _send_in_chunks(
        self, data: bytes, timeout: float, metadata: tuple[tuple[str, str], ...]
    ) -> Reply:
        """Send ``data`` once the relay has admitted it (its initial metadata says so).

        A refused call then costs no upload, and its status is the relay's: gRPC
        reports a write that meets a finished call as its own INTERNAL error instead.
        """
        call = self._stream(timeout=timeout, metadata=metadata)
        if (_ADMITTED, "1") in tuple(await call.initial_metadata() or ()):
            with contextlib.suppress(asyncio.InvalidStateError):  # the call ended meanwhile
                for chunk in _chunks(data):
                    await call.write(chunk)
                await call.done_writing()
        reply: Reply = await call
        return reply

    async def aclose(self) -> None:
        await self._channel.close()


def _chunks(data: bytes) -> Iterator[bytes]:
    """``data`` as messages of :data:`CHUNK_BYTES` (gRPC sends only ``bytes``)."""
    view = memoryview(data)
    for start in range(0, len(data), CHUNK_BYTES):
        yield bytes(view[start : start + CHUNK_BYTES])


class _RelayService:
    """``Relay/Call``, admitted before its message is read.

    Served as client-streaming: a unary handler gets its message only once gRPC has
    received it whole, a streaming one reads it when it asks. So the peer (from its
    certificate) and the size it declares (``flgate-size``; the frame limit when
    absent) are admitted first. A small envelope comes as one message; a large one in
    chunks of :data:`CHUNK_BYTES`, copied as they arrive into one buffer of the
    declared size: gRPC would otherwise hold a whole message in its own buffers, then
    again as ``bytes``, beside the parsed envelope (about three copies of each large
    call at once; here two while it is parsed, one after). More than declared is
    refused.
    """

    def __init__(self, handler: interface.Handler, admission: Admission, limit: int | None) -> None:
        self._handler = handler
        self._admission = admission
        self._limit = limit

    def generic_handler(self) -> grpc.GenericRpcHandler:
        call = grpc.stream_unary_rpc_method_handler(
            self.call, request_deserializer=None, response_serializer=Reply.SerializeToString
        )
        return grpc.method_handlers_generic_handler("flgate.v1.Relay", {"Call": call})

    async def call(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, Reply]
    ) -> Reply:
        peer = await self._peer(context)
        declared = await self._declared_size(context)
        grant = self._admission.blocked(str(peer), time.monotonic()) or self._admission.admit_call(
            str(peer), declared
        )
        if isinstance(grant, Refusal):
            await hold_refusal(self._admission.refusals, str(peer))
            await _abort(context, grpc.StatusCode.UNAVAILABLE, grant.message, busy=True)
        try:
            if declared > CHUNK_BYTES:  # the site waits for this before sending its chunks
                await context.send_initial_metadata(((_ADMITTED, "1"),))
            envelope = await self._receive(requests, declared, context)
            return await call_handler(self._handler, peer, envelope)
        finally:
            self._admission.release(grant)

    @staticmethod
    async def _receive(
        requests: AsyncIterator[bytes],
        declared: int,
        context: grpc.aio.ServicerContext[bytes, Reply],
    ) -> Envelope:
        """The envelope sent in one or more messages, at most ``declared`` bytes in all."""
        messages = aiter(requests)
        first = await anext(messages, None)
        if first is None:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "no envelope was sent")
        if len(first) == declared:
            data: bytes | bytearray = first  # sent whole: no buffer to copy it into
        else:
            data = bytearray(declared)
            received = 0
            chunk: bytes | None = first
            while chunk is not None:
                end = received + len(chunk)
                if end > declared:
                    message = f"more than the declared flgate-size of {declared} bytes was sent"
                    await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, message)
                data[received:end] = chunk
                received = end
                chunk = await anext(messages, None)
            del data[received:]
        del first
        try:
            return Envelope.FromString(cast(bytes, data))  # upb parses any buffer
        except DecodeError as exc:
            message = f"not a serialized Envelope: {exc}"
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, message)

    async def _declared_size(self, context: grpc.aio.ServicerContext[bytes, Reply]) -> int:
        """The declared size (the frame limit when none is), refused unread when over it."""
        for key, value in context.invocation_metadata() or ():
            if key == _SIZE and isinstance(value, str) and value.isdigit():
                size = int(value)
                if self._limit is not None and size > self._limit:
                    message = f"envelope of {size} bytes exceeds the frame limit of {self._limit}"
                    metrics.oversized("grpc")
                    await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, message)
                return size
        return self._limit or 0

    @staticmethod
    async def _peer(context: grpc.aio.ServicerContext[bytes, Reply]) -> Peer:
        pem = context.auth_context().get("x509_pem_cert")
        if not pem:
            message = "a client certificate is required"
            await _abort(context, grpc.StatusCode.UNAUTHENTICATED, message)
        try:
            return peer_from_pem(pem[0])
        except AuthError as exc:
            await _abort(context, grpc.StatusCode.UNAUTHENTICATED, str(exc))


async def _abort(
    context: grpc.aio.ServicerContext[bytes, Reply],
    code: grpc.StatusCode,
    message: str,
    *,
    busy: bool = False,
) -> NoReturn:
    """End the call with ``code`` (``busy``: marked as not admitted, so retried)."""
    await context.abort(code, message, trailing_metadata=((_BUSY, "1"),) if busy else ())
    raise AssertionError("ServicerContext.abort returns only by raising")


class GrpcTransportServer(interface.TransportServer):
    """The relay's ``grpcs://`` listener."""

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
        admission = admission or Admission(max_frame_bytes=frame_limit(limits))
        connections = admission.budgets.grpcs_connections
        self._server = grpc.aio.server(
            options=[
                *_size_options(limits),
                *(
                    []
                    if connections is None
                    else [("grpc.max_allowed_incoming_connections", connections)]
                ),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 20_000),
                # gRPC reads up to 4 MiB per connection at a time by default: with
                # many connections sending large calls that alone is hundreds of MB.
                ("grpc.experimental.tcp_max_read_chunk_size", 256 * 1024),
                ("grpc.server_handshake_timeout_ms", int(handshake_timeout * 1000)),
            ]
        )
        service = _RelayService(handler, admission, frame_limit(limits))
        self._server.add_generic_rpc_handlers((service.generic_handler(),))
        self._port = 0

    @property
    def port(self) -> int:
        return self._port

    async def start(self) -> None:
        ca, cert, key = self._tls.read()
        credentials = grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=True
        )
        try:
            self._port = self._server.add_secure_port(self._url.hostport, credentials)
        except RuntimeError as exc:
            raise ConnectError(f"cannot listen on {self._url}: {exc}") from exc
        await self._server.start()
        log.info(
            "relay listening", extra={"url": f"{self._url.scheme}://{self._url.host}:{self._port}"}
        )

    async def aclose(self) -> None:
        await self._server.stop(grace=1.0)
