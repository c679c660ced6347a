"""Pending TLS handshakes: how many each source address, and all together, may have.

A TLS listener learns who a peer is only when its handshake is done; until then it
knows the address the connection came from, nothing more. A connection that opens
and never finishes its handshake costs the relay about 300 KiB (asyncio's TLS layer
holds a 256 KiB read buffer per connection) until the handshake timeout closes it:
a few thousand of them are a GB. So the tcps and https listeners ask
:meth:`PendingHandshakes.admit` as soon as a TCP connection arrives, before any TLS
state exists, and close it at once, unread, when its source or all sources together
already have their budget of handshakes in progress
(:class:`~gateway.core.config.Budgets` ``handshakes_per_source``,
``handshakes_total``). grpcs cannot ask: gRPC core does its own handshakes.

What goes wrong is counted per source: connections refused here, and handshakes
that timed out or failed (bad TLS, a refused certificate, closed half-way). As with
:class:`~.refusals.RefusalMeter`, whose :class:`~.refusals.LogLine` this returns, the
first event of a quiet source is logged as it happens and the rest as one line with
the counts: here at most one line per source per ``log_interval``.

Memory is bounded. A source is held while it has handshakes pending (at most
``handshakes_total`` sources) and while its log interval runs; at most
:data:`MAX_LOGGED_SOURCES` sources are accounted by name, the events of any further
ones are summed up under :data:`OTHER_SOURCES`.

A pure core: no I/O, no asyncio; time is passed in (monotonic seconds); the caller
writes the log lines (:meth:`PendingHandshakes.log_lines`).
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass

from ..core.config import Budgets
from ..observability import metrics
from .refusals import LogLine

MAX_LOGGED_SOURCES = 4096
"""Sources whose refusals and failures are counted and logged by name."""
OTHER_SOURCES = "other addresses"
"""The source under which the events of sources beyond :data:`MAX_LOGGED_SOURCES` are counted."""
UNKNOWN_SOURCE = "unknown address"
"""The source of a connection whose peer address the socket does not tell."""
LOG_MESSAGE = "refused or failed TLS connections"
"""The message of every log line (the counts are its fields)."""


def source_of(peername: object) -> str:
    """The source a connection counts against, from ``get_extra_info("peername")``: its
    IPv4 address, or the /64 of its IPv6 address (the least a host is given)."""
    host = peername[0] if isinstance(peername, tuple) and peername else None
    if not isinstance(host, str):
        return UNKNOWN_SOURCE
    try:
        address = ipaddress.ip_address(host.partition("%")[0])  # without an IPv6 scope
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass
class _Tally:
    """A source's events since its last log line."""

    logged_at: float | None = None
    """When the source's last line was made (the next comes ``log_interval`` later);
    ``None`` for a source that was quiet: its first event is logged at once."""
    refused: int = 0
    failed: int = 0
    refusal: str = ""
    """Why the last connection was refused."""
    failure: str = ""
    """How the last handshake failed."""

    def line(self, source: str, now: float) -> LogLine:
        """The line of the events so far, which are then reported."""
        line = LogLine(
            LOG_MESSAGE,
            {
                "source": source,
                "refused": self.refused,
                "failed": self.failed,
                "seconds": 0.0 if self.logged_at is None else round(now - self.logged_at, 1),
                "refusal": self.refusal,
                "failure": self.failure,
            },
        )
        self.logged_at = now
        self.refused = self.failed = 0
        self.refusal = self.failure = ""
        return line


class PendingHandshakes:
    """Counts the TLS handshakes in progress per source and in total, and what failed."""

    def __init__(
        self,
        budgets: Budgets = Budgets(),
        *,
        log_interval: float = 60.0,
        max_logged_sources: int = MAX_LOGGED_SOURCES,
    ) -> None:
        """``log_interval``: seconds between two log lines about one source."""
        self.per_source = budgets.handshakes_per_source
        self.total = budgets.handshakes_total
        self.log_interval = log_interval
        self._max_logged = max_logged_sources
        self._pending: Counter[str] = Counter()
        self._in_progress = 0
        self._tallies: dict[str, _Tally] = {}
        """In the order of their ``logged_at``: a line moves its source to the end."""
        self._lines: list[LogLine] = []
        self.refused: Counter[str] = Counter()
        """Refused connections by budget name (feeds metrics and tests)."""
        self.failures = 0
        """Handshakes that failed (feeds metrics and tests)."""

    def pending(self, source: str | None = None) -> int:
        """Handshakes in progress from ``source``, or in total."""
        return self._in_progress if source is None else self._pending[source]

    @property
    def sources(self) -> int:
        """Sources held in memory (pending or in a log interval; for tests)."""
        return len(self._pending.keys() | self._tallies.keys())

    def admit(self, source: str, now: float) -> bool:
        """Admit a handshake from ``source``; ``False`` when a budget is full (the caller
        closes the connection). An admitted handshake ends with :meth:`done`, once."""
        mine = self._pending[source]
        if self.per_source is not None and mine >= self.per_source:
            self._refuse(
                "handshakes_per_source",
                source,
                f"{mine} handshakes pending from that address (limit {self.per_source})",
                now,
            )
            return False
        if self.total is not None and self._in_progress >= self.total:
            self._refuse(
                "handshakes_total",
                source,
                f"{self._in_progress} handshakes pending from all addresses (limit {self.total})",
                now,
            )
            return False
        self._pending[source] = mine + 1
        self._in_progress += 1
        return True

    def done(self, source: str) -> None:
        """An admitted handshake of ``source`` ended, however it ended."""
        left = self._pending[source] - 1
        if left < 0:
            raise ValueError(f"no handshake of {source} is pending")
        if left:
            self._pending[source] = left
        else:
            del self._pending[source]  # bounded memory: an idle source is not kept
        self._in_progress -= 1

    def failed(self, source: str, reason: str, now: float) -> None:
        """An admitted handshake of ``source`` failed (``reason``: how); it still ends
        with :meth:`done`."""
        self.failures += 1
        key, tally = self._tally(source)
        tally.failed += 1
        tally.failure = reason
        self._report(key, tally, now)

    def log_lines(self, now: float) -> list[LogLine]:
        """The lines to log now, at WARNING: those the events made, and those of sources
        whose interval is over with events still unreported. Call it after events and
        now and then (a flood that stopped is reported so). Forgets quiet sources."""
        while self._tallies:
            source, tally = next(iter(self._tallies.items()))
            assert tally.logged_at is not None  # a tally is kept only once it made a line
            if now - tally.logged_at < self.log_interval:
                break
            del self._tallies[source]
            if tally.refused or tally.failed:
                self._lines.append(tally.line(source, now))
                self._tallies[source] = tally
        lines, self._lines = self._lines, []
        return lines

    def _refuse(self, budget: str, source: str, reason: str, now: float) -> None:
        self.refused[budget] += 1
        metrics.refusal("handshakes")
        key, tally = self._tally(source)
        tally.refused += 1
        tally.refusal = reason
        self._report(key, tally, now)

    def _tally(self, source: str) -> tuple[str, _Tally]:
        """The tally that counts ``source``'s events, and its key."""
        if source not in self._tallies and len(self._tallies) >= self._max_logged:
            source = OTHER_SOURCES
        tally = self._tallies.get(source)
        return source, tally if tally is not None else _Tally()

    def _report(self, key: str, tally: _Tally, now: float) -> None:
        """Make the line of ``key`` if its interval is over (at once for a quiet
        source); a line moves the tally to the end, so the tallies stay in order."""
        if tally.logged_at is None or now - tally.logged_at >= self.log_interval:
            self._tallies.pop(key, None)
            self._lines.append(tally.line(key, now))
        self._tallies.setdefault(key, tally)
