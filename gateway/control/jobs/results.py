"""What a finished run reported: each metric by round and the final parameters' hash.

An app made for comparison prints one ``FLGATE-RESULT {json}`` line from its
ServerApp (see ``jobs/quickstart-numpy``). For an app that prints none, Flower's
own log is read instead: the Message API strategies log every round's
aggregated metrics at full precision; the legacy ``ServerApp`` logs its
``History`` after ``[SUMMARY]``. Neither logs a hash of the parameters.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

ROUND_RE = re.compile(r"\[ROUND (\d+)/(\d+)\]")
RESULT_PREFIX = "FLGATE-RESULT "
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


def _values(metric: str, value: Any) -> Iterator[tuple[str, float]]:
    """A metric's numbers; a list metric becomes ``name[0]``, ``name[1]``, ..."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int | float):
        yield metric, float(value)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _values(f"{metric}[{index}]", item)


def summary_from_result(result: dict[str, Any]) -> RunSummary:
    """A run's summary from its ``FLGATE-RESULT`` json: every ``<phase>_metrics`` key counts."""
    metrics: dict[str, Series] = {}
    for key, per_round in sorted(result.items()):
        if not key.endswith("_metrics") or not isinstance(per_round, dict):
            continue
        phase = key.removesuffix("_metrics")
        for round_text, record in per_round.items():
            if not isinstance(record, dict):
                continue
            for name, value in record.items():
                for metric, number in _values(f"{phase}/{name}", value):
                    metrics.setdefault(metric, {})[int(round_text)] = number
    sha = result.get("final_params_sha256")
    rounds = max((max(s) for s in metrics.values() if s), default=0)
    return RunSummary(
        metrics=metrics,
        params_sha256=str(sha) if sha else None,
        rounds=int(result.get("rounds") or rounds),
    )


_LOG_PREFIX_RE = re.compile(r"^[A-Z]+\s*:\s*")
_AGGREGATED_RE = re.compile(r"Aggregated MetricRecord: (\{.*\})\s*$")
_HISTORY_RE = re.compile(r"^History \((.+)\):$")
_LOSS_LINE_RE = re.compile(r"^round (\d+): (\S+)$")
_HISTORY_PHASES = {
    "loss, distributed": "evaluate",
    "loss, centralized": "server",
    "metrics, distributed, fit": "train",
    "metrics, distributed, evaluate": "evaluate",
    "metrics, centralized": "server",
}


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None


def summary_from_log(output: str) -> RunSummary | None:
    """A run's summary from Flower's own log, or ``None`` when it holds no results.

    Message API strategies log ``Aggregated MetricRecord: {...}`` per round at
    full precision; legacy strategies log a ``[SUMMARY]`` with their history.
    Neither logs a hash of the parameters.
    """
    lines = [_LOG_PREFIX_RE.sub("", line, count=1) for line in output.splitlines()]
    metrics: dict[str, Series] = {}
    current_round, phase = 0, "train"
    for line in lines:
        if match := ROUND_RE.search(line):
            current_round = int(match.group(1))
        elif "aggregate_train:" in line:
            phase = "train"
        elif "aggregate_evaluate:" in line:
            phase = "evaluate"
        elif (match := _AGGREGATED_RE.search(line)) and current_round:
            record = _literal(match.group(1))
            if isinstance(record, dict):
                for name, value in record.items():
                    for metric, number in _values(f"{phase}/{name}", value):
                        metrics.setdefault(metric, {})[current_round] = number
    if not metrics and "[SUMMARY]" in lines:
        metrics = _legacy_history(lines[lines.index("[SUMMARY]") + 1 :])
    if not metrics:
        return None
    rounds = max(max(s) for s in metrics.values())
    return RunSummary(metrics=metrics, rounds=rounds, source=SOURCE_FLOWER_LOG)


def _legacy_history(lines: list[str]) -> dict[str, Series]:
    """Flower's ``History`` as logged by the legacy ``ServerApp`` after ``[SUMMARY]``."""
    metrics: dict[str, Series] = {}
    section: str | None = None
    pending: list[str] = []

    def flush() -> None:
        if section is None or not pending:
            return
        phase = _HISTORY_PHASES.get(section, section)
        if section.startswith("loss"):
            for text in pending:
                if (match := _LOSS_LINE_RE.match(text)) and (
                    value := _literal(match.group(2))
                ) is not None:
                    for metric, number in _values(f"{phase}/loss", value):
                        metrics.setdefault(metric, {})[int(match.group(1))] = number
            return
        history = _literal(" ".join(pending))
        if isinstance(history, dict):
            for name, points in history.items():
                for point in points if isinstance(points, list) else []:
                    if isinstance(point, tuple) and len(point) == 2:
                        for metric, number in _values(f"{phase}/{name}", point[1]):
                            metrics.setdefault(metric, {})[int(point[0])] = number

    for raw in lines:
        text = raw.strip()
        if match := _HISTORY_RE.match(text):
            flush()
            section, pending = match.group(1), []
        elif not text:
            flush()
            section, pending = None, []
        elif section is not None:
            pending.append(text)
    flush()
    return metrics


def parse_result(output: str) -> dict[str, Any] | None:
    """The app's ``FLGATE-RESULT {json}`` summary line, if it printed one."""
    for line in reversed(output.splitlines()):
        index = line.find(RESULT_PREFIX)
        if index >= 0:
            try:
                parsed: dict[str, Any] = json.loads(line[index + len(RESULT_PREFIX) :])
            except ValueError:
                return None
            return parsed
    return None
