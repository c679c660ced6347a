"""Every TLS listener drops a connection that never finishes its handshake, soon; tcps and
https also cap the handshakes pending per source address and in total, refusing the next
connection at once, and log what they refused or what failed once per source and
interval; grpcs caps its connections, pending and established, in total."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import cast

import pytest

from gateway.core.config import Budgets, Limits, TLSConfig
from gateway.core.exceptions import AuthError, ConnectError
from gateway.core.identity import Peer
from gateway.proto.envelope_pb2 import ORIGIN_UPSTREAM, Envelope, Reply
from gateway.transport import TransportServer, connect, parse_url
from gateway.transport.admission import Admission
from gateway.transport.common import client_ssl_context, server_ssl_context
from gateway.transport.framing import Frame, FrameProtocol, FrameType, Side
from gateway.transport.grpc_transport import GrpcTransportServer
from gateway.transport.handshakes import PendingHandshakes
from gateway.transport.http_transport import PATH, HttpTransportServer
from gateway.transport.refusals import RefusalMeter, RefusalPolicy
from gateway.transport.tcp_transport import TcpTransportServer
from gateway.transport.tls_listener import TLSListener
from tests.support.pki import FederationKits

UNIT = 0.1  # seconds; every timeout below is a multiple of it
TIMEOUT = 10 * UNIT  # the listeners' handshake timeout, unless a test says otherwise
SERVERS = {"grpcs": GrpcTransportServer, "https": HttpTransportServer, "tcps": TcpTransportServer}
TLS_SCHEMES = ["https", "tcps"]  # the listeners that see their handshakes
FLOODER = "127.0.0.2"  # Linux routes all of 127/8 to loopback
LOGGER = "gateway.transport.tls_listener"


async def _answer(peer: Peer, envelope: Envelope) -> Reply:
    return Reply(message_id=envelope.message_id, origin=ORIGIN_UPSTREAM, http_status=200)


def _envelope() -> Envelope:
    return Envelope(job_id="j", site="site-1", message_id=uuid.uuid4().hex)


@contextlib.asynccontextmanager
async def _relay(
    scheme: str,
    federation: FederationKits,
    budgets: Budgets = Budgets(),
    *,
    timeout: float = TIMEOUT,
    log_interval: float = 600 * UNIT,
) -> AsyncIterator[tuple[TransportServer, PendingHandshakes]]:
    admission = Admission(budgets, refusals=RefusalMeter(RefusalPolicy(log_interval=log_interval)))
    server: TransportServer = SERVERS[scheme](
        parse_url(f"{scheme}://127.0.0.1:0"),
        federation.relay,
        Limits(),
        _answer,
        admission=admission,
        handshake_timeout=timeout,
    )
    await server.start()
    try:
        yield server, admission.handshakes
    finally:
        await server.aclose()
    assert admission.handshakes.pending() == 0


@contextlib.asynccontextmanager
async def _silent(
    port: int, count: int, source: str = FLOODER
) -> AsyncIterator[list[asyncio.StreamReader]]:
    """``count`` TCP connections from ``source`` that never send a byte."""
    streams = [
        await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        for _ in range(count)
    ]
    try:
        yield [reader for reader, _ in streams]
    finally:
        for _, writer in streams:
            writer.close()
        for _, writer in streams:
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _closed(reader: asyncio.StreamReader) -> None:
    """Until the relay closed (or reset) the connection."""
    with contextlib.suppress(ConnectionError):
        assert await reader.read() == b""


async def _until(condition: Callable[[], bool], timeout: float = 50 * UNIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        await asyncio.sleep(UNIT / 10)


async def _call(scheme: str, server: TransportServer, tls: TLSConfig) -> int:
    client = connect(f"{scheme}://localhost:{server.port}", tls=tls)
    try:
        return (await client.send(_envelope(), timeout=50 * UNIT)).http_status
    finally:
        await client.aclose()


def _lines(caplog: pytest.LogCaptureFixture, source: str = FLOODER) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and getattr(r, "source", "") == source]


@pytest.mark.parametrize("scheme", sorted(SERVERS))
async def test_a_connection_that_never_says_hello_is_closed_within_the_timeout(
    scheme: str, federation: FederationKits
) -> None:
    async with _relay(scheme, federation) as (server, _):
        async with _silent(server.port, 20, source="127.0.0.1") as silent:
            started = time.monotonic()
            await asyncio.wait_for(asyncio.gather(*map(_closed, silent)), 10 * TIMEOUT)
            assert time.monotonic() - started < 5 * TIMEOUT
        assert await _call(scheme, server, federation.sites["site-1"]) == 200


@pytest.mark.parametrize("scheme", TLS_SCHEMES)
async def test_a_source_over_its_budget_is_refused_at_once_while_another_is_served(
    scheme: str, federation: FederationKits, caplog: pytest.LogCaptureFixture
) -> None:
    budgets = Budgets(handshakes_per_source=4, handshakes_total=None)
    async with _relay(scheme, federation, budgets, timeout=100 * UNIT) as (server, handshakes):
        async with _silent(server.port, 4) as stuck:
            await _until(lambda: handshakes.pending(FLOODER) == 4)
            async with _silent(server.port, 10) as refused:
                started = time.monotonic()
                await asyncio.wait_for(asyncio.gather(*map(_closed, refused)), 10 * UNIT)
                assert time.monotonic() - started < 5 * UNIT
            # The flood's handshakes are still pending; a site from another address gets in.
            assert await _call(scheme, server, federation.sites["site-1"]) == 200
            assert handshakes.pending(FLOODER) == 4
            assert not any(reader.at_eof() for reader in stuck)
        await _until(lambda: handshakes.pending() == 0)
        [line] = _lines(caplog)
        assert line.levelno == logging.WARNING
        assert line.getMessage() == "refused or failed TLS connections"
        fields = vars(line)
        assert (fields["refused"], fields["failed"]) == (1, 0)
        assert fields["refusal"] == "4 handshakes pending from that address (limit 4)"
        assert handshakes.refused == {"handshakes_per_source": 10}
        async with _silent(server.port, 4):  # the flooder's budget is back
            await _until(lambda: handshakes.pending(FLOODER) == 4)
    assert handshakes.sources == 1  # only its log interval, which still runs


@pytest.mark.parametrize("scheme", TLS_SCHEMES)
async def test_the_total_budget_refuses_every_source_until_handshakes_end(
    scheme: str, federation: FederationKits
) -> None:
    budgets = Budgets(handshakes_per_source=None, handshakes_total=3)
    async with _relay(scheme, federation, budgets, timeout=100 * UNIT) as (server, handshakes):
        async with _silent(server.port, 3):
            await _until(lambda: handshakes.pending() == 3)
            async with _silent(server.port, 1, source="127.0.0.3") as [refused]:
                await asyncio.wait_for(_closed(refused), 5 * UNIT)
            with pytest.raises(ConnectError):
                await _call(scheme, server, federation.sites["site-1"])
        await _until(lambda: handshakes.pending() == 0)
        assert await _call(scheme, server, federation.sites["site-1"]) == 200
        assert handshakes.refused == {"handshakes_total": 2}


@pytest.mark.parametrize("scheme", TLS_SCHEMES)
async def test_stuck_handshakes_are_closed_in_time_and_logged_once_per_source_and_interval(
    scheme: str, federation: FederationKits, caplog: pytest.LogCaptureFixture
) -> None:
    budgets = Budgets(handshakes_per_source=2)
    timeout, interval = 5 * UNIT, 20 * UNIT
    async with _relay(scheme, federation, budgets, timeout=timeout, log_interval=interval) as (
        server,
        handshakes,
    ):
        started = time.monotonic()  # before the relay accepts, and starts their clocks
        async with _silent(server.port, 5) as silent:
            await asyncio.wait_for(asyncio.gather(*map(_closed, silent)), 10 * timeout)
            assert timeout <= time.monotonic() - started < 3 * timeout
        await _until(lambda: handshakes.pending() == 0)
        assert len(_lines(caplog)) == 1  # the first refusal, at once
        await _until(lambda: len(_lines(caplog)) == 2, 2 * interval)
        first, summary = (vars(line) for line in _lines(caplog))
        assert (first["refused"], first["failed"]) == (1, 0)
        assert (summary["refused"], summary["failed"]) == (2, 2)
        assert summary["failure"] == "no TLS handshake within 0.5 s"
        assert interval <= summary["seconds"] < 2 * interval
        await asyncio.sleep(interval)
        assert len(_lines(caplog)) == 2  # nothing new to report
        await _until(lambda: handshakes.sources == 0, 2 * interval)


@pytest.mark.parametrize("scheme", TLS_SCHEMES)
async def test_failed_handshakes_are_logged_with_how_they_failed(
    scheme: str, federation: FederationKits, caplog: pytest.LogCaptureFixture
) -> None:
    async with _relay(scheme, federation, log_interval=UNIT) as (server, handshakes):
        with pytest.raises((AuthError, ConnectError)):
            await _call(scheme, server, federation.foreign_site)
        await _until(lambda: handshakes.failures == 1)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")  # no TLS at all
        await asyncio.wait_for(_closed(reader), 5 * UNIT)
        writer.close()
        await writer.wait_closed()
        await _until(lambda: handshakes.failures == 2)
        await _until(lambda: len(_lines(caplog, "127.0.0.1")) == 2)
    certificate, plaintext = (vars(line)["failure"] for line in _lines(caplog, "127.0.0.1"))
    assert certificate.startswith("certificate refused: ")
    assert plaintext.startswith("TLS error: ")


async def _send_with_the_last_handshake_message(
    port: int, tls: TLSConfig, data: bytes, answered: Callable[[bytes], bool]
) -> bytes:
    """Do a TLS handshake by hand and send ``data`` in the same write as the client's
    Finished, so that the relay's TLS layer has it before the handshake is reported;
    return what came back once ``answered`` says it is enough."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls_object = client_ssl_context(tls).wrap_bio(incoming, outgoing, server_hostname="localhost")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while True:
            try:
                tls_object.do_handshake()
                break
            except ssl.SSLWantReadError:
                writer.write(outgoing.read())
                incoming.write(await asyncio.wait_for(reader.read(65536), 50 * UNIT))
        tls_object.write(data)
        writer.write(outgoing.read())
        received = b""
        while not answered(received):
            chunk = await asyncio.wait_for(reader.read(65536), 50 * UNIT)
            assert chunk, f"the relay closed the connection after {received!r}"
            incoming.write(chunk)
            with contextlib.suppress(ssl.SSLWantReadError):
                while True:
                    received += tls_object.read(65536)
        return received
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


class _Recorder(asyncio.Protocol):
    """A server's protocol that notes what it is told, and answers data with ``ok``."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.events.append("connection_made")
        # A stream transport, though uvloop's is no subclass of asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.events.append(f"data_received {data!r}")
        assert self.transport is not None, "data before connection_made"
        self.transport.write(b"ok")


async def test_the_servers_protocol_is_told_of_its_connection_before_any_data(
    federation: FederationKits,
) -> None:
    recorders: list[_Recorder] = []

    def factory() -> _Recorder:
        recorders.append(_Recorder())
        return recorders[-1]

    handshakes = PendingHandshakes()
    listener = TLSListener(
        factory, server_ssl_context(federation.relay), handshakes, handshake_timeout=TIMEOUT
    )
    port = await listener.start("127.0.0.1", 0)
    try:
        answer = await _send_with_the_last_handshake_message(
            port, federation.sites["site-1"], b"hello", lambda data: data == b"ok"
        )
    finally:
        listener.close()
        await listener.wait_closed()
    assert answer == b"ok"
    [recorder] = recorders
    assert recorder.events == ["connection_made", "data_received b'hello'"]
    assert recorder.transport is not None and recorder.transport.get_extra_info("ssl_object")
    assert handshakes.pending() == 0


async def test_a_tcps_frame_sent_with_the_last_handshake_message_is_answered(
    federation: FederationKits,
) -> None:
    ping = FrameProtocol(Side.CLIENT, max_payload=None).frame(FrameType.PING, 7, b"now")
    frames = FrameProtocol(Side.CLIENT, max_payload=None)
    events = []

    def answered(data: bytes) -> bool:
        frames.receive_data(data[answered.seen :])  # type: ignore[attr-defined]
        answered.seen = len(data)  # type: ignore[attr-defined]
        events.extend(frames.events())
        return bool(events)

    answered.seen = 0  # type: ignore[attr-defined]
    async with _relay("tcps", federation) as (server, _):
        await _send_with_the_last_handshake_message(
            server.port, federation.sites["site-1"], ping, answered
        )
    [pong] = events
    assert isinstance(pong, Frame)
    assert (pong.type, pong.request_id, bytes(pong.payload)) == (FrameType.PONG, 7, b"now")


async def test_an_https_request_sent_with_the_last_handshake_message_is_answered(
    federation: FederationKits,
) -> None:
    body = _envelope().SerializeToString()
    request = (
        f"POST {PATH} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/protobuf\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    async with _relay("https", federation) as (server, _):
        response = await _send_with_the_last_handshake_message(
            server.port, federation.sites["site-1"], request, lambda data: b"\r\n\r\n" in data
        )
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")


@pytest.mark.parametrize("scheme", TLS_SCHEMES)
async def test_closing_the_listener_ends_the_pending_handshakes_at_once(
    scheme: str, federation: FederationKits
) -> None:
    async with (
        _relay(scheme, federation, timeout=100 * UNIT) as (server, handshakes),
        _silent(server.port, 5) as silent,
    ):
        await _until(lambda: handshakes.pending() == 5)
        started = time.monotonic()
        await server.aclose()
        await asyncio.wait_for(asyncio.gather(*map(_closed, silent)), 5 * UNIT)
        assert time.monotonic() - started < 5 * UNIT
        assert handshakes.pending() == 0


async def test_grpcs_closes_connections_over_its_budget_at_once_pending_or_established(
    federation: FederationKits,
) -> None:
    async with _relay("grpcs", federation, Budgets(grpcs_connections=3), timeout=100 * UNIT) as (
        server,
        _,
    ):
        site = connect(f"grpcs://localhost:{server.port}", tls=federation.sites["site-1"])
        try:
            assert (await site.send(_envelope(), timeout=50 * UNIT)).http_status == 200
            async with _silent(server.port, 2):  # with the site's: 3 connections
                await asyncio.sleep(2 * UNIT)  # gRPC core accepts them on its own threads
                async with _silent(server.port, 3) as over:
                    await asyncio.wait_for(asyncio.gather(*map(_closed, over)), 5 * UNIT)
                with pytest.raises(ConnectError):
                    await _call("grpcs", server, federation.sites["site-2"])
                # The site's established connection is not affected.
                assert (await site.send(_envelope(), timeout=50 * UNIT)).http_status == 200
        finally:
            await site.aclose()
        deadline = time.monotonic() + 50 * UNIT  # until gRPC core has seen the closes
        while True:
            try:
                assert await _call("grpcs", server, federation.sites["site-2"]) == 200
                break
            except ConnectError:
                assert time.monotonic() < deadline
                await asyncio.sleep(UNIT)
