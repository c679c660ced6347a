"""How many real Flower runs the end-to-end tests keep going at once.

Flower 1.41 starts one ``flwr-clientapp`` process per task (about 3 s of CPU before it
runs any app code) and hands the task to a new process when the first has not reported
within 30 s (``HEARTBEAT_DEFAULT_INTERVAL``). With more runs than the cores can start in
time, every late start adds another process, and the machine does not recover: on
2 cores, 8 runs at once grew to 86 ClientApp processes at a load of 98 and not one run
finished in 15 minutes. One run per core keeps every start well inside the 30 s.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Awaitable, Iterable
from typing import TypeVar

T = TypeVar("T")

RUNS_AT_ONCE = int(os.environ.get("FLGATE_TEST_FLOWER_RUNS") or max(1, os.cpu_count() or 1))
"""Real Flower runs at once; ``FLGATE_TEST_FLOWER_RUNS`` overrides one per core."""


async def gather_bounded(awaitables: Iterable[Awaitable[T]], *, runs_each: int = 1) -> list[T]:
    """Await all, in order, with at most :data:`RUNS_AT_ONCE` Flower runs going.

    ``runs_each`` is how many runs one awaitable makes (a comparison makes two).
    """
    slots = asyncio.Semaphore(max(1, RUNS_AT_ONCE // runs_each))

    async def one(awaitable: Awaitable[T]) -> T:
        try:
            async with slots:
                return await awaitable
        finally:
            # Cancelled before its turn (another run failed): it never ran, so close it
            # rather than leave a "never awaited" warning to the garbage collector.
            if (
                inspect.iscoroutine(awaitable)
                and inspect.getcoroutinestate(awaitable) == inspect.CORO_CREATED
            ):
                awaitable.close()

    return await asyncio.gather(*(one(a) for a in awaitables))
