"""What a comparison looks like: ``report.json``, ``report.md``, ``curves.png``, the table.

:func:`table_rows` gives the table's cells as text (the CLI prints them,
``report.md`` shows them); :func:`write_reports` writes the files of one
:class:`~.model.CompareReport`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ...control.jobs.results import Series
from .model import MODES, CompareReport, Comparison, MetricRow, metric_order


def format_value(value: float | None) -> str:
    """Full precision (the shortest text that reads back as the same float)."""
    return "-" if value is None else repr(value)


def format_diff(row: MetricRow) -> str:
    diff = row.abs_diff
    if diff is None:
        return "missing"
    return "0" if diff == 0 else f"{diff:.3g}"


def table_rows(comparison: Comparison) -> list[tuple[str, str, str, str, str, str]]:
    """(round, metric, direct, gateway, abs diff, equal?) as text, one per row."""
    return [
        (
            str(row.round),
            row.metric,
            format_value(row.direct),
            format_value(row.gateway),
            format_diff(row),
            "yes" if row.equal else ("within" if row.within else "NO"),
        )
        for row in comparison.rows
    ]


TABLE_HEADER = ("round", "metric", "direct", "gateway", "abs diff", "equal?")
NUMERIC_COLUMNS = ("direct", "gateway", "abs diff")
"""The columns shown right-aligned, in the terminal and in ``report.md``."""


def report_dict(report: CompareReport) -> dict[str, Any]:
    """Everything ``report.json`` holds."""
    comparison = report.comparison
    runs: dict[str, Any] = {}
    for mode in MODES:
        outcome = report.outcomes.get(mode)
        summary = report.summaries.get(mode)
        entry: dict[str, Any] = {"completed": outcome is not None and outcome.ok}
        if outcome is not None:
            entry.update(
                status=outcome.status,
                exit_code=outcome.exit_code,
                run_id=outcome.run_id,
                seconds=round(outcome.seconds, 2),
                rounds_seen=outcome.rounds_seen,
            )
            if outcome.relay_stats is not None:
                entry["fleet_calls_relayed"] = sum(outcome.relay_stats.forwarded.values())
        if summary is not None:
            entry.update(
                result_source=summary.source,
                params_sha256=summary.params_sha256,
                rounds=summary.rounds,
            )
        runs[mode] = entry
    first = comparison.first_difference if comparison else None
    data: dict[str, Any] = {
        "job": report.job,
        "app_dir": str(report.app_dir),
        "flower_version": report.flower_version,
        "transport": report.transport,
        "sites": report.sites,
        "run_config": report.run_config,
        "tolerance": report.tolerance,
        "passed": report.passed,
        "identical": bool(comparison and comparison.identical and report.error is None),
        "message": report.message,
        "error": report.error,
        "first_difference": None
        if first is None
        else {
            "round": first.round,
            "metric": first.metric,
            "direct": first.direct,
            "gateway": first.gateway,
            "abs_diff": first.abs_diff,
        },
        "params_sha256": None
        if comparison is None
        else {
            "direct": comparison.direct_sha256,
            "gateway": comparison.gateway_sha256,
            "equal": comparison.hash_equal,
            "required": comparison.hash_required,
        },
        "runs": runs,
        "rows": []
        if comparison is None
        else [
            {
                "round": row.round,
                "metric": row.metric,
                "direct": row.direct,
                "gateway": row.gateway,
                "abs_diff": row.abs_diff,
                "equal": row.equal,
                "within_tolerance": row.within,
            }
            for row in comparison.rows
        ],
        "seconds": round(report.seconds, 2),
    }
    if report.gateway_run_config:
        data["gateway_only_run_config"] = report.gateway_run_config
    return data


def _markdown(report: CompareReport) -> str:
    verdict = "PASSED" if report.passed else "FAILED"
    config = " ".join(f"{k}={v}" for k, v in sorted(report.run_config.items())) or "(app defaults)"
    lines = [
        f"# flgate compare: {report.job}",
        "",
        f"**{verdict}**: {report.message}",
        "",
        f"- app: `{report.app_dir}`",
        f"- Flower {report.flower_version}, {report.sites} sites, transport `{report.transport}`",
        f"- run-config: `{config}`",
        f"- tolerance: {report.tolerance:g}"
        + (" (bit-identical required)" if report.tolerance == 0 else ""),
        f"- wall time: {report.seconds:.1f} s (both runs at the same time)",
    ]
    if report.gateway_run_config:
        lines.append(f"- gateway run only: `{report.gateway_run_config}` (test hook)")
    lines += ["", "| run | status | seconds | results from | final parameters sha256 |"]
    lines.append("|---|---|---|---|---|")
    for mode in MODES:
        outcome = report.outcomes.get(mode)
        summary = report.summaries.get(mode)
        lines.append(
            f"| {mode} | {outcome.status if outcome else 'failed'} | "
            f"{f'{outcome.seconds:.1f}' if outcome else '-'} | "
            f"{summary.source if summary else '-'} | "
            f"`{(summary.params_sha256 if summary else None) or '-'}` |"
        )
    if report.comparison is not None:
        alignment = ("---:" if title in NUMERIC_COLUMNS else "---" for title in TABLE_HEADER)
        lines += ["", "| " + " | ".join(TABLE_HEADER) + " |", "|" + "|".join(alignment) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(report.comparison)]
        lines += ["", "![metrics per round, direct and through the gateway](curves.png)"]
    return "\n".join(lines) + "\n"


def _verdict(report: CompareReport) -> str:
    """A few words for the plot's title."""
    comparison = report.comparison
    if comparison is None:
        return "no comparison: a run failed or reported no results"
    first = comparison.first_difference
    if first is not None:
        return f"DIFFERENT: first in round {first.round}, {first.metric}"
    if comparison.identical:
        return "identical, bit for bit"
    if comparison.passed:
        return f"within tolerance {comparison.tolerance:g}"
    return "DIFFERENT: final parameters" if comparison.rows else "no metrics reported"


def plot_curves(report: CompareReport, path: Path) -> None:
    """One subplot per metric, both runs overlaid with distinct markers and line styles."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    series: dict[str, dict[str, Series]] = {}
    for mode, summary in report.summaries.items():
        for metric, values in summary.metrics.items():
            series.setdefault(metric, {})[mode] = values
    metrics = sorted(series, key=metric_order) or ["(no metrics)"]
    columns = min(2, len(metrics))
    rows = math.ceil(len(metrics) / columns)
    figure = Figure(figsize=(6.0 * columns, 3.6 * rows + 0.8), layout="constrained")
    FigureCanvasAgg(figure)
    styles = {
        "direct": {"marker": "o", "linestyle": "-", "markersize": 9, "color": "tab:blue"},
        "gateway": {
            "marker": "x",
            "linestyle": "--",
            "markersize": 9,
            "markeredgewidth": 2,
            "color": "tab:orange",
        },
    }
    for index, metric in enumerate(metrics):
        axes = figure.add_subplot(rows, columns, index + 1)
        for mode in MODES:
            points = series.get(metric, {}).get(mode)
            if points:
                xs = sorted(points)
                label = mode if mode == "direct" else f"gateway ({report.transport})"
                axes.plot(xs, [points[x] for x in xs], label=label, **styles[mode])  # type: ignore[arg-type]
        axes.set_title(metric)
        axes.set_xlabel("round")
        axes.set_ylabel(metric.rpartition("/")[2])
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(True, alpha=0.3)
        if axes.lines:
            axes.legend()
    figure.suptitle(
        f"{report.job}: direct vs through the gateway ({report.transport})\n{_verdict(report)}"
    )
    figure.savefig(path, format="png", dpi=100)


def write_reports(report: CompareReport, out: Path | None = None) -> list[Path]:
    """Write ``report.json``, ``report.md`` and ``curves.png`` into ``out`` (or ``report.out``)."""
    directory = out or report.out
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / "report.json", directory / "report.md", directory / "curves.png"]
    paths[0].write_text(json.dumps(report_dict(report), indent=2, sort_keys=True) + "\n")
    paths[1].write_text(_markdown(report))
    plot_curves(report, paths[2])
    for mode, outcome in report.outcomes.items():
        if outcome is not None:
            log = directory / f"{mode}.log"
            log.write_text(outcome.output + "\n")
            paths.append(log)
    return paths
