"""Flower installations for end-to-end tests.

flwr 1.42 (HTTP dialect) is the one installed with the package's dev extra;
flwr 1.39 (gRPC dialect) lives in its own virtual environment, created here on
first use (``.venv-flwr139`` in the repository, or ``$FLGATE_FLWR139_VENV``).
Any other release (the version matrix) gets a virtual environment of its own in a
cache outside the repository (:func:`flower_release_env`), created on first use too.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from gateway.flower.install import FlowerInstall

from .paths import REPO

FLWR_GRPC_VERSION = "1.39.0"
FLWR_GRPC_LOCK = REPO / "requirements" / "flwr139.txt"
"""Its dependencies, locked as for the dev extra (``scripts/refresh-locks`` refreshes both)."""


def flwr142() -> FlowerInstall:
    return FlowerInstall.find()


def flwr139() -> FlowerInstall:
    """The flwr 1.39 installation, created (once, under a lock) when missing."""
    venv = Path(os.environ.get("FLGATE_FLWR139_VENV", REPO / ".venv-flwr139"))
    return _venv_with_flwr(venv, FLWR_GRPC_VERSION, constraints=FLWR_GRPC_LOCK)


def flower_envs() -> Path:
    """The cache of one virtual environment per release: ``$FLGATE_FLOWER_ENVS``, else
    ``~/.cache/flgate/flower-envs`` (as ``scripts/flower-matrix`` and ``.ci/run`` use)."""
    configured = os.environ.get("FLGATE_FLOWER_ENVS")
    return Path(configured) if configured else Path.home() / ".cache" / "flgate" / "flower-envs"


def flower_release_env(release: str) -> FlowerInstall:
    """The installation of ``flwr==release`` (e.g. ``"1.30.0"``), created (once, under a
    lock) in :func:`flower_envs` when missing. 1.39.0 is :func:`flwr139`'s locked
    environment and the dev extra's release is :func:`flwr142`'s, not built twice."""
    if release == FLWR_GRPC_VERSION:
        return flwr139()
    if release == version("flwr"):
        return flwr142()
    return _venv_with_flwr(flower_envs() / release, release)


def _venv_with_flwr(venv: Path, release: str, *, constraints: Path | None = None) -> FlowerInstall:
    """A virtual environment at ``venv`` with ``flwr==release`` installed, created under a
    file lock (``<venv>.lock``) when missing, so that concurrent callers build it once."""
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{venv}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (venv / "bin" / "flower-superlink").exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            pinned = ["-c", str(constraints)] if constraints is not None else []
            subprocess.run(
                [str(venv / "bin" / "pip"), "install", "-q", *pinned, f"flwr=={release}"],
                check=True,
            )
    return FlowerInstall.find(venv / "bin")
