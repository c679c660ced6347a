"""Real redis-servers for tests, from :mod:`gateway.harness.redis_server`.

A test that needs one is skipped when redis-server is not installed. The session's plain and
TLS servers and their PKI are the ``redis_servers`` and ``redis_pki`` fixtures (``conftest.py``).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.core.config import TLSConfig
from gateway.harness.redis_server import RedisServer
from gateway.harness.redis_server import running_redis as running_redis_server
from gateway.harness.redis_server import start_redis as start_redis_server
from gateway.provisioning.certs import CertificateAuthority

from .pki import FederationKits

REDIS_SERVER = shutil.which("redis-server")


def require_redis() -> None:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")


def start_redis(directory: Path, *, tls: TLSConfig | None = None) -> RedisServer:
    require_redis()
    return start_redis_server(directory, tls=tls)


@contextlib.contextmanager
def running_redis(directory: Path, *, tls: TLSConfig | None = None) -> Iterator[RedisServer]:
    require_redis()
    with running_redis_server(directory, tls=tls) as server:
        yield server


@dataclass(frozen=True)
class RedisPKI:
    """A federation whose CA also signed the Redis server's certificate."""

    federation: FederationKits
    redis: TLSConfig  # CN "redis", for 127.0.0.1 and localhost
    ca: CertificateAuthority


@dataclass(frozen=True)
class RedisServers:
    plain: RedisServer
    tls: RedisServer
