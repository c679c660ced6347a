"""The job runner's guards against jobs that hang until their time limit.

A relay restarted mid-job routes a job it adopts before it listens again: the
sites retry the moment the relay is back, and a call refused in between with
404 ("job not running on this relay") makes Flower drop the call, so its
SuperNode gives up the round's reply. It follows the adopted run with ``flwr``
commands that cannot hang it. And a run stops at once when a site fails.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.control.jobs.execution import unless_raised
from gateway.control.jobs.layout import JobPaths
from gateway.control.jobs.store import FAILED, RUNNING, JobRecord, JobStore
from gateway.control.relay_app import RelayApp
from gateway.core.exceptions import JobError
from gateway.flower import flwr_cli
from gateway.flower.install import FlowerInstall, FlowerInstalls
from tests.support.pki import FederationKits
from tests.support.relay import flower_not_installed

JOB = "job-adopted"

# Stands in for the job's SuperLink: its command line names the job directory
# (how the relay recognises its own process) and it serves the Control API port.
_SUPERLINK = """
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
print(s.getsockname()[1], flush=True)
time.sleep(120)
"""


@pytest.fixture
def surviving_superlink(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    job_dir = JobPaths(tmp_path / "relay").job_dir(JOB)
    (job_dir / "superlink").mkdir(parents=True)  # where its log goes
    process = subprocess.Popen(
        [sys.executable, "-c", _SUPERLINK, str(job_dir)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # as the relay starts a SuperLink: it outlives the relay
    )
    assert process.stdout is not None
    with process, process.stdout:
        port = int(process.stdout.readline())
        yield process, port
        process.kill()


async def test_an_adopted_job_is_routed_before_the_relay_listens(
    tmp_path: Path,
    federation: FederationKits,
    surviving_superlink: tuple[subprocess.Popen[str], int],
) -> None:
    process, control_port = surviving_superlink
    install = flower_not_installed(tmp_path / "no-flower-here")
    app = RelayApp(
        listen_urls=["grpcs://127.0.0.1:0"],
        tls=federation.relay,
        workspace=tmp_path / "relay",
        installs=FlowerInstalls((install,)),
    )
    app.manager.store.add(
        JobRecord(
            job_id=JOB,
            name="n",
            state=RUNNING,
            sites=("site-1",),
            submitted_by="admin",
            run_id="1",
            runtime={
                "superlink_pid": str(process.pid),
                "control": f"127.0.0.1:{control_port}",
                "fleet": "127.0.0.1:9",
            },
        )
    )
    routed_when_listening: list[str] = []
    listen = app.relay.start

    async def start_listening() -> None:
        routed_when_listening.extend(route.job_id for route in app.relay.dispatcher.jobs())
        await listen()

    app.relay.start = start_listening  # type: ignore[method-assign]
    try:
        await app.start()
    finally:
        await app.aclose()
    assert routed_when_listening == [JOB]
    # Without Flower here the run cannot be followed: the job failed and was unrouted.
    assert not list(app.relay.dispatcher.jobs())
    store = JobStore(tmp_path / "relay" / "jobs.db")
    try:
        assert store.require(JOB).state == FAILED
    finally:
        store.close()


async def test_a_flwr_command_that_hangs_is_killed_and_reads_as_no_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flwr = tmp_path / "bin" / "flwr"
    flwr.parent.mkdir()
    flwr.write_text("#!/bin/sh\nsleep 600\n")
    flwr.chmod(0o755)
    monkeypatch.setattr(flwr_cli, "FLWR_COMMAND_TIMEOUT", 0.5)
    started = time.monotonic()
    status = await flwr_cli.run_status(FlowerInstall(flwr.parent), tmp_path / "home", "1")
    assert status is None
    assert time.monotonic() - started < 30  # not the 600 s of the hung command
    # (the autouse fixture checks that the hung command was killed)


async def _fail_after(seconds: float) -> None:
    await asyncio.sleep(seconds)
    raise JobError("site-2: supernode exited")


async def _answer_after(seconds: float, cancelled: list[bool]) -> str:
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        cancelled.append(True)
        raise
    return "done"


async def test_a_run_ends_with_the_watch_error_and_is_cancelled_when_a_site_fails() -> None:
    cancelled: list[bool] = []
    with pytest.raises(JobError, match="site-2"):
        await unless_raised(_fail_after(0.01), _answer_after(60, cancelled))
    assert cancelled == [True]


async def test_a_run_that_ends_first_gives_its_result_and_stops_the_watch() -> None:
    watch = asyncio.ensure_future(_fail_after(60))
    assert await unless_raised(watch, _answer_after(0.01, [])) == "done"
    assert watch.cancelled()


async def test_cancelling_the_caller_cancels_the_run_and_the_watch() -> None:
    cancelled: list[bool] = []
    watch = asyncio.ensure_future(_fail_after(60))
    caller = asyncio.ensure_future(unless_raised(watch, _answer_after(60, cancelled)))
    await asyncio.sleep(0.01)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert cancelled == [True] and watch.cancelled()
