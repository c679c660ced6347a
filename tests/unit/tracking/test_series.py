"""A job's metric series, read line by line from its ServerApp's output and kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.control.jobs import store as store_module
from gateway.control.jobs.results import summary_from_log
from gateway.control.jobs.store import JobStore
from gateway.tracking.series import MAX_HISTORY_LINES, Point, ServerOutput
from tests.support.flower_logs import LEGACY_LOG, MESSAGE_API_LOG


def _fed(output: str) -> tuple[ServerOutput, list[list[Point]]]:
    reader = ServerOutput()
    per_line = [reader.feed(line) for line in output.splitlines()]
    per_line.append(reader.close())
    return reader, per_line


def test_message_api_points_arrive_with_the_line_that_aggregates_them() -> None:
    reader, per_line = _fed(MESSAGE_API_LOG)
    lines = MESSAGE_API_LOG.splitlines()
    with_points = [i for i, points in enumerate(per_line[:-1]) if points]
    assert [i for i, line in enumerate(lines) if "Aggregated MetricRecord" in line] == with_points
    assert per_line[with_points[0]] == [Point("train/train_loss", 1, 1.839837577587128)]
    assert per_line[with_points[2]] == [
        Point("train/train_loss", 2, 0.265550035626243),
        Point("train/hist[0]", 2, 1.0),
        Point("train/hist[1]", 2, 2.5),
    ]
    assert (reader.round, reader.rounds) == (2, 2)
    assert per_line[-1] == []  # nothing left at the end


def test_the_legacy_history_arrives_section_by_section_and_at_the_end() -> None:
    _, per_line = _fed(LEGACY_LOG)
    lines = LEGACY_LOG.splitlines()
    arrived = {lines[i].strip() if i < len(lines) else "": p for i, p in enumerate(per_line) if p}
    # Each section's points come with the line that ends it: the next header, a blank.
    assert arrived == {
        "INFO :      \tHistory (metrics, distributed, fit):": [
            Point("evaluate/loss", 1, 2.25),
            Point("evaluate/loss", 2, 0.75),
        ],
        "INFO :      \tHistory (metrics, distributed, evaluate):": [
            Point("train/accuracy", 1, 0.5),
            Point("train/accuracy", 2, 0.875),
        ],
        "INFO :": [Point("evaluate/accuracy", 1, 0.25), Point("evaluate/accuracy", 2, 0.625)],
    }


def test_legacy_rounds_show_progress_with_their_count_from_the_config_line() -> None:
    reader = ServerOutput()
    reader.feed("INFO :      Starting Flower ServerApp, config: num_rounds=3, no round_timeout")
    assert (reader.round, reader.rounds) == (0, 3)
    reader.feed("INFO :      [ROUND 1]")
    assert (reader.round, reader.rounds) == (1, 3)


def test_an_apps_result_line_gives_its_points_and_is_kept() -> None:
    reader = ServerOutput()
    line = 'FLGATE-RESULT {"rounds": 2, "train_metrics": {"1": {"loss": 2, "ok": true}, "x": {}}}'
    assert reader.feed(line) == [Point("train/loss", 1, 2.0)]
    assert reader.results == [
        {"rounds": 2, "train_metrics": {"1": {"loss": 2, "ok": True}, "x": {}}}
    ]
    assert reader.feed("FLGATE-RESULT {not json") == []


def test_the_streaming_reader_and_the_whole_log_summary_agree() -> None:
    for log in (MESSAGE_API_LOG, LEGACY_LOG):
        _, per_line = _fed(log)
        summary = summary_from_log(log)
        assert summary is not None
        streamed: dict[str, dict[int, float]] = {}
        for point in (p for batch in per_line for p in batch):
            streamed.setdefault(point.tag, {})[point.step] = point.value
        assert streamed == summary.metrics


def test_a_history_that_never_ends_is_read_no_further_than_its_cap() -> None:
    reader = ServerOutput()
    for line in ["[SUMMARY]", "History (metrics, distributed, fit):"]:
        reader.feed(line)
    for _ in range(MAX_HISTORY_LINES + 10):
        reader.feed("{'accuracy': [(1, 0.5),")
    assert len(reader._pending) == MAX_HISTORY_LINES
    assert reader.close() == []  # not a literal: nothing, and no error


def test_points_are_kept_replaced_per_tag_and_round_and_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = JobStore(path)
    assert store.add_points("job", [Point("train/loss", 1, 2.0), Point("train/loss", 2, 1.0)]) == 0
    store.add_points("job", [Point("train/loss", 2, 0.5)])
    store.add_points("other", [Point("a", 1, 1.0)])
    store.close()
    reopened = JobStore(path)
    assert reopened.points("job") == (Point("train/loss", 1, 2.0), Point("train/loss", 2, 0.5))
    reopened.close()


def test_points_over_the_cap_are_dropped_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "MAX_POINTS_PER_JOB", 3)
    store = JobStore(tmp_path / "jobs.db")
    points = [Point("t", step, float(step)) for step in range(5)]
    assert store.add_points("job", points) == 2
    assert [p.step for p in store.points("job")] == [0, 1, 2]
    store.close()
