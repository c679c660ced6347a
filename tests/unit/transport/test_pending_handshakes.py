"""The pure core of pending TLS handshakes: budgets per source and in total, log lines
at most once per source and interval, and memory that does not grow with a flood."""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.config import Budgets
from gateway.transport.admission import Admission
from gateway.transport.handshakes import (
    LOG_MESSAGE,
    OTHER_SOURCES,
    UNKNOWN_SOURCE,
    PendingHandshakes,
    source_of,
)
from gateway.transport.refusals import LogLine, RefusalMeter, RefusalPolicy

INTERVAL = 60.0


def _handshakes(per_source: int | None = 2, total: int | None = 3) -> PendingHandshakes:
    budgets = Budgets(handshakes_per_source=per_source, handshakes_total=total)
    return PendingHandshakes(budgets, log_interval=INTERVAL)


def _fields(lines: list[LogLine]) -> list[dict[str, Any]]:
    assert all(line.message == LOG_MESSAGE for line in lines)
    return [line.extra for line in lines]


def test_a_source_gets_its_budget_and_the_next_is_refused_while_another_source_is_admitted() -> (
    None
):
    handshakes = _handshakes(per_source=2, total=None)
    assert handshakes.admit("10.0.0.2", 0.0) and handshakes.admit("10.0.0.2", 0.0)
    assert not handshakes.admit("10.0.0.2", 0.0)
    assert handshakes.admit("10.0.0.3", 0.0)
    assert (handshakes.pending("10.0.0.2"), handshakes.pending("10.0.0.3")) == (2, 1)
    handshakes.done("10.0.0.2")
    assert handshakes.admit("10.0.0.2", 1.0)
    assert handshakes.refused == {"handshakes_per_source": 1}


def test_the_total_budget_refuses_every_source_once_full() -> None:
    handshakes = _handshakes(per_source=None, total=3)
    assert all(handshakes.admit(source, 0.0) for source in ("a", "a", "b"))
    assert not handshakes.admit("c", 0.0)
    [line] = handshakes.log_lines(0.0)
    assert line.extra["refusal"] == "3 handshakes pending from all addresses (limit 3)"
    handshakes.done("b")
    assert handshakes.admit("c", 0.0)
    assert handshakes.pending() == 3
    assert handshakes.refused == {"handshakes_total": 1}


def test_no_budget_admits_everything() -> None:
    handshakes = _handshakes(per_source=None, total=None)
    assert all(handshakes.admit("a", 0.0) for _ in range(10_000))
    assert handshakes.pending() == 10_000


def test_every_handshake_that_ends_gives_its_place_back_and_an_idle_source_is_forgotten() -> None:
    handshakes = _handshakes()
    handshakes.admit("a", 0.0)
    handshakes.admit("a", 0.0)
    handshakes.done("a")
    handshakes.done("a")
    assert (handshakes.pending(), handshakes.pending("a"), handshakes.sources) == (0, 0, 0)
    with pytest.raises(ValueError, match="no handshake of a is pending"):
        handshakes.done("a")


def test_the_first_refusal_is_logged_at_once_and_the_rest_of_the_interval_as_one_line() -> None:
    handshakes = _handshakes(per_source=1, total=None)
    assert handshakes.admit("10.0.0.2", 0.0)
    for second in range(2_700):
        assert not handshakes.admit("10.0.0.2", second / 100)
    [first] = _fields(handshakes.log_lines(27.0))
    assert first == {
        "source": "10.0.0.2",
        "refused": 1,
        "failed": 0,
        "seconds": 0.0,
        "refusal": "1 handshakes pending from that address (limit 1)",
        "failure": "",
    }
    assert handshakes.log_lines(59.9) == []
    [summary] = _fields(handshakes.log_lines(60.0))
    assert (summary["refused"], summary["seconds"]) == (2_699, 60.0)
    assert handshakes.log_lines(119.0) == []  # nothing more happened
    handshakes.done("10.0.0.2")
    assert handshakes.sources == 1  # its interval still runs: a new event would not be logged
    assert handshakes.log_lines(120.0) == []
    assert handshakes.sources == 0


def test_failures_are_counted_with_their_reason_in_the_same_line_as_refusals() -> None:
    handshakes = _handshakes(per_source=1, total=None)
    handshakes.admit("a", 0.0)
    handshakes.failed("a", "no TLS handshake within 10 s", 10.0)
    handshakes.done("a")
    handshakes.admit("a", 11.0)
    handshakes.admit("a", 12.0)
    handshakes.failed("a", "TLS error: HTTP_REQUEST", 13.0)
    handshakes.done("a")
    [first] = _fields(handshakes.log_lines(13.0))
    assert (first["failed"], first["failure"]) == (1, "no TLS handshake within 10 s")
    [summary] = _fields(handshakes.log_lines(70.0))
    assert (summary["refused"], summary["failed"]) == (1, 1)
    assert summary["failure"] == "TLS error: HTTP_REQUEST"
    assert handshakes.failures == 2


def test_an_event_after_the_interval_makes_its_line_at_once() -> None:
    handshakes = _handshakes(per_source=0, total=None)
    handshakes.admit("a", 0.0)
    handshakes.admit("a", 1.0)
    handshakes.admit("a", 61.0)  # nobody asked for the lines in between
    lines = _fields(handshakes.log_lines(61.0))
    assert [(line["refused"], line["seconds"]) for line in lines] == [(1, 0.0), (2, 61.0)]


def test_a_flood_from_many_sources_is_logged_by_name_up_to_a_bound_then_summed_up() -> None:
    budgets = Budgets(handshakes_per_source=0)
    handshakes = PendingHandshakes(budgets, log_interval=INTERVAL, max_logged_sources=10)
    for n in range(10_000):
        handshakes.admit(f"10.0.{n // 256}.{n % 256}", n / 1000)
    lines = _fields(handshakes.log_lines(10.0))
    assert len(lines) == 11 and lines[-1]["source"] == OTHER_SOURCES
    assert handshakes.sources == 11
    [others] = _fields(handshakes.log_lines(70.0))
    assert (others["source"], others["refused"]) == (OTHER_SOURCES, 10_000 - 11)
    assert handshakes.log_lines(200.0) == []
    assert handshakes.sources == 0


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["admit", "done", "fail", "tick"]),
            st.sampled_from(["a", "b", "c"]),
            st.floats(min_value=0.0, max_value=30.0),
        ),
        max_size=200,
    )
)
def test_budgets_hold_lines_come_once_per_interval_and_everything_is_forgotten_at_the_end(
    steps: list[tuple[str, str, float]],
) -> None:
    handshakes = _handshakes(per_source=2, total=4)
    now = 0.0
    pending: dict[str, int] = defaultdict(int)
    logged: dict[str, list[float]] = defaultdict(list)
    events = 0

    def collect() -> None:
        for line in handshakes.log_lines(now):
            logged[line.extra["source"]].append(now)

    for action, source, delay in steps:
        now += delay
        if action == "admit":
            if handshakes.admit(source, now):
                pending[source] += 1
            else:
                events += 1
        elif action in ("done", "fail") and pending[source]:
            if action == "fail":
                handshakes.failed(source, "closed during the handshake", now)
                events += 1
            handshakes.done(source)
            pending[source] -= 1
        collect()
        assert all(handshakes.pending(s) == n <= 2 for s, n in pending.items())
        assert handshakes.pending() == sum(pending.values()) <= 4
    for source, n in pending.items():
        for _ in range(n):
            handshakes.done(source)
    now += 2 * INTERVAL  # past the last interval, whatever the rounding of the sums
    collect()
    now += 2 * INTERVAL
    collect()
    assert handshakes.sources == 0
    for times in logged.values():
        assert all(later - earlier >= INTERVAL for earlier, later in itertools.pairwise(times))
    assert bool(events) == bool(logged)


def test_the_source_of_a_connection_is_its_address_or_its_ipv6_64() -> None:
    assert source_of(("127.0.0.2", 50000)) == "127.0.0.2"
    assert source_of(("2001:db8:1:2:3:4:5:6", 443, 0, 0)) == "2001:db8:1:2::/64"
    assert source_of(("::ffff:192.0.2.7", 443, 0, 0)) == "192.0.2.7"
    assert source_of(("fe80::1%eth0", 443, 0, 2)) == "fe80::/64"
    assert source_of(None) == source_of("/tmp/socket") == UNKNOWN_SOURCE


def test_the_admission_holds_the_relays_handshakes_with_its_budgets_and_log_interval() -> None:
    budgets = Budgets(handshakes_per_source=7, handshakes_total=9)
    admission = Admission(budgets, refusals=RefusalMeter(RefusalPolicy(log_interval=5.0)))
    handshakes = admission.handshakes
    assert (handshakes.per_source, handshakes.total, handshakes.log_interval) == (7, 9, 5.0)
