"""A real federation in processes: ``flgate relay start`` and ``flgate site start``.

The federation is provisioned like a real one (``flgate provision``'s code):
a kit per participant under ``root/provisioning/kits``, from a throw-away CA.
Processes start from their kits; by default the relay listens on a free port
(``--listen``) that sites are told with ``--relay``, and ``from_kit=True`` starts
them from the kits alone (the kit's addresses, pre-picked free ports). Every
process is stopped (with everything it started) by ``close()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from gateway.control.admin import AdminClient
from gateway.core.config import TLSConfig
from gateway.core.identity import AdminRole
from gateway.flower.process import free_port
from gateway.proto.control_pb2 import JobInfo
from gateway.provisioning.certs import CertificateAuthority
from gateway.provisioning.kit import load_kit
from gateway.provisioning.project import Project
from gateway.provisioning.workspace import ProvisioningWorkspace

from .procs import processes_touching, wait_until_gone

ENDED = ("finished", "failed", "aborted")


def run_flgate(
    *argv: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``flgate ARGV`` in a fresh process with ``env`` (default: this environment
    without any FLGATE_* setting)."""
    if env is None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLGATE_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def wait_online(admin: AdminClient, count: int, timeout: float = 60) -> None:
    """Until the relay that ``admin`` talks to counts ``count`` sites online."""
    for _ in range(int(timeout * 2)):
        if sum(s.online for s in await admin.list_sites()) >= count:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"{count} sites did not come online within {timeout:g} s")


async def until_state(
    admin: AdminClient, job_id: str, states: tuple[str, ...] = ENDED, timeout: float = 300
) -> JobInfo:
    """The job's summary once it is in one of ``states`` (or has ended)."""
    for _ in range(int(timeout * 2)):
        info = await admin.get(job_id)
        if info.state in states or info.state in ENDED:
            return info
        await asyncio.sleep(0.5)
    raise AssertionError(f"job {job_id} did not reach {states} within {timeout:g} s: {info}")


@dataclass(frozen=True)
class EdgeSpec:
    """An edge relay of a test federation: the sites behind it, the transport they dial
    it over, and the relay's transport it dials."""

    sites: tuple[str, ...]
    transport: str = "tcps"
    upstream: str = "grpcs"


@dataclass
class RunningFederation:
    root: Path
    ca: CertificateAuthority
    relay_tls: TLSConfig
    admin_tls: TLSConfig
    site_tls: dict[str, TLSConfig]
    workspace: ProvisioningWorkspace
    admin_name: str = "admin@test"
    relay_url: str = ""
    relay: subprocess.Popen[bytes] | None = None
    sites: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    edges: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    flower_bins: dict[str, list[Path]] = field(default_factory=dict)
    """Per process ("relay" or a site): its ``--flower-bin`` directories, the default first
    (none: the Flower beside this Python)."""

    @classmethod
    def create(
        cls,
        root: Path,
        sites: list[str],
        *,
        admins: dict[str, AdminRole] | None = None,
        transports: list[str] | None = None,
        site_transports: dict[str, str] | None = None,
        edges: dict[str, EdgeSpec] | None = None,
    ) -> RunningFederation:
        """Provision relay, ``sites`` and ``admins`` (default: one project admin).

        ``transports``: the relay's schemes (default grpcs), each on a free port;
        ``site_transports``: the scheme a site dials, if not the first; ``edges``: edge
        relays on loopback (each on a free port) and the sites behind them.
        """
        admins = admins or {"admin@test": AdminRole.PROJECT_ADMIN}
        chosen = site_transports or {}
        edges = edges or {}
        via = {site: edge for edge, spec in edges.items() for site in spec.sites}
        project = Project.parse(
            {
                "name": "test-federation",
                "relay": {
                    "hosts": ["localhost", "127.0.0.1"],
                    "listen_host": "127.0.0.1",
                    "transports": {s: free_port() for s in transports or ["grpcs"]},
                },
                "sites": [
                    {
                        "name": s,
                        **({"transport": chosen[s]} if s in chosen else {}),
                        **({"via": via[s]} if s in via else {}),
                    }
                    for s in sites
                ],
                "admins": [{"name": n, "role": r.value} for n, r in admins.items()],
                **(
                    {
                        "edges": [
                            {
                                "name": name,
                                "hosts": ["localhost", "127.0.0.1"],
                                "listen_host": "127.0.0.1",
                                "transports": {spec.transport: free_port()},
                                "upstream": spec.upstream,
                            }
                            for name, spec in edges.items()
                        ]
                    }
                    if edges
                    else {}
                ),
            }
        )
        workspace, _ = ProvisioningWorkspace.create_or_open(root / "provisioning", project)
        workspace.provision(project)

        def tls(name: str) -> TLSConfig:
            return load_kit(workspace.kit(name)).tls

        admin = next(iter(admins))
        return cls(
            root=root,
            ca=workspace.ca,
            relay_tls=tls("relay"),
            admin_tls=tls(admin),
            site_tls={s: tls(s) for s in sites},
            workspace=workspace,
            admin_name=admin,
        )

    def kit(self, name: str) -> Path:
        """The kit directory of participant ``name``."""
        return self.workspace.kit(name)

    def add_site(self, name: str, *, transport: str | None = None) -> Path:
        """``flgate provision add-site``: a new site's kit from the same CA."""
        self.workspace.add_site(name, transport=transport)
        self.site_tls[name] = load_kit(self.kit(name)).tls
        return self.kit(name)

    def flower_args(self, name: str) -> list[str]:
        """``--flower-bin DIR`` for each Flower installation of process ``name``."""
        return [arg for d in self.flower_bins.get(name, []) for arg in ("--flower-bin", str(d))]

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

    def start_relay(
        self, extra: list[str] | None = None, *, port: int = 0, from_kit: bool = False
    ) -> None:
        """Start the relay from its kit: on ``port`` (0: any free port) of loopback,
        or with ``from_kit`` where the kit says (its ports and its workspace)."""
        out = self.root / "relay.out"
        out.unlink(missing_ok=True)
        flower = self.flower_args("relay")
        where = (
            []
            if from_kit
            else [
                "--listen",
                f"grpcs://127.0.0.1:{port}",
                "--workspace",
                str(self.root / "relay"),
            ]
        )
        self.relay = self._spawn(
            "relay",
            [
                "-v",
                "relay",
                "start",
                "--kit",
                str(self.kit("relay")),
                *where,
                *flower,
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

    def start_site(
        self,
        name: str,
        *,
        from_kit: bool = False,
        relay_url: str | None = None,
        extra: list[str] | None = None,
    ) -> None:
        """Start site ``name`` from its kit, told the relay's address (``--relay``:
        ``relay_url``, else the relay's) unless ``from_kit``, when it dials the address
        in its kit; ``extra``: more options of ``flgate site start``."""
        flower = self.flower_args(name)
        where = (
            []
            if from_kit
            else ["--relay", relay_url or self.relay_url, "--workspace", str(self.root / name)]
        )
        self.sites[name] = self._spawn(
            name,
            ["-v", "site", "start", "--kit", str(self.kit(name)), *where, *flower, *(extra or [])],
        )

    def start_edge(self, name: str, *, timeout: float = 60.0) -> None:
        """Start edge relay ``name`` from its kit (its addresses, its relay's), and wait
        until it listens."""
        out = self.root / f"{name}.out"
        out.unlink(missing_ok=True)
        self.edges[name] = self._spawn(name, ["-v", "edge", "start", "--kit", str(self.kit(name))])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = out.read_text() if out.exists() else ""
            if "edge listening on" in text:
                return
            if self.edges[name].poll() is not None:
                raise RuntimeError(f"edge relay {name} exited: {text}")
            time.sleep(0.1)
        raise RuntimeError(f"edge relay {name} did not start")

    def run_cli(
        self, *argv: str, kit: str | None = None, from_kit: bool = False, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run ``flgate ARGV`` with the kit of ``kit`` (default: the admin's), told the
        relay's address (FLGATE_RELAY) unless ``from_kit``."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLGATE_")}
        env.update(FLGATE_KIT=str(self.kit(kit or self.admin_name)))
        if self.relay_url and not from_kit:
            env.update(FLGATE_RELAY=self.relay_url)
        return run_flgate(*argv, env=env, timeout=timeout)

    def cli(self, *argv: str) -> str:
        """Run ``flgate ARGV`` as the admin; return its output (it must exit 0)."""
        done = self.run_cli(*argv)
        assert done.returncode == 0, f"flgate {' '.join(argv)} failed: {done.stderr}"
        return done.stdout

    def metrics_address(self, name: str, timeout: float = 60.0) -> str:
        """``host:port`` of the metrics endpoint that process ``name`` ("relay" or a
        site) printed at its last start."""
        out = self.root / f"{name}.out"
        kind = "relay" if name == "relay" else "site"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = out.read_text() if out.exists() else ""
            found = re.findall(rf"{kind} metrics on http://([\d.]+:\d+)/metrics", text)
            if found:
                return str(found[-1])
            time.sleep(0.1)
        raise AssertionError(f"{name} printed no metrics address: {out.read_text()[-2000:]}")

    def metric(self, name: str, family: str) -> dict[tuple[str, ...], float]:
        """The samples of metric ``family`` that process ``name`` exports now, by
        their label values."""
        with urllib.request.urlopen(
            f"http://{self.metrics_address(name)}/metrics", timeout=5
        ) as answer:
            text = answer.read().decode()
        return {
            tuple(sample.labels.values()): sample.value
            for parsed in text_string_to_metric_families(text)
            if parsed.name == family
            for sample in parsed.samples
        }

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
        for process in self.edges.values():
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
def running_federation(
    root: Path, sites: list[str], *, flower_bins: dict[str, list[Path]] | None = None
) -> Iterator[RunningFederation]:
    """A relay and ``sites`` started as processes; everything stopped afterwards.
    ``flower_bins``: per process, its Flower installations (see ``RunningFederation``)."""
    fed = RunningFederation.create(root, sites)
    fed.flower_bins = flower_bins or {}
    try:
        fed.start_relay()
        for site in sites:
            fed.start_site(site)
        yield fed
    finally:
        fed.close()
