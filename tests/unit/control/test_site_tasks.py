"""What the sites report on their long-poll, as the relay's job manager keeps and lists it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.control.board import BoardView, Share
from gateway.control.jobs.manager import JobManager
from gateway.flower.install import FlowerInstalls
from gateway.proto.control_pb2 import PollTasksRequest, SiteInfo, SiteStatus
from tests.support.relay import NoRoutes, flower_not_installed, offline_job_manager

STATUS = SiteStatus(
    transport="grpcs",
    flower_version="1.41.0",
    rtt_ms=3.25,
    calls_last_minute=12,
    errors_last_minute=1,
)


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[JobManager]:
    manager = offline_job_manager(tmp_path)
    yield manager
    await manager.aclose()


def _site(manager: JobManager, name: str) -> SiteInfo:
    [site] = [s for s in manager.sites() if s.name == name]
    return site


async def test_a_poll_records_the_status_and_says_how_long_the_relay_held_it(
    manager: JobManager,
) -> None:
    response = await manager.poll("site-1", PollTasksRequest(wait_ms=100, status=STATUS))
    # Nothing changed, so the relay held the poll for all of wait_ms.
    assert response.HasField("held_ms")
    assert 100 <= response.held_ms < 5_000
    site = _site(manager, "site-1")
    assert site.online and site.status == STATUS


async def test_an_agent_that_predates_the_status_polls_as_before_and_reports_none(
    manager: JobManager,
) -> None:
    response = await manager.poll("site-1", PollTasksRequest(wait_ms=0))
    assert response.HasField("held_ms") and 0 <= response.held_ms < 5_000
    site = _site(manager, "site-1")
    assert site.online and not site.HasField("status")


async def test_the_status_belongs_to_the_site_that_polled(manager: JobManager) -> None:
    await manager.poll("site-1", PollTasksRequest(wait_ms=0, status=STATUS))
    await manager.poll("site-2", PollTasksRequest(wait_ms=0))
    assert _site(manager, "site-1").status == STATUS
    assert not _site(manager, "site-2").HasField("status")


class _Board:
    """Another relay's share on the board, as a relay sharing one Redis would see it."""

    relay = "relay-a"

    def __init__(self, other: Share) -> None:
        self.other = other
        self.exchanged = asyncio.Event()

    async def exchange(self, share: Share) -> BoardView:
        self.exchanged.set()
        return BoardView((self.other,))

    async def aclose(self) -> None:
        pass


async def test_statuses_reported_to_other_relays_are_listed_and_the_newest_wins(
    tmp_path: Path,
) -> None:
    now = time.time()
    newer = SiteStatus(transport="https", flower_version="1.41.0", calls_last_minute=3)
    other = Share(
        relay="relay-b",
        written=now,
        seen={"site-1": now, "site-2": now},
        statuses={"site-1": (now + 60, newer), "site-2": (now, STATUS)},
    )
    board = _Board(other)
    manager = JobManager(
        workspace=tmp_path / "relay",
        routes=NoRoutes(),
        installs=FlowerInstalls((flower_not_installed(tmp_path / "no-flower-here"),)),
        board=board,
    )
    await manager.start()
    try:
        await asyncio.wait_for(board.exchanged.wait(), 10)
        await manager.poll("site-1", PollTasksRequest(wait_ms=0, status=STATUS))
        # site-1 polled here too, but told relay-b later: relay-b's is the newest status.
        assert _site(manager, "site-1").status == newer
        assert _site(manager, "site-2").status == STATUS  # it polled relay-b only
    finally:
        await manager.aclose()
