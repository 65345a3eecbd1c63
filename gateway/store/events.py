"""The event store: verified device events and quarantined input, written in one transaction.

The ingest pipeline verifies a batch of messages (``gateway.core``), then calls
:meth:`EventStore.insert_batch` once with the verified events and the refused messages; the MQTT
acknowledgements are sent only after it returns, so a crash before the commit means the broker
redelivers the whole batch (MQTT 3.1.1 §4.3.2, QoS 1 "at least once"), and a crash after it means
the redelivery is absorbed here as duplicates.

``insert_batch`` steps, each defending a named threat:

1. Digest every record's exact received bytes (SHA-256): the digest is what (device, seq)
   identity is judged on, and what the transparency log later commits to.
2. Look up the batch's (device, seq) pairs already stored, in one indexed query.
3. Partition: same (device, seq) with the same digest is a duplicate (QoS 1 redelivery: counted,
   not stored twice); with another digest it is a conflict (replay, device fault or a cloned
   device: quarantined with reason ``replay``, the first message kept).
4. Insert the new events with a fresh 32-byte salt each (the log commitment's salt; destroying it
   crypto-shreds the record) and the quarantine rows in ONE transaction, so the acknowledgement
   after the commit covers every row of the batch. (A device's highest stored seq is read from
   the (device_id, seq) index when asked, not kept per device: updating a wide ``devices`` row
   per device per batch cost ~10 us an event with 1,000 devices, measured.)
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass, field
from typing import Any

from gateway.core.cose import decode_sign1
from gateway.core.errors import VerificationError
from gateway.store.db import Database, in_list, padded

__all__ = [
    "BatchResult",
    "EventRecord",
    "EventStore",
    "QuarantineOverflow",
    "QuarantineRecord",
    "QuarantinedRow",
    "StoredEvent",
    "signed_payload",
]

#: Reason token for a (device, seq) reused with other bytes; matches ``ReplayError``.
REPLAY_REASON = "replay"

#: Bytes of a record's salt, the log commitment's salt (module doc, step 4).
_SALT_BYTES = 32

#: Pairs per lookup query: two parameters each, far below SQLite's 32,766-parameter limit.
_LOOKUP_CHUNK = 400

_SELECT_EVENTS = (
    "SELECT id, device_id, seq, type, event_time_ms, received_ms, site, topic, raw, digest,"
    " salt FROM events"
)
_INSERT_EVENT = (
    "INSERT INTO events (id, device_id, seq, type, event_time_ms, received_ms, site, topic, raw,"
    " digest, salt) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
)
_ADD_OVERFLOW = (
    "INSERT INTO quarantine_overflow (device_hint, reason, hour_ms, messages, bytes, first_ms,"
    " last_ms) VALUES (?,?,?,?,?,?,?) ON CONFLICT DO UPDATE SET"
    " messages = messages + excluded.messages, bytes = bytes + excluded.bytes,"
    " first_ms = min(first_ms, excluded.first_ms), last_ms = max(last_ms, excluded.last_ms)"
)
_COUNT_OPEN = "SELECT reason, count(*) FROM quarantine WHERE released_ms IS NULL GROUP BY reason"
_COUNT_RELEASED = (
    "SELECT reason, count(*) FROM quarantine WHERE released_ms IS NOT NULL GROUP BY reason"
)
_SELECT_QUARANTINE = (
    "SELECT id, received_ms, topic, raw, reason, detail, device_hint, released_ms, event_id"
    " FROM quarantine"
)


@dataclass(frozen=True)
class EventRecord:
    """A verified device event, ready to store: ``raw`` is the exact signed COSE bytes received.

    ``raw`` is the only copy of the event: readers that need the event itself take its payload
    from it (:func:`signed_payload`), so what they read is what the device signed and what the
    log commits to. (Until migration 0014 a copy of the payload had a column of its own: ~30 % of
    a row, and an unsigned copy an insider could edit apart from the signed bytes.)
    """

    device_id: str
    seq: int
    type: str
    event_time_ms: int
    received_ms: int
    site: str
    topic: str
    raw: bytes


@dataclass(frozen=True)
class StoredEvent:
    """An event as stored: the record plus its row id, digest and salt (``None`` once shredded)."""

    id: int
    device_id: str
    seq: int
    type: str
    event_time_ms: int
    received_ms: int
    site: str
    topic: str
    raw: bytes
    digest: bytes
    salt: bytes | None

    @property
    def payload(self) -> bytes:
        """The event's CBOR as the device signed it (``raw``'s payload); ``b""`` once erased."""
        return signed_payload(self.raw)


def signed_payload(raw: bytes) -> bytes:
    """Return the COSE payload of a stored event's *raw* bytes, or ``b""`` if there is none.

    Every stored ``raw`` passed the device checks on ingest; an erased event's is empty
    (``gateway.ledger.log.erase_event``), and a row that does not read as a COSE_Sign1 message
    is read as no payload, never guessed at: callers treat ``b""`` as "nothing to read".
    """
    if not raw:
        return b""
    try:
        return decode_sign1(raw).payload
    except VerificationError:
        return b""


@dataclass(frozen=True)
class QuarantineRecord:
    """Refused input to keep: the bytes, the machine ``reason`` and the human ``detail``."""

    received_ms: int
    topic: str
    raw: bytes
    reason: str
    detail: str
    device_hint: str | None = None

    @classmethod
    def from_error(  # noqa: PLR0913 -- the row's columns, keyword-only, and the size cap
        cls,
        error: VerificationError,
        *,
        received_ms: int,
        topic: str,
        raw: bytes,
        device_hint: str | None = None,
        keep_bytes: int | None = None,
    ) -> QuarantineRecord:
        """Quarantine *raw* for the reason and sentence *error* carries.

        *keep_bytes*: keep at most this many of *raw*'s bytes, saying so in the detail with the
        SHA-256 of all of them. Input over a size limit is refused unread, and a flood of it must
        not fill the disk through the quarantine (the broker passes packets of up to 8 MiB).
        """
        detail = error.message
        if keep_bytes is not None and len(raw) > keep_bytes:
            detail += (
                f" The quarantine keeps its first {keep_bytes:,} of {len(raw):,} bytes (SHA-256 "
                f"of all of them: {hashlib.sha256(raw).hexdigest()})."
            )
            raw = raw[:keep_bytes]
        return cls(received_ms, topic, raw, error.reason, detail, device_hint)


@dataclass(frozen=True)
class QuarantineOverflow:
    """Refusals of one device, reason and clock hour counted, not kept (past its budget).

    ``device_hint`` is ``""`` for messages whose topic names no device.
    """

    device_hint: str
    reason: str
    hour_ms: int
    messages: int
    bytes: int
    first_ms: int
    last_ms: int

    def to_json(self) -> dict[str, Any]:
        """Return the counts as a JSON object."""
        return {
            "device_hint": self.device_hint or None,
            "reason": self.reason,
            "hour_ms": self.hour_ms,
            "messages": self.messages,
            "bytes": self.bytes,
            "first_ms": self.first_ms,
            "last_ms": self.last_ms,
        }


@dataclass(frozen=True)
class QuarantinedRow:
    """A quarantine row as stored.

    ``released_ms`` and ``event_id`` are set once ``provgw quarantine retry`` verified the message
    and it was stored as that event (or found already stored as it); ``reason`` and ``detail``
    stay what the message was first refused for.
    """

    id: int
    received_ms: int
    topic: str
    raw: bytes
    reason: str
    detail: str
    device_hint: str | None
    released_ms: int | None = None
    event_id: int | None = None

    def summary(self) -> dict[str, Any]:
        """Return the row for people and scripts: all but the bytes, which only have a digest."""
        return {
            "id": self.id,
            "received_ms": self.received_ms,
            "topic": self.topic,
            "reason": self.reason,
            "detail": self.detail,
            "device_hint": self.device_hint,
            "bytes": len(self.raw),
            "sha256": hashlib.sha256(self.raw).hexdigest(),
            "released_ms": self.released_ms,
            "event_id": self.event_id,
        }


@dataclass(frozen=True)
class BatchResult:
    """What one :meth:`EventStore.insert_batch` did.

    ``stored`` holds the new row ids in the order of the records stored; ``duplicates`` counts
    records already stored with identical bytes; ``conflicts`` lists each record whose
    (device, seq) was taken by other bytes, with the sentence it was quarantined with.
    """

    stored: list[int] = field(default_factory=list)
    duplicates: int = 0
    conflicts: list[tuple[EventRecord, str]] = field(default_factory=list)


def _conflict_detail(record: EventRecord) -> str:
    return (
        f"Device {record.device_id} sent sequence number {record.seq} again with different "
        "content; the first message with this number is kept and this one is set aside. This "
        "is a replay, a device fault, or two devices using the same identity."
    )


class EventStore:
    """Verified events and quarantined input in the gateway database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def insert_batch(
        self,
        records: Sequence[EventRecord],
        quarantined: Sequence[QuarantineRecord] = (),
        *,
        quarantine_conflicts: bool = True,
        overflow: Sequence[QuarantineOverflow] = (),
    ) -> BatchResult:
        """Store *records* and *quarantined* in one transaction; see the module's steps 1-4.

        Idempotent: calling it again with the same batch stores nothing new and counts every
        record as a duplicate. Raises :class:`~gateway.core.errors.UnavailableError` when the
        database cannot be written; then nothing of the batch is stored.

        *quarantine_conflicts* False: a conflicting record is only reported in the result, not
        quarantined (it comes from the quarantine already: ``provgw quarantine retry``).
        *overflow*: refusals past a device's quarantine budget, added to its counts.
        """
        # Step 1: digest of the exact bytes received (outside the lock: pure CPU).
        digests = [hashlib.sha256(r.raw).digest() for r in records]
        with self._db.atomic() as conn:
            # Step 2: what is already stored for these (device, seq) pairs.
            seen: dict[tuple[str, int], bytes] = self._stored_digests(
                conn, [(r.device_id, r.seq) for r in records]
            )
            # Step 3: partition into new, duplicate and conflicting records. A pair repeated
            # inside the batch is judged against its first occurrence, exactly as if it had
            # arrived in a later batch.
            new: list[tuple[EventRecord, bytes]] = []
            duplicates = 0
            conflicts: list[tuple[EventRecord, str]] = []
            for record, digest in zip(records, digests, strict=True):
                key = (record.device_id, record.seq)
                known = seen.get(key)
                if known is None:
                    seen[key] = digest
                    new.append((record, digest))
                elif known == digest:
                    duplicates += 1
                else:
                    conflicts.append((record, _conflict_detail(record)))

            # Step 4: write everything. Ids are assigned here, under the write lock that
            # BEGIN IMMEDIATE holds, so they are known without reading them back.
            first_id = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM events").fetchone()[0]
            ids = list(range(first_id, first_id + len(new)))
            # One CSPRNG read for the whole batch, cut into independent 32-byte salts.
            salts = secrets.token_bytes(_SALT_BYTES * len(new))
            conn.executemany(
                _INSERT_EVENT,
                [
                    (
                        row_id,
                        r.device_id,
                        r.seq,
                        r.type,
                        r.event_time_ms,
                        r.received_ms,
                        r.site,
                        r.topic,
                        r.raw,
                        digest,
                        salts[i * _SALT_BYTES : (i + 1) * _SALT_BYTES],
                    )
                    for i, (row_id, (r, digest)) in enumerate(zip(ids, new, strict=True))
                ],
            )
            replays = [
                QuarantineRecord(r.received_ms, r.topic, r.raw, REPLAY_REASON, detail, r.device_id)
                for r, detail in (conflicts if quarantine_conflicts else ())
            ]
            if quarantined or replays:
                conn.executemany(
                    "INSERT INTO quarantine (received_ms, topic, raw, reason, detail, device_hint)"
                    " VALUES (?,?,?,?,?,?)",
                    [
                        (q.received_ms, q.topic, q.raw, q.reason, q.detail, q.device_hint)
                        for q in (*quarantined, *replays)
                    ],
                )
            if overflow:
                conn.executemany(_ADD_OVERFLOW, [astuple(o) for o in overflow])
        return BatchResult(stored=ids, duplicates=duplicates, conflicts=conflicts)

    @staticmethod
    def _stored_digests(
        conn: sqlite3.Connection,
        keys: Sequence[tuple[str, int]],
    ) -> dict[tuple[str, int], bytes]:
        found: dict[tuple[str, int], bytes] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), _LOOKUP_CHUNK):
            # A VALUES CTE joined on the UNIQUE(device_id, seq) index: one indexed probe per
            # pair (a row-value IN list would scan the table). Padded with (NULL, NULL) pairs,
            # which match no row, to few statement shapes (gateway.store.db.padded).
            chunk = padded(unique[start : start + _LOOKUP_CHUNK], (None, None))
            values = ",".join("(?,?)" for _ in chunk)
            rows = conn.execute(
                f"WITH k(d, s) AS (VALUES {values}) "  # noqa: S608 - only "(?,?)" placeholders
                "SELECT e.device_id, e.seq, e.digest FROM k "
                "JOIN events e ON e.device_id = k.d AND e.seq = k.s",
                [v for pair in chunk for v in pair],
            )
            found.update(((d, s), digest) for d, s, digest in rows)
        return found

    # -- reads ------------------------------------------------------------------------------------

    def count(self) -> int:
        """Return the number of stored events."""
        return int(self._db.query("SELECT count(*) FROM events")[0][0])

    def get(self, device_id: str, seq: int) -> StoredEvent | None:
        """Return the event a device sent with *seq*, or ``None``."""
        rows = self._db.query(
            _SELECT_EVENTS + " WHERE device_id = ? AND seq = ?",
            (device_id, seq),
        )
        return _events(rows)[0] if rows else None

    def by_id(self, event_id: int) -> StoredEvent | None:
        """Return the event stored under row id *event_id*, or ``None``."""
        rows = self._db.query(
            _SELECT_EVENTS + " WHERE id = ?",
            (event_id,),
        )
        return _events(rows)[0] if rows else None

    def history(self, device_id: str, *, newest: int | None = None) -> list[StoredEvent]:
        """Return the stored events of *device_id* in sequence order: all, or the *newest* N.

        Both walk the (device_id, seq) index: the newest N cost N rows, not the whole history.
        """
        if newest is None:
            rows = self._db.query(
                _SELECT_EVENTS + " WHERE device_id = ? ORDER BY seq", (device_id,)
            )
        else:
            rows = self._db.query(
                _SELECT_EVENTS + " WHERE device_id = ? ORDER BY seq DESC LIMIT ?",
                (device_id, newest),
            )[::-1]
        return _events(rows)

    def after(self, event_id: int, *, limit: int) -> list[StoredEvent]:
        """Return up to *limit* stored events with a row id above *event_id*, in id order.

        Ids are given out in commit order, so reading on from the last id returned misses
        nothing committed meanwhile (an export in chunks, ``provgw device fhir-bulk``).
        """
        rows = self._db.query(
            _SELECT_EVENTS + " WHERE id > ? ORDER BY id LIMIT ?", (event_id, limit)
        )
        return _events(rows)

    def count_after(self, event_id: int) -> int:
        """Return how many stored events have a row id above *event_id* (a range of the table)."""
        return int(self._db.query("SELECT count(*) FROM events WHERE id > ?", (event_id,))[0][0])

    def count_for(self, device_id: str) -> int:
        """Return how many events *device_id* has stored (from the index alone)."""
        return int(
            self._db.query("SELECT count(*) FROM events WHERE device_id = ?", (device_id,))[0][0]
        )

    def quarantine_rows(
        self,
        *,
        reason: str | None = None,
        device_hint: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
        released: bool = False,
    ) -> list[QuarantinedRow]:
        """Return quarantined input, newest first, optionally only one reason or device.

        The open rows, or with *released* the rows a retry stored since. Page with ``before_id``
        set to the smallest id of the previous page.
        """
        state = "NOT NULL" if released else "NULL"
        sql = f"{_SELECT_QUARANTINE} WHERE id < ? AND released_ms IS {state}"
        params: list[object] = [before_id if before_id is not None else 2**63 - 1]
        if reason is not None:
            sql += " AND reason = ?"
            params.append(reason)
        if device_hint is not None:
            sql += " AND device_hint = ?"
            params.append(device_hint)
        rows = self._db.query(sql + " ORDER BY id DESC LIMIT ?", [*params, limit])
        return [QuarantinedRow(*row) for row in rows]

    def quarantine_counts(self, *, released: bool = False) -> dict[str, int]:
        """Return how many quarantined messages there are per reason token: open, or released."""
        rows = self._db.query(_COUNT_RELEASED if released else _COUNT_OPEN)
        return {reason: int(n) for reason, n in rows}

    def quarantine_open_for(self, device_hint: str) -> int:
        """Return how many open quarantine rows claim to be from *device_hint*."""
        rows = self._db.query(
            "SELECT count(*) FROM quarantine WHERE device_hint = ? AND released_ms IS NULL",
            (device_hint,),
        )
        return int(rows[0][0])

    def quarantine_overflow(self, *, limit: int = 100) -> list[QuarantineOverflow]:
        """Return the refusals counted but not kept, newest hour first, busiest first."""
        rows = self._db.query(
            "SELECT device_hint, reason, hour_ms, messages, bytes, first_ms, last_ms"
            " FROM quarantine_overflow ORDER BY hour_ms DESC, messages DESC LIMIT ?",
            (limit,),
        )
        return [QuarantineOverflow(*row) for row in rows]

    def quarantined(self, ids: Sequence[int]) -> list[QuarantinedRow]:
        """Return the quarantine rows of *ids* that exist, open or released, in id order."""
        found: list[QuarantinedRow] = []
        for start in range(0, len(ids), _LOOKUP_CHUNK):
            marks, chunk = in_list(ids[start : start + _LOOKUP_CHUNK])
            rows = self._db.query(f"{_SELECT_QUARANTINE} WHERE id IN ({marks})", chunk)
            found += (QuarantinedRow(*row) for row in rows)
        return sorted(found, key=lambda row: row.id)


def _events(rows: Iterable[Sequence[Any]]) -> list[StoredEvent]:
    return [StoredEvent(*row) for row in rows]
