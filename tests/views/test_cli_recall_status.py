"""`provgw recall status`: remediation per device, text and JSON, exit codes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from gateway.core.recall import Recall
from gateway.service.remediation import RemediationTracker
from gateway.store.db import Database
from gateway.store.inventory import Inventory
from gateway.store.recalls import RecallStore, load_recall_trust
from tests._helpers import invoke_cli

RECALLS = Path(__file__).resolve().parents[2] / "firmware_manifests" / "recalls"
NOW = datetime(2026, 3, 1, tzinfo=UTC)


def _db(tmp_path):
    path = tmp_path / "gw.sqlite3"
    recall = Recall.from_bytes(
        (RECALLS / "Z-0412-2026.recall.cbor").read_bytes(),
        trust=load_recall_trust(RECALLS / "trust"),
    )
    with Database(path) as db:
        Inventory(db).import_rows(
            [
                {
                    "id": f"pump-{i}",
                    "manufacturer_slug": "acme-infusion",
                    "model": "Volara LVP 3",
                    "gtin": "00850034100319",
                    "serial": f"VL3-260000{i}",
                    "site": "riverside-general",
                    "firmware_version": "4.2.9",
                }
                for i in (1, 2)
            ],
            now=NOW,
        )
        RecallStore(db).accept(recall, now=NOW)
        RecallStore(db).record_impact(recall, now=NOW)
        RemediationTracker(db).mark_offered(
            "Z-0412-2026", "pump-1", b"offer", manifest=b"\0" * 32, at_ms=1
        )
    return path


def test_status_json_lists_every_device_with_its_state(tmp_path):
    path = _db(tmp_path)
    result = invoke_cli("recall", "status", "Z-0412-2026", "--db", str(path), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["counts"] == {"offered": 1, "pending": 1}
    assert {d["device_id"]: d["state"] for d in data["devices"]} == {
        "pump-1": "offered",
        "pump-2": "pending",
    }


def test_status_text_names_the_states_and_an_unknown_recall_exits_1(tmp_path):
    path = _db(tmp_path)
    result = invoke_cli(*["recall", "status", "Z-0412-2026", "--db", str(path)])
    assert result.exit_code == 0
    assert "2 device(s): 1 offered, 1 pending" in result.output
    missing = invoke_cli(*["recall", "status", "Z-0000-2026", "--db", str(path)])
    assert missing.exit_code == 1
    assert "no recall 'Z-0000-2026'" in missing.output
