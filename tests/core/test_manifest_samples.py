from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import pytest

from device_sim.pki import MANUFACTURERS
from firmware_manifests import generate
from gateway.core.errors import RollbackError
from gateway.core.manifest import Manifest, device_target, unsafe_read_manifest
from gateway.core.sbom import END_OF_SUPPORT_PROPERTY, check_sbom
from gateway.store.manifests import load_manifest_trust

ROOT = Path(__file__).resolve().parents[2] / "firmware_manifests"
INDEX = json.loads((ROOT / "samples" / "index.json").read_text(encoding="utf-8"))
TRUST = load_manifest_trust(ROOT / "trust")
NOW = datetime(2026, 6, 1, tzinfo=UTC)


def _device(row):
    return device_target(
        {"id": "d", "manufacturer_slug": row["manufacturer_slug"], "model": row["model"]}
    )


def test_sample_set_has_the_required_breadth():
    models = defaultdict(set)
    for row in INDEX:
        models[(row["manufacturer_slug"], row["model"])].add(row["version"])
    assert len(models) >= 3
    assert len({slug for slug, _ in models}) >= 2
    assert all(len(versions) >= 3 for versions in models.values())
    assert any(row["priority"] < 0 for row in INDEX)


def test_sample_names_match_the_demo_pki():
    known = {(m.slug, model.model) for m in MANUFACTURERS for model in m.models}
    assert {(r["manufacturer_slug"], r["model"]) for r in INDEX} <= known


@pytest.mark.parametrize("row", INDEX, ids=lambda r: r["manifest"])
def test_every_sample_validates_with_its_image_for_its_device(row):
    path = ROOT / row["manifest"]
    image = (path.parent / "image.bin").read_bytes()
    manifest = Manifest.from_bytes(
        path.read_bytes(), trust=TRUST, state={}, now=NOW, device=_device(row), image=image
    )
    assert manifest.digest.hex() == row["digest"]
    assert manifest.fields.version == row["version"]
    assert manifest.report.ok


def test_samples_of_a_model_apply_in_order_and_not_in_reverse():
    state: dict = {}
    rows = sorted(INDEX, key=lambda r: (r["model"], r["seq"]))
    for row in rows:
        m = Manifest.from_bytes(
            (ROOT / row["manifest"]).read_bytes(), trust=TRUST, state=state, now=NOW
        )
        state[(m.fields.vendor, m.fields.class_id)] = m.fields.seq
    first = rows[0]
    with pytest.raises(RollbackError):
        Manifest.from_bytes(
            (ROOT / first["manifest"]).read_bytes(), trust=TRUST, state=state, now=NOW
        )


@pytest.mark.parametrize("row", INDEX, ids=lambda r: r["manifest"])
def test_sample_sboms_describe_a_real_firmware(row):
    sbom = (ROOT / row["manifest"]).parent.joinpath("sbom.cdx.json").read_bytes()
    assert check_sbom(sbom).ok
    doc = json.loads(sbom)
    assert doc["specVersion"] == "1.6"
    roles = {c["bom-ref"].split(":")[0] for c in doc["components"]}
    assert {"rtos", "tls", "bootloader", "ble", "app"} <= roles
    for c in doc["components"]:
        assert c["supplier"]["name"]
        assert c["version"]
        assert c["purl"].startswith("pkg:")
        assert c["hashes"]
        assert any(p["name"] == END_OF_SUPPORT_PROPERTY for p in c["properties"])
    assert {d["ref"] for d in doc["dependencies"]} >= {c["bom-ref"] for c in doc["components"]}


def test_urgent_sample_fixes_mbedtls_and_has_no_approval():
    urgent = next(r for r in INDEX if r["priority"] < 0)
    seen = unsafe_read_manifest((ROOT / urgent["manifest"]).read_bytes())
    assert seen.approvals == 0
    assert b'"mbedtls"' in (seen.sbom or b"")


def test_regeneration_reproduces_the_committed_sample_set(tmp_path):
    rows = generate.generate(tmp_path)
    assert rows == INDEX
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        if not path.is_file() or rel.parts[0] not in ("samples", "trust", "keys"):
            continue
        if rel.name.endswith(".md"):
            continue
        fresh = (tmp_path / rel).read_bytes()
        if rel.name == "manifest.cbor":
            # ES256 signatures are randomised; the signed content must be identical.
            assert (
                unsafe_read_manifest(fresh).digest == unsafe_read_manifest(path.read_bytes()).digest
            )
            assert unsafe_read_manifest(fresh).sbom == unsafe_read_manifest(path.read_bytes()).sbom
        else:
            assert fresh == path.read_bytes(), rel
