"""The reliable-messaging state machines: retries on the site, dedup on the relay.

Nothing here does I/O, sleeps or reads a clock: the time (``now``, seconds)
and the random source are passed in, so every decision can be replayed in a
test. The asyncio shells in :mod:`gateway.reliable.sender` and
:mod:`gateway.reliable.receiver` only carry these decisions out.

The contract (DESIGN.md section 5): the sender gives a logical request one
message id and reuses it on every retry, retrying transport failures with
exponential backoff and jitter until a transaction deadline; the receiver
executes each id at most once, makes duplicates wait for or replay that one
result, and remembers completed ids for twice the deadline.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal, overload

from ..core.exceptions import ConfigError
from .store import DedupStore, Record, State


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How the sender retries one logical request, and how long ids are kept.

    Backoff before retry ``n`` (``n = 1`` after the first failure) is
    ``b = min(max_backoff, initial_backoff * multiplier ** (n - 1))``, of which
    the fraction ``jitter`` is random: the delay is uniform in
    ``[b * (1 - jitter), b]``. ``jitter=1`` is AWS-style "full jitter"
    (uniform in ``[0, b]``); ``jitter=0`` is a fixed schedule. Randomness
    spreads the retries of many SuperNodes after a relay blip so they do not
    return in lockstep; the delay never exceeds ``max_backoff``.
    """

    initial_backoff: float = 0.05
    """Backoff before the first retry, in seconds."""
    max_backoff: float = 2.0
    """Cap on any single backoff, in seconds."""
    multiplier: float = 2.0
    """Growth of the backoff per failed attempt."""
    jitter: float = 0.5
    """Fraction of each backoff that is randomised, from 0 (none) to 1 (full)."""
    deadline: float = 20.0
    """Transaction deadline in seconds from the first attempt: no attempt starts
    after it and no attempt's timeout runs past it. Flower's SuperNode abandons
    a Fleet call after 30 s and the LGS answers it within ``fleet.DEFAULT_CALL_BUDGET``
    (25 s), so 20 s leaves the give-up answer (503, which Flower retries with
    a fresh call) time to reach the SuperNode before its own timeout fires,
    which it would report as a failure of its own."""

    def __post_init__(self) -> None:
        if self.initial_backoff < 0 or self.max_backoff < self.initial_backoff:
            raise ConfigError(
                "RetryPolicy needs 0 <= initial_backoff <= max_backoff, got "
                f"initial_backoff={self.initial_backoff}, max_backoff={self.max_backoff}"
            )
        if self.multiplier < 1:
            raise ConfigError(f"RetryPolicy.multiplier must be >= 1, got {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            raise ConfigError(f"RetryPolicy.jitter must be in [0, 1], got {self.jitter}")
        if self.deadline <= 0:
            raise ConfigError(f"RetryPolicy.deadline must be > 0, got {self.deadline}")

    @property
    def result_ttl(self) -> float:
        """How long the receiver remembers a completed id: twice the deadline.

        A duplicate can only come from a sender still retrying (within
        ``deadline`` of its first attempt) or a stale copy the relay still
        accepts (before the envelope's own deadline); the factor two covers
        both, plus clock differences between site and relay.
        """
        return 2 * self.deadline

    def backoff(self, failures: int, rng: random.Random) -> float:
        """The delay after ``failures`` consecutive failed attempts (``failures >= 1``)."""
        if failures < 1:
            raise ValueError(f"backoff needs failures >= 1, got {failures}")
        base = self.initial_backoff
        # Grow step by step and stop at the cap: multiplier ** n would overflow
        # a float long before the attempt counter gets large.
        for _ in range(failures - 1):
            if base >= self.max_backoff or base == 0 or self.multiplier == 1:
                break
            base *= self.multiplier
        base = min(base, self.max_backoff)
        return base * (1 - self.jitter) + base * self.jitter * rng.random()


DEFAULT_POLICY = RetryPolicy()


# ---------------------------------------------------------------------------
# Sender


@dataclass(frozen=True)
class Retry:
    """Send again, with the same id, after ``delay`` seconds, as attempt ``attempt``."""

    delay: float
    attempt: int


@dataclass(frozen=True)
class GiveUp:
    """Stop retrying; ``reason`` says why, for the error and the logs."""

    reason: str
    attempts: int


class SenderProtocol:
    """One logical request on the site side: its id, attempts and deadline.

    The id never changes, so the receiver can tell a retry from a new request.
    Call :meth:`first_attempt`, then for each attempt either :meth:`on_reply`
    or :meth:`on_failure`; the latter says whether and when to try again.
    Calls out of that order raise ``RuntimeError`` (a bug in the caller).
    """

    def __init__(
        self,
        message_id: str,
        *,
        policy: RetryPolicy = DEFAULT_POLICY,
        now: float,
        rng: random.Random,
        budget: float | None = None,
    ) -> None:
        """``budget`` shortens the transaction deadline (never lengthens it),
        for calls whose caller waits less than ``policy.deadline``."""
        if not message_id:
            raise ValueError("a reliable request needs a non-empty message id")
        self._message_id = message_id
        self._policy = policy
        self._rng = rng
        self.started_at = now
        span = policy.deadline if budget is None else min(policy.deadline, budget)
        self.deadline_at = now + span
        self._attempt = 0
        self._failures = 0
        self._sending = False
        self._outcome: str | None = None
        self.finished_at: float | None = None

    @property
    def message_id(self) -> str:
        return self._message_id

    @property
    def attempt(self) -> int:
        """Number of the current (or last) attempt; 0 before the first."""
        return self._attempt

    @property
    def done(self) -> bool:
        """True once a reply came or the sender gave up."""
        return self._outcome is not None

    @property
    def gave_up(self) -> bool:
        return self._outcome == "gave up"

    def remaining(self, now: float) -> float:
        """Seconds left before the deadline (never negative): the attempt's timeout."""
        return max(0.0, self.deadline_at - now)

    def first_attempt(self) -> int:
        """Start attempt 1 and return its number."""
        if self._attempt != 0:
            raise RuntimeError(f"message {self._message_id}: first_attempt called twice")
        self._attempt = 1
        self._sending = True
        return 1

    def on_reply(self, now: float) -> None:
        """The current attempt got a reply: the request is done."""
        self._require_sending("on_reply")
        self._sending = False
        self._outcome = "replied"
        self.finished_at = now

    @overload
    def on_failure(self, now: float, *, retryable: Literal[False], error: str = "") -> GiveUp: ...
    @overload
    def on_failure(self, now: float, *, retryable: bool, error: str = "") -> Retry | GiveUp: ...
    def on_failure(self, now: float, *, retryable: bool, error: str = "") -> Retry | GiveUp:
        """The current attempt failed; decide whether to try again.

        ``retryable`` is False for failures a retry cannot heal (TLS or
        authentication refused, a frame over the limit). A retry is granted
        only when it would start before the deadline.
        """
        self._require_sending("on_failure")
        self._failures += 1
        cause = f" ({error})" if error else ""
        if not retryable:
            return self._give_up(now, f"the failure is not retryable{cause}")
        delay = self._policy.backoff(self._failures, self._rng)
        if now + delay >= self.deadline_at:
            return self._give_up(
                now,
                f"the deadline of {self.deadline_at - self.started_at:g}s would pass "
                f"before another attempt{cause}",
            )
        self._attempt += 1
        return Retry(delay=delay, attempt=self._attempt)

    def _give_up(self, now: float, why: str) -> GiveUp:
        self._sending = False
        self._outcome = "gave up"
        self.finished_at = now
        attempts = self._attempt
        plural = "" if attempts == 1 else "s"
        return GiveUp(
            reason=(
                f"message {self._message_id}: gave up after {attempts} attempt{plural} "
                f"in {now - self.started_at:.2f}s: {why}"
            ),
            attempts=attempts,
        )

    def _require_sending(self, what: str) -> None:
        if not self._sending:
            state = self._outcome or "not started"
            raise RuntimeError(f"message {self._message_id}: {what} called when {state}")


# ---------------------------------------------------------------------------
# Receiver


@dataclass(frozen=True)
class Execute:
    """New id: run the request, then call ``complete`` or ``abandon`` (or ``fail``)."""


@dataclass(frozen=True)
class Join:
    """The id is executing right now: wait for that execution's reply."""


@dataclass(frozen=True)
class Cached:
    """The id already completed: answer with this serialized reply."""

    reply: bytes


@dataclass(frozen=True)
class Refuse:
    """The id may have executed but its reply is unknown: do not run it again."""

    reason: str


Decision = Execute | Join | Cached | Refuse


class ReceiverProtocol:
    """At-most-once execution per message id, on the relay.

    Durable records (pending, completed with reply) live in a
    :class:`~gateway.reliable.store.DedupStore`; the ids executing *in this
    process* live in memory. A pending record with no execution in memory was
    left by a relay that stopped mid-call (or by :meth:`fail`): the request
    may or may not have reached the SuperLink, so it is refused, never run
    again; the SuperNode then retries with a fresh call of its own.

    ``max_reply_bytes`` (``None``: no limit) bounds the replies kept for
    replay; a larger reply is delivered once and its duplicates are refused.
    """

    def __init__(
        self,
        store: DedupStore,
        *,
        policy: RetryPolicy = DEFAULT_POLICY,
        max_reply_bytes: int | None = None,
    ) -> None:
        self._store = store
        self.result_ttl = policy.result_ttl
        self.max_reply_bytes = max_reply_bytes
        self._in_flight: dict[str, tuple[float, str]] = {}
        """The ids executing in this process: when each started, and its note."""
        self.executed = 0
        self.joined = 0
        self.cache_hits = 0
        self.refused = 0
        self.expired = 0
        self.abandoned = 0
        self.failed = 0

    def counters(self) -> dict[str, int]:
        """A snapshot of the counters, for metrics and reports."""
        names = ("executed", "joined", "cache_hits", "refused", "expired", "abandoned", "failed")
        return {name: getattr(self, name) for name in names}

    @property
    def in_flight(self) -> int:
        """Number of ids executing now."""
        return len(self._in_flight)

    def is_executing(self, message_id: str) -> bool:
        return message_id in self._in_flight

    def lost(self) -> list[Record]:
        """Pending records that nobody executes now: their outcome is lost.

        After a restart these are the executions the previous process did not
        finish (or whose execution failed): the request may have reached the
        SuperLink, and its reply is gone. Read it before the first
        :meth:`expire`, which forgets them once they are old.
        """
        return [r for r in self._store.pending() if r.message_id not in self._in_flight]

    def begin(self, message_id: str, now: float, note: str = "") -> Decision:
        """Decide what to do with a request carrying ``message_id``.

        ``note`` is kept with the pending record (see :meth:`lost`)."""
        if not message_id:
            raise ValueError("at-most-once needs a non-empty message id")
        if message_id in self._in_flight:
            self.joined += 1
            return Join()
        record = self._store.claim(message_id, now, note)
        if record is None:
            self._in_flight[message_id] = (now, note)
            self.executed += 1
            return Execute()
        if record.state is State.COMPLETED and record.reply is not None:
            self.cache_hits += 1
            return Cached(record.reply)
        self.refused += 1
        if record.state is State.PENDING:
            return Refuse(
                f"message {message_id} was in flight when the relay stopped (or its "
                "execution failed); it may have reached the SuperLink, so it is not "
                "executed again"
            )
        return Refuse(
            f"message {message_id} was executed but its reply was too large to keep "
            "for a retry; it is not executed again"
        )

    def complete(self, message_id: str, reply: bytes, now: float) -> None:
        """The execution of ``message_id`` produced ``reply``: keep it for duplicates."""
        self._finish(message_id, "complete")
        too_large = self.max_reply_bytes is not None and len(reply) > self.max_reply_bytes
        self._store.mark_completed(message_id, None if too_large else reply, now)

    def abandon(self, message_id: str, now: float) -> None:
        """The execution failed *before* reaching the SuperLink: forget the id.

        A retry with the same id will then execute afresh.
        """
        self._finish(message_id, "abandon")
        self.abandoned += 1
        self._store.delete(message_id)

    def fail(self, message_id: str, now: float) -> None:
        """The execution ended with no reply and may have reached the SuperLink.

        The id stays pending in the store, exactly as after a crash, so its
        duplicates are refused.
        """
        self._finish(message_id, "fail")
        self.failed += 1

    def expire(self, now: float) -> int:
        """Forget records older than ``result_ttl``; return how many went."""
        cutoff = now - self.result_ttl
        # An execution that has been running longer than the ttl must keep its
        # pending record, or a crash now would let a retry run it again.
        for message_id, (started, note) in list(self._in_flight.items()):
            if started < cutoff:
                self._store.mark_pending(message_id, now, note)
                self._in_flight[message_id] = (now, note)
        gone = self._store.expire(cutoff)
        self.expired += gone
        return gone

    def _finish(self, message_id: str, what: str) -> None:
        if self._in_flight.pop(message_id, None) is None:
            raise RuntimeError(f"{what}({message_id!r}) for an id that is not executing")
