from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import gateway
from gateway.store.db import Database
from gateway.store.events import EventRecord, EventStore

BATCH = 50

# The child writes batch after batch of BATCH events (default synchronous=NORMAL, as in
# production) and prints the last row id of each batch only after insert_batch has committed.
CHILD = f"""
import sys
from gateway.store.db import Database
from gateway.store.events import EventRecord, EventStore

store = EventStore(Database(sys.argv[1]))
batch = 0
while True:
    records = [
        EventRecord("pump-1", batch * {BATCH} + i, "maintenance", 0, 0, "site-a", "t",
                    b"event-%d" % (batch * {BATCH} + i) + b"." * 400)
        for i in range({BATCH})
    ]
    result = store.insert_batch(records)
    print(result.stored[-1], flush=True)
    batch += 1
"""


def _records(batches: int) -> list[EventRecord]:
    return [
        EventRecord(
            "pump-1",
            seq,
            "maintenance",
            0,
            0,
            "site-a",
            "t",
            b"event-%d" % seq + b"." * 400,
        )
        for seq in range(batches * BATCH)
    ]


@pytest.mark.timeout(60)
def test_committed_batches_survive_kill_9_and_redelivery_stores_nothing_twice(tmp_path):
    path = tmp_path / "gw.sqlite3"
    Database(path).close()  # migrations applied up front, so the child only inserts
    env = {**os.environ, "PYTHONPATH": str(Path(gateway.__file__).parents[1])}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert child.stdout is not None
    printed: list[int] = []
    try:
        while len(printed) < 40:
            line = child.stdout.readline()
            assert line, f"child stopped early with code {child.poll()}"
            printed.append(int(line))
    finally:
        os.kill(child.pid, signal.SIGKILL)  # mid-run: most likely inside the next transaction
        rest, _ = child.communicate()
    printed.extend(int(line) for line in rest.split())
    assert child.returncode == -signal.SIGKILL

    with Database(path) as db:
        store = EventStore(db)
        # Every id the child saw committed is there (no loss) ...
        for row_id in printed:
            stored = store.by_id(row_id)
            assert stored is not None
            assert stored.seq == row_id - 1
        count = store.count()
        assert count % BATCH == 0  # ... and no half batch (one transaction per batch)
        assert count >= printed[-1]
        assert db.query("SELECT min(id), max(id) FROM events") == [(1, count)]

        # The broker redelivers every unacknowledged batch: only the missing ones are stored.
        batches = count // BATCH + 3
        result = store.insert_batch(_records(batches))
        assert result.duplicates == count
        assert len(result.stored) == batches * BATCH - count
        assert result.conflicts == []
        assert store.count() == batches * BATCH
        assert db.query("SELECT count(DISTINCT seq) FROM events") == [(batches * BATCH,)]
