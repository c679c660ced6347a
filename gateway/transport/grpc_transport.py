"""gRPC transport (``grpcs://``): one HTTP/2 connection per site, many calls in flight.

The relay requires a client certificate signed by the federation's root CA and
takes the peer's identity from that verified certificate. Plain ``grpc://`` is
deliberately absent: without a client certificate a peer has no identity.
"""

from __future__ import annotations

import logging

import grpc
import grpc.aio

from ..core.config import Limits, TLSConfig
from ..core.exceptions import (
    AuthError,
    ConnectError,
    DeadlineError,
    FrameTooLargeError,
    TransportError,
)
from ..core.identity import peer_from_pem
from ..proto import envelope_pb2_grpc
from ..proto.envelope_pb2 import Envelope, Reply
from . import interface
from .common import call_handler, frame_limit

log = logging.getLogger(__name__)

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
        self._channel = grpc.aio.secure_channel(
            self._target, credentials, options=_size_options(limits) + _KEEPALIVE_OPTIONS
        )
        self._call = self._channel.unary_unary(
            "/flgate.v1.Relay/Call",
            request_serializer=Envelope.SerializeToString,
            response_deserializer=Reply.FromString,
        )

    async def send(self, envelope: Envelope, *, timeout: float) -> Reply:
        try:
            reply: Reply = await self._call(envelope, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc, self._target) from exc
        return reply

    async def aclose(self) -> None:
        await self._channel.close()


class _RelayServicer(envelope_pb2_grpc.RelayServicer):
    def __init__(self, handler: interface.Handler) -> None:
        self._handler = handler

    async def Call(self, request: Envelope, context: grpc.aio.ServicerContext) -> Reply:
        pem = context.auth_context().get("x509_pem_cert")
        if not pem:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required")
        try:
            peer = peer_from_pem(pem[0])
        except AuthError as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        return await call_handler(self._handler, peer, request)


class GrpcTransportServer(interface.TransportServer):
    """The relay's ``grpcs://`` listener."""

    def __init__(
        self,
        url: interface.TransportURL,
        tls: TLSConfig | None,
        limits: Limits,
        handler: interface.Handler,
    ) -> None:
        assert tls is not None
        self._url = url
        self._tls = tls
        self._server = grpc.aio.server(
            options=[
                *_size_options(limits),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 20_000),
            ]
        )
        envelope_pb2_grpc.add_RelayServicer_to_server(  # type: ignore[no-untyped-call]
            _RelayServicer(handler), self._server
        )
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
