"""A site's tracking: records a ClientApp writes travel over the site's connection to an
in-process relay and join the job's series; refusals drop them; a restart keeps the port.

No Flower runs: the relay's job manager is told that the job runs (its runner's table of
live jobs), so that PushTracking stores through the same path as a real run's points.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.control.jobs.execution import _LiveJob
from gateway.control.jobs.manager import JobManager
from gateway.control.jobs.store import RUNNING, JobRecord
from gateway.control.relay_api import ControlService
from gateway.control.site_tracking import PORT_FILE, SiteTracking
from gateway.relay.server import Relay
from gateway.site.gateway import SiteGateway
from gateway.tracking.series import Point
from gateway.tracking.writer import TOKEN_ENV, URL_ENV, SummaryWriter
from tests.support.pki import FederationKits
from tests.support.relay import offline_job_manager


@pytest.fixture
async def relay(
    federation: FederationKits, tmp_path: Path
) -> AsyncIterator[tuple[str, JobManager]]:
    manager = offline_job_manager(tmp_path)
    for job_id in ("live", "stale"):
        manager.store.add(
            JobRecord(
                job_id=job_id,
                name="n",
                state=RUNNING,
                sites=("site-1", "site-2"),
                submitted_by="admin",
            )
        )
    manager._runner._live["live"] = _LiveJob()  # as if its run were going on here
    relay = Relay(listen_urls=["grpcs://127.0.0.1:0"], tls=federation.relay)
    relay.dispatcher.control = ControlService(manager).handle
    await relay.start()
    yield f"grpcs://localhost:{relay.port}", manager
    manager._runner._live.clear()
    await relay.aclose()
    await manager.aclose()


@pytest.fixture
async def site(
    relay: tuple[str, JobManager], federation: FederationKits
) -> AsyncIterator[SiteGateway]:
    gateway = SiteGateway(name="site-1", relay_url=relay[0], tls=federation.sites["site-1"])
    yield gateway
    await gateway.aclose()


async def _until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the condition did not hold in time")


async def test_a_clientapps_records_join_the_jobs_series_as_site_and_tag(
    relay: tuple[str, JobManager], site: SiteGateway, tmp_path: Path
) -> None:
    manager = relay[1]
    tracking = SiteTracking(site.client, workspace=tmp_path / "site")
    await tracking.start()
    try:
        env = tracking.add_job("live")
        writer = SummaryWriter(url=env[URL_ENV], token=env[TOKEN_ENV])
        writer.add_scalar("train_loss", 0.5, 1)
        writer.add_scalar("train_loss", 0.25, 2)
        await asyncio.to_thread(writer.close)
        await _until(lambda: len(manager.store.points("live")) == 2)
        assert manager.store.points("live") == (
            Point("site-1/train_loss", 1, 0.5),
            Point("site-1/train_loss", 2, 0.25),
        )
    finally:
        await tracking.aclose()


async def test_records_the_relay_refuses_are_dropped_and_logged_once(
    relay: tuple[str, JobManager],
    site: SiteGateway,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tracking = SiteTracking(site.client, workspace=tmp_path / "site")
    await tracking.start()
    try:
        env = tracking.add_job("stale")  # stored as running, but not running on the relay
        for step in range(2):
            writer = SummaryWriter(url=env[URL_ENV], token=env[TOKEN_ENV])
            writer.add_scalar("loss", 1.0, step)
            await asyncio.to_thread(writer.close)
            await _until(lambda: tracking.receiver.due() == [])
        refused = [r for r in caplog.records if "refused a job's tracking records" in r.message]
        assert len(refused) == 1
        assert "is not running on this relay" in refused[0].__dict__["reason"]
        assert relay[1].store.points("stale") == ()
    finally:
        await tracking.aclose()


async def test_a_restarted_site_reopens_its_tracking_port_or_takes_another(
    site: SiteGateway, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    workspace = tmp_path / "site"
    first = SiteTracking(site.client, workspace=workspace)
    await first.start()
    port = first.receiver.port
    await first.aclose()
    assert (workspace / PORT_FILE).read_text() == str(port)
    again = SiteTracking(site.client, workspace=workspace)
    await again.start()
    assert again.receiver.port == port  # where the adopted SuperNodes' ClientApps send
    await again.aclose()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        third = SiteTracking(site.client, workspace=workspace)
        await third.start()
        assert third.receiver.port != port
        await third.aclose()
    assert any("tracking port of the last run is taken" in r.message for r in caplog.records)
