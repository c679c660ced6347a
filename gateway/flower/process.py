"""A child process in its own process group, with its output in a log file.

Flower's programs start children of their own (``flwr-serverapp``,
``flwr-clientapp``), so stopping one means signalling its whole group: SIGTERM,
a grace period, then SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from ..core.exceptions import ProcessError


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


async def port_open(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=0.5)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    await writer.wait_closed()
    return True


class ManagedProcess:
    """One started program; ``stop()`` ends it and every child it started."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        log_path: Path,
        env: dict[str, str],
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._stopped = False
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("ab")
        try:
            self._popen = subprocess.Popen(
                argv,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as exc:
            self._log.close()
            raise ProcessError(f"cannot start {name} ({argv[0]}): {exc}") from exc

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    def alive(self) -> bool:
        return self._popen.poll() is None

    def _wait(self, timeout: float) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(timeout=timeout)

    @classmethod
    def adopt(cls, name: str, pid: int, *, log_path: Path, marker: str) -> ManagedProcess | None:
        """Take over a process that an earlier run of ours started (after a restart).

        ``marker`` (e.g. its job directory) must appear in its command line or be
        its working directory, so a recycled pid of an unrelated process is never
        adopted.
        """
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            return None
        ours = marker.encode() in cmdline or cwd.startswith(marker)
        if not ours or process_state(pid) in ("Z", "X"):
            return None
        return _AdoptedProcess(name, pid, cmdline.decode(errors="replace").split(), log_path)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        """Raise with the end of the log if the process has exited."""
        if not self.alive():
            raise ProcessError(
                f"{self.name} exited with code {self.returncode}; "
                f"last lines of {self.log_path}:\n{self.log_tail()}"
            )

    async def wait_for_port(self, address: str, timeout: float) -> None:
        """Wait until ``host:port`` accepts connections; fail if the process dies."""
        host, _, port = address.rpartition(":")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if await port_open(host, int(port)):
                return
            await asyncio.sleep(0.1)
        raise ProcessError(f"{self.name} did not open {address} within {timeout:.0f} s")

    def _process_groups(self) -> set[int]:
        """Process groups of this process and of every descendant it started.

        A SuperLink starts ``flower-superexec`` in a session of its own, so one
        group signal does not reach its ServerApp: every group is collected.
        """
        groups = {self.pid}
        for pid in descendants(self.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                groups.add(os.getpgid(pid))
        return groups

    @staticmethod
    def _signal_groups(groups: set[int], sig: signal.Signals) -> None:
        for group in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, sig)

    def stop(self, grace: float = 5.0) -> int | None:
        """End the process and everything it started; return its exit code (idempotent)."""
        if self._stopped:
            return self.returncode
        self._stopped = True
        groups = self._process_groups()
        if self.alive():
            self._signal_groups(groups, signal.SIGTERM)
            self._wait(grace)
        # Children may outlive a parent that exited on SIGTERM: always sweep.
        self._signal_groups(groups | self._process_groups(), signal.SIGKILL)
        self._wait(grace)
        self._log.close()
        return self.returncode


def descendants(root: int) -> list[int]:
    """PIDs of every descendant of ``root``, zombies included (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: parse after the last ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def process_state(pid: int) -> str:
    """The state letter of ``pid`` in /proc (``Z`` zombie; ``X`` when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "X"
    return stat[stat.rindex(")") + 2]


class _AdoptedProcess(ManagedProcess):
    """A process we did not start in this run: known by pid, not as our child."""

    def __init__(self, name: str, pid: int, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._stopped = False
        self._pid = pid
        self._log = log_path.open("ab")

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def returncode(self) -> int | None:
        return None  # not our child: its exit code is not ours to read

    def alive(self) -> bool:
        return process_state(self._pid) not in ("Z", "X")

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
