"""Admission control at the relay: what each peer, and all peers together, may have in flight.

A certificate proves who a peer is, not that it behaves: one authenticated site that
sends forty 64 MiB envelopes at once would otherwise make the relay buffer all of them.
Every transport server asks :meth:`Admission.admit_call` *before* it buffers a call's
body (tcps: at the frame header; https: from ``Content-Length``; grpcs: as soon as gRPC
hands the message over, the earliest its API allows) and gives the grant back with
:meth:`Admission.release` once the reply is written. A refused call is answered "relay
busy" unread: nothing ran, so the site's reliable sender retries it with the same
message id after a backoff, and at its deadline answers 503, which Flower retries.

A peer that keeps being refused is blocked for a while by the relay's
:class:`~.refusals.RefusalMeter`, which the admission holds: the transports then refuse
its calls and connections too (:meth:`Admission.blocked`). Before a peer is known, while
its TLS handshake runs, the tcps and https listeners count the connection against its
source address in the admission's :class:`~.handshakes.PendingHandshakes`.

One :class:`Admission` serves every listener of a relay, so the totals hold across
transports. A pure core: no I/O, no asyncio; time is passed in.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ..core.config import Budgets, MiB
from ..core.exceptions import ConfigError
from ..observability import metrics
from .handshakes import PendingHandshakes
from .refusals import RefusalMeter


@dataclass(frozen=True)
class Grant:
    """One admitted call: give it back with :meth:`Admission.release`, exactly once."""

    peer: str
    nbytes: int


@dataclass(frozen=True)
class Refusal:
    """Why a call or connection was not admitted."""

    budget: str
    """The budget that was full: a field name of :class:`~gateway.core.config.Budgets`."""
    message: str


@dataclass
class _InFlight:
    calls: int = 0
    bytes: int = 0
    connections: int = 0


class Admission:
    """Counts what each peer has in flight and admits or refuses the next call."""

    def __init__(
        self,
        budgets: Budgets = Budgets(),
        *,
        max_frame_bytes: int | None = None,
        refusals: RefusalMeter | None = None,
        handshakes: PendingHandshakes | None = None,
    ) -> None:
        """``max_frame_bytes``: the largest envelope the transports accept; the byte
        budgets must each fit one, or such an envelope could never be admitted.
        ``refusals``: the relay's meter of refused calls (its blocked peers).
        ``handshakes``: the TLS handshakes in progress; by default counted against the
        budgets' handshake budgets, logged at the refusals' log interval."""
        for name in ("bytes_per_peer", "bytes_total"):
            budget = getattr(budgets, name)
            if budget is not None and max_frame_bytes is not None and budget < max_frame_bytes:
                raise ConfigError(
                    f"the {name} budget ({budget / MiB:.0f} MiB) must hold at least one "
                    f"envelope of the frame limit ({max_frame_bytes / MiB:.0f} MiB)"
                )
        self.budgets = budgets
        self.refusals = refusals if refusals is not None else RefusalMeter()
        self.handshakes = (
            handshakes
            if handshakes is not None
            else PendingHandshakes(budgets, log_interval=self.refusals.policy.log_interval)
        )
        self._peers: dict[str, _InFlight] = {}
        self._total = _InFlight()
        self.refused: Counter[str] = Counter()
        """Refusals by budget name (feeds metrics and tests)."""

    def blocked(self, peer: str, now: float) -> Refusal | None:
        """A refusal while ``peer`` is blocked for being refused too often, else ``None``."""
        if not self.refusals.blocked(peer, now):
            return None
        self.refused["blocked"] += 1
        metrics.refusal("blocked")
        seconds = self.refusals.policy.block_seconds
        return Refusal(
            "blocked",
            f"relay busy: {peer} was refused too often and is refused for up to "
            f"{seconds:g} s; check the site's jobs and certificate",
        )

    def in_flight(self, peer: str | None = None) -> tuple[int, int, int]:
        """(calls, bytes, connections) in flight for ``peer``, or in total."""
        state = self._total if peer is None else self._peers.get(peer, _InFlight())
        return state.calls, state.bytes, state.connections

    def admit_call(self, peer: str, nbytes: int) -> Grant | Refusal:
        """Admit a call of ``nbytes`` request bytes from ``peer``, or say which budget is full."""
        budgets = self.budgets
        mine = self._peers.get(peer, _InFlight())
        total = self._total
        yours, all_peers = f"from {peer}", "from all peers"
        checks = (
            ("calls_per_peer", mine.calls + 1, budgets.calls_per_peer, "calls", yours),
            ("calls_total", total.calls + 1, budgets.calls_total, "calls", all_peers),
            ("bytes_per_peer", mine.bytes + nbytes, budgets.bytes_per_peer, "bytes", yours),
            ("bytes_total", total.bytes + nbytes, budgets.bytes_total, "bytes", all_peers),
        )
        for name, wanted, budget, unit, whose in checks:
            if budget is not None and wanted > budget:
                self.refused[name] += 1
                metrics.refusal("busy")
                amount = f"{budget / MiB:.1f} MiB" if unit == "bytes" else f"{budget} calls"
                return Refusal(
                    name,
                    f"relay busy: {amount} in flight {whose} at most; "
                    "retry after the calls in flight are answered",
                )
        state = self._peers.setdefault(peer, mine)
        state.calls += 1
        state.bytes += nbytes
        total.calls += 1
        total.bytes += nbytes
        return Grant(peer, nbytes)

    def release(self, grant: Grant) -> None:
        """The call's reply is written (or the call ended otherwise)."""
        state = self._peers[grant.peer]
        state.calls -= 1
        state.bytes -= grant.nbytes
        self._total.calls -= 1
        self._total.bytes -= grant.nbytes
        self._forget_if_idle(grant.peer, state)

    def open_connection(self, peer: str) -> Refusal | None:
        """Admit a new connection of ``peer``; ``None`` when admitted."""
        budget = self.budgets.connections_per_peer
        state = self._peers.setdefault(peer, _InFlight())
        if budget is not None and state.connections + 1 > budget:
            self.refused["connections_per_peer"] += 1
            metrics.refusal("busy")
            self._forget_if_idle(peer, state)
            return Refusal(
                "connections_per_peer",
                f"relay busy: {budget} connections from {peer} at most; close one first",
            )
        state.connections += 1
        self._total.connections += 1
        return None

    def close_connection(self, peer: str) -> None:
        """An admitted connection of ``peer`` closed."""
        state = self._peers[peer]
        state.connections -= 1
        self._total.connections -= 1
        self._forget_if_idle(peer, state)

    def _forget_if_idle(self, peer: str, state: _InFlight) -> None:
        # Bounded memory: a peer with nothing in flight is not remembered.
        if state.calls == 0 and state.bytes == 0 and state.connections == 0:
            self._peers.pop(peer, None)
