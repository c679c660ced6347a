"""Client-side tracking records on a site: checked, rate-limited, queued and batched.

Pure (no I/O, no asyncio, time passed in), h11-style: the site agent's loopback
receiver (:mod:`.receiver`) feeds it the bodies that a job's
:class:`~gateway.tracking.writer.SummaryWriter` POSTs and ships the batches it hands
out to the relay; the relay checks every record again with :func:`check_point`
(a site is never trusted). A record is a :class:`~.series.Point`: ``tag``, ``step``,
``value``.

Limits (the defaults of :class:`TrackingLimits`, per job):

- a record: a tag of 1 to :data:`MAX_TAG_CHARS` characters of ``A-Z a-z 0-9 _ . - /``
  (not starting with ``/``), a finite number, a step ``0 <= step < 2**31``;
- a request: at most 1 MiB of body and 10,000 records;
- a token bucket of 1,000 records a second with a burst of 10,000: a request whose
  records do not all fit is refused whole (429, with the seconds to wait);
- at most 50,000 records queued for the relay; beyond that records are dropped and
  counted, and the count travels to the relay with the next batch;
- batches of at most 1,000 records (about 30 ms of the relay's loop to store and export),
  shipped once a second or as soon as one is full.

A batch handed out stays the job's *pending* batch until :meth:`TrackingProtocol.shipped`
(the relay has it), so a batch that failed to travel is sent again as it was: the
relay replaces a point per (tag, step), so a resend changes nothing.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .series import Point

MAX_TAG_CHARS = 128
MAX_STEP = 2**31 - 1
MAX_POINTS_PER_PUSH = 10_000
"""Points the relay takes in one batch from a site (a site ships at most
``TrackingLimits.batch``)."""
TAG_RE = re.compile(r"[A-Za-z0-9_.\-][A-Za-z0-9_.\-/]*")
"""A tag's safe characters: no spaces, quotes, control characters or a leading ``/``."""


class RecordError(ValueError):
    """A record or a request body that breaks the rules; the message names the problem."""


@dataclass(frozen=True, kw_only=True)
class TrackingLimits:
    """What a site takes from one job's ClientApps; every default documented above."""

    max_body_bytes: int = 1024 * 1024
    max_records_per_request: int = 10_000
    rate: float = 1_000.0
    """Records a second a job may send, on average."""
    burst: int = 10_000
    """Records a job may send at once (the bucket's size)."""
    max_queued: int = 50_000
    """Records of a job waiting for the relay; more are dropped and counted."""
    batch: int = 1_000
    """Records per batch shipped to the relay."""
    ship_after: float = 1.0
    """Seconds a record may wait before a batch that is not full is shipped."""


def check_point(tag: object, step: object, value: object, *, where: str = "record") -> Point:
    """A valid :class:`Point`, or :class:`RecordError` naming ``where`` and the problem."""
    if not isinstance(tag, str):
        raise RecordError(f"{where}.tag: not a string")
    if not 0 < len(tag) <= MAX_TAG_CHARS:
        raise RecordError(f"{where}.tag: must have 1 to {MAX_TAG_CHARS} characters")
    if not TAG_RE.fullmatch(tag):
        raise RecordError(f"{where}.tag: only letters, digits and _ . - / (not first) allowed")
    if isinstance(step, bool) or not isinstance(step, int):
        raise RecordError(f"{where}.step: not an integer")
    if not 0 <= step <= MAX_STEP:
        raise RecordError(f"{where}.step: must be between 0 and {MAX_STEP}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordError(f"{where}.value: not a number")
    try:
        number = float(value)
    except OverflowError:
        raise RecordError(f"{where}.value: not a finite number") from None
    if not math.isfinite(number):
        raise RecordError(f"{where}.value: not a finite number")
    return Point(tag, step, number)


@dataclass(frozen=True)
class Request:
    """What a writer POSTed: its records, the records it dropped since its last request,
    and whether its app flushed (ship at once)."""

    points: list[Point]
    dropped: int = 0
    flush: bool = False


def parse_body(body: Any, *, max_records: int) -> Request:
    """A decoded JSON body ``{"records": [{"tag", "step", "value"}, ...], "dropped": N,
    "flush": bool}`` (``dropped`` and ``flush`` optional)."""
    if not isinstance(body, Mapping):
        raise RecordError("the body must be a JSON object with 'records'")
    records = body.get("records")
    if not isinstance(records, list):
        raise RecordError("'records' must be a list")
    if len(records) > max_records:
        raise RecordError(f"'records' has {len(records)} records, more than {max_records}")
    dropped = body.get("dropped", 0)
    if isinstance(dropped, bool) or not isinstance(dropped, int) or dropped < 0:
        raise RecordError("'dropped' must be a count (an integer >= 0)")
    flush = body.get("flush", False)
    if not isinstance(flush, bool):
        raise RecordError("'flush' must be true or false")
    points = []
    for index, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise RecordError(f"records[{index}]: not an object")
        points.append(
            check_point(
                record.get("tag"),
                record.get("step"),
                record.get("value"),
                where=f"records[{index}]",
            )
        )
    return Request(points, dropped, flush)


class TokenBucket:
    """``rate`` tokens a second up to ``burst``; full at first."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._at = now

    def _refill(self, now: float) -> None:
        self._tokens = min(self._burst, self._tokens + max(0.0, now - self._at) * self._rate)
        self._at = max(self._at, now)

    def take(self, count: int, now: float) -> float:
        """Take ``count`` tokens and return 0, or take none and return the seconds until
        they are there (infinite when ``count`` exceeds the burst)."""
        self._refill(now)
        if count <= self._tokens:
            self._tokens -= count
            return 0.0
        if count > self._burst:
            return math.inf
        return (count - self._tokens) / self._rate


@dataclass(frozen=True)
class Accepted:
    """A request taken: ``queued`` records wait for the relay, ``dropped`` did not fit."""

    queued: int
    dropped: int


@dataclass(frozen=True)
class RateLimited:
    """A request refused whole: try again in ``retry_after`` seconds."""

    retry_after: float


@dataclass
class Batch:
    """Records of one job for the relay, and the drops counted since the last batch."""

    job_id: str
    points: list[Point]
    dropped: int


@dataclass
class _JobQueue:
    bucket: TokenBucket
    queued: deque[Point] = field(default_factory=deque)
    dropped: int = 0
    oldest: float | None = None
    """When the oldest queued record arrived."""
    pending: Batch | None = None
    flush: bool = False
    """The app flushed: ship what is queued at once."""


DEFAULT_LIMITS = TrackingLimits()


class TrackingProtocol:
    """Every job's queue on one site: :meth:`receive` requests, :meth:`due` batches."""

    def __init__(self, limits: TrackingLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._jobs: dict[str, _JobQueue] = {}

    def open(self, job_id: str, now: float) -> None:
        """Start taking records for ``job_id`` (again: its queue is kept)."""
        if job_id not in self._jobs:
            self._jobs[job_id] = _JobQueue(TokenBucket(self.limits.rate, self.limits.burst, now))

    def close(self, job_id: str) -> None:
        """Forget ``job_id`` and whatever it still queues."""
        self._jobs.pop(job_id, None)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._jobs

    def receive(self, job_id: str, request: Request, now: float) -> Accepted | RateLimited:
        """A request of ``job_id``'s writer, checked already (:func:`parse_body`)."""
        job = self._jobs[job_id]
        points, dropped = request.points, request.dropped
        wait = job.bucket.take(len(points), now)
        if wait:
            # refused whole: the writer keeps the records and its count, and sends them again
            return RateLimited(retry_after=wait)
        job.flush = job.flush or request.flush
        room = max(0, self.limits.max_queued - len(job.queued))
        kept = points[:room]
        lost = len(points) - len(kept)
        job.dropped += dropped + lost
        if kept and not job.queued:
            job.oldest = now
        job.queued.extend(kept)
        return Accepted(queued=len(kept), dropped=lost)

    def ship_now(self, job_id: str) -> bool:
        """Whether ``job_id`` has a full batch or its app flushed: worth shipping at once."""
        job = self._jobs.get(job_id)
        return job is not None and (job.flush or len(job.queued) >= self.limits.batch)

    def queued(self, job_id: str) -> int:
        job = self._jobs.get(job_id)
        return len(job.queued) if job is not None else 0

    def due(self, now: float, *, flush: bool = False) -> list[Batch]:
        """The batches to ship now: each job's pending batch, else a new one when a batch
        is full, its oldest record waited ``ship_after`` seconds, drops are to be told,
        or ``flush``."""
        batches = []
        for job_id, job in self._jobs.items():
            if job.pending is None and (job.queued or job.dropped):
                waited = job.oldest is not None and now - job.oldest >= self.limits.ship_after
                full = len(job.queued) >= self.limits.batch
                if flush or job.flush or waited or full or not job.queued:
                    count = min(len(job.queued), self.limits.batch)
                    job.pending = Batch(
                        job_id, [job.queued.popleft() for _ in range(count)], job.dropped
                    )
                    job.dropped = 0
                    job.oldest = now if job.queued else None
                    job.flush = job.flush and bool(job.queued)
            if job.pending is not None:
                batches.append(job.pending)
        return batches

    def shipped(self, batch: Batch) -> None:
        """The relay has ``batch``: the job's next batch may go."""
        job = self._jobs.get(batch.job_id)
        if job is not None and job.pending is batch:
            job.pending = None

    def refused(self, batch: Batch) -> None:
        """The relay refused ``batch`` for good (the job ended, say): it is dropped."""
        self.shipped(batch)
