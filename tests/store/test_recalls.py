from __future__ import annotations

import json
import math
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_manifests.recalls.generate import hardware_spec, mbedtls_spec
from gateway.core.errors import (
    MalformedError,
    MismatchError,
    PolicyError,
    ReplayError,
    RollbackError,
)
from gateway.core.recall import Recall, fields_from_spec, match_device, unsafe_recall_from_csaf
from gateway.store import recalls
from gateway.store.db import Database
from gateway.store.inventory import Inventory
from gateway.store.manifests import ManifestStore, load_manifest_trust
from gateway.store.recalls import RecallStore, load_recall_trust

ROOT = Path(__file__).resolve().parents[2] / "firmware_manifests"
NOW = datetime(2026, 2, 1, tzinfo=UTC)
VOLARA_GTIN = "00850034100319"
SYRIFLOW_GTIN = "00850034100425"


def _keep_sample_manifests(db: Database) -> None:
    trust = load_manifest_trust(ROOT / "trust")
    store = ManifestStore(db)
    paths = sorted(
        (ROOT / "samples").rglob("manifest.cbor"),
        key=lambda p: (p.parent.parent.name, [int(x) for x in p.parent.name.split(".")]),
    )
    for path in paths:
        store.accept(path.read_bytes(), trust=trust, now=NOW, check_sbom_quality=False)


def _row(gtin, model, serial, version=None, lot=None):
    row = {
        "id": f"{gtin}-{serial}",
        "manufacturer_slug": "acme-infusion",
        "model": model,
        "gtin": gtin,
        "serial": serial,
        "site": "riverside-general",
        "department": "icu",
    }
    if version:
        row["firmware_version"] = version
    if lot:
        row["lot"] = lot
    return row


def _recall(spec) -> Recall:
    fields = fields_from_spec(spec)
    return Recall(fields, b"\x01" * 32, signed=True, signers=("t",), source="notice", raw=b"")


@pytest.fixture
def fleet(db):
    _keep_sample_manifests(db)
    rows = [
        _row(VOLARA_GTIN, "Volara LVP 3", "VL3-2600001", "4.2.8"),
        _row(VOLARA_GTIN, "Volara LVP 3", "VL3-2600002", "4.2.9", lot="B2025-119"),
        _row(VOLARA_GTIN, "Volara LVP 3", "VL3-2600009", "4.2.10", lot="B2025-120"),
        _row(VOLARA_GTIN, "Volara LVP 3", "VL3-2600010"),
        _row(SYRIFLOW_GTIN, "SyriFlow S2 syringe pump", "SF2-2600017", "2.0.0"),
        _row(SYRIFLOW_GTIN, "SyriFlow S2 syringe pump", "SF2-2600018", "2.1.0"),
    ]
    Inventory(db).import_rows(rows, now=NOW)
    return db


def _said(match):
    # The store names the model in a model rule's detail; the reference has no model name.
    return (match.rule, match.kind, None if match.kind == "model" else match.detail)


def _naive(db, recall):
    store = RecallStore(db)
    store.index_sboms()
    components = store.sbom_components(recall.fields.vendor)
    out, unknown = {}, {}
    for row in Inventory(db).all():
        verdict = match_device(recall.fields, row.facts(), components)
        if verdict.affected:
            out[row.device_id] = [_said(m) for m in verdict.matches]
        elif verdict.undetermined:
            unknown[row.device_id] = [_said(m) for m in verdict.undetermined]
    return out, unknown


def _fast(db, recall):
    report = RecallStore(db).impact(recall)
    for devices in (report.affected, report.undetermined):
        assert [d.device_id for d in devices] == sorted(d.device_id for d in devices)
    return (
        {i.device_id: [_said(m) for m in i.matches] for i in report.affected},
        {u.device_id: [_said(m) for m in u.reasons] for u in report.undetermined},
    )


# Which way the impact query reads the inventory: through the rules' index ranges, or in one
# pass over the table (chosen by size; both must give the reference's answer).
READS = pytest.mark.parametrize("share", [math.inf, 0.0], ids=["index-ranges", "table-pass"])


def test_mbedtls_recall_hits_firmware_and_sbom_component_of_old_releases(fleet):
    report = RecallStore(fleet).impact(_recall(mbedtls_spec()))
    hit = {i.device_id: [m.kind for m in i.matches] for i in report.affected}
    assert hit == {
        f"{VOLARA_GTIN}-VL3-2600001": ["firmware", "component"],
        f"{VOLARA_GTIN}-VL3-2600002": ["firmware", "component"],
    }
    assert [u.device_id for u in report.undetermined] == [f"{VOLARA_GTIN}-VL3-2600010"]
    first = report.affected[0]
    assert "mbedtls 3.5.1" in first.matches[1].detail
    assert first.site == "riverside-general"


def test_hardware_recall_names_serial_lot_and_model_rules(fleet):
    report = RecallStore(fleet).impact(_recall(hardware_spec()))
    hit = {i.device_id: [m.kind for m in i.matches] for i in report.affected}
    assert hit == {
        f"{VOLARA_GTIN}-VL3-2600001": ["serial"],
        f"{VOLARA_GTIN}-VL3-2600002": ["serial", "lot"],
        f"{SYRIFLOW_GTIN}-SF2-2600017": ["model"],
        f"{SYRIFLOW_GTIN}-SF2-2600018": ["model"],
    }
    assert "SyriFlow S2 syringe pump" in report.affected[2].matches[0].detail
    # VL3-2600009 has lot B2025-120 (outside) and serial 9 (outside); 10 has no lot: undetermined
    assert [u.device_id for u in report.undetermined] == [f"{VOLARA_GTIN}-VL3-2600010"]


def test_a_firmware_update_report_moves_a_device_out_of_the_recall(fleet):
    inventory = Inventory(fleet)
    inventory.record_firmware(f"{VOLARA_GTIN}-VL3-2600001", "4.2.10", seq=5, at_ms=1)
    ids = [i.device_id for i in RecallStore(fleet).affected_devices(_recall(mbedtls_spec()))]
    assert ids == [f"{VOLARA_GTIN}-VL3-2600002"]


def test_sbom_index_is_built_once_per_manifest(fleet):
    store = RecallStore(fleet)
    assert store.index_sboms() == 9
    assert store.index_sboms() == 0


SERIALS = st.integers(min_value=2600000, max_value=2600030)
VERSIONS = st.sampled_from([None, "4.2.8", "4.2.9", "4.2.10", "4.2.9.1", "4.2.10-rc.1", "4.3.0"])
LOTS = st.sampled_from([None, "B2025-100", "B2025-110", "B2025-115", "B2025-119", "C2025-115"])
RULES = st.sampled_from(
    [
        {"kind": "model", "model": "Volara LVP 3"},
        {"kind": "model", "gtin": SYRIFLOW_GTIN},
        {"kind": "serial", "model": "Volara LVP 3", "from": "VL3-2600005", "to": "VL3-2600015"},
        {"kind": "serial", "gtin": VOLARA_GTIN, "from": "VL3-2600020", "to": "VL3-2600020"},
        {"kind": "lot", "model": "Volara LVP 3", "from": "B2025-110", "to": "B2025-115"},
        {"kind": "firmware", "model": "Volara LVP 3", "vers": "vers:semver/<4.2.10"},
        {"kind": "firmware", "model": "Volara LVP 3", "vers": "vers:semver/>=4.2.9|<4.3.0"},
        {"kind": "component", "purl": "pkg:github/mbed-tls/mbedtls", "vers": "vers:semver/<3.5.2"},
        {"kind": "component", "purl": "pkg:github/zephyrproject-rtos/zephyr",
         "vers": "vers:semver/>=3.6.0"},
        {"kind": "component", "model": "SyriFlow S2 syringe pump",
         "purl": "pkg:github/mbed-tls/mbedtls", "vers": "vers:semver/>=3.6.0"},
    ]
)  # fmt: skip
DEVICES = st.lists(
    st.tuples(st.booleans(), SERIALS, VERSIONS, LOTS),
    min_size=1,
    max_size=25,
    unique_by=lambda t: (t[0], t[1]),
)


def _fleet_rows(devices):
    rows = []
    for volara, number, version, lot in devices:
        if volara:
            rows.append(_row(VOLARA_GTIN, "Volara LVP 3", f"VL3-{number}", version, lot))
        else:
            v = {"4.2.8": "2.0.0", "4.2.9": "2.1.0"}.get(version or "", version)
            rows.append(_row(SYRIFLOW_GTIN, "SyriFlow S2 syringe pump", f"SF2-{number}", v, lot))
    return rows


@READS
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(devices=DEVICES, rules=st.lists(RULES, min_size=1, max_size=4))
def test_indexed_impact_equals_the_per_device_reference(
    tmp_path_factory, monkeypatch, share, devices, rules
):
    monkeypatch.setattr(recalls, "_SCAN_SHARE", share)
    with Database(tmp_path_factory.mktemp("fleet") / "gw.sqlite3") as db:
        _keep_sample_manifests(db)
        Inventory(db).import_rows(_fleet_rows(devices), now=NOW)
        recall = _recall({**mbedtls_spec(), "affected": rules})
        assert _fast(db, recall) == _naive(db, recall)


@READS
@pytest.mark.parametrize("count", [40, 256])
def test_recalls_with_many_rules_equal_the_per_device_reference(
    tmp_path, monkeypatch, share, count
):
    # Over 31 model/serial/lot rules: more outcomes than one integer holds. 256 (the most a
    # notice may have): more index ranges than one compound SELECT may hold, so the query reads
    # the table in one pass whatever the share.
    monkeypatch.setattr(recalls, "_SCAN_SHARE", share)
    lots = ["B2025-100", "B2025-115", "C2025-115", "B2025-119", None]
    devices = [(n % 2 == 0, 2600000 + n, ["4.2.8", "4.2.10", None][n % 3], lots[n % 5])
               for n in range(60)]  # fmt: skip
    rules = [
        {"kind": "firmware", "model": "Volara LVP 3", "vers": "vers:semver/<4.2.9"},
        {"kind": "component", "model": "Volara LVP 3", "purl": "pkg:github/mbed-tls/mbedtls",
         "vers": "vers:semver/<3.5.2"},
    ]  # fmt: skip
    rules += [
        {"kind": "serial", "gtin": VOLARA_GTIN, "from": f"VL3-{n}", "to": f"VL3-{n}"}
        for n in range(2600000, 2600060, 4)
    ]
    lot_rules = [
        {
            "kind": "lot",
            "model": "SyriFlow S2 syringe pump",
            "from": f"B2025-{n}",
            "to": "B2025-119",
        }
        for n in range(100, 120)
    ]
    rules += (lot_rules * 13)[: count - len(rules)]
    assert len(rules) == count
    with Database(tmp_path / "gw.sqlite3") as db:
        _keep_sample_manifests(db)
        Inventory(db).import_rows(_fleet_rows(devices), now=NOW)
        recall = _recall({**mbedtls_spec(), "affected": rules})
        affected, undetermined = _fast(db, recall)
        assert (affected, undetermined) == _naive(db, recall)
        assert affected
        assert undetermined
        assert len(affected) + len(undetermined) < len(devices)


# --- accepting recalls: revisions ----------------------------------------------------------------


def test_revision_rules(db):
    store = RecallStore(db)
    first = _recall(mbedtls_spec())
    assert store.accept(first, now=NOW)
    assert not store.accept(first, now=NOW)  # the same notice again (QoS 1): nothing new
    newer = fields_from_spec({**mbedtls_spec(), "revision": 2, "status": "completed"})
    newer_recall = Recall(newer, b"\x02" * 32, signed=True, signers=(), source="notice", raw=b"")
    assert store.accept(newer_recall, now=NOW)
    assert store.get("Z-0412-2026").fields.status == "completed"
    with pytest.raises(RollbackError):
        store.accept(first, now=NOW)
    other = Recall(newer, b"\x03" * 32, signed=True, signers=(), source="notice", raw=b"")
    with pytest.raises(ReplayError):
        store.accept(other, now=NOW)


def test_another_vendor_cannot_take_over_a_recall_id(db):
    store = RecallStore(db)
    store.accept(_recall(mbedtls_spec()), now=NOW)
    with pytest.raises(MismatchError):
        store.accept(_recall({**mbedtls_spec(), "vendor": "borealis.example"}), now=NOW)


def test_an_unsigned_import_never_replaces_a_signed_notice(db):
    store = RecallStore(db)
    csaf = unsafe_recall_from_csaf((ROOT / "recalls" / "acme-sa-2026-001.csaf.json").read_bytes())
    signed = Recall(
        fields_from_spec({**mbedtls_spec(), "id": "ACME-SA-2026-001"}),
        b"\x04" * 32, signed=True, signers=("a", "b"), source="notice", raw=b"",
    )  # fmt: skip
    store.accept(signed, now=NOW)
    with pytest.raises(PolicyError, match="unsigned"):
        store.accept(csaf, now=NOW)


def test_summaries_list_state_counts(fleet):
    store = RecallStore(fleet)
    recall = _recall(mbedtls_spec())
    store.accept(recall, now=NOW)
    store.record_impact(recall, now=NOW)
    [summary] = store.summaries()
    assert (summary.recall_id, summary.affected, summary.states) == (
        "Z-0412-2026",
        2,
        {"pending": 2},
    )


# --- remediation tracking ------------------------------------------------------------------------


@pytest.fixture
def tracked(fleet):
    store = RecallStore(fleet)
    recall = _recall(mbedtls_spec())
    store.accept(recall, now=NOW)
    store.record_impact(recall, now=NOW)
    return store


def test_remediation_moves_offered_then_installed_with_timestamps(tracked):
    device = f"{VOLARA_GTIN}-VL3-2600001"
    assert tracked.set_state("Z-0412-2026", device, "offered", at_ms=10)
    assert tracked.set_state("Z-0412-2026", device, "offered", at_ms=20)  # a retry
    assert tracked.set_state("Z-0412-2026", device, "installed", at_ms=30, detail="4.2.10")
    assert not tracked.set_state("Z-0412-2026", device, "installed", at_ms=31)  # repeated report
    [row] = [r for r in tracked.remediation("Z-0412-2026") if r.device_id == device]
    assert (row.state, row.attempts, row.offered_ms, row.installed_ms, row.detail) == (
        "installed", 2, 20, 30, "4.2.10",
    )  # fmt: skip
    assert [m.kind for m in row.matches] == ["firmware", "component"]
    assert tracked.state_counts("Z-0412-2026") == {"installed": 1, "pending": 1}


def test_a_device_reporting_failure_shows_as_failed_and_installed_is_final(tracked):
    device = f"{VOLARA_GTIN}-VL3-2600002"
    tracked.set_state("Z-0412-2026", device, "offered", at_ms=1)
    tracked.set_state("Z-0412-2026", device, "failed", at_ms=2, detail="flash write error")
    assert tracked.remediation("Z-0412-2026", state="failed")[0].device_id == device
    tracked.set_state("Z-0412-2026", device, "offered", at_ms=3)
    tracked.set_state("Z-0412-2026", device, "installed", at_ms=4)
    with pytest.raises(PolicyError, match="cannot become failed"):
        tracked.set_state("Z-0412-2026", device, "failed", at_ms=5)


def test_state_of_an_untracked_device_is_refused(tracked):
    with pytest.raises(MalformedError):
        tracked.set_state("Z-0412-2026", "nobody", "offered", at_ms=1)


def test_reevaluation_drops_pending_devices_no_longer_affected_and_keeps_others(tracked, fleet):
    one, two = f"{VOLARA_GTIN}-VL3-2600001", f"{VOLARA_GTIN}-VL3-2600002"
    tracked.set_state("Z-0412-2026", one, "offered", at_ms=1)
    inventory = Inventory(fleet)
    inventory.record_firmware(one, "4.2.10", seq=3, at_ms=2)
    inventory.record_firmware(two, "4.2.10", seq=3, at_ms=2)
    tracked.record_impact(tracked.get("Z-0412-2026"), now=NOW)
    assert [(r.device_id, r.state) for r in tracked.remediation("Z-0412-2026")] == [
        (one, "offered")
    ]


# --- trust directory ----------------------------------------------------------------------------


def test_recall_trust_directory_loads_keys_per_vendor():
    trust = load_recall_trust(ROOT / "recalls" / "trust")
    assert trust.threshold == 2
    assert len(trust.keys) == 5


@pytest.mark.parametrize("policy", [{"threshold": 1}, {"threshold": "2"}, {"other": 2}, []])
def test_recall_policy_below_two_or_malformed_is_refused(tmp_path, policy):
    shutil.copytree(ROOT / "recalls" / "trust", tmp_path / "trust")
    (tmp_path / "trust" / "recall-policy.json").write_text(json.dumps(policy))
    with pytest.raises(MalformedError, match="threshold"):
        load_recall_trust(tmp_path / "trust")


def test_trust_directory_without_recall_keys_is_refused(tmp_path):
    with pytest.raises(MalformedError, match="no recall key"):
        load_recall_trust(tmp_path)
