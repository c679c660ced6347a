"""Flower installations for end-to-end tests.

flwr 1.42 (HTTP dialect) is the one installed with the package's dev extra;
flwr 1.39 (gRPC dialect) lives in its own virtual environment, created here on
first use (``.venv-flwr139`` in the repository, or ``$FLGATE_FLWR139_VENV``).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
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
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{venv}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (venv / "bin" / "flower-superlink").exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run(
                [
                    str(venv / "bin" / "pip"),
                    "install",
                    "-q",
                    "-c",
                    str(FLWR_GRPC_LOCK),
                    f"flwr=={FLWR_GRPC_VERSION}",
                ],
                check=True,
            )
    return FlowerInstall.find(venv / "bin")
