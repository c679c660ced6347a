"""Latency of small Fleet calls, each path in turn, call after call.

One registered node sends SendNodeHeartbeat and an empty PullMessages over
every path in rotation (direct, gateway over each transport, direct, ...), one
call at a time, so each path sees the same SuperLink in the same state; the
first rounds warm connections up and are dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .fleet_client import Endpoint, FleetClient, SyntheticNode

METHODS = ("SendNodeHeartbeat", "PullMessages")


@dataclass
class LatencySamples:
    """Seconds per call, by path name and method."""

    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def add(self, path: str, method: str, seconds: float) -> None:
        self.samples.setdefault(path, {}).setdefault(method, []).append(seconds)


async def measure_latency(
    client: FleetClient,
    node: SyntheticNode,
    endpoints: Sequence[Endpoint],
    *,
    rounds: int,
    warmup: int,
    notify: Callable[[str], None],
) -> LatencySamples:
    """``rounds`` rotations over ``endpoints`` (after ``warmup`` unrecorded ones)."""
    result = LatencySamples()
    for index in range(warmup + rounds):
        for endpoint in endpoints:
            heartbeat = await client.heartbeat(endpoint, node)
            pull = await client.empty_pull(endpoint, node)
            if index >= warmup:
                result.add(endpoint.name, "SendNodeHeartbeat", heartbeat)
                result.add(endpoint.name, "PullMessages", pull)
        if index >= warmup and (index - warmup + 1) % max(1, rounds // 4) == 0:
            notify(f"latency: {index - warmup + 1}/{rounds} rounds")
    return result
