"""The relay's durable job store: one SQLite file in the relay's workspace.

A job moves submitted -> dispatched -> running -> finished | failed | aborted,
and every ending has a reason. The store survives a relay restart, so the relay
finds its jobs again.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from ...core.exceptions import JobError, UnknownJobError
from ...proto.control_pb2 import JobInfo
from ...tracking.series import Point

SUBMITTED = "submitted"
DISPATCHED = "dispatched"
RUNNING = "running"
FINISHED = "finished"
FAILED = "failed"
ABORTED = "aborted"
ACTIVE_STATES = (SUBMITTED, DISPATCHED, RUNNING)
FINAL_STATES = (FINISHED, FAILED, ABORTED)

# Allowed transitions: anything else is a bug, not an operator error.
_NEXT = {
    SUBMITTED: {DISPATCHED, FAILED, ABORTED},
    DISPATCHED: {RUNNING, FAILED, ABORTED},
    RUNNING: {FINISHED, FAILED, ABORTED},
    FINISHED: set(),
    FAILED: set(),
    ABORTED: set(),
}


FLOWER_KEY = "flower"
"""The key of a job's Flower release ("x.y.z") in its ``runtime``, set when it is submitted."""


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    name: str
    state: str
    sites: tuple[str, ...]
    submitted_by: str
    run_config: str = ""
    time_limit: float = 900.0
    reason: str = ""
    run_id: str = ""
    round: int = 0
    rounds: int = 0
    result_json: str = ""
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    runtime: dict[str, str] = field(default_factory=dict)
    """The job's Flower release (:data:`FLOWER_KEY`) and where its SuperLink runs (pid,
    addresses), for a restarted relay."""

    @property
    def ended(self) -> bool:
        return self.state in FINAL_STATES


def job_info(record: JobRecord) -> JobInfo:
    """The record as the summary that the admin API and the other relays see."""
    return JobInfo(
        job_id=record.job_id,
        name=record.name,
        state=record.state,
        reason=record.reason,
        sites=list(record.sites),
        submitted_by=record.submitted_by,
        created=record.created,
        updated=record.updated,
        run_id=record.run_id,
        round=record.round,
        rounds=record.rounds,
        result_json=record.result_json,
        run_config=record.run_config,
        flower=record.runtime.get(FLOWER_KEY, ""),
    )


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    sites TEXT NOT NULL,
    submitted_by TEXT NOT NULL,
    run_config TEXT NOT NULL,
    time_limit REAL NOT NULL,
    reason TEXT NOT NULL,
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    rounds INTEGER NOT NULL,
    result_json TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    runtime TEXT NOT NULL
)
"""
_SERIES_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    job_id TEXT NOT NULL,
    tag TEXT NOT NULL,
    step INTEGER NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (job_id, tag, step)
) WITHOUT ROWID
"""
"""The jobs' metric series (:mod:`.series`): a point per tag and round, the last kept."""
_COLUMNS = [f.name for f in fields(JobRecord)]
MAX_POINTS_PER_JOB = 100_000
"""Series points kept per job: a round of Flower takes seconds, so this is thousands of
rounds of dozens of metrics; more is an app printing without end, and is dropped."""


class _ClosedDatabase:
    """What a closed :class:`JobStore` reads and writes through: it refuses every use
    with an error of ours that names the store, not sqlite's ``ProgrammingError``."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def execute(self, sql: str, parameters: object = (), /) -> sqlite3.Cursor:
        raise JobError(f"the job store {self._path} is closed: the relay is stopping")

    def executemany(self, sql: str, parameters: object, /) -> sqlite3.Cursor:
        return self.execute(sql)

    def close(self) -> None:
        pass


class JobStore:
    """Jobs in SQLite; every write is committed before the call returns."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._db: sqlite3.Connection | _ClosedDatabase = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        self._db.execute(_SERIES_SCHEMA)
        self._lock = threading.Lock()

    @property
    def closed(self) -> bool:
        return isinstance(self._db, _ClosedDatabase)

    def count_by_state(self) -> dict[str, int]:
        """How many jobs are in each state (states without a job are left out)."""
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {str(state): int(count) for state, count in rows}

    def close(self) -> None:
        """Close the file; every later use raises :class:`JobError`, a second close nothing."""
        with self._lock:
            db, self._db = self._db, _ClosedDatabase(self._path)
            db.close()

    def _row(self, record: JobRecord) -> tuple[object, ...]:
        values = dict(vars(record))
        values["sites"] = json.dumps(list(record.sites))
        values["runtime"] = json.dumps(record.runtime)
        return tuple(values[c] for c in _COLUMNS)

    @staticmethod
    def _record(row: tuple[object, ...]) -> JobRecord:
        values = dict(zip(_COLUMNS, row, strict=True))
        values["sites"] = tuple(json.loads(str(values["sites"])))
        values["runtime"] = json.loads(str(values["runtime"]))
        return JobRecord(**values)  # type: ignore[arg-type]

    def add(self, record: JobRecord) -> JobRecord:
        with self._lock:
            placeholders = ", ".join("?" * len(_COLUMNS))
            self._db.execute(
                f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({placeholders})",
                self._row(record),
            )
        return record

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE job_id = ?", (job_id,)
            ).fetchone()
        return None if row is None else self._record(row)

    def require(self, job_id: str) -> JobRecord:
        """The job's record; the error tells the operator how to find the right id."""
        record = self.get(job_id)
        if record is None:
            raise UnknownJobError(f"no job {job_id!r}; `flgate job list` shows the jobs")
        return record

    def list(self) -> list[JobRecord]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM jobs ORDER BY created"
            ).fetchall()
        return [self._record(r) for r in rows]

    def update(self, job_id: str, **changes: object) -> JobRecord:
        """Apply ``changes``; a state change must follow the allowed transitions."""
        current = self.get(job_id)
        if current is None:
            raise UnknownJobError(f"no job {job_id!r}")
        new_state = changes.get("state")
        if new_state not in (None, current.state) and new_state not in _NEXT[current.state]:
            raise JobError(f"job {job_id}: cannot go from {current.state} to {new_state}")
        updated = replace(current, updated=time.time(), **changes)  # type: ignore[arg-type]
        with self._lock:
            self._db.execute(
                f"UPDATE jobs SET {', '.join(f'{c} = ?' for c in _COLUMNS[1:])} WHERE job_id = ?",
                (*self._row(updated)[1:], job_id),
            )
        return updated

    # --- series ------------------------------------------------------------------

    def add_points(self, job_id: str, points: Sequence[Point]) -> int:
        """Keep ``points`` of the job's series (a point of a tag and round it has is
        replaced); return how many were dropped over :data:`MAX_POINTS_PER_JOB`."""
        if not points:
            return 0
        with self._lock:
            (count,) = self._db.execute(
                "SELECT COUNT(*) FROM series WHERE job_id = ?", (job_id,)
            ).fetchone()
            room = max(0, MAX_POINTS_PER_JOB - int(count))
            kept = points[:room] if len(points) > room else points
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT OR REPLACE INTO series (job_id, tag, step, value) VALUES (?, ?, ?, ?)",
                    [(job_id, p.tag, p.step, p.value) for p in kept],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return len(points) - len(kept)

    def points(self, job_id: str) -> tuple[Point, ...]:
        """The job's series, by tag, then round."""
        with self._lock:
            rows = self._db.execute(
                "SELECT tag, step, value FROM series WHERE job_id = ? ORDER BY tag, step",
                (job_id,),
            ).fetchall()
        return tuple(Point(str(tag), int(step), float(value)) for tag, step, value in rows)
