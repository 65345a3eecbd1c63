import copy

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core import cbor
from gateway.core.errors import SchemaError
from gateway.core.events import EVENT_TYPES, Event, parse_event

DIGEST = bytes(range(32))


def payload(type_: str, body: dict) -> dict:
    return {
        "v": 1,
        "type": type_,
        "device": "08712345000015-SN1",
        "seq": 7,
        "time": 1,
        "body": body,
    }


FIRMWARE = {
    "from_version": "4.2.9",
    "to_version": "4.2.10",
    "manifest_digest": DIGEST,
    "image_digest": DIGEST,
    "result": "installed",
    "trigger": "recall",
    "trigger_ref": "Z-1234-2026",
    "cycle": "out_of_cycle",
}
MAINTENANCE = {
    "work_order": "WO-2026-0042",
    "kind": "electrical_safety",
    "status": "pass",
    "next_due": "2027-05-01",
    "procedure_version": "IEC62353-v3",
    "test_equipment": "ESA-615-0099",
    "safety_tests": [
        {
            "test": "protective_earth_resistance",
            "value": 0.12,
            "unit": "ohm",
            "limit": 0.3,
            "pass": True,
        },
        {"test": "equipment_leakage", "value": 41, "unit": "uA", "limit": 500, "pass": True},
    ],
}
CUSTODY = {
    "biz_step": "receiving",
    "disposition": "in_progress",
    "source": "urn:epc:id:pgln:0614141.00001",
    "destination": "urn:epc:id:pgln:0614142.00001",
    "location": {"facility": "urn:epc:id:sgln:0614142.00001.0", "department_class": "icu"},
}
VALID = {"firmware_update": FIRMWARE, "maintenance": MAINTENANCE, "custody": CUSTODY}


@pytest.mark.parametrize("type_", sorted(VALID))
def test_valid_event_of_each_type_parses(type_):
    event = parse_event(payload(type_, copy.deepcopy(VALID[type_])))
    assert event.type == type_
    assert event.seq == 7
    assert event.device == "08712345000015-SN1"


def test_key_rotation_carries_a_certificate_chain():
    event = parse_event(
        payload("key_rotation", {"new_x5chain": [b"\x30\x01"], "reason": "scheduled"})
    )
    assert event.body["new_x5chain"] == (b"\x30\x01",)


def test_every_event_type_has_a_valid_example():
    assert set(VALID) | {"key_rotation"} == set(EVENT_TYPES)


def reject(p: dict, reason: str) -> SchemaError:
    with pytest.raises(SchemaError) as info:
        parse_event(p)
    assert info.value.reason == reason
    return info.value


def test_unknown_top_level_key_is_refused():
    p = payload("custody", dict(CUSTODY))
    p["patient_name"] = "Jane Doe"
    err = reject(p, "schema-unknown-field")
    assert "patient_name" in str(err)


def test_unknown_body_key_is_refused_so_no_phi_can_be_smuggled():
    body = dict(CUSTODY, bed="ICU-3 bed 12")
    reject(payload("custody", body), "schema-unknown-field")


def test_room_level_location_is_refused():
    body = dict(CUSTODY, location={"facility": "x", "department_class": "icu", "room": "3.14"})
    reject(payload("custody", body), "schema-unknown-field")


def test_missing_field_is_named():
    body = dict(FIRMWARE)
    del body["image_digest"]
    err = reject(payload("firmware_update", body), "schema-missing-field")
    assert "body.image_digest" in str(err)


def test_unknown_type_is_refused():
    reject(payload("telemetry", {}), "schema-unknown-type")


def test_unsupported_format_version_is_refused():
    p = payload("custody", dict(CUSTODY))
    p["v"] = 2
    reject(p, "schema-version")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("to_version", "4.2"),
        ("to_version", "v4.2.10"),
        ("manifest_digest", b"short"),
        ("result", "ok"),
        ("cycle", "weekly"),
        ("trigger", "whim"),
    ],
)
def test_bad_firmware_field_value_is_refused(field, value):
    reject(payload("firmware_update", dict(FIRMWARE, **{field: value})), "schema")


def test_recall_trigger_without_reference_is_refused():
    body = dict(FIRMWARE)
    del body["trigger_ref"]
    reject(payload("firmware_update", body), "schema")


def test_cve_trigger_needs_a_cve_id():
    body = dict(FIRMWARE, trigger="cve", trigger_ref="Z-1234-2026")
    reject(payload("firmware_update", body), "schema")
    body["trigger_ref"] = "CVE-2026-12345"
    assert parse_event(payload("firmware_update", body)).body["trigger"] == "cve"


def test_safety_test_in_wrong_unit_is_refused():
    body = copy.deepcopy(MAINTENANCE)
    body["safety_tests"][1]["unit"] = "mA"
    err = reject(payload("maintenance", body), "schema")
    assert "uA" in str(err)


def test_electrical_safety_without_measurements_is_refused():
    body = copy.deepcopy(MAINTENANCE)
    del body["safety_tests"]
    reject(payload("maintenance", body), "schema")


def test_recall_action_needs_recall_id():
    body = dict(MAINTENANCE, kind="recall_action")
    del body["safety_tests"]
    reject(payload("maintenance", body), "schema")


@pytest.mark.parametrize("value", [True, -1, 2**64, 1.5, "7"])
def test_seq_must_be_an_unsigned_integer(value):
    p = payload("custody", dict(CUSTODY))
    p["seq"] = value
    reject(p, "schema")


@pytest.mark.parametrize("value", ["2027-13-01", "20270501", 20270501, "2027-5-1"])
def test_next_due_must_be_an_iso_date(value):
    reject(payload("maintenance", dict(MAINTENANCE, next_due=value)), "schema")


def test_nan_measurement_is_refused():
    body = copy.deepcopy(MAINTENANCE)
    body["safety_tests"][0]["value"] = float("nan")
    reject(payload("maintenance", body), "schema")


def test_error_declaration_corrects_an_earlier_event():
    body = dict(CUSTODY, error_declaration={"corrects_seq": 3, "reason": "incorrect_data"})
    assert parse_event(payload("custody", body)).body["error_declaration"]["corrects_seq"] == 3


def test_top_level_must_be_a_map():
    reject([1, 2, 3], "schema")


custody_bodies = st.fixed_dictionaries(
    {
        "biz_step": st.sampled_from(["shipping", "receiving", "installing"]),
        "disposition": st.sampled_from(["in_transit", "active"]),
    },
    optional={
        "source": st.from_regex(r"\A[A-Za-z0-9._:/-]{1,64}\Z"),
        "location": st.fixed_dictionaries(
            {
                "facility": st.from_regex(r"\A[A-Za-z0-9._:/-]{1,64}\Z"),
                "department_class": st.sampled_from(["icu", "imaging", "storage"]),
            }
        ),
    },
)


@given(
    body=custody_bodies,
    seq=st.integers(0, 2**64 - 1),
    time_ms=st.integers(0, 2**63),
)
def test_event_round_trips_through_cbor(body, seq, time_ms):
    event = Event(type="custody", device="d-1", seq=seq, time_ms=time_ms, body=body)
    again = parse_event(cbor2.loads(cbor2.dumps(event.to_cbor_map())))
    assert again == event


@pytest.mark.parametrize("type_", sorted(VALID))
def test_parsed_event_round_trips_whatever_the_key_order(type_):
    # Keys reversed at every level, floats included (the maintenance measurements).
    def reverse(value: object) -> object:
        if isinstance(value, dict):
            return {k: reverse(v) for k, v in reversed(value.items())}
        if isinstance(value, list):
            return [reverse(v) for v in value]
        return value

    event = parse_event(reverse(payload(type_, copy.deepcopy(VALID[type_]))))
    assert parse_event(cbor.strict_loads(event.to_cbor())) == event


def test_two_unknown_keys_name_the_first_one_sent():
    with pytest.raises(SchemaError, match="unknown key 'zz'") as caught:
        parse_event(payload("custody", {**CUSTODY, "zz": 1, "room": "12b"}))
    assert caught.value.reason == "schema-unknown-field"
