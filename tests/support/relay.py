"""A relay's parts for unit tests: a job manager with no Flower installed and no job ever
routed, and the envelopes of a site's Fleet calls."""

from __future__ import annotations

from pathlib import Path

from gateway.control.jobs.manager import JobManager
from gateway.core import fleet
from gateway.core.envelope import make_envelope, now_ms, upstream_reply
from gateway.flower.install import FlowerInstall, FlowerInstalls
from gateway.proto.envelope_pb2 import DIALECT_HTTP, KIND_FLEET, Dialect, Envelope, Kind, Reply
from gateway.relay.lgc import Upstream


def flower_not_installed(
    directory: Path, version: tuple[int, int, int] = (1, 41, 0)
) -> FlowerInstall:
    """A Flower installation that reports ``version`` without running `flwr --version`."""
    install = FlowerInstall(directory)
    install.__dict__["version"] = version
    return install


class NoRoutes:
    """The relay's routing table for tests in which no job runs: routing one is a bug."""

    def add_job(
        self,
        job_id: str,
        *,
        sites: frozenset[str],
        dialect: Dialect,
        superlink: str,
        superlink_ca: Path | None = None,
    ) -> None:
        raise AssertionError("no job runs in these tests")

    async def remove_job(self, job_id: str) -> None:
        raise AssertionError("no job runs in these tests")


def offline_job_manager(
    tmp_path: Path,
    *,
    known_sites: frozenset[str] | None = None,
    releases: tuple[tuple[int, int, int], ...] = ((1, 41, 0),),
) -> JobManager:
    """A job manager in ``tmp_path/relay`` that can store and answer, never start, a job;
    ``known_sites``: the sites a submission may name (as the relay's project lists them);
    ``releases``: the Flower releases it has (none installed), the default first."""
    installs = FlowerInstalls(
        tuple(flower_not_installed(tmp_path / f"flower-{v}", v) for v in releases)
    )
    return JobManager(
        workspace=tmp_path / "relay",
        routes=NoRoutes(),
        installs=installs,
        known_sites=known_sites,
    )


class CountingUpstream(Upstream):
    """A job's SuperLink that answers every call 200 at once and counts the calls that
    reached it (a refused call must leave the count unchanged)."""

    def __init__(self) -> None:
        self.calls = 0

    async def call(self, envelope: Envelope, *, timeout: float) -> Reply:
        self.calls += 1
        return upstream_reply(envelope.message_id, http_status=200, grpc_code=fleet.OK)

    async def aclose(self) -> None:
        pass


def fleet_call(
    method: str,
    message_id: str | None = None,
    *,
    job: str = "job",
    site: str = "site-1",
    kind: Kind = KIND_FLEET,
    body: bytes = b"",
) -> Envelope:
    """A site's call ``method`` (a Fleet call unless ``kind`` says otherwise) as the relay
    receives it, due in 10 s (``message_id`` None: a fresh one)."""
    envelope = make_envelope(
        job_id=job,
        site=site,
        method=method,
        dialect=DIALECT_HTTP,
        headers=[],
        body=body,
        deadline_unix_ms=now_ms() + 10_000,
        message_id=message_id,
    )
    envelope.kind = kind
    return envelope
