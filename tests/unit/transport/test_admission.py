"""Admission control: the pure budgets, the tcps framing that skips what is not admitted,
and every TLS transport answering "busy" on real sockets before the handler sees a call."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.config import Budgets, Limits, MiB
from gateway.core.exceptions import ConfigError, RelayBusyError
from gateway.core.identity import Peer
from gateway.proto.envelope_pb2 import ORIGIN_UPSTREAM, Envelope, Reply
from gateway.transport import TransportClient, TransportServer, connect, listen
from gateway.transport.admission import Admission, Grant, Refusal
from gateway.transport.common import frame_limit
from gateway.transport.framing import HEADER, MAGIC, Frame, FrameProtocol, FrameType, Side, Skipped
from tests.support.pki import FederationKits

SCHEMES = ["grpcs", "https", "tcps"]
UNIT = 0.1  # seconds; every timeout below is a multiple of it
SMALL = Limits(max_frame_bytes=64 * 1024)
_LIMIT = frame_limit(SMALL)
assert _LIMIT is not None
FRAME: int = _LIMIT
"""The largest envelope under ``SMALL``; the byte budgets below are multiples of it."""


# The pure core.


def test_a_peer_gets_its_budget_and_no_more_and_gets_it_back_on_release() -> None:
    admission = Admission(Budgets(calls_per_peer=2, bytes_per_peer=None))
    first, second = admission.admit_call("site-1", 10), admission.admit_call("site-1", 10)
    assert isinstance(first, Grant) and isinstance(second, Grant)
    third = admission.admit_call("site-1", 10)
    assert isinstance(third, Refusal) and third.budget == "calls_per_peer"
    assert "2 calls in flight from site-1 at most" in third.message
    assert isinstance(admission.admit_call("site-2", 10), Grant)  # another peer is not affected
    admission.release(first)
    assert isinstance(admission.admit_call("site-1", 10), Grant)
    assert admission.refused == {"calls_per_peer": 1}


def test_bytes_are_budgeted_per_peer_and_in_total() -> None:
    admission = Admission(Budgets(bytes_per_peer=100, bytes_total=150))
    assert isinstance(admission.admit_call("a", 100), Grant)
    over_mine = admission.admit_call("a", 1)
    assert isinstance(over_mine, Refusal) and over_mine.budget == "bytes_per_peer"
    assert isinstance(admission.admit_call("b", 50), Grant)
    over_all = admission.admit_call("c", 1)
    assert isinstance(over_all, Refusal) and over_all.budget == "bytes_total"
    assert admission.in_flight() == (2, 150, 0)


def test_connections_are_budgeted_per_peer() -> None:
    admission = Admission(Budgets(connections_per_peer=1))
    assert admission.open_connection("a") is None
    refusal = admission.open_connection("a")
    assert refusal is not None and refusal.budget == "connections_per_peer"
    admission.close_connection("a")
    assert admission.open_connection("a") is None


def test_a_budget_of_none_is_off_and_idle_peers_are_forgotten() -> None:
    admission = Admission(
        Budgets(
            bytes_per_peer=None,
            bytes_total=None,
            calls_per_peer=None,
            calls_total=None,
            connections_per_peer=None,
        )
    )
    grants = [admission.admit_call(f"peer-{i % 7}", 10**9) for i in range(1000)]
    assert all(isinstance(g, Grant) for g in grants)
    for grant in grants:
        assert isinstance(grant, Grant)
        admission.release(grant)
    assert admission.in_flight() == (0, 0, 0)
    assert admission._peers == {}  # nothing remembered of peers with nothing in flight


def test_a_byte_budget_below_one_largest_envelope_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"bytes_per_peer budget .* at least one envelope"):
        Admission(Budgets(bytes_per_peer=MiB), max_frame_bytes=64 * MiB)


@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 60), st.booleans()),
        max_size=60,
    )
)
def test_in_flight_figures_never_exceed_a_budget_and_return_to_zero(
    steps: list[tuple[str, int, bool]],
) -> None:
    budgets = Budgets(bytes_per_peer=100, bytes_total=200, calls_per_peer=3, calls_total=6)
    admission = Admission(budgets)
    held: list[Grant] = []
    for peer, size, release in steps:
        if release and held:
            admission.release(held.pop(0))
        decision = admission.admit_call(peer, size)
        if isinstance(decision, Grant):
            held.append(decision)
        calls, nbytes, _ = admission.in_flight()
        assert calls <= 6 and nbytes <= 200
        for name in "abc":
            calls, nbytes, _ = admission.in_flight(name)
            assert calls <= 3 and nbytes <= 100
    for grant in held:
        admission.release(grant)
    assert admission.in_flight() == (0, 0, 0)


# The tcps framing: a request that is not admitted is skipped unread.


def _request(request_id: int, payload: bytes) -> bytes:
    return HEADER.pack(MAGIC, FrameType.REQUEST, request_id, len(payload)) + payload


@given(st.integers(1, 64))
def test_a_refused_request_is_skipped_and_the_next_one_arrives_whatever_the_chunking(
    chunk: int,
) -> None:
    asked: list[tuple[int, int]] = []

    def admit(request_id: int, length: int) -> bool:
        asked.append((request_id, length))
        return request_id != 2

    protocol = FrameProtocol(Side.SERVER, max_payload=1000, admit=admit)
    data = _request(1, b"a" * 30) + _request(2, b"b" * 500) + _request(3, b"c" * 40)
    events = []
    for start in range(0, len(data), chunk):
        protocol.receive_data(data[start : start + chunk])
        events += protocol.events()
        assert protocol.buffered <= max(chunk, 40) + HEADER.size  # never the skipped 500
    assert asked == [(1, 30), (2, 500), (3, 40)]
    assert events == [
        Frame(FrameType.REQUEST, 1, b"a" * 30),
        Skipped(2, 500),
        Frame(FrameType.REQUEST, 3, b"c" * 40),
    ]


def test_a_received_payload_is_the_receive_buffer_itself() -> None:
    protocol = FrameProtocol(Side.SERVER, max_payload=None)
    protocol.receive_data(_request(1, b"x" * 1000))
    (frame,) = protocol.events()
    assert isinstance(frame, Frame) and isinstance(frame.payload, bytearray)
    assert len(frame.payload) == 1000


# Every TLS transport, on real sockets.


class Held:
    """A handler that holds every call until released, and records what reached it."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []
        self.release = asyncio.Event()
        self.arrived = asyncio.Event()

    async def __call__(self, peer: Peer, envelope: Envelope) -> Reply:
        self.seen.append(envelope.body)
        self.arrived.set()
        await self.release.wait()
        return Reply(message_id=envelope.message_id, origin=ORIGIN_UPSTREAM, http_status=200)


def _envelope(body: bytes) -> Envelope:
    return Envelope(job_id="job-a", site="site-1", message_id=uuid.uuid4().hex, body=body)


@contextlib.asynccontextmanager
async def _relay(
    scheme: str, federation: FederationKits, budgets: Budgets, limits: Limits = SMALL
) -> AsyncIterator[tuple[TransportServer, Held, Admission]]:
    held = Held()
    admission = Admission(budgets, max_frame_bytes=frame_limit(limits))
    server = listen(
        f"{scheme}://127.0.0.1:0",
        tls=federation.relay,
        handler=held,
        limits=limits,
        admission=admission,
    )
    await server.start()
    try:
        yield server, held, admission
    finally:
        held.release.set()
        await server.aclose()


def _client(
    scheme: str,
    server: TransportServer,
    federation: FederationKits,
    site: str,
    limits: Limits = SMALL,
) -> TransportClient:
    url = f"{scheme}://localhost:{server.port}"
    return connect(url, tls=federation.sites[site], limits=limits)


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_a_call_over_the_peers_byte_budget_is_refused_unread_and_others_go_on(
    scheme: str, federation: FederationKits
) -> None:
    budgets = Budgets(bytes_per_peer=FRAME, bytes_total=2 * FRAME)
    async with _relay(scheme, federation, budgets) as (server, held, admission):
        site_1 = _client(scheme, server, federation, "site-1")
        site_2 = _client(scheme, server, federation, "site-2")
        try:
            first = asyncio.ensure_future(site_1.send(_envelope(b"1" * 600_000), timeout=50 * UNIT))
            await asyncio.wait_for(held.arrived.wait(), 50 * UNIT)
            with pytest.raises(RelayBusyError, match="MiB in flight from site:site-1 at most"):
                await site_1.send(_envelope(b"2" * 600_000), timeout=50 * UNIT)
            # Another site's budget is its own.
            other = asyncio.ensure_future(site_2.send(_envelope(b"3" * 600_000), timeout=50 * UNIT))
            while len(held.seen) < 2:
                await asyncio.sleep(UNIT)
            held.release.set()
            assert (await first).http_status == 200 and (await other).http_status == 200
            again = await site_1.send(_envelope(b"4" * 600_000), timeout=50 * UNIT)
            assert again.http_status == 200
        finally:
            await site_1.aclose()
            await site_2.aclose()
        assert sorted(body[:1] for body in held.seen) == [b"1", b"3", b"4"]  # never "2"
        assert admission.refused["bytes_per_peer"] == 1
    assert admission.in_flight()[:2] == (0, 0)


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_a_call_over_the_peers_call_budget_is_refused(
    scheme: str, federation: FederationKits
) -> None:
    async with _relay(scheme, federation, Budgets(calls_per_peer=1)) as (server, held, admission):
        client = _client(scheme, server, federation, "site-1")
        try:
            first = asyncio.ensure_future(client.send(_envelope(b"1"), timeout=50 * UNIT))
            await asyncio.wait_for(held.arrived.wait(), 50 * UNIT)
            with pytest.raises(RelayBusyError):
                await client.send(_envelope(b"2"), timeout=50 * UNIT)
            held.release.set()
            assert (await first).http_status == 200
            assert (await client.send(_envelope(b"3"), timeout=50 * UNIT)).http_status == 200
        finally:
            await client.aclose()
        assert held.seen == [b"1", b"3"]
        assert admission.refused == {"calls_per_peer": 1}


@pytest.mark.parametrize("scheme", ["https", "tcps"])
async def test_a_connection_over_the_peers_budget_is_refused_until_one_closes(
    scheme: str, federation: FederationKits
) -> None:
    budgets = Budgets(connections_per_peer=1)
    async with _relay(scheme, federation, budgets) as (server, held, admission):
        held.release.set()
        first = _client(scheme, server, federation, "site-1")
        second = _client(scheme, server, federation, "site-1")
        try:
            assert (await first.send(_envelope(b"1"), timeout=50 * UNIT)).http_status == 200
            with pytest.raises(RelayBusyError, match="connections from site:site-1"):
                await second.send(_envelope(b"2"), timeout=50 * UNIT)
            await first.aclose()
            while admission.in_flight("site-1")[2] and scheme == "tcps":
                await asyncio.sleep(UNIT)  # the relay sees the close soon, not at once
            assert (await second.send(_envelope(b"3"), timeout=50 * UNIT)).http_status == 200
        finally:
            await first.aclose()
            await second.aclose()
        assert held.seen == [b"1", b"3"]


@pytest.mark.parametrize("scheme", ["grpcs", "tcps"])
async def test_a_large_call_is_admitted_before_it_is_uploaded_and_a_refused_one_never_is(
    scheme: str, federation: FederationKits
) -> None:
    # Over 1 MiB, grpcs and tcps ask the relay before they send the body.
    limits = Limits(max_frame_bytes=8 * MiB)
    budgets = Budgets(bytes_per_peer=9 * MiB)
    async with _relay(scheme, federation, budgets, limits) as (server, held, admission):
        client = _client(scheme, server, federation, "site-1", limits)
        try:
            big = 5 * MiB
            first = asyncio.ensure_future(client.send(_envelope(b"1" * big), timeout=50 * UNIT))
            await asyncio.wait_for(held.arrived.wait(), 50 * UNIT)
            with pytest.raises(RelayBusyError, match="in flight from site:site-1 at most"):
                await client.send(_envelope(b"2" * big), timeout=50 * UNIT)
            held.release.set()
            assert (await first).http_status == 200
            assert (await client.send(_envelope(b"3" * big), timeout=50 * UNIT)).http_status == 200
        finally:
            await client.aclose()
    assert [body[:1] for body in held.seen] == [b"1", b"3"]
    assert [len(body) for body in held.seen] == [5 * MiB, 5 * MiB]
    assert admission.in_flight()[:2] == (0, 0)
