"""Pieces every command shares: exit codes, running a coroutine, log, TLS and limit options.

A participant names its TLS files and the relay's address either with a kit
(``--kit DIR``, made by ``flgate provision``, verified before use) or one by one
(``--relay``, ``--ca``, ``--cert``, ``--key``); an explicit ``--relay`` also
overrides the kit's address.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509

from ..core import eventloop
from ..core.budget_settings import BUDGET_SETTINGS, budgets_with
from ..core.config import Budgets, Limits, MiB, TLSConfig
from ..core.exceptions import ConfigError
from ..core.identity import Role
from ..core.logs import LOG_FORMATS
from ..core.memory import collecting_garbage_less_often
from ..observability.endpoint import MetricsListen, parse_listen
from ..provisioning.kit import Kit, load_kit

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_GATEWAY_ERROR = 4
EXIT_INTERRUPTED = 130

T = TypeVar("T")
DEFAULT_FRAME_MIB = 64.0
LOG_FORMAT_ENV = "FLGATE_LOG_FORMAT"
METRICS_LISTEN_ENV = "FLGATE_METRICS_LISTEN"


def run(coro: Coroutine[Any, Any, T], *, fast_loop: bool = False) -> T:
    """Run ``coro``; SIGTERM cancels it like Ctrl-C, so its cleanup still runs.

    ``fast_loop``: on uvloop where installed (the relay and the site, whose data path
    it speeds up; see :mod:`gateway.core.eventloop`).
    """

    async def main() -> T:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await coro

    if fast_loop:
        return eventloop.run(main())
    return asyncio.run(main())


def serve_until_stopped(name: str, service: Coroutine[Any, Any, None]) -> int:
    """Serve ``service`` (a relay, site or edge) on the fast loop until SIGTERM or
    Ctrl-C; a stop is the normal end: "NAME stopped", exit code 0."""
    with (
        contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt),
        collecting_garbage_less_often(),
    ):
        run(service, fast_loop=True)
    print(f"{name} stopped", file=sys.stderr)
    return EXIT_OK


def stop_signals() -> asyncio.Event:
    """An event that SIGTERM or SIGINT sets, in place of cancelling the command."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def add_log_options(parser: argparse.ArgumentParser, *, default: str = argparse.SUPPRESS) -> None:
    """--log-format: on the top-level parser, with FLGATE_LOG_FORMAT (else text) as its
    ``default``, and again on each long-running command, where operators put it after
    the command's name in a service unit.

    On a command it has no default (SUPPRESS): argparse copies a subcommand's defaults
    over the top-level namespace, which would undo ``flgate --log-format json demo``.
    """
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=default,
        help="how log lines on stderr are written: text (time level logger message "
        "key=value ...) or json (one object per line, for log collectors) "
        f"(default: text; env {LOG_FORMAT_ENV})",
    )


def log_format_from(args: argparse.Namespace) -> str:
    """The --log-format to use; argparse checks a value given as an option, not the one
    that came from the environment as the default, so that one is checked here."""
    value: str = args.log_format
    if value not in LOG_FORMATS:
        raise ConfigError(
            f"{LOG_FORMAT_ENV}={value!r} is not a log format; use one of: {', '.join(LOG_FORMATS)}"
        )
    return value


def add_metrics_options(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus metrics and /healthz, /readyz here; 'off' to disable, port 0 "
        f"for any free one (default: the kit's, else {default}, or a free port when that "
        f"one is taken; env {METRICS_LISTEN_ENV})",
    )


def metrics_listen_from(
    args: argparse.Namespace, kit: Kit | None, default: str
) -> MetricsListen | None:
    """The option, else FLGATE_METRICS_LISTEN, else the kit's, else ``default`` (which
    gives way to a free port when taken); ``None``: off."""
    explicit = (
        args.metrics_listen
        or os.environ.get(METRICS_LISTEN_ENV)
        or (kit.metrics_listen if kit is not None else None)
    )
    if explicit:
        return parse_listen(explicit)
    return parse_listen(default, default=True)


def add_tls_options(parser: argparse.ArgumentParser, *, relay: bool = True) -> None:
    """--kit, --relay/--ca/--cert/--key, defaulting to FLGATE_* environment variables."""
    parser.add_argument(
        "--kit",
        type=Path,
        default=_env_path("FLGATE_KIT"),
        metavar="DIR",
        help="this participant's startup kit from `flgate provision`: TLS files and the "
        "relay's address, verified before use (env FLGATE_KIT)",
    )
    if relay:
        parser.add_argument(
            "--relay",
            default=os.environ.get("FLGATE_RELAY"),
            metavar="URL",
            help="relay address, e.g. grpcs://relay.example.org:8443 (env FLGATE_RELAY)",
        )
    parser.add_argument(
        "--ca",
        type=Path,
        default=_env_path("FLGATE_CA"),
        help="the federation's root CA certificate, PEM (env FLGATE_CA)",
    )
    parser.add_argument(
        "--cert",
        type=Path,
        default=_env_path("FLGATE_CERT"),
        help="this participant's certificate, PEM (env FLGATE_CERT)",
    )
    parser.add_argument(
        "--key",
        type=Path,
        default=_env_path("FLGATE_KEY"),
        help="this participant's private key, PEM (env FLGATE_KEY)",
    )


def add_limit_options(parser: argparse.ArgumentParser) -> None:
    """--max-frame-mib, defaulting to FLGATE_MAX_FRAME_MIB, else 64."""
    parser.add_argument(
        "--max-frame-mib",
        type=float,
        metavar="MIB",
        help="largest envelope accepted or sent, in MiB; 0 for no limit; raise it for "
        "flwr < 1.20, which sends whole models in one message "
        f"(default {DEFAULT_FRAME_MIB:g}; env FLGATE_MAX_FRAME_MIB)",
    )


def limits_from(args: argparse.Namespace) -> Limits:
    mib: float | None = args.max_frame_mib
    if mib is None:
        text = os.environ.get("FLGATE_MAX_FRAME_MIB", "")
        try:
            mib = float(text) if text else DEFAULT_FRAME_MIB
        except ValueError:
            raise ConfigError(f"FLGATE_MAX_FRAME_MIB={text!r} is not a number of MiB") from None
    if mib < 0:
        raise ConfigError(f"--max-frame-mib must be 0 (no limit) or positive, not {mib:g}")
    return Limits(max_frame_bytes=int(mib * MiB) if mib else None)


def add_budget_options(parser: argparse.ArgumentParser) -> None:
    """The relay's admission budgets: what peers may have in flight before it answers
    "busy" (and the site retries); each defaults to ``FLGATE_<OPTION>``, then to the
    relay kit's ``budgets`` (from ``project.yml``), then to Budgets'."""
    defaults = Budgets()
    for setting in BUDGET_SETTINGS:
        default = getattr(defaults, setting.field)
        shown = "none" if default is None else f"{default / setting.unit:g}"
        parser.add_argument(
            setting.option,
            type=float,
            metavar="N",
            help=f"{setting.what}; 0 for no limit (default {shown}; env {setting.env})",
        )


def budgets_from(args: argparse.Namespace, kit: Kit | None = None) -> Budgets:
    values = dict(kit.budgets) if kit is not None else {}
    for setting in BUDGET_SETTINGS:
        value: float | None = getattr(args, setting.option.removeprefix("--").replace("-", "_"))
        if value is None:
            text = os.environ.get(setting.env, "")
            if not text:
                continue
            try:
                value = float(text)
            except ValueError:
                raise ConfigError(f"{setting.env}={text!r} is not a number") from None
        if value < 0:
            raise ConfigError(f"{setting.option} must be 0 (no limit) or positive, not {value:g}")
        values[setting.key] = value
    return budgets_with(values)


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def kit_from(args: argparse.Namespace, role: Role | None = None) -> Kit | None:
    """The verified kit named by --kit (loaded once per command), or ``None``."""
    if getattr(args, "kit", None) is None:
        return None
    cached: Kit | None = getattr(args, "_kit", None)
    if cached is None:
        given = [f"--{n}" for n in ("ca", "cert", "key") if getattr(args, n, None) is not None]
        if given:
            raise ConfigError(
                f"--kit names the TLS files already; drop {', '.join(given)} "
                "(or unset FLGATE_CA, FLGATE_CERT, FLGATE_KEY)"
            )
        cached = load_kit(args.kit, role=role)
        args._kit = cached
    return cached


def tls_from(args: argparse.Namespace, role: Role | None = None) -> TLSConfig:
    """The TLS files from --kit (checked to be a ``role`` kit) or --ca/--cert/--key."""
    kit = kit_from(args, role)
    if kit is not None:
        return kit.tls
    missing = [f"--{n}" for n in ("ca", "cert", "key") if getattr(args, n) is None]
    if missing:
        raise ConfigError(
            f"missing {', '.join(missing)} (or --kit DIR): the relay requires mutual TLS"
        )
    for name in ("ca", "cert", "key"):
        path: Path = getattr(args, name)
        if not path.is_file():
            raise ConfigError(f"--{name} {path}: no such file")
    _check_not_expired(args.cert)
    return TLSConfig(ca_cert=args.ca, cert=args.cert, key=args.key)


def _check_not_expired(path: Path) -> None:
    """Say so here: a peer refuses an expired certificate with a bare TLS alert."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        return  # loading the TLS files reports it
    expires = cert.not_valid_after_utc
    if dt.datetime.now(dt.timezone.utc) > expires:
        raise ConfigError(
            f"--cert {path} expired on {expires:%Y-%m-%d %H:%M} UTC; ask the project admin "
            "for a new kit (flgate provision)"
        )


def relay_from(args: argparse.Namespace, role: Role | None = None) -> str:
    """--relay if given, else the address in the kit."""
    if args.relay:
        return str(args.relay)
    kit = kit_from(args, role)
    if kit is not None:
        return kit.relay_url
    raise ConfigError(
        "missing --relay URL (or FLGATE_RELAY, or --kit DIR), e.g. grpcs://relay:8443"
    )
