"""A PullMessages whose reply the relay lost is reported, so its job fails clearly.

Flower hands each message out once; a pull answered into a relay that died (or
whose execution failed) loses what it carried, and the run would wait for it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.core.envelope import upstream_reply
from gateway.core.identity import Peer, Role
from gateway.proto.envelope_pb2 import Envelope, Reply
from gateway.relay.dispatcher import Dispatcher, LostMessage
from gateway.relay.lgc import Upstream
from gateway.reliable import ReliableReceiver, SqliteDedupStore
from tests.support.relay import fleet_call

SITE = Peer("site-1", Role.SITE)


class _HeldUpstream(Upstream):
    """Answers every call once released; ``raises`` makes each call fail instead."""

    def __init__(self, *, raises: bool = False) -> None:
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.raises = raises

    async def call(self, envelope: Envelope, *, timeout: float) -> Reply:
        self.started.set()
        await self.release.wait()
        if self.raises:
            raise RuntimeError("the LGC broke")
        return upstream_reply(envelope.message_id, http_status=200, grpc_code=0, body=b"")

    async def aclose(self) -> None:
        pass


def _dispatcher(
    store: SqliteDedupStore, upstream: Upstream
) -> tuple[Dispatcher, list[LostMessage]]:
    dispatcher = Dispatcher(ReliableReceiver(store))
    dispatcher.add_job("job", frozenset({"site-1"}), upstream)
    lost: list[LostMessage] = []
    dispatcher.on_lost_message = lost.append
    return dispatcher, lost


async def test_a_pull_in_flight_when_the_relay_died_is_reported_at_the_restart(
    tmp_path: Path,
) -> None:
    path = tmp_path / "dedup.db"
    with SqliteDedupStore(path) as store:
        first, _ = _dispatcher(store, held := _HeldUpstream())
        calls = [
            asyncio.create_task(first.handle(SITE, fleet_call(method, f"m-{method}")))
            for method in ("PullMessages", "SendNodeHeartbeat")
        ]
        await held.started.wait()
        await asyncio.sleep(0)
        # The process dies here: nothing completes, nothing is cleaned up.
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
    with SqliteDedupStore(path) as store:
        restarted, lost = _dispatcher(store, _HeldUpstream())
        assert restarted.report_lost_messages() == 1
    assert lost == [LostMessage("job", "site-1", "PullMessages", "m-PullMessages")]
    assert "site site-1's PullMessages (message m-PullMessages)" in lost[0].describe()
    assert "Submit the job again" in lost[0].describe()


async def test_a_pull_whose_execution_fails_is_reported_at_once(tmp_path: Path) -> None:
    with SqliteDedupStore(tmp_path / "dedup.db") as store:
        dispatcher, lost = _dispatcher(store, upstream := _HeldUpstream(raises=True))
        upstream.release.set()
        reply = await dispatcher.handle(SITE, fleet_call("PullMessages", "m-1"))
        assert reply.http_status == 504
        assert lost == [LostMessage("job", "site-1", "PullMessages", "m-1")]
        # Other methods' lost outcomes are refused on retry, but lose no Flower message.
        await dispatcher.handle(SITE, fleet_call("PushMessages", "m-2"))
        assert len(lost) == 1


async def test_answered_pulls_are_never_reported(tmp_path: Path) -> None:
    with SqliteDedupStore(tmp_path / "dedup.db") as store:
        dispatcher, lost = _dispatcher(store, upstream := _HeldUpstream())
        upstream.release.set()
        assert (await dispatcher.handle(SITE, fleet_call("PullMessages", "m-1"))).http_status == 200
        assert dispatcher.report_lost_messages() == 0
    assert lost == []


def test_a_note_that_is_not_a_lost_message_is_ignored() -> None:
    assert LostMessage.from_note("") is None
    assert LostMessage.from_note("a\tb") is None
    message = LostMessage("j", "s", "PullMessages", "m")
    assert LostMessage.from_note(message.note()) == message
