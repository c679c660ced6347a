"""``flgate bench``: what the gateway costs, direct vs through the gateway, per transport."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from ..bench.paths import check_schemes, default_schemes
from ..bench.report import NUMERIC_COLUMNS, TABLE_HEADER, BenchReport, table_rows, write_json
from ..bench.suite import BenchOptions, run_bench
from ..harness.demo import default_job_dir
from ..transport import schemes
from .common import EXIT_GATEWAY_ERROR, EXIT_OK, add_log_options, run
from .table import format_table

DEFAULT_OUT = Path("bench.json")


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "bench",
        help="measure the gateway's overhead against a real SuperLink, per transport",
        description="Against a real flower-superlink, measure directly and through the "
        "gateway (a relay and a site-gateway process per transport), alternating: latency "
        "of small Fleet calls, PushObject/PullObject throughput with 5 MiB objects, whole "
        "Flower runs, capacity with 200 synthetic nodes, and the relay's and site's peak "
        "memory while a large model goes through. Prints a table with both figures, their "
        "ratio and the targets (goals, not assertions) and writes a JSON file. Progress "
        "goes to stderr. About 10 minutes; --quick about 2. Exit code 0 when every figure "
        "was measured, 3 on a configuration error, 4 when a step failed.",
    )
    parser.add_argument(
        "--transport",
        action="append",
        metavar="SCHEME",
        help="a transport to measure, repeatable (one of: "
        f"{', '.join(schemes())}; default: every secure one that runs here)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer samples, small models, whole runs of one round",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        metavar="FILE",
        help=f"where the JSON results go (default: ./{DEFAULT_OUT})",
    )
    parser.add_argument(
        "--flower-bin",
        type=Path,
        metavar="DIR",
        help="bin directory of the Flower installation to use (flwr >= 1.40; "
        "default: this Python's)",
    )
    parser.add_argument(
        "--job",
        type=Path,
        metavar="DIR",
        help="the app of the whole-run step (default: jobs/quickstart-numpy; it needs "
        "its model-mib run-config knob)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        metavar="DIR",
        help="keep certificates and every process's log here (default: a temp dir, removed)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="write cProfile stats of the relay and site processes into DIR "
        "(slows them down: figures from such a run are not comparable)",
    )
    add_log_options(parser)
    parser.set_defaults(func=_cmd_bench)


def options_from(args: argparse.Namespace) -> BenchOptions:
    skipped: dict[str, str] = {}
    if args.transport:
        transports = check_schemes(args.transport)
    else:
        transports, skipped = default_schemes()
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    return BenchOptions(
        transports=transports,
        skipped=skipped,
        quick=args.quick,
        job_dir=args.job or default_job_dir(),
        flower_bin=args.flower_bin,
        workdir=args.workdir,
        profile_dir=args.profile.resolve() if args.profile else None,
    )


def progress_printer(out: TextIO) -> Callable[[str], None]:
    """One line per step on ``out``, with the seconds since the start."""
    started = time.monotonic()

    def show(text: str) -> None:
        print(f"[bench {time.monotonic() - started:6.1f}s] {text}", file=out, flush=True)

    return show


def render(report: BenchReport) -> str:
    """The whole printed report: the table, then what was skipped."""
    text = format_table(TABLE_HEADER, table_rows(report), right=NUMERIC_COLUMNS, rule=True)
    notes = [f"{scheme}: skipped, {reason}" for scheme, reason in report.skipped.items()]
    return text + ("\n" + "\n".join(notes) if notes else "")


def print_report(report: BenchReport, out_path: Path, out: TextIO) -> None:
    mode = "quick" if report.quick else "full"
    print(
        f"flgate bench ({mode}), flwr {report.flower_version}, {report.cpus} CPUs, "
        f"{report.seconds:.0f} s; ratio = gateway / direct, added = gateway - direct",
        file=out,
    )
    print(render(report), file=out)
    print(f"results: {out_path}", file=out, flush=True)


async def bench_command(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """The command without the event loop (tests can await it)."""
    options = options_from(args)
    notify = progress_printer(sys.stderr)
    for scheme, reason in options.skipped.items():
        notify(f"{scheme}: skipped, {reason}")
    report = await run_bench(options, notify)
    write_json(report, args.out)
    print_report(report, args.out, out)
    missing = report.missing()
    if missing:
        print(f"flgate bench: figures missing or not positive: {', '.join(missing)}", file=out)
        return EXIT_GATEWAY_ERROR
    return EXIT_OK


def _cmd_bench(args: argparse.Namespace) -> int:
    return run(bench_command(args))
