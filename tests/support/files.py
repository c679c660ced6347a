"""Files of a test's directories, compared by content."""

from __future__ import annotations

import hashlib
from pathlib import Path


def hashes(directory: Path) -> dict[str, str]:
    """Each file under ``directory`` (relative path) and its SHA-256: what changed, at a glance."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }
