"""Migrations of the transparency log's tables, applied to files written by older versions."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.core import note
from gateway.ledger.keys import GatewayKey
from gateway.ledger.log import TransparencyLog
from gateway.store import db as db_module
from gateway.store.db import Database
from gateway.store.events import EventRecord, EventStore

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
OLD_WITNESSED_MS = 1_700_000_000_000
LOG_0102 = "log_0102_checkpoint_strength_indexes"
LOG_0103 = "log_0103_witnessed_means_quorum"


def _strength_indexes(database: Database) -> dict[str, str]:
    return dict(
        database.query(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index'"
            " AND tbl_name = 'checkpoint_status' AND sql IS NOT NULL"
        )
    )


@pytest.fixture
def file_at_log_0102(tmp_path, monkeypatch):
    """A gateway file written by the code of log_0102: three checkpoints of 1, 2, 3 entries.

    Checkpoint 1 is cosigned and anchored, checkpoint 2 cosigned by one witness only, checkpoint 3
    plain; both cosigned ones carry the witnessed_ms the old rule set at the first cosignature.
    """
    registry = db_module.gateway_migrations()
    steps = dict(registry.steps())
    names = list(steps)
    older = {name: steps[name] for name in names[: names.index(LOG_0102) + 1]}
    monkeypatch.setattr(registry, "_steps", older)
    path = tmp_path / "gw.sqlite3"
    key = GatewayKey.generate("provgw.test/log")
    witness = note.Signer.generate("w0.test", note.COSIGNATURE_V1)
    with Database(path) as old:
        assert LOG_0103 not in old.migrations_applied
        log = TransparencyLog(old, key.signer)
        events = EventStore(old)
        for seq in range(3):
            events.insert_batch(
                [EventRecord("dev-1", seq, "custody", 0, 0, "s", "t", b"m-%d" % seq)]
            )
            log.append_pending()
            log.seal(NOW)
        for size in (1, 2):
            text = log.checkpoint(size).note.decode().split("\n\n")[0] + "\n"
            log.add_cosignatures(size, [witness.sign(text, timestamp=1_700_000_000).line])
        log.record_anchor(1, chain="besu:1337", tx=b"\x01" * 32, block=4, now=NOW)
        # What the old add_cosignatures recorded at the first cosignature.
        with old.atomic() as conn:
            conn.execute(
                "UPDATE checkpoint_status SET witnessed_ms = ? WHERE cosignatures != ''",
                (OLD_WITNESSED_MS,),
            )
        old_indexes = _strength_indexes(old)
    monkeypatch.setattr(registry, "_steps", steps)
    return path, key, old_indexes


def test_log_0103_keeps_witnessed_only_on_anchored_checkpoints(file_at_log_0102):
    path, key, _ = file_at_log_0102
    with Database(path) as upgraded:
        # log_0103, and whatever steps came after it.
        names = db_module.registered_migrations()
        assert upgraded.migrations_applied == names[names.index(LOG_0103) :]
        log = TransparencyLog(upgraded, key.signer)
        anchored, cosigned, plain = (log.status(size) for size in (1, 2, 3))
    # The service anchors only after the quorum: the anchored row keeps its moment.
    assert (anchored.state, anchored.witnessed_ms) == ("anchored", OLD_WITNESSED_MS)
    # One cosignature under the old rule: its quorum is unknown here, so it is "logged" until
    # the ledger service re-counts it; the cosignature line itself is kept.
    assert (cosigned.state, cosigned.witnessed_ms, len(cosigned.cosignatures)) == (
        "logged",
        None,
        1,
    )
    assert (plain.state, plain.witnessed_ms) == ("logged", None)


def test_log_0103_makes_the_strength_indexes_those_of_a_new_file(file_at_log_0102, tmp_path):
    path, key, old_indexes = file_at_log_0102
    assert "cosignatures != ''" in old_indexes["checkpoint_status_witnessed"]
    with Database(path) as upgraded, Database(tmp_path / "new.sqlite3") as new:
        assert _strength_indexes(upgraded) == _strength_indexes(new)
        assert "witnessed_ms IS NOT NULL" in _strength_indexes(new)["checkpoint_status_witnessed"]
        log = TransparencyLog(upgraded, key.signer)
        # Leaf 0: the anchored checkpoint 1. Leaf 1: the newest checkpoint (3), no longer the
        # one cosigned below the quorum (2) that the old rule called witnessed.
        assert log.covering_checkpoint(0)[0].size == 1
        assert log.covering_checkpoint(1)[0].size == 3
