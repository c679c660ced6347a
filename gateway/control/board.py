"""What relays sharing one Redis tell each other, so that any of them can answer a site.

Scale-out over Redis: each relay owns the jobs it started (it alone reads their
request streams, runs their SuperLinks and keeps their records), but a site's
task poll, or an admin's list of jobs, may reach any relay. So every relay
publishes a *share* about once a second: the tasks its jobs want from each
site, its jobs' summaries, when it last heard from each site, the job
states and the site statuses (transport, round trip, calls) that sites
reported to it. Every relay merges the others' shares into
its answers. Redis proves no writer, so a share is signed with its relay's key
and checked against the federation's CA (role ``relay``); a share expires when
its relay stops refreshing it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import redis.exceptions as redis_errors
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from ..core.config import TLSConfig
from ..core.exceptions import AuthError, ProtocolError
from ..core.identity import Peer, Role
from ..core.signing import CertificateChecker, Signer
from ..proto.control_pb2 import JobInfo, SiteJob, SiteJobState, SiteStatus
from ..transport import parse_url
from ..transport.redis.connection import redis_connection

log = logging.getLogger(__name__)

_SIGNATURE = ec.ECDSA(hashes.SHA256())
MAX_SHARE_BYTES = 16 * 1024 * 1024
"""A share larger than this is refused (it lists tasks and summaries, not data)."""
BOARD_CONNECTIONS = 2
"""The board's Redis pool: one exchange at a time, each a pipeline then one read."""

Report = tuple[float, SiteJobState]
"""When a relay received a site's state of a job, and the state."""
Status = tuple[float, SiteStatus]
"""When a relay received a site's status, and the status."""

T = TypeVar("T")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class Share:
    """One relay's part of the federation's state."""

    relay: str
    written: float
    tasks: dict[str, list[SiteJob]] = field(default_factory=dict)
    """Per site: the tasks this relay's jobs want it to run."""
    jobs: list[JobInfo] = field(default_factory=list)
    seen: dict[str, float] = field(default_factory=dict)
    """Per site: when it last polled this relay."""
    reports: dict[str, dict[str, Report]] = field(default_factory=dict)
    """Per job, per site: the latest state the site reported to this relay."""
    node_keys: dict[str, str] = field(default_factory=dict)
    """Per site: the Flower node public key it reported to this relay."""
    statuses: dict[str, Status] = field(default_factory=dict)
    """Per site: the latest status it reported to this relay."""

    def encode(self) -> bytes:
        return json.dumps(
            {
                "relay": self.relay,
                "written": self.written,
                "tasks": {
                    site: [_b64(t.SerializeToString()) for t in tasks]
                    for site, tasks in self.tasks.items()
                },
                "jobs": [_b64(j.SerializeToString()) for j in self.jobs],
                "seen": self.seen,
                "reports": {
                    job: {
                        site: [when, _b64(s.SerializeToString())] for site, (when, s) in by.items()
                    }
                    for job, by in self.reports.items()
                },
                "node_keys": self.node_keys,
                "statuses": {
                    site: [when, _b64(s.SerializeToString())]
                    for site, (when, s) in self.statuses.items()
                },
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> Share:
        try:
            raw: dict[str, Any] = json.loads(data)
            return cls(
                relay=str(raw["relay"]),
                written=float(raw["written"]),
                tasks={
                    str(site): [SiteJob.FromString(base64.b64decode(t)) for t in tasks]
                    for site, tasks in raw["tasks"].items()
                },
                jobs=[JobInfo.FromString(base64.b64decode(j)) for j in raw["jobs"]],
                seen={str(site): float(when) for site, when in raw["seen"].items()},
                reports={
                    str(job): {
                        str(site): (float(when), SiteJobState.FromString(base64.b64decode(s)))
                        for site, (when, s) in by.items()
                    }
                    for job, by in raw["reports"].items()
                },
                node_keys={str(site): str(key) for site, key in raw["node_keys"].items()},
                # .get: relays of older releases share no statuses (rolling upgrades).
                statuses={
                    str(site): (float(when), SiteStatus.FromString(base64.b64decode(s)))
                    for site, (when, s) in raw.get("statuses", {}).items()
                },
            )
        except Exception as exc:  # json, base64, protobuf and shape errors alike
            raise ProtocolError(f"malformed relay share: {exc}") from None


def seal(share: Share, signer: Signer) -> bytes:
    """The share as stored in Redis: payload, the relay's certificate and signature."""
    payload = share.encode()
    return json.dumps(
        {
            "payload": _b64(payload),
            "cert": signer.cert_pem.decode(),
            "signature": _b64(signer.sign(payload)),
        }
    ).encode()


def unseal(data: bytes, checker: CertificateChecker, *, now: float) -> Share:
    """The share in ``data`` if a relay certificate of the federation signed it."""
    if len(data) > MAX_SHARE_BYTES:
        raise ProtocolError(f"relay share of {len(data)} bytes exceeds {MAX_SHARE_BYTES}")
    try:
        sealed = json.loads(data)
        payload = base64.b64decode(sealed["payload"])
        signature = base64.b64decode(sealed["signature"])
        cert = str(sealed["cert"]).encode()
    except Exception as exc:
        raise ProtocolError(f"malformed sealed relay share: {exc}") from None
    peer, key = checker.check(cert, now=now)
    if peer.role is not Role.RELAY:
        raise AuthError(f"{peer} signed a relay share but is not a relay")
    try:
        key.verify(signature, payload, _SIGNATURE)
    except InvalidSignature:
        raise AuthError(f"a relay share's signature does not match {peer}'s certificate") from None
    return Share.decode(payload)


@dataclass(frozen=True)
class BoardView:
    """The other relays' shares, merged for answering."""

    shares: tuple[Share, ...] = ()

    def tasks(self, site: str) -> list[SiteJob]:
        return [task for share in self.shares for task in share.tasks.get(site, [])]

    def jobs(self) -> list[JobInfo]:
        return [job for share in self.shares for job in share.jobs]

    def job(self, job_id: str) -> tuple[str, JobInfo] | None:
        """The owning relay and summary of another relay's job."""
        for share in self.shares:
            for job in share.jobs:
                if job.job_id == job_id:
                    return share.relay, job
        return None

    def seen(self) -> dict[str, float]:
        merged: dict[str, float] = {}
        for share in self.shares:
            for site, when in share.seen.items():
                merged[site] = max(when, merged.get(site, 0.0))
        return merged

    def report(self, job_id: str, site: str) -> Report | None:
        found = [s.reports[job_id][site] for s in self.shares if site in s.reports.get(job_id, {})]
        return max(found, key=lambda r: r[0], default=None)

    def node_keys(self) -> dict[str, str]:
        return {site: key for share in self.shares for site, key in share.node_keys.items()}

    def status(self, site: str) -> Status | None:
        """The newest status ``site`` reported to any of the other relays."""
        found = [s.statuses[site] for s in self.shares if site in s.statuses]
        return max(found, key=lambda r: r[0], default=None)

    def task_ids(self) -> frozenset[tuple[str, str]]:
        """(site, job) pairs wanted by other relays: a change wakes waiting polls."""
        return frozenset(
            (site, task.job_id)
            for share in self.shares
            for site, tasks in share.tasks.items()
            for task in tasks
        )


def newest(reports: Iterable[tuple[float, T] | None]) -> T | None:
    """The value of the newest (when, value) pair: a site may have reported to several relays."""
    found = [r for r in reports if r is not None]
    return max(found, key=lambda r: r[0])[1] if found else None


class Board(Protocol):
    """Where a relay's job manager exchanges shares with the other relays."""

    relay: str

    async def exchange(self, share: Share) -> BoardView: ...

    async def aclose(self) -> None: ...


class RedisBoard:
    """Exchanges shares through the federation's Redis (same URL and TLS as the transport)."""

    def __init__(
        self,
        url: str,
        tls: TLSConfig,
        *,
        relay: str,
        namespace: str = "flgate",
        ttl: float = 15.0,
        revoked: Callable[[Peer], str | None] | None = None,
    ) -> None:
        """``revoked``: the federation's revocation check; a revoked relay's share is ignored."""
        ca, cert, key = tls.read()
        self.relay = relay
        self._signer = Signer(cert_pem=cert, key_pem=key)
        self._checker = CertificateChecker(ca, revoked=revoked)
        self._redis = redis_connection(parse_url(url), tls, max_connections=BOARD_CONNECTIONS)
        self._index = f"{namespace}:relays"
        self._prefix = f"{namespace}:share:"
        self._ttl_ms = int(ttl * 1000)
        self._refused: set[str] = set()

    async def exchange(self, share: Share) -> BoardView:
        """Publish this relay's share; return the other live relays' shares."""
        now = time.time()
        now_ms = int(now * 1000)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(self._prefix + self.relay, seal(share, self._signer), px=self._ttl_ms)
                pipe.zadd(self._index, {self.relay: now_ms})
                pipe.zremrangebyscore(self._index, "-inf", f"({now_ms - self._ttl_ms}")
                pipe.zrange(self._index, 0, -1)
                *_, members = await pipe.execute()
            others = [m.decode() for m in members if m.decode() != self.relay]
            blobs = await self._redis.mget([self._prefix + r for r in others]) if others else []
        except redis_errors.RedisError as exc:
            log.warning("cannot exchange relay shares", extra={"error": str(exc)})
            raise ProtocolError(f"Redis refused the relay board exchange: {exc}") from exc
        shares = []
        for relay, blob in zip(others, blobs, strict=True):
            if not isinstance(blob, bytes):
                continue
            try:
                shares.append(unseal(blob, self._checker, now=now))
            except (ProtocolError, AuthError) as exc:
                if relay not in self._refused:  # say it once per relay, not every second
                    self._refused.add(relay)
                    log.warning("ignored a relay share", extra={"relay": relay, "error": str(exc)})
        return BoardView(tuple(shares))

    async def aclose(self) -> None:
        """Withdraw this relay's share (others stop waiting for it) and disconnect."""
        with contextlib.suppress(redis_errors.RedisError):
            await self._redis.delete(self._prefix + self.relay)
            await self._redis.zrem(self._index, self.relay)
        await self._redis.aclose()
