"""Turn one Fleet call of a job's SuperNode into an envelope and deliver it.

The forwarder gives each call one message id, lets the reliable sender retry
it (same id) until a deadline inside Flower's own call timeout, and turns every
failure of the path to the relay into a gateway reply that Flower retries
(503, or 504 after the deadline), never into 401/403.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from ..core import fleet
from ..core.envelope import make_envelope
from ..core.exceptions import AuthError, GatewayError, NotDeliveredError, TransportError
from ..core.failures import reply_for_error
from ..proto.envelope_pb2 import Dialect, Reply
from ..reliable import DEFAULT_POLICY, ReliableSender, RetryPolicy
from ..transport import TransportClient
from .call_window import CallWindow

log = logging.getLogger(__name__)


class JobForwarder:
    """Carries the Fleet calls of one job on one site to the relay."""

    def __init__(
        self,
        *,
        job_id: str,
        site: str,
        client: TransportClient,
        policy: RetryPolicy = DEFAULT_POLICY,
        window: CallWindow | None = None,
    ) -> None:
        """``window``: where each reply is counted (the site's one window, which all its
        jobs share; by default one of this job's own)."""
        self.job_id = job_id
        self.site = site
        self._policy = policy
        self.sender = ReliableSender(client, policy=policy)
        self.calls = 0
        self.window = window if window is not None else CallWindow()

    async def forward(
        self,
        method: str,
        dialect: Dialect,
        headers: Iterable[tuple[str, bytes]],
        body: bytes,
    ) -> Reply:
        """Forward one call; always returns a reply (never raises for I/O failures)."""
        self.calls += 1
        budget = min(self._policy.deadline, fleet.call_budget(method))
        envelope = make_envelope(
            job_id=self.job_id,
            site=self.site,
            method=method,
            dialect=dialect,
            headers=headers,
            body=body,
            deadline_unix_ms=int((time.time() + budget) * 1000),
        )
        failure: GatewayError
        try:
            reply = await self.sender.send(envelope, budget=budget)
        except AuthError as exc:
            # The relay refused this site's own certificate: to the SuperNode a failure
            # of the path that never reached the SuperLink (503), never a 403, which
            # Flower reads as "run not running".
            failure = NotDeliveredError(str(exc))
        except TransportError as exc:
            # 503 once the sender gave up, 504 past the deadline, 413 for a frame too large.
            failure = exc
        else:
            return self._counted(reply)
        return self._counted(self._failed(envelope.message_id, method, failure))

    def _counted(self, reply: Reply) -> Reply:
        """Count the reply the SuperNode gets: a status >= 400 is an error whether the
        gateway (503, 504, 413) or the SuperLink gave it."""
        self.window.record(time.monotonic(), error=reply.http_status >= 400)
        return reply

    def _failed(self, message_id: str, method: str, failure: GatewayError) -> Reply:
        log.warning(
            "relay call failed",
            extra={
                "job": self.job_id,
                "method": method,
                "status": failure.http_status,
                "error": str(failure),
            },
        )
        return reply_for_error(message_id, failure, detail=f"gateway: {failure}")
