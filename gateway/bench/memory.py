"""A large model through one gateway path, down and back up, as a SuperNode moves it.

The far end is the constant-answer stub (see :mod:`.worker`): every PullObject
gets a 5 MiB object and every PushObject is "stored". The relay and the site
gateway see the same calls and bytes as with a SuperLink (one 5 MiB object per
call, two calls at a time, as Flower moves them), but the SuperLink's SQLite
store, which takes minutes per gigabyte on two cores, does not pace the step.
What it measures is whether the gateway streams: its peak RSS must not grow
with the model's size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .fleet_client import Endpoint, FleetClient, SyntheticNode
from .objects import TransferRates, run_limited

RUN_ID = 1
"""Any run id: the stub does not look."""


@dataclass(frozen=True)
class Streamed(TransferRates):
    """What one pass moved and how long each direction took."""

    objects: int
    pull_bytes: int
    pull_seconds: float
    push_bytes: int
    push_seconds: float


async def stream_model(
    client: FleetClient,
    endpoint: Endpoint,
    node: SyntheticNode,
    *,
    objects: int,
    concurrency: int,
) -> Streamed:
    """Pull ``objects`` objects, then push each one back, ``concurrency`` calls at a time."""
    # The bench keeps one object, not the model: a gigabyte held here would
    # only slow the machine down (the bench's own memory is not measured).
    content = b""
    pull_bytes = 0

    async def pull(index: int) -> None:
        nonlocal content, pull_bytes
        answer = await client.pull_object(endpoint, node, RUN_ID, f"chunk-{index}")
        content = answer.object_content
        pull_bytes += len(content)

    started = time.perf_counter()
    await run_limited(concurrency, pull, range(objects))
    pull_seconds = time.perf_counter() - started

    async def push(index: int) -> None:
        await client.push_object(
            endpoint,
            node,
            run_id=RUN_ID,
            session_id="",
            object_id=f"chunk-{index}",
            content=content,
        )

    started = time.perf_counter()
    await run_limited(concurrency, push, range(objects))
    push_seconds = time.perf_counter() - started
    return Streamed(
        objects=objects,
        pull_bytes=pull_bytes,
        pull_seconds=pull_seconds,
        push_bytes=len(content) * objects,
        push_seconds=push_seconds,
    )
