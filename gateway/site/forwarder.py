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
from ..core.envelope import gateway_reply, make_envelope
from ..core.exceptions import AuthError, DeadlineError, FrameTooLargeError, TransportError
from ..proto.envelope_pb2 import Dialect, Reply
from ..reliable import DEFAULT_POLICY, ReliableSender, RetryPolicy
from ..transport import TransportClient

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
    ) -> None:
        self.job_id = job_id
        self.site = site
        self._policy = policy
        self.sender = ReliableSender(client, policy=policy)
        self.calls = 0

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
        try:
            return await self.sender.send(envelope, budget=budget)
        except DeadlineError as exc:
            return self._failed(envelope.message_id, method, 504, exc)
        except FrameTooLargeError as exc:
            return self._failed(envelope.message_id, method, 413, exc)
        except (TransportError, AuthError) as exc:
            return self._failed(envelope.message_id, method, 503, exc)

    def _failed(self, message_id: str, method: str, status: int, exc: Exception) -> Reply:
        log.warning(
            "relay call failed",
            extra={"job": self.job_id, "method": method, "status": status, "error": str(exc)},
        )
        return gateway_reply(message_id, status, f"gateway: {exc}")
