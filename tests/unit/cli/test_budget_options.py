"""The relay's admission budgets on the command line and in FLGATE_* variables."""

from __future__ import annotations

import pytest

from gateway.cli import build_parser
from gateway.cli.common import budgets_from
from gateway.core.config import Budgets, MiB
from gateway.core.exceptions import ConfigError


def _budgets(*argv: str) -> Budgets:
    return budgets_from(build_parser().parse_args(["relay", "start", *argv]))


def test_no_option_keeps_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FLGATE_MAX_INFLIGHT_MIB", "FLGATE_MAX_CALLS_PER_SITE"):
        monkeypatch.delenv(name, raising=False)
    assert _budgets() == Budgets()


def test_options_set_budgets_in_their_units_and_zero_turns_one_off() -> None:
    budgets = _budgets("--max-inflight-mib-per-site", "200", "--max-calls", "0")
    assert budgets.bytes_per_peer == 200 * MiB
    assert budgets.calls_total is None
    assert budgets.calls_per_peer == Budgets().calls_per_peer


def test_the_environment_is_the_default_and_an_option_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLGATE_MAX_CONNECTIONS_PER_SITE", "4")
    monkeypatch.setenv("FLGATE_MAX_CALLS_PER_SITE", "16")
    budgets = _budgets("--max-calls-per-site", "32")
    assert (budgets.connections_per_peer, budgets.calls_per_peer) == (4, 32)


def test_bad_values_are_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="--max-calls must be 0"):
        _budgets("--max-calls", "-1")
    monkeypatch.setenv("FLGATE_MAX_INFLIGHT_MIB", "lots")
    with pytest.raises(ConfigError, match="FLGATE_MAX_INFLIGHT_MIB='lots' is not a number"):
        _budgets()
