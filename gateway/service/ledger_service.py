"""The ledger process of ``provgw serve``: batcher, witnesses and chain outbox, beside ingest.

Why a process of its own (started and restarted by :class:`gateway.service.workers.Supervisor`,
like an ingest worker): the log must never block or slow ingest (DESIGN, "urgent patches are
never blocked by the ledger"). The ingest workers only write the ``events`` table; this process
*tails* it (:meth:`~gateway.ledger.log.TransparencyLog.append_pending`) through its own SQLite
connections, so a slow witness, a stalled chain or a crash here costs ingest nothing, and a
``kill -9`` loses nothing (the next run logs what is pending).

Inside the process, three asyncio tasks, each owned by ``async with`` and named:

- ``batcher`` (:class:`~gateway.service.batcher.Batcher`): appends pending events and seals a
  C2SP checkpoint every ``log.interval_s`` or ``log.max_pending`` events;
- ``witness``: submits the newest sealed checkpoint to every configured witness (C2SP
  tlog-witness) and keeps their cosignatures on the checkpoint; once they reach the quorum
  (``[witnesses] quorum``, k of n) it records the checkpoint as witnessed. It only ever works on
  the newest head (a head commits to every earlier one, RFC 9162 §2.1.4), so a dead witness
  delays nothing but itself; a round short of the quorum is retried with backoff until a newer
  head arrives;
- ``outbox`` (:class:`~gateway.service.outbox.Outbox`, when ``[chain] enabled``): anchors heads
  that reached the witness quorum (DESIGN: "the cosigned checkpoint ... goes to a small anchor
  contract"), so a receipt's state only rises: logged, then witnessed, then anchored. Each
  confirmed anchor is recorded on its checkpoint (``checkpoint_status``).

The embedded default (``[witnesses] embedded = true``) runs a local witness in a thread of this
process, over real HTTP on a loopback port, with its own key and its own state file: the log plus
a local witness, no external infrastructure (DESIGN).

Each task has its own :class:`~gateway.store.db.Database` connection: :meth:`TransparencyLog.seal`
refuses to run while its connection is inside a transaction, which another task's write on a
shared connection would trip.

Keys: :func:`prepare_ledger` runs once before any child starts (in ``provgw serve``'s start-up
checks, :mod:`gateway.service.preflight`), and writes the gateway log key (and the embedded
witness key) at first start; the status line says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from gateway.core import note
from gateway.core.errors import MalformedError, ProvenanceError, VerificationError
from gateway.ledger.keys import (
    GatewayKey,
    load_gateway_key,
    write_gateway_key,
    write_secret_file,
)
from gateway.ledger.log import TransparencyLog
from gateway.ledger.witness import Witness
from gateway.ledger.witness_client import WitnessClient, WitnessPool
from gateway.service import child
from gateway.service.batcher import Batcher, CheckpointHook, in_thread, stop_task
from gateway.service.config import GatewayConfig, load_config
from gateway.service.witness_server import WitnessServer
from gateway.store.db import Database
from gateway.store.witness import WitnessStore

if TYPE_CHECKING:
    from gateway.ledger.anchor import Confirmation
    from gateway.service.outbox import Outbox

__all__ = [
    "LedgerKeys",
    "LedgerService",
    "WitnessRounds",
    "ledger_summary",
    "load_ledger_keys",
    "prepare_ledger",
    "run_ledger",
]

_log = logging.getLogger(__name__)

#: Retry delays of a witness round short of the quorum: 0.5 s doubling to 30 s.
_WITNESS_RETRY_BASE_S = 0.5
_WITNESS_RETRY_MAX_S = 30.0
#: At shutdown, the final seal and its witness round get at most this long.
_FINAL_ROUND_S = 5.0
_SIG_PREFIX = "\u2014 "  # a signed-note signature line starts with an em dash and a space


def _utc_now() -> datetime:
    return datetime.now(UTC)


# -- keys -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LedgerKeys:
    """The gateway's log key, the embedded witness's key (if any), and which were just made."""

    gateway: GatewayKey
    witness: note.Signer | None
    #: Key files written by this start (first start); empty afterwards.
    generated: tuple[Path, ...] = ()

    def status(self, config: GatewayConfig) -> dict[str, Any]:
        """Return what the ``provgw serve`` status line reports about the ledger."""
        chain = config.chain
        return {
            "origin": self.gateway.origin,
            "log_vkey": self.gateway.verifier.vkey,
            "log_key": str(config.log.key),
            "keys_generated": [str(p) for p in self.generated],
            "embedded_witness_vkey": self.witness.verifier.vkey if self.witness else None,
            "witnesses": config.witnesses.count,
            "quorum": config.witnesses.quorum,
            "interval_s": config.log.interval_s,
            "max_pending": config.log.max_pending,
            "chain": chain.rpc_url if chain.enabled else None,
        }


def _read_witness_key(path: Path) -> note.Signer:
    try:
        signer = note.Signer.from_skey(path.read_text(encoding="ascii").strip())
    except (OSError, UnicodeDecodeError, VerificationError) as exc:
        raise MalformedError(
            f"Cannot read the embedded witness key {path} (witnesses.embedded_key): {exc}",
            reason="bad-key",
        ) from exc
    if signer.verifier.sig_type != note.COSIGNATURE_V1:
        raise MalformedError(
            f"{path} (witnesses.embedded_key) is not a witness cosigning key (type 0x04); "
            "make one with `provgw witness keygen`.",
            reason="bad-key",
        )
    return signer


def _read_gateway_key(path: Path) -> GatewayKey:
    try:
        return load_gateway_key(path)
    except (OSError, UnicodeDecodeError, ValueError, VerificationError) as exc:
        raise MalformedError(
            f"Cannot read the gateway log key {path} (log.key): {exc}", reason="bad-key"
        ) from exc


def load_ledger_keys(config: GatewayConfig) -> LedgerKeys:
    """Read the keys :func:`prepare_ledger` made; raise :class:`MalformedError` if unusable."""
    cfg = config.witnesses
    witness = _read_witness_key(cfg.embedded_key) if cfg.embedded else None
    return LedgerKeys(_read_gateway_key(config.log.key), witness)


def prepare_ledger(config: GatewayConfig) -> LedgerKeys:
    """Load the ledger keys, generating any that is missing (first start); run once, up front.

    The log key is named after ``log.origin`` (C2SP tlog-checkpoint: the origin is the key's
    name); the embedded witness key after ``<origin>/witness``. Neither may name a site.
    """
    generated = []
    key_path = config.log.key
    if not key_path.exists():
        try:
            key = GatewayKey.generate(config.log.origin)
        except VerificationError as exc:
            raise MalformedError(
                f"log.origin {config.log.origin!r} cannot name a key: {exc}", reason="bad-config"
            ) from exc
        key_path.parent.mkdir(parents=True, exist_ok=True)
        write_gateway_key(key_path, key)
        generated.append(key_path)
    gateway = _read_gateway_key(key_path)
    witness = None
    if config.witnesses.embedded:
        witness_path = config.witnesses.embedded_key
        if not witness_path.exists():
            signer = note.Signer.generate(f"{gateway.origin}/witness", note.COSIGNATURE_V1)
            witness_path.parent.mkdir(parents=True, exist_ok=True)
            write_secret_file(witness_path, (signer.skey() + "\n").encode("ascii"))
            generated.append(witness_path)
        witness = _read_witness_key(witness_path)
    return LedgerKeys(gateway, witness, tuple(generated))


def ledger_summary(db: Database) -> dict[str, Any]:
    """Entries, checkpoints, and how many checkpoints are witnessed and anchored (status lines).

    ``witnessed`` counts checkpoints that reached the witness quorum; ``cosigned`` those with
    any cosignature kept (the quorum reached or not).
    """
    leaves = db.query("SELECT count(*) FROM log_leaves")[0][0]
    row = db.query(
        "SELECT count(*), coalesce(max(size), 0), count(witnessed_ms),"
        " count(nullif(cosignatures, '')), count(anchored_tx) FROM checkpoint_status"
    )[0]
    return {
        "entries": int(leaves),
        "checkpoints": int(row[0]),
        "size": int(row[1]),
        "witnessed": int(row[2]),
        "cosigned": int(row[3]),
        "anchored": int(row[4]),
    }


# -- the witness task ------------------------------------------------------------------------------


def _cosigner(line: str) -> str:
    # "— <name> <base64>\n" (C2SP signed-note): the name is everything between prefix and key.
    return line.removeprefix(_SIG_PREFIX).rsplit(" ", 1)[0]


class WitnessRounds:
    """The task ``witness``: cosign the newest sealed checkpoint by a quorum of witnesses.

    :meth:`offer` is the batcher hook (it only records the head and wakes the task, so sealing
    never waits for a witness). A head is witnessed when at least *quorum* of the witnesses
    named *names* cosigned it: the log records that moment
    (:meth:`~gateway.ledger.log.TransparencyLog.mark_witnessed`), then *on_witnessed* runs
    (once per head that reached the quorum). Cosignatures below the quorum are kept, not
    called witnessed. A quorum of 0 (no witness configured) lets heads through to the anchor
    but records none as witnessed: no witness saw them.
    """

    def __init__(  # noqa: PLR0913 -- each collaborator is a keyword-only, documented knob
        self,
        log: TransparencyLog,
        pool: WitnessPool,
        *,
        names: frozenset[str],
        quorum: int,
        on_witnessed: Callable[[note.SignedCheckpoint], Awaitable[None]] | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._log = log
        self._pool = pool
        self._names = names
        self._quorum = quorum
        self._on_witnessed = on_witnessed
        self._clock = clock
        self._latest: note.SignedCheckpoint | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._down: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        #: Why the log must not grow (a witness holds more of it than this database), or None.
        self.halted: str | None = None
        #: Size of the newest checkpoint that reached the quorum (0: none yet).
        self.witnessed_size = 0
        #: Rounds that fell short of the quorum.
        self.short_rounds = 0

    async def offer(self, checkpoint: note.SignedCheckpoint) -> None:
        """Batcher hook: *checkpoint* is the newest head; cosign it (replacing an older one)."""
        self._latest = checkpoint
        self._idle.clear()
        self._wake.set()

    async def idle(self) -> None:
        """Wait until the newest offered head reached the quorum (bound it with a timeout)."""
        await self._idle.wait()

    async def _run(self) -> None:
        failures = 0
        while True:
            delay = None if failures == 0 else self._retry_delay(failures)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()
            head = self._latest
            if head is None:
                failures = 0
                continue
            try:
                done = await self._round(head)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 -- logged; the next head or the retry tries again
                _log.exception("witness round for size %d failed", head.checkpoint.size)
                done = False
            if done:
                failures = 0
                if self._latest is head:
                    self._latest = None
                    self._idle.set()
            else:
                failures += 1
                self.short_rounds += 1

    @staticmethod
    def _retry_delay(failures: int) -> float:
        return min(_WITNESS_RETRY_MAX_S, _WITNESS_RETRY_BASE_S * float(2 ** min(failures - 1, 16)))

    async def _round(self, head: note.SignedCheckpoint) -> bool:
        """Submit *head* to every witness; keep the cosignatures; True when the quorum is met."""
        size = head.checkpoint.size
        log = self._log
        stored = await in_thread(lambda: log.checkpoint(size))
        if stored is None:  # pragma: no cover -- the batcher offers only stored heads
            return True
        if self._names:
            result = await in_thread(
                lambda: self._pool.submit(stored.note, lambda old: log.consistency_proof(old, size))
            )
            self._halt_if_ahead(result.failures)
            self._report(size, result.failures)
            got = result.cosignatures
            lines = [line for name in sorted(got) for line in got[name]]
            if lines:
                await in_thread(lambda: log.add_cosignatures(size, lines))
        status = await in_thread(lambda: log.status(size))
        cosigners = self._counted(status.cosignatures)
        if len(cosigners) < self._quorum:
            _log.info(
                "checkpoint %d cosigned by %d of the %d witnesses required",
                size,
                len(cosigners),
                self._quorum,
            )
            return False
        # Recorded before the anchor is queued: an anchored checkpoint is always witnessed, and
        # a crash in between leaves it witnessed, offered again by recover().
        if self._quorum > 0:
            await in_thread(lambda: log.mark_witnessed(size, self._clock()))
        self.witnessed_size = max(self.witnessed_size, size)
        if self._on_witnessed is not None:
            await self._on_witnessed(head)
        return True

    def _counted(self, lines: Sequence[str]) -> set[str]:
        """Return the configured witnesses among the signers of *lines* (each counts once)."""
        return {_cosigner(line) for line in lines} & self._names

    def _halt_if_ahead(self, failures: Mapping[str, ProvenanceError]) -> None:
        """Stop the log for good if a witness holds more of it than this database."""
        ahead = [e for e in failures.values() if e.reason == "witness-ahead"]
        if not ahead or self.halted is not None:
            return
        self.halted = str(ahead[0])
        _log.error(
            "%s The database %s is older than the log it published (restored from an older "
            "copy, rolled back), or another gateway signs with this log key. This gateway "
            "now stores events but neither logs nor signs them, since every checkpoint it "
            "signed from here would fork the log the witnesses hold. Stop it and put back "
            "the newest copy of the database; if that is lost, the log cannot go on under "
            "this key: start a new one ([log] key and origin) and give the consortium this "
            "line.",
            self.halted,
            self._log.db.path,
        )

    def _report(self, size: int, failures: Mapping[str, ProvenanceError]) -> None:
        # One line per change (down, back), not one per round: a witness down for hours would
        # otherwise write a line every retry.
        for name, error in failures.items():
            if name not in self._down:
                _log.warning("witness %s did not cosign checkpoint %d: %s", name, size, error)
        back = self._down - set(failures)
        for name in sorted(back):
            _log.info("witness %s cosigns again (checkpoint %d)", name, size)
        self._down = set(failures)

    async def recover(self) -> None:
        """After a (re)start: re-count kept cosignatures, then offer the newest head again.

        1. Every checkpoint with cosignatures kept but not recorded as witnessed (nor
           anchored) is counted against the configured witnesses and quorum, and marked
           witnessed if it reaches it. Migration ``log_0103`` cleared the quorum moment of
           checkpoints whose quorum it could not know; this restores the ones that reached it
           (and any whose run died between cosigning and marking).
        2. The newest checkpoint is offered again: the previous run may have died between
           sealing and cosigning, or between cosigning and queueing the anchor (both
           idempotent: a witness re-cosigns the head it holds, the outbox keeps one row per
           head).
        """
        log = self._log
        # Step 1 — re-count; a quorum of 0 witnesses nothing (see the class docstring).
        if self._quorum > 0:
            reached = await in_thread(self._recount)
            if reached:
                _log.info("%d checkpoints re-counted at start reached the witness quorum", reached)
        # Step 2 — the newest head again.
        latest = await in_thread(log.latest_checkpoint)
        if latest is None:
            return
        signed = note.open_checkpoint(latest.note, log.verifier)
        await self.offer(signed)

    def _recount(self) -> int:
        """Mark witnessed every kept-but-unwitnessed checkpoint that meets the quorum; how many."""
        log = self._log
        now = self._clock()
        reached = [
            status.size
            for status in log.cosigned_below_quorum()
            if len(self._counted(status.cosignatures)) >= self._quorum
        ]
        with log.db.atomic():  # one commit, however many checkpoints a migrated file holds
            for size in reached:
                log.mark_witnessed(size, now)
        return len(reached)

    async def __aenter__(self) -> Self:
        if self._task is not None:
            raise RuntimeError("the witness task is already running")
        self._task = asyncio.create_task(self._run(), name="witness")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        await stop_task(task)


# -- the service ---------------------------------------------------------------------------------


def _chain_key(path: Path) -> str:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise MalformedError(
            f"Cannot read the chain key file {path} (chain.key_file): {exc}", reason="bad-key"
        ) from exc
    return text if text.startswith("0x") else "0x" + text


class LedgerService:
    """The ledger tasks of one gateway: build them from *config*, run until told to stop."""

    def __init__(self, config: GatewayConfig, keys: LedgerKeys) -> None:
        self.config = config
        self.keys = keys
        #: Set while running (for tests and status).
        self.batcher: Batcher | None = None
        self.witness: WitnessRounds | None = None
        self.outbox: Outbox | None = None
        #: The embedded witness's URL while running.
        self.embedded_url: str | None = None
        self._stopping = asyncio.Event()

    def request_stop(self) -> None:
        """Make :meth:`run` seal, cosign and return (from the event loop's thread)."""
        self._stopping.set()

    def _open_db(self, stack: ExitStack) -> Database:
        # Always fsynced here, whatever [store] durable_against_power_loss says for ingest: a
        # checkpoint goes to the witnesses (and the chain) right after it is sealed, so a power
        # cut must not take it back out of this file. Otherwise the log, restarted on the older
        # file, would sign another tree at a size they already hold: a fork, which every
        # witness then refuses for good. The ledger commits a few times per interval_s, so the
        # fsyncs are cheap; and fsyncing the WAL makes durable every event logged before too.
        return stack.enter_context(Database(self.config.database, durable_against_power_loss=True))

    def _witness_clients(self, stack: ExitStack) -> list[WitnessClient]:
        cfg = self.config.witnesses
        clients = [WitnessClient(w.url, w.verifier, timeout=cfg.timeout_s) for w in cfg.remote]
        if cfg.embedded:
            assert self.keys.witness is not None  # prepare_ledger made it
            # A witness persists what it cosigned before it answers (C2SP tlog-witness): a
            # witness that forgets it could be rolled back. Its default, durable, is kept.
            store = stack.enter_context(WitnessStore(cfg.embedded_db))
            witness = Witness(self.keys.witness, [self.keys.gateway.verifier], store)
            server = WitnessServer(witness, host="127.0.0.1", port=cfg.embedded_port)
            stack.callback(server.close)
            server.start()
            self.embedded_url = server.url
            clients.append(WitnessClient(server.url, witness.verifier, timeout=cfg.timeout_s))
        return clients

    def _outbox(self, db: Database) -> Outbox:
        # Imported only with [chain] enabled: web3 / eth_account cost ~40 MB and ~0.7 s, and
        # the supervisor imports this module too.
        from gateway.ledger.anchor import Web3AnchorBackend  # noqa: PLC0415
        from gateway.service.outbox import AnchorPolicy, Backoff, Outbox  # noqa: PLC0415

        chain = self.config.chain
        backend = Web3AnchorBackend.from_url(
            chain.rpc_url,
            chain.contract,
            _chain_key(chain.key_file),
            from_block=chain.from_block,
            timeout_s=5.0,
        )
        anchors = TransparencyLog(db, self.keys.gateway.signer)

        def anchored(checkpoint: note.Checkpoint, confirmation: Confirmation) -> None:
            # The outbox confirms each row once; the receipt of every entry under this head
            # now rises to "anchored".
            try:
                anchors.record_anchor(
                    checkpoint.size,
                    chain=chain.name,
                    tx=confirmation.tx_hash,
                    block=confirmation.block_number,
                    now=_utc_now(),
                )
            except ProvenanceError:
                _log.exception("cannot record the anchor of checkpoint %d", checkpoint.size)
            else:
                _log.info(
                    "checkpoint %d anchored in block %d (tx %s)",
                    checkpoint.size,
                    confirmation.block_number,
                    confirmation.tx_hash.hex(),
                )

        return Outbox(
            db,
            backend,
            policy=AnchorPolicy(
                min_growth=chain.min_growth,
                max_interval_s=chain.max_interval_s,
                supersede=chain.supersede,
            ),
            backoff=Backoff(base_s=min(1.0, chain.retry_max_s), max_s=chain.retry_max_s),
            confirmations=chain.confirmations,
            poll_s=chain.poll_s,
            on_anchored=anchored,
        )

    async def run(
        self, should_stop: Callable[[], bool], on_ready: Callable[[], None], poll_s: float = 0.2
    ) -> None:
        """Run the tasks until *should_stop()*; call *on_ready()* once they are all started.

        On stop, the pending events are sealed and the final head gets one witness round
        (bounded), so a clean stop leaves the log sealed and cosigned.
        """
        cfg = self.config
        signer = self.keys.gateway.signer
        with ExitStack() as resources:
            log = TransparencyLog(self._open_db(resources), signer)
            witness_log = TransparencyLog(self._open_db(resources), signer)
            clients = self._witness_clients(resources)
            pool = resources.enter_context(WitnessPool(clients, deadline=cfg.witnesses.timeout_s))
            outbox = self._outbox(self._open_db(resources)) if cfg.chain.enabled else None
            async with AsyncExitStack() as tasks:
                anchor_hook: CheckpointHook | None = None
                if outbox is not None:
                    self.outbox = await tasks.enter_async_context(outbox)

                    async def anchor_hook(checkpoint: note.SignedCheckpoint) -> None:
                        await in_thread(lambda: outbox.enqueue(checkpoint))

                rounds = WitnessRounds(
                    witness_log,
                    pool,
                    names=frozenset(c.name for c in clients),
                    quorum=cfg.witnesses.quorum,
                    on_witnessed=anchor_hook,
                )
                self.witness = await tasks.enter_async_context(rounds)
                await rounds.recover()
                # Before anything new is signed, the newest head's round (bounded): a witness
                # holding more of this log than this file stops the log before it could fork.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(cfg.witnesses.timeout_s):
                        await rounds.idle()
                batcher = Batcher(
                    log,
                    interval_s=cfg.log.interval_s,
                    max_pending=cfg.log.max_pending,
                    on_checkpoint=[rounds.offer],
                    # A hook only queues work for its own task; this bounds a stuck SQLite write.
                    hook_timeout_s=max(10.0, cfg.witnesses.timeout_s),
                    halted=lambda: rounds.halted,
                )
                self.batcher = await tasks.enter_async_context(batcher)
                on_ready()
                while not should_stop():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), poll_s)
                await self._final_round(batcher, rounds)

    async def _final_round(self, batcher: Batcher, rounds: WitnessRounds) -> None:
        try:
            await asyncio.wait_for(batcher.flush(), _FINAL_ROUND_S)
        except (TimeoutError, ProvenanceError):
            _log.warning("the final seal did not finish; the next start seals what is pending")
            return
        try:
            async with asyncio.timeout(_FINAL_ROUND_S):
                await rounds.idle()
        except TimeoutError:
            _log.warning("the final checkpoint is not yet cosigned; the next start retries")


def run_ledger(
    config_path: str,
    parent_pid: int,
    stop: child.Flag,
    ready: child.Flag,
) -> None:
    """Entry point of the ledger process (started by the :class:`Supervisor`)."""
    child.enter(child.LEDGER, config_path)
    config = load_config(Path(config_path))
    keys = load_ledger_keys(config)

    def should_stop() -> bool:
        return child.stopping(stop, parent_pid)

    asyncio.run(LedgerService(config, keys).run(should_stop, ready.set))
