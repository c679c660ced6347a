"""Find processes a test left behind (Linux /proc), ignoring zombies."""

from __future__ import annotations

import os
import time
from pathlib import Path


def _state(pid: str) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "X"
    return stat[stat.rindex(")") + 2]


def processes_touching(directory: Path) -> list[str]:
    """Live processes whose command line or working directory lies under ``directory``."""
    needle = str(directory.resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        if _state(entry.name) in ("Z", "X"):
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if needle in cmdline or cwd.startswith(needle):
            found.append(f"{entry.name}: {cmdline.strip()[:200]}")
    return found


def live_children() -> list[str]:
    """Live descendants of this test process."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] not in ("Z", "X"):
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, stack = [], [os.getpid()]
    while stack:
        for child in parents.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return [
        f"{pid}: {Path(f'/proc/{pid}/cmdline').read_bytes()[:200]!r}"
        for pid in found
        if Path(f"/proc/{pid}").exists()
    ]


def wait_until_gone(probe, timeout: float = 10.0) -> list[str]:  # type: ignore[no-untyped-def]
    """Poll ``probe()`` until it finds nothing or ``timeout`` passes; return the last find."""
    deadline = time.monotonic() + timeout
    found = probe()
    while found and time.monotonic() < deadline:
        time.sleep(0.2)
        found = probe()
    return found
