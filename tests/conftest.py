"""Shared fixtures: a throw-away CA and participants' certificates."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from gateway.config import TLSConfig
from gateway.identity import Role
from gateway.provisioning.certs import CertificateAuthority, write_participant

from .procs import live_children, wait_until_gone


@dataclass(frozen=True)
class Federation:
    relay: TLSConfig
    sites: dict[str, TLSConfig]
    admin: TLSConfig
    foreign_site: TLSConfig  # site-1's name, signed by another CA


@pytest.fixture(scope="session")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    root = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.create("test-project")
    relay = write_participant(
        root / "relay", ca, "relay", Role.RELAY, hosts=("localhost", "127.0.0.1")
    )
    sites = {
        name: write_participant(root / name, ca, name, Role.SITE)
        for name in ("site-1", "site-2", "site-3")
    }
    admin = write_participant(root / "admin", ca, "admin@example.org", Role.ADMIN)
    other = CertificateAuthority.create("other-project")
    foreign = write_participant(root / "foreign", other, "site-1", Role.SITE)
    # The foreign site trusts our relay's CA, so only the relay's check can refuse it.
    foreign = TLSConfig(ca_cert=relay.ca_cert, cert=foreign.cert, key=foreign.key)
    return Federation(relay=relay, sites=sites, admin=admin, foreign_site=foreign)


@pytest.fixture(autouse=True)
def no_process_left_behind() -> Iterator[None]:
    """After every test, no process the test started may still be running."""
    yield
    left = wait_until_gone(live_children)
    assert not left, f"processes left running after the test: {left}"
