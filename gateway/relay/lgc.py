"""LGC (local gateway client): replay a Fleet call to the job's real SuperLink.

One upstream per job, in the SuperLink's own dialect: HTTP for flwr >= 1.40,
gRPC for flwr <= 1.39. The SuperLink's status, headers and body come back
unchanged; only failures to reach it become gateway replies, so the SuperNode
keeps retrying instead of shutting down: 503 when the call surely did not reach
the SuperLink (not connected: the relay may run it again), 504 when it may have
(sent but no answer in time, connection dropped: it is never run again).

A SuperLink with Flower's node authentication on must serve TLS (Flower
refuses ``--enable-supernode-auth`` with ``--insecure``); its route then comes
with the CA of its certificate, and the upstream verifies the SuperLink by it.
"""

from __future__ import annotations

import abc
import json
import logging
import ssl
from pathlib import Path

import grpc
import grpc.aio

from ..core import fleet
from ..core.envelope import header_pairs, upstream_reply
from ..core.exceptions import (
    AnswerTimeoutError,
    MaybeDeliveredError,
    NotDeliveredError,
    ProtocolError,
)
from ..core.failures import reply_for_error
from ..proto.envelope_pb2 import DIALECT_GRPC, DIALECT_HTTP, Envelope, Reply
from ..transport.http1_client import Http1Client

log = logging.getLogger(__name__)

_PROTOBUF = fleet.PROTOBUF_MEDIA_TYPE.encode()


class Upstream(abc.ABC):
    """A job's SuperLink as seen by the relay."""

    @abc.abstractmethod
    async def call(self, envelope: Envelope, *, timeout: float) -> Reply:
        """Replay ``envelope`` and return the SuperLink's answer (never raises)."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release connections."""


def _error_detail(body: bytes) -> str:
    """The ``detail`` of Flower's JSON error body, or the body itself."""
    try:
        payload = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")[:500]
    if isinstance(payload, dict) and "detail" in payload:
        return str(payload["detail"])
    return body.decode("utf-8", "replace")[:500]


class HttpUpstream(Upstream):
    """A flwr >= 1.40 SuperLink: ``POST /v1/fleet/<name>`` on its one HTTP port."""

    def __init__(
        self, address: str, *, max_body_bytes: int | None = None, ca_file: Path | None = None
    ) -> None:
        host, _, port = address.rpartition(":")
        self._client = Http1Client(
            host.strip("[]"),
            int(port),
            ssl_context=ssl.create_default_context(cafile=str(ca_file)) if ca_file else None,
        )

    async def call(self, envelope: Envelope, *, timeout: float) -> Reply:
        headers = header_pairs(envelope.headers)
        if envelope.dialect == DIALECT_GRPC:
            headers = fleet.grpc_headers_to_http(headers)
        headers = [(n, v) for n, v in headers if n != "content-type"]
        headers.append(("content-type", _PROTOBUF))
        try:
            response = await self._client.post(
                fleet.http_path_for(envelope.method), headers, envelope.body, timeout=timeout
            )
        except NotDeliveredError as exc:
            # Not connected (refused, TLS refused): the SuperLink never saw the call,
            # running it again is safe.
            return reply_for_error(
                envelope.message_id, NotDeliveredError(f"cannot reach the job's SuperLink: {exc}")
            )
        except AnswerTimeoutError:
            # The call may have reached the SuperLink: an unknown outcome, never re-run.
            return reply_for_error(
                envelope.message_id,
                MaybeDeliveredError(
                    f"the job's SuperLink did not answer {envelope.method} in time"
                ),
            )
        except MaybeDeliveredError as exc:
            return reply_for_error(
                envelope.message_id,
                MaybeDeliveredError(f"the job's SuperLink dropped {envelope.method}: {exc}"),
            )
        except ProtocolError as exc:
            return reply_for_error(envelope.message_id, exc)
        status = response.status
        detail = "" if status == 200 else _error_detail(response.body)
        reply_headers = fleet.forwardable_http_headers(response.headers)
        if envelope.dialect == DIALECT_GRPC:
            reply_headers = fleet.http_headers_to_grpc(reply_headers)
        return upstream_reply(
            envelope.message_id,
            http_status=status,
            grpc_code=fleet.grpc_code_for_http(status),
            body=response.body,
            detail=detail,
            headers=reply_headers,
        )

    async def aclose(self) -> None:
        self._client.close()


def _grpc_metadata(headers: list[tuple[str, bytes]]) -> list[tuple[str, str | bytes]]:
    return [(n, v if n.endswith("-bin") else v.decode("utf-8", "replace")) for n, v in headers]


class GrpcUpstream(Upstream):
    """A flwr <= 1.39 SuperLink: unary-unary ``/flwr.proto.Fleet/<Method>``."""

    def __init__(
        self, address: str, *, max_body_bytes: int | None = None, ca_file: Path | None = None
    ) -> None:
        size = -1 if max_body_bytes is None else max_body_bytes
        options = [
            ("grpc.max_receive_message_length", size),
            ("grpc.max_send_message_length", size),
        ]
        if ca_file is None:
            self._channel = grpc.aio.insecure_channel(address, options=options)
        else:
            credentials = grpc.ssl_channel_credentials(root_certificates=ca_file.read_bytes())
            self._channel = grpc.aio.secure_channel(address, credentials, options=options)

    async def call(self, envelope: Envelope, *, timeout: float) -> Reply:
        headers = header_pairs(envelope.headers)
        if envelope.dialect == DIALECT_HTTP:
            headers = fleet.http_headers_to_grpc(headers)
        method = self._channel.unary_unary(fleet.grpc_path_for(envelope.method))
        call = method(envelope.body, timeout=timeout, metadata=_grpc_metadata(headers))
        try:
            body: bytes = await call
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return reply_for_error(
                    envelope.message_id,
                    MaybeDeliveredError(
                        f"the job's SuperLink did not answer {envelope.method} in time"
                    ),
                )
            return upstream_reply(
                envelope.message_id,
                http_status=fleet.http_status_for_grpc(code.value[0]),
                grpc_code=code.value[0],
                detail=exc.details() or "",
            )
        initial = await call.initial_metadata()
        reply_headers = fleet.forwardable_grpc_metadata(initial or ())
        if envelope.dialect == DIALECT_HTTP:
            reply_headers = fleet.grpc_headers_to_http(reply_headers)
        return upstream_reply(
            envelope.message_id,
            http_status=200,
            grpc_code=fleet.OK,
            body=body,
            headers=reply_headers,
        )

    async def aclose(self) -> None:
        await self._channel.close()


def upstream_for(
    dialect: int,
    address: str,
    *,
    ca_file: Path | None = None,
    max_body_bytes: int | None = None,
) -> Upstream:
    """The upstream that speaks ``dialect`` to the SuperLink at ``address``
    (``host:port``); with ``ca_file``, over TLS verified against that CA."""
    if dialect == DIALECT_GRPC:
        return GrpcUpstream(address, max_body_bytes=max_body_bytes, ca_file=ca_file)
    return HttpUpstream(address, max_body_bytes=max_body_bytes, ca_file=ca_file)
