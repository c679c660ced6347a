"""A throw-away MLflow tracking server: ``mlflow server`` on a free loopback port, with a
SQLite store and artifacts under a directory of the test's, stopped with everything
it started (its process group)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gateway.flower.process import free_port

from .procs import processes_touching, wait_until_gone

START_TIMEOUT = 180.0
"""MLflow's server imports for tens of seconds on a busy machine of 2 cores."""


def mlflow_missing() -> str | None:
    """Why the MLflow tests cannot run here, or ``None``."""
    if importlib.util.find_spec("mlflow") is None:
        return "mlflow is not installed (pip install -c requirements/dev.txt -e '.[dev]')"
    return None


@dataclass
class MlflowServer:
    root: Path
    port: int
    process: subprocess.Popen[bytes]

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        path = self.root / "mlflow-server.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until the server answers ``/health`` (it fails the test if it exits first)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"mlflow server exited: {self.log[-3000:]}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer,
            ):
                if answer.status == 200:
                    return
            time.sleep(0.5)
        raise AssertionError(
            f"mlflow server did not serve within {timeout:g} s: {self.log[-3000:]}"
        )

    def stop(self) -> None:
        """Stop the server and every process it started."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # what the server left in its group
        if self.process.poll() is None:
            self.process.wait(timeout=10)
        left = wait_until_gone(lambda: processes_touching(self.root))
        assert not left, f"the mlflow server left processes running: {left}"


@contextlib.contextmanager
def running_mlflow_server(root: Path) -> Iterator[MlflowServer]:
    """``mlflow server`` started (not yet ready: see :meth:`MlflowServer.wait_ready`),
    stopped by its process group afterwards."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = dict(
        os.environ,
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",  # no job runner and its consumers
        PYTHONUNBUFFERED="1",
    )
    with (root / "mlflow-server.out").open("ab") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                f"sqlite:///{root / 'mlflow.db'}",
                "--default-artifact-root",
                str(root / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            cwd=root,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    server = MlflowServer(root=root, port=port, process=process)
    try:
        yield server
    finally:
        server.stop()
