"""The MLflow export without MLflow: names, statuses, and the exporter's queue and thread
against a fake tracking client (the real client against a real server is in
tests/e2e/test_tracking_mlflow.py)."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.core.exceptions import ConfigError
from gateway.tracking.exporters import Exporters, JobRun
from gateway.tracking.mlflow_client import (
    TAG_JOB_ID,
    LoggedMetric,
    metric_key,
    redacted,
    require_mlflow,
    run_params,
    run_status,
    run_tags,
)
from gateway.tracking.mlflow_export import MLflowExporter, MLflowExporters
from gateway.tracking.series import Point

UNIT = 5.0
"""The longest a test waits for the exporter's thread."""


def _job(job_id: str = "job-1", *, tracking_uri: str = "", **config: str) -> JobRun:
    return JobRun(
        job_id=job_id,
        name="quickstart",
        job_dir=Path("/nonexistent") / job_id,
        sites=("site-1", "site-2"),
        run_config=dict(config),
        flower="1.42.0",
        submitted_by="admin@test",
        tracking_uri=tracking_uri,
    )


@dataclass
class _FakeRun:
    experiment_id: str
    name: str
    tags: dict[str, str]
    params: dict[str, str] = field(default_factory=dict)
    history: list[tuple[str, int, float]] = field(default_factory=list)
    status: str = "RUNNING"


class FakeServer:
    """A tracking server in memory; ``down`` makes every call fail as a refused connection,
    ``gate`` (when cleared) holds every call until it is set."""

    def __init__(self) -> None:
        self.experiments: dict[str, str] = {}
        self.runs: dict[str, _FakeRun] = {}
        self.calls: list[str] = []
        self.down = False
        self.gate = threading.Event()
        self.gate.set()

    def client(self, uri: str) -> FakeClient:
        return FakeClient(self, uri)


class FakeClient:
    def __init__(self, server: FakeServer, uri: str) -> None:
        self.server = server
        self.uri = uri

    def _call(self, name: str) -> None:
        assert self.server.gate.wait(UNIT * 4), "the test never opened the gate"
        self.server.calls.append(name)
        if self.server.down:
            raise ConnectionError("connection refused")

    def check(self) -> None:
        self._call("check")

    def experiment_id(self, name: str) -> str:
        self._call("experiment_id")
        return self.server.experiments.setdefault(name, str(len(self.server.experiments)))

    def find_run(self, experiment_id: str, job_id: str) -> str | None:
        self._call("find_run")
        for run_id, run in self.server.runs.items():
            if run.experiment_id == experiment_id and run.tags.get(TAG_JOB_ID) == job_id:
                return run_id
        return None

    def create_run(self, experiment_id: str, name: str, tags: dict[str, str]) -> str:
        self._call("create_run")
        run_id = f"run-{len(self.server.runs)}"
        self.server.runs[run_id] = _FakeRun(experiment_id, name, dict(tags))
        return run_id

    def logged(self, run_id: str) -> dict[tuple[str, int], float]:
        self._call("logged")
        return {(k, s): v for k, s, v in self.server.runs[run_id].history}

    def log(self, run_id: str, metrics: Sequence[LoggedMetric], params: dict[str, str]) -> None:
        self._call("log")
        run = self.server.runs[run_id]
        run.params.update(params)
        run.history += [(m.key, m.step, m.value) for m in metrics]

    def terminate(self, run_id: str, status: str) -> None:
        self._call("terminate")
        self.server.runs[run_id].status = status


def _exporter(
    server: FakeServer, *, max_queued_points: int = 1000, close_timeout: float = UNIT
) -> MLflowExporter:
    return MLflowExporter(
        "http://mlflow.test:5000",
        "flgate",
        client=server.client,
        max_queued_points=max_queued_points,
        close_timeout=close_timeout,
    )


def test_a_jobs_final_state_is_its_runs_status_and_other_states_leave_it_running() -> None:
    assert run_status("finished") == "FINISHED"
    assert run_status("failed") == "FAILED"
    assert run_status("aborted") == "KILLED"
    assert run_status("running") is None  # a relay that stops: the job is adopted later


@pytest.mark.parametrize(
    ("tag", "key"),
    [
        ("train/train_loss", "train/train_loss"),
        ("evaluate/accuracy", "evaluate/accuracy"),
        ("train/weights[0]", "train/weights.0"),
        ("train/w[1][2]", "train/w.1.2"),
        ("server/loss (centralized)", "server/loss _centralized_"),
        ("train/a+b=c", "train/a_b_c"),
        ("train//x", "train/_/x"),
        ("../x", "_/x"),
        ("/x/", "_/x/_"),
        ("", "_"),
    ],
)
def test_a_tag_becomes_a_key_mlflow_takes(tag: str, key: str) -> None:
    assert metric_key(tag) == key


def test_a_key_is_cut_to_mlflows_length() -> None:
    assert metric_key("a" * 300) == "a" * 250


def test_the_runs_tags_name_the_job_and_its_params_are_the_run_config() -> None:
    job = _job(**{"num-server-rounds": "3", "lr": "0.1", "weird key!": "x" * 7000})
    assert run_tags(job) == {
        "flgate.job_id": "job-1",
        "flgate.sites": "site-1,site-2",
        "flgate.flower": "1.42.0",
        "flgate.submitted_by": "admin@test",
    }
    assert run_params(job) == {"num-server-rounds": "3", "lr": "0.1", "weird key_": "x" * 6000}


def test_a_uri_is_logged_without_its_credentials() -> None:
    assert redacted("https://user:secret@mlflow.test/x") == "https://***@mlflow.test/x"
    assert redacted("http://mlflow.test:5000") == "http://mlflow.test:5000"


def test_a_job_is_one_run_with_its_points_as_metrics_by_round_then_terminated() -> None:
    server = FakeServer()
    exporter = _exporter(server)
    exporter.start(_job(**{"num-server-rounds": "2"}))
    exporter.add("job-1", [Point("train/loss", 1, 0.5), Point("evaluate/acc[0]", 1, 0.25)])
    exporter.add("job-1", [Point("train/loss", 2, 0.125)])
    exporter.end("job-1", "finished")
    exporter.close()
    (run,) = server.runs.values()
    assert (run.name, run.status, run.params) == (
        "quickstart",
        "FINISHED",
        {"num-server-rounds": "2"},
    )
    assert run.tags[TAG_JOB_ID] == "job-1"
    assert run.history == [
        ("train/loss", 1, 0.5),
        ("evaluate/acc.0", 1, 0.25),
        ("train/loss", 2, 0.125),
    ]


def test_the_exporter_returns_at_once_and_calls_the_server_from_its_own_thread() -> None:
    server = FakeServer()
    server.gate.clear()  # every call of the server waits
    exporter = _exporter(server)
    exporter.start(_job())
    exporter.add("job-1", [Point("train/loss", 1, 0.5)])
    exporter.end("job-1", "aborted")
    assert server.runs == {}
    server.gate.set()
    exporter.close()
    (run,) = server.runs.values()
    assert (run.status, run.history) == ("KILLED", [("train/loss", 1, 0.5)])


def test_an_adopted_job_goes_on_with_its_run_and_points_it_has_are_not_logged_again() -> None:
    server = FakeServer()
    exporter = _exporter(server)
    exporter.start(_job())
    exporter.add("job-1", [Point("train/loss", 1, 0.5)])
    exporter.end("job-1", "running")  # the relay stops; the job goes on
    exporter.close()
    # The restarted relay adopts the job and reads its whole output again.
    exporter = _exporter(server)
    exporter.start(_job())
    exporter.add("job-1", [Point("train/loss", 1, 0.5), Point("train/loss", 2, 0.25)])
    exporter.end("job-1", "finished")
    exporter.close()
    (run,) = server.runs.values()
    assert run.status == "FINISHED"
    assert run.history == [("train/loss", 1, 0.5), ("train/loss", 2, 0.25)]
    assert server.calls.count("create_run") == 1


def test_a_point_printed_twice_is_logged_once_and_a_changed_value_again() -> None:
    server = FakeServer()
    exporter = _exporter(server)
    exporter.start(_job())
    exporter.add("job-1", [Point("train/loss", 1, 0.5)])
    exporter.add("job-1", [Point("train/loss", 1, 0.5), Point("train/loss", 1, 0.75)])
    exporter.close()
    (run,) = server.runs.values()
    assert run.history == [("train/loss", 1, 0.5), ("train/loss", 1, 0.75)]


def test_a_full_queue_drops_points_counts_them_and_logs_once_per_job(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = FakeServer()
    server.gate.clear()
    exporter = _exporter(server, max_queued_points=3)
    exporter.start(_job())
    exporter.add("job-1", [Point("a", 1, 1.0), Point("b", 1, 1.0)])
    with caplog.at_level(logging.WARNING, logger="gateway.tracking.mlflow_export"):
        exporter.add("job-1", [Point("a", 2, 2.0), Point("b", 2, 2.0)])  # over 3: dropped
        exporter.add("job-1", [Point("a", 3, 3.0), Point("b", 3, 3.0)])
        exporter.add("job-1", [Point("a", 4, 4.0)])  # fits
        assert exporter.dropped == {"job-1": 4}
        full = [r for r in caplog.records if "queue is full" in r.getMessage()]
        assert len(full) == 1
        assert full[0].__dict__["job"] == "job-1"
        exporter.end("job-1", "finished")  # an end is never dropped
        server.gate.set()
        exporter.close()
    (run,) = server.runs.values()
    assert run.status == "FINISHED"
    assert run.history == [("a", 1, 1.0), ("b", 1, 1.0), ("a", 4, 4.0)]
    told = [r for r in caplog.records if "were dropped" in r.getMessage()]
    assert [r.__dict__["dropped"] for r in told] == [4]
    assert exporter.dropped == {}


def test_a_server_that_is_down_is_logged_once_per_job_and_the_next_job_tries_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = FakeServer()
    server.down = True
    exporter = _exporter(server)
    with caplog.at_level(logging.WARNING, logger="gateway.tracking.mlflow_export"):
        exporter.start(_job("job-1"))
        for step in range(1, 4):
            exporter.add("job-1", [Point("train/loss", step, 0.5)])
        exporter.end("job-1", "finished")
        exporter.start(_job("job-2"))
        exporter.close()
    failed = [r for r in caplog.records if "export of a job failed" in r.getMessage()]
    assert [(r.__dict__["job"], r.__dict__["step"]) for r in failed] == [
        ("job-1", "start"),
        ("job-2", "start"),
    ]
    assert "ConnectionError" in failed[0].__dict__["error"]
    assert failed[0].__dict__["tracking_uri"] == "http://mlflow.test:5000"
    # Nothing else was asked of the server for job-1 after its first failure.
    assert server.calls == ["check", "check"]


def test_close_waits_for_the_queue_only_so_long(caplog: pytest.LogCaptureFixture) -> None:
    server = FakeServer()
    server.gate.clear()  # a server that never answers
    exporter = _exporter(server, close_timeout=0.2)
    exporter.start(_job())
    exporter.add("job-1", [Point("train/loss", 1, 0.5)])
    with caplog.at_level(logging.WARNING, logger="gateway.tracking.mlflow_export"):
        exporter.close()
    assert any("did not drain in time" in r.getMessage() for r in caplog.records)
    exporter.add("job-1", [Point("train/loss", 2, 0.5)])  # after close: nowhere, and no error
    server.gate.set()


def test_a_job_naming_its_server_gets_an_exporter_of_its_own_made_on_first_use() -> None:
    made: list[str] = []
    servers = {"http://relay.test": FakeServer(), "http://job.test": FakeServer()}

    def exporter(uri: str, experiment: str) -> MLflowExporter:
        made.append(uri)
        return MLflowExporter(uri, experiment, client=servers[uri].client)

    exporters = MLflowExporters("http://relay.test", "flgate", exporter=exporter)
    assert made == ["http://relay.test"]
    exporters.start(_job("job-1"))
    exporters.start(_job("job-2", tracking_uri="http://job.test"))
    exporters.start(_job("job-3", tracking_uri="http://job.test"))
    for job_id in ("job-1", "job-2", "job-3"):
        exporters.add(job_id, [Point("train/loss", 1, 0.5)])
        exporters.end(job_id, "finished")
    exporters.close()
    assert made == ["http://relay.test", "http://job.test"]
    assert [r.tags[TAG_JOB_ID] for r in servers["http://relay.test"].runs.values()] == ["job-1"]
    assert [r.tags[TAG_JOB_ID] for r in servers["http://job.test"].runs.values()] == [
        "job-2",
        "job-3",
    ]


def test_a_relay_without_a_server_exports_only_the_jobs_that_name_one() -> None:
    server = FakeServer()
    exporters = MLflowExporters(
        "",
        "flgate",
        exporter=lambda uri, experiment: MLflowExporter(uri, experiment, client=server.client),
    )
    exporters.start(_job("job-1"))
    exporters.add("job-1", [Point("train/loss", 1, 0.5)])
    exporters.end("job-1", "finished")
    exporters.start(_job("job-2", tracking_uri="http://job.test"))
    exporters.end("job-2", "finished")
    exporters.close()
    assert [r.tags[TAG_JOB_ID] for r in server.runs.values()] == ["job-2"]


def test_without_mlflow_a_tracking_uri_is_a_config_error_saying_what_to_install(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(ConfigError, match=r"pip install 'flower-gateway\[mlflow\]'"):
        require_mlflow()
    with pytest.raises(ConfigError, match="mlflow"):
        MLflowExporters("http://relay.test")
    # A job that names a server on such a relay: logged once, and the job goes on.
    exporters = Exporters([MLflowExporters()])
    with caplog.at_level(logging.WARNING, logger="gateway.tracking.exporters"):
        exporters.start(_job(tracking_uri="http://job.test"))
        exporters.add("job-1", [Point("train/loss", 1, 0.5)])
        exporters.end("job-1", "finished")
    (record,) = caplog.records
    assert "flower-gateway[mlflow]" in record.__dict__["error"]


def test_the_relay_loads_mlflow_only_when_it_exports_to_it() -> None:
    """Importing the relay (and its exporters) must not import MLflow: it takes seconds
    and about 200 MB, and a relay without a tracking URI may not have it at all."""
    probe = "import sys, gateway.control.relay_app; print('mlflow' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "False"
