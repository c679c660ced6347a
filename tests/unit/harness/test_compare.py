"""The comparison of two runs' results, reading results from a run, and the reports (no Flower)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from gateway.control.jobs.results import (
    COMPLETED,
    SOURCE_FLOWER_LOG,
    WHAT_TO_PRINT,
    RunSummary,
    summary_from_log,
    summary_from_result,
)
from gateway.core.exceptions import ConfigError
from gateway.harness.compare.model import CompareReport, compare_summaries, summarize
from gateway.harness.compare.report import report_dict, write_reports
from gateway.harness.compare.runs import validate_transport
from gateway.harness.local_run import RunOutcome
from tests.support.flower_logs import LEGACY_LOG, MESSAGE_API_LOG
from tests.support.paths import QUICKSTART

SHA_A = "a" * 64
SHA_B = "b" * 64


def result(
    *, sha: str = SHA_A, train: dict[int, float] | None = None, rounds: int = 3
) -> dict[str, Any]:
    """A ``FLGATE-RESULT`` payload as the example apps print it."""
    train = train or {1: 1.8398375775871, 2: 0.265550035626243, 3: 0.04595403240489894}
    return {
        "rounds": rounds,
        "final_params_sha256": sha,
        "train_metrics": {str(r): {"train_loss": v} for r, v in train.items()},
        "evaluate_metrics": {
            str(r): {"eval_loss": v * 1.5, "eval_mae": v / 2} for r, v in train.items()
        },
    }


def summary(**kwargs: Any) -> RunSummary:
    return summary_from_result(result(**kwargs))


def test_result_line_becomes_metrics_by_phase_and_round() -> None:
    parsed = summary_from_result(result())
    assert parsed.params_sha256 == SHA_A
    assert parsed.rounds == 3
    assert sorted(parsed.metrics) == ["evaluate/eval_loss", "evaluate/eval_mae", "train/train_loss"]
    assert parsed.metrics["train/train_loss"][2] == 0.265550035626243


def test_identical_runs_pass() -> None:
    comparison = compare_summaries(summary(), summary())
    assert comparison.passed and comparison.identical
    assert comparison.hash_equal is True
    assert comparison.first_difference is None
    assert len(comparison.rows) == 9
    assert [(r.round, r.metric) for r in comparison.rows[:4]] == [
        (1, "train/train_loss"),
        (1, "evaluate/eval_loss"),
        (1, "evaluate/eval_mae"),
        (2, "train/train_loss"),
    ]
    assert all(r.abs_diff == 0 for r in comparison.rows)
    assert comparison.message.startswith("identical: 9 metric values over 3 rounds")


def test_first_differing_round_and_metric_are_named() -> None:
    direct = summary(train={1: 1.0, 2: 0.5, 3: 0.25})
    gateway = summary(train={1: 1.0, 2: 0.5000001, 3: 0.3}, sha=SHA_B)
    comparison = compare_summaries(direct, gateway)
    assert not comparison.passed and not comparison.identical
    first = comparison.first_difference
    assert first is not None
    assert (first.round, first.metric) == (2, "train/train_loss")
    assert "first difference in round 2, metric train/train_loss" in comparison.message
    assert "direct 0.5 vs gateway 0.5000001 (abs diff 1e-07)" in comparison.message


def test_small_differences_pass_within_tolerance_and_the_hash_is_not_required() -> None:
    direct = summary(train={1: 1.0, 2: 0.5})
    gateway = summary(train={1: 1.0, 2: 0.5 + 1e-9}, sha=SHA_B)
    exact = compare_summaries(direct, gateway)
    assert not exact.passed
    loose = compare_summaries(direct, gateway, tolerance=1e-6)
    assert loose.passed and not loose.identical
    assert loose.hash_equal is False and not loose.hash_required
    assert "within 1e-06" in loose.message and "not required" in loose.message
    row = next(r for r in loose.rows if not r.equal)
    assert row.within and row.abs_diff == pytest.approx(1e-9)
    too_tight = compare_summaries(direct, gateway, tolerance=1e-10)
    assert not too_tight.passed
    assert too_tight.first_difference is not None
    assert too_tight.first_difference.round == 2


def test_a_metric_missing_from_one_run_is_a_difference() -> None:
    direct = summary()
    incomplete = result()
    del incomplete["evaluate_metrics"]["3"]["eval_mae"]
    comparison = compare_summaries(direct, summary_from_result(incomplete))
    assert not comparison.passed
    first = comparison.first_difference
    assert first is not None and first.gateway is None and first.abs_diff is None
    assert comparison.message == (
        "first difference in round 3: metric evaluate/eval_mae is missing from the gateway run"
    )


def test_different_final_parameters_fail_even_with_equal_metrics() -> None:
    comparison = compare_summaries(summary(), summary(sha=SHA_B))
    assert comparison.first_difference is None
    assert comparison.hash_equal is False
    assert not comparison.passed and not comparison.identical
    assert "final parameters differ" in comparison.message and SHA_B in comparison.message


def test_nothing_to_compare_fails() -> None:
    empty = RunSummary(metrics={})
    comparison = compare_summaries(empty, empty)
    assert not comparison.passed
    assert "no metrics" in comparison.message


def test_nan_equals_nan_and_negative_tolerance_is_refused() -> None:
    nan = summary(train={1: math.nan})
    assert compare_summaries(nan, nan).identical
    with pytest.raises(ConfigError):
        compare_summaries(nan, nan, tolerance=-1)


def test_flower_log_of_a_message_api_strategy_gives_full_precision_metrics() -> None:
    parsed = summary_from_log(MESSAGE_API_LOG)
    assert parsed is not None
    assert parsed.source == SOURCE_FLOWER_LOG and parsed.params_sha256 is None
    assert parsed.rounds == 2
    assert parsed.metrics["train/train_loss"] == {1: 1.839837577587128, 2: 0.265550035626243}
    assert parsed.metrics["evaluate/eval_loss"][1] == 2.367820038909307
    assert parsed.metrics["train/hist[1]"] == {2: 2.5}


def test_flower_log_of_a_legacy_strategy_gives_its_history() -> None:
    parsed = summary_from_log(LEGACY_LOG)
    assert parsed is not None
    assert parsed.metrics == {
        "evaluate/loss": {1: 2.25, 2: 0.75},
        "train/accuracy": {1: 0.5, 2: 0.875},
        "evaluate/accuracy": {1: 0.25, 2: 0.625},
    }


def test_results_from_the_log_compare_without_a_hash() -> None:
    parsed = summary_from_log(MESSAGE_API_LOG)
    assert parsed is not None
    comparison = compare_summaries(parsed, parsed)
    assert comparison.passed and comparison.hash_equal is None
    assert "no hash reported" in comparison.message


def outcome(mode: str, tmp_path: Path, *, payload: dict[str, Any] | None, output: str = "") -> Any:
    return RunOutcome(
        mode=mode,  # type: ignore[arg-type]
        job_id=f"job-{mode}",
        exit_code=0,
        output=output,
        seconds=42.0,
        workdir=tmp_path,
        status=COMPLETED,
        result=payload,
    )


def test_a_run_without_results_says_what_the_app_must_print(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        summarize(outcome("gateway", tmp_path, payload=None, output="INFO : nothing here"))
    assert "the gateway run reported no results" in str(err.value)
    assert WHAT_TO_PRINT in str(err.value)
    from_log = summarize(outcome("direct", tmp_path, payload=None, output=MESSAGE_API_LOG))
    assert from_log.source == SOURCE_FLOWER_LOG


def test_only_registered_transports_are_accepted() -> None:
    assert validate_transport("grpcs") == "grpcs"
    assert validate_transport("GRPCS://") == "grpcs"
    with pytest.raises(ConfigError, match=r"unknown transport 'ftp'; valid: .*grpcs"):
        validate_transport("ftp")


def make_report(tmp_path: Path, direct: dict[str, Any], gateway: dict[str, Any]) -> CompareReport:
    outcomes = {
        "direct": outcome("direct", tmp_path, payload=direct, output="direct log"),
        "gateway": outcome("gateway", tmp_path, payload=gateway, output="gateway log"),
    }
    summaries = {mode: summary_from_result(o.result) for mode, o in outcomes.items()}
    return CompareReport(
        job="quickstart-numpy",
        app_dir=QUICKSTART,
        flower_version="1.41.0",
        transport="grpcs",
        sites=2,
        run_config={"num-server-rounds": 3},
        tolerance=0.0,
        out=tmp_path / "out",
        workdir=tmp_path,
        outcomes=outcomes,
        summaries=summaries,
        comparison=compare_summaries(summaries["direct"], summaries["gateway"]),
        seconds=61.5,
    )


def test_reports_of_identical_runs(tmp_path: Path) -> None:
    report = make_report(tmp_path, result(), result())
    paths = write_reports(report)
    names = sorted(p.name for p in paths)
    assert names == ["curves.png", "direct.log", "gateway.log", "report.json", "report.md"]
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["passed"] is True and data["identical"] is True
    assert data["job"] == "quickstart-numpy" and data["transport"] == "grpcs"
    assert data["first_difference"] is None
    assert data["params_sha256"] == {
        "direct": SHA_A,
        "gateway": SHA_A,
        "equal": True,
        "required": True,
    }
    assert len(data["rows"]) == 9
    assert data["rows"][0] == {
        "round": 1,
        "metric": "train/train_loss",
        "direct": result()["train_metrics"]["1"]["train_loss"],
        "gateway": result()["train_metrics"]["1"]["train_loss"],
        "abs_diff": 0.0,
        "equal": True,
        "within_tolerance": True,
    }
    assert data["runs"]["gateway"]["status"] == COMPLETED
    assert data["runs"]["direct"]["result_source"] == "FLGATE-RESULT"
    png = (tmp_path / "out" / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "**PASSED**: identical" in markdown
    assert "| round | metric | direct | gateway | abs diff | equal? |" in markdown
    assert "![metrics per round" in markdown
    assert report_dict(report) == data


def test_reports_of_different_runs_name_the_first_difference(tmp_path: Path) -> None:
    report = make_report(
        tmp_path, result(train={1: 1.0, 2: 0.5}), result(train={1: 1.0, 2: 0.7}, sha=SHA_B)
    )
    write_reports(report)
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["passed"] is False and data["identical"] is False
    assert data["first_difference"]["round"] == 2
    assert data["first_difference"]["metric"] == "train/train_loss"
    assert data["params_sha256"]["equal"] is False
    assert "first difference in round 2" in data["message"]
    assert (tmp_path / "out" / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "**FAILED**" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.parametrize(
    ("extra", "complaint"),
    [
        (["--transport", "ftp"], "unknown transport 'ftp'"),
        (["--tolerance", "-0.5"], "--tolerance must be >= 0"),
        (["--rounds", "0"], "--rounds must be at least 1"),
        (["--sites", "1"], "needs at least 2 sites"),
        (["--run-config", "seed"], "not key=value"),
    ],
)
def test_configuration_errors_exit_3_before_any_run(
    extra: list[str], complaint: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["compare", str(QUICKSTART), "--out", str(tmp_path / "out"), *extra])
    assert code == 3
    assert complaint in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_missing_job_directory_exits_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["compare", str(tmp_path / "nope")]) == 3
    assert "does not exist" in capsys.readouterr().err
