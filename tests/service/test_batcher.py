from __future__ import annotations

import asyncio
import functools
import time

import pytest

from gateway.core import note
from gateway.ledger.keys import GatewayKey
from gateway.ledger.log import TransparencyLog
from gateway.service.batcher import Batcher
from gateway.store.events import EventRecord, EventStore


def _store(db, start: int, count: int) -> None:
    EventStore(db).insert_batch(
        [
            EventRecord("dev-1", seq, "custody", 0, 0, "site-a", "t", b"m-%d" % seq)
            for seq in range(start, start + count)
        ]
    )


def _sync(test):
    # Each test runs its own event loop (no asyncio plugin): nothing outlives the test.
    @functools.wraps(test)
    def run(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return run


@pytest.fixture
def log(db):
    return TransparencyLog(db, GatewayKey.generate("provgw.test/log").signer)


async def _until(condition, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def _batcher_tasks() -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "batcher"]


@_sync
async def test_batcher_seals_when_enough_events_are_pending(db, log):
    seen: list[note.SignedCheckpoint] = []

    async def hook(signed):
        seen.append(signed)

    # The interval is far away: only the count can trigger the seal.
    async with Batcher(log, interval_s=60, max_pending=50, on_checkpoint=[hook], poll_s=0.01):
        _store(db, 0, 49)
        await asyncio.sleep(0.1)
        assert seen == []
        _store(db, 49, 1)
        await _until(lambda: len(seen) == 1)
    assert seen[0].checkpoint.size == 50
    assert log.latest_checkpoint().size == 50


@_sync
async def test_batcher_seals_on_time_with_few_events(db, log):
    seen: list[int] = []

    async def hook(signed):
        seen.append(signed.checkpoint.size)

    async with Batcher(log, interval_s=0.2, max_pending=1000, on_checkpoint=[hook]):
        _store(db, 0, 3)
        await _until(lambda: seen == [3])
        _store(db, 3, 2)
        await _until(lambda: seen == [3, 5])
        # No new events: no new checkpoint however many intervals pass.
        await asyncio.sleep(0.5)
    assert seen == [3, 5]


@_sync
async def test_a_raising_or_hanging_hook_does_not_stop_the_batcher(db, log):
    good: list[int] = []

    async def broken(_signed):
        raise RuntimeError("witness unreachable")

    async def hanging(_signed):
        await asyncio.sleep(3600)

    async def fine(signed):
        good.append(signed.checkpoint.size)

    batcher = Batcher(
        log,
        interval_s=0.1,
        max_pending=1000,
        on_checkpoint=[broken, hanging, fine],
        hook_timeout_s=0.1,
    )
    async with batcher:
        _store(db, 0, 2)
        await _until(lambda: good == [2])
        _store(db, 2, 2)
        await _until(lambda: good == [2, 4])
    assert batcher.hook_failures == 4
    assert batcher.sealed == 2


@_sync
async def test_leaving_the_block_cancels_the_task_and_leaves_nothing_running(db, log):
    async with Batcher(log, interval_s=0.05):
        assert len(_batcher_tasks()) == 1
        _store(db, 0, 5)
        await asyncio.sleep(0.12)
    assert _batcher_tasks() == []
    # Whatever was in flight committed whole: the log re-derives cleanly and catches up.
    log.append_pending()
    assert log.size() == 5


@_sync
async def test_notify_wakes_the_batcher_before_its_next_poll(db, log):
    seen: list[int] = []

    async def hook(signed):
        seen.append(signed.checkpoint.size)

    batcher = Batcher(log, interval_s=60, max_pending=10, on_checkpoint=[hook], poll_s=30)
    async with batcher:
        await asyncio.sleep(0.05)  # the task is now waiting for up to 30 s
        _store(db, 0, 10)
        batcher.notify(10)
        await _until(lambda: seen == [10], within=2)


@_sync
async def test_flush_seals_now_and_returns_none_without_news(db, log):
    batcher = Batcher(log)
    _store(db, 0, 4)
    signed = await batcher.flush()
    assert signed is not None
    assert signed.checkpoint.size == 4
    assert await batcher.flush() is None


def test_bad_settings_are_refused(log):
    with pytest.raises(ValueError, match="positive"):
        Batcher(log, interval_s=0)
    with pytest.raises(ValueError, match="positive"):
        Batcher(log, max_pending=0)
