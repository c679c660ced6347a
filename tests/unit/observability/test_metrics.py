"""The metrics module: what it records, its bounded labels, the state read at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import generate_latest

from gateway.observability import metrics


@pytest.fixture(autouse=True)
def recording() -> Iterator[None]:
    metrics.enable()
    yield


def value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_site_call_is_counted_by_job_site_method_and_status_with_its_bytes() -> None:
    before = value(
        "flgate_site_fleet_calls_total", job_id="j-a", site="s", method="PullMessages", status="200"
    )
    metrics.site_call("j-a", "s", "PullMessages", 200, 0.004, sent=10, received=25)
    metrics.site_call("j-a", "s", "PullMessages", 200, 0.006, sent=5, received=0)
    labels = {"job_id": "j-a", "site": "s", "method": "PullMessages", "status": "200"}
    assert value("flgate_site_fleet_calls_total", **labels) == before + 2
    assert value("flgate_site_sent_bytes_total", job_id="j-a", site="s") == 15
    assert value("flgate_site_received_bytes_total", job_id="j-a", site="s") == 25
    assert value("flgate_site_fleet_call_seconds_bucket", method="PullMessages", le="0.005") >= 1


def test_method_labels_are_capped_and_the_rest_count_as_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics, "_methods", {"Known"})
    monkeypatch.setattr(metrics, "MAX_METHODS", 1)
    metrics.relay_call("j-cap", "s", "Known", 200, 1, 1)
    metrics.relay_call("j-cap", "s", "MadeUp", 200, 1, 1)

    def calls(method: str) -> float:
        labels = {"job_id": "j-cap", "site": "s", "method": method, "status": "200"}
        return value("flgate_relay_fleet_calls_total", **labels)

    assert (calls("Known"), calls("other"), calls("MadeUp")) == (1, 1, 0)


def test_a_jobs_series_go_once_enough_newer_jobs_ended() -> None:
    metrics.relay_call("j-old", "s", "GetRun", 200, 3, 4)
    metrics.job_ended("j-old")
    for n in range(metrics.KEEP_ENDED_JOBS - 1):
        metrics.relay_call(f"j-new-{n}", "s", "GetRun", 200, 1, 1)
        metrics.job_ended(f"j-new-{n}")
    assert value("flgate_relay_received_bytes_total", job_id="j-old", site="s") == 3  # still kept
    metrics.relay_call("j-last", "s", "GetRun", 200, 1, 1)
    metrics.job_ended("j-last")
    text = generate_latest(metrics.REGISTRY).decode()
    assert 'job_id="j-old"' not in text
    assert 'job_id="j-last"' in text


def test_a_job_that_never_recorded_is_not_remembered_as_ended() -> None:
    metrics.job_ended("j-silent")
    assert "j-silent" not in metrics._ended


def test_nothing_is_recorded_while_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_on", False)
    metrics.refusal("off-reason")
    monkeypatch.setattr(metrics, "_on", True)
    assert value("flgate_relay_refusals_total", reason="off-reason") == 0


def test_state_is_read_from_its_source_at_each_scrape() -> None:
    jobs = {"running": 1}
    metrics.observe(metrics.JOBS, lambda: [((state,), n) for state, n in jobs.items()])
    assert value("flgate_relay_jobs", state="running") == 1
    jobs["running"] = 0
    jobs["finished"] = 1
    assert value("flgate_relay_jobs", state="running") == 0
    assert value("flgate_relay_jobs", state="finished") == 1


def test_every_exported_name_follows_the_conventions() -> None:
    names = metrics.metric_names()
    assert "flgate_relay_fleet_calls_total" in names
    assert "flgate_relay_superlink_call_seconds_bucket" in names
    assert "flgate_relay_jobs" in names
    for name in names:
        assert name.startswith("flgate_"), name
        assert name == name.lower(), name


def test_every_exported_name_is_documented_in_the_text_format() -> None:
    # A sample of each counter, histogram and gauge so that every family has one.
    metrics.site_retry("j-doc", "PushMessages")
    text = generate_latest(metrics.REGISTRY).decode()
    assert "# HELP flgate_site_retries_total " in text
    assert "# TYPE flgate_site_fleet_call_seconds histogram" in text


def test_a_source_that_fails_leaves_the_rest_of_the_scrape_intact(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken() -> list[metrics.Sample]:
        raise RuntimeError("store closed")

    metrics.observe(metrics.IN_FLIGHT, broken)
    metrics.observe(metrics.SUPERLINKS, lambda: [((), 3)])
    try:
        text = generate_latest(metrics.REGISTRY).decode()
    finally:
        metrics.observe(metrics.IN_FLIGHT, lambda: [])
    assert "flgate_relay_superlinks_running 3.0" in text
    assert "flgate_relay_calls_in_flight " not in text
    assert "a metrics source failed" in caplog.text
