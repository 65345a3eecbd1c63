"""The witness's own SQLite file: the latest cosigned checkpoint per log, and misbehaviour evidence.

A witness (C2SP tlog-witness) is a separate service, usually run by another consortium member,
so its state lives in its own small file rather than in a gateway database. The file is a
:class:`~gateway.store.db.Database` opened with :data:`WITNESS_MIGRATIONS` instead of the
gateway's: the same connection settings, transaction manager and error mapping, its own schema
steps recorded in ``_migrations`` (so a witness file opened as a gateway database, or the
reverse, is refused as ``store-foreign-schema`` instead of being given the other's tables).

Durability: ``synchronous=FULL`` by default. tlog-witness: "The witness MUST persist the new
checkpoint before responding". A witness that forgot its latest checkpoint after a power loss
could be walked back to an older size and then cosign a fork of the log from there, so each
cosignature costs one fsync (a checkpoint every few seconds per log, nothing next to the
network round trip).
"""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from gateway.store.db import Database, MigrationSet

__all__ = [
    "MAX_EVIDENCE_PER_LOG",
    "WITNESS_MIGRATIONS",
    "Evidence",
    "WitnessStore",
    "WitnessedCheckpoint",
]

#: Refused-but-validly-signed requests kept per log; enough to prove misbehaviour, bounded.
MAX_EVIDENCE_PER_LOG = 1000

#: The witness file's schema steps; none of the gateway's.
WITNESS_MIGRATIONS = MigrationSet("witness")


@WITNESS_MIGRATIONS.register("witness_0001_state")
def _state(conn: sqlite3.Connection) -> None:
    # IF NOT EXISTS: files written before the witness recorded its migrations (versioned with
    # PRAGMA user_version = 1) already hold these exact tables; this step adopts them as they are.
    # One row per log: the witness keeps only the latest checkpoint (tlog-witness §Intro).
    # Sizes are SQLite INTEGERs (signed 64-bit); the witness refuses larger trees.
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS witness_logs (
            origin      TEXT    PRIMARY KEY,
            size        INTEGER NOT NULL CHECK (size >= 0),
            root        BLOB    NOT NULL CHECK (length(root) = 32),
            note        BLOB    NOT NULL,
            cosigned_at INTEGER NOT NULL CHECK (cosigned_at >= 0)
        ) STRICT
        """
    )
    # tlog-witness: the witness "MAY log the request even if the consistency proof
    # doesn't verify ... as it might be proof of log misbehavior".
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS witness_evidence (
            id          INTEGER PRIMARY KEY,
            origin      TEXT    NOT NULL,
            reason      TEXT    NOT NULL,
            request     BLOB    NOT NULL,
            sha256      BLOB    NOT NULL UNIQUE,
            received_at INTEGER NOT NULL
        ) STRICT
        """
    )


@dataclass(frozen=True)
class WitnessedCheckpoint:
    """The latest checkpoint a witness cosigned for one log (its origin line)."""

    origin: str
    size: int
    root: bytes
    #: The signed note as submitted (log signature and any other cosignatures).
    note: bytes
    #: POSIX time of the latest cosignature; the next one is never earlier.
    cosigned_at: int


@dataclass(frozen=True)
class Evidence:
    """A request for a log, with a valid log signature, that the witness refused (a split view)."""

    origin: str
    reason: str
    request: bytes
    received_at: int


class WitnessStore(Database):
    """The witness's SQLite file: a :class:`Database` with the witness's migrations only.

    Writes go through :meth:`atomic`; tlog-witness requires the check of the old size and the
    update of the stored checkpoint to be atomic (else two requests can roll the witness back),
    and its ``BEGIN IMMEDIATE`` takes the write lock before the read, which also serialises
    witness processes sharing one file. Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, path: str | Path, *, durable_against_power_loss: bool = True) -> None:
        super().__init__(
            path,
            migrations=WITNESS_MIGRATIONS,
            durable_against_power_loss=durable_against_power_loss,
        )

    def latest(self, origin: str) -> WitnessedCheckpoint | None:
        """Return the latest checkpoint cosigned for the log *origin*, ``None`` if never seen."""
        rows = self.query(
            "SELECT size, root, note, cosigned_at FROM witness_logs WHERE origin = ?", (origin,)
        )
        if not rows:
            return None
        size, root, note, cosigned_at = rows[0]
        return WitnessedCheckpoint(origin, size, root, note, cosigned_at)

    def put(self, checkpoint: WitnessedCheckpoint) -> None:
        """Make *checkpoint* the latest for its log, replacing the previous one."""
        with self.atomic() as conn:
            conn.execute(
                "INSERT INTO witness_logs (origin, size, root, note, cosigned_at)"
                " VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (origin) DO UPDATE SET size = excluded.size, root = excluded.root,"
                " note = excluded.note, cosigned_at = excluded.cosigned_at",
                (
                    checkpoint.origin,
                    checkpoint.size,
                    checkpoint.root,
                    checkpoint.note,
                    checkpoint.cosigned_at,
                ),
            )

    def record_evidence(self, origin: str, reason: str, request: bytes, received_at: int) -> None:
        """Keep a refused request as evidence; duplicates and requests past the cap are dropped."""
        digest = hashlib.sha256(request).digest()
        with self.atomic() as conn:
            (count,) = conn.execute(
                "SELECT count(*) FROM witness_evidence WHERE origin = ?", (origin,)
            ).fetchone()
            if count >= MAX_EVIDENCE_PER_LOG:
                return
            conn.execute(
                "INSERT OR IGNORE INTO witness_evidence (origin, reason, request, sha256,"
                " received_at) VALUES (?, ?, ?, ?, ?)",
                (origin, reason, request, digest, received_at),
            )

    def evidence(self, origin: str) -> list[Evidence]:
        """Return the refused requests kept for the log *origin*, oldest first."""
        rows = self.query(
            "SELECT reason, request, received_at FROM witness_evidence WHERE origin = ?"
            " ORDER BY id",
            (origin,),
        )
        return [Evidence(origin, r[0], r[1], r[2]) for r in rows]
