"""`flgate bench --quick` end to end: every figure for every transport, as a table and JSON."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.support.paths import REPO

GOALS = {
    "latency.heartbeat.p50": ("grpcs", "https", "tcps"),
    "latency.empty-pull.p50": ("grpcs", "https", "tcps"),
    "capacity.relay_cpu_per_call": ("grpcs", "https", "tcps"),
    "capacity.site_cpu_per_call": ("grpcs", "https", "tcps"),
    "capacity.relay_only.calls_per_second": ("tcps",),
    "objects.pull.c1": ("grpcs", "https", "tcps"),
    "objects.push.c1": ("grpcs", "https", "tcps"),
    "run.seconds": ("grpcs",),
    "memory.relay_peak_rss": ("grpcs", "https", "tcps"),
}
"""Rows of issue 19's table, and the transports whose goal it sets (rediss too, where it runs)."""


def test_quick_bench_measures_every_figure_for_every_transport(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "bench", "--quick", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    seconds = time.monotonic() - started
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-4000:]}"
    payload = json.loads(out.read_text())
    transports = payload["transports"]
    assert {"grpcs", "https", "tcps"} <= set(transports)
    keys = {row["key"] for row in payload["rows"]}
    assert {
        "latency.heartbeat.p50",
        "latency.heartbeat.p99",
        "latency.empty-pull.p50",
        "latency.empty-pull.p99",
        "latency.flood.heartbeat.p50",
        "latency.flood.heartbeat.p99",
        "latency.flood.empty-pull.p50",
        "latency.flood.empty-pull.p99",
        "latency.flood.records_stored",
        "objects.pull.c1",
        "objects.pull.c8",
        "objects.push.c1",
        "objects.push.c8",
        "run.seconds",
        "capacity.calls_per_second",
        "capacity.p99",
        "memory.relay_peak_rss",
        "memory.site_peak_rss",
        "latency.edge.heartbeat.p50",
        "latency.edge.empty-pull.p50",
        "objects.edge.pull.c1",
        "objects.edge.pull.c8",
        "objects.edge.push.c1",
        "objects.edge.push.c8",
    } <= keys
    for row in payload["rows"]:
        # The tracking flood, the path via an edge relay, and with --quick the whole runs, are
        # measured over the first transport only; the quick table marks the others' whole runs
        # "full bench only".
        first_only = (
            row["key"].startswith(("latency.flood.", "latency.edge.", "objects.edge."))
            or row["key"] == "run.seconds"
        )
        measured = transports[:1] if first_only else transports
        assert row["transports"] == measured, row["key"]
        assert set(row["results"]) == set(measured), row["key"]
        left_out = transports[1:] if row["key"] == "run.seconds" else []
        assert row["not_measured"] == {s: "full bench only" for s in left_out}, row["key"]
        # Every figure of the table has its goal printed beside it.
        for scheme in GOALS.get(row["key"], ()):
            if scheme in row["transports"]:
                goal = row["targets"].get(scheme) or row["target"]
                assert goal is not None, (row["key"], scheme)
        for scheme, values in row["results"].items():
            for name in ("direct", "gateway", "ratio"):
                value = values[name]
                if value is None:
                    no_direct = row["step"] == "5 memory" or "cpu" in row["key"]
                    assert no_direct or row["key"].endswith("records_stored"), (row["key"], name)
                    continue
                assert math.isfinite(value) and value > 0, (row["key"], scheme, name, value)
    # The table: a header, then one line per figure and transport.
    table = done.stdout.splitlines()
    header = next(line for line in table if line.startswith("step"))
    for column in ("direct", "gateway", "ratio", "target"):
        assert column in header
    lines = [line.split() for line in table]
    per_transport = [cells for cells in lines if set(cells) & set(transports)]
    expected = sum(len(row["transports"]) + len(row["not_measured"]) for row in payload["rows"])
    assert len(per_transport) == expected
    assert sum("full bench only" in line for line in table) == len(transports) - 1
    # The edge path: the hop's added latency and its throughput ratio beside each figure.
    edge_rows = [row for row in payload["rows"] if ".edge." in row["key"]]
    for row in edge_rows:
        values = row["results"][transports[0]]
        if row["key"].startswith("latency."):
            assert values["added"] is not None, row["key"]
    assert payload["details"]["edge"]["scheme"] == transports[0]
    # Each edge row's line ends with its ratio (objects) or its added ms (latency).
    edge_lines = [line.split() for line in table if "via an edge relay" in line]
    assert len(edge_lines) == len(edge_rows)
    for cells in edge_lines:
        last = cells[-1]
        assert last.endswith("x") or last[0] in "+-", cells
    # Progress: one line per step on stderr.
    steps = ("latency:", "tracking flood", "via an edge relay", "capacity:", "objects:")
    for step in (*steps, "memory:", "whole runs:"):
        assert step in done.stderr, step
    assert seconds < 840
    print(f"quick bench: {seconds:.0f} s (goal: 180 s on 2 cores)")
