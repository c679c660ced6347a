"""The relay process's core: transport listeners, the dispatcher, an LGC per job.

A relay may listen on several URLs at once (one per transport, e.g. grpcs and
https for sites behind different firewalls); every listener feeds the same
dispatcher, so a job's sites may use different transports.

A relay stops in phases (:meth:`Relay.drain`, then :meth:`Relay.aclose`): it stops
taking new calls, answers those in flight for at most :data:`DRAIN_TIMEOUT`
seconds, cancels what is left (answering it all the same), and only then closes
its listeners and, last, the dedup store, which no call can reach any more.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from ..core.config import Budgets, Limits, TLSConfig
from ..core.exceptions import (
    ConfigError,
    GatewayError,
    MaybeDeliveredError,
    NotDeliveredError,
)
from ..core.failures import reply_for_error
from ..core.identity import Peer
from ..observability import metrics
from ..proto.envelope_pb2 import Dialect, Envelope, Reply
from ..reliable import DedupStore, MemoryDedupStore, ReliableReceiver
from ..transport import TransportServer, listen
from ..transport.admission import Admission
from ..transport.common import frame_limit
from .dispatcher import Dispatcher, RevocationCheck
from .lgc import upstream_for

log = logging.getLogger(__name__)

DRAIN_TIMEOUT = 5.0
"""Seconds a stopping relay gives the calls in flight to be answered before it
cancels them: longer than most Fleet calls take, and short enough that the whole
stop fits in the 10 s ``docker stop`` waits before it kills (systemd waits 90 s)."""
_CANCEL_GRACE = 1.0
"""Seconds cancelled calls get to unwind and be answered."""
_SETTLE = 0.1
"""Seconds the callers of cancelled executions get to take the receiver's answer."""


@runtime_checkable
class _StopsAccepting(Protocol):
    """A listener that can stop taking new calls yet answer those in hand (Redis:
    it stops reading, and what it did not read stays in Redis for the next relay)."""

    async def stop_accepting(self) -> None: ...


def _interrupt_none(envelope: Envelope) -> bool:
    return False


class Relay:
    """Accepts every site's envelopes and routes them by job."""

    def __init__(
        self,
        *,
        listen_urls: Sequence[str],
        tls: TLSConfig,
        limits: Limits = Limits(),
        budgets: Budgets = Budgets(),
        dedup_store: DedupStore | None = None,
        ledger: bool = False,
    ) -> None:
        """``budgets``: what peers may have in flight, on all listeners together.
        ``dedup_store``: where executed message ids are remembered (memory by
        default; a :class:`SqliteDedupStore` survives a relay restart). ``ledger``
        keeps a count of executions per message id, for audits and tests."""
        # Not `dedup_store or ...`: an empty store has len 0 and would be replaced.
        self._dedup_store = dedup_store if dedup_store is not None else MemoryDedupStore()
        self.admission = Admission(budgets, max_frame_bytes=frame_limit(limits))
        self.dispatcher = Dispatcher(
            ReliableReceiver(self._dedup_store), ledger=ledger, admission=self.admission
        )
        self._limits = limits
        self._calls: dict[asyncio.Task[Reply], Envelope] = {}
        """The calls being handled now, for a stop to wait for or cancel."""
        self._stop_errors: dict[asyncio.Task[Reply], GatewayError] = {}
        self._stopping = False
        if not listen_urls:
            raise ConfigError("the relay needs at least one URL to listen on")
        self.listen_urls = list(listen_urls)
        self._servers: list[TransportServer] = [
            listen(
                url,
                tls=tls,
                handler=self._serve,
                limits=limits,
                admission=self.admission,
            )
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
        metrics.job_ended(job_id)
        if route is not None:
            await route.upstream.aclose()

    @property
    def in_flight(self) -> int:
        """Calls being handled now."""
        return len(self._calls)

    @property
    def stopping(self) -> bool:
        return self._stopping

    def connections(self) -> dict[str, int]:
        """Connections open per listener's scheme, where the transport knows them."""
        counts: dict[str, int] = {}
        for url, server in zip(self.listen_urls, self._servers, strict=True):
            if server.connections is not None:
                scheme = url.partition("://")[0]
                counts[scheme] = counts.get(scheme, 0) + server.connections
        return counts

    def pending_entries(self) -> int | None:
        """Entries of shared queues taken and not acknowledged (Redis listeners), if any."""
        known = [s.pending_entries for s in self._servers if s.pending_entries is not None]
        return sum(known) if known else None

    async def _serve(self, peer: Peer, envelope: Envelope) -> Reply:
        """Every listener's handler: the dispatcher's, refused once the relay stops,
        and tracked, so that a stop can wait for the call or cancel it and still answer."""
        if self._stopping:
            return reply_for_error(
                envelope.message_id, NotDeliveredError("relay: stopping; not executed")
            )
        call = asyncio.create_task(self.dispatcher.handle(peer, envelope))
        self._calls[call] = envelope
        call.add_done_callback(self._forget)
        try:
            return await call
        except asyncio.CancelledError:
            error = self._stop_errors.pop(call, None)
            current = asyncio.current_task()
            if error is None or (current is not None and current.cancelling()):
                raise  # the caller went away (a transport's timeout), not the relay
            return reply_for_error(envelope.message_id, error)

    def _forget(self, call: asyncio.Task[Reply]) -> None:
        self._calls.pop(call, None)

    def _cancel(self, call: asyncio.Task[Reply], error: GatewayError) -> None:
        """Cancel ``call`` on behalf of the stop; its caller is answered with ``error``."""
        if not call.done():
            self._stop_errors[call] = error
            call.cancel()

    async def drain(
        self,
        timeout: float = DRAIN_TIMEOUT,
        *,
        interrupt: Callable[[Envelope], bool] = _interrupt_none,
    ) -> int:
        """Stop taking work, finish the calls in flight; return how many there were.

        Every listener stops taking new calls: Redis stops reading; elsewhere a new
        call is answered 503 at once (not executed: a retry is safe). The calls that
        ``interrupt`` names (long polls, which only wait for news) are answered 503
        at once; the others get ``timeout`` seconds. Then the executions still
        running are cancelled (their callers get 504: the call may have reached the
        SuperLink), and so is anything left. Nothing is closed: :meth:`aclose` does
        that. A second call does nothing.
        """
        if self._stopping:
            return 0
        self._stopping = True
        calls = dict(self._calls)
        log.info("relay stopping: draining calls", extra={"calls": len(calls), "timeout": timeout})
        for server in self._servers:
            if isinstance(server, _StopsAccepting):
                await server.stop_accepting()
        for call, envelope in calls.items():
            if interrupt(envelope):
                self._cancel(call, NotDeliveredError("relay: stopping; ask again"))
        pending = [call for call in calls if not call.done()]
        late: set[asyncio.Task[Reply]] = set()
        if pending:
            _, late = await asyncio.wait(pending, timeout=timeout)
        # Executions outlive their callers (the receiver shields them): stop them too,
        # and give their callers a moment to take the receiver's answer (504).
        await self.dispatcher.receiver.aclose()
        if late:
            _, late = await asyncio.wait(late, timeout=_SETTLE)
        for call in late:
            self._cancel(call, MaybeDeliveredError("relay: stopped before answering the call"))
        if late:
            await asyncio.wait(late, timeout=_CANCEL_GRACE)
        return len(calls)

    async def aclose(self) -> None:
        """Drain (unless :meth:`drain` ran), then close the listeners, the receiver and
        the upstreams, and the dedup store last, once no call can reach it."""
        await self.drain()
        for server in self._servers:
            await server.aclose()
        await self.dispatcher.receiver.aclose()
        for route in self.dispatcher.jobs():
            await self.remove_job(route.job_id)
        if self._calls:  # refused or cancelled calls still unwinding
            await asyncio.wait(list(self._calls), timeout=_CANCEL_GRACE)
        self._dedup_store.close()
