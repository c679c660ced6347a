"""How many Fleet calls a site's SuperNodes made in the last minute, and how many failed.

The site agent reports these two numbers on every poll, so that ``flgate job sites``
shows which sites are busy and which are failing without a metrics stack. A site
makes many calls a second, so the window keeps no call, only one bucket per second
in a ring of :data:`WINDOW_SECONDS`: its memory is the same after a minute and after
a month. The price is one second of granularity: a call counts for between 59 and 60
seconds (exactly 60 when it falls on a whole second).

A pure core: time is passed in (any clock in seconds that does not go backwards, the
forwarder uses ``time.monotonic``), nothing here waits or locks; the forwarder runs
in the agent's one event loop.
"""

from __future__ import annotations

import math

WINDOW_SECONDS = 60
"""The window's length, and its number of one-second buckets."""


class CallWindow:
    """Calls and errors over the last :data:`WINDOW_SECONDS` seconds."""

    __slots__ = ("_calls", "_errors", "_seconds")

    def __init__(self) -> None:
        # Bucket i holds the calls of the whole second _seconds[i] (i = that second
        # modulo the window); a bucket whose second left the window is stale, and is
        # reset by the next call that falls into it and skipped by counts().
        self._seconds = [-1] * WINDOW_SECONDS
        self._calls = [0] * WINDOW_SECONDS
        self._errors = [0] * WINDOW_SECONDS

    def record(self, now: float, *, error: bool) -> None:
        """Count one call answered at ``now``; ``error``: answered with HTTP status >= 400."""
        second = math.floor(now)
        i = second % WINDOW_SECONDS
        if self._seconds[i] > second:
            return  # a newer second holds the bucket: this call is out of the window anyway
        if self._seconds[i] < second:
            self._seconds[i], self._calls[i], self._errors[i] = second, 0, 0
        self._calls[i] += 1
        self._errors[i] += error

    def counts(self, now: float) -> tuple[int, int]:
        """(calls, errors) answered in the last :data:`WINDOW_SECONDS` seconds before ``now``."""
        oldest = math.floor(now) - WINDOW_SECONDS
        calls = errors = 0
        for second, c, e in zip(self._seconds, self._calls, self._errors, strict=True):
            if oldest < second <= now:
                calls += c
                errors += e
        return calls, errors
