"""Redis Streams transport (``redis://``, ``rediss://``): sites and relays meet in Redis.

Neither side listens for the other: a site appends signed requests to a stream
(``flgate:req:<job id>``, or ``flgate:req:ctl`` for calls of no job) and reads
its own reply stream; relays read the request streams through one consumer
group, answer, then acknowledge and delete the entry. ``rediss://`` speaks TLS
to Redis, verifies the Redis server against the federation's CA and presents
the participant's certificate; ``redis://`` is plain TCP (loopback, tests).
Either way, identity never comes from the connection: every entry is signed
and checked as :mod:`.protocol` describes, including every layout detail.

Scale-out: several relays may read the same streams. Each reads ``ctl`` (unless
``serve_ctl=False``) and the job streams its :meth:`RedisTransportServer.serve_keys`
predicate accepts, so the relay that owns a job is the one that receives its
Fleet calls. A relay that dies with entries in hand loses nothing: after
``claim_idle`` seconds another relay claims and answers them (the reliable
layer's dedup makes a second execution harmless). A relay keeps the entries it
is still working on from looking idle by re-claiming them for itself.

Redis >= 7.0 is required (``SET ... NX GET``, ``XAUTOCLAIM``). Who may write to
Redis may still delete or delay entries: signatures give authenticity, not
availability, so restrict Redis with ACLs and TLS all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.typing import StreamIdT

from ...core.config import Limits, TLSConfig
from ...core.envelope import gateway_reply
from ...core.exceptions import (
    AuthError,
    ConfigError,
    ConnectError,
    DeadlineError,
    FrameTooLargeError,
    GatewayError,
    ProtocolError,
    TransportError,
)
from ...core.identity import Peer
from ...proto.envelope_pb2 import Envelope, Reply
from .. import base
from ..common import call_handler, certificate_refused, client_ssl_context, frame_limit
from .protocol import (
    CTL_KEY,
    GROUP,
    CertificateChecker,
    EntryError,
    Layout,
    Refusal,
    ReplyAddress,
    ReplyVerifier,
    RequestVerifier,
    Signer,
    entry_digest,
    new_token,
    parse_reply,
    parse_request,
    routing_key,
)

log = logging.getLogger(__name__)

_SOCKET_TIMEOUT = 30.0
"""Longest wait for any one Redis command; blocking reads block for less."""
_REPLY_MAXLEN = 1000
_CLIENT_BLOCK_MS = 5000
_READ_BATCH = 16
"""Entries per read: each may be a whole frame (64 MiB by default), so few at a time."""
_MAX_BACKOFF = 2.0

Fields = dict[bytes, bytes]


def _translate(exc: redis_errors.RedisError, where: str) -> GatewayError:
    if certificate_refused(exc):
        return AuthError(f"TLS with Redis at {where} failed on a certificate: {exc}")
    if isinstance(exc, redis_errors.AuthenticationError | redis_errors.NoPermissionError):
        return AuthError(f"Redis at {where} refused this participant: {exc}")
    if isinstance(exc, redis_errors.ConnectionError | redis_errors.TimeoutError):
        return ConnectError(f"cannot reach Redis at {where}: {exc}")
    return TransportError(f"Redis at {where} failed a command: {exc}")


class _FederationSSLConnection(aioredis.SSLConnection):
    """A Redis TLS connection that trusts the federation's root CA only.

    redis-py builds a fresh context for every pooled connection, with the
    system's CAs loaded next to ours: about 37 ms of CPU per connection, which
    under load (a pool that grows to a connection per concurrent call) was
    most of a relay's time, and a wider trust than the federation's. Every
    connection of a pool shares this one context instead.
    """

    def __init__(self, *, federation_context: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ssl_context.context = federation_context


def redis_connection(
    url: base.TransportURL,
    tls: TLSConfig,
    *,
    db: int = 0,
    username: str | None = None,
    password: str | None = None,
) -> aioredis.Redis:
    """A connection pool; redis-py retries nothing (resending is the reliable layer's job)."""
    options: dict[str, Any] = {
        "host": url.host,
        "port": url.port,
        "db": db,
        "username": username,
        "password": password,
        "socket_timeout": _SOCKET_TIMEOUT,
        "socket_connect_timeout": 5.0,
        "socket_keepalive": True,
        "retry": Retry(NoBackoff(), 0),
        "protocol": 2,  # the reply shapes parsed here are RESP2's
    }
    if url.scheme != "rediss":
        return aioredis.Redis(**options)
    pool = aioredis.ConnectionPool(
        connection_class=_FederationSSLConnection,
        federation_context=client_ssl_context(tls),
        **options,
    )
    return aioredis.Redis.from_pool(pool)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _stream_entries(response: Any) -> list[tuple[str, list[tuple[str, Fields]]]]:
    """An ``XREAD``/``XREADGROUP`` reply (RESP2: ``[[stream, [(id, fields)...]]...]``)."""
    return [
        (_text(stream), [(_text(entry_id), dict(fields or {})) for entry_id, fields in entries])
        for stream, entries in response or []
    ]


def _check_tls(tls: TLSConfig | None, url: base.TransportURL) -> TLSConfig:
    if tls is None:
        raise ConfigError(
            f"{url.scheme}:// needs the participant's certificate and key: every entry is signed"
        )
    return tls


@dataclass
class _Pending:
    future: asyncio.Future[Reply]
    request: str
    message_id: str


class RedisTransportClient(base.TransportClient):
    """A site's (or admin's) side: appends signed requests, reads its own reply stream.

    Keyword options: ``namespace`` (key prefix, default ``flgate``), ``db``,
    ``username``/``password`` (Redis ACL), ``relay_names`` (accept replies only
    from relays with these names; default: any certificate with the relay role),
    ``stream_maxlen`` (approximate cap of a request stream while no relay reads
    it), ``key_ttl`` (seconds a job stream lives after its last use; it is
    re-announced every ``key_ttl / 60`` seconds of use).
    """

    def __init__(
        self,
        url: base.TransportURL,
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
        clock: Callable[[], float] = time.time,
    ) -> None:
        tls = _check_tls(tls, url)
        ca, cert, key = tls.read()
        self._signer = Signer(cert_pem=cert, key_pem=key)
        self._verifier = ReplyVerifier(CertificateChecker(ca), relay_names=relay_names)
        self._layout = Layout(namespace)
        self._reply_stream = self._layout.reply_stream(self._signer.peer.name, uuid.uuid4().hex)
        self._where = str(url)
        self._redis = redis_connection(url, tls, db=db, username=username, password=password)
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
        entry = self._signer.request(
            data, reply_stream=self._reply_stream, rid=rid, now=self._clock()
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
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xadd(stream, fields, maxlen=self._stream_maxlen, approximate=True)  # type: ignore[arg-type]
                if announce:
                    pipe.zadd(self._layout.registry, {key: int(now * 1000)})
                    pipe.pexpire(stream, int(self._key_ttl * 1000))
                await pipe.execute()
        except redis_errors.RedisError as exc:
            raise _translate(exc, self._where) from exc
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
                for _, entries in _stream_entries(response):
                    for entry_id, fields in entries:
                        ids.append(entry_id)
                        self._deliver(fields)
                if ids:
                    last = ids[-1]
                    await self._redis.xdel(self._reply_stream, *ids)
            except redis_errors.RedisError as exc:
                if self._closed:
                    return
                error = _translate(exc, self._where)
                log.warning("reading replies from Redis failed", extra={"error": str(error)})
                self._fail_pending(error)
                failures += 1
                await asyncio.sleep(min(_MAX_BACKOFF, 0.05 * 2**failures))

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
            await _halt([self._reader], self._redis)
        self._fail_pending(ConnectError("the Redis transport client was closed"))
        with contextlib.suppress(redis_errors.RedisError):
            await self._redis.delete(self._reply_stream)
        await self._redis.aclose()


async def _halt(tasks: list[asyncio.Task[None]], client: aioredis.Redis) -> None:
    """Stop loops that block in Redis reads; their owner has set its closing flag.

    redis-py may lose a cancellation that arrives at the wrong moment of a
    command (redis/redis-py#2028), so a loop that outlives its cancellation is
    woken by closing the connections under it, then sees the flag and returns.
    """
    for task in tasks:
        task.cancel()
    _, alive = await asyncio.wait(tasks, timeout=0.1)
    if alive:
        await client.connection_pool.disconnect()
        await asyncio.wait(alive, timeout=5.0)
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.warning("a Redis loop failed", exc_info=task.exception())


KeyPredicate = Callable[[str], bool]


class RedisTransportServer(base.TransportServer):
    """A relay's side: reads request streams through the ``relays`` consumer group.

    Keyword options: ``namespace``, ``db``, ``username``/``password`` as for the
    client; ``consumer`` (this relay's consumer name, default host:pid:random);
    ``serve_ctl`` (read ``ctl``, default yes); ``keys`` (predicate over job keys,
    default all; see :meth:`serve_keys`); ``claim_idle`` (seconds before another
    relay's unacknowledged entries are claimed, default 5); ``max_clock_skew``
    (seconds of accepted timestamp skew, and how long nonces are remembered,
    default 60); ``max_in_flight`` (entries handled at once, default 256);
    ``discovery_interval`` (seconds between looks for new job streams, default
    1, which is also the latency of a new job's first call at worst);
    ``key_ttl`` (job keys unused this long are no longer read, default 3600);
    ``reply_ttl`` (seconds a reply stream outlives its last reply, default 300).
    """

    def __init__(
        self,
        url: base.TransportURL,
        tls: TLSConfig | None,
        limits: Limits,
        handler: base.Handler,
        *,
        namespace: str = "flgate",
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        consumer: str | None = None,
        serve_ctl: bool = True,
        keys: KeyPredicate | None = None,
        claim_idle: float = 5.0,
        max_clock_skew: float = 60.0,
        max_in_flight: int = 256,
        discovery_interval: float = 1.0,
        key_ttl: float = 3600.0,
        reply_ttl: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        tls = _check_tls(tls, url)
        ca, cert, key = tls.read()
        self._url = url
        self._where = str(url)
        self._handler = handler
        self._signer = Signer(cert_pem=cert, key_pem=key)
        self._layout = Layout(namespace)
        self._checker = CertificateChecker(ca)
        self._verifier = RequestVerifier(
            self._checker, layout=self._layout, max_skew=max_clock_skew
        )
        self._redis = redis_connection(url, tls, db=db, username=username, password=password)
        self._max = frame_limit(limits)
        self._consumer = consumer or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._serve_ctl = serve_ctl
        self._predicate: KeyPredicate = keys or (lambda _key: True)
        self._claim_idle = claim_idle
        self._nonce_ttl_ms = int((2 * max_clock_skew + 10) * 1000)
        self._max_in_flight = max_in_flight
        self._discovery_interval = discovery_interval
        self._key_ttl = key_ttl
        self._reply_ttl_ms = int(reply_ttl * 1000)
        self._clock = clock
        self._streams: set[str] = set()
        self._grouped: set[str] = set()
        self._in_flight: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._slot_freed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._next_discovery = 0.0
        self._closing = False

    @property
    def port(self) -> int:
        """The Redis server's port: a Redis transport binds nothing itself."""
        return self._url.port

    @property
    def consumer(self) -> str:
        return self._consumer

    def serve_keys(self, predicate: KeyPredicate) -> None:
        """Read only the job streams whose key (the job id) ``predicate`` accepts.

        The hook for scale-out: relays sharing one Redis each serve the jobs
        they own, e.g. ``server.serve_keys(job_manager.owns)``. Takes effect at
        the next discovery (within ``discovery_interval``); entries already in
        hand are still answered.
        """
        self._predicate = predicate
        self._next_discovery = 0.0

    def refuse_revoked(self, revoked: Callable[[Peer], str | None]) -> None:
        """Refuse entries signed by a revoked certificate (``revoked`` says why)."""
        self._checker.revoked = revoked

    async def start(self) -> None:
        try:
            await self._redis.ping()
            await self._discover()
        except redis_errors.RedisError as exc:
            raise _translate(exc, self._where) from exc
        self._tasks = [
            asyncio.create_task(self._read_requests(), name="redis-requests"),
            asyncio.create_task(self._recover(), name="redis-recovery"),
        ]
        log.info("relay reading Redis", extra={"url": self._where, "consumer": self._consumer})

    async def aclose(self, grace: float = 1.0) -> None:
        """Stop reading; give entries in hand ``grace`` seconds to be answered."""
        self._closing = True
        if self._tasks:
            await _halt(self._tasks, self._redis)
        if self._in_flight:
            # Unfinished entries stay pending; another relay will claim them.
            _, late = await asyncio.wait(list(self._in_flight.values()), timeout=grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=grace)
        await self._redis.aclose()

    # -- discovery ----------------------------------------------------------

    async def _discover(self) -> None:
        """Read ``ctl`` and the announced job streams the predicate accepts."""
        now_ms = int(self._clock() * 1000)
        oldest = now_ms - int(self._key_ttl * 1000)
        await self._redis.zremrangebyscore(self._layout.registry, "-inf", f"({oldest}")
        found = await self._redis.zrangebyscore(self._layout.registry, oldest, "+inf")
        keys = [_text(k) for k in found if isinstance(k, bytes | str)]
        served = {
            self._layout.request_stream(k) for k in keys if k != CTL_KEY and self._predicate(k)
        }
        if self._serve_ctl:
            served.add(self._layout.request_stream(CTL_KEY))
        for stream in served - self._grouped:
            await self._ensure_group(stream)
        self._streams = served
        self._next_discovery = self._clock() + self._discovery_interval

    async def _ensure_group(self, stream: str) -> None:
        try:
            # From the start of the stream: entries sent before any relay read it count.
            await self._redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except redis_errors.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._grouped.add(stream)

    # -- reading ------------------------------------------------------------

    async def _read_requests(self) -> None:
        failures = 0
        while not self._closing:
            while len(self._in_flight) >= self._max_in_flight:
                self._slot_freed.clear()
                await self._slot_freed.wait()
            try:
                if self._clock() >= self._next_discovery:
                    await self._discover()
                if not self._streams:
                    await asyncio.sleep(self._discovery_interval)
                    continue
                response = await self._redis.xreadgroup(
                    GROUP,
                    self._consumer,
                    dict.fromkeys(sorted(self._streams), ">"),
                    count=min(_READ_BATCH, self._max_in_flight - len(self._in_flight)),
                    block=max(1, int(self._discovery_interval * 1000)),
                )
                failures = 0
            except redis_errors.ResponseError as exc:
                if self._closing:
                    return
                if "NOGROUP" in str(exc):  # a stream expired and was created anew
                    self._grouped.clear()
                    self._next_discovery = 0.0
                    continue
                failures += 1
                log.warning("reading requests from Redis failed", extra={"error": str(exc)})
                await asyncio.sleep(min(_MAX_BACKOFF, 0.05 * 2**failures))
                continue
            except redis_errors.RedisError as exc:
                if self._closing:
                    return
                failures += 1
                error = _translate(exc, self._where)
                log.warning("reading requests from Redis failed", extra={"error": str(error)})
                await asyncio.sleep(min(_MAX_BACKOFF, 0.05 * 2**failures))
                continue
            for stream, entries in _stream_entries(response):
                for entry_id, fields in entries:
                    self._spawn(stream, entry_id, fields)

    def _spawn(self, stream: str, entry_id: str, fields: Fields) -> None:
        ref = (stream, entry_id)
        if ref in self._in_flight:
            return
        task = asyncio.create_task(self._process(stream, entry_id, fields))
        self._in_flight[ref] = task

        def done(_: asyncio.Task[None]) -> None:
            self._in_flight.pop(ref, None)
            self._slot_freed.set()

        task.add_done_callback(done)

    # -- recovery -------------------------------------------------------------

    async def _recover(self) -> None:
        """Keep our own entries fresh; claim entries other consumers left idle."""
        interval = max(0.05, self._claim_idle / 3)
        idle_ms = max(1, int(self._claim_idle * 1000))
        while not self._closing:
            await asyncio.sleep(interval)
            try:
                mine: dict[str, list[StreamIdT]] = {}
                for stream, entry_id in list(self._in_flight):
                    mine.setdefault(stream, []).append(entry_id)
                for stream, ids in mine.items():
                    await self._redis.xclaim(stream, GROUP, self._consumer, 0, ids, justid=True)
                for stream in sorted(self._streams):
                    free = min(_READ_BATCH, self._max_in_flight - len(self._in_flight))
                    if free <= 0:
                        break
                    claimed = await self._redis.xautoclaim(
                        stream, GROUP, self._consumer, idle_ms, "0-0", count=free
                    )
                    entries = claimed[1] if len(claimed) > 1 else []
                    for entry_id, fields in entries:
                        if fields is None:
                            continue  # deleted meanwhile; Redis drops it from the pending list
                        ident = _text(entry_id)
                        log.info("claimed an idle entry", extra={"stream": stream, "entry": ident})
                        self._spawn(stream, ident, dict(fields))
            except redis_errors.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    log.warning("recovering pending entries failed", extra={"error": str(exc)})
            except redis_errors.RedisError as exc:
                error = _translate(exc, self._where)
                log.warning("recovering pending entries failed", extra={"error": str(error)})

    # -- one entry ----------------------------------------------------------

    async def _process(self, stream: str, entry_id: str, fields: Fields) -> None:
        try:
            entry, address = parse_request(fields, layout=self._layout, max_envelope=self._max)
            verified = self._verifier.verify(
                entry, address, stream_key=self._layout.key_of(stream), now=self._clock()
            )
            await self._check_nonce(entry.nonce, f"{stream}/{entry_id}")
        except EntryError as exc:
            log.warning(
                "refused a Redis entry",
                extra={"stream": stream, "entry": entry_id, "reason": str(exc)},
            )
            reply = gateway_reply(
                exc.address.message_id if exc.address else "", exc.refusal.http_status, str(exc)
            )
            await self._finish(stream, entry_id, exc.address, reply, exc.refusal)
            return
        except redis_errors.RedisError as exc:
            log.warning(
                "cannot check a nonce; the entry stays pending",
                extra={"stream": stream, "entry": entry_id, "error": str(exc)},
            )
            return
        reply = await call_handler(self._handler, verified.peer, verified.envelope)
        refusal = None
        if self._max is not None and reply.ByteSize() > self._max:
            detail = f"reply of {reply.ByteSize()} bytes exceeds the frame limit of {self._max}"
            log.warning("refused to send a reply", extra={"stream": stream, "reason": detail})
            reply, refusal = gateway_reply(reply.message_id, 413, detail), Refusal.FRAME
        await self._finish(stream, entry_id, verified.address, reply, refusal)

    async def _check_nonce(self, nonce: str, ref: str) -> None:
        """Refuse a nonce seen before, unless on this very entry (a redelivery).

        A replay gets no refusal: its reply stream belongs to the genuine
        sender, who gets (or got) the answer to the original.
        """
        seen = await self._redis.set(
            self._layout.nonce_key(nonce), ref, nx=True, get=True, px=self._nonce_ttl_ms
        )
        if seen is not None and seen != ref.encode():
            raise EntryError(
                f"replayed nonce (first seen on {seen!r})", refusal=Refusal.AUTH, address=None
            )

    async def _finish(
        self,
        stream: str,
        entry_id: str,
        address: ReplyAddress | None,
        reply: Reply,
        refusal: Refusal | None,
    ) -> None:
        """Reply (when there is somewhere to), then acknowledge and delete the entry."""
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                if address is not None:
                    signed = self._signer.reply(
                        reply.SerializeToString(), address=address, refusal=refusal
                    )
                    pipe.xadd(
                        address.stream,
                        signed.fields(),  # type: ignore[arg-type]
                        maxlen=_REPLY_MAXLEN,
                        approximate=True,
                    )
                    pipe.pexpire(address.stream, self._reply_ttl_ms)
                pipe.xack(stream, GROUP, entry_id)
                pipe.xdel(stream, entry_id)
                await pipe.execute()
        except redis_errors.RedisError as exc:
            log.warning(
                "cannot reply through Redis; the entry stays pending",
                extra={"stream": stream, "entry": entry_id, "error": str(exc)},
            )


def _client(url: base.TransportURL, tls: TLSConfig | None, limits: Limits) -> RedisTransportClient:
    return RedisTransportClient(url, tls, limits)


def _server(
    url: base.TransportURL, tls: TLSConfig | None, limits: Limits, handler: base.Handler
) -> RedisTransportServer:
    return RedisTransportServer(url, tls, limits, handler)


base.register("redis", _client, _server)
base.register("rediss", _client, _server)
