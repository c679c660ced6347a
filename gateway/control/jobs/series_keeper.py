"""Keeping a job's series: the one path that the ServerApp's points and the sites'
client-side records take into the job store and the exporters.

:class:`SeriesKeeper` stores a batch of points (:meth:`~.store.JobStore.add_points`)
and hands it to the exporters (TensorBoard, MLflow); :func:`site_points` checks a
site's ``PushTracking`` batch again (a site is never trusted) and names its points
``<site>/<tag>``. The job manager uses both; so does the bench's relay worker
(``gateway/bench/worker.py``), which measures what a flood of client-side records
costs the relay's Fleet calls on exactly this path.

A site's batch (up to 1,000 records a second per job) is checked
(:meth:`SeriesKeeper.check_site`), then stored and exported
(:meth:`SeriesKeeper.keep_site`), each in a worker thread: on the relay's event
loop the same work held every Fleet call for tens of milliseconds a batch (the
bench's flood step shows it). One lock keeps the exporters single-threaded, as
they expect: a batch, a ServerApp's points (:meth:`SeriesKeeper.keep`, on the
loop: a few a round) and a job's end (:meth:`SeriesKeeper.end`) take turns.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence

from ...core.exceptions import ConfigError
from ...proto.control_pb2 import PushTrackingRequest
from ...tracking.exporters import Exporters
from ...tracking.records import MAX_POINTS_PER_PUSH, RecordError, check_point
from ...tracking.series import Point
from .store import MAX_POINTS_PER_JOB, JobStore

log = logging.getLogger(__name__)


def site_points(site: str, request: PushTrackingRequest) -> list[Point]:
    """``request``'s points as ``<site>/<tag>``, each checked again; a bad record or an
    oversized batch refuses the whole batch (:class:`ConfigError`, 400)."""
    if len(request.points) > MAX_POINTS_PER_PUSH:
        raise ConfigError(
            f"a tracking batch of {len(request.points)} points from {site}, more than "
            f"{MAX_POINTS_PER_PUSH}"
        )
    points = []
    for index, point in enumerate(request.points):
        try:
            checked = check_point(point.tag, point.step, point.value, where=f"points[{index}]")
        except RecordError as exc:
            raise ConfigError(f"a malformed tracking batch from {site}: {exc}") from exc
        points.append(Point(f"{site}/{checked.tag}", checked.step, checked.value))
    return points


class SeriesKeeper:
    """Every job's series into the job store and the exporters."""

    def __init__(self, store: JobStore, exporters: Exporters) -> None:
        self._store = store
        self._exporters = exporters
        self._full: set[str] = set()
        """Jobs whose series reached :data:`MAX_POINTS_PER_JOB` (logged once)."""
        self._lock = threading.Lock()
        """Held while the exporters run: one thread at a time uses them."""

    def keep(self, job_id: str, points: Sequence[Point]) -> int:
        """Store and export ``points``; return how many the full series dropped."""
        if not points:
            return 0
        with self._lock:
            self._exporters.add(job_id, points)
            dropped = self._store.add_points(job_id, points)
            if dropped and job_id not in self._full:
                self._full.add(job_id)
                log.warning(
                    "a job's series are full; further points are dropped",
                    extra={"job": job_id, "limit": MAX_POINTS_PER_JOB},
                )
        return dropped

    @staticmethod
    async def check_site(site: str, request: PushTrackingRequest) -> list[Point]:
        """:func:`site_points` in a worker thread."""
        return await asyncio.to_thread(site_points, site, request)

    async def keep_site(self, job_id: str, points: Sequence[Point]) -> int:
        """:meth:`keep` in a worker thread (a site's checked batch)."""
        return await asyncio.to_thread(self.keep, job_id, points)

    def end(self, job_id: str, state: str) -> None:
        """Tell the exporters the job ended in ``state`` (once a batch in a thread is
        done); a later job of the same id is warned about again."""
        with self._lock:
            self._exporters.end(job_id, state)
            self._full.discard(job_id)
