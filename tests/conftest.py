"""Fixtures for every layer: a provisioned federation's certificates, real redis-servers,
and the check that no test leaves a process running."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from types import FrameType

import pytest

from gateway.core.config import TLSConfig
from gateway.core.identity import Role
from gateway.flower.process import descendants
from gateway.provisioning.certs import CertificateAuthority, write_participant
from gateway.provisioning.kit import load_kit
from gateway.provisioning.project import Project
from gateway.provisioning.workspace import ProvisioningWorkspace
from tests.support.pki import FederationKits
from tests.support.procs import live_children, wait_until_gone
from tests.support.redis import RedisPKI, RedisServers, running_redis


def _stop_everything_and_exit(signum: int, frame: FrameType | None) -> None:
    # Raising here instead (as Ctrl-C does) can crash grpc's event loop mid-teardown (seen: a
    # segfault while asyncio cancelled the runs), so kill the whole tree at once and exit.
    for pid in descendants(os.getpid()):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    os._exit(128 + signum)


def pytest_configure(config: pytest.Config) -> None:
    """A SIGTERM (`timeout`, a CI limit) takes every process the run started with it: the
    Flower processes run in sessions of their own, so they would otherwise stay, orphaned,
    and compete with the next run for the machine."""
    signal.signal(signal.SIGTERM, _stop_everything_and_exit)


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, with its handlers and level put back afterwards: code under test
    that configures logging (``logs.configure``, ``main``) replaces them, pytest's own
    capture handlers among them."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    added = [h for h in root.handlers if h not in handlers]
    root.handlers[:] = handlers
    root.setLevel(level)
    for handler in added:
        handler.close()


@pytest.fixture(scope="session")
def federation(tmp_path_factory: pytest.TempPathFactory) -> FederationKits:
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
    return FederationKits(relay=relay, sites=sites, admin=admin, foreign_site=foreign)


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
    federation = FederationKits(relay=relay, sites=sites, admin=admin, foreign_site=foreign)
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
