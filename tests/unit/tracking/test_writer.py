"""The ClientApps' SummaryWriter: to the site's real receiver inside a job, to local
TensorBoard files outside, bounded, and never raising for a delivery failure."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.tracking.receiver import TrackingReceiver
from gateway.tracking.records import TrackingLimits
from gateway.tracking.series import Point
from gateway.tracking.writer import TOKEN_ENV, URL_ENV, SummaryWriter
from tests.support.tensorboard import read_scalars

REPOSITORY = Path(__file__).resolve().parents[3]


@pytest.fixture
async def receiver() -> AsyncIterator[TrackingReceiver]:
    receiver = TrackingReceiver(TrackingLimits(rate=1_000, burst=2_000))
    await receiver.start()
    yield receiver
    await receiver.aclose()


def _queued(receiver: TrackingReceiver) -> list[Point]:
    """Every record queued so far (handed out as shipped)."""
    points = []
    for batch in receiver.due(flush=True):
        points += batch.points
        receiver.shipped(batch)
    return points


async def test_inside_a_job_it_reads_the_environment_and_flush_delivers_at_once(
    receiver: TrackingReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = receiver.add_job("job-1")
    monkeypatch.setenv(URL_ENV, receiver.url)
    monkeypatch.setenv(TOKEN_ENV, token)
    writer = SummaryWriter()
    assert writer.to_gateway and writer.logdir is None
    writer.add_scalar("train_loss", 0.25, 1)
    writer.add_scalar("train_loss", 0.125, step=2)
    writer.add_scalar("acc", 1)  # no step: the tag's next, from 0
    writer.add_scalar("acc", 2)
    await asyncio.to_thread(writer.flush)
    assert receiver.protocol.ship_now("job-1")  # the app flushed: the site ships at once
    assert _queued(receiver) == [
        Point("train_loss", 1, 0.25),
        Point("train_loss", 2, 0.125),
        Point("acc", 0, 1.0),
        Point("acc", 1, 2.0),
    ]
    await asyncio.to_thread(writer.close)


async def test_records_go_about_a_second_after_the_first_without_a_flush(
    receiver: TrackingReceiver,
) -> None:
    token = receiver.add_job("job-1")
    writer = SummaryWriter(url=receiver.url, token=token)
    started = time.monotonic()
    writer.add_scalar("loss", 1.0, 0)
    while receiver.protocol.queued("job-1") == 0 and time.monotonic() - started < 10:
        await asyncio.sleep(0.05)
    assert 0.9 <= time.monotonic() - started < 3
    await asyncio.to_thread(writer.close)


async def test_a_full_batch_goes_at_once(receiver: TrackingReceiver) -> None:
    token = receiver.add_job("job-1")
    writer = SummaryWriter(url=receiver.url, token=token, batch_size=10, send_after=60)
    for step in range(10):
        writer.add_scalar("loss", 1.0, step)
    started = time.monotonic()
    while receiver.protocol.queued("job-1") < 10 and time.monotonic() - started < 10:
        await asyncio.sleep(0.05)
    assert receiver.protocol.queued("job-1") == 10
    assert time.monotonic() - started < 1
    await asyncio.to_thread(writer.close)


async def test_a_flood_is_bounded_and_its_drops_reach_the_site(tmp_path: Path) -> None:
    receiver = TrackingReceiver(TrackingLimits(rate=1_000, burst=1_000))
    await receiver.start()
    try:
        token = receiver.add_job("job-1")
        writer = SummaryWriter(url=receiver.url, token=token, max_buffered=2_000)

        def flood() -> None:
            for step in range(20_000):
                writer.add_scalar("loss", 0.5, step)
            writer.close(timeout=3)

        started = time.monotonic()
        await asyncio.to_thread(flood)
        assert time.monotonic() - started < 10
        queued = receiver.protocol.queued("job-1")
        [batch] = receiver.due(flush=True)
        # The site took what its rate allowed; the writer held at most 2,000 at a time
        # and told the site how many it dropped; the rest it could not deliver by close.
        assert 1_000 <= queued <= 5_000
        assert batch.dropped >= 15_000
        assert queued + batch.dropped + writer.lost == 20_000
    finally:
        await receiver.aclose()


async def test_delivery_failures_never_raise_and_are_logged_once(
    receiver: TrackingReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.add_job("job-1")
    writer = SummaryWriter(url=receiver.url, token="wrong-token")
    with caplog.at_level(logging.WARNING, logger="gateway.tracking.writer"):
        for step in range(3):
            writer.add_scalar("loss", 1.0, step)
            await asyncio.to_thread(writer.flush)
        await asyncio.to_thread(writer.close)
    refused = [r for r in caplog.records if "refused records (401)" in r.getMessage()]
    assert len(refused) == 1
    assert writer.lost == 3
    nowhere = SummaryWriter(url="http://127.0.0.1:9/v1/records", token="t")  # nothing listens
    nowhere.add_scalar("loss", 1.0, 0)
    await asyncio.to_thread(nowhere.close, 0.5)
    assert nowhere.lost == 1


@pytest.mark.parametrize(
    ("tag", "value", "step", "error"),
    [
        (1, 1.0, 0, TypeError),
        ("bad tag", 1.0, 0, ValueError),
        ("loss", "1.0", 0, TypeError),
        ("loss", True, 0, TypeError),
        ("loss", math.nan, 0, ValueError),
        ("loss", math.inf, 0, ValueError),
        ("loss", 1.0, -1, ValueError),
        ("loss", 1.0, 1.5, TypeError),
    ],
)
def test_bad_arguments_raise(
    tmp_path: Path, tag: object, value: object, step: object, error: type[Exception]
) -> None:
    writer = SummaryWriter(tmp_path, url="", token="")
    with pytest.raises(error):
        writer.add_scalar(tag, value, step)  # type: ignore[arg-type]
    writer.close()


def test_outside_the_gateway_it_writes_local_tensorboard_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(URL_ENV, raising=False)
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with SummaryWriter(tmp_path / "runs") as writer:
        assert not writer.to_gateway and writer.logdir == tmp_path / "runs"
        writer.add_scalar("train_loss", 0.5, 1)
        writer.add_scalar("train_loss", 0.25, 2)
    assert read_scalars(tmp_path / "runs") == {"train_loss": {1: 0.5, 2: 0.25}}
    monkeypatch.chdir(tmp_path)
    with SummaryWriter() as writer:
        writer.add_scalar("x", 1.0, 0)
    assert writer.logdir is not None and writer.logdir.parent == Path("runs")
    assert read_scalars(tmp_path / writer.logdir) == {"x": {0: 1.0}}


async def test_what_is_left_is_delivered_at_interpreter_exit(receiver: TrackingReceiver) -> None:
    token = receiver.add_job("job-1")
    script = textwrap.dedent(
        """
        from gateway.tracking.writer import SummaryWriter
        writer = SummaryWriter(send_after=60)
        for step in range(3):
            writer.add_scalar("loss", step / 2, step)
        """
    )
    env = {**os.environ, URL_ENV: receiver.url, TOKEN_ENV: token, "PYTHONPATH": str(REPOSITORY)}
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", script, env=env)
    assert await asyncio.wait_for(process.wait(), 30) == 0
    assert _queued(receiver) == [Point("loss", s, s / 2) for s in range(3)]


def test_importing_the_writer_loads_neither_flower_nor_the_gateways_network_code() -> None:
    probe = "import json, sys, gateway.tracking.writer; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPOSITORY)},
    )
    loaded = json.loads(done.stdout)
    heavy = ("asyncio", "aiohttp", "grpc", "flwr", "google", "tensorboardX", "numpy")
    assert [m for m in loaded if m.split(".")[0] in heavy] == []
    assert [m for m in loaded if m.startswith("gateway")] == [
        "gateway",
        "gateway.tracking",
        "gateway.tracking.records",
        "gateway.tracking.series",
        "gateway.tracking.writer",
    ]
