"""The relay process's core: transport listeners, the dispatcher, an LGC per job.

A relay may listen on several URLs at once (one per transport, e.g. grpcs and
https for sites behind different firewalls); every listener feeds the same
dispatcher, so a job's sites may use different transports.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from ..core.config import Limits, TLSConfig
from ..core.exceptions import ConfigError
from ..proto.envelope_pb2 import Dialect
from ..reliable import DedupStore, MemoryDedupStore, ReliableReceiver
from ..transport import TransportServer, listen
from .dispatcher import Dispatcher, RevocationCheck
from .lgc import upstream_for


class Relay:
    """Accepts every site's envelopes and routes them by job."""

    def __init__(
        self,
        *,
        listen_urls: Sequence[str],
        tls: TLSConfig,
        limits: Limits = Limits(),
        dedup_store: DedupStore | None = None,
        ledger: bool = False,
    ) -> None:
        """``dedup_store``: where executed message ids are remembered (memory by
        default; a :class:`SqliteDedupStore` survives a relay restart). ``ledger``
        keeps a count of executions per message id, for audits and tests."""
        # Not `dedup_store or ...`: an empty store has len 0 and would be replaced.
        self._dedup_store = dedup_store if dedup_store is not None else MemoryDedupStore()
        self.dispatcher = Dispatcher(ReliableReceiver(self._dedup_store), ledger=ledger)
        self._limits = limits
        if not listen_urls:
            raise ConfigError("the relay needs at least one URL to listen on")
        self.listen_urls = list(listen_urls)
        self._servers: list[TransportServer] = [
            listen(url, tls=tls, handler=self.dispatcher.handle, limits=limits)
            for url in listen_urls
        ]

    @property
    def port(self) -> int:
        """The bound port of the first listener."""
        return self._servers[0].port

    @property
    def ports(self) -> list[int]:
        """The bound port of every listener, in ``listen_urls`` order."""
        return [server.port for server in self._servers]

    def serve_jobs(self, owns: Callable[[str], bool]) -> None:
        """Read only the jobs ``owns`` accepts from shared queues (Redis), so relays
        sharing one Redis each receive the calls of the jobs they run."""
        for server in self._servers:
            server.serve_jobs(owns)

    def refuse_revoked(self, revoked: RevocationCheck) -> None:
        """Refuse every call of a revoked certificate, on every listener."""
        self.dispatcher.revoked = revoked
        for server in self._servers:
            server.refuse_revoked(revoked)

    async def start(self) -> None:
        for server in self._servers:
            await server.start()

    def add_job(
        self,
        job_id: str,
        *,
        sites: frozenset[str],
        dialect: Dialect,
        superlink: str,
        superlink_ca: Path | None = None,
    ) -> None:
        """Route ``job_id``'s calls from ``sites`` to the SuperLink's Fleet API at
        ``superlink`` (``host:port``; over TLS verified by ``superlink_ca`` if given)."""
        upstream = upstream_for(
            dialect, superlink, ca_file=superlink_ca, max_body_bytes=self._limits.max_frame_bytes
        )
        self.dispatcher.add_job(job_id, sites, upstream)

    async def remove_job(self, job_id: str) -> None:
        route = self.dispatcher.remove_job(job_id)
        if route is not None:
            await route.upstream.aclose()

    async def aclose(self) -> None:
        for route in self.dispatcher.jobs():
            await self.remove_job(route.job_id)
        for server in self._servers:
            await server.aclose()
        await self.dispatcher.receiver.aclose()
        self._dedup_store.close()
