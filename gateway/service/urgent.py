"""The urgent patch lane: manufacturer manifest or recall in, one firmware offer per device out.

DESIGN.md "Urgent lane", issue 6 item 3. The lane has its own MQTT client id
(``gateway-urgent``), its own connection and its own threads, so nothing the routine side does can
hold it up: Mosquitto's queue limits apply per client, and one client for routine and urgent
traffic lost the urgent message under a flood (measured, DESIGN.md). It never waits on the log
batcher, the outbox, witnesses, the chain, or the routine backlog: it does not call them at all.

Threads (owned by :class:`UrgentLane`, started by :meth:`~UrgentLane.start`, joined by
:meth:`~UrgentLane.stop`):

``urgent-lane`` (the hot path), for each message on ``provgw/v1/mfr/+/{manifest,recall}``:

1. Verify with the sub-millisecond checks only: a manifest with every check but the SBOM's
   quality (:func:`gateway.core.manifest.validate_manifest`, ``check_sbom_quality=False``:
   signature, schema, rollback against the stored state, use-before, SBOM binding); a recall's
   2-of-N signatures (:meth:`gateway.core.recall.Recall.from_bytes`) and its revision against the
   held one — arbitrary software, rollback, key compromise, a stale "terminated" revision.
2. Select the targets with reads only (its own database connection: SQLite WAL readers never
   wait for a writer): for an urgent manifest (priority < 0), the vendor's devices of that class
   whose current firmware version is below the manifest's (or unknown: the device decides); for
   an ongoing signed recall with a firmware remedy the gateway holds, the affected devices
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

Refused input is counted in :attr:`UrgentLane.refused` with its reason and acknowledged (a
signature that does not verify will not verify on redelivery).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Self

from gateway.core.cose import PrivateKey
from gateway.core.errors import (
    MalformedError,
    ProvenanceError,
    ReplayError,
    RollbackError,
    UnavailableError,
    VerificationError,
)
from gateway.core.manifest import Manifest, ManifestTrust, unsafe_read_manifest
from gateway.core.offer import Offer, make_offer, sever_sbom
from gateway.core.recall import Recall, RecallTrust
from gateway.core.sbom import check_sbom
from gateway.core.semver import Version
from gateway.ingest.broker_config import ClientCredentials
from gateway.ingest.mqtt import MqttClient
from gateway.ingest.topics import MANUFACTURER_FILTER, ManufacturerTopic, command_topic, parse_topic
from gateway.service.remediation import RemediationTracker, RetryPolicy, record
from gateway.store.db import Database
from gateway.store.manifests import ManifestStore
from gateway.store.recalls import RecallStore

__all__ = ["URGENT_CLIENT_ID", "Target", "UrgentLane", "UrgentStats"]

#: The lane's MQTT identity (certificate CN = client id), issued by ``provgw broker-config``.
URGENT_CLIENT_ID = "gateway-urgent"

_log = logging.getLogger(__name__)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _ms(now: datetime) -> int:
    return int(now.timestamp() * 1000)


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


@dataclass(frozen=True)
class _Job:
    kind: str  # "manifest" | "recall"
    data: bytes
    tag: int
    qos: int
    now: datetime
    offers: tuple[tuple[str, str, bytes], ...] = ()  # (recall id, device id, offer bytes)
    manifest: Manifest | None = None
    recall: Recall | None = None


_STOP = object()


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
        self._inbox: queue.Queue[tuple[str, bytes, int, int] | object] = queue.Queue()
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
        self._inbox.put((topic, payload, tag, qos))

    # -- the hot path -----------------------------------------------------------------------------

    def _hot_loop(self) -> None:
        while True:
            item = self._inbox.get()
            if item is _STOP:
                self._jobs.put(_STOP)
                return
            assert isinstance(item, tuple)
            topic, payload, tag, qos = item
            try:
                self._handle(topic, payload, tag, qos)
            except Exception:  # noqa: BLE001 -- logged; one bad message must not stop the lane
                # Left unacknowledged: redelivered after a reconnect. Never kill the lane.
                _log.exception("urgent lane: message on %s not handled", topic)

    def _handle(self, topic: str, payload: bytes, tag: int, qos: int) -> None:
        received = time.monotonic()
        now = self._clock()
        try:
            where = parse_topic(topic)
            if not isinstance(where, ManufacturerTopic):
                raise MalformedError(f"{topic!r} is not a manufacturer topic.", reason="bad-topic")
            if where.kind == "manifest":
                job = self._manifest(payload, tag, qos, now)
            else:
                job = self._recall(payload, tag, qos, now)
        except VerificationError as err:
            _log.warning("urgent lane refused a message on %s: %s", topic, err)
            self.stats.refused.append(
                ("manifest" if topic.endswith("manifest") else "recall", err.reason)
            )
            self._client.ack(tag, qos)
            return
        if job.offers:
            self.stats.fanout_s.append(time.monotonic() - received)
        self._jobs.put(job)

    def _manifest(self, data: bytes, tag: int, qos: int, now: datetime) -> _Job:
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
        fields = manifest.fields
        if not fields.urgent:
            return _Job("manifest", data, tag, qos, now, manifest=manifest)
        # Step 2 - targets: the model's devices below this version (reads only).
        wanted = Version.parse(fields.version)
        rows = self._read_db.query(
            "SELECT device_id, site, version FROM inventory WHERE vendor = ? AND class = ?"
            " ORDER BY device_id",
            (fields.vendor.bytes, fields.class_id.bytes),
        )
        targets = [
            Target(device, site)
            for device, site, version in rows
            if version is None or Version.parse(version, strict=False) < wanted
        ]
        # Step 3 - one offer per device.
        offers = self._publish(manifest.envelope, targets, recall_id=None, cves=(), now=now)
        return _Job("manifest", data, tag, qos, now, offers=offers, manifest=manifest)

    def _recall(self, data: bytes, tag: int, qos: int, now: datetime) -> _Job:
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
        # Step 3 - one offer per device.
        offers = self._publish(
            row.raw, targets, recall_id=fields.recall_id, cves=fields.cves, now=now
        )
        return _Job("recall", data, tag, qos, now, offers=offers, recall=recall)

    def _publish(  # noqa: PLR0913 -- the parts of an offer
        self,
        envelope: bytes,
        targets: list[Target],
        *,
        recall_id: str | None,
        cves: tuple[str, ...],
        now: datetime,
        attempt: int = 1,
    ) -> tuple[tuple[str, str, bytes], ...]:
        severed = sever_sbom(envelope)
        sent: list[tuple[str, str, bytes]] = []
        for target in targets:
            offer = Offer(target.device_id, severed, attempt, _ms(now), recall_id, cves)
            signed = make_offer(offer, self._key)
            try:
                self._client.publish(command_topic(target.site, target.device_id), signed, qos=1)
            except (UnavailableError, MalformedError) as err:
                # Not offered: the device stays pending and the next tick's retry covers it.
                _log.warning("offer to %s not sent: %s", target.device_id, err)
                continue
            sent.append((recall_id or "", target.device_id, signed))
            self.stats.offers += 1
        return tuple(sent)

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
        if job.manifest is not None:
            self.stats.manifests += 1
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
            self._client.ack(job.tag, job.qos)
            return
        remedy = job.recall.fields.remedy.manifest or b""
        for recall_id, device_id, offer in job.offers:
            tracker.mark_offered(recall_id, device_id, offer, manifest=remedy, at_ms=at_ms)
        self._client.ack(job.tag, job.qos)

    def _offer_waiting(
        self, manifest: Manifest, tracker: RemediationTracker, now: datetime
    ) -> None:
        """Offer a newly kept manifest to pending devices of recalls whose remedy it is."""
        assert self._db is not None
        recalls = RecallStore(self._db)
        for (recall_id,) in self._db.query(
            "SELECT DISTINCT recall_id FROM recall_impacts WHERE state = 'pending'"
        ):
            recall = recalls.get(recall_id)
            if (
                recall is None
                or not recall.signed
                or recall.fields.status != "ongoing"
                or recall.fields.remedy.manifest != manifest.digest
            ):
                continue
            targets = self._targets(recall_id, "pending")
            offers = self._publish(
                manifest.envelope, targets, recall_id=recall_id, cves=recall.fields.cves, now=now
            )
            for rid, device_id, offer in offers:
                tracker.mark_offered(
                    rid, device_id, offer, manifest=manifest.digest, at_ms=_ms(now)
                )

    def _targets(self, recall_id: str, state: str) -> list[Target]:
        assert self._db is not None
        return [
            Target(device, site)
            for device, site in self._db.query(
                "SELECT r.device_id, i.site FROM recall_impacts r JOIN inventory i"
                " ON i.device_id = r.device_id WHERE r.recall_id = ? AND r.state = ?",
                (recall_id, state),
            )
        ]

    def _retry_due(self, tracker: RemediationTracker) -> None:
        assert self._db is not None
        now = self._clock()
        retries = tracker.due(now)
        if not retries:
            return
        recalls = RecallStore(self._db)
        manifests = ManifestStore(self._db)
        sites = dict(self._db.query("SELECT device_id, site FROM inventory"))
        for retry in retries:
            recall = recalls.get(retry.recall_id)
            remedy = None if recall is None else recall.fields.remedy.manifest
            row = None if remedy is None else manifests.get(remedy)
            site = sites.get(retry.device_id)
            if recall is None or row is None or site is None:
                continue
            offers = self._publish(
                row.raw,
                [Target(retry.device_id, site)],
                recall_id=retry.recall_id,
                cves=recall.fields.cves,
                now=now,
                attempt=retry.attempt,
            )
            for rid, device_id, offer in offers:
                tracker.mark_offered(rid, device_id, offer, manifest=row.digest, at_ms=_ms(now))
                self.stats.retries += 1

    # -- full SBOM verdicts, after delivery -------------------------------------------------------

    def _sbom_loop(self) -> None:
        assert self._db is not None
        while True:
            item = self._sbom.get()
            if item is _STOP:
                return
            assert isinstance(item, tuple)
            digest, sbom = item
            try:
                report = check_sbom(sbom)
                state, detail = ("pass" if report.ok else "fail"), report.summary()
            except VerificationError as err:
                state, detail = "fail", str(err)
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


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
