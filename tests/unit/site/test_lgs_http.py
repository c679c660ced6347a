"""The HTTP LGS on real sockets (port 0), on both event loops: aiohttp's client for
ordinary calls, raw streams for what a client library would not send."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from gateway.core.config import Limits
from gateway.core.envelope import upstream_reply
from gateway.flower.node_auth import write_loopback_tls
from gateway.proto.envelope_pb2 import DIALECT_HTTP, Dialect, Header, Reply
from gateway.site.lgs import REFUSAL_DETAIL
from gateway.site.lgs_http import (
    CONTINUE,
    HttpLGS,
    error_response,
    reply_response,
    request_path,
    route,
)

UNIT = 5.0  # seconds: the bound of every wait here
LIMIT = 8 * 1024 * 1024
MIB = 1024 * 1024


class Upstream:
    """The forward the LGS calls: records each call and echoes its body."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Dialect, list[tuple[str, bytes]], bytes]] = []
        self.delays: list[float] = []
        self.finished = 0
        self.reply_headers: list[Header] = []
        self.status = 200

    async def forward(
        self, method: str, dialect: Dialect, headers: list[tuple[str, bytes]], body: bytes
    ) -> Reply:
        self.calls.append((method, dialect, headers, body))
        if self.delays:
            await asyncio.sleep(self.delays.pop(0))
        self.finished += 1
        reply = upstream_reply("m", http_status=self.status, grpc_code=0, body=b"echo:" + body)
        reply.headers.extend(self.reply_headers)
        return reply


@pytest.fixture
def upstream() -> Upstream:
    return Upstream()


@pytest.fixture
async def lgs(upstream: Upstream) -> AsyncIterator[HttpLGS]:
    server = HttpLGS(upstream.forward, Limits(max_frame_bytes=LIMIT))
    await server.start()
    yield server
    await server.aclose()
    assert not server._tasks


def _post(path: str, body: bytes, *extra: str) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: x", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _connect(lgs: HttpLGS) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(lgs.host, lgs.port, limit=16 * MIB)


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response: status, headers (names lower-cased, each once), body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), UNIT)
    status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        assert name.lower() not in headers, f"{name} twice"
        headers[name.lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), UNIT)
    return int(status_line.split()[1]), headers, body


async def _closed(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(), UNIT) == b""


async def _eventually(condition: Callable[[], bool]) -> None:
    for _ in range(int(UNIT / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not within the unit")


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    await writer.wait_closed()


# --- the pure part ----------------------------------------------------------------------


def test_only_a_post_to_a_fleet_path_is_routed() -> None:
    assert route("POST", "/v1/fleet/pull-messages") == "PullMessages"
    assert route("GET", "/v1/fleet/pull-messages") is None
    assert route("POST", "/health") is None
    assert request_path(b"/v1/fleet/pull%2Dmessages?x=1#f") == "/v1/fleet/pull-messages"


def test_a_reply_becomes_a_response_with_its_headers_and_one_length() -> None:
    reply = Reply(http_status=200, body=b"abc")
    reply.headers.extend(
        [Header(name="x-a", value=b"1"), Header(name="content-length", value=b"9")]
    )
    head, body = reply_response(reply, close=False)
    assert body == b"abc"
    assert head == (
        b"HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-type: application/protobuf\r\n"
        b"content-length: 3\r\n\r\n"
    )
    head, body = reply_response(Reply(http_status=503, detail="gone"), close=True, http10=True)
    assert json.loads(body) == {"code": 503, "detail": "gone"}
    assert head == (
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
    )
    head, _ = reply_response(Reply(http_status=500, body=b"x"), close=False, http10=True)
    assert b"content-type: application/octet-stream\r\n" in head
    assert head.endswith(b"connection: keep-alive\r\n\r\n")


def test_a_reply_header_with_a_line_break_is_dropped() -> None:
    reply = Reply(http_status=200, body=b"")
    reply.headers.extend([Header(name="x-a", value=b"1\r\nx-b: 2"), Header(name="x-c", value=b"3")])
    head, _ = reply_response(reply, close=False)
    assert head.split(b"\r\n")[1:3] == [b"x-c: 3", b"content-type: application/protobuf"]


def test_an_error_response_carries_the_json_body() -> None:
    assert error_response(404, "no", close=False) == (
        b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 29\r\n\r\n"
        b'{"code": 404, "detail": "no"}'
    )


# --- on a socket ------------------------------------------------------------------------


async def test_a_fleet_call_is_forwarded_with_its_headers_and_answered(
    lgs: HttpLGS, upstream: Upstream
) -> None:
    upstream.reply_headers = [Header(name="x-superlink", value=b"yes")]
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://{lgs.address}/v1/fleet/pull-messages?q=1",
            data=b"\x08\x01",
            headers={"Flwr-Signature": "  c2ln  ", "Content-Type": "application/protobuf"},
        ) as response,
    ):
        assert (response.status, await response.read()) == (200, b"echo:\x08\x01")
        assert response.headers["x-superlink"] == "yes"
        assert response.headers["content-type"] == "application/protobuf"
        assert response.headers["content-length"] == "7"
    [(method, dialect, headers, body)] = upstream.calls
    assert (method, dialect, body) == ("PullMessages", DIALECT_HTTP, b"\x08\x01")
    assert ("flwr-signature", b"c2ln") in headers
    assert ("content-type", b"application/protobuf") in headers
    assert not {"host", "content-length"} & {name for name, _ in headers}


@pytest.mark.parametrize(
    ("request_line", "shown"),
    [
        ("GET /health HTTP/1.1", "GET /health"),
        ("GET /v1/fleet/pull-messages HTTP/1.1", "GET /v1/fleet/pull-messages"),
        ("POST /v1/control/start-run?x=1 HTTP/1.1", "POST /v1/control/start-run"),
        ("POST /v1/fleet/Pull_Messages HTTP/1.1", "POST /v1/fleet/Pull_Messages"),
    ],
)
async def test_anything_but_a_fleet_call_gets_404_and_the_connection_serves_on(
    lgs: HttpLGS,
    upstream: Upstream,
    request_line: str,
    shown: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    reader, writer = await _connect(lgs)
    writer.write(f"{request_line}\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc".encode())
    status, headers, body = await _response(reader)
    detail = REFUSAL_DETAIL.format(what="POST /v1/fleet/*", request=shown)
    assert (status, json.loads(body)) == (404, {"code": 404, "detail": detail})
    assert headers["content-type"] == "application/json"
    assert [r.getMessage() for r in caplog.records] == ["refused non-Fleet request"]
    writer.write(_post("/v1/fleet/push-messages", b"x"))
    assert (await _response(reader))[::2] == (200, b"echo:x")
    assert [call[0] for call in upstream.calls] == ["PushMessages"]
    await _close(writer)


async def test_one_connection_carries_fifty_calls_in_turn(lgs: HttpLGS, upstream: Upstream) -> None:
    reader, writer = await _connect(lgs)
    for i in range(50):
        writer.write(_post("/v1/fleet/send-node-heartbeat", b"%d" % i))
        status, headers, body = await _response(reader)
        assert (status, body) == (200, b"echo:%d" % i)
        assert "connection" not in headers
    assert len(upstream.calls) == 50
    assert len(lgs._connections) == 1
    await _close(writer)


async def test_aiohttps_pool_reuses_one_connection(lgs: HttpLGS) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        for i in range(50):
            url = f"http://{lgs.address}/v1/fleet/pull-messages"
            async with session.post(url, data=b"%d" % i) as response:
                assert (response.status, await response.read()) == (200, b"echo:%d" % i)
        assert len(lgs._connections) == 1


async def test_pipelined_requests_are_answered_in_order(lgs: HttpLGS, upstream: Upstream) -> None:
    upstream.delays = [0.2, 0.0, 0.1]
    reader, writer = await _connect(lgs)
    writer.write(b"".join(_post("/v1/fleet/pull-messages", b"%d" % i) for i in range(3)))
    for i in range(3):
        assert (await _response(reader))[::2] == (200, b"echo:%d" % i)
    await _close(writer)


async def test_connection_close_and_http10_close_after_the_answer(lgs: HttpLGS) -> None:
    for request in (
        _post("/v1/fleet/pull-messages", b"a", "Connection: close"),
        b"POST /v1/fleet/pull-messages HTTP/1.0\r\nContent-Length: 1\r\n\r\na",
    ):
        reader, writer = await _connect(lgs)
        writer.write(request)
        status, headers, body = await _response(reader)
        assert (status, headers["connection"], body) == (200, "close", b"echo:a")
        assert await _closed(reader)
        await _close(writer)


async def test_an_http10_client_that_asks_for_keep_alive_keeps_its_connection(
    lgs: HttpLGS,
) -> None:
    reader, writer = await _connect(lgs)
    for body in (b"a", b"b"):
        writer.write(
            b"POST /v1/fleet/pull-messages HTTP/1.0\r\nConnection: keep-alive\r\n"
            b"Content-Length: 1\r\n\r\n" + body
        )
        status, headers, got = await _response(reader)
        assert (status, headers["connection"], got) == (200, "keep-alive", b"echo:" + body)
    await _close(writer)


async def test_a_chunked_body_is_joined_and_its_trailer_dropped(
    lgs: HttpLGS, upstream: Upstream
) -> None:
    reader, writer = await _connect(lgs)
    writer.write(
        b"POST /v1/fleet/push-object HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n"
    )
    await asyncio.sleep(0.05)
    writer.write(b"2\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n")
    assert (await _response(reader))[::2] == (200, b"echo:abcde")
    [(_, _, headers, _)] = upstream.calls
    assert [name for name, _ in headers] == []
    await _close(writer)


async def test_expect_100_continue_is_answered_before_the_body(lgs: HttpLGS) -> None:
    reader, writer = await _connect(lgs)
    writer.write(
        b"POST /v1/fleet/push-object HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    assert await asyncio.wait_for(reader.readexactly(len(CONTINUE)), UNIT) == CONTINUE
    writer.write(b"ok")
    assert (await _response(reader))[::2] == (200, b"echo:ok")
    await _close(writer)


async def test_a_six_mib_body_goes_both_ways_intact(lgs: HttpLGS) -> None:
    payload = bytes(range(256)) * (6 * MIB // 256)
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://{lgs.address}/v1/fleet/push-object", data=io.BytesIO(payload)) as r,
    ):
        assert (r.status, r.headers["content-length"]) == (200, str(len(payload) + 5))
        assert await r.read() == b"echo:" + payload


async def test_pipelined_large_answers_to_a_slow_reader_arrive_whole(lgs: HttpLGS) -> None:
    payload = b"z" * (6 * MIB)
    reader, writer = await _connect(lgs)
    writer.write(_post("/v1/fleet/pull-object", payload) * 2)
    await asyncio.sleep(0.3)  # the answers back up: the LGS waits for the transport
    for _ in range(2):
        assert (await _response(reader))[::2] == (200, b"echo:" + payload)
    await _close(writer)


async def test_a_body_over_the_limit_by_its_length_gets_413_unread(
    lgs: HttpLGS, upstream: Upstream
) -> None:
    reader, writer = await _connect(lgs)
    writer.write(b"POST /v1/fleet/push-object HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (LIMIT + 1))
    status, headers, body = await _response(reader)
    detail = f"request body over the gateway's frame limit: {LIMIT + 1} bytes > {LIMIT} bytes"
    assert (status, json.loads(body)) == (413, {"code": 413, "detail": detail})
    assert headers["connection"] == "close"
    assert await _closed(reader)
    assert upstream.calls == []
    await _close(writer)


async def test_a_chunked_body_over_the_limit_gets_413_when_it_crosses_it(
    lgs: HttpLGS, upstream: Upstream
) -> None:
    reader, writer = await _connect(lgs)
    writer.write(
        b"POST /v1/fleet/push-object HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n" % MIB
        + b"y" * MIB
        + b"\r\n"
    )
    for _ in range(LIMIT // MIB):  # the LGS drops what follows, then closes
        writer.write(b"%x\r\n" % MIB + b"y" * MIB + b"\r\n")
        await writer.drain()
    status, _, body = await _response(reader)
    assert status == 413
    assert json.loads(body)["detail"] == (
        f"request body over the gateway's frame limit: a chunked body > {LIMIT} bytes"
    )
    assert upstream.calls == []
    await _close(writer)


@pytest.mark.parametrize(
    "junk",
    [
        b"\x00" * 64,
        b"POST /v1/fleet/pull-messages HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        b"POST /v1/fleet/pull-messages HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"POST /v1/fleet/pull-messages HTTP/1.1\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n",
        b"\x16\x03\x01\x00\x05hello",
    ],
)
async def test_malformed_input_gets_400_and_a_closed_connection(
    lgs: HttpLGS, upstream: Upstream, junk: bytes
) -> None:
    reader, writer = await _connect(lgs)
    writer.write(junk)
    status, headers, body = await _response(reader)
    assert (status, headers["connection"], json.loads(body)["code"]) == (400, "close", 400)
    assert await _closed(reader)
    await _close(writer)
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://{lgs.address}/v1/fleet/pull-messages", data=b"x") as response,
    ):
        assert response.status == 200
    assert len(upstream.calls) == 1


async def test_a_head_over_its_bound_gets_431(lgs: HttpLGS) -> None:
    reader, writer = await _connect(lgs)
    writer.write(b"POST /v1/fleet/pull-messages HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
    assert (await _response(reader))[0] == 431
    assert await _closed(reader)
    await _close(writer)


async def test_a_client_gone_mid_body_leaves_nothing_behind(
    lgs: HttpLGS, upstream: Upstream
) -> None:
    _, writer = await _connect(lgs)
    writer.write(b"POST /v1/fleet/push-object HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc")
    await asyncio.sleep(0.05)
    await _close(writer)
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://{lgs.address}/v1/fleet/pull-messages", data=b"x") as response,
    ):
        assert response.status == 200
    assert [call[3] for call in upstream.calls] == [b"x"]
    await _eventually(lambda: not lgs._connections and not lgs._tasks)


async def test_a_client_gone_while_its_call_is_forwarded_does_not_cancel_the_call(
    lgs: HttpLGS, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    upstream.delays = [0.3]
    _, writer = await _connect(lgs)
    writer.write(_post("/v1/fleet/push-messages", b"m"))
    await asyncio.sleep(0.1)
    await _close(writer)
    await asyncio.wait_for(asyncio.gather(*lgs._tasks), UNIT)
    assert upstream.finished == 1  # the answer went nowhere, the call was not torn
    assert not lgs._connections
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_aclose_lets_a_call_in_flight_answer_then_closes(
    upstream: Upstream,
) -> None:
    server = HttpLGS(upstream.forward)
    await server.start()
    upstream.delays = [0.3]
    reader, writer = await _connect(server)
    idle_reader, idle_writer = await _connect(server)
    writer.write(_post("/v1/fleet/push-messages", b"m"))
    await asyncio.sleep(0.1)
    await asyncio.wait_for(server.aclose(), UNIT)
    status, headers, body = await _response(reader)
    assert (status, headers["connection"], body) == (200, "close", b"echo:m")
    assert await _closed(reader)
    assert await _closed(idle_reader)
    with pytest.raises(OSError):
        await asyncio.open_connection(server.host, server.port)
    await _close(writer)
    await _close(idle_writer)


async def test_the_lgs_serves_tls_on_one_kept_connection(
    tmp_path: Path, upstream: Upstream
) -> None:
    tls = write_loopback_tls(tmp_path / "tls", name="lgs")
    server = HttpLGS(upstream.forward, tls=tls)
    await server.start()
    try:
        context = ssl.create_default_context(cafile=str(tls.ca_cert))
        connector = aiohttp.TCPConnector(limit=1, ssl=context)
        async with aiohttp.ClientSession(connector=connector) as session:
            for i in range(5):
                url = f"https://{server.address}/v1/fleet/pull-messages"
                async with session.post(url, data=b"%d" % i) as response:
                    assert (response.status, await response.read()) == (200, b"echo:%d" % i)
        assert len(upstream.calls) == 5
    finally:
        await server.aclose()
