"""Flower node authentication for a relay job: admit exactly the job's sites' node keys."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path

from ...core.exceptions import ConfigError, JobError
from ...flower.flwr_cli import register_supernode
from ...flower.install import FlowerInstall
from ...flower.node_auth import fingerprint, load_public_key, openssh_public_key


async def register_node_keys(
    install: FlowerInstall,
    flwr_home: Path,
    *,
    sites: Sequence[str],
    key_of: Callable[[str], str],
    key_dir: Path,
    on_event: Callable[[str], None],
) -> None:
    """Register each site's Flower node key with the job's SuperLink before any
    SuperNode starts (Flower refuses self-registration when node auth is on).

    ``key_of(site)`` is the key line the site reported in its polls ('' if none),
    which the relay authenticated by the site's certificate, so a site can only bring
    its own key; a key that two sites report is refused rather than registered for
    whichever came first. ``key_dir`` receives the keys as OpenSSH files.
    """
    key_dir.mkdir(parents=True, exist_ok=True)
    owners: dict[str, str] = {}
    files: dict[str, Path] = {}
    for index, site in enumerate(sites):
        line = key_of(site)
        if not line:
            raise JobError(
                f"the job uses Flower's node authentication but site {site} reported no "
                "node key; start the site with --flower-node-key PATH"
            )
        try:
            key = load_public_key(line)
        except ConfigError as exc:
            raise JobError(f"site {site} reported an unusable Flower node key: {exc}") from exc
        key_id = fingerprint(key)
        if key_id in owners:
            raise JobError(
                f"sites {owners[key_id]} and {site} reported the same Flower node key "
                f"({key_id}); every site needs a key of its own"
            )
        owners[key_id] = site
        files[site] = key_dir / f"{index}.pub"
        files[site].write_text(openssh_public_key(key) + "\n")
    # One `flwr` process per key, at once: each spends seconds importing Flower.
    results = await asyncio.gather(
        *(register_supernode(install, flwr_home, f, name=s) for s, f in files.items()),
        return_exceptions=True,
    )
    for (key_id, site), result in zip(owners.items(), results, strict=True):
        if isinstance(result, BaseException):
            raise result
        on_event(f"{site}: node key {key_id} registered as node {result}")
