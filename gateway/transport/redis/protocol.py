"""Entries of the Redis transport: their layout, signatures and checks, with no I/O.

Redis cannot tell who wrote a stream entry: anyone who may write to the Redis
server may write any entry. So identity travels *inside* every entry: the
sender's certificate, a timestamp, a random nonce and an ECDSA (SHA-256)
signature made with the participant's private key (:mod:`gateway.core.signing`).
The relay believes an entry only when the certificate chains to the federation's
root CA and is valid now, the signature verifies, the timestamp is fresh and
(checked against Redis by the I/O layer, see :mod:`.server`) the nonce was
never seen before.
Replies are signed the same way by the relay and checked by the site, so nobody
else can answer a site's request.

Keys (``flgate`` is the configurable namespace)::

    flgate:req:ctl            requests that belong to no job (agent, admin)
    flgate:req:<job id>       a Fleet envelope's requests, one stream per job
    flgate:keys               sorted set: job keys in use -> last announcement (ms)
    flgate:reply:<site>:<id>  replies for one client (32 hex digits of a uuid4)
    flgate:nonce:<nonce>      nonces seen in the freshness window -> entry ref

Request entry fields: ``v`` (format, ``1``), ``env`` (Envelope bytes), ``cert``
(PEM), ``ts`` (ms since the epoch), ``nonce`` and ``rid`` (32 hex digits each),
``reply`` (the reply stream), ``sig`` (DER ECDSA over all of these).
Reply entry fields: ``v``, ``rep`` (Reply bytes), ``rid`` (the request's),
``req`` (SHA-256 of the request entry exactly as read, see :func:`entry_digest`),
``err`` (empty, or why the relay refused the request: ``auth``, ``frame``,
``malformed``), ``cert`` (the relay's PEM), ``sig``.

Signatures cover a domain tag and every field but ``cert`` and ``sig``, each
length-prefixed; the reply's also covers its stream's name. A request's
signature can therefore never pass for a reply, and a reply (or a refusal)
settles only the very entry its client wrote: a refusal of a forged copy that
names a genuine client's reply stream and request id is ignored by that client.
"""

from __future__ import annotations

import enum
import hashlib
import re
import secrets
import struct
from collections.abc import Mapping
from dataclasses import dataclass, replace

from ...core.exceptions import AuthError, ProtocolError
from ...core.identity import Peer, Role
from ...core.signing import (
    MAX_CERT_BYTES,
    MAX_SIGNATURE_BYTES,
    CertificateChecker,
    Signer,
    signature_matches,
    staleness,
)
from ...proto.envelope_pb2 import Envelope, Reply

VERSION = b"1"
GROUP = "relays"
"""The consumer group of every request stream: the relays share its entries."""
CTL_KEY = "ctl"

_REQUEST_TAG = b"flgate-redis-request-v1"
_REPLY_TAG = b"flgate-redis-reply-v1"
_HEX32 = re.compile(rb"[0-9a-f]{32}")
_HEX64 = re.compile(rb"[0-9a-f]{64}")
_MAX_STREAM_NAME = 1024


class Refusal(str, enum.Enum):
    """Why the relay refused a request entry; the client maps it to an exception."""

    AUTH = "auth"
    FRAME = "frame"
    MALFORMED = "malformed"

    @property
    def http_status(self) -> int:
        return {Refusal.AUTH: 403, Refusal.FRAME: 413, Refusal.MALFORMED: 400}[self]


@dataclass(frozen=True)
class ReplyAddress:
    """Where the answer to a request entry goes, as far as the entry says."""

    stream: str
    rid: str
    request: str
    """The :func:`entry_digest` of the request entry."""
    message_id: str = ""


class EntryError(ProtocolError):
    """A request entry the relay refuses; ``address`` is where to say so, if known."""

    def __init__(self, reason: str, *, refusal: Refusal, address: ReplyAddress | None) -> None:
        super().__init__(reason)
        self.refusal = refusal
        self.address = address


@dataclass(frozen=True)
class Layout:
    """Names of every Redis key of one federation (one namespace)."""

    namespace: str = "flgate"

    @property
    def registry(self) -> str:
        return f"{self.namespace}:keys"

    def request_stream(self, key: str) -> str:
        return f"{self.namespace}:req:{key}"

    def key_of(self, request_stream: str) -> str:
        """The routing key of a request stream (inverse of :meth:`request_stream`)."""
        return request_stream.removeprefix(f"{self.namespace}:req:")

    def reply_stream(self, site: str, client_id: str) -> str:
        return f"{self.namespace}:reply:{site}:{client_id}"

    def reply_owner(self, stream: str) -> str | None:
        """The site a reply stream belongs to, or ``None`` for a name of another shape."""
        prefix = f"{self.namespace}:reply:"
        if not stream.startswith(prefix) or len(stream) > _MAX_STREAM_NAME:
            return None
        site, _, client_id = stream[len(prefix) :].rpartition(":")
        if not site or not _HEX32.fullmatch(client_id.encode()):
            return None
        return site

    def nonce_key(self, nonce: str) -> str:
        return f"{self.namespace}:nonce:{nonce}"


def routing_key(envelope: Envelope) -> str:
    """An envelope about a job goes to the job's stream, which only the relay that
    owns the job reads; everything else (task polls, submissions) to ``ctl``."""
    return envelope.job_id or CTL_KEY


def _framed(tag: bytes, *parts: bytes) -> bytes:
    return tag + b"".join(struct.pack(">Q", len(p)) + p for p in parts)


def entry_digest(fields: Mapping[bytes, bytes]) -> str:
    """SHA-256 (hex) of an entry's fields, in a canonical order: what a reply answers."""
    digest = hashlib.sha256()
    for name in sorted(fields):
        value = fields[name]
        digest.update(struct.pack(">Q", len(name)) + name + struct.pack(">Q", len(value)))
        digest.update(value)
    return digest.hexdigest()


@dataclass(frozen=True)
class RequestEntry:
    """One request as it sits in a stream."""

    envelope: bytes
    cert: bytes
    ts_ms: int
    nonce: str
    rid: str
    reply_stream: str
    signature: bytes = b""

    def signed_payload(self) -> bytes:
        return _framed(
            _REQUEST_TAG,
            VERSION,
            self.envelope,
            str(self.ts_ms).encode(),
            self.nonce.encode(),
            self.rid.encode(),
            self.reply_stream.encode(),
        )

    def fields(self) -> dict[bytes, bytes]:
        return {
            b"v": VERSION,
            b"env": self.envelope,
            b"cert": self.cert,
            b"ts": str(self.ts_ms).encode(),
            b"nonce": self.nonce.encode(),
            b"rid": self.rid.encode(),
            b"reply": self.reply_stream.encode(),
            b"sig": self.signature,
        }


@dataclass(frozen=True)
class ReplyEntry:
    """One reply as it sits in a client's reply stream."""

    reply: bytes
    rid: str
    request: str
    refusal: Refusal | None
    cert: bytes
    signature: bytes = b""

    def signed_payload(self, reply_stream: str) -> bytes:
        return _framed(
            _REPLY_TAG,
            VERSION,
            self.reply,
            self.rid.encode(),
            self.request.encode(),
            (self.refusal.value if self.refusal else "").encode(),
            reply_stream.encode(),
        )

    def fields(self) -> dict[bytes, bytes]:
        return {
            b"v": VERSION,
            b"rep": self.reply,
            b"rid": self.rid.encode(),
            b"req": self.request.encode(),
            b"err": (self.refusal.value if self.refusal else "").encode(),
            b"cert": self.cert,
            b"sig": self.signature,
        }


def new_token() -> str:
    """A fresh nonce or request id: 128 random bits as 32 hex digits."""
    return secrets.token_hex(16)


def sign_request(
    signer: Signer, envelope: bytes, *, reply_stream: str, rid: str, now: float
) -> RequestEntry:
    """A request entry for ``envelope``, signed by ``signer`` with a fresh nonce."""
    entry = RequestEntry(
        envelope=envelope,
        cert=signer.cert_pem,
        ts_ms=int(now * 1000),
        nonce=new_token(),
        rid=rid,
        reply_stream=reply_stream,
    )
    return replace(entry, signature=signer.sign(entry.signed_payload()))


def sign_reply(
    signer: Signer,
    reply: bytes,
    *,
    address: ReplyAddress,
    refusal: Refusal | None = None,
) -> ReplyEntry:
    """A reply entry answering the request at ``address``, signed by ``signer``."""
    entry = ReplyEntry(
        reply=reply,
        rid=address.rid,
        request=address.request,
        refusal=refusal,
        cert=signer.cert_pem,
    )
    return replace(entry, signature=signer.sign(entry.signed_payload(address.stream)))


def _field(fields: Mapping[bytes, bytes], name: bytes, *, limit: int | None = None) -> bytes:
    value = fields.get(name)
    if not isinstance(value, bytes):
        raise ValueError(f"field {name.decode()!r} is missing")
    if limit is not None and len(value) > limit:
        raise ValueError(f"field {name.decode()!r} is too long ({len(value)} bytes)")
    return value


def _token(fields: Mapping[bytes, bytes], name: bytes) -> str:
    value = _field(fields, name, limit=32)
    if not _HEX32.fullmatch(value):
        raise ValueError(f"field {name.decode()!r} must be 32 lowercase hex digits")
    return value.decode()


def _hex64(fields: Mapping[bytes, bytes], name: bytes) -> str:
    value = _field(fields, name, limit=64)
    if not _HEX64.fullmatch(value):
        raise ValueError(f"field {name.decode()!r} must be 64 lowercase hex digits")
    return value.decode()


def _address(fields: Mapping[bytes, bytes], layout: Layout) -> ReplyAddress | None:
    """Where to refuse an entry that fails later checks, if it names a plausible place."""
    try:
        stream = _field(fields, b"reply", limit=_MAX_STREAM_NAME).decode()
        rid = _token(fields, b"rid")
    except (ValueError, UnicodeDecodeError):
        return None
    if layout.reply_owner(stream) is None:
        return None
    return ReplyAddress(stream=stream, rid=rid, request=entry_digest(fields))


def parse_request(
    fields: Mapping[bytes, bytes], *, layout: Layout, max_envelope: int | None
) -> tuple[RequestEntry, ReplyAddress]:
    """Read a request entry's fields, and where its answer goes.

    Raises :class:`EntryError` if the fields are not a request.
    """
    address = _address(fields, layout)
    envelope = fields.get(b"env")
    if isinstance(envelope, bytes) and max_envelope is not None and len(envelope) > max_envelope:
        raise EntryError(
            f"envelope of {len(envelope)} bytes exceeds the frame limit of {max_envelope} bytes",
            refusal=Refusal.FRAME,
            address=address,
        )
    try:
        if fields.get(b"v") != VERSION:
            raise ValueError(f"unknown entry format {fields.get(b'v')!r}")
        ts = _field(fields, b"ts", limit=20)
        if not ts.isdigit():
            raise ValueError("field 'ts' must be decimal digits")
        if address is None:
            raise ValueError("fields 'reply' and 'rid' do not name a reply stream")
        entry = RequestEntry(
            envelope=_field(fields, b"env"),
            cert=_field(fields, b"cert", limit=MAX_CERT_BYTES),
            ts_ms=int(ts),
            nonce=_token(fields, b"nonce"),
            rid=address.rid,
            reply_stream=address.stream,
            signature=_field(fields, b"sig", limit=MAX_SIGNATURE_BYTES),
        )
        return entry, address
    except ValueError as exc:
        raise EntryError(
            f"malformed request entry: {exc}", refusal=Refusal.MALFORMED, address=address
        ) from None


@dataclass(frozen=True)
class VerifiedRequest:
    peer: Peer
    envelope: Envelope
    address: ReplyAddress


class RequestVerifier:
    """The relay's checks of a parsed request entry, in order of cost.

    Freshness, the certificate, the signature, then what the signed content
    says: that the reply stream is the signer's own and that the envelope sits
    in the stream its routing key names. The nonce's novelty needs Redis and is
    checked by the caller after this.
    """

    def __init__(self, checker: CertificateChecker, *, layout: Layout, max_skew: float) -> None:
        self._checker = checker
        self._layout = layout
        self._max_skew = max_skew

    def verify(
        self, entry: RequestEntry, address: ReplyAddress, *, stream_key: str, now: float
    ) -> VerifiedRequest:
        def refuse(reason: str, refusal: Refusal = Refusal.AUTH) -> EntryError:
            return EntryError(reason, refusal=refusal, address=address)

        stale = staleness(entry.ts_ms, now=now, max_skew=self._max_skew, signer="sender")
        if stale is not None:
            raise refuse(f"stale entry: {stale}")
        try:
            peer, key = self._checker.check(entry.cert, now=now)
        except AuthError as exc:
            raise refuse(str(exc)) from None
        if not signature_matches(key, entry.signature, entry.signed_payload()):
            raise refuse(f"the signature does not match the certificate of {peer}")
        if self._layout.reply_owner(entry.reply_stream) != peer.name:
            raise refuse(f"{peer} may not ask for replies on {entry.reply_stream!r}")
        try:
            envelope = Envelope.FromString(entry.envelope)
        except Exception as exc:  # protobuf raises DecodeError and others
            raise refuse(f"envelope does not decode: {exc}", Refusal.MALFORMED) from None
        address = replace(address, message_id=envelope.message_id)
        if routing_key(envelope) != stream_key:
            raise refuse(
                f"envelope routed to {stream_key!r} but belongs on {routing_key(envelope)!r}",
                Refusal.MALFORMED,
            )
        return VerifiedRequest(peer=peer, envelope=envelope, address=address)


def parse_reply(fields: Mapping[bytes, bytes], *, max_reply: int | None) -> ReplyEntry:
    """Read a reply entry's fields; ``ProtocolError`` if they are not a reply."""
    try:
        if fields.get(b"v") != VERSION:
            raise ValueError(f"unknown entry format {fields.get(b'v')!r}")
        reply = _field(fields, b"rep", limit=max_reply)
        refusal_text = _field(fields, b"err", limit=16).decode()
        return ReplyEntry(
            reply=reply,
            rid=_token(fields, b"rid"),
            request=_hex64(fields, b"req"),
            refusal=Refusal(refusal_text) if refusal_text else None,
            cert=_field(fields, b"cert", limit=MAX_CERT_BYTES),
            signature=_field(fields, b"sig", limit=MAX_SIGNATURE_BYTES),
        )
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"malformed reply entry: {exc}") from None


class ReplyVerifier:
    """A site's checks of a reply: signed by a relay of the federation, for this request."""

    def __init__(
        self, checker: CertificateChecker, *, relay_names: frozenset[str] | None = None
    ) -> None:
        self._checker = checker
        self._relay_names = relay_names

    def verify(
        self, entry: ReplyEntry, *, reply_stream: str, request: str, message_id: str, now: float
    ) -> Reply:
        """The reply, if a trusted relay signed it for the request whose digest is ``request``."""
        peer, key = self._checker.check(entry.cert, now=now)
        if peer.role is not Role.RELAY or (
            self._relay_names is not None and peer.name not in self._relay_names
        ):
            raise AuthError(f"reply signed by {peer}, which is not a relay this site trusts")
        if not signature_matches(key, entry.signature, entry.signed_payload(reply_stream)):
            raise AuthError(f"reply signature does not match the certificate of {peer}")
        if entry.request != request:
            raise AuthError("reply answers another request entry than the one sent")
        try:
            reply = Reply.FromString(entry.reply)
        except Exception as exc:  # protobuf raises DecodeError and others
            raise ProtocolError(f"reply does not decode: {exc}") from None
        if entry.refusal is None and reply.message_id != message_id:
            raise ProtocolError(
                f"reply for message {reply.message_id!r} answers request {message_id!r}"
            )
        return reply
