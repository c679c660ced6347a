"""Frames of the ``tcps://`` transport: a pure protocol core, no I/O, no asyncio.

Feed received bytes to :meth:`FrameProtocol.receive_data`, collect what they
meant from :meth:`FrameProtocol.events`, and build outgoing bytes with
:meth:`FrameProtocol.frame`. The asyncio shell (``tcp_transport``) only moves
those bytes, keeps time and maps events to calls; every decision about what is
a valid frame lives here, so that it is tested with bytes alone.

Every frame is a fixed 14-byte header followed by its payload::

    offset  size  field
    0       1     magic and version: 0xF1 (flgate framing, version 1)
    1       1     frame type: 1 request, 2 reply, 3 ping, 4 pong, 5 error, 6 ask, 7 go
    2       8     request id, unsigned big-endian; 0 names the connection
    10      4     payload length, unsigned big-endian

A request carries a serialized ``Envelope``, a reply the ``Reply`` with the
same request id, so that many calls share one connection. Ping and pong carry
an opaque token of at most :data:`MAX_CONTROL_PAYLOAD` bytes. An error frame
carries one byte of :class:`ErrorCode` and a UTF-8 message; request id 0 means
the connection is unusable and the sender closes it.

A client may announce a large request first: an ask frame carries the request's
id and its payload length (8 bytes, big-endian), and the server answers go (the
request is admitted: send it) or a ``BUSY`` error for that id. A refused large
request then costs the bytes of two headers, not an upload that the server must
read to the end and drop; an admitted one skips the admission on its header.

The size limit is checked on the header, *before* any payload is buffered, so
an oversized frame costs 14 bytes of memory. So is the receiver's admission
(``admit``): a request it does not admit is skipped unread and reported as a
:class:`Skipped` event, and the connection goes on. A payload is received into
one buffer of its announced length, which the :class:`Frame` then holds: one
copy of it in memory, however large. The first violation (bad magic,
unknown or unexpected type, oversized frame) is reported once as a
:class:`FramingError` event, and the protocol then ignores all further input:
the byte stream cannot be resynchronized, the connection must close.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass

from ..core.exceptions import FrameTooLargeError

MAGIC = 0xF1
"""First byte of every frame: 0xF = flgate, 0x1 = framing version 1."""

HEADER = struct.Struct(">BBQI")
"""magic/version, frame type, request id, payload length."""

MAX_CONTROL_PAYLOAD = 4096
"""Largest payload of a ping, pong or error frame."""

MAX_REQUEST_ID = 2**64 - 1
_MAX_LENGTH = 2**32 - 1  # what the 4-byte length field can say


class FrameType(enum.IntEnum):
    REQUEST = 1
    REPLY = 2
    PING = 3
    PONG = 4
    ERROR = 5
    ASK = 6
    GO = 7


_TYPE_VALUES = frozenset(int(t) for t in FrameType)


class ErrorCode(enum.IntEnum):
    """Why a peer sent an error frame."""

    MALFORMED = 1
    """Bytes that are not a frame: bad magic or version, unknown or unexpected type."""
    TOO_LARGE = 2
    """A frame over the receiver's size limit."""
    TRUNCATED = 3
    """The stream ended in the middle of a frame."""
    BAD_ENVELOPE = 4
    """A request frame whose payload is not a serialized Envelope (connection survives)."""
    REFUSED = 5
    """The peer's verified certificate does not identify a participant."""
    BUSY = 6
    """A request the receiver did not admit, unread (over its budgets); retry later."""
    CANCELLED = 7
    """The client gave up a request it asked for: the server forgets its admission."""


class Side(enum.Enum):
    """Which end of the connection this protocol runs at; decides which frames are valid."""

    CLIENT = "client"
    SERVER = "server"


_CONTROL = frozenset({FrameType.PING, FrameType.PONG, FrameType.ERROR})
_SMALL = _CONTROL | {FrameType.ASK, FrameType.GO}
"""Frames whose payload is at most :data:`MAX_CONTROL_PAYLOAD`."""
# What each side may receive (and its peer may send).
_RECEIVES: dict[Side, frozenset[FrameType]] = {
    Side.SERVER: _CONTROL | {FrameType.REQUEST, FrameType.ASK},
    Side.CLIENT: _CONTROL | {FrameType.REPLY, FrameType.GO},
}
ASK_PAYLOAD = struct.Struct(">Q")
"""An ask frame's payload: the announced request's payload length."""
_CALL_FRAMES = frozenset({FrameType.REQUEST, FrameType.REPLY, FrameType.ASK, FrameType.GO})
"""Frames about one call: request id 0 is invalid for them."""
_PEER = {Side.SERVER: Side.CLIENT, Side.CLIENT: Side.SERVER}


@dataclass(frozen=True)
class Frame:
    """A complete request, reply, ping or pong frame."""

    type: FrameType
    request_id: int
    payload: bytes | bytearray
    """A ``bytearray`` when it was received (the receive buffer itself, not a copy)."""


@dataclass(frozen=True)
class Skipped:
    """A request that ``admit`` refused, reported on its header: answer it at once; its
    payload is dropped unread as it arrives."""

    request_id: int
    length: int


@dataclass(frozen=True)
class Admitted:
    """An asked request that ``admit`` admitted: answer go; its request frame follows."""

    request_id: int
    length: int


@dataclass(frozen=True)
class PeerError:
    """The peer sent an error frame (``request_id`` 0: about the whole connection)."""

    code: int
    """An :class:`ErrorCode` value, or an unknown number from a newer peer."""
    message: str
    request_id: int


@dataclass(frozen=True)
class FramingError:
    """The received bytes broke the protocol; tell the peer (see :meth:`FrameProtocol.error_frame`)
    and close. No event follows one."""

    code: ErrorCode
    message: str
    request_id: int = 0
    """The offending frame's request id when its header was readable, else 0."""


Event = Frame | Skipped | Admitted | PeerError | FramingError

Admit = Callable[[int, int], bool]
"""``admit(request_id, length)``: whether to receive a request's payload."""


def _too_large(frame_type: FrameType, length: int, limit: int) -> str:
    return f"{frame_type.name.lower()} of {length} bytes exceeds the frame limit of {limit} bytes"


def encode_error(code: ErrorCode, message: str) -> bytes:
    """The payload of an error frame, the message cut to fit :data:`MAX_CONTROL_PAYLOAD`."""
    text = message.encode("utf-8")[: MAX_CONTROL_PAYLOAD - 1]
    return bytes([code]) + text


def decode_error(payload: bytes) -> tuple[int, str]:
    """(code, message) of an error frame's payload; never raises."""
    if not payload:
        return ErrorCode.MALFORMED, "error frame without a code"
    return payload[0], payload[1:].decode("utf-8", errors="replace")


class FrameProtocol:
    """Parses and builds the frames of one connection, at one side of it.

    ``max_payload`` is the largest request or reply payload accepted *and*
    sent (``None``: the format's own limit of 4 GiB - 1). ``admit`` (server side)
    decides on each request's header whether its payload is received or skipped.
    """

    def __init__(self, side: Side, *, max_payload: int | None, admit: Admit | None = None) -> None:
        if max_payload is not None and not 0 <= max_payload <= _MAX_LENGTH:
            raise ValueError(f"max_payload must be between 0 and {_MAX_LENGTH}")
        self.side = side
        self.max_payload = _MAX_LENGTH if max_payload is None else max_payload
        self._admit = admit
        self._buffer = bytearray()
        """Bytes of a header not yet complete (and what followed it in the same chunk)."""
        self._header: tuple[FrameType, int, int] | None = None
        self._payload = bytearray()
        self._filled = 0
        self._skipping = False
        self._events: list[Event] = []
        self._asked: dict[int, int] = {}
        """Request ids admitted on an ask, with the length they were admitted for."""
        self._failed = False
        self._eof = False

    @property
    def failed(self) -> bool:
        """True once a :class:`FramingError` was reported; input is ignored from then on."""
        return self._failed

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of an event (at most a header plus one payload)."""
        return len(self._buffer) + (0 if self._skipping else self._filled)

    def receive_data(self, data: bytes) -> None:
        """Take bytes from the peer; their meaning appears in :meth:`events`.

        Never raises: a violation becomes a :class:`FramingError` event.
        Ignored after a violation or after :meth:`receive_eof`.
        """
        if self._failed or self._eof:
            return
        self._buffer += data
        self._parse()

    def receive_eof(self) -> None:
        """The peer closed its side; a partial frame becomes a ``TRUNCATED`` error."""
        if self._failed or self._eof:
            return
        self._eof = True
        if self._buffer or self._header is not None:
            have = len(self._buffer)
            if self._header is None:
                detail = f"{have} of {HEADER.size} header bytes"
            else:
                detail = f"{self._filled} of {self._header[2]} payload bytes"
            self._fail(ErrorCode.TRUNCATED, f"the connection ended inside a frame ({detail})")

    def events(self) -> list[Event]:
        """Events parsed since the last call, oldest first."""
        events, self._events = self._events, []
        return events

    def frame(
        self, frame_type: FrameType, request_id: int, payload: bytes | bytearray = b""
    ) -> bytes:
        """The bytes of one frame that this side may send.

        Raises :class:`~gateway.core.exceptions.FrameTooLargeError` for a payload
        over the limit (nothing is sent; the caller can answer otherwise) and
        ``ValueError`` for a frame this side never sends or a bad request id.
        """
        if frame_type not in _RECEIVES[_PEER[self.side]]:
            raise ValueError(f"a {self.side.value} does not send {frame_type.name} frames")
        if not 0 <= request_id <= MAX_REQUEST_ID:
            raise ValueError(f"request id {request_id} does not fit in 64 bits")
        if frame_type in _CALL_FRAMES and request_id == 0:
            raise ValueError("request id 0 names the connection, not a call")
        limit = self._limit(frame_type)
        if len(payload) > limit:
            raise FrameTooLargeError(_too_large(frame_type, len(payload), limit))
        return HEADER.pack(MAGIC, frame_type, request_id, len(payload)) + payload

    def error_frame(self, error: FramingError | tuple[ErrorCode, str, int]) -> bytes:
        """The error frame that tells the peer about ``error`` (a local violation,
        or ``(code, message, request_id)``)."""
        if isinstance(error, FramingError):
            error = (error.code, error.message, error.request_id)
        code, message, request_id = error
        return self.frame(FrameType.ERROR, request_id, encode_error(code, message))

    def _limit(self, frame_type: FrameType) -> int:
        return MAX_CONTROL_PAYLOAD if frame_type in _SMALL else self.max_payload

    def _fail(self, code: ErrorCode, message: str, request_id: int = 0) -> None:
        self._failed = True
        self._buffer.clear()
        self._header = None
        self._payload = bytearray()
        self._filled = 0
        self._events.append(FramingError(code, message, request_id))

    def _parse(self) -> None:
        buffer = self._buffer
        while True:
            if self._header is None:
                # Check each header byte as soon as it is there, so that garbage
                # is refused at once instead of after 14 bytes.
                if buffer and buffer[0] != MAGIC:
                    self._fail(
                        ErrorCode.MALFORMED,
                        f"not a frame: first byte 0x{buffer[0]:02x}, expected"
                        f" 0x{MAGIC:02x} (flgate framing v1); is the peer speaking tcps?",
                    )
                    return
                if len(buffer) >= 2 and buffer[1] not in _RECEIVES[self.side]:
                    name = FrameType(buffer[1]).name if buffer[1] in _TYPE_VALUES else "unknown"
                    self._fail(
                        ErrorCode.MALFORMED,
                        f"unexpected frame type {buffer[1]} ({name}) at the {self.side.value}",
                    )
                    return
                if len(buffer) < HEADER.size:
                    return
                _, type_value, request_id, length = HEADER.unpack_from(buffer)
                frame_type = FrameType(type_value)
                if frame_type in _CALL_FRAMES and request_id == 0:
                    self._fail(ErrorCode.MALFORMED, f"{frame_type.name.lower()} with request id 0")
                    return
                asked = (
                    self._asked.pop(request_id, None) if frame_type is FrameType.REQUEST else None
                )
                if asked is not None and length > asked:
                    self._fail(
                        ErrorCode.MALFORMED,
                        f"request {request_id} of {length} bytes, after asking for {asked}",
                        request_id,
                    )
                    return
                limit = self._limit(frame_type)
                if length > limit:
                    self._fail(
                        ErrorCode.TOO_LARGE, _too_large(frame_type, length, limit), request_id
                    )
                    return
                del buffer[: HEADER.size]
                self._header = (frame_type, request_id, length)
                self._skipping = (
                    frame_type is FrameType.REQUEST
                    and asked is None
                    and self._admit is not None
                    and not self._admit(request_id, length)
                )
                if self._skipping:  # answered now; the payload is dropped as it comes
                    self._events.append(Skipped(request_id, length))
                self._payload = bytearray(0 if self._skipping else length)
                self._filled = 0
            frame_type, request_id, length = self._header
            take = min(length - self._filled, len(buffer))
            if take and not self._skipping:
                with memoryview(buffer) as view:
                    self._payload[self._filled : self._filled + take] = view[:take]
            self._filled += take
            del buffer[:take]
            if self._filled < length:
                return
            payload, self._payload = self._payload, bytearray()
            self._header, self._filled = None, 0
            if self._skipping:
                self._skipping = False
            elif frame_type is FrameType.ERROR:
                code, message = decode_error(bytes(payload))
                if code == ErrorCode.CANCELLED:
                    self._asked.pop(request_id, None)
                self._events.append(PeerError(code, message, request_id))
            elif frame_type is FrameType.ASK:
                if not self._ask(request_id, payload):
                    return
            else:
                self._events.append(Frame(frame_type, request_id, payload))

    def _ask(self, request_id: int, payload: bytearray) -> bool:
        """An ask frame: admitted or skipped, as a request's header would be."""
        if len(payload) != ASK_PAYLOAD.size:
            self._fail(ErrorCode.MALFORMED, f"an ask frame of {len(payload)} bytes", request_id)
            return False
        (length,) = ASK_PAYLOAD.unpack(payload)
        if length > self.max_payload:
            message = _too_large(FrameType.REQUEST, length, self.max_payload)
            self._fail(ErrorCode.TOO_LARGE, message, request_id)
            return False
        if self._admit is None or self._admit(request_id, length):
            self._asked[request_id] = length
            self._events.append(Admitted(request_id, length))
        else:
            self._events.append(Skipped(request_id, length))
        return True
