"""Dedup stores: the same contract in memory and in SQLite, and SQLite across a restart."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.exceptions import ConfigError
from gateway.reliable import dedup_key
from gateway.reliable.protocol import Cached, Execute, ReceiverProtocol, Refuse, RetryPolicy
from gateway.reliable.store import (
    DedupStore,
    DedupStoreError,
    MemoryDedupStore,
    Record,
    SqliteDedupStore,
    State,
)

POLICY = RetryPolicy(deadline=10.0)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DedupStore]:
    s: DedupStore = (
        MemoryDedupStore() if request.param == "memory" else SqliteDedupStore(tmp_path / "d.db")
    )
    with s:
        yield s


def test_unknown_id_has_no_record(store: DedupStore) -> None:
    assert store.get("nope") is None
    assert len(store) == 0


def test_pending_then_completed(store: DedupStore) -> None:
    store.mark_pending("a", 1.0)
    assert store.get("a") == Record("a", State.PENDING, 1.0, None)
    store.mark_completed("a", b"\x00reply\xff", 2.5)
    assert store.get("a") == Record("a", State.COMPLETED, 2.5, b"\x00reply\xff")
    assert len(store) == 1


def test_claim_marks_a_new_id_pending_and_leaves_a_known_one_as_it_is(store: DedupStore) -> None:
    assert store.claim("a", 1.0, "PullMessages") is None
    pending = Record("a", State.PENDING, 1.0, None, note="PullMessages")
    assert store.get("a") == pending
    assert store.claim("a", 2.0, "again") == pending
    store.mark_completed("a", b"r", 3.0)
    assert store.claim("a", 4.0) == Record("a", State.COMPLETED, 3.0, b"r")
    assert store.get("a") == Record("a", State.COMPLETED, 3.0, b"r")
    assert len(store) == 1


def test_completed_without_a_kept_reply(store: DedupStore) -> None:
    store.mark_completed("a", None, 1.0)
    assert store.get("a") == Record("a", State.COMPLETED, 1.0, None)


def test_empty_reply_is_not_a_missing_reply(store: DedupStore) -> None:
    store.mark_completed("a", b"", 1.0)
    record = store.get("a")
    assert record is not None and record.reply == b""


def test_delete_forgets_and_ignores_unknown_ids(store: DedupStore) -> None:
    store.mark_pending("a", 1.0)
    store.delete("a")
    store.delete("never-seen")
    assert store.get("a") is None


def test_expire_removes_only_records_older_than_the_cutoff(store: DedupStore) -> None:
    store.mark_completed("old", b"1", 1.0)
    store.mark_pending("old-pending", 2.0)
    store.mark_completed("edge", b"2", 5.0)
    store.mark_completed("new", b"3", 9.0)
    assert store.expire(5.0) == 2
    assert store.get("old") is None and store.get("old-pending") is None
    assert store.get("edge") is not None and store.get("new") is not None
    assert store.expire(5.0) == 0


def test_sqlite_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "dedup.db"
    with SqliteDedupStore(path) as first:
        relay = ReceiverProtocol(first, policy=POLICY)
        assert relay.begin("done", 0.0) == Execute()
        relay.complete("done", b"the reply", 1.0)
        assert relay.begin("crashed", 2.0) == Execute()
        # The relay process dies here: "crashed" never completes.

    with SqliteDedupStore(path) as second:
        restarted = ReceiverProtocol(second, policy=POLICY)
        assert restarted.begin("done", 3.0) == Cached(b"the reply")
        refusal = restarted.begin("crashed", 3.0)
        assert isinstance(refusal, Refuse)
        assert "in flight when the relay stopped" in refusal.reason
        assert restarted.executed == 0
        # Forgotten only after result_ttl, like completed ids.
        assert restarted.expire(2.0 + POLICY.result_ttl + 0.1) == 2
        assert restarted.begin("crashed", 50.0) == Execute()


def test_sqlite_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "dedup.db"
    with SqliteDedupStore(path):
        pass
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_sqlite_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ConfigError, match="not a usable dedup store"):
        SqliteDedupStore(path)


def test_sqlite_refuses_an_unknown_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.commit()
    db.close()
    with pytest.raises(ConfigError, match="schema version 99"):
        SqliteDedupStore(path)


def test_sqlite_errors_after_open_are_dedup_store_errors(tmp_path: Path) -> None:
    store = SqliteDedupStore(tmp_path / "d.db")
    store.close()
    with pytest.raises(DedupStoreError):
        store.get("a")


@given(st.text(), st.text(), st.text(), st.text())
def test_dedup_keys_of_different_scopes_and_ids_never_collide(
    scope_a: str, id_a: str, scope_b: str, id_b: str
) -> None:
    assert (dedup_key(scope_a, id_a) == dedup_key(scope_b, id_b)) == (
        (scope_a, id_a) == (scope_b, id_b)
    )
    # Nested, as the relay scopes by site and job.
    assert dedup_key(dedup_key("site-1", "job/a"), "m") != dedup_key(
        dedup_key("site-1/job", "a"), "m"
    )


def test_pending_lists_only_pending_records_oldest_first_with_their_notes(
    store: DedupStore,
) -> None:
    store.mark_pending("late", 5.0, "pull of site-2")
    store.mark_pending("early", 1.0)
    store.mark_pending("done", 0.5, "was pending")
    store.mark_completed("done", b"r", 2.0)
    assert store.pending() == [
        Record("early", State.PENDING, 1.0),
        Record("late", State.PENDING, 5.0, note="pull of site-2"),
    ]


def test_a_version_1_store_is_migrated_and_keeps_its_pending_ids(tmp_path: Path) -> None:
    """Relays before the note column left pending ids that must stay refused."""
    path = tmp_path / "v1.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(
        "CREATE TABLE dedup (message_id TEXT PRIMARY KEY, state TEXT NOT NULL, "
        "at REAL NOT NULL, reply BLOB) WITHOUT ROWID; PRAGMA user_version=1;"
    )
    db.execute("INSERT INTO dedup VALUES ('crashed', 'pending', 1.0, NULL)")
    db.close()
    with SqliteDedupStore(path) as store:
        assert store.pending() == [Record("crashed", State.PENDING, 1.0)]
        assert isinstance(ReceiverProtocol(store, policy=POLICY).begin("crashed", 2.0), Refuse)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    db.close()


def test_lost_lists_the_pending_ids_that_nobody_executes_now(tmp_path: Path) -> None:
    path = tmp_path / "dedup.db"
    with SqliteDedupStore(path) as first:
        relay = ReceiverProtocol(first, policy=POLICY)
        assert relay.begin("crashed", 0.0, "what it was") == Execute()
    with SqliteDedupStore(path) as second:
        restarted = ReceiverProtocol(second, policy=POLICY)
        assert restarted.begin("new", 1.0, "running") == Execute()
        assert restarted.lost() == [Record("crashed", State.PENDING, 0.0, note="what it was")]
        # An execution that outlives the ttl is marked pending again, note and all.
        restarted.expire(1.0 + POLICY.result_ttl + 1)
        assert second.pending() == [
            Record("new", State.PENDING, 1.0 + POLICY.result_ttl + 1, note="running")
        ]
