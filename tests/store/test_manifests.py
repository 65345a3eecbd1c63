from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from firmware_manifests.generate import OPERATOR, demo_key
from gateway.core.errors import MalformedError, ReplayError, RollbackError, UntrustedSignerError
from gateway.core.manifest import add_approval, build_envelope, sign_manifest, unsafe_read_manifest
from gateway.store.db import Database
from gateway.store.manifests import ManifestStore, load_manifest_trust

ROOT = Path(__file__).resolve().parents[2] / "firmware_manifests"
INDEX = json.loads((ROOT / "samples" / "index.json").read_text(encoding="utf-8"))
TRUST = load_manifest_trust(ROOT / "trust")
NOW = datetime(2026, 6, 1, tzinfo=UTC)
ACME_KEY = demo_key("firmware acme-infusion", "Ed25519")
OPERATOR_KEY = demo_key(f"operator {OPERATOR}", "Ed25519")


def _sample(model: str, version: str) -> bytes:
    row = next(r for r in INDEX if r["model"] == model and r["version"] == version)
    return (ROOT / row["manifest"]).read_bytes()


VOLARA = [_sample("Volara LVP 3", v) for v in ("4.2.8", "4.2.9", "4.2.10")]


@pytest.fixture
def store(db):
    return ManifestStore(db)


def test_accepting_the_sample_set_keeps_every_manifest_and_the_highest_seq(store):
    for row in sorted(INDEX, key=lambda r: r["seq"]):
        store.accept((ROOT / row["manifest"]).read_bytes(), trust=TRUST, now=NOW)
    assert store.count() == len(INDEX)
    seen = unsafe_read_manifest(VOLARA[2]).fields
    assert store.highest_seq(seen.vendor, seen.class_id) == 3
    assert set(store.state().values()) == {3}
    rows = store.for_class(seen.vendor, seen.class_id)
    assert [r.version for r in rows] == ["4.2.8", "4.2.9", "4.2.10"]
    assert store.get(rows[2].digest).raw == VOLARA[2]


def test_redelivered_manifest_is_stored_once(store):
    store.accept(VOLARA[0], trust=TRUST, now=NOW)
    store.accept(VOLARA[0], trust=TRUST, now=NOW)
    assert store.count() == 1


def test_same_manifest_with_another_approval_replaces_the_envelope(store):
    fields = unsafe_read_manifest(VOLARA[2]).fields
    store.accept(VOLARA[2], trust=TRUST, now=NOW)
    approved = add_approval(VOLARA[2], OPERATOR_KEY, now=NOW)
    store.accept(approved, trust=TRUST, now=NOW)
    assert store.count() == 1
    assert store.for_class(fields.vendor, fields.class_id)[0].raw == approved


def test_older_manifest_after_a_newer_one_is_refused_and_not_stored(store):
    store.accept(VOLARA[1], trust=TRUST, now=NOW)
    with pytest.raises(RollbackError):
        store.accept(VOLARA[0], trust=TRUST, now=NOW)
    assert store.count() == 1


def test_copy_of_a_superseded_manifest_is_refused(store):
    store.accept(VOLARA[0], trust=TRUST, now=NOW)
    store.accept(VOLARA[1], trust=TRUST, now=NOW)
    with pytest.raises(RollbackError):
        store.accept(VOLARA[0], trust=TRUST, now=NOW)


def test_another_manifest_with_an_equal_seq_is_refused(store):
    store.accept(VOLARA[1], trust=TRUST, now=NOW)
    seen = unsafe_read_manifest(VOLARA[1])
    twin = dataclasses.replace(seen.fields, version="4.2.9-hotfix.1", priority=-1)
    with pytest.raises(RollbackError):
        store.accept(
            build_envelope(sign_manifest(twin, ACME_KEY), sbom=seen.sbom), trust=TRUST, now=NOW
        )
    assert store.count() == 1


def test_invalid_manifest_is_refused_and_nothing_is_stored(store):
    stranger = demo_key("not trusted", "Ed25519")
    seen = unsafe_read_manifest(VOLARA[0])
    forged = build_envelope(sign_manifest(seen.fields, stranger), sbom=seen.sbom)
    with pytest.raises(UntrustedSignerError):
        store.accept(forged, trust=TRUST, now=NOW)
    assert store.count() == 0
    assert store.state() == {}


def test_rollback_state_survives_a_restart(tmp_path):
    path = tmp_path / "gw.sqlite3"
    with Database(path) as db:
        ManifestStore(db).accept(VOLARA[1], trust=TRUST, now=NOW)
    with Database(path) as db:
        with pytest.raises(RollbackError):
            ManifestStore(db).accept(VOLARA[0], trust=TRUST, now=NOW)
        assert len(ManifestStore(db).state()) == 1


def test_device_installed_seq_only_moves_forward(store):
    f = unsafe_read_manifest(VOLARA[1]).fields
    args = ("dev-1", f.vendor, f.class_id)
    assert store.installed_seq(*args) is None
    store.record_installed(*args, 2, b"\x02" * 32, installed_ms=1)
    store.record_installed(*args, 2, b"\x02" * 32, installed_ms=5)  # same report again: no-op
    assert store.installed_seq(*args) == 2
    with pytest.raises(RollbackError):
        store.record_installed(*args, 1, b"\x01" * 32, installed_ms=6)
    with pytest.raises(ReplayError):
        store.record_installed(*args, 2, b"\x09" * 32, installed_ms=7)
    store.record_installed(*args, 3, b"\x03" * 32, installed_ms=8)
    assert store.installed_seq(*args) == 3
    assert store.installed_seq("dev-2", f.vendor, f.class_id) is None


# --- trust directory ------------------------------------------------------------------------------


def test_trust_directory_scopes_manufacturer_keys_to_their_vendor():
    keys = list(TRUST.manufacturers.values())
    assert {k.name for k in keys} == {
        "acme-infusion.example/firmware-2026",
        "borealis.example/firmware-2026",
    }
    assert all(k.vendors is not None and len(k.vendors) == 1 for k in keys)
    assert [k.name for k in TRUST.operators.values()] == ["operator/riverside-general"]
    assert (TRUST.manufacturer_threshold, TRUST.operator_threshold) == (1, 1)


def _copy_trust(tmp_path):
    target = tmp_path / "trust"
    for path in (ROOT / "trust").rglob("*.pem"):
        dest = target / path.relative_to(ROOT / "trust")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(path.read_bytes())
    return target


def test_policy_file_sets_thresholds(tmp_path):
    trust = _copy_trust(tmp_path)
    (trust / "manifest-policy.json").write_text('{"manufacturer_threshold": 2}')
    assert load_manifest_trust(trust).manufacturer_threshold == 2


@pytest.mark.parametrize("policy", ['{"manufacturer_threshold": 0}', '{"quorum": 2}', "[1]", "{"])
def test_bad_policy_file_is_a_clear_error(tmp_path, policy):
    trust = _copy_trust(tmp_path)
    (trust / "manifest-policy.json").write_text(policy)
    with pytest.raises(MalformedError, match=r"manifest-policy\.json"):
        load_manifest_trust(trust)


def test_trust_directory_without_manufacturer_keys_is_refused(tmp_path):
    with pytest.raises(MalformedError, match="cannot be read"):
        load_manifest_trust(tmp_path)
    (tmp_path / "firmware").mkdir()
    with pytest.raises(MalformedError, match="no manufacturer key"):
        load_manifest_trust(tmp_path)


def test_unreadable_key_file_names_the_key(tmp_path):
    trust = _copy_trust(tmp_path)
    (trust / "operators" / "broken.pem").write_text("not a key")
    with pytest.raises(MalformedError, match="broken"):
        load_manifest_trust(trust)
