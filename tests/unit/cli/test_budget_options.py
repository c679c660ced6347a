"""The relay's admission budgets on the command line and in FLGATE_* variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import build_parser
from gateway.cli.common import budgets_from
from gateway.core.config import Budgets, MiB
from gateway.core.exceptions import ConfigError
from gateway.provisioning.kit import Kit, load_kit
from gateway.provisioning.project import Project
from gateway.provisioning.workspace import ProvisioningWorkspace


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


def _relay_kit(tmp_path: Path, budgets: dict[str, object]) -> Kit:
    project = Project.parse(
        {
            "name": "budgets",
            "relay": {"hosts": ["localhost"], "transports": {"grpcs": 8443}, "budgets": budgets},
            "sites": [{"name": "site-1"}],
            "admins": [{"name": "admin@example.org", "role": "project_admin"}],
        }
    )
    workspace, _ = ProvisioningWorkspace.create_or_open(tmp_path / "ws", project)
    workspace.provision(project)
    return load_kit(workspace.kit("relay"))


def test_the_relay_kit_carries_the_projects_budgets_and_env_and_options_override_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kit = _relay_kit(tmp_path, {"inflight_mib": 512, "calls_per_site": 64, "calls": 0})
    parser = build_parser()
    budgets = budgets_from(parser.parse_args(["relay", "start"]), kit)
    assert (budgets.bytes_total, budgets.calls_per_peer, budgets.calls_total) == (
        512 * MiB,
        64,
        None,
    )
    monkeypatch.setenv("FLGATE_MAX_CALLS_PER_SITE", "16")
    budgets = budgets_from(parser.parse_args(["relay", "start", "--max-inflight-mib", "300"]), kit)
    assert (budgets.bytes_total, budgets.calls_per_peer) == (300 * MiB, 16)


@pytest.mark.parametrize(
    ("budgets", "needle"),
    [
        ({"bandwidth": 1}, "unknown budget 'bandwidth'"),
        ({"calls": -3}, r"relay.budgets.calls: must be 0 \(no limit\) or a positive number"),
        ({"calls": "many"}, "not 'many'"),
    ],
)
def test_a_bad_budget_in_project_yml_is_refused_with_what_is_valid(
    budgets: dict[str, object], needle: str
) -> None:
    with pytest.raises(ConfigError, match=needle):
        Project.parse(
            {
                "name": "budgets",
                "relay": {
                    "hosts": ["localhost"],
                    "transports": {"grpcs": 8443},
                    "budgets": budgets,
                },
                "sites": [],
                "admins": [{"name": "admin@example.org", "role": "project_admin"}],
            }
        )
