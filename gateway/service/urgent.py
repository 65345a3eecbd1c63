"""The urgent patch lane: manufacturer manifest or recall in, one firmware offer per device out.

DESIGN.md "Urgent lane", issue 6 item 3. The lane has its own MQTT client id
(``gateway-urgent``), its own connection and its own threads, so nothing the routine side does can
hold it up: Mosquitto's queue limits apply per client, and one client for routine and urgent
traffic lost the urgent message under a flood (measured, DESIGN.md). It never waits on the log
batcher, the outbox, witnesses, the chain, or the routine backlog: it does not call them at all.

``provgw serve`` runs it as a process of its own (:func:`run_urgent`, started, watched and
restarted by :class:`gateway.service.workers.Supervisor`; ``[urgent]`` in the configuration),
at a raised CPU priority where allowed (``urgent.nice``): it shares no process, connection, client
id or GIL with routine ingest. Its offer-signing key is the gateway's log key unless
``urgent.offer_key`` names another (:func:`prepare_offer_key`).

Threads (owned by :class:`UrgentLane`, started by :meth:`~UrgentLane.start`, joined by
:meth:`~UrgentLane.stop`):

``urgent-lane`` (the hot path), for each message on ``provgw/v1/mfr/+/{manifest,recall}``:

1. Verify with the sub-millisecond checks only: a manifest with every check but the SBOM's
   quality (:func:`gateway.core.manifest.validate_manifest`, ``check_sbom_quality=False``:
   signature, schema, rollback against the stored state, use-before, SBOM binding); a recall's
   2-of-N signatures (:meth:`gateway.core.recall.Recall.from_bytes`) and its revision against the
   held one — arbitrary software, rollback, key compromise, a stale "terminated" revision.
2. Select the targets with reads only (its own database connection: SQLite WAL readers never
   wait for a writer): for a manifest that is the remedy of an ongoing signed recall, the
   recall's devices still ``pending`` (offered under that recall's id); for an urgent manifest
   (priority < 0), also the vendor's other devices of that class whose current firmware version
   is below the manifest's (or unknown: the device decides) and that have not installed it
   (tracked under the campaign id ``manifest:<digest>``, :mod:`gateway.store.offers`); for an
   ongoing signed recall with a firmware remedy the gateway holds, the affected devices
   (:meth:`gateway.store.recalls.RecallStore.impact`: inventory x current firmware x SBOM) not
   yet remediated. Unsigned (CSAF) recalls never drive offers.
3. Publish one signed offer per device on its ``cmd`` topic, QoS 1
   (:mod:`gateway.core.offer`).
4. Hand the message to the ``remediation`` thread; it is acknowledged there, after commit.

``remediation`` (bookkeeping; may wait on SQLite's write lock, never on the hot path): stores the
manifest (:meth:`gateway.store.manifests.ManifestStore.accept`) or the recall and its impact,
records each offer (``offered``), acknowledges the MQTT message, offers a newly held remedy
manifest to the devices of recalls that were waiting for it, and every ``tick_s`` applies the
devices' ``firmware_update`` reports and re-sends timed-out offers
(:class:`gateway.service.remediation.RemediationTracker`).

``urgent-sbom``: the full SBOM verdict (CycloneDX schema, NTIA, FDA fields) of every manifest the
lane offered, after delivery; recorded as an ``sbom-verdict`` record (and so in the log).

Refused input (bad signature, threshold not met, rollback, schema, ...) goes to the
``quarantine`` table with its raw bytes, topic, time and reason, written by the ``remediation``
thread, and is acknowledged after that commit (a signature that does not verify will not verify on
redelivery); :attr:`UrgentStats.refused` counts it too.

Each message that made offers is logged at INFO with where its time went, from paho's thread
handing it over to the last offer's PUBACK (``bench/bench_urgent.py`` reads these lines)::

    urgent offers: manifest 5afbb54a.. 2 offers in 3.1 ms (queued 0.1, checks 0.6, targets 0.4,
    publish 2.0)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import queue
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.core.cose import PrivateKey
from gateway.core.errors import (
    MalformedError,
    ProvenanceError,
    ReplayError,
    RollbackError,
    VerificationError,
)
from gateway.core.identity import kid_for
from gateway.core.manifest import Manifest, ManifestTrust, unsafe_read_manifest
from gateway.core.offer import Offer, make_offer, sever_sbom
from gateway.core.recall import Recall, RecallTrust
from gateway.core.semver import Version
from gateway.ingest.broker_config import ClientCredentials
from gateway.ingest.mqtt import MqttClient
from gateway.ingest.topics import MANUFACTURER_FILTER, ManufacturerTopic, command_topic, parse_topic
from gateway.ledger.keys import (
    GatewayKey,
    load_gateway_key,
    write_gateway_key,
    write_secret_file,
)
from gateway.service import child
from gateway.service.config import GatewayConfig, load_config
from gateway.service.remediation import RemediationTracker, RetryPolicy, record, sbom_verdict
from gateway.store.db import Database, in_list
from gateway.store.events import EventStore, QuarantineRecord
from gateway.store.manifests import ManifestStore, load_manifest_trust
from gateway.store.offers import campaign_id, campaign_manifest
from gateway.store.recalls import RecallStore, load_recall_trust

__all__ = [
    "URGENT_CLIENT_ID",
    "OfferKey",
    "Target",
    "UrgentLane",
    "UrgentStats",
    "load_offer_key",
    "prepare_offer_key",
    "run_urgent",
]

#: The lane's MQTT identity (certificate CN = client id), issued by ``provgw broker-config``.
URGENT_CLIENT_ID = "gateway-urgent"

_log = logging.getLogger(__name__)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _ms(now: datetime) -> int:
    return int(now.timestamp() * 1000)


def _track(tracker: RemediationTracker, offers: Sequence[_Sent], at_ms: int) -> None:
    """Record *offers* (acknowledged by the broker) as offered in the remediation tracker."""
    for sent in offers:
        tracker.mark_offered(
            sent.campaign, sent.device_id, sent.offer, manifest=sent.manifest, at_ms=at_ms
        )


@dataclass(frozen=True)
class Target:
    """A device to offer firmware to: its id and the site its ``cmd`` topic is under."""

    device_id: str
    site: str


@dataclass
class UrgentStats:
    """What the lane did since it started (for status output, benchmarks and tests)."""

    manifests: int = 0
    recalls: int = 0
    offers: int = 0
    retries: int = 0
    sbom_verdicts: int = 0
    #: (topic kind, reason token) of every refused message.
    refused: list[tuple[str, str]] = field(default_factory=list)
    #: Seconds from receipt to the last offer published, per urgent message that made offers.
    fanout_s: list[float] = field(default_factory=list)
    #: Where that time went, per such message: (queued, checks, targets, publish) seconds.
    phases: list[tuple[float, float, float, float]] = field(default_factory=list)
    #: Refused messages written to the quarantine table.
    quarantined: int = 0


@dataclass(frozen=True)
class _Sent:
    """One offer published: the campaign (recall id or ``manifest:<hex>``) it is tracked under."""

    campaign: str
    device_id: str
    offer: bytes
    manifest: bytes


@dataclass(frozen=True)
class _Job:
    kind: str  # "manifest" | "recall" | "refused"
    data: bytes
    tag: int
    qos: int
    now: datetime
    offers: tuple[_Sent, ...] = ()
    manifest: Manifest | None = None
    recall: Recall | None = None
    refused: QuarantineRecord | None = None
    topic: str = ""


class _Clock:
    """Phase timer of one message on the hot path (monotonic seconds)."""

    def __init__(self, arrived: float) -> None:
        self.marks = [arrived, time.monotonic()]

    def mark(self) -> None:
        self.marks.append(time.monotonic())


_STOP = object()
_SITE_CHUNK = 500  # devices per site lookup (SQLite allows 32,766 parameters; stay far below)


class UrgentLane:
    """The urgent lane (module docstring): its own MQTT session, database connections, threads.

    *offer_key* is the gateway's offer-signing key (Ed25519 or P-256), whose public key devices
    are provisioned with. *clock* is read once per message.
    """

    def __init__(  # noqa: PLR0913 -- collaborators and tunables, keyword-only
        self,
        database: Path | str,
        credentials: ClientCredentials,
        *,
        host: str,
        port: int,
        manifest_trust: ManifestTrust,
        recall_trust: RecallTrust,
        offer_key: PrivateKey,
        retry: RetryPolicy | None = None,
        tick_s: float = 0.25,
        clock: Callable[[], datetime] = _utc_now,
        receive_maximum: int = 64,
        session_expiry: int = 7 * 24 * 3600,
    ) -> None:
        self._path = Path(database)
        self._manifest_trust = manifest_trust
        self._recall_trust = recall_trust
        self._key = offer_key
        self._retry = retry or RetryPolicy()
        self._tick = tick_s
        self._clock = clock
        self.stats = UrgentStats()
        self._inbox: queue.Queue[tuple[str, bytes, int, int, float] | object] = queue.Queue()
        self._jobs: queue.Queue[_Job | object] = queue.Queue()
        self._sbom: queue.Queue[tuple[bytes, bytes] | object] = queue.Queue()
        self._client = MqttClient(
            credentials,
            host=host,
            port=port,
            on_message=self._on_message,
            receive_maximum=receive_maximum,
            session_expiry=session_expiry,
        )
        self._threads: list[threading.Thread] = []
        self._read_db: Database | None = None
        self._db: Database | None = None

    @classmethod
    def from_config(
        cls, config: GatewayConfig, *, clock: Callable[[], datetime] = _utc_now
    ) -> UrgentLane:
        """Build the lane as ``provgw serve`` runs it, from ``[urgent]``, ``[broker]``, ``[store]``.

        Raises :class:`MalformedError` when a trust directory or the offer key is unusable.
        """
        u = config.urgent
        manifest_trust = (
            load_manifest_trust(u.manifest_trust)
            if u.manifest_trust is not None
            else ManifestTrust.build([])
        )
        recall_trust = (
            load_recall_trust(u.recall_trust)
            if u.recall_trust is not None
            else RecallTrust.build([])
        )
        return cls(
            config.database,
            config.urgent_credentials(),
            host=config.broker.host,
            port=config.broker.port,
            manifest_trust=manifest_trust,
            recall_trust=recall_trust,
            offer_key=load_offer_key(config).private_key,
            retry=RetryPolicy(u.retry_timeout_s, u.retry_max_attempts, u.retry_backoff),
            tick_s=u.tick_s,
            clock=clock,
            receive_maximum=u.receive_maximum,
            session_expiry=config.broker.session_expiry_s,
        )

    # -- lifetime -----------------------------------------------------------------------------

    def start(self) -> None:
        """Open the databases, connect, subscribe, and start the threads.

        Raises :class:`UnavailableError` if the database or the broker cannot be used.
        """
        # Two connections: the hot path reads on its own, so it never queues behind a write.
        self._db = Database(self._path)
        self._read_db = Database(self._path)
        self._client.connect()
        for name, target in (
            ("urgent-lane", self._hot_loop),
            ("remediation", self._bookkeeping_loop),
            ("urgent-sbom", self._sbom_loop),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        # Subscribed last: whatever the session queued while away arrives to running threads.
        self._client.subscribe(MANUFACTURER_FILTER, qos=1, timeout=30.0)

    def stop(self) -> None:
        """Finish what is queued, stop the threads, disconnect (the session stays)."""
        self._inbox.put(_STOP)
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads.clear()
        self._client.disconnect()
        for db in (self._db, self._read_db):
            if db is not None:
                db.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def client(self) -> MqttClient:
        """The lane's own MQTT client (id ``gateway-urgent``)."""
        return self._client

    def _on_message(
        self, topic: str, payload: bytes, tag: int, qos: int, properties: dict[str, object]
    ) -> None:
        del properties
        self._inbox.put((topic, payload, tag, qos, time.monotonic()))

    # -- the hot path -----------------------------------------------------------------------------

    def _hot_loop(self) -> None:
        while True:
            item = self._inbox.get()
            if item is _STOP:
                self._jobs.put(_STOP)
                return
            assert isinstance(item, tuple)
            topic, payload, tag, qos, arrived = item
            try:
                self._handle(topic, payload, tag, qos, arrived)
            except Exception:  # noqa: BLE001 -- logged; one bad message must not stop the lane
                # Left unacknowledged: redelivered after a reconnect. Never kill the lane.
                _log.exception("urgent lane: message on %s not handled", topic)

    def _handle(self, topic: str, payload: bytes, tag: int, qos: int, arrived: float) -> None:
        clock = _Clock(arrived)
        now = self._clock()
        try:
            where = parse_topic(topic)
            if not isinstance(where, ManufacturerTopic):
                raise MalformedError(f"{topic!r} is not a manufacturer topic.", reason="bad-topic")
            if where.kind == "manifest":
                job = self._manifest(payload, tag, qos, now, clock)
            else:
                job = self._recall(payload, tag, qos, now, clock)
        except VerificationError as err:
            _log.warning("urgent lane refused a message on %s: %s", topic, err)
            self.stats.refused.append(
                ("manifest" if topic.endswith("manifest") else "recall", err.reason)
            )
            # Kept in the quarantine table (and acknowledged) by the remediation thread: a write
            # is never made on the hot path.
            record_ = QuarantineRecord.from_error(
                err, received_ms=_ms(now), topic=topic, raw=payload
            )
            self._jobs.put(_Job("refused", payload, tag, qos, now, refused=record_))
            return
        if job.offers:
            self._report_timing(job, clock)
        self._jobs.put(dataclasses.replace(job, topic=topic))

    def _report_timing(self, job: _Job, clock: _Clock) -> None:
        # marks: arrival, handling starts, checks done, targets chosen, last offer acknowledged.
        m = clock.marks
        if len(m) != 5:
            return
        total = m[4] - m[0]
        phases = (m[1] - m[0], m[2] - m[1], m[3] - m[2], m[4] - m[3])
        self.stats.fanout_s.append(total)
        self.stats.phases.append(phases)
        digest = job.manifest.digest if job.manifest else (job.recall.digest if job.recall else b"")
        _log.info(
            "urgent offers: %s %s.. %d offers in %.1f ms (queued %.1f, checks %.1f, targets "
            "%.1f, publish %.1f)",
            job.kind,
            digest.hex()[:8],
            len(job.offers),
            total * 1000,
            *(p * 1000 for p in phases),
        )

    def _manifest(self, data: bytes, tag: int, qos: int, now: datetime, clock: _Clock) -> _Job:
        # Step 1 - sub-millisecond checks against the stored rollback state (read only).
        assert self._read_db is not None
        try:
            own = unsafe_read_manifest(data).digest
        except VerificationError:
            own = None
        # As ManifestStore.accept: the newest manifest of a class does not roll back over itself
        # (a QoS 1 redelivery of it is checked again, not refused).
        state = {
            (uuid.UUID(bytes=v), uuid.UUID(bytes=c)): int(seq)
            for v, c, seq, digest in self._read_db.query(
                "SELECT vendor, class, seq, digest FROM manifest_rollback"
            )
            if bytes(digest) != own
        }
        manifest = Manifest.from_bytes(
            data, trust=self._manifest_trust, state=state, now=now, check_sbom_quality=False
        )
        clock.mark()
        fields = manifest.fields
        # Step 2a - devices of signed, ongoing recalls waiting for this manifest as their remedy.
        waiting = _waiting_for(self._read_db, manifest.digest)
        if not fields.urgent and not waiting:
            return _Job("manifest", data, tag, qos, now, manifest=manifest)
        # Step 2b - an urgent manifest: the model's other devices below this version that have
        # not installed it yet (reads only).
        targets: list[Target] = []
        if fields.urgent:
            covered = {t.device_id for _, group in waiting for t in group}
            covered |= {
                d
                for (d,) in self._read_db.query(
                    "SELECT device_id FROM manifest_offers WHERE manifest = ?"
                    " AND state = 'installed'",
                    (manifest.digest,),
                )
            }
            wanted = Version.parse(fields.version)
            rows = self._read_db.query(
                "SELECT device_id, site, version FROM inventory WHERE vendor = ? AND class = ?"
                " ORDER BY device_id",
                (fields.vendor.bytes, fields.class_id.bytes),
            )
            targets = [
                Target(device, site)
                for device, site, version in rows
                if device not in covered
                and (version is None or Version.parse(version, strict=False) < wanted)
            ]
        clock.mark()
        # Step 3 - one offer per device: under its recall's id, or the manifest's campaign id.
        sent: list[_Sent] = []
        for recall, group in waiting:
            sent += self._publish(
                manifest.envelope,
                group,
                campaign=recall.recall_id,
                manifest=manifest.digest,
                cves=recall.fields.cves,
                now=now,
            )
        sent += self._publish(
            manifest.envelope,
            targets,
            campaign=campaign_id(manifest.digest),
            manifest=manifest.digest,
            cves=(),
            now=now,
        )
        clock.mark()
        return _Job("manifest", data, tag, qos, now, offers=tuple(sent), manifest=manifest)

    def _recall(self, data: bytes, tag: int, qos: int, now: datetime, clock: _Clock) -> _Job:
        # Step 1 - 2-of-N signatures, then the revision against the held one (reads only).
        recall = Recall.from_bytes(data, trust=self._recall_trust)
        assert self._read_db is not None
        recalls = RecallStore(self._read_db)
        held = recalls.get(recall.recall_id)
        fields = recall.fields
        if held is not None:
            if fields.revision < held.fields.revision:
                raise RollbackError(
                    f"Recall {fields.recall_id} revision {fields.revision} is older than the "
                    f"held revision {held.fields.revision}.",
                    reason="recall-rollback",
                )
            if fields.revision == held.fields.revision and recall.digest != held.digest:
                raise ReplayError(
                    f"Recall {fields.recall_id} revision {fields.revision} arrived again with "
                    "other content.",
                    reason="recall-conflict",
                )
        clock.mark()
        remedy = fields.remedy.manifest
        row = None if remedy is None else ManifestStore(self._read_db).get(remedy)
        if fields.status != "ongoing" or row is None:
            # Nothing to deliver now; a remedy manifest that arrives later is offered then.
            return _Job("recall", data, tag, qos, now, recall=recall)
        # Step 2 - targets: the recall's impact, minus devices already remediated.
        installed = {
            d
            for (d,) in self._read_db.query(
                "SELECT device_id FROM recall_impacts WHERE recall_id = ? AND state = 'installed'",
                (fields.recall_id,),
            )
        }
        targets = [
            Target(i.device_id, i.site)
            for i in recalls.impact(recall).affected
            if i.device_id not in installed
        ]
        clock.mark()
        # Step 3 - one offer per device.
        offers = self._publish(
            row.raw,
            targets,
            campaign=fields.recall_id,
            manifest=row.digest,
            cves=fields.cves,
            now=now,
        )
        clock.mark()
        return _Job("recall", data, tag, qos, now, offers=tuple(offers), recall=recall)

    def _publish(  # noqa: PLR0913 -- the parts of an offer
        self,
        envelope: bytes,
        targets: list[Target],
        *,
        campaign: str,
        manifest: bytes,
        cves: tuple[str, ...],
        now: datetime,
        attempt: int = 1,
    ) -> list[_Sent]:
        """Sign and publish one offer per target; return those the broker acknowledged."""
        if not targets:
            return []
        severed = sever_sbom(envelope)
        recall_id = None if campaign_manifest(campaign) is not None else campaign
        signed: list[tuple[Target, str, bytes]] = []
        for target in targets:
            offer = Offer(target.device_id, severed, attempt, _ms(now), recall_id, cves)
            try:
                topic = command_topic(target.site, target.device_id)
            except MalformedError as err:
                _log.warning("offer to %s not sent: %s", target.device_id, err)
                continue
            signed.append((target, topic, make_offer(offer, self._key)))
        # All offers go out before the first PUBACK is awaited: one broker round trip for the
        # whole fan-out, not one per device (a serial wait per offer was the p99 under a flood).
        results = self._client.publish_many([(topic, data) for _, topic, data in signed], qos=1)
        sent: list[_Sent] = []
        for (target, _, data), error in zip(signed, results, strict=True):
            if error is not None:
                # Not acknowledged: the device stays pending (or offered) and is offered again.
                _log.warning("offer to %s not sent: %s", target.device_id, error)
                continue
            sent.append(_Sent(campaign, target.device_id, data, manifest))
            self.stats.offers += 1
        return sent

    # -- bookkeeping ------------------------------------------------------------------------------

    def _bookkeeping_loop(self) -> None:
        assert self._db is not None
        tracker = RemediationTracker(self._db, policy=self._retry)
        next_tick = time.monotonic()
        while True:
            try:
                job = self._jobs.get(timeout=max(0.0, next_tick - time.monotonic()))
            except queue.Empty:
                job = None
            if job is _STOP:
                self._sbom.put(_STOP)
                return
            try:
                if isinstance(job, _Job):
                    self._commit(job, tracker)
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + self._tick
                    tracker.apply_reports()
                    self._retry_due(tracker)
            except ProvenanceError:
                _log.exception("urgent lane bookkeeping failed; retrying at the next tick")

    def _commit(self, job: _Job, tracker: RemediationTracker) -> None:
        assert self._db is not None
        at_ms = _ms(job.now)
        if job.refused is not None:
            self._quarantine(job, job.refused)
            return
        if job.manifest is not None:
            self.stats.manifests += 1
            # The offers were sent: track them whatever becomes of the manifest below.
            _track(tracker, job.offers, at_ms)
            try:
                manifest = ManifestStore(self._db).accept(
                    job.data, trust=self._manifest_trust, now=job.now, check_sbom_quality=False
                )
            except VerificationError as err:
                # Lost a race with a newer manifest of the class: the offers stand (devices
                # check rollback themselves), the manifest is not kept.
                _log.warning("manifest not kept: %s", err)
                self._client.ack(job.tag, job.qos)
                return
            RecallStore(self._db).index_sboms(now=job.now)
            if manifest.sbom is not None and job.offers:
                self._sbom.put((manifest.digest, manifest.sbom))
            self._client.ack(job.tag, job.qos)
            self._offer_waiting(manifest, tracker, job.now)
            return
        assert job.recall is not None
        self.stats.recalls += 1
        recalls = RecallStore(self._db)
        try:
            with self._db.atomic():
                if recalls.accept(job.recall, now=job.now):
                    record(
                        self._db,
                        "recall",
                        state=job.recall.fields.status,
                        digest=_sha256(job.data),
                        at_ms=at_ms,
                        recall_id=job.recall.recall_id,
                        manifest=job.recall.fields.remedy.manifest,
                    )
                recalls.record_impact(job.recall, now=job.now)
        except VerificationError as err:
            _log.warning("recall not kept: %s", err)
            self.stats.refused.append(("recall", err.reason))
            self._quarantine(
                job,
                QuarantineRecord.from_error(err, received_ms=at_ms, topic=job.topic, raw=job.data),
            )
            return
        _track(tracker, job.offers, at_ms)
        self._client.ack(job.tag, job.qos)

    def _quarantine(self, job: _Job, refused: QuarantineRecord) -> None:
        """Keep a refused message in the quarantine table, then acknowledge it."""
        assert self._db is not None
        EventStore(self._db).insert_batch([], [refused])
        self.stats.quarantined += 1
        self._client.ack(job.tag, job.qos)

    def _offer_waiting(
        self, manifest: Manifest, tracker: RemediationTracker, now: datetime
    ) -> None:
        """Offer a newly kept manifest to pending devices of recalls whose remedy it is."""
        assert self._db is not None
        for recall, targets in _waiting_for(self._db, manifest.digest):
            offers = self._publish(
                manifest.envelope,
                targets,
                campaign=recall.recall_id,
                manifest=manifest.digest,
                cves=recall.fields.cves,
                now=now,
            )
            _track(tracker, offers, _ms(now))

    def _retry_due(self, tracker: RemediationTracker) -> None:
        assert self._db is not None
        now = self._clock()
        retries = tracker.due(now)
        if not retries:
            return
        recalls = RecallStore(self._db)
        manifests = ManifestStore(self._db)
        # The sites of these devices only, not the whole inventory at every tick that has retries.
        devices = sorted({retry.device_id for retry in retries})
        sites: dict[str, str] = {}
        for start in range(0, len(devices), _SITE_CHUNK):
            marks, chunk = in_list(devices[start : start + _SITE_CHUNK])
            sites.update(
                self._db.query(
                    f"SELECT device_id, site FROM inventory WHERE device_id IN ({marks})",  # noqa: S608 - "?" only
                    chunk,
                )
            )
        for retry in retries:
            campaign = campaign_manifest(retry.recall_id)
            cves: tuple[str, ...] = ()
            if campaign is not None:
                remedy: bytes | None = campaign
            else:
                recall = recalls.get(retry.recall_id)
                remedy = None if recall is None else recall.fields.remedy.manifest
                cves = () if recall is None else recall.fields.cves
            row = None if remedy is None else manifests.get(remedy)
            site = sites.get(retry.device_id)
            if row is None or site is None:
                continue
            offers = self._publish(
                row.raw,
                [Target(retry.device_id, site)],
                campaign=retry.recall_id,
                manifest=row.digest,
                cves=cves,
                now=now,
                attempt=retry.attempt,
            )
            _track(tracker, offers, _ms(now))
            self.stats.retries += len(offers)

    # -- full SBOM verdicts, after delivery -------------------------------------------------------

    def _sbom_loop(self) -> None:
        assert self._db is not None
        while True:
            item = self._sbom.get()
            if item is _STOP:
                return
            assert isinstance(item, tuple)
            digest, sbom = item
            # The same verdict `provgw log verify` re-checks (claims.verify_urgent_claims).
            state, detail = sbom_verdict(sbom)
            with contextlib.suppress(ProvenanceError):
                record(
                    self._db,
                    "sbom-verdict",
                    state=state,
                    digest=_sha256(sbom),
                    at_ms=_ms(self._clock()),
                    manifest=digest,
                    detail=detail,
                )
                self.stats.sbom_verdicts += 1


def _waiting_for(db: Database, digest: bytes) -> list[tuple[Recall, list[Target]]]:
    """Signed, ongoing recalls whose remedy is *digest*, with their ``pending`` devices."""
    recalls = RecallStore(db)
    out: list[tuple[Recall, list[Target]]] = []
    for (recall_id,) in db.query(
        "SELECT DISTINCT recall_id FROM recall_impacts WHERE state = 'pending'"
    ):
        recall = recalls.get(recall_id)
        if (
            recall is None
            or not recall.signed
            or recall.fields.status != "ongoing"
            or recall.fields.remedy.manifest != digest
        ):
            continue
        targets = [
            Target(device, site)
            for device, site in db.query(
                "SELECT r.device_id, i.site FROM recall_impacts r JOIN inventory i"
                " ON i.device_id = r.device_id WHERE r.recall_id = ? AND r.state = 'pending'"
                " ORDER BY r.device_id",
                (recall_id,),
            )
        ]
        out.append((recall, targets))
    return out


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# -- the offer key --------------------------------------------------------------------------------


@dataclass(frozen=True)
class OfferKey:
    """The key the lane signs offers with, where it lives, and whether this start made it."""

    private_key: PrivateKey
    path: Path
    public_pem: Path
    generated: bool = False

    @property
    def kid(self) -> bytes:
        """The kid devices look the key up by (:func:`gateway.core.identity.kid_for`)."""
        return kid_for(self.private_key.public_key())

    def status(self) -> dict[str, Any]:
        """Return what the ``provgw serve`` start line reports about the key."""
        return {
            "offer_key": str(self.path),
            "offer_kid": self.kid.hex(),
            "offer_public_key": str(self.public_pem),
            "offer_key_generated": self.generated,
        }


def _read_pem_key(path: Path) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise MalformedError(
            f"Cannot read the offer key {path} (urgent.offer_key): {exc}", reason="bad-key"
        ) from exc
    if isinstance(key, Ed25519PrivateKey) or (
        isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    ):
        return key
    raise MalformedError(
        f"The offer key {path} (urgent.offer_key) is neither Ed25519 nor P-256; devices verify "
        "offers with EdDSA or ES256 only.",
        reason="bad-key",
    )


def _key_file(config: GatewayConfig, *, generate: bool) -> tuple[PrivateKey, Path, bool]:
    u = config.urgent
    if u.offer_key is None:
        # Decision (issue 6): the gateway's Ed25519 log key also signs offers. A note signature
        # covers UTF-8 text and a COSE one a Sig_structure starting with 0x84 (RFC 9052 §4.4),
        # and an offer is a closed map with type "firmware-offer" where a receipt carries a vds
        # header (RFC 9942): no signature made for one can be taken for another
        # (gateway.ledger.keys). One gateway key is one thing for devices and auditors to pin.
        path = config.log.key
        if not path.exists() and generate:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_gateway_key(path, GatewayKey.generate(config.log.origin))
            return load_gateway_key(path).private_key, path, True
        try:
            return load_gateway_key(path).private_key, path, False
        except (OSError, UnicodeDecodeError, ValueError, VerificationError) as exc:
            raise MalformedError(
                f"Cannot read the gateway key {path} (log.key), which signs offers: {exc}",
                reason="bad-key",
            ) from exc
    path = u.offer_key
    if not path.exists() and generate:
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # Never overwrites a key devices were provisioned with; never world-readable.
        write_secret_file(path, pem)
        return _read_pem_key(path), path, True
    return _read_pem_key(path), path, False


def prepare_offer_key(config: GatewayConfig) -> OfferKey:
    """Load the offer key, generating it at first start; write its public half (PEM).

    Run once by the supervisor before any process starts (no two processes race to make it).
    """
    key, path, generated = _key_file(config, generate=True)
    public = config.urgent.offer_public_key
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if not public.exists() or public.read_bytes() != pem:
        public.parent.mkdir(parents=True, exist_ok=True)
        tmp = public.with_name(public.name + ".tmp")
        tmp.write_bytes(pem)
        tmp.replace(public)
    return OfferKey(key, path, public, generated)


def load_offer_key(config: GatewayConfig) -> OfferKey:
    """Load the offer key :func:`prepare_offer_key` made; :class:`MalformedError` if unusable."""
    key, path, _ = _key_file(config, generate=False)
    return OfferKey(key, path, config.urgent.offer_public_key)


# -- the lane's process (started by gateway.service.workers.Supervisor) ---------------------------


def _raise_priority(nice: int) -> int:
    """Apply *nice* to this process before any thread exists (threads inherit it); return it."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice < current:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
        except PermissionError:
            # Raising priority needs root or CAP_SYS_NICE (systemd: Nice= / AmbientCapabilities).
            _log.warning(
                "urgent lane: cannot raise priority to nice %d (needs CAP_SYS_NICE); running at %d",
                nice,
                current,
            )
    elif nice > current:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    return os.getpriority(os.PRIO_PROCESS, 0)


def run_urgent(
    config_path: str,
    parent_pid: int,
    stop: child.Flag,
    ready: child.Flag,
) -> None:
    """Entry point of the urgent lane's process (started by ``workers.Supervisor``).

    Exits non-zero when the lane cannot start (broker or database unavailable): the supervisor
    starts it again with backoff. Stops when *stop* is set, on SIGTERM, or when its parent is gone
    (even after a ``kill -9`` of ``provgw serve``), finishing what it holds first.
    """
    child.enter(child.URGENT, config_path)
    config = load_config(Path(config_path))
    _raise_priority(config.urgent.nice)
    lane = UrgentLane.from_config(config)
    try:
        lane.start()
    except ProvenanceError as err:
        _log.error("urgent lane cannot start: %s", err)
        lane.stop()
        sys.exit(1)
    ready.set()
    try:
        while not child.stopping(stop, parent_pid):
            time.sleep(0.2)
    finally:
        lane.stop()
