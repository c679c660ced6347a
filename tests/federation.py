"""A real federation in processes: ``flgate relay start`` and ``flgate site start``.

Certificates come from a throw-away CA; every process is started with its own
workspace and stopped (with everything it started) by ``close()``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gateway.admin import AdminClient
from gateway.config import TLSConfig
from gateway.identity import Role
from gateway.provisioning.certs import CertificateAuthority, write_participant

from .procs import processes_touching, wait_until_gone


@dataclass
class Federation:
    root: Path
    ca: CertificateAuthority
    relay_tls: TLSConfig
    admin_tls: TLSConfig
    site_tls: dict[str, TLSConfig]
    relay_url: str = ""
    relay: subprocess.Popen[bytes] | None = None
    sites: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    flower_bin: Path | None = None

    @classmethod
    def create(cls, root: Path, sites: list[str]) -> Federation:
        ca = CertificateAuthority.create("test-federation")
        pki = root / "pki"
        return cls(
            root=root,
            ca=ca,
            relay_tls=write_participant(
                pki / "relay", ca, "relay", Role.RELAY, hosts=("localhost", "127.0.0.1")
            ),
            admin_tls=write_participant(pki / "admin", ca, "admin@test", Role.ADMIN),
            site_tls={s: write_participant(pki / s, ca, s, Role.SITE) for s in sites},
        )

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", PYTHONUNBUFFERED="1")
        with (self.root / f"{name}.out").open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", *argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    @staticmethod
    def _tls_args(tls: TLSConfig) -> list[str]:
        return ["--ca", str(tls.ca_cert), "--cert", str(tls.cert), "--key", str(tls.key)]

    def start_relay(self, extra: list[str] | None = None, *, port: int = 0) -> None:
        out = self.root / "relay.out"
        out.unlink(missing_ok=True)
        flower = ["--flower-bin", str(self.flower_bin)] if self.flower_bin else []
        self.relay = self._spawn(
            "relay",
            [
                "-v",
                "relay",
                "start",
                "--listen",
                f"grpcs://127.0.0.1:{port}",
                "--workspace",
                str(self.root / "relay"),
                *flower,
                *self._tls_args(self.relay_tls),
                *(extra or []),
            ],
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = out.read_text() if out.exists() else ""
            match = re.search(r"relay listening on grpcs://[^:]+:(\d+)", text)
            if match:
                self.relay_url = f"grpcs://localhost:{match.group(1)}"
                return
            if self.relay.poll() is not None:
                raise RuntimeError(f"relay exited: {text}")
            time.sleep(0.1)
        raise RuntimeError("relay did not start")

    def start_site(self, name: str) -> None:
        flower = ["--flower-bin", str(self.flower_bin)] if self.flower_bin else []
        self.sites[name] = self._spawn(
            name,
            [
                "-v",
                "site",
                "start",
                "--relay",
                self.relay_url,
                "--workspace",
                str(self.root / name),
                *flower,
                *self._tls_args(self.site_tls[name]),
            ],
        )

    def cli(self, *argv: str) -> str:
        """Run ``flgate ARGV`` as the admin; return its output (it must exit 0)."""
        env = dict(
            os.environ,
            FLGATE_RELAY=self.relay_url,
            FLGATE_CA=str(self.admin_tls.ca_cert),
            FLGATE_CERT=str(self.admin_tls.cert),
            FLGATE_KEY=str(self.admin_tls.key),
        )
        done = subprocess.run(
            [sys.executable, "-m", "gateway.cli", *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"flgate {' '.join(argv)} failed: {done.stderr}"
        return done.stdout

    @property
    def relay_port(self) -> int:
        return int(self.relay_url.rpartition(":")[2])

    def admin(self) -> AdminClient:
        return AdminClient(relay_url=self.relay_url, tls=self.admin_tls)

    def stop(self, process: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, sig)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def close(self) -> None:
        for process in self.sites.values():
            self.stop(process)
        self.stop(self.relay)
        # Flower's helpers run in sessions of their own: sweep what touches our dirs.
        for line in processes_touching(self.root):
            pid = int(line.split(":")[0])
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        left = wait_until_gone(lambda: processes_touching(self.root))
        assert not left, f"the federation left processes running: {left}"


@contextlib.contextmanager
def running_federation(root: Path, sites: list[str]) -> Iterator[Federation]:
    """A relay and ``sites`` started as processes; everything stopped afterwards."""
    fed = Federation.create(root, sites)
    try:
        fed.start_relay()
        for site in sites:
            fed.start_site(site)
        yield fed
    finally:
        fed.close()
