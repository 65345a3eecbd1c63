"""`provgw audit export | verify`: a device's history, checked offline by another party."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
import time
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from device_sim import pki as sim_pki
from device_sim.events import SimDevice, make_event
from gateway.core.note import COSIGNATURE_V1, Signer
from gateway.core.recall import Recall
from gateway.ingest.topics import event_topic
from gateway.ledger.keys import GatewayKey, write_gateway_key
from gateway.ledger.log import TransparencyLog, erase_event, revoke_device
from gateway.service.ingest import Delivery
from gateway.service.remediation import (
    log_pending_records,
    read_report,
    record,
    report_outcome,
    unreachable_digest,
)
from gateway.store.db import Database
from gateway.store.events import EventStore
from gateway.store.recalls import RecallStore, load_recall_trust
from gateway.store.trust_files import load_trust_dir
from gateway.views.audit import FORMAT, verify_audit
from tests._helpers import invoke_cli
from tests.service.test_quarantine import Site

KINDS = ("maintenance", "custody", "firmware_update", "maintenance")
RECALLS = Path(__file__).resolve().parents[2] / "firmware_manifests" / "recalls"
RECALL_ID = "Z-0412-2026"


class AuditSite(Site):
    """A site with a log key, one device's four events ingested, logged and sealed."""

    def __init__(self, pki, tmp_path) -> None:
        super().__init__(pki, tmp_path)
        self.key = GatewayKey.generate("provgw.test/log")
        self.key_path = tmp_path / "log.key"
        write_gateway_key(self.key_path, self.key)
        self.vkey = self.key.verifier.vkey
        self.trust = pki / "trust"
        self.out = tmp_path / "audit.zip"
        self.witnesses = [Signer.generate(f"w{i}.test", COSIGNATURE_V1) for i in range(2)]

    def add(self, *kinds: str, seal: bool = True, received_ms: int | None = None) -> None:
        self.ingest([self.message(self.other, kind=k, received_ms=received_ms) for k in kinds])
        if seal:
            self.seal()

    def seal(self, *, cosigned_by: int = 0) -> int:
        with Database(self.path) as db:
            log = TransparencyLog(db, self.key.signer)
            log.append_pending()
            signed = log.seal(datetime.now(UTC))
            size = log.size()
            if cosigned_by and signed is not None:
                lines = [
                    w.sign(signed.note.text, timestamp=int(time.time())).line
                    for w in self.witnesses[:cosigned_by]
                ]
                log.add_cosignatures(size, lines)
            return size

    def export(self, *extra):
        result = invoke_cli(
            "audit", "export", self.other, "--db", self.path, "--key", self.key_path,
            "-o", self.out, *extra,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        return result

    def verify(self, *extra, trust=None, path=None):
        return invoke_cli(
            "audit", "verify", path or self.out, "--trust", trust or self.trust,
            "--key", self.vkey, *extra,
        )  # fmt: skip

    def verify_json(self, *extra, **options):
        result = self.verify("--json", *extra, **options)
        return result.exit_code, json.loads(result.stdout)

    def rewrite(self, change) -> None:
        """Rewrite the bundle's parts through *change(parts)*, as a tamperer would."""
        with zipfile.ZipFile(self.out) as bundle:
            parts = {name: bundle.read(name) for name in bundle.namelist()}
        change(parts)
        with zipfile.ZipFile(self.out, "w") as bundle:
            for name, data in parts.items():
                bundle.writestr(name, data)


@pytest.fixture
def site(gateway_site, tmp_path):
    site = AuditSite(gateway_site.pki, tmp_path)
    site.add(*KINDS)
    return site


def _index(parts) -> dict:
    return json.loads(parts["audit.json"])


def test_an_exported_history_verifies_offline_with_only_public_keys(site):
    exported = site.export()
    assert "4 events and 0 erased" in exported.output
    with zipfile.ZipFile(site.out) as bundle:
        names = set(bundle.namelist())
        index = json.loads(bundle.read("audit.json"))
        with Database(site.path) as db:
            stored = EventStore(db).history(site.other)
        # The exact bytes the device signed, one part per event, named in the index.
        for entry, event in zip(index["events"], stored, strict=True):
            assert bundle.read(entry["message"]) == event.raw
            assert (entry["seq"], entry["type"], entry["salt"]) == (
                event.seq,
                event.type,
                event.salt.hex(),
            )
    assert index["format"] == FORMAT
    assert {"audit.json", "chain.pem", "README.txt"} <= names
    assert len([n for n in names if n.startswith("receipts/")]) == 4
    # No database, no private key: the roots, the gateway's vkey.
    result = site.verify()
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"VERIFIED {site.out}: device {site.other}")
    assert "4 verified: 0 witnessed, 4 logged, 0 not under a checkpoint yet" in result.output
    assert (
        "1 checkpoint(s) of provgw.test/log, one consistent log, up to 4 entries" in result.output
    )
    assert "certificate  accepted by the trust folder until" in result.output
    code, report = site.verify_json()
    assert (code, report["ok"], report["events"], report["gaps"], report["problems"]) == (
        0,
        True,
        4,
        [],
        [],
    )
    assert report["certificate"]["accepted"] is True


def test_witnessed_needs_the_quorum_of_the_witness_keys_given(site):
    site.add("custody", seal=False)
    site.seal(cosigned_by=2)
    site.export()
    vkeys = [a for w in site.witnesses for a in ("--witness-vkey", w.verifier.vkey)]
    code, report = site.verify_json(*vkeys, "--quorum", "2")
    assert (code, report["witnessed"], report["logged"]) == (0, 5, 0)
    # Without witness keys nothing is called witnessed, and requiring it then is refused.
    code, report = site.verify_json()
    assert (code, report["witnessed"], report["logged"]) == (0, 0, 5)
    refused = site.verify("--require-witnessed")
    assert refused.exit_code == 2
    assert "needs the witnesses' keys" in refused.output
    # A witness that did not cosign does not count towards the quorum.
    stranger = Signer.generate("w9.test", COSIGNATURE_V1)
    code, report = site.verify_json(
        vkeys[0], vkeys[1], "--witness-vkey", stranger.verifier.vkey, "--quorum", "2",
        "--require-witnessed",
    )  # fmt: skip
    assert (code, report["ok"], report["witnessed"]) == (1, True, 0)


def test_a_tampered_message_is_named_and_the_rest_still_verify(site):
    site.export()

    def flip(parts):
        name = _index(parts)["events"][1]["message"]
        data = bytearray(parts[name])
        data[-1] ^= 1  # the signature's last byte
        parts[name] = bytes(data)

    site.rewrite(flip)
    result = site.verify()
    assert result.exit_code == 1
    assert result.output.startswith("NOT VERIFIED")
    code, report = site.verify_json()
    assert (code, report["events"]) == (1, 3)
    assert [(p["what"], p["seq"], p["reason"]) for p in report["problems"]] == [
        ("event", 2, "bad-signature")
    ]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        # Another salt: the commitment is not the log's leaf.
        (lambda e: e.update(salt="00" * 32), "root-mismatch"),
        # The index says another seq than the device signed.
        (lambda e: e.update(seq=9), "index-mismatch"),
    ],
)
def test_an_index_that_lies_about_an_event_is_caught(site, change, reason):
    site.export()

    def lie(parts):
        index = _index(parts)
        change(index["events"][2])
        parts["audit.json"] = json.dumps(index).encode()

    site.rewrite(lie)
    code, report = site.verify_json()
    assert code == 1
    assert [p["reason"] for p in report["problems"]] == [reason]


def test_another_gateway_key_or_another_trust_folder_verifies_nothing(site, tmp_path):
    site.export()
    other = GatewayKey.generate("provgw.test/log").verifier.vkey
    result = invoke_cli(
        "audit", "verify", site.out, "--trust", site.trust, "--key", other, "--json"
    )
    report = json.loads(result.stdout)
    assert (result.exit_code, report["events"]) == (1, 0)
    assert len(report["problems"]) == 4
    # A trust folder without the device's manufacturer: no event's signer is trusted.
    shutil.copytree(site.trust, tmp_path / "no-maker")
    maker = next(r.manufacturer_slug for r in sim_pki.load_devices(site.pki) if r.id == site.other)
    for path in (tmp_path / "no-maker").glob(f"{maker}.*"):
        path.unlink()
    code, report = site.verify_json(trust=tmp_path / "no-maker")
    assert (code, report["events"], report["certificate"]["accepted"]) == (1, 0, False)
    assert {p["reason"] for p in report["problems"]} == {"untrusted-issuer"}


def test_a_withheld_event_shows_as_a_gap_in_the_signed_sequence(site):
    site.export()

    def withhold(parts):
        index = _index(parts)
        gone = index["events"].pop(1)
        del parts[gone["message"]], parts[gone["receipt"]]
        parts["audit.json"] = json.dumps(index).encode()

    site.rewrite(withhold)
    result = site.verify()
    assert result.exit_code == 0, result.output
    assert (
        "gaps         seq 2 not in the bundle: events lost, quarantined or withheld"
        in result.output
    )
    assert site.verify_json()[1]["gaps"] == [[2, 2]]


def test_parts_the_index_does_not_name_or_a_foreign_format_are_refused(site):
    site.export()
    site.rewrite(lambda parts: parts.update({"events/extra.cose": b"smuggled"}))
    code, report = site.verify_json()
    assert (code, report["reason"]) == (1, "malformed-audit")
    assert "does not name" in report["error"]
    site.out.write_bytes(b"PK\x03\x04 not a zip")
    code, report = site.verify_json()
    assert (code, report["reason"]) == (1, "malformed-audit")
    # A directory claiming millions of parts is refused before zipfile would parse it.
    end = b"PK\x05\x06" + bytes(8) + (64 << 20).to_bytes(4, "little") + bytes(6)
    site.out.write_bytes(b"PK\x03\x04" + bytes(100) + end)
    code, report = site.verify_json()
    assert (code, report["reason"]) == (1, "oversize-audit")


def test_an_arrival_time_out_of_range_is_a_clear_refusal(site):
    site.export()

    def far_future(parts):
        index = _index(parts)
        index["events"][0]["received_ms"] = 10**20
        parts["audit.json"] = json.dumps(index).encode()

    site.rewrite(far_future)
    code, report = site.verify_json()
    assert (code, report["reason"]) == (1, "malformed-audit")
    assert "is not a time" in report["error"]


def test_an_erased_first_contact_still_verifies_from_the_kept_chain(site):
    with Database(site.path) as db:
        first = EventStore(db).history(site.other)[0]
        erase_event(db, first.id, "data subject request", datetime.now(UTC))
    site.seal()
    exported = site.export()
    assert "3 events and 1 erased" in exported.output
    code, report = site.verify_json()
    assert (code, report["events"], report["erased"], report["gaps"]) == (0, 3, 1, [])
    # The erasure's record is checked too: another reason is not the logged one.

    def other_reason(parts):
        index = _index(parts)
        index["erased"][0]["erasure"]["reason"] = "tidying up"
        parts["audit.json"] = json.dumps(index).encode()

    site.rewrite(other_reason)
    code, report = site.verify_json()
    assert code == 1
    assert [(p["what"], p["seq"]) for p in report["problems"]] == [("erasure", 1)]


def test_the_sites_revocation_is_shown_and_checked_against_the_log(site):
    with Database(site.path) as db:
        revoke_device(db, site.other, "stolen from ward 4", datetime.now(UTC))
    site.seal()
    site.export()
    result = site.verify()
    assert result.exit_code == 0, result.output
    assert "revoked      by the site (logged): stolen from ward 4" in result.output


def test_a_revoked_certificate_refuses_only_what_arrived_after_its_revocation_date(site, tmp_path):
    # The manufacturer revokes the device's certificate after the four events: their history
    # stands, and the certificate is shown refused now.
    pki = tmp_path / "pki"
    shutil.copytree(site.pki, pki)
    sim_pki.revoke_device(pki, site.other)
    site.export()
    code, report = site.verify_json(trust=pki / "trust")
    assert (code, report["events"], report["problems"]) == (0, 4, []), report["problems"]
    assert (report["certificate"]["accepted"], report["certificate"]["reason"]) == (
        False,
        "revoked",
    )
    # Revoked before the fifth arrived (the gateway had no current CRL): that one is named.
    later = tmp_path / "pki-later"
    shutil.copytree(site.pki, later)
    sim_pki.revoke_device(later, site.other, now=datetime.now(UTC) + timedelta(minutes=1))
    site.add("custody", received_ms=int((time.time() + 120) * 1000))
    site.export()
    code, report = site.verify_json(trust=later / "trust")
    assert code == 1
    assert [(p["seq"], p["reason"]) for p in report["problems"]] == [(5, "revoked-before-receipt")]


def test_receipts_under_two_checkpoints_must_be_one_log(site):
    # The first checkpoint is witnessed, the second not: the old events' receipts stand under
    # the first (the strongest holding them), the new ones' under the second.
    with Database(site.path) as db:
        log = TransparencyLog(db, site.key.signer)
        size = log.size()
        signed = log.latest_checkpoint()
        assert signed is not None
        log.add_cosignatures(size, [site.witnesses[0].sign(signed.note.decode(), timestamp=1).line])
        log.mark_witnessed(size, datetime.now(UTC))
    site.add("custody", "maintenance")
    site.export()
    code, report = site.verify_json()
    assert (code, report["checkpoints"], report["tree_size"]) == (0, 2, 6)

    def break_proof(parts):
        index = _index(parts)
        proof = index["consistency"]["proofs"][0]["proof"]
        proof[0] = "00" * 32
        parts["audit.json"] = json.dumps(index).encode()

    site.rewrite(break_proof)
    code, report = site.verify_json()
    assert code == 1
    assert [p["what"] for p in report["problems"]] == ["consistency"]


def test_events_not_under_a_checkpoint_yet_go_in_without_a_receipt(site):
    site.add("custody", seal=False)
    exported = site.export("--json")
    assert json.loads(exported.stdout)["pending"] == 1
    code, report = site.verify_json()
    assert (code, report["events"], report["logged"], report["pending"]) == (0, 5, 4, 1)


def test_an_unknown_device_is_a_clear_refusal(site):
    result = invoke_cli(
        "audit", "export", "no-such-device", "--db", site.path, "--key", site.key_path,
        "-o", site.out,
    )  # fmt: skip
    assert result.exit_code == 1
    assert "never enrolled a device 'no-such-device'" in result.output
    assert not site.out.exists()


def test_the_library_call_reads_the_same_bundle(site):
    site.export()
    report = verify_audit(
        site.out.read_bytes(),
        trust=load_trust_dir(site.trust),
        key=site.key.verifier,
        now=datetime.now(UTC),
    )
    assert report.ok
    assert report.events == 4
    with zipfile.ZipFile(io.BytesIO(site.out.read_bytes())) as bundle:
        assert "provgw audit verify" in bundle.read("README.txt").decode()


def test_the_urgent_lanes_records_of_the_device_are_checked_against_its_reports(site):
    with Database(site.path) as db:
        report_event = next(
            e for e in EventStore(db).history(site.other) if e.type == "firmware_update"
        )
        report = read_report(
            (report_event.id, site.other, report_event.received_ms, report_event.raw,
             report_event.digest)
        )  # fmt: skip
        state, detail = report_outcome(report)
        # What the tracker records: the offer, the device's own report, a timeout elsewhere.
        at_ms = report_event.received_ms
        record(db, "remediation", state="offered", digest=b"\1" * 32, at_ms=at_ms - 5,
               recall_id="Z-1", device_id=site.other, manifest=report.manifest)  # fmt: skip
        record(db, "remediation", state=state, digest=report_event.digest, at_ms=at_ms,
               recall_id="Z-1", device_id=site.other, manifest=report.manifest,
               detail=detail)  # fmt: skip
        record(db, "remediation", state="unreachable", at_ms=at_ms + 9, recall_id="Z-2",
               device_id=site.other, digest=unreachable_digest("Z-2", site.other, at_ms + 9),
               detail="no report within 3 attempts")  # fmt: skip
        log_pending_records(db, TransparencyLog(db, site.key.signer))
    site.seal()
    site.export()
    code, report_json = site.verify_json()
    assert code == 0, report_json["problems"]
    assert [(r["state"], r["checked"]) for r in report_json["remediation"]] == [
        ("offered", "commitment only (the offer's bytes are not kept)"),
        (state, "recomputed; the recall's rule not re-applied (its notice was not checked)"),
        ("unreachable", "recomputed"),
    ]

    def relabel(parts):
        index = _index(parts)
        installed = index["remediation"][1]
        installed["state"] = "failed" if installed["state"] == "installed" else "installed"
        index["remediation"][2]["at_ms"] += 1  # the timeout moved in time
        parts["audit.json"] = json.dumps(index).encode()

    shown = site.verify().output
    assert "patch        Z-1: offered " in shown
    assert "patch        Z-2: unreachable " in shown
    site.rewrite(relabel)
    code, report_json = site.verify_json()
    assert code == 1
    assert [(p["what"], p["reason"]) for p in report_json["problems"]] == [
        ("remediation", "claim-mismatch"),
        ("remediation", "claim-mismatch"),
    ]


def _report(site, **body):
    """A firmware_update report of the site's device: a routine one, with *body* over it."""
    seq = site.seq[site.other] = site.seq.get(site.other, 0) + 1
    now_ms = int(time.time() * 1000)
    today = datetime.now(UTC).date()
    event = make_event(site.other, "firmware_update", seq, now_ms - 1000, site.rng, today=today)
    event = dataclasses.replace(event, body={**event.body, **body})
    raw = SimDevice.load(site.pki, site.other).sign(event, with_chain=False)
    site.ingest([Delivery(event_topic("icu", site.other, "firmware_update"), raw, seq, 1, now_ms)])
    with Database(site.path) as db:
        stored = EventStore(db).get(site.other, seq)
    return stored, read_report(
        (stored.id, site.other, stored.received_ms, stored.raw, stored.digest)
    )


def test_with_the_recall_keys_the_recall_notice_and_its_rule_are_checked_too(site):
    notice = (RECALLS / f"{RECALL_ID}.recall.cbor").read_bytes()
    recall = Recall.from_bytes(notice, trust=load_recall_trust(RECALLS / "trust"))
    assert recall.fields.revision == 1
    fixed, fixed_report = _report(site, trigger="recall", trigger_ref=RECALL_ID, result="installed")
    routine, routine_report = _report(site, result="installed")
    accepted_ms = int(time.time() * 1000)
    with Database(site.path) as db:
        # What the urgent lane keeps and logs when it takes in a notice.
        RecallStore(db).accept(recall, now=datetime.now(UTC))
        record(db, "recall", state=recall.fields.status, digest=hashlib.sha256(notice).digest(),
               at_ms=accepted_ms, recall_id=RECALL_ID,
               manifest=recall.fields.remedy.manifest)  # fmt: skip
        for event, report in ((fixed, fixed_report), (routine, routine_report)):
            state, detail = report_outcome(report)
            record(db, "remediation", state=state, digest=event.digest, at_ms=event.received_ms,
                   recall_id=RECALL_ID, device_id=site.other, manifest=report.manifest,
                   detail=detail)  # fmt: skip
        log_pending_records(db, TransparencyLog(db, site.key.signer))
    site.seal()
    site.export()
    # Without the recall keys: both records match their reports; the recall's rule is not run.
    code, report = site.verify_json()
    assert code == 0, report["problems"]
    assert {r["checked"] for r in report["remediation"]} == {
        "recomputed; the recall's rule not re-applied (its notice was not checked)"
    }
    # With them: the notice's 2-of-3 signatures verify, and the routine install, which names
    # neither the recall nor its remedy, cannot count for it.
    code, report = site.verify_json("--recall-trust", RECALLS / "trust")
    assert code == 1
    assert report["recalls"] == [
        {
            "recall_id": RECALL_ID,
            "revision": 1,
            "status": recall.fields.status,
            "accepted_ms": accepted_ms,
            "in_log": True,
        }
    ]
    assert (
        f"recall       {RECALL_ID} revision 1"
        in site.verify("--recall-trust", RECALLS / "trust").output
    )
    assert [r["checked"] for r in report["remediation"]] == ["recomputed, with the recall's rule"]
    assert [(p["what"], p["reason"]) for p in report["problems"]] == [
        ("remediation", "claim-mismatch")
    ]
    assert "does not remediate recall" in report["problems"][0]["detail"]

    def forge(parts):
        name = _index(parts)["recalls"][0]["notice"]
        data = bytearray(parts[name])
        data[-1] ^= 1
        parts[name] = bytes(data)

    def restate(parts):
        index = _index(parts)
        index["recalls"][0]["accepted"]["state"] = "terminated"
        parts["audit.json"] = json.dumps(index).encode()

    site.rewrite(restate)
    code, report = site.verify_json("--recall-trust", RECALLS / "trust")
    assert (code, report["problems"][0]["what"], report["problems"][0]["reason"]) == (
        1,
        "recall",
        "claim-mismatch",
    )
    site.rewrite(forge)
    code, report = site.verify_json("--recall-trust", RECALLS / "trust")
    assert code == 1
    assert report["problems"][0]["what"] == "recall"


def test_another_log_key_is_refused_at_export_not_handed_out_as_broken_receipts(site, tmp_path):
    other = tmp_path / "other.key"
    write_gateway_key(other, GatewayKey.generate("provgw.test/log"))
    result = invoke_cli(
        "audit", "export", site.other, "--db", site.path, "--key", other, "-o", site.out, "--json"
    )
    assert result.exit_code == 1
    assert json.loads(result.stdout)["reason"] == "wrong-log-key"
    assert not site.out.exists()
