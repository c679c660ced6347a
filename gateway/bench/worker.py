"""The gateway's halves as processes of their own, so each has its own RSS and CPU.

``python -m gateway.bench.worker relay ...`` runs a relay as ``flgate relay
start`` builds it (SQLite dedup store in its workspace) with the bench's job
routes; ``... site ...`` runs a site gateway with one LGS per job; ``... edge ...``
runs an edge relay as ``flgate edge start`` builds it; ``... stub``
answers every Fleet call at once with an empty success (the relay-only ceiling
of the capacity step: the same path, with the SuperLink's own cost taken out).
Each writes a JSON ready file once it serves and runs until SIGTERM.

With ``--tracking JOB`` the relay keeps the client-side tracking records that its
site pushes for ``JOB`` (``PushTracking``) as the job manager does: checked again
and stored in a job store in its workspace and in TensorBoard files, through
:mod:`gateway.control.jobs.series_keeper`; with ``--tracking`` a site runs the
agent's tracking receiver and shipping (:class:`~gateway.control.site_tracking.SiteTracking`)
for its first job and puts the writer's environment in its ready file
(``tracking_env``). The bench's flood step (:mod:`.flood`) needs both.

With ``--edge EDGE=SITE`` a relay carries the envelopes that ``SITE`` signs and the
edge relay ``EDGE`` brings (as a relay kit's ``edges`` map says), and lets ``SITE``
into every job; with ``--sign`` a site signs every envelope, as a site behind an edge
relay does. The edge path of the bench (see :mod:`.paths`) needs both.

With ``--metrics`` a relay or site serves its Prometheus metrics on a free
loopback port (``metrics_port`` in the ready file) and records them, as
``flgate relay start`` and ``flgate site start`` do by default; without it
nothing is recorded, as with ``--metrics-listen off``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from aiohttp import web
from google.protobuf.message import DecodeError

from ..control.jobs.series_keeper import SeriesKeeper
from ..control.jobs.store import JobStore
from ..control.site_tracking import SiteTracking
from ..core import eventloop, fleet, logs
from ..core.config import TLSConfig
from ..core.exceptions import AuthError, GatewayError, ProtocolError, UnknownMethodError
from ..core.failures import reply_for_error
from ..core.identity import Peer, Role
from ..core.memory import collecting_garbage_less_often
from ..core.signing import CertificateChecker
from ..core.site_signing import CarriedEnvelopes
from ..edge import EdgeRelay
from ..observability.endpoint import MetricsEndpoint, MetricsListen
from ..proto.bench_fleet_pb2 import PullObjectResponse, PushObjectResponse
from ..proto.control_pb2 import PushTrackingRequest, PushTrackingResponse
from ..proto.envelope_pb2 import DIALECT_HTTP, KIND_AGENT, Envelope, Reply
from ..relay.dispatcher import ControlHandler
from ..relay.server import Relay
from ..reliable import SqliteDedupStore
from ..site.gateway import SiteGateway
from ..tracking.exporters import Exporters, JobRun, TensorBoardExporter
from .flower_app import CHUNK_BYTES

# SendNodeHeartbeatResponse{success: true}; every other empty Fleet answer is b"".
_HEARTBEAT_OK = b"\x08\x01"
_STORED = PushObjectResponse(stored=True).SerializeToString()


def _tls(args: argparse.Namespace) -> TLSConfig:
    return TLSConfig(ca_cert=args.ca, cert=args.cert, key=args.key)


def _write_ready(path: Path, payload: dict[str, object]) -> None:
    """Write atomically, so the bench never reads half a file."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(payload))
    os.replace(temporary, path)


@contextlib.asynccontextmanager
async def _metrics(on: bool) -> AsyncIterator[dict[str, object]]:
    """With ``on``, serve /metrics (which starts recording); the ready file's entries."""
    if not on:
        yield {}
        return
    endpoint = MetricsEndpoint(MetricsListen("127.0.0.1", 0), lambda: None)
    await endpoint.start()
    try:
        yield {"metrics_port": endpoint.port}
    finally:
        await endpoint.aclose()


async def _until_terminated() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def _push_tracking(keeper: SeriesKeeper, job_id: str, site: str) -> ControlHandler:
    """The relay's control plane reduced to ``PushTracking`` of one job and site, kept
    as ``ControlService`` and ``JobManager.push_tracking`` keep it (the same checks and
    :class:`SeriesKeeper`); anything else is refused."""

    async def handle(peer: Peer, envelope: Envelope) -> Reply:
        try:
            if envelope.kind != KIND_AGENT or envelope.method != "PushTracking":
                raise UnknownMethodError(f"no operation {envelope.method!r} in the bench")
            if peer.role is not Role.SITE:
                raise AuthError(f"{peer} may not push tracking records")
            try:
                request = PushTrackingRequest.FromString(envelope.body)
            except DecodeError as exc:
                raise ProtocolError("malformed PushTracking request") from exc
            if request.job_id != job_id or peer.name != site:
                raise AuthError(f"site {peer.name} is not part of job {request.job_id}")
            points = await keeper.check_site(peer.name, request)
            over = await keeper.keep_site(request.job_id, points)
        except GatewayError as exc:
            return reply_for_error(envelope.message_id, exc)
        response = PushTrackingResponse(kept=len(points) - over, over_limit=over)
        return Reply(
            message_id=envelope.message_id, http_status=200, body=response.SerializeToString()
        )

    return handle


@contextlib.contextmanager
def _tracking(relay: Relay, args: argparse.Namespace) -> Iterator[None]:
    """With ``--tracking JOB``, keep ``JOB``'s client-side records as a real relay does."""
    if args.tracking is None:
        yield
        return
    store = JobStore(args.workspace / "jobs.db")
    exporters = Exporters([TensorBoardExporter()])
    job_dir = args.workspace / "jobs" / args.tracking
    exporters.start(JobRun(args.tracking, args.tracking, job_dir, (args.site,)))
    relay.dispatcher.control = _push_tracking(
        SeriesKeeper(store, exporters), args.tracking, args.site
    )
    try:
        yield
    finally:
        exporters.end(args.tracking, "finished")
        exporters.close()
        store.close()


def _edges(args: argparse.Namespace) -> dict[str, list[str]]:
    """``--edge EDGE=SITE`` options as a relay kit's ``edges`` map."""
    edges: dict[str, list[str]] = {}
    for entry in args.edge:
        edge, _, site = entry.partition("=")
        edges.setdefault(edge, []).append(site)
    return edges


async def _relay(args: argparse.Namespace) -> None:
    args.workspace.mkdir(parents=True, exist_ok=True)
    relay = Relay(
        listen_urls=[args.listen],
        tls=_tls(args),
        dedup_store=SqliteDedupStore(args.workspace / "dedup.db"),
    )
    edges = _edges(args)
    if edges:
        # As RelayApp sets it up from the relay kit's edges map.
        relay.dispatcher.carried = CarriedEnvelopes(
            CertificateChecker(args.ca.read_bytes()), edges=edges
        )
    sites = frozenset([args.site, *(s for behind in edges.values() for s in behind)])
    with _tracking(relay, args):
        await _serve_relay(relay, args, sites)


async def _serve_relay(relay: Relay, args: argparse.Namespace, sites: frozenset[str]) -> None:
    """Serve every route to ``sites`` (the bench's site and those behind its edges)."""
    async with _metrics(args.metrics) as ready:
        await relay.start()
        try:
            for route in args.route:
                job, _, superlink = route.partition("=")
                relay.add_job(job, sites=sites, dialect=DIALECT_HTTP, superlink=superlink)
            _write_ready(args.ready, {"port": relay.port, **ready})
            await _until_terminated()
        finally:
            await relay.aclose()


async def _site(args: argparse.Namespace) -> None:
    async with _metrics(args.metrics) as ready:
        gateway = SiteGateway(name=args.name, relay_url=args.relay, tls=_tls(args), sign=args.sign)
        tracking: SiteTracking | None = None
        try:
            addresses = {}
            for job in args.job:
                lgs = await gateway.open_job(job, DIALECT_HTTP)
                addresses[job] = lgs.address
            if args.tracking:
                tracking = SiteTracking(gateway.client, workspace=Path("site-workspace").resolve())
                await tracking.start()
                ready["tracking_env"] = tracking.add_job(args.job[0])
            _write_ready(args.ready, {"lgs": addresses, **ready})
            await _until_terminated()
        finally:
            if tracking is not None:
                await tracking.aclose()
            await gateway.aclose()


async def _edge(args: argparse.Namespace) -> None:
    """An edge relay between the sites of ``--sites`` and the relay at ``--upstream``."""
    edge = EdgeRelay(
        name=args.name,
        listen_urls=[args.listen],
        upstream_url=args.upstream,
        tls=_tls(args),
        sites=args.sites.split(","),
    )
    await edge.start()
    try:
        _write_ready(args.ready, {"port": edge.ports[0]})
        await _until_terminated()
    finally:
        await edge.aclose()


def _stub_answers() -> dict[str, bytes]:
    """Fleet answer bodies by HTTP path; a random object, so nothing on the way compresses it."""
    an_object = PullObjectResponse(
        object_found=True, object_available=True, object_content=os.urandom(CHUNK_BYTES)
    )
    return {
        fleet.http_path_for("SendNodeHeartbeat"): _HEARTBEAT_OK,
        fleet.http_path_for("PullObject"): an_object.SerializeToString(),
        fleet.http_path_for("PushObject"): _STORED,
    }


async def _stub(args: argparse.Namespace) -> None:
    answers = _stub_answers()

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        body = answers.get(request.path, b"")
        return web.Response(body=body, content_type=fleet.PROTOBUF_MEDIA_TYPE)

    app = web.Application(client_max_size=2 * CHUNK_BYTES)
    app.router.add_post("/v1/fleet/{name}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    site = web.SockSite(runner, sock)
    await site.start()
    try:
        _write_ready(args.ready, {"address": f"127.0.0.1:{sock.getsockname()[1]}"})
        await _until_terminated()
    finally:
        await runner.cleanup()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gateway.bench.worker")
    sub = parser.add_subparsers(dest="role", required=True)
    for role in ("relay", "site", "edge", "stub"):
        p = sub.add_parser(role)
        p.add_argument("--ready", type=Path, required=True)
        p.add_argument("--profile", type=Path, help="write cProfile stats here at exit")
        if role != "stub":
            p.add_argument("--ca", type=Path, required=True)
            p.add_argument("--cert", type=Path, required=True)
            p.add_argument("--key", type=Path, required=True)
            p.add_argument(
                "--metrics",
                action="store_true",
                help="serve and record Prometheus metrics (port in the ready file)",
            )
    relay = sub.choices["relay"]
    relay.add_argument("--listen", required=True)
    relay.add_argument("--workspace", type=Path, required=True)
    relay.add_argument("--site", required=True, help="the one site allowed on every route")
    relay.add_argument("--route", action="append", required=True, metavar="JOB=HOST:PORT")
    relay.add_argument("--tracking", metavar="JOB", help="keep JOB's client-side records")
    relay.add_argument(
        "--edge",
        action="append",
        default=[],
        metavar="EDGE=SITE",
        help="carry SITE's signed envelopes from edge relay EDGE (SITE joins every job)",
    )
    site = sub.choices["site"]
    site.add_argument("--relay", required=True)
    site.add_argument("--name", required=True)
    site.add_argument("--job", action="append", required=True)
    site.add_argument(
        "--tracking",
        action="store_true",
        help="receive the first job's client-side records and ship them to the relay",
    )
    site.add_argument(
        "--sign", action="store_true", help="sign every envelope (a site behind an edge relay)"
    )
    edge = sub.choices["edge"]
    edge.add_argument("--listen", required=True, help="where its sites dial")
    edge.add_argument("--upstream", required=True, help="the relay's URL")
    edge.add_argument("--name", required=True, help="the edge relay's (its certificate's)")
    edge.add_argument("--sites", required=True, help="comma-separated sites it carries")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.configure(0)  # warnings, with their key=value details, into the worker's log
    serve = {"relay": _relay, "site": _site, "edge": _edge, "stub": _stub}[args.role]
    if args.profile is None:
        # as `flgate relay|site|edge start` (serve_until_stopped)
        with collecting_garbage_less_often():
            eventloop.run(serve(args))
        return 0
    import cProfile

    profiler = cProfile.Profile()
    with contextlib.ExitStack() as stack:
        stack.callback(profiler.dump_stats, str(args.profile))
        profiler.enable()
        eventloop.run(serve(args))
        profiler.disable()
    return 0


if __name__ == "__main__":
    sys.exit(main())
