"""The batcher: the asyncio task ``"batcher"`` that logs new events and seals checkpoints.

Every *interval_s* seconds, or as soon as *max_pending* events wait (defaults 2 s and 1,000, DESIGN
and issue 5), it appends every pending event to the transparency log and seals a checkpoint
(:class:`gateway.ledger.log.TransparencyLog`), then hands each new signed checkpoint to the
hooks — witness submission, the chain outbox — which plug in as::

    async def on_checkpoint(checkpoint: SignedCheckpoint) -> None: ...

Rules:

- SQLite work runs in a worker thread (:func:`asyncio.to_thread`), so the event loop — ingest, the
  urgent lane — never waits on the log.
- A hook that raises or overruns *hook_timeout_s* is logged and skipped; the batcher goes on. A
  failing seal (disk full, a refused fork) is logged and retried at the next tick.
- While *halted()* gives a reason, nothing is appended or signed (a witness holds more of this
  log than the database: see :class:`gateway.service.ledger_service.WitnessRounds`).
- Owned by ``async with``: leaving the block cancels the task and waits for it, so nothing is left
  running. Events are in the store before the log reads them, so a stop (or ``kill -9``) at any
  point loses nothing: the next run logs what is pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self, TypeVar

from gateway.core.note import SignedCheckpoint
from gateway.ledger.log import TransparencyLog

__all__ = ["Batcher", "CheckpointHook", "in_thread", "stop_task"]

#: A hook called with each new signed checkpoint, after it is stored.
CheckpointHook = Callable[[SignedCheckpoint], Awaitable[None]]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")


def _utc_now() -> datetime:
    return datetime.now(UTC)


async def in_thread(fn: Callable[[], _T]) -> _T:
    """Run *fn* in a worker thread; if cancelled, wait for the thread before re-raising.

    A thread cannot be interrupted: waiting for it means that once the batcher's task is gone,
    no SQLite transaction of it is still in flight (it committed or rolled back whole).
    """
    work = asyncio.ensure_future(asyncio.to_thread(fn))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await work
        raise


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel *task* (if any) and wait until it has ended: what each ``__aexit__`` here does."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class Batcher:
    """Log pending events and seal a checkpoint every *interval_s* or *max_pending* events."""

    def __init__(  # noqa: PLR0913 -- each knob is a documented, keyword-only setting
        self,
        log: TransparencyLog,
        *,
        interval_s: float = 2.0,
        max_pending: int = 1_000,
        on_checkpoint: Sequence[CheckpointHook] = (),
        hook_timeout_s: float = 10.0,
        poll_s: float = 0.1,
        clock: Callable[[], datetime] = _utc_now,
        halted: Callable[[], str | None] = lambda: None,
    ) -> None:
        if interval_s <= 0 or max_pending <= 0 or poll_s <= 0 or hook_timeout_s <= 0:
            raise ValueError("batcher intervals and counts must be positive")
        self._log = log
        self._interval = interval_s
        self._max_pending = max_pending
        self._hooks = tuple(on_checkpoint)
        self._hook_timeout = hook_timeout_s
        self._poll = poll_s
        self._clock = clock
        self._halted = halted
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Checkpoints sealed since start (for status pages and tests).
        self.sealed = 0
        #: Hook calls that raised or timed out.
        self.hook_failures = 0

    # -- lifetime -------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._task is not None:
            raise RuntimeError("the batcher is already running")
        self._task = asyncio.create_task(self._run(), name="batcher")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        await stop_task(task)

    def notify(self, count: int = 1) -> None:
        """Tell the batcher *count* events were stored; it checks the backlog at once.

        Optional: the batcher also polls the store every *poll_s*, so events stored by another
        process are seen too.
        """
        if count > 0:
            self._wake.set()

    # -- work -----------------------------------------------------------------------------------

    async def flush(self) -> SignedCheckpoint | None:
        """Append everything pending and seal now; call the hooks for a new checkpoint."""
        signed = await in_thread(self._append_and_seal)
        if signed is not None:
            self.sealed += 1
            await self._call_hooks(signed)
        return signed

    def _append_and_seal(self) -> SignedCheckpoint | None:
        if self._halted() is not None:
            return None  # the reason was logged where it was found; events wait in the store
        self._log.append_pending()
        # seal() runs in its own transaction, after the appends committed.
        return self._log.seal(self._clock())

    async def _call_hooks(self, signed: SignedCheckpoint) -> None:
        for hook in self._hooks:
            try:
                await asyncio.wait_for(hook(signed), self._hook_timeout)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 -- logged; a hook must not stop the batcher
                self.hook_failures += 1
                _log.exception(
                    "checkpoint hook %r failed for size %d", hook, signed.checkpoint.size
                )

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._interval
        while True:
            timeout = max(0.0, min(self._poll, deadline - loop.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            try:
                due = loop.time() >= deadline
                if not due:
                    pending = await in_thread(self._log.pending_events)
                    due = pending >= self._max_pending
                if due:
                    deadline = loop.time() + self._interval
                    await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 -- logged; a failing seal is retried at the next tick
                _log.exception("the batcher could not log and seal; retrying")
