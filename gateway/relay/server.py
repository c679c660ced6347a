"""The relay process's core: one transport listener, the dispatcher, an LGC per job."""

from __future__ import annotations

from ..config import Limits, TLSConfig
from ..proto.envelope_pb2 import Dialect
from ..reliable import DedupStore, MemoryDedupStore, ReliableReceiver
from ..transport import TransportServer, listen
from .dispatcher import Dispatcher
from .lgc import upstream_for


class Relay:
    """Accepts every site's envelopes on one port and routes them by job."""

    def __init__(
        self,
        *,
        listen_url: str,
        tls: TLSConfig,
        limits: Limits = Limits(),
        dedup_store: DedupStore | None = None,
        ledger: bool = False,
    ) -> None:
        """``dedup_store``: where executed message ids are remembered (memory by
        default; a :class:`SqliteDedupStore` survives a relay restart). ``ledger``
        keeps a count of executions per message id, for audits and tests."""
        self._dedup_store = dedup_store or MemoryDedupStore()
        self.dispatcher = Dispatcher(ReliableReceiver(self._dedup_store), ledger=ledger)
        self._limits = limits
        self._server: TransportServer = listen(
            listen_url, tls=tls, handler=self.dispatcher.handle, limits=limits
        )

    @property
    def port(self) -> int:
        return self._server.port

    async def start(self) -> None:
        await self._server.start()

    def add_job(
        self, job_id: str, *, sites: frozenset[str], dialect: Dialect, superlink: str
    ) -> None:
        """Route ``job_id``'s calls from ``sites`` to the SuperLink's Fleet API at ``superlink``."""
        upstream = upstream_for(dialect, superlink, max_body_bytes=self._limits.max_frame_bytes)
        self.dispatcher.add_job(job_id, sites, upstream)

    async def remove_job(self, job_id: str) -> None:
        route = self.dispatcher.remove_job(job_id)
        if route is not None:
            await route.upstream.aclose()

    async def aclose(self) -> None:
        for route in self.dispatcher.jobs():
            await self.remove_job(route.job_id)
        await self._server.aclose()
        await self.dispatcher.receiver.aclose()
        self._dedup_store.close()
