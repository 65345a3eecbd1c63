"""What each page shows: JSON-ready dicts from the same store and ledger calls the CLI makes.

- overview: :class:`EventStore` counts, :class:`Inventory`, enrolled devices (each with its
  certificate's standing, :class:`StandingCache`), and the log's latest checkpoint
  (:meth:`TransparencyLog.latest_checkpoint` and its status);
- device: :meth:`EventStore.history`, :meth:`DeviceRow.standing` (the certificate chain against
  the trust folder, as ``provgw device show --trust``), and per event
  :meth:`TransparencyLog.leaf_of` and :meth:`TransparencyLog.covering_checkpoint` (the
  checkpoint a receipt is issued under, so the state shown is the receipt's: logged ->
  witnessed -> anchored);
- receipt: :func:`issue_receipt` then :func:`verify_receipt`, as ``provgw log prove --out``;
- recalls: :meth:`RecallStore.summaries` (``provgw recall list --json``) and the urgent
  manifests' campaigns (:meth:`ManifestOffers.summary`);
- recall: :meth:`RemediationTracker.status` (``provgw recall status --json``) and
  :meth:`RecallStore.impact` (``provgw recall impact --json``);
- quarantine: :meth:`EventStore.quarantine_rows` and :meth:`EventStore.quarantine_counts`.

Proof states are the ones the gateway *recorded* (:attr:`CheckpointStatus.state`: witnessed once
the cosignatures kept reached the witness quorum, anchored once a chain transaction is recorded;
cosignatures below the quorum are counted and shown, not called witnessed), not verified by the
UI, which holds no witness keys and does not query the chain; the pages say so
(``"proof_source": "recorded"``). ``provgw log prove EVENT_ID --config gateway.toml`` reports the
state verified with the witnesses' keys beside the recorded one.

Two differences with the CLI, both because the UI never writes: ``provgw recall impact`` first
applies new ``firmware_update`` reports to the inventory (the running gateway's urgent lane does
that every tick, so the UI sees it shortly after), and when a firmware manifest's SBOM is not
indexed yet the live impact cannot be computed read-only; the page then says so and shows the
impact recorded when the recall was imported (each device's matched rules in its remediation
row). Quarantined messages are listed by size and SHA-256, never by their raw bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from gateway.core.errors import UnavailableError
from gateway.core.manifest import class_id
from gateway.ledger.commitments import leaf_for
from gateway.ledger.keys import GatewayKey
from gateway.ledger.log import TransparencyLog
from gateway.ledger.receipts import issue_receipt, verify_receipt
from gateway.service.remediation import RemediationTracker
from gateway.store.db import Database
from gateway.store.devices import DeviceRow, DeviceStore, StandingCache
from gateway.store.events import EventStore, StoredEvent
from gateway.store.inventory import Inventory
from gateway.store.manifests import ManifestStore
from gateway.store.offers import ManifestOffers, campaign_id, campaign_manifest
from gateway.store.recalls import RecallStore
from gateway.views._events import event_body, summary
from gateway.views.web._html import device_url

if TYPE_CHECKING:
    from gateway.core.identity import TrustStore

__all__ = [
    "PROOF_STATES",
    "Page",
    "device_page",
    "overview_page",
    "quarantine_page",
    "recall_page",
    "recalls_page",
    "receipt_bundle",
]

#: Proof states of an event, weakest first: stored but not in the log yet, in the log but under
#: no signed checkpoint yet, then the receipt states (RFC 9942 receipts, DESIGN.md "Receipts").
PROOF_STATES = ("erased", "stored", "appended", "logged", "witnessed", "anchored")
#: Where the states shown come from: the gateway's records (checkpoint_status), not a
#: verification by the UI (see the module docstring).
_PROOF_SOURCE = "recorded"
_PROOF_NOTE = (
    "Proof states are those recorded by the gateway (witnessed: the witness quorum reached; "
    "anchored: a chain anchor recorded), not verified by this page; "
    "`provgw log prove EVENT_ID --config gateway.toml` verifies a receipt with the witnesses' keys."
)


@dataclass(frozen=True)
class Page:
    """Where to read: the database (read-only), the log key for receipts and the trust folder.

    *key* and *trust* are ``None`` when not available: no receipts, no certificate checks.
    """

    db: Database
    key: GatewayKey | None
    trust: TrustStore | None = None
    #: The UI server's, which lives across requests (a page made alone gets its own).
    standings: StandingCache = field(default_factory=StandingCache)

    def certificate(self, device: DeviceRow) -> dict[str, Any] | None:
        """Return the trust folder's verdict on *device*'s chain now (None: no trust folder)."""
        if self.trust is None:
            return None
        return self.standings.standing(device, self.trust, datetime.now(UTC)).to_json()

    def log(self) -> TransparencyLog | None:
        """Return the transparency log, or None without the log key (no checkpoints to show)."""
        return None if self.key is None else TransparencyLog(self.db, self.key.signer)


def iso(ms: int | None) -> str | None:
    """Milliseconds since the epoch as an ISO 8601 UTC time (seconds), or None."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds")


# -- overview ---------------------------------------------------------------------------------


def _checkpoint(page: Page) -> dict[str, Any] | None:
    log = page.log()
    if log is None:
        return None
    latest = log.latest_checkpoint()
    out: dict[str, Any] = {
        "origin": log.origin,
        "log_size": log.size(),
        "pending_events": log.pending_events(),
        "size": None,
    }
    if latest is None:
        return out
    status = log.status(latest.size)
    anchor = status.anchor
    return out | {
        "size": latest.size,
        "root": latest.root.hex(),
        "signed_ms": latest.signed_ms,
        "signed": iso(latest.signed_ms),
        "state": status.state,
        "state_source": _PROOF_SOURCE,
        # Witnessed means the quorum was reached; cosignatures below it are counted, not
        # called witnessed (C2SP tlog-cosignature: verifiers require a quorum).
        "witnessed": status.witnessed,
        "cosignatures": len(status.cosignatures),
        "anchored": anchor is not None,
        "anchor": None
        if anchor is None
        else {"chain": anchor.chain, "tx": anchor.tx.hex(), "block": anchor.block},
    }


def overview_page(page: Page, *, limit: int, offset: int) -> dict[str, Any]:
    """Return the fleet (devices in inventory, enrolled or seen), totals, latest checkpoint."""
    events = EventStore(page.db)
    inventory = {row.device_id: row for row in Inventory(page.db).all()}
    enrolled = {
        str(d): (str(m), r is not None)
        for d, m, r in page.db.query("SELECT device_id, manufacturer, revoked_ms FROM devices")
    }
    # One grouped read for the per-device columns: count and newest seq from the (device_id,
    # seq) index alone, then one indexed lookup per device for that event's arrival time. A
    # max(received_ms) would read every row: 1.1 s against 69 ms at 1M events, measured.
    activity = {
        str(d): (int(n), int(last))
        for d, n, last in page.db.query(
            "SELECT m.device_id, m.n, e.received_ms FROM (SELECT device_id, count(*) AS n,"
            " max(seq) AS s FROM events GROUP BY device_id) AS m"
            " JOIN events AS e ON e.device_id = m.device_id AND e.seq = m.s"
        )
    }
    ids = sorted({*inventory, *enrolled, *activity})
    shown = ids[offset : offset + limit]
    # The chains of the devices shown only, in one read (a fleet of thousands is paged); the
    # standing cache makes the checks themselves cheap after the first page.
    rows = DeviceStore(page.db).get_many([d for d in shown if d in enrolled]) if page.trust else {}
    devices = []
    for device_id in shown:
        inv = inventory.get(device_id)
        manufacturer, revoked = enrolled.get(device_id, (None, False))
        count, last = activity.get(device_id, (0, None))
        row = rows.get(device_id)
        devices.append(
            {
                "device_id": device_id,
                "manufacturer": inv.manufacturer if inv else manufacturer,
                "model": inv.model if inv else None,
                "site": inv.site if inv else None,
                "department": inv.department if inv else None,
                "firmware": inv.version if inv else None,
                "enrolled": device_id in enrolled,
                "revoked": revoked,
                "certificate": None if row is None else page.certificate(row),
                "events": count,
                "last_event_ms": last,
                "last_event": iso(last),
            }
        )
    quarantined = events.quarantine_counts()
    return {
        "devices_total": len(ids),
        "offset": offset,
        "limit": limit,
        "devices": devices,
        "stored": events.count(),
        "quarantined": sum(quarantined.values()),
        "quarantined_by_reason": dict(sorted(quarantined.items())),
        "checkpoint": _checkpoint(page),
    }


# -- one device -------------------------------------------------------------------------------


def _proof(log: TransparencyLog | None, event: StoredEvent) -> dict[str, Any]:
    if event.salt is None:
        return {"proof": "erased", "leaf_index": None, "checkpoint_size": None}
    leaf = None if log is None else log.leaf_of("event", event.id)
    if log is None or leaf is None:
        return {"proof": "stored", "leaf_index": None, "checkpoint_size": None}
    covering = log.covering_checkpoint(leaf.index)
    if covering is None:
        return {"proof": "appended", "leaf_index": leaf.index, "checkpoint_size": None}
    checkpoint, status = covering
    return {"proof": status.state, "leaf_index": leaf.index, "checkpoint_size": checkpoint.size}


def receipt_path(event_id: int) -> str:
    """Where the UI serves an event's receipt bundle."""
    return f"/receipts/{event_id}.cbor"


def device_page(page: Page, device_id: str, *, limit: int) -> dict[str, Any] | None:
    """Return a device's history, newest first, each event with its proof state; None if unknown."""
    store = EventStore(page.db)
    history = store.history(device_id, newest=limit)
    total = store.count_for(device_id)
    inv = Inventory(page.db).get(device_id)
    enrolled = DeviceStore(page.db).get(device_id)
    if not history and inv is None and enrolled is None:
        return None
    log = page.log()
    events = []
    for event in reversed(history):
        body = event_body(event)
        proof = _proof(log, event)
        can_prove = page.key is not None and proof["checkpoint_size"] is not None
        events.append(
            {
                "id": event.id,
                "seq": event.seq,
                "type": event.type,
                "event_time_ms": event.event_time_ms,
                "time": iso(event.event_time_ms),
                "received_ms": event.received_ms,
                "site": event.site,
                "summary": summary(event.type, body),
                "body": body,
                **proof,
                "receipt": receipt_path(event.id) if can_prove else None,
            }
        )
    return {
        "device_id": device_id,
        "inventory": None
        if inv is None
        else {
            "manufacturer": inv.manufacturer,
            "model": inv.model,
            "site": inv.site,
            "department": inv.department,
            "firmware": inv.version,
            "firmware_from": "inventory" if inv.version_seq is None else "firmware_update",
            "lot": inv.lot,
        },
        "enrolled": None
        if enrolled is None
        else {
            "manufacturer": enrolled.manufacturer,
            "enrolled": iso(enrolled.enrolled_ms),
            "revoked": iso(enrolled.revoked_ms),
            "revoked_reason": enrolled.revoked_reason,
            "certificate": page.certificate(enrolled),
        },
        "events_total": total,
        # The device's exports: its FHIR Bundle (`provgw device fhir`), and its audit bundle
        # (`provgw audit export`), which needs the log key and an enrolled device.
        "fhir": device_url(device_id) + "/fhir",
        "audit": device_url(device_id) + "/audit"
        if page.key is not None and enrolled is not None
        else None,
        "limit": limit,
        "events": events,
        "proof_source": _PROOF_SOURCE,
        "proof_note": _PROOF_NOTE,
        "receipts": page.key is not None,
    }


def receipt_bundle(page: Page, event_id: int) -> bytes | None:
    """Return the event's receipt bundle, verified: the bytes ``provgw log prove --out`` writes.

    None when there is no such event, it was erased, or the log key is not available. Raises
    what :func:`issue_receipt` raises when the event is not logged or not sealed yet.
    """
    if page.key is None:
        return None
    log = TransparencyLog(page.db, page.key.signer)
    event = EventStore(page.db).by_id(event_id)
    if event is None or event.salt is None:
        return None
    log.check_signer()  # a UI configured with another gateway's key says so
    bundle = issue_receipt(log, page.key, event_id)
    verify_receipt(bundle, leaf_for("event", event.salt, event.digest), page.key.verifier)
    return bundle


# -- recalls ----------------------------------------------------------------------------------


def _campaigns(page: Page) -> list[dict[str, Any]]:
    offers = ManifestOffers(page.db)
    manifests = ManifestStore(page.db)
    out = []
    for (digest,) in page.db.query(
        "SELECT manifest FROM manifest_offers GROUP BY manifest ORDER BY min(first_ms) DESC"
    ):
        manifest = bytes(digest)
        row = manifests.get(manifest)
        out.append(
            {
                "id": campaign_id(manifest),
                **offers.summary(manifest),
                "version": row.version if row is not None else None,
            }
        )
    return out


def recalls_page(page: Page) -> dict[str, Any]:
    """Every recall held (as ``provgw recall list --json``) and every urgent-manifest campaign."""
    return {
        "recalls": [s.to_json() for s in RecallStore(page.db).summaries()],
        "campaigns": _campaigns(page),
    }


def recall_page(page: Page, recall_id: str) -> dict[str, Any] | None:
    """Return a recall's (or campaign's) impact and per-device remediation; None if not held."""
    status = RemediationTracker(page.db).status(recall_id)
    if status is None:
        return None
    out: dict[str, Any] = {
        "recall_id": recall_id,
        "status": status.to_json(),
        "impact": None,
        "impact_note": None,
    }
    if campaign_manifest(recall_id) is not None:
        out["impact_note"] = "an urgent manifest: its offers are its impact"
        return out
    store = RecallStore(page.db)
    recall = store.get(recall_id)
    assert recall is not None  # status() found it
    try:
        report = store.impact(recall)
    except UnavailableError as err:
        if err.reason != "store-read-only":
            raise
        out["impact_note"] = (
            "the live impact needs new firmware SBOMs indexed, which the read-only UI does not "
            "do; the matched rules below are those recorded when the recall was imported "
            "(`provgw recall impact` computes it now)"
        )
        return out
    models = {
        class_id(recall.fields.vendor, m): m
        for (m,) in page.db.query(
            "SELECT DISTINCT model FROM inventory WHERE vendor = ?", (recall.fields.vendor.bytes,)
        )
    }
    rules = [
        r.describe(models.get(r.class_id) if r.class_id else None) for r in recall.fields.rules
    ]
    out["impact"] = {**report.to_json(), "signed": recall.signed, "rules": rules}
    return out


# -- quarantine -------------------------------------------------------------------------------


def quarantine_page(
    page: Page, *, reason: str | None, limit: int, before: int | None
) -> dict[str, Any]:
    """Refused messages, newest first: reason, sentence, topic, time, size and SHA-256."""
    events = EventStore(page.db)
    rows = events.quarantine_rows(reason=reason, limit=limit, before_id=before)
    return {
        "counts": dict(sorted(events.quarantine_counts().items())),
        "reason": reason,
        "limit": limit,
        "released": sum(events.quarantine_counts(released=True).values()),
        "not_kept": [
            {**o.to_json(), "hour": iso(o.hour_ms)} for o in events.quarantine_overflow(limit=20)
        ],
        "rows": [{**r.summary(), "received": iso(r.received_ms)} for r in rows],
        "next_before": rows[-1].id if len(rows) == limit else None,
    }
