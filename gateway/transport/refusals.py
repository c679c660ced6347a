"""Refusal floods: what the relay does about a peer that keeps sending calls it must refuse.

An authenticated site that floods calls for jobs it is not in costs the relay a decision
and, without this, a log line per call (65 MiB of log in 50 s, measured). Each peer has a
token bucket of refusals: ``rate`` per second, ``burst`` at once. A peer that empties it
is blocked for ``block_seconds``: its calls are answered "busy" at once, unlogged, and
the transports close its connections (tcps, https) so that it must reconnect. Log lines
are aggregated per peer and kind of refusal: the first is logged as it happens, the rest
of each ``log_interval`` as one line with the count.

A pure core: time is passed in (monotonic seconds); the caller writes the log lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, kw_only=True)
class RefusalPolicy:
    """How many refusals a peer may collect before it is blocked, and how logs aggregate."""

    rate: float = 20.0
    """Refusals per second a peer may get without penalty (an honest site with a stale
    job gets about one per second)."""
    burst: float = 200.0
    """Refusals a peer may get at once."""
    block_seconds: float = 30.0
    """How long a peer that emptied its bucket is refused without a look at its calls."""
    log_interval: float = 60.0
    """Seconds over which repeated refusals of one kind and peer make one log line."""
    hold_seconds: float = 5.0
    """How long a transport holds the refusal of a blocked peer's call before it
    answers (at most until the block ends): a tarpit. Answered at once, a flooder
    with 200 calls in flight makes thousands of refusals a second, most of a core
    on grpcs; held, it makes 40, each a sleeping coroutine."""
    hold_calls: int = 256
    """Calls of one peer held at once; its further calls are refused at once."""


@dataclass(frozen=True)
class LogLine:
    """A line for the caller to log at WARNING: a constant message and its fields."""

    message: str
    extra: dict[str, Any]


@dataclass
class _Tally:
    since: float
    count: int = 0
    last_reason: str = ""


@dataclass
class _PeerState:
    tokens: float
    at: float
    blocked_until: float = 0.0
    blocked_calls: int = 0
    held: int = 0
    tallies: dict[str, _Tally] = field(default_factory=dict)


class RefusalMeter:
    """Meters refusals per peer: blocks flooders, aggregates log lines."""

    def __init__(self, policy: RefusalPolicy = RefusalPolicy()) -> None:
        self.policy = policy
        self._peers: dict[str, _PeerState] = {}
        self.blocks = 0
        """Times a peer was blocked (feeds metrics and tests)."""

    def blocked(self, peer: str, now: float) -> bool:
        """Whether ``peer``'s calls are refused unseen right now (counted, unlogged)."""
        state = self._peers.get(peer)
        if state is None or now >= state.blocked_until:
            return False
        state.blocked_calls += 1
        return True

    def hold(self, peer: str, now: float) -> float:
        """Seconds to hold the refusal of a call of blocked ``peer`` (0: answer at once);
        when more than 0, give the hold back with :meth:`unhold` once answered."""
        state = self._peers.get(peer)
        if state is None or now >= state.blocked_until or state.held >= self.policy.hold_calls:
            return 0.0
        state.held += 1
        return min(self.policy.hold_seconds, state.blocked_until - now)

    def unhold(self, peer: str) -> None:
        self._peers[peer].held -= 1

    def refused(self, peer: str, kind: str, reason: str, now: float) -> list[LogLine]:
        """Record that a call of ``peer`` was refused (``kind``: e.g. the error class);
        return the lines to log now (often none)."""
        policy = self.policy
        state = self._peers.get(peer)
        if state is None:
            state = self._peers[peer] = _PeerState(tokens=policy.burst, at=now)
        state.tokens = min(policy.burst, state.tokens + (now - state.at) * policy.rate)
        state.at = now
        lines = []
        tally = state.tallies.get(kind)
        if tally is None or now - tally.since >= policy.log_interval:
            if tally is not None and tally.count:
                lines.append(_summary(peer, kind, tally, now))
            state.tallies[kind] = _Tally(since=now)
            lines.append(LogLine("refused call", {"peer": peer, "kind": kind, "reason": reason}))
        else:
            tally.count += 1
            tally.last_reason = reason
        state.tokens -= 1
        if state.tokens < 0 and now >= state.blocked_until:
            self.blocks += 1
            state.blocked_until = now + policy.block_seconds
            state.blocked_calls = 0
            state.tokens = 0
            lines.append(
                LogLine(
                    "blocking a peer that keeps being refused",
                    {
                        "peer": peer,
                        "seconds": policy.block_seconds,
                        "rate": policy.rate,
                        "burst": policy.burst,
                    },
                )
            )
        return lines

    def flush(self, now: float) -> list[LogLine]:
        """Summaries of the tallies whose interval is over, and forget idle peers
        (call now and then, e.g. once a minute, so quiet floods are reported too)."""
        lines = []
        for peer, state in list(self._peers.items()):
            for kind, tally in list(state.tallies.items()):
                if now - tally.since >= self.policy.log_interval:
                    if tally.count:
                        lines.append(_summary(peer, kind, tally, now))
                    del state.tallies[kind]
            if state.blocked_calls and now >= state.blocked_until:
                lines.append(
                    LogLine(
                        "unblocked a peer",
                        {"peer": peer, "calls_refused_while_blocked": state.blocked_calls},
                    )
                )
                state.blocked_calls = 0
            full = state.tokens + (now - state.at) * self.policy.rate >= self.policy.burst
            if not state.tallies and now >= state.blocked_until and full and not state.held:
                del self._peers[peer]
        return lines


def _summary(peer: str, kind: str, tally: _Tally, now: float) -> LogLine:
    return LogLine(
        "refused calls",
        {
            "peer": peer,
            "kind": kind,
            "more": tally.count,  # after the one logged when the interval began
            "seconds": round(now - tally.since, 1),
            "last_reason": tally.last_reason,
        },
    )
