"""The LGS for flwr <= 1.39: gRPC ``flwr.proto.Fleet/*`` and ``GrpcAdapter/SendReceive``.

Both forms are served on one port, so ``flower-supernode --grpc-rere`` and
``--grpc-adapter`` work alike. Adapter calls are unwrapped into plain Fleet
calls (the method is derived from the message name), so the job's SuperLink
needs no adapter of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

from ..core import fleet
from ..core.config import Limits, LoopbackTLS
from ..core.envelope import header_pairs
from ..proto.envelope_pb2 import DIALECT_GRPC, Reply
from ..proto.grpc_adapter_pb2 import AdapterContainer
from .lgs import REFUSAL_DETAIL, Forward, LocalGatewayServer

log = logging.getLogger(__name__)

_CODES = {code.value[0]: code for code in grpc.StatusCode}
_QUALNAME_KEY = "grpc-message-qualname"

UnaryBehaviour = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


async def _finish(reply: Reply, context: grpc.aio.ServicerContext) -> bytes:
    """Return the body on success; otherwise end the call with the reply's status."""
    if reply.grpc_code != fleet.OK:
        await context.abort(
            _CODES.get(reply.grpc_code, grpc.StatusCode.UNKNOWN), reply.detail or "error"
        )
    metadata = [
        (n, v if n.endswith("-bin") else v.decode("utf-8", "replace"))
        for n, v in header_pairs(reply.headers)
    ]
    if metadata:
        await context.send_initial_metadata(metadata)
    body: bytes = reply.body
    return body


class _FleetHandler(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Routes every gRPC method path: Fleet, GrpcAdapter, or refusal."""

    def __init__(self, forward: Forward) -> None:
        self._forward = forward

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        path: str = details.method
        behaviour: UnaryBehaviour
        if path == fleet.GRPC_ADAPTER_METHOD:
            behaviour = self._adapter
        else:
            method = fleet.method_from_grpc_path(path)
            behaviour = self._refuse(path) if method is None else self._fleet(method)
        return grpc.unary_unary_rpc_method_handler(behaviour)

    def _fleet(self, method: str) -> UnaryBehaviour:
        async def behaviour(body: bytes, context: grpc.aio.ServicerContext) -> bytes:
            headers = fleet.forwardable_grpc_metadata(context.invocation_metadata() or ())
            reply = await self._forward(method, DIALECT_GRPC, headers, body)
            return await _finish(reply, context)

        return behaviour

    async def _adapter(self, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            container = AdapterContainer.FromString(body)
        except DecodeError:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "GrpcAdapter request is not a valid MessageContainer",
            )
            raise  # abort raises; this tells type checkers so
        method = fleet.method_from_adapter_message(container.grpc_message_name)
        if method is None:
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED,
                REFUSAL_DETAIL.format(
                    what="Fleet request messages", request=repr(container.grpc_message_name)
                ),
            )
            raise AssertionError("unreachable: abort raises")
        headers = fleet.forwardable_grpc_metadata(context.invocation_metadata() or ())
        reply = await self._forward(method, DIALECT_GRPC, headers, container.grpc_message_content)
        content = await _finish(reply, context)
        response_name = fleet.adapter_response_name(container.grpc_message_name)
        metadata = dict(container.metadata)
        metadata[_QUALNAME_KEY] = response_name
        return AdapterContainer(
            metadata=metadata, grpc_message_name=response_name, grpc_message_content=content
        ).SerializeToString()

    @staticmethod
    def _refuse(path: str) -> UnaryBehaviour:
        async def behaviour(body: bytes, context: grpc.aio.ServicerContext) -> bytes:
            log.warning("refused non-Fleet request", extra={"path": path})
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED,
                REFUSAL_DETAIL.format(what="flwr.proto.Fleet/*", request=path),
            )
            raise AssertionError("unreachable: abort raises")

        return behaviour


class GrpcLGS(LocalGatewayServer):
    """Impersonates a flwr <= 1.39 SuperLink's gRPC Fleet API."""

    def __init__(
        self, forward: Forward, limits: Limits = Limits(), *, tls: LoopbackTLS | None = None
    ) -> None:
        size = -1 if limits.max_frame_bytes is None else limits.max_frame_bytes
        self._credentials = (
            grpc.ssl_server_credentials([(tls.key.read_bytes(), tls.cert.read_bytes())])
            if tls is not None
            else None
        )
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", size),
                ("grpc.max_send_message_length", size),
            ]
        )
        self._server.add_generic_rpc_handlers((_FleetHandler(forward),))
        self._port = 0

    @property
    def port(self) -> int:
        return self._port

    async def start(self, port: int = 0) -> None:
        address = f"{self.host}:{port}"
        if self._credentials is None:
            self._port = self._server.add_insecure_port(address)
        else:
            self._port = self._server.add_secure_port(address, self._credentials)
        await self._server.start()

    async def aclose(self) -> None:
        await self._server.stop(grace=0.5)
