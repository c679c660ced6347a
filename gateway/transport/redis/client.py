"""The site's side of the Redis transport: signed requests out, verified replies in.

A client appends each envelope, signed as :mod:`.protocol` lays out, to the
request stream of its job (``ctl`` for calls of no job) and reads the replies
from a stream of its own; a reply counts only when a relay of the federation
signed it for the very entry the client wrote. The package's docstring tells
the whole exchange.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import redis.exceptions as redis_errors
from redis.asyncio.client import Pipeline

from ...core.config import Limits, TLSConfig
from ...core.exceptions import (
    AuthError,
    ConnectError,
    DeadlineError,
    FrameTooLargeError,
    ProtocolError,
    TransportError,
)
from ...core.signing import CertificateChecker, Signer
from ...proto.envelope_pb2 import Envelope, Reply
from ..common import frame_limit
from ..interface import TransportClient, TransportURL
from .batching import PipelineBatcher
from .connection import (
    DEFAULT_MAX_CONNECTIONS,
    Fields,
    halt,
    redis_connection,
    require_tls,
    retry_delay,
    stream_entries,
    translate,
)
from .protocol import (
    CTL_KEY,
    Layout,
    Refusal,
    ReplyVerifier,
    entry_digest,
    new_token,
    parse_reply,
    routing_key,
    sign_request,
)

log = logging.getLogger(__name__)

_CLIENT_BLOCK_MS = 5000


@dataclass
class _Pending:
    future: asyncio.Future[Reply]
    request: str
    message_id: str


class RedisTransportClient(TransportClient):
    """A site's (or admin's) side: appends signed requests, reads its own reply stream.

    Keyword options: ``namespace`` (key prefix, default ``flgate``), ``db``,
    ``username``/``password`` (Redis ACL), ``relay_names`` (accept replies only
    from relays with these names; default: any certificate with the relay role),
    ``stream_maxlen`` (approximate cap of a request stream while no relay reads
    it), ``key_ttl`` (seconds a job stream lives after its last use; it is
    re-announced every ``key_ttl / 60`` seconds of use), ``max_connections`` (the
    bound of the connection pool, default
    :data:`~.connection.DEFAULT_MAX_CONNECTIONS`; one is held by the reply reader).
    """

    def __init__(
        self,
        url: TransportURL,
        tls: TLSConfig | None,
        limits: Limits,
        *,
        namespace: str = "flgate",
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        relay_names: frozenset[str] | None = None,
        stream_maxlen: int = 10_000,
        key_ttl: float = 3600.0,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        tls = require_tls(tls, url)
        ca, cert, key = tls.read()
        self._signer = Signer(cert_pem=cert, key_pem=key)
        self._verifier = ReplyVerifier(CertificateChecker(ca), relay_names=relay_names)
        self._layout = Layout(namespace)
        self._reply_stream = self._layout.reply_stream(self._signer.peer.name, uuid.uuid4().hex)
        self._where = str(url)
        self._redis = redis_connection(
            url,
            tls,
            db=db,
            username=username,
            password=password,
            max_connections=max_connections,
        )
        self._batcher = PipelineBatcher(self._redis)
        """The appends of concurrent calls go in one pipeline (see :mod:`.batching`)."""
        self._max = frame_limit(limits)
        self._stream_maxlen = stream_maxlen
        self._key_ttl = key_ttl
        self._clock = clock
        self._pending: dict[str, _Pending] = {}
        self._announced: dict[str, float] = {}
        self._reader: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def reply_stream(self) -> str:
        return self._reply_stream

    async def send(self, envelope: Envelope, *, timeout: float) -> Reply:
        if self._closed:
            raise ConnectError("the Redis transport client is closed")
        data = envelope.SerializeToString()
        if self._max is not None and len(data) > self._max:
            raise FrameTooLargeError(
                f"envelope of {len(data)} bytes exceeds the frame limit of {self._max} bytes"
            )
        rid = new_token()
        entry = sign_request(
            self._signer, data, reply_stream=self._reply_stream, rid=rid, now=self._clock()
        )
        if self._reader is None:
            self._reader = asyncio.create_task(self._read_replies(), name="redis-replies")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        future: asyncio.Future[Reply] = loop.create_future()
        fields = entry.fields()
        self._pending[rid] = _Pending(future, entry_digest(fields), envelope.message_id)
        try:
            # The deadline is kept without relying on cancelling redis-py, which
            # can lose a cancellation that lands at the wrong moment.
            await asyncio.wait_for(self._append(routing_key(envelope), fields), timeout)
            await asyncio.wait({future}, timeout=max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            pass
        finally:
            self._pending.pop(rid, None)
        if not future.done():
            future.cancel()
            raise DeadlineError(f"no reply through Redis at {self._where} within {timeout:g} s")
        return future.result()

    async def _append(self, key: str, fields: Fields) -> None:
        stream = self._layout.request_stream(key)
        now = self._clock()
        announce = key != CTL_KEY and now - self._announced.get(key, -1e18) > self._key_ttl / 60

        def stage(pipe: Pipeline) -> None:
            pipe.xadd(stream, fields, maxlen=self._stream_maxlen, approximate=True)  # type: ignore[arg-type]
            if announce:
                pipe.zadd(self._layout.registry, {key: int(now * 1000)})
                pipe.pexpire(stream, int(self._key_ttl * 1000))

        try:
            await self._batcher.execute(stage)
        except redis_errors.RedisError as exc:
            raise translate(exc, self._where) from exc
        if announce:
            self._announced[key] = now

    async def _read_replies(self) -> None:
        last, failures = "0-0", 0
        while not self._closed:
            try:
                response = await self._redis.xread(
                    {self._reply_stream: last}, count=100, block=_CLIENT_BLOCK_MS
                )
                failures = 0
                ids = []
                for _, entries in stream_entries(response):
                    for entry_id, fields in entries:
                        ids.append(entry_id)
                        self._deliver(fields)
                if ids:
                    last = ids[-1]
                    await self._redis.xdel(self._reply_stream, *ids)
            except redis_errors.RedisError as exc:
                if self._closed:
                    return
                error = translate(exc, self._where)
                log.warning("reading replies from Redis failed", extra={"error": str(error)})
                self._fail_pending(error)
                failures += 1
                await asyncio.sleep(retry_delay(failures))

    def _deliver(self, fields: Fields) -> None:
        try:
            entry = parse_reply(fields, max_reply=self._max)
        except ProtocolError as exc:
            log.warning("dropping a reply entry", extra={"reason": str(exc)})
            return
        pending = self._pending.get(entry.rid)
        if pending is None or pending.future.done():
            return  # its call timed out or was cancelled
        try:
            reply = self._verifier.verify(
                entry,
                reply_stream=self._reply_stream,
                request=pending.request,
                message_id=pending.message_id,
                now=self._clock(),
            )
        except (AuthError, ProtocolError) as exc:
            # Never let an unverified entry decide a call: it may be forged.
            log.warning("dropping a reply that fails verification", extra={"reason": str(exc)})
            return
        if entry.refusal is Refusal.AUTH:
            pending.future.set_exception(AuthError(f"the relay refused: {reply.detail}"))
        elif entry.refusal is Refusal.FRAME:
            pending.future.set_exception(FrameTooLargeError(f"the relay refused: {reply.detail}"))
        elif entry.refusal is Refusal.MALFORMED:
            pending.future.set_exception(TransportError(f"the relay refused: {reply.detail}"))
        else:
            pending.future.set_result(reply)

    def _fail_pending(self, error: Exception) -> None:
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(error)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._reader is not None:
            await halt([self._reader], self._redis)
        await self._batcher.aclose()
        self._fail_pending(ConnectError("the Redis transport client was closed"))
        with contextlib.suppress(redis_errors.RedisError):
            await self._redis.delete(self._reply_stream)
        await self._redis.aclose()
