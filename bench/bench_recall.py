"""Recall impact over a large fleet: the indexed query beside a naive per-device Python loop.

Fleet: N devices of three models (two Acme infusion pumps, one Borealis monitor) spread over the
sample firmware releases, 2% with unknown firmware, a third with a lot number; the sample
manifests (with SBOMs) are kept in the store. Recalls: the urgent Mbed TLS recall (firmware range
+ SBOM component rule, ~half the Volara pumps), the hardware recall (serial range, lot range, a
whole model: ~58% of the fleet hit or undetermined, so the query reads the table in one pass),
and a targeted recall of 50 serial numbers (read through the index). The baseline reads every
inventory row and runs :func:`gateway.core.recall.match_device` per device (same SBOM lookup
table, built once). Goal: <= 200 ms for 100,000 devices.
"""

from __future__ import annotations

import random
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path

from bench._table import Row, seconds
from device_sim.pki import gtin14
from firmware_manifests.recalls.generate import hardware_spec, mbedtls_spec
from gateway.core.recall import Component, Recall, fields_from_spec, match_device
from gateway.store.db import Database
from gateway.store.inventory import Inventory
from gateway.store.manifests import ManifestStore, load_manifest_trust
from gateway.store.recalls import RecallStore

ROOT = Path(__file__).resolve().parents[1] / "firmware_manifests"
NOW = datetime(2026, 2, 1, tzinfo=UTC)
Components = dict[tuple[uuid.UUID, str], tuple[Component, ...]]
MODELS = (
    ("acme-infusion", "Volara LVP 3", gtin14("0850034", "10031"), "VL3-",
     ("4.2.8", "4.2.9", "4.2.10")),
    ("acme-infusion", "SyriFlow S2 syringe pump", gtin14("0850034", "10042"), "SF2-",
     ("2.0.0", "2.1.0", "2.1.1")),
    ("borealis", "Aurora M12 bedside monitor", gtin14("6430061", "00120"), "AM12",
     ("7.3.0", "7.4.0", "7.4.1")),
)  # fmt: skip


def _fleet(n: int) -> list[dict[str, object]]:
    rng = random.Random(6)  # noqa: S311 -- reproducible test data, not a secret
    rows: list[dict[str, object]] = []
    for i in range(n):
        slug, model, gtin, prefix, versions = MODELS[i % 3]
        serial = f"{prefix}{2600000 + i // 3}"
        row: dict[str, object] = {
            "id": f"{gtin}-{serial}",
            "manufacturer_slug": slug,
            "model": model,
            "gtin": gtin,
            "serial": serial,
            "site": "riverside-general",
            "department": "icu",
        }
        if rng.random() > 0.02:
            row["firmware_version"] = rng.choice(versions)
        if rng.random() < 0.33:
            row["lot"] = f"B2025-{rng.randrange(100, 140)}"
        rows.append(row)
    return rows


def _recall(spec: dict[str, object]) -> Recall:
    fields = fields_from_spec(spec)
    return Recall(fields, bytes(32), signed=True, signers=(), source="notice", raw=b"")


def run(*, quick: bool) -> list[Row]:
    n = 20_000 if quick else 100_000
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp, Database(Path(tmp) / "gw.sqlite3") as db:
        trust = load_manifest_trust(ROOT / "trust")
        paths = sorted(
            (ROOT / "samples").rglob("manifest.cbor"),
            key=lambda p: (p.parent.parent.name, [int(x) for x in p.parent.name.split(".")]),
        )
        for path in paths:
            ManifestStore(db).accept(
                path.read_bytes(), trust=trust, now=NOW, check_sbom_quality=False
            )
        Inventory(db).import_rows(_fleet(n), now=NOW)
        store = RecallStore(db)
        store.index_sboms()
        inventory = Inventory(db)
        targeted = {
            **hardware_spec(),
            "affected": [
                {"kind": "serial", "model": "Volara LVP 3", "from": "VL3-2600101",
                 "to": "VL3-2600150"},
            ],
        }  # fmt: skip
        for label, spec in (
            ("Mbed TLS: firmware + SBOM component", mbedtls_spec()),
            ("hardware: serial + lot + model", hardware_spec()),
            ("targeted: one serial range", targeted),
        ):
            recall = _recall(spec)
            components = store.sbom_components(recall.fields.vendor)
            affected = len(store.affected_devices(recall))

            def naive(recall: Recall = recall, components: Components = components) -> int:
                return sum(
                    match_device(recall.fields, r.facts(), components).affected
                    for r in inventory.all()
                )

            def fast(recall: Recall = recall) -> object:
                return store.impact(recall)

            assert naive() == affected  # same answer, or the comparison means nothing
            fast_s = seconds(fast, repeats=5)
            naive_s = seconds(naive, repeats=3)
            rows.append(
                Row(
                    "recall",
                    f"impact over {n:,} devices, {label} ({affected:,} hit)",
                    fast_s * 1e3,
                    "ms",
                    "per-device Python loop",
                    naive_s * 1e3,
                    "<= 200 ms (100k)",
                )
            )
    return rows
