"""Transparency-log tree: SQLite append, roots and proofs, beside the hashing floor.

- append: N leaf hashes into :class:`gateway.ledger.tree.MerkleTree` on a real SQLite file
  (WAL, synchronous=NORMAL), in batches of 1,000 leaves per transaction (the batcher's shape),
  against computing the N leaf hashes alone (SHA-256 of 0x00 || 32 bytes): the floor no log can
  beat.
- proofs at size N: inclusion proof read from SQLite + verified (goal <= 1 ms), beside
  verification alone; the same for consistency proofs; proof sizes in bytes.
- root of a size that is not a power of two, from the O(log n) stored subtrees.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench._table import Row
from gateway.core import merkle
from gateway.ledger.tree import MerkleTree
from gateway.store.db import Database

_BATCH = 1000
_SAMPLES = 300


def _leaf_hashes(n: int) -> list[bytes]:
    return [merkle.leaf_hash(i.to_bytes(32, "big")) for i in range(n)]


def _median_ms(fn: Callable[[int], object], args: list[int]) -> float:
    samples = []
    for a in args:
        start = time.perf_counter()
        fn(a)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def run(quick: bool) -> list[Row]:  # noqa: FBT001 -- the bench protocol is run(quick: bool)
    n = 50_000 if quick else 1_000_000
    group = f"log tree ({n:,} leaves)"
    rows: list[Row] = []

    # Floor: hashing the N items alone (median of 3).
    floor = []
    for _ in range(3):
        start = time.perf_counter()
        leaves = _leaf_hashes(n)
        floor.append(n / (time.perf_counter() - start))
    floor_rate = statistics.median(floor)

    with tempfile.TemporaryDirectory() as tmp, Database(Path(tmp) / "log.sqlite3") as db:
        tree = MerkleTree(db)
        start = time.perf_counter()
        for pos in range(0, n, _BATCH):
            tree.append_many(leaves[pos : pos + _BATCH])
        append_rate = n / (time.perf_counter() - start)
        file_mb = (Path(tmp) / "log.sqlite3").stat().st_size / 1e6
        rows.append(
            Row(
                group,
                f"append, {_BATCH:,} leaves/txn",
                append_rate,
                "leaves/s",
                "leaf hashing alone",
                floor_rate,
            )
        )

        rng = random.Random(1)  # noqa: S311 -- sampling indexes, not secrets
        size = tree.size()
        root = tree.root()
        indexes = [rng.randrange(size) for _ in range(_SAMPLES)]

        def prove_and_verify(i: int) -> None:
            merkle.verify_inclusion(leaves[i], i, size, tree.inclusion_proof(i, size), root)

        proofs = {i: tree.inclusion_proof(i, size) for i in indexes}

        def verify_only(i: int) -> None:
            merkle.verify_inclusion(leaves[i], i, size, proofs[i], root)

        rows.append(
            Row(
                group,
                "inclusion proof from SQLite + verify",
                _median_ms(prove_and_verify, indexes),
                "ms",
                "verify alone",
                _median_ms(verify_only, indexes),
                goal="<= 1 ms",
            )
        )
        proof_bytes = statistics.median(32 * len(p) for p in proofs.values())
        rows.append(
            Row(
                group,
                "inclusion proof size",
                proof_bytes,
                "B",
                "32 x ceil(log2 n)",
                32 * (size - 1).bit_length(),
            )
        )

        olds = [rng.randrange(1, size) for _ in range(_SAMPLES)]
        old_roots = {o: tree.root(o) for o in olds}
        cons = {o: tree.consistency_proof(o, size) for o in olds}

        def consistency(o: int) -> None:
            merkle.verify_consistency(o, size, old_roots[o], root, tree.consistency_proof(o, size))

        def consistency_verify_only(o: int) -> None:
            merkle.verify_consistency(o, size, old_roots[o], root, cons[o])

        rows.append(
            Row(
                group,
                "consistency proof from SQLite + verify",
                _median_ms(consistency, olds),
                "ms",
                "verify alone",
                _median_ms(consistency_verify_only, olds),
            )
        )
        rows.append(
            Row(
                group,
                "root at a random size (stored subtrees)",
                _median_ms(tree.root, olds),
                "ms",
                "size() query",
                _median_ms(lambda _: tree.size(), olds),
            )
        )
        rows.append(Row(group, "database file", file_mb, "MB", "leaf hashes alone", n * 32 / 1e6))
    return rows
