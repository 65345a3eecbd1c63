"""`provgw device fhir` and `fhir-bulk`: devices and their verified history as FHIR."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography import x509
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.provenance import Provenance

from gateway.core import cose
from gateway.store.db import Database
from gateway.store.devices import DeviceStore
from gateway.store.events import EventStore
from gateway.store.inventory import Inventory
from gateway.views import fhir
from gateway.views.fhir import ACTIVITY_SYSTEM, DEVICE_ID_SYSTEM, EVENT_ID_SYSTEM, FHIR_VERSION
from tests._helpers import invoke_cli
from tests.service.test_quarantine import Site


@pytest.fixture
def site(gateway_site, tmp_path):
    site = Site(gateway_site.pki, tmp_path)
    kinds = ("maintenance", "custody", "firmware_update")
    site.ingest([site.message(site.other, kind=kind) for kind in kinds])
    with Database(site.path) as db:
        # The site's devices.json, with a lot for the exported device (the demo names none).
        rows = json.loads((gateway_site.pki / "devices.json").read_text(encoding="utf-8"))
        for row in rows:
            row["lot"] = "L2026-07" if row["id"] == site.other else row.get("lot")
        listing = tmp_path / "devices.json"
        listing.write_text(json.dumps(rows), encoding="utf-8")
        models = {r["model"] for r in rows}
        Inventory(db).import_devices_json(listing, default_versions=dict.fromkeys(models, "4.2.9"))
    return site


def _export(site, tmp_path, *extra):
    out = tmp_path / "bundle.json"
    result = invoke_cli("device", "fhir", site.other, "--db", site.path, "-o", out, *extra)
    assert result.exit_code == 0, result.output
    return Bundle.model_validate_json(out.read_text(encoding="utf-8")), result


def test_the_bundle_holds_the_device_and_one_provenance_per_event_with_its_signed_bytes(
    site, tmp_path
):
    bundle, result = _export(site, tmp_path)
    assert "1 Device and 3 Provenance resources" in result.output
    assert bundle.type == "collection"
    device_entry, *event_entries = bundle.entry
    device = device_entry.resource
    assert device.__resource_type__ == "Device"
    with Database(site.path) as db:
        inventory = Inventory(db).get(site.other)
        stored = EventStore(db).history(site.other)
        row = DeviceStore(db).get(site.other)
    assert inventory is not None
    assert row is not None
    assert [(i.system, i.value) for i in device.identifier] == [(DEVICE_ID_SYSTEM, site.other)]
    udi = device.udiCarrier[0]
    assert (udi.deviceIdentifier, udi.carrierHRF) == (
        inventory.gtin,
        f"(01){inventory.gtin}(21){inventory.serial}",
    )
    assert (device.serialNumber, device.manufacturer, device.status) == (
        inventory.serial,
        inventory.manufacturer,
        "active",
    )
    # The inventory knows the model's name (not a model number): FHIR's model-name device name.
    assert [(n.name, n.type) for n in device.deviceName] == [(inventory.model, "model-name")]
    assert device.lotNumber == "L2026-07"
    assert [(v.type.text, v.value) for v in device.version] == [("firmware", "4.2.9")]

    # One Provenance per stored event, in order: what the device did, when, and the exact bytes
    # it signed, which a receiver checks with the device's key without trusting this export.
    key = x509.load_der_x509_certificate(row.cert).public_key()
    assert len(event_entries) == len(stored) == 3
    for entry, event in zip(event_entries, stored, strict=True):
        provenance = entry.resource
        assert provenance.__resource_type__ == "Provenance"
        assert [t.reference for t in provenance.target] == [device_entry.fullUrl]
        assert provenance.agent[0].who.reference == device_entry.fullUrl
        assert provenance.agent[0].type.coding[0].code == "author"
        coding = provenance.activity.coding[0]
        assert (coding.system, coding.code) == (ACTIVITY_SYSTEM, event.type)
        assert provenance.activity.text  # the web UI's one-line summary
        what = provenance.entity[0].what.identifier
        assert (what.system, what.value) == (EVENT_ID_SYSTEM, str(event.id))
        assert int(provenance.occurredDateTime.timestamp() * 1000) == event.event_time_ms
        assert int(provenance.recorded.timestamp() * 1000) == event.received_ms
        signature = provenance.signature[0]
        assert signature.sigFormat == "application/cose"
        assert signature.data == event.raw
        cose.decode_sign1(signature.data).verify(key)
    # The first carries the device's certificate chain: checked with nothing but the trust folder.
    first = tmp_path / "first.cose"
    first.write_bytes(event_entries[0].resource.signature[0].data)
    verified = invoke_cli("message", "verify", first, "--trust", site.pki / "trust")
    assert verified.exit_code == 0, verified.output
    assert verified.output.startswith(f"VALID {first}: maintenance #1 from {site.other}")


def test_the_json_is_fhir_json_and_the_urls_stay_the_same_from_one_export_to_the_next(
    site, tmp_path
):
    to_stdout = invoke_cli("device", "fhir", site.other, "--db", site.path, "-o", "-")
    assert to_stdout.exit_code == 0, to_stdout.output
    raw = json.loads(to_stdout.output)
    assert raw["resourceType"] == "Bundle"
    signed = raw["entry"][1]["resource"]["signature"][0]["data"]
    assert base64.b64decode(signed, validate=True)  # base64Binary, as FHIR JSON has it
    assert "null" not in to_stdout.output  # absent elements are left out, not null
    again, summary = _export(site, tmp_path, "--json")
    assert [e.fullUrl for e in again.entry] == [e["fullUrl"] for e in raw["entry"]]
    data = json.loads(summary.output)
    assert (data["provenance"], data["erased_left_out"], data["fhir_version"]) == (
        3,
        0,
        FHIR_VERSION,
    )


def test_a_revoked_device_is_inactive_and_erased_events_are_left_out(site, tmp_path):
    revoke = ("device", "revoke", site.other, "--db", site.path, "--reason", "stolen")
    assert invoke_cli(*revoke).exit_code == 0
    with Database(site.path) as db:
        first = EventStore(db).history(site.other)[0]
    assert invoke_cli("erase", first.id, "--reason", "request", "--db", site.path).exit_code == 0
    bundle, result = _export(site, tmp_path)
    assert bundle.entry[0].resource.status == "inactive"
    ids = [e.resource.entity[0].what.identifier.value for e in bundle.entry[1:]]
    assert len(ids) == 2
    assert str(first.id) not in ids
    assert "1 erased event left out" in result.output


def test_an_unknown_device_is_refused_and_nothing_is_written(site, tmp_path):
    out = tmp_path / "ghost.json"
    result = invoke_cli("device", "fhir", "ghost", "--db", site.path, "-o", out)
    assert result.exit_code == 1
    assert "no device 'ghost'" in result.output
    assert not out.exists()


def _ndjson(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_bulk_export_writes_every_device_and_event_as_ndjson_and_then_only_what_is_new(
    site, tmp_path
):
    out = tmp_path / "bulk"
    full = invoke_cli("device", "fhir-bulk", "--db", site.path, "-o", out, "--json")
    assert full.exit_code == 0, full.output
    summary = json.loads(full.output)
    with Database(site.path) as db:
        stored = EventStore(db).after(0, limit=100)
        known = {r.device_id for r in Inventory(db).all()}
    assert (summary["provenance"], summary["last_event_id"]) == (3, stored[-1].id)
    devices = {d["id"]: Device.model_validate(d) for d in _ndjson(out / "Device.ndjson")}
    # Every device the inventory knows, with the id the Provenance resources point at.
    assert {d.identifier[0].value for d in devices.values()} == known
    assert summary["devices"] == len(known)
    events = [Provenance.model_validate(p) for p in _ndjson(out / "Provenance.ndjson")]
    assert [p.entity[0].what.identifier.value for p in events] == [str(e.id) for e in stored]
    for provenance, event in zip(events, stored, strict=True):
        device = devices[provenance.target[0].reference.removeprefix("Device/")]
        assert device.identifier[0].value == site.other
        assert provenance.signature[0].data == event.raw
    assert sorted(p.name for p in out.iterdir()) == ["Device.ndjson", "Provenance.ndjson"]

    # Two more events; the next export, after the last one, holds those and their device only.
    site.ingest([site.message(site.other) for _ in range(2)])
    after = invoke_cli(
        "device", "fhir-bulk", "--db", site.path, "-o", out,
        "--after", summary["last_event_id"], "--json",
    )  # fmt: skip
    assert after.exit_code == 0, after.output
    since = json.loads(after.output)
    assert (since["provenance"], since["devices"]) == (2, 1)
    assert since["last_event_id"] == summary["last_event_id"] + 2
    assert [d["identifier"][0]["value"] for d in _ndjson(out / "Device.ndjson")] == [site.other]
    assert len(_ndjson(out / "Provenance.ndjson")) == 2
    # A device revoked since, without new events, is sent again: its status changed.
    revoke = ("device", "revoke", site.other, "--db", site.path, "--reason", "stolen")
    assert invoke_cli(*revoke).exit_code == 0
    latest = since["last_event_id"]
    revoked = json.loads(
        invoke_cli(
            "device", "fhir-bulk", "--db", site.path, "-o", out, "--after", latest, "--json"
        ).output
    )  # fmt: skip
    assert (revoked["provenance"], revoked["devices"]) == (0, 1)
    assert [d["status"] for d in _ndjson(out / "Device.ndjson")] == ["inactive"]
    # An erased event is counted and left out, and the ids go on past it.
    assert (
        invoke_cli("erase", stored[0].id, "--reason", "request", "--db", site.path).exit_code == 0
    )
    again = json.loads(
        invoke_cli("device", "fhir-bulk", "--db", site.path, "-o", out, "--json").output
    )
    assert (again["provenance"], again["erased_left_out"]) == (4, 1)
    assert again["last_event_id"] == since["last_event_id"]


def test_a_bulk_export_that_fails_leaves_the_previous_files_in_place(site, tmp_path, monkeypatch):
    out = tmp_path / "bulk"
    assert invoke_cli("device", "fhir-bulk", "--db", site.path, "-o", out).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls = []

    def refuse_the_second(resource):
        calls.append(resource)
        if len(calls) == 2:
            raise ValueError("not FHIR")

    monkeypatch.setattr(fhir.Provenance, "model_validate", staticmethod(refuse_the_second))
    with Database(site.path) as db, pytest.raises(ValueError, match="not FHIR"):
        fhir.bulk_export(db, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # and no partial file
