"""Event store write rate: rows per transaction, redelivery, and the cost of synchronous=FULL."""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench._table import Row, rate
from gateway.store.db import Database
from gateway.store.events import EventRecord, EventStore

RAW = b"\xd2\x84" + b"\x00" * 250  # about the size of a signed maintenance event


def _batch_writer(store: EventStore, size: int) -> Callable[[], object]:
    seqs = itertools.count()

    def write() -> object:
        records = []
        for _ in range(size):
            seq = next(seqs)
            records.append(
                EventRecord(
                    "pump-1", seq, "maintenance", 0, 0, "site-a", "t", RAW + seq.to_bytes(8)
                )
            )
        return store.insert_batch(records)

    return write


def _rows_per_s(folder: Path, name: str, size: int, calls: int, *, full: bool = False) -> float:
    with Database(folder / f"{name}.sqlite3", durable_against_power_loss=full) as db:
        return rate(_batch_writer(EventStore(db), size), calls, repeats=3) * size


def _redelivery_rows_per_s(folder: Path, size: int, calls: int) -> float:
    with Database(folder / "redelivery.sqlite3") as db:
        store = EventStore(db)
        batch = [
            EventRecord("pump-1", s, "maintenance", 0, 0, "site-a", "t", RAW + bytes([s % 256]))
            for s in range(size)
        ]
        store.insert_batch(batch)
        return rate(lambda: store.insert_batch(batch), calls, repeats=3) * size


def run(quick: bool) -> list[Row]:  # noqa: FBT001 - the bench runner's interface
    calls_single, calls_batch = (300, 4) if quick else (5000, 40)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        single = _rows_per_s(folder, "single", 1, calls_single)
        batched = _rows_per_s(folder, "batched", 500, calls_batch)
        full = _rows_per_s(folder, "full", 500, calls_batch, full=True)
        single_full = _rows_per_s(folder, "single-full", 1, calls_single, full=True)
        redelivered = _redelivery_rows_per_s(folder, 500, calls_batch)
    return [
        Row(
            "store",
            "insert_batch 500 rows/txn",
            batched,
            "rows/s",
            "insert_batch 1 row/txn",
            single,
            goal="batching pays (DESIGN raw SQLite: 13k vs 85k rows/s)",
        ),
        Row(
            "store",
            "500 rows/txn, synchronous=FULL",
            full,
            "rows/s",
            "500 rows/txn, NORMAL",
            batched,
            goal="cost of power-loss durability",
        ),
        Row(
            "store",
            "1 row/txn, synchronous=FULL",
            single_full,
            "rows/s",
            "1 row/txn, NORMAL",
            single,
            goal="fsync per commit shows here",
        ),
        Row(
            "store",
            "redelivered 500-row batch (all duplicates)",
            redelivered,
            "rows/s",
            "500 new rows/txn",
            batched,
            goal="redelivery no slower than first delivery",
        ),
    ]
