"""The relays' side of the Redis transport: read request streams, answer, acknowledge.

Relays read the request streams through one consumer group (:data:`.protocol.GROUP`),
check every entry as :mod:`.protocol` describes (and its nonce against Redis),
hand it to the dispatcher, sign the reply into the sender's reply stream, then
acknowledge and delete the entry.

Scale-out: several relays may read the same streams. Each reads ``ctl`` (unless
``serve_ctl=False``) and the job streams its :meth:`RedisTransportServer.serve_jobs`
predicate accepts, so the relay that owns a job is the one that receives its
Fleet calls. A relay that dies with entries in hand loses nothing: after
``claim_idle`` seconds another relay claims and answers them (the reliable
layer's dedup makes a second execution harmless). A relay keeps the entries it
is still working on from looking idle by re-claiming them for itself.

Streams nobody reads: a site may write to the stream of a job that no relay
runs (a job lost with its relay, a mistyped id), and no relay then reads or
deletes its entries. So entries age out, and streams expire:

- Every relay trims every announced request stream, its own, other relays'
  and those nobody owns (the registry names them all), with ``XTRIM MINID``:
  an entry older than ``entry_ttl`` (by Redis's clock, which stamped its id)
  goes. The default is the nonce window, ``2 * max_clock_skew + 10`` seconds:
  an older entry would be refused as stale by any relay anyway, and its sender
  gave up on it long before (a call waits at most tens of seconds).
- A job's request stream expires ``key_ttl`` after the last time a client
  announced it (the client sets the TTL as it writes; a relay that creates the
  stream for its consumer group gives it one too), so an abandoned stream goes
  whole once its writers stop.

Not chosen: trimming on the client's ``XADD`` (its clock is the one least
trusted, and an abandoned stream's last entries would stay), or a relay answering
entries of unknown jobs with a refusal: with several relays, none knows alone
that no relay runs a job, and a 404 makes Flower drop the call.

Stopping: :meth:`RedisTransportServer.stop_accepting` stops reading new entries
while those in hand are still answered; what is not read stays in its stream,
for another relay or this one after a restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable

import redis.exceptions as redis_errors
from redis.asyncio.client import Pipeline
from redis.typing import StreamIdT

from ...core.config import Limits, TLSConfig
from ...core.envelope import gateway_reply
from ...core.identity import Peer
from ...core.signing import CertificateChecker, Signer
from ...proto.envelope_pb2 import Reply
from ..admission import Admission
from ..common import call_handler, frame_limit
from ..interface import Handler, TransportServer, TransportURL
from .batching import PipelineBatcher
from .connection import (
    DEFAULT_MAX_CONNECTIONS,
    Fields,
    halt,
    redis_connection,
    require_tls,
    retry_delay,
    stream_entries,
    text,
    translate,
)
from .protocol import (
    CTL_KEY,
    GROUP,
    EntryError,
    Layout,
    Refusal,
    ReplyAddress,
    RequestVerifier,
    parse_request,
    sign_reply,
)

log = logging.getLogger(__name__)

_REPLY_MAXLEN = 1000
_TRIM_INTERVAL = 10.0
"""Seconds between a relay's trims of stale request entries (see the module's docstring)."""
_READ_BATCH = 16
"""Entries per read: each may be a whole frame (64 MiB by default), so few at a time."""


KeyPredicate = Callable[[str], bool]


class RedisTransportServer(TransportServer):
    """A relay's side: reads request streams through the ``relays`` consumer group.

    Keyword options: ``namespace``, ``db``, ``username``/``password`` as for the
    client; ``consumer`` (this relay's consumer name, default host:pid:random);
    ``serve_ctl`` (read ``ctl``, default yes); ``keys`` (predicate over job keys,
    default all; see :meth:`serve_jobs`); ``claim_idle`` (seconds before another
    relay's unacknowledged entries are claimed, default 5); ``max_clock_skew``
    (seconds of accepted timestamp skew, and how long nonces are remembered,
    default 60); ``max_in_flight`` (entries handled at once, default 256);
    ``discovery_interval`` (seconds between looks for new job streams, default
    1, which is also the latency of a new job's first call at worst);
    ``key_ttl`` (job keys unused this long are no longer read, default 3600);
    ``reply_ttl`` (seconds a reply stream outlives its last reply, default 300);
    ``entry_ttl`` (seconds a request entry may wait unread before any relay trims
    it, default ``2 * max_clock_skew + 10``, see the module's docstring);
    ``trim_interval`` (seconds between trims, default 10); ``max_connections``
    (the bound of the connection pool, default
    :data:`~.connection.DEFAULT_MAX_CONNECTIONS`; the reader holds one).
    """

    def __init__(
        self,
        url: TransportURL,
        tls: TLSConfig | None,
        limits: Limits,
        handler: Handler,
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
        entry_ttl: float | None = None,
        trim_interval: float = _TRIM_INTERVAL,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        clock: Callable[[], float] = time.time,
        admission: Admission | None = None,
    ) -> None:
        """``admission`` is not used: entries wait in their stream until the relay
        reads them, ``max_in_flight`` at most, so the stream, not the relay's memory,
        holds what is not yet admitted."""
        tls = require_tls(tls, url)
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
        self._redis = redis_connection(
            url,
            tls,
            db=db,
            username=username,
            password=password,
            max_connections=max_connections,
        )
        self._batcher = PipelineBatcher(self._redis)
        """Nonce checks and replies of concurrent entries go in one pipeline (see
        :mod:`.batching`)."""
        self._max = frame_limit(limits)
        self._consumer = consumer or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._serve_ctl = serve_ctl
        self._predicate: KeyPredicate = keys or (lambda _key: True)
        self._claim_idle = claim_idle
        self._nonce_ttl_ms = int((2 * max_clock_skew + 10) * 1000)
        self._entry_ttl_ms = (
            self._nonce_ttl_ms if entry_ttl is None else max(1, int(entry_ttl * 1000))
        )
        self._trim_interval = trim_interval
        self._next_trim = 0.0
        self._max_in_flight = max_in_flight
        self._discovery_interval = discovery_interval
        self._key_ttl = key_ttl
        self._reply_ttl_ms = int(reply_ttl * 1000)
        self._clock = clock
        self._streams: set[str] = set()
        self._grouped: set[str] = set()
        self._in_flight: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._pending = 0
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

    def serve_jobs(self, owns: KeyPredicate) -> None:
        """Read only the job streams whose key (the job id) ``owns`` accepts.

        The hook for scale-out: relays sharing one Redis each serve the jobs
        they own, e.g. ``server.serve_jobs(job_manager.owns)``. Takes effect at
        the next discovery (within ``discovery_interval``); entries already in
        hand are still answered.
        """
        self._predicate = owns
        self._next_discovery = 0.0

    @property
    def pending_entries(self) -> int:
        """Entries read from the served streams and not yet acknowledged, by any relay
        (sampled at each recovery round)."""
        return self._pending

    def refuse_revoked(self, revoked: Callable[[Peer], str | None]) -> None:
        """Refuse entries signed by a revoked certificate (``revoked`` says why)."""
        self._checker.revoked = revoked

    async def start(self) -> None:
        try:
            await self._redis.ping()
            await self._discover()
        except redis_errors.RedisError as exc:
            raise translate(exc, self._where) from exc
        self._tasks = [
            asyncio.create_task(self._read_requests(), name="redis-requests"),
            asyncio.create_task(self._recover(), name="redis-recovery"),
        ]
        log.info("relay reading Redis", extra={"url": self._where, "consumer": self._consumer})

    async def stop_accepting(self) -> None:
        """Stop reading new entries (and claiming idle ones); entries in hand are still
        answered. Unread entries stay in their streams for another relay, or this one
        after a restart."""
        self._closing = True
        tasks, self._tasks = self._tasks, []
        if tasks:
            await halt(tasks, self._redis)

    async def aclose(self, grace: float = 1.0) -> None:
        """Stop reading; give entries in hand ``grace`` seconds to be answered."""
        await self.stop_accepting()
        if self._in_flight:
            # Unfinished entries stay pending; another relay will claim them.
            _, late = await asyncio.wait(list(self._in_flight.values()), timeout=grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=grace)
        await self._batcher.aclose()
        await self._redis.aclose()

    # -- discovery ----------------------------------------------------------

    async def _discover(self) -> None:
        """Read ``ctl`` and the announced job streams the predicate accepts."""
        now_ms = int(self._clock() * 1000)
        oldest = now_ms - int(self._key_ttl * 1000)
        await self._redis.zremrangebyscore(self._layout.registry, "-inf", f"({oldest}")
        found = await self._redis.zrangebyscore(self._layout.registry, oldest, "+inf")
        keys = [text(k) for k in found if isinstance(k, bytes | str)]
        served = {
            self._layout.request_stream(k) for k in keys if k != CTL_KEY and self._predicate(k)
        }
        if self._serve_ctl:
            served.add(self._layout.request_stream(CTL_KEY))
        for stream in served - self._grouped:
            await self._ensure_group(stream)
        self._streams = served
        self._next_discovery = self._clock() + self._discovery_interval
        if self._clock() >= self._next_trim:
            await self._trim(sorted({*keys, CTL_KEY}))

    async def _ensure_group(self, stream: str) -> None:
        try:
            # From the start of the stream: entries sent before any relay read it count.
            await self._redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except redis_errors.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        if self._layout.key_of(stream) != CTL_KEY:
            # A stream this created (mkstream) would otherwise never expire.
            await self._redis.pexpire(stream, int(self._key_ttl * 1000), nx=True)
        self._grouped.add(stream)

    async def _trim(self, keys: list[str]) -> None:
        """Delete request entries older than ``entry_ttl`` from the streams of ``keys``,
        whoever reads them, so that a stream nobody reads keeps no entry for long."""
        seconds, micros = await self._redis.time()
        oldest_ms = seconds * 1000 + micros // 1000 - self._entry_ttl_ms
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                stream = self._layout.request_stream(key)
                pipe.xtrim(stream, minid=f"{oldest_ms}-0", approximate=False)
            # A key of the wrong type (anyone may write to Redis) fails alone.
            await pipe.execute(raise_on_error=False)
        self._next_trim = self._clock() + self._trim_interval

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
                await asyncio.sleep(retry_delay(failures))
                continue
            except redis_errors.RedisError as exc:
                if self._closing:
                    return
                failures += 1
                error = translate(exc, self._where)
                log.warning("reading requests from Redis failed", extra={"error": str(error)})
                await asyncio.sleep(retry_delay(failures))
                continue
            for stream, entries in stream_entries(response):
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
                self._pending = await self._count_pending()
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
                        ident = text(entry_id)
                        log.info("claimed an idle entry", extra={"stream": stream, "entry": ident})
                        self._spawn(stream, ident, dict(fields))
            except redis_errors.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    log.warning("recovering pending entries failed", extra={"error": str(exc)})
            except redis_errors.RedisError as exc:
                error = translate(exc, self._where)
                log.warning("recovering pending entries failed", extra={"error": str(error)})

    async def _count_pending(self) -> int:
        """Entries of the served streams read by any relay and not yet acknowledged."""
        total = 0
        for stream in sorted(self._streams):
            try:
                summary = await self._redis.xpending(stream, GROUP)
            except redis_errors.ResponseError:  # NOGROUP: nothing read from it yet
                continue
            total += int(summary.get("pending", 0)) if isinstance(summary, dict) else 0
        return total

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
        key = self._layout.nonce_key(nonce)

        def stage(pipe: Pipeline) -> None:
            pipe.set(key, ref, nx=True, get=True, px=self._nonce_ttl_ms)

        [seen] = await self._batcher.execute(stage)
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
        signed = (
            None
            if address is None
            else sign_reply(
                self._signer, reply.SerializeToString(), address=address, refusal=refusal
            )
        )

        def stage(pipe: Pipeline) -> None:
            if address is not None and signed is not None:
                pipe.xadd(
                    address.stream,
                    signed.fields(),  # type: ignore[arg-type]
                    maxlen=_REPLY_MAXLEN,
                    approximate=True,
                )
                pipe.pexpire(address.stream, self._reply_ttl_ms)
            pipe.xack(stream, GROUP, entry_id)
            pipe.xdel(stream, entry_id)

        try:
            # With the replies of the other calls of this turn (see :mod:`.batching`).
            await self._batcher.execute(stage)
        except redis_errors.RedisError as exc:
            log.warning(
                "cannot reply through Redis; the entry stays pending",
                extra={"stream": stream, "entry": entry_id, "error": str(exc)},
            )
