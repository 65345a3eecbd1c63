from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.store.db import Database
from gateway.store.manifests import ManifestStore, load_manifest_trust
from gateway.views.cli._main import _register, cli

ROOT = Path(__file__).resolve().parents[2] / "firmware_manifests"
RECALLS = ROOT / "recalls"
TRUST = str(RECALLS / "trust")
GTIN = "00850034100319"


@pytest.fixture
def run():
    _register()
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(cli, [str(a) for a in args])

    return invoke


@pytest.fixture
def gateway_db(tmp_path):
    path = tmp_path / "gw.sqlite3"
    with Database(path) as db:
        trust = load_manifest_trust(ROOT / "trust")
        for version in ("4.2.8", "4.2.9", "4.2.10"):
            data = (
                ROOT / "samples/acme-infusion/volara-lvp-3" / version / "manifest.cbor"
            ).read_bytes()
            ManifestStore(db).accept(
                data, trust=trust, now=datetime.now(UTC), check_sbom_quality=False
            )
    return path


@pytest.fixture
def devices(tmp_path):
    common = {"manufacturer_slug": "acme-infusion", "model": "Volara LVP 3", "gtin": GTIN}
    place = {"site": "riverside-general", "department": "icu"}
    rows = [
        {"id": f"{GTIN}-VL3-260000{i}", "serial": f"VL3-260000{i}", "firmware_version": v,
         **common, **place}
        for i, v in ((1, "4.2.8"), (2, "4.2.9"), (3, "4.2.10"))
    ]  # fmt: skip
    path = tmp_path / "devices.json"
    path.write_text(json.dumps(rows))
    return path


def test_inventory_import_then_signed_recall_import_and_impact(run, gateway_db, devices):
    result = run("inventory", "import", devices, "--db", gateway_db, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["added"] == 3
    result = run("recall", "import", RECALLS / "Z-0412-2026.recall.cbor", "--db", gateway_db,
                 "--trust", TRUST, "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["signed"], data["affected_count"]) == (True, 2)
    result = run("recall", "impact", "Z-0412-2026", "--db", gateway_db, "--json")
    assert result.exit_code == 0, result.output
    impact = json.loads(result.output)
    assert [d["device_id"] for d in impact["affected"]] == [
        f"{GTIN}-VL3-2600001",
        f"{GTIN}-VL3-2600002",
    ]
    assert [m["kind"] for m in impact["affected"][0]["matched"]] == ["firmware", "component"]
    text = run("recall", "impact", "Z-0412-2026", "--db", gateway_db).output
    assert (
        "rule 1 (component): SBOM of firmware 4.2.8 lists pkg:github/mbed-tls/mbedtls 3.5.1" in text
    )
    listing = run("recall", "list", "--db", gateway_db, "--json")
    assert json.loads(listing.output)["recalls"][0]["states"] == {"pending": 2}


def test_recall_with_one_signature_is_refused_with_exit_1(run, gateway_db):
    result = run("recall", "import", RECALLS / "Z-0412-2026.one-signature.cbor", "--db", gateway_db,
                 "--trust", TRUST, "--json")  # fmt: skip
    assert result.exit_code == 1
    assert json.loads(result.output)["reason"] == "untrusted-signer"


def test_csaf_import_needs_trust_unsigned_and_is_marked_unsigned(run, gateway_db):
    csaf = RECALLS / "acme-sa-2026-001.csaf.json"
    refused = run("recall", "import", csaf, "--db", gateway_db)
    assert refused.exit_code == 1
    assert "--trust-unsigned" in refused.output
    result = run("recall", "import", csaf, "--db", gateway_db, "--trust-unsigned", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["signed"], data["source"]) == (False, "csaf")
    # The fixed product (4.2.10) is a manifest the gateway holds: it becomes the remedy.
    index = {
        r["version"]: r["digest"] for r in json.loads((ROOT / "samples/index.json").read_text())
    }
    assert data["recall"]["remedy"]["manifest"] == index["4.2.10"]


def test_build_and_cosign_make_an_importable_recall(run, gateway_db, tmp_path):
    out = tmp_path / "r.cbor"
    keys = RECALLS / "keys"
    result = run("recall", "build", RECALLS / "Z-0413-2026.spec.json", "--key",
                 keys / "acme-infusion-recall-regulatory.key.pem", "-o", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert run("recall", "import", out, "--db", gateway_db, "--trust", TRUST).exit_code == 1
    result = run("recall", "sign", out, "--key", keys / "acme-infusion-recall-quality.key.pem")
    assert result.exit_code == 0, result.output
    result = run("recall", "import", out, "--db", gateway_db, "--trust", TRUST)
    assert result.exit_code == 0, result.output
    assert "Z-0413-2026" in result.output


def test_impact_of_an_unknown_recall_exits_1(run, gateway_db):
    result = run("recall", "impact", "Z-9999-2026", "--db", gateway_db)
    assert result.exit_code == 1
    assert "no recall" in result.output


def test_inventory_import_refuses_a_bad_row(run, gateway_db, tmp_path):
    path = tmp_path / "devices.json"
    path.write_text(json.dumps([{"id": "x", "manufacturer_slug": "a", "model": "m",
                                 "gtin": "00850034100318", "serial": "S1"}]))  # fmt: skip
    result = run("inventory", "import", path, "--db", gateway_db)
    assert result.exit_code == 1
    assert "check digit" in result.output


def test_every_recall_command_has_help(run):
    commands = ("import", "impact", "list", "build", "sign")
    for args in (("inventory", "import", "--help"), *[("recall", c, "--help") for c in commands]):
        result = run(*args)
        assert result.exit_code == 0
        assert "--json" in result.output or "Commands" in result.output
