"""The Redis commands of concurrent calls go in one pipeline per turn of the loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis.asyncio.client import Pipeline

from gateway.transport.redis.batching import PipelineBatcher
from tests.support.redis import RedisServers


class CountingRedis(aioredis.Redis):
    """A client that counts the pipelines it sends."""

    pipelines = 0

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Pipeline:
        type(self).pipelines += 1
        return super().pipeline(transaction=transaction, shard_hint=shard_hint)


@pytest.fixture
async def client(redis_servers: RedisServers) -> AsyncIterator[CountingRedis]:
    redis = cast(CountingRedis, CountingRedis.from_url(redis_servers.plain.url))
    await redis.flushdb()
    CountingRedis.pipelines = 0
    try:
        yield redis
    finally:
        await redis.aclose()


def incr(key: str, times: int = 1) -> Any:
    def stage(pipe: Pipeline) -> None:
        for _ in range(times):
            pipe.incr(key)

    return stage


async def test_the_stages_of_one_turn_share_one_pipeline_and_get_their_own_results(
    client: CountingRedis,
) -> None:
    batcher = PipelineBatcher(client)
    results = await asyncio.gather(*(batcher.execute(incr(f"k{i}", i + 1)) for i in range(20)))
    assert results == [list(range(1, i + 2)) for i in range(20)]
    assert CountingRedis.pipelines == 1
    await batcher.execute(incr("k0"))  # a later turn: a pipeline of its own
    assert CountingRedis.pipelines == 2
    await batcher.aclose()


async def test_a_full_batch_goes_at_once_and_the_rest_in_the_next(client: CountingRedis) -> None:
    batcher = PipelineBatcher(client, max_batch=8)
    results = await asyncio.gather(*(batcher.execute(incr("n")) for _ in range(20)))
    assert sorted(r[0] for r in results) == list(range(1, 21))
    assert CountingRedis.pipelines == 3
    await batcher.aclose()


async def test_a_failed_command_fails_its_caller_only(client: CountingRedis) -> None:
    batcher = PipelineBatcher(client)
    await client.set("text", "not a number")

    def bad(pipe: Pipeline) -> None:
        pipe.incr("n")
        pipe.incr("text")

    outcomes: list[Any] = await asyncio.gather(
        batcher.execute(incr("m")), batcher.execute(bad), return_exceptions=True
    )
    good, failed = outcomes
    assert good == [1]
    assert isinstance(failed, redis_errors.ResponseError)
    assert int(await client.get("n") or 0) == 1  # the caller's other command ran
    await batcher.aclose()


async def test_a_caller_that_stops_waiting_leaves_the_others_their_results(
    client: CountingRedis,
) -> None:
    batcher = PipelineBatcher(client)
    gone = asyncio.ensure_future(batcher.execute(incr("a")))
    stays = asyncio.ensure_future(batcher.execute(incr("b")))
    await asyncio.sleep(0)
    gone.cancel()
    assert await stays == [1]
    assert gone.cancelled()
    await batcher.aclose()


async def test_a_closed_batcher_refuses_and_fails_what_it_queued(client: CountingRedis) -> None:
    batcher = PipelineBatcher(client)
    queued = asyncio.ensure_future(batcher.execute(incr("q")))
    await asyncio.sleep(0)  # queued; its turn has not come
    await batcher.aclose()
    with pytest.raises(redis_errors.ConnectionError):
        await queued
    with pytest.raises(redis_errors.ConnectionError, match="closed"):
        await batcher.execute(incr("q"))


async def test_a_lost_connection_fails_every_stage_of_the_batch() -> None:
    unreachable = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)
    batcher = PipelineBatcher(unreachable)
    results = await asyncio.gather(
        *(batcher.execute(incr("x")) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, redis_errors.ConnectionError) for r in results), results
    await batcher.aclose()
    await unreachable.aclose()
