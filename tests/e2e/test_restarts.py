"""Jobs survive restarts: the relay killed with SIGKILL mid-job, then a site's agent.

The relay keeps its job store and its dedup store on disk and finds the job's
SuperLink (which runs in a session of its own) again; a site's agent adopts its
surviving SuperNode and reopens the LGS on the same port. Either way the job
completes with the results of a run that was never interrupted. A SuperNode
that dies instead fails its job at once, with the site's reason.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from gateway.flower.process import descendants
from gateway.harness.local_run import RunOutcome
from gateway.proto.control_pb2 import JobInfo
from tests.support.federation import RunningFederation, running_federation
from tests.support.paths import QUICKSTART

pytestmark = pytest.mark.e2e
SITES = ["site-1", "site-2"]


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFederation]:
    with running_federation(tmp_path_factory.mktemp("restarts"), SITES) as fed:
        yield fed


async def _poll(fed: RunningFederation, job_id: str, until: str, timeout: float = 300) -> JobInfo:
    """Poll the job until ``until`` holds ("round1" or "ended"), riding out relay outages."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        admin = fed.admin()
        try:
            info = await admin.get(job_id)
        except Exception:  # the relay may be down for a moment
            info = None
        finally:
            await admin.aclose()
        if info is not None:
            last = info
            if until == "round1" and info.round >= 1:
                return info
            if until == "ended" and info.state in ("finished", "failed", "aborted"):
                return info
        await asyncio.sleep(0.5)
    logs = "\n".join(
        f"--- {path.relative_to(fed.root)}:\n" + "\n".join(path.read_text().splitlines()[-15:])
        for path in [fed.root / "relay.out", *sorted(fed.root.glob(f"site-*/jobs/{job_id}/*.log"))]
        if path.is_file()
    )
    raise AssertionError(f"job {job_id} never reached {until}; last seen: {last}\n{logs}")


async def _submit(fed: RunningFederation) -> str:
    admin = fed.admin()
    try:
        for _ in range(120):
            if sum(s.online for s in await admin.list_sites()) >= 2:
                break
            await asyncio.sleep(0.5)
        return (await admin.submit(QUICKSTART, sites=SITES)).job_id
    finally:
        await admin.aclose()


async def _until(what: str, holds: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not holds():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:.0f} s")
        await asyncio.sleep(0.1)


def _superlink_of(fed: RunningFederation) -> int:
    """The pid of the (one) SuperLink that the relay runs."""
    assert fed.relay is not None
    found = [
        pid
        for pid in descendants(fed.relay.pid)
        if b"flower-superlink" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert len(found) == 1, found
    return found[0]


async def _stop_under_a_pull(fed: RunningFederation, superlink: int) -> None:
    """Leave the SuperLink stopped (SIGSTOP) with a PullMessages waiting at it.

    A SuperNode in the middle of a round (its ClientApp pulling the message's objects,
    or pushing its reply) makes no pull while the SuperLink is stopped: its call waits
    there for the gateway's 20 s and is then retried. So a stop that catches no pull
    within a few seconds is lifted, the round goes on for a moment, and the SuperLink
    is stopped again; an idle SuperNode pulls every 3 s."""
    for _ in range(10):
        os.kill(superlink, signal.SIGSTOP)
        deadline = time.monotonic() + 6.0
        while time.monotonic() < deadline:
            waiting = fed.metric("relay", "flgate_relay_superlink_calls_in_flight")
            if waiting.get(("PullMessages",), 0) >= 1:
                return
            await asyncio.sleep(0.1)
        os.kill(superlink, signal.SIGCONT)
        await asyncio.sleep(2.0)
    raise AssertionError("no PullMessages waited at the stopped SuperLink in 10 tries")


def _lgs_idle(fed: RunningFederation, site: str) -> bool:
    return not any(fed.metric(site, "flgate_site_calls_in_flight").values())


async def test_relay_killed_mid_job_and_restarted(
    federation: RunningFederation, runs: dict[str, RunOutcome]
) -> None:
    """Killed while no Fleet call is anywhere between a SuperNode and its SuperLink:
    the SuperNodes are stopped (SIGSTOP) until their LGS holds no call, so a reply the
    SuperLink gave is never lost with the relay (that case is the next test's)."""
    job_id = await _submit(federation)
    await _poll(federation, job_id, "round1")
    deadline = time.monotonic() + 120
    while not await _points(federation, job_id):  # round 1's training is aggregated
        assert time.monotonic() < deadline, "no metric point arrived in round 1"
        await asyncio.sleep(0.5)
    # An admin following the job's metrics rides out the restart.
    following = asyncio.create_task(
        asyncio.to_thread(federation.run_cli, "job", "metrics", job_id, "--follow", timeout=400)
    )
    supernodes = [_supernode_of(federation, site) for site in SITES]
    port = federation.relay_port
    for pid in supernodes:
        os.kill(pid, signal.SIGSTOP)
    try:
        for site in SITES:
            await _until(f"{site}'s LGS holding no call", partial(_lgs_idle, federation, site))
        before = await _points(federation, job_id)
        federation.stop(federation.relay, signal.SIGKILL)
        killed = time.monotonic()
        await asyncio.sleep(2.0)
        federation.start_relay(port=port)
        restarted = time.monotonic()
    finally:
        for pid in supernodes:
            os.kill(pid, signal.SIGCONT)
    info = await _poll(federation, job_id, "ended")
    print(
        f"relay down {restarted - killed:.1f} s; job ended {time.monotonic() - restarted:.1f} s "
        f"after the restart"
    )
    assert info.state == "finished", info
    assert json.loads(info.result_json) == runs["direct-142"].result
    assert "adopted a running job" in (federation.root / "relay.out").read_text()
    # No series point read before the kill is lost (they are kept in the job store).
    after = await _points(federation, job_id)
    assert before and before <= after, (before, after)
    followed = await following
    assert followed.returncode == 0, followed.stderr
    assert "reconnected to the relay after" in followed.stdout, followed.stdout
    assert "round 3: " in followed.stdout, followed.stdout


async def _points(fed: RunningFederation, job_id: str) -> set[tuple[str, int, float]]:
    admin = fed.admin()
    try:
        answer = await admin.metrics(job_id)
    finally:
        await admin.aclose()
    return {(p.tag, p.step, p.value) for p in answer.points}


async def test_relay_killed_while_a_pull_waits_at_the_superlink_fails_the_job_clearly(
    federation: RunningFederation,
) -> None:
    """Flower hands a message out once: a PullMessages answered into a dead relay loses
    what it carried, and the run would wait for it until its time limit. The relay
    finds the lost pull in its dedup store at the restart and fails the job at once.
    (The SuperLink is stopped with SIGSTOP so the pull is surely there when the relay
    dies, and continued before the relay restarts.)"""
    job_id = await _submit(federation)
    await _poll(federation, job_id, "round1")
    superlink = _superlink_of(federation)
    port = federation.relay_port
    try:
        await _stop_under_a_pull(federation, superlink)
        federation.stop(federation.relay, signal.SIGKILL)
    finally:
        os.kill(superlink, signal.SIGCONT)
    federation.start_relay(port=port)
    restarted = time.monotonic()
    info = await _poll(federation, job_id, "ended", timeout=120)
    print(f"job {info.state} {time.monotonic() - restarted:.1f} s after the restart")
    assert info.state == "failed", info
    assert info.reason.startswith("a message of the run was lost: site site-"), info.reason
    assert "PullMessages (message " in info.reason, info.reason
    assert "Submit the job again" in info.reason, info.reason


async def test_site_agent_killed_mid_job_and_restarted(
    federation: RunningFederation, runs: dict[str, RunOutcome]
) -> None:
    job_id = await _submit(federation)
    await _poll(federation, job_id, "round1")
    federation.stop(federation.sites["site-1"], signal.SIGKILL)
    await asyncio.sleep(2.0)
    federation.start_site("site-1")
    info = await _poll(federation, job_id, "ended")
    assert info.state == "finished", info
    assert json.loads(info.result_json) == runs["direct-142"].result
    assert "adopted a running SuperNode" in (federation.root / "site-1.out").read_text()


def _supernode_of(fed: RunningFederation, site: str) -> int:
    """The pid of the (one) SuperNode that ``site``'s agent runs."""
    agent = fed.sites[site]
    found = [
        pid
        for pid in descendants(agent.pid)
        if b"flower-supernode" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert len(found) == 1, found
    return found[0]


async def test_supernode_killed_mid_job_fails_the_job_at_once(
    federation: RunningFederation,
) -> None:
    job_id = await _submit(federation)
    await _poll(federation, job_id, "round1")
    os.kill(_supernode_of(federation, "site-1"), signal.SIGKILL)
    killed = time.monotonic()
    info = await _poll(federation, job_id, "ended", timeout=120)
    print(f"job {info.state} {time.monotonic() - killed:.1f} s after its SuperNode was killed")
    assert info.state == "failed", info
    assert info.reason.startswith("a site failed during the run: site-1: supernode exited"), info
