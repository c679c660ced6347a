"""Keeping a job's series: the one path that the ServerApp's points and the sites'
client-side records take into the job store and the exporters.

:class:`SeriesKeeper` stores a batch of points (:meth:`~.store.JobStore.add_points`)
and hands it to the exporters (TensorBoard, MLflow); :func:`site_points` checks a
site's ``PushTracking`` batch again (a site is never trusted) and names its points
``<site>/<tag>``. The job manager uses both; so does the bench's relay worker
(``gateway/bench/worker.py``), which measures what a flood of client-side records
costs the relay's Fleet calls on exactly this path.
"""

from __future__ import annotations

import logging
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

    def keep(self, job_id: str, points: Sequence[Point]) -> int:
        """Store and export ``points``; return how many the full series dropped."""
        self._exporters.add(job_id, points)
        dropped = self._store.add_points(job_id, points)
        if dropped and job_id not in self._full:
            self._full.add(job_id)
            log.warning(
                "a job's series are full; further points are dropped",
                extra={"job": job_id, "limit": MAX_POINTS_PER_JOB},
            )
        return dropped

    def forget(self, job_id: str) -> None:
        """The job ended: a later job of the same id is warned about again."""
        self._full.discard(job_id)
