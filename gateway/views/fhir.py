"""FHIR export: one device and its verified history as a FHIR ``Bundle`` for hospital systems.

A hospital's CMMS, EHR integration engine or FHIR server takes device data as FHIR, not as our
SQLite file. :func:`device_bundle` maps what the gateway holds of one device to a ``collection``
Bundle of FHIR R4B (4.3.0, :data:`FHIR_VERSION`) resources, validated with ``fhir.resources``'
R4B models. R4B is R4 with a few resources revised; Device and Provenance are not among them:

- one **Device**: the UDI (``udiCarrier``: GS1 device identifier and the human-readable form,
  ``serialNumber``), manufacturer, model, lot, the firmware version the inventory knows, and
  ``status`` ``inactive`` once the site revoked it (``provgw device revoke``);
- one **Provenance** per stored event, oldest first: its ``target`` and ``agent`` (``author``)
  are the Device, ``occurredDateTime`` the event's time, ``recorded`` when the gateway received
  it, ``activity`` the event type (with the one-line summary the web UI shows), ``entity`` the
  gateway's event id (``provgw log prove EVENT_ID`` proves it in the transparency log), and
  ``signature`` the exact COSE_Sign1 bytes the device signed (``sigFormat``
  ``application/cose``), which a receiver checks without trusting this export: the first
  message carries the device's certificate chain (``provgw message verify`` checks it against
  the manufacturers' roots), the later ones are signed with that certificate's key.

:func:`bulk_export` writes the same resources for the whole fleet, or for the events after a
given one, as FHIR Bulk Data files (NDJSON, one resource a line: ``Device.ndjson``,
``Provenance.ndjson``), which FHIR servers import ($import, or a loader); there each resource
has an ``id`` (the UUID of its Bundle ``fullUrl``) and references are ``Device/<id>``.

Erased events (``provgw erase``) are left out: their bytes are gone. The Bundle is validated
whole by the ``fhir.resources`` models before it is handed out, so one that does not validate
is never written; it is then written as JSON directly (:meth:`ExportedBundle.to_json`).
The export is for the site's own systems: it names serial numbers and lots (never PHI, which
the gateway does not hold), unlike the transparency log, which holds only salted commitments.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fhir.resources.R4B import __fhir_version__
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.provenance import Provenance

from gateway.core.errors import MalformedError
from gateway.core.udi import Udi
from gateway.store.devices import DeviceStore
from gateway.store.events import EventStore
from gateway.store.inventory import Inventory
from gateway.views._events import event_body, summary
from gateway.views._files import write_partial

if TYPE_CHECKING:
    from gateway.store.db import Database
    from gateway.store.devices import DeviceRow
    from gateway.store.events import StoredEvent
    from gateway.store.inventory import InventoryRow

__all__ = [
    "ACTIVITY_SYSTEM",
    "DEVICE_ID_SYSTEM",
    "EVENT_ID_SYSTEM",
    "FHIR_VERSION",
    "BulkExport",
    "ExportedBundle",
    "bulk_export",
    "device_bundle",
]

#: The FHIR version of the export (``fhir.resources.R4B``'s).
FHIR_VERSION: str = __fhir_version__

#: Code system of ``Provenance.activity``: the event types of DESIGN.md ("Event types").
ACTIVITY_SYSTEM = "urn:provgw:event-type"
#: Identifier system of the gateway's device ids (``{gtin14}-{serial}``).
DEVICE_ID_SYSTEM = "urn:provgw:device-id"
#: Identifier system of the gateway's event ids (``provgw log prove EVENT_ID``).
EVENT_ID_SYSTEM = "urn:provgw:event-id"
#: GS1's device identifier namespace for ``udiCarrier.issuer`` (FHIR Device).
_GS1_ISSUER = "http://hl7.org/fhir/NamingSystem/gs1-di"
_PARTICIPANT = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
#: ASTM E1762 signature type "Verification Signature" (FHIR's signature-type value set).
_SIGNATURE_TYPE = {"system": "urn:iso-astm:E1762-95:2013", "code": "1.2.840.10065.1.12.1.5"}
#: Namespace of the bundle's ``urn:uuid`` full URLs: the same device or event always gets the
#: same one, so exports taken at different times can be matched entry by entry.
_NAMESPACE = uuid.UUID("5b0c5c3e-8d1f-4a59-9a70-6f2b8a1d4c17")


@dataclass(frozen=True)
class ExportedBundle:
    """A validated FHIR Bundle of one device, and what went into it."""

    #: The Bundle as FHIR JSON's data model, checked by ``fhir.resources``' R4B ``Bundle``.
    document: dict[str, Any]
    #: Provenance resources in it: the stored events, less the erased ones.
    events: int
    #: Stored events left out because they were erased (``provgw erase``).
    erased: int

    def to_json(self) -> str:
        """Return the Bundle as FHIR JSON (absent elements left out, as FHIR requires).

        The document as validated, written by :func:`json.dumps`: the model's own
        ``model_dump_json`` would cost 320 µs an event more, 1.6x the validation itself
        (measured, 201 events).
        """
        return _json(self.document)


def _device_uuid(device_id: str) -> str:
    """Return the device's UUID: its Bundle entry's ``urn:uuid``, its Bulk resource's ``id``."""
    return str(uuid.uuid5(_NAMESPACE, f"device:{device_id}"))


def _event_uuid(event: StoredEvent) -> str:
    """Return the same for an event's Provenance, from (device, seq): stable across exports."""
    return str(uuid.uuid5(_NAMESPACE, f"event:{event.device_id}:{event.seq}"))


def _instant(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


def device_bundle(db: Database, device_id: str, *, now: datetime) -> ExportedBundle | None:
    """Return device *device_id* and its stored history as a FHIR Bundle; None if unknown.

    *now* is the Bundle's ``timestamp``. Known means enrolled, in the inventory, or with stored
    events, as for ``provgw device show`` and the web UI's device page.
    """
    enrolled = DeviceStore(db).get(device_id)
    inventory = Inventory(db).get(device_id)
    history = EventStore(db).history(device_id)
    if enrolled is None and inventory is None and not history:
        return None
    device_url = f"urn:uuid:{_device_uuid(device_id)}"
    entries = [{"fullUrl": device_url, "resource": _device(device_id, enrolled, inventory)}]
    kept = [event for event in history if event.salt is not None]
    entries += [
        {
            "fullUrl": f"urn:uuid:{_event_uuid(event)}",
            "resource": _provenance(event, device_url),
        }
        for event in kept
    ]
    document = {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": now.isoformat(timespec="milliseconds"),
        "entry": entries,
    }
    # Every element checked against FHIR R4B (types, cardinalities, value formats): a document
    # that would not validate raises here (pydantic's ValidationError), and is never written.
    Bundle.model_validate(document)
    return ExportedBundle(document, events=len(kept), erased=len(history) - len(kept))


#: Devices revoked at or after the arrival of event ``?`` (from the revoked devices' index).
_REVOKED_SINCE = (
    "SELECT device_id FROM devices"
    " WHERE revoked_ms >= (SELECT received_ms FROM events WHERE id = ?)"
)
#: Events read (and validated) per chunk of :func:`bulk_export`: bounded memory on any store.
_BULK_CHUNK = 1000


@dataclass(frozen=True)
class BulkExport:
    """What :func:`bulk_export` wrote."""

    devices: int
    provenance: int
    #: Erased events in the range, left out.
    erased: int
    #: The highest event id the export covers: the next export's *after*, for the events since.
    last_event_id: int
    files: tuple[Path, ...]


def bulk_export(
    db: Database,
    directory: Path,
    *,
    after: int = 0,
    progress: Callable[[int, int], object] = lambda _done, _total: None,
) -> BulkExport:
    """Write FHIR Bulk Data NDJSON files of the fleet's devices and events into *directory*.

    ``Provenance.ndjson``: every stored event with an id above *after*, in id order (erased ones
    left out). ``Device.ndjson``: with *after* 0, every device the gateway knows (enrolled, in
    the inventory or with events); else the devices of those events (a ``firmware_update``
    changes the firmware shown) and those revoked since event *after* arrived (the status).
    Each resource is validated before it is written, events are read :data:`_BULK_CHUNK` at a
    time (*progress(done, total)* after each), and each file is written beside its name and
    renamed into place at the end: an export that fails leaves no half file under the final
    names.
    """
    directory.mkdir(parents=True, exist_ok=True)
    events_store = EventStore(db)
    total = events_store.count_after(after)
    seen: set[str] = set()
    written = erased = done = 0
    last = after

    def provenance_lines() -> Iterator[str]:
        nonlocal written, erased, done, last
        while chunk := events_store.after(last, limit=_BULK_CHUNK):
            for event in chunk:
                if event.salt is None:
                    erased += 1
                    continue
                resource = _with_id(
                    _provenance(event, "Device/" + _device_uuid(event.device_id)),
                    _event_uuid(event),
                )
                Provenance.model_validate(resource)
                seen.add(event.device_id)
                written += 1
                yield _line(resource)
            last = chunk[-1].id
            done += len(chunk)
            progress(min(done, total), max(total, done))

    def device_lines() -> Iterator[str]:
        inventory = {row.device_id: row for row in Inventory(db).all()}
        if after == 0:
            seen.update(inventory)
            seen.update(str(r[0]) for r in db.query("SELECT device_id FROM devices"))
        else:  # and the devices revoked since that event arrived: their status changed
            seen.update(str(r[0]) for r in db.query(_REVOKED_SINCE, (after,)))
        enrolled = DeviceStore(db).get_many(sorted(seen))
        for device_id in sorted(seen):
            resource = _with_id(
                _device(device_id, enrolled.get(device_id), inventory.get(device_id)),
                _device_uuid(device_id),
            )
            Device.model_validate(resource)
            yield _line(resource)

    files = (directory / "Device.ndjson", directory / "Provenance.ndjson")
    partials: list[Path] = []
    try:
        # Provenance first: it names the devices the Device file then holds.
        partials.append(write_partial(files[1], (line.encode() for line in provenance_lines())))
        partials.append(write_partial(files[0], (line.encode() for line in device_lines())))
        for partial, final in zip(partials, files[::-1], strict=True):
            partial.replace(final)
    finally:
        for partial in partials:
            partial.unlink(missing_ok=True)  # only left there when a later step failed
    return BulkExport(
        devices=len(seen), provenance=written, erased=erased, last_event_id=last, files=files
    )


def _with_id(resource: dict[str, Any], resource_id: str) -> dict[str, Any]:
    # The id next to the type, where a person reading the line looks for it.
    return {"resourceType": resource["resourceType"], "id": resource_id, **resource}


def _json(document: dict[str, Any]) -> str:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


def _line(resource: dict[str, Any]) -> str:
    return _json(resource) + "\n"


def _device(
    device_id: str, enrolled: DeviceRow | None, inventory: InventoryRow | None
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Device",
        "identifier": [{"system": DEVICE_ID_SYSTEM, "value": device_id}],
        "status": "inactive" if enrolled is not None and enrolled.revoked else "active",
    }
    try:
        udi = Udi.from_device_id(device_id)
    except MalformedError:
        udi = None  # not a UDI-based id (a test or a legacy device): no UDI to state
    if udi is not None:
        resource["udiCarrier"] = [
            {"deviceIdentifier": udi.gtin, "issuer": _GS1_ISSUER, "carrierHRF": udi.canonical}
        ]
        resource["serialNumber"] = udi.serial
    manufacturer = (
        inventory.manufacturer if inventory else enrolled.manufacturer if enrolled else None
    )
    if manufacturer:
        resource["manufacturer"] = manufacturer
    if inventory is not None:
        resource["deviceName"] = [{"name": inventory.model, "type": "model-name"}]
        if inventory.lot:
            resource["lotNumber"] = inventory.lot
        if inventory.version:
            resource["version"] = [{"type": {"text": "firmware"}, "value": inventory.version}]
    return resource


def _provenance(event: StoredEvent, device_url: str) -> dict[str, Any]:
    device = {"reference": device_url}
    return {
        "resourceType": "Provenance",
        "target": [device],
        "occurredDateTime": _instant(event.event_time_ms),
        "recorded": _instant(event.received_ms),
        "activity": {
            "coding": [{"system": ACTIVITY_SYSTEM, "code": event.type}],
            "text": summary(event.type, event_body(event)),
        },
        "agent": [
            {"type": {"coding": [{"system": _PARTICIPANT, "code": "author"}]}, "who": device}
        ],
        "entity": [
            {
                "role": "source",
                "what": {
                    "identifier": {"system": EVENT_ID_SYSTEM, "value": str(event.id)},
                    "display": f"gateway event {event.id} (seq {event.seq})",
                },
            }
        ],
        "signature": [
            {
                "type": [_SIGNATURE_TYPE],
                "when": _instant(event.event_time_ms),  # the device signs as the event happens
                "who": device,
                "sigFormat": "application/cose",
                "data": base64.b64encode(event.raw).decode("ascii"),
            }
        ],
    }
