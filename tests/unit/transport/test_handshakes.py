"""Every TLS listener drops a connection that never finishes its handshake, soon."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from gateway.core.config import Limits
from gateway.core.identity import Peer
from gateway.proto.envelope_pb2 import ORIGIN_UPSTREAM, Envelope, Reply
from gateway.transport import TransportServer, connect, parse_url
from gateway.transport.grpc_transport import GrpcTransportServer
from gateway.transport.http_transport import HttpTransportServer
from gateway.transport.tcp_transport import TcpTransportServer
from tests.support.pki import FederationKits

TIMEOUT = 1.0  # seconds, the listeners' handshake timeout here
SERVERS = {"grpcs": GrpcTransportServer, "https": HttpTransportServer, "tcps": TcpTransportServer}


async def _answer(peer: Peer, envelope: Envelope) -> Reply:
    return Reply(message_id=envelope.message_id, origin=ORIGIN_UPSTREAM, http_status=200)


@pytest.mark.parametrize("scheme", sorted(SERVERS))
async def test_a_connection_that_never_says_hello_is_closed_within_the_timeout(
    scheme: str, federation: FederationKits
) -> None:
    server: TransportServer = SERVERS[scheme](
        parse_url(f"{scheme}://127.0.0.1:0"),
        federation.relay,
        Limits(),
        _answer,
        handshake_timeout=TIMEOUT,
    )
    await server.start()
    try:
        silent = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(20)]
        started = time.monotonic()
        for reader, _ in silent:
            assert await asyncio.wait_for(reader.read(), 10 * TIMEOUT) == b""
        assert time.monotonic() - started < 5 * TIMEOUT
        for _, writer in silent:
            writer.close()
        client = connect(f"{scheme}://localhost:{server.port}", tls=federation.sites["site-1"])
        try:
            sent = Envelope(job_id="j", site="site-1", message_id=uuid.uuid4().hex)
            assert (await client.send(sent, timeout=10.0)).http_status == 200
        finally:
            await client.aclose()
    finally:
        await server.aclose()
