"""Verify quarantined messages again once their cause is fixed: ``provgw quarantine retry``.

A refused message was acknowledged and kept in the quarantine with its reason. Some causes are
the site's to fix, not the device's: a manufacturer CA missing from the trust folder
(``untrusted-issuer``), a CRL past its next update (``crl-stale``), a device whose first message,
with its certificate chain, was itself refused, so that its next ones met an ``unknown-kid``.
Once the cause is fixed (a running ``provgw serve`` reads a changed trust folder again: its
later messages pass), the events refused until then would still be missing from the devices'
histories. :func:`retry_quarantined`
verifies them again:

- each open row, in the order the gateway received them (an enrolment before the messages that
  need it), goes through the ingest pipeline's own checks
  (:meth:`~gateway.service.ingest.IngestPipeline.verify`): topic, signature, certificate chain,
  schema, the topic's device and type;
- judged **at the time the gateway received it** (the row's ``received_ms``): a certificate
  valid then, an event fresh then. The verdict is the one ingest would have given with today's
  trust folder, so a message that reached the gateway in time is not refused as stale because
  the fix came late; and one that was already stale on arrival stays refused;
- one that verifies is stored as an event and its row marked released (``released_ms``,
  ``event_id``) in the same transaction (one per :data:`CHUNK` rows), so a crash leaves each
  row either open, or stored and released. An event already stored under the same bytes (a
  copy that did verify) only releases the row; one whose (device, seq) holds other bytes stays
  quarantined (``replay``);
- one that still fails stays open, and the result says why now (which may differ from why then).

The transparency log takes the stored events like any others: the ledger logs every event not
yet logged, in id order. Safe beside a running ``provgw serve``: the rows are verified outside
any transaction, and each chunk's writes are one short transaction on the same database.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.core.errors import VerificationError
from gateway.core.identity import TrustStore
from gateway.service.ingest import BatchOutcome, Delivery, IngestPipeline
from gateway.store.db import Database, in_list
from gateway.store.events import REPLAY_REASON, EventRecord, EventStore, QuarantinedRow

__all__ = ["RetryReport", "RowOutcome", "retry_quarantined"]

#: Rows verified, then written in one transaction (and between two progress reports).
CHUNK = 200

#: Outcomes of one row: stored as a new event, found already stored, or still refused.
STORED, ALREADY_STORED, REFUSED = "stored", "already-stored", "refused"


@dataclass(frozen=True)
class RowOutcome:
    """What a retry did with one quarantine row."""

    id: int
    outcome: str
    #: The event the row was stored as (or found stored as); ``None`` when still refused.
    event_id: int | None = None
    #: Why it is still refused, when it is: the reason token and sentence of this retry.
    reason: str | None = None
    detail: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the outcome as a JSON object."""
        return {
            "id": self.id,
            "outcome": self.outcome,
            "event_id": self.event_id,
            "reason": self.reason,
            "detail": self.detail,
        }


@dataclass
class RetryReport:
    """What :func:`retry_quarantined` did, row by row, and in sum."""

    dry_run: bool
    rows: list[RowOutcome] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """Rows per outcome."""
        return dict(Counter(r.outcome for r in self.rows))

    @property
    def refused(self) -> dict[str, int]:
        """Rows still refused, per reason token of this retry."""
        return dict(Counter(r.reason for r in self.rows if r.reason is not None))

    def to_json(self) -> dict[str, Any]:
        """Return the report as a JSON object (``ok``: every row retried was released)."""
        counts = self.counts
        return {
            "ok": not counts.get(REFUSED),
            "dry_run": self.dry_run,
            "retried": len(self.rows),
            "stored": counts.get(STORED, 0),
            "already_stored": counts.get(ALREADY_STORED, 0),
            "still_refused": counts.get(REFUSED, 0),
            "refused_by_reason": dict(sorted(self.refused.items())),
            "rows": [r.to_json() for r in self.rows],
        }


class _NoMetrics:
    """Retries are not ingest: nothing for ``provgw_ingest_*`` to count."""

    def record(self, outcome: BatchOutcome) -> None:
        del outcome


class _DryRun(Exception):  # noqa: N818 - control flow, not an error
    """Raised inside a dry run's transaction to undo it."""


def _open_rows(
    db: Database, *, ids: Iterable[int], reason: str | None, device: str | None
) -> list[int]:
    """Return the ids of the open rows that match, oldest first."""
    sql = "SELECT id FROM quarantine WHERE released_ms IS NULL"
    params: list[object] = []
    wanted = sorted(set(ids))
    if wanted:
        marks, values = in_list(wanted)
        sql += f" AND id IN ({marks})"
        params += values
    if reason is not None:
        sql += " AND reason = ?"
        params.append(reason)
    if device is not None:
        sql += " AND device_hint = ?"
        params.append(device)
    return [int(row[0]) for row in db.query(sql + " ORDER BY id", params)]


def retry_quarantined(  # noqa: PLR0913 - the selection, keyword-only
    db: Database,
    trust: TrustStore,
    *,
    ids: Iterable[int] = (),
    reason: str | None = None,
    device: str | None = None,
    dry_run: bool = False,
    progress: Callable[[int, int], object] | None = None,
) -> RetryReport:
    """Verify the open quarantine rows that match again; store and release those that pass.

    Select by row *ids*, first-refusal *reason* and claimed *device* (all open rows when none is
    given). *dry_run*: the same checks and transactions, each rolled back: nothing is written.
    *progress(done, total)* is called after every :data:`CHUNK` rows. Raises
    :class:`~gateway.core.errors.UnavailableError` if the database cannot be written; the rows
    done until then stay done.
    """
    pipeline = IngestPipeline(db, trust, ack=_no_ack, metrics=_NoMetrics())
    report = RetryReport(dry_run=dry_run)
    selected = _open_rows(db, ids=ids, reason=reason, device=device)
    for start in range(0, len(selected), CHUNK):
        chunk = selected[start : start + CHUNK]
        try:
            report.rows += _retry_chunk(db, pipeline, chunk, dry_run=dry_run)
        except VerificationError:
            # A device-key write lost a race with a running gateway (it enrolled the device
            # first): the store knows now, and verifying again gives each row its verdict.
            report.rows += _retry_chunk(db, pipeline, chunk, dry_run=dry_run)
        if progress is not None:
            progress(start + len(chunk), len(selected))
    return report


def _no_ack(tag: int, qos: int) -> None:
    del tag, qos  # nothing was delivered: the broker acknowledged these long ago


def _retry_chunk(
    db: Database, pipeline: IngestPipeline, ids: list[int], *, dry_run: bool
) -> list[RowOutcome]:
    """Verify rows *ids* each as of its arrival; store and release those that pass, in one go.

    Verified outside the transaction (ingest's write lock is held for the writes alone); written
    in one, so each row ends either open, or stored and released.
    """
    registry = pipeline.registry
    registry.refresh()  # a running gateway may have rotated or revoked a key meanwhile
    outcomes: dict[int, RowOutcome] = {}
    verified: list[tuple[QuarantinedRow, EventRecord]] = []
    # Open rows only: another retry may have released some since they were selected.
    for row in pipeline.events.quarantined(ids):
        if row.released_ms is not None:
            continue
        received = datetime.fromtimestamp(row.received_ms / 1000, tz=UTC)
        registry.now = received  # the enrolment a message makes is dated by its arrival too
        delivery = Delivery(row.topic, row.raw, row.id, 0, row.received_ms)
        try:
            verified.append((row, pipeline.verify(delivery, received)))
        except VerificationError as err:
            outcomes[row.id] = RowOutcome(row.id, REFUSED, reason=err.reason, detail=err.message)
    try:
        with db.atomic(savepoints=False) as conn:
            registry.persist()
            released_ms = time.time_ns() // 1_000_000
            for row, record in verified:
                outcome = outcomes[row.id] = _store(pipeline.events, row, record)
                if outcome.event_id is not None:
                    conn.execute(
                        "UPDATE quarantine SET released_ms = ?, event_id = ? WHERE id = ?",
                        (released_ms, outcome.event_id, row.id),
                    )
            if dry_run:
                _undo()
    except _DryRun:
        # Rolled back. The registry keeps an enrolment in its cache, as a real run keeps it in
        # the store, so the device's later rows are judged alike.
        pass
    except Exception:
        registry.reset()  # the cache may hold a binding the store never got
        raise
    registry.committed()
    return [outcomes[i] for i in sorted(outcomes)]


def _store(events: EventStore, row: QuarantinedRow, record: EventRecord) -> RowOutcome:
    """Store *record* (inside the caller's transaction); say what became of *row*."""
    result = events.insert_batch([record], quarantine_conflicts=False)
    if result.conflicts:
        ((_, detail),) = result.conflicts
        return RowOutcome(row.id, REFUSED, reason=REPLAY_REASON, detail=detail)
    if result.stored:
        return RowOutcome(row.id, STORED, event_id=result.stored[0])
    stored = events.get(record.device_id, record.seq)
    assert stored is not None  # insert_batch found it: a duplicate
    return RowOutcome(row.id, ALREADY_STORED, event_id=stored.id)


def _undo() -> None:
    raise _DryRun
