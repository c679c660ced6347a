"""The relay process: transport listener, dispatcher, LGCs, job manager and control plane.

It stops in phases, so that nothing touches a store after it is closed: the relay
stops taking calls and drains those in flight (:meth:`~gateway.relay.server.Relay.drain`),
then the jobs stop and the job store closes, then the listeners and the dedup store.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..core.config import Budgets, Limits, TLSConfig
from ..core.identity import peer_from_pem
from ..core.signing import CertificateChecker
from ..core.site_signing import CarriedEnvelopes
from ..flower.install import FlowerInstalls
from ..proto.control_pb2 import RelayInfo
from ..proto.envelope_pb2 import KIND_FLEET, Envelope
from ..provisioning.revocation import RevocationList, tls_ca
from ..relay.server import Relay
from ..reliable import SqliteDedupStore
from ..tracking.exporters import Exporters, TensorBoardExporter
from ..tracking.mlflow_export import MLflowExporters, MLflowSettings
from ..transport.base import parse_url
from .board import RedisBoard
from .jobs.manager import JobManager
from .relay_api import ControlService

_LONG_POLLS = frozenset({"PollTasks", "GetLogs"})
"""Control operations that wait for news (``relay_api``): a stop answers them at once."""


def _waits_for_news(envelope: Envelope) -> bool:
    return envelope.kind != KIND_FLEET and envelope.method in _LONG_POLLS


class RelayApp:
    """Everything the relay runs, started and stopped together."""

    def __init__(
        self,
        *,
        listen_urls: Sequence[str],
        tls: TLSConfig,
        workspace: Path,
        installs: FlowerInstalls,
        known_sites: frozenset[str] | None = None,
        limits: Limits = Limits(),
        budgets: Budgets = Budgets(),
        crl: Path | None = None,
        mlflow: MLflowSettings = MLflowSettings(),
        edges: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """``crl``: the federation's revocation list (re-read when it changes);
        ``mlflow``: the MLflow server every job's series go to, unless its job file names one;
        ``edges``: each edge relay and the sites behind it, whose signed envelopes it may
        carry (the relay kit's ``edges``)."""
        workspace.mkdir(parents=True, exist_ok=True)
        self._listen_urls = list(listen_urls)
        revocations = RevocationList(crl, tls_ca(tls)) if crl is not None else None
        self.relay = Relay(
            listen_urls=listen_urls,
            tls=tls,
            limits=limits,
            budgets=budgets,
            dedup_store=SqliteDedupStore(workspace / "dedup.db"),
        )
        redis_urls = [u for u in listen_urls if parse_url(u).scheme in ("redis", "rediss")]
        board = (
            RedisBoard(
                redis_urls[0],
                tls,
                relay=f"{socket.gethostname()}:{os.getpid()}",
                revoked=revocations.refusal if revocations is not None else None,
            )
            if redis_urls
            else None
        )
        self._exporters = Exporters(
            [TensorBoardExporter(), MLflowExporters(mlflow.tracking_uri, mlflow.experiment)]
        )
        self.manager = JobManager(
            workspace=workspace,
            routes=self.relay,
            installs=installs,
            known_sites=known_sites,
            board=board,
            exporters=self._exporters,
        )
        answered = self.relay.dispatcher.stats.answered
        self.manager.fleet_calls = lambda job_id: answered[job_id]
        # Relays sharing a Redis: each reads the calls of the jobs it owns.
        self.relay.serve_jobs(self.manager.owns)
        self._identity = RelayInfo(
            name=peer_from_pem(tls.cert.read_bytes()).name, started=time.time()
        )
        self.relay.dispatcher.control = ControlService(self.manager, self.describe).handle
        self.relay.dispatcher.on_lost_message = lambda lost: self.manager.message_lost(
            lost.job_id, lost.describe()
        )
        if revocations is not None:
            self.relay.refuse_revoked(revocations.refusal)
        carried = CarriedEnvelopes(
            CertificateChecker(
                tls.ca_cert.read_bytes(),
                revoked=revocations.refusal if revocations is not None else None,
            ),
            edges=edges or {},
        )
        self.relay.dispatcher.carried = carried
        self.manager.edge_of = carried.edge_of
        self._started = False

    @property
    def ports(self) -> list[int]:
        return self.relay.ports

    def describe(self) -> RelayInfo:
        """This relay as admins see it: its name and where it listens (ports as bound;
        a Redis URL without its credentials)."""
        info = RelayInfo()
        info.CopyFrom(self._identity)
        if self._started:
            for url, port in zip(self._listen_urls, self.ports, strict=True):
                parsed = parse_url(url)
                info.listeners.append(f"{parsed.scheme}://{parsed.host}:{port}")
        return info

    @property
    def in_flight(self) -> int:
        """Calls the relay is handling now (what a stop drains)."""
        return self.relay.in_flight

    async def start(self) -> None:
        # Jobs that outlived a restart are routed before the relay listens: the
        # sites' retries arrive at once, and a 404 would make Flower drop a call.
        await self.manager.start()
        # Calls the last process lost are found before new ones can expire them.
        self.relay.dispatcher.report_lost_messages()
        await self.relay.start()
        self._started = True

    def not_ready(self) -> str | None:
        """Why the relay cannot take work now (``/readyz``), or ``None``."""
        if not self._started:
            return "starting: the listeners are not open yet"
        if self.relay.stopping:
            return "stopping"
        if self.manager.store.closed:
            return "the job store is closed"
        return None

    async def aclose(self) -> None:
        """Stop taking calls and drain those in flight (long polls are answered at
        once), then stop the jobs and close the job store, then the listeners and the
        dedup store: before, the job store closed first, under calls still in flight."""
        await self.relay.drain(interrupt=_waits_for_news)
        await self.manager.aclose()
        await asyncio.to_thread(self._exporters.close)  # the jobs' ends, sent (bounded wait)
        await self.relay.aclose()
