"""Each job's series as an MLflow run, on a tracking server the relay (or the job) names.

One run per job: its name is the job's, its tags say which job, sites, Flower
release and submitter, its params are the job's run-config, and each point is a
metric with the round as its ``step``. At the job's end the run is terminated
``FINISHED``, ``FAILED`` or ``KILLED`` (aborted). A relay that adopts a running job
after a restart finds the job's run by its ``flgate.job_id`` tag and goes on with
it, skipping the points the run already has (the adopted run's output is read
again from its start).

Exporters run on the relay's event loop and must return at once, while every call
to a tracking server is a network round trip (and MLflow's client retries a
server that is down for minutes). So :class:`MLflowExporter` only queues events,
in a queue bounded in points (over it, points are dropped, counted and logged
once per job), and one thread of its own makes the calls, in order. A call that
fails is logged once per job and leaves that job's run where it is; the job never
notices. A job's first call is preceded by a quick look at the server
(:meth:`~.mlflow_client.MlflowTrackingClient.check`), so a server that is down costs a connection
attempt, not MLflow's minutes of retries.

MLflow itself (about 200 MB and seconds to import) is imported by that thread,
never by the relay's loop. The calls go through :class:`~.mlflow_client.TrackingClient`
(:mod:`.mlflow_client`), made with MLflow's client, or a fake in the unit tests.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .exporters import JobRun
from .mlflow_client import (
    LoggedMetric,
    MlflowTrackingClient,
    TrackingClient,
    metric_key,
    redacted,
    require_mlflow,
    run_params,
    run_status,
    run_tags,
)
from .series import Point

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "flgate"
SUPPRESS_URL_PRINTING = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"

MAX_QUEUED_POINTS = 50_000
"""Points waiting for the thread, all jobs together; beyond them, points are dropped."""
CLOSE_TIMEOUT = 10.0
"""How long :meth:`MLflowExporter.close` waits for the queue to drain."""
MAX_LOGGED_PER_RUN = 100_000
"""Points per run remembered to skip those logged already (the job store's own cap)."""


@dataclass(frozen=True, kw_only=True)
class MLflowSettings:
    """The relay's MLflow server (``flgate relay start --mlflow-tracking-uri``)."""

    tracking_uri: str = ""
    """Where every job's series go, unless its job file names a server; "" for nowhere."""
    experiment: str = DEFAULT_EXPERIMENT
    """The MLflow experiment that holds the jobs' runs (created when missing)."""


@dataclass
class _Start:
    job: JobRun


@dataclass
class _Add:
    job_id: str
    metrics: list[LoggedMetric]


@dataclass
class _End:
    job_id: str
    state: str


_Event = _Start | _Add | _End | None
"""What the thread does next; ``None``: stop."""


@dataclass
class _Run:
    """A job's run as the thread knows it."""

    run_id: str
    logged: dict[tuple[str, int], float]


class MLflowExporter:
    """Every job's series as an MLflow run on one tracking server (see the module's
    docstring); the calls are made by a thread of its own, started with the first job."""

    name = "mlflow"

    def __init__(
        self,
        tracking_uri: str,
        experiment: str = DEFAULT_EXPERIMENT,
        *,
        client: Callable[[str], TrackingClient] | None = None,
        max_queued_points: int = MAX_QUEUED_POINTS,
        close_timeout: float = CLOSE_TIMEOUT,
    ) -> None:
        """``client``: makes the tracking client for a URI, in the thread (default:
        :class:`MlflowTrackingClient`, which needs MLflow: refused here without it)."""
        if client is None:
            require_mlflow()
            # MLflow's documented switch: set_terminated would otherwise print the run's URL
            # on the relay's stdout (and fetch the run once more to do it). Set here, on the
            # loop, before the thread exists; the operator's own setting stands.
            os.environ.setdefault(SUPPRESS_URL_PRINTING, "true")
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self._make_client = client or MlflowTrackingClient
        self._max_queued = max_queued_points
        self._close_timeout = close_timeout
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._events: deque[_Event] = deque()
        self._queued_points = 0
        self._thread: threading.Thread | None = None
        self._closed = False
        self.dropped: dict[str, int] = {}
        """Points dropped per job (the queue was full), kept until the job's end."""
        # The thread's own state.
        self._client: TrackingClient | None = None
        self._experiment_id: str | None = None
        self._runs: dict[str, _Run] = {}
        self._failed: set[str] = set()

    # --- the relay's loop: queue and return ------------------------------------------

    def begin(self) -> None:
        """Start the thread now (it makes the client, so MLflow is imported before the
        first job needs it)."""
        with self._lock:
            self._ensure_thread()

    def start(self, job: JobRun) -> None:
        self._put(_Start(job))

    def add(self, job_id: str, points: Sequence[Point]) -> None:
        now = int(time.time() * 1000)
        metrics = [LoggedMetric(metric_key(p.tag), p.step, p.value, now) for p in points]
        with self._lock:
            if self._queued_points + len(metrics) > self._max_queued:
                first = job_id not in self.dropped
                self.dropped[job_id] = self.dropped.get(job_id, 0) + len(metrics)
                if first:
                    log.warning(
                        "the MLflow export queue is full; the job's points are dropped",
                        extra={
                            "exporter": self.name,
                            "job": job_id,
                            "tracking_uri": redacted(self.tracking_uri),
                            "limit": self._max_queued,
                        },
                    )
                return
            self._queued_points += len(metrics)
        self._put(_Add(job_id, metrics))

    def end(self, job_id: str, state: str) -> None:
        self._put(_End(job_id, state))

    def close(self) -> None:
        """Let the thread make the calls queued, waiting for it at most ``close_timeout``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            self._events.append(None)
            self._wake.notify()
        if thread is None:
            return
        thread.join(self._close_timeout)
        if thread.is_alive():
            with self._lock:
                left = len(self._events)
            log.warning(
                "the MLflow export did not drain in time; what is left is not sent",
                extra={
                    "exporter": self.name,
                    "tracking_uri": redacted(self.tracking_uri),
                    "events": left,
                    "timeout": self._close_timeout,
                },
            )

    def _put(self, event: _Event) -> None:
        with self._lock:
            if self._closed:
                return
            self._ensure_thread()
            self._events.append(event)
            self._wake.notify()

    def _ensure_thread(self) -> None:
        if self._thread is None:
            # A daemon: a server that does not answer must not keep the relay from exiting
            # (close() waits for it, but only so long).
            self._thread = threading.Thread(target=self._work, name="mlflow-export", daemon=True)
            self._thread.start()

    # --- the thread: the calls, in order ---------------------------------------------

    def _work(self) -> None:
        try:
            self._client = self._make_client(self.tracking_uri)
        except Exception as exc:  # each job's start tries again, and logs its failure
            log.warning(
                "MLflow's client could not be made",
                extra={
                    "exporter": self.name,
                    "tracking_uri": redacted(self.tracking_uri),
                    "error": repr(exc)[:500],
                },
            )
        while True:
            with self._lock:
                while not self._events:
                    self._wake.wait()
                event = self._events.popleft()
                if isinstance(event, _Add):
                    self._queued_points -= len(event.metrics)
            if event is None:
                return
            self._handle(event)

    def _handle(self, event: _Start | _Add | _End) -> None:
        job_id = event.job.job_id if isinstance(event, _Start) else event.job_id
        if isinstance(event, _Start):
            self._failed.discard(job_id)  # a new start (an adopted job) tries again
        try:
            if job_id not in self._failed:
                if isinstance(event, _Start):
                    self._start(event.job)
                elif isinstance(event, _Add):
                    self._add(job_id, event.metrics)
                else:
                    self._end(job_id, event.state)
        except Exception as exc:
            self._failed.add(job_id)
            self._runs.pop(job_id, None)
            log.warning(
                "the MLflow export of a job failed; the job goes on without it",
                extra={
                    "exporter": self.name,
                    "job": job_id,
                    "tracking_uri": redacted(self.tracking_uri),
                    "step": type(event).__name__.strip("_").lower(),
                    "error": repr(exc)[:500],
                },
            )
        if isinstance(event, _End):
            self._failed.discard(job_id)
            self._runs.pop(job_id, None)
            with self._lock:
                dropped = self.dropped.pop(job_id, 0)
            if dropped:
                log.warning(
                    "points of a job were dropped from its MLflow run",
                    extra={"exporter": self.name, "job": job_id, "dropped": dropped},
                )

    def _start(self, job: JobRun) -> None:
        if self._client is None:
            self._client = self._make_client(self.tracking_uri)
        client = self._client
        client.check()
        if self._experiment_id is None:
            self._experiment_id = client.experiment_id(self.experiment)
        run_id = client.find_run(self._experiment_id, job.job_id)
        if run_id is not None:  # adopted after a relay restart: go on with its run
            self._runs[job.job_id] = _Run(run_id, client.logged(run_id))
            return
        run_id = client.create_run(self._experiment_id, job.name, run_tags(job))
        self._runs[job.job_id] = _Run(run_id, {})
        client.log(run_id, [], run_params(job))

    def _add(self, job_id: str, metrics: Iterable[LoggedMetric]) -> None:
        run = self._runs.get(job_id)
        if run is None or self._client is None:
            return
        new = []
        for metric in metrics:
            at = (metric.key, metric.step)
            if run.logged.get(at) == metric.value:
                continue  # the run has it (read again after a restart, or printed twice)
            if at not in run.logged and len(run.logged) >= MAX_LOGGED_PER_RUN:
                continue
            run.logged[at] = metric.value
            new.append(metric)
        if new:
            self._client.log(run.run_id, new, {})

    def _end(self, job_id: str, state: str) -> None:
        run = self._runs.get(job_id)
        status = run_status(state)
        if run is not None and status is not None and self._client is not None:
            self._client.terminate(run.run_id, status)


class MLflowExporters:
    """One :class:`MLflowExporter` per tracking URI: the relay's, and each that a job
    file names (made when a job first needs it). A job that names none, on a relay
    that has none, is not exported to MLflow."""

    name = "mlflow"

    def __init__(
        self,
        tracking_uri: str = "",
        experiment: str = DEFAULT_EXPERIMENT,
        *,
        exporter: Callable[[str, str], MLflowExporter] = MLflowExporter,
    ) -> None:
        """``tracking_uri``: the relay's ("" for none); with one, MLflow must be installed
        (:class:`~gateway.core.exceptions.ConfigError` otherwise) and is loaded at once."""
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self._exporter = exporter
        self._by_uri: dict[str, MLflowExporter] = {}
        self._of_job: dict[str, MLflowExporter] = {}
        if tracking_uri:
            self._for(tracking_uri).begin()

    def _for(self, uri: str) -> MLflowExporter:
        exporter = self._by_uri.get(uri)
        if exporter is None:
            exporter = self._by_uri[uri] = self._exporter(uri, self.experiment)
        return exporter

    def start(self, job: JobRun) -> None:
        uri = job.tracking_uri or self.tracking_uri
        if not uri:
            return
        exporter = self._for(uri)
        self._of_job[job.job_id] = exporter
        exporter.start(job)

    def add(self, job_id: str, points: Sequence[Point]) -> None:
        exporter = self._of_job.get(job_id)
        if exporter is not None:
            exporter.add(job_id, points)

    def end(self, job_id: str, state: str) -> None:
        exporter = self._of_job.pop(job_id, None)
        if exporter is not None:
            exporter.end(job_id, state)

    def close(self) -> None:
        """Close every exporter; they drain side by side, so the wait is one timeout's."""
        closing = [
            threading.Thread(target=e.close, name="mlflow-close", daemon=True)
            for e in self._by_uri.values()
        ]
        for thread in closing:
            thread.start()
        for thread in closing:
            thread.join()
