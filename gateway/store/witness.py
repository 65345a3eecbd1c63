"""The witness's own SQLite file: the latest cosigned checkpoint per log, and misbehaviour evidence.

A witness (C2SP tlog-witness) is a separate service, usually run by another consortium member,
so its state lives in its own small file rather than in a gateway database: opening
:class:`~gateway.store.db.Database` would apply every gateway migration (events, devices, the log
tree) to it. The schema is two tables, created with ``CREATE TABLE IF NOT EXISTS`` and versioned
with ``PRAGMA user_version``; the connection settings and the error mapping are the gateway's
(:func:`~gateway.store.db.unavailable_from`).

Durability: ``synchronous=FULL`` by default. tlog-witness: "The witness MUST persist the new
checkpoint before responding". A witness that forgot its latest checkpoint after a power loss
could be walked back to an older size and then cosign a fork of the log from there, so each
cosignature costs one fsync (a checkpoint every few seconds per log, nothing next to the
network round trip).
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from gateway.core.errors import UnavailableError
from gateway.store.db import unavailable_from

__all__ = ["MAX_EVIDENCE_PER_LOG", "Evidence", "WitnessStore", "WitnessedCheckpoint"]

#: Refused-but-validly-signed requests kept per log; enough to prove misbehaviour, bounded.
MAX_EVIDENCE_PER_LOG = 1000

_SCHEMA_VERSION = 1


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


class WitnessStore:
    """The witness's SQLite file. Writes go through :meth:`atomic`; the connection is thread-safe.

    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, path: str | Path, *, durable_against_power_loss: bool = True) -> None:
        self.path = str(path)
        self._lock = threading.RLock()
        self._depth = 0
        try:
            # isolation_level=None: no implicit transactions; atomic() issues BEGIN IMMEDIATE.
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise (unavailable_from(exc, self.path) or exc) from exc
        try:
            with self._mapping_errors():
                self._conn.execute("PRAGMA busy_timeout = 5000")
                self._conn.execute("PRAGMA journal_mode = WAL")
                sync = "FULL" if durable_against_power_loss else "NORMAL"
                self._conn.execute(f"PRAGMA synchronous = {sync}")
            self._create_schema()
        except BaseException:
            self._conn.close()
            raise

    def _create_schema(self) -> None:
        with self.atomic() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                msg = (
                    f"The witness database {self.path} was written by a newer witness version "
                    f"(schema {version}); run the newer version."
                )
                raise UnavailableError(msg, reason="store-newer-schema")
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
            conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    @contextmanager
    def atomic(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE`` … ``COMMIT``); nesting joins the outer one.

        tlog-witness requires the check of the old size and the update of the stored checkpoint
        to be atomic (else two requests can roll the witness back); ``IMMEDIATE`` takes the write
        lock before the read, which also serialises witness processes sharing one file.
        """
        with self._lock, self._mapping_errors():
            if self._depth:
                self._depth += 1
                try:
                    yield self._conn
                finally:
                    self._depth -= 1
                return
            self._conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    with suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                raise
            finally:
                self._depth = 0

    @contextmanager
    def _mapping_errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            mapped = unavailable_from(exc, self.path)
            if mapped is None:
                raise
            raise mapped from exc

    def latest(self, origin: str) -> WitnessedCheckpoint | None:
        """Return the latest checkpoint cosigned for the log *origin*, ``None`` if never seen."""
        with self._lock, self._mapping_errors():
            row = self._conn.execute(
                "SELECT size, root, note, cosigned_at FROM witness_logs WHERE origin = ?",
                (origin,),
            ).fetchone()
        if row is None:
            return None
        return WitnessedCheckpoint(origin, row[0], row[1], row[2], row[3])

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
        with self._lock, self._mapping_errors():
            rows = self._conn.execute(
                "SELECT reason, request, received_at FROM witness_evidence WHERE origin = ?"
                " ORDER BY id",
                (origin,),
            ).fetchall()
        return [Evidence(origin, r[0], r[1], r[2]) for r in rows]

    def close(self) -> None:
        """Close the connection; committed state is already on disk."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
