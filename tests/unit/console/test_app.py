"""The console's server on a real socket: access rules and an unreachable relay.

The relay here is a port where nothing listens: every answer below comes from the
console itself (the end-to-end test drives it against a real relay).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest

from gateway.console import access
from gateway.console.server import serve_console
from gateway.control.admin import AdminClient
from gateway.core.identity import peer_from_pem
from gateway.flower.process import free_port
from tests.support.pki import FederationKits


@dataclass
class Running:
    base: str
    token: str
    relay_url: str


@pytest.fixture
async def console(federation: FederationKits) -> AsyncIterator[Running]:
    relay_url = f"tcps://127.0.0.1:{free_port()}"
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    task = asyncio.create_task(
        serve_console(
            client=AdminClient(relay_url=relay_url, tls=federation.admin),
            relay_url=relay_url,
            viewer=peer_from_pem(federation.admin.cert.read_bytes()),
            host="127.0.0.1",
            port=0,
            allow_network=False,
            stop=stop,
            on_ready=ready.set_result,
        )
    )
    url = await asyncio.wait_for(ready, 10)
    base, _, token = url.partition("/?token=")
    yield Running(base=base, token=token, relay_url=relay_url)
    stop.set()
    await asyncio.wait_for(task, 10)


async def _get(
    url: str, *, headers: dict[str, str] | None = None, redirects: bool = False
) -> tuple[int, str, aiohttp.ClientResponse]:
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session,
        session.get(url, headers=headers, allow_redirects=redirects) as answer,
    ):
        return answer.status, await answer.text(), answer


async def test_every_path_refuses_a_request_without_the_right_token(console: Running) -> None:
    for path in ("/", "/api/me", "/api/jobs", "/static/console.css", "/api/events"):
        status, text, _ = await _get(console.base + path)
        assert status == 403, path
        assert "token" in text
    status, _, _ = await _get(console.base + "/api/me?token=wrong")
    assert status == 403
    status, _, _ = await _get(console.base + "/api/me", headers={access.TOKEN_HEADER: "wrong"})
    assert status == 403


async def test_the_token_in_the_url_becomes_a_cookie_and_leaves_the_address(
    console: Running,
) -> None:
    status, _, answer = await _get(f"{console.base}/?token={console.token}")
    assert status == 303
    assert answer.headers["Location"] == "/"
    cookie = answer.cookies[access.TOKEN_COOKIE]
    assert cookie.value == console.token
    assert cookie["httponly"]
    assert cookie["samesite"] == "Strict"
    status, text, answer = await _get(
        console.base + "/", headers={"Cookie": f"{access.TOKEN_COOKIE}={console.token}"}
    )
    assert status == 200
    assert f'<meta name="flgate-token" content="{console.token}">' in text
    assert "script-src 'self'" in answer.headers["Content-Security-Policy"]


async def test_a_post_needs_the_token_header_a_cookie_is_not_enough(console: Running) -> None:
    cookie = {"Cookie": f"{access.TOKEN_COOKIE}={console.token}"}
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session,
        session.post(console.base + "/api/jobs/j1/abort", headers=cookie) as answer,
    ):
        assert answer.status == 403
        assert access.TOKEN_HEADER in await answer.text()


async def test_a_foreign_host_name_is_refused_even_with_the_token(console: Running) -> None:
    port = console.base.rpartition(":")[2]
    status, _, _ = await _get(
        console.base + "/api/me",
        headers={access.TOKEN_HEADER: console.token, "Host": f"rebound.example.org:{port}"},
    )
    assert status == 403


async def test_who_the_console_acts_as_is_answered_without_the_relay(console: Running) -> None:
    async with aiohttp.ClientSession() as session:
        headers = {access.TOKEN_HEADER: console.token}
        async with session.get(console.base + "/api/me", headers=headers) as answer:
            assert answer.status == 200
            assert await answer.json() == {
                "name": "admin@example.org",
                "admin_role": "project_admin",
                "relay": console.relay_url,
            }


async def test_an_unreachable_relay_is_a_503_that_says_so_and_the_stream_tells_the_page(
    console: Running,
) -> None:
    headers = {access.TOKEN_HEADER: console.token}
    async with aiohttp.ClientSession() as session:
        async with session.get(console.base + "/api/jobs", headers=headers) as answer:
            assert answer.status == 503
            assert "relay unreachable" in (await answer.json())["error"]
        async with session.get(console.base + "/api/events", headers=headers) as answer:
            assert answer.headers["Content-Type"] == "text/event-stream"
            first = await asyncio.wait_for(answer.content.readuntil(b"\n\n"), 30)
    assert first.startswith(b"event: relay\n")
    assert b'"reachable":false' in first


async def test_a_submission_is_checked_as_the_cli_checks_it(
    console: Running,
) -> None:
    headers = {access.TOKEN_HEADER: console.token}
    async with aiohttp.ClientSession() as session:
        for body, message in [
            ({"path": "/no/such/app"}, "job directory /no/such/app does not exist"),
            ({"path": ""}, "give the path of a Flower app directory"),
            ({"path": "/tmp", "min_sites": "two"}, "min sites must be a whole number"),
        ]:
            async with session.post(console.base + "/api/jobs", json=body, headers=headers) as a:
                assert a.status == 400, body
                assert message in (await a.json())["error"]
        async with session.post(console.base + "/api/jobs", data=b"[", headers=headers) as a:
            assert a.status == 400
