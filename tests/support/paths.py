"""Where the repository and its example jobs are, and the runs the end-to-end tests make."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "jobs" / "quickstart-numpy"
GATEWAY_TRANSPORTS = ["grpcs", "https", "tcps", "rediss"]
"""Every transport the end-to-end runs go through (each with a real Flower job)."""


def gateway_run(scheme: str) -> str:
    """Name of the flwr 1.42 run through the gateway over ``scheme`` in the ``runs`` fixture."""
    return "gateway-142" if scheme == "grpcs" else f"gateway-142-{scheme}"
