"""A site's gateway: one connection to the relay shared by an LGS per job."""

from __future__ import annotations

from collections import Counter

from ..core.config import Limits, LoopbackTLS, TLSConfig
from ..core.signing import Signer
from ..observability import metrics
from ..proto.envelope_pb2 import DIALECT_GRPC, Dialect
from ..transport import TransportClient, connect
from .call_window import CallWindow
from .forwarder import JobForwarder
from .lgs import Forward, LocalGatewayServer, metered
from .lgs_grpc import GrpcLGS
from .lgs_http import HttpLGS
from .signing_client import SigningClient


class SiteGateway:
    """Opens and closes the per-job LGS servers of one site."""

    def __init__(
        self,
        *,
        name: str,
        relay_url: str,
        tls: TLSConfig,
        limits: Limits = Limits(),
        sign: bool = False,
    ) -> None:
        """``sign``: sign every envelope with the site's key (a site behind an edge
        relay, whose central relay authorizes each envelope by its signature)."""
        self.name = name
        self._limits = limits
        self._client: TransportClient = connect(relay_url, tls=tls, limits=limits)
        if sign:
            self._client = SigningClient(self._client, Signer.of(tls))
        self._jobs: dict[str, tuple[LocalGatewayServer, JobForwarder]] = {}
        self.call_window = CallWindow()
        """The Fleet calls of all this site's jobs over the last minute (for the agent's poll)."""
        self.calls_in_flight: Counter[str] = Counter()
        """Per job, the SuperNode's Fleet calls waiting for their answer now."""

    async def open_job(
        self, job_id: str, dialect: Dialect, *, port: int = 0, tls: LoopbackTLS | None = None
    ) -> LocalGatewayServer:
        """Start the LGS of ``job_id`` on ``port`` (0: any); the SuperNode dials ``lgs.address``.

        ``tls``: serve TLS with this loopback certificate (jobs with Flower's node auth).
        """
        forwarder = JobForwarder(
            job_id=job_id, site=self.name, client=self._client, window=self.call_window
        )
        forward = metered(
            forwarder.forward, job=job_id, site=self.name, in_flight=self.calls_in_flight
        )
        lgs = create_lgs(dialect, forward, self._limits, tls=tls)
        await lgs.start(port)
        self._jobs[job_id] = (lgs, forwarder)
        return lgs

    @property
    def client(self) -> TransportClient:
        """The one connection to the relay, shared with the control plane."""
        return self._client

    def forwarder(self, job_id: str) -> JobForwarder:
        return self._jobs[job_id][1]

    async def close_job(self, job_id: str) -> None:
        entry = self._jobs.pop(job_id, None)
        if entry is not None:
            await entry[0].aclose()
            self.calls_in_flight.pop(job_id, None)
            metrics.job_ended(job_id)

    async def aclose(self) -> None:
        for job_id in list(self._jobs):
            await self.close_job(job_id)
        await self._client.aclose()


def create_lgs(
    dialect: Dialect,
    forward: Forward,
    limits: Limits = Limits(),
    *,
    tls: LoopbackTLS | None = None,
) -> LocalGatewayServer:
    """An LGS that speaks ``dialect`` (HTTP for flwr >= 1.40, gRPC for <= 1.39), over
    TLS with ``tls``'s certificate when given."""
    if dialect == DIALECT_GRPC:
        return GrpcLGS(forward, limits, tls=tls)
    return HttpLGS(forward, limits, tls=tls)
