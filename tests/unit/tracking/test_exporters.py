"""Exporters: each job's series in TensorBoard files, and a failing exporter never fails it."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from gateway.tracking.exporters import TENSORBOARD_DIR, Exporters, JobRun, TensorBoardExporter
from gateway.tracking.series import Point
from tests.support.tensorboard import read_scalars


def _job(tmp_path: Path, job_id: str = "job-1") -> JobRun:
    return JobRun(job_id=job_id, name="quickstart", job_dir=tmp_path / job_id, sites=("s1",))


def test_a_jobs_points_are_tensorboard_scalars_with_the_round_as_step(tmp_path: Path) -> None:
    exporter = TensorBoardExporter()
    exporter.start(_job(tmp_path))
    exporter.add("job-1", [Point("train/loss", 1, 0.5), Point("evaluate/acc", 1, 0.25)])
    exporter.add("job-1", [Point("train/loss", 2, 0.125)])
    # Readable while the job runs (flushed with each batch), and after it ended.
    assert read_scalars(tmp_path / "job-1" / TENSORBOARD_DIR)["train/loss"] == {1: 0.5, 2: 0.125}
    exporter.end("job-1", "finished")
    assert read_scalars(tmp_path / "job-1" / TENSORBOARD_DIR) == {
        "train/loss": {1: 0.5, 2: 0.125},
        "evaluate/acc": {1: 0.25},
    }
    exporter.add("job-1", [Point("late", 3, 1.0)])  # after the end: nowhere, and no error


def test_the_tensorboard_exporter_leaves_pytorch_out_of_the_relay(tmp_path: Path) -> None:
    """tensorboardX imports torch when it can (236 MB in the relay); the exporter hides it."""
    pytest.importorskip("torch")  # installed with the dev extra; the point is to keep it out
    script = f"""
import sys
from pathlib import Path
from gateway.tracking.exporters import JobRun, TensorBoardExporter
from gateway.tracking.series import Point
exporter = TensorBoardExporter()
exporter.start(JobRun("job-1", "q", Path({str(tmp_path)!r}) / "job-1", ("s1",)))
exporter.add("job-1", [Point("loss", 1, 0.5)])
exporter.end("job-1", "finished")
print(sys.modules.get("torch", "absent"))
"""
    shown = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    assert shown.stdout.strip() == "absent", shown.stdout
    assert read_scalars(tmp_path / "job-1" / TENSORBOARD_DIR) == {"loss": {1: 0.5}}


class _Broken:
    name = "broken"

    def __init__(self) -> None:
        self.calls = 0

    def start(self, job: JobRun) -> None:
        self.calls += 1

    def add(self, job_id: str, points: Sequence[Point]) -> None:
        self.calls += 1
        raise ConnectionError("tracking server down")

    def end(self, job_id: str, state: str) -> None:
        self.calls += 1

    def close(self) -> None:
        raise OSError("cannot close")


def test_a_failing_exporter_is_logged_once_and_left_out_for_that_job_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken, tensorboard = _Broken(), TensorBoardExporter()
    exporters = Exporters([broken, tensorboard])
    exporters.start(_job(tmp_path))
    with caplog.at_level(logging.WARNING):
        for step in (1, 2, 3):
            exporters.add("job-1", [Point("loss", step, float(step))])
    assert broken.calls == 2  # start, then the first add; nothing after it failed
    failures = [r for r in caplog.records if r.getMessage().startswith("an exporter failed")]
    assert len(failures) == 1 and failures[0].exporter == "broken"  # type: ignore[attr-defined]
    exporters.end("job-1", "finished")
    assert read_scalars(tmp_path / "job-1" / TENSORBOARD_DIR) == {"loss": {1: 1, 2: 2, 3: 3}}
    # The next job tries the exporter again.
    exporters.start(_job(tmp_path, "job-2"))
    assert broken.calls == 3
    exporters.close()  # a close that raises is logged, not raised
