"""The site side: send an envelope, retrying transport failures with one message id.

A transport never resends (bytes may have left); this shell does, because the
relay's :class:`~gateway.reliable.receiver.ReliableReceiver` executes each id
at most once. The decisions (retry or not, how long to wait, when to stop)
come from :class:`~gateway.reliable.protocol.SenderProtocol`; this class only
sends, sleeps and counts.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

from ..core.exceptions import AuthError, DeadlineError, FrameTooLargeError, TransportError
from ..observability import metrics
from ..proto.envelope_pb2 import Envelope, Reply
from ..transport import TransportClient
from .protocol import DEFAULT_POLICY, GiveUp, Retry, RetryPolicy, SenderProtocol

log = logging.getLogger(__name__)


class GiveUpError(TransportError):
    """Every attempt to deliver one request failed and the sender stopped retrying.

    A :class:`~gateway.core.exceptions.TransportError` but not a ``DeadlineError``:
    the LGS answers it with 503, which the SuperNode retries with a new call.
    Chained (``from``) to the last attempt's error.
    """

    def __init__(self, reason: str, *, message_id: str, attempts: int) -> None:
        super().__init__(reason)
        self.message_id = message_id
        self.attempts = attempts


RetryCallback = Callable[[Envelope, Retry, TransportError], None]
"""Called before each backoff: the envelope, the decision, the failure. Must not raise."""
GiveUpCallback = Callable[[Envelope, GiveUp, BaseException], None]
"""Called once when the sender stops: the envelope, the decision, the failure. Must not raise."""

# Failures that no retry can heal: the relay refused this site's certificate,
# or the envelope is over a size limit.
_FATAL: tuple[type[Exception], ...] = (AuthError, FrameTooLargeError)


class ReliableSender:
    """Delivers envelopes over a :class:`TransportClient`, retrying with the same id.

    One instance per transport client (a site's connection to the relay),
    shared by every call of every job on that site.
    """

    def __init__(
        self,
        client: TransportClient,
        *,
        policy: RetryPolicy = DEFAULT_POLICY,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_retry: RetryCallback | None = None,
        on_give_up: GiveUpCallback | None = None,
    ) -> None:
        self._client = client
        self.policy = policy
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._sleep = sleep
        self._on_retry = on_retry
        self._on_give_up = on_give_up
        self.attempts = 0
        self.retries = 0
        self.give_ups = 0

    async def send(self, envelope: Envelope, *, budget: float | None = None) -> Reply:
        """Deliver ``envelope`` and return the relay's reply.

        Sets ``envelope.attempt`` on every try and never touches
        ``envelope.message_id``. ``budget`` (seconds) shortens the policy's
        deadline, e.g. for heartbeats that Flower waits for only 5 s.

        Raises the ``AuthError`` or ``FrameTooLargeError`` of the first attempt
        that hits one, :class:`GiveUpError` once the deadline leaves no room for
        another attempt, and any other exception of the transport unchanged.
        Cancellation propagates at once, from a send or a backoff.
        """
        protocol = SenderProtocol(
            envelope.message_id,
            policy=self.policy,
            now=self._clock(),
            rng=self._rng,
            budget=budget,
        )
        attempt = protocol.first_attempt()
        while True:
            envelope.attempt = attempt
            timeout = protocol.remaining(self._clock())
            try:
                if timeout <= 0:
                    # The backoff overslept the deadline; count it as a timeout.
                    raise DeadlineError("the deadline passed during the backoff")
                self.attempts += 1
                reply = await self._client.send(envelope, timeout=timeout)
            except _FATAL as exc:
                final = protocol.on_failure(self._clock(), retryable=False, error=str(exc))
                self._gave_up(envelope, final, exc)
                raise
            except TransportError as exc:
                decision = protocol.on_failure(self._clock(), retryable=True, error=str(exc))
                if isinstance(decision, GiveUp):
                    self._gave_up(envelope, decision, exc)
                    raise GiveUpError(
                        decision.reason,
                        message_id=envelope.message_id,
                        attempts=decision.attempts,
                    ) from exc
                self.retries += 1
                metrics.site_retry(envelope.job_id, envelope.method)
                log.info(
                    "retrying relay call",
                    extra={
                        "message_id": envelope.message_id,
                        "job": envelope.job_id,
                        "method": envelope.method,
                        "attempt": decision.attempt,
                        "delay": round(decision.delay, 3),
                        "error": str(exc),
                    },
                )
                if self._on_retry is not None:
                    self._on_retry(envelope, decision, exc)
                await self._sleep(decision.delay)
                attempt = decision.attempt
                continue
            protocol.on_reply(self._clock())
            return reply

    def _gave_up(self, envelope: Envelope, decision: GiveUp, exc: BaseException) -> None:
        self.give_ups += 1
        metrics.site_give_up(envelope.job_id, envelope.method)
        log.warning(
            "gave up on relay call",
            extra={
                "message_id": envelope.message_id,
                "job": envelope.job_id,
                "method": envelope.method,
                "attempts": decision.attempts,
                "reason": decision.reason,
            },
        )
        if self._on_give_up is not None:
            self._on_give_up(envelope, decision, exc)

    async def aclose(self) -> None:
        """Close the underlying transport client."""
        await self._client.aclose()
