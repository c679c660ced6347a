"""``flgate job ...``: submit and manage jobs with an admin certificate."""

from __future__ import annotations

import argparse
import functools
import io
import json
import sys
import tarfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

from google.protobuf.json_format import MessageToDict

from ..control.admin import AdminClient
from ..control.jobs.archive import LeftOut
from ..control.jobs.store import FINISHED
from ..core.identity import Role
from ..proto.control_pb2 import GetLogsResponse, JobInfo, SiteInfo
from .common import EXIT_JOB_FAILED, EXIT_OK, add_tls_options, relay_from, run, tls_from
from .job_follow import FollowView, Reconnecting, follow, format_value
from .table import format_table

T = TypeVar("T")


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    job = commands.add_parser("job", help="submit and manage jobs (admin certificate)")
    sub = job.add_subparsers(dest="action", metavar="ACTION", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, help=help_text, description=help_text)
        add_tls_options(parser)
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        return parser

    submit = command("submit", "submit an unmodified Flower app directory as a job")
    submit.add_argument("job_dir", type=Path, metavar="JOB_DIR")
    submit.add_argument(
        "--sites",
        help="comma-separated site names (default: the job file's "
        "min_sites sites among those online)",
    )
    submit.add_argument("--min-sites", type=int, default=0, help="number of sites to take")
    submit.add_argument(
        "--run-config", default="", metavar='"K=V ..."', help="run-config overrides"
    )
    submit.add_argument("--name", default="", help="job name (default: the job file's)")
    submit.add_argument("--time-limit", type=float, default=0.0, metavar="SECONDS")
    submit.add_argument(
        "--follow",
        action="store_true",
        help="show progress and each round's metrics until the job ends "
        "(riding out relay restarts)",
    )
    submit.set_defaults(func=_submit)

    command("list", "list jobs").set_defaults(func=_list)
    command(
        "sites", "list the federation's sites: online, transport, Flower, round trip, calls"
    ).set_defaults(func=_sites)
    status = command("status", "show one job")
    status.add_argument("job_id", metavar="ID")
    status.set_defaults(func=_status)

    logs = command("logs", "print a job's logs (the ServerApp's by default)")
    logs.add_argument("job_id", metavar="ID")
    logs.add_argument("--site", help="a site's SuperNode log instead")
    logs.add_argument("--source", help="server (default), superlink, or a site name")
    logs.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="keep printing until it ends (riding out relay restarts)",
    )
    logs.set_defaults(func=_logs)

    metrics = command(
        "metrics", "print a job's metric series per round, as the relay read them from its run"
    )
    metrics.add_argument("job_id", metavar="ID")
    metrics.add_argument(
        "--follow", "-f", action="store_true", help="print new points until the job ends"
    )
    metrics.add_argument(
        "--csv", action="store_true", help="tag,round,value lines (with a header) instead"
    )
    metrics.set_defaults(func=_metrics)

    abort = command("abort", "stop a job everywhere and record it as aborted")
    abort.add_argument("job_id", metavar="ID")
    abort.set_defaults(func=_abort)

    download = command("download", "download a job's logs and result")
    download.add_argument("job_id", metavar="ID")
    download.add_argument("-o", "--output", type=Path, required=True, metavar="DIR")
    download.set_defaults(func=_download)


def _client(args: argparse.Namespace) -> AdminClient:
    return AdminClient(relay_url=relay_from(args, Role.ADMIN), tls=tls_from(args, Role.ADMIN))


def _call(args: argparse.Namespace, operation: Callable[[AdminClient], Awaitable[T]]) -> T:
    """Run one admin operation on a fresh connection to the relay."""

    async def go() -> T:
        client = _client(args)
        try:
            return await operation(client)
        finally:
            await client.aclose()

    return run(go())


def _info_dict(info: JobInfo) -> dict[str, object]:
    data = MessageToDict(
        info, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    if info.result_json:
        data["result"] = json.loads(info.result_json)
        del data["result_json"]
    return data


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if seconds else "-"


JOB_COLUMNS = ("ID", "NAME", "STATE", "ROUND", "SITES", "SUBMITTED", "BY", "REASON")
SITE_COLUMNS = (
    "SITE",
    "ONLINE",
    "LAST SEEN",
    "TRANSPORT",
    "PATH",
    "FLOWER",
    "RTT MS",
    "CALLS/MIN",
    "ERRORS/MIN",
    "JOBS",
)
SITE_NUMBERS = ("RTT MS", "CALLS/MIN", "ERRORS/MIN")


def _print_table(jobs: list[JobInfo]) -> None:
    rows = [
        (
            job.job_id,
            job.name,
            job.state,
            f"{job.round}/{job.rounds}" if job.rounds else "-",
            ",".join(job.sites),
            _when(job.created),
            job.submitted_by,
            job.reason[:60],
        )
        for job in jobs
    ]
    print(format_table(JOB_COLUMNS, rows))


def _print_job(info: JobInfo) -> None:
    print(f"job {info.job_id} ({info.name}): {info.state}")
    if info.reason:
        print(f"  reason:     {info.reason}")
    print(f"  sites:      {', '.join(info.sites)}")
    print(f"  submitted:  {_when(info.created)} by {info.submitted_by}")
    if info.flower:
        print(f"  flower:     {info.flower}")
    if info.run_id:
        print(f"  flower run: {info.run_id}")
    if info.rounds:
        print(f"  progress:   round {info.round}/{info.rounds}")
    if info.fleet_calls:
        print(f"  fleet calls: {info.fleet_calls} answered by the relay")
    if info.run_config:
        print(f"  run-config: {info.run_config}")
    if info.result_json:
        print(f"  result:     {info.result_json}")


def _say(line: str) -> None:
    print(line, flush=True)


async def _follow(args: argparse.Namespace, job_id: str, view: FollowView) -> JobInfo:
    """Print ``view``'s lines until the job ends, reconnecting through relay restarts."""
    relay = Reconnecting(lambda: _client(args), write=_say)
    try:
        return await follow(relay, job_id, view, _say)
    finally:
        await relay.aclose()


def _print_left_out(left_out: Sequence[LeftOut], *, json_output: bool) -> None:
    """Say which files of the app were not packed (on stderr under --json, which owns stdout)."""
    count = len(left_out)
    print(
        f"left out {count} file{'s' if count != 1 else ''}: {', '.join(map(str, left_out))}",
        file=sys.stderr if json_output else sys.stdout,
        flush=True,
    )


def _submit(args: argparse.Namespace) -> int:
    async def go() -> JobInfo:
        client = _client(args)
        try:
            info = await client.submit(
                args.job_dir,
                sites=[s.strip() for s in args.sites.split(",")] if args.sites else None,
                min_sites=args.min_sites,
                run_config=args.run_config,
                name=args.name,
                time_limit=args.time_limit,
                on_left_out=lambda left_out: _print_left_out(left_out, json_output=args.json),
            )
            if not args.json:
                print(
                    f"submitted job {info.job_id} ({info.name}) to sites {', '.join(info.sites)}",
                    flush=True,
                )
        finally:
            await client.aclose()
        if args.follow:
            info = await _follow(args, info.job_id, FollowView())
        return info

    info = run(go())
    if args.json:
        print(json.dumps(_info_dict(info), indent=2))
    elif args.follow:
        _print_job(info)
    if args.follow and info.state != FINISHED:
        return EXIT_JOB_FAILED
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    jobs = _call(args, lambda client: client.list_jobs())
    if args.json:
        print(json.dumps([_info_dict(j) for j in jobs], indent=2))
    else:
        _print_table(jobs)
    return EXIT_OK


def _site_row(site: SiteInfo) -> tuple[str, ...]:
    """One line of ``job sites``; "-" for what the site never reported (agents of older
    releases send no status, and the first poll of an agent has no round trip yet). Its
    path is ``direct`` or ``via:EDGE``, the edge relay it is provisioned behind."""
    reported: tuple[str, ...] = ("-",) * 5
    if site.HasField("status"):
        status = site.status
        reported = (
            status.transport or "-",
            ",".join(status.flower_versions) or status.flower_version or "-",
            f"{status.rtt_ms:.1f}" if status.HasField("rtt_ms") else "-",
            str(status.calls_last_minute),
            str(status.errors_last_minute),
        )
    online = "yes" if site.online else "no"
    path = f"via:{site.via}" if site.via else "direct"
    return (
        site.name,
        online,
        _when(site.last_seen),
        reported[0],
        path,
        *reported[1:],
        ",".join(site.jobs) or "-",
    )


def _sites(args: argparse.Namespace) -> int:
    sites = _call(args, lambda client: client.list_sites())
    if args.json:
        # Zeros printed too (no errors is an answer); an unset status or round trip is
        # left out, as never reported.
        print(
            json.dumps(
                [
                    MessageToDict(
                        s,
                        preserving_proto_field_name=True,
                        always_print_fields_with_no_presence=True,
                    )
                    for s in sites
                ],
                indent=2,
            )
        )
        return EXIT_OK
    print(format_table(SITE_COLUMNS, [_site_row(s) for s in sites], right=SITE_NUMBERS))
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    info = _call(args, lambda client: client.get(args.job_id))
    if args.json:
        print(json.dumps(_info_dict(info), indent=2))
    else:
        _print_job(info)
    return EXIT_OK


async def _read_logs(
    job_id: str, source: str, offset: int, wait: float, client: AdminClient
) -> GetLogsResponse:
    return await client.logs(job_id, source=source, offset=offset, wait=wait)


def _logs(args: argparse.Namespace) -> int:
    source = args.site or args.source or "server"

    async def go() -> None:
        # Reading from an offset is safe to repeat: a follower rides out relay restarts.
        relay = Reconnecting(lambda: _client(args), write=lambda line: print(line, file=sys.stderr))
        wait = 20.0 if args.follow else 0.0
        try:
            offset = 0
            while True:
                chunk = await relay.call(
                    functools.partial(_read_logs, args.job_id, source, offset, wait)
                )
                sys.stdout.buffer.write(chunk.data)
                sys.stdout.flush()
                offset = chunk.next_offset
                if chunk.ended or (not args.follow and not chunk.data):
                    return
        finally:
            await relay.aclose()

    run(go())
    return EXIT_OK


def _metrics(args: argparse.Namespace) -> int:
    if args.follow:
        info = run(_follow(args, args.job_id, FollowView(metrics_only=True)))
        return EXIT_OK if info.state == FINISHED else EXIT_JOB_FAILED
    response = _call(args, lambda client: client.metrics(args.job_id))
    if args.json:
        series: dict[str, dict[str, float]] = {}
        for point in response.points:
            series.setdefault(point.tag, {})[str(point.step)] = point.value
        print(json.dumps({"job_id": args.job_id, "state": response.job.state, "series": series}))
    elif args.csv:
        print("tag,round,value")
        for point in response.points:
            print(f"{point.tag},{point.step},{format_value(point.value)}")
    else:
        tags = sorted({p.tag for p in response.points})
        steps = sorted({p.step for p in response.points})
        cell = {(p.tag, p.step): format_value(p.value) for p in response.points}
        rows = [(str(step), *(cell.get((tag, step), "-") for tag in tags)) for step in steps]
        print(format_table(("ROUND", *tags), rows, right=("ROUND", *tags)))
    return EXIT_OK


def _abort(args: argparse.Namespace) -> int:
    info = _call(args, lambda client: client.abort(args.job_id))
    if args.json:
        print(json.dumps(_info_dict(info), indent=2))
    else:
        print(f"job {info.job_id}: {info.state} ({info.reason})")
    return EXIT_OK


def _download(args: argparse.Namespace) -> int:
    data = _call(args, lambda client: client.download(args.job_id))
    args.output.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(args.output, filter="data")
    target = args.output / args.job_id
    print(
        json.dumps({"job_id": args.job_id, "path": str(target)})
        if args.json
        else f"downloaded job {args.job_id} to {target}"
    )
    return EXIT_OK
