"""The paths under test: the SuperLink's own Fleet address, and one gateway per transport.

A gateway path is what a site's SuperNode dials in production: an LGS in a
site-gateway process, a transport with mutual TLS, a relay process (SQLite
dedup store, as ``flgate relay start`` has it) and its LGC to the SuperLink.
Relay and site run as processes of their own so that their CPU and memory are
their own; the certificates come from a throw-away CA. ``rediss://`` also
needs a Redis server: a throw-away ``redis-server`` with TLS on a free port.

Relays and sites record Prometheus metrics, as ``flgate relay start`` and
``flgate site start`` do by default. One more pair, for the first transport
only, runs with metrics off (``--metrics-listen off``): the capacity step
loads both to measure what recording costs the relay. The first transport's
metrics-on pair also takes client-side tracking records for the bench's job, as a
real relay and site agent do (see :mod:`.worker`): the flood step measures what a
ClientApp flooding its tracking writer costs the Fleet calls.

The first transport has one more path, via an edge relay (:mod:`gateway.edge`):
a site that signs its envelopes, as a site behind an edge does, dials an edge
relay process over that transport, which carries them over that transport to the
first transport's metrics-on relay; that relay knows the edge's site as a relay
kit's ``edges`` map says. The edge has a certificate of its own (``Role.EDGE``)
from the same throw-away CA. The latency and objects steps compare it with the
direct-to-relay path of the same transport: what the extra hop adds.
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
EDGE = "bench-edge"
EDGE_SITE = "bench-edge-site"
"""The edge relay of the edge path, and the one site behind it."""
METRICS_OFF = "metrics off"
REDIS_SCHEMES = ("redis", "rediss")
_READY_TIMEOUT = 60.0


@dataclass(frozen=True)
class TrackingPath:
    """Where a ClientApp of the bench's job sends its tracking records, and where the
    relay stores them."""

    env: dict[str, str]
    """``FLGATE_TRACKING_URL`` and ``FLGATE_TRACKING_TOKEN`` of the site's receiver."""
    store: Path
    """The relay's job store (SQLite): its ``series`` table holds what it kept."""


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
    relay_metrics: str | None = None
    """The relay's ``/metrics`` URL; ``None`` when the pair runs with metrics off."""
    tracking: TrackingPath | None = None
    """The bench job's client-side tracking (the first transport's metrics-on pair)."""

    @property
    def name(self) -> str:
        """The scheme, or ``grpcs, metrics off`` for the pair without metrics."""
        return self.scheme if self.relay_metrics is not None else variant(self.scheme)


@dataclass(frozen=True)
class EdgePath:
    """The first transport's path via an edge relay: site -> edge -> that transport's relay."""

    scheme: str
    endpoint: Endpoint
    """The LGS of the bench's job on the site behind the edge."""
    edge: ManagedProcess
    site: ManagedProcess
    relay: ManagedProcess
    """The relay it reaches (the one of the direct path it is compared with)."""


def via_edge(scheme: str) -> str:
    """The name of the edge path over ``scheme`` (its endpoint's key)."""
    return f"{scheme} via edge"


def variant(scheme: str) -> str:
    """The name of the metrics-off pair of ``scheme`` (its endpoints' and figures' key)."""
    return f"{scheme}, {METRICS_OFF}"


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
    edge: TLSConfig
    edge_site: TLSConfig


def _make_pki(directory: Path) -> _PKI:
    ca = CertificateAuthority.create("flgate-bench")
    hosts = ("localhost", "127.0.0.1")
    return _PKI(
        relay=write_participant(directory / "relay", ca, "relay", Role.RELAY, hosts=hosts),
        site=write_participant(directory / SITE, ca, SITE, Role.SITE),
        redis=write_participant(directory / "redis", ca, "redis", Role.RELAY, hosts=hosts),
        edge=write_participant(directory / EDGE, ca, EDGE, Role.EDGE, hosts=hosts),
        edge_site=write_participant(directory / EDGE_SITE, ca, EDGE_SITE, Role.SITE),
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
    """One per transport, metrics on."""
    stub: Endpoint
    """The constant-answer Fleet endpoint, called directly."""
    metrics_off: GatewayPath | None = None
    """The first transport once more, with metrics off."""
    edge: EdgePath | None = None
    """The first transport via an edge relay."""


@contextlib.asynccontextmanager
async def gateway_paths(
    workdir: Path,
    transports: Sequence[str],
    superlink_fleet: str,
    *,
    notify: Callable[[str], None],
    profile_dir: Path | None = None,
) -> AsyncIterator[Paths]:
    """Start a relay and a site-gateway process per transport, the metrics-off
    pair of the first and its edge path; stop them all at the end.

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
        # (scheme, metrics on): every transport, then the first one without metrics.
        pairs = [(scheme, True) for scheme in transports] + [(s, False) for s in transports[:1]]

        def directory_of(scheme: str, metrics: bool) -> Path:
            return workdir / (scheme if metrics else f"{scheme}-metrics-off")

        edge_directory = workdir / f"{transports[0]}-via-edge"
        redis_urls: dict[Path, str] = {}
        for scheme, directory in [
            *((s, directory_of(s, metrics)) for s, metrics in pairs),
            (transports[0], edge_directory),
        ]:
            if scheme in REDIS_SCHEMES:
                # A Redis of its own for each pair (both pairs' sites have one name)
                # and for the edge's listener.
                server = await asyncio.to_thread(
                    start_redis,
                    directory / "redis",
                    tls=pki.redis if scheme == "rediss" else None,
                )
                redis_servers.append(server)
                redis_urls[directory] = server.url

        async def start(scheme: str, metrics: bool) -> GatewayPath:
            directory = directory_of(scheme, metrics)
            suffix = directory.name
            on = ["--metrics"] if metrics else []
            tracking = metrics and scheme == transports[0]
            # The edge path reaches the first transport's metrics-on relay.
            edges = ["--edge", f"{EDGE}={EDGE_SITE}"] if tracking else []
            listen = redis_urls.get(directory, f"{scheme}://127.0.0.1:0")
            relay = _worker(
                f"relay-{suffix}",
                [
                    "relay", *_tls_args(pki.relay), "--listen", listen,
                    "--workspace", str(directory / "relay"), "--site", SITE,
                    "--route", f"{JOB_ID}={superlink_fleet}",
                    "--route", f"{STUB_JOB_ID}={stub_address}", *on, *edges,
                    *(["--tracking", JOB_ID] if tracking else []),
                    "--ready", str(directory / "relay.ready"), *profile(f"relay-{suffix}"),
                ],
                directory,
            )  # fmt: skip
            started.append(relay)
            ready = await _wait_ready(relay, directory / "relay.ready")
            relay_store = directory / "relay" / "jobs.db"
            relay_url = redis_urls.get(directory, f"{scheme}://localhost:{ready['port']}")
            site = _worker(
                f"site-{suffix}",
                [
                    "site", *_tls_args(pki.site), "--relay", relay_url, "--name", SITE,
                    "--job", JOB_ID, "--job", STUB_JOB_ID, *on,
                    *(["--tracking"] if tracking else []),
                    "--ready", str(directory / "site.ready"), *profile(f"site-{suffix}"),
                ],
                directory,
            )  # fmt: skip
            started.append(site)
            site_ready = await _wait_ready(site, directory / "site.ready")
            lgs, env = site_ready["lgs"], site_ready.get("tracking_env")
            assert isinstance(lgs, dict)
            name = scheme if metrics else variant(scheme)
            notify(f"gateway over {name}: relay pid {relay.pid}, site pid {site.pid}")
            relay_urls[directory] = relay_url
            return GatewayPath(
                scheme,
                Endpoint(name, str(lgs[JOB_ID])),
                Endpoint(name, str(lgs[STUB_JOB_ID])),
                relay,
                site,
                relay_metrics=(
                    f"http://127.0.0.1:{ready['metrics_port']}/metrics" if metrics else None
                ),
                tracking=(
                    TrackingPath({str(k): str(v) for k, v in env.items()}, relay_store)
                    if isinstance(env, dict)
                    else None
                ),
            )

        async def start_edge(relay: GatewayPath) -> EdgePath:
            scheme, directory = relay.scheme, edge_directory
            edge = _worker(
                "edge",
                [
                    "edge", *_tls_args(pki.edge), "--name", EDGE, "--sites", EDGE_SITE,
                    "--listen", redis_urls.get(directory, f"{scheme}://127.0.0.1:0"),
                    "--upstream", relay_urls[directory_of(scheme, True)],
                    "--ready", str(directory / "edge.ready"), *profile("edge"),
                ],
                directory,
            )  # fmt: skip
            started.append(edge)
            ready = await _wait_ready(edge, directory / "edge.ready")
            site = _worker(
                "site-via-edge",
                [
                    "site", *_tls_args(pki.edge_site), "--sign", "--name", EDGE_SITE,
                    "--relay", redis_urls.get(directory, f"{scheme}://localhost:{ready['port']}"),
                    "--job", JOB_ID, "--metrics",
                    "--ready", str(directory / "site.ready"), *profile("site-via-edge"),
                ],
                directory,
            )  # fmt: skip
            started.append(site)
            lgs = (await _wait_ready(site, directory / "site.ready"))["lgs"]
            assert isinstance(lgs, dict)
            name = via_edge(scheme)
            notify(f"gateway over {name}: edge pid {edge.pid}, site pid {site.pid}")
            return EdgePath(scheme, Endpoint(name, str(lgs[JOB_ID])), edge, site, relay.relay)

        relay_urls: dict[Path, str] = {}
        started_paths = await asyncio.gather(*(start(*pair) for pair in pairs))
        gateways = [p for p in started_paths if p.relay_metrics is not None]
        yield Paths(
            gateways=gateways,
            stub=Endpoint("direct", stub_address),
            metrics_off=next((p for p in started_paths if p.relay_metrics is None), None),
            edge=await start_edge(gateways[0]),
        )
    finally:
        # Sites first, then relays, then Redis: nobody retries against a vanished peer.
        for process in reversed(started):
            await asyncio.to_thread(process.stop)
        for server in redis_servers:
            await asyncio.to_thread(server.stop)
