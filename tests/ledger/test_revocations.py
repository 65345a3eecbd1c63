"""Device revocations in the transparency log: logged with the flag, re-derived by verify_log."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from gateway.core.errors import MalformedError, MismatchError, PolicyError
from gateway.ledger import commitments
from gateway.ledger.keys import GatewayKey
from gateway.ledger.log import TransparencyLog, revoke_device, verify_log
from gateway.store.devices import DeviceStore
from gateway.store.events import EventRecord, EventStore

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ORIGIN = "provgw.test/log"


@pytest.fixture
def key():
    return GatewayKey.generate(ORIGIN)


@pytest.fixture
def fleet(db, key):
    """Two enrolled devices with two events each, logged and sealed."""
    devices = DeviceStore(db)
    for n in (1, 2):
        devices.enrol(
            device_id=f"pump-{n}",
            manufacturer="acme",
            kid=b"kid-%d" % n,
            cert=b"cert-%d" % n,
            chain=[],
            now_ms=1_000,
        )
    EventStore(db).insert_batch(
        [
            EventRecord(f"pump-{n}", seq, "maintenance", 0, 0, "ward-4", "t", b"s-%d-%d" % (n, seq))
            for n in (1, 2)
            for seq in (1, 2)
        ]
    )
    log = TransparencyLog(db, key.signer, ORIGIN)
    log.append_pending()
    log.seal(NOW)
    return log


def test_a_revocation_is_logged_with_the_flag_and_verifies(db, key, fleet):
    revocation = revoke_device(db, "pump-1", "stolen from ward 4", NOW)
    fleet.seal(NOW)
    assert DeviceStore(db).get("pump-1").revoked_reason == "stolen from ward 4"
    assert DeviceStore(db).get("pump-1").revoked_ms == revocation.revoked_ms
    report = verify_log(db, key.verifier)
    assert (report.events, report.revocations, report.leaves) == (4, 1, 5)
    # The leaf commits to (device, reason digest, time) under the record's salt only.
    leaf = fleet.leaf(revocation.leaf_index)
    assert leaf is not None
    assert (leaf.kind, leaf.ref_id) == ("revocation", revocation.revocation_id)
    salt = db.query("SELECT salt FROM device_revocations")[0][0]
    digest = commitments.revocation_digest(
        "pump-1", hashlib.sha256(b"stolen from ward 4").digest(), revocation.revoked_ms
    )
    assert leaf.commitment == commitments.commitment("revocation", salt, digest)
    assert b"pump-1" not in leaf.commitment


@pytest.mark.usefixtures("fleet")
def test_revoking_again_keeps_the_first_and_logs_nothing_more(db):
    first = revoke_device(db, "pump-1", "stolen", NOW)
    again = revoke_device(db, "pump-1", "found", NOW.replace(hour=13))
    assert again.already is True
    assert (again.revocation_id, again.leaf_index, again.reason) == (
        first.revocation_id,
        first.leaf_index,
        "stolen",
    )
    assert db.query("SELECT count(*) FROM log_leaves WHERE kind = 'revocation'") == [(1,)]


@pytest.mark.usefixtures("fleet")
def test_an_unknown_device_or_no_reason_is_refused_and_nothing_is_logged(db):
    with pytest.raises(MalformedError) as unknown:
        revoke_device(db, "ghost", "lost", NOW)
    assert unknown.value.reason == "unknown-device"
    with pytest.raises(PolicyError):
        revoke_device(db, "pump-1", "  ", NOW)
    assert db.query("SELECT count(*) FROM device_revocations") == [(0,)]
    assert db.query("SELECT revoked_ms FROM devices WHERE device_id = 'pump-1'") == [(None,)]


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        # Trusted again quietly: the flag ingest reads no longer says what the log does.
        ("UPDATE devices SET revoked_ms = NULL WHERE device_id = 'pump-1'", "claim-mismatch"),
        # Backdated: the revocation moved in time, in both places.
        (
            "UPDATE devices SET revoked_ms = 5; UPDATE device_revocations SET revoked_ms = 5",
            "commitment-mismatch",
        ),
        # Its reason rewritten.
        ("UPDATE device_revocations SET reason = 'scrapped'", "commitment-mismatch"),
        # The record deleted: the log vouches for a revocation the gateway no longer shows.
        ("DELETE FROM device_revocations", "missing-record"),
        # Another device revoked where no party can see it (no record, no leaf).
        ("UPDATE devices SET revoked_ms = 7 WHERE device_id = 'pump-2'", "missing-record"),
    ],
)
def test_verify_log_catches_a_revocation_altered_outside_the_gateway(
    db, key, fleet, tamper, reason
):
    revoke_device(db, "pump-1", "stolen from ward 4", NOW)
    fleet.seal(NOW)
    db.conn.executescript(tamper)
    with pytest.raises(MismatchError) as caught:
        verify_log(db, key.verifier)
    assert caught.value.reason == reason


@pytest.mark.usefixtures("fleet")
def test_revoking_again_refuses_a_record_the_log_does_not_hold(db):
    # A record inserted behind the gateway's back (no leaf): revoking again must not report it as
    # the logged revocation; it says where to look instead.
    first = revoke_device(db, "pump-1", "stolen", NOW)
    db.conn.execute("DELETE FROM log_leaves WHERE kind = 'revocation'")
    with pytest.raises(MismatchError) as caught:
        revoke_device(db, "pump-1", "stolen", NOW)
    assert caught.value.reason == "missing-record"
    assert "provgw log verify" in str(caught.value)
    assert db.query("SELECT id FROM device_revocations") == [(first.revocation_id,)]
