"""Whole Flower runs, directly and through the gateway: what an operator waits for.

The bundled ``jobs/quickstart-numpy`` app (2 sites) with its ``model-mib``
knob, run with :func:`gateway.harness.local_run.run_app`; the gateway runs keep
the relay and site gateways in the bench's process, as ``flgate demo`` does.
The time is from the run's submission (``flwr run``) to its end: SuperLinks
and SuperNodes are long-lived in production, a run is what an operator waits
for, and start-up common to both sides would only pull the ratio towards 1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..control.jobs.spec import JobSpec
from ..core.exceptions import JobError
from ..flower.install import FlowerInstall
from ..harness.local_run import Mode, RunOutcome, run_app

SITES = 2


@dataclass(frozen=True)
class RunKnobs:
    """The run configuration every path gets."""

    rounds: int
    model_mib: int
    fraction_evaluate: float


@dataclass(frozen=True)
class WholeRun:
    path: str
    seconds: float
    """From submission to the run's end."""
    rounds: int
    model_mib: int


async def _one(
    spec: JobSpec,
    install: FlowerInstall,
    workdir: Path,
    path: str,
    knobs: RunKnobs,
) -> WholeRun:
    mode: Mode = "direct" if path == "direct" else "gateway"
    outcome: RunOutcome = await run_app(
        spec,
        mode=mode,
        workdir=workdir / f"run-{path}",
        install=install,
        sites=SITES,
        run_config={
            "num-server-rounds": knobs.rounds,
            "model-mib": knobs.model_mib,
            "fraction-evaluate": knobs.fraction_evaluate,
        },
        transport="grpcs" if path == "direct" else path,
    )
    if not outcome.ok:
        raise JobError(
            f"the {path} run of {spec.name} ended {outcome.status or 'without a status'} "
            f"(flwr run exit {outcome.exit_code}); logs in {outcome.workdir}"
        )
    return WholeRun(
        path=path, seconds=outcome.run_seconds, rounds=knobs.rounds, model_mib=knobs.model_mib
    )


async def measure_runs(
    job_dir: Path,
    install: FlowerInstall,
    workdir: Path,
    paths: Sequence[str],
    knobs: RunKnobs,
    *,
    together: bool,
    notify: Callable[[str], None],
) -> list[WholeRun]:
    """One run per path (``direct`` or a scheme): each alone on the machine, or all at once.

    All at once is what ``--quick`` does: five short runs one after another
    take about two minutes on two cores, together about one and a half (a run
    is mostly the start of a dozen Python processes), and the times are then
    indicative. Starting every run's processes before the bench's other steps
    was tried: idle, they still slowed those steps by as much as it saved.
    """
    spec = JobSpec.load(job_dir)
    if together:
        notify(f"whole runs: {', '.join(paths)} at the same time")
        return list(await asyncio.gather(*(_one(spec, install, workdir, p, knobs) for p in paths)))
    results = []
    for path in paths:
        notify(f"whole run: {path} ({knobs.rounds} rounds, {knobs.model_mib} MiB model)")
        result = await _one(spec, install, workdir, path, knobs)
        notify(f"whole run: {path} took {result.seconds:.1f} s")
        results.append(result)
    return results
