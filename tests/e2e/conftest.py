"""End-to-end tests: real Flower processes (tens of seconds each); every test here is ``e2e``.

The ``runs`` fixture makes the session's real Flower runs of the quickstart job once, as many
at a time as :mod:`tests.support.flower_load` allows, for the modules that assert on them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.control.jobs.spec import JobSpec
from gateway.harness.local_run import RunOutcome, run_app
from tests.support.flower_envs import flwr139, flwr142
from tests.support.flower_load import gather_bounded
from tests.support.paths import GATEWAY_TRANSPORTS, QUICKSTART, gateway_run

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RunOutcome]:
    """Real Flower runs of the quickstart job: flwr 1.42 direct (3 and 2
    rounds), flwr 1.42 through the gateway (HTTP dialect) and flwr 1.39 through the
    gateway (gRPC dialect, one ``--grpc-rere`` and one ``--grpc-adapter`` SuperNode)."""
    spec = JobSpec.load(QUICKSTART)
    legacy = flwr139()
    current = flwr142()
    root = tmp_path_factory.mktemp("e2e")

    plans: dict[str, dict[str, Any]] = {
        "direct-142": {"mode": "direct", "install": current},
        "direct-142-r2": {
            "mode": "direct",
            "install": current,
            "run_config": {"num-server-rounds": 2},
        },
        "gateway-139": {"mode": "gateway", "install": legacy, "grpc_modes": ["rere", "adapter"]},
    }
    for scheme in GATEWAY_TRANSPORTS:
        plans[gateway_run(scheme)] = {"mode": "gateway", "install": current, "transport": scheme}

    async def all_runs() -> list[RunOutcome]:
        return await gather_bounded(
            run_app(spec, workdir=root / name, **plan) for name, plan in plans.items()
        )

    return dict(zip(plans, asyncio.run(all_runs()), strict=True))
