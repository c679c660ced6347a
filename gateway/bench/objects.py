"""Object transfers: one node pulls a message's objects, then pushes its reply's.

One *exchange* is what a SuperNode does with one large message: PullMessages,
PullObject for every object of the message (timed), ConfirmMessageReceived,
PushMessages with the reply, PushObject for every object the SuperLink asks
for (timed). The reply echoes the content, so the SuperLink asks for all of it
again (it deleted the instruction's objects on the confirmation): both
directions move the same bytes. Calls run ``concurrency`` at a time, in
Flower's order (post-order: chunks first, the message itself last).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from ..proto.bench_fleet_pb2 import Message, ObjectTree, PushMessagesRequest
from .fleet_client import Endpoint, FleetCallError, FleetClient, NotStoredError, SyntheticNode
from .wire import echo_reply, object_head, tree_ids

T = TypeVar("T")
R = TypeVar("R")
CHUNK_TYPE = "ArrayChunk"
_UNAVAILABLE_PAUSE = 0.02
_UNAVAILABLE_LIMIT = 120.0
_SERVER_ERROR = 500
_BUSY_ATTEMPTS = 30
_BUSY_PAUSE = 1.0


class TransferRates:
    """MB/s of both directions, for the records of a transfer."""

    pull_bytes: int
    pull_seconds: float
    push_bytes: int
    push_seconds: float

    @property
    def pull_mb_s(self) -> float:
        return self.pull_bytes / self.pull_seconds / 1e6

    @property
    def push_mb_s(self) -> float:
        return self.push_bytes / self.push_seconds / 1e6


@dataclass(frozen=True)
class Exchange(TransferRates):
    """What one exchange moved and how long each direction took."""

    path: str
    concurrency: int
    chunks: int
    """ArrayChunk objects in the message (5 MiB each)."""
    pull_bytes: int
    pull_seconds: float
    push_bytes: int
    push_seconds: float
    unavailable: int
    """PullObject answers 'not yet available' (the ServerApp still uploading)."""
    busy_retries: int = 0
    """Calls repeated because the SuperLink failed them while busy (see ``_Busy``)."""


async def run_limited(
    concurrency: int, action: Callable[[T], Awaitable[None]], items: Iterable[T]
) -> None:
    """``action`` on every item, in order, at most ``concurrency`` at a time."""
    queue = iter(items)

    async def worker() -> None:
        for item in queue:
            await action(item)

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))


class _Busy:
    """Repeats calls that a busy SuperLink failed, and counts them.

    While it writes (and checkpoints) gigabytes into its SQLite store, a flwr
    1.41 SuperLink answers some calls with 500 ("database is locked") or does
    not store a pushed object. Flower's SuperNode gives up on a 500; the bench
    must get its model through, so it waits and repeats such a call, and
    reports how often it had to.
    """

    def __init__(self) -> None:
        self.retries = 0

    async def call(self, make: Callable[[], Awaitable[R]]) -> R:
        for attempt in range(1, _BUSY_ATTEMPTS + 1):
            try:
                return await make()
            except FleetCallError as exc:
                if exc.status != _SERVER_ERROR and not isinstance(exc, NotStoredError):
                    raise
                if attempt == _BUSY_ATTEMPTS:
                    raise
                self.retries += 1
                await asyncio.sleep(_BUSY_PAUSE)
        raise AssertionError("unreachable")


async def wait_for_message(
    client: FleetClient,
    endpoint: Endpoint,
    node: SyntheticNode,
    *,
    timeout: float,
    busy: _Busy | None = None,
) -> tuple[Message, ObjectTree]:
    """Poll PullMessages until the ServerApp's next message for ``node`` arrives.

    The pause between polls grows to a second: each poll is a write for the
    SuperLink, which must not slow the ServerApp's upload it waits for.
    """
    busy = busy or _Busy()
    deadline = time.monotonic() + timeout
    pause = 0.05
    while True:
        answer, _ = await busy.call(partial(client.pull_messages, endpoint, node))
        if answer.messages_list:
            return answer.messages_list[0], answer.message_object_trees[0]
        if time.monotonic() > deadline:
            raise FleetCallError("PullMessages", 200, f"no message for the node in {timeout:.0f} s")
        await asyncio.sleep(pause)
        pause = min(1.0, pause * 2)


async def exchange(
    client: FleetClient,
    endpoint: Endpoint,
    node: SyntheticNode,
    *,
    concurrency: int,
    message_timeout: float = 120.0,
    on_message: Callable[[], None] | None = None,
) -> Exchange:
    """One full exchange of a large message over ``endpoint`` (see the module doc).

    ``on_message`` runs once the message is in hand, before the reply that
    makes the ServerApp send the next one (the moment to say there is none).
    """
    busy = _Busy()
    message, tree = await wait_for_message(
        client, endpoint, node, timeout=message_timeout, busy=busy
    )
    if on_message is not None:
        on_message()
    run_id = message.metadata.run_id
    ids = tree_ids(tree)
    root = ids[-1]
    contents: dict[str, bytes] = {}
    unavailable = 0

    async def pull(object_id: str) -> None:
        nonlocal unavailable
        deadline = time.monotonic() + _UNAVAILABLE_LIMIT
        while True:
            answer = await busy.call(partial(client.pull_object, endpoint, node, run_id, object_id))
            if answer.object_available:
                contents[object_id] = answer.object_content
                return
            if time.monotonic() > deadline:
                raise FleetCallError(
                    "PullObject",
                    200,
                    f"object {object_id} still unavailable after "
                    f"{_UNAVAILABLE_LIMIT:.0f} s: the ServerApp did not finish uploading it",
                )
            unavailable += 1
            await asyncio.sleep(_UNAVAILABLE_PAUSE)

    # The ServerApp uploads the message object last: once it is there, all are,
    # and the timed pulls measure the path, not the ServerApp's upload.
    await pull(root)
    unavailable = 0
    started = time.perf_counter()
    await run_limited(concurrency, pull, ids[:-1])
    pull_seconds = time.perf_counter() - started
    await busy.call(
        partial(client.confirm_received, endpoint, node, run_id, message.metadata.message_id)
    )

    reply = echo_reply(message, tree)
    contents[reply.message_id] = reply.object_bytes
    request = PushMessagesRequest(
        node=node.node,
        messages_list=[reply.message],
        message_object_trees=[reply.tree],
        clientapp_runtime_list=[0.0],
    )
    answer = await busy.call(partial(client.push_messages, endpoint, node, request))
    wanted = set(answer.objects_to_push)
    order = [i for i in tree_ids(reply.tree) if i in wanted]

    async def push(object_id: str) -> None:
        await busy.call(
            partial(
                client.push_object,
                endpoint,
                node,
                run_id=run_id,
                session_id=answer.session_id,
                object_id=object_id,
                content=contents[object_id],
            )
        )

    started = time.perf_counter()
    await run_limited(concurrency, push, order)
    push_seconds = time.perf_counter() - started
    chunks = sum(1 for i in ids if object_head(contents[i])[0] == CHUNK_TYPE)
    return Exchange(
        path=endpoint.name,
        concurrency=concurrency,
        chunks=chunks,
        pull_bytes=sum(len(contents[i]) for i in ids[:-1]),
        pull_seconds=pull_seconds,
        push_bytes=sum(len(contents[i]) for i in order),
        push_seconds=push_seconds,
        unavailable=unavailable,
        busy_retries=busy.retries,
    )
