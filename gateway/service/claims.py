"""What each urgent-lane record claims, checked against the bytes behind its digest.

The transparency log commits to an ``urgent_records`` row's digest and salt only
(:func:`gateway.ledger.log.verify_log` re-derives that). The rest of the row -- a device's
remediation state, its recall, manifest and time; a recall's status; an SBOM verdict -- is what
auditors and biomed engineers read, and :func:`verify_urgent_claims` binds it to the digest:
``provgw log verify`` runs it after ``verify_log``. The rules it re-applies are the tracker's own
(:mod:`gateway.service.remediation`), never copies of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.core.errors import MismatchError, VerificationError
from gateway.core.manifest import unsafe_read_manifest
from gateway.core.recall import RecallFields
from gateway.service.remediation import (
    Report,
    read_report,
    report_moves_recall,
    report_outcome,
    sbom_verdict,
    unreachable_digest,
)
from gateway.store.db import Database
from gateway.store.manifests import ManifestStore
from gateway.store.offers import campaign_id

__all__ = ["UrgentClaimsReport", "report_claim_mismatch", "verify_urgent_claims"]

#: Remediation states recorded from a device's signed ``firmware_update`` report (the tracker's
#: ``_move``, mapped by :func:`~gateway.service.remediation.report_outcome`).
_REPORT_STATES = ("failed", "installed")
#: Why a record's claim cannot be recomputed from the store, per kind of record.
_OFFER_NOT_KEPT = "offered (offer bytes not kept)"
_RECALL_REPLACED = "recall (revision replaced, its bytes not kept)"
_REMEDY_REVISED = "remediation by an earlier revision's remedy (that revision not kept)"
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


class _ClaimChecker:
    """Checks records one by one (steps of :func:`verify_urgent_claims`); keeps the counts."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.checked: dict[str, int] = {}
        self.erased = 0
        self.not_recomputable: dict[str, int] = {}
        self._recalls: dict[str, tuple[bytes, str, bytes | None, int, int] | None] = {}
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
        """Check a report-derived record; False if erased (unverifiable) or not recomputable."""
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
        # The body is read from the device's signed bytes, whose SHA-256 is the digest that
        # verify_log checks (the store keeps no other copy of the payload since migration 0014).
        assert isinstance(e_raw, bytes)
        if not self._report_body(claim, e_id, e_received, e_raw):
            self.not_recomputable[_REMEDY_REVISED] = (
                self.not_recomputable.get(_REMEDY_REVISED, 0) + 1
            )
            return False
        return True

    def _report_body(self, claim: _Claim, e_id: object, received: object, raw: bytes) -> bool:
        """Check the report's body against the record; False if the recall was revised since."""
        report = read_report((e_id, claim.device_id, received, raw, claim.digest))
        if report is None:
            raise _claim_mismatch(claim, f"event {e_id} does not read as a firmware report")
        # (d), (e): state, detail and manifest are the report's.
        why = report_claim_mismatch(
            report, claim.state, claim.detail, claim.manifest, f"event {e_id}"
        )
        if why is not None:
            raise _claim_mismatch(claim, why)
        # (f) The report counts for the record's recall, by the tracker's rule (_moves_recall):
        # a report re-labelled as remediating another recall.
        if claim.recall_id is not None:
            held = self._held_recall(claim.recall_id)
            remedy = None if held is None else held[2]
            if held is None or not report_moves_recall(
                report, claim.state, claim.recall_id, remedy
            ):
                if held is not None and held[4] > 1 and report.trigger_ref != claim.recall_id:
                    # Counted for the recall by the remedy of a revision since replaced (only
                    # the latest revision is kept): the rule cannot be re-applied, not refuted.
                    return False
                raise _claim_mismatch(
                    claim,
                    f"the device's report (event {e_id}) does not remediate recall "
                    f"{claim.recall_id}",
                )
        return True

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
        if unreachable_digest(campaign, claim.device_id, claim.at_ms) != claim.digest:
            raise _claim_mismatch(
                claim,
                f"its campaign ({campaign}), device or time ({claim.at_ms} ms) is not what its "
                "digest was made from",
            )

    # Step 3 -----------------------------------------------------------------------------------

    def _held_recall(self, recall_id: str) -> tuple[bytes, str, bytes | None, int, int] | None:
        """(SHA-256 of the kept bytes, status, remedy, received_ms, revision) of a kept recall."""
        if recall_id not in self._recalls:
            rows = self._db.query(
                "SELECT raw, payload, received_ms, revision FROM recalls WHERE recall_id = ?",
                (recall_id,),
            )
            held = None
            if rows:
                raw, payload, received_ms, revision = rows[0]
                fields = RecallFields.from_cbor(bytes(payload))
                held = (
                    hashlib.sha256(bytes(raw)).digest(),
                    fields.status,
                    fields.remedy.manifest,
                    int(received_ms),
                    int(revision),
                )
            self._recalls[recall_id] = held
        return self._recalls[recall_id]

    def _recall(self, claim: _Claim) -> bool:
        """Check a recall record; False if its revision's bytes were replaced (not recomputable)."""
        held = None if claim.recall_id is None else self._held_recall(claim.recall_id)
        if held is None:
            raise _claim_mismatch(claim, f"the gateway holds no recall {claim.recall_id}")
        digest, status, remedy, received_ms, _ = held
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


def report_claim_mismatch(
    report: Report, state: str, detail: str | None, manifest: bytes | None, event: str
) -> str | None:
    """Say why a remediation record's *state*, *detail* and *manifest* are not *report*'s.

    ``None`` when they are. *event* names the report in the answer (``"event 17"``). Shared by
    ``provgw log verify`` (over the store) and ``provgw audit verify`` (over a device's bundle).
    """
    # (d) The device's result maps to the recorded state and detail, by the tracker's own
    # mapping (report_outcome): a failed install shown as installed, or the reverse.
    outcome = report_outcome(report)
    if outcome is None or outcome[0] != state:
        shown = "no state" if outcome is None else f"'{outcome[0]}'"
        return (
            f"the device reported '{report.result}' ({event}), which the gateway records as {shown}"
        )
    if outcome[1] != detail:
        return f"its detail is not the one the device's report ({event}) gives"
    # (e) The firmware the device reported is the record's manifest (another image claimed).
    if report.manifest != manifest:
        return (
            f"the device reported manifest {report.manifest.hex()} ({event}), the record says "
            f"{manifest.hex() if manifest else 'none'}"
        )
    return None


def verify_urgent_claims(db: Database) -> UrgentClaimsReport:
    """Check what every ``urgent_records`` row claims against the bytes it stands for.

    :func:`gateway.ledger.log.verify_log` binds each row's salt and digest to the log; the rest
    of the row (state, device, recall, manifest, time) is what auditors and biomed engineers read,
    and this binds it to the digest. One pass over the rows, each lookup indexed. Steps, each
    stopping an insider who edits a row:

    1. A remediation row from a device report (``installed``, ``failed``): its digest is a stored
       ``firmware_update`` event of its device, received at its ``at_ms``; the event's result
       maps to its state and detail (:func:`~gateway.service.remediation.report_outcome`), the
       event's manifest is its manifest, and the report counts for its recall
       (:func:`~gateway.service.remediation.report_moves_recall`) (a failed install shown as
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
