"""Route each envelope to its job's LGC, after deciding whether it may go there.

The dispatcher is the relay's gatekeeper. Every envelope, Fleet or control, is
refused when the peer's certificate is revoked. A call is forwarded only when the
verified peer is a site, the envelope does not claim another site's name, the
job runs on this relay, the site takes part in the job, the method is a Fleet
method and the deadline has not passed. Anything else is refused here, with a
reason, and reaches no SuperLink.

An envelope carried by an edge relay is authorized by the site that signed it
(:mod:`gateway.core.site_signing`): once :attr:`Dispatcher.carried` finds the
signature valid and the site provisioned behind that edge, the site becomes the
peer and the inner envelope the envelope, so every check below, and the dedup
scope, are the same as if the site had connected itself. An edge relay's own
envelopes (unsigned) are refused; so is any signed envelope this relay cannot check.

A PullMessages whose outcome is lost (the relay died while the SuperLink
answered it) is reported to :attr:`Dispatcher.on_lost_message`: Flower hands a
message out once, so the job may otherwise wait for it until its time limit.

Refusals are metered per peer (:mod:`gateway.transport.refusals`): their log lines
are aggregated, and a peer that keeps being refused is blocked for a while, its calls
answered "busy" unread, here and by the transports.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ..core import fleet
from ..core.envelope import now_ms
from ..core.exceptions import (
    AuthError,
    DeadlineError,
    GatewayError,
    RelayBusyError,
    ReplayError,
    UnknownJobError,
    UnknownMethodError,
)
from ..core.failures import reply_for_error
from ..core.identity import Peer, Role
from ..core.site_signing import REPLAY, CarriedEnvelopes, mark
from ..observability import metrics
from ..proto.envelope_pb2 import KIND_FLEET, Envelope, Reply
from ..reliable import LostOutcome, MemoryDedupStore, ReliableReceiver, dedup_key
from ..transport.admission import Admission
from .lgc import Upstream

log = logging.getLogger(__name__)

ControlHandler = Callable[[Peer, Envelope], Awaitable[Reply]]
RevocationCheck = Callable[[Peer], str | None]
"""Why a peer's certificate is revoked, or ``None`` when it is not."""


LOST_IF_UNANSWERED = frozenset({"PullMessages"})
"""Fleet methods whose lost reply loses Flower data: the SuperLink marks the
messages it hands out as delivered and never hands them out again (flwr 1.42,
``get_message_ins``), so a pull answered into a dead relay drops them."""


@dataclass(frozen=True)
class LostMessage:
    """A Fleet call that may have reached the SuperLink, whose reply is gone."""

    job_id: str
    site: str
    method: str
    message_id: str

    def note(self) -> str:
        """How it is kept with its pending dedup record."""
        return "\t".join((self.job_id, self.site, self.method, self.message_id))

    @classmethod
    def from_note(cls, note: str) -> LostMessage | None:
        fields = note.split("\t")
        return cls(*fields) if len(fields) == 4 else None

    def describe(self) -> str:
        return (
            f"site {self.site}'s {self.method} (message {self.message_id}) was at the "
            "SuperLink when the relay lost its reply; Flower hands a message out only "
            "once, so a message it carried is lost and the run could wait for it until "
            "its time limit. Submit the job again."
        )


@dataclass(frozen=True)
class JobRoute:
    """Where a job's Fleet calls go, and who may send them."""

    job_id: str
    sites: frozenset[str]
    upstream: Upstream


@dataclass
class DispatchStats:
    """What the dispatcher did, per job (feeds metrics and tests)."""

    forwarded: Counter[str] = field(default_factory=Counter)
    ledger: Counter[str] | None = None
    """Executions per message id of calls run at most once, kept only when asked
    for (tests, audits); calls in ``fleet.REPLAYED_NOT_CACHED`` are not in it."""
    replayable: int = 0
    """Forwarded calls that a retry runs again (``fleet.REPLAYED_NOT_CACHED``)."""
    refused: Counter[str] = field(default_factory=Counter)
    answered: Counter[str] = field(default_factory=Counter)
    """Fleet calls answered per job after the checks (executed, replayed or joined):
    what the relay's ``flgate_relay_fleet_calls_total`` counts."""
    received: int = 0
    at_superlink: Counter[str] = field(default_factory=Counter)
    """Fleet calls waiting for a SuperLink's answer now, by method (0 entries kept,
    so that a scrape shows the methods seen)."""


class Dispatcher:
    """Authorizes envelopes and hands them to the LGC of their job."""

    def __init__(
        self,
        receiver: ReliableReceiver | None = None,
        *,
        ledger: bool = False,
        admission: Admission | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``admission``: the relay's, shared with its transports (its refusal meter
        blocks flooding peers everywhere); ``clock``: monotonic seconds."""
        self._jobs: dict[str, JobRoute] = {}
        self.admission = admission if admission is not None else Admission()
        self._clock = clock
        self._flushed = clock()
        self.stats = DispatchStats(ledger=Counter() if ledger else None)
        self.receiver = receiver if receiver is not None else ReliableReceiver(MemoryDedupStore())
        """Executes each message id at most once; its store may be durable."""
        self.control: ControlHandler | None = None
        """Handles AGENT and ADMIN envelopes (the job manager's service), if any."""
        self.revoked: RevocationCheck | None = None
        """The federation's revocation list, if the relay has one."""
        self.carried: CarriedEnvelopes | None = None
        """Checks site-signed envelopes that edge relays carry; ``None``: refuse them."""
        self._wall_clock: Callable[[], float] = time.time
        self.on_lost_message: Callable[[LostMessage], None] = lambda lost: None
        """Told of each call in :data:`LOST_IF_UNANSWERED` whose reply was lost."""
        self.receiver.on_lost = self._lost

    def report_lost_messages(self) -> int:
        """Tell :attr:`on_lost_message` of the calls an earlier relay process lost;
        call it once at start, before the listeners open. Returns how many."""
        lost = [m for r in self.receiver.lost() if (m := LostMessage.from_note(r.note))]
        for message in lost:
            self.on_lost_message(message)
        return len(lost)

    def _lost(self, outcome: LostOutcome) -> None:
        if message := LostMessage.from_note(outcome.note):
            self.on_lost_message(message)

    def add_job(self, job_id: str, sites: frozenset[str], upstream: Upstream) -> None:
        self._jobs[job_id] = JobRoute(job_id=job_id, sites=sites, upstream=upstream)

    def remove_job(self, job_id: str) -> JobRoute | None:
        return self._jobs.pop(job_id, None)

    def jobs(self) -> list[JobRoute]:
        return list(self._jobs.values())

    def _refuse(self, envelope: Envelope, peer: Peer, refusal: GatewayError, reason: str) -> Reply:
        """``reason``: the class of the refusal in the metrics (``auth``, ``not_in_job``...)."""
        self.stats.refused[envelope.job_id] += 1
        metrics.refusal(reason)
        lines = self.admission.refusals.refused(
            str(peer), type(refusal).__name__, str(refusal), self._clock()
        )
        for line in lines:
            extra = {**line.extra, "job": envelope.job_id, "method": envelope.method}
            log.warning(line.message, extra={**extra, "status": refusal.http_status})
        return reply_for_error(envelope.message_id, refusal)

    def _flush_refusal_logs(self) -> None:
        """Now and then, log the aggregated refusals whose interval is over."""
        now = self._clock()
        if now - self._flushed < 1.0:
            return
        self._flushed = now
        for line in self.admission.refusals.flush(now):
            log.warning(line.message, extra=line.extra)

    async def handle(self, peer: Peer, envelope: Envelope) -> Reply:
        self._flush_refusal_logs()
        blocked = self.admission.blocked(str(peer), self._clock())
        if blocked is not None:
            self.stats.refused[envelope.job_id] += 1
            return reply_for_error(envelope.message_id, RelayBusyError(blocked.message))
        revocation = self.revoked(peer) if self.revoked is not None else None
        if revocation is not None:
            return self._refuse(envelope, peer, AuthError(revocation), "revoked")
        if peer.role is Role.EDGE or envelope.HasField("signed"):
            opened = self._open_carried(peer, envelope)
            if isinstance(opened, Reply):
                return opened
            peer, envelope = opened
        if envelope.kind != KIND_FLEET:
            if self.control is None:
                return reply_for_error(
                    envelope.message_id, UnknownMethodError("this relay runs no job manager")
                )
            return await self.control(peer, envelope)
        self.stats.received += 1
        if peer.role is not Role.SITE:
            return self._refuse(
                envelope,
                peer,
                AuthError(f"{peer} is not a site certificate; only sites call the Fleet API"),
                "not_a_site",
            )
        if envelope.site and envelope.site != peer.name:
            return self._refuse(
                envelope,
                peer,
                AuthError(
                    f"certificate names site {peer.name!r} but the envelope claims "
                    f"{envelope.site!r}"
                ),
                "wrong_site",
            )
        route = self._jobs.get(envelope.job_id)
        if route is None:
            return self._refuse(
                envelope,
                peer,
                UnknownJobError(f"job {envelope.job_id!r} is not running on this relay"),
                "unknown_job",
            )
        if peer.name not in route.sites:
            return self._refuse(
                envelope,
                peer,
                AuthError(f"site {peer.name!r} is not part of job {envelope.job_id!r}"),
                "not_in_job",
            )
        if not fleet.is_fleet_method(envelope.method):
            return self._refuse(
                envelope,
                peer,
                UnknownMethodError(f"{envelope.method!r} is not a Fleet API method; not forwarded"),
                "not_fleet",
            )
        if envelope.attempt > 1:
            metrics.relay_retry(envelope.job_id, peer.name)
            log.info(
                "received a retried call",
                extra={
                    "message_id": envelope.message_id,
                    "job": envelope.job_id,
                    "site": peer.name,
                    "attempt": envelope.attempt,
                },
            )
        reply = await self._answer(peer, envelope, route)
        self.stats.answered[envelope.job_id] += 1
        metrics.relay_call(
            envelope.job_id,
            peer.name,
            envelope.method,
            reply.http_status,
            len(envelope.body),
            len(reply.body),
        )
        return reply

    def _open_carried(self, carrier: Peer, envelope: Envelope) -> tuple[Peer, Envelope] | Reply:
        """The signing site and its envelope, or the refusal of a carried envelope."""
        if self.carried is None:
            if not envelope.HasField("signed"):
                return carrier, envelope  # an edge's own call: the role checks refuse it
            return self._refuse(
                envelope,
                carrier,
                AuthError("this relay checks no site signatures; it serves no edge relays"),
                "signature",
            )
        try:
            return self.carried.open(carrier, envelope, now=self._wall_clock())
        except ReplayError as exc:
            return mark(self._refuse(envelope, carrier, exc, "replay"), REPLAY)
        except AuthError as exc:
            return self._refuse(envelope, carrier, exc, "signature")

    async def _answer(self, peer: Peer, envelope: Envelope, route: JobRoute) -> Reply:
        """Run an authorized Fleet call (at most once, unless Flower replays it anyway)."""
        remaining = (
            (envelope.deadline_unix_ms - now_ms()) / 1000
            if envelope.deadline_unix_ms
            else fleet.DEFAULT_CALL_BUDGET
        )
        if remaining <= 0:
            # Not forwarded now, but an earlier attempt of this id may have been: 504.
            return reply_for_error(
                envelope.message_id,
                DeadlineError("the call's deadline passed before it reached the relay"),
            )

        async def forward() -> Reply:
            self.stats.forwarded[envelope.job_id] += 1
            at_superlink = self.stats.at_superlink
            method = metrics.method_label(envelope.method)
            at_superlink[method] += 1
            started = time.perf_counter()
            try:
                reply = await route.upstream.call(
                    envelope, timeout=min(remaining, fleet.DEFAULT_CALL_BUDGET)
                )
            finally:
                at_superlink[method] -= 1
            metrics.superlink_call(envelope.method, time.perf_counter() - started)
            return reply

        if envelope.method in fleet.REPLAYED_NOT_CACHED:
            self.stats.replayable += 1
            return await forward()

        def execute() -> Awaitable[Reply]:
            if self.stats.ledger is not None:
                self.stats.ledger[envelope.message_id] += 1
            return forward()

        note = (
            LostMessage(envelope.job_id, peer.name, envelope.method, envelope.message_id).note()
            if envelope.method in LOST_IF_UNANSWERED
            else ""
        )
        return await self.receiver.handle(
            envelope.message_id, execute, scope=dedup_key(peer.name, envelope.job_id), note=note
        )
