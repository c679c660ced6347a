"""Every job's series in MLflow: a real relay and two sites, the relay given a real local
``mlflow server`` (SQLite store), one real job, read back with MLflow's own client.

The exporter then goes on with a job's run as a restarted relay does, against the same
server; and the same federation runs a job with the MLflow server stopped: the job
finishes as before, and the relay logs the failure once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.proto.control_pb2 import JobInfo
from gateway.tracking.exporters import JobRun
from gateway.tracking.mlflow_client import metric_key
from gateway.tracking.mlflow_export import MLflowExporter
from gateway.tracking.series import Point
from tests.support.federation import RunningFederation, until_state, wait_online
from tests.support.mlflow import MlflowServer, mlflow_missing, running_mlflow_server
from tests.support.paths import QUICKSTART

pytestmark = pytest.mark.e2e

SITES = ["site-1", "site-2"]
FAILED_EXPORT = "the MLflow export of a job failed"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    if (reason := mlflow_missing()) is not None:
        pytest.skip(reason)
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow")) as server:
        yield server


@pytest.fixture(scope="module")
def federation(
    tmp_path_factory: pytest.TempPathFactory, mlflow_server: MlflowServer
) -> Iterator[RunningFederation]:
    """A relay exporting to ``mlflow_server`` (default experiment) and two sites; the
    MLflow server starts meanwhile (it is ready when this fixture is)."""
    fed = RunningFederation.create(tmp_path_factory.mktemp("fed"), SITES)
    try:
        fed.start_relay(["--mlflow-tracking-uri", mlflow_server.uri])
        for site in SITES:
            fed.start_site(site)
        mlflow_server.wait_ready()
        yield fed
    finally:
        fed.close()


async def _run_job(fed: RunningFederation, run_config: str) -> JobInfo:
    admin = fed.admin()
    try:
        await wait_online(admin, len(SITES))
        job = await admin.submit(QUICKSTART, sites=SITES, run_config=run_config)
        return await until_state(admin, job.job_id)
    finally:
        await admin.aclose()


def _series(fed: RunningFederation, job_id: str) -> dict[str, dict[int, float]]:
    printed = json.loads(fed.cli("job", "metrics", job_id, "--json"))["series"]
    return {tag: {int(step): value for step, value in by.items()} for tag, by in printed.items()}


async def test_a_jobs_series_are_one_mlflow_run_equal_to_flgate_job_metrics(
    federation: RunningFederation, mlflow_server: MlflowServer
) -> None:
    from mlflow.tracking import MlflowClient

    info = await _run_job(federation, "num-server-rounds=2")
    assert info.state == "finished", info
    series = await asyncio.to_thread(_series, federation, info.job_id)
    assert series, "the job has no series to compare"

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    experiment = client.get_experiment_by_name("flgate")
    assert experiment is not None
    # The run ends in the exporter's thread, soon after the job.
    deadline = time.monotonic() + 60
    while True:
        runs = client.search_runs([experiment.experiment_id])
        if (runs and runs[0].info.status != "RUNNING") or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    (run,) = runs
    assert run.info.status == "FINISHED"
    assert run.info.run_name == info.name
    assert run.data.params == {"num-server-rounds": "2"}
    tags = run.data.tags
    assert tags["flgate.job_id"] == info.job_id
    assert tags["flgate.sites"] == "site-1,site-2"
    assert tags["flgate.flower"] == info.flower == "1.42.0"
    assert tags["flgate.submitted_by"] == federation.admin_name
    # Every metric's history is the job's series, value for value (doubles on both sides).
    keys = {metric_key(tag): tag for tag in series}
    assert set(run.data.metrics) == set(keys)
    for key, tag in keys.items():
        history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
        assert sorted(history) == sorted(series[tag].items()), key
    out = (federation.root / "relay.out").read_text()
    assert f"relay exports job series to MLflow at {mlflow_server.uri}" in out
    assert FAILED_EXPORT not in out
    assert "View run" not in out  # MLflow's own print of the run's URL is off


def test_a_job_adopted_after_a_relay_restart_goes_on_with_its_run(
    mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The MLflow side of an adoption, against the real server: the restarted relay's
    exporter finds the job's run by its tag, skips the points the run has (the adopted
    run's output is read again from its start) and terminates it at the job's end."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    job = JobRun(
        job_id="adopted-0001",
        name="adopted",
        job_dir=Path("/nonexistent"),
        sites=tuple(SITES),
        run_config={"num-server-rounds": "3"},
        flower="1.42.0",
        submitted_by="admin@test",
    )
    first = MLflowExporter(mlflow_server.uri, "adoption", close_timeout=60)
    first.start(job)
    first.add(job.job_id, [Point("train/loss", 1, 0.5), Point("train/acc[0]", 1, 0.25)])
    first.end(job.job_id, "running")  # the relay stops; the job goes on without it
    first.close()
    again = MLflowExporter(mlflow_server.uri, "adoption", close_timeout=60)
    again.start(job)
    again.add(job.job_id, [Point("train/loss", 1, 0.5), Point("train/acc[0]", 1, 0.25)])
    again.add(job.job_id, [Point("train/loss", 2, 0.125)])
    again.end(job.job_id, "finished")
    again.close()

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    experiment = client.get_experiment_by_name("adoption")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert (run.info.status, run.data.params) == ("FINISHED", {"num-server-rounds": "3"})
    histories = {
        key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
        for key in run.data.metrics
    }
    assert histories == {"train/loss": [(1, 0.5), (2, 0.125)], "train/acc.0": [(1, 0.25)]}


async def test_with_the_mlflow_server_down_the_job_finishes_and_the_relay_logs_it_once(
    federation: RunningFederation, mlflow_server: MlflowServer
) -> None:
    mlflow_server.stop()
    started = time.monotonic()
    info = await _run_job(federation, "num-server-rounds=1")
    took = time.monotonic() - started
    assert info.state == "finished", info
    assert await asyncio.to_thread(_series, federation, info.job_id)
    failures = [
        line
        for line in (federation.root / "relay.out").read_text().splitlines()
        if FAILED_EXPORT in line
    ]
    assert len(failures) == 1, failures
    assert f"job={info.job_id!r}" in failures[0]
    assert "exporter='mlflow'" in failures[0]
    assert "step='start'" in failures[0]
    assert took < 120, f"the job took {took:.0f} s"
