"""Run the app directly and through the gateway at the same time, and compare.

:func:`compare_app` checks the options before anything starts, runs both modes
with :func:`gateway.harness.local_run.run_app` at once, reports each run's
progress to a callback and hands the results to :mod:`.model`.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ...control.jobs.spec import JobSpec, RunConfigValue
from ...core.exceptions import ConfigError, GatewayError
from ...flower.install import FlowerInstall
from ...transport import schemes
from ..local_run import Mode, Progress, run_app
from .model import MODES, CompareReport, compare_summaries, summarize

ROUNDS_KEY = "num-server-rounds"


def validate_transport(scheme: str) -> str:
    """The scheme, lower-cased, if a transport implements it; the error lists the valid ones."""
    normalized = scheme.lower().removesuffix("://")
    if normalized not in schemes():
        valid = ", ".join(schemes())
        raise ConfigError(f"unknown transport {scheme!r}; valid: {valid}")
    return normalized


@dataclass(frozen=True)
class CompareOptions:
    """What to compare and how.

    ``gateway_run_config`` is a test hook: run-config overrides for the gateway
    run only, so a test can prove that a real difference (another seed) is caught.
    """

    job_dir: Path
    sites: int = 2
    rounds: int | None = None
    """Sets the run-config's ``num-server-rounds``; ``None`` keeps the app's."""
    transport: str = "grpcs"
    tolerance: float = 0.0
    """0: every metric and the final parameter hash must be bit-identical."""
    run_config: dict[str, RunConfigValue] = field(default_factory=dict)
    flower_bin: Path | None = None
    out: Path | None = None
    """Where the reports go; default ``./compare-<job name>``."""
    workdir: Path | None = None
    """Where the runs keep certificates and Flower logs; default a temporary
    directory, removed when both runs completed."""
    gateway_run_config: dict[str, RunConfigValue] = field(default_factory=dict)


ProgressCallback = Callable[[str, Progress], None]


def _prepare(options: CompareOptions) -> tuple[JobSpec, dict[str, RunConfigValue], str]:
    spec = JobSpec.load(options.job_dir)
    transport = validate_transport(options.transport)
    if options.sites < spec.min_sites:
        raise ConfigError(f"job {spec.name} needs at least {spec.min_sites} sites; use --sites")
    if options.rounds is not None and options.rounds < 1:
        raise ConfigError("--rounds must be at least 1")
    if options.tolerance < 0 or math.isnan(options.tolerance):
        raise ConfigError("--tolerance must be >= 0")
    config = {**spec.run_config, **options.run_config}
    if options.rounds is not None:
        config[ROUNDS_KEY] = options.rounds
    return spec, config, transport


def _tagged(notify: ProgressCallback, mode: Mode) -> Callable[[Progress], None]:
    return lambda progress: notify(mode, progress)


async def compare_app(
    options: CompareOptions, on_progress: ProgressCallback | None = None
) -> CompareReport:
    """Run the app directly and through the gateway at once, and compare the results.

    Configuration errors raise :class:`ConfigError` before anything starts; a run
    that fails or reports nothing makes a report with :attr:`CompareReport.error`.
    """
    spec, config, transport = _prepare(options)
    install = FlowerInstall.find(options.flower_bin)
    install.require_supported()
    out = options.out or Path.cwd() / f"compare-{spec.name}"
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix=f"flgate-compare-{spec.name}-"))
    notify = on_progress or (lambda _mode, _p: None)
    started = time.monotonic()
    side_config = {"direct": config, "gateway": {**config, **options.gateway_run_config}}
    runs = await asyncio.gather(
        *(
            run_app(
                spec,
                mode=mode,
                workdir=workdir / mode,
                install=install,
                sites=options.sites,
                run_config=side_config[mode],
                on_progress=_tagged(notify, mode),
                transport=transport,
            )
            for mode in MODES
        ),
        return_exceptions=True,
    )
    report = CompareReport(
        job=spec.name,
        app_dir=spec.app_dir,
        flower_version=install.version_text,
        transport=transport,
        sites=options.sites,
        run_config=config,
        tolerance=options.tolerance,
        out=out,
        workdir=workdir,
        outcomes={},
        seconds=time.monotonic() - started,
        gateway_run_config=dict(options.gateway_run_config),
    )
    errors = []
    for mode, run in zip(MODES, runs, strict=True):
        if isinstance(run, BaseException):
            if not isinstance(run, GatewayError):
                raise run
            report.outcomes[mode] = None
            errors.append(f"the {mode} run failed: {run}")
            continue
        report.outcomes[mode] = run
        if not run.ok:
            errors.append(
                f"the {mode} run did not complete (flwr run exited {run.exit_code}, "
                f"status {run.status}); its log is in {workdir / mode}"
            )
            continue
        try:
            report.summaries[mode] = summarize(run)
        except ConfigError as exc:
            errors.append(str(exc))
    if errors:
        report.error = "; ".join(errors)
    else:
        report.comparison = compare_summaries(
            report.summaries["direct"], report.summaries["gateway"], tolerance=options.tolerance
        )
    if report.error is None and options.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return report
