"""``flgate compare``: run an app directly and through the gateway, and prove the results match."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from ..control.jobs.spec import parse_run_config
from ..core.exceptions import ConfigError
from ..harness.compare.model import CompareReport
from ..harness.compare.report import NUMERIC_COLUMNS, TABLE_HEADER, table_rows, write_reports
from ..harness.compare.runs import CompareOptions, compare_app
from ..harness.local_run import Progress
from ..transport import schemes
from .common import EXIT_JOB_FAILED, EXIT_OK, add_log_options, run
from .table import format_table


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "compare",
        help="run a Flower app directly and through the gateway and compare the results",
        description="Run the app twice at the same time on localhost, with the same seeds: "
        "once with its SuperNodes dialing the SuperLink directly, once through a relay and "
        "site gateways. Print the metrics of both runs side by side, per round, compare the "
        "final parameter hashes, and write report.md, report.json and curves.png. "
        "Exit code 0 when the results are identical (or within --tolerance), 1 when they "
        "differ or a run failed, 3 on a configuration error.",
    )
    parser.add_argument("job", type=Path, metavar="JOB_DIR", help="the Flower app directory")
    parser.add_argument("--sites", type=int, default=2, help="number of sites (default: 2)")
    parser.add_argument(
        "--rounds", type=int, help="number of rounds (sets run-config num-server-rounds)"
    )
    parser.add_argument(
        "--transport",
        default="grpcs",
        metavar="SCHEME",
        help=f"transport between sites and relay (one of: {', '.join(schemes())}; default: grpcs)",
    )
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="where the reports go (default: ./compare-JOB)"
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        metavar="T",
        help="allowed absolute difference per metric value (default: 0, bit-identical; "
        "with T > 0 the final parameter hashes are reported but not required to match)",
    )
    parser.add_argument(
        "--flower-bin",
        type=Path,
        metavar="DIR",
        help="bin directory of the Flower installation to use (default: this Python's)",
    )
    parser.add_argument(
        "--run-config", metavar='"K=V ..."', help="run-config overrides for both runs"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="keep the runs' certificates and Flower logs here (default: a temp dir, "
        "removed when both runs completed)",
    )
    add_log_options(parser)
    parser.set_defaults(func=_cmd_compare)


def options_from(args: argparse.Namespace) -> CompareOptions:
    if args.sites < 1:
        raise ConfigError("--sites must be at least 1")
    return CompareOptions(
        job_dir=args.job,
        sites=args.sites,
        rounds=args.rounds,
        transport=args.transport,
        tolerance=args.tolerance,
        run_config=parse_run_config(args.run_config) if args.run_config else {},
        flower_bin=args.flower_bin,
        out=args.out,
        workdir=args.workdir,
    )


def _check_plotting() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            "flgate compare draws curves.png with matplotlib: "
            "pip install matplotlib (or the package's [flower] extra)"
        ) from exc


def _progress_printer(out: TextIO) -> Callable[[str, Progress], None]:
    width = len("gateway")

    def show(mode: str, progress: Progress) -> None:
        if progress.stage == "round":
            text = f"round {progress.round}/{progress.rounds} started"
        elif progress.stage in ("start", "done"):
            text = progress.text
        else:
            return
        print(f"  [{mode:<{width}}] {text}", file=out, flush=True)

    return show


def print_report(report: CompareReport, paths: Sequence[Path], out: TextIO) -> None:
    comparison = report.comparison
    if comparison is not None:
        print("", file=out)
        table = format_table(TABLE_HEADER, table_rows(comparison), right=NUMERIC_COLUMNS, rule=True)
        print(table, file=out)
        equal = comparison.hash_equal
        verdict = {True: "equal", False: "DIFFERENT", None: "not reported"}[equal]
        if equal is False and not comparison.hash_required:
            verdict += f" (not required with --tolerance {comparison.tolerance:g})"
        print(
            f"\nfinal parameters sha256: direct {comparison.direct_sha256 or '-'}\n"
            f"                         gateway {comparison.gateway_sha256 or '-'}: {verdict}",
            file=out,
        )
    seconds = ", ".join(
        f"{mode} {outcome.seconds:.1f} s" for mode, outcome in report.outcomes.items() if outcome
    )
    print(f"runs: {seconds or '-'}; wall time {report.seconds:.1f} s", file=out)
    print(f"reports: {', '.join(str(p) for p in paths[:3])}", file=out)
    if report.error is not None:
        print(f"work directory kept: {report.workdir}", file=out)


async def compare_command(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """The whole command without the event loop, so tests can run several at once."""
    return await compare_and_report(options_from(args), out)


async def compare_and_report(options: CompareOptions, out: TextIO = sys.stdout) -> int:
    """Compare, print the table and verdict, write the reports; return the exit code."""
    _check_plotting()
    print(
        f"flgate compare: {options.job_dir}, {options.sites} sites, direct and through the "
        f"gateway ({options.transport}) at the same time",
        file=out,
        flush=True,
    )
    report = await compare_app(options, on_progress=_progress_printer(out))
    paths = write_reports(report)
    print_report(report, paths, out)
    if report.passed:
        print(f"PASSED: {report.message}", file=out, flush=True)
        return EXIT_OK
    print(f"FAILED: {report.message}", file=out, flush=True)
    return EXIT_JOB_FAILED


def _cmd_compare(args: argparse.Namespace) -> int:
    return run(compare_command(args))
