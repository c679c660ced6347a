"""A real SuperLink behind the gateway: non-Fleet paths are refused at the site.

The same Control request that the SuperLink answers when asked directly is
refused by the site's LGS and never reaches the relay, so the SuperLink never
sees it; a Fleet call on the same LGS does reach the SuperLink.
"""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from gateway.flower.launch import start_superlink
from gateway.proto.envelope_pb2 import DIALECT_HTTP
from gateway.relay.server import Relay
from gateway.site.gateway import SiteGateway
from tests.support.flower_envs import flwr142
from tests.support.pki import FederationKits

pytestmark = pytest.mark.e2e


async def _post(url: str) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=b"", headers={"content-type": "application/protobuf"}) as response,
    ):
        return response.status, await response.read()


async def test_control_and_runtime_are_refused_locally(
    tmp_path: Path, federation: FederationKits
) -> None:
    install = flwr142()
    superlink, addresses = start_superlink(install, tmp_path / "superlink")
    relay = Relay(listen_urls=["grpcs://127.0.0.1:0"], tls=federation.relay)
    site: SiteGateway | None = None
    try:
        await superlink.wait_for_port(addresses.control, 60)
        await relay.start()
        relay.add_job(
            "job-1", sites=frozenset({"site-1"}), dialect=DIALECT_HTTP, superlink=addresses.fleet
        )
        site = SiteGateway(
            name="site-1",
            relay_url=f"grpcs://localhost:{relay.port}",
            tls=federation.sites["site-1"],
        )
        lgs = await site.open_job("job-1", DIALECT_HTTP)

        # Asked directly, the SuperLink serves its Control API on the Fleet port...
        direct_status, _ = await _post(f"http://{addresses.control}/v1/control/list-runs")
        assert direct_status != 404

        for path in (
            "/v1/control/list-runs",
            "/v1/control/start-run",
            "/v1/runtime/pull-messages",
            "/health",
            "/docs",
        ):
            status, body = await _post(f"http://{lgs.address}{path}")
            assert status == 404, path
            assert "only the Flower Fleet API" in json.loads(body)["detail"]
        assert relay.dispatcher.stats.received == 0, "a refused request reached the relay"

        # ...and a Fleet call on the same LGS does reach it: an unauthenticated
        # heartbeat gets the SuperLink's own answer, byte for byte as if direct.
        expected = await _post(f"http://{addresses.fleet}/v1/fleet/send-node-heartbeat")
        got = await _post(f"http://{lgs.address}/v1/fleet/send-node-heartbeat")
        assert relay.dispatcher.stats.forwarded["job-1"] == 1
        assert got == expected
        assert got[0] == 401  # Flower's own status passes through unchanged
    finally:
        if site is not None:
            await site.aclose()
        await relay.aclose()
        superlink.stop()
