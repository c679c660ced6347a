"""``flgate compare`` on real Flower: each example app gives identical results directly and
through the gateway, and a real difference (another seed on one side) is caught.

Every comparison of the module runs in one fixture (two Flower runs each), as many at once
as :mod:`tests.support.flower_load` allows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import build_parser
from gateway.cli.compare_cmd import compare_and_report, compare_command, options_from
from tests.support.flower_load import gather_bounded
from tests.support.paths import QUICKSTART, REPO

pytestmark = pytest.mark.e2e

SITES = 2
ROUNDS = {"quickstart-numpy": 3, "sklearn-digits": 3, "torch-digits": 2}
SKEWED = "skewed-seed"


@dataclasses.dataclass(frozen=True)
class Done:
    code: int
    printed: str
    out: Path

    @property
    def report(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.out / "report.json").read_text())
        return data


@pytest.fixture(scope="module")
def compares(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Done]:
    root = tmp_path_factory.mktemp("compare")
    parser = build_parser()

    def args_for(job_dir: Path, rounds: int, out: Path) -> Any:
        argv = ["compare", str(job_dir), "--sites", str(SITES), "--rounds", str(rounds)]
        return parser.parse_args([*argv, "--out", str(out)])

    async def example(job: str) -> Done:
        printed = io.StringIO()
        out = root / job
        code = await compare_command(args_for(REPO / "jobs" / job, ROUNDS[job], out), printed)
        return Done(code, printed.getvalue(), out)

    async def skewed() -> Done:
        # The test hook: the gateway side alone runs with another seed.
        printed = io.StringIO()
        out = root / SKEWED
        options = dataclasses.replace(
            options_from(args_for(QUICKSTART, 2, out)), gateway_run_config={"seed": 43}
        )
        return Done(await compare_and_report(options, printed), printed.getvalue(), out)

    async def everything() -> list[Done]:
        # A comparison is two runs at once (direct and through the gateway).
        return await gather_bounded([*(example(job) for job in ROUNDS), skewed()], runs_each=2)

    done = asyncio.run(everything())
    return dict(zip([*ROUNDS, SKEWED], done, strict=True))


@pytest.mark.parametrize("job", list(ROUNDS))
def test_example_app_is_identical_directly_and_through_the_gateway(
    compares: dict[str, Done], job: str
) -> None:
    done = compares[job]
    assert done.code == 0, done.printed
    rounds = ROUNDS[job]
    assert "PASSED: identical" in done.printed
    for mode in ("direct ", "gateway"):
        assert f"[{mode}] round {rounds}/{rounds} started" in done.printed
    report = done.report
    assert report["passed"] is True and report["identical"] is True
    assert report["transport"] == "grpcs" and report["sites"] == SITES
    assert report["run_config"]["num-server-rounds"] == rounds
    hashes = report["params_sha256"]
    assert hashes["equal"] is True and len(hashes["direct"]) == 64
    assert {row["round"] for row in report["rows"]} == set(range(1, rounds + 1))
    assert all(row["equal"] for row in report["rows"])
    assert any(row["metric"].startswith("train/") for row in report["rows"])
    assert any(row["metric"].startswith("evaluate/") for row in report["rows"])
    for mode in ("direct", "gateway"):
        run = report["runs"][mode]
        assert run["status"] == "finished:completed"
        assert run["result_source"] == "FLGATE-RESULT"
    assert report["runs"]["gateway"]["fleet_calls_relayed"] > 0
    assert (done.out / "curves.png").read_bytes().startswith(b"\x89PNG")
    assert "**PASSED**" in (done.out / "report.md").read_text()


def test_a_different_seed_on_one_side_is_reported_as_different(
    compares: dict[str, Done],
) -> None:
    done = compares[SKEWED]
    assert done.code == 1, done.printed
    report = done.report
    assert report["passed"] is False and report["identical"] is False
    assert report["gateway_only_run_config"] == {"seed": 43}
    first = report["first_difference"]
    assert first["round"] == 1
    assert first["direct"] != first["gateway"]
    assert f"first difference in round 1, metric {first['metric']}" in report["message"]
    assert f"FAILED: first difference in round 1, metric {first['metric']}" in done.printed
    assert report["params_sha256"]["equal"] is False
    assert "**FAILED**" in (done.out / "report.md").read_text()
