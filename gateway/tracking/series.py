"""A job's per-round metric series, read from its ServerApp's output line by line.

Pure (no I/O, no clock): :class:`ServerOutput` is fed each line as ``flwr run``
streams it and returns the points that line completes, so the relay stores them as
they arrive and ``flgate compare`` reads a finished log with the very same rules
(:func:`~gateway.control.jobs.results.summary_from_log`). It knows three sources:

- the Message API strategies' ``Aggregated MetricRecord: {...}`` after
  ``aggregate_train:`` or ``aggregate_evaluate:``, in the round of the last
  ``[ROUND n/N]`` (full precision);
- the legacy workflow's ``History`` after ``[SUMMARY]`` (its rounds show as
  ``[ROUND n]``, their count in ``num_rounds=N``; its metrics come at the end);
- an app's own ``FLGATE-RESULT {json}`` line (``<phase>_metrics`` by round).

A tag is ``phase/metric`` (``train/train_loss``, ``evaluate/accuracy``); a list
metric becomes ``name[0]``, ``name[1]``...; non-numbers are left out.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

RESULT_PREFIX = "FLGATE-RESULT "
ROUND_RE = re.compile(r"\[ROUND (\d+)(?:/(\d+))?\]")
"""A round starts: ``[ROUND n/N]`` (Message API) or ``[ROUND n]`` (legacy workflow)."""
_NUM_ROUNDS_RE = re.compile(r"\bnum_rounds=(\d+)")
"""The legacy ServerApp's "Starting Flower ServerApp, config: num_rounds=3, ..."."""
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
MAX_HISTORY_LINES = 100_000
"""Lines of one ``History`` section kept while it is read (an app could print forever)."""


@dataclass(frozen=True)
class Point:
    """One value of one series: ``tag`` at round ``step``."""

    tag: str
    step: int
    value: float


def numbers(metric: str, value: Any) -> Iterator[tuple[str, float]]:
    """A metric's numbers; a list metric becomes ``name[0]``, ``name[1]``, ..."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int | float):
        yield metric, float(value)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from numbers(f"{metric}[{index}]", item)


def result_points(result: dict[str, Any]) -> list[Point]:
    """The points of an app's ``FLGATE-RESULT`` json: every ``<phase>_metrics`` key."""
    points = []
    for key, per_round in sorted(result.items()):
        if not key.endswith("_metrics") or not isinstance(per_round, dict):
            continue
        phase = key.removesuffix("_metrics")
        for round_text, record in per_round.items():
            if not isinstance(record, dict) or not str(round_text).isdigit():
                continue
            for name, value in record.items():
                for tag, number in numbers(f"{phase}/{name}", value):
                    points.append(Point(tag, int(round_text), number))
    return points


def parse_result_line(line: str) -> dict[str, Any] | None:
    """The json of a ``FLGATE-RESULT {json}`` line, or ``None`` (no such line, or bad json)."""
    index = line.find(RESULT_PREFIX)
    if index < 0:
        return None
    try:
        parsed = json.loads(line[index + len(RESULT_PREFIX) :])
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None


class ServerOutput:
    """The state of one run's output read so far: the round, its phase, a history."""

    def __init__(self) -> None:
        self.round = 0
        """The round the output is in (0 before the first)."""
        self.rounds = 0
        """The rounds the run announced (0 until it does)."""
        self.results: list[dict[str, Any]] = []
        """The app's ``FLGATE-RESULT`` summaries seen (normally one)."""
        self._phase = "train"
        self._aggregated = False
        self._in_summary = False
        self._section: str | None = None
        self._pending: list[str] = []

    def feed(self, raw: str) -> list[Point]:
        """Read one line of output; return the points it completes."""
        if (result := parse_result_line(raw)) is not None:
            self.results.append(result)
            return result_points(result)
        line = _LOG_PREFIX_RE.sub("", raw, count=1)
        if self._in_summary:
            return self._summary_line(line.strip())
        if match := ROUND_RE.search(line):
            self.round = int(match.group(1))
            if match.group(2):
                self.rounds = int(match.group(2))
        elif not self.rounds and (match := _NUM_ROUNDS_RE.search(line)):
            self.rounds = int(match.group(1))
        elif "aggregate_train:" in line:
            self._phase = "train"
        elif "aggregate_evaluate:" in line:
            self._phase = "evaluate"
        elif (match := _AGGREGATED_RE.search(line)) and self.round:
            record = _literal(match.group(1))
            if isinstance(record, dict):
                self._aggregated = True
                return [
                    Point(tag, self.round, number)
                    for name, value in record.items()
                    for tag, number in numbers(f"{self._phase}/{name}", value)
                ]
        elif line.strip() == "[SUMMARY]" and not self._aggregated:
            self._in_summary = True
        return []

    def close(self) -> list[Point]:
        """The output ended: the points of a history section still open."""
        return self._flush()

    def _summary_line(self, text: str) -> list[Point]:
        if match := _HISTORY_RE.match(text):
            points = self._flush()
            self._section, self._pending = match.group(1), []
            return points
        if not text:
            points = self._flush()
            self._section, self._pending = None, []
            return points
        if self._section is not None and len(self._pending) < MAX_HISTORY_LINES:
            self._pending.append(text)
        return []

    def _flush(self) -> list[Point]:
        """The points of the history section read so far (then forgotten)."""
        section, pending = self._section, self._pending
        self._pending = []
        if section is None or not pending:
            return []
        phase = _HISTORY_PHASES.get(section, section)
        points = []
        if section.startswith("loss"):
            for text in pending:
                if (match := _LOSS_LINE_RE.match(text)) and (
                    value := _literal(match.group(2))
                ) is not None:
                    for tag, number in numbers(f"{phase}/loss", value):
                        points.append(Point(tag, int(match.group(1)), number))
            return points
        history = _literal(" ".join(pending))
        if isinstance(history, dict):
            for name, history_points in history.items():
                for point in history_points if isinstance(history_points, list) else []:
                    if isinstance(point, tuple) and len(point) == 2 and isinstance(point[0], int):
                        for tag, number in numbers(f"{phase}/{name}", point[1]):
                            points.append(Point(tag, int(point[0]), number))
        return points
