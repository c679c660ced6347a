"""A site agent polling a relay in-process: what it reports reaches the admin's list of sites.

No Flower runs here: the relay's job manager stores and answers only, and the agent is
never asked to run a job.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.control.jobs.manager import JobManager
from gateway.control.jobs.store import RUNNING, JobRecord
from gateway.control.relay_api import ControlService
from gateway.control.site_agent import LOG_CHUNK_BYTES, SiteAgent, _JobSlot, round_trip_ms
from gateway.flower.install import FlowerInstalls
from gateway.flower.process import ManagedProcess
from gateway.proto.control_pb2 import PollTasksResponse, SiteInfo, SiteJob
from gateway.relay.server import Relay
from tests.support.pki import FederationKits
from tests.support.relay import flower_not_installed, offline_job_manager

POLL_WAIT = 1.0
"""Seconds the relay holds each of the agent's polls: the round trip must not include them."""


def test_the_round_trip_is_the_time_the_relay_did_not_hold_the_poll() -> None:
    assert round_trip_ms(1.25, PollTasksResponse(held_ms=1000.0)) == 250.0
    assert round_trip_ms(0.5, PollTasksResponse(held_ms=600.0)) == 0.0  # never below zero
    assert round_trip_ms(20.0, PollTasksResponse()) is None  # a relay that does not say


@pytest.fixture
async def relay(
    federation: FederationKits, tmp_path: Path
) -> AsyncIterator[tuple[str, JobManager]]:
    """A relay's URL for sites, and its job manager."""
    manager = offline_job_manager(tmp_path)
    relay = Relay(listen_urls=["grpcs://127.0.0.1:0"], tls=federation.relay)
    relay.dispatcher.control = ControlService(manager).handle
    await relay.start()
    yield f"grpcs://localhost:{relay.port}", manager
    await relay.aclose()
    await manager.aclose()


async def _reported(manager: JobManager, site: str) -> SiteInfo:
    """The site's line once a poll reported a round trip (the second poll of an agent)."""
    deadline = time.monotonic() + 30 * POLL_WAIT
    while time.monotonic() < deadline:
        for info in manager.sites():
            if info.name == site and info.status.HasField("rtt_ms"):
                return info
        await asyncio.sleep(0.05)
    raise AssertionError(f"{site} reported no round trip: {manager.sites()}")


async def test_the_agent_reports_its_transport_releases_and_round_trip(
    relay: tuple[str, JobManager],
    federation: FederationKits,
    tmp_path: Path,
) -> None:
    url, manager = relay
    installs = FlowerInstalls(
        tuple(flower_not_installed(tmp_path / str(v), v) for v in ((1, 41, 0), (1, 39, 0)))
    )
    agent = SiteAgent(
        relay_url=url,
        tls=federation.sites["site-1"],
        workspace=tmp_path / "site",
        installs=installs,
        poll_wait=POLL_WAIT,
    )
    running = asyncio.create_task(agent.run_forever())
    try:
        info = await _reported(manager, "site-1")
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    assert info.online
    assert (info.status.transport, info.status.flower_version) == ("grpcs", "1.41.0")
    assert list(info.status.flower_versions) == ["1.41.0", "1.39.0"]  # the default first
    # Each poll took a whole POLL_WAIT; the relay's hold is taken off, leaving the network.
    assert 0.0 <= info.status.rtt_ms < POLL_WAIT * 1000
    assert (info.status.calls_last_minute, info.status.errors_last_minute) == (0, 0)


async def test_a_stopped_jobs_log_is_shipped_to_its_end_even_beside_a_periodic_shipment(
    relay: tuple[str, JobManager],
    federation: FederationKits,
    tmp_path: Path,
) -> None:
    """Two shipments from the same offset (the periodic one and the job's last) used to
    leave the second one's tail on the site: the relay keeps the first and ignores the
    second, and the job's slot was gone. And the last shipment sent 1 MiB at most."""
    url, manager = relay
    manager.store.add(
        JobRecord(job_id="j1", name="n", state=RUNNING, sites=("site-1",), submitted_by="a")
    )
    agent = SiteAgent(
        relay_url=url,
        tls=federation.sites["site-1"],
        workspace=tmp_path / "site",
        installs=FlowerInstalls(()),
        poll_wait=POLL_WAIT,
    )
    log_path = tmp_path / "site" / "supernode.log"
    supernode = ManagedProcess("supernode", ["sleep", "60"], log_path=log_path, env={})
    slot = _JobSlot(job=SiteJob(job_id="j1"), supernode=supernode)
    try:
        lines = b"".join(b"line %08d of the SuperNode's log\n" % i for i in range(80_000))
        assert len(lines) > 2 * LOG_CHUNK_BYTES
        with log_path.open("ab") as log:
            log.write(lines[:1000])
        await agent._ship_log(slot)
        with log_path.open("ab") as log:
            log.write(lines[1000:])  # then the job ends with more than 2 MiB unshipped
        await asyncio.gather(agent._ship_log(slot), agent._ship_log(slot, to_end=True))
        shipped = manager._sites._paths.log_path("j1", "site-1").read_bytes()
        assert shipped == lines
    finally:
        supernode.stop()
        await agent._gateway.aclose()
