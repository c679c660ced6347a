"""MLflow in the exporter's own terms: what MLflow takes as names and values, and the
few calls the exporter makes (:class:`TrackingClient`), with MLflow's client
(:class:`MlflowTrackingClient`) or, in the unit tests, a fake.

Pure but for :class:`MlflowTrackingClient`, which imports MLflow (about 200 MB and
seconds to import) when it is made: by the exporter's thread, never by the relay's
loop. :func:`require_mlflow` says whether MLflow is installed without importing it.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from ..core.exceptions import ConfigError
from .exporters import JobRun

INSTALL_HINT = "pip install 'flower-gateway[mlflow]' (or: pip install mlflow-skinny)"

STATUS_OF_STATE = {"finished": "FINISHED", "failed": "FAILED", "aborted": "KILLED"}
"""A job's final state -> its MLflow run's status. Any other state (a relay that
stops while the job goes on, to be adopted at its restart) leaves the run RUNNING."""

TAG_JOB_ID = "flgate.job_id"
TAG_SITES = "flgate.sites"
TAG_FLOWER = "flgate.flower"
TAG_SUBMITTED_BY = "flgate.submitted_by"

CHECK_TIMEOUT = 5.0
"""How long the look at the server before a job's first call may take."""

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
