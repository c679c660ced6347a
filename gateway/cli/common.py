"""Pieces every command shares: exit codes, running a coroutine, TLS options."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from ..config import TLSConfig
from ..exceptions import ConfigError

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_GATEWAY_ERROR = 4
EXIT_INTERRUPTED = 130

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro``; SIGTERM cancels it like Ctrl-C, so its cleanup still runs."""

    async def main() -> T:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await coro

    return asyncio.run(main())


def add_tls_options(parser: argparse.ArgumentParser, *, relay: bool = True) -> None:
    """--relay/--ca/--cert/--key, defaulting to FLGATE_* environment variables."""
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


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def tls_from(args: argparse.Namespace) -> TLSConfig:
    missing = [f"--{n}" for n in ("ca", "cert", "key") if getattr(args, n) is None]
    if missing:
        raise ConfigError(f"missing {', '.join(missing)}: the relay requires mutual TLS")
    for name in ("ca", "cert", "key"):
        path: Path = getattr(args, name)
        if not path.is_file():
            raise ConfigError(f"--{name} {path}: no such file")
    return TLSConfig(ca_cert=args.ca, cert=args.cert, key=args.key)


def relay_from(args: argparse.Namespace) -> str:
    if not args.relay:
        raise ConfigError("missing --relay URL (or FLGATE_RELAY), e.g. grpcs://relay:8443")
    return str(args.relay)
