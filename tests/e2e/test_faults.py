"""The quickstart job through the gateway while the site-relay connections are cut.

A fault-injection proxy between the sites and the relay cuts every connection
every few seconds, on a fixed seed. The job must complete with the very results
of a fault-free direct run, and the relay's ledger must show that no message
was executed twice by the SuperLink.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.control.jobs.results import COMPLETED
from gateway.control.jobs.spec import JobSpec
from gateway.harness.faultproxy import FaultConfig
from gateway.harness.local_run import RunOutcome, run_app
from tests.support.flower_envs import flwr142
from tests.support.flower_load import gather_bounded
from tests.support.paths import QUICKSTART

pytestmark = pytest.mark.e2e

FAULTS = FaultConfig(
    seed=20261121, drop_every=(1.0, 3.0), delay_ms=(20.0, 80.0), truncate_probability=0.02
)


FAULTY_TRANSPORTS = ["grpcs", "https", "tcps"]


@pytest.fixture(scope="module")
def faulty_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RunOutcome]:
    spec = JobSpec.load(QUICKSTART)
    root = tmp_path_factory.mktemp("faults")

    async def all_runs() -> list[RunOutcome]:
        return await gather_bounded(
            run_app(
                spec,
                mode="gateway",
                workdir=root / scheme,
                install=flwr142(),
                faults=FAULTS,
                transport=scheme,
            )
            for scheme in FAULTY_TRANSPORTS
        )

    return dict(zip(FAULTY_TRANSPORTS, asyncio.run(all_runs()), strict=True))


@pytest.fixture(params=FAULTY_TRANSPORTS)
def faulty_run(request: pytest.FixtureRequest, faulty_runs: dict[str, RunOutcome]) -> RunOutcome:
    outcome: RunOutcome = faulty_runs[request.param]
    return outcome


def test_job_completes_with_the_fault_free_results(
    faulty_run: RunOutcome, runs: dict[str, RunOutcome]
) -> None:
    assert faulty_run.status == COMPLETED, faulty_run.output[-3000:]
    assert faulty_run.result == runs["direct-142"].result


def test_no_request_was_executed_twice(faulty_run: RunOutcome) -> None:
    stats = faulty_run.relay_stats
    assert stats is not None and stats.ledger is not None
    assert len(stats.ledger) > 50
    assert max(stats.ledger.values()) == 1, stats.ledger.most_common(3)
    # The cuts really happened and were absorbed by retries with the same id.
    print(
        f"transport={faulty_run.workdir.name} retries={faulty_run.retries} "
        f"dedup={faulty_run.dedup} calls={len(stats.ledger)} seconds={faulty_run.seconds:.1f}"
    )
    assert faulty_run.retries > 0
