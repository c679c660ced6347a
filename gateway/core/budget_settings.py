"""The relay's admission budgets as operators name them: in ``project.yml`` (and so in
the relay's kit), as ``relay start`` options and as ``FLGATE_*`` variables.

One table, so that the three spellings cannot drift apart: the key ``inflight_mib``
is the option ``--max-inflight-mib`` and the variable ``FLGATE_MAX_INFLIGHT_MIB``.
A value is a number of the setting's unit; 0 turns the budget off.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from .config import Budgets, MiB
from .exceptions import ConfigError


@dataclass(frozen=True)
class BudgetSetting:
    key: str
    """Its name in ``project.yml`` and the kit's ``config.yaml`` (``relay.budgets``)."""
    field: str
    """The :class:`~gateway.core.config.Budgets` field it sets."""
    unit: int
    """Bytes per unit (``MiB``), or 1 for a count."""
    what: str

    @property
    def option(self) -> str:
        return "--max-" + self.key.replace("_", "-")

    @property
    def env(self) -> str:
        return "FLGATE_MAX_" + self.key.upper()


BUDGET_SETTINGS = (
    BudgetSetting(
        "inflight_mib_per_site", "bytes_per_peer", MiB, "MiB of requests in flight per peer"
    ),
    BudgetSetting("inflight_mib", "bytes_total", MiB, "MiB of requests in flight from all peers"),
    BudgetSetting("calls_per_site", "calls_per_peer", 1, "calls in flight per peer"),
    BudgetSetting("calls", "calls_total", 1, "calls in flight from all peers"),
    BudgetSetting("connections_per_site", "connections_per_peer", 1, "open connections per peer"),
    BudgetSetting(
        "handshakes_per_source",
        "handshakes_per_source",
        1,
        "TLS handshakes in progress per source address (tcps, https)",
    ),
    BudgetSetting(
        "handshakes", "handshakes_total", 1, "TLS handshakes in progress in all (tcps, https)"
    ),
    BudgetSetting(
        "grpcs_connections",
        "grpcs_connections",
        1,
        "connections open at once on grpcs, pending and established",
    ),
)


def check_budget_values(values: Mapping[str, object], where: str) -> dict[str, float]:
    """``values`` (key -> number) checked: known keys, numbers of at least 0."""
    known = {setting.key for setting in BUDGET_SETTINGS}
    checked: dict[str, float] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(
                f"{where}: unknown budget {key!r} (known: {', '.join(sorted(known))})"
            )
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigError(
                f"{where}.{key}: must be 0 (no limit) or a positive number, not {value!r}"
            )
        checked[key] = float(value)
    return checked


def budgets_with(values: Mapping[str, float], base: Budgets = Budgets()) -> Budgets:
    """``base`` with the settings in ``values`` (checked) applied; 0 turns one off."""
    fields: dict[str, int | None] = {}
    for setting in BUDGET_SETTINGS:
        if setting.key in values:
            value = values[setting.key]
            fields[setting.field] = int(value * setting.unit) if value else None
    return dataclasses.replace(base, **fields)
