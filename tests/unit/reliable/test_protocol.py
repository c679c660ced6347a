"""The reliable-messaging cores, fed events and a fake clock only (no I/O, no sleeps)."""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.exceptions import ConfigError
from gateway.reliable.protocol import (
    Cached,
    Execute,
    GiveUp,
    Join,
    ReceiverProtocol,
    Refuse,
    Retry,
    RetryPolicy,
    SenderProtocol,
)
from gateway.reliable.store import MemoryDedupStore

NO_JITTER = RetryPolicy(initial_backoff=0.1, max_backoff=1.0, multiplier=2.0, jitter=0.0)


def sender(policy: RetryPolicy = NO_JITTER, *, now: float = 0.0, seed: int = 0) -> SenderProtocol:
    return SenderProtocol("m-1", policy=policy, now=now, rng=random.Random(seed))


# --- RetryPolicy -------------------------------------------------------------------------


def test_defaults_fit_inside_flower_call_timeout() -> None:
    policy = RetryPolicy()
    assert policy.deadline == 20.0
    assert policy.deadline < 25.0  # fleet.DEFAULT_CALL_BUDGET, itself inside Flower's 30 s
    assert policy.result_ttl == 40.0


def test_backoff_grows_by_multiplier_and_stops_at_cap() -> None:
    rng = random.Random(0)
    delays = [NO_JITTER.backoff(n, rng) for n in range(1, 8)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])


def test_backoff_with_huge_failure_count_stays_at_cap() -> None:
    policy = RetryPolicy(multiplier=1000.0, jitter=0.0)
    assert policy.backoff(10_000, random.Random(0)) == policy.max_backoff


@pytest.mark.parametrize("jitter", [0.0, 0.25, 0.5, 1.0])
def test_jitter_stays_within_its_fraction_of_the_backoff(jitter: float) -> None:
    policy = RetryPolicy(initial_backoff=1.0, max_backoff=1.0, jitter=jitter)
    rng = random.Random(42)
    delays = [policy.backoff(1, rng) for _ in range(2000)]
    assert min(delays) >= 1.0 - jitter
    assert max(delays) <= 1.0
    if jitter:
        # Spread over the whole band, not stuck at one end.
        assert max(delays) - min(delays) > 0.9 * jitter


def test_jitter_is_reproducible_with_a_seeded_rng() -> None:
    policy = RetryPolicy()
    a = [policy.backoff(n, random.Random(7)) for n in range(1, 6)]
    b = [policy.backoff(n, random.Random(7)) for n in range(1, 6)]
    assert a == b


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_backoff": -1.0},
        {"initial_backoff": 3.0, "max_backoff": 2.0},
        {"multiplier": 0.5},
        {"jitter": 1.5},
        {"deadline": 0.0},
    ],
)
def test_nonsense_policies_are_config_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        RetryPolicy(**kwargs)


# --- SenderProtocol ----------------------------------------------------------------------


def test_retries_keep_the_message_id_and_count_attempts() -> None:
    s = sender()
    assert s.first_attempt() == 1
    first = s.on_failure(1.0, retryable=True)
    assert isinstance(first, Retry) and first.attempt == 2
    assert first.delay == pytest.approx(0.1)
    second = s.on_failure(2.0, retryable=True)
    assert isinstance(second, Retry) and second.attempt == 3
    assert second.delay == pytest.approx(0.2)
    assert s.message_id == "m-1"
    assert s.attempt == 3
    s.on_reply(3.0)
    assert s.done and not s.gave_up


def test_remaining_is_the_attempt_timeout_and_never_negative() -> None:
    s = sender(now=100.0)
    assert s.remaining(100.0) == 20.0
    assert s.remaining(115.5) == pytest.approx(4.5)
    assert s.remaining(200.0) == 0.0


def test_budget_shortens_but_never_lengthens_the_deadline() -> None:
    rng = random.Random(0)
    assert SenderProtocol("m", now=0.0, rng=rng, budget=4.0).remaining(0.0) == 4.0
    assert SenderProtocol("m", now=0.0, rng=rng, budget=60.0).remaining(0.0) == 20.0


def test_gives_up_when_the_next_attempt_would_start_after_the_deadline() -> None:
    s = sender()
    s.first_attempt()
    assert isinstance(s.on_failure(19.0, retryable=True), Retry)  # 19.0 + 0.1 < 20
    decision = s.on_failure(19.85, retryable=True)  # 19.85 + 0.2 >= 20
    assert isinstance(decision, GiveUp)
    assert decision.attempts == 2
    assert "2 attempts" in decision.reason and "deadline" in decision.reason
    assert s.gave_up


def test_never_retries_past_the_deadline_whatever_the_failures() -> None:
    policy = RetryPolicy(initial_backoff=0.05, max_backoff=2.0, jitter=1.0, deadline=20.0)
    s = sender(policy, seed=3)
    s.first_attempt()
    now = 0.0
    starts = [now]
    while True:
        now += 0.3  # each attempt fails after 0.3 s
        decision = s.on_failure(now, retryable=True)
        if isinstance(decision, GiveUp):
            break
        now += decision.delay
        starts.append(now)
    assert all(t < 20.0 for t in starts)
    assert decision.attempts == len(starts) > 5


def test_non_retryable_failure_gives_up_at_once() -> None:
    s = sender()
    s.first_attempt()
    decision = s.on_failure(0.1, retryable=False, error="certificate refused")
    assert isinstance(decision, GiveUp)
    assert decision.attempts == 1
    assert "not retryable" in decision.reason and "certificate refused" in decision.reason


def test_sender_calls_out_of_order_are_bugs() -> None:
    s = sender()
    with pytest.raises(RuntimeError):
        s.on_reply(0.0)
    s.first_attempt()
    with pytest.raises(RuntimeError):
        s.first_attempt()
    s.on_reply(0.0)
    with pytest.raises(RuntimeError):
        s.on_failure(0.0, retryable=True)


def test_sender_needs_an_id() -> None:
    with pytest.raises(ValueError):
        SenderProtocol("", now=0.0, rng=random.Random())


# --- ReceiverProtocol --------------------------------------------------------------------


def receiver(store: MemoryDedupStore | None = None) -> ReceiverProtocol:
    return ReceiverProtocol(store if store is not None else MemoryDedupStore(), policy=NO_JITTER)


def test_new_id_executes_and_duplicate_in_flight_joins() -> None:
    r = receiver()
    assert r.begin("a", 0.0) == Execute()
    assert r.begin("a", 0.5) == Join()
    assert r.begin("a", 0.6) == Join()
    assert (r.executed, r.joined) == (1, 2)
    assert r.is_executing("a")


def test_completed_id_replays_its_reply() -> None:
    r = receiver()
    r.begin("a", 0.0)
    r.complete("a", b"reply-a", 1.0)
    assert r.begin("a", 2.0) == Cached(b"reply-a")
    assert r.begin("a", 3.0) == Cached(b"reply-a")
    assert (r.executed, r.cache_hits) == (1, 2)
    assert r.in_flight == 0


def test_abandoned_id_may_execute_again() -> None:
    r = receiver()
    r.begin("a", 0.0)
    r.abandon("a", 0.5)
    assert r.begin("a", 1.0) == Execute()
    assert (r.executed, r.abandoned) == (2, 1)


def test_failed_execution_is_refused_like_a_crash() -> None:
    r = receiver()
    r.begin("a", 0.0)
    r.fail("a", 0.5)
    decision = r.begin("a", 1.0)
    assert isinstance(decision, Refuse)
    assert r.refused == 1


def test_pending_left_by_a_crashed_relay_is_refused_not_executed() -> None:
    store = MemoryDedupStore()
    before = receiver(store)
    before.begin("a", 0.0)  # the relay dies here, mid-call
    after = receiver(store)  # a new process, same durable records
    decision = after.begin("a", 1.0)
    assert isinstance(decision, Refuse)
    assert "in flight when the relay stopped" in decision.reason
    assert (after.executed, after.refused) == (0, 1)


def test_completed_ids_expire_after_result_ttl_not_before() -> None:
    r = receiver()
    ttl = r.result_ttl
    assert ttl == 2 * NO_JITTER.deadline
    r.begin("a", 0.0)
    r.complete("a", b"reply", 10.0)
    assert r.expire(10.0 + ttl) == 0
    assert r.begin("a", 10.0 + ttl) == Cached(b"reply")
    assert r.expire(10.0 + ttl + 0.001) == 1
    assert r.expired == 1
    assert r.begin("a", 10.0 + ttl + 0.002) == Execute()


def test_crash_pending_ids_also_expire_after_result_ttl() -> None:
    store = MemoryDedupStore()
    receiver(store).begin("a", 0.0)
    r = receiver(store)
    assert r.expire(r.result_ttl + 1.0) == 1
    assert len(store) == 0


def test_expiry_keeps_an_execution_that_outlives_the_ttl() -> None:
    store = MemoryDedupStore()
    r = receiver(store)
    r.begin("slow", 0.0)
    assert r.expire(r.result_ttl + 5.0) == 0
    assert r.begin("slow", r.result_ttl + 6.0) == Join()
    # The durable record is still pending, so a crash now would still refuse it.
    assert isinstance(receiver(store).begin("slow", r.result_ttl + 7.0), Refuse)


def test_reply_over_the_limit_is_delivered_once_then_refused() -> None:
    r = ReceiverProtocol(MemoryDedupStore(), policy=NO_JITTER, max_reply_bytes=4)
    r.begin("small", 0.0)
    r.complete("small", b"1234", 0.1)
    r.begin("big", 0.0)
    r.complete("big", b"12345", 0.1)
    assert r.begin("small", 1.0) == Cached(b"1234")
    decision = r.begin("big", 1.0)
    assert isinstance(decision, Refuse) and "too large" in decision.reason


def test_receiver_calls_out_of_order_are_bugs() -> None:
    r = receiver()
    with pytest.raises(RuntimeError):
        r.complete("never-begun", b"", 0.0)
    with pytest.raises(RuntimeError):
        r.abandon("never-begun", 0.0)
    with pytest.raises(ValueError):
        r.begin("", 0.0)


# --- Sender and receiver together, over a lossy network, on a fake clock ------------------

ATTEMPT_TIMEOUT = 2.0
SIM_POLICY = RetryPolicy(initial_backoff=0.05, max_backoff=2.0, jitter=0.5, deadline=20.0)


@dataclass(frozen=True)
class Fate:
    """What the network does to one attempt."""

    drop_request: bool  # lost before the relay: never executed
    lose_reply: bool  # executed (or joined), reply lost on the way back
    latency: float  # each way
    exec_time: float  # SuperLink time when this attempt executes
    duplicate_after: float | None  # a copy of the request reaches the relay this much later


HEALTHY = Fate(
    drop_request=False, lose_reply=False, latency=0.01, exec_time=0.01, duplicate_after=None
)

fates = st.builds(
    Fate,
    drop_request=st.booleans(),
    lose_reply=st.booleans(),
    latency=st.floats(0.0, 0.1),
    exec_time=st.floats(0.0, 5.0),
    duplicate_after=st.none() | st.floats(0.0, 50.0),
)


@dataclass
class World:
    """A discrete-event network: the relay's receiver plus a heap of timed events."""

    receiver: ReceiverProtocol
    now: float = 0.0
    events: list[tuple[float, int, Callable[[], None]]] = field(default_factory=list)
    seq: itertools.count[int] = field(default_factory=itertools.count)
    executions: Counter[str] = field(default_factory=Counter)
    waiting: dict[str, list[Callable[[bytes], None]]] = field(default_factory=dict)

    def at(self, delay: float, action: Callable[[], None]) -> None:
        heapq.heappush(self.events, (self.now + delay, next(self.seq), action))

    def run(self) -> None:
        while self.events:
            self.now, _, action = heapq.heappop(self.events)
            # Expire as often as possible: correctness must not rest on lazy expiry.
            self.receiver.expire(self.now)
            action()

    def deliver(
        self,
        message_id: str,
        deadline_at: float,
        exec_time: float,
        respond: Callable[[bytes], None],
    ) -> None:
        """The relay receives a request (the dispatcher drops it once its deadline passed)."""
        if self.now >= deadline_at:
            return
        decision = self.receiver.begin(message_id, self.now)
        if isinstance(decision, Execute):
            self.executions[message_id] += 1
            self.waiting[message_id] = [respond]
            self.at(exec_time, lambda: self.finish(message_id))
        elif isinstance(decision, Join):
            self.waiting[message_id].append(respond)
        elif isinstance(decision, Cached):
            respond(decision.reply)
        else:
            respond(b"refused")

    def finish(self, message_id: str) -> None:
        reply = f"reply-{message_id}".encode()
        self.receiver.complete(message_id, reply, self.now)
        for respond in self.waiting.pop(message_id):
            respond(reply)


class SimSender:
    """The site: one logical request, driven by SenderProtocol, one attempt at a time."""

    def __init__(self, world: World, message_id: str, plan: list[Fate], seed: int) -> None:
        self.world = world
        self.message_id = message_id
        self.plan = plan
        self.seed = seed
        self.current = 0
        self.result: bytes | GiveUp | None = None
        self.ids_sent: set[str] = set()

    def start(self) -> None:
        self.protocol = SenderProtocol(
            self.message_id, policy=SIM_POLICY, now=self.world.now, rng=random.Random(self.seed)
        )
        self.send(self.protocol.first_attempt())

    def send(self, attempt: int) -> None:
        world, protocol = self.world, self.protocol
        self.current = attempt
        self.ids_sent.add(protocol.message_id)
        fate = self.plan[attempt - 1] if attempt <= len(self.plan) else HEALTHY
        world.at(min(protocol.remaining(world.now), ATTEMPT_TIMEOUT), lambda: self.timeout(attempt))
        if fate.drop_request:
            return

        def respond(reply: bytes) -> None:
            if not fate.lose_reply:
                world.at(fate.latency, lambda: self.reply(attempt, reply))

        def arrive() -> None:
            world.deliver(protocol.message_id, protocol.deadline_at, fate.exec_time, respond)

        world.at(fate.latency, arrive)
        if fate.duplicate_after is not None:
            copy = lambda: world.deliver(  # noqa: E731
                protocol.message_id, protocol.deadline_at, fate.exec_time, lambda _: None
            )
            world.at(fate.latency + fate.duplicate_after, copy)

    def reply(self, attempt: int, reply: bytes) -> None:
        if self.result is None and attempt == self.current:
            self.protocol.on_reply(self.world.now)
            self.result = reply

    def timeout(self, attempt: int) -> None:
        if self.result is not None or attempt != self.current:
            return
        decision = self.protocol.on_failure(self.world.now, retryable=True, error="timeout")
        if isinstance(decision, GiveUp):
            self.result = decision
        else:
            self.current = 0  # backing off: a late reply to the old attempt is ignored
            self.world.at(decision.delay, lambda: self.send(decision.attempt))


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(
    plans=st.lists(st.lists(fates, max_size=12), min_size=1, max_size=4),
    starts=st.lists(st.floats(0.0, 30.0), min_size=4, max_size=4),
    seed=st.integers(0, 2**32 - 1),
)
def test_each_id_executes_at_most_once_and_exactly_once_when_the_deadline_allows(
    plans: list[list[Fate]], starts: list[float], seed: int
) -> None:
    world = World(ReceiverProtocol(MemoryDedupStore(), policy=SIM_POLICY))
    senders = [SimSender(world, f"m{i}", plan, seed + i) for i, plan in enumerate(plans)]
    for s, start in zip(senders, starts, strict=False):
        world.at(start, s.start)
    world.run()

    for s in senders:
        mid = s.message_id
        assert s.ids_sent == {mid}  # every attempt carried the same id
        assert s.protocol.message_id == mid
        assert world.executions[mid] <= 1  # at most once, always
        assert s.result is not None
        if isinstance(s.result, bytes):
            assert s.result == f"reply-{mid}".encode()  # the one execution's reply
            assert world.executions[mid] == 1
        # Up to 3 faults (plus time for a slow execution to finish) fit in 20 s.
        if len(s.plan) <= 3:
            assert s.result == f"reply-{mid}".encode(), s.result
            assert world.executions[mid] == 1
