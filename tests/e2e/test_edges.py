"""Edge relays end to end: a central relay, two edge relays with two sites each and one
site that dials the relay directly, over three transports.

    site-a1, site-a2 --tcps--> edge-a --grpcs--+
    site-b1, site-b2 --https-> edge-b --https--+--> relay (in this process, with a ledger)
    site-d ----------------grpcs---------------+

The edges and the sites are ``flgate edge start`` and ``flgate site start`` processes
from the kits that provisioning writes (real TLS); the relay is the real
:class:`~gateway.control.relay_app.RelayApp`, run in the test's process so that its
dispatcher's ledger (executions per message id) can be read. One job across the five
sites gives the result of the same app run directly in Flower with five SuperNodes;
it does so again with an edge relay killed (SIGKILL) mid-job and started again, and no
call runs twice. An edge relay that forges, carries a site of another edge, replays,
a site certificate used as an edge and an edge certificate used for admin commands
are each refused with their reason, and the federation serves on.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import pytest

from gateway.control.admin import AdminClient
from gateway.control.jobs.spec import JobSpec
from gateway.control.relay_app import RelayApp
from gateway.core.envelope import new_message_id, now_ms
from gateway.core.exceptions import AuthError
from gateway.core.signing import Signer
from gateway.core.site_signing import sign_envelope
from gateway.flower.install import FlowerInstalls
from gateway.harness.local_run import RunOutcome, run_app
from gateway.proto.control_pb2 import PollTasksRequest
from gateway.proto.envelope_pb2 import KIND_AGENT, Envelope, Reply
from gateway.provisioning.kit import load_kit
from gateway.transport import connect
from tests.support.federation import EdgeSpec, RunningFederation, until_state, wait_online
from tests.support.flower_envs import flwr142
from tests.support.paths import QUICKSTART

pytestmark = pytest.mark.e2e

EDGES = {
    "edge-a": EdgeSpec(("site-a1", "site-a2"), transport="tcps", upstream="grpcs"),
    "edge-b": EdgeSpec(("site-b1", "site-b2"), transport="https", upstream="https"),
}
SITES = ["site-a1", "site-a2", "site-b1", "site-b2", "site-d"]


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory) -> RunOutcome:
    """The quickstart app run directly in Flower with five SuperNodes."""
    outcome = asyncio.run(
        run_app(
            JobSpec.load(QUICKSTART),
            mode="direct",
            workdir=tmp_path_factory.mktemp("direct"),
            install=flwr142(),
            sites=len(SITES),
        )
    )
    assert outcome.ok, outcome
    return outcome


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFederation]:
    fed = RunningFederation.create(
        tmp_path_factory.mktemp("edges"), SITES, transports=["grpcs", "https"], edges=EDGES
    )
    try:
        yield fed
    finally:
        fed.close()


@pytest.fixture
async def relay(federation: RunningFederation) -> AsyncIterator[RelayApp]:
    """The central relay from its kit, its edges and its sites started from theirs."""
    kit = load_kit(federation.kit("relay"))
    app = RelayApp(
        listen_urls=kit.listen_urls,
        tls=kit.tls,
        workspace=federation.root / "relay",
        installs=FlowerInstalls.find(),
        crl=kit.crl,
        edges=kit.edges,
    )
    app.relay.dispatcher.stats.ledger = Counter()
    await app.start()
    federation.relay_url = kit.relay_urls["grpcs"]
    try:
        for edge in EDGES:
            federation.start_edge(edge)
        for site in SITES:
            federation.start_site(site, from_kit=True)
        admin = federation.admin()
        try:
            await wait_online(admin, len(SITES), timeout=120)
        finally:
            await admin.aclose()
        yield app
    finally:
        # Sites and edges stop first, while their relay still answers their last calls.
        processes = [*federation.sites.values(), *federation.edges.values()]
        await asyncio.gather(*(asyncio.to_thread(federation.stop, p) for p in processes))
        await app.aclose()


def executed_twice(app: RelayApp) -> list[tuple[str, int]]:
    ledger = app.relay.dispatcher.stats.ledger
    assert ledger is not None and len(ledger) > 50, ledger
    return [(m, n) for m, n in ledger.items() if n > 1]


async def run_job(fed: RunningFederation) -> str:
    admin = fed.admin()
    try:
        return (await admin.submit(QUICKSTART, sites=SITES)).job_id
    finally:
        await admin.aclose()


async def finished(fed: RunningFederation, job_id: str) -> dict[str, object]:
    admin = fed.admin()
    try:
        info = await until_state(admin, job_id, timeout=400)
    finally:
        await admin.aclose()
    assert info.state == "finished", (info, _tails(fed))
    result: dict[str, object] = json.loads(info.result_json)
    return result


def _tails(fed: RunningFederation) -> str:
    return "\n".join(
        f"--- {path.name}:\n" + "\n".join(path.read_text().splitlines()[-10:])
        for path in sorted(fed.root.glob("*.out"))
    )


async def test_one_job_across_two_edges_and_a_direct_site_matches_direct_flower(
    federation: RunningFederation, relay: RelayApp, direct: RunOutcome
) -> None:
    job_id = await run_job(federation)
    assert await finished(federation, job_id) == direct.result
    assert executed_twice(relay) == []
    # Every site behind an edge signed what it sent (one nonce per envelope the relay took).
    carried = relay.relay.dispatcher.carried
    assert carried is not None and len(carried.nonces) > 100


async def test_an_edge_killed_mid_job_and_restarted_loses_nothing(
    federation: RunningFederation, relay: RelayApp, direct: RunOutcome
) -> None:
    job_id = await run_job(federation)
    admin = federation.admin()
    try:
        await until_state(admin, job_id, ("running",), timeout=120)
        deadline = time.monotonic() + 180
        while (await admin.get(job_id)).round < 1:
            assert time.monotonic() < deadline, "round 1 never started"
            await asyncio.sleep(0.5)
    finally:
        await admin.aclose()
    retries_before = _retries(federation)
    federation.stop(federation.edges["edge-a"], signal.SIGKILL)
    await asyncio.sleep(3.0)
    federation.start_edge("edge-a")
    assert await finished(federation, job_id) == direct.result
    assert executed_twice(relay) == []
    # The kill was felt: the sites behind edge-a retried calls of the job through the outage.
    assert _retries(federation) > retries_before


def _retries(fed: RunningFederation) -> int:
    """Calls that the sites behind edge-a retried (their agents' logs)."""
    return sum(
        (fed.root / f"{site}.out").read_text().count("retrying relay call")
        for site in EDGES["edge-a"].sites
    )


def _signer(fed: RunningFederation, name: str) -> Signer:
    tls = load_kit(fed.kit(name)).tls
    return Signer.of(tls)


def _poll(site: str) -> Envelope:
    return Envelope(
        kind=KIND_AGENT,
        site=site,
        message_id=new_message_id(),
        method="PollTasks",
        body=PollTasksRequest(wait_ms=0).SerializeToString(),
        deadline_unix_ms=now_ms() + 10_000,
        attempt=1,
    )


async def _send_as(fed: RunningFederation, carrier: str, envelope: Envelope) -> Reply:
    """``envelope`` sent to the relay over real TLS with ``carrier``'s certificate."""
    client = connect(fed.relay_url, tls=load_kit(fed.kit(carrier)).tls)
    try:
        return await client.send(envelope, timeout=10)
    finally:
        await client.aclose()


async def test_forgeries_replays_and_misused_certificates_are_refused(
    federation: RunningFederation, relay: RelayApp
) -> None:
    now = time.time()
    cases = {
        "an edge forging a site's envelope": (
            "edge-a",
            sign_envelope(_signer(federation, "edge-a"), _poll("site-a1"), now=now),
            "the envelope is signed by edge:edge-a, not by a site",
        ),
        "an edge carrying a site of another edge": (
            "edge-b",
            sign_envelope(_signer(federation, "site-a1"), _poll("site-a1"), now=now),
            "site:site-a1 is not provisioned behind edge relay 'edge-b' (it is provisioned "
            "behind edge relay 'edge-a')",
        ),
        "a site certificate used as an edge": (
            "site-a2",
            sign_envelope(_signer(federation, "site-a1"), _poll("site-a1"), now=now),
            "site:site-a2 is a site certificate, not an edge relay",
        ),
    }
    genuine = sign_envelope(_signer(federation, "site-a1"), _poll("site-a1"), now=now)
    first = await _send_as(federation, "edge-a", genuine)
    assert first.http_status == 200, first.detail
    cases["a replayed envelope"] = ("edge-a", genuine, "replayed envelope: site:site-a1's")
    for what, (carrier, envelope, reason) in cases.items():
        reply = await _send_as(federation, carrier, envelope)
        assert (reply.http_status, reason in reply.detail) == (403, True), (what, reply.detail)
        # The relay serves on: the same path carries a genuine envelope at once.
        fresh = sign_envelope(_signer(federation, "site-a1"), _poll("site-a1"), now=time.time())
        assert (await _send_as(federation, "edge-a", fresh)).http_status == 200, what
    edge_admin = AdminClient(
        relay_url=federation.relay_url, tls=load_kit(federation.kit("edge-a")).tls
    )
    try:
        with pytest.raises(AuthError, match="edge:edge-a is an edge relay: it carries only"):
            await edge_admin.list_jobs()
    finally:
        await edge_admin.aclose()
    admin = federation.admin()
    try:
        assert sum(s.online for s in await admin.list_sites()) == len(SITES)
    finally:
        await admin.aclose()


async def test_job_sites_shows_the_path_of_each_site(
    federation: RunningFederation, relay: RelayApp
) -> None:
    table = await asyncio.to_thread(federation.cli, "job", "sites")
    rows = [re.split(r"\s{2,}", line.strip()) for line in table.splitlines()]
    assert rows[0][4] == "PATH", table
    paths = {row[0]: row[4] for row in rows[1:]}
    assert paths == {
        "site-a1": "via:edge-a",
        "site-a2": "via:edge-a",
        "site-b1": "via:edge-b",
        "site-b2": "via:edge-b",
        "site-d": "direct",
    }, table


async def test_a_relay_started_from_its_kit_serves_the_sites_behind_its_edges(
    federation: RunningFederation,
) -> None:
    """``flgate relay start --kit``: the relay kit's edges map reaches the dispatcher, so
    a site behind an edge comes online through it (its signed task polls accepted), and
    the relay refuses none of its calls."""
    federation.start_relay(from_kit=True)
    try:
        federation.start_edge("edge-a")
        federation.start_site("site-a1", from_kit=True)
        admin = federation.admin()
        try:
            await wait_online(admin, 1, timeout=120)
            online = {s.name for s in await admin.list_sites() if s.online}
        finally:
            await admin.aclose()
        assert online == {"site-a1"}, _tails(federation)
        relay_log = (federation.root / "relay.out").read_text()
        assert "refused" not in relay_log, relay_log[-3000:]
    finally:
        for process in (federation.sites.pop("site-a1"), federation.edges.pop("edge-a")):
            await asyncio.to_thread(federation.stop, process)
        await asyncio.to_thread(federation.stop, federation.relay)
        federation.relay = None
