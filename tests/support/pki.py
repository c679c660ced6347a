"""The certificates of a provisioned test federation (what the ``federation`` fixture gives)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.core.config import TLSConfig


@dataclass(frozen=True)
class FederationKits:
    """TLS material of a relay, its sites and an admin, plus a site of another CA."""

    relay: TLSConfig
    sites: dict[str, TLSConfig]
    admin: TLSConfig
    foreign_site: TLSConfig  # site-1's name, signed by another CA
