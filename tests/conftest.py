"""Shared fixtures: a throw-away CA and participants' certificates."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from gateway.control.jobs.spec import JobSpec
from gateway.core.config import TLSConfig
from gateway.core.identity import Role
from gateway.harness.local_run import RunOutcome, run_app
from gateway.provisioning.certs import CertificateAuthority, write_participant
from gateway.provisioning.kit import load_kit
from gateway.provisioning.project import Project
from gateway.provisioning.workspace import ProvisioningWorkspace

from .flower_envs import REPO, flwr139, flwr141
from .procs import live_children, wait_until_gone

QUICKSTART = REPO / "jobs" / "quickstart-numpy"
GATEWAY_TRANSPORTS = ["grpcs", "https", "tcps", "rediss"]
"""Every transport the end-to-end runs go through (each with a real Flower job)."""


def gateway_run(scheme: str) -> str:
    """Name of the flwr 1.41 run through the gateway over ``scheme`` in ``runs``."""
    return "gateway-141" if scheme == "grpcs" else f"gateway-141-{scheme}"


@dataclass(frozen=True)
class Federation:
    relay: TLSConfig
    sites: dict[str, TLSConfig]
    admin: TLSConfig
    foreign_site: TLSConfig  # site-1's name, signed by another CA


@pytest.fixture(scope="session")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    """Kits provisioned as `flgate provision` does, and a site of another CA."""
    root = tmp_path_factory.mktemp("pki")
    project = Project.parse(
        {
            "name": "test-project",
            "relay": {"hosts": ["localhost", "127.0.0.1"], "transports": {"grpcs": 8443}},
            "sites": ["site-1", "site-2", "site-3"],
            "admins": [{"name": "admin@example.org", "role": "project_admin"}],
        }
    )
    workspace, _ = ProvisioningWorkspace.create_or_open(root / "provisioning", project)
    workspace.provision(project)

    def tls(name: str) -> TLSConfig:
        return load_kit(workspace.kit(name)).tls

    relay = tls("relay")
    sites = {name: tls(name) for name in ("site-1", "site-2", "site-3")}
    admin = tls("admin@example.org")
    other = CertificateAuthority.create("other-project")
    foreign = write_participant(root / "foreign", other, "site-1", Role.SITE)
    # The foreign site trusts our relay's CA, so only the relay's check can refuse it.
    foreign = TLSConfig(ca_cert=relay.ca_cert, cert=foreign.cert, key=foreign.key)
    return Federation(relay=relay, sites=sites, admin=admin, foreign_site=foreign)


@pytest.fixture(autouse=True)
def no_process_left_behind() -> Iterator[None]:
    """After every test, no process the test started may still be running.

    Processes of longer-lived fixtures (a module's federation, including a relay
    or site a test restarts) are checked when their fixture ends instead.
    """
    before = set(live_children())
    yield
    left = wait_until_gone(
        lambda: [p for p in live_children() if p not in before and "gateway.cli" not in p]
    )
    assert not left, f"processes left running after the test: {left}"


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RunOutcome]:
    """Real Flower runs of the quickstart job, concurrently: flwr 1.41 direct (3 and 2
    rounds), flwr 1.41 through the gateway (HTTP dialect) and flwr 1.39 through the
    gateway (gRPC dialect, one ``--grpc-rere`` and one ``--grpc-adapter`` SuperNode)."""
    spec = JobSpec.load(QUICKSTART)
    legacy = flwr139()
    current = flwr141()
    root = tmp_path_factory.mktemp("e2e")

    plans: dict[str, dict[str, Any]] = {
        "direct-141": {"mode": "direct", "install": current},
        "direct-141-r2": {
            "mode": "direct",
            "install": current,
            "run_config": {"num-server-rounds": 2},
        },
        "gateway-139": {"mode": "gateway", "install": legacy, "grpc_modes": ["rere", "adapter"]},
    }
    for scheme in GATEWAY_TRANSPORTS:
        plans[gateway_run(scheme)] = {"mode": "gateway", "install": current, "transport": scheme}

    async def all_runs() -> list[RunOutcome]:
        return await asyncio.gather(
            *(run_app(spec, workdir=root / name, **plan) for name, plan in plans.items())
        )

    return dict(zip(plans, asyncio.run(all_runs()), strict=True))
