"""``flgate console``: the admins' web page, served on this machine with an admin kit."""

from __future__ import annotations

import argparse
import os
import sys

from ..console.access import ALLOW_NETWORK_FLAG, check_listen_host
from ..console.server import serve_console
from ..control.admin import AdminClient
from ..core.exceptions import ConfigError
from ..core.identity import Role, peer_from_pem
from .common import (
    EXIT_OK,
    EXIT_USAGE,
    add_log_options,
    add_tls_options,
    relay_from,
    run,
    stop_signals,
    tls_from,
)

LISTEN_ENV = "FLGATE_CONSOLE_LISTEN"
DEFAULT_LISTEN = "127.0.0.1:8088"


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    help_text = "serve the web console (federation, jobs, live charts and logs) on this machine"
    parser = commands.add_parser(
        "console",
        help=help_text,
        description=help_text + ". It talks to the relay with your admin kit, as `flgate job` "
        "does; open the URL it prints (it carries a random token). Stop it with Ctrl-C.",
    )
    add_tls_options(parser)
    parser.add_argument(
        "--listen",
        default=os.environ.get(LISTEN_ENV, DEFAULT_LISTEN),
        metavar="HOST:PORT",
        help=f"where the console listens (default: {DEFAULT_LISTEN}; port 0: any free one; "
        f"env {LISTEN_ENV}); loopback only unless {ALLOW_NETWORK_FLAG}",
    )
    parser.add_argument(
        ALLOW_NETWORK_FLAG,
        dest="allow_network",
        action="store_true",
        help="allow a --listen address beyond loopback: the page, its token and your jobs "
        "then cross the network as plain HTTP, and whoever has the token acts as you",
    )
    add_log_options(parser)
    parser.set_defaults(func=_console)


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT``."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--listen {text!r} must be HOST:PORT, e.g. {DEFAULT_LISTEN}")
    return host.strip("[]"), int(port)


def _console(args: argparse.Namespace) -> int:
    try:
        host, port = parse_listen(args.listen)
        check_listen_host(host, allow_network=args.allow_network)
    except ConfigError as exc:
        print(f"flgate console: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    tls = tls_from(args, Role.ADMIN)
    viewer = peer_from_pem(tls.cert.read_bytes())
    if viewer.role is not Role.ADMIN:
        raise ConfigError(f"the console needs an admin kit; {tls.cert} is a {viewer.role.value}'s")
    relay_url = relay_from(args, Role.ADMIN)

    def ready(url: str) -> None:
        print(f"console on {url}", flush=True)
        print(
            f"acting as {viewer.name} ({viewer.admin_role_name}) "
            f"on the relay {relay_url}; Ctrl-C stops it",
            flush=True,
        )

    async def go() -> None:
        await serve_console(
            client=AdminClient(relay_url=relay_url, tls=tls),
            relay_url=relay_url,
            viewer=viewer,
            host=host,
            port=port,
            allow_network=args.allow_network,
            stop=stop_signals(),
            on_ready=ready,
        )

    run(go())
    return EXIT_OK
