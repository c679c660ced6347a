"""A throw-away ``redis-server`` on a free loopback port, plain or TLS only.

For the demo, ``flgate compare`` and the tests over ``redis(s)://``: never the
default port, never a system service; the server runs in its own directory
with persistence off and is stopped by its PID.
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

from ..core.config import TLSConfig
from ..core.exceptions import ConfigError
from ..flower.process import free_port


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


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


def redis_server_binary() -> str:
    """The ``redis-server`` on PATH, or a ConfigError that says how to get one."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ConfigError(
            "the redis transport needs a redis-server on PATH for a local run; "
            "install it (Debian/Ubuntu: apt-get install redis-server) or pick another transport"
        )
    return binary


def start_redis(directory: Path, *, tls: TLSConfig | None = None) -> RedisServer:
    """Start redis-server on a free loopback port; with ``tls``, TLS only.

    ``tls`` is the server's certificate, key and the CA that signs clients'
    certificates (clients may present one; they need not: our envelopes are
    signed, which is what proves a sender on Redis).
    """
    binary = redis_server_binary()
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "redis.log"
    for _ in range(3):  # another process may take the free port before redis does
        port = free_port()
        log = directory / f"redis-{port}.log"
        args = [
            binary,
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
    raise ConfigError(f"redis-server did not start; its log:\n{log_text}")


@contextlib.contextmanager
def running_redis(directory: Path, *, tls: TLSConfig | None = None) -> Iterator[RedisServer]:
    server = start_redis(directory, tls=tls)
    try:
        yield server
    finally:
        server.stop()
