"""``flgate edge start``: the edge relay between the sites of a closed network and the relay.

SIGTERM and Ctrl-C start an orderly stop (the calls in flight get a few seconds,
then the listeners and the upstream connection close) and the exit code is 0.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..core.exceptions import ConfigError
from ..core.identity import Role, peer_from_pem
from ..edge import EdgeRelay
from .common import (
    add_budget_options,
    add_limit_options,
    add_log_options,
    add_tls_options,
    budgets_from,
    kit_from,
    limits_from,
    relay_from,
    serve_until_stopped,
    stop_signals,
    tls_from,
)

SITES_ENV = "FLGATE_EDGE_SITES"


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    edge = commands.add_parser(
        "edge", help="an edge relay (between the sites of a closed network and the relay)"
    )
    edge_sub = edge.add_subparsers(dest="action", metavar="ACTION", required=True)
    start = edge_sub.add_parser(
        "start",
        help="run the edge relay until stopped (SIGTERM or Ctrl-C)",
        description="Listen for the sites provisioned behind this edge relay and carry "
        "every envelope they send, signed by the site, over one connection to the central "
        "relay, which authorizes each by its site. The edge runs nothing itself.",
    )
    start.add_argument(
        "--listen",
        action="append",
        metavar="URL",
        help="where the sites dial; repeat for several transports (default: the kit's "
        "addresses; port 0 = any free port)",
    )
    start.add_argument(
        "--sites",
        default=os.environ.get(SITES_ENV),
        help=f"comma-separated names of the sites it carries (default: the kit's; env {SITES_ENV})",
    )
    add_tls_options(start)
    add_limit_options(start)
    add_budget_options(start)
    add_log_options(start)
    start.set_defaults(func=_edge_start)


def _edge(args: argparse.Namespace) -> EdgeRelay:
    tls = tls_from(args, Role.EDGE)
    kit = kit_from(args, Role.EDGE)
    if kit is not None:
        print(f"edge: {kit.describe()}", flush=True)
    listen = args.listen or (list(kit.listen_urls) if kit else None)
    if not listen:
        raise ConfigError("missing --listen URL (or --kit DIR of an edge relay)")
    if args.sites:
        sites = [s.strip() for s in args.sites.split(",") if s.strip()]
    elif kit is not None:
        sites = list(kit.sites)
    else:
        raise ConfigError(f"missing --sites NAMES (or {SITES_ENV}, or --kit DIR)")
    peer = peer_from_pem(tls.cert.read_bytes())
    if peer.role is not Role.EDGE:
        raise ConfigError(
            f"{tls.cert} is a {peer.role.value} certificate; an edge relay runs with an edge "
            "relay's (an edges: entry of project.yml)"
        )
    return EdgeRelay(
        name=peer.name,
        listen_urls=listen,
        upstream_url=relay_from(args, Role.EDGE),
        tls=tls,
        sites=sites,
        limits=limits_from(args),
        budgets=budgets_from(args),
    )


async def _serve_edge(args: argparse.Namespace) -> None:
    stop = stop_signals()
    edge = _edge(args)
    await edge.start()
    for url, port in zip(edge.listen_urls, edge.ports, strict=True):
        scheme, _, rest = url.partition("://")
        print(f"edge listening on {scheme}://{rest.rpartition(':')[0]}:{port}", flush=True)
    print(
        f"edge {edge.name} carries {', '.join(sorted(edge.sites))} to {edge.upstream_url}",
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        print(f"edge stopping: draining {edge.in_flight} calls", file=sys.stderr, flush=True)
        await edge.aclose()


def _edge_start(args: argparse.Namespace) -> int:
    return serve_until_stopped("edge", _serve_edge(args))
