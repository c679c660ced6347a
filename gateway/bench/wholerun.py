"""Whole Flower runs, directly and through the gateway: what an operator waits for.

The bundled ``jobs/quickstart-numpy`` app (2 sites) with its ``model-mib``
knob, run with :func:`gateway.jobs.local_run.run_app`; the gateway runs keep
the relay and site gateways in the bench's process, as ``flgate demo`` does.
The time is from the SuperLink's start to the run's recorded end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..exceptions import JobError
from ..flower.install import FlowerInstall
from ..jobs.local_run import Mode, RunOutcome, run_app
from ..jobs.spec import JobSpec

SITES = 2


@dataclass(frozen=True)
class WholeRun:
    path: str
    seconds: float
    rounds: int
    model_mib: int


async def _one(
    spec: JobSpec,
    install: FlowerInstall,
    workdir: Path,
    path: str,
    *,
    rounds: int,
    model_mib: int,
    fraction_evaluate: float,
) -> WholeRun:
    mode: Mode = "direct" if path == "direct" else "gateway"
    outcome: RunOutcome = await run_app(
        spec,
        mode=mode,
        workdir=workdir / f"run-{path}",
        install=install,
        sites=SITES,
        run_config={
            "num-server-rounds": rounds,
            "model-mib": model_mib,
            "fraction-evaluate": fraction_evaluate,
        },
        transport="grpcs" if path == "direct" else path,
    )
    if not outcome.ok:
        raise JobError(
            f"the {path} run of {spec.name} ended {outcome.status or 'without a status'} "
            f"(flwr run exit {outcome.exit_code}); logs in {outcome.workdir}"
        )
    return WholeRun(path=path, seconds=outcome.seconds, rounds=rounds, model_mib=model_mib)


async def measure_runs(
    job_dir: Path,
    install: FlowerInstall,
    workdir: Path,
    paths: Sequence[str],
    *,
    rounds: int,
    model_mib: int,
    fraction_evaluate: float,
    concurrent: bool,
    notify: Callable[[str], None],
) -> list[WholeRun]:
    """One run per path (``direct`` or a scheme), one after another or all at once."""
    spec = JobSpec.load(job_dir)
    one = partial(
        _one,
        spec,
        install,
        workdir,
        rounds=rounds,
        model_mib=model_mib,
        fraction_evaluate=fraction_evaluate,
    )
    if concurrent:
        notify(f"whole runs: {', '.join(paths)} at the same time")
        return list(await asyncio.gather(*(one(p) for p in paths)))
    results = []
    for path in paths:
        notify(f"whole run: {path} ({rounds} rounds, {model_mib} MiB model)")
        result = await one(path)
        notify(f"whole run: {path} took {result.seconds:.1f} s")
        results.append(result)
    return results
