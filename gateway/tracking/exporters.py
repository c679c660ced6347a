"""Where a job's series go besides the job store: TensorBoard files, MLflow, ...

An :class:`Exporter` is told when a job starts, each batch of its points, and
when it ends. :class:`Exporters` hands every event to each exporter and catches
what they raise: an exporter that fails is logged (once per job) and left out
for the rest of that job; the job never notices. Exporters are called from one
thread at a time, the relay's event loop or a worker thread (a site's batch of up
to 1,000 points, see ``control/jobs/series_keeper.py``), and must be quick
(TensorBoard appends to a local file; a remote one hands its work to a thread of
its own).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from .series import Point

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"
"""Where in a job's directory its TensorBoard event files are written (and downloaded)."""
_INVALID_TAG_CHARACTERS = re.compile(r"[^-/\w\.]")
"""What tensorboardX's ``summary.scalar`` replaces by ``_`` in a tag (it also strips a
leading ``/``)."""


@dataclass(frozen=True)
class JobRun:
    """What an exporter knows of a job when it starts."""

    job_id: str
    name: str
    job_dir: Path
    sites: tuple[str, ...]
    run_config: dict[str, str] = field(default_factory=dict)
    flower: str = ""
    """The Flower release the job runs with."""
    submitted_by: str = ""
    tracking_uri: str = ""
    """The job file's MLflow tracking URI, if it names one (else the relay's)."""


class Exporter(Protocol):
    name: str

    def start(self, job: JobRun) -> None: ...

    def add(self, job_id: str, points: Sequence[Point]) -> None: ...

    def end(self, job_id: str, state: str) -> None: ...

    def close(self) -> None: ...


class Exporters:
    """Every exporter, each failure caught and logged once per job and exporter."""

    def __init__(self, exporters: Iterable[Exporter] = ()) -> None:
        self._exporters = list(exporters)
        self._failed: set[tuple[str, str]] = set()
        """(job, exporter) pairs left out after a failure."""

    def start(self, job: JobRun) -> None:
        for exporter in self._exporters:
            self._run(exporter, job.job_id, "start", partial(exporter.start, job))

    def add(self, job_id: str, points: Sequence[Point]) -> None:
        if points:
            for exporter in self._exporters:
                self._run(exporter, job_id, "add", partial(exporter.add, job_id, points))

    def end(self, job_id: str, state: str) -> None:
        for exporter in self._exporters:
            self._run(exporter, job_id, "end", partial(exporter.end, job_id, state))
        self._failed = {pair for pair in self._failed if pair[0] != job_id}

    def close(self) -> None:
        for exporter in self._exporters:
            try:
                exporter.close()
            except Exception:
                log.warning("an exporter failed to close", extra={"exporter": exporter.name})

    def _run(self, exporter: Exporter, job_id: str, what: str, call: Callable[[], None]) -> None:
        if (job_id, exporter.name) in self._failed:
            return
        try:
            call()
        except Exception as exc:
            self._failed.add((job_id, exporter.name))
            log.warning(
                "an exporter failed; the job goes on without it",
                extra={"exporter": exporter.name, "job": job_id, "step": what, "error": repr(exc)},
            )


@contextlib.contextmanager
def _torch_hidden() -> Iterator[None]:
    """Keep PyTorch out while tensorboardX loads.

    tensorboardX's package ``__init__`` imports its ``SummaryWriter``, which imports
    torch when it is installed: 236 MB of RSS and 3.7 s in the relay (which took a
    grpcs relay of the bench from 130 to 386 MB), for scalars that never need it.
    A ``None`` in ``sys.modules`` makes ``import torch`` raise ``ImportError``, which
    tensorboardX catches. A process that has torch loaded already keeps it.
    """
    if "torch" in sys.modules:
        yield
        return
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if sys.modules.get("torch", "") is None:
            del sys.modules["torch"]


class TensorBoardExporter:
    """TensorBoard event files per job, in ``JOB_DIR/tensorboard``: each tag a scalar
    series with the round as its step.

    It writes with tensorboardX's synchronous ``EventsWriter``, not its
    ``SummaryWriter``: that one queues events for a thread of its own, and its flush
    does not wait for the queue, so a reader could miss the round just written (and
    every running job would hold a thread). Each start opens a file of its own (a
    relay that adopts a job after a restart adds one; readers merge them).
    """

    name = "tensorboard"

    def __init__(self) -> None:
        self._open: Any = None
        self._event: Any = None
        self._summary: Any = None
        self._writers: dict[str, Any] = {}
        self._tags: dict[str, str] = {}
        """Each tag as TensorBoard takes it (see :func:`tensorboard_tag`), by tag."""

    def _load(self) -> None:
        """Import tensorboardX (and NumPy with it, tens of MB) when the first job starts,
        not when the relay does: a relay with no job stays small."""
        if self._open is None:
            with _torch_hidden():
                from tensorboardX.event_file_writer import EventsWriter
                from tensorboardX.proto.event_pb2 import Event
                from tensorboardX.proto.summary_pb2 import Summary

            self._open, self._event, self._summary = EventsWriter, Event, Summary

    def start(self, job: JobRun) -> None:
        self._load()
        logdir = job.job_dir / TENSORBOARD_DIR
        logdir.mkdir(parents=True, exist_ok=True)
        self._writers[job.job_id] = self._open(
            str(logdir / "events"), filename_suffix=f".{os.getpid()}.{uuid.uuid4().hex[:8]}"
        )

    def add(self, job_id: str, points: Sequence[Point]) -> None:
        writer = self._writers.get(job_id)
        if writer is None:
            return
        now = time.time()
        summary, value, event, tags = self._summary, self._summary.Value, self._event, self._tags
        for point in points:
            tag = tags.get(point.tag)
            if tag is None:
                tag = tags[point.tag] = tensorboard_tag(point.tag)
            # What tensorboardX's summary.scalar builds, without its conversions through
            # NumPy: a third of a site's batch of 1,000 points.
            one = summary(value=[value(tag=tag, simple_value=point.value)])
            writer.write_event(event(wall_time=now, step=point.step, summary=one))
        writer.flush()  # readers see the points at once

    def end(self, job_id: str, state: str) -> None:
        writer = self._writers.pop(job_id, None)
        if writer is not None:
            writer.close()
        if not self._writers:
            self._tags.clear()

    def close(self) -> None:
        for job_id in list(self._writers):
            self.end(job_id, "")


def tensorboard_tag(tag: str) -> str:
    """``tag`` as tensorboardX's ``summary.scalar`` writes it: characters other than
    letters, digits and ``_ - / .`` replaced by ``_``, leading slashes stripped."""
    return _INVALID_TAG_CHARACTERS.sub("_", tag).lstrip("/")
