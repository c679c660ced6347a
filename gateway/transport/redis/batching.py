"""The Redis commands of concurrent calls, sent in one pipeline per turn of the event loop.

Every Fleet call costs the site one ``XADD`` and the relay a nonce ``SET`` and a
reply pipeline. Sent one call at a time, each is a round trip and a TLS write of
its own: sending them was a fifth of the relay's and the site's CPU with 200 nodes
calling. A :class:`PipelineBatcher` queues each caller's commands (a *stage*) and
sends the stages that arrived in the same turn of the loop as one pipeline, in
arrival order, each caller's commands together. Nothing is retried or reordered:
a caller gets its own commands' results, or the error that failed them (the first
one of its commands, or the pipeline's connection error, which fails every stage
of the batch). A caller that stops waiting (a deadline) leaves its stage in the
batch: its commands may have been sent already, exactly as a cancelled command.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis.asyncio.client import Pipeline

Stage = Callable[[Pipeline], None]
"""Queues one caller's commands on the pipeline it is given (and awaits nothing)."""

MAX_BATCH = 256
"""Stages in one pipeline at most; more that arrive in the same turn go in the next."""


class PipelineBatcher:
    """Sends the stages of one turn of the event loop in one pipeline (see the module)."""

    def __init__(self, client: aioredis.Redis, *, max_batch: int = MAX_BATCH) -> None:
        self._client = client
        self._max_batch = max_batch
        self._queue: list[tuple[Stage, asyncio.Future[list[Any]]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def execute(self, stage: Stage) -> list[Any]:
        """Run ``stage``'s commands with those of the other callers of this turn; return
        their results in order. Raises a ``RedisError`` like a pipeline of its own."""
        if self._closed:
            raise redis_errors.ConnectionError("the Redis batcher is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._queue.append((stage, future))
        if len(self._queue) == 1:
            loop.call_soon(self._flush)
        elif len(self._queue) >= self._max_batch:
            self._flush()
        return await future

    def _flush(self) -> None:
        batch, self._queue = self._queue, []
        if not batch:
            return  # a full batch went already, and none came since
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[Stage, asyncio.Future[list[Any]]]]) -> None:
        spans: list[tuple[int, int]] = []
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for stage, _ in batch:
                    start = len(pipe)
                    stage(pipe)
                    spans.append((start, len(pipe)))
                results = await pipe.execute(raise_on_error=False)
        except BaseException as exc:
            error = exc if isinstance(exc, Exception) else redis_errors.ConnectionError(str(exc))
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), (start, end) in zip(batch, spans, strict=True):
            if future.done():
                continue  # its caller stopped waiting
            mine = results[start:end]
            failed = next((r for r in mine if isinstance(r, Exception)), None)
            if failed is not None:
                future.set_exception(failed)
            else:
                future.set_result(mine)

    async def aclose(self) -> None:
        """Fail what is queued, and wait for the batches being sent (their callers get
        their results or errors); before the client's connections close."""
        self._closed = True
        queued, self._queue = self._queue, []
        for _, future in queued:
            if not future.done():
                future.set_exception(redis_errors.ConnectionError("the Redis batcher is closed"))
        if self._tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait(list(self._tasks), timeout=5.0)
