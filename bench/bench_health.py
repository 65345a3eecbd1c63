"""One /metrics scrape's store reads (gateway.service.health) on a large database.

The file holds a million events and log entries (100,000 with ``--quick``) and a checkpoint every
1,000, as a gateway has after some weeks. The baseline reads the same figures the direct way,
``count(*)`` over the events and the log (what ``ledger_summary`` does once, at a stop): the
price of a scrape that did not read index ends.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench._table import Row
from gateway.service.child import ChildStatus
from gateway.service.health import HealthCollector
from gateway.store.db import Database

_COUNTING = (
    "SELECT count(*) FROM events",
    "SELECT count(*) FROM log_leaves",
    (
        "SELECT count(*) FROM events WHERE id > "
        "(SELECT coalesce(max(ref_id), 0) FROM log_leaves WHERE kind = 'event')"
    ),
    "SELECT count(*), max(size) FROM checkpoint_status",
)


def _fill(path: Path, events: int) -> None:
    Database(path).close()
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO events (id, device_id, seq, type, event_time_ms, received_ms, site,"
            " topic, raw, digest, salt) VALUES (?, ?, ?, 'custody', 0, 0, 's', 't', ?, ?, ?)",
            (
                (i, f"dev-{i % 1000}", i // 1000, os.urandom(250), os.urandom(32), os.urandom(32))
                for i in range(1, events + 1)
            ),
        )
        conn.executemany(
            "INSERT INTO log_leaves (idx, kind, ref_id, commitment) VALUES (?, 'event', ?, ?)",
            ((i - 1, i, os.urandom(32)) for i in range(1, events + 1)),
        )
        sizes = range(1000, events + 1, 1000)
        conn.executemany(
            "INSERT INTO checkpoints (size, root, note, signed_ms) VALUES (?, ?, x'00', ?)",
            ((s, os.urandom(32), s) for s in sizes),
        )
        conn.executemany(
            "INSERT INTO checkpoint_status (size, cosignatures, witnessed_ms) VALUES (?, 'w', ?)",
            ((s, s) for s in sizes),
        )


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def run(quick: bool) -> list[Row]:  # noqa: FBT001 - the bench runner's interface
    events = 100_000 if quick else 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gateway.sqlite3"
        _fill(path, events)
        children = [ChildStatus("receiver", up=True, ready=True, restarts=0)]
        collector = HealthCollector(path, lambda: children)
        scrape = _median_ms(lambda: list(collector.collect()), 30)
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            counting = _median_ms(lambda: [conn.execute(q).fetchall() for q in _COUNTING], 10)
    return [
        Row(
            "health",
            f"/metrics store reads, {events:,} events and log entries",
            scrape,
            "ms",
            "the same figures by count(*)",
            counting,
        )
    ]
