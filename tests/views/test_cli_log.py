from __future__ import annotations

import base64
import json

import pytest
from click.testing import CliRunner

from gateway.core import merkle, note
from gateway.ledger.commitments import leaf_for
from gateway.ledger.receipts import verify_receipt
from gateway.store.db import Database
from gateway.store.events import EventRecord, EventStore
from gateway.views.cli._main import _register, cli


@pytest.fixture(scope="module", autouse=True)
def _commands():
    _register()


@pytest.fixture
def gateway(tmp_path):
    """A gateway database with 12 events and a log key; returns (db path, key path, vkey)."""
    db_path, key_path = tmp_path / "gw.sqlite3", tmp_path / "log.key"
    with Database(db_path) as db:
        EventStore(db).insert_batch(
            [
                EventRecord("dev-1", seq, "custody", 0, 0, "site-a", "t", b"m-%d" % seq, b"p")
                for seq in range(12)
            ]
        )
    result = CliRunner().invoke(
        cli, ["log", "keygen", "--out", str(key_path), "--origin", "provgw.test/log"]
    )
    assert result.exit_code == 0, result.output
    return db_path, key_path, result.output.strip()


def _run(*args: str):
    return CliRunner().invoke(cli, list(args))


def _json(*args: str):
    result = _run(*args, "--json")
    return result.exit_code, json.loads(result.stdout) if result.stdout.strip() else None


def test_keygen_writes_a_private_key_once_and_prints_its_vkey(gateway):
    _, key_path, vkey = gateway
    assert note.Verifier.from_vkey(vkey).name == "provgw.test/log"
    assert oct(key_path.stat().st_mode & 0o777) == "0o600"
    again = _run("log", "keygen", "--out", str(key_path))
    assert again.exit_code == 2
    assert "already exists" in again.output


def test_checkpoint_logs_pending_events_and_prints_the_signed_note(gateway):
    db_path, key_path, vkey = gateway
    code, out = _json("log", "checkpoint", "--db", str(db_path), "--key", str(key_path))
    assert code == 0
    assert (out["appended"], out["new_checkpoint"], out["size"]) == (12, True, 12)
    signed = note.open_checkpoint(out["note"].encode(), note.Verifier.from_vkey(vkey))
    assert signed.checkpoint.size == 12
    code, out = _json("log", "checkpoint", "--db", str(db_path), "--key", str(key_path))
    assert (code, out["new_checkpoint"], out["size"]) == (0, False, 12)


def test_prove_prints_a_receipt_that_verifies_offline(gateway, tmp_path):
    db_path, key_path, vkey = gateway
    assert _run("log", "checkpoint", "--db", str(db_path), "--key", str(key_path)).exit_code == 0
    receipt_file = tmp_path / "r.cbor"
    code, out = _json(
        "log",
        "prove",
        "5",
        "--db",
        str(db_path),
        "--key",
        str(key_path),
        "--out",
        str(receipt_file),
    )
    assert code == 0
    assert (out["leaf_index"], out["tree_size"], out["state"]) == (4, 12, "logged")
    with Database(db_path) as db:
        event = EventStore(db).by_id(5)
        leaf = leaf_for("event", event.salt, event.digest)
    info = verify_receipt(receipt_file.read_bytes(), leaf, note.Verifier.from_vkey(vkey))
    assert info.leaf_index == 4
    assert base64.b64decode(out["receipt"]) == receipt_file.read_bytes()
    text = _run("log", "prove", "5", "--db", str(db_path), "--key", str(key_path))
    assert "receipt verified" in text.output


def test_prove_refuses_events_that_are_not_sealed_or_do_not_exist(gateway):
    db_path, key_path, _ = gateway
    code, out = _json("log", "prove", "3", "--db", str(db_path), "--key", str(key_path))
    assert code == 1
    assert out["reason"] == "not-logged"
    assert _run("log", "prove", "99", "--db", str(db_path), "--key", str(key_path)).exit_code == 1


def test_consistency_prints_a_verified_proof_and_refuses_shrinking(gateway):
    db_path, key_path, _ = gateway
    _run("log", "checkpoint", "--db", str(db_path), "--key", str(key_path))
    code, out = _json("log", "consistency", "5", "12", "--db", str(db_path))
    assert (code, out["verified"]) == (0, True)
    # The printed proof checks on its own, against the printed roots (RFC 9162 §2.1.4.2).
    merkle.verify_consistency(
        5,
        12,
        base64.b64decode(out["old_root"]),
        base64.b64decode(out["new_root"]),
        [base64.b64decode(h) for h in out["proof"]],
    )
    code, out = _json("log", "consistency", "12", "5", "--db", str(db_path))
    assert code == 1
    assert out["reason"] == "out-of-range"


def test_verify_passes_then_fails_with_a_reason_after_tampering(gateway):
    db_path, key_path, vkey = gateway
    _run("log", "checkpoint", "--db", str(db_path), "--key", str(key_path))
    result = _run("log", "verify", "--db", str(db_path), "--key", vkey)
    assert result.exit_code == 0, result.output
    assert "log OK: 12 entries" in result.stdout
    assert "verified 12 of 12 entries" in result.stderr
    with Database(db_path) as db:
        db.conn.execute("UPDATE events SET salt = randomblob(32) WHERE id = 3")
    code, out = _json("log", "verify", "--db", str(db_path), "--key", str(key_path))
    assert code == 1
    assert out["reason"] == "commitment-mismatch"


def test_erase_keeps_verify_green_and_makes_the_event_unprovable(gateway):
    db_path, key_path, vkey = gateway
    _run("log", "checkpoint", "--db", str(db_path), "--key", str(key_path))
    code, out = _json("erase", "7", "--reason", "patient request", "--db", str(db_path))
    assert (code, out["leaf_index"]) == (0, 12)
    _run("log", "checkpoint", "--db", str(db_path), "--key", str(key_path))
    code, out = _json("log", "verify", "--db", str(db_path), "--key", vkey)
    assert code == 0
    assert (out["erased_events"], out["erasures"], out["checkpoints"]) == (1, 1, 2)
    assert _run("log", "prove", "7", "--db", str(db_path), "--key", str(key_path)).exit_code == 1
    code, out = _json("erase", "7", "--reason", "again", "--db", str(db_path))
    assert (code, out["reason"]) == (1, "already-erased")


def test_every_log_command_has_help():
    for args in (["log"], *(["log", c] for c in ("keygen", "checkpoint", "prove")), ["erase"]):
        result = _run(*args, "--help")
        assert result.exit_code == 0
        assert "Usage" in result.output
    missing_db = _run("log", "consistency", "1", "2", "--db", "/nonexistent/gw.sqlite3")
    assert missing_db.exit_code == 2
