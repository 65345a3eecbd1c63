from __future__ import annotations

import pytest

from gateway.core.errors import UnavailableError
from gateway.store.db import Database, registered_migrations
from gateway.store.witness import WITNESS_MIGRATIONS, WitnessedCheckpoint, WitnessStore


def _recorded(path) -> list[str]:
    with Database(path, migrations=WITNESS_MIGRATIONS) as database:
        return [n for (n,) in database.query("SELECT name FROM _migrations ORDER BY name")]


def _tables(database: Database) -> set[str]:
    return {n for (n,) in database.query("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_witness_file_records_only_its_own_migrations(tmp_path):
    path = tmp_path / "witness.sqlite3"
    WitnessStore(path).close()
    assert _recorded(path) == ["witness_0001_state"]
    assert not set(registered_migrations()) & set(WITNESS_MIGRATIONS.names())


def test_witness_file_has_no_gateway_tables(tmp_path):
    path = tmp_path / "witness.sqlite3"
    WitnessStore(path).close()
    with Database(path, migrations=WITNESS_MIGRATIONS) as database:
        assert _tables(database) == {"_migrations", "witness_logs", "witness_evidence"}


def _open_gateway(path) -> None:
    Database(path).close()


def _open_witness(path) -> None:
    WitnessStore(path).close()


@pytest.mark.parametrize(
    ("create", "reopen", "kind", "step"),
    [
        (_open_witness, _open_gateway, "gateway", "witness_0001_state"),
        (_open_gateway, _open_witness, "witness", "0001_events"),
    ],
    ids=["witness-file-as-gateway", "gateway-file-as-witness"],
)
def test_a_file_of_one_kind_opened_as_the_other_is_refused_and_left_untouched(
    tmp_path, create, reopen, kind, step
):
    path = tmp_path / "some.sqlite3"
    create(path)
    before = path.read_bytes()
    with pytest.raises(UnavailableError) as info:
        reopen(path)
    assert info.value.reason == "store-foreign-schema"
    assert f"not a {kind} database" in info.value.message
    assert step in info.value.message
    assert path.read_bytes() == before


def test_witness_file_written_by_a_newer_witness_is_refused(tmp_path):
    path = tmp_path / "witness.sqlite3"
    with WitnessStore(path) as store, store.atomic() as conn:
        conn.execute("INSERT INTO _migrations VALUES ('witness_9999_future', 'x')")
    with pytest.raises(UnavailableError) as info:
        WitnessStore(path)
    assert info.value.reason == "store-newer-schema"
    assert "newer witness version" in info.value.message


def test_file_from_before_recorded_migrations_is_adopted_with_its_checkpoints(tmp_path):
    # Witness files written before the witness used Database: tables versioned by user_version.
    path = tmp_path / "witness.sqlite3"
    with WitnessStore(path) as store:
        store.put(WitnessedCheckpoint("example.org/log", 3, b"\x01" * 32, b"note", 7))
        with store.atomic() as conn:
            conn.execute("DROP TABLE _migrations")
            conn.execute("PRAGMA user_version = 1")
    with WitnessStore(path) as store:
        assert store.latest("example.org/log") == WitnessedCheckpoint(
            "example.org/log", 3, b"\x01" * 32, b"note", 7
        )
    assert _recorded(path) == ["witness_0001_state"]


def test_witness_file_is_fsynced_at_every_commit_by_default(tmp_path):
    path = tmp_path / "witness.sqlite3"
    with WitnessStore(path) as store:
        assert store.query("PRAGMA synchronous") == [(2,)]  # FULL: tlog-witness persists first


def test_unopenable_witness_file_is_reported_as_the_witness_s(tmp_path):
    with pytest.raises(UnavailableError) as info:
        WitnessStore(tmp_path / "missing" / "witness.sqlite3")
    assert info.value.reason == "store-unopenable"
    assert "witness database" in info.value.message
