"""Connections to Redis for the Redis transport and its neighbours, and their errors.

:func:`redis_connection` is the one way into Redis: a pool that retries
nothing (resending is the reliable layer's job), speaks RESP2 (the reply shapes
:func:`stream_entries` reads) and, for ``rediss://``, trusts the federation's
root CA only. The pool is bounded (:data:`DEFAULT_MAX_CONNECTIONS`): a command
that finds every connection busy waits for one instead of opening another, so a
flood of calls costs Redis a fixed number of connections per participant, not
one per concurrent call (a relay held 51 after a flood before).
:func:`translate` turns redis-py's errors into the gateway's, so none leaks
through the transport's API. The scale-out board (:mod:`gateway.control.board`)
uses the same connections.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ...core.config import TLSConfig
from ...core.exceptions import AuthError, ConfigError, ConnectError, GatewayError, TransportError
from ..common import certificate_refused, client_ssl_context
from ..interface import TransportURL

log = logging.getLogger(__name__)

_SOCKET_TIMEOUT = 30.0
"""Longest wait for any one Redis command; blocking reads block for less."""
_MAX_BACKOFF = 2.0
DEFAULT_MAX_CONNECTIONS = 16
"""Connections one pool may hold. Commands are short, so a few connections carry
hundreds of calls in flight; one of them may be held by a blocking read."""
_MIN_CONNECTIONS = 2
"""A read loop blocks one connection for seconds: the others must still send."""

Fields = dict[bytes, bytes]
"""A stream entry's fields as Redis returns them."""


def translate(exc: redis_errors.RedisError, where: str) -> GatewayError:
    """The gateway's error for a redis-py error talking to Redis at ``where``."""
    if certificate_refused(exc):
        return AuthError(f"TLS with Redis at {where} failed on a certificate: {exc}")
    if isinstance(exc, redis_errors.AuthenticationError | redis_errors.NoPermissionError):
        return AuthError(f"Redis at {where} refused this participant: {exc}")
    if isinstance(exc, redis_errors.ConnectionError | redis_errors.TimeoutError):
        return ConnectError(f"cannot reach Redis at {where}: {exc}")
    return TransportError(f"Redis at {where} failed a command: {exc}")


def retry_delay(failures: int) -> float:
    """Seconds a read loop waits after ``failures`` failed reads in a row."""
    return min(_MAX_BACKOFF, 0.05 * 2.0**failures)


def require_tls(tls: TLSConfig | None, url: TransportURL) -> TLSConfig:
    """The participant's certificate and key, which sign every entry; ``ConfigError`` if none."""
    if tls is None:
        raise ConfigError(
            f"{url.scheme}:// needs the participant's certificate and key: every entry is signed"
        )
    return tls


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
    url: TransportURL,
    tls: TLSConfig,
    *,
    db: int = 0,
    username: str | None = None,
    password: str | None = None,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> aioredis.Redis:
    """A pool of at most ``max_connections``; redis-py retries nothing (resending is
    the reliable layer's job). A command waits up to the socket timeout for a free
    connection, then fails as a :class:`ConnectError`."""
    if max_connections < _MIN_CONNECTIONS:
        raise ConfigError(
            f"a Redis pool needs at least {_MIN_CONNECTIONS} connections (one may block in "
            f"a read), not {max_connections}"
        )
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
    if url.scheme == "rediss":
        options["connection_class"] = _FederationSSLConnection
        options["federation_context"] = client_ssl_context(tls)
    pool = aioredis.BlockingConnectionPool(
        max_connections=max_connections, timeout=_SOCKET_TIMEOUT, **options
    )
    return aioredis.Redis.from_pool(pool)


def text(value: bytes | str) -> str:
    """A key, stream or entry id as redis-py returns it (bytes), as text."""
    return value.decode() if isinstance(value, bytes) else value


def stream_entries(response: Any) -> list[tuple[str, list[tuple[str, Fields]]]]:
    """An ``XREAD``/``XREADGROUP`` reply (RESP2: ``[[stream, [(id, fields)...]]...]``)."""
    return [
        (text(stream), [(text(entry_id), dict(fields or {})) for entry_id, fields in entries])
        for stream, entries in response or []
    ]


async def halt(tasks: list[asyncio.Task[None]], client: aioredis.Redis) -> None:
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
