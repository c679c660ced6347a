"""The console's web server: the page, its JSON API and its live streams (aiohttp).

The browser talks only to this server; this server talks to the relay with the
admin's kit, over the relay's one port, like ``flgate job`` does (``kubectl proxy``
in spirit). So the relay gets no new way in, and authorizes every call by the
admin's certificate. The routes and their JSON are listed in ``docs/CONSOLE.md``.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import html
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from ..core.identity import Peer
from ..proto.control_pb2 import JobInfo
from . import access, views
from .events import KEEPALIVE, EventStream
from .relay_link import Refused, RelayLink

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
POLL_SECONDS = 1.0
"""How often a live page's stream asks the relay for news."""
LOG_WAIT_SECONDS = 20.0
"""A log stream's long poll at the relay (it answers at once when bytes arrive)."""
RETRY_SECONDS = (1.0, 2.0, 5.0)
"""Waits between attempts while the relay is unreachable (the last one repeats)."""

_TOKEN_META = re.compile(rb'<meta name="flgate-token" content="[^"]*"\s*/?>')
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_FORBIDDEN = (
    "403: this console needs its token. Open the URL that `flgate console` printed "
    "(it carries ?token=...)."
)


@dataclass(frozen=True)
class ConsoleSettings:
    viewer: Peer
    """The admin the console acts as (from its kit's certificate)."""
    token: str
    listen_host: str
    port: int
    """The bound port (the ``Host`` check needs it)."""
    allow_network: bool = False


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(link: RelayLink, settings: ConsoleSettings) -> web.Application:
    console = _Console(link, settings)
    app = web.Application(middlewares=[console.guard], client_max_size=1 << 20)
    app.router.add_get("/", console.index)
    app.router.add_static("/static", STATIC, follow_symlinks=False)
    api = [
        ("GET", "/api/me", console.me),
        ("GET", "/api/federation", console.federation),
        ("GET", "/api/jobs", console.jobs),
        ("POST", "/api/jobs", console.submit),
        ("GET", "/api/jobs/{job_id}", console.job),
        ("GET", "/api/jobs/{job_id}/metrics", console.metrics),
        ("GET", "/api/jobs/{job_id}/logs", console.logs),
        ("POST", "/api/jobs/{job_id}/abort", console.abort),
        ("GET", "/api/jobs/{job_id}/download", console.download),
        ("GET", "/api/events", console.overview_events),
        ("GET", "/api/jobs/{job_id}/events", console.job_events),
        ("GET", "/api/jobs/{job_id}/logs/stream", console.log_events),
    ]
    for method, path, handler in api:
        app.router.add_route(method, path, handler)
    return app


class _Console:
    def __init__(self, link: RelayLink, settings: ConsoleSettings) -> None:
        self._link = link
        self._settings = settings

    # -- access ---------------------------------------------------------------------

    @web.middleware
    async def guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Host and token checks before anything, security headers on every answer."""
        s = self._settings
        if not access.host_ok(
            request.headers.get("Host"), s.listen_host, s.port, allow_network=s.allow_network
        ):
            return _text(403, "403: this console answers only to its own address")
        given = request.query.get(access.TOKEN_QUERY)
        if given is not None:
            if not access.token_ok(given, s.token):
                return _text(403, _FORBIDDEN)
            # Trade the token in the URL for a cookie, and drop it from the address bar.
            query = {k: v for k, v in request.query.items() if k != access.TOKEN_QUERY}
            answer = web.HTTPSeeOther(request.rel_url.with_query(query))
            answer.set_cookie(
                access.TOKEN_COOKIE, s.token, httponly=True, samesite="Strict", path="/"
            )
            raise answer
        header = request.headers.get(access.TOKEN_HEADER)
        cookie = request.cookies.get(access.TOKEN_COOKIE)
        if request.method != "GET" and not access.token_ok(header, s.token):
            return _text(403, _FORBIDDEN + " A POST must send it in " + access.TOKEN_HEADER)
        if not (access.token_ok(header, s.token) or access.token_ok(cookie, s.token)):
            return _text(403, _FORBIDDEN)
        try:
            response = await handler(request)
        except Refused as refused:
            response = _error(refused.status, refused.reason)
        if not response.prepared:
            response.headers.update(_SECURITY_HEADERS)
        return response

    # -- page and one-shot calls -----------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        page = (STATIC / "index.html").read_bytes()
        meta = f'<meta name="flgate-token" content="{html.escape(self._settings.token)}">'
        page = _TOKEN_META.sub(meta.encode(), page, count=1)
        return web.Response(body=page, content_type="text/html", charset="utf-8")

    async def me(self, request: web.Request) -> web.Response:
        return web.json_response(views.whoami(self._settings.viewer, self._link.relay_url))

    async def federation(self, request: web.Request) -> web.Response:
        return web.json_response(await self._federation())

    async def jobs(self, request: web.Request) -> web.Response:
        return web.json_response(await self._jobs())

    async def job(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        info = await self._link.call(lambda c: c.get(job_id))
        return web.json_response(self._view(info))

    async def metrics(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        answer = await self._link.call(lambda c: c.metrics(job_id))
        return web.json_response(views.metrics_view(answer))

    async def logs(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        source = request.query.get("source", "server")
        offset = _int(request.query.get("offset", "0"), "offset")
        answer = await self._link.call(lambda c: c.logs(job_id, source=source, offset=offset))
        return web.json_response(
            {
                "text": views.PlainText().feed(answer.data.decode("utf-8", errors="replace")),
                "next_offset": answer.next_offset,
                "ended": answer.ended,
                "sources": list(answer.sources),
            }
        )

    async def submit(self, request: web.Request) -> web.Response:
        form = await _json_body(request)
        given = str(form.get("path") or "")
        if not given.strip():
            raise Refused("give the path of a Flower app directory on this machine", 400)
        path = Path(given).expanduser()
        try:
            sites = [s.strip() for s in str(form.get("sites") or "").split(",") if s.strip()]
            min_sites = _int(form.get("min_sites") or 0, "min sites")
            time_limit = float(form.get("time_limit") or 0)
        except (ValueError, TypeError) as exc:
            return _error(400, str(exc))
        left_out: list[str] = []
        info = await self._link.call(
            lambda c: c.submit(
                path,
                sites=sites or None,
                min_sites=min_sites,
                run_config=str(form.get("run_config") or ""),
                name=str(form.get("name") or ""),
                time_limit=time_limit,
                on_left_out=lambda files: left_out.extend(map(str, files)),
            )
        )
        log.info("job submitted from the console", extra={"job": info.job_id, "path": str(path)})
        view = self._view(info)
        return web.json_response({**view, "left_out": left_out}, status=201)

    async def abort(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        info = await self._link.call(lambda c: c.abort(job_id))
        return web.json_response(self._view(info))

    async def download(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        archive = await self._link.call(lambda c: c.download(job_id))
        filename = "job-" + re.sub(r"[^A-Za-z0-9._-]", "_", job_id) + ".tar.gz"
        return web.Response(
            body=archive,
            content_type="application/gzip",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )

    def _view(self, info: JobInfo) -> dict[str, Any]:
        return views.job_view(info, self._settings.viewer, time.time())

    async def _federation(self) -> dict[str, Any]:
        answer = await self._link.call(lambda c: c.federation())
        return views.federation_view(answer, self._link.relay_url)

    async def _jobs(self) -> dict[str, Any]:
        jobs = await self._link.call(lambda c: c.list_jobs())
        return views.jobs_view(jobs, self._settings.viewer, time.time())

    # -- live streams ------------------------------------------------------------------

    async def overview_events(self, request: web.Request) -> web.StreamResponse:
        """``federation``, ``jobs`` and ``relay`` as they change."""
        stream = await EventStream.open(request)

        async def poll() -> None:
            await stream.send_changed("federation", await self._federation())
            await stream.send_changed("jobs", await self._jobs())

        with contextlib.suppress(ConnectionResetError):  # the page left
            await self._poll_forever(stream, poll)
        return stream.response

    async def job_events(self, request: web.Request) -> web.StreamResponse:
        """``job``, ``metrics`` and ``relay`` of one job as they change."""
        job_id = request.match_info["job_id"]
        stream = await EventStream.open(request)

        async def poll() -> None:
            answer = await self._link.call(lambda c: c.metrics(job_id))
            now = time.time()
            await stream.send_changed("job", views.job_view(answer.job, self._settings.viewer, now))
            await stream.send_changed("metrics", views.metrics_view(answer))

        with contextlib.suppress(ConnectionResetError):
            await self._poll_forever(stream, poll)
        return stream.response

    async def log_events(self, request: web.Request) -> web.StreamResponse:
        """``log`` events with the text that follows the last one (``id`` is the byte
        offset, so a reconnecting EventSource resumes there), ``end`` when the job has
        ended and its log is complete."""
        job_id = request.match_info["job_id"]
        source = request.query.get("source", "server")
        offset = _int(request.headers.get("Last-Event-ID") or "0", "Last-Event-ID")
        stream = await EventStream.open(request)
        with contextlib.suppress(ConnectionResetError):
            await self._follow_log(stream, job_id, source, offset)
        return stream.response

    async def _follow_log(self, stream: EventStream, job_id: str, source: str, offset: int) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        plain = views.PlainText()
        failures = 0
        while True:
            try:
                answer = await self._link.call(
                    lambda c, at=offset: c.logs(  # type: ignore[misc]
                        job_id, source=source, offset=at, wait=LOG_WAIT_SECONDS
                    )
                )
            except Refused as refused:
                await stream.send_changed("relay", self._link.status())
                if refused.status != 503:
                    await stream.send("error", {"error": refused.reason, "status": refused.status})
                    await _idle(stream)
                await asyncio.sleep(RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])
                failures += 1
                continue
            failures = 0
            await stream.send_changed("relay", self._link.status())
            if answer.data:
                offset = answer.next_offset
                text = plain.feed(decoder.decode(answer.data))
                await stream.send("log", {"text": text, "offset": offset}, event_id=str(offset))
            elif answer.ended:
                await stream.send("end", {})
                await _idle(stream)
            else:
                await stream.keepalive()

    async def _poll_forever(self, stream: EventStream, poll: Callable[[], Awaitable[None]]) -> None:
        """Run ``poll`` about once a second, telling the page the relay's state; while
        the relay is unreachable, wait longer between attempts."""
        failures = 0
        while True:
            try:
                await poll()
                failures = 0
            except Refused as refused:
                failures += 1
                if refused.status != 503:
                    await stream.send_changed("error", {"error": refused.reason})
            await stream.send_changed("relay", self._link.status())
            await stream.keepalive()
            wait = (
                POLL_SECONDS
                if not failures
                else RETRY_SECONDS[min(failures - 1, len(RETRY_SECONDS) - 1)]
            )
            await asyncio.sleep(wait)


async def _idle(stream: EventStream) -> None:
    """Nothing more will come: keep the stream open (a closed one makes EventSource
    reconnect and ask again) until the page leaves."""
    while True:
        await asyncio.sleep(KEEPALIVE)
        await stream.keepalive()


async def _json_body(request: web.Request) -> dict[str, Any]:
    with contextlib.suppress(ValueError):
        body = await request.json()
        if isinstance(body, dict):
            return body
    raise Refused("the request body must be a JSON object", 400)


def _int(value: object, what: str) -> int:
    try:
        number = int(str(value))
    except ValueError:
        raise Refused(f"{what} must be a whole number, not {value!r}", 400) from None
    if number < 0:
        raise Refused(f"{what} must not be negative", 400)
    return number


def _text(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text, headers=_SECURITY_HEADERS)


def _error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)
