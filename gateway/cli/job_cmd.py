"""``flgate job ...``: submit and manage jobs with an admin certificate."""

from __future__ import annotations

import argparse
import asyncio
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
from ..control.jobs.store import FINAL_STATES, FINISHED
from ..core.identity import Role
from ..proto.control_pb2 import JobInfo, SiteInfo
from .common import EXIT_JOB_FAILED, EXIT_OK, add_tls_options, relay_from, run, tls_from
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
        "--follow", action="store_true", help="show progress per round until the job ends"
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
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing until it ends")
    logs.set_defaults(func=_logs)

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


async def _follow(client: AdminClient, job_id: str) -> JobInfo:
    """Print state changes and rounds until the job ends."""
    last = ("", 0)
    while True:
        info = await client.get(job_id)
        now = (info.state, info.round)
        if now != last:
            progress = f" round {info.round}/{info.rounds}" if info.rounds else ""
            print(
                f"[{time.strftime('%H:%M:%S')}] {info.state}{progress}"
                f"{' - ' + info.reason if info.reason else ''}",
                flush=True,
            )
            last = now
        if info.state in FINAL_STATES:
            return info
        await asyncio.sleep(1.0)


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
            if args.follow:
                info = await _follow(client, info.job_id)
            return info
        finally:
            await client.aclose()

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
    releases send no status, and the first poll of an agent has no round trip yet)."""
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
    return (site.name, online, _when(site.last_seen), *reported, ",".join(site.jobs) or "-")


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


def _logs(args: argparse.Namespace) -> int:
    source = args.site or args.source or "server"

    async def go() -> None:
        client = _client(args)
        try:
            offset = 0
            while True:
                chunk = await client.logs(
                    args.job_id, source=source, offset=offset, wait=20.0 if args.follow else 0.0
                )
                sys.stdout.buffer.write(chunk.data)
                sys.stdout.flush()
                offset = chunk.next_offset
                if chunk.ended or (not args.follow and not chunk.data):
                    return
        finally:
            await client.aclose()

    run(go())
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
