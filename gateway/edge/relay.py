"""An edge relay: sites in its network dial it; it carries their envelopes, as is, upstream.

Hospitals and plants often let their machines reach one on-premises host only.
The edge relay runs there: it listens on the transports its kit names (TLS with
the federation's certificates), accepts only the site certificates of the sites
provisioned behind it, and forwards every envelope they send (Fleet calls, task
polls, log shipments, tracking records) over its own single connection to the
central relay, authenticated by its edge certificate. The reply goes back to the
site unchanged. It executes nothing itself.

The central relay authorizes each envelope by the *site* that signed it
(:mod:`gateway.core.site_signing`), so the edge cannot speak for a site, and it
stays the one place where a call runs at most once. Per hop:

- The edge retries upstream transport failures with the same message id and the
  same signed bytes (:class:`~gateway.reliable.ReliableSender`), within the part
  of the call's deadline that leaves the site time to retry on its own.
- When that fails, or the relay refuses a resent copy as a replay (the first may
  have reached it), the edge answers "resend" (``site_signing.RESEND``, 503): the site's
  :class:`~gateway.site.signing_client.SigningClient` turns it into a transport
  failure, and the site's sender retries with the same id, signed afresh; the
  relay's dedup answers it if it ran. An edge that dies loses nothing either: its
  sites' calls fail at the transport, and they retry the same way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence

from ..core.config import Budgets, Limits, TLSConfig
from ..core.envelope import now_ms
from ..core.exceptions import AuthError, ConfigError, GatewayError, NotDeliveredError
from ..core.failures import reply_for_error
from ..core.identity import Peer, Role, peer_from_pem
from ..core.site_signing import REPLAY, RESEND, mark, marked
from ..proto.envelope_pb2 import Envelope, Reply
from ..reliable import ReliableSender, RetryPolicy
from ..transport import TransportServer, connect, listen
from ..transport.admission import Admission
from ..transport.common import frame_limit

log = logging.getLogger(__name__)

_MARGIN = 2.0
"""Seconds of a call's deadline the edge leaves to the site to receive its answer
and retry on its own (half of what is left, when less than twice this is)."""
_UPSTREAM_POLICY = RetryPolicy(deadline=60.0)
"""The edge's retries upstream: each call's own deadline bounds them (control calls
such as a 20 s task poll wait longer than a Fleet call's 20 s policy allows)."""
DRAIN_TIMEOUT = 5.0
"""Seconds a stopping edge gives the calls in flight (as the relay's drain)."""


def resend_reply(message_id: str, detail: str) -> Reply:
    """The edge's answer when the relay's answer did not come (see the module's docstring)."""
    return mark(reply_for_error(message_id, NotDeliveredError(detail)), RESEND)


class EdgeRelay:
    """Listens for its sites and carries their envelopes to the central relay."""

    def __init__(
        self,
        *,
        name: str,
        listen_urls: Sequence[str],
        upstream_url: str,
        tls: TLSConfig,
        sites: Iterable[str],
        limits: Limits = Limits(),
        budgets: Budgets = Budgets(),
    ) -> None:
        """``name``: this edge (its certificate's); ``sites``: the sites provisioned behind
        it, the only ones it carries; ``upstream_url``: the central relay."""
        if not listen_urls:
            raise ConfigError("the edge relay needs at least one URL to listen on")
        self.name = name
        self.sites = frozenset(sites)
        self.listen_urls = list(listen_urls)
        self.upstream_url = upstream_url
        self.admission = Admission(budgets, max_frame_bytes=frame_limit(limits))
        self._client = connect(upstream_url, tls=tls, limits=limits)
        self.sender = ReliableSender(self._client, policy=_UPSTREAM_POLICY)
        self._servers: list[TransportServer] = [
            listen(url, tls=tls, handler=self._serve, limits=limits, admission=self.admission)
            for url in listen_urls
        ]
        self._calls: set[asyncio.Future[Reply]] = set()
        self._stopping = False
        self.carried = 0
        """Envelopes answered by the central relay (whatever its answer)."""
        self.refused = 0
        """Envelopes the edge refused itself (not a site of its own, not signed)."""

    @property
    def ports(self) -> list[int]:
        """The bound port of every listener, in ``listen_urls`` order."""
        return [server.port for server in self._servers]

    @property
    def in_flight(self) -> int:
        return len(self._calls)

    async def start(self) -> None:
        for server in self._servers:
            await server.start()

    def _refuse(self, peer: Peer, envelope: Envelope, reason: str) -> Reply:
        self.refused += 1
        log.warning(
            "edge refused an envelope",
            extra={"peer": str(peer), "method": envelope.method, "reason": reason},
        )
        return reply_for_error(envelope.message_id, AuthError(reason))

    def _check(self, peer: Peer, envelope: Envelope) -> str | None:
        """Why the edge refuses ``envelope`` from ``peer``, or ``None``."""
        if peer.role is not Role.SITE:
            return f"{peer} is not a site certificate; this edge relay carries sites' envelopes"
        if peer.name not in self.sites:
            return (
                f"site {peer.name!r} is not provisioned behind edge relay {self.name!r} "
                f"(its sites: {', '.join(sorted(self.sites)) or 'none'})"
            )
        if not envelope.HasField("signed"):
            return (
                f"site {peer.name!r} sent an unsigned envelope; behind an edge relay a site "
                "signs every envelope (its kit names the edge: relay.via)"
            )
        try:
            signer = peer_from_pem(envelope.signed.cert)
        except AuthError as exc:
            return f"the envelope's signing certificate is unreadable: {exc}"
        if signer != peer:
            return f"{peer} may not send an envelope signed by {signer}"
        return None

    async def _serve(self, peer: Peer, envelope: Envelope) -> Reply:
        if self._stopping:
            return resend_reply(envelope.message_id, f"edge relay {self.name}: stopping")
        reason = self._check(peer, envelope)
        if reason is not None:
            return self._refuse(peer, envelope, reason)
        call = asyncio.ensure_future(self._forward(envelope))
        self._calls.add(call)
        call.add_done_callback(self._calls.discard)
        return await asyncio.shield(call)

    async def _forward(self, envelope: Envelope) -> Reply:
        remaining = (envelope.deadline_unix_ms - now_ms()) / 1000
        if remaining <= 0:
            return resend_reply(
                envelope.message_id, f"edge relay {self.name}: the call's deadline has passed"
            )
        try:
            reply = await self.sender.send(envelope, budget=max(remaining - _MARGIN, remaining / 2))
        except GatewayError as exc:
            log.info(
                "edge could not reach the relay",
                extra={
                    "message_id": envelope.message_id,
                    "method": envelope.method,
                    "error": str(exc),
                },
            )
            return resend_reply(
                envelope.message_id, f"edge relay {self.name}: the relay did not answer: {exc}"
            )
        self.carried += 1
        if envelope.attempt > 1 and marked(reply, REPLAY):
            # The relay had the first copy: it may have run it. The site resends (same id,
            # new signature) and the relay's dedup answers.
            return resend_reply(
                envelope.message_id,
                f"edge relay {self.name}: the relay had the envelope already; send it again",
            )
        return reply

    async def aclose(self) -> None:
        """Stop taking calls, give those in flight :data:`DRAIN_TIMEOUT` seconds, close."""
        if self._stopping:
            return
        self._stopping = True
        calls = list(self._calls)
        log.info("edge relay stopping: draining calls", extra={"calls": len(calls)})
        if calls:
            _, late = await asyncio.wait(calls, timeout=DRAIN_TIMEOUT)
            if late:
                # Closing the upstream fails what is left: answered "resend", not cut off.
                await self._client.aclose()
                await asyncio.wait(late, timeout=1.0)
        for server in self._servers:
            await server.aclose()
        await self._client.aclose()
