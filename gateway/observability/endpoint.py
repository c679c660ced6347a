"""The metrics endpoint of a long-running process: ``/metrics``, ``/healthz``, ``/readyz``.

One small HTTP server per process, on loopback by default, for Prometheus and for
container orchestrators: ``/healthz`` answers 200 while the process serves at all;
``/readyz`` answers 200 only when the process can do its work (the relay listens
and its job store is open; a site is connected to its relay), else 503 with the
reason, so a load balancer or Kubernetes stops sending it work without killing it.

The scrape runs on the event loop: the state sources read asyncio-owned objects,
which another thread must not iterate while the loop changes them.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..core.exceptions import ConfigError
from . import metrics

log = logging.getLogger(__name__)

OFF = "off"
RELAY_DEFAULT = "127.0.0.1:9464"
"""The relay's default endpoint (one relay per host)."""
SITE_DEFAULT = "127.0.0.1:9465"
"""A site agent's default endpoint; a second agent on the host takes a free port."""

_BACKLOG = 128
Readiness = Callable[[], str | None]
"""Why the process is not ready, or ``None`` when it is."""


@dataclass(frozen=True)
class MetricsListen:
    """Where to serve metrics: ``host``/``port`` (0: any free port); ``fallback`` lets a
    busy default port give way to a free one (an explicit port must be free)."""

    host: str
    port: int
    fallback: bool = False


def parse_listen(text: str, *, default: bool = False) -> MetricsListen | None:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) or ``off`` (``None``)."""
    text = text.strip()
    if text.lower() == OFF:
        return None
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(
            f"metrics listen address {text!r} is not HOST:PORT (e.g. 127.0.0.1:9464) or 'off'"
        )
    return MetricsListen(host, int(port_text), fallback=default)


def _bind(listen: MetricsListen) -> socket.socket:
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    for port in (listen.port, 0) if listen.fallback and listen.port else (listen.port,):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((listen.host, port))
            # Listen here: with SO_REUSEADDR two processes may bind one port that
            # neither listens on yet, and the second learns it only at listen().
            sock.listen(_BACKLOG)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE and port:
                if listen.fallback:
                    log.info("default metrics port in use; taking a free one", extra={"port": port})
                    continue
                raise ConfigError(
                    f"metrics port {listen.host}:{port} is in use: choose another "
                    "--metrics-listen HOST:PORT, 0 for any free port, or 'off'"
                ) from exc
            raise ConfigError(
                f"cannot serve metrics on {listen.host}:{port}: {exc.strerror or exc}"
            ) from exc
        return sock
    raise AssertionError("unreachable: port 0 always binds")


class MetricsEndpoint:
    """Serves the gateway's registry and the health checks until closed."""

    def __init__(self, listen: MetricsListen, ready: Readiness) -> None:
        self._listen = listen
        self._ready = ready
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        host = f"[{self._listen.host}]" if ":" in self._listen.host else self._listen.host
        return f"http://{host}:{self.port}/metrics"

    async def start(self) -> None:
        """Bind and serve; recording starts with it (:func:`metrics.enable`)."""
        sock = _bind(self._listen)
        self.port = sock.getsockname()[1]
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        metrics.enable()

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(metrics.REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        reason = self._ready()
        if reason is None:
            return web.Response(text="ready\n")
        return web.Response(status=503, text=f"not ready: {reason}\n")

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
