"""One path for a job's series: a site's batch is checked and named <site>/<tag>, then
stored and exported in a worker thread, one thread at a time in the exporters."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from gateway.control.jobs.series_keeper import SeriesKeeper, site_points
from gateway.control.jobs.store import JobStore
from gateway.core.exceptions import ConfigError
from gateway.proto.control_pb2 import MetricPoint, PushTrackingRequest
from gateway.tracking.exporters import Exporters, JobRun
from gateway.tracking.series import Point


class _Slow:
    """An exporter that notes its threads and any call made while another runs."""

    name = "slow"

    def __init__(self) -> None:
        self.threads: set[int] = set()
        self.overlaps = 0
        self.points: list[Point] = []
        self.ended: list[str] = []
        self._busy = False

    def _enter(self) -> None:
        self.threads.add(threading.get_ident())
        if self._busy:
            self.overlaps += 1
        self._busy = True
        time.sleep(0.01)
        self._busy = False

    def start(self, job: JobRun) -> None:
        pass

    def add(self, job_id: str, points: Sequence[Point]) -> None:
        self._enter()
        self.points += points

    def end(self, job_id: str, state: str) -> None:
        self._enter()
        self.ended.append(state)

    def close(self) -> None:
        pass


def _request(*tags: str) -> PushTrackingRequest:
    points = [MetricPoint(tag=tag, step=step, value=0.5) for step, tag in enumerate(tags)]
    return PushTrackingRequest(job_id="job", points=points)


def test_a_sites_points_are_checked_and_named_after_the_site() -> None:
    assert site_points("site-1", _request("loss", "acc")) == [
        Point("site-1/loss", 0, 0.5),
        Point("site-1/acc", 1, 0.5),
    ]
    with pytest.raises(ConfigError, match=r"from site-1: points\[1\].tag"):
        site_points("site-1", _request("loss", "bad tag"))
    with pytest.raises(ConfigError, match="more than 10000"):
        site_points("site-1", _request(*["loss"] * 10_001))


async def test_batches_are_kept_off_the_event_loop_and_the_exporters_run_one_at_a_time(
    tmp_path: Path,
) -> None:
    store, exporter = JobStore(tmp_path / "jobs.db"), _Slow()
    keeper = SeriesKeeper(store, Exporters([exporter]))
    batches = [await keeper.check_site(f"site-{n}", _request("loss")) for n in range(4)]
    await asyncio.gather(
        *(keeper.keep_site("job", batch) for batch in batches),
        asyncio.to_thread(keeper.end, "job", "finished"),
    )
    assert keeper.keep("job", [Point("server/loss", 0, 1.0)]) == 0  # on the loop, too
    assert exporter.overlaps == 0
    assert threading.get_ident() in exporter.threads and len(exporter.threads) > 1
    assert exporter.ended == ["finished"]
    assert sorted(p.tag for p in store.points("job")) == [
        "server/loss",
        *(f"site-{n}/loss" for n in range(4)),
    ]
    store.close()
