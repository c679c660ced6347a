"""The Redis Streams transport against real redis-server processes (plain and TLS).

Forged entries are written straight into Redis, as anyone with access to the
Redis server could; none of them may reach the handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.exceptions import ResponseError

from gateway.core.config import Limits, TLSConfig
from gateway.core.exceptions import (
    AuthError,
    ConfigError,
    ConnectError,
    DeadlineError,
    FrameTooLargeError,
)
from gateway.core.identity import Peer, Role
from gateway.core.signing import CertificateChecker, Signer
from gateway.proto.envelope_pb2 import KIND_AGENT, ORIGIN_UPSTREAM, Envelope, Reply
from gateway.provisioning.certs import cert_pem
from gateway.transport import connect, parse_url
from gateway.transport.redis.client import RedisTransportClient
from gateway.transport.redis.connection import redis_connection
from gateway.transport.redis.protocol import (
    EntryError,
    Layout,
    ReplyAddress,
    RequestEntry,
    RequestVerifier,
    new_token,
    parse_reply,
    parse_request,
    sign_reply,
    sign_request,
)
from gateway.transport.redis.server import RedisTransportServer
from tests.support.redis import RedisPKI, RedisServers

LAYOUT = Layout()
CTL = LAYOUT.request_stream("ctl")


@dataclass
class Recorder:
    """A handler that answers ``<peer name>:<body>`` and records what reached it."""

    name: str = "relay"
    seen: list[tuple[Peer, Envelope]] = field(default_factory=list)
    delay: float = 0.0

    async def __call__(self, peer: Peer, envelope: Envelope) -> Reply:
        self.seen.append((peer, envelope))
        if self.delay:
            await asyncio.sleep(self.delay)
        return Reply(
            message_id=envelope.message_id,
            origin=ORIGIN_UPSTREAM,
            http_status=200,
            body=f"{self.name}:{peer.name}:".encode() + envelope.body,
        )


def fleet(job: str = "job-a", body: bytes = b"hello") -> Envelope:
    return Envelope(job_id=job, site="site-1", message_id=new_token(), method="Pull", body=body)


def ctl(body: bytes = b"task?") -> Envelope:
    return Envelope(
        site="site-1", message_id=new_token(), method="Tasks", kind=KIND_AGENT, body=body
    )


@dataclass
class Env:
    pki: RedisPKI
    url: str
    raw: aioredis.Redis
    servers: list[RedisTransportServer] = field(default_factory=list)
    clients: list[RedisTransportClient] = field(default_factory=list)

    def tls(self, name: str) -> TLSConfig:
        fed = self.pki.federation
        return fed.relay if name == "relay" else fed.sites[name]

    async def server(
        self,
        handler: Recorder,
        limits: Limits = Limits(),
        *,
        start: bool = True,
        **options: Any,
    ) -> RedisTransportServer:
        options.setdefault("discovery_interval", 0.1)
        server = RedisTransportServer(
            parse_url(self.url), self.tls("relay"), limits, handler, **options
        )
        self.servers.append(server)
        if start:
            await server.start()
        return server

    def client(self, site: str = "site-1", limits: Limits = Limits()) -> RedisTransportClient:
        client = connect(self.url, tls=self.tls(site), limits=limits)
        assert isinstance(client, RedisTransportClient)
        self.clients.append(client)
        return client


async def _env(pki: RedisPKI, url: str, port: int, tls: TLSConfig | None) -> AsyncIterator[Env]:
    options: dict[str, Any] = {}
    if tls is not None:
        options = {"ssl": True, "ssl_ca_certs": str(tls.ca_cert)}
    raw = aioredis.Redis(host="127.0.0.1", port=port, **options)
    await raw.flushall()
    env = Env(pki=pki, url=url, raw=raw)
    try:
        yield env
    finally:
        for client in env.clients:
            await client.aclose()
        for server in env.servers:
            await server.aclose()
        await raw.aclose()


@pytest.fixture
async def plain(redis_servers: RedisServers, redis_pki: RedisPKI) -> AsyncIterator[Env]:
    async for env in _env(redis_pki, redis_servers.plain.url, redis_servers.plain.port, None):
        yield env


@pytest.fixture(params=["redis", "rediss"])
async def either(
    request: pytest.FixtureRequest,
    redis_servers: RedisServers,
    redis_pki: RedisPKI,
) -> AsyncIterator[Env]:
    server = redis_servers.tls if request.param == "rediss" else redis_servers.plain
    tls = redis_pki.federation.relay if server.tls else None
    async for env in _env(redis_pki, server.url, server.port, tls):
        yield env


def signer_of(tls: TLSConfig) -> Signer:
    return Signer.of(tls)


def signed(
    tls: TLSConfig,
    envelope: Envelope,
    *,
    reply_stream: str | None = None,
    now: float | None = None,
) -> RequestEntry:
    """A request entry as a genuine client of ``tls`` would write it."""
    signer = signer_of(tls)
    stream = reply_stream or LAYOUT.reply_stream(signer.peer.name, new_token())
    return sign_request(
        signer,
        envelope.SerializeToString(),
        reply_stream=stream,
        rid=new_token(),
        now=time.time() if now is None else now,
    )


def private_key(tls: TLSConfig) -> ec.EllipticCurvePrivateKey:
    key = load_pem_private_key(tls.key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def resigned(entry: RequestEntry, key: ec.EllipticCurvePrivateKey) -> RequestEntry:
    return replace(entry, signature=key.sign(entry.signed_payload(), ec.ECDSA(hashes.SHA256())))


async def next_reply(raw: aioredis.Redis, stream: str, timeout: float = 5.0) -> dict[bytes, bytes]:
    response: Any = await raw.xread({stream: "0-0"}, count=1, block=int(timeout * 1000))
    assert response, f"no reply on {stream} within {timeout} s"
    fields: dict[bytes, bytes] = response[0][1][0][1]
    return fields


async def drained(raw: aioredis.Redis, stream: str) -> None:
    """Wait until the relays acknowledged and deleted every entry of ``stream``."""
    for _ in range(100):
        pending = await raw.xpending(stream, "relays")
        if await raw.xlen(stream) == 0 and pending["pending"] == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{stream} still holds entries")


# -- round trips ----------------------------------------------------------------


async def test_round_trip_takes_the_peer_from_the_certificate(either: Env) -> None:
    handler = Recorder()
    await either.server(handler)
    client = either.client("site-1")

    reply = await client.send(fleet(body=b"fleet"), timeout=5)
    assert reply.http_status == 200 and reply.body == b"relay:site-1:fleet"
    reply = await client.send(ctl(body=b"ctl"), timeout=5)
    assert reply.body == b"relay:site-1:ctl"

    assert [peer for peer, _ in handler.seen] == [Peer("site-1", Role.SITE)] * 2
    await drained(either.raw, CTL)
    await drained(either.raw, LAYOUT.request_stream("job-a"))
    assert await either.raw.xlen(client.reply_stream) == 0  # the client deletes what it read


async def test_fifty_concurrent_calls_share_one_client(plain: Env) -> None:
    handler = Recorder(delay=0.05)
    await plain.server(handler)
    client = plain.client()
    envelopes = [fleet(body=str(i).encode()) for i in range(50)]

    replies = await asyncio.gather(*(client.send(e, timeout=10) for e in envelopes))

    assert [r.message_id for r in replies] == [e.message_id for e in envelopes]
    assert [r.body for r in replies] == [f"relay:site-1:{i}".encode() for i in range(50)]


async def test_two_clients_get_their_own_replies(plain: Env) -> None:
    await plain.server(Recorder())
    one, two = plain.client("site-1"), plain.client("site-2")

    async def calls(client: RedisTransportClient, site: str) -> None:
        for reply in await asyncio.gather(
            *(client.send(fleet(body=b"x"), timeout=10) for _ in range(20))
        ):
            assert reply.body == f"relay:{site}:x".encode()

    await asyncio.gather(calls(one, "site-1"), calls(two, "site-2"))


# -- forged entries -------------------------------------------------------------


def _foreign(pki: RedisPKI, envelope: Envelope) -> RequestEntry:
    return signed(pki.federation.foreign_site, envelope)


def _tampered(pki: RedisPKI, envelope: Envelope) -> RequestEntry:
    entry = signed(pki.federation.sites["site-1"], envelope)
    return replace(entry, envelope=entry.envelope + b"\x10\x01")


def _stale(pki: RedisPKI, envelope: Envelope) -> RequestEntry:
    return signed(pki.federation.sites["site-1"], envelope, now=time.time() - 120)


def _keyless(pki: RedisPKI, envelope: Envelope) -> RequestEntry:
    # Site-1's certificate (public), signed with a key that is not site-1's.
    entry = signed(pki.federation.sites["site-1"], envelope)
    return resigned(entry, ec.generate_private_key(ec.SECP256R1()))


def _expired(pki: RedisPKI, envelope: Envelope) -> RequestEntry:
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=2)
    cert, key = pki.ca.issue("site-1", Role.SITE, validity=dt.timedelta(days=1), not_before=start)
    entry = replace(signed(pki.federation.sites["site-1"], envelope), cert=cert_pem(cert))
    return resigned(entry, key)


def _other_sites_stream(pki: RedisPKI, envelope: Envelope) -> RequestEntry:
    victim = LAYOUT.reply_stream("site-1", new_token())
    return signed(pki.federation.sites["site-2"], envelope, reply_stream=victim)


FORGERIES: dict[str, tuple[Callable[[RedisPKI, Envelope], RequestEntry], str]] = {
    "certificate of another CA": (_foreign, "not one of this federation's"),
    "tampered after signing": (_tampered, "signature does not match"),
    "stale timestamp": (_stale, "stale entry"),
    "certificate without its key": (_keyless, "signature does not match"),
    "expired certificate": (_expired, "not one of this federation's"),
    "reply stream of another site": (_other_sites_stream, "may not ask for replies"),
}


@pytest.mark.parametrize("forgery", list(FORGERIES))
async def test_forged_entry_is_refused_and_never_reaches_the_handler(
    plain: Env, forgery: str
) -> None:
    handler = Recorder()
    await plain.server(handler)
    forge, reason = FORGERIES[forgery]
    entry = forge(plain.pki, ctl())

    await plain.raw.xadd(CTL, entry.fields())  # type: ignore[arg-type]

    refusal = parse_reply(await next_reply(plain.raw, entry.reply_stream), max_reply=None)
    assert refusal.refusal is not None and refusal.refusal.value == "auth"
    reply = Reply.FromString(refusal.reply)
    assert reply.http_status == 403 and reason in reply.detail
    await drained(plain.raw, CTL)
    assert handler.seen == []
    # The relay keeps serving genuine calls.
    assert (await plain.client().send(ctl(), timeout=5)).http_status == 200


async def test_replayed_entry_is_dropped_without_a_refusal(
    plain: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """A replay's reply stream is the genuine sender's: a refusal there could
    abort the sender's genuine call, so the relay only logs and drops it."""
    handler = Recorder()
    await plain.server(handler)
    entry = signed(plain.pki.federation.sites["site-1"], ctl())

    await plain.raw.xadd(CTL, entry.fields())  # type: ignore[arg-type]
    first = parse_reply(await next_reply(plain.raw, entry.reply_stream), max_reply=None)
    await plain.raw.delete(entry.reply_stream)
    await plain.raw.xadd(CTL, entry.fields())  # type: ignore[arg-type]
    await drained(plain.raw, CTL)

    assert first.refusal is None
    assert await plain.raw.exists(entry.reply_stream) == 0
    assert any("replayed nonce" in getattr(r, "reason", "") for r in caplog.records)
    assert len(handler.seen) == 1


async def _steal_one(raw: aioredis.Redis) -> tuple[RequestEntry, ReplyAddress]:
    """Read the next request as a relay would, and never acknowledge it."""
    with contextlib.suppress(ResponseError):  # the group exists already
        await raw.xgroup_create(CTL, "relays", id="0", mkstream=True)
    response: Any = []
    while not response:
        response = await raw.xreadgroup("relays", "thief", {CTL: ">"}, count=1, block=1000)
    return parse_request(response[0][1][0][1], layout=LAYOUT, max_envelope=None)


async def test_forged_reply_is_ignored(plain: Env) -> None:
    """Only a relay's signature settles a call."""
    call = asyncio.create_task(plain.client("site-1").send(ctl(), timeout=0.5))
    request, address = await _steal_one(plain.raw)
    envelope = Envelope.FromString(request.envelope)
    site_two = signer_of(plain.pki.federation.sites["site-2"])  # valid, but not a relay's
    answer = Reply(message_id=envelope.message_id, http_status=200, body=b"forged")
    forged = sign_reply(site_two, answer.SerializeToString(), address=address)
    await plain.raw.xadd(request.reply_stream, forged.fields())  # type: ignore[arg-type]

    with pytest.raises(DeadlineError):
        await call


async def test_refusal_of_a_forged_copy_does_not_abort_the_genuine_call(plain: Env) -> None:
    """A forger copies a pending request's reply stream and request id into an
    entry of its own; the relay's refusal of it reaches the genuine client,
    which ignores it (it answers another entry) and gets its real reply."""
    call = asyncio.create_task(plain.client("site-1").send(ctl(), timeout=10))
    request, _ = await _steal_one(plain.raw)  # held back until claimed below
    copy = replace(request, envelope=request.envelope + b"\x10\x01")
    await plain.raw.xadd(CTL, copy.fields())  # type: ignore[arg-type]
    handler = Recorder()
    await plain.server(handler, claim_idle=0.3)

    assert (await call).body == b"relay:site-1:task?"
    assert len(handler.seen) == 1


# -- frame limit ----------------------------------------------------------------

SMALL = Limits(max_frame_bytes=1024)  # the transport adds 1 MiB for the envelope's fields
OVER = 1024 + 1024 * 1024 + 1


async def test_oversized_envelope_is_refused_by_the_client(plain: Env) -> None:
    client = plain.client(limits=SMALL)
    with pytest.raises(FrameTooLargeError, match="frame limit"):
        await client.send(ctl(body=b"x" * OVER), timeout=5)
    assert await plain.raw.exists(CTL) == 0


async def test_oversized_and_malformed_entries_are_refused_and_the_relay_keeps_serving(
    plain: Env,
) -> None:
    handler = Recorder()
    await plain.server(handler, SMALL)
    site = plain.pki.federation.sites["site-1"]

    oversized = signed(site, ctl(body=b"x" * OVER))
    undecodable = signed(site, ctl())
    undecodable = resigned(replace(undecodable, envelope=b"\xff\xff\xff"), private_key(site))
    misrouted = signed(site, fleet(job="job-b"))  # a Fleet call of job-b put into ctl
    for entry in (oversized, undecodable, misrouted):
        await plain.raw.xadd(CTL, entry.fields())  # type: ignore[arg-type]
    for junk in ({b"garbage": b"1"}, {b"v": b"1", b"env": b"", b"reply": b"\xff"}):
        await plain.raw.xadd(CTL, junk)  # type: ignore[arg-type]

    expected = [(oversized, "frame", 413), (undecodable, "malformed", 400)]
    for entry, refusal, status in [*expected, (misrouted, "malformed", 400)]:
        answer = parse_reply(await next_reply(plain.raw, entry.reply_stream), max_reply=None)
        assert answer.refusal is not None and answer.refusal.value == refusal
        assert Reply.FromString(answer.reply).http_status == status
    await drained(plain.raw, CTL)
    assert handler.seen == []
    assert (await plain.client().send(ctl(), timeout=5)).body == b"relay:site-1:task?"


async def test_the_relays_refusals_become_the_clients_errors(plain: Env) -> None:
    """A genuine client refused by the relay fails at once, as over gRPC: its
    clock is off (an auth failure) or its envelope is over the relay's limit."""
    await plain.server(Recorder(), SMALL)
    site = plain.pki.federation.sites["site-1"]
    url = parse_url(plain.url)
    skewed = RedisTransportClient(url, site, Limits(), clock=lambda: time.time() - 120)
    plain.clients.append(skewed)
    with pytest.raises(AuthError, match="stale entry"):
        await skewed.send(ctl(), timeout=5)
    with pytest.raises(FrameTooLargeError, match="frame limit"):
        await plain.client().send(ctl(body=b"x" * OVER), timeout=5)


# -- recovery and routing -------------------------------------------------------


async def test_a_dead_relays_entry_is_claimed_and_answered(plain: Env) -> None:
    call = asyncio.create_task(plain.client().send(ctl(), timeout=10))
    await _steal_one(plain.raw)  # a relay reads the entry, then dies before answering

    handler = Recorder(name="survivor")
    await plain.server(handler, claim_idle=0.3)

    assert (await call).body == b"survivor:site-1:task?"
    assert len(handler.seen) == 1
    await drained(plain.raw, CTL)


async def test_a_slow_relay_keeps_its_entry(plain: Env) -> None:
    """A relay still working on an entry keeps it from looking idle to others."""
    slow, other = Recorder(name="slow", delay=1.0), Recorder(name="other")
    await plain.server(slow, claim_idle=0.2)
    call = asyncio.create_task(plain.client().send(ctl(), timeout=10))
    while not slow.seen:
        await asyncio.sleep(0.01)
    await plain.server(other, claim_idle=0.2)

    assert (await call).body == b"slow:site-1:task?"
    assert other.seen == []


async def test_relays_serve_only_their_own_jobs(plain: Env) -> None:
    a, b = Recorder(name="A"), Recorder(name="B")
    await plain.server(a, keys=lambda key: key == "A")
    client = plain.client()
    with pytest.raises(DeadlineError):  # nobody serves job B yet
        await client.send(fleet(job="B"), timeout=0.5)
    groups = await plain.raw.xinfo_groups(LAYOUT.request_stream("B"))
    assert groups == []  # relay A never even joined job B's stream

    server_b = await plain.server(b, start=False)
    server_b.serve_jobs(lambda key: key == "B")
    await server_b.start()

    assert (await client.send(fleet(job="B"), timeout=5)).body.startswith(b"B:")
    assert (await client.send(fleet(job="A"), timeout=5)).body.startswith(b"A:")
    assert {e.job_id for _, e in a.seen} == {"A"}
    assert {e.job_id for _, e in b.seen} == {"B"}


# -- errors ---------------------------------------------------------------------


async def test_transport_errors_are_translated(plain: Env, redis_servers: RedisServers) -> None:
    site = plain.pki.federation.sites["site-1"]
    closed = connect("redis://127.0.0.1:1", tls=site)
    with pytest.raises(ConnectError):
        await closed.send(ctl(), timeout=5)
    await closed.aclose()

    # The Redis server's certificate is not signed by the CA this client trusts.
    foreign_ca = plain.pki.federation.foreign_site.cert.parent / "rootCA.pem"
    distrustful = TLSConfig(ca_cert=foreign_ca, cert=site.cert, key=site.key)
    with pytest.raises(ConfigError):
        connect(redis_servers.tls.url, tls=None)
    wrong = connect(redis_servers.tls.url, tls=distrustful)
    with pytest.raises(AuthError):
        await wrong.send(ctl(), timeout=5)
    await wrong.aclose()

    with pytest.raises(DeadlineError):  # no relay reads the stream
        await plain.client().send(ctl(), timeout=0.3)


async def test_rediss_pool_shares_one_context_that_trusts_the_federation_only(
    redis_servers: RedisServers,
    redis_pki: RedisPKI,
) -> None:
    site = redis_pki.federation.sites["site-1"]
    client = redis_connection(parse_url(redis_servers.tls.url), site)
    try:
        # More connections than one: each concurrent command takes its own.
        await asyncio.gather(*(client.ping() for _ in range(8)))
        pool = client.connection_pool
        contexts = {id(c.ssl_context.get()) for c in pool._available_connections}  # type: ignore[attr-defined]
        assert len(pool._available_connections) > 1 and len(contexts) == 1
        context = pool._available_connections[0].ssl_context.get()  # type: ignore[attr-defined]
        # Only the federation's root: no system CA could vouch for a Redis server.
        assert [ca["subject"] for ca in context.get_ca_certs()] == [
            ca["subject"]
            for ca in ssl.create_default_context(cafile=str(site.ca_cert)).get_ca_certs()
        ]
    finally:
        await client.aclose()


# -- the entry parser, fuzzed ---------------------------------------------------

_FIELD_NAMES = [b"v", b"env", b"cert", b"ts", b"nonce", b"rid", b"reply", b"sig", b"req"]


@st.composite
def field_maps(draw: st.DrawFn, genuine: dict[bytes, bytes]) -> dict[bytes, bytes]:
    names = st.sampled_from(_FIELD_NAMES) | st.binary(max_size=6)
    values = st.sampled_from(list(genuine.values())) | st.binary(max_size=80)
    fields = draw(st.dictionaries(names, values, max_size=10))
    if draw(st.booleans()):  # start from a genuine entry and change a little
        fields = {**genuine, **fields}
    return fields


def test_entry_parser_survives_any_field_map(redis_pki: RedisPKI) -> None:
    fed = redis_pki.federation
    genuine = signed(fed.sites["site-1"], ctl()).fields()
    verifier = RequestVerifier(
        CertificateChecker(fed.relay.ca_cert.read_bytes()), layout=LAYOUT, max_skew=60
    )

    @settings(max_examples=150, deadline=None, derandomize=True, database=None)
    @given(field_maps(genuine))
    def check(fields: dict[bytes, bytes]) -> None:
        try:
            entry, address = parse_request(fields, layout=LAYOUT, max_envelope=4096)
            verifier.verify(entry, address, stream_key="ctl", now=time.time())
        except EntryError:
            pass

    check()


async def test_a_revoked_signer_is_refused_before_the_handler(plain: Env) -> None:
    handler = Recorder()
    server = await plain.server(handler)
    server.refuse_revoked(lambda peer: f"{peer} was revoked" if peer.name == "site-1" else None)
    with pytest.raises(AuthError, match="site:site-1 was revoked"):
        await plain.client("site-1").send(ctl(), timeout=5)
    assert handler.seen == []
    assert (await plain.client("site-2").send(ctl(), timeout=5)).http_status == 200


# -- streams nobody reads, the connection pool, stopping ------------------------


async def test_an_entry_for_a_job_nobody_runs_is_gone_after_the_entry_ttl(plain: Env) -> None:
    """No relay reads job "ghost"'s stream, yet a relay trims its stale entries, and
    the stream itself expires once its writers stop."""
    await plain.server(Recorder(), keys=lambda key: key == "mine", entry_ttl=0.5, trim_interval=0.1)
    ghost = LAYOUT.request_stream("ghost")
    with pytest.raises(DeadlineError):
        await plain.client().send(fleet(job="ghost"), timeout=0.3)
    assert await plain.raw.xlen(ghost) == 1
    assert 0 < await plain.raw.pttl(ghost) <= 3600 * 1000

    for _ in range(100):
        if await plain.raw.xlen(ghost) == 0:
            break
        await asyncio.sleep(0.05)
    assert await plain.raw.xlen(ghost) == 0


async def test_entries_younger_than_the_entry_ttl_wait_for_the_relay_that_will_run_their_job(
    plain: Env,
) -> None:
    await plain.server(Recorder(name="other"), keys=lambda key: False, trim_interval=0.05)
    client = plain.client()
    early = asyncio.create_task(client.send(fleet(job="later", body=b"early"), timeout=10))
    while not await plain.raw.exists(LAYOUT.request_stream("later")):
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)  # several trims pass over the entry

    await plain.server(Recorder(name="owner"), keys=lambda key: key == "later")

    assert (await early).body == b"owner:site-1:early"


async def test_a_job_stream_a_relay_creates_for_its_group_expires(plain: Env) -> None:
    """The registry may outlive a stream by a moment; the stream the relay then
    creates (for its consumer group) must not live forever."""
    await plain.raw.zadd(LAYOUT.registry, {"fresh": int(time.time() * 1000)})
    await plain.server(Recorder(), key_ttl=60)
    fresh = LAYOUT.request_stream("fresh")
    assert await plain.raw.exists(fresh) == 1
    assert 0 < await plain.raw.pttl(fresh) <= 60 * 1000
    assert await plain.raw.pttl(CTL) == -1  # ctl is every relay's: it never expires


async def _connections_of(raw: aioredis.Redis, user: str) -> int:
    clients: list[dict[str, Any]] = await raw.client_list()
    return sum(1 for c in clients if c.get("user") == user)


async def test_a_flood_of_calls_keeps_the_relays_and_the_sites_redis_connections_within_the_bound(
    either: Env,
) -> None:
    """Each side has its own Redis user here, so CLIENT LIST tells their connections apart.
    Unbounded, this flood took about a hundred connections on each side."""
    users = {"relay-pool": "relay-secret", "site-pool": "site-secret"}
    for user, password in users.items():
        await either.raw.acl_setuser(
            user,
            enabled=True,
            passwords=[f"+{password}"],
            keys=["*"],
            channels=["*"],
            commands=["+@all"],
        )
    try:
        bound = 4
        await either.server(
            Recorder(delay=0.02),
            username="relay-pool",
            password=users["relay-pool"],
            max_connections=bound,
        )
        site = either.pki.federation.sites["site-1"]
        client = RedisTransportClient(
            parse_url(either.url),
            site,
            Limits(),
            username="site-pool",
            password=users["site-pool"],
            max_connections=bound,
        )
        either.clients.append(client)
        peak = {"relay-pool": 0, "site-pool": 0}
        flooding = True

        async def watch() -> None:
            while flooding:
                for user in peak:
                    peak[user] = max(peak[user], await _connections_of(either.raw, user))
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch())
        envelopes = [fleet(body=str(i).encode()) if i % 2 else ctl() for i in range(300)]
        replies = await asyncio.gather(*(client.send(e, timeout=30) for e in envelopes))
        flooding = False
        await watcher

        assert [r.message_id for r in replies] == [e.message_id for e in envelopes]
        assert all(r.http_status == 200 for r in replies)
        assert 1 <= peak["relay-pool"] <= bound
        assert 1 <= peak["site-pool"] <= bound
    finally:
        for user in users:
            await either.raw.acl_deluser(user)


def test_a_pool_too_small_for_a_blocking_read_is_refused(redis_pki: RedisPKI) -> None:
    site = redis_pki.federation.sites["site-1"]
    with pytest.raises(ConfigError, match="at least 2 connections"):
        redis_connection(parse_url("redis://127.0.0.1:1"), site, max_connections=1)


async def test_a_relay_that_stops_accepting_answers_the_entries_in_hand_and_leaves_the_rest(
    plain: Env,
) -> None:
    handler = Recorder(delay=0.3)
    server = await plain.server(handler)
    client = plain.client()
    in_hand = asyncio.create_task(client.send(ctl(body=b"in hand"), timeout=10))
    while not handler.seen:
        await asyncio.sleep(0.01)

    await server.stop_accepting()
    with pytest.raises(DeadlineError):
        await client.send(ctl(body=b"too late"), timeout=0.5)

    assert (await in_hand).body == b"relay:site-1:in hand"
    assert [e.body for _, e in handler.seen] == [b"in hand"]
    assert await plain.raw.xlen(CTL) == 1  # the next relay will answer it
