"""What the relay and a site agent show besides their counters: state read at each scrape
and readiness, from a real RelayApp (no Flower needed) and a real SiteAgent."""

from __future__ import annotations

import time
from pathlib import Path

from gateway.control import telemetry
from gateway.control.jobs.store import FINISHED, RUNNING, JobRecord
from gateway.control.relay_app import RelayApp
from gateway.control.site_agent import SiteAgent
from gateway.flower.install import FlowerInstalls
from gateway.observability import metrics
from tests.support.pki import FederationKits
from tests.support.relay import flower_not_installed


def _sample(name: str, **labels: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels)


def _record(job_id: str, state: str) -> JobRecord:
    return JobRecord(job_id=job_id, name="n", state=state, sites=("site-1",), submitted_by="a")


async def test_the_relays_state_and_readiness_are_read_at_each_scrape(
    tmp_path: Path, federation: FederationKits
) -> None:
    metrics.enable()
    app = RelayApp(
        listen_urls=["grpcs://127.0.0.1:0", "https://127.0.0.1:0"],
        tls=federation.relay,
        workspace=tmp_path / "relay",
        installs=FlowerInstalls((flower_not_installed(tmp_path / "no-flower"),)),
    )
    telemetry.observe_relay(app, flower=["1.41.0"])
    assert app.not_ready() == "starting: the listeners are not open yet"
    app.manager.store.add(_record("j-done", FINISHED))
    await app.start()
    try:
        assert app.not_ready() is None
        assert _sample("flgate_relay_jobs", state="finished") == 1
        assert _sample("flgate_relay_jobs", state="aborted") == 0
        app.manager.store.add(_record("j-late", FINISHED))  # read again at the next scrape
        assert _sample("flgate_relay_jobs", state="finished") == 2
        assert _sample("flgate_relay_connections", transport="https") == 0
        assert _sample("flgate_relay_connections", transport="grpcs") is None  # not known
        assert _sample("flgate_relay_calls_in_flight") == 0
        assert _sample("flgate_relay_superlinks_running") == 0
        assert _sample("flgate_redis_pending_entries") is None  # no Redis listener
        assert _sample("flgate_build_info", version="0.1.0", flower="1.41.0") == 1
    finally:
        await app.aclose()
    assert app.not_ready() == "stopping"
    # The store is closed: the scrape still answers, with no jobs, instead of failing.
    assert _sample("flgate_relay_jobs", state=RUNNING) == 0


async def test_a_site_is_ready_while_it_polled_its_relay_within_a_minute(
    tmp_path: Path, federation: FederationKits
) -> None:
    metrics.enable()
    agent = SiteAgent(
        relay_url="grpcs://localhost:1",
        tls=federation.sites["site-1"],
        workspace=tmp_path / "site",
        installs=FlowerInstalls((flower_not_installed(tmp_path / "no-flower"),)),
    )
    telemetry.observe_site(agent, flower=["1.41.0"])
    assert (
        telemetry.site_not_ready(agent) == "no poll of the relay has succeeded in the last minute"
    )
    assert _sample("flgate_site_connected", transport="grpcs") == 0
    agent.last_contact = time.monotonic()
    assert telemetry.site_not_ready(agent) is None
    assert _sample("flgate_site_connected", transport="grpcs") == 1
    agent.last_contact = time.monotonic() - 61
    assert telemetry.site_not_ready(agent) is not None
    assert _sample("flgate_site_supernodes_running") == 0
    await agent.aclose()
