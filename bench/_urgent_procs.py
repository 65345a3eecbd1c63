"""Processes of ``bench_urgent``: the naive one-queue baseline and the flood publisher.

(The urgent lane itself runs inside ``provgw serve``, as deployed: ``bench_urgent.start_serve``.)

``python -m bench._urgent_procs naive --db F --broker DIR --port P --key K``
    The naive baseline: ONE client, ONE queue for routine events and manufacturer messages, one
    worker taking batches in arrival order (500 messages or 20 ms): events are verified and
    stored, and an urgent manifest is verified, targeted and offered when its turn comes.
``python -m bench._urgent_procs flood --pki DIR --broker DIR --port P --devices N --count C``
    Pre-signs routine events, prints ``ready``; for each stdin line ``RATE SECONDS`` publishes
    them at RATE per second for SECONDS (open loop; 0 = as fast as PUBACKs allow; at most 4,000
    unacknowledged), and prints what it sent.

Each prints ``ready`` once subscribed/connected and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import queue
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_private_key

from gateway.core.cose import PrivateKey
from gateway.core.errors import VerificationError
from gateway.core.manifest import Manifest, ManifestTrust
from gateway.core.offer import Offer, make_offer, sever_sbom
from gateway.core.semver import Version
from gateway.ingest.broker_config import BrokerConfig
from gateway.ingest.mqtt import MqttClient
from gateway.ingest.topics import (
    EVENT_FILTER,
    MANUFACTURER_FILTER,
    command_topic,
)
from gateway.store.db import Database
from gateway.store.manifests import load_manifest_trust

REPO = Path(__file__).resolve().parents[1]
MANIFEST_TRUST = REPO / "firmware_manifests" / "trust"


def _key(path: Path) -> PrivateKey:
    key = load_pem_private_key(path.read_bytes(), password=None)
    assert not isinstance(key, str)
    return key  # type: ignore[return-value]


def run_naive(args: argparse.Namespace) -> None:
    """One client, one FIFO queue, one worker: urgent manifests wait behind routine events."""
    from bench._ingest_consumers import _naive_store  # noqa: PLC0415

    broker = BrokerConfig.load(args.broker)
    store = _naive_store(args.db, args.trust)
    trust = load_manifest_trust(MANIFEST_TRUST)
    key = _key(args.key)
    db = Database(args.db)
    inbox: queue.SimpleQueue[tuple[str, bytes, int, int]] = queue.SimpleQueue()
    client = MqttClient(
        broker.client("gateway-routine"),
        host=broker.host,
        port=args.port,
        on_message=lambda t, p, tag, q, _props: inbox.put((t, p, tag, q)),
        session_expiry=0,
        receive_maximum=1000,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    client.connect()
    client.subscribe(EVENT_FILTER)
    client.subscribe(MANUFACTURER_FILTER)
    print("ready", flush=True)
    try:
        while not stop.is_set():
            try:
                batch = [inbox.get(timeout=0.1)]
            except queue.Empty:
                continue
            deadline = time.monotonic() + 0.020
            while len(batch) < 500 and (left := deadline - time.monotonic()) > 0:
                try:
                    batch.append(inbox.get(timeout=left))
                except queue.Empty:
                    break
            events = [m for m in batch if "/evt/" in m[0]]
            if events:
                store(events)
            for topic, payload, _, _ in batch:
                if topic.endswith("/manifest"):
                    _naive_offer(db, client, trust, key, payload)
            for _, _, tag, qos in batch:
                client.ack(tag, qos)
    finally:
        client.disconnect()


def _naive_offer(
    db: Database, client: MqttClient, trust: ManifestTrust, key: PrivateKey, data: bytes
) -> None:
    now = datetime.now(UTC)
    try:
        manifest = Manifest.from_bytes(
            data, trust=trust, state={}, now=now, check_sbom_quality=False
        )
    except VerificationError:
        return
    fields = manifest.fields
    wanted = Version.parse(fields.version)
    rows = db.query(
        "SELECT device_id, site, version FROM inventory WHERE vendor = ? AND class = ?",
        (fields.vendor.bytes, fields.class_id.bytes),
    )
    severed = sever_sbom(data)
    for device, site, version in rows:
        if version is None or Version.parse(version, strict=False) < wanted:
            offer = Offer(device, severed, 1, int(now.timestamp() * 1000))
            client.publish(command_topic(site, device), make_offer(offer, key))


def run_flood(args: argparse.Namespace) -> None:
    from bench.bench_ingest import Plan, presign  # noqa: PLC0415
    from device_sim.fleet import ClientPool, device_credentials  # noqa: PLC0415
    from device_sim.pki import load_devices  # noqa: PLC0415

    broker = BrokerConfig.load(args.broker)
    # The receiving devices (Volara pumps) keep their own sessions: one client id, one session.
    records = [r for r in load_devices(args.pki) if r.model != "Volara LVP 3"][: args.devices]
    work = presign(args.pki, records, Plan(args.devices, 1, args.count, 1, 0))
    pool = ClientPool(broker.host, args.port, max_inflight=200)
    for r in records:
        pool.add(device_credentials(args.pki, broker, r.id))
    pool.connect_all(parallel=4)
    acked = [0]
    pool._on_ack = lambda *_: acked.__setitem__(0, acked[0] + 1)  # noqa: SLF001
    print("ready", flush=True)
    while line := sys.stdin.readline():
        # "RATE SECONDS": publish at RATE per second (0: as fast as PUBACKs allow) for SECONDS.
        rate_text, seconds_text = line.split()
        msgs = work.enrol + work.slices[0]
        rate = float(rate_text) or float("inf")
        if rate != float("inf"):
            msgs = msgs[: int(rate * float(seconds_text))]
        sent = 0
        base = acked[0]
        start = time.monotonic()
        while sent < len(msgs):
            elapsed = time.monotonic() - start
            due = len(msgs) if rate == float("inf") else min(len(msgs), int(elapsed * rate) + 1)
            while sent < due and sent - (acked[0] - base) < 4000:
                m = msgs[sent]
                pool.publish(m.index, m.topic, m.payload)
                sent += 1
            pool.poll(0.001)
        while acked[0] - base < sent and time.monotonic() - start < 120:
            pool.poll(0.01)
        print(f"sent {sent} {time.monotonic() - start:.3f}", flush=True)
    pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["naive", "flood"])
    parser.add_argument("--db", type=Path)
    parser.add_argument("--broker", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", type=Path)
    parser.add_argument("--trust", type=Path)
    parser.add_argument("--pki", type=Path)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--count", type=int, default=10_000)
    args = parser.parse_args()
    modes = {"naive": run_naive, "flood": run_flood}
    modes[args.mode](args)


if __name__ == "__main__":
    main()
