"""Simulated devices that take patches: receive offers, check them themselves, install, report.

Each :class:`PatchingDevice` logs in to the broker with its own certificate, subscribes to its own
``cmd`` topic (the broker's ACL lets it read nothing else) and, for every firmware offer:

1. checks the gateway's signature and that the offer names it
   (:func:`gateway.core.offer.read_offer`); an offer that fails here is ignored: nobody authentic
   asked anything;
2. checks the manufacturer's manifest itself (:func:`gateway.core.offer.check_offer_manifest`):
   signature, its own vendor and class, anti-rollback against its installed sequence number,
   use-before. A refusal is reported (``result = rejected``, with the reason) so the gateway's
   tracker sees it; an offer of exactly the firmware already installed is reported ``installed``
   (a retry that crossed the first report);
3. "installs" (waits ``slow_ms``; fails with probability ``fail_rate``);
4. publishes a signed ``firmware_update`` report on its event topic (trigger ``recall`` with the
   recall id, ``cve`` with the first CVE, or ``routine`` out of cycle for an urgent manifest), and
   only then acknowledges the offer.

A share ``offline_rate`` of the devices never connects: their offers go nowhere, and the gateway
must notice by itself (timeouts, retries, ``unreachable``).

TEST KEYS ONLY, like the rest of ``device_sim``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from device_sim.events import SimDevice
from device_sim.fleet import device_credentials
from device_sim.pki import DeviceRecord
from gateway.core.errors import ProvenanceError, RollbackError, VerificationError
from gateway.core.events import Event, parse_event
from gateway.core.manifest import DeviceTarget, ManifestTrust, PublicKey, device_target
from gateway.core.manifest import unsafe_read_manifest as _unsafe_read_manifest
from gateway.core.offer import Offer, check_offer_manifest, read_offer
from gateway.ingest.broker_config import BrokerConfig, ClientCredentials
from gateway.ingest.mqtt import MqttClient
from gateway.ingest.topics import command_topic, event_topic

__all__ = [
    "Installed",
    "OfferOutcome",
    "PatchFleet",
    "PatchOptions",
    "PatchingDevice",
]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PatchOptions:
    """Fault injection for ``provgw-sim patch-devices``."""

    #: Share of devices that never connect (their offers are lost; the gateway must time out).
    offline_rate: float = 0.0
    #: Simulated install time per offer, in milliseconds.
    slow_ms: int = 0
    #: Probability that an install fails (reported as ``failed``).
    fail_rate: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not (0 <= self.offline_rate <= 1 and 0 <= self.fail_rate <= 1 and self.slow_ms >= 0):
            msg = "offline and fail rates must be between 0 and 1, slow-ms at least 0"
            raise ValueError(msg)


@dataclass(frozen=True)
class Installed:
    """What a device runs: display version, manifest sequence number and digest (if known)."""

    version: str
    seq: int
    digest: bytes | None = None


@dataclass(frozen=True)
class OfferOutcome:
    """What a device did with one offer; ``arrived`` is ``time.monotonic()`` at receipt."""

    device_id: str
    result: str  # installed | failed | rejected | ignored
    detail: str
    arrived: float
    recall_id: str | None = None
    attempt: int = 0
    manifest: bytes | None = None
    version: str | None = None


class PatchingDevice:
    """One simulated device: its MQTT session, its installed firmware, its offer handling."""

    def __init__(  # noqa: PLR0913 -- a device's identity, connection and policy
        self,
        record: DeviceRecord,
        sim: SimDevice,
        credentials: ClientCredentials,
        *,
        host: str,
        port: int,
        gateway_keys: Mapping[bytes, PublicKey],
        trust: ManifestTrust,
        installed: Installed,
        options: PatchOptions,
        rng: random.Random,
        on_outcome: Callable[[OfferOutcome], None],
        executor: ThreadPoolExecutor,
    ) -> None:
        self.record = record
        self.sim = sim
        self.installed = installed
        self._client = MqttClient(
            credentials, host=host, port=port, on_message=self.on_message, receive_maximum=16
        )
        self._gateway_keys = gateway_keys
        self._trust = trust
        self._options = options
        self._rng = rng
        self._on_outcome = on_outcome
        self._executor = executor
        self._lock = threading.Lock()
        # Monotonic per device and across runs: the wall clock in ms is above any earlier seq.
        self._seq = time.time_ns() // 1_000_000
        self._target = device_target(
            {
                "id": record.id,
                "manufacturer_slug": record.manufacturer_slug,
                "model": record.model,
            }
        )

    @property
    def target(self) -> DeviceTarget:
        """The device as manifests are checked for it (vendor, class, installed sequence)."""
        t = self._target
        return DeviceTarget(t.device_id, t.vendor, t.class_id, self.installed.seq)

    def connect(self) -> None:
        """Connect and subscribe to this device's own command topic."""
        self._client.connect()
        self._client.subscribe(command_topic(self.record.site, self.record.id), qos=1)

    def close(self) -> None:
        """Disconnect (the session stays on the broker)."""
        self._client.disconnect()

    def on_message(
        self, topic: str, payload: bytes, tag: int, qos: int, properties: dict[str, Any]
    ) -> None:
        """Paho's callback: hand the offer to a worker thread (publishing here would deadlock)."""
        del topic, properties
        arrived = time.monotonic()
        self._executor.submit(self._handle, payload, tag, qos, arrived)

    def _handle(self, payload: bytes, tag: int, qos: int, arrived: float) -> None:
        try:
            outcome = self._take(payload, arrived)
        except ProvenanceError as err:
            outcome = OfferOutcome(self.record.id, "ignored", f"report not sent: {err}", arrived)
        except Exception as err:  # noqa: BLE001 -- a simulator reports, it never dies
            _log.exception("device %s: offer not handled", self.record.id)
            outcome = OfferOutcome(self.record.id, "ignored", repr(err), arrived)
        self._client.ack(tag, qos)
        self._on_outcome(outcome)

    def _take(self, payload: bytes, arrived: float) -> OfferOutcome:
        now = datetime.now(UTC)
        device_id = self.record.id
        # Step 1 - the gateway's signature and the target (else: ignored, nothing is reported).
        try:
            offer = read_offer(payload, gateway_keys=self._gateway_keys, device_id=device_id)
        except VerificationError as err:
            return OfferOutcome(device_id, "ignored", f"{err.reason}: {err}", arrived)
        with self._lock:  # one offer at a time per device, like a real bootloader
            # Step 2 - the manifest, checked by the device itself.
            try:
                verified = check_offer_manifest(
                    offer, trust=self._trust, device=self.target, now=now
                )
            except RollbackError as err:
                if self._already_installed(offer, now):
                    return self._report(offer, arrived, "installed", "already installed")
                return self._report(offer, arrived, "rejected", f"{err.reason}: {err}")
            except VerificationError as err:
                return self._report(offer, arrived, "rejected", f"{err.reason}: {err}")
            # Step 3 - install (simulated).
            if self._options.slow_ms:
                time.sleep(self._options.slow_ms / 1000)
            if self._rng.random() < self._options.fail_rate:
                return self._report(offer, arrived, "failed", "simulated install failure")
            previous = self.installed
            fields = verified.fields
            self.installed = Installed(fields.version, fields.seq, verified.digest)
            return self._report(offer, arrived, "installed", None, previous=previous)

    def _already_installed(self, offer: Offer, now: datetime) -> bool:
        if self.installed.digest is None:
            return False
        loose = DeviceTarget(self._target.device_id, self._target.vendor, self._target.class_id)
        try:
            verified = check_offer_manifest(offer, trust=self._trust, device=loose, now=now)
        except VerificationError:
            return False
        return verified.digest == self.installed.digest

    def _report(
        self,
        offer: Offer,
        arrived: float,
        result: str,
        detail: str | None,
        *,
        previous: Installed | None = None,
    ) -> OfferOutcome:
        # Step 4 - the signed report: what was offered, what the device did, and why.
        try:
            claimed = _unsafe_read_manifest(offer.manifest)  # for the report's fields only
        except VerificationError as err:
            return OfferOutcome(self.record.id, "ignored", f"unreadable manifest: {err}", arrived)
        from_version = (previous or self.installed).version
        body: dict[str, Any] = {
            "from_version": from_version,
            "to_version": claimed.fields.version,
            "manifest_digest": claimed.digest,
            "image_digest": claimed.fields.image_digest,
            "result": result,
            "cycle": "out_of_cycle",
        }
        if detail:
            body["detail"] = detail[:256]
        if offer.recall_id is not None:
            body["trigger"], body["trigger_ref"] = "recall", offer.recall_id
        elif offer.cves:
            body["trigger"], body["trigger_ref"] = "cve", offer.cves[0]
        else:
            body["trigger"] = "routine"
        self._seq += 1
        event = parse_event(
            Event(
                "firmware_update", self.record.id, self._seq, time.time_ns() // 1_000_000, body
            ).to_cbor_map()
        )
        signed = self.sim.sign(event, with_chain=True)
        topic = event_topic(self.record.site, self.record.id, "firmware_update")
        self._client.publish(topic, signed, qos=1)
        return OfferOutcome(
            self.record.id,
            result,
            detail or "",
            arrived,
            offer.recall_id,
            offer.attempt,
            claimed.digest,
            claimed.fields.version,
        )


@dataclass
class PatchFleet:
    """Many :class:`PatchingDevice` s, their outcomes, and the offline ones.

    ``installed`` maps a model name to what its devices run at the start.
    """

    pki: Path
    broker: BrokerConfig
    records: Sequence[DeviceRecord]
    gateway_keys: Mapping[bytes, PublicKey]
    trust: ManifestTrust
    installed: Mapping[str, Installed]
    options: PatchOptions = field(default_factory=PatchOptions)
    host: str | None = None
    port: int | None = None
    outcomes: list[OfferOutcome] = field(default_factory=list)
    devices: dict[str, PatchingDevice] = field(default_factory=dict)
    offline: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._changed = threading.Condition()
        self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="patching-device")
        self._rng = random.Random(self.options.seed)

    def _record(self, outcome: OfferOutcome) -> None:
        with self._changed:
            self.outcomes.append(outcome)
            self._changed.notify_all()

    def start(self) -> None:
        """Connect every device that is not chosen to be offline."""
        for record in self.records:
            if self._rng.random() < self.options.offline_rate:
                self.offline.append(record.id)
                continue
            device = PatchingDevice(
                record,
                SimDevice.load(self.pki, record.id),
                device_credentials(self.pki, self.broker, record.id),
                host=self.host or self.broker.host,
                port=self.port or self.broker.port,
                gateway_keys=self.gateway_keys,
                trust=self.trust,
                installed=self.installed.get(record.model, Installed("0.0.0", 0)),
                options=self.options,
                rng=random.Random(self._rng.random()),
                on_outcome=self._record,
                executor=self._executor,
            )
            device.connect()
            self.devices[record.id] = device

    def stop(self) -> None:
        """Finish the offers at hand, then disconnect every device."""
        self._executor.shutdown(wait=True)
        for device in self.devices.values():
            device.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(self, predicate: Callable[[list[OfferOutcome]], bool], timeout: float) -> bool:
        """Wait until *predicate(outcomes)* holds or *timeout* seconds pass; return whether."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self.outcomes), timeout)
