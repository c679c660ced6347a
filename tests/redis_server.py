"""Throw-away ``redis-server`` processes for tests, plain and TLS, on free ports.

Never the default port, never a system service: each server runs in its own
directory with persistence off and is stopped by its PID. Other test modules
reuse the fixtures by importing them::

    from .redis_server import redis_pki, redis_servers  # noqa: F401
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.config import TLSConfig
from gateway.identity import Role
from gateway.provisioning.certs import CertificateAuthority, write_participant

from .conftest import Federation

REDIS_SERVER = shutil.which("redis-server")


@dataclass
class RedisServer:
    """One running redis-server: its port, its process and whether it speaks TLS."""

    port: int
    process: subprocess.Popen[bytes]
    tls: bool
    log: Path

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


def start_redis(directory: Path, *, tls: TLSConfig | None = None) -> RedisServer:
    """Start redis-server on a free loopback port; with ``tls``, TLS only.

    ``tls`` is the server's certificate, key and the CA that signs clients'
    certificates (clients may present one; they need not).
    """
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    directory.mkdir(parents=True, exist_ok=True)
    for _ in range(3):  # another process may take the free port before redis does
        port = _free_port()
        log = directory / f"redis-{port}.log"
        args = [
            REDIS_SERVER,
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(directory),
            "--logfile", str(log),
        ]  # fmt: skip
        if tls is None:
            args += ["--port", str(port)]
        else:
            args += [
                "--port", "0",
                "--tls-port", str(port),
                "--tls-cert-file", str(tls.cert),
                "--tls-key-file", str(tls.key),
                "--tls-ca-cert-file", str(tls.ca_cert),
                "--tls-auth-clients", "optional",
            ]  # fmt: skip
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        server = RedisServer(port=port, process=process, tls=tls is not None, log=log)
        deadline = time.monotonic() + 10
        while process.poll() is None and time.monotonic() < deadline:
            if _listening(port):
                return server
            time.sleep(0.02)
        server.stop()
    log_text = log.read_text() if log.exists() else "(no log)"
    raise RuntimeError(f"redis-server did not start; its log:\n{log_text}")


@contextlib.contextmanager
def running_redis(directory: Path, *, tls: TLSConfig | None = None) -> Iterator[RedisServer]:
    server = start_redis(directory, tls=tls)
    try:
        yield server
    finally:
        server.stop()


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
