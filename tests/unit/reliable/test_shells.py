"""The asyncio shells: ReliableSender over a fake transport, ReliableReceiver on the loop.

Fakes stand in for the transport and the SuperLink: these are unit tests of the
shells' own duties (sleeping, counting, joining, caching, cancellation); the
socket paths are covered by the transport and end-to-end tests.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from gateway.core.envelope import make_envelope, upstream_reply
from gateway.core.exceptions import (
    AuthError,
    ConnectError,
    DeadlineError,
    FrameTooLargeError,
    GatewayError,
    MaybeDeliveredError,
    NotDeliveredError,
    TransportError,
)
from gateway.core.failures import reply_for_error
from gateway.core.identity import Peer, Role
from gateway.proto.envelope_pb2 import DIALECT_HTTP, ORIGIN_GATEWAY, Envelope, Reply
from gateway.relay.dispatcher import Dispatcher
from gateway.relay.lgc import Upstream
from gateway.relay.server import Relay
from gateway.reliable import (
    DedupStoreError,
    GiveUp,
    GiveUpError,
    MemoryDedupStore,
    Record,
    ReliableReceiver,
    ReliableSender,
    Retry,
    RetryPolicy,
    SqliteDedupStore,
)
from gateway.reliable.receiver import COMPLETION_COMMIT_DELAY
from gateway.transport import TransportClient
from tests.support.pki import FederationKits
from tests.support.relay import fleet_call

UNIT = 1.0  # the one time unit real waits in this file are multiples of
POLICY = RetryPolicy(initial_backoff=0.1, max_backoff=1.0, jitter=0.0, deadline=5.0)


class FakeClock:
    """Time that moves only when the code under test sleeps or the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay
        await asyncio.sleep(0)


class FlakyClient(TransportClient):
    """Fails the first ``failures`` sends with ``error``, then echoes a 200 reply."""

    def __init__(
        self,
        clock: FakeClock,
        *,
        failures: int,
        error: Callable[[], Exception] = lambda: ConnectError("relay unreachable"),
        cost: float = 0.5,
    ) -> None:
        self.clock = clock
        self.failures = failures
        self.error = error
        self.cost = cost
        self.seen: list[tuple[str, int, float]] = []

    async def send(self, envelope: Envelope, *, timeout: float) -> Reply:
        self.seen.append((envelope.message_id, envelope.attempt, timeout))
        self.clock.now += min(self.cost, timeout)
        if len(self.seen) <= self.failures:
            raise self.error()
        return upstream_reply(envelope.message_id, http_status=200, grpc_code=0, body=b"ok")

    async def aclose(self) -> None:
        pass


def envelope() -> Envelope:
    return make_envelope(
        job_id="job-1",
        site="site-1",
        method="PullMessages",
        dialect=DIALECT_HTTP,
        headers=[],
        body=b"request",
        deadline_unix_ms=0,
    )


def reliable_sender(client: FlakyClient, **kwargs: object) -> ReliableSender:
    return ReliableSender(
        client,
        policy=POLICY,
        clock=client.clock,
        sleep=client.clock.sleep,
        **kwargs,  # type: ignore[arg-type]
    )


# --- ReliableSender ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        lambda: ConnectError("connection refused"),
        lambda: DeadlineError("no reply"),
        lambda: TransportError("stream reset"),
    ],
)
async def test_sender_retries_transport_failures_with_the_same_id(
    error: Callable[[], Exception],
) -> None:
    clock = FakeClock()
    client = FlakyClient(clock, failures=3, error=error)
    sender = reliable_sender(client)
    env = envelope()
    reply = await sender.send(env)
    assert reply.body == b"ok"
    assert [(mid, n) for mid, n, _ in client.seen] == [(env.message_id, n) for n in (1, 2, 3, 4)]
    assert env.attempt == 4
    assert clock.sleeps == pytest.approx([0.1, 0.2, 0.4])
    assert (sender.attempts, sender.retries, sender.give_ups) == (4, 3, 0)


async def test_each_attempt_timeout_ends_at_the_deadline() -> None:
    clock = FakeClock()
    client = FlakyClient(clock, failures=2, cost=1.0)
    await reliable_sender(client).send(envelope())
    timeouts = [t for _, _, t in client.seen]
    assert timeouts == pytest.approx([5.0, 5.0 - 1.0 - 0.1, 5.0 - 2.0 - 0.3])


async def test_sender_gives_up_at_the_deadline_with_a_503_kind_of_error() -> None:
    clock = FakeClock()
    client = FlakyClient(clock, failures=1000, cost=1.0)
    sender = reliable_sender(client)
    start = clock.now
    with pytest.raises(GiveUpError) as caught:
        await sender.send(envelope())
    error = caught.value
    assert isinstance(error, TransportError) and not isinstance(error, DeadlineError)
    assert isinstance(error.__cause__, ConnectError)
    assert error.attempts == len(client.seen) == sender.attempts
    assert f"{error.attempts} attempts" in str(error) and "deadline" in str(error)
    assert sender.give_ups == 1 and sender.retries == error.attempts - 1
    assert clock.now <= start + POLICY.deadline


@pytest.mark.parametrize(
    "error",
    [lambda: AuthError("certificate refused"), lambda: FrameTooLargeError("too big")],
)
async def test_sender_gives_up_at_once_on_failures_a_retry_cannot_heal(
    error: Callable[[], Exception],
) -> None:
    clock = FakeClock()
    client = FlakyClient(clock, failures=1, error=error)
    gave_up: list[GiveUp] = []
    sender = reliable_sender(client, on_give_up=lambda env, d, exc: gave_up.append(d))
    with pytest.raises(type(error())):
        await sender.send(envelope())
    assert len(client.seen) == 1 and clock.sleeps == []
    assert sender.give_ups == 1 and gave_up[0].attempts == 1


async def test_other_errors_are_not_retried() -> None:
    clock = FakeClock()
    client = FlakyClient(clock, failures=1, error=lambda: GatewayError("a bug somewhere"))
    with pytest.raises(GatewayError, match="a bug"):
        await reliable_sender(client).send(envelope())
    assert len(client.seen) == 1


async def test_sender_callbacks_see_each_retry() -> None:
    clock = FakeClock()
    client = FlakyClient(clock, failures=2)
    retries: list[tuple[int, Retry, str]] = []
    sender = reliable_sender(
        client,
        on_retry=lambda env, decision, exc: retries.append((env.attempt, decision, str(exc))),
    )
    await sender.send(envelope())
    assert [(failed, d.attempt) for failed, d, _ in retries] == [(1, 2), (2, 3)]
    assert retries[0][2] == "relay unreachable"


async def test_budget_shortens_the_deadline() -> None:
    clock = FakeClock()
    client = FlakyClient(clock, failures=1000, cost=0.5)
    with pytest.raises(GiveUpError):
        await reliable_sender(client).send(envelope(), budget=1.0)
    assert client.seen[0][2] == 1.0
    assert len(client.seen) == 2


async def test_cancellation_during_backoff_propagates() -> None:
    clock = FakeClock()
    client = FlakyClient(clock, failures=1000)
    sleeping = asyncio.Event()

    async def sleep_forever(delay: float) -> None:
        sleeping.set()
        await asyncio.Event().wait()

    sender = ReliableSender(client, policy=POLICY, clock=clock, sleep=sleep_forever)
    task = asyncio.create_task(sender.send(envelope()))
    await asyncio.wait_for(sleeping.wait(), UNIT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sender.give_ups == 0 and len(client.seen) == 1


async def test_cancellation_during_a_send_propagates() -> None:
    class HangingClient(FlakyClient):
        async def send(self, envelope: Envelope, *, timeout: float) -> Reply:
            self.seen.append((envelope.message_id, envelope.attempt, timeout))
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    clock = FakeClock()
    client = HangingClient(clock, failures=0)
    sender = reliable_sender(client)
    task = asyncio.create_task(sender.send(envelope()))
    while not client.seen:
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sender.retries == 0


# --- ReliableReceiver --------------------------------------------------------------------


class SuperLink:
    """An execution that counts its calls and, if asked, waits to be released."""

    def __init__(self, reply: Reply | None = None, *, hold: bool = False) -> None:
        self.calls = 0
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        if not hold:
            self.release.set()
        self.reply = reply

    def __call__(self, message_id: str) -> Callable[[], Awaitable[Reply]]:
        async def execute() -> Reply:
            self.calls += 1
            self.started.set()
            await self.release.wait()
            if self.reply is not None:
                return self.reply
            return upstream_reply(
                message_id, http_status=200, grpc_code=0, body=f"call {self.calls}".encode()
            )

        return execute


def receiver(store: MemoryDedupStore | SqliteDedupStore | None = None) -> ReliableReceiver:
    return ReliableReceiver(store if store is not None else MemoryDedupStore(), POLICY)


async def test_concurrent_duplicates_execute_once_and_share_the_reply() -> None:
    relay = receiver()
    superlink = SuperLink(hold=True)
    calls = [asyncio.create_task(relay.handle("m", superlink("m"))) for _ in range(3)]
    await asyncio.wait_for(superlink.started.wait(), UNIT)
    superlink.release.set()
    replies = await asyncio.wait_for(asyncio.gather(*calls), UNIT)
    assert superlink.calls == 1
    assert {r.body for r in replies} == {b"call 1"}
    assert (relay.protocol.executed, relay.protocol.joined) == (1, 2)


async def test_completed_id_is_replayed_from_the_cache() -> None:
    relay = receiver()
    superlink = SuperLink()
    first = await relay.handle("m", superlink("m"))
    again = await relay.handle("m", superlink("m"))
    assert superlink.calls == 1
    assert again == first
    assert relay.protocol.cache_hits == 1


@pytest.mark.parametrize(
    "failure",
    [
        MaybeDeliveredError("SuperLink too slow"),
        DeadlineError("no answer in time"),
        GatewayError("a failure of no more specific kind"),
    ],
)
async def test_a_gateway_failure_that_may_have_reached_the_superlink_is_kept(
    failure: GatewayError,
) -> None:
    relay = receiver()
    superlink = SuperLink(reply_for_error("m", failure))
    await relay.handle("m", superlink("m"))
    again = await relay.handle("m", superlink("m"))
    assert superlink.calls == 1 and again.http_status == 504


async def test_a_superlink_503_is_kept_because_only_the_gateways_own_503_says_not_delivered() -> (
    None
):
    relay = receiver()
    superlink = SuperLink(upstream_reply("m", http_status=503, grpc_code=14, detail="busy"))
    await relay.handle("m", superlink("m"))
    again = await relay.handle("m", superlink("m"))
    assert superlink.calls == 1 and again.http_status == 503


async def test_a_reply_that_never_reached_the_superlink_is_not_kept() -> None:
    relay = receiver()
    unreachable = SuperLink(reply_for_error("m", NotDeliveredError("cannot reach the SuperLink")))
    first = await relay.handle("m", unreachable("m"))
    assert first.http_status == 503
    healthy = SuperLink()
    second = await relay.handle("m", healthy("m"))
    assert second.http_status == 200 and healthy.calls == 1
    assert relay.protocol.abandoned == 1


async def test_a_caller_that_goes_away_does_not_cancel_the_execution() -> None:
    relay = receiver()
    superlink = SuperLink(hold=True)
    first = asyncio.create_task(relay.handle("m", superlink("m")))
    await asyncio.wait_for(superlink.started.wait(), UNIT)
    first.cancel()  # e.g. the transport cancels the handler when the site times out
    with pytest.raises(asyncio.CancelledError):
        await first
    retry = asyncio.create_task(relay.handle("m", superlink("m")))
    superlink.release.set()
    reply = await asyncio.wait_for(retry, UNIT)
    assert reply.body == b"call 1" and superlink.calls == 1


async def test_pending_from_a_crashed_relay_is_refused_with_504(tmp_path: Path) -> None:
    """It may have reached the SuperLink: 504 (retried by Flower as a new call), not run."""
    path = tmp_path / "dedup.db"
    with SqliteDedupStore(path) as store:
        store.mark_pending("m", 0.0)  # what a relay that died mid-call leaves behind
    with SqliteDedupStore(path) as store:
        relay = ReliableReceiver(store, POLICY, clock=lambda: 1.0)
        superlink = SuperLink()
        reply = await relay.handle("m", superlink("m"))
    assert superlink.calls == 0
    assert (reply.origin, reply.http_status, reply.message_id) == (ORIGIN_GATEWAY, 504, "m")
    assert reply.grpc_code == 14  # UNAVAILABLE, which Flower's gRPC client retries
    assert "in flight when the relay stopped" in reply.detail


async def test_an_unreadable_kept_reply_is_answered_504_and_not_executed_again() -> None:
    store = MemoryDedupStore()
    store.mark_completed("m", b"\x0a\xff", 0.0)  # a length-delimited field cut short
    superlink = SuperLink()
    reply = await ReliableReceiver(store, POLICY, clock=lambda: 1.0).handle("m", superlink("m"))
    assert (reply.origin, reply.http_status, superlink.calls) == (ORIGIN_GATEWAY, 504, 0)
    assert "unreadable" in reply.detail


async def test_a_failing_dedup_store_is_answered_503_without_executing() -> None:
    """Nothing ran, so the gateway says "not delivered" (503), which a retry may run."""

    class BrokenStore(MemoryDedupStore):
        def get(self, message_id: str) -> Record | None:
            raise DedupStoreError("disk full")

    superlink = SuperLink()
    reply = await receiver(BrokenStore()).handle("m", superlink("m"))
    assert (reply.origin, reply.http_status, superlink.calls) == (ORIGIN_GATEWAY, 503, 0)
    assert "disk full" in reply.detail


async def test_sqlite_cache_serves_a_retry_after_restart(tmp_path: Path) -> None:
    path = tmp_path / "dedup.db"
    superlink = SuperLink()
    with SqliteDedupStore(path) as store:
        first = await receiver(store).handle("m", superlink("m"))
    with SqliteDedupStore(path) as store:
        again = await receiver(store).handle("m", superlink("m"))
    assert again == first and superlink.calls == 1


async def test_calls_of_one_turn_share_a_commit_and_run_only_once_their_record_is_durable(
    tmp_path: Path,
) -> None:
    """Group commit: each execution starts after its pending record is committed (another
    connection sees it), and the pending records of concurrent calls share commits."""
    path = tmp_path / "dedup.db"
    commits = 0

    class CountingStore(SqliteDedupStore):
        def commit(self) -> None:
            nonlocal commits
            commits += 1
            super().commit()

    seen: dict[str, object] = {}

    def execution(message_id: str) -> Callable[[], Awaitable[Reply]]:
        async def execute() -> Reply:
            with sqlite3.connect(path) as other:  # another reader sees only what is committed
                row = other.execute(
                    "SELECT state FROM dedup WHERE message_id = ?", (message_id,)
                ).fetchone()
            seen[message_id] = row[0] if row else None
            return upstream_reply(message_id, http_status=200, grpc_code=0, body=b"ok")

        return execute

    ids = [f"m{i}" for i in range(50)]
    with CountingStore(path) as store:
        relay = receiver(store)
        replies = await asyncio.gather(*(relay.handle(i, execution(i)) for i in ids))
        await relay.aclose()
    assert [r.body for r in replies] == [b"ok"] * len(ids)
    assert seen == {i: "pending" for i in ids}
    assert 1 <= commits <= 4, f"{commits} commits for {len(ids)} calls of one turn"
    with SqliteDedupStore(path) as reopened:
        records = {i: reopened.get(i) for i in ids}
    assert {i: r.state.value if r else None for i, r in records.items()} == dict.fromkeys(
        ids, "completed"
    )


async def test_a_reply_goes_out_before_its_completed_record_is_committed(
    tmp_path: Path,
) -> None:
    """The completed record waits (at most COMPLETION_COMMIT_DELAY) for a commit; a retry
    meanwhile is answered from it all the same, and then it is durable."""
    path = tmp_path / "dedup.db"

    def state_seen_by_another_connection() -> str | None:
        with sqlite3.connect(path) as other:
            row = other.execute("SELECT state FROM dedup WHERE message_id = 'm'").fetchone()
        return row[0] if row else None

    superlink = SuperLink()
    with SqliteDedupStore(path) as store:
        relay = receiver(store)
        first = await relay.handle("m", superlink("m"))
        assert state_seen_by_another_connection() == "pending"
        assert await relay.handle("m", superlink("m")) == first  # from the open transaction
        await asyncio.sleep(COMPLETION_COMMIT_DELAY * 4)
        assert state_seen_by_another_connection() == "completed"
        await relay.aclose()
    assert superlink.calls == 1


async def test_a_failed_commit_runs_nothing_and_a_retry_runs_afresh(tmp_path: Path) -> None:
    """The pending record never became durable: the call is answered 503 (not run)."""
    failures = 1

    class FlakyStore(SqliteDedupStore):
        def commit(self) -> None:
            nonlocal failures
            if failures and self._db.in_transaction:
                failures -= 1
                self._db.rollback()
                raise DedupStoreError("disk I/O error")
            super().commit()

    superlink = SuperLink()
    with FlakyStore(tmp_path / "dedup.db") as store:
        relay = receiver(store)
        first = await relay.handle("m", superlink("m"))
        assert (first.origin, first.http_status, superlink.calls) == (ORIGIN_GATEWAY, 503, 0)
        assert "disk I/O error" in first.detail
        again = await relay.handle("m", superlink("m"))
    assert (again.http_status, again.body, superlink.calls) == (200, b"call 1", 1)


async def test_an_execution_that_raises_is_answered_and_never_rerun(
    caplog: pytest.LogCaptureFixture,
) -> None:
    relay = receiver()

    async def broken() -> Reply:
        raise RuntimeError("bug in the upstream")

    with caplog.at_level(logging.CRITICAL, logger="gateway.reliable.receiver"):
        reply = await relay.handle("m", broken)
    assert reply.http_status == 504 and "bug in the upstream" in reply.detail
    superlink = SuperLink()
    again = await relay.handle("m", superlink("m"))
    assert again.http_status == 504 and superlink.calls == 0


async def test_scopes_keep_the_ids_of_different_sites_apart() -> None:
    relay = receiver()
    superlink = SuperLink()
    a = await relay.handle("m", superlink("m"), scope="site-1/job-1")
    b = await relay.handle("m", superlink("m"), scope="site-2/job-1")
    assert (a.body, b.body) == (b"call 1", b"call 2")


async def test_a_request_without_an_id_is_executed_every_time() -> None:
    relay = receiver()
    superlink = SuperLink()
    await relay.handle("", superlink(""))
    await relay.handle("", superlink(""))
    assert superlink.calls == 2 and relay.untracked == 2


async def test_expiry_happens_on_later_calls() -> None:
    clock = FakeClock()
    store = MemoryDedupStore()
    relay = ReliableReceiver(store, POLICY, clock=clock)
    superlink = SuperLink()
    await relay.handle("old", superlink("old"))
    clock.now += POLICY.result_ttl + UNIT
    await relay.handle("new", superlink("new"))
    assert store.get("old") is None and store.get("new") is not None
    assert relay.protocol.expired == 1


async def test_aclose_stops_executions_and_leaves_their_ids_refused() -> None:
    store = MemoryDedupStore()
    relay = receiver(store)
    superlink = SuperLink(hold=True)
    call = asyncio.create_task(relay.handle("m", superlink("m")))
    await asyncio.wait_for(superlink.started.wait(), UNIT)
    await relay.aclose()
    reply = await asyncio.wait_for(call, UNIT)
    assert reply.http_status == 504 and "relay stopped" in reply.detail
    refused = await receiver(store).handle("m", SuperLink()("m"))
    assert refused.http_status == 504
    late = await relay.handle("other", SuperLink()("other"))
    assert late.http_status == 503


async def test_aclose_before_the_execution_started_still_answers_the_caller() -> None:
    relay = receiver()
    superlink = SuperLink()
    call = asyncio.create_task(relay.handle("m", superlink("m")))
    await asyncio.sleep(0)  # the caller waits; the execution task has not run yet
    await relay.aclose()
    reply = await asyncio.wait_for(call, UNIT)
    assert reply.http_status == 504 and superlink.calls == 0


async def test_the_relay_keeps_a_durable_dedup_store_even_when_it_is_empty(
    federation: FederationKits, tmp_path: Path
) -> None:
    """An empty store has len 0; it must not be swapped for a memory store."""
    store = SqliteDedupStore(tmp_path / "dedup.db")
    assert len(store) == 0
    relay = Relay(listen_urls=["grpcs://127.0.0.1:0"], tls=federation.relay, dedup_store=store)
    assert relay.dispatcher.receiver.protocol._store is store
    store.close()


class _CountingUpstream(Upstream):
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def call(self, envelope: Envelope, *, timeout: float) -> Reply:
        self.calls.append(envelope.method)
        return upstream_reply(envelope.message_id, http_status=200, grpc_code=0, body=b"x" * 64)

    async def aclose(self) -> None:
        pass


async def test_object_reads_are_run_again_on_a_retry_and_never_kept(tmp_path: Path) -> None:
    """A PullObject's reply (a 5 MiB object) is not written to the dedup store: a
    retry reads the object again. Every other Fleet call still runs at most once."""
    store = SqliteDedupStore(tmp_path / "dedup.db")
    dispatcher = Dispatcher(ReliableReceiver(store), ledger=True)
    upstream = _CountingUpstream()
    dispatcher.add_job("job", frozenset({"site-1"}), upstream)
    site = Peer("site-1", Role.SITE)

    for _ in range(2):
        assert (await dispatcher.handle(site, fleet_call("PullObject", "m-1"))).http_status == 200
        assert (await dispatcher.handle(site, fleet_call("PushMessages", "m-2"))).http_status == 200
    assert upstream.calls == ["PullObject", "PushMessages", "PullObject"]
    assert len(store) == 1  # PushMessages' reply only
    assert dispatcher.stats.ledger == {"m-2": 1}
    assert dispatcher.stats.forwarded["job"] == 3 and dispatcher.stats.replayable == 2
    store.close()
