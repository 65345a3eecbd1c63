"""Device events: closed CBOR maps, validated after the signature.

Every device event payload is one CBOR map::

    {"v": 1, "type": TYPE, "device": DEVICE_ID, "seq": UINT, "time": MS_SINCE_EPOCH, "body": {}}

and ``body`` is the closed map of its type (DESIGN.md, "Event types"):

``firmware_update``
    SUIT-report-like (RFC 9124 §8 reports; FD&C Act 524B): what was installed, from which signed
    manifest, with what result, and why (routine rollout, a recall, a CVE).
``maintenance``
    A work order (scheduled PM, corrective, acceptance, electrical safety test, recall action)
    with its outcome and, for safety tests, the measured values (AAMI EQ56, IEC 62353).
``custody``
    GS1 EPCIS 2.0 ObjectEvent shape with CBV 2.0 business steps and dispositions. Location is only
    ever a facility and a department *class* -- never a room, bed or patient.
``key_rotation``
    The device announces its next certificate; the message is signed with the old key.

"Closed" means an unknown key is an error, not ignored: a field we do not know could carry PHI,
and a verifier that ignores fields lets two parties read one record two ways.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, Final

from gateway.core import cbor
from gateway.core.errors import SchemaError

__all__ = [
    "EVENT_TYPES",
    "FORMAT_VERSION",
    "Event",
    "parse_event",
]

FORMAT_VERSION: Final = 1

_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)
_TOKEN = re.compile(r"^[A-Za-z0-9._:/-]{1,64}$")  # ids: work orders, recall ids, CVE ids, GLNs
_CVE = re.compile(r"^CVE-\d{4}-\d{4,}$")
_MAX_TEXT = 256
_MAX_U64 = 2**64 - 1

Check = Callable[[str, Any], Any]


def _fail(path: str, what: str) -> SchemaError:
    return SchemaError(f"Field '{path}' {what}.", reason="schema")


def _text(path: str, value: object) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_TEXT:
        raise _fail(path, f"must be text of 1 to {_MAX_TEXT} characters")
    return value


def _token(path: str, value: object) -> str:
    if not isinstance(value, str) or not _TOKEN.match(value):
        raise _fail(path, "must be an identifier of 1-64 letters, digits or . _ : / -")
    return value


def _uint(path: str, value: object) -> int:
    # bool is an int subclass in Python; CBOR true is not a number. (type() first: the cheap
    # test for what a decoder returns.)
    if (type(value) is int or (isinstance(value, int) and not isinstance(value, bool))) and (
        0 <= value <= _MAX_U64
    ):
        return value
    raise _fail(path, "must be an unsigned integer")


def _number(path: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise _fail(path, "must be a number")
    return float(value)


def _bool(path: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _fail(path, "must be true or false")
    return value


def _digest(path: str, value: object) -> bytes:
    if not isinstance(value, bytes) or len(value) != 32:
        raise _fail(path, "must be a 32-byte SHA-256 digest")
    return value


def _semver(path: str, value: object) -> str:
    if not isinstance(value, str) or not _SEMVER.match(value):
        raise _fail(path, "must be a semantic version such as 4.2.10")
    return value


def _iso_date(path: str, value: object) -> str:
    if not isinstance(value, str) or len(value) != 10:
        raise _fail(path, "must be a date written YYYY-MM-DD")
    try:
        date.fromisoformat(value)
    except ValueError:
        raise _fail(path, "must be a date written YYYY-MM-DD") from None
    return value


def _one_of(*allowed: str) -> Check:
    members = frozenset(allowed)

    def check(path: str, value: object) -> str:
        if not isinstance(value, str) or value not in members:
            raise _fail(path, "must be one of " + ", ".join(allowed))
        return str(value)

    return check


def _der_chain(path: str, value: object) -> tuple[bytes, ...]:
    if (
        not isinstance(value, list)
        or not 1 <= len(value) <= 4
        or not all(isinstance(c, bytes) and 0 < len(c) <= 8192 for c in value)
    ):
        raise _fail(path, "must be a list of 1 to 4 DER certificates, leaf first")
    return tuple(value)


@dataclass(frozen=True)
class _Field:
    check: Check
    required: bool = True


class _Table:
    """The fields of one closed map.

    Per path the map is met at, the table keeps its ``(name, check, required, sub-path)`` plan:
    paths are fixed by the schema (list items add at most ``max_items`` of them), and formatting
    them per message was a third of the check time.
    """

    __slots__ = ("_plans", "fields", "names")

    def __init__(self, fields: Mapping[str, _Field]) -> None:
        self.fields = dict(fields)
        self.names = self.fields.keys()
        self._plans: dict[str, tuple[tuple[str, Check, bool, str], ...]] = {}

    def plan(self, path: str) -> tuple[tuple[str, Check, bool, str], ...]:
        """Return the fields' checks with their paths below *path*."""
        plan = self._plans.get(path)
        if plan is None:
            plan = self._plans[path] = tuple(
                (name, spec.check, spec.required, f"{path}.{name}" if path else name)
                for name, spec in self.fields.items()
            )
        return plan


def _closed_map(path: str, value: object, table: _Table) -> dict[str, Any]:
    """Check *value* is a map with exactly the known keys; return the checked values."""
    if not isinstance(value, dict):
        raise _fail(path, "must be a map")
    # Closed: an unknown key is an error, never ignored (smuggled fields, e.g. PHI; two readers
    # reading one record two ways). A set comparison first: unknown keys are the rare case.
    if not table.names >= value.keys():
        unknown = [k for k in value if k not in table.fields]
        raise SchemaError(
            f"Field '{path}' has unknown key {unknown[0]!r}: this event format is closed, "
            "so the device firmware and the gateway disagree on the format.",
            reason="schema-unknown-field",
        )
    out: dict[str, Any] = {}
    for name, check, required, sub in table.plan(path):
        if name in value:
            out[name] = check(sub, value[name])
        elif required:
            raise SchemaError(f"Field '{sub}' is missing.", reason="schema-missing-field")
    return out


def _list_of(check: Check, max_items: int) -> Check:
    def checked(path: str, value: object) -> tuple[Any, ...]:
        if not isinstance(value, list) or len(value) > max_items:
            raise _fail(path, f"must be a list of at most {max_items} items")
        return tuple(check(f"{path}[{i}]", item) for i, item in enumerate(value))

    return checked


def _map_of(table: _Table) -> Check:
    def checked(path: str, value: object) -> dict[str, Any]:
        return _closed_map(path, value, table)

    return checked


# --- firmware_update (SUIT report shape, RFC 9124; FD&C Act 524B) --------------------------------

_TRIGGERS = ("routine", "recall", "cve")


_FIRMWARE_FIELDS: Final = _Table(
    {
        "from_version": _Field(_semver),
        "to_version": _Field(_semver),
        "manifest_digest": _Field(_digest),
        "image_digest": _Field(_digest),
        "result": _Field(_one_of("installed", "failed", "rejected")),
        "detail": _Field(_text, required=False),
        "trigger": _Field(_one_of(*_TRIGGERS)),
        "trigger_ref": _Field(_token, required=False),
        "cycle": _Field(_one_of("routine", "out_of_cycle")),
    }
)


def _check_firmware(path: str, value: object) -> dict[str, Any]:
    body = _closed_map(path, value, _FIRMWARE_FIELDS)
    # A recall- or CVE-triggered install must say which one, or the remediation cannot be traced.
    if body["trigger"] != "routine" and "trigger_ref" not in body:
        raise _fail(f"{path}.trigger_ref", f"is required when trigger is {body['trigger']!r}")
    if body["trigger"] == "cve" and not _CVE.match(body["trigger_ref"]):
        raise _fail(f"{path}.trigger_ref", "must be a CVE id such as CVE-2026-12345")
    return body


# --- maintenance (AAMI EQ56 work orders; IEC 62353 safety tests) ---------------------------------

# IEC 62353 recurrent-test measurements and the unit each must be reported in.
_SAFETY_UNITS = {
    "protective_earth_resistance": "ohm",
    "insulation_resistance": "Mohm",
    "equipment_leakage": "uA",
    "applied_part_leakage": "uA",
    "patient_leakage": "uA",
}


_SAFETY_TEST_FIELDS: Final = _Table(
    {
        "test": _Field(_one_of(*_SAFETY_UNITS)),
        "value": _Field(_number),
        "unit": _Field(_text),
        "limit": _Field(_number),
        "pass": _Field(_bool),
    }
)


def _check_safety_test(path: str, value: object) -> dict[str, Any]:
    test = _closed_map(path, value, _SAFETY_TEST_FIELDS)
    if test["unit"] != _SAFETY_UNITS[test["test"]]:
        raise _fail(f"{path}.unit", f"must be {_SAFETY_UNITS[test['test']]!r} for {test['test']}")
    return test


_MAINTENANCE_FIELDS: Final = _Table(
    {
        "work_order": _Field(_token),
        "kind": _Field(
            _one_of(
                "scheduled_pm", "corrective", "acceptance", "electrical_safety", "recall_action"
            )
        ),
        "status": _Field(_one_of("pass", "corrective", "deferred")),
        "next_due": _Field(_iso_date, required=False),
        "procedure_version": _Field(_token),
        "test_equipment": _Field(_token, required=False),
        "safety_tests": _Field(_list_of(_check_safety_test, 32), required=False),
        "recall_id": _Field(_token, required=False),
    }
)


def _check_maintenance(path: str, value: object) -> dict[str, Any]:
    body = _closed_map(path, value, _MAINTENANCE_FIELDS)
    if body["kind"] == "recall_action" and "recall_id" not in body:
        raise _fail(f"{path}.recall_id", "is required when kind is 'recall_action'")
    if body["kind"] == "electrical_safety" and not body.get("safety_tests"):
        raise _fail(f"{path}.safety_tests", "must list the measurements of a safety test")
    return body


# --- custody (GS1 EPCIS 2.0 ObjectEvent; CBV 2.0 vocabularies) -----------------------------------

BIZ_STEPS = (
    "commissioning",
    "shipping",
    "receiving",
    "accepting",
    "installing",
    "inspecting",
    "repairing",
    "storing",
    "decommissioning",
    "destroying",
)
DISPOSITIONS = (
    "active",
    "in_progress",
    "in_transit",
    "available",
    "unavailable",
    "needs_replacement",
    "non_conformant",
    "recalled",
    "inactive",
    "damaged",
    "destroyed",
)
# The finest location the format can express: no room, no bed, no patient (DESIGN.md rule).
DEPARTMENT_CLASSES = (
    "icu",
    "emergency",
    "operating_room",
    "general_ward",
    "imaging",
    "outpatient",
    "biomed_workshop",
    "storage",
    "external",
)


_LOCATION_FIELDS: Final = _Table(
    {
        "facility": _Field(_token),  # facility GLN (urn:epc:id:sgln:...) or consortium party id
        "department_class": _Field(_one_of(*DEPARTMENT_CLASSES)),
    }
)


def _check_location(path: str, value: object) -> dict[str, Any]:
    return _closed_map(path, value, _LOCATION_FIELDS)


_ERROR_DECLARATION_FIELDS: Final = _Table(
    {
        "corrects_seq": _Field(_uint),
        "reason": _Field(_one_of("did_not_occur", "incorrect_data")),
    }
)


def _check_error_declaration(path: str, value: object) -> dict[str, Any]:
    # EPCIS 2.0 §7.4.1.4 errorDeclaration: this event corrects an earlier one of the same device.
    return _closed_map(path, value, _ERROR_DECLARATION_FIELDS)


_CUSTODY_FIELDS: Final = _Table(
    {
        "biz_step": _Field(_one_of(*BIZ_STEPS)),
        "disposition": _Field(_one_of(*DISPOSITIONS)),
        "source": _Field(_token, required=False),  # party: pgln of the sender
        "destination": _Field(_token, required=False),  # party: pgln of the receiver
        "location": _Field(_check_location, required=False),
        "error_declaration": _Field(_check_error_declaration, required=False),
    }
)


def _check_custody(path: str, value: object) -> dict[str, Any]:
    return _closed_map(path, value, _CUSTODY_FIELDS)


_KEY_ROTATION_FIELDS: Final = _Table(
    {
        "new_x5chain": _Field(_der_chain),
        "reason": _Field(_one_of("scheduled", "certificate_renewal")),
    }
)


def _check_key_rotation(path: str, value: object) -> dict[str, Any]:
    return _closed_map(path, value, _KEY_ROTATION_FIELDS)


_BODIES: Final[Mapping[str, Check]] = {
    "firmware_update": _check_firmware,
    "maintenance": _check_maintenance,
    "custody": _check_custody,
    "key_rotation": _check_key_rotation,
}
EVENT_TYPES: Final = tuple(sorted(_BODIES))


_TOP_FIELDS: Final = _Table(
    {
        "v": _Field(_uint),
        "type": _Field(_text),
        "device": _Field(_text),
        "seq": _Field(_uint),
        "time": _Field(_uint),
        "body": _Field(lambda _p, v: v),  # checked by its type's table, step 3
    }
)


@dataclass(frozen=True)
class Event:
    """A schema-valid device event (not yet bound to a signer: see ``gateway.core.messages``)."""

    type: str
    device: str
    seq: int
    time_ms: int
    body: Mapping[str, Any]

    def to_cbor_map(self) -> dict[str, Any]:
        """Return the payload map this event is encoded as."""
        return {
            "v": FORMAT_VERSION,
            "seq": self.seq,
            "body": dict(self.body),
            "time": self.time_ms,
            "type": self.type,
            "device": self.device,
        }

    def to_cbor(self) -> bytes:
        """Return the deterministic encoding of this event: ``cbor.dumps(self.to_cbor_map())``.

        What a device signs. The gateway stores the message the device actually sent
        (``raw``), never this re-encoding.
        """
        return cbor.dumps(self.to_cbor_map())


def parse_event(payload: object) -> Event:
    """Check a decoded payload against the closed schema of its type.

    Steps (each stops a named threat):

    1. top level is a closed map with a known format version (format confusion);
    2. ``type`` is a known event type (unknown types are never stored half-understood);
    3. ``body`` is the closed map of that type (smuggled fields, e.g. PHI; ambiguous records).
    """
    # Step 1: closed envelope and format version.
    top = _closed_map("", payload, _TOP_FIELDS)
    if top["v"] != FORMAT_VERSION:
        raise SchemaError(
            f"Event format version {top['v']} is not supported (this gateway reads version "
            f"{FORMAT_VERSION}); update the gateway or the device firmware.",
            reason="schema-version",
        )
    # Step 2: a known type.
    check = _BODIES.get(top["type"])
    if check is None:
        raise SchemaError(
            f"Event type {top['type']!r} is unknown; known types are {', '.join(EVENT_TYPES)}.",
            reason="schema-unknown-type",
        )
    # Step 3: the closed body of that type.
    body = check("body", top["body"])
    return Event(
        type=top["type"],
        device=top["device"],
        seq=top["seq"],
        time_ms=top["time"],
        body=body,
    )
