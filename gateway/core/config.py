"""Typed, keyword-only configuration shared by every component."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024


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


@dataclass(frozen=True)
class LoopbackTLS:
    """Certificate files of a server that Flower reaches over TLS on loopback."""

    ca_cert: Path
    cert: Path
    key: Path

    @classmethod
    def in_directory(cls, directory: Path) -> LoopbackTLS:
        return cls(
            ca_cert=directory / "ca.pem",
            cert=directory / "server.crt",
            key=directory / "server.key",
        )

    def exists(self) -> bool:
        return all(p.is_file() for p in (self.ca_cert, self.cert, self.key))
