from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

import gateway
from gateway.core import note
from gateway.ledger.keys import GatewayKey, write_gateway_key
from gateway.ledger.log import TransparencyLog, verify_log
from gateway.store.db import Database

# The child stores events, logs them and seals, over and over, printing each checkpoint size
# only after seal() returned (so after its transaction committed). It is killed with SIGKILL at
# a random moment: inside an event batch, an append, a seal, or between them.
CHILD = """
import random, sys
from datetime import UTC, datetime
from pathlib import Path
from gateway.ledger.keys import load_gateway_key
from gateway.ledger.log import TransparencyLog
from gateway.store.db import Database
from gateway.store.events import EventRecord, EventStore

db = Database(sys.argv[1])
key = load_gateway_key(Path(sys.argv[2]))
store, log = EventStore(db), TransparencyLog(db, key.signer)
rng = random.Random(int(sys.argv[3]))
seq = db.query("SELECT coalesce(max(seq) + 1, 0) FROM events")[0][0]
while True:
    n = rng.randint(1, 300)
    store.insert_batch([
        EventRecord("pump-7", s, "maintenance", 0, 0, "site-a", "t", b"evt-%d" % s)
        for s in range(seq, seq + n)
    ])
    seq += n
    log.append_pending(limit=rng.randint(1, 400))
    signed = log.seal(datetime.now(UTC))
    if signed is not None:
        print(signed.checkpoint.size, flush=True)
"""


@pytest.mark.timeout(120)
def test_kill_9_at_random_points_loses_no_leaf_and_forks_nothing(tmp_path):
    path, key_file = tmp_path / "gw.sqlite3", tmp_path / "log.key"
    key = GatewayKey.generate("provgw.test/log")
    write_gateway_key(key_file, key)
    Database(path).close()  # migrations applied once, up front
    env = {**os.environ, "PYTHONPATH": str(Path(gateway.__file__).parents[1])}
    rng = random.Random(20250601)
    seen: dict[int, bytes] = {}
    for round_no in range(6):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), str(key_file), str(round_no)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert child.stdout is not None
        # Wait for the first checkpoint (the child is past start-up), then kill at random.
        first = child.stdout.readline()
        assert first, f"child stopped early with code {child.poll()}"
        time.sleep(rng.uniform(0.0, 0.4))
        os.kill(child.pid, signal.SIGKILL)
        rest, _ = child.communicate()
        assert child.returncode == -signal.SIGKILL
        printed = [int(line) for line in [first, *rest.split()]]

        with Database(path) as db:
            log = TransparencyLog(db, key.signer)
            stored = {c.size: c.note for c in log.checkpoints()}
            # No checkpoint the child saw committed was lost, and none was ever re-signed
            # differently (a checkpoint is never replaced).
            assert set(printed) <= set(stored)
            for size, data in seen.items():
                assert stored[size] == data
            seen = stored
            # The whole log re-derives from the store: every stored checkpoint is signed,
            # matches the leaves, and is consistent with the one before (no fork).
            report = verify_log(db, key.verifier)
            events = db.query("SELECT count(*) FROM events")[0][0]
            assert report.events + report.pending_events == events
    # After the last kill, the gateway catches up: every stored event gets exactly one leaf.
    with Database(path) as db:
        log = TransparencyLog(db, key.signer)
        log.append_pending()
        signed = log.seal(datetime.now(UTC))
        events = db.query("SELECT count(*) FROM events")[0][0]
        assert log.size() == events
        assert db.query("SELECT count(DISTINCT ref_id) FROM log_leaves WHERE kind = 'event'") == [
            (events,)
        ]
        report = verify_log(db, key.verifier)
        assert report.pending_events == 0
        latest = log.latest_checkpoint()
        assert latest is not None
        assert latest.size == events
        if signed is not None:
            assert note.open_checkpoint(latest.note, key.verifier).checkpoint.size == events
        assert report.checkpoints >= 6
