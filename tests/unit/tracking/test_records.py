"""The pure core of client-side tracking: record rules, the rate limit, the bounded queue
and the batches, fed events and times only."""

from __future__ import annotations

import math

import pytest

from gateway.tracking.records import (
    MAX_STEP,
    MAX_TAG_CHARS,
    Accepted,
    RateLimited,
    RecordError,
    Request,
    TokenBucket,
    TrackingLimits,
    TrackingProtocol,
    check_point,
    parse_body,
)
from gateway.tracking.series import Point


def _points(count: int, tag: str = "loss") -> list[Point]:
    return [Point(tag, step, float(step)) for step in range(count)]


@pytest.mark.parametrize(
    ("tag", "step", "value", "problem"),
    [
        (7, 0, 1.0, "tag: not a string"),
        ("", 0, 1.0, "tag: must have 1 to 128"),
        ("x" * (MAX_TAG_CHARS + 1), 0, 1.0, "tag: must have 1 to 128"),
        ("has space", 0, 1.0, "tag: only letters"),
        ("/leading", 0, 1.0, "tag: only letters"),
        ('quote"', 0, 1.0, "tag: only letters"),
        ("loss", -1, 1.0, "step: must be between 0 and"),
        ("loss", MAX_STEP + 1, 1.0, "step: must be between 0 and"),
        ("loss", 1.5, 1.0, "step: not an integer"),
        ("loss", True, 1.0, "step: not an integer"),
        ("loss", 0, "1.0", "value: not a number"),
        ("loss", 0, None, "value: not a number"),
        ("loss", 0, False, "value: not a number"),
        ("loss", 0, math.nan, "value: not a finite number"),
        ("loss", 0, -math.inf, "value: not a finite number"),
        ("loss", 0, 10**400, "value: not a finite number"),
    ],
)
def test_a_record_that_breaks_a_rule_is_refused_naming_the_field_and_the_problem(
    tag: object, step: object, value: object, problem: str
) -> None:
    with pytest.raises(RecordError, match=f"^records\\[3\\]\\.{problem}"):
        check_point(tag, step, value, where="records[3]")


def test_a_valid_record_becomes_a_point_with_a_float_value() -> None:
    assert check_point("train/loss_1.a-b", MAX_STEP, 3) == Point("train/loss_1.a-b", MAX_STEP, 3.0)
    assert check_point("x" * MAX_TAG_CHARS, 0, -0.5).value == -0.5


def test_a_body_is_read_into_its_records_drop_count_and_flush() -> None:
    body = {"records": [{"tag": "a", "step": 1, "value": 2.5}], "dropped": 4, "flush": True}
    assert parse_body(body, max_records=10) == Request([Point("a", 1, 2.5)], 4, True)
    assert parse_body({"records": []}, max_records=10) == Request([], 0, False)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ([], "must be a JSON object"),
        ({}, "'records' must be a list"),
        ({"records": {}}, "'records' must be a list"),
        ({"records": [{}] * 3}, "has 3 records, more than 2"),
        ({"records": [], "dropped": -1}, "'dropped' must be a count"),
        ({"records": [], "dropped": "many"}, "'dropped' must be a count"),
        ({"records": [], "flush": 1}, "'flush' must be true or false"),
        ({"records": [1]}, r"records\[0\]: not an object"),
        ({"records": [{"tag": "a", "step": 0}]}, r"records\[0\]\.value: not a number"),
    ],
)
def test_a_malformed_body_is_refused_naming_the_problem(body: object, problem: str) -> None:
    with pytest.raises(RecordError, match=problem):
        parse_body(body, max_records=2)


def test_the_token_bucket_allows_a_burst_then_the_rate_and_says_how_long_to_wait() -> None:
    bucket = TokenBucket(rate=100, burst=1000, now=0.0)
    assert bucket.take(1000, 0.0) == 0
    assert bucket.take(10, 0.0) == pytest.approx(0.1)
    assert bucket.take(10, 0.1) == 0  # refilled at the rate
    assert bucket.take(1, 0.1) > 0
    assert bucket.take(1001, 100.0) == math.inf  # more than the burst: never
    assert bucket.take(1000, 100.0) == 0  # refilled up to the burst only


def test_a_request_over_the_rate_is_refused_whole_and_nothing_is_queued() -> None:
    protocol = TrackingProtocol(TrackingLimits(rate=10, burst=20))
    protocol.open("job", 0.0)
    assert protocol.receive("job", Request(_points(15)), 0.0) == Accepted(queued=15, dropped=0)
    refused = protocol.receive("job", Request(_points(10), dropped=3), 0.0)
    assert isinstance(refused, RateLimited) and refused.retry_after == pytest.approx(0.5)
    assert protocol.queued("job") == 15
    # The writer sends the same request again later: its drop count is counted once.
    assert protocol.receive("job", Request(_points(10), dropped=3), 0.5) == Accepted(10, 0)
    [batch] = protocol.due(0.5, flush=True)
    assert (len(batch.points), batch.dropped) == (25, 3)


def test_jobs_have_buckets_of_their_own() -> None:
    protocol = TrackingProtocol(TrackingLimits(rate=1, burst=5))
    protocol.open("a", 0.0)
    protocol.open("b", 0.0)
    assert protocol.receive("a", Request(_points(5)), 0.0) == Accepted(5, 0)
    assert isinstance(protocol.receive("a", Request(_points(1)), 0.0), RateLimited)
    assert protocol.receive("b", Request(_points(5)), 0.0) == Accepted(5, 0)


def test_the_queue_is_bounded_and_what_does_not_fit_is_dropped_and_counted() -> None:
    protocol = TrackingProtocol(TrackingLimits(max_queued=8, batch=100, rate=1e9, burst=100))
    protocol.open("job", 0.0)
    assert protocol.receive("job", Request(_points(5)), 0.0) == Accepted(5, 0)
    assert protocol.receive("job", Request(_points(5), dropped=2), 0.0) == Accepted(3, 2)
    assert protocol.queued("job") == 8
    [batch] = protocol.due(1.0)
    assert (len(batch.points), batch.dropped) == (8, 2 + 2)


def test_a_batch_goes_after_its_first_record_waited_a_second_or_at_once_when_full() -> None:
    protocol = TrackingProtocol(TrackingLimits(batch=4, ship_after=1.0))
    protocol.open("job", 0.0)
    protocol.receive("job", Request(_points(2)), 10.0)
    assert not protocol.ship_now("job")
    assert protocol.due(10.5) == []
    [batch] = protocol.due(11.0)
    assert batch.points == _points(2)
    protocol.shipped(batch)
    protocol.receive("job", Request(_points(9)), 11.0)
    assert protocol.ship_now("job")
    [first] = protocol.due(11.0)
    assert first.points == _points(4)
    protocol.shipped(first)
    [second] = protocol.due(11.0)  # still a full batch queued
    assert second.points == _points(9)[4:8]
    protocol.shipped(second)
    assert protocol.due(11.5) == []  # one record left, queued since 11.0
    assert [b.points for b in protocol.due(12.0)] == [_points(9)[8:]]


def test_a_flushing_app_has_its_records_shipped_at_once() -> None:
    protocol = TrackingProtocol()
    protocol.open("job", 0.0)
    protocol.receive("job", Request(_points(1), flush=True), 0.0)
    assert protocol.ship_now("job")
    [batch] = protocol.due(0.0)
    protocol.shipped(batch)
    assert not protocol.ship_now("job")


def test_a_batch_that_did_not_travel_is_handed_out_again_unchanged_until_shipped() -> None:
    protocol = TrackingProtocol()
    protocol.open("job", 0.0)
    protocol.receive("job", Request(_points(3)), 0.0)
    [batch] = protocol.due(0.0, flush=True)
    protocol.receive("job", Request(_points(2, "acc")), 0.0)
    assert protocol.due(5.0) == [batch]  # the same one: a resend, never a new batch first
    protocol.shipped(batch)
    [after] = protocol.due(5.0)
    assert after.points == _points(2, "acc")
    protocol.refused(after)  # refused for good: dropped
    assert protocol.due(10.0) == []


def test_drops_alone_are_shipped_so_the_relay_learns_of_them() -> None:
    protocol = TrackingProtocol()
    protocol.open("job", 0.0)
    protocol.receive("job", Request([], dropped=7), 0.0)
    [batch] = protocol.due(0.0)
    assert (batch.points, batch.dropped) == ([], 7)


def test_a_closed_job_is_forgotten_with_what_it_queued() -> None:
    protocol = TrackingProtocol()
    protocol.open("job", 0.0)
    protocol.receive("job", Request(_points(3)), 0.0)
    protocol.close("job")
    assert "job" not in protocol
    assert protocol.due(10.0, flush=True) == []
