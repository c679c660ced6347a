"""The site agent's loopback receiver of client-side tracking records (an aiohttp shell).

One HTTP server per site agent on ``127.0.0.1`` (port 0 by default), shared by all
its jobs. Each job gets a random token (:meth:`TrackingReceiver.add_job`) that the
agent hands to its SuperNode, and so to its ClientApps, with the receiver's URL
(:func:`job_env`). ``POST /v1/records`` with ``Authorization: Bearer <token>`` and a
JSON body (:func:`~.records.parse_body`) is answered:

- 200 ``{"queued": n, "dropped": m}``: taken (``m`` did not fit in the job's queue);
- 401: no token, or one of no job here;
- 400 ``{"error": "..."}`` naming the problem (bad JSON, a bad record);
- 413: a body over 1 MiB or more records than a request may carry;
- 429 with ``Retry-After`` (seconds): over the job's rate; the writer sends it again.

Every rule and limit is the pure core's (:mod:`.records`); this module only moves
bytes and reads the clock. The agent ships :meth:`TrackingReceiver.due` batches to
the relay and reports each back (:meth:`~TrackingReceiver.shipped`).
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import socket
import time
from collections.abc import Callable

from aiohttp import web

from .records import (
    DEFAULT_LIMITS,
    Batch,
    RateLimited,
    RecordError,
    TrackingLimits,
    TrackingProtocol,
    parse_body,
)
from .writer import TOKEN_ENV, URL_ENV

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
PATH = "/v1/records"


def _error(status: int, text: str, **headers: str) -> web.Response:
    return web.json_response({"error": text}, status=status, headers=headers)


class TrackingReceiver:
    """Records from the jobs' ClientApps, queued for the relay."""

    def __init__(
        self,
        limits: TrackingLimits = DEFAULT_LIMITS,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_ready: Callable[[], None] = lambda: None,
    ) -> None:
        """``on_ready``: called when a job has a full batch or its app flushed."""
        self.protocol = TrackingProtocol(limits)
        self._limits = limits
        self._clock = clock
        self._on_ready = on_ready
        self._tokens: dict[str, str] = {}
        """token -> job id."""
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}{PATH}"

    async def start(self, port: int = 0) -> None:
        """Listen on loopback ``port`` (0: any free one; a taken one raises OSError)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart, same port
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            sock.close()
            raise
        self.port = int(sock.getsockname()[1])
        app = web.Application(client_max_size=self._limits.max_body_bytes)
        app.router.add_post(PATH, self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    def add_job(self, job_id: str, token: str | None = None) -> str:
        """Take records for ``job_id``; return its token (``token``: the one it had before
        an agent restart, which its SuperNode still holds)."""
        token = token or secrets.token_urlsafe(32)
        self._tokens[token] = job_id
        self.protocol.open(job_id, self._clock())
        return token

    def remove_job(self, job_id: str) -> None:
        """Refuse ``job_id``'s records from now on and forget what it still queues."""
        self._tokens = {t: j for t, j in self._tokens.items() if j != job_id}
        self.protocol.close(job_id)

    def job_env(self, token: str) -> dict[str, str]:
        """The environment that points a job's writer at this receiver."""
        return {URL_ENV: self.url, TOKEN_ENV: token}

    def due(self, *, flush: bool = False) -> list[Batch]:
        return self.protocol.due(self._clock(), flush=flush)

    def shipped(self, batch: Batch) -> None:
        self.protocol.shipped(batch)

    def refused(self, batch: Batch) -> None:
        self.protocol.refused(batch)

    async def _handle(self, request: web.Request) -> web.Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        job_id = self._tokens.get(token) if scheme.lower() == "bearer" and token else None
        if job_id is None:
            return _error(401, "a job's tracking token is required (Authorization: Bearer ...)")
        if (request.content_length or 0) > self._limits.max_body_bytes:
            return _error(413, f"the body is over {self._limits.max_body_bytes} bytes")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"the body is over {self._limits.max_body_bytes} bytes")
        except ConnectionResetError:
            # The writer's process ended in the middle of its POST (a ClientApp that
            # exits or is killed): nothing was taken and nobody reads the answer; no
            # traceback in the agent's log for it.
            return _error(400, "the writer left before its body arrived")
        try:
            body = json.loads(raw)
        except ValueError as exc:
            return _error(400, f"the body is not JSON: {exc}")
        records = body.get("records") if isinstance(body, dict) else None
        most = self._limits.max_records_per_request
        if isinstance(records, list) and len(records) > most:
            return _error(413, f"'records' has {len(records)} records, more than {most}")
        try:
            parsed = parse_body(body, max_records=most)
        except RecordError as exc:
            return _error(400, str(exc))
        if job_id not in self.protocol:  # removed while the body was read
            return _error(401, "the job's tracking token is no longer valid")
        outcome = self.protocol.receive(job_id, parsed, self._clock())
        if isinstance(outcome, RateLimited):
            if not math.isfinite(outcome.retry_after):
                return _error(413, f"more records than the job's burst of {self._limits.burst}")
            wait = max(1, math.ceil(outcome.retry_after))
            return _error(
                429,
                f"over the job's rate of {self._limits.rate:g} records/s",
                **{"Retry-After": str(wait)},
            )
        if self.protocol.ship_now(job_id):
            self._on_ready()
        return web.json_response({"queued": outcome.queued, "dropped": outcome.dropped})

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
