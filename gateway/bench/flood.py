"""Small-call latency through the gateway with and without a tracking flood.

Issue 17's acceptance: a ClientApp that floods its tracking writer must not slow
its job's Fleet calls. One registered node sends SendNodeHeartbeat and an empty
PullMessages, one call at a time, through the first transport's gateway: half a
window without a flood; then a flooder (:mod:`.flooder`, a process of its own, like
a ClientApp) starts pushing records into the same site process, and after a lead
(so that the flood flows: the site's burst is taken, batches travel) the same
calls run for a whole window; the flooder is stopped, and once what the site still
queued has drained (another lead), the second half of the window without a flood
(so that a drift of the machine's speed weighs on both alike). The records take the
production path: the site's loopback receiver and its shipping as
``PushTracking`` over the site's shared connection, then the relay's checks,
job store (SQLite) and TensorBoard files (see :mod:`.worker`).

The relay's job store is read before and after the flooded window: every record
has a step of its own, so the points it gained are the records it stored while
the calls were measured, bounded by the site's documented limits (a burst of
10,000, then 1,000 records a second per job).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..flower.process import ManagedProcess
from . import proc
from .fleet_client import Endpoint, FleetClient, SyntheticNode
from .latency import METHODS
from .paths import JOB_ID, TrackingPath

FLOOD_RECORDS = 100_000
"""``add_scalar`` calls of each of the flooder's writers."""


@dataclass
class Flood:
    """Seconds per call by method without and with the flood, and what the flood did."""

    quiet: dict[str, list[float]]
    flooded: dict[str, list[float]]
    seconds: float
    """Each window's length."""
    lead: float
    """Seconds the flood ran before its window started."""
    stored: int
    """Points the relay's job store gained during the flooded window."""
    flooder: dict[str, float] = field(default_factory=dict)
    """The flooder's own counts (``add_scalar`` calls, writers, records lost)."""
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)
    """CPU seconds of each process in each window: ``{"quiet": {"relay": ...}}`` (and
    the flooder's own in the flooded one: on a small machine it competes for the cores)."""


def stored_points(store: Path, job_id: str = JOB_ID) -> int:
    """The points of ``job_id``'s series in a relay's job store (read only)."""
    if not store.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
        (count,) = db.execute("SELECT COUNT(*) FROM series WHERE job_id = ?", (job_id,)).fetchone()
    return int(count)


async def _calls(
    client: FleetClient, endpoint: Endpoint, node: SyntheticNode, seconds: float
) -> dict[str, list[float]]:
    """A heartbeat and an empty pull after another, for ``seconds``."""
    samples: dict[str, list[float]] = {method: [] for method in METHODS}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples["SendNodeHeartbeat"].append(await client.heartbeat(endpoint, node))
        samples["PullMessages"].append(await client.empty_pull(endpoint, node))
    return samples


def _start_flooder(tracking: TrackingPath, directory: Path, stats: Path) -> ManagedProcess:
    return ManagedProcess(
        "flooder",
        [
            sys.executable,
            "-m",
            "gateway.bench.flooder",
            "--records",
            str(FLOOD_RECORDS),
            "--stats",
            str(stats),
        ],
        log_path=directory / "flooder.log",
        env={**os.environ, **tracking.env},
        cwd=directory,
    )


async def measure_flood(
    client: FleetClient,
    node: SyntheticNode,
    endpoint: Endpoint,
    tracking: TrackingPath,
    *,
    seconds: float,
    lead: float,
    directory: Path,
    cpu: Callable[[], dict[str, float]],
) -> Flood:
    """Half a quiet window, a flooded one, the other half of the quiet one (see the module)."""
    directory.mkdir(parents=True, exist_ok=True)
    before = cpu()
    quiet = await _calls(client, endpoint, node, seconds / 2)
    quiet_cpu = _spent(before, cpu())
    stats = directory / "flooder.json"
    flooder = _start_flooder(tracking, directory, stats)
    try:
        await asyncio.sleep(lead)
        flooder.check_alive()
        start_points = await asyncio.to_thread(stored_points, tracking.store)
        start_cpu = {**cpu(), "flooder": proc.cpu_seconds(flooder.pid)}
        flooded = await _calls(client, endpoint, node, seconds)
        end_cpu = {**cpu(), "flooder": proc.cpu_seconds(flooder.pid)}
        stored = await asyncio.to_thread(stored_points, tracking.store) - start_points
        flooder.check_alive()
    finally:
        await asyncio.to_thread(flooder.stop)
    await asyncio.sleep(lead)
    before = cpu()
    for method, samples in (await _calls(client, endpoint, node, seconds / 2)).items():
        quiet[method] += samples
    quiet_cpu = {role: spent + _spent(before, cpu())[role] for role, spent in quiet_cpu.items()}
    counts: dict[str, float] = {}
    with contextlib.suppress(OSError, ValueError):
        counts = json.loads(stats.read_text())
    return Flood(
        quiet=quiet,
        flooded=flooded,
        seconds=seconds,
        lead=lead,
        stored=stored,
        flooder=counts,
        cpu={
            "quiet": quiet_cpu,
            "flooded": _spent(start_cpu, end_cpu),
        },
    )


def _spent(start: dict[str, float], end: dict[str, float]) -> dict[str, float]:
    return {role: end[role] - start[role] for role in end}
