"""The path site LGS -> grpcs transport -> relay dispatcher -> LGC, on real sockets.

A small recording HTTP server stands in for the SuperLink here so that every
header and status can be inspected; the end-to-end tests use real Flower.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import grpc
import grpc.aio
import pytest
from aiohttp import web

from gateway.core.config import TLSConfig
from gateway.core.envelope import make_envelope, now_ms
from gateway.observability import metrics
from gateway.proto.envelope_pb2 import DIALECT_GRPC, DIALECT_HTTP, ORIGIN_GATEWAY
from gateway.proto.grpc_adapter_pb2 import AdapterContainer
from gateway.relay.server import Relay
from gateway.site.gateway import SiteGateway
from gateway.transport import connect
from tests.support.pki import FederationKits


@dataclass
class RecordingSuperLink:
    """Answers every POST with a fixed status; records what reached it."""

    status: int = 200
    seen: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    port: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append((request.path, {k.lower(): v for k, v in request.headers.items()}, body))
        if self.status != 200:
            return web.json_response({"code": 7, "detail": "from superlink"}, status=self.status)
        return web.Response(
            body=b"echo:" + body,
            content_type="application/protobuf",
            headers={"x-superlink": "yes"},
        )


async def _serve_recording() -> tuple[RecordingSuperLink, web.AppRunner]:
    """A RecordingSuperLink listening on a free loopback port."""
    superlink = RecordingSuperLink()
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", superlink.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    superlink.port = tcp._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return superlink, runner


@dataclass
class Path_:
    relay: Relay
    site: SiteGateway
    superlink: RecordingSuperLink
    relay_url: str


@pytest.fixture
async def path(federation: FederationKits) -> AsyncIterator[Path_]:
    superlink, runner = await _serve_recording()

    relay = Relay(listen_urls=["grpcs://127.0.0.1:0"], tls=federation.relay)
    await relay.start()
    relay_url = f"grpcs://localhost:{relay.port}"
    relay.add_job(
        "job-a",
        sites=frozenset({"site-1", "site-2"}),
        dialect=DIALECT_HTTP,
        superlink=f"127.0.0.1:{superlink.port}",
    )
    site = SiteGateway(name="site-1", relay_url=relay_url, tls=federation.sites["site-1"])
    yield Path_(relay=relay, site=site, superlink=superlink, relay_url=relay_url)
    await site.aclose()
    await relay.aclose()
    await runner.cleanup()


async def _post(
    port: int, path: str, body: bytes = b"req", headers: dict[str, str] | None = None
) -> tuple[int, bytes, dict[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{port}{path}",
            data=body,
            headers={"content-type": "application/protobuf", **(headers or {})},
        ) as response,
    ):
        return (
            response.status,
            await response.read(),
            {k.lower(): v for k, v in response.headers.items()},
        )


async def test_fleet_call_arrives_with_body_and_node_auth_headers(path: Path_) -> None:
    lgs = await path.site.open_job("job-a", DIALECT_HTTP)
    auth = {"flwr-public-key": "cHVi", "flwr-signature": "c2ln", "flwr-timestamp": "2026-11-21"}
    status, body, headers = await _post(lgs.port, "/v1/fleet/pull-messages", b"\x08\x01", auth)
    assert (status, body) == (200, b"echo:\x08\x01")
    assert headers["x-superlink"] == "yes"
    assert headers["content-type"] == "application/protobuf"
    [(seen_path, seen_headers, seen_body)] = path.superlink.seen
    assert seen_path == "/v1/fleet/pull-messages"
    assert seen_body == b"\x08\x01"
    for name, value in auth.items():
        assert seen_headers[name] == value


async def test_superlink_status_passes_through_unchanged(path: Path_) -> None:
    lgs = await path.site.open_job("job-a", DIALECT_HTTP)
    for status in (401, 403, 500):
        path.superlink.status = status
        got, body, _ = await _post(lgs.port, "/v1/fleet/send-node-heartbeat")
        assert got == status
        assert json.loads(body)["detail"] == "from superlink"
    assert path.site.call_window.counts(time.monotonic()) == (3, 3)  # the SuperLink's errors


@pytest.mark.parametrize(
    "bad_path",
    [
        "/v1/control/start-run",
        "/v1/runtime/pull-messages",
        "/health",
        "/docs",
        "/v1/fleet/../control/list-runs",
    ],
)
async def test_non_fleet_paths_never_leave_the_site(path: Path_, bad_path: str) -> None:
    lgs = await path.site.open_job("job-a", DIALECT_HTTP)
    status, body, _ = await _post(lgs.port, bad_path)
    assert status == 404
    assert "only the Flower Fleet API" in json.loads(body)["detail"]
    assert path.relay.dispatcher.stats.received == 0
    assert path.superlink.seen == []


async def test_get_on_fleet_path_is_refused(path: Path_) -> None:
    lgs = await path.site.open_job("job-a", DIALECT_HTTP)
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{lgs.port}/v1/fleet/pull-messages") as response,
    ):
        assert response.status == 404
    assert path.relay.dispatcher.stats.received == 0


async def test_site_outside_the_job_is_refused(path: Path_, federation: FederationKits) -> None:
    outsider = SiteGateway(name="site-3", relay_url=path.relay_url, tls=federation.sites["site-3"])
    try:
        lgs = await outsider.open_job("job-a", DIALECT_HTTP)
        status, body, _ = await _post(lgs.port, "/v1/fleet/pull-messages")
    finally:
        await outsider.aclose()
    assert status == 403
    assert "not part of job" in json.loads(body)["detail"]
    assert path.superlink.seen == []


async def test_unknown_job_is_refused(path: Path_) -> None:
    lgs = await path.site.open_job("job-zzz", DIALECT_HTTP)
    status, body, _ = await _post(lgs.port, "/v1/fleet/pull-messages")
    assert status == 404
    assert "not running on this relay" in json.loads(body)["detail"]


def _envelope(site: str, method: str = "PullMessages", job: str = "job-a"):  # type: ignore[no-untyped-def]
    return make_envelope(
        job_id=job,
        site=site,
        method=method,
        dialect=DIALECT_HTTP,
        headers=[],
        body=b"x",
        deadline_unix_ms=now_ms() + 5000,
    )


@pytest.mark.parametrize(
    ("cert", "claimed_site", "method", "needle"),
    [
        ("site-1", "site-2", "PullMessages", "claims 'site-2'"),
        ("admin", "", "PullMessages", "not a site certificate"),
        ("site-1", "", "../../v1/control/start-run", "not a Fleet API method"),
    ],
)
async def test_relay_refuses_forged_envelopes(
    path: Path_, federation: FederationKits, cert: str, claimed_site: str, method: str, needle: str
) -> None:
    tls: TLSConfig = federation.admin if cert == "admin" else federation.sites[cert]
    client = connect(path.relay_url, tls=tls)
    try:
        reply = await client.send(_envelope(claimed_site, method), timeout=5)
    finally:
        await client.aclose()
    assert reply.origin == ORIGIN_GATEWAY
    assert reply.http_status in (403, 404)
    assert needle in reply.detail
    assert path.superlink.seen == []


async def test_certificate_from_another_ca_is_refused(
    path: Path_, federation: FederationKits
) -> None:
    intruder = SiteGateway(name="site-1", relay_url=path.relay_url, tls=federation.foreign_site)
    try:
        lgs = await intruder.open_job("job-a", DIALECT_HTTP)
        status, body, _ = await _post(lgs.port, "/v1/fleet/pull-messages")
    finally:
        await intruder.aclose()
    # The gateway's own failure: retryable for Flower, never 401/403.
    assert status == 503
    assert "relay" in json.loads(body)["detail"]
    assert path.relay.dispatcher.stats.received == 0


async def test_grpc_dialect_rere_and_adapter(path: Path_) -> None:
    lgs = await path.site.open_job("job-a", DIALECT_GRPC)
    async with grpc.aio.insecure_channel(lgs.address) as channel:
        pull = channel.unary_unary("/flwr.proto.Fleet/PullMessages")
        raw_key = b"\x04\x01\x02"
        body = await pull(b"\x08\x02", metadata=[("flwr-public-key-bin", raw_key)], timeout=5)
        assert body == b"echo:\x08\x02"
        # The HTTP SuperLink got the node-auth header in its own (base64) form.
        assert path.superlink.seen[-1][1]["flwr-public-key"] == "BAEC"

        adapter = channel.unary_unary("/flwr.proto.GrpcAdapter/SendReceive")
        request = AdapterContainer(
            metadata={"flower-package-version": "1.39.0"},
            grpc_message_name="RegisterNodeFleetRequest",
            grpc_message_content=b"\x0a\x00",
        )
        response = AdapterContainer.FromString(
            await adapter(request.SerializeToString(), timeout=5)
        )
        assert response.grpc_message_name == "RegisterNodeFleetResponse"
        assert response.grpc_message_content == b"echo:\x0a\x00"
        assert path.superlink.seen[-1][0] == "/v1/fleet/register-node"

        seen = len(path.superlink.seen)
        control = channel.unary_unary("/flwr.proto.Control/StartRun")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await control(b"", timeout=5)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "only the Flower Fleet API" in (info.value.details() or "")
        assert len(path.superlink.seen) == seen

        path.superlink.status = 401
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await pull(b"", timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_oversized_request_gets_a_clear_error_and_the_lgs_keeps_serving(
    federation: FederationKits,
) -> None:
    from gateway.core.config import Limits

    site = SiteGateway(
        name="site-1",
        relay_url="grpcs://localhost:1",
        tls=federation.sites["site-1"],
        limits=Limits(max_frame_bytes=1024),
    )
    try:
        lgs = await site.open_job("job-a", DIALECT_HTTP)
        status, body, _ = await _post(lgs.port, "/v1/fleet/push-object", b"x" * 4096)
        assert status == 413
        assert "frame limit" in json.loads(body)["detail"]
        # Still serving: a small call is answered (503: no relay listens on port 1).
        status, _, _ = await _post(lgs.port, "/v1/fleet/pull-messages", b"x")
        assert status == 503
    finally:
        await site.aclose()


async def test_garbage_on_the_relay_port_leaves_it_serving(path: Path_) -> None:
    import asyncio

    for junk in (b"\x00" * 64, b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x00\x05hello"):
        reader, writer = await asyncio.open_connection("127.0.0.1", path.relay.port)
        writer.write(junk)
        await writer.drain()
        await asyncio.wait_for(reader.read(1024), timeout=5)
        writer.close()
    lgs = await path.site.open_job("job-a", DIALECT_HTTP)
    status, body, _ = await _post(lgs.port, "/v1/fleet/pull-messages", b"ok")
    assert (status, body) == (200, b"echo:ok")


async def test_traffic_of_one_job_never_reaches_another_jobs_superlink(
    path: Path_, federation: FederationKits
) -> None:
    other, runner = await _serve_recording()
    path.relay.add_job(
        "job-b",
        sites=frozenset({"site-1"}),
        dialect=DIALECT_HTTP,
        superlink=f"127.0.0.1:{other.port}",
    )
    try:
        lgs_a = await path.site.open_job("job-a", DIALECT_HTTP)
        lgs_b = await path.site.open_job("job-b", DIALECT_HTTP)
        for _ in range(3):
            assert (await _post(lgs_a.port, "/v1/fleet/pull-messages", b"A"))[0] == 200
        assert (await _post(lgs_b.port, "/v1/fleet/pull-messages", b"B"))[0] == 200
        assert [body for _, _, body in path.superlink.seen] == [b"A", b"A", b"A"]
        assert [body for _, _, body in other.seen] == [b"B"]
        assert path.site.call_window.counts(time.monotonic()) == (4, 0)  # both jobs, one window
        # site-2 is in job-a only: job-b refuses it, and job-b's SuperLink sees nothing.
        site2 = SiteGateway(name="site-2", relay_url=path.relay_url, tls=federation.sites["site-2"])
        try:
            lgs = await site2.open_job("job-b", DIALECT_HTTP)
            assert (await _post(lgs.port, "/v1/fleet/pull-messages", b"X"))[0] == 403
        finally:
            await site2.aclose()
        assert len(other.seen) == 1
    finally:
        await runner.cleanup()


def _sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


async def test_the_relay_counts_calls_retries_dedup_answers_and_refusals(
    path: Path_, federation: FederationKits
) -> None:
    metrics.enable()
    calls = {"job_id": "job-a", "site": "site-1", "method": "PushMessages", "status": "200"}
    before = {
        "calls": _sample("flgate_relay_fleet_calls_total", **calls),
        "retries": _sample("flgate_relay_retries_total", job_id="job-a", site="site-1"),
        "cached": _sample("flgate_relay_dedup_answers_total", kind="cached"),
        "superlink": _sample("flgate_relay_superlink_call_seconds_count", method="PushMessages"),
        "not_in_job": _sample("flgate_relay_refusals_total", reason="not_in_job"),
        "received": _sample("flgate_relay_received_bytes_total", job_id="job-a", site="site-1"),
    }
    client = connect(path.relay_url, tls=federation.sites["site-1"])
    outsider = connect(path.relay_url, tls=federation.sites["site-3"])
    try:
        envelope = _envelope("site-1", "PushMessages")
        await client.send(envelope, timeout=5)
        envelope.attempt = 2  # the same id again: answered from the dedup store
        retried = await client.send(envelope, timeout=5)
        refused = await outsider.send(_envelope("site-3", "PushMessages"), timeout=5)
    finally:
        await client.aclose()
        await outsider.aclose()
    assert retried.http_status == 200
    assert refused.http_status == 403
    assert len(path.superlink.seen) == 1
    assert _sample("flgate_relay_fleet_calls_total", **calls) == before["calls"] + 2
    assert path.relay.dispatcher.stats.answered["job-a"] == 2
    assert (
        _sample("flgate_relay_retries_total", job_id="job-a", site="site-1")
        == before["retries"] + 1
    )
    assert _sample("flgate_relay_dedup_answers_total", kind="cached") == before["cached"] + 1
    assert (
        _sample("flgate_relay_superlink_call_seconds_count", method="PushMessages")
        == before["superlink"] + 1
    )
    assert _sample("flgate_relay_refusals_total", reason="not_in_job") == before["not_in_job"] + 1
    assert (
        _sample("flgate_relay_received_bytes_total", job_id="job-a", site="site-1")
        == before["received"] + 2  # the body b"x", twice
    )
