"""``flgate demo``: a throw-away federation on localhost that runs one job end to end.

It makes certificates from a fresh CA, starts a relay and N sites, a SuperLink
and N SuperNodes, runs the job with ``flwr run``, shows progress per round,
prints the run's log and result, and stops every process it started.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ..control.jobs.spec import JobSpec, RunConfigValue
from ..core.exceptions import ConfigError
from ..flower.install import FlowerInstall
from ..observability.endpoint import MetricsEndpoint, MetricsListen
from ..transport import schemes
from .local_run import Progress, RunOutcome, run_app

DEFAULT_JOB = "quickstart-numpy"


def default_job_dir() -> Path:
    """``jobs/quickstart-numpy`` in the working directory, else in the checkout the package
    was installed from (``gateway/harness/demo.py`` is three levels below it)."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = base / "jobs" / DEFAULT_JOB
        if candidate.is_dir():
            return candidate
    return Path("jobs") / DEFAULT_JOB


@dataclass(frozen=True)
class DemoOptions:
    job_dir: Path
    sites: int = 2
    run_config: dict[str, RunConfigValue] | None = None
    flower_bin: Path | None = None
    workdir: Path | None = None
    keep: bool = False
    transport: str = "grpcs"
    metrics: MetricsListen | None = None
    """Serve the relay's and the sites' metrics here while the demo runs (one process)."""


def _progress_printer(out: TextIO) -> Callable[[Progress], None]:
    def show(progress: Progress) -> None:
        if progress.stage == "round":
            print(f"  round {progress.round}/{progress.rounds} started", file=out, flush=True)
        elif progress.stage in ("start", "done"):
            print(f"  {progress.text}", file=out, flush=True)

    return show


def print_outcome(outcome: RunOutcome, out: TextIO) -> None:
    """The run's log (with the ServerApp's output), then a summary."""
    print("\n=== run log (flwr run --stream) ===", file=out)
    print(outcome.output.rstrip(), file=out)
    print("=== summary ===", file=out)
    print(
        f"run {outcome.run_id}: {outcome.status} after {outcome.seconds:.1f} s, "
        f"{outcome.rounds_seen} rounds seen",
        file=out,
    )
    if outcome.relay_stats is not None:
        print(
            f"Fleet calls through the relay: {sum(outcome.relay_stats.forwarded.values())} "
            f"forwarded, {sum(outcome.relay_stats.refused.values())} refused",
            file=out,
        )
    if outcome.result:
        print(f"final parameters sha256: {outcome.result.get('final_params_sha256')}", file=out)
        for name in ("train_metrics", "evaluate_metrics"):
            per_round = outcome.result.get(name) or {}
            if per_round:
                last = max(per_round, key=int)
                print(f"final {name} (round {last}): {per_round[last]}", file=out)


async def run_demo(options: DemoOptions, out: TextIO = sys.stdout) -> RunOutcome:
    """Run the demo; the caller decides the exit code from ``outcome.ok``."""
    if options.transport not in schemes():
        valid = ", ".join(schemes())
        raise ConfigError(f"unknown transport {options.transport!r}; valid: {valid}")
    spec = JobSpec.load(options.job_dir)
    install = FlowerInstall.find(options.flower_bin)
    install.require_supported()
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="flgate-demo-"))
    print(
        f"flgate demo: job {spec.name} on {options.sites} sites through the gateway "
        f"(flwr {install.version_text}); work directory {workdir}",
        file=out,
        flush=True,
    )
    outcome: RunOutcome | None = None
    endpoint = MetricsEndpoint(options.metrics, lambda: None) if options.metrics else None
    try:
        if endpoint is not None:
            await endpoint.start()
            print(
                f"metrics of the relay and the sites on {endpoint.url} while the demo runs",
                file=out,
                flush=True,
            )
        outcome = await run_app(
            spec,
            mode="gateway",
            workdir=workdir,
            install=install,
            sites=options.sites,
            run_config=options.run_config,
            on_progress=_progress_printer(out),
            transport=options.transport,
        )
        print_outcome(outcome, out)
        return outcome
    finally:
        if endpoint is not None:
            await endpoint.aclose()
        if outcome is not None and outcome.ok and not options.keep and options.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir}", file=out)
