"""flgate relay start --mlflow-tracking-uri / --mlflow-experiment and their environment."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from gateway.cli import build_parser, main
from gateway.cli.common import EXIT_CONFIG
from gateway.cli.serve_cmd import mlflow_from
from gateway.tracking.mlflow_export import MLflowSettings


@pytest.fixture(autouse=True)
def no_mlflow_settings_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLGATE_MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("FLGATE_MLFLOW_EXPERIMENT", raising=False)


def _settings(*argv: str) -> MLflowSettings:
    return mlflow_from(build_parser().parse_args(["relay", "start", *argv]))


def test_by_default_the_relay_exports_to_no_mlflow_server() -> None:
    assert _settings() == MLflowSettings(tracking_uri="", experiment="flgate")


def test_the_environment_is_the_default_and_an_option_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLGATE_MLFLOW_TRACKING_URI", "http://env.test:5000")
    monkeypatch.setenv("FLGATE_MLFLOW_EXPERIMENT", "from-env")
    assert _settings() == MLflowSettings(tracking_uri="http://env.test:5000", experiment="from-env")
    assert _settings(
        "--mlflow-tracking-uri", "http://option.test", "--mlflow-experiment", "fl"
    ) == MLflowSettings(tracking_uri="http://option.test", experiment="fl")


def test_a_tracking_uri_without_mlflow_installed_fails_the_start_with_exit_3(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)
    argv = ["relay", "start", "--workspace", str(tmp_path / "relay")]
    code = main([*argv, "--listen", "grpcs://127.0.0.1:0", "--mlflow-tracking-uri", "http://x"])
    assert code == EXIT_CONFIG
    assert "pip install 'flower-gateway[mlflow]'" in capsys.readouterr().err
    assert not (tmp_path / "relay").exists()  # refused before anything started
