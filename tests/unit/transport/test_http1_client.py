"""The LGC's HTTP/1.1 client against real sockets: reuse, framing, and what each failure means."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from gateway.core.exceptions import (
    AnswerTimeoutError,
    FrameTooLargeError,
    MaybeDeliveredError,
    NotDeliveredError,
    ProtocolError,
)
from gateway.transport.http1_client import Http1Client, request_head


def test_the_head_has_its_own_host_and_length_and_drops_the_callers() -> None:
    head = request_head(
        "POST",
        "/v1/fleet/pull-messages",
        "127.0.0.1:9",
        [("host", b"evil"), ("content-length", b"1"), ("flwr-timestamp", b"123")],
        7,
    )
    assert head == (
        b"POST /v1/fleet/pull-messages HTTP/1.1\r\nhost: 127.0.0.1:9\r\n"
        b"flwr-timestamp: 123\r\ncontent-length: 7\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("x", b"a\r\nPOST /v1/control/start-run HTTP/1.1"),
        ("x", b"a\nb"),
        ("x", b"\0"),
        ("a b", b""),
    ],
)
def test_a_header_that_could_smuggle_a_request_is_refused(name: str, value: bytes) -> None:
    with pytest.raises(ProtocolError):
        request_head("POST", "/", "h:1", [(name, value)], 0)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def _serve(handler: Handler) -> AsyncIterator[tuple[int, list[object]]]:
    peers: list[object] = []

    async def counted(request: web.Request) -> web.StreamResponse:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        return await handler(request)

    app = web.Application(client_max_size=16 * 2**20)
    app.router.add_post("/{tail:.*}", counted)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield port, peers
    finally:
        await runner.cleanup()


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.Response(body=body, headers={"x-seen": request.headers.get("flwr-timestamp", "")})


async def test_calls_reuse_one_connection_and_carry_bodies_and_headers_both_ways() -> None:
    async with _serve(_echo) as (port, peers):
        client = Http1Client("127.0.0.1", port, ssl_context=None)
        big = bytes(range(256)) * (6 * 4096)  # 6 MiB
        for body in (b"", b"x", big, b"y" * 1000):
            response = await client.post(
                "/v1/fleet/a", [("flwr-timestamp", b"42")], body, timeout=5
            )
            assert response.status == 200
            assert response.body == body
            assert ("x-seen", b"42") in response.headers
        assert len(peers) == 4 and len(set(peers)) == 1
        client.close()


async def test_calls_in_flight_at_once_each_get_their_own_answer() -> None:
    async def slow_echo(request: web.Request) -> web.Response:
        await asyncio.sleep(0.05)
        return await _echo(request)

    async with _serve(slow_echo) as (port, peers):
        client = Http1Client("127.0.0.1", port, ssl_context=None)
        bodies = [str(i).encode() for i in range(20)]
        answers = await asyncio.gather(*(client.post("/", [], body, timeout=5) for body in bodies))
        assert [a.body for a in answers] == bodies
        assert len(set(peers)) == 20  # one connection per call in flight
        client.close()


async def test_a_connection_the_server_closes_is_not_reused() -> None:
    async def closing(request: web.Request) -> web.Response:
        await request.read()
        response = web.Response(body=b"ok")
        response.force_close()
        return response

    async with _serve(closing) as (port, peers):
        client = Http1Client("127.0.0.1", port, ssl_context=None)
        for _ in range(3):
            assert (await client.post("/", [], b"", timeout=5)).body == b"ok"
        assert len(set(peers)) == 3
        client.close()


async def test_an_idle_connection_is_not_kept_past_its_time() -> None:
    async with _serve(_echo) as (port, peers):
        client = Http1Client("127.0.0.1", port, ssl_context=None, idle_seconds=0.05)
        await client.post("/", [], b"", timeout=5)
        await asyncio.sleep(0.1)
        await client.post("/", [], b"", timeout=5)
        assert len(set(peers)) == 2
        client.close()


async def test_nobody_listening_is_not_delivered() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = Http1Client("127.0.0.1", port, ssl_context=None)
    with pytest.raises(NotDeliveredError, match="cannot connect"):
        await client.post("/", [], b"", timeout=5)


@contextlib.asynccontextmanager
async def _raw_server(answer: bytes | None) -> AsyncIterator[int]:
    """A server that reads a request's head and writes ``answer`` (None: nothing, until the
    client hangs up), then closes; on exit it has closed every connection."""
    handled: list[asyncio.Event] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        done = asyncio.Event()
        handled.append(done)
        await reader.readuntil(b"\r\n\r\n")
        if answer is None:
            await reader.read()  # until the client closes
        else:
            writer.write(answer)
            await writer.drain()
        writer.close()
        await writer.wait_closed()
        done.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]
        for done in handled:
            await asyncio.wait_for(done.wait(), 5)


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (b"", "closed before the answer"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", "closed before the answer"),
        (b"NOT HTTP AT ALL\r\n\r\n", "malformed answer"),
    ],
)
async def test_a_dropped_or_malformed_answer_may_have_been_delivered(
    answer: bytes, why: str
) -> None:
    async with _raw_server(answer) as port:
        client = Http1Client("127.0.0.1", port, ssl_context=None)
        with pytest.raises(MaybeDeliveredError, match=why):
            await client.post("/", [], b"x", timeout=5)
        client.close()


async def test_no_answer_in_time_may_have_been_delivered_and_drops_the_connection() -> None:
    async with _raw_server(None) as port:
        client = Http1Client("127.0.0.1", port, ssl_context=None)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(AnswerTimeoutError, match="in time"):
            await client.post("/", [], b"x", timeout=0.2)
        assert 0.2 <= loop.time() - started < 2
        assert not client._idle


async def test_calls_over_the_connection_cap_wait_for_a_free_connection() -> None:
    in_flight = most = 0

    async def slow_echo(request: web.Request) -> web.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        return await _echo(request)

    async with _serve(slow_echo) as (port, peers):
        client = Http1Client("127.0.0.1", port, ssl_context=None, max_connections=3)
        bodies = [str(i).encode() for i in range(12)]
        answers = await asyncio.gather(*(client.post("/", [], b, timeout=5) for b in bodies))
        assert [a.body for a in answers] == bodies
        assert most == 3 and len(set(peers)) == 3
        client.close()


async def test_a_call_that_finds_no_free_connection_in_time_was_not_delivered() -> None:
    async def stuck(request: web.Request) -> web.Response:
        await asyncio.sleep(0.5)
        return web.Response(body=b"late")

    async with _serve(stuck) as (port, _):
        client = Http1Client("127.0.0.1", port, ssl_context=None, max_connections=1)
        first = asyncio.create_task(client.post("/", [], b"", timeout=5))
        await asyncio.sleep(0.05)
        with pytest.raises(NotDeliveredError, match="came free"):
            await client.post("/", [], b"", timeout=0.1)
        assert (await first).body == b"late"
        client.close()


@pytest.mark.parametrize("chunked", [False, True])
async def test_an_answer_over_the_limit_is_refused_unread(chunked: bool) -> None:
    async def big(request: web.Request) -> web.StreamResponse:
        if not chunked:
            return web.Response(body=b"x" * 2000)
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(4):
            await response.write(b"y" * 500)
        await response.write_eof()
        return response

    async with _serve(big) as (port, _):
        client = Http1Client("127.0.0.1", port, ssl_context=None, max_body_bytes=1999)
        with pytest.raises(FrameTooLargeError, match="exceeds the limit of 1999 bytes"):
            await client.post("/", [], b"", timeout=5)
        roomy = Http1Client("127.0.0.1", port, ssl_context=None, max_body_bytes=2000)
        assert len((await roomy.post("/", [], b"", timeout=5)).body) == 2000
        client.close()
        roomy.close()
