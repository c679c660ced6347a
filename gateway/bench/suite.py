"""The whole bench: each step in turn, direct and gateway alternating, into one report.

Latency, capacity, objects and memory share one SuperLink, the bench's Flower
run, and one relay and one site-gateway process per transport (the first
transport's twice, metrics on and off, compared in the capacity step; and once more via an edge
relay, compared with it in the latency and objects steps). The
whole runs come last with processes of their own, once those are stopped: one
after another in the full bench, all at once with ``--quick``. Each step hands what
it measured to :mod:`.targets`, which adds the step's rows and their goals; the
report lists them in the brief's order: latency, objects, whole run, capacity,
memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import aiohttp

from ..core.exceptions import ConfigError, GatewayError
from ..flower.flwr_cli import flwr_run, write_flwr_home
from ..flower.install import FlowerInstall
from ..flower.launch import launch_superlink
from ..proto.envelope_pb2 import DIALECT_HTTP
from ..tracking.records import DEFAULT_LIMITS
from . import proc
from .capacity import (
    RELAY_CALLS,
    Capacity,
    MetricsCost,
    counted_calls,
    cpu_per_call,
    join_nodes,
    measure_capacity,
)
from .fleet_client import Endpoint, FleetCallError, FleetClient, SyntheticNode, fleet_client
from .flood import measure_flood
from .flower_app import CHUNK_BYTES, Control, write_app
from .latency import measure_latency
from .memory import stream_model
from .objects import Exchange, exchange
from .paths import STUB_JOB_ID, EdgePath, GatewayPath, Paths, gateway_paths
from .report import BenchReport
from .stats import MB, median, ms
from .targets import (
    capacity_rows,
    edge_latency_rows,
    edge_object_rows,
    flood_rows,
    in_brief_order,
    latency_rows,
    memory_rows,
    object_rows,
    run_rows,
)
from .wholerun import RunKnobs, measure_runs

OBJECT_CONCURRENCY = (1, 8)
MEMORY_CONCURRENCY = 2
"""Flower pushes and pulls two objects at a time."""
HEARTBEAT_EVERY = 10.0
SCRAPE_TIMEOUT = 10.0


@dataclass(frozen=True)
class Plan:
    """How many samples each step takes (full bench or --quick)."""

    latency_rounds: int
    latency_warmup: int
    flood_seconds: float
    """The flood step's time without a tracking flood (half before, half after) and with one."""
    flood_lead: float
    """Seconds the flood runs before its window (the site's burst is taken, batches flow),
    and the wait after it for the site to ship what it still queues."""
    capacity_nodes: int
    capacity_seconds: float
    capacity_warmup: float
    stub_seconds: float
    stub_warmup: float
    object_chunks: int
    object_repeats: int
    memory_chunks: int
    run_rounds: int
    run_model_mib: int
    run_fraction_evaluate: float
    """0 leaves out each round's evaluation (one ClientApp start less per site and round)."""
    runs_together: bool
    """Whole runs all at once (quicker, indicative) instead of one after another."""
    run_transports: int | None = None
    """Whole runs over the first this many transports only (``None``: over each); the
    others' rows say "full bench only"."""


FULL = Plan(
    latency_rounds=100,
    latency_warmup=10,
    flood_seconds=10.0,
    flood_lead=2.0,
    capacity_nodes=200,
    capacity_seconds=4.0,
    capacity_warmup=3.0,
    stub_seconds=3.0,
    stub_warmup=1.0,
    object_chunks=8,
    object_repeats=1,
    memory_chunks=200,
    run_rounds=3,
    run_model_mib=100,
    run_fraction_evaluate=1.0,
    runs_together=False,
)
QUICK = Plan(
    latency_rounds=20,
    latency_warmup=3,
    flood_seconds=5.0,
    flood_lead=2.0,
    capacity_nodes=50,
    capacity_seconds=1.0,
    capacity_warmup=0.75,
    stub_seconds=1.0,
    stub_warmup=0.5,
    object_chunks=3,
    object_repeats=1,
    memory_chunks=10,
    run_rounds=1,
    run_model_mib=1,
    run_fraction_evaluate=0.0,
    # All at once (see wholerun.measure_runs). A port that another run took
    # first is picked again (see gateway.flower.launch).
    runs_together=True,
    # Direct and the first transport: two runs at once share the 2 cores with less
    # noise than five, and the quick bench stays within 3 minutes.
    run_transports=1,
)


@dataclass(frozen=True)
class BenchOptions:
    transports: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    quick: bool = False
    job_dir: Path = Path("jobs/quickstart-numpy")
    flower_bin: Path | None = None
    workdir: Path | None = None
    profile_dir: Path | None = None


def _busy_note(result: Exchange) -> str:
    if not result.busy_retries:
        return ""
    return f"; {result.busy_retries} calls repeated, the SuperLink was busy"


@contextlib.asynccontextmanager
async def _workdir(given: Path | None, notify: Callable[[str], None]) -> AsyncIterator[Path]:
    """``given``, or a temporary directory removed on success (kept, with its logs, on failure)."""
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    directory = Path(tempfile.mkdtemp(prefix="flgate-bench-"))
    try:
        yield directory
    except BaseException:
        notify(f"work directory kept, with every process's log: {directory}")
        raise
    shutil.rmtree(directory, ignore_errors=True)


async def _keep_alive(
    client: FleetClient, endpoint: Endpoint, nodes: Sequence[SyntheticNode]
) -> None:
    """Heartbeats, as a SuperNode sends them, so nodes stay online during long steps."""
    while True:
        await asyncio.sleep(HEARTBEAT_EVERY)
        for node in nodes:
            with contextlib.suppress(FleetCallError):
                await client.heartbeat(endpoint, node)


@contextlib.asynccontextmanager
async def _bench_run(
    install: FlowerInstall, control_address: str, workdir: Path
) -> AsyncIterator[Control]:
    """The bench's Flower run (see :mod:`.flower_app`), from submission to its end."""
    control = Control(workdir / "bench-control.json")
    app = write_app(workdir / "bench-app")
    flwr_home = write_flwr_home(workdir / "bench-flwr-home", control_address)
    with (workdir / "bench-run.log").open("w") as log:
        run = asyncio.create_task(
            flwr_run(
                install,
                app,
                flwr_home,
                run_config={"control-file": str(control.path)},
                on_line=lambda line: print(line, file=log, flush=True),
            )
        )
        try:
            yield control
            control.stop()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(run), 30)
        finally:
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await run  # its outcome is no figure; a failure showed in the exchanges


def _first_of_each(windows: Sequence[Capacity]) -> dict[str, Capacity]:
    """The first window of each path, by path name."""
    out: dict[str, Capacity] = {}
    for window in windows:
        out.setdefault(window.path, window)
    return out


def _stub_targets(paths: Paths) -> list[tuple[Endpoint, GatewayPath | None]]:
    """The constant-answer windows: direct, then each transport; the one with a
    metrics-off pair as on, off, off, on, so a drift of the machine's speed weighs
    on both alike."""
    targets: list[tuple[Endpoint, GatewayPath | None]] = [(paths.stub, None)]
    off = paths.metrics_off
    for gateway in paths.gateways:
        targets.append((gateway.stub_endpoint, gateway))
        if off is not None and off.scheme == gateway.scheme:
            targets += [(off.stub_endpoint, off), (off.stub_endpoint, off)]
            targets.append((gateway.stub_endpoint, gateway))
    return targets


async def _metrics_cost(paths: Paths, windows: Sequence[Capacity]) -> MetricsCost:
    """The metrics-on and -off windows of one transport, once its relay's ``/metrics``
    shows it recorded every call answered in them (else the comparison means nothing)."""
    off = paths.metrics_off
    assert off is not None
    on = next(g for g in paths.gateways if g.scheme == off.scheme)
    assert on.relay_metrics is not None
    cost = MetricsCost(
        scheme=on.scheme,
        on=[w for w in windows if w.path == on.stub_endpoint.name],
        off=[w for w in windows if w.path == off.stub_endpoint.name],
        counted=counted_calls(await _scrape(on.relay_metrics), RELAY_CALLS, job_id=STUB_JOB_ID),
    )
    answered = sum(w.calls for w in cost.on)
    if cost.counted < answered:
        raise GatewayError(
            f"the {on.scheme} relay's metrics at {on.relay_metrics} count "
            f"{cost.counted:.0f} {RELAY_CALLS}{{job_id={STUB_JOB_ID!r}}}, fewer than the "
            f"{answered} calls it answered while measured: its metrics were not recorded"
        )
    return cost


async def _scrape(url: str) -> str:
    """The text of a ``/metrics`` page, as Prometheus scrapes it."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT)) as session,
            session.get(url) as response,
        ):
            response.raise_for_status()
            return await response.text()
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise GatewayError(f"cannot scrape the relay's metrics at {url}: {exc!r}") from exc


class _Bench:
    def __init__(
        self, options: BenchOptions, plan: Plan, report: BenchReport, notify: Callable[[str], None]
    ) -> None:
        self.options = options
        self.plan = plan
        self.report = report
        self.notify = notify

    def rss_snapshot(self, after: str, paths: Sequence[GatewayPath]) -> None:
        """Each relay's and site's RSS now (MB), to see which step leaves memory behind."""
        snapshots = self.report.details.setdefault("rss_mb_after", {})
        snapshots[after] = {
            p.scheme: {
                "relay": proc.current_rss(p.relay.pid) / MB,
                "site": proc.current_rss(p.site.pid) / MB,
            }
            for p in paths
        }

    def edge_details(self, edge: EdgePath | None) -> None:
        """What the edge path is, for the JSON (its figures are in the rows)."""
        if edge is None:
            return
        self.report.details["edge"] = {
            "scheme": edge.scheme,
            "path": edge.endpoint.name,
            "hops": f"site -{edge.scheme}-> edge -{edge.scheme}-> relay",
            "pids": {"edge": edge.edge.pid, "site": edge.site.pid, "relay": edge.relay.pid},
        }

    # --- step 1 ---------------------------------------------------------------
    async def latency(
        self,
        client: FleetClient,
        direct: Endpoint,
        paths: Sequence[GatewayPath],
        edge: EdgePath | None = None,
    ) -> None:
        """Each path in rotation; the edge path's with them, so the hop it adds is
        measured against the same SuperLink in the same state."""
        plan = self.plan
        via = [] if edge is None else [edge.endpoint]
        self.notify(
            f"latency: small Fleet calls, {plan.latency_rounds} rounds over "
            f"direct + {len(paths)} gateway paths" + "".join(f" + {e.name}" for e in via)
        )
        node = SyntheticNode()
        await client.join(direct, node)
        try:
            samples = await measure_latency(
                client,
                node,
                [direct, *(p.endpoint for p in paths), *via],
                rounds=plan.latency_rounds,
                warmup=plan.latency_warmup,
                notify=self.notify,
            )
        finally:
            await client.leave(direct, node)
        latency_rows(self.report, samples, [p.scheme for p in paths])
        if edge is not None:
            heartbeat = edge_latency_rows(
                self.report, samples, scheme=edge.scheme, via=edge.endpoint.name
            )[0].figures[edge.scheme]
            self.notify(
                f"latency via an edge relay over {edge.scheme}: heartbeat p50 "
                f"{heartbeat.direct:.2f} ms straight to the relay, "
                f"{heartbeat.gateway:.2f} ms via the edge"
            )
        self.report.details["latency"] = {
            "rounds": plan.latency_rounds,
            "warmup_rounds": plan.latency_warmup,
            "samples_per_figure": plan.latency_rounds,
        }

    async def flood(
        self, client: FleetClient, direct: Endpoint, paths: Sequence[GatewayPath], workdir: Path
    ) -> None:
        """The first transport's small-call latency without and with a ClientApp flooding
        its tracking writer (see :mod:`.flood`)."""
        plan = self.plan
        path = paths[0]
        assert path.tracking is not None, "the first transport's pair takes tracking records"
        self.notify(
            f"latency: small calls over {path.scheme}, {plan.flood_seconds:g} s without and "
            f"{plan.flood_seconds:g} s while a ClientApp floods its tracking writer"
        )
        node = SyntheticNode()
        await client.join(direct, node)
        pids = {"relay": path.relay.pid, "site": path.site.pid}
        try:
            flood = await measure_flood(
                client,
                node,
                path.endpoint,
                path.tracking,
                seconds=plan.flood_seconds,
                lead=plan.flood_lead,
                directory=workdir / "flood",
                cpu=lambda: {role: proc.cpu_seconds(pid) for role, pid in pids.items()},
            )
        finally:
            await client.leave(direct, node)
        p50 = {
            window: ms(median(samples["SendNodeHeartbeat"]))
            for window, samples in (("without", flood.quiet), ("with", flood.flooded))
        }
        self.notify(
            f"latency with a tracking flood over {path.scheme}: heartbeat p50 "
            f"{p50['without']:.2f} ms without, {p50['with']:.2f} ms with; "
            f"the relay stored {flood.stored} records in {flood.seconds:g} s"
        )
        flood_rows(self.report, flood, scheme=path.scheme, limits=DEFAULT_LIMITS)
        self.report.details["latency.flood"] = {
            "scheme": path.scheme,
            "window_seconds": flood.seconds,
            "lead_seconds": flood.lead,
            "calls": {
                window: {method: len(values) for method, values in samples.items()}
                for window, samples in (("without", flood.quiet), ("with", flood.flooded))
            },
            "records_stored": flood.stored,
            "flooder": flood.flooder,
            "cpu_seconds": flood.cpu,
        }

    # --- step 4 (run second: it needs no Flower run) ---------------------------
    async def capacity(self, client: FleetClient, direct: Endpoint, paths: Paths) -> None:
        plan = self.plan
        self.notify(f"capacity: registering {plan.capacity_nodes} nodes")
        # They stay registered: the ServerApp sends only to nodes it is told about, and
        # the SuperLink is thrown away at the end.
        nodes = await join_nodes(client, direct, plan.capacity_nodes)
        real = _first_of_each(
            await self._load(
                client,
                nodes,
                [(direct, None), *((g.endpoint, g) for g in paths.gateways)],
                plan.capacity_seconds,
                plan.capacity_warmup,
                "SuperLink",
            )
        )
        windows = await self._load(
            client,
            nodes,
            _stub_targets(paths),
            plan.stub_seconds,
            plan.stub_warmup,
            "constant answers",
        )
        stub = _first_of_each(windows)
        metrics = None
        if paths.metrics_off is not None:
            metrics = await _metrics_cost(paths, windows)
            self.notify(
                f"metrics cost over {metrics.scheme}: relay "
                f"{cpu_per_call(metrics.on, 'relay') * 1e6:.0f} us per call on, "
                f"{cpu_per_call(metrics.off, 'relay') * 1e6:.0f} us off; "
                f"its /metrics counted {metrics.counted:.0f} calls"
            )
            self.report.details["capacity.metrics_cost"] = {
                "scheme": metrics.scheme,
                "on": [vars(w) for w in metrics.on],
                "off": [vars(w) for w in metrics.off],
                "relay_calls_counted": metrics.counted,
            }
        capacity_rows(
            self.report,
            real,
            stub,
            nodes=plan.capacity_nodes,
            schemes=[g.scheme for g in paths.gateways],
            metrics=metrics,
        )
        for key, results in (("capacity", real), ("capacity.relay_only", stub)):
            self.report.details[key] = {name: vars(r) for name, r in results.items()}

    async def _load(
        self,
        client: FleetClient,
        nodes: Sequence[SyntheticNode],
        targets: Sequence[tuple[Endpoint, GatewayPath | None]],
        seconds: float,
        warmup: float,
        behind: str,
    ) -> list[Capacity]:
        """One load window per target, in order; with a gateway, also its processes' CPU."""
        results = []
        for endpoint, gateway in targets:
            pids = {} if gateway is None else {"relay": gateway.relay.pid, "site": gateway.site.pid}

            def cpu(pids: dict[str, int] = pids) -> dict[str, float]:
                return {role: proc.cpu_seconds(pid) for role, pid in pids.items()}

            result = await measure_capacity(
                client, endpoint, nodes, seconds=seconds, warmup=warmup, cpu=cpu
            )
            self.notify(
                f"capacity over {endpoint.name} ({behind}): {result.calls_per_second:.0f} "
                f"calls/s, p99 {ms(result.p99):.0f} ms, {result.errors} errors"
            )
            results.append(result)
        return results

    # --- step 2 ------------------------------------------------------------------
    async def objects(
        self,
        client: FleetClient,
        direct: Endpoint,
        paths: Sequence[GatewayPath],
        control: Control,
        edge: EdgePath | None = None,
    ) -> None:
        plan = self.plan
        endpoints = [direct, *(p.endpoint for p in paths)]
        if edge is not None:
            endpoints.append(edge.endpoint)
        plan_size = plan.object_repeats * len(OBJECT_CONCURRENCY) * len(endpoints)
        self.notify(
            f"objects: {plan_size} exchanges of {plan.object_chunks} x 5 MiB, "
            "waiting for the bench's Flower run"
        )
        node = SyntheticNode()
        await client.join(direct, node)
        keep_alive = asyncio.create_task(_keep_alive(client, direct, [node]))
        exchanges: list[Exchange] = []
        try:
            control.send(node.node_id, plan.object_chunks)
            # The first message waits for the run to start: a warm-up, not measured.
            await exchange(client, direct, node, concurrency=8, message_timeout=180.0)
            for repeat in range(plan.object_repeats):
                for concurrency in OBJECT_CONCURRENCY:
                    for endpoint in endpoints:
                        last = len(exchanges) == plan_size - 1
                        result = await exchange(
                            client,
                            endpoint,
                            node,
                            concurrency=concurrency,
                            # No message after the last one.
                            on_message=partial(control.send, node.node_id, 0) if last else None,
                        )
                        exchanges.append(result)
                        self.notify(
                            f"objects over {endpoint.name}, {concurrency} at a time "
                            f"(repeat {repeat + 1}): pull {result.pull_mb_s:.0f} MB/s, "
                            f"push {result.push_mb_s:.0f} MB/s{_busy_note(result)}"
                        )
        finally:
            keep_alive.cancel()
            control.send(node.node_id, 0)
            with contextlib.suppress(FleetCallError):  # never hide the step's own error
                await client.leave(direct, node)
        object_rows(
            self.report,
            exchanges,
            concurrencies=OBJECT_CONCURRENCY,
            schemes=[p.scheme for p in paths],
        )
        if edge is not None:
            edge_object_rows(
                self.report,
                exchanges,
                concurrencies=OBJECT_CONCURRENCY,
                scheme=edge.scheme,
                via=edge.endpoint.name,
            )
        self.report.details["objects"] = {
            "chunk_bytes": CHUNK_BYTES,
            "chunks_per_message": self.plan.object_chunks,
            "megabyte": MB,
            "exchanges": [vars(e) for e in exchanges],
        }

    # --- step 5 ------------------------------------------------------------------
    async def memory(self, client: FleetClient, paths: Sequence[GatewayPath]) -> None:
        """Each gateway's relay and site peak RSS while one large model goes through.

        One transport at a time, against the constant-answer stub (see
        :mod:`.memory`): the peak is reset just before the model's first byte.
        """
        plan = self.plan
        size_mb = plan.memory_chunks * CHUNK_BYTES / MB
        self.notify(
            f"memory: a {size_mb:.0f} MB model ({plan.memory_chunks} x 5 MiB) "
            "through each gateway and back"
        )
        peaks: dict[str, dict[str, int]] = {}
        details: dict[str, object] = {
            "model_bytes": plan.memory_chunks * CHUNK_BYTES,
            "far_end": "constant-answer stub",
        }
        all_reset = True
        node = SyntheticNode()
        for path in paths:
            pids = {"relay": path.relay.pid, "site": path.site.pid}
            before = {role: proc.current_rss(pid) for role, pid in pids.items()}
            reset = all(proc.reset_peak(pid) for pid in pids.values())
            all_reset = all_reset and reset
            result = await stream_model(
                client,
                path.stub_endpoint,
                node,
                objects=plan.memory_chunks,
                concurrency=MEMORY_CONCURRENCY,
            )
            peak = {role: proc.peak_rss(pid) for role, pid in pids.items()}
            self.notify(
                f"memory over {path.scheme}: relay peak {peak['relay'] / MB:.0f} MB, "
                f"site peak {peak['site'] / MB:.0f} MB (pull {result.pull_mb_s:.0f} MB/s, "
                f"push {result.push_mb_s:.0f} MB/s)"
            )
            peaks[path.scheme] = peak
            details[path.scheme] = {
                "rss_before": before,
                "peak_rss": peak,
                "peak_reset_at_start": reset,
                "streamed": vars(result),
            }
        memory_rows(self.report, peaks, model_mb=size_mb, peaks_reset=all_reset)
        self.report.details["memory"] = details

    # --- step 3 ---------------------------------------------------------------
    async def whole_runs(self, install: FlowerInstall, workdir: Path) -> None:
        plan = self.plan
        transports = self.report.transports[: plan.run_transports or None]
        paths = ["direct", *transports]
        how = "at the same time" if plan.runs_together else "one after another"
        self.notify(
            f"whole runs: {self.options.job_dir.name} (2 sites, {plan.run_rounds} "
            f"rounds, {plan.run_model_mib} MiB model), direct and over "
            f"{len(paths) - 1} transports, {how}"
        )
        knobs = RunKnobs(plan.run_rounds, plan.run_model_mib, plan.run_fraction_evaluate)
        runs = await measure_runs(
            self.options.job_dir,
            install,
            workdir / "runs",
            paths,
            knobs,
            together=plan.runs_together,
            notify=self.notify,
        )
        run_rows(self.report, runs, knobs, together=plan.runs_together)
        self.report.details["runs"] = [vars(r) for r in runs]


async def _steps(
    bench: _Bench, options: BenchOptions, install: FlowerInstall, workdir: Path
) -> None:
    """Latency, capacity, objects and memory: one SuperLink, one gateway per transport."""
    notify = bench.notify
    superlink, addresses = await launch_superlink(install, workdir / "superlink")
    try:
        notify(f"SuperLink at {addresses.fleet}")
        async with (
            gateway_paths(
                workdir / "gateway",
                options.transports,
                addresses.fleet,
                notify=notify,
                profile_dir=options.profile_dir,
            ) as paths,
            fleet_client(install.version_text) as client,
        ):
            direct = Endpoint("direct", addresses.fleet)
            # Submitted first: the run starts while latency and capacity are measured
            # (its ServerApp sends nothing until the objects step names a node).
            async with _bench_run(install, addresses.control, workdir) as control:
                bench.edge_details(paths.edge)
                bench.rss_snapshot("start", paths.gateways)
                await bench.latency(client, direct, paths.gateways, paths.edge)
                await bench.flood(client, direct, paths.gateways, workdir)
                bench.rss_snapshot("latency", paths.gateways)
                await bench.capacity(client, direct, paths)
                bench.rss_snapshot("capacity", paths.gateways)
                # Before the objects step: its 8 concurrent 5 MiB calls leave the
                # processes larger (freed memory stays with them), which would
                # hide what one model streaming two calls at a time needs.
                await bench.memory(client, paths.gateways)
                bench.rss_snapshot("memory", paths.gateways)
                await bench.objects(client, direct, paths.gateways, control, paths.edge)
                bench.rss_snapshot("objects", paths.gateways)
    finally:
        await asyncio.to_thread(superlink.stop)


async def run_bench(options: BenchOptions, notify: Callable[[str], None]) -> BenchReport:
    """Run every step; the report's rows come back in the brief's order (1..5)."""
    if not options.transports:
        raise ConfigError("no transport to measure (see --transport)")
    install = FlowerInstall.find(options.flower_bin)
    install.require_supported()
    if install.dialect != DIALECT_HTTP:
        raise ConfigError(
            f"flgate bench speaks Flower's HTTP Fleet API (flwr >= 1.40); "
            f"{install.bin_dir} has flwr {install.version_text}"
        )
    if not (options.job_dir / "pyproject.toml").is_file():
        raise ConfigError(f"{options.job_dir} is not a Flower app (no pyproject.toml)")
    plan = QUICK if options.quick else FULL
    report = BenchReport(
        quick=options.quick,
        flower_version=install.version_text,
        transports=list(options.transports),
        skipped=dict(options.skipped),
        cpus=os.cpu_count() or 0,
    )
    bench = _Bench(options, plan, report, notify)
    started = time.monotonic()
    async with _workdir(options.workdir, notify) as workdir:
        notify(f"flwr {install.version_text}; work directory {workdir}")
        await _steps(bench, options, install, workdir)
        # Last, once the steps' processes are stopped: nothing else shares the CPU.
        await bench.whole_runs(install, workdir)
    in_brief_order(report)
    report.seconds = time.monotonic() - started
    return report
