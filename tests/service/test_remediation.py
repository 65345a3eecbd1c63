"""Remediation tracking from stored device reports and offer timeouts (real SQLite file)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.core.cbor import dumps, strict_loads
from gateway.core.errors import MismatchError
from gateway.core.recall import Recall
from gateway.ledger.keys import GatewayKey
from gateway.ledger.log import TransparencyLog, append_pending, erase_event, verify_log
from gateway.service import remediation
from gateway.service.claims import verify_urgent_claims
from gateway.service.remediation import (
    RemediationTracker,
    Retry,
    RetryPolicy,
    log_pending_records,
    read_report,
    record,
    sbom_verdict,
)
from gateway.store.inventory import Inventory
from gateway.store.manifests import ManifestStore, load_manifest_trust
from gateway.store.offers import campaign_id
from gateway.store.recalls import RecallStore, load_recall_trust
from tests._helpers import cose_signed

RECALLS = Path(__file__).resolve().parents[2] / "firmware_manifests" / "recalls"
RECALL = Recall.from_bytes(
    (RECALLS / "Z-0412-2026.recall.cbor").read_bytes(), trust=load_recall_trust(RECALLS / "trust")
)
REMEDY = RECALL.fields.remedy.manifest
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DEVICES = ("pump-1", "pump-2")


def _ms(when):
    return int(when.timestamp() * 1000)


@pytest.fixture
def tracker(db):
    Inventory(db).import_rows(
        [
            {
                "id": device,
                "manufacturer_slug": "acme-infusion",
                "model": "Volara LVP 3",
                "gtin": "00850034100319",
                "serial": f"VL3-260000{i}",
                "site": "riverside-general",
                "firmware_version": "4.2.9",
            }
            for i, device in enumerate(DEVICES, 1)
        ],
        now=T0,
    )
    recalls = RecallStore(db)
    recalls.accept(RECALL, now=T0)
    assert {i.device_id for i in recalls.record_impact(RECALL, now=T0).affected} == set(DEVICES)
    return RemediationTracker(db, policy=RetryPolicy(timeout_s=10, max_attempts=2, backoff=3))


_seq = iter(range(1, 10_000))


def _report(db, device, result, *, trigger="recall", ref="Z-0412-2026", manifest=REMEDY):  # noqa: PLR0913 -- a report's fields
    body = {
        "from_version": "4.2.9",
        "to_version": "4.2.10",
        "manifest_digest": manifest,
        "image_digest": b"\x01" * 32,
        "result": result,
        "trigger": trigger,
        "cycle": "out_of_cycle",
    }
    if ref is not None:
        body["trigger_ref"] = ref
    seq = next(_seq)
    payload = dumps(
        {"v": 1, "type": "firmware_update", "device": device, "seq": seq, "time": 1, "body": body}
    )
    raw = cose_signed(payload)
    with db.atomic() as conn:
        conn.execute(
            "INSERT INTO events (device_id, seq, type, event_time_ms, received_ms, site, topic,"
            " raw, digest, salt) VALUES (?, ?, 'firmware_update', 1, ?, 's', 't', ?, ?, ?)",
            (device, seq, _ms(T0) + seq, raw, hashlib.sha256(raw).digest(), b"\0" * 32),
        )


def _state(db, device):
    return {r.device_id: r for r in RecallStore(db).remediation("Z-0412-2026")}[device]


def test_installed_report_naming_the_recall_marks_the_device_installed(db, tracker):
    tracker.mark_offered("Z-0412-2026", "pump-1", b"offer", manifest=REMEDY, at_ms=_ms(T0))
    _report(db, "pump-1", "installed")
    assert tracker.apply_reports() == 1
    assert _state(db, "pump-1").state == "installed"
    assert _state(db, "pump-2").state == "pending"


def test_installed_is_final_a_late_failure_report_is_not_recorded_over_it(db, tracker):
    _offer_all(tracker)
    _report(db, "pump-1", "installed")
    tracker.apply_reports()
    _report(db, "pump-1", "failed")
    assert tracker.apply_reports() == 0
    assert _state(db, "pump-1").state == "installed"


def _offer_all(tracker):
    for device in DEVICES:
        tracker.mark_offered("Z-0412-2026", device, b"offer", manifest=REMEDY, at_ms=_ms(T0))


def test_failed_and_rejected_reports_show_as_failed_with_the_devices_reason(db, tracker):
    _offer_all(tracker)
    _report(db, "pump-1", "failed")
    _report(db, "pump-2", "rejected")
    assert tracker.apply_reports() == 2
    assert _state(db, "pump-1").state == "failed"
    assert _state(db, "pump-2").state == "failed"
    assert _state(db, "pump-2").detail.startswith("device reported rejected")


def test_report_installing_the_remedy_manifest_counts_whatever_its_trigger(db, tracker):
    _report(db, "pump-1", "installed", trigger="routine", ref=None)
    _report(db, "pump-2", "installed", trigger="routine", ref=None, manifest=b"\x02" * 32)
    tracker.apply_reports()
    assert _state(db, "pump-1").state == "installed"
    assert _state(db, "pump-2").state == "pending"  # another firmware fixes nothing here


def test_reports_are_read_once_from_the_trackers_own_cursor(db, tracker):
    _offer_all(tracker)
    _report(db, "pump-1", "failed")
    assert tracker.apply_reports() == 1
    assert tracker.apply_reports() == 0
    assert RemediationTracker(db).apply_reports() == 0  # the cursor is in the database


def test_offer_without_report_is_retried_with_backoff_then_unreachable(db, tracker):
    tracker.mark_offered("Z-0412-2026", "pump-1", b"offer 1", manifest=REMEDY, at_ms=_ms(T0))
    assert tracker.due(T0 + timedelta(seconds=9)) == []
    t1 = T0 + timedelta(seconds=10)
    assert tracker.due(t1) == [Retry("Z-0412-2026", "pump-1", 2)]
    tracker.mark_offered("Z-0412-2026", "pump-1", b"offer 2", manifest=REMEDY, at_ms=_ms(t1))
    # Attempt 2 waits 10 s x 3: still offered after 29 s, unreachable at 30 s.
    assert tracker.due(t1 + timedelta(seconds=29)) == []
    assert _state(db, "pump-1").state == "offered"
    assert tracker.due(t1 + timedelta(seconds=30)) == []
    row = _state(db, "pump-1")
    assert (row.state, row.attempts) == ("unreachable", 2)
    # A device that shows up later and installs is still recorded as installed.
    _report(db, "pump-1", "installed")
    tracker.apply_reports()
    assert _state(db, "pump-1").state == "installed"


def test_status_lists_counts_and_devices_and_none_for_an_unknown_recall(db, tracker):
    tracker.mark_offered("Z-0412-2026", "pump-2", b"offer", manifest=REMEDY, at_ms=_ms(T0))
    _report(db, "pump-2", "failed")
    tracker.apply_reports()
    status = tracker.status("Z-0412-2026")
    assert status.counts == {"pending": 1, "failed": 1}
    assert status.to_json()["recall"]["remedy"]["manifest"] == REMEDY.hex()
    assert tracker.status("Z-9999-2026") is None


def test_remediation_records_reach_the_transparency_log_and_the_log_verifies(db, tracker):
    tracker.mark_offered("Z-0412-2026", "pump-1", b"offer", manifest=REMEDY, at_ms=_ms(T0))
    _report(db, "pump-1", "installed")
    tracker.apply_reports()
    key = GatewayKey.generate("remediation-test.example/log")
    log = TransparencyLog(db, key.signer)
    assert log_pending_records(db, log) == 2
    assert log_pending_records(db, log) == 0
    kinds = db.query("SELECT kind, count(*) FROM log_leaves GROUP BY kind")
    assert kinds == [("remediation", 2)]
    log.seal(T0)
    report = verify_log(db, key.verifier)
    assert (report.urgent_records, report.other_records) == (2, 0)


def _read_plans(db, action) -> list[tuple[str, str]]:
    """Run *action*; return each SELECT it ran with SQLite's query plan for it."""
    statements: list[str] = []
    db.conn.set_trace_callback(statements.append)
    try:
        action()
    finally:
        db.conn.set_trace_callback(None)
    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    return [
        (sql, " ".join(row[3] for row in db.conn.execute("EXPLAIN QUERY PLAN " + sql)))
        for sql in reads
    ]


def test_only_the_reports_of_devices_with_an_open_campaign_are_read(db, tracker, monkeypatch):
    # Most firmware reports answer no campaign (a routine rollout); reading each cost a COSE
    # decode and two queries, ~18 us a report (measured), for nothing to move.
    _report(db, "monitor-9", "installed", trigger="routine", ref=None)  # no recall, no offer
    _report(db, "pump-1", "installed")
    _report(db, "pump-2", "installed")
    RecallStore(db).set_state("Z-0412-2026", "pump-2", "installed", at_ms=_ms(T0))  # done
    read = []

    def counting(row):
        read.append(row[1])
        return read_report(row)

    monkeypatch.setattr(remediation, "read_report", counting)
    assert tracker.apply_reports() == 1
    assert read == ["pump-1"]
    assert _state(db, "pump-1").state == "installed"
    # The cursor moved past all three: none is read again.
    assert tracker.apply_reports() == 0
    assert read == ["pump-1"]


def test_applying_a_report_looks_up_the_devices_recalls_by_index_not_by_scan(db, tracker):
    # During a recall every firmware report looks up the reporting device's open recalls, inside
    # the urgent lane's write transaction: a scan of every impact row (1.44 ms a report with
    # 60,000 rows, measured) would hold ingest's write lock for seconds a second.
    tracker.mark_offered("Z-0412-2026", "pump-1", b"offer", manifest=REMEDY, at_ms=_ms(T0))
    _report(db, "pump-1", "installed")
    plans = _read_plans(db, tracker.apply_reports)
    assert any("recall_impacts" in sql and "device_id =" in sql for sql, _ in plans)
    assert not [(sql, plan) for sql, plan in plans if "SCAN recall_impacts" in plan]


def test_the_reports_are_read_by_index_and_an_idle_tick_writes_nothing(db, tracker):
    # Every tick the lane reads the firmware reports since its two cursors (the inventory's
    # and its own). Reading every event since a cursor to look at its type was nine routine
    # rows for each report with the fleet's mix, at the rate ingest stores them.
    tracker.mark_offered("Z-0412-2026", "pump-1", b"offer", manifest=REMEDY, at_ms=_ms(T0))
    _report(db, "pump-1", "installed")
    plans = _read_plans(db, tracker.apply_reports)
    event_reads = [(sql, plan) for sql, plan in plans if "FROM events" in sql]
    assert len(event_reads) >= 2  # at least one read per cursor
    assert all("USING INDEX events_firmware_reports" in plan for _, plan in event_reads)
    assert _state(db, "pump-1").state == "installed"
    # A tick with no new report writes nothing: no WAL frame, no cursor row rewritten.
    changes = db.conn.total_changes
    assert tracker.apply_reports() == 0
    assert db.conn.total_changes == changes


def test_the_timeout_check_reads_only_offers_old_enough_to_be_due(db, tracker):
    # Every tick (0.25 s) the lane asks which offers timed out; with 20,000 fresh offers of a
    # campaign, reading them all cost 16.6 ms a tick (measured). Only offers sent at least one
    # timeout ago (10 s here) can be due, and only they are read.
    _offer_all(tracker)  # offered at T0
    assert tracker.due(T0 + timedelta(seconds=9)) == []
    plans = _read_plans(db, lambda: tracker.due(T0 + timedelta(seconds=9)))
    assert any("recall_impacts" in sql for sql, _ in plans)
    assert not [(sql, plan) for sql, plan in plans if "SCAN" in plan]
    assert {r.device_id for r in tracker.due(T0 + timedelta(seconds=11))} == set(DEVICES)


# -- provgw log verify: what each urgent-lane record claims ---------------------------------------

MANIFESTS = Path(__file__).resolve().parents[2] / "firmware_manifests"
URGENT_MANIFEST = (
    MANIFESTS / "samples/acme-infusion/volara-lvp-3/4.2.10/manifest.cbor"
).read_bytes()
CAMPAIGN = campaign_id(b"\x07" * 32)


def _urgent_lane(db, tracker):
    """Every kind of urgent-lane record, written the way the urgent lane writes it.

    pump-1 installed and pump-2 failed (device reports), pump-3 unreachable (urgent-manifest
    campaign, two timed-out offers), three offers in all, the recall accepted, the SBOM verdict.
    """
    # The recall row and the SBOM verdict, as gateway/service/urgent.py records them.
    record(db, "recall", state=RECALL.fields.status, digest=hashlib.sha256(RECALL.raw).digest(),
           at_ms=_ms(T0), recall_id=RECALL.recall_id, manifest=REMEDY)  # fmt: skip
    manifest = ManifestStore(db).accept(
        URGENT_MANIFEST, trust=load_manifest_trust(MANIFESTS / "trust"), now=T0,
        check_sbom_quality=False,
    )  # fmt: skip
    state, detail = sbom_verdict(manifest.sbom)
    record(db, "sbom-verdict", state=state, digest=hashlib.sha256(manifest.sbom).digest(),
           at_ms=_ms(T0), manifest=manifest.digest, detail=detail)  # fmt: skip
    _offer_all(tracker)
    _report(db, "pump-1", "installed")
    _report(db, "pump-2", "failed")
    assert tracker.apply_reports() == 2
    tracker.mark_offered(CAMPAIGN, "pump-3", b"offer 3", manifest=b"\x07" * 32, at_ms=_ms(T0))
    t1 = T0 + timedelta(seconds=10)
    assert tracker.due(t1) == [Retry(CAMPAIGN, "pump-3", 2)]
    tracker.mark_offered(CAMPAIGN, "pump-3", b"offer 4", manifest=b"\x07" * 32, at_ms=_ms(t1))
    assert tracker.due(t1 + timedelta(seconds=30)) == []


def _row_id(db, kind, state, device=None):
    return db.query(
        "SELECT id FROM urgent_records WHERE kind = ? AND state = ? AND device_id IS ?",
        (kind, state, device),
    )[0][0]


def _log_everything(db):
    key = GatewayKey.generate("claims-test.example/log")
    log = TransparencyLog(db, key.signer)
    append_pending(db)
    log_pending_records(db, log)
    log.seal(T0)
    return key


def test_intact_urgent_records_pass_with_counts_per_kind_and_state(db, tracker):
    _urgent_lane(db, tracker)
    key = _log_everything(db)
    assert verify_log(db, key.verifier).urgent_records == 9
    report = verify_urgent_claims(db)
    assert report.checked == {
        "recall/ongoing": 1,
        "remediation/failed": 1,
        "remediation/installed": 1,
        "remediation/unreachable": 1,
        "sbom-verdict/pass": 1,
    }
    assert report.erased == 0
    assert report.not_recomputable == {"offered (offer bytes not kept)": 4}
    assert report.to_json()["checked_total"] == 5
    assert "5 recomputed" in report.summary()


def _other_report_digest(db):
    return db.query("SELECT digest FROM events WHERE device_id = 'pump-2'")[0][0]


# Each edit an insider could make to a row; the log commits to whatever the row says when the
# recorder thread logs it, so verify_log alone passes every one of them (asserted below).
TAMPERING = {
    "installed shown as failed": (
        ("remediation", "installed", "pump-1"), "state = 'failed'", "reported 'installed'"
    ),
    "failed shown as installed": (
        ("remediation", "failed", "pump-2"), "state = 'installed'", "reported 'failed'"
    ),
    "install moved to another device": (
        ("remediation", "installed", "pump-1"), "device_id = 'pump-2'", "a report of device pump-1"
    ),
    "another manifest claimed": (
        ("remediation", "installed", "pump-1"), "manifest = zeroblob(32)", "reported manifest"
    ),
    "install moved in time": (
        ("remediation", "installed", "pump-1"), "at_ms = at_ms - 3600000", "was received at"
    ),
    "install claimed for another recall": (
        ("remediation", "installed", "pump-1"), "recall_id = 'Z-0413-2026'", "recall Z-0413-2026"
    ),
    "failure detail rewritten": (
        ("remediation", "failed", "pump-2"), "detail = 'device reported installed'", "detail"
    ),
    "digest pointed at another device's report": (
        ("remediation", "installed", "pump-1"), None, "a report of device pump-2"
    ),
    "timeout moved in time": (
        ("remediation", "unreachable", "pump-3"), "at_ms = at_ms + 1", "is not what its digest"
    ),
    "timeout moved to another device": (
        ("remediation", "unreachable", "pump-3"), "device_id = 'pump-1'", "is not what its digest"
    ),
    "recall shown as terminated": (
        ("recall", "ongoing", None), "state = 'terminated'", "has status 'ongoing'"
    ),
    "failed SBOM shown as passing": (
        ("sbom-verdict", "pass", None), "state = 'fail'", "gives 'pass'"
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_a_tampered_urgent_record_is_named_though_the_log_verifies(db, tracker, case):
    row, assignment, says = TAMPERING[case]
    _urgent_lane(db, tracker)
    row_id = _row_id(db, *row)
    if assignment is None:
        db.conn.execute(
            "UPDATE urgent_records SET digest = ? WHERE id = ?", (_other_report_digest(db), row_id)
        )
    else:
        db.conn.execute(f"UPDATE urgent_records SET {assignment} WHERE id = ?", (row_id,))  # noqa: S608 -- fixed test text
    key = _log_everything(db)
    verify_log(db, key.verifier)  # the commitment binds the digest and salt only
    with pytest.raises(MismatchError) as caught:
        verify_urgent_claims(db)
    assert caught.value.reason == "claim-mismatch"
    assert f"Urgent-lane record {row_id} " in caught.value.message
    assert says in caught.value.message


def test_a_failure_shown_as_installed_in_the_record_and_in_the_stored_bytes_fails_the_log(
    db, tracker
):
    # The store keeps no unsigned copy of a report to edit along with the record (migration
    # 0014): an insider must edit the signed bytes themselves, and the log catches that.
    _urgent_lane(db, tracker)
    row_id = _row_id(db, "remediation", "failed", "pump-2")
    db.conn.execute(f"UPDATE urgent_records SET {TAMPERING['failure detail rewritten'][1]},"  # noqa: S608 -- fixed test text
                    " state = 'installed' WHERE id = ?", (row_id,))  # fmt: skip
    key = _log_everything(db)
    raw = bytes(db.query("SELECT raw FROM events WHERE device_id = 'pump-2'")[0][0])
    edited = raw.replace(b"failed", b"instal")  # same length: still a well-formed message
    assert edited != raw
    db.conn.execute("UPDATE events SET raw = ? WHERE device_id = 'pump-2'", (edited,))
    with pytest.raises(MismatchError):
        verify_log(db, key.verifier)


def test_a_record_whose_report_was_erased_counts_as_unverifiable_not_failed(db, tracker):
    _urgent_lane(db, tracker)
    _log_everything(db)
    event_id = db.query("SELECT id FROM events WHERE device_id = 'pump-1'")[0][0]
    erase_event(db, event_id, "device returned to the manufacturer", T0)
    report = verify_urgent_claims(db)
    assert report.erased == 1
    assert "remediation/installed" not in report.checked
    assert report.checked["remediation/failed"] == 1
    # The erased report's time is still kept, and still binds the record's.
    db.conn.execute(
        "UPDATE urgent_records SET at_ms = 0 WHERE id = ?",
        (_row_id(db, "remediation", "installed", "pump-1"),),
    )
    with pytest.raises(MismatchError, match="was received at"):
        verify_urgent_claims(db)


def test_a_recall_revision_replaced_since_is_counted_not_recomputable(db, tracker):
    _urgent_lane(db, tracker)
    db.conn.execute("UPDATE urgent_records SET digest = zeroblob(32) WHERE kind = 'recall'")
    report = verify_urgent_claims(db)
    assert "recall/ongoing" not in report.checked
    assert report.not_recomputable["recall (revision replaced, its bytes not kept)"] == 1


def _revise_recall_remedy(db, revision: int) -> None:
    """The kept recall becomes a later revision whose remedy is another manifest."""
    fields = dict(strict_loads(RECALL.fields.to_cbor()))
    fields["revision"] = revision
    fields["remedy"] = {**fields["remedy"], "manifest": b"\x09" * 32}
    db.conn.execute(
        "UPDATE recalls SET revision = ?, payload = ? WHERE recall_id = ?",
        (revision, dumps(fields), RECALL.recall_id),
    )


@pytest.mark.parametrize(("revision", "flagged"), [(1, True), (2, False)])
def test_an_install_counted_by_a_remedy_since_revised_is_not_recomputable(
    db, tracker, revision, flagged
):
    # A routine install of the remedy (not naming the recall) counted for the recall. If the kept
    # recall is a later revision with another remedy, the rule cannot be re-applied: counted, not
    # called tampering. The same row under revision 1 (the remedy edited in place) is flagged.
    tracker.mark_offered("Z-0412-2026", "pump-1", b"offer", manifest=REMEDY, at_ms=_ms(T0))
    _report(db, "pump-1", "installed", trigger="routine", ref=None)
    assert tracker.apply_reports() == 1
    _revise_recall_remedy(db, revision)
    if flagged:
        with pytest.raises(MismatchError, match="does not remediate recall"):
            verify_urgent_claims(db)
    else:
        report = verify_urgent_claims(db)
        assert "remediation/installed" not in report.checked
        assert (
            report.not_recomputable[
                "remediation by an earlier revision's remedy (that revision not kept)"
            ]
            == 1
        )
