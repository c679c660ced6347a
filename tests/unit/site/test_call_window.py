"""The site's count of Fleet calls and errors over the last minute, fed times only."""

from __future__ import annotations

import tracemalloc

from gateway.site.call_window import WINDOW_SECONDS, CallWindow


def test_an_empty_window_counts_nothing() -> None:
    assert CallWindow().counts(1234.5) == (0, 0)


def test_a_call_counts_until_exactly_sixty_seconds_have_passed() -> None:
    window = CallWindow()
    window.record(100.0, error=False)
    assert window.counts(100.0) == (1, 0)
    assert window.counts(159.999) == (1, 0)
    assert window.counts(160.0) == (0, 0)


def test_errors_are_counted_among_the_calls() -> None:
    window = CallWindow()
    for second, error in [(10.0, True), (10.5, False), (30.2, True), (69.9, False)]:
        window.record(second, error=error)
    assert window.counts(69.9) == (4, 2)
    assert window.counts(70.0) == (2, 1)  # both calls of second 10 left the window
    assert window.counts(89.999) == (2, 1)
    assert window.counts(90.0) == (1, 0)  # one second of granularity: 30.2 counted 59.8 s


def test_a_bucket_reused_a_minute_later_starts_from_zero() -> None:
    window = CallWindow()
    window.record(5.0, error=True)
    window.record(5.0 + WINDOW_SECONDS, error=False)  # the same bucket of the ring
    assert window.counts(5.0 + WINDOW_SECONDS) == (1, 0)


def test_a_call_older_than_the_bucket_it_falls_in_is_dropped() -> None:
    window = CallWindow()
    window.record(200.0, error=False)
    window.record(200.0 - WINDOW_SECONDS, error=True)  # out of order, and out of the window
    assert window.counts(200.0) == (1, 0)


def test_a_long_idle_gap_forgets_everything() -> None:
    window = CallWindow()
    for second in range(WINDOW_SECONDS):
        window.record(float(second), error=second % 2 == 0)
    assert window.counts(WINDOW_SECONDS - 0.5) == (60, 30)
    assert window.counts(10_000.0) == (0, 0)


def test_memory_stays_the_same_however_many_calls_it_counts() -> None:
    window = CallWindow()
    tenths = range(0, 120_000)  # ten calls a second for 12,000 s
    for tenth in tenths[:1_200]:  # two minutes: every bucket is in use
        window.record(tenth / 10, error=tenth % 7 == 0)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for tenth in tenths[1_200:]:
            window.record(tenth / 10, error=tenth % 7 == 0)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 4096  # a few ints in the buckets, nothing per call
    last_minute = [t for t in tenths if t >= 120_000 - 10 * WINDOW_SECONDS]
    assert window.counts(11_999.95) == (len(last_minute), sum(t % 7 == 0 for t in last_minute))
