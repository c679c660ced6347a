"""Building envelopes and replies: the one place where their fields are filled."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable

from ..proto.envelope_pb2 import ORIGIN_GATEWAY, ORIGIN_UPSTREAM, Dialect, Envelope, Header, Reply
from . import fleet

# The gateway's own failures must keep Flower's retry alive: 503/504 over HTTP
# (every Flower release retries them), UNAVAILABLE over gRPC. Never 401 (the
# SuperNode would shut down).
_RETRYABLE_HTTP = frozenset({503, 504})


class _MessageIds:
    """64 random bits per process, then a 64-bit counter: 32 hex digits, unique without a
    ``getrandom`` system call per id (3% of a site's CPU per call). Ids are scoped by the
    verified sender at the relay, so nothing rests on their being unpredictable."""

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._next = itertools.count()

    def new(self) -> str:
        return f"{self._prefix}{next(self._next):016x}"


_ids = _MessageIds()
if hasattr(os, "register_at_fork"):  # POSIX: a forked child must not repeat the parent's ids
    os.register_at_fork(after_in_child=_ids.reseed)
new_message_id = _ids.new


def now_ms() -> int:
    return int(time.time() * 1000)


def make_envelope(
    *,
    job_id: str,
    site: str,
    method: str,
    dialect: Dialect,
    headers: Iterable[tuple[str, bytes]],
    body: bytes,
    deadline_unix_ms: int,
    message_id: str | None = None,
    attempt: int = 1,
) -> Envelope:
    return Envelope(
        job_id=job_id,
        site=site,
        message_id=message_id or new_message_id(),
        method=method,
        dialect=dialect,
        headers=[Header(name=n, value=v) for n, v in headers],
        body=body,
        deadline_unix_ms=deadline_unix_ms,
        attempt=attempt,
    )


def header_pairs(headers: Iterable[Header]) -> list[tuple[str, bytes]]:
    return [(h.name, h.value) for h in headers]


def gateway_reply(
    message_id: str, http_status: int, detail: str, *, grpc_code: int | None = None
) -> Reply:
    """A reply produced by the gateway itself (a refusal or a failure of its own).

    Answer an exception with :func:`gateway.core.failures.reply_for_error`, which
    takes both codes from its kind; this builder is for callers that hold a status
    already (a transport's own refusal table). Without ``grpc_code``, it follows
    from ``http_status``.
    """
    if grpc_code is None:
        grpc_code = (
            fleet.UNAVAILABLE
            if http_status in _RETRYABLE_HTTP
            else fleet.grpc_code_for_http(http_status)
        )
    return Reply(
        message_id=message_id,
        origin=ORIGIN_GATEWAY,
        http_status=http_status,
        grpc_code=grpc_code,
        detail=detail,
    )


def upstream_reply(
    message_id: str,
    *,
    http_status: int,
    grpc_code: int,
    body: bytes = b"",
    detail: str = "",
    headers: Iterable[tuple[str, bytes]] = (),
) -> Reply:
    """A reply that carries the SuperLink's own answer, unchanged."""
    return Reply(
        message_id=message_id,
        origin=ORIGIN_UPSTREAM,
        http_status=http_status,
        grpc_code=grpc_code,
        detail=detail,
        headers=[Header(name=n, value=v) for n, v in headers],
        body=body,
    )
