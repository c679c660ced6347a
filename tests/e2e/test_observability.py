"""A real Prometheus scrapes a real relay and two sites while the quickstart job runs.

The sites reach the relay through the fault-injection proxy (connections cut every
1-3 s, chunks delayed and now and then cut short, as in ``test_faults``), so retries
and answers from the dedup store happen; relay and sites log as JSON. Prometheus's
figures, read through its own HTTP API once every process has settled, must equal
the relay's own count of the job's Fleet calls and the lines the relay and the sites
logged.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.harness.faultproxy import FaultConfig, FaultProxy
from gateway.proto.control_pb2 import JobInfo
from tests.support.federation import RunningFederation, until_state, wait_online
from tests.support.paths import QUICKSTART
from tests.support.prometheus import RunningPrometheus, prometheus_binary

SITES = ["site-1", "site-2"]
FAULTS = FaultConfig(
    seed=20261202, drop_every=(1.0, 3.0), delay_ms=(20.0, 80.0), truncate_probability=0.02
)
METRICS = ["--metrics-listen", "127.0.0.1:0", "--log-format", "json"]
SETTLE_SECONDS = 30.0


def _logged(out: Path, job: str | None = None) -> Counter[str]:
    """How often each message was logged, from the process's JSON log lines (those
    about ``job`` only, if given: a site also retries its polls, which are no job's)."""
    counts: Counter[str] = Counter()
    for line in out.read_text().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            assert {"time", "level", "logger", "message"} <= record.keys(), record
            if job is None or record.get("job") == job:
                counts[record["message"]] += 1
    return counts


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _sum(prometheus: RunningPrometheus, expr: str) -> float:
    value = prometheus.value(f"sum({expr})")
    return 0.0 if value is None else value


@dataclass
class Observed:
    job: JobInfo
    figures: dict[str, float] = field(default_factory=dict)
    """Prometheus's figures once everything settled, by name."""
    relay_logged: Counter[str] = field(default_factory=Counter)
    sites_logged: Counter[str] = field(default_factory=Counter)
    """The sites' log lines about the job, both sites together."""
    health: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Per process, the statuses of /healthz and /readyz."""
    sites_json: list[dict[str, object]] = field(default_factory=list)


QUERIES = {
    "calls": 'flgate_relay_fleet_calls_total{{job_id="{job}"}}',
    "site_calls": 'flgate_site_fleet_calls_total{{job_id="{job}"}}',
    "pull_latencies": 'flgate_site_fleet_call_seconds_count{{method="PullMessages"}}',
    "push_latencies": 'flgate_site_fleet_call_seconds_count{{method="PushMessages"}}',
    "superlink_pushes": 'flgate_relay_superlink_call_seconds_count{{method="PushMessages"}}',
    "sites_online": "flgate_relay_sites_online",
    "sites_connected": "flgate_site_connected",
    "finished": 'flgate_relay_jobs{{state="finished"}}',
    "retries_at_relay": "flgate_relay_retries_total",
    "cached": 'flgate_relay_dedup_answers_total{{kind="cached"}}',
    "joined": 'flgate_relay_dedup_answers_total{{kind="joined"}}',
    "site_retries": 'flgate_site_retries_total{{job_id="{job}"}}',
    "supernodes": "flgate_site_supernodes_running",
}


async def _observe(fed: RunningFederation, root: Path) -> Observed:
    fed.start_relay(extra=METRICS)
    relay_metrics = fed.metrics_address("relay")
    proxy = FaultProxy("127.0.0.1", fed.relay_port, FAULTS)
    await proxy.start()
    prometheus: RunningPrometheus | None = None
    admin = fed.admin()
    try:
        for name in SITES:
            fed.start_site(name, extra=METRICS, relay_url=f"grpcs://localhost:{proxy.port}")
        sites = {name: fed.metrics_address(name) for name in SITES}
        prometheus = await asyncio.to_thread(
            RunningPrometheus.start,
            root / "prometheus",
            {"relay": [relay_metrics], "sites": list(sites.values())},
        )
        await wait_online(admin, len(SITES))
        submitted = await admin.submit(QUICKSTART, sites=SITES, name="observed")
        job = await until_state(admin, submitted.job_id)
        queries = {name: query.format(job=job.job_id) for name, query in QUERIES.items()}
        # Settled: the SuperNodes are stopped, the relay's count no longer moves, and
        # Prometheus has scraped it (bounded: a figure that never matches fails below).
        deadline = time.monotonic() + SETTLE_SECONDS
        figures: dict[str, float] = {}
        while time.monotonic() < deadline:
            job = await admin.get(submitted.job_id)
            figures = {n: _sum(prometheus, q) for n, q in queries.items()}
            if figures["supernodes"] == 0 and figures["calls"] == job.fleet_calls:
                await asyncio.sleep(3 * 1.0)  # three more scrapes of the settled state
                job = await admin.get(submitted.job_id)
                figures = {n: _sum(prometheus, q) for n, q in queries.items()}
                if figures["calls"] == job.fleet_calls:
                    break
            await asyncio.sleep(1.0)
        health = {
            name: (
                _get(f"http://{address}/healthz")[0],
                _get(f"http://{address}/readyz")[0],
            )
            for name, address in {"relay": relay_metrics, **sites}.items()
        }
        sites_json = json.loads(fed.cli("job", "sites", "--json"))
    finally:
        await admin.aclose()
        fed.close()  # the processes' logs are complete once they stopped
        await proxy.aclose()
        if prometheus is not None:
            prometheus.stop()
    return Observed(
        job=job,
        figures=figures,
        relay_logged=_logged(root / "relay.out"),
        sites_logged=sum((_logged(root / f"{n}.out", job.job_id) for n in SITES), Counter()),
        health=health,
        sites_json=sites_json,
    )


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    prometheus_binary()  # skips, with the reason, where Prometheus is not installed
    root = tmp_path_factory.mktemp("observed")
    fed = RunningFederation.create(root, SITES)
    try:
        yield asyncio.run(_observe(fed, root))
    finally:
        fed.close()


def test_the_job_finished_through_the_faults(observed: Observed) -> None:
    assert observed.job.state == "finished", observed.job


def test_prometheus_counts_the_jobs_fleet_calls_as_the_relay_does(observed: Observed) -> None:
    figures = observed.figures
    print(f"figures={figures} relay fleet_calls={observed.job.fleet_calls}")
    assert observed.job.fleet_calls > 50
    assert figures["calls"] == observed.job.fleet_calls


def test_latency_histograms_are_filled_for_pulls_and_pushes(observed: Observed) -> None:
    assert observed.figures["pull_latencies"] > 0
    assert observed.figures["push_latencies"] > 0
    assert observed.figures["superlink_pushes"] > 0


def test_two_sites_are_online_and_the_job_is_counted_as_finished(observed: Observed) -> None:
    assert observed.figures["sites_online"] == 2
    assert observed.figures["sites_connected"] == 2
    assert observed.figures["finished"] == 1


def test_retries_and_dedup_answers_equal_what_the_relay_logged(observed: Observed) -> None:
    figures, logged = observed.figures, observed.relay_logged
    print(
        f"retries={figures['retries_at_relay']} cached={figures['cached']} "
        f"joined={figures['joined']} site retries={figures['site_retries']}"
    )
    assert figures["retries_at_relay"] > 0  # the cuts really happened
    assert figures["retries_at_relay"] == logged["received a retried call"]
    assert figures["cached"] == logged["answered a retry from the dedup store"]
    assert figures["joined"] == logged["joined a retry to its execution in flight"]


def test_the_sites_retries_equal_what_they_logged(observed: Observed) -> None:
    assert observed.figures["site_retries"] > 0
    assert observed.figures["site_retries"] == observed.sites_logged["retrying relay call"]


def test_health_and_readiness_answer_on_every_endpoint(observed: Observed) -> None:
    assert observed.health == {name: (200, 200) for name in ("relay", *SITES)}


def test_job_sites_shows_each_sites_transport_flower_and_link(observed: Observed) -> None:
    by_name = {entry["name"]: entry for entry in observed.sites_json}
    assert set(by_name) == set(SITES)
    for entry in by_name.values():
        status = entry["status"]
        assert isinstance(status, dict)
        assert status["transport"] == "grpcs"
        assert str(status["flower_version"]).startswith("1.")
        assert float(status["rtt_ms"]) > 0
        assert int(status["calls_last_minute"]) > 0
