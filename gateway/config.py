"""Typed, keyword-only configuration shared by every component."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class Timeouts:
    """Time budgets in seconds.

    Flower's SuperNode gives up on a Fleet call after 30 s (5 s for heartbeats),
    so the gateway must answer well inside that: ``call`` is the whole budget of
    one forwarded call, from the LGS to the SuperLink and back.
    """

    call: float = 25.0
    """Deadline of one Fleet call through the gateway; the LGS answers 504 after it."""
    connect: float = 10.0
    """Time to establish a transport connection."""
    process_start: float = 60.0
    """Time a Flower process (SuperLink, SuperNode) gets to become ready."""


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Size limits; ``None`` turns a limit off."""

    max_frame_bytes: int | None = 64 * MiB
    """Largest envelope a transport accepts. Flower >= 1.20 chunks models into
    5 MiB objects; older Flower sends whole models, so raise this for them."""


@dataclass(frozen=True, kw_only=True)
class TLSConfig:
    """PEM files of one participant: the federation's root CA, its cert and key."""

    ca_cert: Path
    cert: Path
    key: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        """Return (ca, cert, key) bytes."""
        return self.ca_cert.read_bytes(), self.cert.read_bytes(), self.key.read_bytes()
