"""The ingest pipeline: a batch of MQTT deliveries -> verified events in SQLite -> acknowledgement.

Transport-agnostic: it runs in each verifier process of ``provgw serve`` (see
:mod:`gateway.service.workers` for the process layout) and gets batches of raw deliveries; the
MQTT side (:mod:`gateway.service.receiver`) batches them (``batch_max`` messages or ``batch_ms``
after the first, whichever comes first) and sends the PUBACKs :meth:`IngestPipeline.process`
asks for. The steps:

1. Parse the topic (``provgw/v1/{site}/dev/{device}/evt/{type}``): anything else is quarantined
   (``bad-topic``), never dropped.
2. Verify with the core (:func:`~gateway.core.messages.verify_device_message`), passing the
   topic's device as ``topic_device``: device A publishing under B's topic is refused even if the
   broker ACL is misconfigured (``topic-mismatch``).
3. The topic's event type must be the signed event's type (``topic-type-mismatch``): subscribers
   that filter by type must see only what the device signed.
4. Store the verified events, the quarantined messages and the device-key changes in ONE
   transaction (:meth:`~gateway.store.events.EventStore.insert_batch`): duplicates by
   (device, seq) with identical bytes are absorbed; other bytes under a taken seq are quarantined
   as ``replay``. Past a device's :class:`QuarantineBudget` for the hour, its refusals are
   counted instead of kept (one device flooding junk must not fill the disk).
5. Only after COMMIT, acknowledge every message of the batch, refused ones included (they are
   durably quarantined). MQTT 5 §4.3.2: until PUBACK the broker owns the message, and resends it
   after a reconnect; so a crash anywhere before step 5 loses nothing, and the store absorbs the
   resent copy.

Device keys: the core's in-memory :class:`~gateway.core.identity.DeviceRegistry` is a cache in
front of the persistent :class:`~gateway.store.devices.DeviceStore` (:class:`StoreBackedRegistry`):
a kid it does not know is looked up in the store (another process may have enrolled the device),
and enrolments and rotations are written in the batch's own transaction.

A kid-only message whose device is being enrolled by *another* process right now (``shared``
mode: the device's first message, with its certificate chain, went to the other member of the
shared subscription) fails with ``unknown-kid`` until that process commits. Such a message is
kept, unacknowledged, and verified again with later batches for ``enrol_grace_ms`` before it is
quarantined. (In the default ``partitioned`` mode one device's messages all reach one verifier,
in order, so this does not arise.)

Metrics: :meth:`IngestPipeline.process` returns a :class:`BatchOutcome` and hands it to an
:class:`OutcomeRecorder` once per batch; nothing is counted per message on the hot path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from cryptography.hazmat.primitives.serialization import Encoding

from gateway.core.errors import (
    MalformedError,
    MismatchError,
    ProvenanceError,
    UnavailableError,
    UntrustedSignerError,
    VerificationError,
)
from gateway.core.identity import (
    DeviceIdentity,
    DeviceRegistry,
    TrustStore,
    verify_device_chain,
)
from gateway.core.messages import MessagePolicy, verify_device_message
from gateway.ingest.topics import EventTopic, parse_topic
from gateway.service.config import DEFAULT_QUARANTINE_PER_DEVICE_HOUR
from gateway.service.metrics import IngestMetrics
from gateway.store.db import Database
from gateway.store.devices import DeviceRow, DeviceStore
from gateway.store.events import (
    EventRecord,
    EventStore,
    QuarantineOverflow,
    QuarantineRecord,
)
from gateway.store.trust_files import TrustFolder

if TYPE_CHECKING:
    from gateway.service.config import GatewayConfig

__all__ = [
    "BatchOutcome",
    "BudgetPlan",
    "Delivery",
    "IngestPipeline",
    "OutcomeRecorder",
    "QuarantineBudget",
    "StoreBackedRegistry",
    "commit_with_retry",
    "open_pipeline",
]

_log = logging.getLogger(__name__)

#: Reason token of the core for a kid nobody enrolled (yet).
_UNKNOWN_KID = "unknown-kid"
#: Most parsed topics :class:`IngestPipeline` remembers (a few per device).
_TOPIC_MEMO_MAX = 100_000


@dataclass(slots=True)
class Delivery:
    """One message as the broker delivered it; ``tag`` is the adapter's delivery tag for ack.

    Read-only by convention, not frozen: one is built per message, and a frozen dataclass
    costs five times as much to construct (``object.__setattr__`` per field).
    """

    topic: str
    payload: bytes
    tag: int
    qos: int
    received_ms: int
    received_mono: float = field(default_factory=time.monotonic)


@dataclass
class BatchOutcome:
    """What :meth:`IngestPipeline.process` did with one batch."""

    stored: int = 0
    duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    acked: int = 0
    #: Messages kept unacknowledged for another try (``unknown-kid`` within the grace period).
    deferred: list[Delivery] = field(default_factory=list)
    commit_seconds: float = 0.0
    #: Messages decided in this batch (stored, absorbed or quarantined): the acknowledged ones.
    size: int = 0
    #: Per verified message: seconds from the event's own time to the commit (consumer lag).
    lag_seconds: list[float] = field(default_factory=list)


class OutcomeRecorder(Protocol):
    """Where :class:`IngestPipeline` reports each committed batch (e.g. :class:`IngestMetrics`)."""

    def record(self, outcome: BatchOutcome) -> None:
        """Take note of one committed batch."""


# --- the registry glue -------------------------------------------------------------------------


class StoreBackedRegistry(DeviceRegistry):
    """The core's device registry as a cache in front of :class:`DeviceStore`.

    - kid miss: load the device from the store (enrolled by another worker or an earlier run) and
      re-verify its stored chain against the trust store at ``now``;
    - enrolment and rotation: checked against the store first (so a refusal is the same whichever
      worker sees the message), then queued and written by :meth:`persist` inside the batch's
      transaction; a batch that rolls back calls :meth:`reset`.

    Set :attr:`now` before each batch: the registry is driven by the pipeline's clock.
    """

    def __init__(self, db: Database, trust: TrustStore) -> None:
        super().__init__()
        self._db = db
        self._devices = DeviceStore(db)
        self._trust = trust
        self.now = datetime.now(UTC)
        #: Queued changes: (operation, identity, :attr:`now` when queued, in ms).
        self._pending: list[tuple[str, DeviceIdentity, int]] = []
        self._mark: tuple[int, int] | None = None

    def reset(self) -> None:
        """Forget the cache and the unwritten changes (after a rollback, or a stale cache)."""
        DeviceRegistry.__init__(self)
        self._pending.clear()

    def use_trust(self, trust: TrustStore) -> None:
        """Judge chains by *trust* from now on; drop the cache, which the old trust vouched for."""
        self._trust = trust
        self.reset()

    def refresh(self) -> None:
        """Drop the cache if any worker rotated or revoked a key since the last call.

        Rotations and revocations are the only ways a cached binding goes stale; both leave a
        trace counted here (a retired key, a revoked device), so one cheap query per batch keeps
        every worker's cache honest.
        """
        row = self._db.query(
            "SELECT (SELECT count(*) FROM device_keys WHERE valid_to_ms IS NOT NULL),"
            " (SELECT count(*) FROM devices WHERE revoked_ms IS NOT NULL)"
        )[0]
        mark = (int(row[0]), int(row[1]))
        if mark != self._mark:
            if self._mark is not None:
                self.reset()
            self._mark = mark

    # -- reads ------------------------------------------------------------------------------

    def by_kid(self, kid: bytes) -> DeviceIdentity:
        """Resolve *kid* from the cache, else from the store (see the class docstring)."""
        try:
            return super().by_kid(kid)
        except UntrustedSignerError as err:
            if err.reason != _UNKNOWN_KID:
                raise
            row = self._devices.by_kid(kid)
            if row is None:
                owner = self._devices.key_owner(kid)
                if owner is not None:
                    raise UntrustedSignerError(
                        f"Key {kid.hex()} of device {owner.device_id} was replaced by a key "
                        "rotation; messages signed with it are no longer accepted.",
                        reason="retired-key",
                    ) from None
                raise
        self._cache(row)
        return super().by_kid(kid)

    def _cache(self, row: DeviceRow) -> None:
        if row.revoked:
            super().revoke(row.device_id, kid=row.kid)
            return
        identity = verify_device_chain([row.cert, *row.chain], self._trust, self.now)
        super().enrol(identity)

    # -- writes -----------------------------------------------------------------------------

    def enrol(self, identity: DeviceIdentity) -> None:
        """Bind *identity* (first contact), consistent with what the store already holds."""
        try:
            cached: DeviceIdentity | None = self.by_device_id(identity.device_id)
        except VerificationError:
            cached = None
        if cached is not None and cached.kid == identity.kid:
            return  # the hot path: a device that sends its chain with every message
        if cached is None:
            row = self._devices.get(identity.device_id)
            if row is not None:
                # Known to the store: its binding (or its revocation) wins over a new claim.
                self._cache(row)
                super().enrol(identity)  # no-op for the same key; refuses another key
                return
            owner = self._devices.key_owner(identity.kid)
            if owner is not None and owner.device_id != identity.device_id:
                raise UntrustedSignerError(
                    f"The key of device {identity.device_id} is already the key of device "
                    f"{owner.device_id}: two devices must never share a key (cloned device?).",
                    reason="shared-key",
                )
        super().enrol(identity)
        self._pending.append(("enrol", identity, self._now_ms()))

    def rotate(
        self,
        old: DeviceIdentity,
        new_chain: Sequence[bytes] | bytes,
        trust: TrustStore,
        now: datetime,
    ) -> DeviceIdentity:
        """Rotate in the cache (core checks) and queue the rotation for the batch transaction."""
        new = super().rotate(old, new_chain, trust, now)
        if new.kid != old.kid:
            self._pending.append(("rotate", new, self._now_ms()))
        return new

    def _now_ms(self) -> int:
        return int(self.now.timestamp() * 1000)

    def persist(self) -> None:
        """Write queued enrolments and rotations; call inside the batch's transaction.

        Each is dated :attr:`now` as it was when the message that made it was verified.
        """
        for op, identity, now_ms in self._pending:
            row = self._devices.get(identity.device_id)
            if row is not None and row.kid == identity.kid:
                continue  # another worker wrote the same binding first
            cert = identity.certificate.public_bytes(Encoding.DER)
            chain = [
                c.public_bytes(Encoding.DER)
                for c in identity.issuers
                if not self._trust.is_anchor(c)
            ]
            if op == "enrol":
                self._devices.enrol(
                    device_id=identity.device_id,
                    manufacturer=identity.manufacturer,
                    kid=identity.kid,
                    cert=cert,
                    chain=chain,
                    now_ms=now_ms,
                )
            else:
                self._devices.rotate(
                    identity.device_id,
                    new_kid=identity.kid,
                    new_cert=cert,
                    new_chain=chain,
                    now_ms=now_ms,
                )

    def committed(self) -> None:
        """Forget the queued changes: the batch holding them committed, so the store has them."""
        self._pending.clear()


# --- the quarantine budget ---------------------------------------------------------------------

#: The budget's window: a clock hour of the gateway's receipt time.
HOUR_MS = 3_600_000
#: Most (device, hour) counters a budget keeps before it starts afresh (a flood of made-up
#: device names under a misconfigured broker ACL must not grow it).
_BUDGET_KEYS_MAX = 100_000


class QuarantineBudget:
    """At most *per_hour* refused messages kept per claimed device and clock hour.

    Past that, a device's refusals are counted (:class:`~gateway.store.events.QuarantineOverflow`:
    per reason, with their bytes and first and last times) instead of kept one row each with up
    to 64 KiB of bytes: one device flooding junk cannot fill the disk and stop ingest for the
    whole fleet. The counts are per process: a device's messages all reach one verifier
    (``partitioned``), or spread over the ``shared`` workers, each with its own budget.
    :meth:`split` plans a batch; :meth:`commit` takes its plan once the batch committed, so a
    batch that rolled back and is retried is not counted twice.
    """

    def __init__(self, per_hour: int) -> None:
        self.per_hour = per_hour
        self._kept: dict[tuple[str | None, int], int] = {}
        self._warned: set[tuple[str, int]] = set()

    def split(self, refused: Sequence[QuarantineRecord]) -> BudgetPlan:
        """Return what of *refused* to keep and what to count instead."""
        plan = BudgetPlan()
        counted: dict[tuple[str, str, int], list[int]] = {}
        for q in refused:
            key = (q.device_hint, q.received_ms // HOUR_MS)
            if self._kept.get(key, 0) + plan.taken.get(key, 0) < self.per_hour:
                plan.taken[key] = plan.taken.get(key, 0) + 1
                plan.kept.append(q)
                continue
            row = counted.setdefault(
                (q.device_hint or "", q.reason, key[1] * HOUR_MS),
                [0, 0, q.received_ms, q.received_ms],
            )
            row[0] += 1
            row[1] += len(q.raw)
            row[2] = min(row[2], q.received_ms)
            row[3] = max(row[3], q.received_ms)
        plan.overflow = [QuarantineOverflow(*key, *row) for key, row in counted.items()]
        return plan

    def commit(self, plan: BudgetPlan) -> None:
        """Count a committed batch's kept refusals; say once an hour that a device is over."""
        if len(self._kept) + len(plan.taken) > _BUDGET_KEYS_MAX:
            self._kept.clear()
            self._warned.clear()
        for key, n in plan.taken.items():
            self._kept[key] = self._kept.get(key, 0) + n
        for over in plan.overflow:
            if (over.device_hint, over.hour_ms) not in self._warned:
                self._warned.add((over.device_hint, over.hour_ms))
                _log.warning(
                    "device %s is over its quarantine budget (%d refused messages kept this "
                    "hour, [ingest] quarantine_per_device_hour): its further refusals this hour "
                    "are counted, not kept (`provgw quarantine list` shows them)",
                    over.device_hint or "(none: not a device topic)",
                    self.per_hour,
                )


@dataclass
class BudgetPlan:
    """What :meth:`QuarantineBudget.split` decided for one batch."""

    kept: list[QuarantineRecord] = field(default_factory=list)
    overflow: list[QuarantineOverflow] = field(default_factory=list)
    #: Kept rows per (device, hour), for :meth:`QuarantineBudget.commit`.
    taken: dict[tuple[str | None, int], int] = field(default_factory=dict)


# --- the pipeline ------------------------------------------------------------------------------


class IngestPipeline:
    """Verify, store and acknowledge batches of deliveries (module docstring, steps 1-5).

    Transport-agnostic: *ack(tag, qos)* is called for each message once its batch committed.
    """

    def __init__(  # noqa: PLR0913 - collaborators and tunables, keyword-only after db
        self,
        db: Database,
        trust: TrustStore,
        *,
        ack: Callable[[int, int], object],
        metrics: OutcomeRecorder | None = None,
        enrol_grace_s: float = 2.0,
        policy: MessagePolicy | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        quarantine_per_device_hour: int = DEFAULT_QUARANTINE_PER_DEVICE_HOUR,
        trust_folder: TrustFolder | None = None,
    ) -> None:
        self._db = db
        self._events = EventStore(db)
        self._trust = trust
        self._ack = ack
        self.metrics: OutcomeRecorder = IngestMetrics() if metrics is None else metrics
        self._grace = enrol_grace_s
        self._policy = policy or MessagePolicy()
        self._clock = clock
        self._trust_folder = trust_folder
        self.budget = QuarantineBudget(quarantine_per_device_hour)
        self.registry = StoreBackedRegistry(db, trust)
        # Memo of step 1: a device publishes on a handful of topics (one per event type), and
        # parsing one is ~2 us a message. Only event topics that parsed are kept, at most
        # _TOPIC_MEMO_MAX of them (a flood of distinct topics only costs re-parsing).
        self._topics: dict[str, EventTopic] = {}

    def process(self, batch: Sequence[Delivery]) -> BatchOutcome:
        """Verify *batch*, commit it in one transaction, then acknowledge it.

        Raises :class:`UnavailableError` when the database cannot be written; then nothing of the
        batch is stored or acknowledged, the registry cache is reset, and the caller retries the
        same batch (the broker will not resend it before a reconnect).
        """
        now = self._clock()
        if self._trust_folder is not None and (trust := self._trust_folder.changed()):
            self.use_trust(trust)
        self.registry.now = now
        self.registry.refresh()
        records: list[EventRecord] = []
        quarantined: list[QuarantineRecord] = []
        done: list[Delivery] = []
        outcome = BatchOutcome()
        mono = time.monotonic()
        for delivery in batch:
            try:
                records.append(self.verify(delivery, now))
            except VerificationError as err:
                if err.reason == _UNKNOWN_KID and mono - delivery.received_mono < self._grace:
                    outcome.deferred.append(delivery)
                    continue
                quarantined.append(
                    QuarantineRecord.from_error(
                        err,
                        received_ms=delivery.received_ms,
                        topic=delivery.topic,
                        raw=delivery.payload,
                        device_hint=_topic_device(delivery.topic),
                        keep_bytes=self._policy.cose.max_size,
                    )
                )
            done.append(delivery)

        # Step 4: one transaction for events, quarantine and device-key changes.
        start = time.perf_counter()
        budget = self.budget.split(quarantined)
        try:
            # No savepoint for insert_batch's own block: any failure fails the whole batch anyway.
            with self._db.atomic(savepoints=False):
                self.registry.persist()
                result = self._events.insert_batch(records, budget.kept, overflow=budget.overflow)
        except ProvenanceError:
            # Rolled back whole; the cache may hold bindings the store never got.
            self.registry.reset()
            raise
        commit_done = time.time()
        outcome.commit_seconds = time.perf_counter() - start
        self.registry.committed()
        self.budget.commit(budget)

        # Step 5: acknowledge only now that everything is durable.
        for delivery in done:
            self._ack(delivery.tag, delivery.qos)  # QoS 0: nothing to send, the adapter knows
            outcome.acked += 1
        outcome.stored = len(result.stored)
        outcome.duplicates = result.duplicates
        for q in quarantined:
            outcome.rejected[q.reason] = outcome.rejected.get(q.reason, 0) + 1
        if result.conflicts:
            outcome.rejected["replay"] = outcome.rejected.get("replay", 0) + len(result.conflicts)
        outcome.size = len(done)
        outcome.lag_seconds = [max(0.0, commit_done - r.event_time_ms / 1000) for r in records]
        self.metrics.record(outcome)
        return outcome

    def use_trust(self, trust: TrustStore) -> None:
        """Verify with *trust* from the next message on (the trust folder changed).

        The key cache is dropped: each device is re-checked against the new roots and CRLs as it
        is next looked up, so a root taken out, or a certificate now on a CRL, takes effect too.
        """
        self._trust = trust
        self.registry.use_trust(trust)

    @property
    def events(self) -> EventStore:
        """The event store the pipeline writes to."""
        return self._events

    def verify(self, delivery: Delivery, now: datetime) -> EventRecord:
        """Run steps 1-3 on one message at *now*: return its record, or raise VerificationError.

        Device-key changes it makes are queued in :attr:`registry`, written by its ``persist``.
        """
        # Step 1: which topic.
        topic = self._topics.get(delivery.topic)
        if topic is None:
            parsed = parse_topic(delivery.topic)
            if not isinstance(parsed, EventTopic):
                raise MalformedError(
                    f"{delivery.topic!r} is not a device event topic "
                    "(provgw/v1/SITE/dev/DEVICE/evt/TYPE).",
                    reason="bad-topic",
                )
            if len(self._topics) >= _TOPIC_MEMO_MAX:
                self._topics.clear()
            topic = self._topics[delivery.topic] = parsed
        # Step 2: the core's checks, the topic's device included.
        verified = verify_device_message(
            delivery.payload,
            trust=self._trust,
            registry=self.registry,
            now=now,
            topic_device=topic.device,
            policy=self._policy,
        )
        event = verified.event
        # Step 3: the topic's type is the signed type.
        if event.type != topic.event_type:
            raise MismatchError(
                f"Device {event.device} published a {event.type} event on its "
                f"{topic.event_type} topic; the topic must name the type the device signed.",
                reason="topic-type-mismatch",
            )
        return EventRecord(
            device_id=event.device,
            seq=event.seq,
            type=event.type,
            event_time_ms=event.time_ms,
            received_ms=delivery.received_ms,
            site=topic.site,
            topic=delivery.topic,
            raw=delivery.payload,
        )


def _topic_device(topic: str) -> str | None:
    try:
        parsed = parse_topic(topic)
    except MalformedError:
        return None
    return parsed.device if isinstance(parsed, EventTopic) else None


def commit_with_retry(
    pipeline: IngestPipeline,
    batch: Sequence[Delivery],
    should_stop: Callable[[], bool],
    who: str,
) -> BatchOutcome | None:
    """Process *batch*, retrying while the database is unavailable; None if told to stop first.

    Nothing of a batch that failed to commit was stored or acknowledged, and the broker does not
    resend before a reconnect, so the caller's process keeps the batch and tries again (backoff
    0.1 s doubling to 5 s). A device-key write that lost a race with another process is retried
    at once: the store now knows, and verifying again gives every message its proper verdict.
    """
    delay = 0.1
    while True:
        try:
            return pipeline.process(batch)
        except UnavailableError as err:
            _log.error("%s: batch not stored: %s; retrying", who, err)
            if should_stop():
                return None
            time.sleep(delay)
            delay = min(5.0, delay * 2)
        except VerificationError as err:
            _log.warning("%s: %s; verifying the batch again", who, err)


@contextmanager
def open_pipeline(
    config: GatewayConfig,
    *,
    ack: Callable[[int, int], object],
    metrics: OutcomeRecorder,
) -> Iterator[IngestPipeline]:
    """Open the pipeline an ingest process runs: *config*'s database, trust and grace period.

    The trust folder is a :class:`~gateway.store.trust_files.TrustFolder`: read again when its
    files change.

    The database is closed when the block ends.
    """
    folder = TrustFolder(config.trust_dir)
    with Database(
        config.database, durable_against_power_loss=config.durable_against_power_loss
    ) as db:
        yield IngestPipeline(
            db,
            folder.store,
            trust_folder=folder,
            ack=ack,
            metrics=metrics,
            enrol_grace_s=config.ingest.enrol_grace_ms / 1000,
            quarantine_per_device_hour=config.ingest.quarantine_per_device_hour,
        )
