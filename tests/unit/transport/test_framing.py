"""The tcps framing core, fed bytes only (no sockets, no event loop)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.exceptions import FrameTooLargeError
from gateway.transport.framing import (
    ASK_PAYLOAD,
    HEADER,
    MAGIC,
    MAX_CONTROL_PAYLOAD,
    Admitted,
    ErrorCode,
    Event,
    Frame,
    FrameProtocol,
    FrameType,
    FramingError,
    PeerError,
    Side,
    Skipped,
    decode_error,
    encode_error,
)

LIMIT = 1024


def pair(limit: int | None = LIMIT) -> tuple[FrameProtocol, FrameProtocol]:
    return FrameProtocol(Side.CLIENT, max_payload=limit), FrameProtocol(
        Side.SERVER, max_payload=limit
    )


def header(frame_type: int, request_id: int, length: int, magic: int = MAGIC) -> bytes:
    return HEADER.pack(magic, frame_type, request_id, length)


def feed(protocol: FrameProtocol, data: bytes, chunk: int | None = None) -> list[Event]:
    step = chunk or max(len(data), 1)
    for start in range(0, len(data), step):
        protocol.receive_data(data[start : start + step])
    return protocol.events()


def test_header_is_fourteen_bytes_magic_type_id_length() -> None:
    client, _ = pair()
    data = client.frame(FrameType.REQUEST, 0x0102030405060708, b"abc")
    assert data == b"\xf1\x01\x01\x02\x03\x04\x05\x06\x07\x08\x00\x00\x00\x03abc"


@pytest.mark.parametrize("chunk", [None, 1, 5, 13, 14, 15])
def test_requests_and_replies_cross_whatever_the_chunking(chunk: int | None) -> None:
    client, server = pair()
    wire = b"".join(
        [
            client.frame(FrameType.REQUEST, 1, b"first"),
            client.frame(FrameType.PING, 0, b"tok"),
            client.frame(FrameType.REQUEST, 2, b""),
            client.frame(FrameType.REQUEST, 2**64 - 1, b"x" * LIMIT),
        ]
    )
    assert feed(server, wire, chunk) == [
        Frame(FrameType.REQUEST, 1, b"first"),
        Frame(FrameType.PING, 0, b"tok"),
        Frame(FrameType.REQUEST, 2, b""),
        Frame(FrameType.REQUEST, 2**64 - 1, b"x" * LIMIT),
    ]
    assert server.buffered == 0
    back = server.frame(FrameType.REPLY, 1, b"answer") + server.frame(FrameType.PONG, 0, b"tok")
    assert feed(client, back, chunk) == [
        Frame(FrameType.REPLY, 1, b"answer"),
        Frame(FrameType.PONG, 0, b"tok"),
    ]


def test_error_frames_arrive_as_peer_errors() -> None:
    client, server = pair()
    wire = server.error_frame((ErrorCode.BAD_ENVELOPE, "not an envelope", 7))
    assert feed(client, wire) == [PeerError(ErrorCode.BAD_ENVELOPE, "not an envelope", 7)]
    assert not client.failed  # an error frame is valid framing


def test_error_payload_is_cut_to_the_control_limit_and_decoding_never_raises() -> None:
    payload = encode_error(ErrorCode.MALFORMED, "é" * 5000)
    assert len(payload) <= MAX_CONTROL_PAYLOAD
    code, message = decode_error(payload)
    assert code == ErrorCode.MALFORMED
    assert message.startswith("éé")
    assert decode_error(b"") == (ErrorCode.MALFORMED, "error frame without a code")
    assert decode_error(b"\x63\xff") == (0x63, "\ufffd")


def test_bad_magic_is_refused_at_the_first_byte_and_nothing_follows() -> None:
    _, server = pair()
    events = feed(server, b"G")
    assert len(events) == 1
    [error] = events
    assert isinstance(error, FramingError)
    assert error.code is ErrorCode.MALFORMED
    assert "first byte 0x47" in error.message
    assert server.failed
    client, _ = pair()
    assert feed(server, client.frame(FrameType.REQUEST, 1, b"late")) == []
    server.receive_eof()
    assert server.events() == []


@pytest.mark.parametrize(
    ("side", "frame_type", "needle"),
    [
        (Side.SERVER, FrameType.REPLY, "unexpected frame type 2 (REPLY) at the server"),
        (Side.CLIENT, FrameType.REQUEST, "unexpected frame type 1 (REQUEST) at the client"),
        (Side.SERVER, 0, "unexpected frame type 0 (unknown) at the server"),
        (Side.CLIENT, 200, "unexpected frame type 200 (unknown) at the client"),
    ],
)
def test_unexpected_frame_types_are_refused_at_the_second_byte(
    side: Side, frame_type: int, needle: str
) -> None:
    protocol = FrameProtocol(side, max_payload=LIMIT)
    [error] = feed(protocol, bytes([MAGIC, frame_type]))
    assert isinstance(error, FramingError)
    assert (error.code, error.message) == (ErrorCode.MALFORMED, needle)


def test_a_request_needs_a_request_id() -> None:
    _, server = pair()
    [error] = feed(server, header(FrameType.REQUEST, 0, 1) + b"x")
    assert isinstance(error, FramingError)
    assert error.message == "request with request id 0"


def test_oversized_frame_is_refused_from_its_header_alone() -> None:
    _, server = pair()
    [error] = feed(server, header(FrameType.REQUEST, 42, LIMIT + 1))
    assert error == FramingError(
        ErrorCode.TOO_LARGE,
        f"request of {LIMIT + 1} bytes exceeds the frame limit of 1024 bytes",
        42,
    )
    assert server.buffered == 0
    server.receive_data(b"x" * 10_000)  # the payload that follows is never buffered
    assert server.buffered == 0


def test_control_frames_have_their_own_small_limit() -> None:
    _, server = pair(limit=None)
    [error] = feed(server, header(FrameType.PING, 0, MAX_CONTROL_PAYLOAD + 1))
    assert isinstance(error, FramingError)
    assert error.code is ErrorCode.TOO_LARGE


def test_no_limit_means_the_format_limit() -> None:
    _, server = pair(limit=None)
    assert feed(server, header(FrameType.REQUEST, 1, 2**32 - 1)) == []
    assert server.max_payload == 2**32 - 1


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (bytes([MAGIC, 1, 0]), "3 of 14 header bytes"),
        (header(FrameType.REQUEST, 1, 10) + b"abc", "3 of 10 payload bytes"),
    ],
)
def test_eof_inside_a_frame_is_truncation(data: bytes, detail: str) -> None:
    _, server = pair()
    assert feed(server, data) == []
    server.receive_eof()
    [error] = server.events()
    assert isinstance(error, FramingError)
    assert error.code is ErrorCode.TRUNCATED
    assert detail in error.message


def test_eof_between_frames_is_clean() -> None:
    client, server = pair()
    feed(server, client.frame(FrameType.REQUEST, 1, b"x"))
    server.receive_eof()
    assert server.events() == []
    assert not server.failed


def test_frame_refuses_what_it_must_not_send() -> None:
    client, server = pair()
    with pytest.raises(FrameTooLargeError, match="request of 1025 bytes exceeds"):
        client.frame(FrameType.REQUEST, 1, b"x" * (LIMIT + 1))
    with pytest.raises(FrameTooLargeError):
        client.frame(FrameType.PING, 0, b"x" * (MAX_CONTROL_PAYLOAD + 1))
    with pytest.raises(ValueError, match="a client does not send REPLY"):
        client.frame(FrameType.REPLY, 1, b"")
    with pytest.raises(ValueError, match="a server does not send REQUEST"):
        server.frame(FrameType.REQUEST, 1, b"")
    with pytest.raises(ValueError, match="64 bits"):
        client.frame(FrameType.REQUEST, 2**64, b"")
    with pytest.raises(ValueError, match="request id 0"):
        server.frame(FrameType.REPLY, 0, b"")
    with pytest.raises(ValueError):
        FrameProtocol(Side.CLIENT, max_payload=2**32)


# --- fuzz: the core never raises, never over-buffers, fails at most once ---------

frames = st.lists(
    st.tuples(
        st.sampled_from([FrameType.REQUEST, FrameType.PING, FrameType.PONG]),
        st.integers(min_value=1, max_value=2**64 - 1),
        st.binary(max_size=64),
    ),
    max_size=8,
)


def _check_invariants(protocol: FrameProtocol, events: list[Event]) -> None:
    assert all(isinstance(e, Frame | PeerError | FramingError) for e in events)
    failures = [i for i, e in enumerate(events) if isinstance(e, FramingError)]
    assert failures in ([], [len(events) - 1])  # at most one, and nothing after it
    assert protocol.failed == bool(failures)
    for event in events:
        if isinstance(event, FramingError):
            assert event.message
            assert event.code in ErrorCode
    assert protocol.buffered <= HEADER.size + LIMIT


@given(data=st.binary(max_size=2000), cuts=st.lists(st.integers(0, 2000), max_size=10))
def test_fuzz_random_bytes_in_random_chunks(data: bytes, cuts: list[int]) -> None:
    for side in Side:
        protocol = FrameProtocol(side, max_payload=LIMIT)
        events: list[Event] = []
        bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
        for start, end in itertools.pairwise(bounds):
            protocol.receive_data(data[start:end])
            events += protocol.events()
        protocol.receive_eof()
        events += protocol.events()
        _check_invariants(protocol, events)
        if data and data[0] != MAGIC:
            assert isinstance(events[0], FramingError)
            assert events[0].code is ErrorCode.MALFORMED


@given(sent=frames, cut=st.integers(min_value=0), junk=st.binary(max_size=64))
def test_fuzz_valid_frames_truncated_or_followed_by_junk(
    sent: list[tuple[FrameType, int, bytes]], cut: int, junk: bytes
) -> None:
    client, server = pair()
    wire = b"".join(client.frame(*frame) for frame in sent)
    expected = [Frame(*frame) for frame in sent]

    # Truncated anywhere: a prefix of the frames, then TRUNCATED unless cut on a boundary.
    cut %= len(wire) + 1
    events = feed(server, wire[:cut], chunk=7)
    server.receive_eof()
    events += server.events()
    _check_invariants(server, events)
    got = [e for e in events if isinstance(e, Frame)]
    assert got == expected[: len(got)]
    boundaries = {0}
    for frame in sent:
        boundaries.add(max(boundaries) + HEADER.size + len(frame[2]))
    if cut in boundaries:
        assert not server.failed
    else:
        assert isinstance(events[-1], FramingError)
        assert events[-1].code is ErrorCode.TRUNCATED

    # Followed by junk: every frame first, then at most one error for the junk.
    _, server = pair()
    events = feed(server, wire + junk, chunk=5)
    _check_invariants(server, events)
    assert [e for e in events if isinstance(e, Frame)][: len(expected)] == expected


@given(length=st.integers(min_value=LIMIT + 1, max_value=2**32 - 1), request_id=st.integers(1, 9))
def test_fuzz_oversized_lengths_are_refused_before_any_payload(
    length: int, request_id: int
) -> None:
    _, server = pair()
    events = feed(server, header(FrameType.REQUEST, request_id, length) + b"\x00" * 100)
    assert events == [
        FramingError(
            ErrorCode.TOO_LARGE,
            f"request of {length} bytes exceeds the frame limit of {LIMIT} bytes",
            request_id,
        )
    ]
    assert server.buffered == 0


def _asking_server(admitted: set[int], calls: list[tuple[int, int]]) -> FrameProtocol:
    def admit(request_id: int, length: int) -> bool:
        calls.append((request_id, length))
        return request_id in admitted

    return FrameProtocol(Side.SERVER, max_payload=LIMIT, admit=admit)


def test_an_asked_request_is_admitted_once_and_its_request_then_arrives_unasked() -> None:
    client, _ = pair()
    calls: list[tuple[int, int]] = []
    server = _asking_server({7}, calls)
    ask = client.frame(FrameType.ASK, 7, ASK_PAYLOAD.pack(600))
    assert feed(server, ask) == [Admitted(7, 600)]
    assert feed(server, client.frame(FrameType.REQUEST, 7, b"x" * 600)) == [
        Frame(FrameType.REQUEST, 7, bytearray(b"x" * 600))
    ]
    assert calls == [(7, 600)]  # the request's header was not admitted again


def test_a_refused_ask_is_skipped_and_costs_no_payload() -> None:
    client, _ = pair()
    calls: list[tuple[int, int]] = []
    server = _asking_server(set(), calls)
    assert feed(server, client.frame(FrameType.ASK, 3, ASK_PAYLOAD.pack(900))) == [Skipped(3, 900)]
    assert server.buffered == 0


def test_a_request_larger_than_it_asked_for_breaks_the_connection() -> None:
    client, _ = pair()
    server = _asking_server({5}, [])
    feed(server, client.frame(FrameType.ASK, 5, ASK_PAYLOAD.pack(10)))
    (event,) = feed(server, client.frame(FrameType.REQUEST, 5, b"x" * 11))
    assert isinstance(event, FramingError) and "after asking for 10" in event.message


@pytest.mark.parametrize(
    ("payload", "needle"),
    [(b"\0" * 7, "ask frame of 7 bytes"), (ASK_PAYLOAD.pack(LIMIT + 1), "exceeds the frame limit")],
)
def test_a_malformed_or_oversized_ask_breaks_the_connection(payload: bytes, needle: str) -> None:
    server = _asking_server({1}, [])
    (event,) = feed(server, header(FrameType.ASK, 1, len(payload)) + payload)
    assert isinstance(event, FramingError) and needle in event.message


def test_a_cancelled_ask_is_forgotten_and_the_id_is_admitted_afresh() -> None:
    client, _ = pair()
    calls: list[tuple[int, int]] = []
    server = _asking_server({4}, calls)
    feed(server, client.frame(FrameType.ASK, 4, ASK_PAYLOAD.pack(10)))
    (cancelled,) = feed(server, client.error_frame((ErrorCode.CANCELLED, "gave up", 4)))
    assert cancelled == PeerError(ErrorCode.CANCELLED, "gave up", 4)
    feed(server, client.frame(FrameType.REQUEST, 4, b"x" * 20))
    assert calls == [(4, 10), (4, 20)]


def test_ask_and_go_need_a_request_id_and_go_only_to_the_client() -> None:
    client, server = pair()
    with pytest.raises(ValueError, match="request id 0"):
        client.frame(FrameType.ASK, 0, ASK_PAYLOAD.pack(1))
    assert feed(client, server.frame(FrameType.GO, 9)) == [Frame(FrameType.GO, 9, bytearray())]
    with pytest.raises(ValueError, match="does not send GO"):
        client.frame(FrameType.GO, 9)
