"""How each range of Flower releases is started: the differences, as data, in one table.

Flower moved its SuperLink's APIs from gRPC servers of their own to one HTTP port over
several releases, and renamed flags on the way (``docs/flower-releases.md`` has the
facts, read from each release's ``--help`` and a live run of each):

- ServerAppIo (the ServerApp's API): gRPC ``--serverappio-api-address`` up to 1.34, HTTP
  on ``--host/--port`` from 1.35 (the old flag is then refused);
- Control (what ``flwr`` talks to): gRPC ``--control-api-address`` up to 1.36, HTTP on
  ``--host/--port`` from 1.37;
- Fleet (what SuperNodes talk to): gRPC ``--fleet-api-address`` up to 1.39, HTTP on
  ``--host/--port`` from 1.40 (the gateway's two dialects);
- the SuperNode's own API: ``--clientappio-api-address`` up to 1.34, ``--port`` from 1.35;
- runtime dependency installation (``uv sync``): no flag up to 1.28, off by default in
  1.29-1.31, on by default from 1.32 (``--disable-runtime-dependency-installation``);
- ``flwr supernode register --name``: from 1.38;
- the SuperLink's state: 1.26-1.27 create it on the first API call without a lock, so
  two first calls at once (SuperExec's poll and a SuperNode's registration) both run the
  alembic migrations of a database file and collide; they run on Flower's in-memory
  state instead, which has no migrations. 1.28 creates it before serving, under a lock.

Adding a release is one entry in :data:`CHANGES` (and its run in the tests); everything
that starts or drives Flower asks :func:`traits_of`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

Version = tuple[int, int]
"""(major, minor)."""


@dataclass(frozen=True, kw_only=True)
class ReleaseTraits:
    """What the releases from ``first`` on (until the next row) need to be started."""

    first: Version
    serverappio_http: bool
    """ServerAppIo on ``--host/--port`` (else gRPC on ``--serverappio-api-address``)."""
    control_http: bool
    """Control on ``--host/--port`` (else gRPC on ``--control-api-address``)."""
    fleet_http: bool
    """Fleet over HTTP on ``--host/--port`` (else gRPC on ``--fleet-api-address``)."""
    supernode_port_flag: bool
    """The SuperNode's own API on ``--port`` (else ``--clientappio-api-address``)."""
    disable_dependency_install: bool
    """Runtime ``uv sync`` is on by default: pass ``--disable-runtime-dependency-installation``
    (before 1.32 it is off, or absent, and the flag is refused)."""
    register_takes_name: bool
    """``flwr supernode register`` accepts ``--name``."""
    in_memory_state: bool
    """The SuperLink keeps its state in memory (``--database :flwr-in-memory:``), not in
    a database file. In 1.26-1.27, ``LinkStateFactory.state()`` and
    ``ObjectStoreFactory.store()`` create the state on first use without a lock; on a file
    each creation runs the alembic migrations, so two first calls at once (SuperExec's
    ``ListAppsToLaunch`` poll and a SuperNode's ``RegisterNode``) fail ("table
    alembic_version already exists") or crash the SuperLink (a segfault in sqlite), in
    direct runs too. In memory there are no migrations: what is left unlocked is a few
    statements that build empty dicts. 1.28 creates the state under a lock, before its
    servers start."""

    @property
    def superlink_http_port(self) -> bool:
        """Whether the SuperLink opens ``--host/--port`` at all (only with one of its APIs
        there: 1.33-1.34 have the flags, but only with ``--enable-http-api``)."""
        return self.serverappio_http or self.control_http or self.fleet_http


OLDEST = ReleaseTraits(
    first=(1, 26),
    serverappio_http=False,
    control_http=False,
    fleet_http=False,
    supernode_port_flag=False,
    disable_dependency_install=False,
    register_takes_name=False,
    in_memory_state=True,
)
CHANGES: tuple[tuple[Version, dict[str, bool]], ...] = (
    ((1, 28), {"in_memory_state": False}),
    ((1, 32), {"disable_dependency_install": True}),
    ((1, 35), {"serverappio_http": True, "supernode_port_flag": True}),
    ((1, 37), {"control_http": True}),
    ((1, 38), {"register_takes_name": True}),
    ((1, 40), {"fleet_http": True}),
)
"""What each release changed, from :data:`OLDEST` on: a new release is one entry."""


def _rows() -> tuple[ReleaseTraits, ...]:
    rows = [OLDEST]
    for first, changed in CHANGES:
        rows.append(replace(rows[-1], first=first, **changed))
    return tuple(rows)


RELEASES = _rows()
"""One row per range of releases that are started alike, oldest first."""
NEWEST: Version = (1, 42)
"""The newest release measured (1.43 drops the gRPC Fleet API: a row of its own)."""


def supported_range() -> tuple[Version, Version]:
    return RELEASES[0].first, NEWEST


def traits_of(version: Version) -> ReleaseTraits | None:
    """The row that ``version`` falls in, or ``None`` outside the supported range."""
    if not RELEASES[0].first <= version <= NEWEST:
        return None
    return [row for row in RELEASES if row.first <= version][-1]
