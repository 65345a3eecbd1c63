r"""The durable chain-anchor outbox: checkpoints in, anchors on the consortium chain out.

The batcher hands every signed checkpoint to :meth:`Outbox.enqueue`, which writes one SQLite row
and returns: it never talks to the chain, so a chain that is down or stalled (QBFT stalls when
over a third of the validators are down) never stalls ingest or patches (DESIGN, consortium
chain). A task named ``outbox``, owned by ``async with outbox:``, moves rows along::

    pending --send--> sent --block, enough confirmations--> confirmed
       \\                \\--reverted / dropped--> pending (retry with backoff)
        \\--a later head of the same log is anchored instead--> superseded

Exactly once: each (log, size) is one row (UNIQUE), one log has at most one transaction in
flight, and before every send the worker reads the chain: if the head is already there (the
transaction landed but its reply or our bookkeeping was lost: a dropped connection, a
``kill -9``), the row is confirmed from the ``Anchored`` event instead of being sent again. If a
duplicate is sent all the same (a crash between send and bookkeeping while the first was still in
the pool), the contract refuses it, because the tree size must grow per log
(``ProvenanceAnchor.sol``), so the chain never holds two events for one head.

Cadence (:class:`AnchorPolicy`): anchoring every checkpoint at the default batcher cadence (1,000
entries / 2 s) costs a transaction per 1,000 events under load, and far more per event when
traffic is light. A log head commits to every earlier head (RFC 9162 §2.1.4 consistency), so the
outbox sends the newest pending head of a log once the tree grew by ``min_growth`` entries since
the last anchor, or ``max_interval_s`` passed (a log never anchored counts from size 0 and from
its first queued head); the older pending heads are *superseded*.
``AnchorPolicy.every_checkpoint()`` anchors each head, in order.

Retries (:class:`Backoff`): exponential with jitter ("equal jitter": a random delay between half
and all of ``base * 2^attempts``, capped), so gateways of a consortium that saw the same outage do
not retry in step. Rows carry their attempt count, last error and next attempt time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from gateway.core.errors import MismatchError, ProvenanceError, UnavailableError
from gateway.core.note import Checkpoint, SignedCheckpoint
from gateway.ledger.anchor import Anchor, AnchorBackend, Confirmation, TxStatus, log_id
from gateway.service.batcher import stop_task
from gateway.store.db import Database

__all__ = ["AnchorPolicy", "Backoff", "Outbox", "OutboxRow"]

_log = logging.getLogger(__name__)

# Open rows are found through the partial index anchor_outbox_open (gateway.store.log_schema):
# SQLite uses a partial index only when the query repeats its WHERE term verbatim, so every query
# on open rows spells "status IN ('pending', 'sent')", even next to "status = 'pending'".


def _supersede_below(conn: sqlite3.Connection, lid: bytes, size: int) -> None:
    # Pending heads below a newer queued, sent or anchored one can no longer go on chain (the
    # size must grow); they are covered by it through RFC 9162 consistency.
    conn.execute(
        "UPDATE anchor_outbox SET status = 'superseded' "
        "WHERE status IN ('pending', 'sent') AND status = 'pending' AND log_id = ? AND size < ?",
        (lid, size),
    )


@dataclass(frozen=True)
class AnchorPolicy:
    """When the newest pending head of a log is due for the chain (see the module docstring)."""

    #: Anchor once the tree grew by this many entries since the last anchor of the log.
    min_growth: int = 1000
    #: ... or once this many seconds passed since the last anchor (an idle log's last head).
    max_interval_s: float = 300.0
    #: Older pending heads are superseded by the newest (False: every head is anchored, in order).
    supersede: bool = True

    def __post_init__(self) -> None:
        if self.min_growth < 1 or self.max_interval_s < 0:
            raise ValueError("min_growth must be >= 1 and max_interval_s >= 0")

    @classmethod
    def every_checkpoint(cls) -> AnchorPolicy:
        """Anchor every checkpoint, in order, none superseded (strict audit trails, tests)."""
        return cls(min_growth=1, max_interval_s=0.0, supersede=False)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with equal jitter: ``uniform(d/2, d)``, ``d = min(cap, base * 2^n)``."""

    base_s: float = 1.0
    max_s: float = 60.0

    def delay(self, attempts: int, rng: random.Random) -> float:
        """Seconds to wait before attempt *attempts* + 1."""
        step = min(self.max_s, self.base_s * 2 ** min(attempts, 32))
        return rng.uniform(step / 2, step)


@dataclass(frozen=True)
class OutboxRow:
    """One checkpoint in the outbox and where its anchor stands."""

    origin: str
    size: int
    root: bytes
    status: str
    attempts: int
    tx_hash: bytes | None
    block_number: int | None
    last_error: str | None


_ROW_SQL = (
    "SELECT id, origin, log_id, size, root, status, attempts, next_attempt_ms, tx_hash, sent_ms, "
    "block_number, last_error FROM anchor_outbox"
)


@dataclass(frozen=True)
class _Row:
    id: int
    origin: str
    log_id: bytes
    size: int
    root: bytes
    status: str
    attempts: int
    next_attempt_ms: int
    tx_hash: bytes | None
    sent_ms: int | None
    block_number: int | None
    last_error: str | None

    @property
    def anchor(self) -> Anchor:
        return Anchor(self.log_id, self.size, self.root)

    @property
    def public(self) -> OutboxRow:
        return OutboxRow(
            self.origin,
            self.size,
            self.root,
            self.status,
            self.attempts,
            self.tx_hash,
            self.block_number,
            self.last_error,
        )


class Outbox:
    """Durable outbox of chain anchors over *db*, sending through *backend*.

    ``clock`` returns POSIX seconds (the service layer owns the clock); ``rng`` draws the jitter.
    ``confirmations`` is the block depth at which an anchor counts as confirmed (1 on QBFT,
    whose blocks are final when produced). ``resend_after_s``: a sent transaction the node no
    longer knows after this long (dropped from its pool) is checked against the chain and sent
    again if absent. ``on_anchored(checkpoint, confirmation)`` is called once per confirmed row
    (e.g. to record the anchor on the log's checkpoint and upgrade receipts to *anchored*),
    inside the transaction that confirms the row: what it writes through the same
    :class:`~gateway.store.db.Database` commits with the confirmation or not at all, and if it
    raises, the row stays open and is confirmed (and the callback called) at a later step.
    """

    def __init__(  # noqa: PLR0913 -- every knob is keyword-only with a default
        self,
        db: Database,
        backend: AnchorBackend,
        *,
        policy: AnchorPolicy | None = None,
        backoff: Backoff | None = None,
        confirmations: int = 1,
        resend_after_s: float = 60.0,
        poll_s: float = 1.0,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        on_anchored: Callable[[Checkpoint, Confirmation], None] | None = None,
    ) -> None:
        if confirmations < 1:
            raise ValueError("confirmations must be >= 1")
        self._db = db
        self._backend = backend
        self.policy = policy or AnchorPolicy()
        self._backoff = backoff or Backoff()
        self._confirmations = confirmations
        self._resend_after_ms = int(resend_after_s * 1000)
        self._poll_ms = int(poll_s * 1000)
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 -- jitter, not a secret
        self._on_anchored = on_anchored
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # -- the caller's side: enqueue, never blocking on the chain -----------------------------------

    def enqueue(self, checkpoint: SignedCheckpoint) -> bool:
        """Queue *checkpoint* for anchoring; True if it is queued (now or before).

        Writes one row and returns; never waits for or raises about the chain. A store that
        cannot be written is logged and reported as False (a later checkpoint supersedes this
        one). Raises MismatchError only if the same log and size arrive with another root: the
        log forked, which must stop the caller.
        """
        cp = checkpoint.checkpoint
        lid = log_id(cp.origin)
        now = self._now_ms()
        try:
            with self._db.atomic() as conn:
                known = conn.execute(
                    "SELECT root FROM anchor_outbox WHERE log_id = ? AND size = ?", (lid, cp.size)
                ).fetchone()
                if known is None:
                    self._insert(conn, cp, lid, now)
        except UnavailableError as exc:
            _log.warning("checkpoint %d not queued for anchoring: %s", cp.size, exc)
            return False
        if known is not None and bytes(known[0]) != cp.root:
            raise MismatchError(
                f"Two different checkpoints of size {cp.size} were handed to the chain outbox: "
                "the log forked. Stop the gateway and investigate.",
                reason="anchor-fork",
            )
        self._poke()
        return True

    def _insert(self, conn: sqlite3.Connection, cp: Checkpoint, lid: bytes, now: int) -> None:
        attempts, next_ms = 0, now
        if self.policy.supersede:
            # The older unsent heads of this log will never be sent: this one covers them. The
            # new row inherits their backoff, so a checkpoint every 2 s during an outage does not
            # turn into a retry every 2 s.
            older = conn.execute(
                "SELECT attempts, next_attempt_ms FROM anchor_outbox "
                "WHERE status IN ('pending', 'sent') AND status = 'pending' AND log_id = ? "
                "AND size < ? ORDER BY size DESC LIMIT 1",
                (lid, cp.size),
            ).fetchone()
            if older is not None and older[0] > 0:
                attempts, next_ms = int(older[0]), max(now, int(older[1]))
            _supersede_below(conn, lid, cp.size)
        conn.execute(
            "INSERT INTO anchor_outbox (origin, log_id, size, root, enqueued_ms, attempts, "
            "next_attempt_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (cp.origin, lid, cp.size, cp.root, now, attempts, next_ms),
        )

    def _poke(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            # enqueue may run on another thread (the batcher's): wake the worker thread-safely.
            loop.call_soon_threadsafe(self._wake.set)

    # -- inspection -------------------------------------------------------------------------------

    def rows(self, origin: str | None = None) -> list[OutboxRow]:
        """Every row (of *origin*, if given), oldest first."""
        where, params = ("WHERE origin = ?", (origin,)) if origin is not None else ("", ())
        return [r.public for r in self._select(f"{where} ORDER BY id", params)]

    def backlog(self) -> int:
        """Rows still to anchor or to confirm (pending or sent)."""
        return int(
            self._db.query(
                "SELECT count(*) FROM anchor_outbox WHERE status IN ('pending', 'sent')"
            )[0][0]
        )

    def _select(self, tail: str, params: tuple[object, ...] = ()) -> list[_Row]:
        return [
            _Row(
                r[0],
                r[1],
                bytes(r[2]),
                r[3],
                bytes(r[4]),
                r[5],
                r[6],
                r[7],
                None if r[8] is None else bytes(r[8]),
                r[9],
                r[10],
                r[11],
            )
            for r in self._db.query(f"{_ROW_SQL} {tail}", params)
        ]

    # -- the worker -------------------------------------------------------------------------------

    async def step(self) -> int:
        """One pass over the logs with work due; returns how many rows changed state.

        Steps per log (one transaction in flight per log, so sizes reach the chain in order):

        1. A sent row is checked against the chain: confirmed, still waiting, or back to
           pending (reverted or dropped) — lost confirmations and dropped transactions.
        2. Otherwise the pending row to anchor is chosen (newest if superseding, else oldest)
           and sent if due by the policy — cadence, transactions per event.
        3. Before sending, the chain is read: a head already anchored is confirmed from its
           event, a head below the anchored size superseded — duplicates after a lost reply.
        4. Any chain failure reschedules the row with backoff and jitter — a chain down.
        """
        changed = 0
        now = self._now_ms()
        logs = [
            bytes(r[0])
            for r in self._db.query(
                "SELECT DISTINCT log_id FROM anchor_outbox WHERE status IN ('pending', 'sent')"
            )
        ]
        for lid in logs:
            open_rows = self._select(
                "WHERE log_id = ? AND status IN ('pending', 'sent') ORDER BY size", (lid,)
            )
            try:
                changed += await self._step_log(open_rows, now)
            except MismatchError:
                raise  # the log forked: stop (see _run)
            except ProvenanceError as exc:  # UnavailableError included: the chain is down
                changed += self._failed(open_rows, now, exc)
        return changed

    def _current(self, open_rows: list[_Row]) -> _Row:
        """Return the row the worker acts on for a log: the one in flight, else the one to send."""
        sent = [r for r in open_rows if r.status == "sent"]
        if sent:
            return sent[0]
        return open_rows[-1] if self.policy.supersede else open_rows[0]

    async def _step_log(self, open_rows: list[_Row], now: int) -> int:
        row = self._current(open_rows)
        if row.next_attempt_ms > now:
            return 0
        # Step 1 — a transaction in flight is followed until it settles.
        if row.status == "sent":
            return await self._follow(row, now)
        # Step 2 — is the chosen head due.
        if self.policy.supersede:
            due_ms = self._due_ms(row)
            if due_ms > now:
                self._reschedule(row, due_ms)
                return 0
        # Step 3 — read the chain before sending.
        if await self._settled_on_chain(row, now):
            return 1
        tx_hash = await asyncio.to_thread(self._backend.submit, row.anchor)
        with self._db.atomic() as conn:
            conn.execute(
                "UPDATE anchor_outbox SET status = 'sent', tx_hash = ?, sent_ms = ?, "
                "next_attempt_ms = ?, last_error = NULL WHERE id = ?",
                (tx_hash, now, now, row.id),
            )
            _supersede_below(conn, row.log_id, row.size)
        return 1

    def _due_ms(self, row: _Row) -> int:
        last = self._db.query(
            "SELECT size, sent_ms FROM anchor_outbox WHERE log_id = ? "
            "AND status IN ('sent', 'confirmed') ORDER BY size DESC LIMIT 1",
            (row.log_id,),
        )
        if last:
            size, since_ms = last[0]
        else:
            # A log never anchored counts from size 0 and from its first queued head, so its
            # first anchor follows the same cadence as the others (1,000 anchors per 1M events).
            size = 0
            since_ms = self._db.query(
                "SELECT min(enqueued_ms) FROM anchor_outbox WHERE log_id = ?", (row.log_id,)
            )[0][0]
        if row.size - size >= self.policy.min_growth:
            return 0
        return int(since_ms or 0) + int(self.policy.max_interval_s * 1000)

    async def _settled_on_chain(self, row: _Row, now: int) -> bool:
        """Settle *row* from chain state if the chain has it or passed it (steps 1 and 3)."""
        chain_size = await asyncio.to_thread(self._backend.anchored_size, row.log_id)
        if chain_size < row.size:
            return False
        found = await asyncio.to_thread(self._backend.find_anchor, row.anchor)
        if found is not None:
            self._confirm(row, found, now)
        else:
            with self._db.atomic() as conn:
                conn.execute(
                    "UPDATE anchor_outbox SET status = 'superseded' WHERE id = ?", (row.id,)
                )
                _supersede_below(conn, row.log_id, row.size)
        return True

    async def _follow(self, row: _Row, now: int) -> int:
        assert row.tx_hash is not None  # a sent row always has its hash (set with the status)
        state = await asyncio.to_thread(self._backend.tx_state, row.tx_hash)
        if state.status is TxStatus.MINED and state.block_number is not None:
            if state.confirmations >= self._confirmations:
                self._confirm(row, Confirmation(row.tx_hash, state.block_number), now)
                return 1
            self._reschedule(row, now + self._poll_ms)
            return 0
        waited = now - (row.sent_ms or now)
        if state.status is TxStatus.PENDING or (
            state.status is TxStatus.UNKNOWN and waited < self._resend_after_ms
        ):
            self._reschedule(row, now + self._poll_ms)
            return 0
        # Reverted, or dropped for good: the chain decides whether it holds the head already.
        if await self._settled_on_chain(row, now):
            return 1
        with self._db.atomic() as conn:
            conn.execute(
                "UPDATE anchor_outbox SET status = 'pending', tx_hash = NULL, sent_ms = NULL, "
                "attempts = attempts + 1, next_attempt_ms = ?, last_error = ? WHERE id = ?",
                (
                    now + int(self._backoff.delay(row.attempts, self._rng) * 1000),
                    f"transaction {state.status.value}; sending again",
                    row.id,
                ),
            )
        return 1

    def _confirm(self, row: _Row, confirmation: Confirmation, now: int) -> None:
        with self._db.atomic() as conn:
            conn.execute(
                "UPDATE anchor_outbox SET status = 'confirmed', tx_hash = ?, block_number = ?, "
                "confirmed_ms = ?, last_error = NULL WHERE id = ?",
                (confirmation.tx_hash, confirmation.block_number, now, row.id),
            )
            _supersede_below(conn, row.log_id, row.size)
            # In the same transaction: a reader (or a crash) between two commits would see the
            # row confirmed and the anchor not yet recorded on the checkpoint.
            if self._on_anchored is not None:
                self._on_anchored(Checkpoint(row.origin, row.size, row.root), confirmation)

    def _reschedule(self, row: _Row, at_ms: int) -> None:
        with self._db.atomic() as conn:
            conn.execute(
                "UPDATE anchor_outbox SET next_attempt_ms = ? WHERE id = ?", (at_ms, row.id)
            )

    def _failed(self, open_rows: list[_Row], now: int, exc: ProvenanceError) -> int:
        # Step 4 — the row we were working on waits, with backoff and jitter.
        row = self._current(open_rows)
        delay_ms = int(self._backoff.delay(row.attempts, self._rng) * 1000)
        with self._db.atomic() as conn:
            conn.execute(
                "UPDATE anchor_outbox SET attempts = attempts + 1, next_attempt_ms = ?, "
                "last_error = ? WHERE id = ?",
                (now + delay_ms, f"{exc.reason}: {exc}", row.id),
            )
        _log.info("anchor of size %d waits %.1f s: %s", row.size, delay_ms / 1000, exc)
        return 0

    def _next_wakeup_s(self) -> float:
        by_log: dict[bytes, list[_Row]] = {}
        for row in self._select("WHERE status IN ('pending', 'sent') ORDER BY size"):
            by_log.setdefault(row.log_id, []).append(row)
        if not by_log:
            return 60.0  # idle: enqueue wakes the worker
        first = min(self._current(rows).next_attempt_ms for rows in by_log.values())
        return max(0.0, (first - self._now_ms()) / 1000)

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self.step()
                delay = self._next_wakeup_s()
                failures = 0
            except asyncio.CancelledError:
                raise
            except MismatchError:
                _log.critical("chain outbox stopped: the log forked", exc_info=True)
                raise
            # The worker must outlive a store hiccup or a bug in one pass: anchoring resumes from
            # the rows, and the error is logged for the operator.
            except Exception:  # noqa: BLE001
                _log.exception("chain outbox pass failed; retrying")
                delay = self._backoff.delay(failures, self._rng)
                failures += 1
            # A floor stops a busy loop when rows are due now but cannot progress.
            self._progress.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(delay, 0.01))
            self._wake.clear()

    async def drained(self, timeout_s: float) -> None:
        """Wait until nothing is pending or sent; raise TimeoutError after *timeout_s*."""
        if self._task is None:
            raise RuntimeError("drained() needs the outbox task: use it inside `async with`")
        async with asyncio.timeout(timeout_s):
            while self.backlog():
                # The worker sets _progress after every pass.
                self._progress.clear()
                await self._progress.wait()

    # -- lifetime: the task named "outbox" is owned by ``async with`` ------------------------------

    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="outbox")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._task, self._loop = self._task, None, None
        await stop_task(task)
