"""The version matrix: one Flower release of each era of flags runs the quickstart job
through the gateway with the very result of the same release run directly.

Each era is a row of ``gateway/flower/releases.py``: 1.26 (every API on gRPC, the
SuperLink's state in memory: its file database races, see ``ReleaseTraits.in_memory_state``),
1.30 (the state in a file, runtime dependency installation off by default), 1.34
(installation on by default, turned off by a flag), 1.35 (ServerAppIo on ``--host/--port``,
the SuperNode's ``--port``), 1.36 (the last with Control on gRPC), 1.39 (the last gRPC Fleet
API: the gRPC dialect) and 1.42 (all on one HTTP port: the HTTP dialect).

The environments (one virtual environment per release, ``tests/support/flower_envs.py``)
are built once, in a cache outside the repository (``.ci/run`` builds them before the
tests), and before the runs, so that no run's time includes a ``pip install``. All the runs
of the module are made in one fixture, as many at once as :mod:`tests.support.flower_load`
allows.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import get_args

import pytest

from gateway.control.jobs.results import COMPLETED
from gateway.control.jobs.spec import JobSpec
from gateway.flower.install import FlowerInstall
from gateway.harness.local_run import Mode, RunOutcome, run_app
from tests.support.flower_envs import flower_release_env
from tests.support.flower_load import gather_bounded
from tests.support.paths import QUICKSTART

pytestmark = pytest.mark.e2e

RELEASES = ["1.26.1", "1.30.0", "1.34.0", "1.35.0", "1.36.0", "1.39.0", "1.42.0"]
MODES: tuple[Mode, ...] = get_args(Mode)
ROUNDS = 3
"""The quickstart's ``num-server-rounds`` (its pyproject.toml; its job.yaml keeps it)."""


@dataclass(frozen=True)
class Pair:
    """One release's quickstart run directly and through the gateway."""

    direct: RunOutcome
    gateway: RunOutcome


def _ready(release: str) -> FlowerInstall:
    install = flower_release_env(release)
    assert install.version_text == release  # `flwr --version`, read now rather than in a run
    return install


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pair]:
    spec = JobSpec.load(QUICKSTART)
    # pip is I/O-bound: the missing environments are built side by side, before any run.
    with ThreadPoolExecutor(len(RELEASES)) as pool:
        installs = dict(zip(RELEASES, pool.map(_ready, RELEASES), strict=True))
    root = tmp_path_factory.mktemp("matrix")
    plans = [(release, mode) for release in RELEASES for mode in MODES]

    async def all_runs() -> list[RunOutcome]:
        return await gather_bounded(
            run_app(spec, workdir=root / f"{release}-{mode}", mode=mode, install=installs[release])
            for release, mode in plans
        )

    outcomes = dict(zip(plans, asyncio.run(all_runs()), strict=True))
    pairs = {r: Pair(outcomes[r, "direct"], outcomes[r, "gateway"]) for r in RELEASES}
    for release, pair in pairs.items():
        print(
            f"flwr {release}: direct {pair.direct.seconds:.1f} s, "
            f"through the gateway {pair.gateway.seconds:.1f} s"
        )
    return pairs


def _describe(outcome: RunOutcome) -> str:
    return (
        f"{outcome.mode} exit={outcome.exit_code} status={outcome.status}\n{outcome.output[-3000:]}"
    )


@pytest.mark.parametrize("release", RELEASES)
def test_the_release_gives_through_the_gateway_the_result_of_direct_flower(
    matrix: dict[str, Pair], release: str
) -> None:
    pair = matrix[release]
    for outcome in (pair.direct, pair.gateway):
        assert outcome.exit_code == 0, _describe(outcome)
        assert outcome.status == COMPLETED, _describe(outcome)
        assert outcome.result is not None, "the app's FLGATE-RESULT line is missing"
    assert pair.gateway.result == pair.direct.result
    assert pair.gateway.rounds_seen == pair.direct.rounds_seen
    assert pair.direct.rounds_seen == ROUNDS
