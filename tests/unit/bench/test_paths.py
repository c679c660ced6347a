"""The bench's gateway paths as real processes on free ports: every transport with metrics
on, as ``flgate relay start`` runs, one more pair of the first with metrics off, the first's
path via an edge relay, and the check that the metrics-on relay really counted the calls it
was measured with."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import aiohttp
import pytest

from gateway.bench.capacity import RELAY_CALLS, measure_capacity
from gateway.bench.fleet_client import FleetCallError, SyntheticNode, fleet_client
from gateway.bench.paths import gateway_paths
from gateway.bench.suite import _metrics_cost, _stub_targets
from gateway.core.exceptions import GatewayError

UNUSED_SUPERLINK = "127.0.0.1:1"
"""The relays dial their SuperLink only when a call comes for it; none does here."""


async def test_one_more_pair_runs_without_metrics_and_the_relay_counts_what_it_answered(
    tmp_path: Path,
) -> None:
    notes: list[str] = []
    async with (
        gateway_paths(tmp_path, ["tcps"], UNUSED_SUPERLINK, notify=notes.append) as paths,
        fleet_client("1.41.0") as client,
    ):
        [on] = paths.gateways
        off = paths.metrics_off
        assert off is not None
        assert (on.scheme, on.name, on.stub_endpoint.name) == ("tcps", "tcps", "tcps")
        name = "tcps, metrics off"
        assert (off.scheme, off.name, off.stub_endpoint.name) == ("tcps", name, name)
        assert off.relay_metrics is None
        assert on.relay_metrics is not None and on.relay_metrics.startswith("http://127.0.0.1:")
        assert len(notes) == 3
        # On, off, off, on: both see the same drift of the machine's speed.
        targets = _stub_targets(paths)
        assert [(e.name, g) for e, g in targets] == [
            ("direct", None),
            ("tcps", on),
            (name, off),
            (name, off),
            ("tcps", on),
        ]
        nodes = [SyntheticNode() for _ in range(4)]
        windows = [
            await measure_capacity(client, endpoint, nodes, seconds=0.25, warmup=0.1)
            for endpoint, _ in targets[1:]
        ]
        assert all(w.calls > 0 and w.errors == 0 for w in windows), windows
        cost = await _metrics_cost(paths, windows)
        assert (cost.scheme, cost.on, cost.off) == ("tcps", windows[::3], windows[1:3])
        assert cost.counted >= sum(w.calls for w in cost.on)
        async with aiohttp.ClientSession() as session, session.get(on.relay_metrics) as page:
            assert RELAY_CALLS in await page.text()
        # A relay that counted fewer calls than it answered fails the bench, loudly.
        inflated = [dataclasses.replace(w, calls=10**9) for w in windows]
        with pytest.raises(GatewayError, match="its metrics were not recorded"):
            await _metrics_cost(paths, inflated)


async def test_the_edge_path_carries_a_signing_sites_calls_to_the_first_transports_relay(
    tmp_path: Path,
) -> None:
    notes: list[str] = []
    async with (
        gateway_paths(tmp_path, ["tcps"], UNUSED_SUPERLINK, notify=notes.append) as paths,
        fleet_client("1.41.0") as client,
    ):
        [on] = paths.gateways
        edge = paths.edge
        assert edge is not None
        assert (edge.scheme, edge.endpoint.name, edge.relay) == ("tcps", "tcps via edge", on.relay)
        assert notes[-1].startswith("gateway over tcps via edge: edge pid")
        # Both reach the job's route on the same relay (authorized, run, its SuperLink
        # unreachable here); a refused signature or site would be a 403 before it.
        for endpoint in (on.endpoint, edge.endpoint):
            with pytest.raises(FleetCallError, match="cannot reach the job's SuperLink") as caught:
                await client.heartbeat(endpoint, SyntheticNode())
            assert caught.value.status == 503
