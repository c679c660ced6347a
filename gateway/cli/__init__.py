"""``flgate``: the command line. Only this package parses arguments, prints and exits."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from ..control.jobs.spec import parse_run_config
from ..core import logs
from ..core.exceptions import ConfigError, GatewayError
from ..harness.demo import DemoOptions, default_job_dir, run_demo
from ..observability.endpoint import RELAY_DEFAULT
from ..transport import schemes
from . import bench_cmd, compare_cmd, console_cmd, edge_cmd, job_cmd, provision_cmd, serve_cmd
from .common import (
    EXIT_CONFIG,
    EXIT_GATEWAY_ERROR,
    EXIT_INTERRUPTED,
    EXIT_JOB_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    LOG_FORMAT_ENV,
    add_log_options,
    add_metrics_options,
    log_format_from,
    metrics_listen_from,
    run,
)


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.sites < 1:
        raise ConfigError("--sites must be at least 1")
    options = DemoOptions(
        job_dir=args.job or default_job_dir(),
        sites=args.sites,
        run_config=parse_run_config(args.run_config) if args.run_config else None,
        flower_bin=args.flower_bin,
        workdir=args.workdir,
        keep=args.keep,
        transport=args.transport,
        metrics=metrics_listen_from(args, None, RELAY_DEFAULT),
    )
    outcome = run(run_demo(options))
    if outcome.ok:
        print("demo finished: the job completed through the gateway")
        return EXIT_OK
    print(
        f"demo failed: flwr run exited {outcome.exit_code}, run status {outcome.status}; "
        "see the run log above and the logs in the work directory",
        file=sys.stderr,
    )
    return EXIT_JOB_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flgate",
        description="Run unmodified Flower apps across sites through one relay.",
    )
    parser.add_argument("--version", action="version", version=f"flgate {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    add_log_options(parser, default=os.environ.get(LOG_FORMAT_ENV, "text"))
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="run a job end to end on a throw-away local federation",
        description="Create certificates, start a relay, N sites, a SuperLink and N "
        "SuperNodes on localhost, run the job with `flwr run`, print its log and "
        "result, and stop everything. Exit code 0 when the run completed.",
    )
    demo.add_argument(
        "--job", type=Path, help="Flower app directory (default: jobs/quickstart-numpy)"
    )
    demo.add_argument("--sites", type=int, default=2, help="number of sites (default: 2)")
    demo.add_argument(
        "--run-config", metavar='"K=V ..."', help="run-config overrides passed to flwr run"
    )
    demo.add_argument(
        "--flower-bin",
        type=Path,
        metavar="DIR",
        help="bin directory of the Flower installation to use (default: this Python's)",
    )
    demo.add_argument(
        "--workdir", type=Path, help="keep certificates and logs here (default: a temp dir)"
    )
    demo.add_argument("--keep", action="store_true", help="keep the work directory on success")
    demo.add_argument(
        "--transport",
        default="grpcs",
        metavar="SCHEME",
        help="how sites reach the relay: " + ", ".join(schemes()) + " (default: grpcs)",
    )
    add_log_options(demo)
    add_metrics_options(demo, RELAY_DEFAULT)
    demo.set_defaults(func=_cmd_demo)
    serve_cmd.add_commands(commands)
    edge_cmd.add_commands(commands)
    compare_cmd.add_commands(commands)
    job_cmd.add_commands(commands)
    provision_cmd.add_commands(commands)
    bench_cmd.add_commands(commands)
    console_cmd.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        logs.configure(args.verbose, log_format_from(args))
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"flgate: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except GatewayError as exc:
        print(f"flgate: error: {exc}", file=sys.stderr)
        return EXIT_GATEWAY_ERROR
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("flgate: interrupted; every process it started was stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    return code
