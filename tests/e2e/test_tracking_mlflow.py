"""Every job's series in MLflow: a real relay and two sites, the relay given a real local
``mlflow server`` (SQLite store), every example job at once, read back with MLflow's own
client and compared with what each job's own ServerApp logged.

For each example job, ``flgate job metrics`` shows the per-round server metrics of the app's
own log (``flgate job logs ID --source server``): those of its ``FLGATE-RESULT`` line, and,
read apart from the gateway's code, those of Flower's own ``Aggregated MetricRecord`` lines;
and its MLflow run (found by the tag ``flgate.job_id``) has the same metric histories.

The exporter then goes on with a job's run as a restarted relay does, against the same
server; and the same federation runs a job with the MLflow server stopped: the job
finishes as before, and the relay logs the failure once.
"""

from __future__ import annotations

import ast
import asyncio
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from gateway.control.jobs.results import parse_result, summary_from_result
from gateway.proto.control_pb2 import JobInfo
from gateway.tracking.exporters import JobRun
from gateway.tracking.mlflow_client import metric_key
from gateway.tracking.mlflow_export import MLflowExporter
from gateway.tracking.series import Point
from tests.support.federation import RunningFederation, until_state, wait_online
from tests.support.mlflow import MlflowServer, mlflow_missing, running_mlflow_server
from tests.support.paths import QUICKSTART, REPO

if TYPE_CHECKING:
    from mlflow.entities import Run

pytestmark = pytest.mark.e2e

SITES = ["site-1", "site-2"]
FAILED_EXPORT = "the MLflow export of a job failed"
EXAMPLE_JOBS = {
    "quickstart-numpy": QUICKSTART,
    "sklearn-digits": REPO / "jobs" / "sklearn-digits",
    "torch-digits": REPO / "jobs" / "torch-digits",
}
ROUNDS = 2
RUN_CONFIG = f"num-server-rounds={ROUNDS}"

Series = dict[str, dict[int, float]]
"""Each metric (``phase/name``) by round."""


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


@dataclass(frozen=True)
class Ran:
    """One example job, ended: its summary, ``flgate job metrics``, its ServerApp's log."""

    info: JobInfo
    series: Series
    server_log: str


@pytest.fixture(scope="module")
def example_jobs(federation: RunningFederation) -> dict[str, Ran]:
    """Every example job, submitted at once with ``num-server-rounds=2`` and run to its
    end in the same federation, by name; then what ``flgate`` prints of each."""

    async def run_all() -> list[JobInfo]:
        admin = federation.admin()
        try:
            await wait_online(admin, len(SITES))
            submitted = [
                await admin.submit(job_dir, sites=SITES, run_config=RUN_CONFIG)
                for job_dir in EXAMPLE_JOBS.values()
            ]
            return await asyncio.gather(*(until_state(admin, j.job_id) for j in submitted))
        finally:
            await admin.aclose()

    async def printed(info: JobInfo) -> Ran:
        series, log = await asyncio.gather(
            asyncio.to_thread(_series, federation, info.job_id),
            asyncio.to_thread(federation.cli, "job", "logs", info.job_id, "--source", "server"),
        )
        return Ran(info, series, log)

    async def all_jobs() -> list[Ran]:
        infos = await run_all()
        for info in infos:
            assert info.state == "finished", info
        return await asyncio.gather(*(printed(info) for info in infos))

    return dict(zip(EXAMPLE_JOBS, asyncio.run(all_jobs()), strict=True))


async def _run_job(fed: RunningFederation, run_config: str) -> JobInfo:
    admin = fed.admin()
    try:
        await wait_online(admin, len(SITES))
        job = await admin.submit(QUICKSTART, sites=SITES, run_config=run_config)
        return await until_state(admin, job.job_id)
    finally:
        await admin.aclose()


def _series(fed: RunningFederation, job_id: str) -> Series:
    printed = json.loads(fed.cli("job", "metrics", job_id, "--json"))["series"]
    return {tag: {int(step): value for step, value in by.items()} for tag, by in printed.items()}


def _result_metrics(server_log: str) -> Series:
    """The per-round metrics of the app's own ``FLGATE-RESULT`` line in its log."""
    result = parse_result(server_log)
    assert result is not None, f"no FLGATE-RESULT line in the server log: {server_log[-3000:]}"
    assert result["rounds"] == ROUNDS, result
    return summary_from_result(result).metrics


_ROUND_RE = re.compile(r"\[ROUND (\d+)/\d+\]")
_PHASE_RE = re.compile(r"\baggregate_(train|evaluate):")
_RECORD_RE = re.compile(r"Aggregated MetricRecord: (\{.*\})\s*$")


def _flower_log_metrics(server_log: str) -> Series:
    """The metrics of Flower's own log lines, read apart from the gateway's parser:
    FedAvg logs ``[ROUND n/N]``, then ``aggregate_train:`` (or ``aggregate_evaluate:``)
    and the ``Aggregated MetricRecord: {...}`` of that phase and round. The app's
    ``FLGATE-RESULT`` line is left out."""
    metrics: Series = {}
    server_round, phase = 0, ""
    for line in server_log.splitlines():
        if "FLGATE-RESULT" in line:
            continue
        if match := _ROUND_RE.search(line):
            server_round = int(match.group(1))
        elif match := _PHASE_RE.search(line):
            phase = match.group(1)
        elif match := _RECORD_RE.search(line):
            assert server_round and phase, f"a record outside a round or phase: {line}"
            record = ast.literal_eval(match.group(1))
            for name, value in record.items():
                metrics.setdefault(f"{phase}/{name}", {})[server_round] = float(value)
    return metrics


async def _mlflow_run(mlflow_server: MlflowServer, job_id: str) -> Run:
    """The job's MLflow run, found by its tag ``flgate.job_id``, once it has ended (the
    exporter's thread ends it soon after the job)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    experiment = client.get_experiment_by_name("flgate")
    assert experiment is not None
    deadline = time.monotonic() + 60
    while True:
        runs = client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.`flgate.job_id` = '{job_id}'"
        )
        if (runs and runs[0].info.status != "RUNNING") or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert len(runs) == 1, [r.info for r in runs]
    return runs[0]


@pytest.mark.parametrize("job", EXAMPLE_JOBS)
def test_flgate_job_metrics_equal_the_flgate_result_line_of_the_jobs_server_log(
    example_jobs: dict[str, Ran], job: str
) -> None:
    ran = example_jobs[job]
    expected = _result_metrics(ran.server_log)
    assert expected, "the FLGATE-RESULT line has no metrics to compare"
    assert {step for by in expected.values() for step in by} == set(range(1, ROUNDS + 1))
    assert ran.series == expected


@pytest.mark.parametrize("job", EXAMPLE_JOBS)
def test_flgate_job_metrics_equal_flowers_aggregated_metric_records_in_the_jobs_server_log(
    example_jobs: dict[str, Ran], job: str
) -> None:
    ran = example_jobs[job]
    logged = _flower_log_metrics(ran.server_log)
    assert logged, f"no Aggregated MetricRecord line in the server log: {ran.server_log[-3000:]}"
    assert {step for by in logged.values() for step in by} == set(range(1, ROUNDS + 1))
    # These apps' records carry every metric they report: all of the series, no more.
    assert ran.series == logged


@pytest.mark.parametrize("job", EXAMPLE_JOBS)
async def test_each_job_is_one_finished_mlflow_run_with_its_name_params_and_tags(
    example_jobs: dict[str, Ran],
    federation: RunningFederation,
    mlflow_server: MlflowServer,
    job: str,
) -> None:
    info = example_jobs[job].info
    run = await _mlflow_run(mlflow_server, info.job_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == info.name == job
    assert run.data.params == {"num-server-rounds": str(ROUNDS)}
    tags = run.data.tags
    assert tags["flgate.job_id"] == info.job_id
    assert tags["flgate.sites"] == "site-1,site-2"
    assert tags["flgate.flower"] == info.flower == "1.42.0"
    assert tags["flgate.submitted_by"] == federation.admin_name
    out = (federation.root / "relay.out").read_text()
    assert f"relay exports job series to MLflow at {mlflow_server.uri}" in out
    assert FAILED_EXPORT not in out
    assert "View run" not in out  # MLflow's own print of the run's URL is off


@pytest.mark.parametrize("job", EXAMPLE_JOBS)
async def test_each_jobs_mlflow_run_has_the_metric_histories_of_its_server_log(
    example_jobs: dict[str, Ran], mlflow_server: MlflowServer, job: str
) -> None:
    from mlflow.tracking import MlflowClient

    ran = example_jobs[job]
    expected = _result_metrics(ran.server_log)
    run = await _mlflow_run(mlflow_server, ran.info.job_id)
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    # Every metric's history is the app's own, value for value (doubles on both sides).
    keys = {metric_key(tag): tag for tag in expected}
    assert set(run.data.metrics) == set(keys)
    histories = {
        keys[key]: sorted(
            (m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)
        )
        for key in keys
    }
    assert histories == {tag: sorted(by.items()) for tag, by in expected.items()}


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
