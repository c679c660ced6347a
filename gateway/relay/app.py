"""The relay process: transport listener, dispatcher, LGCs, job manager and control plane."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..config import Limits, TLSConfig
from ..flower.install import FlowerInstall
from ..jobs.manager import JobManager
from ..reliable import SqliteDedupStore
from .control import ControlService
from .server import Relay


class RelayApp:
    """Everything the relay runs, started and stopped together."""

    def __init__(
        self,
        *,
        listen_urls: Sequence[str],
        tls: TLSConfig,
        workspace: Path,
        install: FlowerInstall,
        known_sites: frozenset[str] | None = None,
        limits: Limits = Limits(),
    ) -> None:
        workspace.mkdir(parents=True, exist_ok=True)
        self.relay = Relay(
            listen_urls=listen_urls,
            tls=tls,
            limits=limits,
            dedup_store=SqliteDedupStore(workspace / "dedup.db"),
        )
        self.manager = JobManager(
            workspace=workspace, routes=self.relay, install=install, known_sites=known_sites
        )
        self.relay.dispatcher.control = ControlService(self.manager).handle

    @property
    def ports(self) -> list[int]:
        return self.relay.ports

    async def start(self) -> None:
        await self.relay.start()
        await self.manager.start()

    async def aclose(self) -> None:
        await self.manager.aclose()
        await self.relay.aclose()
