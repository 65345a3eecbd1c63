"""The durable chain-anchor outbox, against the in-memory chain (fast, with faults on demand)."""

from __future__ import annotations

import asyncio
import hashlib
import random
import threading
import time
from collections import Counter

import pytest

from gateway.core.errors import MismatchError
from gateway.core.note import Checkpoint, Signer, open_checkpoint
from gateway.ledger.anchor import Anchor, MemoryAnchorBackend, log_id
from gateway.service.outbox import AnchorPolicy, Backoff, Outbox
from gateway.store.db import Database

ORIGIN = "gw.example/log"
SIGNER = Signer.generate(ORIGIN)
EVERY = AnchorPolicy.every_checkpoint()


class Clock:
    def __init__(self):
        self.t = 1_000_000.0

    def __call__(self):
        return self.t


def signed(size, root=None):
    root = root or hashlib.sha256(b"root %d" % size).digest()
    return open_checkpoint(Checkpoint(ORIGIN, size, root).sign(SIGNER), SIGNER.verifier)


def anchored_sizes(chain):
    return Counter(a.tree_size for a, _ in chain.events)


def make(db, chain, clock=None, **kw):
    kw.setdefault("policy", EVERY)
    kw.setdefault("backoff", Backoff(base_s=1.0, max_s=8.0))
    return Outbox(db, chain, clock=clock or Clock(), rng=random.Random(7), **kw)


def test_enqueue_writes_a_row_and_never_touches_the_chain(db):
    chain = MemoryAnchorBackend(available=False)
    outbox = make(db, chain)
    assert outbox.enqueue(signed(10)) is True
    assert outbox.enqueue(signed(10)) is True  # handed twice: still one row
    assert chain.submits == 0
    [row] = outbox.rows()
    assert (row.origin, row.size, row.status) == (ORIGIN, 10, "pending")


def test_every_checkpoint_is_anchored_once_in_order(db):
    chain = MemoryAnchorBackend()
    outbox = make(db, chain)
    for size in (3, 5, 8):
        outbox.enqueue(signed(size))
    for _ in range(6):
        asyncio.run(outbox.step())
    assert [a.tree_size for a, _ in chain.events] == [3, 5, 8]
    assert [r.status for r in outbox.rows()] == ["confirmed"] * 3
    assert all(r.tx_hash and r.block_number for r in outbox.rows())
    assert outbox.backlog() == 0


def test_chain_down_retries_with_exponential_backoff_and_jitter(db):
    chain = MemoryAnchorBackend(available=False)
    clock = Clock()
    outbox = make(db, chain, clock)
    outbox.enqueue(signed(1))
    waits = []
    for _ in range(5):
        asyncio.run(outbox.step())
        next_ms = db.query("SELECT next_attempt_ms FROM anchor_outbox")[0][0]
        waits.append(next_ms / 1000 - clock.t)
        clock.t = next_ms / 1000
    # Attempt n waits uniform(d/2, d), d = min(8, 1 * 2^n): 1, 2, 4, 8, 8.
    for wait, step in zip(waits, (1, 2, 4, 8, 8), strict=True):
        assert step / 2 <= wait <= step
    [row] = outbox.rows()
    assert row.attempts == 5
    assert row.last_error.startswith("chain-down")
    assert chain.submits == 0


def test_no_retry_before_the_backoff_expires(db):
    chain = MemoryAnchorBackend(available=False)
    clock = Clock()
    outbox = make(db, chain, clock)
    outbox.enqueue(signed(1))
    asyncio.run(outbox.step())
    chain.available = True
    asyncio.run(outbox.step())  # still inside the backoff window
    assert chain.submits == 0
    clock.t += 1.0
    asyncio.run(outbox.step())
    assert chain.submits == 1


def test_backoff_delay_is_capped_and_jittered():
    backoff = Backoff(base_s=0.5, max_s=30)
    rng = random.Random(1)
    delays = [backoff.delay(n, rng) for n in range(12)]
    assert all(min(30, 0.5 * 2**n) / 2 <= d <= min(30, 0.5 * 2**n) for n, d in enumerate(delays))
    assert len({round(backoff.delay(3, rng), 6) for _ in range(20)}) > 10  # jittered


def test_lost_reply_is_confirmed_from_the_chain_not_sent_again(db):
    chain = MemoryAnchorBackend(lose_replies=1)
    clock = Clock()
    outbox = make(db, chain, clock)
    outbox.enqueue(signed(42))
    asyncio.run(outbox.step())  # the transaction lands, but its reply is lost
    assert outbox.rows()[0].status == "pending"
    clock.t += 10
    asyncio.run(outbox.step())
    [row] = outbox.rows()
    assert row.status == "confirmed"
    assert row.tx_hash == chain.events[0][1].tx_hash
    assert chain.submits == 1
    assert anchored_sizes(chain) == {42: 1}


def test_dropped_transaction_is_sent_again_after_the_grace_period(db):
    chain = MemoryAnchorBackend(instamine=False)
    clock = Clock()
    outbox = make(db, chain, clock, resend_after_s=60)
    outbox.enqueue(signed(9))
    asyncio.run(outbox.step())
    assert outbox.rows()[0].status == "sent"
    chain._pool.clear()  # the node forgot the transaction (restart without its pool)
    clock.t += 30
    asyncio.run(outbox.step())
    assert outbox.rows()[0].status == "sent"  # not yet: it may still be propagating
    clock.t += 31
    asyncio.run(outbox.step())
    assert outbox.rows()[0].status == "pending"
    clock.t += 10
    asyncio.run(outbox.step())
    chain.mine()
    asyncio.run(outbox.step())
    assert outbox.rows()[0].status == "confirmed"
    assert chain.submits == 2
    assert anchored_sizes(chain) == {9: 1}


def test_duplicate_sent_by_a_crashed_run_is_refused_and_the_head_confirmed_once(db):
    chain = MemoryAnchorBackend(instamine=False)
    clock = Clock()
    # A previous process sent size 5, then died before recording it; it is still in the pool.
    first = chain.submit(Anchor(log_id(ORIGIN), 5, signed(5).checkpoint.root))
    outbox = make(db, chain, clock)
    outbox.enqueue(signed(5))
    asyncio.run(outbox.step())  # not on chain yet: sent again
    chain.mine()  # the first lands, the duplicate is reverted by the size rule
    clock.t += 1
    asyncio.run(outbox.step())
    [row] = outbox.rows()
    assert row.status == "confirmed"
    assert row.tx_hash == first
    assert anchored_sizes(chain) == {5: 1}


def test_superseding_policy_anchors_the_newest_head_by_growth_or_timer(db):
    chain = MemoryAnchorBackend()
    clock = Clock()
    outbox = make(db, chain, clock, policy=AnchorPolicy(min_growth=1000, max_interval_s=300))

    def feed(size):
        outbox.enqueue(signed(size))
        asyncio.run(outbox.step())  # send, if due
        asyncio.run(outbox.step())  # confirm

    feed(400)  # grew by < 1000 since size 0: waits
    assert chain.events == []
    clock.t += 2
    feed(1000)  # grew by 1000: due
    for size in (1400, 1800):
        clock.t += 2
        feed(size)  # grew by < 1000 since 1000: waits
    clock.t += 2
    feed(2000)
    assert [a.tree_size for a, _ in chain.events] == [1000, 2000]
    statuses = {r.size: r.status for r in outbox.rows()}
    assert statuses == {
        400: "superseded",
        1000: "confirmed",
        1400: "superseded",
        1800: "superseded",
        2000: "confirmed",
    }
    clock.t += 2
    feed(2100)
    assert len(chain.events) == 2
    clock.t += 300  # an idle log's last head goes out on the timer
    asyncio.run(outbox.step())
    asyncio.run(outbox.step())
    assert [a.tree_size for a, _ in chain.events] == [1000, 2000, 2100]
    assert outbox.backlog() == 0


def test_a_new_logs_first_head_goes_out_on_the_timer_when_traffic_is_light(db):
    chain = MemoryAnchorBackend()
    clock = Clock()
    outbox = make(db, chain, clock, policy=AnchorPolicy(min_growth=1000, max_interval_s=300))
    outbox.enqueue(signed(5))
    asyncio.run(outbox.step())
    assert chain.submits == 0
    clock.t += 299
    asyncio.run(outbox.step())
    assert chain.submits == 0
    clock.t += 1
    asyncio.run(outbox.step())
    assert [a.tree_size for a, _ in chain.events] == [5]


def test_superseded_head_inherits_the_backoff_during_an_outage(db):
    chain = MemoryAnchorBackend(available=False)
    clock = Clock()
    outbox = make(db, chain, clock, policy=AnchorPolicy(min_growth=1, max_interval_s=0))
    outbox.enqueue(signed(1))
    for _ in range(3):
        asyncio.run(outbox.step())
        clock.t = db.query("SELECT max(next_attempt_ms) FROM anchor_outbox")[0][0] / 1000
    outbox.enqueue(signed(2))
    rows = {r.size: r for r in outbox.rows()}
    assert rows[1].status == "superseded"
    assert rows[2].attempts == 3


def test_outbox_survives_a_process_restart(tmp_path):
    path = tmp_path / "gateway.sqlite3"
    chain = MemoryAnchorBackend(available=False)
    with Database(path) as db:
        outbox = make(db, chain, time.time, backoff=Backoff(base_s=0.05, max_s=0.1))
        for size in (1, 2, 3):
            outbox.enqueue(signed(size))
        asyncio.run(outbox.step())
    chain.available = True
    with Database(path) as db:
        outbox = make(db, chain, time.time)

        async def run():
            async with outbox:
                await outbox.drained(5)

        asyncio.run(run())
        assert [r.status for r in outbox.rows()] == ["confirmed"] * 3
    assert anchored_sizes(chain) == {1: 1, 2: 1, 3: 1}


def test_task_named_outbox_drains_and_is_gone_after_exit(db):
    chain = MemoryAnchorBackend()
    confirmed = []
    outbox = make(db, chain, on_anchored=lambda cp, conf: confirmed.append((cp.size, conf)))

    async def run():
        async with outbox:
            assert "outbox" in {t.get_name() for t in asyncio.all_tasks()}
            # The batcher may call enqueue from its own thread.
            thread = threading.Thread(target=lambda: [outbox.enqueue(signed(s)) for s in (1, 2)])
            thread.start()
            thread.join()
            await outbox.drained(5)
        return {t.get_name() for t in asyncio.all_tasks()}

    assert "outbox" not in asyncio.run(run())
    assert [size for size, _ in confirmed] == [1, 2]
    assert [c.tx_hash for _, c in confirmed] == [c.tx_hash for _, c in chain.events]


def test_the_anchor_callback_commits_with_the_confirmation_or_not_at_all(db):
    db.conn.execute("CREATE TABLE recorded (size INTEGER PRIMARY KEY)")
    chain = MemoryAnchorBackend()
    fail = [True]

    def record(checkpoint, confirmation):
        del confirmation
        with db.atomic() as conn:  # joins the outbox's transaction
            conn.execute("INSERT INTO recorded VALUES (?)", (checkpoint.size,))
        if fail[0]:
            raise RuntimeError("recording the anchor failed")

    outbox = make(db, chain, on_anchored=record)
    outbox.enqueue(signed(4))
    raised = 0
    for _ in range(4):  # send, then confirm: the callback raises at each confirmation
        try:
            asyncio.run(outbox.step())
        except RuntimeError:
            raised += 1
    assert raised >= 2
    # Neither the confirmation nor what the callback wrote was kept; the row is still open.
    assert db.query("SELECT count(*) FROM recorded") == [(0,)]
    assert [r.status for r in outbox.rows()] == ["sent"]
    fail[0] = False
    for _ in range(3):
        asyncio.run(outbox.step())
    assert [r.status for r in outbox.rows()] == ["confirmed"]
    assert db.query("SELECT size FROM recorded") == [(4,)]
    assert anchored_sizes(chain) == {4: 1}  # sent once, confirmed from the chain afterwards


def test_same_size_with_another_root_is_refused_as_a_fork(db):
    outbox = make(db, MemoryAnchorBackend())
    outbox.enqueue(signed(4))
    with pytest.raises(MismatchError) as info:
        outbox.enqueue(signed(4, hashlib.sha256(b"fork").digest()))
    assert info.value.reason == "anchor-fork"
    assert len(outbox.rows()) == 1


def test_policy_refuses_a_zero_growth_threshold():
    with pytest.raises(ValueError, match="min_growth"):
        AnchorPolicy(min_growth=0)


def test_public_api_is_pinned():
    import gateway.service.outbox as module  # noqa: PLC0415

    assert module.__all__ == ["AnchorPolicy", "Backoff", "Outbox", "OutboxRow"]
