"""Redis fixtures for tests: a plain and a TLS redis-server, and a PKI for them.

The servers come from :mod:`gateway.harness.redis_server`; a test is skipped
when redis-server is not installed. Other test modules
reuse the fixtures by importing them::

    from .redis_server import redis_pki, redis_servers  # noqa: F401
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.core.config import TLSConfig
from gateway.core.identity import Role
from gateway.harness.redis_server import RedisServer
from gateway.harness.redis_server import running_redis as running_redis_server
from gateway.harness.redis_server import start_redis as start_redis_server
from gateway.provisioning.certs import CertificateAuthority, write_participant

from .conftest import Federation

REDIS_SERVER = shutil.which("redis-server")


def _require_redis() -> None:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")


def start_redis(directory: Path, *, tls: TLSConfig | None = None) -> RedisServer:
    _require_redis()
    return start_redis_server(directory, tls=tls)


@contextlib.contextmanager
def running_redis(directory: Path, *, tls: TLSConfig | None = None) -> Iterator[RedisServer]:
    _require_redis()
    with running_redis_server(directory, tls=tls) as server:
        yield server


@dataclass(frozen=True)
class RedisPKI:
    """A federation whose CA also signed the Redis server's certificate."""

    federation: Federation
    redis: TLSConfig  # CN "redis", for 127.0.0.1 and localhost
    ca: CertificateAuthority


@dataclass(frozen=True)
class RedisServers:
    plain: RedisServer
    tls: RedisServer


@pytest.fixture(scope="session")
def redis_pki(tmp_path_factory: pytest.TempPathFactory) -> RedisPKI:
    root = tmp_path_factory.mktemp("redis-pki")
    ca = CertificateAuthority.create("redis-test-project")
    relay = write_participant(root / "relay", ca, "relay", Role.RELAY)
    sites = {
        name: write_participant(root / name, ca, name, Role.SITE) for name in ("site-1", "site-2")
    }
    admin = write_participant(root / "admin", ca, "admin@example.org", Role.ADMIN)
    other = CertificateAuthority.create("other-project")
    foreign = write_participant(root / "foreign", other, "site-1", Role.SITE)
    foreign = TLSConfig(ca_cert=relay.ca_cert, cert=foreign.cert, key=foreign.key)
    redis = write_participant(
        root / "redis", ca, "redis", Role.RELAY, hosts=("127.0.0.1", "localhost")
    )
    federation = Federation(relay=relay, sites=sites, admin=admin, foreign_site=foreign)
    return RedisPKI(federation=federation, redis=redis, ca=ca)


@pytest.fixture(scope="session")
def redis_servers(
    tmp_path_factory: pytest.TempPathFactory, redis_pki: RedisPKI
) -> Iterator[RedisServers]:
    """A plain and a TLS redis-server for the whole session (tests flush them)."""
    root = tmp_path_factory.mktemp("redis")
    with (
        running_redis(root / "plain") as plain,
        running_redis(root / "tls", tls=redis_pki.redis) as tls,
    ):
        yield RedisServers(plain=plain, tls=tls)
