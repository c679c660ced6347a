"""Following a job from the admin's terminal: its state, rounds and metrics as they
arrive (``job submit --follow``, ``job metrics --follow``), through relay restarts.

:class:`FollowView` is pure: given what the relay answered, it returns the lines to
print, each point once. :func:`follow` polls the relay with it through
:class:`Reconnecting`, which, when the relay cannot be reached or answers that it
cannot serve now (it restarts), opens a new connection and goes on, for up to
:data:`OUTAGE_LIMIT` seconds of outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from itertools import groupby
from typing import TypeVar

from ..control.admin import AdminClient
from ..control.jobs.store import FINAL_STATES
from ..core.exceptions import (
    GatewayError,
    MaybeDeliveredError,
    NotDeliveredError,
    TransportError,
)
from ..proto.control_pb2 import GetMetricsResponse, JobInfo, MetricPoint

T = TypeVar("T")

POLL_SECONDS = 1.0
OUTAGE_LIMIT = 300.0
"""Seconds a follower keeps reconnecting to a relay it cannot reach before it gives up."""
RECONNECT_SECONDS = 2.0
RELAY_UNAVAILABLE = (TransportError, NotDeliveredError, MaybeDeliveredError)
"""What a relay that is down or restarting answers (or fails with): worth trying again.
A read (GetMetrics) is safe to send again."""


def format_value(value: float) -> str:
    """A metric as Python prints it, shortest exact (0.1 stays 0.1, ints lose no digit)."""
    return repr(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def points_by_round(points: list[MetricPoint]) -> list[str]:
    """``round N: tag=value tag=value`` per round, rounds ascending, tags sorted."""
    ordered = sorted(points, key=lambda p: (p.step, p.tag))
    return [
        f"round {step}: " + " ".join(f"{p.tag}={format_value(p.value)}" for p in group)
        for step, group in groupby(ordered, key=lambda p: p.step)
    ]


@dataclass
class FollowView:
    """What a follower has printed so far; ``metrics_only`` leaves out state lines."""

    metrics_only: bool = False
    _last: tuple[str, int, int, str] = ("", 0, 0, "")
    _seen: set[tuple[str, int]] = field(default_factory=set)

    def update(self, response: GetMetricsResponse, now: str) -> list[str]:
        """The lines for the relay's newest answer (``now``: the time to show)."""
        lines = []
        info = response.job
        state = (info.state, info.round, info.rounds, info.reason)
        if state != self._last and not self.metrics_only:
            progress = f" round {info.round}/{info.rounds or '?'}" if info.round else ""
            reason = f" - {info.reason}" if info.reason else ""
            lines.append(f"[{now}] {info.state}{progress}{reason}")
        self._last = state
        new = [p for p in response.points if (p.tag, p.step) not in self._seen]
        self._seen.update((p.tag, p.step) for p in new)
        lines += [f"  {line}" for line in points_by_round(new)]
        return lines


class Reconnecting:
    """Admin calls that ride out a relay outage: a call that finds the relay down or
    restarting is sent again on a new connection, for up to :data:`OUTAGE_LIMIT`
    seconds of outage (then its last error is raised); the outage and its end are told
    to ``write`` once each. Only for reads, which are safe to send again."""

    def __init__(
        self,
        connect: Callable[[], AdminClient],
        *,
        write: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connect = connect
        self._write = write
        self._clock = clock
        self._client: AdminClient | None = None
        self._down_since: float | None = None

    async def call(self, operation: Callable[[AdminClient], Awaitable[T]]) -> T:
        while True:
            try:
                if self._client is None:
                    self._client = self._connect()
                result = await operation(self._client)
            except RELAY_UNAVAILABLE as exc:
                await self._drop()
                if self._down_since is None:
                    self._down_since = self._clock()
                    self._write(
                        f"relay unreachable ({exc}); reconnecting for up to {OUTAGE_LIMIT:.0f} s"
                    )
                elif self._clock() - self._down_since > OUTAGE_LIMIT:
                    raise
                await asyncio.sleep(RECONNECT_SECONDS)
                continue
            if self._down_since is not None:
                self._write(
                    f"reconnected to the relay after {self._clock() - self._down_since:.0f} s"
                )
                self._down_since = None
            return result

    async def _drop(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(GatewayError, OSError):
                await client.aclose()

    async def aclose(self) -> None:
        await self._drop()


async def follow(
    relay: Reconnecting, job_id: str, view: FollowView, write: Callable[[str], None]
) -> JobInfo:
    """Print ``view``'s lines until the job ends; return how it ended. Refusals (no
    such job, not allowed) are raised at once."""
    while True:
        response = await relay.call(lambda client: client.metrics(job_id))
        for line in view.update(response, time.strftime("%H:%M:%S")):
            write(line)
        if response.job.state in FINAL_STATES:
            return response.job
        await asyncio.sleep(POLL_SECONDS)
