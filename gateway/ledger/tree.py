"""The transparency log's append-only RFC 9162 Merkle tree, stored in the gateway's SQLite file.

Layout (table ``log_nodes``, :mod:`gateway.store.log_schema`): the hash of every complete
subtree, keyed by ``(level, idx)``; leaves are level 0. Appending leaf n writes the leaf and each
subtree it completes (at most log2(n) + 1 rows, 2 on average), computed from the in-memory
*frontier* — the complete subtrees of the current size, read once per batch (O(log n)).

The root of any size, and every proof, is folded from O(log n) stored complete subtrees
(:func:`gateway.core.merkle.complete_subtrees`); nothing is ever recomputed from the leaves. Rows
are immutable once written, so a reader needs no transaction: a tree size once seen stays
answerable exactly as it was.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from gateway.core import merkle
from gateway.core.errors import MalformedError, UnavailableError
from gateway.store.db import Database

__all__ = ["Frontier", "MerkleTree"]

_INSERT = "INSERT INTO log_nodes (level, idx, hash) VALUES (?, ?, ?)"
# (level, idx) is the primary key, so MAX(idx) at level 0 is one index seek.
_SIZE = "SELECT MAX(idx) FROM log_nodes WHERE level = 0"
_POINT = "SELECT level, idx, hash FROM log_nodes WHERE level = ? AND idx = ?"


def _size_of(rows: list[Any]) -> int:
    top = rows[0][0] if rows else None
    return 0 if top is None else int(top) + 1


class MerkleTree:
    """The log's Merkle tree in *db*: append leaf hashes, read roots and proofs of any size.

    Every method that writes does so in one transaction (:meth:`Database.atomic`); when called
    inside an outer ``db.atomic()`` block it joins that transaction, so a batch of log entries and
    the records they commit to land together or not at all.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- writing --------------------------------------------------------------------------------

    def append(self, leaf_hash: bytes) -> int:
        """Append one leaf hash; return its index."""
        return self.append_many([leaf_hash])

    def append_many(self, leaf_hashes: Iterable[bytes]) -> int:
        """Append leaf hashes in order, in ONE transaction; return the index of the first.

        *leaf_hashes* may be a generator: leaves stream into SQLite without being held in
        memory. If anything raises before the commit — a malformed hash, the generator itself,
        the disk — the transaction rolls back and the tree is exactly as it was.
        """
        with self._db.atomic() as conn:
            # Read under the write lock (BEGIN IMMEDIATE): no other writer can append between
            # reading the size and writing after it.
            first = _size_of(conn.execute(_SIZE).fetchall())
            frontier = self._frontier(first)
            conn.executemany(_INSERT, _new_nodes(first, frontier, leaf_hashes))
        return first

    # -- reading --------------------------------------------------------------------------------

    def size(self) -> int:
        """Return the number of leaves."""
        return _size_of(self._db.query(_SIZE))

    def root(self, size: int | None = None) -> bytes:
        """Return MTH of the first *size* leaves (default: all), from O(log n) stored subtrees."""
        size = self._checked_size(size)
        return self._subtree(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Return the RFC 9162 §2.1.3.1 audit path of leaf *index* in the tree of *size* leaves."""
        size = self._checked_size(size)
        return merkle.inclusion_proof(index, size, self._subtree)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """Return the RFC 9162 §2.1.4.1 proof that *new_size* leaves extend *old_size* leaves."""
        new_size = self._checked_size(new_size)
        return merkle.consistency_proof(old_size, new_size, self._subtree)

    # -- internals ------------------------------------------------------------------------------

    def _checked_size(self, size: int | None) -> int:
        current = self.size()
        if size is None:
            return current
        if not 0 <= size <= current:
            raise MalformedError(
                f"The log has {current} entries, so it has no state at {size} entries.",
                reason="out-of-range",
            )
        return size

    def _frontier(self, size: int) -> Frontier:
        coords = merkle.complete_subtrees(0, size)
        levels = [level for level, _ in coords]
        return Frontier(size, list(zip(levels, self._nodes(coords), strict=True)))

    def _subtree(self, start: int, end: int) -> bytes:
        # MTH(D[start:end]) for the ranges proofs ask for, from the stored complete subtrees.
        return _fold(self._nodes(merkle.complete_subtrees(start, end)))

    def _nodes(self, coords: list[tuple[int, int]]) -> list[bytes]:
        if not coords:
            return []
        # One statement for all O(log n) nodes, each term a primary-key point lookup. (A
        # row-value ``IN (VALUES ...)`` is planned as a full scan: 500x slower at 50k leaves.)
        # At most 64 terms, well under SQLite's 500-term compound SELECT limit.
        sql = " UNION ALL ".join([_POINT] * len(coords))
        params = [x for coord in coords for x in coord]
        rows = self._db.query(sql, params)
        found = {(level, idx): h for level, idx, h in rows}
        missing = [c for c in coords if c not in found]
        if missing:
            level, idx = missing[0]
            raise UnavailableError(
                f"The transparency log in {self._db.path} is missing the stored hash at level "
                f"{level}, position {idx}; the file is damaged: stop the gateway and restore it "
                "from the latest backup.",
                reason="store-corrupt",
            )
        return [found[c] for c in coords]


class Frontier:
    """The complete subtrees of a growing tree, largest (leftmost) first: O(log n) memory.

    RFC 9162 §2.1.1 splits a tree of n leaves at the largest power of two below n, so a tree is
    the sequence of complete subtrees of its size's binary digits. Adding a leaf pushes it as a
    level-0 subtree, and two subtrees of one level merge into their parent as soon as both exist.
    Both the log's writer (:class:`MerkleTree`) and its verifier (``gateway.ledger.log``) grow
    trees through this one class.
    """

    def __init__(self, size: int = 0, subtrees: list[tuple[int, bytes]] | None = None) -> None:
        #: Leaves added so far.
        self.size = size
        # (level, hash) of each complete subtree; levels strictly decrease along the list.
        self._stack: list[tuple[int, bytes]] = [] if subtrees is None else subtrees

    def add(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add the leaf hash *leaf*; return ``(level, idx, hash)`` of each subtree it completes.

        The leaf itself (level 0) is not in the list; the subtrees are in increasing level.
        """
        level, acc = 0, leaf
        self.size += 1
        closed = []
        while self._stack and self._stack[-1][0] == level:
            acc = merkle.node_hash(self._stack.pop()[1], acc)
            level += 1
            # The subtree just closed ends at the newest leaf, size - 1, so at this level its
            # index is:
            closed.append((level, (self.size >> level) - 1, acc))
        self._stack.append((level, acc))
        return closed

    def root(self) -> bytes:
        """Return MTH of the leaves added so far (RFC 9162 §2.1.1)."""
        return _fold([h for _, h in self._stack])


def _fold(subtrees: list[bytes]) -> bytes:
    """MTH of a range from its complete subtrees, largest first: fold them right to left.

    RFC 9162 §2.1.1: MTH(D[n]) = HASH(0x01 || MTH(D[0:k]) || MTH(D[k:n])) with k the largest
    power of two below n; the right part is again split the same way, so the smallest subtrees
    combine first.
    """
    if not subtrees:
        return merkle.EMPTY_ROOT
    acc = subtrees[-1]
    for h in reversed(subtrees[:-1]):
        acc = merkle.node_hash(h, acc)
    return acc


def _new_nodes(
    first: int, frontier: Frontier, leaf_hashes: Iterable[bytes]
) -> Iterator[tuple[int, int, bytes]]:
    """Rows for each appended leaf and each complete subtree it closes, in order."""
    n = first
    for h in leaf_hashes:
        if len(h) != merkle.HASH_SIZE:
            raise MalformedError(
                f"Log entry {n} has a {len(h)}-byte hash; log leaves are 32-byte SHA-256 hashes.",
                reason="bad-hash-length",
            )
        yield (0, n, h)
        yield from frontier.add(h)
        n += 1
