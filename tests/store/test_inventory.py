from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from gateway.core.cbor import dumps
from gateway.core.errors import MalformedError
from gateway.core.manifest import class_id, vendor_id
from gateway.store.events import EventRecord, EventStore
from gateway.store.inventory import Inventory
from tests._helpers import cose_signed

NOW = datetime(2026, 2, 1, tzinfo=UTC)
GTIN = "00850034100319"


def _row(number: str, **extra):
    serial = number
    return {
        "id": f"{GTIN}-{serial}",
        "manufacturer": "Acme Infusion Systems",
        "manufacturer_slug": "acme-infusion",
        "model": "Volara LVP 3",
        "gtin": GTIN,
        "serial": serial,
        "site": "riverside-general",
        "department": "icu",
        **extra,
    }


def _firmware_event(device_id: str, seq: int, to_version: str, result: str = "installed"):
    body = {
        "from_version": "4.2.8",
        "to_version": to_version,
        "manifest_digest": bytes(32),
        "image_digest": bytes(32),
        "result": result,
        "trigger": "recall",
        "trigger_ref": "Z-0412-2026",
        "cycle": "out_of_cycle",
    }
    payload = dumps(
        {
            "v": 1,
            "type": "firmware_update",
            "device": device_id,
            "seq": seq,
            "time": 1,
            "body": body,
        }
    )
    raw = cose_signed(payload)
    return EventRecord(device_id, seq, "firmware_update", 1, 1000 + seq, "s", "t", raw)


def test_devices_json_rows_become_inventory_rows_with_vendor_and_class_ids(db, tmp_path):
    path = tmp_path / "devices.json"
    path.write_text(json.dumps([_row("VL3-2600001", lot="B2025-111", firmware_version="4.2.9")]))
    result = Inventory(db).import_devices_json(path, now=NOW)
    assert (result.added, result.updated) == (1, 0)
    row = Inventory(db).get(f"{GTIN}-VL3-2600001")
    assert row is not None
    vendor = vendor_id("acme-infusion.example")
    assert row.vendor == vendor.bytes
    assert row.class_id == class_id(vendor, "Volara LVP 3").bytes
    assert (row.lot, row.version, row.version_seq) == ("B2025-111", "4.2.9", None)
    assert row.facts().class_id == class_id(vendor, "Volara LVP 3")


def test_default_versions_fill_rows_without_one(db):
    inventory = Inventory(db)
    inventory.import_rows(
        [_row("VL3-2600001"), _row("VL3-2600002", firmware_version="4.2.8")],
        now=NOW,
        default_versions={"Volara LVP 3": "4.2.9"},
    )
    assert inventory.get(f"{GTIN}-VL3-2600001").version == "4.2.9"
    assert inventory.get(f"{GTIN}-VL3-2600002").version == "4.2.8"


@pytest.mark.parametrize(
    "bad",
    [
        {"gtin": "00850034100318"},  # wrong check digit
        {"serial": "has space"},
        {"firmware_version": "four"},
        {"model": ""},
        {"lot": "(10)bad"},
    ],
)
def test_one_bad_row_refuses_the_whole_import(db, bad):
    inventory = Inventory(db)
    with pytest.raises(MalformedError):
        inventory.import_rows([_row("VL3-2600001"), _row("VL3-2600002", **bad)], now=NOW)
    assert inventory.count() == 0


def test_reimport_updates_the_device_but_keeps_a_reported_version(db):
    inventory = Inventory(db)
    inventory.import_rows([_row("VL3-2600001", firmware_version="4.2.8")], now=NOW)
    assert inventory.record_firmware(f"{GTIN}-VL3-2600001", "4.2.10", seq=7, at_ms=5)
    result = inventory.import_rows(
        [_row("VL3-2600001", firmware_version="4.2.8", department="emergency")], now=NOW
    )
    assert (result.added, result.updated) == (0, 1)
    row = inventory.get(f"{GTIN}-VL3-2600001")
    assert (row.version, row.department, row.initial_version) == ("4.2.10", "emergency", "4.2.8")


def test_an_older_firmware_report_does_not_overwrite_a_newer_one(db):
    inventory = Inventory(db)
    inventory.import_rows([_row("VL3-2600001", firmware_version="4.2.8")], now=NOW)
    assert inventory.record_firmware(f"{GTIN}-VL3-2600001", "4.2.10", seq=9, at_ms=1)
    assert not inventory.record_firmware(f"{GTIN}-VL3-2600001", "4.2.9", seq=8, at_ms=2)
    assert inventory.get(f"{GTIN}-VL3-2600001").version == "4.2.10"


def test_installed_firmware_update_events_set_the_current_version(db):
    inventory = Inventory(db)
    inventory.import_rows(
        [_row("VL3-2600001", firmware_version="4.2.8"), _row("VL3-2600002")], now=NOW
    )
    one, two = f"{GTIN}-VL3-2600001", f"{GTIN}-VL3-2600002"
    EventStore(db).insert_batch(
        [
            _firmware_event(one, 3, "4.2.10"),
            _firmware_event(one, 2, "4.2.9"),  # arrives later, older seq: ignored
            _firmware_event(two, 1, "4.2.10", result="failed"),  # failed: still unknown
        ],
        [],
    )
    assert inventory.apply_firmware_events() == 1
    assert inventory.get(one).version == "4.2.10"
    assert inventory.get(two).version is None
    assert inventory.apply_firmware_events() == 0  # the cursor moved: nothing read twice
    EventStore(db).insert_batch([_firmware_event(two, 2, "4.2.10")], [])
    assert inventory.apply_firmware_events() == 1
    assert inventory.get(two).version == "4.2.10"


def test_unreadable_devices_json_is_a_malformed_error(db, tmp_path):
    path = tmp_path / "devices.json"
    path.write_text("{not json")
    with pytest.raises(MalformedError, match="not JSON"):
        Inventory(db).import_devices_json(path)
