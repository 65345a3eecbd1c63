from __future__ import annotations

import base64
import hashlib
import json
import time
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner

from gateway.core import merkle, note
from gateway.core.cbor import dumps
from gateway.ledger.commitments import leaf_for
from gateway.ledger.keys import load_gateway_key
from gateway.ledger.log import TransparencyLog
from gateway.ledger.receipts import verify_receipt
from gateway.service.remediation import RemediationTracker, log_pending_records, record
from gateway.store.db import Database
from gateway.store.events import EventRecord, EventStore
from gateway.store.offers import campaign_id
from gateway.views.cli._main import _register, cli
from tests._helpers import cose_signed

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


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
                EventRecord("dev-1", seq, "custody", 0, 0, "site-a", "t", b"m-%d" % seq)
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


def test_verify_counts_the_urgent_lane_records_and_names_a_tampered_one(gateway):
    db_path, key_path, vkey = gateway
    with Database(db_path) as db:
        for i in range(2):
            record(db, "remediation", state="offered", digest=bytes([i]) * 32, at_ms=i)
        # A timeout's digest is made from its campaign, device and time (RemediationTracker.due).
        timeout = hashlib.sha256(dumps([CAMPAIGN, "pump-9", "unreachable", 5])).digest()
        record(db, "remediation", state="unreachable", digest=timeout, at_ms=5,
               device_id="pump-9", manifest=MANIFEST)  # fmt: skip
        log_pending_records(db, TransparencyLog(db, load_gateway_key(key_path).signer))
    _run("log", "checkpoint", "--db", str(db_path), "--key", str(key_path))
    code, out = _json("log", "verify", "--db", str(db_path), "--key", vkey)
    assert (code, out["leaves"], out["events"]) == (0, 15, 12)
    assert (out["urgent_records"], out["other_records"]) == (3, 0)
    result = _run("log", "verify", "--db", str(db_path), "--key", vkey, "--quiet")
    assert "3 urgent-lane records" in result.stdout
    assert "urgent-lane claims OK: 1 recomputed (remediation/unreachable 1)" in result.stdout
    with Database(db_path) as db:
        db.conn.execute("UPDATE urgent_records SET digest = randomblob(32) WHERE id = 2")
    code, out = _json("log", "verify", "--db", str(db_path), "--key", vkey)
    assert (code, out["reason"]) == (1, "commitment-mismatch")


MANIFEST = b"\x07" * 32
CAMPAIGN = campaign_id(MANIFEST)


def _firmware_report(db, device: str, result: str, received_ms: int) -> None:
    """Store a device's firmware_update report of MANIFEST, as ingest does."""
    body = {"from_version": "1.0.0", "to_version": "1.0.1", "manifest_digest": MANIFEST,
            "image_digest": b"\x01" * 32, "result": result, "trigger": "routine",
            "cycle": "out_of_cycle"}  # fmt: skip
    payload = dumps({"v": 1, "type": "firmware_update", "device": device, "seq": 1, "time": 1,
                     "body": body})  # fmt: skip
    raw = cose_signed(payload)
    event = EventRecord(device, 1, "firmware_update", 1, received_ms, "site-a", "t", raw)
    EventStore(db).insert_batch([event])


def test_verify_checks_what_a_device_report_record_claims_and_names_a_flipped_state(gateway):
    db_path, key_path, vkey = gateway
    with Database(db_path) as db:
        tracker = RemediationTracker(db)
        for device in ("pump-1", "pump-2"):
            tracker.mark_offered(CAMPAIGN, device, b"offer", manifest=MANIFEST, at_ms=1)
        _firmware_report(db, "pump-1", "installed", 10)
        _firmware_report(db, "pump-2", "failed", 20)
        assert tracker.apply_reports() == 2
        # An insider shows the failed install as installed before the recorder logs the row:
        # the log then commits to the altered row, and only the report behind it tells.
        failed = db.query("SELECT id FROM urgent_records WHERE state = 'failed'")[0][0]
    code, out = _json("log", "verify", "--db", str(db_path), "--key", vkey)
    assert (code, out["urgent_claims"]["checked"]) == (
        0, {"remediation/failed": 1, "remediation/installed": 1},
    )  # fmt: skip
    assert out["urgent_claims"]["not_recomputable"] == {"offered (offer bytes not kept)": 2}
    with Database(db_path) as db:
        db.conn.execute("UPDATE urgent_records SET state = 'installed' WHERE id = ?", (failed,))
        log_pending_records(db, TransparencyLog(db, load_gateway_key(key_path).signer))
    _run("log", "checkpoint", "--db", str(db_path), "--key", str(key_path))
    code, out = _json("log", "verify", "--db", str(db_path), "--key", vkey)
    assert (code, out["reason"]) == (1, "claim-mismatch")
    result = _run("log", "verify", "--db", str(db_path), "--key", vkey, "--quiet")
    assert result.exit_code == 1
    assert f"Urgent-lane record {failed} (remediation 'installed' of device pump-2)" in (
        result.output
    )
    assert "the device reported 'failed'" in result.output


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


# -- prove: the state verified with the witnesses' keys, and the state recorded ------------------

_CHECKPOINT_SIZE = 12


def _witness(name: str) -> note.Signer:
    return note.Signer.generate(name, note.COSIGNATURE_V1)


def _cosign(
    db_path, key_path, *witnesses: note.Signer, timestamp: int = 1_700_000_000, quorum: int = 1
) -> None:
    """Seal the 12 events and keep a cosignature by each of *witnesses* (as `provgw serve` does).

    Like `provgw serve` with ``[witnesses] quorum`` = *quorum*, the checkpoint is recorded as
    witnessed only when that many witnesses cosigned.
    """
    assert _run("log", "checkpoint", "--db", str(db_path), "--key", str(key_path)).exit_code == 0
    key = load_gateway_key(key_path)
    with Database(db_path) as db:
        log = TransparencyLog(db, key.signer)
        text = note.open_checkpoint(log.checkpoint(_CHECKPOINT_SIZE).note, key.verifier).note.text
        lines = [w.sign(text, timestamp=timestamp).line for w in witnesses]
        if lines:
            log.add_cosignatures(_CHECKPOINT_SIZE, lines)
        if len(lines) >= quorum:
            log.mark_witnessed(_CHECKPOINT_SIZE, NOW)


def _prove(db_path, key_path, *options: str):
    return _json("log", "prove", "5", "--db", str(db_path), "--key", str(key_path), *options)


def test_prove_says_witnessed_only_when_the_given_witness_keys_verify(gateway):
    db_path, key_path, _ = gateway
    w1, w2 = _witness("w1.test"), _witness("w2.test")
    _cosign(db_path, key_path, w1)
    code, out = _prove(db_path, key_path, "--witness-vkey", w1.verifier.vkey)
    assert code == 0
    assert (out["state"], out["recorded_state"], out["witnesses"]) == (
        "witnessed",
        "witnessed",
        ["w1.test"],
    )
    # Without keys nothing but the gateway's signature is checked: the state is "logged".
    code, out = _prove(db_path, key_path)
    assert (code, out["state"], out["recorded_state"]) == (0, "logged", "witnessed")
    assert (out["witness_keys"], out["witness_quorum"]) == (0, None)
    # A quorum of two is not met by one cosignature.
    code, out = _prove(
        db_path, key_path, "--witness-vkey", w1.verifier.vkey,
        "--witness-vkey", w2.verifier.vkey, "--quorum", "2",
    )  # fmt: skip
    assert (code, out["state"], out["witnesses"]) == (0, "logged", [])
    text = _run("log", "prove", "5", "--db", str(db_path), "--key", str(key_path))
    assert "state verified: logged; no witness keys given" in text.stdout
    assert "state recorded by the gateway: witnessed" in text.stdout


def test_recorded_state_is_logged_while_the_cosignatures_are_below_the_quorum(gateway):
    db_path, key_path, _ = gateway
    w1, w2, w3 = _witness("w1.test"), _witness("w2.test"), _witness("w3.test")
    _cosign(db_path, key_path, w1, quorum=2)  # `provgw serve` with 3 witnesses, quorum 2
    keys = ("--witness-vkey", w1.verifier.vkey, "--witness-vkey", w2.verifier.vkey,
            "--witness-vkey", w3.verifier.vkey)  # fmt: skip
    code, out = _prove(db_path, key_path, *keys, "--quorum", "2")
    assert (code, out["state"], out["recorded_state"]) == (0, "logged", "logged")
    # The cosignature is kept in the receipt all the same: a verifier satisfied by one counts it.
    code, out = _prove(db_path, key_path, *keys, "--quorum", "1")
    assert (code, out["state"], out["witnesses"], out["recorded_state"]) == (
        0,
        "witnessed",
        ["w1.test"],
        "logged",
    )
    text = _run("log", "prove", "5", "--db", str(db_path), "--key", str(key_path))
    assert "state recorded by the gateway: logged" in text.stdout
    # The second cosignature reaches the quorum: the service records it, both states agree.
    key = load_gateway_key(key_path)
    with Database(db_path) as db:
        log = TransparencyLog(db, key.signer)
        signed = note.open_checkpoint(log.checkpoint(_CHECKPOINT_SIZE).note, key.verifier)
        line = w3.sign(signed.note.text, timestamp=1_700_000_001).line
        log.add_cosignatures(_CHECKPOINT_SIZE, [line])
        log.mark_witnessed(_CHECKPOINT_SIZE, NOW)
    code, out = _prove(db_path, key_path, *keys, "--quorum", "2")
    assert (code, out["state"], out["witnesses"], out["recorded_state"]) == (
        0,
        "witnessed",
        ["w1.test", "w3.test"],
        "witnessed",
    )


def test_a_wrong_witness_key_never_yields_witnessed(gateway, tmp_path):
    db_path, key_path, _ = gateway
    w1 = _witness("w1.test")
    _cosign(db_path, key_path, w1)
    # Another key under the same name, a witness that did not cosign, the log's own key.
    impostor, absent = _witness("w1.test"), _witness("w2.test")
    for vkey in (impostor.verifier.vkey, absent.verifier.vkey):
        code, out = _prove(db_path, key_path, "--witness-vkey", vkey)
        assert (code, out["state"], out["witnesses"]) == (0, "logged", [])
    vkey_file = tmp_path / "impostor.vkey"
    vkey_file.write_text(impostor.verifier.vkey + "\n", encoding="ascii")
    code, out = _prove(db_path, key_path, "--witness-vkey", str(vkey_file))
    assert (code, out["state"]) == (0, "logged")
    log_vkey = load_gateway_key(key_path).verifier.vkey
    assert _run("log", "prove", "5", "--db", str(db_path), "--key", str(key_path),
                "--witness-vkey", log_vkey).exit_code == 2  # fmt: skip
    assert _run("log", "prove", "5", "--db", str(db_path), "--key", str(key_path),
                "--witness-vkey", w1.verifier.vkey, "--quorum", "2").exit_code == 2  # fmt: skip


def test_a_forged_cosignature_by_a_given_witness_refuses_the_receipt(gateway):
    db_path, key_path, _ = gateway
    w1 = _witness("w1.test")
    assert _run("log", "checkpoint", "--db", str(db_path), "--key", str(key_path)).exit_code == 0
    # w1's key signed another head of the same size: the line names w1 but does not verify.
    fork = note.Checkpoint("provgw.test/log", _CHECKPOINT_SIZE, b"\x07" * 32).to_text()
    with Database(db_path) as db:
        log = TransparencyLog(db, load_gateway_key(key_path).signer)
        log.add_cosignatures(_CHECKPOINT_SIZE, [w1.sign(fork, timestamp=1_700_000_000).line])
    code, out = _prove(db_path, key_path, "--witness-vkey", w1.verifier.vkey)
    assert (code, out["reason"]) == (1, "bad-signature")


def test_a_cosignature_dated_in_the_future_does_not_count(gateway):
    db_path, key_path, _ = gateway
    w1 = _witness("w1.test")
    _cosign(db_path, key_path, w1, timestamp=int(time.time()) + 3600)
    code, out = _prove(db_path, key_path, "--witness-vkey", w1.verifier.vkey)
    assert (code, out["state"], out["recorded_state"]) == (0, "logged", "witnessed")


def test_an_anchor_is_recorded_and_shown_as_a_claim_never_as_verified(gateway):
    db_path, key_path, _ = gateway
    w1 = _witness("w1.test")
    _cosign(db_path, key_path, w1)
    with Database(db_path) as db:
        log = TransparencyLog(db, load_gateway_key(key_path).signer)
        log.record_anchor(_CHECKPOINT_SIZE, chain="eip155:2033", tx=b"\x01" * 32, block=7, now=NOW)
    code, out = _prove(db_path, key_path, "--witness-vkey", w1.verifier.vkey)
    assert (code, out["state"], out["recorded_state"]) == (0, "witnessed", "anchored")
    assert out["anchor_claimed"] == {"chain": "eip155:2033", "tx": "01" * 32, "block": 7}
    text = _run("log", "prove", "5", "--db", str(db_path), "--key", str(key_path))
    assert "anchor claimed: eip155:2033 block 7" in text.stdout
    assert "not looked up on the chain" in text.stdout


def test_prove_takes_the_witness_keys_and_quorum_from_gateway_toml(gateway, gateway_site, tmp_path):
    db_path, key_path, _ = gateway
    embedded, remote, other = _witness("gw/witness"), _witness("w2.test"), _witness("w3.test")
    (tmp_path / "witness.key").write_text(embedded.skey() + "\n", encoding="ascii")
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[broker]\nconfig_dir = "{gateway_site.config.directory}"\n'
        f'[trust]\ndir = "{gateway_site.pki / "trust"}"\n'
        '[store]\npath = "gw.sqlite3"\n[ingest]\nworkers = 2\n'
        '[witnesses]\nembedded_key = "witness.key"\nquorum = 2\n'
        f'remote = [{{ url = "http://127.0.0.1:7380", vkey = "{remote.verifier.vkey}" }}]\n',
        encoding="utf-8",
    )
    _cosign(db_path, key_path, embedded, other)
    # The quorum of gateway.toml is 2; w3 is not one of its witnesses.
    code, out = _prove(db_path, key_path, "--config", str(config))
    assert (code, out["state"], out["witness_keys"], out["witness_quorum"]) == (0, "logged", 2, 2)
    code, out = _prove(db_path, key_path, "--config", str(config), "--witness-vkey",
                       other.verifier.vkey)  # fmt: skip
    assert (code, out["state"], out["witnesses"]) == (0, "witnessed", ["gw/witness", "w3.test"])
    code, out = _prove(db_path, key_path, "--config", str(config), "--quorum", "1")
    assert (code, out["state"], out["witnesses"]) == (0, "witnessed", ["gw/witness"])


def test_prove_with_another_gateways_key_says_it_is_the_wrong_key(gateway, tmp_path):
    db_path, key_path, _ = gateway
    assert _run("log", "checkpoint", "--db", str(db_path), "--key", str(key_path)).exit_code == 0
    other = tmp_path / "other.key"
    keygen = _run("log", "keygen", "--out", str(other), "--origin", "provgw.test/log")
    assert keygen.exit_code == 0
    code, out = _json("log", "prove", "3", "--db", str(db_path), "--key", str(other))
    assert (code, out["reason"]) == (1, "wrong-log-key")
    assert "did not sign the checkpoints" in out["error"]


def test_one_witness_key_under_two_names_is_refused_before_it_could_count_twice(
    gateway, gateway_site
):
    db_path, key_path, _ = gateway
    w1 = _witness("w1.test")
    _cosign(db_path, key_path, w1)
    pub = w1.verifier.public_key
    alias = note.Verifier("w1-again.test", note.key_id("w1-again.test", note.COSIGNATURE_V1, pub),
                          note.COSIGNATURE_V1, pub)  # fmt: skip
    both = ("--witness-vkey", w1.verifier.vkey, "--witness-vkey", alias.vkey, "--quorum", "2")
    result = _run("log", "prove", "5", "--db", str(db_path), "--key", str(key_path), *both)
    assert result.exit_code == 2
    assert "given under two names" in result.output
    trust = str(gateway_site.pki / "trust")
    audit = _run("audit", "verify", str(db_path), "--trust", trust, "--key", str(key_path), *both)
    assert audit.exit_code == 2
    assert "given under two names" in audit.output
