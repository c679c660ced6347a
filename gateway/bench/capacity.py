"""Capacity: many registered nodes calling as fast as answers come, for a fixed time.

Each of ``nodes`` synthetic nodes loops over one path with a SuperNode's mix
of calls (empty PullMessages, and a SendNodeHeartbeat every 7th call), in a
closed loop with no pause: the busiest an idle federation gets. Calls per
second count answers completed inside the window, after a warm-up; the p99 is
over those answers. Failed calls are counted; the node then pauses before its
next call, as a SuperNode backs off, so a failure does not turn into a storm
of retries.

What recording metrics costs the relay is read from windows of one transport
with metrics on and off (:class:`MetricsCost`); :func:`counted_calls` reads the
relay's own count of them from its ``/metrics`` text, to show it recorded.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

from .fleet_client import Endpoint, FleetCallError, FleetClient, SyntheticNode
from .objects import run_limited
from .stats import percentile
from .wire import NodeKey

JOIN_CONCURRENCY = 16
MIN_ANSWERS = 50
MAX_STRETCH = 4
PULLS_PER_HEARTBEAT = 7
"""A SuperNode's mix: it polls every 3 s when idle and beats every ~20 s."""
SIGNATURE_REUSE = 1.0
"""Seconds a node reuses one signed timestamp (see :class:`NodeKey`)."""
_ERROR_PAUSE = 1.0
"""After a failed call a node waits, as a SuperNode's retry backs off (from 1 s)."""
RELAY_CALLS = "flgate_relay_fleet_calls_total"
"""The relay's count of the Fleet calls it answered, as Prometheus scrapes it."""
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
_ESCAPED = re.compile(r"\\(.)")


@dataclass(frozen=True)
class Capacity:
    path: str
    nodes: int
    seconds: float
    calls: int
    errors: int
    p50: float
    p99: float
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    """CPU time each probed process used inside the window."""

    @property
    def calls_per_second(self) -> float:
        return self.calls / self.seconds


def cpu_per_call(windows: Sequence[Capacity], role: str) -> float:
    """Seconds of ``role``'s CPU per answered call, over ``windows`` taken together."""
    return sum(w.cpu_seconds[role] for w in windows) / max(1, sum(w.calls for w in windows))


@dataclass(frozen=True)
class MetricsCost:
    """One transport's constant-answer windows with the relay's metrics on and off."""

    scheme: str
    on: list[Capacity]
    off: list[Capacity]
    counted: float
    """The calls the metrics-on relay's ``/metrics`` counted for the stub job, scraped
    after its last window: at least the calls answered inside its windows."""


def _unescape(raw: str) -> str:
    """A label value as written: Prometheus escapes a backslash, a quote and a newline."""
    return _ESCAPED.sub(lambda m: "\n" if m[1] == "n" else m[1], raw)


def counted_calls(exposition: str, metric: str, **labels: str) -> float:
    """The sum of ``metric``'s samples whose labels include ``labels`` (Prometheus text)."""
    total = 0.0
    for line in exposition.splitlines():
        if not line.startswith(metric + "{"):
            continue
        head, _, value = line.rpartition("} ")
        found = {name: _unescape(raw) for name, raw in _LABEL.findall(head)}
        if all(found.get(name) == wanted for name, wanted in labels.items()):
            total += float(value.split()[0])
    return total


async def join_nodes(client: FleetClient, endpoint: Endpoint, count: int) -> list[SyntheticNode]:
    """Register and activate ``count`` nodes (set-up, not measured)."""
    nodes = [SyntheticNode(NodeKey(max_age=SIGNATURE_REUSE)) for _ in range(count)]
    await run_limited(JOIN_CONCURRENCY, partial(client.join, endpoint), nodes)
    return nodes


async def measure_capacity(
    client: FleetClient,
    endpoint: Endpoint,
    nodes: Sequence[SyntheticNode],
    *,
    seconds: float,
    warmup: float,
    cpu: Callable[[], dict[str, float]] | None = None,
) -> Capacity:
    """Load ``endpoint`` with every node for ``warmup + seconds``; count the last ``seconds``.

    The window grows (to ``MAX_STRETCH`` times) while fewer than ``MIN_ANSWERS``
    answers came in; ``cpu`` reads processes' CPU times when it opens and closes.
    """
    started = time.perf_counter()
    window_start = started + warmup
    window_end = window_start + seconds
    latest_end = window_start + seconds * MAX_STRETCH
    latencies: list[float] = []
    errors = 0

    async def node_loop(node: SyntheticNode, phase: int) -> None:
        nonlocal errors
        count = phase
        while time.perf_counter() < window_end:
            count += 1
            try:
                if count % PULLS_PER_HEARTBEAT == 0:
                    elapsed = await client.heartbeat(endpoint, node)
                else:
                    elapsed = await client.empty_pull(endpoint, node)
            except FleetCallError:
                if time.perf_counter() >= window_start:
                    errors += 1
                await asyncio.sleep(_ERROR_PAUSE)
                continue
            done = time.perf_counter()
            if window_start <= done <= window_end:
                latencies.append(elapsed)

    loops = [asyncio.create_task(node_loop(node, i)) for i, node in enumerate(nodes)]
    await asyncio.sleep(max(0.0, window_start - time.perf_counter()))
    before = cpu() if cpu is not None else {}
    # A path slower than the window would show no answers at all: stretch the
    # window (up to MAX_STRETCH times) until enough answers came in.
    while True:
        await asyncio.sleep(max(0.0, window_end - time.perf_counter()))
        if len(latencies) >= MIN_ANSWERS or window_end >= latest_end:
            break
        window_end = min(latest_end, window_end + seconds)
    used = {name: value - before[name] for name, value in cpu().items()} if cpu else {}
    # Calls still in flight are not counted: end them rather than wait for a slow SuperLink.
    for task in loops:
        task.cancel()
    await asyncio.gather(*loops, return_exceptions=True)
    # No answer at all in the window (the path collapsed): a figure of 0 calls/s, no p99.
    nan = float("nan")
    return Capacity(
        path=endpoint.name,
        nodes=len(nodes),
        seconds=window_end - window_start,
        calls=len(latencies),
        errors=errors,
        p50=percentile(latencies, 50) if latencies else nan,
        p99=percentile(latencies, 99) if latencies else nan,
        cpu_seconds=used,
    )
