"""Where the relay keeps each job's files, so every part of the job manager agrees."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SERVER_LOG = "server"
"""The log source of ``flwr run`` (the ServerApp's output)."""
SUPERLINK_LOG = "superlink"
"""The log source of the job's SuperLink."""


@dataclass(frozen=True)
class JobPaths:
    """The layout of the relay's workspace: one directory per job, logs by source."""

    workspace: Path

    def job_dir(self, job_id: str) -> Path:
        return self.workspace / "jobs" / job_id

    def log_path(self, job_id: str, source: str) -> Path:
        return self.job_dir(job_id) / "logs" / f"{source}.log"
