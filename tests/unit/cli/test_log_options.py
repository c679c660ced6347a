"""--log-format and FLGATE_LOG_FORMAT: before or after a long-running command's name."""

from __future__ import annotations

import json
import logging

import pytest

from gateway.cli import build_parser, main
from gateway.core.logs import JsonFormatter, KeyValueFormatter

LONG_RUNNING = (["demo"], ["bench"], ["compare", "jobs/quickstart-numpy"])


@pytest.fixture(autouse=True)
def no_log_format_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLGATE_LOG_FORMAT", raising=False)


def _log_format(*argv: str) -> str:
    value: str = build_parser().parse_args(argv).log_format
    return value


@pytest.mark.parametrize("command", LONG_RUNNING, ids=lambda c: c[0])
def test_log_format_is_taken_before_and_after_a_long_running_commands_name(
    command: list[str],
) -> None:
    assert _log_format(*command) == "text"
    assert _log_format("--log-format", "json", *command) == "json"
    assert _log_format(*command, "--log-format", "json") == "json"


def test_the_option_after_the_command_wins_over_the_one_before() -> None:
    assert _log_format("--log-format", "json", "demo", "--log-format", "text") == "text"


def test_the_environment_is_the_default_and_an_option_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLGATE_LOG_FORMAT", "json")
    assert _log_format("demo") == "json"
    assert _log_format("--log-format", "text", "demo") == "text"
    assert _log_format("demo", "--log-format", "text") == "text"


def test_an_unknown_format_on_the_command_line_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["demo", "--log-format", "yaml"])
    assert exited.value.code == 2
    assert "invalid choice: 'yaml' (choose from 'text', 'json')" in capsys.readouterr().err


def test_the_commands_help_shows_the_choices_and_the_environment_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["demo", "--log-format", "json", "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--log-format {text,json}" in text
    assert "env FLGATE_LOG_FORMAT" in text


@pytest.mark.parametrize(
    "argv",
    [
        ["--log-format", "json", "demo", "--sites", "0"],
        ["demo", "--log-format", "json", "--sites", "0"],
    ],
    ids=["before", "after"],
)
def test_main_writes_json_log_lines_to_stderr_when_asked(
    argv: list[str], root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 3
    (handler,) = root_logger.handlers
    assert isinstance(handler.formatter, JsonFormatter)
    logging.getLogger("gateway.cli.test").warning("relay call failed", extra={"status": 503})
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "flgate: error: --sites must be at least 1"
    entry = json.loads(err[-1])
    assert (entry["level"], entry["logger"], entry["message"], entry["status"]) == (
        "warning",
        "gateway.cli.test",
        "relay call failed",
        503,
    )


def test_main_keeps_the_text_format_by_default(root_logger: logging.Logger) -> None:
    assert main(["demo", "--sites", "0"]) == 3
    (handler,) = root_logger.handlers
    assert type(handler.formatter) is KeyValueFormatter


def test_a_bad_flgate_log_format_is_a_config_error_naming_the_valid_formats(
    root_logger: logging.Logger,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    handlers = list(root_logger.handlers)
    monkeypatch.setenv("FLGATE_LOG_FORMAT", "bogus")
    assert main(["demo", "--sites", "0"]) == 3
    err = capsys.readouterr().err
    assert err == (
        "flgate: error: FLGATE_LOG_FORMAT='bogus' is not a log format; use one of: text, json\n"
    )
    assert root_logger.handlers == handlers


def test_a_bad_flgate_log_format_does_not_matter_when_the_option_is_given(
    root_logger: logging.Logger,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FLGATE_LOG_FORMAT", "bogus")
    assert main(["demo", "--log-format", "json", "--sites", "0"]) == 3
    assert capsys.readouterr().err == "flgate: error: --sites must be at least 1\n"
