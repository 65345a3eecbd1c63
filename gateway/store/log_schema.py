"""Tables of the transparency log's Merkle tree, as numbered migrations.

The tree (RFC 9162 §2.1, :mod:`gateway.ledger.tree`) stores the hash of every *complete* subtree
as it completes: ``(level, idx)`` covers leaves ``[idx << level, (idx + 1) << level)``, level 0
being the leaf hashes. A tree of n leaves holds 2n - popcount(n) rows, an append writes at most
log2(n) + 1 of them, and any root or proof needs O(log n) point reads. Rows are never updated or
deleted: the log is append-only, and a row once written is the same forever.
"""

from __future__ import annotations

import sqlite3

from gateway.store.db import migration

__all__: list[str] = []


@migration("log_0001_tree")
def _tree(conn: sqlite3.Connection) -> None:
    # WITHOUT ROWID: the (level, idx) key is the row, so each lookup is one B-tree descent and
    # the table is no larger than the data. STRICT + CHECK: a hash of the wrong length or a
    # negative coordinate is refused by SQLite, never stored.
    conn.execute(
        """
        CREATE TABLE log_nodes (
            level INTEGER NOT NULL CHECK (level BETWEEN 0 AND 63),
            idx   INTEGER NOT NULL CHECK (idx >= 0),
            hash  BLOB    NOT NULL CHECK (length(hash) = 32),
            PRIMARY KEY (level, idx)
        ) STRICT, WITHOUT ROWID
        """
    )
