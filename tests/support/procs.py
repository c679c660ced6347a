"""Find processes a test left behind (Linux /proc), ignoring zombies."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from gateway.flower.process import descendants, process_state

_GONE = ("Z", "X")


def processes_touching(directory: Path) -> list[str]:
    """Live processes whose command line or working directory lies under ``directory``."""
    needle = str(directory.resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        if process_state(int(entry.name)) in _GONE:
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
    found = []
    for pid in descendants(os.getpid()):
        if process_state(pid) in _GONE:
            continue
        try:
            found.append(f"{pid}: {Path(f'/proc/{pid}/cmdline').read_bytes()[:200]!r}")
        except OSError:
            continue
    return found


def wait_until_gone(probe: Callable[[], list[str]], timeout: float = 10.0) -> list[str]:
    """Poll ``probe()`` until it finds nothing or ``timeout`` passes; return the last find."""
    deadline = time.monotonic() + timeout
    found = probe()
    while found and time.monotonic() < deadline:
        time.sleep(0.2)
        found = probe()
    return found
