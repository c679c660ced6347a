"""Where the relay remembers message ids: pending while executing, then the reply.

The receiver's dedup records must outlive the relay process, or a restart
would forget which requests already reached a SuperLink and a retry would run
them a second time. :class:`SqliteDedupStore` keeps them in one SQLite file;
:class:`MemoryDedupStore` is for tests and for relays that accept that risk.

Stores are synchronous on purpose: the relay calls them from its event loop,
one small indexed read or write per call, which SQLite in WAL mode answers in
microseconds. Stores hold no logic: what a record *means* (refuse, replay,
execute) is decided by :class:`~gateway.reliable.protocol.ReceiverProtocol`.

Group commit: between :meth:`DedupStore.hold` and :meth:`DedupStore.commit` the
writes of many calls go into one transaction (the receiver holds for one turn of
its event loop, and executes a call only once the batch with its pending record
is committed). Each transaction costs SQLite a WAL append and a commit record:
one per batch instead of two per call.
"""

from __future__ import annotations

import abc
import enum
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, TypeVar

from ..core.exceptions import ConfigError, GatewayError

_S = TypeVar("_S", bound="DedupStore")


class DedupStoreError(GatewayError):
    """The dedup store could not read or write a record (disk full, file gone...).

    Not part of ``gateway.core.exceptions`` yet; it belongs under ``GatewayError``
    beside ``TransportError`` in that tree.
    """


class State(enum.Enum):
    """The two states of a message id the store knows."""

    PENDING = "pending"
    """Execution started; the request may have reached the SuperLink."""
    COMPLETED = "completed"
    """Execution finished; ``reply`` holds the answer to replay."""


@dataclass(frozen=True)
class Record:
    """What the store knows about one message id."""

    message_id: str
    state: State
    at: float
    """When the record entered its state (seconds on the receiver's clock)."""
    reply: bytes | None = None
    """The serialized reply of a completed id; ``None`` while pending, or when
    the reply was too large to keep (the receiver then refuses duplicates)."""
    note: str = ""
    """What the caller said of a pending id (e.g. which call it is), so that an
    outcome lost in a crash can be reported after the restart."""


class DedupStore(abc.ABC):
    """Records of message ids, keyed by id. Every method is one quick operation."""

    @abc.abstractmethod
    def get(self, message_id: str) -> Record | None:
        """The record of ``message_id``, or ``None`` when the id is unknown."""

    @abc.abstractmethod
    def mark_pending(self, message_id: str, now: float, note: str = "") -> None:
        """Record that ``message_id`` started executing (replaces any record)."""

    def claim(self, message_id: str, now: float, note: str = "") -> Record | None:
        """Mark ``message_id`` pending if it is unknown (and return ``None``); else its
        record, unchanged. One statement where the store has one (most ids are new)."""
        record = self.get(message_id)
        if record is None:
            self.mark_pending(message_id, now, note)
        return record

    @abc.abstractmethod
    def pending(self) -> list[Record]:
        """Every pending record, oldest first (read once, at a restart)."""

    @abc.abstractmethod
    def mark_completed(self, message_id: str, reply: bytes | None, now: float) -> None:
        """Record the reply of ``message_id`` (replaces any record)."""

    @abc.abstractmethod
    def delete(self, message_id: str) -> None:
        """Forget ``message_id``; unknown ids are ignored."""

    @abc.abstractmethod
    def expire(self, older_than: float) -> int:
        """Forget every record whose ``at`` is before ``older_than``; return how many."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of records (for metrics and tests)."""

    def hold(self) -> None:  # noqa: B027  (optional hook: a store without transactions)
        """Keep the following writes in one transaction until :meth:`commit`
        (reads see them meanwhile). Holding again before the commit does nothing."""

    def commit(self) -> None:  # noqa: B027  (optional hook: a store without transactions)
        """Make the writes since :meth:`hold` durable at once, or none of them
        (raises :class:`DedupStoreError`). Without a hold, nothing to do."""

    def close(self) -> None:  # noqa: B027  (optional hook, nothing to release by default)
        """Release resources; the store is unusable afterwards."""

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class MemoryDedupStore(DedupStore):
    """Records in a dict: fast, and gone when the process exits.

    After a relay restart every id is unknown again, so a retry of a request
    that was executing at the crash runs a second time. Use
    :class:`SqliteDedupStore` where that matters. Completed replies stay in
    memory for the receiver's ``result_ttl``; bound them with the receiver's
    ``max_reply_bytes`` when replies are large.
    """

    def __init__(self) -> None:
        self._records: dict[str, Record] = {}

    def get(self, message_id: str) -> Record | None:
        return self._records.get(message_id)

    def mark_pending(self, message_id: str, now: float, note: str = "") -> None:
        self._records[message_id] = Record(message_id, State.PENDING, now, note=note)

    def pending(self) -> list[Record]:
        found = [r for r in self._records.values() if r.state is State.PENDING]
        return sorted(found, key=lambda r: r.at)

    def mark_completed(self, message_id: str, reply: bytes | None, now: float) -> None:
        self._records[message_id] = Record(message_id, State.COMPLETED, now, reply)

    def delete(self, message_id: str) -> None:
        self._records.pop(message_id, None)

    def expire(self, older_than: float) -> int:
        # A full scan: the records of a few result_ttl's worth of calls, cheap
        # enough at the receiver's expiry interval.
        old = [k for k, r in self._records.items() if r.at < older_than]
        for key in old:
            del self._records[key]
        return len(old)

    def __len__(self) -> int:
        return len(self._records)


_SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS dedup (
    message_id TEXT PRIMARY KEY,
    state      TEXT NOT NULL CHECK (state IN ('pending', 'completed')),
    at         REAL NOT NULL,
    reply      BLOB,
    note       TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedup_at ON dedup (at);
"""
_MIGRATIONS = {1: "ALTER TABLE dedup ADD COLUMN note TEXT NOT NULL DEFAULT ''"}
"""The statement that takes a store from version N to N + 1."""


class SqliteDedupStore(DedupStore):
    """Records in one SQLite table, so that they survive a relay restart.

    Opening an existing file keeps every record as it was. In particular, ids
    left *pending* by a process that crashed stay pending: nobody knows whether
    their request reached the SuperLink, so the receiver refuses them rather
    than run them again.

    Durability: WAL journal with ``synchronous=NORMAL`` makes each write one
    append to the WAL without an fsync. A crash of the relay *process* loses
    nothing; a power loss or kernel crash may lose the last writes, which then
    look like unknown ids. Pass ``synchronous="FULL"`` to fsync every write
    when that risk is not acceptable (at roughly a disk flush per call).

    The connection belongs to the thread that opened it (the relay's event
    loop); one relay process per file, because the set of ids executing right
    now lives in that process's memory. Once closed, every use raises a
    :class:`DedupStoreError` that says so (not sqlite's ``ProgrammingError``).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
    ) -> None:
        self.path = Path(path)
        self._closed = False
        try:
            # Autocommit: every statement is its own transaction (a crash never
            # leaves a half-written record), unless the receiver holds a batch.
            self._db = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the dedup store {self.path}: {exc}") from exc
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, *_MIGRATIONS, _SCHEMA_VERSION):
                raise ConfigError(
                    f"the dedup store {self.path} has schema version {version}; this "
                    f"relay understands versions 1 to {_SCHEMA_VERSION}. Move the file "
                    "away (ids in it are then forgotten) or run a matching relay."
                )
            while version in _MIGRATIONS:  # records are kept: pending ids stay pending
                self._db.execute(_MIGRATIONS[version])
                version += 1
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            self._db.close()
            raise ConfigError(f"{self.path} is not a usable dedup store: {exc}") from exc
        except ConfigError:
            self._db.close()
            raise

    def _run(self, sql: str, params: tuple[object, ...]) -> sqlite3.Cursor:
        if self._closed:
            raise DedupStoreError(f"dedup store {self.path} is closed: the relay is stopping")
        try:
            return self._db.execute(sql, params)
        except sqlite3.Error as exc:
            raise DedupStoreError(f"dedup store {self.path}: {exc}") from exc

    def get(self, message_id: str) -> Record | None:
        row = self._run(
            "SELECT state, at, reply, note FROM dedup WHERE message_id = ?", (message_id,)
        ).fetchone()
        if row is None:
            return None
        state, at, reply, note = row
        return Record(
            message_id, State(state), float(at), None if reply is None else bytes(reply), note
        )

    def mark_pending(self, message_id: str, now: float, note: str = "") -> None:
        self._run(
            "INSERT OR REPLACE INTO dedup (message_id, state, at, reply, note) "
            "VALUES (?, 'pending', ?, NULL, ?)",
            (message_id, now, note),
        )

    def claim(self, message_id: str, now: float, note: str = "") -> Record | None:
        inserted = self._run(
            "INSERT OR IGNORE INTO dedup (message_id, state, at, reply, note) "
            "VALUES (?, 'pending', ?, NULL, ?)",
            (message_id, now, note),
        ).rowcount
        return None if inserted else self.get(message_id)

    def pending(self) -> list[Record]:
        rows = self._run(
            "SELECT message_id, at, note FROM dedup WHERE state = 'pending' ORDER BY at", ()
        ).fetchall()
        return [Record(key, State.PENDING, float(at), note=note) for key, at, note in rows]

    def mark_completed(self, message_id: str, reply: bytes | None, now: float) -> None:
        self._run(
            "INSERT OR REPLACE INTO dedup (message_id, state, at, reply, note) "
            "VALUES (?, 'completed', ?, ?, '')",
            (message_id, now, reply),
        )

    def delete(self, message_id: str) -> None:
        self._run("DELETE FROM dedup WHERE message_id = ?", (message_id,))

    def expire(self, older_than: float) -> int:
        return self._run("DELETE FROM dedup WHERE at < ?", (older_than,)).rowcount

    def __len__(self) -> int:
        count: int = self._run("SELECT COUNT(*) FROM dedup", ()).fetchone()[0]
        return count

    def hold(self) -> None:
        if not self._db.in_transaction:
            self._run("BEGIN", ())

    def commit(self) -> None:
        if self._closed or not self._db.in_transaction:
            return  # closing committed what was held
        try:
            self._run("COMMIT", ())
        except DedupStoreError:
            if self._db.in_transaction:  # SQLite may keep it open after a failed COMMIT
                self._db.rollback()
            raise

    def close(self) -> None:
        """Commit what is held, close the file; a second close does nothing."""
        if not self._closed:
            try:
                self.commit()
            finally:
                self._closed = True
                self._db.close()
