"""``flgate relay start`` and ``flgate site start``: the long-lived processes.

SIGTERM and Ctrl-C start an orderly stop that is bounded in time (the relay drains
its calls, then closes its stores; the site stops its SuperNodes), and the exit
code is 0. Signals during the stop change nothing: cutting it short would leave
stores open under calls still running.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import resource
import sys
from pathlib import Path

from ..control import telemetry
from ..control.relay_app import RelayApp
from ..control.site_agent import SiteAgent
from ..core.exceptions import ConfigError
from ..core.identity import Role
from ..flower.install import FlowerInstalls
from ..observability.endpoint import RELAY_DEFAULT, SITE_DEFAULT, MetricsEndpoint, Readiness
from ..provisioning.kit import Kit
from ..tracking.mlflow_client import redacted, require_mlflow
from ..tracking.mlflow_export import DEFAULT_EXPERIMENT, MLflowSettings
from .common import (
    add_budget_options,
    add_limit_options,
    add_log_options,
    add_metrics_options,
    add_tls_options,
    budgets_from,
    kit_from,
    limits_from,
    metrics_listen_from,
    relay_from,
    serve_until_stopped,
    stop_signals,
    tls_from,
)

MLFLOW_TRACKING_URI_ENV = "FLGATE_MLFLOW_TRACKING_URI"
MLFLOW_EXPERIMENT_ENV = "FLGATE_MLFLOW_EXPERIMENT"


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    relay = commands.add_parser("relay", help="the relay (one per federation)")
    relay_sub = relay.add_subparsers(dest="action", metavar="ACTION", required=True)
    start = relay_sub.add_parser(
        "start",
        help="run the relay until stopped (SIGTERM or Ctrl-C)",
        description="Listen for sites and admins on one port, run each submitted job on its "
        "own SuperLink, and route the job's Fleet calls to it.",
    )
    start.add_argument(
        "--listen",
        action="append",
        metavar="URL",
        help="where to listen; repeat for several transports (default: the kit's "
        "addresses, else grpcs://0.0.0.0:8443; port 0 = any free port). Behind a load "
        "balancer the address bound differs from the one sites dial: set it here",
    )
    start.add_argument(
        "--workspace",
        type=Path,
        help="directory for the job store, job apps, logs and results "
        "(default with --kit: KIT/workspace)",
    )
    start.add_argument(
        "--crl",
        type=Path,
        metavar="FILE",
        help="the federation's revocation list, re-read when it changes "
        "(default with --kit: the kit's crl.pem)",
    )
    start.add_argument(
        "--sites",
        help="comma-separated names of the federation's sites "
        "(default: any site with a valid certificate that has connected)",
    )
    add_flower_options(start, "SuperLinks")
    add_mlflow_options(start)
    add_tls_options(start, relay=False)
    add_limit_options(start)
    add_budget_options(start)
    add_metrics_options(start, RELAY_DEFAULT)
    add_log_options(start)
    start.set_defaults(func=_relay_start)

    site = commands.add_parser("site", help="a site's agent (one per site)")
    site_sub = site.add_subparsers(dest="action", metavar="ACTION", required=True)
    start = site_sub.add_parser(
        "start",
        help="run the site agent until stopped (SIGTERM or Ctrl-C)",
        description="Dial the relay (no inbound port), run a SuperNode for each job this "
        "site takes part in, and ship its logs. The site's name comes from its certificate.",
    )
    start.add_argument(
        "--workspace",
        type=Path,
        help="directory for the site's job logs (default with --kit: KIT/workspace)",
    )
    add_flower_options(start, "SuperNodes")
    start.add_argument(
        "--flower-node-key", type=Path, metavar="PATH",
        help="the site's Flower node key (OpenSSH, 0600), for jobs with node_auth",
    )  # fmt: skip
    add_tls_options(start)
    add_limit_options(start)
    add_metrics_options(start, SITE_DEFAULT)
    add_log_options(start)
    start.set_defaults(func=_site_start)


def add_flower_options(parser: argparse.ArgumentParser, runs: str) -> None:
    parser.add_argument(
        "--flower-bin",
        type=Path,
        metavar="DIR",
        action="append",
        default=[],
        help=f"bin directory of a Flower installation for {runs}; repeat for several "
        'releases (a job\'s job.yaml picks one with flower: "1.39"); the first is the '
        "default (default: the Flower beside this Python, else on PATH)",
    )
    parser.add_argument(
        "--flower-envs",
        type=Path,
        metavar="DIR",
        help="a directory of Flower environments (DIR/*/bin/flower-superlink), all of "
        "them offered after those of --flower-bin",
    )


def add_mlflow_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mlflow-tracking-uri",
        metavar="URI",
        default=os.environ.get(MLFLOW_TRACKING_URI_ENV, ""),
        help="export every job's per-round series to this MLflow tracking server, one run per "
        "job (a job's job.yaml may name another with mlflow_tracking_uri); needs "
        f"flower-gateway[mlflow] (default: none; env {MLFLOW_TRACKING_URI_ENV})",
    )
    parser.add_argument(
        "--mlflow-experiment",
        metavar="NAME",
        default=os.environ.get(MLFLOW_EXPERIMENT_ENV) or DEFAULT_EXPERIMENT,
        help="the MLflow experiment of the jobs' runs, created when missing "
        f"(default: {DEFAULT_EXPERIMENT}; env {MLFLOW_EXPERIMENT_ENV})",
    )


def mlflow_from(args: argparse.Namespace) -> MLflowSettings:
    """The relay's MLflow settings; with a tracking URI, MLflow's client must be installed
    (checked before anything starts, without importing it)."""
    uri = args.mlflow_tracking_uri.strip()
    experiment = args.mlflow_experiment.strip()
    if not experiment:
        raise ConfigError("--mlflow-experiment must name an experiment, such as 'flgate'")
    if uri:
        require_mlflow()
    return MLflowSettings(tracking_uri=uri, experiment=experiment)


async def _flower_installs(args: argparse.Namespace) -> FlowerInstalls:
    """The Flower installations of ``--flower-bin`` and ``--flower-envs``, each refused
    outside the supported releases before anything starts (reading their versions runs
    ``flwr --version`` once each, in a thread)."""

    def find() -> FlowerInstalls:
        installs = FlowerInstalls.find(args.flower_bin, envs_dir=args.flower_envs)
        installs.require_supported()
        return installs

    installs = await asyncio.to_thread(find)
    print(f"Flower releases: {', '.join(installs.releases)}", flush=True)
    return installs


def _workspace(args: argparse.Namespace, kit: Kit | None) -> Path:
    if args.workspace is not None:
        return Path(args.workspace)
    if kit is not None:
        return kit.path / "workspace"
    raise ConfigError("missing --workspace DIR (or --kit DIR, whose workspace/ it then uses)")


def _allow_many_open_files() -> None:
    """Raise the soft limit on open files to the hard one, as servers do: every
    connection and pending handshake is a file, and the relay's caps (1024 pending
    handshakes, 1024 grpcs connections, per-site pools) exceed the usual soft 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


async def _serve_relay(args: argparse.Namespace) -> None:
    _allow_many_open_files()
    stop = stop_signals()
    mlflow = mlflow_from(args)
    tls = tls_from(args, Role.RELAY)
    kit = kit_from(args, Role.RELAY)
    if kit is not None:
        print(f"relay: {kit.describe()}", flush=True)
    installs = await _flower_installs(args)
    metrics_listen = metrics_listen_from(args, kit, RELAY_DEFAULT)
    app = RelayApp(
        listen_urls=args.listen or (kit.listen_urls if kit else None) or ["grpcs://0.0.0.0:8443"],
        tls=tls,
        workspace=_workspace(args, kit),
        installs=installs,
        known_sites=frozenset(s.strip() for s in args.sites.split(",")) if args.sites else None,
        crl=args.crl or (kit.crl if kit else None),
        limits=limits_from(args),
        budgets=budgets_from(args, kit),
        mlflow=mlflow,
        edges=kit.edges if kit else None,
    )
    if mlflow.tracking_uri:
        print(f"relay exports job series to MLflow at {redacted(mlflow.tracking_uri)}", flush=True)
    endpoint = MetricsEndpoint(metrics_listen, app.not_ready) if metrics_listen else None
    try:
        if endpoint is not None:
            await _serve_metrics("relay", endpoint)
            telemetry.observe_relay(app, flower=installs.releases)
        await app.start()
        for url, port in zip(app.relay.listen_urls, app.ports, strict=True):
            scheme, _, rest = url.partition("://")
            print(f"relay listening on {scheme}://{rest.rpartition(':')[0]}:{port}", flush=True)
        try:
            await stop.wait()
        finally:
            print(f"relay stopping: draining {app.in_flight} calls", file=sys.stderr, flush=True)
            await app.aclose()
    finally:
        if endpoint is not None:
            await endpoint.aclose()


async def _serve_metrics(name: str, endpoint: MetricsEndpoint) -> None:
    """Start the endpoint before the service, so /healthz answers (and /readyz says
    why not) while it starts."""
    await endpoint.start()
    print(f"{name} metrics on {endpoint.url}", flush=True)


def _relay_start(args: argparse.Namespace) -> int:
    return serve_until_stopped("relay", _serve_relay(args))


async def _serve_site(args: argparse.Namespace) -> None:
    stop = stop_signals()
    tls = tls_from(args, Role.SITE)
    kit = kit_from(args, Role.SITE)
    relay_url = relay_from(args, Role.SITE)
    if kit is not None:
        print(f"site: {kit.describe()}", flush=True)
    installs = await _flower_installs(args)
    metrics_listen = metrics_listen_from(args, kit, SITE_DEFAULT)
    agent = SiteAgent(
        relay_url=relay_url,
        tls=tls,
        workspace=_workspace(args, kit),
        installs=installs,
        flower_node_key=args.flower_node_key or (kit.flower_node_key if kit else None),
        limits=limits_from(args),
        sign=kit is not None and kit.via is not None,
    )
    ready: Readiness = functools.partial(telemetry.site_not_ready, agent)
    endpoint = MetricsEndpoint(metrics_listen, ready) if metrics_listen else None
    try:
        if endpoint is not None:
            await _serve_metrics("site", endpoint)
            telemetry.observe_site(agent, flower=installs.releases)
        print(f"site {agent.name} dialing {relay_url}", flush=True)
        running = asyncio.create_task(agent.run_forever(), name="site-agent")
        stopping = asyncio.create_task(stop.wait(), name="site-stop")
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        running.cancel()  # the agent stops its jobs on the way out
        with contextlib.suppress(asyncio.CancelledError):
            await running
    finally:
        if endpoint is not None:
            await endpoint.aclose()


def _site_start(args: argparse.Namespace) -> int:
    return serve_until_stopped("site", _serve_site(args))
