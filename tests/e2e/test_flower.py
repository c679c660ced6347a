"""End to end with real Flower: the quickstart job, directly and through the gateway.

The runs come from the session fixture ``runs`` (conftest.py), which starts them
concurrently on free ports.
"""

from __future__ import annotations

import pytest

from gateway.control.jobs.results import COMPLETED
from gateway.harness.local_run import RunOutcome
from tests.support.paths import GATEWAY_TRANSPORTS, gateway_run
from tests.support.procs import processes_touching, wait_until_gone

pytestmark = pytest.mark.e2e


def _describe(outcome: RunOutcome) -> str:
    return (
        f"{outcome.mode} exit={outcome.exit_code} status={outcome.status}\n{outcome.output[-3000:]}"
    )


ALL_RUNS = ["direct-142", "gateway-139", *(gateway_run(s) for s in GATEWAY_TRANSPORTS)]
GATEWAY_RUNS = ["gateway-139", *(gateway_run(s) for s in GATEWAY_TRANSPORTS)]


@pytest.mark.parametrize("name", ALL_RUNS)
def test_run_completes(runs: dict[str, RunOutcome], name: str) -> None:
    outcome = runs[name]
    assert outcome.ok, _describe(outcome)
    assert outcome.status == COMPLETED
    assert outcome.rounds_seen == 3
    assert outcome.result is not None, "the app's FLGATE-RESULT line is missing"


@pytest.mark.parametrize("name", GATEWAY_RUNS)
def test_every_fleet_call_went_through_the_relay(runs: dict[str, RunOutcome], name: str) -> None:
    outcome = runs[name]
    stats = outcome.relay_stats
    assert stats is not None
    forwarded = stats.forwarded[outcome.job_id]
    # Registration, heartbeats, pulls, pushes and object transfers of 2 nodes x 3 rounds.
    assert forwarded > 50
    assert sum(stats.refused.values()) == 0
    assert set(outcome.site_calls) == {"site-1", "site-2"}
    assert sum(outcome.site_calls.values()) == forwarded
    assert all(calls > 0 for calls in outcome.site_calls.values())


@pytest.mark.parametrize("scheme", GATEWAY_TRANSPORTS)
def test_gateway_results_equal_direct_flower(runs: dict[str, RunOutcome], scheme: str) -> None:
    direct = runs["direct-142"].result
    through = runs[gateway_run(scheme)].result
    assert direct is not None and through is not None
    assert through["final_params_sha256"] == direct["final_params_sha256"]
    assert through["train_metrics"] == direct["train_metrics"]
    assert through["evaluate_metrics"] == direct["evaluate_metrics"]
    assert set(through["train_metrics"]) == {"1", "2", "3"}


def test_grpc_dialect_results_equal_direct_flower(runs: dict[str, RunOutcome]) -> None:
    # Same app, same seeds, same aggregation: flwr 1.39 over gRPC through the
    # gateway gives the very numbers of flwr 1.42 run directly.
    direct = runs["direct-142"].result
    legacy = runs["gateway-139"].result
    assert direct is not None and legacy is not None
    assert legacy == direct


def test_grpc_adapter_supernode_took_part(runs: dict[str, RunOutcome]) -> None:
    outcome = runs["gateway-139"]
    assert "--grpc-rere" in outcome.commands["supernode-site-1"]
    assert "--grpc-adapter" in outcome.commands["supernode-site-2"]
    # Both nodes' calls reached the relay: the adapter's were unwrapped by the LGS.
    assert outcome.site_calls["site-1"] > 20
    assert outcome.site_calls["site-2"] > 20


@pytest.mark.parametrize("name", ALL_RUNS)
def test_no_process_left_running(runs: dict[str, RunOutcome], name: str) -> None:
    left = wait_until_gone(lambda: processes_touching(runs[name].workdir), timeout=15)
    assert not left, f"processes of the {name} run still running: {left}"
