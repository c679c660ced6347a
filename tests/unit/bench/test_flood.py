"""The flood step's figures: latency without and with a tracking flood over the first
transport only, and the records the relay stored, against the site's limits."""

from __future__ import annotations

from pathlib import Path

from gateway.bench.flood import Flood, stored_points
from gateway.bench.report import BenchReport, table_rows, to_json
from gateway.bench.targets import FLOOD_SLOWDOWN, flood_rows, stored_bound
from gateway.control.jobs.store import JobStore
from gateway.tracking.records import TrackingLimits
from gateway.tracking.series import Point

LIMITS = TrackingLimits()


def _flood(stored: int = 12_000) -> Flood:
    return Flood(
        quiet={"SendNodeHeartbeat": [0.001, 0.002, 0.003], "PullMessages": [0.002] * 3},
        flooded={"SendNodeHeartbeat": [0.001, 0.0022, 0.004], "PullMessages": [0.003] * 3},
        seconds=5.0,
        lead=2.0,
        stored=stored,
    )


def _report() -> BenchReport:
    report = BenchReport(quick=True, flower_version="1.42.0", transports=["grpcs", "tcps"])
    flood_rows(report, _flood(), scheme="grpcs", limits=LIMITS)
    return report


def test_the_site_lets_its_burst_then_its_rate_through() -> None:
    assert stored_bound(LIMITS, 7.0) == 10_000 + 7 * 1_000
    assert stored_bound(TrackingLimits(rate=10.0, burst=5), 2.0) == 25


def test_flood_rows_compare_with_and_without_a_flood_over_the_first_transport_only() -> None:
    report = _report()
    rows = {row.key: row for row in report.rows}
    assert list(rows) == [
        "latency.flood.heartbeat.p50",
        "latency.flood.heartbeat.p99",
        "latency.flood.empty-pull.p50",
        "latency.flood.empty-pull.p99",
        "latency.flood.records_stored",
    ]
    heartbeat = rows["latency.flood.heartbeat.p50"]
    assert heartbeat.target is FLOOD_SLOWDOWN
    assert set(heartbeat.figures) == {"grpcs"}
    assert heartbeat.figures["grpcs"].direct == 2.0  # ms without the flood
    assert heartbeat.figures["grpcs"].gateway == 2.2  # ms with it
    assert heartbeat.target.met(heartbeat.figures["grpcs"]) is True
    pull = rows["latency.flood.empty-pull.p50"]
    assert pull.target is not None and pull.target.met(pull.figures["grpcs"]) is False
    stored = rows["latency.flood.records_stored"]
    assert stored.figures["grpcs"].gateway == 12_000
    assert stored.target is not None and stored.target.value == 17_000
    assert "10,000 burst + 1,000/s" in stored.target.text


def test_a_row_of_one_transport_has_one_line_in_the_table_and_is_not_missing_elsewhere() -> None:
    report = _report()
    lines = table_rows(report)
    assert len(lines) == len(report.rows)
    assert {line[3] for line in lines} == {"grpcs"}
    assert report.missing() == []
    payload = to_json(report)
    assert all(row["transports"] == ["grpcs"] for row in payload["rows"])


def test_a_flood_that_stored_nothing_is_a_missing_figure() -> None:
    report = BenchReport(quick=True, flower_version="1.42.0", transports=["grpcs"])
    flood_rows(report, _flood(stored=0), scheme="grpcs", limits=LIMITS)
    assert report.missing() == ["latency.flood.records_stored/grpcs"]


def test_the_points_a_relay_stored_are_read_from_its_job_store(tmp_path: Path) -> None:
    assert stored_points(tmp_path / "none.db", "bench") == 0
    store = JobStore(tmp_path / "jobs.db")
    store.add_points("bench", [Point("s/flood", step, 1.0) for step in range(3)])
    store.add_points("other", [Point("s/flood", 0, 1.0)])
    assert stored_points(tmp_path / "jobs.db", "bench") == 3
    store.close()
