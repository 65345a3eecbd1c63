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
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gateway.core.cbor import dumps, strict_loads
from gateway.core.cose import decode_sign1
from gateway.core.errors import (
    MalformedError,
    MismatchError,
    PolicyError,
    ProvenanceError,
    UnavailableError,
    VerificationError,
)
from gateway.core.manifest import unsafe_read_manifest
from gateway.core.recall import RecallFields
from gateway.core.sbom import check_sbom
from gateway.ledger.commitments import URGENT_LOG_KINDS
from gateway.ledger.log import TransparencyLog
from gateway.store.db import Database
from gateway.store.inventory import Inventory
from gateway.store.manifests import ManifestStore
from gateway.store.offers import ManifestOffers, campaign_id, campaign_manifest
from gateway.store.recalls import RecallStore, Remediation, State

__all__ = [
    "RecordLogger",
    "RemediationStatus",
    "RemediationTracker",
    "Retry",
    "RetryPolicy",
    "UrgentClaimsReport",
    "log_pending_records",
    "record",
    "sbom_verdict",
    "verify_urgent_claims",
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
class _Report:
    event_id: int
    device_id: str
    result: str
    trigger: str
    trigger_ref: str | None
    manifest: bytes
    detail: str | None
    digest: bytes
    received_ms: int


def _report(row: tuple[Any, ...]) -> _Report | None:
    event_id, device_id, received_ms, payload, digest = row
    try:
        body = strict_loads(bytes(payload), what="event payload")["body"]
        return _Report(
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
                    "SELECT id, device_id, received_ms, payload, digest FROM events"
                    " WHERE id > ? AND type = 'firmware_update' ORDER BY id LIMIT ?",
                    (last, _EVENT_CHUNK),
                ).fetchall()
                for row in rows:
                    last = int(row[0])
                    report = _report(tuple(row))
                    if report is not None:
                        moved += self._apply(report)
                conn.execute(
                    "INSERT INTO remediation_cursor (id, last_event) VALUES (1, ?)"
                    " ON CONFLICT (id) DO UPDATE SET last_event = excluded.last_event",
                    (last,),
                )
            if len(rows) < _EVENT_CHUNK:
                return moved

    def _apply(self, report: _Report) -> int:
        moved = self._apply_manifest_offers(report)
        tracked = self._db.query(
            "SELECT recall_id, state FROM recall_impacts WHERE device_id = ?"
            " AND state != 'installed'",
            (report.device_id,),
        )
        for recall_id, _state in tracked:
            outcome = _outcome(report)
            if outcome is None or not _moves_recall(
                report, outcome[0], recall_id, self._remedy(recall_id)
            ):
                continue
            moved += self._move(
                report, outcome, self._recalls.set_state, recall_id, recall_id=recall_id
            )
        return moved

    def _apply_manifest_offers(self, report: _Report) -> int:
        """Move the device's offers of the manifest the report names (any trigger)."""
        moved = 0
        for manifest, _state in self._offers.open_for(report.device_id):
            if manifest != report.manifest:
                continue
            outcome = _outcome(report)
            if outcome is None:
                continue
            moved += self._move(report, outcome, self._offers.set_state, manifest)
        return moved

    def _move(
        self,
        report: _Report,
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
                            digest=_unreachable_digest(recall_id, device_id, now_ms),
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


def _unreachable_digest(campaign: str | None, device_id: str | None, at_ms: int) -> bytes:
    """Return the digest an ``unreachable`` record stands for.

    Nothing was received, so it is made from what the gateway decided (campaign, device, time)
    and is recomputable from the row.
    """
    return hashlib.sha256(dumps([campaign, device_id, "unreachable", at_ms])).digest()


def _moves_recall(report: _Report, state: str, recall_id: str, remedy: bytes | None) -> bool:
    """Whether *report* (moving its device to *state*) counts for the recall *recall_id*.

    An install counts if the report names the recall or installed its remedy (*remedy*, the
    recall's manifest digest); a failure counts only if it names the recall (it may be another
    campaign's failure).
    """
    names_it = report.trigger == "recall" and report.trigger_ref == recall_id
    remedies_it = remedy is not None and report.manifest == remedy
    return names_it or (remedies_it and state == "installed")


def _outcome(report: _Report) -> tuple[State, str | None] | None:
    """Return the state a device's firmware_update report moves its offer to, if any."""
    if report.result == "installed":
        return "installed", report.detail
    if report.result in ("failed", "rejected"):
        return "failed", f"device reported {report.result}: {report.detail or 'no detail'}"
    return None


# -- what each urgent-lane record claims -----------------------------------------------------------

#: Remediation states recorded from a device's signed ``firmware_update`` report
#: (:meth:`RemediationTracker._move`, mapped by :func:`_outcome`).
_REPORT_STATES = ("failed", "installed")
#: Why a record's claim cannot be recomputed from the store, per kind of record.
_OFFER_NOT_KEPT = "offered (offer bytes not kept)"
_RECALL_REPLACED = "recall (revision replaced, its bytes not kept)"
_CLAIMS_CHUNK = 2000

# One query per chunk of records: each record with the event its digest names, when it claims to
# come from a device report. The event is looked up by (device_id, digest) through the
# UNIQUE (device_id, seq) index (migration 0001): the device's events, not every event.
_SELECT_CLAIMS = (
    "SELECT u.id, u.kind, u.recall_id, u.device_id, u.manifest, u.state, u.detail, u.at_ms,"
    " u.digest, e.id, e.type, e.received_ms, e.raw, e.salt"
    " FROM urgent_records u"
    " LEFT JOIN events e ON u.kind = 'remediation' AND u.state IN ('failed', 'installed')"
    " AND e.device_id = u.device_id AND e.digest = u.digest"
    " WHERE u.id > ? ORDER BY u.id LIMIT ?"
)


@dataclass(frozen=True)
class UrgentClaimsReport:
    """What :func:`verify_urgent_claims` checked, per kind of record.

    *checked*: records whose claim was recomputed from stored bytes, keyed ``kind/state``;
    *erased*: report-derived records whose report was crypto-shredded (its digest and time are
    checked, its result no longer can be); *not_recomputable*: records whose bytes the gateway
    does not keep, keyed by why.
    """

    checked: dict[str, int]
    erased: int
    not_recomputable: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict (what ``provgw log verify --json`` prints)."""
        return {
            "checked": dict(sorted(self.checked.items())),
            "checked_total": sum(self.checked.values()),
            "unverifiable_erased": self.erased,
            "not_recomputable": dict(sorted(self.not_recomputable.items())),
        }

    def summary(self) -> str:
        """One line for ``provgw log verify``."""
        checked = ", ".join(f"{k} {n}" for k, n in sorted(self.checked.items())) or "none"
        other = ", ".join(f"{k}: {n}" for k, n in sorted(self.not_recomputable.items()))
        return (
            f"urgent-lane claims OK: {sum(self.checked.values())} recomputed ({checked}); "
            f"{self.erased} unverifiable (report erased); "
            f"{sum(self.not_recomputable.values())} not recomputable"
            + (f" ({other})" if other else "")
        )


@dataclass(frozen=True)
class _Claim:
    """One ``urgent_records`` row: what it claims."""

    id: int
    kind: str
    recall_id: str | None
    device_id: str | None
    manifest: bytes | None
    state: str
    detail: str | None
    at_ms: int
    digest: bytes


def _claim_mismatch(claim: _Claim, what: str) -> MismatchError:
    device = f" of device {claim.device_id}" if claim.device_id is not None else ""
    return MismatchError(
        f"Urgent-lane record {claim.id} ({claim.kind} '{claim.state}'{device}) does not match "
        f"the bytes it stands for: {what}. The record was altered after it was written.",
        reason="claim-mismatch",
    )


def sbom_verdict(sbom: bytes) -> tuple[str, str]:
    """Return the full SBOM verdict the urgent lane records: (``pass`` | ``fail``, detail)."""
    try:
        report = check_sbom(sbom)
    except VerificationError as err:
        return "fail", str(err)
    return ("pass" if report.ok else "fail"), report.summary()


class _ClaimChecker:
    """Checks records one by one (steps of :func:`verify_urgent_claims`); keeps the counts."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.checked: dict[str, int] = {}
        self.erased = 0
        self.not_recomputable: dict[str, int] = {}
        self._recalls: dict[str, tuple[bytes, str, bytes | None, int] | None] = {}
        self._sboms: dict[bytes, tuple[bytes, str] | str] = {}

    def check(self, claim: _Claim, event: Sequence[object]) -> None:
        if claim.kind == "remediation" and claim.state in _REPORT_STATES:
            if not self._report(claim, event):
                return
        elif claim.kind == "remediation" and claim.state == "unreachable":
            self._unreachable(claim)
        elif claim.kind == "remediation" and claim.state == "offered":
            # Step 4: the offer's signed bytes are published, not kept; only the commitment
            # (checked by verify_log) vouches for them.
            self.not_recomputable[_OFFER_NOT_KEPT] = (
                self.not_recomputable.get(_OFFER_NOT_KEPT, 0) + 1
            )
            return
        elif claim.kind == "recall":
            if not self._recall(claim):
                return
        elif claim.kind == "sbom-verdict":
            self._sbom_verdict(claim)
        else:
            raise _claim_mismatch(
                claim, f"the gateway never records a {claim.kind} '{claim.state}'"
            )
        key = f"{claim.kind}/{claim.state}"
        self.checked[key] = self.checked.get(key, 0) + 1

    # Step 1 -----------------------------------------------------------------------------------

    def _report(self, claim: _Claim, event: Sequence[object]) -> bool:
        """Check a report-derived record; False if the report was erased (unverifiable)."""
        e_id, e_type, e_received, e_raw, e_salt = event
        # (a) The digest names a stored event of this device (a state with no report behind it,
        # or a report moved to another device).
        if e_id is None:
            raise _claim_mismatch(claim, self._whose_digest(claim))
        # (b) ...that is a firmware report (another kind of event dressed up as an install).
        if e_type != "firmware_update":
            raise _claim_mismatch(
                claim, f"its digest is event {e_id}, a {e_type} event, not a firmware report"
            )
        # (c) ...received when the record says (the install or failure moved in time).
        if e_received != claim.at_ms:
            raise _claim_mismatch(
                claim,
                f"the report (event {e_id}) was received at {e_received} ms, the record says "
                f"{claim.at_ms} ms",
            )
        if e_salt is None:
            # Crypto-shredded (gateway.ledger.log.erase_event): the report's body is gone, so its
            # result cannot be re-read; the digest and time above are all that is left.
            self.erased += 1
            return False
        # The body is read from the device's signed bytes (whose SHA-256 is the digest, checked by
        # verify_log), not from the stored payload column: an edited payload plus an edited record
        # would otherwise agree with each other.
        assert isinstance(e_raw, bytes)
        try:
            payload = decode_sign1(e_raw).payload
        except VerificationError:
            payload = b""
        self._report_body(claim, e_id, e_received, payload)
        return True

    def _report_body(self, claim: _Claim, e_id: object, received: object, payload: bytes) -> None:
        report = _report((e_id, claim.device_id, received, payload, claim.digest))
        if report is None:
            raise _claim_mismatch(claim, f"event {e_id} does not read as a firmware report")
        # (d) The device's result maps to the recorded state and detail, by the tracker's own
        # mapping (_outcome): a failed install shown as installed, or the reverse.
        outcome = _outcome(report)
        if outcome is None or outcome[0] != claim.state:
            shown = "no state" if outcome is None else f"'{outcome[0]}'"
            raise _claim_mismatch(
                claim,
                f"the device reported '{report.result}' (event {e_id}), which the gateway "
                f"records as {shown}",
            )
        if outcome[1] != claim.detail:
            raise _claim_mismatch(
                claim, f"its detail is not the one the device's report (event {e_id}) gives"
            )
        # (e) The firmware the device reported is the record's manifest (another image claimed).
        if report.manifest != claim.manifest:
            raise _claim_mismatch(
                claim,
                f"the device reported manifest {report.manifest.hex()} (event {e_id}), the "
                f"record says {claim.manifest.hex() if claim.manifest else 'none'}",
            )
        # (f) The report counts for the record's recall, by the tracker's rule (_moves_recall):
        # a report re-labelled as remediating another recall.
        if claim.recall_id is not None:
            held = self._held_recall(claim.recall_id)
            remedy = None if held is None else held[2]
            if held is None or not _moves_recall(report, claim.state, claim.recall_id, remedy):
                raise _claim_mismatch(
                    claim,
                    f"the device's report (event {e_id}) does not remediate recall "
                    f"{claim.recall_id}",
                )

    def _whose_digest(self, claim: _Claim) -> str:
        # Error path only: a scan of the events for the digest, to name whose it is.
        rows = self._db.query(
            "SELECT id, device_id FROM events WHERE digest = ? LIMIT 1", (claim.digest,)
        )
        if rows:
            return f"its digest is event {rows[0][0]}, a report of device {rows[0][1]}"
        return f"no stored event of device {claim.device_id} has its digest"

    # Step 2 -----------------------------------------------------------------------------------

    def _unreachable(self, claim: _Claim) -> None:
        # The digest is made from the campaign, device and time (RemediationTracker.due):
        # recomputed, it binds them.
        if claim.recall_id is not None and claim.manifest is not None:
            raise _claim_mismatch(claim, "it names both a recall and a manifest campaign")
        campaign = claim.recall_id
        if campaign is None and claim.manifest is not None:
            campaign = campaign_id(claim.manifest)
        if _unreachable_digest(campaign, claim.device_id, claim.at_ms) != claim.digest:
            raise _claim_mismatch(
                claim,
                f"its campaign ({campaign}), device or time ({claim.at_ms} ms) is not what its "
                "digest was made from",
            )

    # Step 3 -----------------------------------------------------------------------------------

    def _held_recall(self, recall_id: str) -> tuple[bytes, str, bytes | None, int] | None:
        """(SHA-256 of the kept bytes, status, remedy manifest, received_ms) of a kept recall."""
        if recall_id not in self._recalls:
            rows = self._db.query(
                "SELECT raw, payload, received_ms FROM recalls WHERE recall_id = ?", (recall_id,)
            )
            held = None
            if rows:
                raw, payload, received_ms = rows[0]
                fields = RecallFields.from_cbor(bytes(payload))
                held = (
                    hashlib.sha256(bytes(raw)).digest(),
                    fields.status,
                    fields.remedy.manifest,
                    int(received_ms),
                )
            self._recalls[recall_id] = held
        return self._recalls[recall_id]

    def _recall(self, claim: _Claim) -> bool:
        """Check a recall record; False if its revision's bytes were replaced (not recomputable)."""
        held = None if claim.recall_id is None else self._held_recall(claim.recall_id)
        if held is None:
            raise _claim_mismatch(claim, f"the gateway holds no recall {claim.recall_id}")
        digest, status, remedy, received_ms = held
        if digest != claim.digest:
            # A later revision replaced the kept bytes (RecallStore.accept keeps the latest).
            self.not_recomputable[_RECALL_REPLACED] = (
                self.not_recomputable.get(_RECALL_REPLACED, 0) + 1
            )
            return False
        if (status, remedy, received_ms) != (claim.state, claim.manifest, claim.at_ms):
            raise _claim_mismatch(
                claim,
                f"the kept recall {claim.recall_id} has status '{status}', remedy "
                f"{remedy.hex() if remedy else 'none'}, received at {received_ms} ms",
            )
        return True

    def _sbom_verdict(self, claim: _Claim) -> None:
        if claim.manifest is None:
            raise _claim_mismatch(claim, "it names no manifest")
        if claim.manifest not in self._sboms:
            self._sboms[claim.manifest] = self._recheck_sbom(claim.manifest)
        verdict = self._sboms[claim.manifest]
        if isinstance(verdict, str):
            raise _claim_mismatch(claim, verdict)
        digest, state = verdict
        if digest != claim.digest:
            raise _claim_mismatch(
                claim, f"its digest is not the SHA-256 of manifest {claim.manifest.hex()}'s SBOM"
            )
        if state != claim.state:
            raise _claim_mismatch(
                claim, f"re-checking manifest {claim.manifest.hex()}'s SBOM gives '{state}'"
            )

    def _recheck_sbom(self, manifest: bytes) -> tuple[bytes, str] | str:
        """(SHA-256 of the kept manifest's SBOM, its verdict now), or why there is none."""
        row = ManifestStore(self._db).get(manifest)
        if row is None:
            return f"the gateway keeps no manifest {manifest.hex()}"
        try:
            sbom = unsafe_read_manifest(row.raw).sbom  # verified when it was kept
        except VerificationError:
            return f"the kept manifest {manifest.hex()} does not read"
        if sbom is None:
            return f"the kept manifest {manifest.hex()} carries no SBOM"
        return hashlib.sha256(sbom).digest(), sbom_verdict(sbom)[0]


def verify_urgent_claims(db: Database) -> UrgentClaimsReport:
    """Check what every ``urgent_records`` row claims against the bytes it stands for.

    :func:`gateway.ledger.log.verify_log` binds each row's salt and digest to the log; the rest
    of the row (state, device, recall, manifest, time) is what auditors and biomed engineers read,
    and this binds it to the digest. One pass over the rows, each lookup indexed. Steps, each
    stopping an insider who edits a row:

    1. A remediation row from a device report (``installed``, ``failed``): its digest is a stored
       ``firmware_update`` event of its device, received at its ``at_ms``; the event's result
       maps to its state and detail (:func:`_outcome`), the event's manifest is its manifest, and
       the report counts for its recall (:func:`_moves_recall`) (a failed install shown as
       installed, a report moved to another device, recall, image or time). An erased report:
       digest and time only, counted unverifiable.
    2. An ``unreachable`` row: its digest is recomputed from its campaign, device and time
       (a timeout moved to another device, campaign or time).
    3. A ``recall`` row: its digest is SHA-256 of the kept recall's bytes, and its state, remedy
       and time are the kept recall's (a withdrawn recall shown as ongoing); a revision since
       replaced is counted not recomputable. An ``sbom-verdict`` row: its manifest is kept, its
       digest is SHA-256 of that manifest's SBOM, and re-checking the SBOM gives its verdict (a
       failed SBOM shown as passing).
    4. An ``offered`` row is counted not recomputable: the signed offer bytes are not kept.

    Raises :class:`MismatchError` (reason ``claim-mismatch``) naming the first row that differs.
    """
    checker = _ClaimChecker(db)
    last = 0
    while True:
        rows = db.query(_SELECT_CLAIMS, (last, _CLAIMS_CHUNK))
        for row in rows:
            claim = _Claim(
                int(row[0]),
                str(row[1]),
                row[2],
                row[3],
                None if row[4] is None else bytes(row[4]),
                str(row[5]),
                row[6],
                int(row[7]),
                bytes(row[8]),
            )
            checker.check(claim, row[9:14])
            last = claim.id
        if len(rows) < _CLAIMS_CHUNK:
            return UrgentClaimsReport(checker.checked, checker.erased, checker.not_recomputable)
