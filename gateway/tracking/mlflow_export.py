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
(:meth:`MlflowTrackingClient.check`), so a server that is down costs a connection
attempt, not MLflow's minutes of retries.

MLflow itself (about 200 MB and seconds to import) is imported by that thread,
never by the relay's loop; :func:`require_mlflow` says at the relay's start whether
it is installed. The seam to MLflow is :class:`TrackingClient`, a few calls in
this module's own terms; :class:`MlflowTrackingClient` makes them with
``mlflow.tracking.MlflowClient``, a fake makes them in the unit tests.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from ..core.exceptions import ConfigError
from .exporters import JobRun
from .series import Point

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "flgate"
INSTALL_HINT = "pip install 'flower-gateway[mlflow]' (or: pip install mlflow-skinny)"

SUPPRESS_URL_PRINTING = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
STATUS_OF_STATE = {"finished": "FINISHED", "failed": "FAILED", "aborted": "KILLED"}
"""A job's final state -> its MLflow run's status. Any other state (a relay that
stops while the job goes on, to be adopted at its restart) leaves the run RUNNING."""

TAG_JOB_ID = "flgate.job_id"
TAG_SITES = "flgate.sites"
TAG_FLOWER = "flgate.flower"
TAG_SUBMITTED_BY = "flgate.submitted_by"

MAX_QUEUED_POINTS = 50_000
"""Points waiting for the thread, all jobs together; beyond them, points are dropped."""
CLOSE_TIMEOUT = 10.0
"""How long :meth:`MLflowExporter.close` waits for the queue to drain."""
CHECK_TIMEOUT = 5.0
"""How long the look at the server before a job's first call may take."""
MAX_LOGGED_PER_RUN = 100_000
"""Points per run remembered to skip those logged already (the job store's own cap)."""

# MLflow's limits (mlflow.utils.validation), checked by the server: over them a whole
# batch is refused, so names and values are cut to fit and batches split.
MAX_KEY_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100

_INDEX_RE = re.compile(r"\[(\d+)\]")
_NOT_IN_KEY_RE = re.compile(r"[^/\w.\- :]")
"""What MLflow refuses in a metric or param name (it takes letters, digits, ``_``, ``-``,
``.``, spaces, ``:`` and ``/``)."""


@dataclass(frozen=True, kw_only=True)
class MLflowSettings:
    """The relay's MLflow server (``flgate relay start --mlflow-tracking-uri``)."""

    tracking_uri: str = ""
    """Where every job's series go, unless its job file names a server; "" for nowhere."""
    experiment: str = DEFAULT_EXPERIMENT
    """The MLflow experiment that holds the jobs' runs (created when missing)."""


def require_mlflow() -> None:
    """Refuse to go on without MLflow's client, saying what to install (cheap: nothing
    is imported)."""
    try:
        found = importlib.util.find_spec("mlflow") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ConfigError(
            f"MLflow export needs MLflow's client, which is not installed: {INSTALL_HINT}"
        )


def run_status(state: str) -> str | None:
    """The status a job's run ends with, or ``None`` to leave it running."""
    return STATUS_OF_STATE.get(state)


def metric_key(tag: str) -> str:
    """A series' tag as an MLflow key: as it is when MLflow takes it (``train/loss``);
    a list item ``name[0]`` becomes ``name.0``, any other character MLflow refuses
    ``_``, and a part MLflow would read as a path (empty, ``.``, ``..``) ``_``."""
    key = _NOT_IN_KEY_RE.sub("_", _INDEX_RE.sub(r".\1", tag))
    parts = [part if part not in ("", ".", "..") else "_" for part in key.split("/")]
    key = "/".join(parts)[:MAX_KEY_LENGTH].rstrip("/")
    return key or "_"


def run_tags(job: JobRun) -> dict[str, str]:
    """The tags of a job's run (MLflow's own ``mlflow.runName`` comes with the name)."""
    return {
        TAG_JOB_ID: job.job_id,
        TAG_SITES: ",".join(job.sites)[:MAX_TAG_VALUE_LENGTH],
        TAG_FLOWER: job.flower,
        TAG_SUBMITTED_BY: job.submitted_by[:MAX_TAG_VALUE_LENGTH],
    }


def run_params(job: JobRun) -> dict[str, str]:
    """The job's run-config as the run's params."""
    return {
        metric_key(key): value[:MAX_PARAM_VALUE_LENGTH] for key, value in job.run_config.items()
    }


def redacted(uri: str) -> str:
    """``uri`` without a user name or password, for logs."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass(frozen=True)
class LoggedMetric:
    """One metric value to log: ``key`` at ``step``, at ``timestamp`` (ms since the epoch)."""

    key: str
    step: int
    value: float
    timestamp: int


class TrackingClient(Protocol):
    """What the exporter asks of a tracking server, in its own terms."""

    def check(self) -> None:
        """Raise at once when the server cannot be reached now."""

    def experiment_id(self, name: str) -> str:
        """The experiment called ``name``, created if there is none."""

    def find_run(self, experiment_id: str, job_id: str) -> str | None:
        """The id of the run tagged with ``job_id``, if there is one."""

    def create_run(self, experiment_id: str, name: str, tags: dict[str, str]) -> str:
        """A new run; its id."""

    def logged(self, run_id: str) -> dict[tuple[str, int], float]:
        """The last value the run has of each (key, step)."""

    def log(self, run_id: str, metrics: Sequence[LoggedMetric], params: dict[str, str]) -> None: ...

    def terminate(self, run_id: str, status: str) -> None: ...


def _quiet_mlflow_logs() -> None:
    """MLflow gives its logger a handler of its own on stderr at import, which would
    bypass the relay's log format (``--log-format json``), and logs a line per run it
    ends ("View run ..."): its records go through the relay's handlers instead, from
    warnings up."""
    mlflow_log = logging.getLogger("mlflow")
    mlflow_log.handlers.clear()
    mlflow_log.propagate = True
    mlflow_log.setLevel(logging.WARNING)


class MlflowTrackingClient:
    """:class:`TrackingClient` with ``mlflow.tracking.MlflowClient`` (imported here)."""

    def __init__(self, tracking_uri: str) -> None:
        from mlflow.entities import Metric, Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        _quiet_mlflow_logs()
        self._uri = tracking_uri
        self._client = MlflowClient(tracking_uri=tracking_uri)
        self._metric = Metric
        self._param = Param
        self._error = MlflowException

    def check(self) -> None:
        """For an http(s) server: any answer will do, even an error page or a TLS
        handshake that fails here (MLflow may trust other certificates); no answer
        (refused, unknown host, timeout) raises, without MLflow's retries."""
        if urlsplit(self._uri).scheme not in ("http", "https"):
            return
        import requests

        try:
            requests.get(self._uri, timeout=CHECK_TIMEOUT, allow_redirects=False).close()
        except requests.exceptions.SSLError:
            return
        except requests.RequestException as exc:
            raise ConnectionError(
                f"the MLflow server at {redacted(self._uri)} does not answer: {exc}"
            ) from exc

    def experiment_id(self, name: str) -> str:
        found = self._client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(self._client.create_experiment(name))
        except self._error:
            found = self._client.get_experiment_by_name(name)  # another relay made it first
            if found is None:
                raise
            return str(found.experiment_id)

    def find_run(self, experiment_id: str, job_id: str) -> str | None:
        quoted = job_id.replace("\\", "\\\\").replace("'", "\\'")
        runs = self._client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{TAG_JOB_ID}` = '{quoted}'",
            max_results=1,
            order_by=["attributes.start_time ASC"],
        )
        return str(runs[0].info.run_id) if runs else None

    def create_run(self, experiment_id: str, name: str, tags: dict[str, str]) -> str:
        run = self._client.create_run(experiment_id, tags=tags, run_name=name)
        return str(run.info.run_id)

    def logged(self, run_id: str) -> dict[tuple[str, int], float]:
        logged: dict[tuple[str, int], float] = {}
        for key in self._client.get_run(run_id).data.metrics:
            for metric in self._client.get_metric_history(run_id, key):
                logged[(key, int(metric.step))] = float(metric.value)
        return logged

    def log(self, run_id: str, metrics: Sequence[LoggedMetric], params: dict[str, str]) -> None:
        items = sorted(params.items())
        for batch in chunks(items, MAX_PARAMS_PER_BATCH):
            self._client.log_batch(run_id, params=[self._param(k, v) for k, v in batch])
        for batch in chunks(metrics, MAX_METRICS_PER_BATCH):
            self._client.log_batch(
                run_id,
                metrics=[self._metric(m.key, m.value, m.timestamp, m.step) for m in batch],
            )

    def terminate(self, run_id: str, status: str) -> None:
        self._client.set_terminated(run_id, status=status)


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
