"""The bench's results: rows of direct and gateway figures, a table and a JSON file.

A row is one figure (e.g. "SendNodeHeartbeat p50") measured for each
transport, directly and through the gateway. Targets are goals printed beside
the results, never assertions: a missed target does not change the exit code.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from .stats import ratio

TargetKind = Literal["added_max", "ratio_min", "ratio_max", "gateway_min", "gateway_max"]
SCHEMA = "flgate-bench/1"


@dataclass(frozen=True)
class Target:
    """A goal for a row: on the added value, the ratio, or the gateway figure."""

    kind: TargetKind
    value: float
    text: str

    def met(self, figure: Figure) -> bool | None:
        subject = {
            "added_max": figure.added,
            "ratio_min": figure.ratio,
            "ratio_max": figure.ratio,
            "gateway_min": figure.gateway,
            "gateway_max": figure.gateway,
        }[self.kind]
        if subject is None:
            return None
        return subject >= self.value if self.kind.endswith("_min") else subject <= self.value


@dataclass(frozen=True)
class Figure:
    """One transport's values of a row; ``direct`` is None where no direct path exists."""

    direct: float | None
    gateway: float

    @property
    def ratio(self) -> float | None:
        return ratio(self.gateway, self.direct)

    @property
    def added(self) -> float | None:
        return None if self.direct is None else self.gateway - self.direct


@dataclass
class Row:
    key: str
    """Stable id in the JSON, e.g. ``latency.heartbeat.p50``."""
    step: str
    label: str
    unit: str
    figures: dict[str, Figure] = field(default_factory=dict)
    target: Target | None = None
    note: str = ""
    show_added: bool = False
    schemes: tuple[str, ...] | None = None
    """The transports the row is measured over (``None``: every one of the report's)."""
    targets: dict[str, Target] = field(default_factory=dict)
    """Goals of single transports, in place of ``target`` (e.g. CPU per call)."""
    not_measured: dict[str, str] = field(default_factory=dict)
    """Transports of the report that this row leaves out, and why (printed as such)."""

    def measured_over(self, transports: list[str]) -> list[str]:
        """``transports`` that this row is measured over, in their order."""
        return [t for t in transports if self.schemes is None or t in self.schemes]

    def target_for(self, scheme: str) -> Target | None:
        """The goal of ``scheme``'s figure: its own, else the row's."""
        return self.targets.get(scheme, self.target)


@dataclass
class BenchReport:
    """Everything one ``flgate bench`` measured."""

    quick: bool
    flower_version: str
    transports: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    """Raw material behind the rows (sample counts, exchanges, errors)."""
    seconds: float = 0.0
    cpus: int = 0

    def row(self, key: str, step: str, label: str, unit: str, **options: Any) -> Row:
        found = Row(key=key, step=step, label=label, unit=unit, **options)
        self.rows.append(found)
        return found

    def missing(self) -> list[str]:
        """``row/transport`` for every figure not measured, or not finite and positive."""
        out = []
        for row in self.rows:
            for scheme in row.measured_over(self.transports):
                figure = row.figures.get(scheme)
                values = [] if figure is None else [figure.gateway, figure.direct]
                if figure is None or not all(
                    v is None or (math.isfinite(v) and v > 0) for v in values
                ):
                    out.append(f"{row.key}/{scheme}")
        return out


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0 or abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _added(value: float | None) -> str:
    return "" if value is None else f"{value:+.2f}"


TABLE_HEADER = (
    "step",
    "figure",
    "unit",
    "transport",
    "direct",
    "gateway",
    "ratio",
    "added",
    "target",
)
NUMERIC_COLUMNS = ("direct", "gateway", "ratio", "added")
"""The columns printed right-aligned."""


def table_rows(report: BenchReport) -> list[tuple[str, ...]]:
    """The printed table's cells, one line per row and transport."""
    lines: list[tuple[str, ...]] = []
    for row in report.rows:
        tails: list[tuple[str, ...]] = []
        for scheme in row.measured_over(report.transports):
            figure = row.figures.get(scheme)
            goal = row.target_for(scheme)
            target = ""
            if goal is not None and figure is not None:
                met = goal.met(figure)
                verdict = {True: "met", False: "MISSED", None: "?"}[met]
                target = f"{goal.text}: {verdict}"
            tails.append(
                (
                    scheme,
                    _number(figure.direct) if figure else "n/a",
                    _number(figure.gateway) if figure else "n/a",
                    _ratio(figure.ratio) if figure else "-",
                    _added(figure.added) if figure and row.show_added else "",
                    target,
                )
            )
        for scheme in report.transports:
            if scheme in row.not_measured:
                goal = row.target_for(scheme)
                why = row.not_measured[scheme]
                tails.append((scheme, "-", why, "-", "", goal.text if goal else ""))
        label = row.label + (f" ({row.note})" if row.note else "")
        for index, tail in enumerate(tails):
            head = (row.step, label, row.unit) if index == 0 else ("", "", "")
            lines.append((*head, *tail))
    return lines


def _finite(value: float | None) -> float | None:
    """JSON has no NaN: a figure that could not be taken is null."""
    return value if value is not None and math.isfinite(value) else None


def to_json(report: BenchReport) -> dict[str, Any]:
    rows = []
    for row in report.rows:
        results = {}
        for scheme, figure in row.figures.items():
            goal = row.target_for(scheme)
            met = goal.met(figure) if goal else None
            results[scheme] = {
                "direct": _finite(figure.direct),
                "gateway": _finite(figure.gateway),
                "ratio": _finite(figure.ratio),
                "added": _finite(figure.added),
                "target_met": met,
            }
        rows.append(
            {
                "key": row.key,
                "step": row.step,
                "figure": row.label,
                "unit": row.unit,
                "note": row.note,
                "target": asdict(row.target) if row.target else None,
                "targets": {scheme: asdict(goal) for scheme, goal in row.targets.items()},
                "transports": row.measured_over(report.transports),
                "not_measured": dict(row.not_measured),
                "results": results,
            }
        )
    return {
        "schema": SCHEMA,
        "quick": report.quick,
        "flower_version": report.flower_version,
        "cpus": report.cpus,
        "seconds": report.seconds,
        "transports": report.transports,
        "skipped": report.skipped,
        "rows": rows,
        "details": _json_safe(report.details),
    }


def _json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by null, all the way down."""
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def write_json(report: BenchReport, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_json(report), indent=2, allow_nan=False) + "\n")
