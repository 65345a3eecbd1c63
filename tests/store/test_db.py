from __future__ import annotations

import sqlite3
import threading

import pytest

from gateway.core.errors import UnavailableError
from gateway.store import db as db_module
from gateway.store.db import Database, gateway_migrations, migration, registered_migrations


def _names_and_times(database: Database) -> list[tuple[str, str]]:
    return database.query("SELECT name, applied_at FROM _migrations ORDER BY name")


def _insert_quarantine(conn: sqlite3.Connection, marker: int) -> None:
    conn.execute(
        "INSERT INTO quarantine (received_ms, topic, raw, reason, detail) VALUES (?, 't', x'00',"
        " 'r', 'd')",
        (marker,),
    )


def _write_then_fail(database: Database, *markers: int, nested_first: bool = False) -> None:
    with database.atomic() as conn:
        if nested_first:
            with database.atomic() as inner:
                _insert_quarantine(inner, 0)
        for marker in markers:
            _insert_quarantine(conn, marker)
        raise KeyError


def _markers(database: Database) -> list[int]:
    return [row[0] for row in database.query("SELECT received_ms FROM quarantine ORDER BY id")]


@pytest.fixture
def private_registry(monkeypatch):
    """A copy of the migration registry, so a test can register steps without leaking them."""
    registry = dict(db_module.gateway_migrations().steps())
    monkeypatch.setattr(db_module.gateway_migrations(), "_steps", registry)
    return registry


def test_migrations_are_applied_once_and_recorded(tmp_path):
    path = tmp_path / "gw.sqlite3"
    with Database(path) as first:
        assert first.migrations_applied == registered_migrations()
        assert {"0001_events", "0002_quarantine", "0003_devices"} <= set(first.migrations_applied)
        recorded = _names_and_times(first)
    assert [name for name, _ in recorded] == sorted(registered_migrations())
    with Database(path) as again:
        assert again.migrations_applied == ()
        assert _names_and_times(again) == recorded


def test_new_migration_is_applied_alone_to_an_existing_database(tmp_path, private_registry):
    path = tmp_path / "gw.sqlite3"
    Database(path).close()
    calls = []

    @migration("9999_test_extra")
    def _extra(conn: sqlite3.Connection) -> None:
        calls.append(1)
        conn.execute("CREATE TABLE extra (x INTEGER) STRICT")

    with Database(path) as upgraded:
        assert upgraded.migrations_applied == ("9999_test_extra",)
        assert upgraded.query("SELECT count(*) FROM extra") == [(0,)]
    with Database(path) as reopened:
        assert reopened.migrations_applied == ()
    assert calls == [1]
    assert "9999_test_extra" in private_registry


def test_an_upgrade_says_what_it_applies_and_a_new_or_current_file_says_nothing(tmp_path, caplog):
    # A long upgrade must not look like a hung start: the operator is told what runs, that
    # stopping is safe, and each step as it finishes. Creating a file is not an upgrade.
    path = tmp_path / "gw.sqlite3"
    last_two = registered_migrations()[-2:]
    caplog.set_level("WARNING", logger="gateway.store.db")
    Database(path, migrations=gateway_migrations().before(last_two[0])).close()
    assert caplog.records == []

    with Database(path) as upgraded:
        assert upgraded.migrations_applied == last_two
    start, *steps = (r.getMessage() for r in caplog.records)
    assert f"Upgrading the gateway database {path}" in start
    assert f"2 schema step(s) to apply ({last_two[0]}, {last_two[1]})" in start
    assert "stopping is safe" in start
    assert [s.split(": ", 1)[1].split(" in ")[0] for s in steps] == [
        f"schema step {last_two[0]} applied (1 of 2)",
        f"schema step {last_two[1]} applied (2 of 2)",
    ]

    caplog.clear()
    Database(path).close()
    assert caplog.records == []


def test_the_steps_before_a_migration_are_a_set_of_their_own():
    names = registered_migrations()
    older = gateway_migrations().before(names[3])
    assert older.names() == names[:3]
    assert older.kind == "gateway"
    assert gateway_migrations().before(names[0]).names() == ()
    assert gateway_migrations().names() == names  # the original set is untouched
    with pytest.raises(ValueError, match="no gateway migration is named '9999_nope'"):
        gateway_migrations().before("9999_nope")


def test_failing_migration_is_rolled_back_and_not_recorded(tmp_path, private_registry):
    path = tmp_path / "gw.sqlite3"

    @migration("9999_test_fails")
    def _fails(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half_done (x INTEGER)")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        Database(path)
    del private_registry["9999_test_fails"]
    with Database(path) as reopened:
        assert reopened.migrations_applied == ()
        names = {n for (n,) in reopened.query("SELECT name FROM sqlite_master")}
        assert "half_done" not in names
        recorded = {n for n, _ in _names_and_times(reopened)}
        assert "9999_test_fails" not in recorded
        assert "0001_events" in recorded


@pytest.mark.usefixtures("private_registry")
def test_migration_that_commits_on_its_own_is_refused(tmp_path):
    @migration("9999_test_commits")
    def _commits(conn: sqlite3.Connection) -> None:
        conn.executescript("CREATE TABLE sneaky (x INTEGER);")

    with pytest.raises(RuntimeError, match="committed on its own"):
        Database(tmp_path / "gw.sqlite3")


@pytest.mark.usefixtures("private_registry")
def test_two_functions_cannot_share_a_migration_name():
    def one(conn: sqlite3.Connection) -> None: ...

    def two(conn: sqlite3.Connection) -> None: ...

    migration("9999_test_name")(one)
    with pytest.raises(ValueError, match="already registered"):
        migration("9999_test_name")(two)


def test_database_written_by_a_newer_version_is_refused(tmp_path):
    path = tmp_path / "gw.sqlite3"
    with Database(path) as database, database.atomic() as conn:
        conn.execute("INSERT INTO _migrations VALUES ('9999_from_the_future', 'x')")
    with pytest.raises(UnavailableError) as info:
        Database(path)
    assert info.value.reason == "store-newer-schema"
    assert "9999_from_the_future" in info.value.message


def test_connection_uses_wal_normal_sync_and_foreign_keys(db):
    assert db.query("PRAGMA journal_mode") == [("wal",)]
    assert db.query("PRAGMA synchronous") == [(1,)]  # NORMAL
    assert db.query("PRAGMA foreign_keys") == [(1,)]


def test_durable_against_power_loss_selects_full_sync(tmp_path):
    with Database(tmp_path / "gw.sqlite3", durable_against_power_loss=True) as database:
        assert database.query("PRAGMA synchronous") == [(2,)]  # FULL


def test_exception_inside_atomic_rolls_back_everything(db):
    with pytest.raises(KeyError):
        _write_then_fail(db, 1, 2)
    assert _markers(db) == []
    with db.atomic() as conn:  # the connection is usable again afterwards
        _insert_quarantine(conn, 3)
    assert _markers(db) == [3]


def test_failed_nested_block_undoes_only_its_own_writes(db):
    with db.atomic() as conn:
        with db.atomic() as inner:  # a savepoint of its own (the default)
            inner.execute("ROLLBACK TO sp1")  # it exists: no error
        _insert_quarantine(conn, 1)
        with pytest.raises(KeyError):
            _write_then_fail(db, 2)
        _insert_quarantine(conn, 3)
    assert _markers(db) == [1, 3]


def test_nested_block_is_undone_when_the_outer_block_fails(db):
    with pytest.raises(KeyError):
        _write_then_fail(db, 2, nested_first=True)
    assert _markers(db) == []
    assert not db.conn.in_transaction


def test_without_savepoints_a_nested_block_joins_the_transaction(db):
    with db.atomic(savepoints=False) as conn:
        _insert_quarantine(conn, 1)
        with db.atomic() as inner:
            _insert_quarantine(inner, 2)
            # Joined: no SAVEPOINT was opened (so SQLite keeps no statement journal for it).
            with pytest.raises(sqlite3.OperationalError, match="no such savepoint"):
                inner.execute("RELEASE sp1")
    assert _markers(db) == [1, 2]
    with db.atomic() as conn:  # the next transaction has savepoints again
        _insert_quarantine(conn, 3)
        with pytest.raises(KeyError):
            _write_then_fail(db, 4)
    assert _markers(db) == [1, 2, 3]


def _swallow_a_nested_failure(database: Database) -> None:
    with database.atomic(savepoints=False) as conn:
        _insert_quarantine(conn, 1)
        with pytest.raises(KeyError):
            _write_then_fail(database, 2)  # caught: its writes cannot be undone alone
        _insert_quarantine(conn, 3)


def test_without_savepoints_a_caught_nested_failure_rolls_everything_back(db):
    with pytest.raises(UnavailableError) as info:
        _swallow_a_nested_failure(db)
    assert info.value.reason == "store-nested-failure"
    assert _markers(db) == []
    assert not db.conn.in_transaction
    with db.atomic() as conn:
        _insert_quarantine(conn, 4)
    assert _markers(db) == [4]


def test_writes_from_two_threads_are_all_committed(db):
    def writer(base: int) -> None:
        for i in range(50):
            with db.atomic() as conn:
                _insert_quarantine(conn, base + i)

    threads = [threading.Thread(target=writer, args=(base,)) for base in (0, 1000)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(_markers(db)) == [*range(50), *range(1000, 1050)]


def test_locked_database_is_unavailable_with_a_sentence(tmp_path):
    path = tmp_path / "gw.sqlite3"
    with Database(path) as holder, Database(path, busy_timeout_s=0.05) as waiter:
        with holder.atomic() as conn:
            _insert_quarantine(conn, 1)
            with pytest.raises(UnavailableError) as info, waiter.atomic():
                pass
        assert info.value.reason == "store-busy"
        assert "only one gateway" in info.value.message
        with waiter.atomic() as conn:  # once released, the waiter proceeds
            _insert_quarantine(conn, 2)
        assert _markers(waiter) == [1, 2]


def test_file_that_is_not_a_database_is_unavailable_as_corrupt(tmp_path):
    path = tmp_path / "gw.sqlite3"
    path.write_bytes(b"this is a firmware image, not a database" * 200)
    with pytest.raises(UnavailableError) as info:
        Database(path)
    assert info.value.reason == "store-corrupt"
    assert "backup" in info.value.message
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)


def test_missing_folder_is_unavailable_with_what_to_check(tmp_path):
    with pytest.raises(UnavailableError) as info:
        Database(tmp_path / "no" / "such" / "folder" / "gw.sqlite3")
    assert info.value.reason == "store-unopenable"
    assert "folder exists" in info.value.message


def test_sql_bugs_are_not_disguised_as_unavailability(db):
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        db.query("SELECT * FROM no_such_table")
