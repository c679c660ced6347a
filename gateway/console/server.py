"""Start and stop the console's web server on a socket bound before the app is made
(with port 0 the app must know the port it got: its ``Host`` check names it)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from aiohttp import web

from ..control.admin import AdminClient
from ..core.exceptions import ConfigError
from ..core.identity import Peer
from . import access
from .app import ConsoleSettings, create_app
from .relay_link import RelayLink

SHUTDOWN_SECONDS = 2.0
"""Open live streams are cut after this when the console stops."""


def console_url(host: str, port: int, token: str) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/?{access.TOKEN_QUERY}={token}"


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"the console cannot listen on {host}:{port} ({exc.strerror}); "
            "choose another --listen address or port (port 0: any free one)"
        ) from exc
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def serve_console(
    *,
    client: AdminClient,
    relay_url: str,
    viewer: Peer,
    host: str,
    port: int,
    allow_network: bool,
    stop: asyncio.Event,
    on_ready: Callable[[str], None],
) -> None:
    """Serve until ``stop`` is set; ``on_ready`` gets the URL (with its token) once
    the console accepts connections. The admin client is closed at the end."""
    access.check_listen_host(host, allow_network=allow_network)
    link = RelayLink(client, relay_url)
    sock = bind(host, port)
    settings = ConsoleSettings(
        viewer=viewer,
        token=access.new_token(),
        listen_host=host,
        port=sock.getsockname()[1],
        allow_network=allow_network,
    )
    runner = web.AppRunner(create_app(link, settings), handler_cancellation=True, access_log=None)
    try:
        await runner.setup()
        site = web.SockSite(runner, sock)
        await site.start()
        on_ready(console_url(host, settings.port, settings.token))
        await stop.wait()
    finally:
        await runner.cleanup()
        sock.close()
        await link.aclose()
