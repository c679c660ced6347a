"""The relay side: execute each message id at most once, replay its reply to retries.

The decisions come from :class:`~gateway.reliable.protocol.ReceiverProtocol`;
this shell runs the execution, shares its result with duplicates that arrive
meanwhile, and turns refusals into gateway replies that keep Flower retrying:
503 when it did not execute the request, 504 when the request may have reached
the SuperLink but its reply is unknown (it is then never executed again).

The pending records of the calls that arrive in one turn of the event loop are
committed together at its end (:meth:`DedupStore.hold`, group commit), and each
call executes only once its record is durable. Completed records wait for the
next such commit, or :data:`COMPLETION_COMMIT_DELAY` at most: nobody waits for
them, so the reply goes out first (a crash before that commit leaves the id
pending: its retry is refused, never run twice; a retry before it reads the
record from the store's open transaction).

The execution runs in a task of its own, not in the caller's: when a site's
attempt times out, its transport cancels the handler, but the call to the
SuperLink carries on and its reply is kept for the retry (which joins it or
replays it). Cancelling it instead would leave the id unknown-outcome and
force a refusal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from ..core.exceptions import MaybeDeliveredError, NotDeliveredError
from ..core.failures import reply_for_error, surely_not_delivered
from ..observability import metrics
from ..proto.envelope_pb2 import Reply
from .protocol import DEFAULT_POLICY, Cached, Execute, ReceiverProtocol, Refuse, RetryPolicy
from .store import DedupStore, DedupStoreError

log = logging.getLogger(__name__)

COMPLETION_COMMIT_DELAY = 0.005
"""Seconds a completed record may wait for a commit of its own. Committing it in the
turn it was written put one SQLite commit (~60 us) before each reply; under load the
records of many calls now share one, and most ride on a batch of pending records."""


def reached_upstream(reply: Reply) -> bool:
    """Whether ``reply`` may mean the request reached the SuperLink.

    Only the gateway's own 503 (``NotDeliveredError``: not connected) says it
    did not; everything else, including the gateway's 504 (the SuperLink was
    too slow, but may have acted), is kept so that a retry replays it instead
    of executing again.
    """
    return not surely_not_delivered(reply)


def dedup_key(scope: str, message_id: str) -> str:
    """The store key of ``message_id`` within ``scope``.

    Unambiguous for any strings: the scope's length says where it ends. (It is
    on every call's path, so no ``json.dumps``.)
    """
    return f"{len(scope)}:{scope}/{message_id}"


Execution = Callable[[], Awaitable[Reply]]
"""Runs the request once (e.g. the LGC's call to the SuperLink); should not raise."""


@dataclass(frozen=True)
class LostOutcome:
    """An execution that may have reached the SuperLink, whose reply nobody has."""

    key: str
    """Its key in the dedup store (scope and message id)."""
    note: str
    """What the caller passed to :meth:`ReliableReceiver.handle`."""


@dataclass(frozen=True)
class _Call:
    """One execution: its store key, the id for the logs, its note."""

    key: str
    message_id: str
    note: str


class ReliableReceiver:
    """At-most-once execution of requests keyed by message id, on the event loop.

    ``clock`` is wall time by default because a durable store's timestamps
    must stay meaningful across a relay restart, which ``time.monotonic``'s
    do not. ``expire_interval`` is how often (at most) a call also forgets
    records older than the policy's ``result_ttl``; there is no background
    task to manage.
    """

    def __init__(
        self,
        store: DedupStore,
        policy: RetryPolicy = DEFAULT_POLICY,
        *,
        clock: Callable[[], float] = time.time,
        max_reply_bytes: int | None = None,
        expire_interval: float = 1.0,
        keep_reply: Callable[[Reply], bool] = reached_upstream,
    ) -> None:
        """``keep_reply`` decides whether a reply is kept for duplicates
        (``complete``) or the id forgotten so a retry runs again (``abandon``)."""
        self.protocol = ReceiverProtocol(store, policy=policy, max_reply_bytes=max_reply_bytes)
        self._clock = clock
        self._expire_interval = expire_interval
        self._keep_reply = keep_reply
        self._last_expiry = float("-inf")
        self._results: dict[str, asyncio.Future[Reply]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._store = store
        self._batch: asyncio.Future[DedupStoreError | None] | None = None
        """The writes of this turn of the loop, committed at its end; what the
        commit raised, or ``None`` once they are durable."""
        self._completions: asyncio.TimerHandle | None = None
        """The commit due for completed records written outside a batch."""
        self._closed = False
        self.untracked = 0
        """Calls without a message id, executed with no dedup at all."""
        self.on_lost: Callable[[LostOutcome], None] = lambda lost: None
        """Told of each execution whose outcome this process loses (it failed, or
        the relay stopped under it); :meth:`lost` lists those of earlier processes."""

    async def handle(
        self, message_id: str, execute: Execution, *, scope: str = "", note: str = ""
    ) -> Reply:
        """Return the reply to the request ``message_id``, executing it at most once.

        ``scope`` separates the ids of different senders (e.g. the verified
        site and the job), so that nobody can collect another site's reply by
        sending its id. A request without an id is executed with no dedup.
        ``note`` is kept with the id while it executes and handed back when its
        outcome is lost (:class:`LostOutcome`). The returned reply may be shared
        between duplicates: treat it as read-only.
        """
        if self._closed:
            return reply_for_error(
                message_id, NotDeliveredError("relay: shutting down; not executed")
            )
        if not message_id:
            self.untracked += 1
            return await execute()
        key = dedup_key(scope, message_id) if scope else message_id
        now = self._clock()
        try:
            batch = self._held()
            self._maybe_expire(now)
            decision = self.protocol.begin(key, now, note)
        except DedupStoreError as exc:
            log.error("dedup store failed", extra={"message_id": message_id, "error": str(exc)})
            return reply_for_error(
                message_id,
                NotDeliveredError(f"relay: dedup store unavailable, not executed: {exc}"),
            )
        if isinstance(decision, Cached):
            metrics.dedup_answer("cached")
            log.info("answered a retry from the dedup store", extra={"message_id": message_id})
            try:
                return Reply.FromString(decision.reply)
            except DecodeError:
                return reply_for_error(
                    message_id,
                    MaybeDeliveredError(
                        f"relay: the kept reply of message {message_id} is unreadable; "
                        "not executed again"
                    ),
                )
        if isinstance(decision, Refuse):
            metrics.dedup_answer("refused")
            log.warning(
                "refused duplicate", extra={"message_id": message_id, "reason": decision.reason}
            )
            return reply_for_error(message_id, MaybeDeliveredError(f"relay: {decision.reason}"))
        if isinstance(decision, Execute):
            future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
            self._results[key] = future
            call = _Call(key, message_id, note)
            task = asyncio.create_task(self._execute(call, execute, future, batch))
            self._tasks.add(task)
            task.add_done_callback(lambda t: self._executed(t, call, future))
        else:
            future = self._results[key]
            metrics.dedup_answer("joined")
            log.info("joined a retry to its execution in flight", extra={"message_id": message_id})
        # shield: a caller that goes away must not cancel the shared result.
        return await asyncio.shield(future)

    def _held(self) -> asyncio.Future[DedupStoreError | None]:
        """The batch the store's writes go to now; its commit is scheduled at the end
        of this turn of the loop. Raises :class:`DedupStoreError` if no batch opens."""
        if self._batch is None:
            self._store.hold()
            self._batch = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(self._commit)
        return self._batch

    def _held_for_completion(self) -> None:
        """Hold the store's writes for the batch of this turn if there is one, else for a
        commit within :data:`COMPLETION_COMMIT_DELAY`."""
        if self._batch is not None:
            return
        self._store.hold()
        if self._completions is None:
            self._completions = asyncio.get_running_loop().call_later(
                COMPLETION_COMMIT_DELAY, self._commit
            )

    def _commit(self) -> None:
        """Commit what is held: the batch of this turn and any completed records."""
        batch, self._batch = self._batch, None
        if self._completions is not None:
            self._completions.cancel()
            self._completions = None
        failed: DedupStoreError | None = None
        try:
            self._store.commit()
        except DedupStoreError as exc:
            log.error("dedup store failed to commit", extra={"error": str(exc)})
            failed = exc
        if batch is not None:
            batch.set_result(failed)

    async def _execute(
        self,
        call: _Call,
        execute: Execution,
        future: asyncio.Future[Reply],
        batch: asyncio.Future[DedupStoreError | None],
    ) -> None:
        key, message_id = call.key, call.message_id
        failed = await asyncio.shield(batch)  # its pending record durable before it runs
        if failed is not None:
            with contextlib.suppress(DedupStoreError):  # not run: a retry may run it
                self.protocol.abandon(key, self._clock())
            del self._results[key]
            future.set_result(
                reply_for_error(
                    message_id,
                    NotDeliveredError(f"relay: dedup store unavailable, not executed: {failed}"),
                )
            )
            return
        try:
            reply = await execute()
        except Exception as exc:
            log.exception("execution failed", extra={"message_id": message_id})
            self._unknown_outcome(call, future, f"its execution failed: {exc!r}")
            return
        now = self._clock()
        try:
            self._held_for_completion()
            if self._keep_reply(reply):
                self.protocol.complete(key, reply.SerializeToString(), now)
            else:
                self.protocol.abandon(key, now)
        except DedupStoreError as exc:
            # The id stays pending in the store, so duplicates are refused.
            log.error("dedup store failed", extra={"message_id": message_id, "error": str(exc)})
        finally:
            del self._results[key]
            future.set_result(reply)

    def _executed(
        self, task: asyncio.Task[None], call: _Call, future: asyncio.Future[Reply]
    ) -> None:
        # Here rather than in _execute: a task cancelled before its first step
        # never enters _execute's body, yet its waiters need an answer.
        self._tasks.discard(task)
        if not future.done():
            why = "the relay stopped while executing it" if task.cancelled() else "it crashed"
            self._unknown_outcome(call, future, why)

    def _unknown_outcome(self, call: _Call, future: asyncio.Future[Reply], why: str) -> None:
        key, message_id = call.key, call.message_id
        self.protocol.fail(key, self._clock())
        del self._results[key]
        self.on_lost(LostOutcome(key, call.note))
        future.set_result(
            reply_for_error(
                message_id,
                MaybeDeliveredError(
                    f"relay: message {message_id} may have reached the SuperLink but {why}; "
                    "it is not executed again"
                ),
            )
        )

    def lost(self) -> list[LostOutcome]:
        """The executions an earlier process left with no outcome (call it at start,
        before the first call: expiry forgets them once they are old)."""
        try:
            records = self.protocol.lost()
        except DedupStoreError as exc:
            log.error("dedup store failed", extra={"error": str(exc)})
            return []
        return [LostOutcome(r.message_id, r.note) for r in records]

    def _maybe_expire(self, now: float) -> None:
        if now - self._last_expiry >= self._expire_interval:
            self._last_expiry = now
            self.expire(now)

    def expire(self, now: float | None = None) -> int:
        """Forget records older than ``result_ttl`` now; return how many went."""
        try:
            return self.protocol.expire(self._clock() if now is None else now)
        except DedupStoreError as exc:
            log.error("dedup store expiry failed", extra={"error": str(exc)})
            return 0

    async def aclose(self) -> None:
        """Cancel executions still running (their ids stay pending) and refuse new ones.

        Their callers get a 504 reply (the call may have reached the SuperLink);
        the store is the caller's to close, after this returns.
        """
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._commit()  # what this turn wrote, before the store closes
