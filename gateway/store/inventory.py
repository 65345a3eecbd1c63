"""The device inventory: what each device is, where it sits, and which firmware it runs.

Recall impact (:mod:`gateway.store.recalls`) is matched against these rows. A device's current
firmware is the ``to_version`` of its latest installed ``firmware_update`` report (highest
``seq``: the device's own signed word, RFC 9124 §8 reports), or, before any report, the initial
version the inventory import gave. :meth:`Inventory.apply_firmware_events` reads the events table
from where it last stopped, so it can run after every ingest batch and costs nothing when idle.

Rows come from ``devices.json`` (``provgw-sim pki init``): ``id``, ``manufacturer``,
``manufacturer_slug`` (or ``vendor_domain``), ``model``, ``gtin``, ``serial``, ``site``,
``department``, and optionally ``lot`` (GS1 AI 10) and ``firmware_version``. ``devices.json`` has
no lot or firmware version today; a device without them is *undetermined* for lot and firmware
rules (never silently unaffected), unless ``default_versions`` names its model's version.

Serial numbers and lots are stored whole and split as (prefix, trailing number)
(:func:`gateway.core.recall.range_key`) so a recall's range is an index range scan.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.core.cbor import strict_loads
from gateway.core.errors import MalformedError, VerificationError
from gateway.core.manifest import DEMO_DOMAIN_SUFFIX, class_id, vendor_id
from gateway.core.recall import DeviceFacts, range_key
from gateway.core.semver import Version
from gateway.core.udi import Udi
from gateway.store.db import Database
from gateway.store.events import signed_payload

__all__ = ["ImportResult", "Inventory", "InventoryRow"]

#: Columns of :class:`InventoryRow`, in order.
COLUMNS = (
    "device_id, vendor, class, vendor_domain, manufacturer, model, gtin, serial, lot, site,"
    " department, initial_version, version, version_seq, version_ms"
)
_SELECT = "SELECT " + COLUMNS + " FROM inventory"  # noqa: S608 -- constant column list
_EVENT_CHUNK = 2000
# A firmware report moves the version only forward in the device's own seq order (reports may
# arrive out of order). Parameters: version, seq, at_ms, device_id, seq.
_SET_VERSION = (
    "UPDATE inventory SET version = ?, version_seq = ?, version_ms = ?"
    " WHERE device_id = ? AND (version_seq IS NULL OR version_seq < ?)"
)


@dataclass(frozen=True)
class InventoryRow:
    """One device of the inventory."""

    device_id: str
    vendor: bytes
    class_id: bytes
    vendor_domain: str
    manufacturer: str
    model: str
    gtin: str
    serial: str
    lot: str | None
    site: str
    department: str
    initial_version: str | None
    version: str | None
    version_seq: int | None
    version_ms: int | None

    def facts(self) -> DeviceFacts:
        """Return what recall rules need to know about this device."""
        return DeviceFacts(
            self.device_id,
            uuid.UUID(bytes=self.vendor),
            uuid.UUID(bytes=self.class_id),
            self.gtin,
            self.serial,
            self.lot,
            self.version,
        )

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "device_id": self.device_id,
            "manufacturer": self.manufacturer,
            "vendor_domain": self.vendor_domain,
            "model": self.model,
            "gtin": self.gtin,
            "serial": self.serial,
            "lot": self.lot,
            "site": self.site,
            "department": self.department,
            "version": self.version,
            "version_from": "inventory" if self.version_seq is None else "firmware_update",
        }


@dataclass(frozen=True)
class ImportResult:
    """What an import did: rows added, rows updated."""

    added: int
    updated: int


def _text(row: Mapping[str, Any], key: str, where: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise MalformedError(f"{where} has no {key!r}.", reason="inventory-row")
    return value


def _optional(row: Mapping[str, Any], key: str, where: str) -> str | None:
    value = row.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise MalformedError(f"{where}: {key!r} must be text.", reason="inventory-row")
    return value


def _values(
    index: int, row: object, default_versions: Mapping[str, str], now_ms: int
) -> tuple[Any, ...]:
    where = f"Device row {index}"
    if not isinstance(row, Mapping):
        raise MalformedError(f"{where} is not an object.", reason="inventory-row")
    device_id = _text(row, "id", where)
    where = f"Device {device_id!r}"
    model = _text(row, "model", where)
    domain = row.get("vendor_domain") or f"{_text(row, 'manufacturer_slug', where)}"
    domain = domain if "." in domain else f"{domain}{DEMO_DOMAIN_SUFFIX}"
    lot = _optional(row, "lot", where)
    # The UDI's rules (GTIN-14 check digit, serial and lot character sets: GS1 Gen Specs §7.9,
    # §3.2) are checked here so a recall's GTIN or lot can match what the label says.
    udi = Udi(gtin=_text(row, "gtin", where), serial=_text(row, "serial", where), lot=lot)
    version = _optional(row, "firmware_version", where) or default_versions.get(model)
    if version is not None:
        Version.parse(version, strict=False)  # MalformedError for a version rules cannot compare
    vendor = vendor_id(domain)
    serial_prefix, serial_num = range_key(udi.serial)
    lot_prefix, lot_num = range_key(lot) if lot is not None else (None, None)
    return (
        device_id,
        vendor.bytes,
        class_id(vendor, model).bytes,
        domain,
        str(row.get("manufacturer") or domain),
        model,
        udi.gtin,
        udi.serial,
        serial_prefix,
        serial_num,
        lot,
        lot_prefix,
        lot_num,
        str(row.get("site") or "unknown"),
        str(row.get("department") or "unknown"),
        version,
        now_ms,
    )


class Inventory:
    """The device inventory in the gateway database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- import -----------------------------------------------------------------------------------

    def import_rows(
        self,
        rows: Iterable[object],
        *,
        now: datetime,
        default_versions: Mapping[str, str] | None = None,
    ) -> ImportResult:
        """Add or update devices from ``devices.json``-shaped rows, all in one transaction.

        Every row is checked first (UDI rules, version syntax); one bad row refuses the whole
        import with :class:`MalformedError` naming it. A re-import updates what a device is and
        where it sits; a version set by a ``firmware_update`` report is kept, an initial version
        only replaces another initial version.
        """
        now_ms = int(now.timestamp() * 1000)
        defaults = default_versions or {}
        values = [_values(i, row, defaults, now_ms) for i, row in enumerate(rows)]
        with self._db.atomic() as conn:
            before = int(conn.execute("SELECT count(*) FROM inventory").fetchone()[0])
            conn.executemany(
                "INSERT INTO inventory (device_id, vendor, class, vendor_domain, manufacturer,"
                " model, gtin, serial, serial_prefix, serial_num, lot, lot_prefix, lot_num, site,"
                " department, initial_version, version, imported_ms)"
                " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,"
                " ?16, ?17)"
                " ON CONFLICT (device_id) DO UPDATE SET vendor = excluded.vendor,"
                " class = excluded.class, vendor_domain = excluded.vendor_domain,"
                " manufacturer = excluded.manufacturer, model = excluded.model,"
                " gtin = excluded.gtin, serial = excluded.serial,"
                " serial_prefix = excluded.serial_prefix, serial_num = excluded.serial_num,"
                " lot = excluded.lot, lot_prefix = excluded.lot_prefix, lot_num = excluded.lot_num,"
                " site = excluded.site, department = excluded.department,"
                " initial_version = excluded.initial_version,"
                " version = CASE WHEN inventory.version_seq IS NULL"
                "   THEN excluded.initial_version ELSE inventory.version END,"
                " imported_ms = excluded.imported_ms",
                values,
            )
            after = int(conn.execute("SELECT count(*) FROM inventory").fetchone()[0])
        added = after - before
        return ImportResult(added, len({v[0] for v in values}) - added)

    def import_devices_json(
        self,
        path: Path | str,
        *,
        now: datetime | None = None,
        default_versions: Mapping[str, str] | None = None,
    ) -> ImportResult:
        """Import ``devices.json`` (``provgw-sim pki init``); see :meth:`import_rows`."""
        try:
            rows = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise MalformedError(
                f"Cannot read {path}: {exc.strerror or exc}.", reason="inventory-file"
            ) from exc
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedError(f"{path} is not JSON: {exc}.", reason="inventory-file") from exc
        if not isinstance(rows, list):
            raise MalformedError(
                f"{path} must be a JSON list of device objects.", reason="inventory-file"
            )
        return self.import_rows(
            rows, now=now or datetime.now(UTC), default_versions=default_versions
        )

    # -- firmware -------------------------------------------------------------------------------

    def record_firmware(self, device_id: str, version: str, *, seq: int, at_ms: int) -> bool:
        """Set a device's current firmware from its installed ``firmware_update`` (*seq*).

        Applied only when *seq* is above the report that set the current version (reports may
        arrive out of order); returns whether it was applied. Unknown devices are ignored.
        """
        Version.parse(version, strict=False)
        with self._db.atomic() as conn:
            cursor = conn.execute(_SET_VERSION, (version, seq, at_ms, device_id, seq))
            return cursor.rowcount > 0

    def apply_firmware_events(self) -> int:
        """Apply ``firmware_update`` reports stored since the last call; return how many applied.

        Only ``result == "installed"`` changes the firmware; ``failed`` and ``rejected`` leave the
        device on what it ran. One transaction: the cursor and the versions move together.
        """
        applied = 0
        with self._db.atomic() as conn:
            row = conn.execute("SELECT last_event FROM inventory_cursor WHERE id = 1").fetchone()
            start = last = int(row[0]) if row else 0
            while True:
                events = conn.execute(
                    "SELECT id, device_id, seq, received_ms, raw FROM events"
                    " WHERE id > ? AND type = 'firmware_update' ORDER BY id LIMIT ?",
                    (last, _EVENT_CHUNK),
                ).fetchall()
                if not events:
                    break
                for event_id, device_id, seq, received_ms, raw in events:
                    last = int(event_id)
                    version = _installed_version(signed_payload(raw))
                    if version is None:
                        continue
                    applied += conn.execute(
                        _SET_VERSION, (version, seq, received_ms, device_id, seq)
                    ).rowcount
            if last != start:  # nothing read: no write, so the tick costs ingest no WAL frame
                conn.execute(
                    "INSERT INTO inventory_cursor (id, last_event) VALUES (1, ?)"
                    " ON CONFLICT (id) DO UPDATE SET last_event = excluded.last_event",
                    (last,),
                )
        return applied

    # -- reading ---------------------------------------------------------------------------------

    def get(self, device_id: str) -> InventoryRow | None:
        """Return one device, if in the inventory."""
        rows = self._db.query(f"{_SELECT} WHERE device_id = ?", (device_id,))
        return InventoryRow(*rows[0]) if rows else None

    def all(self) -> list[InventoryRow]:
        """Return every device, by id."""
        rows = self._db.query(f"{_SELECT} ORDER BY device_id")
        return [InventoryRow(*r) for r in rows]

    def count(self) -> int:
        """Return how many devices the inventory holds."""
        return int(self._db.query("SELECT count(*) FROM inventory")[0][0])


def _installed_version(payload: bytes) -> str | None:
    # The events table holds only verified events (schema checked on ingest); still, a row that
    # does not read as an installed firmware_update is skipped, never guessed at.
    try:
        item = strict_loads(payload, what="event payload")
        body = item["body"]
        if body["result"] != "installed":
            return None
        version = body["to_version"]
        Version.parse(version, strict=False)
    except (VerificationError, KeyError, TypeError):
        return None
    return version if isinstance(version, str) else None
