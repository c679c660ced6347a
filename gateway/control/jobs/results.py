"""What a finished run reported: each metric by round and the final parameters' hash.

An app made for comparison prints one ``FLGATE-RESULT {json}`` line from its
ServerApp (see ``jobs/quickstart-numpy``). For an app that prints none, Flower's
own log is read instead: the Message API strategies log every round's
aggregated metrics at full precision; the legacy ``ServerApp`` logs its
``History`` after ``[SUMMARY]``. Neither logs a hash of the parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...tracking.series import RESULT_PREFIX, Point, ServerOutput, parse_result_line, result_points

COMPLETED = "finished:completed"
SOURCE_RESULT = "FLGATE-RESULT"
SOURCE_FLOWER_LOG = "flower-log"
WHAT_TO_PRINT = (
    "the app must print one line `FLGATE-RESULT {json}` from its ServerApp, with keys "
    '"rounds", "final_params_sha256", "train_metrics" and "evaluate_metrics" '
    '(each {"<round>": {"<metric>": number}}), as jobs/quickstart-numpy does, or '
    "use a Flower strategy that logs its aggregated metrics per round"
)

Series = dict[int, float]
"""One metric's value by round."""


@dataclass(frozen=True)
class RunSummary:
    """What one run reported: each metric by round, and the final parameters' hash."""

    metrics: dict[str, Series]
    """By ``phase/name``, e.g. ``train/train_loss``, ``evaluate/eval_loss``."""
    params_sha256: str | None = None
    rounds: int = 0
    source: str = SOURCE_RESULT


def _summary(points: list[Point], **fields: Any) -> RunSummary:
    metrics: dict[str, Series] = {}
    for point in points:
        metrics.setdefault(point.tag, {})[point.step] = point.value
    return RunSummary(metrics=metrics, **fields)


def summary_from_result(result: dict[str, Any]) -> RunSummary:
    """A run's summary from its ``FLGATE-RESULT`` json: every ``<phase>_metrics`` key counts."""
    points = result_points(result)
    sha = result.get("final_params_sha256")
    rounds = max((p.step for p in points), default=0)
    return _summary(
        points,
        params_sha256=str(sha) if sha else None,
        rounds=int(result.get("rounds") or rounds),
    )


def summary_from_log(output: str) -> RunSummary | None:
    """A run's summary from Flower's own log, or ``None`` when it holds no results.

    Message API strategies log ``Aggregated MetricRecord: {...}`` per round at
    full precision; legacy strategies log a ``[SUMMARY]`` with their history
    (:class:`~gateway.tracking.series.ServerOutput` reads both, as the relay
    does while a job runs). Neither logs a hash of the parameters.
    """
    reader = ServerOutput()
    points = [p for line in output.splitlines() for p in reader.feed(line)]
    points += reader.close()
    if not points:
        return None
    return _summary(points, rounds=max(p.step for p in points), source=SOURCE_FLOWER_LOG)


def parse_result(output: str) -> dict[str, Any] | None:
    """The app's ``FLGATE-RESULT {json}`` summary line, if it printed one (the last)."""
    for line in reversed(output.splitlines()):
        if RESULT_PREFIX in line:
            return parse_result_line(line)
    return None
