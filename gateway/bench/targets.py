"""The bench's figures: the report's rows, their goals, and how measurements fill them.

Each step measures (:mod:`.latency`, :mod:`.capacity`, :mod:`.objects`,
:mod:`.memory`, :mod:`.wholerun`) and hands its results to one function here,
which adds that step's rows to the :class:`~.report.BenchReport`: the figure's
key, label and unit, and its target. Targets are goals printed beside the
results, never assertions (see :mod:`.report`). Nothing here measures;
:mod:`.suite` does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from statistics import median

from ..tracking.records import TrackingLimits
from .capacity import Capacity, MetricsCost, cpu_per_call
from .flood import Flood
from .latency import LatencySamples
from .objects import Exchange
from .report import BenchReport, Figure, Row, Target
from .stats import MB, ms, percentile
from .wholerun import RunKnobs, WholeRun

LATENCY = "1 latency"
OBJECTS = "2 objects"
WHOLE_RUN = "3 whole run"
CAPACITY = "4 capacity"
MEMORY = "5 memory"
STEP_ORDER = {LATENCY: 0, OBJECTS: 1, WHOLE_RUN: 2, CAPACITY: 3, MEMORY: 4}
"""The brief's order of the steps, which the report follows (the bench measures in another)."""

# The goals of issue 19's table (the figures of a full bench, flwr 1.41, 2 cores).
LATENCY_P50 = Target("added_max", 1.5, "added <= 1.5 ms (stretch 1.0)")
OBJECT_RATE = Target("ratio_min", 0.9, ">= 0.9x direct")
REDIS_OBJECT_RATE = Target("ratio_min", 0.7, ">= 0.7x direct (Redis)")
REDIS_SCHEMES = ("redis", "rediss")
RUN_TIME = Target("ratio_max", 1.05, "<= 1.05x direct")
CAPACITY_RATE = Target("gateway_min", 3000, ">= 3000/s")
"""Calls/s with 200 nodes and constant answers, set for tcps (the others have none)."""
CAPACITY_RATE_SCHEMES = ("tcps",)
RELAY_CPU = {
    "grpcs": Target("gateway_max", 400, "<= 400 us"),
    "https": Target("gateway_max", 400, "<= 400 us"),
    "tcps": Target("gateway_max", 250, "<= 250 us"),
}
"""The relay's CPU per call with constant answers (none set for Redis)."""
SITE_CPU_BEFORE = {"grpcs": 435, "https": 519, "tcps": 242, "rediss": 775}
"""The site's CPU per call (us) when the goal was set: the goal is half of it."""
SITE_CPU = {
    scheme: Target("gateway_max", before / 2, f"<= {before / 2:.0f} us (half of {before})")
    for scheme, before in SITE_CPU_BEFORE.items()
}
FULL_BENCH_ONLY = "full bench only"
METRICS_COST = Target("ratio_max", 1.05, "<= 1.05x off")
"""Recording metrics may cost the relay at most 5 % more CPU per call."""
RELAY_MEMORY = Target("gateway_max", 250, "<= 250 MB")
FLOOD_SLOWDOWN = Target("ratio_max", 1.10, "<= 1.10x no flood")
"""A ClientApp flooding its tracking writer may slow its job's small calls by 10 % at most."""


def _latency_ms(samples: LatencySamples, path: str, method: str, p: float) -> float:
    """The ``p``-th percentile of ``method``'s latency over ``path``, in ms."""
    return ms(percentile(samples.samples[path][method], p))


def latency_rows(report: BenchReport, samples: LatencySamples, schemes: Sequence[str]) -> None:
    """p50 and p99 of a heartbeat and an empty pull, direct and over each transport."""
    for method, short in (("SendNodeHeartbeat", "heartbeat"), ("PullMessages", "empty-pull")):
        for p, label in ((50, "p50"), (99, "p99")):
            row = report.row(
                f"latency.{short}.{label}",
                LATENCY,
                f"{method}{' (empty)' if short == 'empty-pull' else ''} {label}",
                "ms",
                show_added=True,
                target=LATENCY_P50 if p == 50 else None,
            )
            direct_value = _latency_ms(samples, "direct", method, p)
            for scheme in schemes:
                row.figures[scheme] = Figure(direct_value, _latency_ms(samples, scheme, method, p))


def _edge_note(scheme: str) -> str:
    return f"direct = straight to the relay, {scheme} only"


def edge_latency_rows(
    report: BenchReport, samples: LatencySamples, *, scheme: str, via: str
) -> list[Row]:
    """p50 of a heartbeat and an empty pull over ``scheme`` straight to its relay (the
    "direct" column) and via an edge relay (path ``via``): the added column is the hop's.
    Returns the rows (heartbeat first)."""
    rows = []
    for method, short in (("SendNodeHeartbeat", "heartbeat"), ("PullMessages", "empty-pull")):
        row = report.row(
            f"latency.edge.{short}.p50",
            LATENCY,
            f"{method}{' (empty)' if short == 'empty-pull' else ''} p50, via an edge relay",
            "ms",
            show_added=True,
            note=_edge_note(scheme),
            schemes=(scheme,),
        )
        row.figures[scheme] = Figure(
            _latency_ms(samples, scheme, method, 50), _latency_ms(samples, via, method, 50)
        )
        rows.append(row)
    return rows


def stored_bound(limits: TrackingLimits, seconds: float) -> float:
    """The most records a site lets one job send in ``seconds``: its burst, then its rate."""
    return limits.burst + limits.rate * seconds


def flood_rows(report: BenchReport, flood: Flood, *, scheme: str, limits: TrackingLimits) -> None:
    """p50 and p99 of a heartbeat and an empty pull over ``scheme`` without a tracking
    flood (the "direct" column) and with one; the records the relay stored meanwhile,
    against what the site's limits let through since the flood started."""
    only = (scheme,)
    note = f"direct = no flood, {scheme} only"
    for method, short in (("SendNodeHeartbeat", "heartbeat"), ("PullMessages", "empty-pull")):
        for p, label in ((50, "p50"), (99, "p99")):
            row = report.row(
                f"latency.flood.{short}.{label}",
                LATENCY,
                f"{method}{' (empty)' if short == 'empty-pull' else ''} {label}, tracking flood",
                "ms",
                show_added=True,
                target=FLOOD_SLOWDOWN if p == 50 else None,
                note=note,
                schemes=only,
            )
            row.figures[scheme] = Figure(
                ms(percentile(flood.quiet[method], p)), ms(percentile(flood.flooded[method], p))
            )
    bound = stored_bound(limits, flood.lead + flood.seconds)
    stored = report.row(
        "latency.flood.records_stored",
        LATENCY,
        f"records the relay stored in the {flood.seconds:g} s flood window",
        "records",
        target=Target(
            "gateway_max",
            bound,
            f"<= {bound:,.0f} ({limits.burst:,} burst + {limits.rate:,.0f}/s)",
        ),
        note=f"{scheme} only",
        schemes=only,
    )
    stored.figures[scheme] = Figure(None, float(flood.stored))


def capacity_rows(
    report: BenchReport,
    real: Mapping[str, Capacity],
    stub: Mapping[str, Capacity],
    *,
    nodes: int,
    schemes: Sequence[str],
    metrics: MetricsCost | None = None,
) -> None:
    """Calls/s and p99 behind the real SuperLink and the stub; the gateway's CPU per call,
    and with ``metrics`` the relay's with metrics on against off."""
    for key, results, label in (
        ("capacity", real, f"{nodes} nodes, real SuperLink"),
        ("capacity.relay_only", stub, f"{nodes} nodes, constant answers"),
    ):
        rate = report.row(
            f"{key}.calls_per_second",
            CAPACITY,
            f"calls/s, {label}",
            "calls/s",
            # The SuperLink paces the real one (about 100 calls/s here): no goal.
            targets=(
                {s: CAPACITY_RATE for s in CAPACITY_RATE_SCHEMES}
                if key == "capacity.relay_only"
                else {}
            ),
        )
        p99 = report.row(f"{key}.p99", CAPACITY, f"p99, {label}", "ms")
        base = results["direct"]
        for scheme in schemes:
            result = results[scheme]
            rate.figures[scheme] = Figure(base.calls_per_second, result.calls_per_second)
            p99.figures[scheme] = Figure(ms(base.p99), ms(result.p99))
    for role, goals in (("relay", RELAY_CPU), ("site", SITE_CPU)):
        row = report.row(
            f"capacity.{role}_cpu_per_call",
            CAPACITY,
            f"{role} CPU per call, constant answers",
            "us",
            targets=dict(goals),
        )
        for scheme in schemes:
            row.figures[scheme] = Figure(None, cpu_per_call([stub[scheme]], role) * 1e6)
    if metrics is not None:
        metrics_cost_row(report, metrics, stub, schemes=schemes)


def metrics_cost_row(
    report: BenchReport,
    metrics: MetricsCost,
    stub: Mapping[str, Capacity],
    *,
    schemes: Sequence[str],
) -> None:
    """The relay's CPU per call with metrics off (the "direct" column) and on, over all
    windows of each; the other transports show only their metrics-on figure."""
    row = report.row(
        "capacity.metrics_cost.relay_cpu_per_call",
        CAPACITY,
        "relay CPU per call, constant answers, metrics on vs off",
        "us",
        target=METRICS_COST,
        note=f"direct = metrics off, {metrics.scheme} only",
    )
    for scheme in schemes:
        if scheme == metrics.scheme:
            off = cpu_per_call(metrics.off, "relay")
            on = cpu_per_call(metrics.on, "relay")
            row.figures[scheme] = Figure(off * 1e6, on * 1e6)
        else:
            row.figures[scheme] = Figure(None, cpu_per_call([stub[scheme]], "relay") * 1e6)


def _median_rate(
    exchanges: Sequence[Exchange], direction: str, concurrency: int, path: str
) -> float:
    """The median MB/s of ``direction`` ("pull" or "push") over the exchanges of ``path``
    that ran ``concurrency`` calls at a time."""
    return median(
        [
            e.pull_mb_s if direction == "pull" else e.push_mb_s
            for e in exchanges
            if e.concurrency == concurrency and e.path == path
        ]
    )


def object_rows(
    report: BenchReport,
    exchanges: Sequence[Exchange],
    *,
    concurrencies: Sequence[int],
    schemes: Sequence[str],
) -> None:
    """The median MB/s of each direction and concurrency, direct and over each transport."""
    for direction in ("pull", "push"):
        for concurrency in concurrencies:
            method = "PullObject" if direction == "pull" else "PushObject"
            row = report.row(
                f"objects.{direction}.c{concurrency}",
                OBJECTS,
                f"{method} 5 MiB, {concurrency} at a time",
                "MB/s",
                target=OBJECT_RATE,
                targets={s: REDIS_OBJECT_RATE for s in schemes if s in REDIS_SCHEMES},
            )

            direct_value = _median_rate(exchanges, direction, concurrency, "direct")
            for scheme in schemes:
                gateway_value = _median_rate(exchanges, direction, concurrency, scheme)
                row.figures[scheme] = Figure(direct_value, gateway_value)


def edge_object_rows(
    report: BenchReport,
    exchanges: Sequence[Exchange],
    *,
    concurrencies: Sequence[int],
    scheme: str,
    via: str,
) -> None:
    """The median MB/s of each direction and concurrency over ``scheme`` straight to its
    relay (the "direct" column) and via an edge relay (path ``via``): the ratio is the hop's."""
    for direction in ("pull", "push"):
        method = "PullObject" if direction == "pull" else "PushObject"
        for concurrency in concurrencies:
            row = report.row(
                f"objects.edge.{direction}.c{concurrency}",
                OBJECTS,
                f"{method} 5 MiB, {concurrency} at a time, via an edge relay",
                "MB/s",
                note=_edge_note(scheme),
                schemes=(scheme,),
            )
            row.figures[scheme] = Figure(
                _median_rate(exchanges, direction, concurrency, scheme),
                _median_rate(exchanges, direction, concurrency, via),
            )


def memory_rows(
    report: BenchReport,
    peaks: Mapping[str, Mapping[str, int]],
    *,
    model_mb: float,
    peaks_reset: bool,
) -> None:
    """Each transport's relay and site peak RSS (``peaks``: bytes by scheme, then role)."""
    relay_row = report.row(
        "memory.relay_peak_rss",
        MEMORY,
        f"relay peak RSS, {model_mb:.0f} MB model in flight",
        "MB",
        target=RELAY_MEMORY,
    )
    site_row = report.row(
        "memory.site_peak_rss",
        MEMORY,
        f"site gateway peak RSS, {model_mb:.0f} MB model in flight",
        "MB",
    )
    for scheme, peak in peaks.items():
        relay_row.figures[scheme] = Figure(None, peak["relay"] / MB)
        site_row.figures[scheme] = Figure(None, peak["site"] / MB)
    if not peaks_reset:
        relay_row.note = site_row.note = "peak since start: /proc clear_refs refused"


def run_rows(
    report: BenchReport, runs: Sequence[WholeRun], knobs: RunKnobs, *, together: bool
) -> None:
    """A whole run's seconds from submission to its end, direct and over each transport."""
    by_path = {r.path: r.seconds for r in runs}
    measured = tuple(s for s in report.transports if s in by_path)
    row = report.row(
        "run.seconds",
        WHOLE_RUN,
        f"{knobs.rounds} rounds, 2 sites, {knobs.model_mib} MiB model"
        + ("" if knobs.fraction_evaluate else ", no evaluation")
        + ", submission to end",
        "s",
        show_added=True,
        target=RUN_TIME,
        note="all runs at once, indicative" if together else "",
        schemes=measured,
        not_measured={s: FULL_BENCH_ONLY for s in report.transports if s not in by_path},
    )
    for scheme in measured:
        row.figures[scheme] = Figure(by_path["direct"], by_path[scheme])


def in_brief_order(report: BenchReport) -> None:
    """Sort the report's rows by step (1..5); rows of one step keep their order."""
    report.rows.sort(key=lambda r: STEP_ORDER.get(r.step, 99))
