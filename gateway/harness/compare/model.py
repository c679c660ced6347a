"""The comparison of two runs' results, pure: no processes, no files, no printing.

:func:`compare_summaries` lines the direct and the gateway run up round by round,
then metric, and names the first value outside the tolerance;
:class:`CompareReport` is what one ``flgate compare`` learned, whether or not
both runs reported results (:func:`summarize` reads them from a run).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ...control.jobs.results import (
    WHAT_TO_PRINT,
    RunSummary,
    summary_from_log,
    summary_from_result,
)
from ...control.jobs.spec import RunConfigValue
from ...core.exceptions import ConfigError
from ..local_run import Mode, RunOutcome

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


def summarize(outcome: RunOutcome) -> RunSummary:
    """The run's results; the error says what the app must print when there are none."""
    if outcome.result is not None:
        return summary_from_result(outcome.result)
    summary = summary_from_log(outcome.output)
    if summary is None:
        raise ConfigError(f"the {outcome.mode} run reported no results: {WHAT_TO_PRINT}")
    return summary
