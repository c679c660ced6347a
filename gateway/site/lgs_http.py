"""The LGS for flwr >= 1.40: protobuf over HTTP/1.1, ``POST /v1/fleet/<name>``."""

from __future__ import annotations

import json
import logging
import socket
import ssl

from aiohttp import web

from ..core import fleet
from ..core.config import READ_BUFFER_BYTES, Limits, LoopbackTLS
from ..core.envelope import header_pairs
from ..proto.envelope_pb2 import DIALECT_HTTP, Reply
from .lgs import REFUSAL_DETAIL, Forward, LocalGatewayServer

log = logging.getLogger(__name__)


def _json_error(status: int, detail: str) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps({"code": status, "detail": detail}).encode(),
        content_type="application/json",
    )


def _to_response(reply: Reply) -> web.Response:
    if reply.http_status != 200 and not reply.body:
        response = _json_error(reply.http_status, reply.detail or "error")
    else:
        response = web.Response(status=reply.http_status, body=reply.body)
    for name, value in header_pairs(reply.headers):
        response.headers.add(name, value.decode("latin-1"))
    if reply.http_status == 200 and "content-type" not in response.headers:
        response.headers["content-type"] = fleet.PROTOBUF_MEDIA_TYPE
    return response


class HttpLGS(LocalGatewayServer):
    """Impersonates a flwr >= 1.40 SuperLink's Fleet API."""

    def __init__(
        self, forward: Forward, limits: Limits = Limits(), *, tls: LoopbackTLS | None = None
    ) -> None:
        self._forward = forward
        self._ssl: ssl.SSLContext | None = None
        if tls is not None:
            self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._ssl.load_cert_chain(tls.cert, tls.key)
        max_size = limits.max_frame_bytes or 2**62
        self._app = web.Application(client_max_size=max_size)
        self._app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(self._app, access_log=None, read_bufsize=READ_BUFFER_BYTES)
        self._site: web.SockSite | None = None
        self._port = 0

    @property
    def port(self) -> int:
        return self._port

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        method = fleet.method_from_http_path(request.path)
        if request.method != "POST" or method is None:
            log.warning("refused non-Fleet request", extra={"path": request.path})
            return _json_error(
                404,
                REFUSAL_DETAIL.format(
                    what="POST /v1/fleet/*", request=f"{request.method} {request.path}"
                ),
            )
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            return _json_error(413, f"request body over the gateway's frame limit: {exc.text}")
        headers = fleet.forwardable_http_headers(request.headers.items())
        reply = await self._forward(method, DIALECT_HTTP, headers, body)
        return _to_response(reply)

    async def start(self, port: int = 0) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, port))
        self._port = sock.getsockname()[1]
        await self._runner.setup()
        self._site = web.SockSite(self._runner, sock, ssl_context=self._ssl)
        await self._site.start()

    async def aclose(self) -> None:
        await self._runner.cleanup()
