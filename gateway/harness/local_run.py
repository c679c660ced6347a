"""Run a Flower app on this machine, directly or through the gateway.

Both modes start the same real Flower programs with the same node configs and
run-config; the gateway mode puts a relay (with its dispatcher and LGC) and one
site gateway (with an LGS) per site between the SuperNodes and the SuperLink.
The demo, the end-to-end tests and the comparison of results all use this.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..control.jobs.results import COMPLETED, parse_result
from ..control.jobs.spec import JobSpec, RunConfigValue
from ..core.exceptions import JobError
from ..core.identity import Role
from ..flower.flwr_cli import final_status, flwr_run, run_id_from_output, write_flwr_home
from ..flower.install import FlowerInstall
from ..flower.launch import launch_superlink, launch_supernode
from ..flower.process import ManagedProcess
from ..provisioning.certs import write_participant
from ..provisioning.kit import load_kit
from ..provisioning.workspace import provision_local
from ..relay.dispatcher import DispatchStats
from ..relay.server import Relay
from ..site.gateway import SiteGateway
from ..tracking.series import ServerOutput
from .faultproxy import FaultConfig, FaultProxy
from .redis_server import RedisServer, start_redis

log = logging.getLogger(__name__)

Mode = Literal["direct", "gateway"]


@dataclass(frozen=True)
class Progress:
    """One step of a run, for whoever shows progress."""

    stage: str  # "start", "round", "line", "done"
    text: str
    round: int = 0
    rounds: int = 0


@dataclass
class RunOutcome:
    """What a run produced."""

    mode: Mode
    job_id: str
    exit_code: int
    output: str
    seconds: float
    """From the SuperLink's start to the run's end."""
    workdir: Path
    run_seconds: float = 0.0
    """From the run's submission (``flwr run``) to its end."""
    rounds_seen: int = 0
    run_id: str | None = None
    status: str | None = None
    """The SuperLink's final status of the run, e.g. ``finished:completed``."""
    result: dict[str, Any] | None = None
    relay_stats: DispatchStats | None = None
    dedup: dict[str, int] = field(default_factory=dict)
    """The relay's at-most-once counters (executed, joined, cache_hits, ...)."""
    retries: int = 0
    """Retries the sites' reliable senders made (same message id)."""
    site_calls: dict[str, int] = field(default_factory=dict)
    commands: dict[str, list[str]] = field(default_factory=dict)
    """The command line of each Flower process, by process name."""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.status == COMPLETED


def site_names(count: int) -> list[str]:
    return [f"site-{i}" for i in range(1, count + 1)]


@dataclass
class _Running:
    processes: list[ManagedProcess] = field(default_factory=list)

    def check(self) -> None:
        for process in self.processes:
            process.check_alive()

    async def stop_all(self) -> None:
        # SuperNodes first, so none of them retries against a vanished SuperLink.
        for process in reversed(self.processes):
            await asyncio.to_thread(process.stop)


@contextlib.asynccontextmanager
async def _gateway_path(
    workdir: Path,
    job_id: str,
    sites: list[str],
    install: FlowerInstall,
    superlink_fleet: str,
    faults: FaultConfig | None,
    transport: str,
) -> AsyncIterator[tuple[Relay, dict[str, SiteGateway], dict[str, str]]]:
    """A relay and one site gateway per site, from the kits of a throw-away project.

    With ``faults``, the sites reach the relay through a fault-injection proxy.
    """
    pki = workdir / "pki"
    kits = provision_local(pki, f"local-{job_id}", sites, transport=transport)
    ca = kits.ca
    relay_tls = load_kit(kits.kit("relay")).tls
    relay: Relay | None = None
    redis: RedisServer | None = None
    listen_url = f"{transport}://127.0.0.1:0"
    if transport in ("redis", "rediss"):
        # Redis transports meet at a Redis server rather than at the relay.
        redis_tls = write_participant(
            pki / "redis", ca, "redis", Role.RELAY, hosts=("localhost", "127.0.0.1")
        )
        redis = await asyncio.to_thread(
            start_redis, workdir / "redis", tls=redis_tls if transport == "rediss" else None
        )
        listen_url = f"{transport}://127.0.0.1:{redis.port}"
    gateways: dict[str, SiteGateway] = {}
    proxy: FaultProxy | None = None
    try:
        relay = Relay(listen_urls=[listen_url], tls=relay_tls, ledger=True)
        await relay.start()
        relay_port = relay.port
        if faults is not None:
            proxy = FaultProxy("127.0.0.1", relay.port, faults)
            await proxy.start()
            relay_port = proxy.port
        relay.add_job(
            job_id, sites=frozenset(sites), dialect=install.dialect, superlink=superlink_fleet
        )
        addresses = {}
        for name in sites:
            site_tls = load_kit(kits.kit(name)).tls
            gateway = SiteGateway(
                name=name, relay_url=f"{transport}://localhost:{relay_port}", tls=site_tls
            )
            gateways[name] = gateway
            lgs = await gateway.open_job(job_id, install.dialect)
            addresses[name] = lgs.address
        yield relay, gateways, addresses
    finally:
        for gateway in gateways.values():
            await gateway.aclose()
        if proxy is not None:
            await proxy.aclose()
        if relay is not None:
            await relay.aclose()
        if redis is not None:
            redis.stop()


async def run_app(
    spec: JobSpec,
    *,
    mode: Mode,
    workdir: Path,
    install: FlowerInstall,
    sites: int = 2,
    run_config: dict[str, RunConfigValue] | None = None,
    grpc_modes: list[str] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    startup_timeout: float = 60.0,
    faults: FaultConfig | None = None,
    transport: str = "grpcs",
) -> RunOutcome:
    """Run ``spec`` once with ``sites`` SuperNodes; stop everything before returning.

    ``grpc_modes`` picks 'rere' or 'adapter' per site for flwr <= 1.39 SuperNodes;
    ``faults`` puts a fault-injection proxy between the sites and the relay;
    ``transport`` is the URL scheme sites and relay talk over (e.g. ``grpcs``).
    """
    if sites < spec.min_sites:
        raise JobError(f"job {spec.name} needs at least {spec.min_sites} sites, got {sites}")
    notify = on_progress or (lambda _p: None)
    job_id = f"{spec.name}-{uuid.uuid4().hex[:8]}"
    names = site_names(sites)
    config = {**spec.run_config, **(run_config or {})}
    running = _Running()
    started = time.monotonic()
    reader = ServerOutput()
    workdir.mkdir(parents=True, exist_ok=True)

    def on_line(line: str) -> None:
        before = reader.round
        reader.feed(line)
        if reader.round != before:
            notify(Progress("round", line, round=reader.round, rounds=reader.rounds))
        notify(Progress("line", line))

    try:
        superlink, addresses = await launch_superlink(
            install, workdir / "superlink", timeout=startup_timeout
        )
        running.processes.append(superlink)
        notify(Progress("start", f"SuperLink (flwr {install.version_text}) at {addresses.control}"))

        async with contextlib.AsyncExitStack() as stack:
            relay: Relay | None = None
            gateways: dict[str, SiteGateway] = {}
            if mode == "gateway":
                path = await stack.enter_async_context(
                    _gateway_path(
                        workdir, job_id, names, install, addresses.fleet, faults, transport
                    )
                )
                relay, gateways, dial = path
                notify(
                    Progress(
                        "start",
                        f"relay on {transport}://localhost:{path[0].port}, "
                        f"{len(names)} sites connected through it",
                    )
                )
            else:
                dial = {name: addresses.fleet for name in names}
            modes = grpc_modes or ["rere"]
            launched = await asyncio.gather(
                *(
                    launch_supernode(
                        install,
                        dial[name],
                        workdir / name,
                        name=f"supernode-{name}",
                        node_config={"partition-id": index, "num-partitions": len(names)},
                        grpc_mode=modes[index % len(modes)],
                        timeout=startup_timeout,
                    )
                    for index, name in enumerate(names)
                ),
                return_exceptions=True,
            )
            # Keep every SuperNode that started (to stop it), then report a failure.
            running.processes.extend(p for p in launched if isinstance(p, ManagedProcess))
            for result in launched:
                if isinstance(result, BaseException):
                    raise result
            notify(Progress("start", f"{len(names)} SuperNodes started ({mode})"))

            flwr_home = write_flwr_home(workdir / "flwr-home", addresses.control)
            submitted = time.monotonic()
            run_task = asyncio.create_task(
                flwr_run(install, spec.app_dir, flwr_home, run_config=config, on_line=on_line)
            )
            exit_code, output = await _watch(run_task, running, spec.time_limit)
            # Up to the run's end, without the `flwr ls` that reads its status.
            ended = time.monotonic()
            run_id = run_id_from_output(output)
            status = await final_status(install, flwr_home, run_id) if run_id else None
            # Stop the Flower processes before counting, so no call is still in flight.
            await running.stop_all()
            outcome = RunOutcome(
                mode=mode,
                job_id=job_id,
                exit_code=exit_code,
                output=output,
                seconds=ended - started,
                run_seconds=ended - submitted,
                workdir=workdir,
                rounds_seen=reader.round,
                run_id=run_id,
                status=status,
                result=parse_result(output),
                relay_stats=copy.deepcopy(relay.dispatcher.stats) if relay else None,
                dedup=relay.dispatcher.receiver.protocol.counters() if relay else {},
                retries=sum(g.forwarder(job_id).sender.retries for g in gateways.values()),
                site_calls={n: g.forwarder(job_id).calls for n, g in gateways.items()},
                commands={p.name: p.argv for p in running.processes},
            )
    finally:
        await running.stop_all()
    notify(Progress("done", f"{mode} run {outcome.run_id} ended: {outcome.status}"))
    return outcome


async def _watch(
    run_task: asyncio.Task[tuple[int, str]], running: _Running, time_limit: float
) -> tuple[int, str]:
    """Wait for ``flwr run``; stop it if a Flower process dies or time runs out."""
    deadline = time.monotonic() + time_limit
    while True:
        done, _ = await asyncio.wait({run_task}, timeout=1.0)
        if done:
            return run_task.result()
        try:
            running.check()
            if time.monotonic() > deadline:
                raise JobError(f"the run exceeded its time limit of {time_limit:.0f} s")
        except JobError:
            run_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run_task
            raise
