"""Remediation tracking: offered -> installed / failed / unreachable, per recall and device.

Delivery is confirmed by the device's own signed ``firmware_update`` report, never by PUBACK
(DESIGN.md "Measured here": Mosquitto acknowledges a message it may later drop). So the tracker
reads the reports the routine ingest stored (the ``events`` table, from its own cursor) and moves
each device's row in ``recall_impacts`` (:meth:`gateway.store.recalls.RecallStore.set_state`):

- ``installed`` report naming the recall (``trigger = recall``, ``trigger_ref`` = recall id) or
  installing the recall's remedy manifest (an urgent manifest that was offered first) ->
  ``installed`` (final);
- ``failed`` or ``rejected`` report naming the recall -> ``failed`` (the device's detail is kept);
- no report within the offer's timeout -> offered again, with exponential backoff
  (:class:`RetryPolicy`); after the last attempt -> ``unreachable``.

An urgent manifest that no recall names is tracked the same way, per manifest digest and device
(:class:`gateway.store.offers.ManifestOffers`), under the campaign id ``manifest:<digest hex>``
wherever a recall id is expected (:meth:`RemediationTracker.mark_offered`, :class:`Retry`,
:meth:`RemediationTracker.status`): an ``installed`` / ``failed`` / ``rejected`` report of that
manifest moves its row.

Every move is also an ``urgent_records`` row with the SHA-256 of the bytes it stands for (the
device's signed report, the gateway's signed offer) and a fresh salt; :func:`log_pending_records`
appends those rows to the transparency log later, off the urgent path (kind ``recall`` for
recalls, ``remediation`` for the rest: :data:`gateway.ledger.commitments.URGENT_LOG_KINDS`, which
``provgw log verify`` re-derives every such leaf with).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gateway.core.cbor import dumps, strict_loads
from gateway.core.errors import (
    MalformedError,
    PolicyError,
    ProvenanceError,
    UnavailableError,
    VerificationError,
)
from gateway.core.sbom import check_sbom
from gateway.ledger.commitments import URGENT_LOG_KINDS
from gateway.ledger.log import TransparencyLog
from gateway.store.db import Database, in_list
from gateway.store.events import signed_payload
from gateway.store.inventory import Inventory
from gateway.store.manifests import ManifestStore
from gateway.store.offers import ManifestOffers, campaign_id, campaign_manifest
from gateway.store.recalls import RecallStore, Remediation, State

__all__ = [
    "RecordLogger",
    "RemediationStatus",
    "RemediationTracker",
    "Report",
    "Retry",
    "RetryPolicy",
    "log_pending_records",
    "read_report",
    "record",
    "report_moves_recall",
    "report_outcome",
    "sbom_verdict",
    "unreachable_digest",
]

_log = logging.getLogger(__name__)
_EVENT_CHUNK = 2000
_LOG_CHUNK = 500


def _ms(now: datetime) -> int:
    return int(now.timestamp() * 1000)


@dataclass(frozen=True)
class RetryPolicy:
    """When an offer without a report is repeated, and when the device counts as unreachable.

    Attempt *n* (1-based) times out ``timeout_s * backoff ** (n - 1)`` seconds after it was
    sent; after ``max_attempts`` timed-out offers the device is ``unreachable``.
    """

    timeout_s: float = 60.0
    max_attempts: int = 3
    backoff: float = 2.0

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.max_attempts < 1 or self.backoff < 1:
            raise ValueError("timeout_s > 0, max_attempts >= 1 and backoff >= 1 are required")

    def deadline_ms(self, offered_ms: int, attempts: int) -> int:
        """When the offer sent at *offered_ms* as attempt *attempts* times out."""
        return offered_ms + int(self.timeout_s * 1000 * self.backoff ** max(0, attempts - 1))


@dataclass(frozen=True)
class Retry:
    """A device whose offer timed out and is due for another one.

    *recall_id* is the recall, or the campaign id ``manifest:<hex>`` of an urgent manifest.
    """

    recall_id: str
    device_id: str
    attempt: int


def record(  # noqa: PLR0913 -- one row's columns
    db: Database,
    kind: str,
    *,
    state: str,
    digest: bytes,
    at_ms: int,
    recall_id: str | None = None,
    device_id: str | None = None,
    manifest: bytes | None = None,
    detail: str | None = None,
) -> int:
    """Keep one ``urgent_records`` row (with a fresh 32-byte salt); return its id.

    *digest* is SHA-256 of the exact bytes the record stands for. Joins the caller's
    transaction when there is one.
    """
    with db.atomic() as conn:
        cursor = conn.execute(
            "INSERT INTO urgent_records (kind, recall_id, device_id, manifest, state, detail,"
            " at_ms, digest, salt) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                kind,
                recall_id,
                device_id,
                manifest,
                state,
                detail,
                at_ms,
                digest,
                secrets.token_bytes(32),
            ),
        )
        return int(cursor.lastrowid or 0)


def log_pending_records(db: Database, log: TransparencyLog, *, limit: int = _LOG_CHUNK) -> int:
    """Append ``urgent_records`` rows not yet in the transparency log; return how many.

    One transaction: the leaves and the rows' ``leaf`` column move together, so a crash logs
    nothing twice (the log's ``UNIQUE (kind, ref_id)`` would refuse it anyway).
    """
    with db.atomic() as conn:
        rows = conn.execute(
            "SELECT id, kind, digest, salt FROM urgent_records WHERE leaf IS NULL ORDER BY id"
            " LIMIT ?",
            (limit,),
        ).fetchall()
        for row_id, kind, digest, salt in rows:
            leaf = log.append_record(
                URGENT_LOG_KINDS[kind], int(row_id), bytes(digest), bytes(salt)
            )
            conn.execute("UPDATE urgent_records SET leaf = ? WHERE id = ?", (leaf, row_id))
    return len(rows)


class RecordLogger:
    """Thread ``urgent-records-log``: appends urgent-lane records to the log every *interval_s*.

    It is the only place where those records meet the log, so the urgent lane never waits on it;
    the batcher seals the leaves into checkpoints as it does for events.
    """

    def __init__(self, db: Database, log: TransparencyLog, *, interval_s: float = 0.5) -> None:
        self._db = db
        self._log = log
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Records appended since start.
        self.logged = 0

    def start(self) -> None:
        """Start the thread."""
        self._thread = threading.Thread(target=self._run, name="urgent-records-log", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Append what is pending one last time, then stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while True:
            stopping = self._stop.wait(self._interval)
            try:
                while (n := log_pending_records(self._db, self._log)) > 0:
                    self.logged += n
            except ProvenanceError:
                _log.exception("urgent-lane records not logged; retrying")
            if stopping:
                return


@dataclass(frozen=True)
class RemediationStatus:
    """A recall's remediation: counts per state and every device's row."""

    recall_id: str
    counts: dict[str, int]
    devices: tuple[Remediation, ...]
    recall: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict (what ``provgw recall status --json`` prints)."""
        return {
            "recall_id": self.recall_id,
            "recall": self.recall,
            "counts": self.counts,
            "total": sum(self.counts.values()),
            "devices": [d.to_json() for d in self.devices],
        }


@dataclass(frozen=True)
class Report:
    """A device's signed ``firmware_update`` report, as read by :func:`read_report`."""

    event_id: int
    device_id: str
    result: str
    trigger: str
    trigger_ref: str | None
    manifest: bytes
    detail: str | None
    digest: bytes
    received_ms: int


def _tracked_devices(conn: sqlite3.Connection, devices: set[str]) -> set[str]:
    """Return those of *devices* with an offer or a recall not yet installed.

    Only their reports can move anything, so only theirs are decoded: most reports answer no
    campaign (a routine rollout), and reading one costs a COSE decode and two queries (~18 us,
    measured). One query per chunk of reports (at most ``_EVENT_CHUNK`` devices: two parameters
    each, far below SQLite's limit), on the ``(device_id, state)`` indexes.
    """
    marks, ids = in_list(list(devices))
    query = (
        f"SELECT device_id FROM manifest_offers WHERE device_id IN ({marks})"  # noqa: S608 - "?" only
        " AND state != 'installed' UNION SELECT device_id FROM recall_impacts"
        f" WHERE device_id IN ({marks}) AND state != 'installed'"
    )
    return {str(d) for (d,) in conn.execute(query, [*ids, *ids])}


def read_report(row: tuple[Any, ...]) -> Report | None:
    """Read an events row ``(id, device_id, received_ms, raw, digest)`` as a firmware report.

    The body comes from the signed bytes (:func:`~gateway.store.events.signed_payload`); None if
    the row does not read as one (erased, or not a firmware_update report).
    """
    event_id, device_id, received_ms, raw, digest = row
    try:
        body = strict_loads(signed_payload(bytes(raw)), what="event payload")["body"]
        return Report(
            int(event_id),
            str(device_id),
            str(body["result"]),
            str(body["trigger"]),
            body.get("trigger_ref"),
            bytes(body["manifest_digest"]),
            body.get("detail"),
            bytes(digest),
            int(received_ms),
        )
    except (VerificationError, KeyError, TypeError):
        # The events table holds schema-checked events only; a row that does not read as a
        # firmware_update report is skipped, never guessed at.
        return None


class RemediationTracker:
    """Moves remediation rows from the devices' reports and the offers' timeouts.

    Thread-safe in the sense that each call is its own transaction(s); the urgent lane runs it
    on its ``remediation`` thread.
    """

    def __init__(self, db: Database, *, policy: RetryPolicy | None = None) -> None:
        self._db = db
        self.policy = policy or RetryPolicy()
        self._recalls = RecallStore(db)
        self._offers = ManifestOffers(db)
        self._remedies: dict[str, bytes | None] = {}

    # -- offers -------------------------------------------------------------------------------

    def mark_offered(
        self, recall_id: str, device_id: str, offer: bytes, *, manifest: bytes, at_ms: int
    ) -> bool:
        """Record that *offer* (signed bytes) went to *device_id*; False if it cannot be tracked.

        *recall_id* is a recall, or the campaign id ``manifest:<hex>`` of an urgent manifest
        that no recall names (:func:`gateway.store.offers.campaign_id`). An installed device
        stays installed (the offer was a harmless repeat).
        """
        campaign = campaign_manifest(recall_id)
        try:
            with self._db.atomic():
                if campaign is None:
                    self._recalls.set_state(recall_id, device_id, "offered", at_ms=at_ms)
                else:
                    self._offers.set_state(campaign, device_id, "offered", at_ms=at_ms)
                record(
                    self._db,
                    "remediation",
                    state="offered",
                    digest=hashlib.sha256(offer).digest(),
                    at_ms=at_ms,
                    recall_id=None if campaign is not None else recall_id,
                    device_id=device_id,
                    manifest=manifest,
                )
        except (PolicyError, MalformedError) as err:
            _log.info("offer to %s for %s not tracked: %s", device_id, recall_id, err)
            return False
        return True

    # -- reports --------------------------------------------------------------------------------

    def _remedy(self, recall_id: str) -> bytes | None:
        if recall_id not in self._remedies:
            recall = self._recalls.get(recall_id)
            self._remedies[recall_id] = None if recall is None else recall.fields.remedy.manifest
        return self._remedies[recall_id]

    def apply_reports(self) -> int:
        """Apply the ``firmware_update`` reports stored since the last call; return moves made."""
        Inventory(self._db).apply_firmware_events()  # current firmware, for later impact queries
        moved = 0
        while True:
            with self._db.atomic() as conn:
                row = conn.execute(
                    "SELECT last_event FROM remediation_cursor WHERE id = 1"
                ).fetchone()
                last = int(row[0]) if row else 0
                rows = conn.execute(
                    "SELECT id, device_id, received_ms, raw, digest FROM events"
                    " WHERE id > ? AND type = 'firmware_update' ORDER BY id LIMIT ?",
                    (last, _EVENT_CHUNK),
                ).fetchall()
                tracked = _tracked_devices(conn, {str(row[1]) for row in rows})
                for row in rows:
                    last = int(row[0])
                    if row[1] not in tracked:
                        continue  # nothing offered or recalled for it: nothing to move
                    report = read_report(row)
                    if report is not None:
                        moved += self._apply(report)
                if rows:  # nothing read: no write (see Inventory.apply_firmware_events)
                    conn.execute(
                        "INSERT INTO remediation_cursor (id, last_event) VALUES (1, ?)"
                        " ON CONFLICT (id) DO UPDATE SET last_event = excluded.last_event",
                        (last,),
                    )
            if len(rows) < _EVENT_CHUNK:
                return moved

    def _apply(self, report: Report) -> int:
        moved = self._apply_manifest_offers(report)
        tracked = self._db.query(
            "SELECT recall_id, state FROM recall_impacts WHERE device_id = ?"
            " AND state != 'installed'",
            (report.device_id,),
        )
        for recall_id, _state in tracked:
            outcome = report_outcome(report)
            if outcome is None or not report_moves_recall(
                report, outcome[0], recall_id, self._remedy(recall_id)
            ):
                continue
            moved += self._move(
                report, outcome, self._recalls.set_state, recall_id, recall_id=recall_id
            )
        return moved

    def _apply_manifest_offers(self, report: Report) -> int:
        """Move the device's offers of the manifest the report names (any trigger)."""
        moved = 0
        for manifest, _state in self._offers.open_for(report.device_id):
            if manifest != report.manifest:
                continue
            outcome = report_outcome(report)
            if outcome is None:
                continue
            moved += self._move(report, outcome, self._offers.set_state, manifest)
        return moved

    def _move(
        self,
        report: Report,
        outcome: tuple[State, str | None],
        set_state: Callable[..., bool],
        campaign: Any,  # noqa: ANN401 -- a recall id (str) or a manifest digest (bytes)
        *,
        recall_id: str | None = None,
    ) -> int:
        """Apply *outcome* to one campaign's row of the device; log the change. Return 0 or 1."""
        state, detail = outcome
        try:
            changed = set_state(
                campaign, report.device_id, state, at_ms=report.received_ms, detail=detail
            )
        except PolicyError as err:
            _log.info("report %d not applied: %s", report.event_id, err)
            return 0
        if not changed:
            return 0
        record(
            self._db,
            "remediation",
            state=state,
            digest=report.digest,
            at_ms=report.received_ms,
            recall_id=recall_id,
            device_id=report.device_id,
            manifest=report.manifest,
            detail=detail,
        )
        return 1

    # -- timeouts -------------------------------------------------------------------------------

    def due(self, now: datetime) -> list[Retry]:
        """Return offers that timed out and get another attempt; mark the last ones unreachable.

        The caller sends each :class:`Retry` and calls :meth:`mark_offered` (one more attempt).
        """
        now_ms = _ms(now)
        retries: list[Retry] = []
        # Every deadline is at least one timeout after its offer (backoff >= 1), so only offers
        # older than that are read (indexes: migrations 0008, 0012): a campaign's thousands
        # of fresh offers cost nothing a tick (16.6 ms a tick with 20,000 of them, before).
        sent_before = now_ms - int(self.policy.timeout_s * 1000)
        rows = self._db.query(
            "SELECT recall_id, device_id, attempts, offered_ms FROM recall_impacts"
            " WHERE state = 'offered' AND offered_ms <= ? ORDER BY offered_ms",
            (sent_before,),
        )
        rows += [
            (campaign_id(manifest), device_id, attempts, offered_ms)
            for manifest, device_id, attempts, offered_ms in self._offers.offered(
                sent_before=sent_before
            )
        ]
        for recall_id, device_id, attempts, offered_ms in rows:
            if now_ms < self.policy.deadline_ms(int(offered_ms), int(attempts)):
                continue
            if int(attempts) < self.policy.max_attempts:
                retries.append(Retry(recall_id, device_id, int(attempts) + 1))
                continue
            detail = (
                f"no report after {attempts} offer(s); last offered "
                f"{(now_ms - int(offered_ms)) / 1000:.0f} s ago"
            )
            try:
                with self._db.atomic():
                    if self._unreachable(recall_id, device_id, now_ms, detail):
                        record(
                            self._db,
                            "remediation",
                            state="unreachable",
                            digest=unreachable_digest(recall_id, device_id, now_ms),
                            at_ms=now_ms,
                            recall_id=None if campaign_manifest(recall_id) else recall_id,
                            device_id=device_id,
                            manifest=campaign_manifest(recall_id),
                            detail=detail,
                        )
            except (PolicyError, UnavailableError) as err:
                _log.warning("could not mark %s unreachable: %s", device_id, err)
        return retries

    def _unreachable(self, campaign: str, device_id: str, now_ms: int, detail: str) -> bool:
        manifest = campaign_manifest(campaign)
        if manifest is None:
            return self._recalls.set_state(
                campaign, device_id, "unreachable", at_ms=now_ms, detail=detail
            )
        return self._offers.set_state(
            manifest, device_id, "unreachable", at_ms=now_ms, detail=detail
        )

    # -- reading ---------------------------------------------------------------------------------

    def status(self, recall_id: str) -> RemediationStatus | None:
        """Return the remediation of *recall_id*, or None if the gateway holds no such recall.

        For a campaign id ``manifest:<hex>``: the offers of that urgent manifest, or None if it
        was never offered.
        """
        manifest = campaign_manifest(recall_id)
        if manifest is not None:
            return self._manifest_status(recall_id, manifest)
        recall = self._recalls.get(recall_id)
        if recall is None:
            return None
        counts = self._recalls.state_counts(recall_id)
        devices = tuple(self._recalls.remediation(recall_id))
        f = recall.fields
        summary = {
            "id": f.recall_id,
            "revision": f.revision,
            "class": f.recall_class,
            "status": f.status,
            "reason": f.reason,
            "signed": recall.signed,
            "remedy": f.remedy.to_json(),
        }
        return RemediationStatus(recall_id, counts, devices, summary)

    def _manifest_status(self, campaign: str, manifest: bytes) -> RemediationStatus | None:
        counts = self._offers.state_counts(manifest)
        if not counts:
            return None
        row = ManifestStore(self._db).get(manifest)
        summary: dict[str, Any] = {
            "id": campaign,
            "status": "urgent manifest",
            "class": "-",
            "manifest": manifest.hex(),
            "kept": row is not None,
        }
        if row is not None:
            summary |= {"version": row.version, "priority": row.priority, "seq": row.seq}
        return RemediationStatus(
            campaign, counts, tuple(self._offers.remediation(manifest)), summary
        )


def unreachable_digest(campaign: str | None, device_id: str | None, at_ms: int) -> bytes:
    """Return the digest an ``unreachable`` record stands for.

    Nothing was received, so it is made from what the gateway decided (campaign, device, time)
    and is recomputable from the row.
    """
    return hashlib.sha256(dumps([campaign, device_id, "unreachable", at_ms])).digest()


def report_moves_recall(report: Report, state: str, recall_id: str, remedy: bytes | None) -> bool:
    """Whether *report* (moving its device to *state*) counts for the recall *recall_id*.

    An install counts if the report names the recall or installed its remedy (*remedy*, the
    recall's manifest digest); a failure counts only if it names the recall (it may be another
    campaign's failure).
    """
    names_it = report.trigger == "recall" and report.trigger_ref == recall_id
    remedies_it = remedy is not None and report.manifest == remedy
    return names_it or (remedies_it and state == "installed")


def report_outcome(report: Report) -> tuple[State, str | None] | None:
    """Return the state a device's firmware_update report moves its offer to, if any."""
    if report.result == "installed":
        return "installed", report.detail
    if report.result in ("failed", "rejected"):
        return "failed", f"device reported {report.result}: {report.detail or 'no detail'}"
    return None


def sbom_verdict(sbom: bytes) -> tuple[str, str]:
    """Return the full SBOM verdict the urgent lane records: (``pass`` | ``fail``, detail)."""
    try:
        report = check_sbom(sbom)
    except VerificationError as err:
        return "fail", str(err)
    return ("pass" if report.ok else "fail"), report.summary()
