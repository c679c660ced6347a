"""What a process used, from Linux's /proc: peak memory (with a reset) and CPU time.

``VmHWM`` is the peak RSS since the process started, or since the last write
of ``5`` to ``/proc/PID/clear_refs``: resetting it just before a transfer makes
the reading the peak *during* that transfer, not during start-up.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ..core.exceptions import GatewayError


def _status_kib(pid: int, field: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError as exc:
        raise GatewayError(f"cannot read the memory of process {pid}: {exc}") from exc
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise GatewayError(f"/proc/{pid}/status has no {field}")


def peak_rss(pid: int) -> int:
    """Peak resident set size in bytes (VmHWM)."""
    return _status_kib(pid, "VmHWM") * 1024


def current_rss(pid: int) -> int:
    """Resident set size in bytes now (VmRSS)."""
    return _status_kib(pid, "VmRSS") * 1024


def reset_peak(pid: int) -> bool:
    """Restart VmHWM from the current RSS; False where the kernel does not allow it."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    return False


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError as exc:
        raise GatewayError(f"cannot read the CPU time of process {pid}: {exc}") from exc
    # The command name may contain spaces and parentheses: fields start after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
