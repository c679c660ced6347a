"""Every transport behind the same seam, on real sockets: grpcs, https and tcps.

A relay-like server with an echo handler that records each verified peer, and
clients holding the certificates of the ``federation`` fixture. The last part
feeds random bytes to the live tcps and https servers, before and after the
TLS handshake, and checks that each is refused and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.core.config import Limits, MiB, TLSConfig
from gateway.core.exceptions import (
    AuthError,
    ConfigError,
    ConnectError,
    DeadlineError,
    FrameTooLargeError,
)
from gateway.core.identity import Peer, Role
from gateway.proto.envelope_pb2 import ORIGIN_GATEWAY, ORIGIN_UPSTREAM, Envelope, Reply
from gateway.transport import TransportClient, TransportServer, connect, listen, parse_url
from gateway.transport.common import client_ssl_context, frame_limit, server_ssl_context
from gateway.transport.framing import (
    Frame,
    FrameProtocol,
    FrameType,
    FramingError,
    PeerError,
    Side,
)
from gateway.transport.http_transport import PATH
from gateway.transport.tcp_transport import TcpTransportClient, TcpTransportServer
from tests.support.pki import FederationKits

SCHEMES = ["grpcs", "https", "tcps"]
UNIT = 0.1  # seconds; every timeout below is a multiple of it
BIG = 2 * 1024 * 1024  # over a 1024-byte frame limit plus the 1 MiB envelope overhead


@dataclass
class Echo:
    """Answers ``echo:<body>``; ``Boom`` raises, ``Sleep`` sleeps ``body`` seconds."""

    peers: list[Peer] = field(default_factory=list)
    on_call: Callable[[], Awaitable[None]] | None = None

    async def __call__(self, peer: Peer, envelope: Envelope) -> Reply:
        self.peers.append(peer)
        if envelope.method == "Boom":
            raise RuntimeError("the handler broke")
        if envelope.method == "Sleep":
            await asyncio.sleep(float(envelope.body))
        if self.on_call is not None:
            await self.on_call()
        return Reply(
            message_id=envelope.message_id,
            origin=ORIGIN_UPSTREAM,
            http_status=200,
            body=b"echo:" + envelope.body,
        )


def envelope(body: bytes = b"x", method: str = "PullMessages") -> Envelope:
    return Envelope(
        job_id="job-a", site="site-1", message_id=uuid.uuid4().hex, method=method, body=body
    )


@dataclass
class Relay:
    scheme: str
    federation: FederationKits
    echo: Echo
    server: TransportServer
    limits: Limits

    @property
    def url(self) -> str:
        return f"{self.scheme}://localhost:{self.server.port}"

    def client(self, tls: TLSConfig | None = None, limits: Limits = Limits()) -> TransportClient:
        return connect(self.url, tls=tls or self.federation.sites["site-1"], limits=limits)

    async def restart(self) -> None:
        port = self.server.port
        await self.server.aclose()
        self.server = await serve(self.scheme, self.federation, self.echo, self.limits, port)


async def serve(
    scheme: str, federation: FederationKits, echo: Echo, limits: Limits = Limits(), port: int = 0
) -> TransportServer:
    server = listen(
        f"{scheme}://127.0.0.1:{port}", tls=federation.relay, handler=echo, limits=limits
    )
    await server.start()
    return server


@contextlib.asynccontextmanager
async def running(
    scheme: str, federation: FederationKits, limits: Limits = Limits()
) -> AsyncIterator[Relay]:
    echo = Echo()
    relay = Relay(scheme, federation, echo, await serve(scheme, federation, echo, limits), limits)
    try:
        yield relay
    finally:
        await relay.server.aclose()


@contextlib.asynccontextmanager
async def client_of(
    relay: Relay, tls: TLSConfig | None = None, limits: Limits = Limits()
) -> AsyncIterator[TransportClient]:
    client = relay.client(tls, limits)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(params=SCHEMES)
async def relay(request: pytest.FixtureRequest, federation: FederationKits) -> AsyncIterator[Relay]:
    async with running(request.param, federation) as relay:
        yield relay


def test_secure_schemes_only_are_registered() -> None:
    for scheme in SCHEMES:
        assert parse_url(f"{scheme}://relay:1").secure
    for plain in ("grpc", "http", "tcp"):  # no client certificate, no peer identity
        with pytest.raises(ConfigError, match="valid schemes: grpcs://, https://"):
            parse_url(f"{plain}://relay:1")


async def test_round_trip_and_peer_from_certificate(
    relay: Relay, federation: FederationKits
) -> None:
    async with client_of(relay) as client:
        sent = envelope(b"hello")
        reply = await client.send(sent, timeout=50 * UNIT)
    assert (reply.message_id, reply.http_status, reply.body) == (
        sent.message_id,
        200,
        b"echo:hello",
    )
    async with client_of(relay, tls=federation.admin) as admin:
        await admin.send(envelope(), timeout=50 * UNIT)
    assert relay.echo.peers == [Peer("site-1", Role.SITE), Peer("admin@example.org", Role.ADMIN)]


async def test_fifty_concurrent_calls_on_one_client(relay: Relay) -> None:
    arrived = 0
    everyone = asyncio.Event()

    async def barrier() -> None:  # no reply until all 50 calls are in the handler at once
        nonlocal arrived
        arrived += 1
        if arrived == 50:
            everyone.set()
        await everyone.wait()

    relay.echo.on_call = barrier
    async with client_of(relay) as client:
        bodies = [f"call-{i}".encode() for i in range(50)]
        replies = await asyncio.gather(
            *(client.send(envelope(body), timeout=100 * UNIT) for body in bodies)
        )
    assert [reply.body for reply in replies] == [b"echo:" + body for body in bodies]


async def test_large_envelopes_arrive_whole_also_in_parallel(relay: Relay) -> None:
    # grpcs sends these in 1 MiB messages; the sizes fall on and off that boundary
    bodies = [bytes([i]) * size for i, size in enumerate((3 * MiB + 17, 2 * MiB - 40, 5 * MiB))]
    async with client_of(relay) as client:
        replies = await asyncio.gather(
            *(client.send(envelope(body), timeout=100 * UNIT) for body in bodies)
        )
    assert [reply.body for reply in replies] == [b"echo:" + body for body in bodies]


async def test_certificate_of_another_ca_is_refused(
    relay: Relay, federation: FederationKits
) -> None:
    async with client_of(relay, tls=federation.foreign_site) as intruder:
        with pytest.raises((AuthError, ConnectError)):
            await intruder.send(envelope(), timeout=50 * UNIT)
    assert relay.echo.peers == []
    async with client_of(relay) as client:  # the relay still serves its own sites
        assert (await client.send(envelope(), timeout=50 * UNIT)).http_status == 200


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("limited", ["client", "relay"])
async def test_oversized_call_fails_and_the_relay_keeps_serving(
    scheme: str, limited: str, federation: FederationKits
) -> None:
    small = Limits(max_frame_bytes=1024)
    relay_limits = small if limited == "relay" else Limits()
    client_limits = small if limited == "client" else Limits()
    async with (
        running(scheme, federation, relay_limits) as relay,
        client_of(relay, limits=client_limits) as client,
    ):
        with pytest.raises(FrameTooLargeError, match=r"frame|[Ll]arge|RESOURCE"):
            await client.send(envelope(b"x" * BIG), timeout=50 * UNIT)
        assert (await client.send(envelope(b"small"), timeout=50 * UNIT)).body == b"echo:small"
    assert len(relay.echo.peers) == 1  # the oversized call never reached the handler


async def test_failing_handler_yields_a_500_reply_and_the_relay_keeps_serving(
    relay: Relay,
) -> None:
    async with client_of(relay) as client:
        failed = await client.send(envelope(method="Boom"), timeout=50 * UNIT)
        assert (failed.origin, failed.http_status) == (ORIGIN_GATEWAY, 500)
        assert "internal error" in failed.detail
        assert (await client.send(envelope(b"ok"), timeout=50 * UNIT)).body == b"echo:ok"


async def test_deadline_of_one_call_leaves_the_others_alone(relay: Relay) -> None:
    async with client_of(relay) as client:
        slow = asyncio.ensure_future(
            client.send(envelope(str(30 * UNIT).encode(), "Sleep"), timeout=3 * UNIT)
        )
        fast = await client.send(envelope(b"fast"), timeout=50 * UNIT)
        assert fast.body == b"echo:fast"
        with pytest.raises(DeadlineError):
            await slow
        long = await client.send(envelope(str(5 * UNIT).encode(), "Sleep"), timeout=50 * UNIT)
        assert long.http_status == 200


async def test_client_recovers_after_a_relay_restart(relay: Relay) -> None:
    async with client_of(relay) as client:
        assert (await client.send(envelope(b"1"), timeout=50 * UNIT)).body == b"echo:1"
        await relay.restart()
        failures = 0
        for _ in range(2):
            try:
                reply = await client.send(envelope(b"2"), timeout=50 * UNIT)
                break
            except ConnectError:
                failures += 1
        assert failures <= 1
        assert reply.body == b"echo:2"


async def test_unreachable_relay_is_a_connect_error(federation: FederationKits) -> None:
    for scheme in SCHEMES:
        echo = Echo()
        server = await serve(scheme, federation, echo)
        port = server.port
        await server.aclose()
        client = connect(f"{scheme}://localhost:{port}", tls=federation.sites["site-1"])
        try:
            with pytest.raises(ConnectError):
                await client.send(envelope(), timeout=50 * UNIT)
        finally:
            await client.aclose()


# --- tcps only: heartbeats and idle connections ------------------------------


async def test_tcps_heartbeats_keep_a_long_call_alive(federation: FederationKits) -> None:
    async with running("tcps", federation) as relay:
        client = TcpTransportClient(
            parse_url(relay.url),
            federation.sites["site-1"],
            Limits(),
            heartbeat_interval=UNIT,
            heartbeat_timeout=5 * UNIT,
        )
        try:
            reply = await client.send(envelope(str(10 * UNIT).encode(), "Sleep"), timeout=10)
        finally:
            await client.aclose()
    assert reply.http_status == 200


class SilentRelay:
    """A TLS server that speaks tcps until told to fall silent (a dead path that stays open)."""

    def __init__(self, federation: FederationKits) -> None:
        self.context = server_ssl_context(federation.relay)
        self.silent = False
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> SilentRelay:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        protocol = FrameProtocol(Side.SERVER, max_payload=None)
        while data := await reader.read(65536):
            protocol.receive_data(data)
            for event in protocol.events():
                if self.silent or not isinstance(event, Frame):
                    continue
                if event.type is FrameType.PING:
                    writer.write(protocol.frame(FrameType.PONG, event.request_id, event.payload))
                elif event.type is FrameType.REQUEST:
                    request = Envelope.FromString(bytes(event.payload))
                    reply = Reply(message_id=request.message_id, http_status=200)
                    writer.write(
                        protocol.frame(FrameType.REPLY, event.request_id, reply.SerializeToString())
                    )


async def test_tcps_dead_connection_is_detected_and_the_next_send_reconnects(
    federation: FederationKits,
) -> None:
    async with SilentRelay(federation) as relay:
        client = TcpTransportClient(
            parse_url(f"tcps://localhost:{relay.port}"),
            federation.sites["site-1"],
            Limits(),
            heartbeat_interval=UNIT,
            heartbeat_timeout=2 * UNIT,
        )
        try:
            assert (await client.send(envelope(), timeout=10)).http_status == 200
            relay.silent = True
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(ConnectError, match="presumed dead"):
                await client.send(envelope(), timeout=100 * UNIT)
            assert loop.time() - started < 50 * UNIT  # the heartbeat, not the call's deadline
            relay.silent = False
            assert (await client.send(envelope(), timeout=10)).http_status == 200
            assert len(relay.writers) == 2
        finally:
            await client.aclose()


async def test_tcps_relay_closes_idle_connections(federation: FederationKits) -> None:
    echo = Echo()
    server = TcpTransportServer(
        parse_url("tcps://127.0.0.1:0"), federation.relay, Limits(), echo, idle_timeout=2 * UNIT
    )
    await server.start()
    client = TcpTransportClient(
        parse_url(f"tcps://localhost:{server.port}"),
        federation.sites["site-1"],
        Limits(),
        heartbeat_interval=None,
    )
    try:
        assert (await client.send(envelope(b"1"), timeout=10)).body == b"echo:1"
        await asyncio.sleep(5 * UNIT)  # closed by the relay meanwhile; the client notices
        assert (await client.send(envelope(b"2"), timeout=10)).body == b"echo:2"
    finally:
        await client.aclose()
        await server.aclose()


# --- garbage on the live servers ---------------------------------------------


async def _exchange(
    port: int,
    data: bytes,
    context: ssl.SSLContext | None,
    wait: float,
    enough: Callable[[bytes], bool] = lambda received: False,
) -> tuple[bytes, bool]:
    """Send ``data`` (over TLS when ``context``); return what came back within
    ``wait`` seconds (or once it is ``enough``) and whether the server closed."""
    try:
        reader, writer = await asyncio.open_connection(
            "localhost", port, ssl=context, ssl_handshake_timeout=5 if context else None
        )
    except OSError:  # ssl.SSLError included: refused in the handshake
        return b"", True
    received = b""
    closed = False
    try:
        writer.write(data)
        loop = asyncio.get_running_loop()
        end = loop.time() + wait
        while not enough(received) and (left := end - loop.time()) > 0:
            chunk = await asyncio.wait_for(reader.read(65536), left)
            if not chunk:
                closed = True
                break
            received += chunk
    except asyncio.TimeoutError:
        pass
    except OSError:
        closed = True
    finally:
        writer.transport.abort()
    return received, closed


def _tcps_verdict(junk: bytes) -> FramingError | None:
    """What the relay's own framing core makes of ``junk`` (None: nothing wrong yet)."""
    protocol = FrameProtocol(Side.SERVER, max_payload=frame_limit(Limits()))
    protocol.receive_data(junk)
    errors = [e for e in protocol.events() if isinstance(e, FramingError)]
    return errors[0] if errors else None


junk_bytes = st.one_of(
    st.binary(min_size=1, max_size=300),
    st.builds(lambda tail: b"\xf1" + tail, st.binary(min_size=1, max_size=40)),
    st.sampled_from(
        [
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST " + PATH.encode() + b" HTTP/1.1\r\ncontent-length: 99999999999\r\n\r\n",
            b"\x16\x03\x01\x00\x05hello",
            b"\xf1\x01\x00\x00\x00\x00\x00\x00\x00\x01\xff\xff\xff\xff",
            b"\x00" * 64,
        ]
    ),
)


@dataclass
class Target:
    scheme: str
    relay: Relay
    client: TransportClient
    context: ssl.SSLContext


@pytest.fixture(params=["tcps", "https"])
async def target(
    request: pytest.FixtureRequest, federation: FederationKits
) -> AsyncIterator[Target]:
    """One live server for all examples of a fuzz test: it must survive them all."""
    async with running(request.param, federation) as relay, client_of(relay) as client:
        yield Target(request.param, relay, client, client_ssl_context(federation.sites["site-1"]))


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    database=None,
)
@given(junk=junk_bytes, tls=st.booleans())
@example(junk=b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", tls=True)
@example(junk=b"\x00" * 64, tls=True)
@example(junk=b"\x00" * 64, tls=False)
@example(junk=b"\xf1\x01\x00\x00\x00\x00\x00\x00\x00\x01\xff\xff\xff\xff", tls=True)
async def test_garbage_is_refused_and_the_server_keeps_serving(
    target: Target, junk: bytes, tls: bool
) -> None:
    port = target.relay.server.port
    if not tls:
        # Not a TLS client hello: the handshake fails and the relay hangs up. Less
        # than a record header, the start of a handshake record, or a high first
        # bit (an SSLv2-style record header with a 15-bit length) waits for more.
        undecided = len(junk) < 5 or junk[0] == 0x16 or junk[0] & 0x80 != 0
        _, closed = await _exchange(port, junk, None, (1 if undecided else 10) * UNIT)
        assert closed or undecided, junk
    elif target.scheme == "tcps":
        verdict = _tcps_verdict(junk)  # None: a valid frame or prefix, nothing to refuse yet
        received, closed = await _exchange(
            port, junk, target.context, (10 if verdict else 1) * UNIT
        )
        if verdict is not None:
            got = FrameProtocol(Side.CLIENT, max_payload=None)
            got.receive_data(received)
            errors = [e for e in got.events() if isinstance(e, PeerError)]
            assert errors, f"no error frame for {junk!r}: {received!r}"
            assert (errors[-1].code, errors[-1].request_id) == (verdict.code, verdict.request_id)
            assert errors[-1].message == verdict.message
            assert closed, "the relay closes a connection after an error frame"
    else:
        received, _ = await _exchange(
            port, junk, target.context, 10 * UNIT, lambda received: b"\r\n\r\n" in received
        )
        if received:  # else a valid prefix of a request: nothing to refuse yet
            status_line = received.split(b"\r\n", 1)[0]
            assert status_line.startswith((b"HTTP/1.1 4", b"HTTP/1.0 4")), received[:200]
    reply = await target.client.send(envelope(b"still"), timeout=50 * UNIT)
    assert reply.body == b"echo:still"
