"""Prove that a Flower app gives the same results directly and through the gateway.

The same app runs twice at the same time on this machine, with the same seeds,
run-config and node configs: once with its SuperNodes dialing the SuperLink
directly, once through a relay and one site gateway per site
(:func:`gateway.harness.local_run.run_app`). Each run's per-round metrics and final
parameter hash are read by :mod:`gateway.control.jobs.results` (the app's
``FLGATE-RESULT`` line, else Flower's own log).
:func:`compare_summaries` is pure: it lines the two up round by round and names
the first value that differs. :func:`write_reports` writes ``report.json``,
``report.md`` and ``curves.png``. Nothing here prints; progress goes to a callback.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..control.jobs.results import (
    WHAT_TO_PRINT,
    RunSummary,
    Series,
    summary_from_log,
    summary_from_result,
)
from ..control.jobs.spec import JobSpec, RunConfigValue
from ..core.exceptions import ConfigError, GatewayError
from ..flower.install import FlowerInstall
from ..transport import schemes
from .local_run import Mode, Progress, RunOutcome, run_app

ROUNDS_KEY = "num-server-rounds"
MODES: tuple[Mode, Mode] = ("direct", "gateway")


@dataclass(frozen=True)
class MetricRow:
    """One metric in one round, from both runs (``None``: that run did not report it)."""

    round: int
    metric: str
    direct: float | None
    gateway: float | None
    equal: bool
    """Bit-identical (both NaN counts as equal)."""
    within: bool
    """Equal, or both present and at most the tolerance apart."""

    @property
    def abs_diff(self) -> float | None:
        if self.direct is None or self.gateway is None:
            return None
        if self.equal:
            return 0.0
        return abs(self.direct - self.gateway)


@dataclass(frozen=True)
class Comparison:
    """The two runs lined up round by round; :attr:`passed` is the verdict."""

    rows: list[MetricRow]
    tolerance: float
    direct_sha256: str | None
    gateway_sha256: str | None

    @property
    def hash_equal(self) -> bool | None:
        """``None`` when a run reported no hash (its results came from Flower's log)."""
        if self.direct_sha256 is None or self.gateway_sha256 is None:
            return None
        return self.direct_sha256 == self.gateway_sha256

    @property
    def hash_required(self) -> bool:
        """Only an exact comparison requires the final parameters to match."""
        return self.tolerance == 0

    @property
    def first_difference(self) -> MetricRow | None:
        """The first row, by round then metric, outside the tolerance."""
        return next((row for row in self.rows if not row.within), None)

    @property
    def identical(self) -> bool:
        return (
            bool(self.rows) and all(row.equal for row in self.rows) and self.hash_equal is not False
        )

    @property
    def passed(self) -> bool:
        if not self.rows or self.first_difference is not None:
            return False
        return not (self.hash_required and self.hash_equal is False)

    @property
    def message(self) -> str:
        """One sentence: the verdict, and what differs first when it fails."""
        if not self.rows:
            return "no metrics to compare: neither run reported any"
        row = self.first_difference
        if row is not None:
            if row.direct is None or row.gateway is None:
                missing = "direct" if row.direct is None else "gateway"
                return (
                    f"first difference in round {row.round}: metric {row.metric} is missing "
                    f"from the {missing} run"
                )
            bound = "" if self.tolerance == 0 else f", tolerance {self.tolerance:g}"
            return (
                f"first difference in round {row.round}, metric {row.metric}: direct "
                f"{row.direct!r} vs gateway {row.gateway!r} (abs diff {row.abs_diff:.6g}{bound})"
            )
        rounds = len({r.round for r in self.rows})
        if self.hash_equal is False:
            hashes = (
                f"the final parameters differ (sha256 direct {self.direct_sha256}, "
                f"gateway {self.gateway_sha256})"
            )
            if self.hash_required:
                return f"all {len(self.rows)} metric values are equal, but {hashes}"
            return (
                f"all {len(self.rows)} metric values over {rounds} rounds are within "
                f"{self.tolerance:g}; {hashes} (not required with a tolerance)"
            )
        params = {
            True: "the final parameters are bit-identical",
            None: "final parameters not compared (no hash reported)",
        }[self.hash_equal]
        if self.identical:
            return f"identical: {len(self.rows)} metric values over {rounds} rounds; {params}"
        return (
            f"within tolerance {self.tolerance:g}: {len(self.rows)} metric values over "
            f"{rounds} rounds; {params}"
        )


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


PHASE_ORDER = ("train", "evaluate")


def metric_order(metric: str) -> tuple[int, str]:
    """Train metrics first, then evaluate, then any other phase; by name within a phase."""
    phase = metric.partition("/")[0]
    rank = PHASE_ORDER.index(phase) if phase in PHASE_ORDER else len(PHASE_ORDER)
    return rank, metric


def compare_summaries(
    direct: RunSummary, gateway: RunSummary, *, tolerance: float = 0.0
) -> Comparison:
    """Line up both runs by round, then metric; a metric one run lacks is a difference."""
    if tolerance < 0 or math.isnan(tolerance):
        raise ConfigError(f"tolerance must be >= 0, got {tolerance}")
    keys = {
        (rnd, metric)
        for summary in (direct, gateway)
        for metric, series in summary.metrics.items()
        for rnd in series
    }
    rows = []
    for rnd, metric in sorted(keys, key=lambda key: (key[0], metric_order(key[1]))):
        a = direct.metrics.get(metric, {}).get(rnd)
        b = gateway.metrics.get(metric, {}).get(rnd)
        equal = a is not None and b is not None and _same(a, b)
        within = equal or (a is not None and b is not None and abs(a - b) <= tolerance)
        rows.append(MetricRow(rnd, metric, a, b, equal=equal, within=within))
    return Comparison(
        rows=rows,
        tolerance=tolerance,
        direct_sha256=direct.params_sha256,
        gateway_sha256=gateway.params_sha256,
    )


def validate_transport(scheme: str) -> str:
    """The scheme, lower-cased, if a transport implements it; the error lists the valid ones."""
    normalized = scheme.lower().removesuffix("://")
    if normalized not in schemes():
        valid = ", ".join(schemes())
        raise ConfigError(f"unknown transport {scheme!r}; valid: {valid}")
    return normalized


@dataclass(frozen=True)
class CompareOptions:
    """What to compare and how.

    ``gateway_run_config`` is a test hook: run-config overrides for the gateway
    run only, so a test can prove that a real difference (another seed) is caught.
    """

    job_dir: Path
    sites: int = 2
    rounds: int | None = None
    """Sets the run-config's ``num-server-rounds``; ``None`` keeps the app's."""
    transport: str = "grpcs"
    tolerance: float = 0.0
    """0: every metric and the final parameter hash must be bit-identical."""
    run_config: dict[str, RunConfigValue] = field(default_factory=dict)
    flower_bin: Path | None = None
    out: Path | None = None
    """Where the reports go; default ``./compare-<job name>``."""
    workdir: Path | None = None
    """Where the runs keep certificates and Flower logs; default a temporary
    directory, removed when both runs completed."""
    gateway_run_config: dict[str, RunConfigValue] = field(default_factory=dict)


@dataclass
class CompareReport:
    """Both runs and their comparison; :attr:`passed` decides the exit code."""

    job: str
    app_dir: Path
    flower_version: str
    transport: str
    sites: int
    run_config: dict[str, RunConfigValue]
    tolerance: float
    out: Path
    workdir: Path
    outcomes: dict[str, RunOutcome | None]
    """``None`` for a run that could not start or finish (see :attr:`error`)."""
    summaries: dict[str, RunSummary] = field(default_factory=dict)
    comparison: Comparison | None = None
    error: str | None = None
    """Why there is no comparison: a run failed or reported no results."""
    seconds: float = 0.0
    gateway_run_config: dict[str, RunConfigValue] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.error is None and self.comparison is not None and self.comparison.passed

    @property
    def message(self) -> str:
        if self.error is not None:
            return self.error
        assert self.comparison is not None
        return self.comparison.message


ProgressCallback = Callable[[str, Progress], None]


def _prepare(options: CompareOptions) -> tuple[JobSpec, dict[str, RunConfigValue], str]:
    spec = JobSpec.load(options.job_dir)
    transport = validate_transport(options.transport)
    if options.sites < spec.min_sites:
        raise ConfigError(f"job {spec.name} needs at least {spec.min_sites} sites; use --sites")
    if options.rounds is not None and options.rounds < 1:
        raise ConfigError("--rounds must be at least 1")
    if options.tolerance < 0 or math.isnan(options.tolerance):
        raise ConfigError("--tolerance must be >= 0")
    config = {**spec.run_config, **options.run_config}
    if options.rounds is not None:
        config[ROUNDS_KEY] = options.rounds
    return spec, config, transport


def _tagged(notify: ProgressCallback, mode: Mode) -> Callable[[Progress], None]:
    return lambda progress: notify(mode, progress)


async def compare_app(
    options: CompareOptions, on_progress: ProgressCallback | None = None
) -> CompareReport:
    """Run the app directly and through the gateway at once, and compare the results.

    Configuration errors raise :class:`ConfigError` before anything starts; a run
    that fails or reports nothing makes a report with :attr:`CompareReport.error`.
    """
    spec, config, transport = _prepare(options)
    install = FlowerInstall.find(options.flower_bin)
    out = options.out or Path.cwd() / f"compare-{spec.name}"
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix=f"flgate-compare-{spec.name}-"))
    notify = on_progress or (lambda _mode, _p: None)
    started = time.monotonic()
    side_config = {"direct": config, "gateway": {**config, **options.gateway_run_config}}
    runs = await asyncio.gather(
        *(
            run_app(
                spec,
                mode=mode,
                workdir=workdir / mode,
                install=install,
                sites=options.sites,
                run_config=side_config[mode],
                on_progress=_tagged(notify, mode),
                transport=transport,
            )
            for mode in MODES
        ),
        return_exceptions=True,
    )
    report = CompareReport(
        job=spec.name,
        app_dir=spec.app_dir,
        flower_version=install.version_text,
        transport=transport,
        sites=options.sites,
        run_config=config,
        tolerance=options.tolerance,
        out=out,
        workdir=workdir,
        outcomes={},
        seconds=time.monotonic() - started,
        gateway_run_config=dict(options.gateway_run_config),
    )
    errors = []
    for mode, run in zip(MODES, runs, strict=True):
        if isinstance(run, BaseException):
            if not isinstance(run, GatewayError):
                raise run
            report.outcomes[mode] = None
            errors.append(f"the {mode} run failed: {run}")
            continue
        report.outcomes[mode] = run
        if not run.ok:
            errors.append(
                f"the {mode} run did not complete (flwr run exited {run.exit_code}, "
                f"status {run.status}); its log is in {workdir / mode}"
            )
            continue
        try:
            report.summaries[mode] = summarize(run)
        except ConfigError as exc:
            errors.append(str(exc))
    if errors:
        report.error = "; ".join(errors)
    else:
        report.comparison = compare_summaries(
            report.summaries["direct"], report.summaries["gateway"], tolerance=options.tolerance
        )
    if report.error is None and options.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return report


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
        lines += ["", "| " + " | ".join(TABLE_HEADER) + " |", "|---|---|---:|---:|---:|---|"]
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


def summarize(outcome: RunOutcome) -> RunSummary:
    """The run's results; the error says what the app must print when there are none."""
    if outcome.result is not None:
        return summary_from_result(outcome.result)
    summary = summary_from_log(outcome.output)
    if summary is None:
        raise ConfigError(f"the {outcome.mode} run reported no results: {WHAT_TO_PRINT}")
    return summary
