"""The paths under test: the SuperLink's own Fleet address, and one gateway per transport.

A gateway path is what a site's SuperNode dials in production: an LGS in a
site-gateway process, a transport with mutual TLS, a relay process (SQLite
dedup store, as ``flgate relay start`` has it) and its LGC to the SuperLink.
Relay and site run as processes of their own so that their CPU and memory are
their own; the certificates come from a throw-away CA. ``rediss://`` also
needs a Redis server: a throw-away ``redis-server`` with TLS on a free port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..core.config import TLSConfig
from ..core.exceptions import ConfigError, ProcessError
from ..core.identity import Role
from ..flower.process import ManagedProcess
from ..harness.redis_server import RedisServer, start_redis
from ..provisioning.certs import CertificateAuthority, write_participant
from ..transport import schemes
from .fleet_client import Endpoint

JOB_ID = "bench"
STUB_JOB_ID = "bench-stub"
SITE = "bench-site"
REDIS_SCHEMES = ("redis", "rediss")
_READY_TIMEOUT = 60.0


@dataclass(frozen=True)
class GatewayPath:
    """One transport's relay and site-gateway processes, and the LGS to dial."""

    scheme: str
    endpoint: Endpoint
    """The LGS of the job routed to the bench's SuperLink."""
    stub_endpoint: Endpoint
    """The LGS of the job routed to the constant-answer stub."""
    relay: ManagedProcess
    site: ManagedProcess


def is_secure(scheme: str, known: Sequence[str]) -> bool:
    """TLS schemes end in ``s`` (``grpcs``); ``redis`` too, but its TLS form is ``rediss``."""
    return scheme.endswith("s") and scheme + "s" not in known


def default_schemes() -> tuple[list[str], dict[str, str]]:
    """Every registered secure scheme that can run here, and why others are left out."""
    chosen, skipped = [], {}
    known = schemes()
    for scheme in known:
        if not is_secure(scheme, known):
            continue
        if scheme in REDIS_SCHEMES and shutil.which("redis-server") is None:
            skipped[scheme] = "redis-server is not on PATH (apt-get install redis-server)"
            continue
        chosen.append(scheme)
    # The transports that need nothing else first, Redis last.
    return sorted(chosen, key=lambda scheme: scheme in REDIS_SCHEMES), skipped


def check_schemes(requested: Sequence[str]) -> list[str]:
    """The transports asked for with --transport, validated; order kept, repeats dropped."""
    known = schemes()
    out: list[str] = []
    for scheme in requested:
        scheme = scheme.lower().removesuffix("://")
        if scheme not in known:
            valid = ", ".join(known)
            raise ConfigError(f"unknown transport {scheme!r}; valid: {valid}")
        if scheme in REDIS_SCHEMES and shutil.which("redis-server") is None:
            raise ConfigError(
                f"{scheme}:// needs a redis-server on PATH (apt-get install redis-server)"
            )
        if scheme not in out:
            out.append(scheme)
    return out


@dataclass(frozen=True)
class _PKI:
    relay: TLSConfig
    site: TLSConfig
    redis: TLSConfig


def _make_pki(directory: Path) -> _PKI:
    ca = CertificateAuthority.create("flgate-bench")
    hosts = ("localhost", "127.0.0.1")
    return _PKI(
        relay=write_participant(directory / "relay", ca, "relay", Role.RELAY, hosts=hosts),
        site=write_participant(directory / SITE, ca, SITE, Role.SITE),
        redis=write_participant(directory / "redis", ca, "redis", Role.RELAY, hosts=hosts),
    )


def _tls_args(tls: TLSConfig) -> list[str]:
    return ["--ca", str(tls.ca_cert), "--cert", str(tls.cert), "--key", str(tls.key)]


async def _wait_ready(process: ManagedProcess, ready: Path) -> dict[str, object]:
    deadline = time.monotonic() + _READY_TIMEOUT
    while time.monotonic() < deadline:
        process.check_alive()
        with contextlib.suppress(OSError, ValueError):
            payload: dict[str, object] = json.loads(ready.read_text())
            return payload
        await asyncio.sleep(0.05)
    raise ProcessError(f"{process.name} was not ready within {_READY_TIMEOUT:.0f} s")


def _worker(name: str, args: list[str], directory: Path) -> ManagedProcess:
    directory.mkdir(parents=True, exist_ok=True)
    return ManagedProcess(
        name,
        [sys.executable, "-m", "gateway.bench.worker", *args],
        log_path=directory / f"{name}.log",
        env=dict(os.environ),
        cwd=directory,
    )


@dataclass(frozen=True)
class Paths:
    """Everything the steps dial."""

    gateways: list[GatewayPath]
    stub: Endpoint
    """The constant-answer Fleet endpoint, called directly."""


@contextlib.asynccontextmanager
async def gateway_paths(
    workdir: Path,
    transports: Sequence[str],
    superlink_fleet: str,
    *,
    notify: Callable[[str], None],
    profile_dir: Path | None = None,
) -> AsyncIterator[Paths]:
    """Start a relay and a site-gateway process per transport; stop them all at the end.

    Each relay routes two jobs, the bench's SuperLink (``bench``) and the
    constant-answer stub (``bench-stub``); each site opens an LGS for both.
    """
    pki = _make_pki(workdir / "pki")
    started: list[ManagedProcess] = []
    redis_servers: list[RedisServer] = []

    def profile(name: str) -> list[str]:
        return [] if profile_dir is None else ["--profile", str(profile_dir / f"{name}.prof")]

    try:
        stub = _worker("stub", ["stub", "--ready", str(workdir / "stub.ready")], workdir)
        started.append(stub)
        stub_address = str((await _wait_ready(stub, workdir / "stub.ready"))["address"])
        redis_urls: dict[str, str] = {}
        for scheme in transports:
            if scheme in REDIS_SCHEMES:
                server = await asyncio.to_thread(
                    start_redis,
                    workdir / scheme / "redis",
                    tls=pki.redis if scheme == "rediss" else None,
                )
                redis_servers.append(server)
                redis_urls[scheme] = server.url

        async def start(scheme: str) -> GatewayPath:
            directory = workdir / scheme
            listen = redis_urls.get(scheme, f"{scheme}://127.0.0.1:0")
            relay = _worker(
                f"relay-{scheme}",
                [
                    "relay", *_tls_args(pki.relay), "--listen", listen,
                    "--workspace", str(directory / "relay"), "--site", SITE,
                    "--route", f"{JOB_ID}={superlink_fleet}",
                    "--route", f"{STUB_JOB_ID}={stub_address}",
                    "--ready", str(directory / "relay.ready"), *profile(f"relay-{scheme}"),
                ],
                directory,
            )  # fmt: skip
            started.append(relay)
            ready = await _wait_ready(relay, directory / "relay.ready")
            relay_url = redis_urls.get(scheme, f"{scheme}://localhost:{ready['port']}")
            site = _worker(
                f"site-{scheme}",
                [
                    "site", *_tls_args(pki.site), "--relay", relay_url, "--name", SITE,
                    "--job", JOB_ID, "--job", STUB_JOB_ID,
                    "--ready", str(directory / "site.ready"), *profile(f"site-{scheme}"),
                ],
                directory,
            )  # fmt: skip
            started.append(site)
            lgs = (await _wait_ready(site, directory / "site.ready"))["lgs"]
            assert isinstance(lgs, dict)
            notify(f"gateway over {scheme}: relay pid {relay.pid}, site pid {site.pid}")
            return GatewayPath(
                scheme,
                Endpoint(scheme, str(lgs[JOB_ID])),
                Endpoint(scheme, str(lgs[STUB_JOB_ID])),
                relay,
                site,
            )

        gateways = await asyncio.gather(*(start(scheme) for scheme in transports))
        yield Paths(gateways=list(gateways), stub=Endpoint("direct", stub_address))
    finally:
        # Sites first, then relays, then Redis: nobody retries against a vanished peer.
        for process in reversed(started):
            await asyncio.to_thread(process.stop)
        for server in redis_servers:
            await asyncio.to_thread(server.stop)
