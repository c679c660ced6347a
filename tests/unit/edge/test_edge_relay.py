"""The edge relay on real sockets and real TLS: sites -> edge (tcps) -> relay (grpcs).

The relay here is the real :class:`~gateway.relay.server.Relay` with a counting
upstream in place of a job's SuperLink; the kits come from the provisioning code,
so the edge's and the sites' certificates are what ``flgate provision`` issues.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from gateway.core.config import TLSConfig
from gateway.core.envelope import make_envelope, now_ms
from gateway.core.exceptions import ConnectError, TransportError
from gateway.core.signing import CertificateChecker, Signer
from gateway.core.site_signing import CarriedEnvelopes
from gateway.edge import EdgeRelay
from gateway.proto.envelope_pb2 import DIALECT_HTTP, Envelope, Reply
from gateway.provisioning.kit import Kit, load_kit
from gateway.provisioning.project import Project
from gateway.provisioning.workspace import ProvisioningWorkspace
from gateway.relay.server import Relay
from gateway.reliable import ReliableSender, RetryPolicy
from gateway.site.signing_client import SigningClient
from gateway.transport import TransportClient, connect
from tests.support.relay import CountingUpstream

LOCAL = ["localhost", "127.0.0.1"]
FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, deadline=8.0)


@pytest.fixture(scope="module")
def kits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Kit]:
    project = Project.parse(
        {
            "name": "edges",
            "relay": {"hosts": LOCAL, "transports": {"grpcs": 8443}},
            "sites": [
                {"name": "site-a1", "via": "edge-a"},
                {"name": "site-b1", "via": "edge-b"},
                "site-d",
            ],
            "edges": [
                {"name": "edge-a", "hosts": LOCAL, "transports": {"tcps": 9445}},
                {"name": "edge-b", "hosts": LOCAL, "transports": {"tcps": 9446}},
            ],
            "admins": [{"name": "admin@example.org", "role": "project_admin"}],
        }
    )
    workspace, _ = ProvisioningWorkspace.create_or_open(
        tmp_path_factory.mktemp("pki") / "provisioning", project
    )
    workspace.provision(project)
    names = ("relay", "edge-a", "edge-b", "site-a1", "site-b1", "site-d")
    return {name: load_kit(workspace.kit(name)) for name in names}


@dataclass
class Path3:
    relay: Relay
    upstream: CountingUpstream
    edge: EdgeRelay


def edge_a(kits: dict[str, Kit], *, upstream_port: int) -> EdgeRelay:
    """edge-a from its kit, listening on tcps, its relay on grpcs at ``upstream_port``."""
    return EdgeRelay(
        name="edge-a",
        listen_urls=["tcps://127.0.0.1:0"],
        upstream_url=f"grpcs://localhost:{upstream_port}",
        tls=kits["edge-a"].tls,
        sites=kits["edge-a"].sites,
    )


@pytest.fixture
async def path(kits: dict[str, Kit]) -> AsyncIterator[Path3]:
    relay_kit = kits["relay"]
    relay = Relay(listen_urls=["grpcs://127.0.0.1:0"], tls=relay_kit.tls)
    relay.dispatcher.carried = CarriedEnvelopes(
        CertificateChecker(relay_kit.tls.ca_cert.read_bytes()), edges=relay_kit.edges
    )
    upstream = CountingUpstream()
    relay.dispatcher.add_job("job-1", frozenset({"site-a1", "site-b1", "site-d"}), upstream)
    await relay.start()
    edge = edge_a(kits, upstream_port=relay.port)
    await edge.start()
    yield Path3(relay, upstream, edge)
    await edge.aclose()
    await relay.aclose()


def site_client(edge: EdgeRelay, tls: TLSConfig, *, sign: bool = True) -> TransportClient:
    client = connect(f"tcps://localhost:{edge.ports[0]}", tls=tls)
    if not sign:
        return client
    return SigningClient(client, Signer.of(tls))


def call(site: str, *, message_id: str = "m1", due_in: float = 10.0) -> Envelope:
    return make_envelope(
        job_id="job-1",
        site=site,
        method="PushMessages",
        dialect=DIALECT_HTTP,
        headers=[],
        body=b"update",
        deadline_unix_ms=now_ms() + int(due_in * 1000),
        message_id=message_id,
    )


async def test_a_site_behind_the_edge_reaches_its_job(path: Path3, kits: dict[str, Kit]) -> None:
    client = site_client(path.edge, kits["site-a1"].tls)
    try:
        reply = await client.send(call("site-a1"), timeout=10)
        again = await client.send(call("site-a1"), timeout=10)  # a retry: same id, new nonce
    finally:
        await client.aclose()
    assert (reply.http_status, again.http_status) == (200, 200), (reply.detail, again.detail)
    assert path.upstream.calls == 1  # at most once, at the central relay
    assert path.edge.carried == 2


async def test_the_edge_refuses_a_site_it_does_not_carry(path: Path3, kits: dict[str, Kit]) -> None:
    for site in ("site-b1", "site-d"):
        client = site_client(path.edge, kits[site].tls)
        try:
            reply = await client.send(call(site), timeout=10)
        finally:
            await client.aclose()
        assert reply.http_status == 403
        assert reply.detail.startswith(
            f"site {site!r} is not provisioned behind edge relay 'edge-a' (its sites: site-a1)"
        )
    assert path.upstream.calls == 0 and path.edge.carried == 0


async def test_the_edge_refuses_an_unsigned_envelope(path: Path3, kits: dict[str, Kit]) -> None:
    client = site_client(path.edge, kits["site-a1"].tls, sign=False)
    try:
        reply = await client.send(call("site-a1"), timeout=10)
    finally:
        await client.aclose()
    assert reply.http_status == 403
    assert "sent an unsigned envelope; behind an edge relay a site signs" in reply.detail
    assert path.upstream.calls == 0


async def test_a_relay_out_of_reach_makes_the_site_resend(
    kits: dict[str, Kit], unused_tcp_port: int
) -> None:
    """The edge retries upstream within the call's deadline, then says "resend": a
    transport failure to the site, whose sender retries under the same id."""
    edge = edge_a(kits, upstream_port=unused_tcp_port)
    await edge.start()
    client = site_client(edge, kits["site-a1"].tls)
    started = time.monotonic()
    try:
        with pytest.raises(TransportError, match="edge relay edge-a: the relay did not answer"):
            await client.send(call("site-a1", due_in=4.0), timeout=10)
    finally:
        await client.aclose()
        await edge.aclose()
    assert time.monotonic() - started < 4.0  # answered inside the call's deadline
    assert edge.sender.retries >= 1


class LosesFirstReply(TransportClient):
    """The edge's upstream connection, which drops the relay's first answer: the envelope
    reached the relay (and ran), its reply never reached the edge."""

    def __init__(self, client: TransportClient) -> None:
        self._client = client
        self.lost = 0

    async def send(self, envelope: Envelope, *, timeout: float) -> Reply:
        reply = await self._client.send(envelope, timeout=timeout)
        if not self.lost:
            self.lost += 1
            raise ConnectError("connection lost before the reply came")
        return reply

    async def aclose(self) -> None:
        await self._client.aclose()


async def test_a_lost_answer_is_resent_by_the_site_and_runs_once(
    path: Path3, kits: dict[str, Kit]
) -> None:
    """The edge resends the same signed bytes, the relay refuses them as a replay (the
    first copy ran), the edge says "resend", the site's sender signs again under the same
    id, and the relay's dedup answers it: one execution, and the SuperNode gets 200."""
    upstream = LosesFirstReply(path.edge.sender._client)
    path.edge.sender = ReliableSender(upstream, policy=FAST)
    site = ReliableSender(site_client(path.edge, kits["site-a1"].tls), policy=FAST)
    reply = await site.send(call("site-a1"))
    assert (reply.http_status, upstream.lost, path.upstream.calls) == (200, 1, 1), reply.detail
    assert path.relay.dispatcher.stats.refused["job-1"] == 1  # the edge's resent copy
    assert (site.retries, path.edge.sender.retries) == (1, 1)
