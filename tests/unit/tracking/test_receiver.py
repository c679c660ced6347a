"""The site's loopback receiver of tracking records: its answers, on a real socket."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from gateway.tracking.receiver import TrackingReceiver
from gateway.tracking.records import TrackingLimits
from gateway.tracking.series import Point
from gateway.tracking.writer import TOKEN_ENV, URL_ENV


@pytest.fixture
async def receiver() -> AsyncIterator[TrackingReceiver]:
    receiver = TrackingReceiver(
        TrackingLimits(rate=10, burst=20, max_body_bytes=4096, max_records_per_request=20)
    )
    await receiver.start()
    yield receiver
    await receiver.aclose()


async def _post(
    receiver: TrackingReceiver, token: str | None, body: Any, *, raw: bytes | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    data = raw if raw is not None else json.dumps(body).encode()
    async with (
        aiohttp.ClientSession() as session,
        session.post(receiver.url, data=data, headers=headers) as answer,
    ):
        return answer.status, await answer.json(), dict(answer.headers)


def _records(count: int) -> list[dict[str, Any]]:
    return [{"tag": "loss", "step": step, "value": 0.5} for step in range(count)]


async def test_a_jobs_records_are_taken_with_its_token_and_queued_for_the_relay(
    receiver: TrackingReceiver,
) -> None:
    token = receiver.add_job("job-1")
    other = receiver.add_job("job-2")
    assert token != other and len(token) >= 32
    assert receiver.job_env(token) == {URL_ENV: receiver.url, TOKEN_ENV: token}
    assert receiver.url.startswith("http://127.0.0.1:")
    status, body, _ = await _post(receiver, token, {"records": _records(2), "dropped": 1})
    assert (status, body) == (200, {"queued": 2, "dropped": 0})
    [batch] = receiver.due(flush=True)
    assert (batch.job_id, batch.points, batch.dropped) == (
        "job-1",
        [Point("loss", 0, 0.5), Point("loss", 1, 0.5)],
        1,
    )


@pytest.mark.parametrize("token", [None, "", "not-a-token"])
async def test_a_request_without_a_known_token_is_unauthorized(
    receiver: TrackingReceiver, token: str | None
) -> None:
    receiver.add_job("job-1")
    status, body, _ = await _post(receiver, token, {"records": _records(1)})
    assert status == 401
    assert "token" in body["error"]


async def test_a_removed_jobs_token_is_refused(receiver: TrackingReceiver) -> None:
    token = receiver.add_job("job-1")
    receiver.remove_job("job-1")
    status, _, _ = await _post(receiver, token, {"records": _records(1)})
    assert status == 401


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"{not json", "the body is not JSON"),
        (b'{"records": [{"tag": "a b", "step": 0, "value": 1}]}', r"records[0].tag: only"),
        (b'{"records": [{"tag": "a", "step": -1, "value": 1}]}', "records[0].step: must be"),
        (b'{"records": "all"}', "'records' must be a list"),
    ],
)
async def test_a_malformed_body_is_a_400_naming_the_problem(
    receiver: TrackingReceiver, raw: bytes, problem: str
) -> None:
    token = receiver.add_job("job-1")
    status, body, _ = await _post(receiver, token, None, raw=raw)
    assert status == 400
    assert problem in body["error"]
    assert receiver.protocol.queued("job-1") == 0


async def test_a_body_over_the_limit_or_with_too_many_records_is_a_413(
    receiver: TrackingReceiver,
) -> None:
    token = receiver.add_job("job-1")
    status, body, _ = await _post(receiver, token, None, raw=b" " * 5000)
    assert status == 413 and "over 4096 bytes" in body["error"]
    status, body, _ = await _post(receiver, token, {"records": [{}] * 21})
    assert status == 413 and "more than 20" in body["error"]


async def test_a_job_over_its_rate_gets_a_429_with_retry_after(
    receiver: TrackingReceiver,
) -> None:
    token = receiver.add_job("job-1")
    assert (await _post(receiver, token, {"records": _records(20)}))[0] == 200
    status, body, headers = await _post(receiver, token, {"records": _records(5)})
    assert status == 429
    assert "over the job's rate of 10 records/s" in body["error"]
    assert headers["Retry-After"] == "1"
    assert receiver.protocol.queued("job-1") == 20
