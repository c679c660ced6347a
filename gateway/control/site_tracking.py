"""A site's client-side tracking: the loopback receiver and the shipping to the relay.

The site agent opens one :class:`~gateway.tracking.receiver.TrackingReceiver` on
loopback for all its jobs and gives each job's SuperNode the receiver's URL and the
job's token. :class:`SiteTracking` ships the queued records to the relay as
``PushTracking`` calls over the site's shared connection (the one its Fleet calls
take): once a second, or at once when a job's batch is full or its app flushed.

A batch that fails to travel (transport error, relay busy or restarting) is sent
again, the same batch, after a backoff: the relay replaces a point per (tag, step),
so a resend is harmless. A batch the relay refuses for good (the job ended, the
site is not in it, a bad record) is dropped and logged once per job; the job goes on.
The receiver's port is kept in the workspace so that a restarted agent reopens it
where the adopted SuperNodes' ClientApps still send.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from ..core.exceptions import AuthError, ConfigError, GatewayError, JobError, ProtocolError
from ..proto.control_pb2 import MetricPoint, PushTrackingRequest, PushTrackingResponse
from ..proto.envelope_pb2 import KIND_AGENT
from ..tracking.receiver import TrackingReceiver
from ..tracking.records import DEFAULT_LIMITS, Batch, TrackingLimits
from ..transport import TransportClient
from .client import control_call

log = logging.getLogger(__name__)

SHIP_SECONDS = 1.0
BACKOFF_SECONDS = (0.5, 1.0, 2.0, 5.0)
PORT_FILE = "tracking-port"
_REFUSED = (AuthError, ConfigError, JobError, ProtocolError)
"""Answers that a resend would get again: the batch is dropped."""


class SiteTracking:
    """The receiver of one site agent and the task that ships its batches."""

    def __init__(
        self,
        client: TransportClient,
        *,
        workspace: Path,
        limits: TrackingLimits = DEFAULT_LIMITS,
    ) -> None:
        self._client = client
        self._port_file = workspace / PORT_FILE
        self._ready = asyncio.Event()
        self.receiver = TrackingReceiver(limits, on_ready=self._ready.set)
        self._task: asyncio.Task[None] | None = None
        self._failures = 0
        self._refused_jobs: set[str] = set()

    async def start(self) -> None:
        """Listen on the port of the agent's last run if it is free, else on any."""
        previous = 0
        with contextlib.suppress(OSError, ValueError):
            previous = int(self._port_file.read_text())
        try:
            await self.receiver.start(previous)
        except OSError:
            if not previous:
                raise
            log.warning(
                "the tracking port of the last run is taken: adopted jobs' records are lost",
                extra={"port": previous},
            )
            await self.receiver.start(0)
        self._port_file.parent.mkdir(parents=True, exist_ok=True)
        self._port_file.write_text(str(self.receiver.port))
        self._task = asyncio.create_task(self._ship_forever(), name="tracking-shipper")

    def add_job(self, job_id: str, token: str | None = None) -> dict[str, str]:
        """Take ``job_id``'s records; the environment for its SuperNode."""
        return self.receiver.job_env(self.receiver.add_job(job_id, token))

    async def remove_job(self, job_id: str) -> None:
        """Ship what the job still queues (once, if the relay takes it), then forget it."""
        with contextlib.suppress(GatewayError):
            for batch in self.receiver.due(flush=True):
                if batch.job_id == job_id:
                    await self._ship(batch)
        self.receiver.remove_job(job_id)
        self._refused_jobs.discard(job_id)

    async def _ship_forever(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._ready.wait(), SHIP_SECONDS)
            self._ready.clear()
            try:
                for batch in self.receiver.due():
                    await self._ship(batch)
                self._failures = 0
            except GatewayError as exc:
                delay = BACKOFF_SECONDS[min(self._failures, len(BACKOFF_SECONDS) - 1)]
                self._failures += 1
                log.warning(
                    "cannot ship tracking records to the relay; retrying",
                    extra={"error": str(exc), "retry_in": delay},
                )
                await asyncio.sleep(delay)

    async def _ship(self, batch: Batch) -> None:
        """Send ``batch``; a refusal drops it, a transport failure raises (sent again)."""
        request = PushTrackingRequest(
            job_id=batch.job_id,
            points=[MetricPoint(tag=p.tag, step=p.step, value=p.value) for p in batch.points],
            dropped=batch.dropped,
        )
        try:
            await control_call(
                self._client, KIND_AGENT, "PushTracking", request, PushTrackingResponse
            )
        except _REFUSED as exc:
            self.receiver.refused(batch)
            if batch.job_id not in self._refused_jobs:
                self._refused_jobs.add(batch.job_id)
                log.warning(
                    "the relay refused a job's tracking records; they are dropped",
                    extra={"job": batch.job_id, "reason": str(exc)},
                )
            return
        self.receiver.shipped(batch)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.receiver.aclose()
