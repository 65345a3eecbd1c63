"""``provgw device show | revoke | fhir | fhir-bulk``: a device's state; revoking; FHIR exports.

A revoked device (a pump stolen from a ward, a monitor sent for scrap) is refused from then on:
every message it signs is quarantined as ``device-revoked``. The revocation is logged in the
transparency log (:func:`gateway.ledger.log.revoke_device`), so no party has to take the site's
word for when it began refusing the device. The verifiers of a running
``provgw serve`` see the revocation at their next batch (their key cache checks the store's
revocations once a batch: :meth:`gateway.service.ingest.StoreBackedRegistry.refresh`). Its stored
history stays, and stays provable. The broker still takes what it sends, since its certificate
is still good: ``provgw broker-acl`` (or ``revoke --broker DIR``) denies it there too, after a
reload of Mosquitto; and its manufacturer can revoke the certificate itself (a CRL in the trust
folder).

What this site decided is one half of a device's standing; its certificate chain is the other.
``show --trust DIR`` checks the stored chain against the gateway's trust folder as the gateway
does (:meth:`~gateway.store.devices.DeviceRow.standing`), so a device the manufacturer revoked,
whose root was taken out or whose certificate ran out is shown as the gateway treats it:
refused, with the reason its messages are quarantined with.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import click

from gateway.core.errors import ProvenanceError
from gateway.ledger.log import revoke_device
from gateway.store.devices import DeviceRow, DeviceStore
from gateway.store.events import EventStore
from gateway.views._files import write_replacing
from gateway.views.cli._broker import check_broker_dir, deny_revoked
from gateway.views.cli._output import (
    db_option,
    emit,
    fail,
    json_option,
    long_work_progress,
    open_existing_db,
    read_trust,
    trust_option,
)

__all__ = ["group"]


def _when(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds")


@click.group("device")
def group() -> None:
    """See a device's keys and state, revoke one the site no longer trusts, export it as FHIR."""


def _not_enrolled(device_id: str, db_path: Path) -> NoReturn:
    fail(
        f"no enrolled device {device_id!r} in {db_path} (a device is enrolled by its first "
        "valid message)",
        hint="check the id with `provgw quarantine list --device ID`, or ask its manufacturer "
        "to revoke its certificate (a CRL in the trust folder)",
        code=1,
    )


def _device_json(device: DeviceRow, store: DeviceStore, events: EventStore) -> dict[str, Any]:
    return {
        "device": device.device_id,
        "manufacturer": device.manufacturer,
        "enrolled": _when(device.enrolled_ms),
        "kid": device.kid.hex(),
        "keys": [
            {"kid": k.kid.hex(), "from": _when(k.valid_from_ms), "to": _when(k.valid_to_ms)}
            for k in store.key_history(device.device_id)
        ],
        "last_seq": device.last_seq,
        "events": events.count_for(device.device_id),
        "quarantined": events.quarantine_open_for(device.device_id),
        "revoked": _when(device.revoked_ms),
        "revoked_reason": device.revoked_reason,
    }


def _certificate_line(certificate: dict[str, Any] | None, trust_dir: Path | None) -> str:
    if certificate is None:
        return "  certificate not checked (add --trust DIR, the gateway's trust.dir)"
    if certificate["accepted"]:
        return f"  certificate accepted by {trust_dir} until {certificate['valid_until']}"
    return (
        f"  CERTIFICATE REFUSED by {trust_dir} ({certificate['reason']}): "
        f"{certificate['detail']} Its messages are quarantined as {certificate['reason']}."
    )


@group.command("show")
@click.argument("device_id")
@db_option
@trust_option("The gateway's trust folder (trust.dir): check the device's certificate chain too.")
@json_option
def show_command(device_id: str, db_path: Path, trust_dir: Path | None, *, as_json: bool) -> None:
    """Show enrolled device DEVICE_ID: its keys, events, open quarantine and revocation.

    With --trust, also whether that trust folder accepts its certificate chain now, and until
    when: a CRL of its manufacturer, a root taken out or an expired certificate makes the gateway
    refuse the device as surely as a revocation here.

    Exit code 0 (also for a revoked or refused device); 1 if no such device is enrolled or the
    trust folder cannot be read.
    """
    trust = read_trust(trust_dir)
    with open_existing_db(db_path) as db:
        store = DeviceStore(db)
        device = store.get(device_id)
        if device is None:
            _not_enrolled(device_id, db_path)
        data = _device_json(device, store, EventStore(db))
    data["certificate"] = (
        None if trust is None else device.standing(trust, datetime.now(UTC)).to_json()
    )
    lines = [
        f"device {device_id} ({data['manufacturer']}), enrolled {data['enrolled']}",
        (
            f"  {data['events']:,} events stored (last seq {data['last_seq']}), "
            f"{data['quarantined']:,} open in the quarantine"
        ),
        *(
            f"  key {k['kid']} from {k['from']}" + (f" to {k['to']}" if k["to"] else " (current)")
            for k in data["keys"]
        ),
        (
            f"  REVOKED {data['revoked']}: {data['revoked_reason'] or '(no reason given)'}"
            if data["revoked"]
            else "  not revoked at this site"
        ),
        _certificate_line(data["certificate"], trust_dir),
    ]
    emit({"ok": True, **data}, as_json=as_json, text="\n".join(lines))


@group.command("revoke")
@click.argument("device_id")
@db_option
@click.option("--reason", required=True, help='Why, for the record: e.g. "stolen from ward 4".')
@click.option(
    "--broker",
    "broker_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also deny it at the broker: the directory `provgw broker-config` wrote (as "
    "`provgw broker-acl`; reload Mosquitto after).",
)
@json_option
def revoke_command(
    device_id: str, db_path: Path, reason: str, broker_dir: Path | None, *, as_json: bool
) -> None:
    """Revoke DEVICE_ID: refuse everything it signs from now on; keep its history.

    A running gateway refuses its messages from its next batch (quarantined as device-revoked).
    With --broker, the broker's ACL is written again to refuse it too (reload Mosquitto to
    apply). There is no undo: a device found again is re-provisioned with a new identity. Exit
    code 0 once revoked (also when it already was: the first revocation, and its reason,
    stand); 1 if no such device is enrolled or --broker is not a broker configuration (checked
    first: then nothing is revoked).
    """
    if not reason.strip():
        fail("a revocation needs a reason", hint='--reason "stolen from ward 4"')
    if broker_dir is not None:
        check_broker_dir(broker_dir)
    broker: dict[str, Any] | None = None
    with open_existing_db(db_path) as db:
        try:
            revocation = revoke_device(db, device_id, reason.strip(), datetime.now(UTC))
        except ProvenanceError as err:
            if err.reason == "unknown-device":
                _not_enrolled(device_id, db_path)
            fail(str(err), code=1)
        store = DeviceStore(db)
        after = store.get(device_id)
        assert after is not None  # revoked, not deleted
        data = _device_json(after, store, EventStore(db))
        if broker_dir is not None:
            broker, broker_text = deny_revoked(broker_dir, store)
    text = (
        f"device {device_id} was already revoked {data['revoked']}: {data['revoked_reason']}"
        if revocation.already
        else (
            f"device {device_id} revoked {data['revoked']}: everything it signs is refused from "
            f"now on (quarantined as device-revoked); its {data['events']:,} stored events stay. "
            f"Logged as entry {revocation.leaf_index} of the transparency log."
        )
    )
    text += (
        "\nThe broker still takes its messages (its certificate is good): run "
        "`provgw broker-acl -o BROKER_DIR --db ...` and reload Mosquitto to refuse it there."
        if broker is None
        else f"\n{broker_text}"
    )
    emit(
        {
            "ok": True,
            "already_revoked": revocation.already,
            "log_index": revocation.leaf_index,
            **data,
            "broker": broker,
        },
        as_json=as_json,
        text=text,
    )


@group.command("fhir")
@click.argument("device_id")
@db_option
@click.option(
    "-o",
    "--out",
    "out",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    required=True,
    help="Where to write the FHIR Bundle (JSON); - for standard output.",
)
@json_option
def fhir_command(device_id: str, db_path: Path, out: Path, *, as_json: bool) -> None:
    """Export DEVICE_ID and its verified history as a FHIR R4B Bundle, for hospital systems.

    One Device (UDI, manufacturer, model, lot, firmware; inactive once revoked) and one
    Provenance per stored event, each with the exact COSE_Sign1 bytes the device signed as its
    signature (the first carries the device's certificate chain: `provgw message verify`
    checks it; the later ones are signed with its key) and the gateway's event id (prove it
    with `provgw log prove EVENT_ID`). Erased events are left out. The Bundle names serial
    numbers: it is for the site's own systems, not for the consortium.

    Exit code 0: written; 1: no such device.
    """
    # Here, not at the top: fhir.resources (pydantic models) takes 0.2 s to import.
    from gateway.views.fhir import FHIR_VERSION, device_bundle  # noqa: PLC0415

    with open_existing_db(db_path) as db:
        exported = device_bundle(db, device_id, now=datetime.now(UTC))
    if exported is None:
        fail(
            f"no device {device_id!r} in {db_path}: not enrolled, not in the inventory, and "
            "no events stored",
            hint="check the id with `provgw quarantine list --device ID`",
            code=1,
        )
    text = exported.to_json()
    if str(out) == "-":
        click.echo(text)
        return
    write_replacing(out, (text + "\n").encode())
    erased = exported.erased
    left_out = f"; {erased:,} erased event{'s' * (erased != 1)} left out" if erased else ""
    emit(
        {
            "ok": True,
            "device": device_id,
            "out": str(out),
            "fhir_version": FHIR_VERSION,
            "provenance": exported.events,
            "erased_left_out": exported.erased,
        },
        as_json=as_json,
        text=f"wrote {out}: FHIR {FHIR_VERSION} Bundle of device {device_id}, 1 Device and "
        f"{exported.events:,} Provenance resources{left_out}",
    )


@group.command("fhir-bulk")
@db_option
@click.option(
    "-o",
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory for Device.ndjson and Provenance.ndjson (made if missing; files replaced).",
)
@click.option(
    "--after",
    "after",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Only the events stored after this event id (the last export's last_event_id).",
)
@json_option
def fhir_bulk_command(db_path: Path, out: Path, after: int, *, as_json: bool) -> None:
    """Export the fleet as FHIR Bulk Data files (NDJSON, FHIR R4B), for a hospital FHIR server.

    Provenance.ndjson holds one Provenance per stored event (as `provgw device fhir` makes
    them, each with the device's signed bytes), Device.ndjson one Device per device. With
    --after EVENT_ID only the events stored since, their devices and the devices revoked
    since: give it the previous export's last event id to keep a FHIR server in step. Every
    resource is validated before it is written; progress on stderr when it is long
    (2,000-3,500 events a second).

    Exit code 0: written.
    """
    # Here, not at the top: fhir.resources (pydantic models) takes 0.2 s to import.
    from gateway.views.fhir import FHIR_VERSION, bulk_export  # noqa: PLC0415

    with open_existing_db(db_path) as db:
        result = bulk_export(
            db, out, after=after, progress=long_work_progress("exported", "events", as_json=as_json)
        )
    left_out = f", {result.erased:,} erased left out" if result.erased else ""
    emit(
        {
            "ok": True,
            "fhir_version": FHIR_VERSION,
            "files": [str(f) for f in result.files],
            "devices": result.devices,
            "provenance": result.provenance,
            "erased_left_out": result.erased,
            "after": after,
            "last_event_id": result.last_event_id,
        },
        as_json=as_json,
        text=f"wrote {out}: {result.devices:,} Device and {result.provenance:,} Provenance "
        f"resources (FHIR {FHIR_VERSION}, events after {after:,}{left_out}); next time: "
        f"--after {result.last_event_id}",
    )
