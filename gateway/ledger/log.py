"""The transparency log: salted commitments in an RFC 9162 tree, sealed by signed checkpoints.

:class:`TransparencyLog` *tails* the events table: :meth:`~TransparencyLog.append_pending` appends
every event whose id is above the last logged one, in id order, one transaction per chunk that
writes the tree nodes and a ``log_leaves`` row (kind, ref id, commitment) per leaf. Ingest never
waits for the log, and a ``kill -9`` at any point loses no leaf: a chunk is committed whole or not
at all, and the next run continues after the last committed leaf (``UNIQUE (kind, ref_id)``
refuses a second leaf for a record). Event ids are assigned as ``max(id) + 1`` under the write
lock (:mod:`gateway.store.events`), so no event can later appear below the tail.

:meth:`~TransparencyLog.seal` signs a C2SP tlog-checkpoint when the tree grew. It runs in its own
transaction, never inside one that appends, so it signs only committed leaves; and before signing
it proves, from the stored tree, that the new head is consistent with the last checkpoint it
signed (RFC 9162 §2.1.4), refusing to sign otherwise: a log never signs two inconsistent
checkpoints. Ed25519 is deterministic, so a seal repeated after a crash re-creates the same note.

:func:`verify_log` re-derives everything from the store (``provgw log verify``).

Witnesses and the chain outbox record what they achieved per checkpoint with
:meth:`~TransparencyLog.add_cosignatures` (every cosignature line kept, whoever sent it),
:meth:`~TransparencyLog.mark_witnessed` (the moment the cosignatures reached the consortium's
witness quorum, ``[witnesses] quorum``: only then is a checkpoint *witnessed*) and
:meth:`~TransparencyLog.record_anchor`.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from gateway.core import merkle, note
from gateway.core.errors import (
    MalformedError,
    MismatchError,
    PolicyError,
    UnavailableError,
    VerificationError,
)
from gateway.ledger.commitments import (
    URGENT_LOG_KINDS,
    commitment,
    erasure_digest,
    revocation_digest,
)
from gateway.ledger.tree import Frontier, MerkleTree
from gateway.store.db import Database
from gateway.store.devices import DeviceStore

__all__ = [
    "Anchor",
    "CheckpointStatus",
    "Erasure",
    "LeafRecord",
    "LogReport",
    "Revocation",
    "StoredCheckpoint",
    "TransparencyLog",
    "append_pending",
    "erase_event",
    "revoke_device",
    "verify_log",
]

#: Events appended per transaction: bounded so the write lock is never held for long.
_CHUNK = 5_000
#: Leaves read per query by verify_log.
_VERIFY_CHUNK = 10_000
_SIG_PREFIX = "\u2014 "  # em dash, space: a signed-note signature line (C2SP signed-note)


def _ms(now: datetime) -> int:
    if now.tzinfo is None:
        raise ValueError("the log needs a timezone-aware time")
    return int(now.timestamp() * 1000)


@dataclass(frozen=True)
class LeafRecord:
    """One log entry: its index, the record kind and row it stands for, and its commitment."""

    index: int
    kind: str
    ref_id: int
    commitment: bytes

    @property
    def leaf_hash(self) -> bytes:
        """The RFC 9162 leaf hash stored in the tree."""
        return merkle.leaf_hash(self.commitment)


@dataclass(frozen=True)
class StoredCheckpoint:
    """A checkpoint the gateway signed: size, root, the signed note, and when it was signed."""

    size: int
    root: bytes
    note: bytes
    signed_ms: int


@dataclass(frozen=True)
class Anchor:
    """Where a checkpoint was anchored: chain id, transaction hash, block number."""

    chain: str
    tx: bytes
    block: int


@dataclass(frozen=True)
class CheckpointStatus:
    """How strong a checkpoint is: witness cosignature lines, the quorum moment, the anchor.

    ``cosignatures`` holds every line kept, also while they are fewer than the quorum;
    ``witnessed_ms`` is when they reached the witness quorum (``None``: not reached).
    """

    size: int
    cosignatures: tuple[str, ...]
    witnessed_ms: int | None
    anchor: Anchor | None
    anchored_ms: int | None

    @property
    def witnessed(self) -> bool:
        """True once the checkpoint reached the witness quorum (k of n), as recorded.

        Any cosignature below the quorum does not count: one witness alone may be lagging,
        or colluding with the log, and a split view is only stopped by a quorum of them
        (C2SP tlog-cosignature).
        """
        return self.witnessed_ms is not None

    @property
    def state(self) -> str:
        """``"anchored"``, ``"witnessed"`` (reached the witness quorum) or ``"logged"``.

        As recorded by the gateway, not verified here (the verifier holds the witness keys).
        """
        if self.anchor is not None:
            return "anchored"
        return "witnessed" if self.witnessed else "logged"

    def note_with_cosignatures(self, checkpoint: StoredCheckpoint) -> bytes:
        """Return the checkpoint's signed note with the witnesses' cosignature lines appended."""
        return checkpoint.note + "".join(self.cosignatures).encode()


@dataclass(frozen=True)
class Erasure:
    """A crypto-shredded event: the erasure's own row id and log index, and when it happened."""

    erasure_id: int
    event_id: int
    leaf_index: int
    erased_ms: int
    reason_digest: bytes


@dataclass(frozen=True)
class Revocation:
    """A device taken out of trust: its logged record, and whether it was revoked already."""

    revocation_id: int
    device_id: str
    leaf_index: int
    revoked_ms: int
    reason: str
    #: True when the device was revoked before this call: the first revocation stands.
    already: bool = False


_SELECT_CHECKPOINT = "SELECT size, root, note, signed_ms FROM checkpoints"
_SELECT_STATUS = (
    "SELECT size, cosignatures, witnessed_ms, anchor_chain, anchored_tx, anchored_block,"
    " anchored_ms FROM checkpoint_status"
)


#: Sizes of the newest anchored-and-witnessed, anchored, witnessed and plain checkpoints, strongest
#: first (covering_checkpoint): each a max() SQLite reads from one end of an index. Witnessed
#: means reached the quorum (witnessed_ms set), not "has a cosignature". INDEXED BY names the
#: partial indexes of migrations log_0102 and log_0103 (whose WHERE terms these repeat): left to
#: itself, with no statistics, the planner may read the first max() from the witnessed index and
#: walk every witnessed checkpoint that is not anchored (all of them with the chain off).
_STRONGEST_SIZES = (
    "SELECT (SELECT max(size) FROM checkpoint_status"
    " INDEXED BY checkpoint_status_anchored_witnessed"
    " WHERE anchored_tx IS NOT NULL AND witnessed_ms IS NOT NULL),"
    " (SELECT max(size) FROM checkpoint_status INDEXED BY checkpoint_status_anchored"
    " WHERE anchored_tx IS NOT NULL),"
    " (SELECT max(size) FROM checkpoint_status INDEXED BY checkpoint_status_witnessed"
    " WHERE witnessed_ms IS NOT NULL),"
    " (SELECT max(size) FROM checkpoint_status)"
)
_SELECT_COVERING = (
    "SELECT c.size, c.root, c.note, c.signed_ms, s.size, s.cosignatures, s.witnessed_ms,"
    " s.anchor_chain, s.anchored_tx, s.anchored_block, s.anchored_ms"
    " FROM checkpoints c JOIN checkpoint_status s ON s.size = c.size WHERE c.size = ?"
)


def _status(row: Sequence[object]) -> CheckpointStatus:
    size, cosigs, witnessed_ms, chain, tx, block, anchored_ms = row
    assert isinstance(size, int)
    assert isinstance(cosigs, str)
    lines = tuple(line + "\n" for line in cosigs.split("\n") if line)
    anchor = None
    if isinstance(chain, str) and isinstance(tx, bytes) and isinstance(block, int):
        anchor = Anchor(chain, tx, block)
    return CheckpointStatus(
        size,
        lines,
        witnessed_ms if isinstance(witnessed_ms, int) else None,
        anchor,
        anchored_ms if isinstance(anchored_ms, int) else None,
    )


class TransparencyLog:
    """The gateway's transparency log in *db*, signed by *signer* under *origin*.

    *origin* (C2SP tlog-checkpoint: the log's unique name, first line of every checkpoint) must be
    the signer's key name, because :func:`gateway.core.note.open_checkpoint` ties the two. It must
    not name a site: it is published in every checkpoint.
    """

    def __init__(self, db: Database, signer: note.Signer, origin: str | None = None) -> None:
        if origin is not None and origin != signer.name:
            raise ValueError(
                f"the log origin {origin!r} must be the signer key's name {signer.name!r}"
            )
        if signer.verifier.sig_type != note.ED25519:
            raise ValueError("a log signs checkpoints with a plain Ed25519 key (type 0x01)")
        self._db = db
        self._signer = signer
        self._tree = MerkleTree(db)

    # -- identity -------------------------------------------------------------------------------

    @property
    def origin(self) -> str:
        """The log's origin line (the signer key's name)."""
        return self._signer.name

    @property
    def verifier(self) -> note.Verifier:
        """The log's public key: what witnesses and verifiers are given."""
        return self._signer.verifier

    @property
    def db(self) -> Database:
        """The gateway database this log lives in."""
        return self._db

    def check_signer(self) -> None:
        """Refuse a signer key that did not sign this database's checkpoints.

        Receipts issued with another key would verify nowhere: it is another gateway's key, or
        a new one made by mistake. One signature check, on the latest checkpoint.

        Raises :class:`PolicyError` (reason ``"wrong-log-key"``).
        """
        latest = self.latest_checkpoint()
        if latest is None:
            return
        try:
            note.open_checkpoint(latest.note, self.verifier)
        except VerificationError:
            verifier = self.verifier
            raise PolicyError(
                f"The log key {verifier.name} ({verifier.key_id:08x}) did not sign the "
                f"checkpoints in {self._db.path}: it is another gateway's key or a new one. "
                "Pass the key `provgw serve` signs with (`[log] key` in its configuration).",
                reason="wrong-log-key",
            ) from None

    # -- appending ------------------------------------------------------------------------------

    def append_pending(self, limit: int | None = None) -> int:
        """Append every event not yet logged (see :func:`append_pending`); return how many."""
        return append_pending(self._db, limit)

    def pending_events(self) -> int:
        """Return how many stored events are not logged yet."""
        rows = self._db.query(
            "SELECT count(*) FROM events WHERE id > "
            "(SELECT coalesce(max(ref_id), 0) FROM log_leaves WHERE kind = 'event')"
        )
        return int(rows[0][0])

    def append_record(self, kind: str, ref_id: int, digest: bytes, salt: bytes) -> int:
        """Log a record of *kind* (``"manifest"``, ``"recall"``…); return its leaf index.

        *digest* is SHA-256 of the exact signed bytes, *salt* 32 random bytes the caller keeps
        beside the record (destroying it later crypto-shreds the record). A ``"recall"`` or
        ``"remediation"`` leaf stands for the ``urgent_records`` row *ref_id* (see
        :data:`~gateway.ledger.commitments.URGENT_LOG_KINDS`): :func:`verify_log` re-derives it
        from that row.
        """
        value = commitment(kind, salt, digest)
        with self._db.atomic() as conn:
            return _append(self._db, conn, kind, [(ref_id, value)])

    # -- sealing --------------------------------------------------------------------------------

    def seal(self, now: datetime) -> note.SignedCheckpoint | None:
        """Sign a checkpoint of the committed tree if it grew; ``None`` when there is nothing new.

        Steps (C2SP tlog-checkpoint; RFC 9162 §2.1.4):

        1. Refuse to run inside an open transaction (signing uncommitted leaves: a crash would
           leave a published head over leaves that never existed).
        2. Under the write lock, read the size; nothing new since the last checkpoint: no
           signature (no churn for witnesses and the chain).
        3. Open the last stored checkpoint with the log's own key and prove, from the stored
           tree, that the new root extends it; refuse to sign otherwise (fork, rewritten
           history, a tampered store).
        4. Sign, store the note and an empty status row in the same transaction.
        """
        # Step 1 — signing leaves that are not committed.
        if self._db.conn.in_transaction:
            raise RuntimeError("seal() must run after the appended leaves are committed")
        signed_ms = _ms(now)
        with self._db.atomic() as conn:
            # Step 2 — no growth, no signature.
            size = self._tree.size()
            last = self._latest()
            if size == 0 or (last is not None and last.size == size):
                return None
            root = self._tree.root(size)
            # Step 3 — never two inconsistent checkpoints.
            if last is not None:
                self._check_extends(last, size, root)
            # Step 4 — sign and store.
            data = note.Checkpoint(self.origin, size, root).sign(self._signer)
            signed = note.open_checkpoint(data, self.verifier)
            conn.execute(
                "INSERT INTO checkpoints (size, root, note, signed_ms) VALUES (?, ?, ?, ?)",
                (size, root, data, signed_ms),
            )
            conn.execute("INSERT INTO checkpoint_status (size) VALUES (?)", (size,))
        return signed

    def _check_extends(self, last: StoredCheckpoint, size: int, root: bytes) -> None:
        try:
            previous = note.open_checkpoint(last.note, self.verifier).checkpoint
            if size < previous.size:
                raise MismatchError("shrank", reason="log-shrank")
            proof = self._tree.consistency_proof(previous.size, size)
            merkle.verify_consistency(previous.size, size, previous.root, root, proof)
        except VerificationError as exc:
            raise MismatchError(
                f"The log refuses to sign a checkpoint of {size} entries: it is not consistent "
                f"with the checkpoint of {last.size} entries it already signed ({exc}). The "
                f"database {self._db.path} was altered or replaced; stop the gateway and "
                "investigate before any further checkpoint is published.",
                reason="log-fork",
            ) from exc

    # -- reading --------------------------------------------------------------------------------

    def size(self) -> int:
        """Return the number of leaves."""
        return self._tree.size()

    def root(self, size: int | None = None) -> bytes:
        """Return the root of the first *size* leaves (default: all)."""
        return self._tree.root(size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 9162 §2.1.3.1 audit path of leaf *index* in the tree of *size* leaves."""
        return self._tree.inclusion_proof(index, size)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """RFC 9162 §2.1.4.1 proof that *new_size* leaves extend *old_size* leaves."""
        return self._tree.consistency_proof(old_size, new_size)

    def leaf(self, index: int) -> LeafRecord | None:
        """Return log entry *index*, or ``None``."""
        rows = self._db.query(
            "SELECT idx, kind, ref_id, commitment FROM log_leaves WHERE idx = ?", (index,)
        )
        return LeafRecord(*rows[0]) if rows else None

    def leaf_of(self, kind: str, ref_id: int) -> LeafRecord | None:
        """Return the log entry of record *ref_id* of *kind* (``"event"`` and event id), or None."""
        rows = self._db.query(
            "SELECT idx, kind, ref_id, commitment FROM log_leaves WHERE kind = ? AND ref_id = ?",
            (kind, ref_id),
        )
        return LeafRecord(*rows[0]) if rows else None

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        """Return the newest signed checkpoint, or ``None`` before the first seal."""
        return self._latest()

    def _latest(self) -> StoredCheckpoint | None:
        rows = self._db.query(_SELECT_CHECKPOINT + " ORDER BY size DESC LIMIT 1")
        return StoredCheckpoint(*rows[0]) if rows else None

    def checkpoint(self, size: int) -> StoredCheckpoint | None:
        """Return the checkpoint signed at *size*, or ``None``."""
        rows = self._db.query(_SELECT_CHECKPOINT + " WHERE size = ?", (size,))
        return StoredCheckpoint(*rows[0]) if rows else None

    def checkpoints(self) -> list[StoredCheckpoint]:
        """Return every signed checkpoint, oldest first."""
        return [
            StoredCheckpoint(*row) for row in self._db.query(_SELECT_CHECKPOINT + " ORDER BY size")
        ]

    def status(self, size: int) -> CheckpointStatus:
        """Return what witnesses and the chain recorded for the checkpoint at *size*."""
        rows = self._db.query(_SELECT_STATUS + " WHERE size = ?", (size,))
        if not rows:
            raise MalformedError(
                f"The log signed no checkpoint of {size} entries.", reason="unknown-checkpoint"
            )
        return _status(rows[0])

    def covering_checkpoint(self, index: int) -> tuple[StoredCheckpoint, CheckpointStatus] | None:
        """Return the strongest checkpoint holding leaf *index*: anchored, witnessed, newest.

        Receipts are issued under it, so a receipt's state only ever rises. Strength is what
        :meth:`status` records (not verified here: the verifier holds the witness keys), ranked
        anchored first, then witnessed (reached the witness quorum: :meth:`mark_witnessed`),
        then size: an anchored and witnessed checkpoint wins over a newer one that is only
        anchored, and a witnessed one over a newer one cosigned by fewer than the quorum.

        The log only grows, and a checkpoint of *n* entries holds leaves ``0 .. n - 1``, so the
        newest checkpoint of a kind holds every leaf any checkpoint of that kind holds. The
        answer is therefore the first of the newest anchored-and-witnessed, newest anchored,
        newest witnessed and newest checkpoint that holds the leaf, or ``None``: four max()
        reads from indexes (migrations ``log_0102``, ``log_0103``), O(log n) however many
        checkpoints exist.
        """
        candidates = self._db.query(_STRONGEST_SIZES)[0]
        size = next((s for s in candidates if s is not None and s > index), None)
        if size is None:
            return None
        row = self._db.query(_SELECT_COVERING, (size,))[0]
        return StoredCheckpoint(*row[:4]), _status(row[4:])

    # -- witnesses and chain ----------------------------------------------------------------------

    def add_cosignatures(self, size: int, lines: Iterable[str]) -> CheckpointStatus:
        """Keep witness cosignature lines (C2SP tlog-cosignature) for the checkpoint at *size*.

        Each line is a signed-note signature line (``— name base64``). The lines are parsed as
        part of the note before they are kept, so a receipt built from them always opens;
        whether they verify is the verifier's business (it holds the witness keys). Lines
        already kept are not repeated. Keeping lines does not make the checkpoint *witnessed*:
        that is :meth:`mark_witnessed`, once the witness quorum is met.
        """
        stored = self.checkpoint(size)
        if stored is None:
            raise MalformedError(
                f"The log signed no checkpoint of {size} entries.", reason="unknown-checkpoint"
            )
        new = [line if line.endswith("\n") else line + "\n" for line in lines]
        if not all(line.startswith(_SIG_PREFIX) and line.count("\n") == 1 for line in new):
            raise MalformedError(
                "A witness cosignature is not one signature line (an em dash, the witness name "
                "and a base64 signature).",
                reason="malformed-note",
            )
        with self._db.atomic():
            current = self.status(size)
            kept = list(dict.fromkeys([*current.cosignatures, *new]))
            # Parse the note with every line (malformed lines refused); only the gateway's own
            # signature is verified here.
            note.open_note(stored.note + "".join(kept).encode(), [self.verifier])
            self._db.conn.execute(
                "UPDATE checkpoint_status SET cosignatures = ? WHERE size = ?",
                ("".join(kept), size),
            )
            return self.status(size)

    def mark_witnessed(self, size: int, now: datetime) -> CheckpointStatus:
        """Record that the checkpoint at *size* reached the witness quorum at *now*.

        The caller counted the quorum (the ledger service's witness task, against the
        configured witnesses and ``[witnesses] quorum``; C2SP tlog-cosignature: verifiers
        "verify a quorum of cosignatures"). Idempotent: the first moment is kept, so a repeated
        round or a restart never moves it.
        """
        at_ms = _ms(now)
        with self._db.atomic() as conn:
            self.status(size)  # raises for an unknown checkpoint
            conn.execute(
                "UPDATE checkpoint_status SET witnessed_ms = coalesce(witnessed_ms, ?)"
                " WHERE size = ?",
                (at_ms, size),
            )
            return self.status(size)

    def cosigned_below_quorum(self) -> list[CheckpointStatus]:
        """Return every checkpoint with cosignatures kept but not recorded as witnessed.

        Neither anchored (an anchor is recorded only after the quorum) nor witnessed: what the
        ledger service re-counts at start (see migration ``log_0103``), oldest first.
        """
        rows = self._db.query(
            _SELECT_STATUS + " WHERE cosignatures != '' AND witnessed_ms IS NULL"
            " AND anchored_tx IS NULL ORDER BY size"
        )
        return [_status(row) for row in rows]

    def record_anchor(
        self, size: int, *, chain: str, tx: bytes, block: int, now: datetime
    ) -> CheckpointStatus:
        """Record that the checkpoint at *size* was anchored on *chain* in transaction *tx*."""
        with self._db.atomic() as conn:
            self.status(size)  # raises for an unknown checkpoint
            conn.execute(
                "UPDATE checkpoint_status SET anchor_chain = ?, anchored_tx = ?,"
                " anchored_block = ?, anchored_ms = ? WHERE size = ?",
                (chain, tx, block, _ms(now), size),
            )
            return self.status(size)

    # -- crypto-shredding -----------------------------------------------------------------------

    def erase(self, event_id: int, reason: str, now: datetime) -> Erasure:
        """Crypto-shred event *event_id* and log the erasure (see :func:`erase_event`)."""
        return erase_event(self._db, event_id, reason, now)


# -- appending and erasing without a key ---------------------------------------------------------


def append_pending(db: Database, limit: int | None = None) -> int:
    """Append every event not yet logged (at most *limit*), in id order; return how many.

    One transaction per chunk of at most 5,000 events: each chunk's tree nodes and
    ``log_leaves`` rows commit together. Safe to call from several places: the write lock is
    taken before the tail position is read. Needs no key: only :meth:`TransparencyLog.seal`
    signs.
    """
    total = 0
    while limit is None or total < limit:
        want = _CHUNK if limit is None else min(_CHUNK, limit - total)
        with db.atomic() as conn:
            done = _append_events(db, conn, want)
        total += done
        if done < want:
            break
    return total


def _append_events(db: Database, conn: sqlite3.Connection, limit: int) -> int:
    """Append up to *limit* events after the tail, inside the caller's transaction."""
    last = conn.execute(
        "SELECT coalesce(max(ref_id), 0) FROM log_leaves WHERE kind = 'event'"
    ).fetchone()[0]
    rows = conn.execute(
        "SELECT id, digest, salt FROM events WHERE id > ? ORDER BY id LIMIT ?", (last, limit)
    ).fetchall()
    items = []
    for event_id, digest, salt in rows:
        if salt is None:
            # erase() logs pending events before destroying a salt, so this is damage.
            raise UnavailableError(
                f"Event {event_id} lost its salt before it was logged; the gateway database "
                f"{db.path} was changed outside the gateway.",
                reason="store-corrupt",
            )
        items.append((int(event_id), commitment("event", salt, digest)))
    if items:
        _append(db, conn, "event", items)
    return len(items)


def _append(
    db: Database, conn: sqlite3.Connection, kind: str, items: list[tuple[int, bytes]]
) -> int:
    """Append leaves and their records inside the caller's transaction; return the first index."""
    expected = conn.execute("SELECT coalesce(max(idx) + 1, 0) FROM log_leaves").fetchone()[0]
    first = MerkleTree(db).append_many([merkle.leaf_hash(value) for _, value in items])
    if first != expected:
        raise UnavailableError(
            f"The log in {db.path} has {first} tree leaves but {expected} leaf records; "
            "the file is damaged: stop the gateway and restore it from the latest backup.",
            reason="store-corrupt",
        )
    conn.executemany(
        "INSERT INTO log_leaves (idx, kind, ref_id, commitment) VALUES (?, ?, ?, ?)",
        [(first + i, kind, ref_id, value) for i, (ref_id, value) in enumerate(items)],
    )
    return first


def erase_event(db: Database, event_id: int, reason: str, now: datetime) -> Erasure:
    """Crypto-shred event *event_id* and log the erasure; one transaction.

    Steps (DESIGN, "Transparency log and ledger"):

    1. Log every pending event first, this one included, while its salt still exists (a
       record erased before it was logged would leave a gap no verifier could explain).
    2. Refuse an unknown or already erased event.
    3. Destroy the salt and the stored bytes (raw message, payload). The leaf keeps its
       commitment, so the tree and every checkpoint still verify, but nobody can recompute
       the commitment from the record any more: the record is unlinkable. The digest of
       the bytes stays, so a redelivered copy is absorbed as a duplicate, not stored again.
    4. Log the erasure as a leaf of kind ``"erasure"`` committing to (event id,
       SHA-256(reason), time) under a fresh salt — not to the content.
    """
    if not reason.strip():
        raise PolicyError("An erasure needs a reason.", reason="no-reason")
    erased_ms = _ms(now)
    reason_digest = hashlib.sha256(reason.encode()).digest()
    with db.atomic() as conn:
        # Step 1 — log before shredding.
        append_pending(db)
        # Step 2 — unknown or already erased.
        row = conn.execute("SELECT salt FROM events WHERE id = ?", (event_id,)).fetchone()
        if row is None:
            raise MalformedError(f"The gateway has no event {event_id}.", reason="unknown-event")
        if row[0] is None:
            raise PolicyError(f"Event {event_id} is already erased.", reason="already-erased")
        # Step 3 — shred.
        conn.execute(
            "UPDATE events SET salt = NULL, raw = x'' WHERE id = ?",
            (event_id,),
        )
        # Step 4 — log the erasure itself.
        salt = secrets.token_bytes(32)
        erasure_id = conn.execute(
            "INSERT INTO erasures (event_id, reason, reason_digest, erased_ms, salt)"
            " VALUES (?, ?, ?, ?, ?) RETURNING id",
            (event_id, reason, reason_digest, erased_ms, salt),
        ).fetchone()[0]
        digest = erasure_digest(event_id, reason_digest, erased_ms)
        value = commitment("erasure", salt, digest)
        index = _append(db, conn, "erasure", [(erasure_id, value)])
    return Erasure(erasure_id, event_id, index, erased_ms, reason_digest)


def revoke_device(db: Database, device_id: str, reason: str, now: datetime) -> Revocation:
    """Revoke enrolled device *device_id* and log the revocation; one transaction.

    1. Refuse a revocation without a reason, or of a device that is not enrolled.
    2. A device revoked already keeps its first revocation: returned, with ``already``.
    3. Mark it revoked (``devices.revoked_ms``, what ingest reads: its verifiers refuse it
       from their next batch) and keep the record (``device_revocations``).
    4. Log it as a leaf of kind ``"revocation"`` committing to (device id, SHA-256(reason),
       time) under a fresh salt: the log shows that, when and why (by digest) the gateway began
       refusing a device, without naming it (the id is only under the salt).
    """
    if not reason.strip():
        raise PolicyError("A revocation needs a reason.", reason="no-reason")
    reason_digest = hashlib.sha256(reason.encode()).digest()
    with db.atomic() as conn:
        known = conn.execute(
            "SELECT id, revoked_ms, reason FROM device_revocations WHERE device_id = ?",
            (device_id,),
        ).fetchone()
        if known is not None:
            leaf = conn.execute(
                "SELECT idx FROM log_leaves WHERE kind = 'revocation' AND ref_id = ?", (known[0],)
            ).fetchone()
            if leaf is None:
                raise _mismatch(
                    f"Device {device_id} has a revocation record that the log does not hold; "
                    "it was made outside the gateway (run `provgw log verify`).",
                    "missing-record",
                )
            return Revocation(known[0], device_id, leaf[0], known[1], known[2], already=True)
        devices = DeviceStore(db)
        if not devices.revoke(device_id, now_ms=_ms(now)):
            raise MalformedError(
                f"The gateway has no enrolled device {device_id!r} (a device is enrolled by its "
                "first valid message).",
                reason="unknown-device",
            )
        row = devices.get(device_id)
        assert row is not None
        assert row.revoked_ms is not None  # the earliest, if the store had one already
        salt = secrets.token_bytes(32)
        revocation_id = conn.execute(
            "INSERT INTO device_revocations (device_id, revoked_ms, reason, reason_digest, salt)"
            " VALUES (?, ?, ?, ?, ?) RETURNING id",
            (device_id, row.revoked_ms, reason, reason_digest, salt),
        ).fetchone()[0]
        digest = revocation_digest(device_id, reason_digest, row.revoked_ms)
        index = _append(
            db, conn, "revocation", [(revocation_id, commitment("revocation", salt, digest))]
        )
    return Revocation(revocation_id, device_id, index, row.revoked_ms, reason)


# -- verification of the whole store -------------------------------------------------------------


@dataclass(frozen=True)
class LogReport:
    """What :func:`verify_log` checked."""

    leaves: int
    events: int
    erased_events: int
    erasures: int
    urgent_records: int
    revocations: int
    other_records: int
    checkpoints: int
    pending_events: int
    root: bytes


class _RootBuilder(Frontier):
    """A :class:`~gateway.ledger.tree.Frontier` that keeps every complete subtree it closes.

    :attr:`closed` holds them as ``(level, idx) -> hash`` until the caller compares them with the
    stored tree and clears the dict.
    """

    def __init__(self) -> None:
        super().__init__()
        self.closed: dict[tuple[int, int], bytes] = {}

    def add(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add the leaf hash *leaf*, keeping the subtrees it completes in :attr:`closed`."""
        closed = super().add(leaf)
        for level, idx, h in closed:
            self.closed[level, idx] = h
        return closed


def _check_interior_nodes(db: Database, closed: dict[tuple[int, int], bytes]) -> None:
    """Compare rebuilt complete subtrees with the stored ones, one range query per level."""
    by_level: dict[int, list[int]] = {}
    for level, idx in closed:
        by_level.setdefault(level, []).append(idx)
    for level, indices in by_level.items():
        rows = db.query(
            "SELECT idx, hash FROM log_nodes WHERE level = ? AND idx BETWEEN ? AND ?",
            (level, min(indices), max(indices)),
        )
        stored = {int(idx): h for idx, h in rows}
        for idx in indices:
            if stored.get(idx) != closed[level, idx]:
                raise _mismatch(
                    f"The stored tree node at level {level}, position {idx} differs from the "
                    "one rebuilt from the leaves; interior tree nodes were altered, so proofs "
                    "through them would not verify.",
                    "node-mismatch",
                )
    closed.clear()


def _mismatch(message: str, reason: str) -> MismatchError:
    return MismatchError(message, reason=reason)


#: Log kinds whose leaves stand for ``urgent_records`` rows (the urgent lane's records).
_URGENT_KINDS = tuple(sorted(set(URGENT_LOG_KINDS.values())))

#: One query per chunk of leaves: each leaf with its tree node and the record it stands for, every
#: join a primary-key lookup. The urgent_records columns are read only for the kinds in
#: _URGENT_KINDS (the join leaves out just the three kinds that have their own table).
_VERIFY_LEAVES = (
    "SELECT l.idx, l.kind, l.ref_id, l.commitment, n.hash,"
    " e.id, e.digest, e.salt, e.raw, x.event_id, x.reason_digest, x.erased_ms, x.salt,"
    " u.id, u.kind, u.digest, u.salt, u.leaf,"
    " r.device_id, r.reason, r.reason_digest, r.revoked_ms, r.salt, d.revoked_ms"
    " FROM log_leaves l"
    " LEFT JOIN log_nodes n ON n.level = 0 AND n.idx = l.idx"
    " LEFT JOIN events e ON l.kind = 'event' AND e.id = l.ref_id"
    " LEFT JOIN erasures x ON l.kind = 'erasure' AND x.id = l.ref_id"
    " LEFT JOIN urgent_records u"
    " ON l.kind NOT IN ('event', 'erasure', 'revocation') AND u.id = l.ref_id"
    " LEFT JOIN device_revocations r ON l.kind = 'revocation' AND r.id = l.ref_id"
    " LEFT JOIN devices d ON d.device_id = r.device_id"
    " WHERE l.idx >= ? AND l.idx < ? ORDER BY l.idx"
)


def _check_leaf(row: Sequence[object]) -> tuple[str, bytes]:
    """Re-derive one leaf from the store; return (what it was, its leaf hash)."""
    idx, kind, ref_id, stored, node = row[:5]
    assert isinstance(idx, int)
    assert isinstance(kind, str)
    assert isinstance(ref_id, int)
    assert isinstance(stored, bytes)
    leaf = merkle.leaf_hash(stored)
    if node != leaf:
        raise _mismatch(
            f"Log entry {idx}: the tree holds a different leaf hash than its commitment gives; "
            "the tree or the leaf record was altered.",
            "leaf-mismatch",
        )
    if kind == "event":
        return _check_event(idx, ref_id, stored, row[5:9]), leaf
    if kind == "erasure":
        _check_erasure(idx, ref_id, stored, row[9:13])
        return "erasure", leaf
    if kind in _URGENT_KINDS:
        _check_urgent(idx, kind, ref_id, stored, row[13:18])
        return "urgent", leaf
    if kind == "revocation":
        _check_revocation(idx, ref_id, stored, row[18:24])
        return "revocation", leaf
    return "other", leaf


def _check_event(idx: int, ref_id: int, stored: bytes, columns: Sequence[object]) -> str:
    """Re-derive an event leaf from its row; return ``"event"``, or ``"erased"`` if shredded."""
    e_id, digest, salt, raw = columns
    if e_id is None:
        raise _mismatch(
            f"Log entry {idx} refers to event {ref_id}, which is not stored.", "missing-record"
        )
    if salt is None:
        return "erased"  # crypto-shredded: only the commitment remains (checked in step 3)
    assert isinstance(raw, bytes)
    assert isinstance(digest, bytes)
    assert isinstance(salt, bytes)
    if hashlib.sha256(raw).digest() != digest:
        raise _mismatch(
            f"Event {ref_id}: its stored bytes do not match its digest.", "digest-mismatch"
        )
    if commitment("event", salt, digest) != stored:
        raise _mismatch(
            f"Log entry {idx}: the commitment recomputed from event {ref_id} (salt and "
            "digest) differs from the one logged; the event or its salt was altered.",
            "commitment-mismatch",
        )
    return "event"


def _check_erasure(idx: int, ref_id: int, stored: bytes, columns: Sequence[object]) -> None:
    """Re-derive an erasure leaf from its record."""
    x_event, x_reason, x_ms, x_salt = columns
    if x_event is None:
        raise _mismatch(
            f"Log entry {idx} refers to erasure {ref_id}, which is not stored.",
            "missing-record",
        )
    assert isinstance(x_event, int)
    assert isinstance(x_reason, bytes)
    assert isinstance(x_ms, int)
    assert isinstance(x_salt, bytes)
    if commitment("erasure", x_salt, erasure_digest(x_event, x_reason, x_ms)) != stored:
        raise _mismatch(
            f"Log entry {idx}: the erasure record {ref_id} does not match its commitment.",
            "commitment-mismatch",
        )


def _check_revocation(idx: int, ref_id: int, stored: bytes, columns: Sequence[object]) -> None:
    """Re-derive a revocation leaf from its record, and the record's device from it."""
    device_id, reason, reason_digest, revoked_ms, salt, device_revoked_ms = columns
    if device_id is None:
        raise _mismatch(
            f"Log entry {idx} refers to device revocation {ref_id}, which is not stored; the "
            "record was deleted.",
            "missing-record",
        )
    assert isinstance(device_id, str)
    assert isinstance(reason, str)
    assert isinstance(reason_digest, bytes)
    assert isinstance(revoked_ms, int)
    assert isinstance(salt, bytes)
    digest = revocation_digest(device_id, reason_digest, revoked_ms)
    if hashlib.sha256(reason.encode()).digest() != reason_digest or (
        commitment("revocation", salt, digest) != stored
    ):
        raise _mismatch(
            f"Log entry {idx}: device revocation {ref_id} (its device, reason, time or salt) "
            "does not match its commitment; the record was altered.",
            "commitment-mismatch",
        )
    # The flag ingest reads must say what the logged record says: a device quietly trusted
    # again (or its revocation moved in time) is a claim the log contradicts.
    if device_revoked_ms != revoked_ms:
        raise _mismatch(
            f"Device revocation {ref_id} (log entry {idx}) says its device was revoked at "
            f"{revoked_ms}, but the device's row says {device_revoked_ms}; it was trusted "
            "again, or its revocation moved, outside the gateway.",
            "claim-mismatch",
        )


def _check_urgent(
    idx: int, kind: str, ref_id: int, stored: bytes, columns: Sequence[object]
) -> None:
    """Re-derive an urgent-lane leaf (a recall, offer, report or SBOM verdict) from its row.

    The row is in ``urgent_records`` (store migration 0007); it keeps the digest of the bytes
    it stands for, its salt, and the index of the leaf it was logged at.
    """
    u_id, u_kind, digest, salt, u_leaf = columns
    # (a) A leaf whose record was deleted: the log vouches for a recall or remediation step the
    # gateway no longer shows.
    if u_id is None:
        raise _mismatch(
            f"Log entry {idx} refers to urgent-lane record {ref_id} ({kind}), which is not "
            "stored; the record was deleted.",
            "missing-record",
        )
    # (b) The row names another leaf: rows swapped or re-pointed, so a proof of one record
    # would be shown for another.
    if u_leaf != idx:
        where = "no log entry" if u_leaf is None else f"log entry {u_leaf}"
        raise _mismatch(
            f"Log entry {idx} holds urgent-lane record {ref_id}, but the record names {where}; "
            "records were swapped or re-pointed.",
            "order-mismatch",
        )
    # (c) The row's kind logs under another domain: a recall shown as a remediation step, or
    # the reverse (the domains of gateway.ledger.commitments keep record kinds apart).
    if URGENT_LOG_KINDS.get(str(u_kind)) != kind:
        raise _mismatch(
            f"Log entry {idx} logs urgent-lane record {ref_id} as a {kind} record, but the "
            f"record says it is a {u_kind} record; its kind was altered.",
            "kind-mismatch",
        )
    # (d) The commitment from the row's salt and digest: an altered or swapped salt or digest.
    assert isinstance(digest, bytes)
    assert isinstance(salt, bytes)
    if commitment(kind, salt, digest) != stored:
        raise _mismatch(
            f"Log entry {idx}: the commitment recomputed from urgent-lane record {ref_id} (salt "
            "and digest) differs from the one logged; the record or its salt was altered.",
            "commitment-mismatch",
        )


def verify_log(
    db: Database,
    verifier: note.Verifier,
    progress: Callable[[int, int], None] | None = None,
) -> LogReport:
    """Re-derive the whole log from the store and check every checkpoint; raise on any mismatch.

    Steps:

    1. The tree and the leaf records have the same, gap-free size (lost or extra entries).
    2. Every leaf, in order: its stored leaf hash is the hash of its commitment; for a
       non-erased event the commitment is recomputed from salt and digest, and the digest from
       the stored bytes; an erased event has an erasure record; an erasure leaf is recomputed
       from its record; an urgent-lane leaf (``recall``, ``remediation``) has its
       ``urgent_records`` row, which names this leaf, has a kind logged under this leaf's kind
       (:data:`~gateway.ledger.commitments.URGENT_LOG_KINDS`), and gives this commitment from
       its salt and digest (altered, deleted or swapped records, salts, leaves).
    3. Event leaves follow event ids upwards and no event below the tail is missing, and every
       ``urgent_records`` row that names a leaf is one of the urgent-lane leaves checked in
       step 2 (a record dropped from, or slipped into, the log).
    4. Every stored complete subtree equals the one rebuilt from the leaves, and so do the roots
       at every checkpoint size and at the current size (altered interior nodes, which would
       make proofs through them fail).
    5. Every checkpoint's note verifies under *verifier* with the log's origin, its size and
       root match its row and the rebuilt root, and each consecutive pair is consistent by an
       RFC 9162 §2.1.4 proof from the stored tree (forged, altered or forked checkpoints).

    *progress(done, total)* is called after each chunk of leaves.
    """
    tree = MerkleTree(db)
    size = tree.size()
    # Step 1 — sizes agree.
    count, top = db.query("SELECT count(*), coalesce(max(idx), -1) FROM log_leaves")[0]
    if count != size or top != size - 1:
        raise _mismatch(
            f"The tree has {size} leaves but there are {count} leaf records (highest index "
            f"{top}); entries were lost or added outside the gateway.",
            "size-mismatch",
        )
    checkpoints = [StoredCheckpoint(*r) for r in db.query(_SELECT_CHECKPOINT + " ORDER BY size")]
    wanted = [c.size for c in checkpoints if c.size <= size]
    if len(wanted) != len(checkpoints):
        raise _mismatch(
            f"A checkpoint claims more entries than the log's {size}; leaves were removed.",
            "size-mismatch",
        )
    # Steps 2-3 — every leaf, then the events below the tail.
    counts, last_event, rebuilt, final = _walk_leaves(db, size, wanted, progress)
    _check_events_complete(db, last_event, counts)
    _check_urgent_complete(db, counts)
    _check_revocations_complete(db, counts)
    # Step 4 — rebuilt roots equal the stored tree's.
    for at, root in [*rebuilt.items(), (size, final)]:
        if tree.root(at) != root:
            raise _mismatch(
                f"The stored tree's root at {at} entries differs from the root rebuilt from the "
                "leaves; interior tree nodes were altered.",
                "root-mismatch",
            )
    # Step 5 — checkpoints.
    _verify_checkpoints(tree, checkpoints, rebuilt, verifier)
    pending = db.query("SELECT count(*) FROM events WHERE id > ?", (last_event,))[0][0]
    return LogReport(
        leaves=size,
        events=counts["event"],
        erased_events=counts["erased"],
        erasures=counts["erasure"],
        urgent_records=counts["urgent"],
        revocations=counts["revocation"],
        other_records=counts["other"],
        checkpoints=len(checkpoints),
        pending_events=int(pending),
        root=final,
    )


def _walk_leaves(
    db: Database,
    size: int,
    wanted: Sequence[int],
    progress: Callable[[int, int], None] | None,
) -> tuple[dict[str, int], int, dict[int, bytes], bytes]:
    """Check each leaf and rebuild the roots at *wanted* sizes (verify_log steps 2-3)."""
    rebuilt: dict[int, bytes] = {}
    builder = _RootBuilder()
    counts = {"event": 0, "erased": 0, "erasure": 0, "urgent": 0, "revocation": 0, "other": 0}
    last_event = 0
    sizes = iter(wanted)
    next_size = next(sizes, None)
    for start in range(0, size, _VERIFY_CHUNK):
        for row in db.query(_VERIFY_LEAVES, (start, start + _VERIFY_CHUNK)):
            what, leaf = _check_leaf(row)
            counts[what] += 1
            # Step 3 — the tail appends events in id order, each once.
            if row[1] == "event":
                if row[2] <= last_event:
                    raise _mismatch(
                        f"Log entry {row[0]}: events are out of order.", "order-mismatch"
                    )
                last_event = row[2]
            builder.add(leaf)
            if next_size is not None and next_size == row[0] + 1:
                rebuilt[next_size] = builder.root()
                next_size = next(sizes, None)
        _check_interior_nodes(db, builder.closed)
        if progress is not None:
            progress(min(start + _VERIFY_CHUNK, size), size)
    return counts, last_event, rebuilt, builder.root()


def _check_events_complete(db: Database, last_event: int, counts: dict[str, int]) -> None:
    """Step 3 of :func:`verify_log`: no event below the tail is missing or unexplained."""
    below = db.query("SELECT count(*) FROM events WHERE id <= ?", (last_event,))[0][0]
    if below != counts["event"] + counts["erased"]:
        raise _mismatch(
            f"{below} events are stored up to event {last_event}, but the log holds "
            f"{counts['event'] + counts['erased']} of them; events were removed or inserted.",
            "missing-record",
        )
    unexplained = db.query(
        "SELECT count(*) FROM events e WHERE e.salt IS NULL"
        " AND NOT EXISTS (SELECT 1 FROM erasures x WHERE x.event_id = e.id)"
    )[0][0]
    if unexplained:
        raise _mismatch(
            f"{unexplained} events lost their salt without an erasure record.", "missing-record"
        )


def _check_urgent_complete(db: Database, counts: dict[str, int]) -> None:
    """Step 3 of :func:`verify_log`: every urgent-lane record that names a leaf is in the log.

    Step 2 matched each urgent-lane leaf to a distinct row naming that very leaf, so equal counts
    mean no other row claims to be logged (a forged or copied record, or a leaf re-labelled as
    another kind to escape step 2). Rows with no leaf yet are pending, not missing: the recorder
    thread appends them off the urgent path.
    """
    claimed = db.query("SELECT count(*) FROM urgent_records WHERE leaf IS NOT NULL")[0][0]
    if claimed != counts["urgent"]:
        raise _mismatch(
            f"{claimed} urgent-lane records (recalls, offers, reports, SBOM verdicts) say they "
            f"are logged, but the log holds {counts['urgent']} of them; records were inserted, "
            "copied or re-pointed outside the gateway.",
            "missing-record",
        )


def _check_revocations_complete(db: Database, counts: dict[str, int]) -> None:
    """Step 3 of :func:`verify_log`: every revocation is logged, and every revoked device has one.

    A revocation record is written and logged in one transaction (:func:`revoke_device`), so a
    record the log lacks was inserted outside the gateway, and a device marked revoked without a
    record was revoked where no party can see it.
    """
    kept, unrecorded = db.query(
        "SELECT (SELECT count(*) FROM device_revocations),"
        " (SELECT count(*) FROM devices d WHERE d.revoked_ms IS NOT NULL AND NOT EXISTS"
        " (SELECT 1 FROM device_revocations r WHERE r.device_id = d.device_id))"
    )[0]
    if kept != counts["revocation"] or unrecorded:
        raise _mismatch(
            f"{kept} device revocations are kept and {unrecorded} more devices are marked "
            f"revoked without one, but the log holds {counts['revocation']}; revocations were "
            "made or inserted outside the gateway.",
            "missing-record",
        )


def _verify_checkpoints(
    tree: MerkleTree,
    checkpoints: Sequence[StoredCheckpoint],
    rebuilt: dict[int, bytes],
    verifier: note.Verifier,
) -> None:
    previous: note.Checkpoint | None = None
    for stored in checkpoints:
        try:
            checkpoint = note.open_checkpoint(stored.note, verifier).checkpoint
        except VerificationError as exc:
            raise _mismatch(
                f"The checkpoint of {stored.size} entries does not verify under the log key "
                f"{verifier.name}: {exc}",
                "checkpoint-invalid",
            ) from exc
        if (checkpoint.size, checkpoint.root) != (stored.size, stored.root):
            raise _mismatch(
                f"The signed checkpoint of {checkpoint.size} entries does not match its stored "
                f"row ({stored.size} entries).",
                "checkpoint-mismatch",
            )
        if rebuilt.get(checkpoint.size) != checkpoint.root:
            raise _mismatch(
                f"The checkpoint of {checkpoint.size} entries signs a root the log's leaves do "
                "not give: the log and its signed history disagree.",
                "root-mismatch",
            )
        if previous is not None:
            proof = tree.consistency_proof(previous.size, checkpoint.size)
            try:
                merkle.verify_consistency(
                    previous.size, checkpoint.size, previous.root, checkpoint.root, proof
                )
            except VerificationError as exc:
                raise _mismatch(
                    f"The checkpoints of {previous.size} and {checkpoint.size} entries are not "
                    f"consistent: {exc}",
                    "log-fork",
                ) from exc
        previous = checkpoint
