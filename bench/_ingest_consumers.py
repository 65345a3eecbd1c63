"""The baselines of ``bench_ingest``, each run as its own process like the gateway.

``python -m bench._ingest_consumers {raw,raw-lean,naive} --broker DIR --port P --db FILE
--trust DIR``

* ``raw``: paho (the project's adapter, manual ack) -> SQLite batch -> ack. No decoding, no
  verification: the ceiling that broker, paho and SQLite allow one process (issue 3's baseline a).
* ``raw-lean``: the same with the gateway receiver's own MQTT client
  (:class:`~gateway.ingest.lean.LeanSubscriber`) instead of paho: what storing without verifying
  costs once paho's receive path is gone -- the honest ceiling for the gateway's receive side.
* ``naive``: the ``raw`` loop with the gateway's verification inline: paho -> COSE + X.509 +
  schema (``verify_device_message``) -> ``EventStore.insert_batch`` -> ack, in ONE process.

All batch like the gateway (500 messages or 20 ms after the first, whichever comes first), ack
a batch's messages in one write only after its COMMIT, and print ``ready`` once subscribed.
SIGTERM stops.
"""

from __future__ import annotations

import argparse
import hashlib
import queue
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.core.errors import VerificationError
from gateway.core.identity import DeviceRegistry
from gateway.core.messages import verify_device_message
from gateway.ingest.broker_config import BrokerConfig
from gateway.ingest.lean import LeanSubscriber
from gateway.ingest.mqtt import MqttClient
from gateway.ingest.topics import EVENT_FILTER, EventTopic, parse_topic
from gateway.store.db import Database
from gateway.store.events import EventRecord, EventStore, QuarantineRecord
from gateway.store.trust_files import load_trust_dir

BATCH_MAX = 500
BATCH_S = 0.020
RECEIVE_MAXIMUM = 1000  # what the gateway announces by default (2 x batch_max)

Delivery = tuple[str, bytes, int, int]  # topic, payload, delivery tag, qos


def _raw_store(db_path: Path) -> Callable[[list[Delivery]], None]:
    conn = sqlite3.connect(db_path, isolation_level=None)
    # The gateway's settings (gateway.store.db): WAL, synchronous=NORMAL.
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, topic TEXT NOT NULL,"
        " raw BLOB NOT NULL, digest BLOB NOT NULL, received_ms INTEGER NOT NULL)"
    )

    def store(batch: list[Delivery]) -> None:
        now_ms = int(time.time() * 1000)
        rows = [(t, p, hashlib.sha256(p).digest(), now_ms) for t, p, _, _ in batch]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO events (topic, raw, digest, received_ms) VALUES (?,?,?,?)", rows
        )
        conn.execute("COMMIT")

    return store


def _naive_store(db_path: Path, trust_dir: Path) -> Callable[[list[Delivery]], None]:
    db = Database(db_path)
    events = EventStore(db)
    trust = load_trust_dir(trust_dir)
    registry = DeviceRegistry()
    # Started again for each round of the contest (bench_ingest): the devices this file holds
    # enrolled are learnt again from their enrolment messages, as of when each arrived.
    enrolled = db.query("SELECT topic, raw, received_ms FROM events WHERE seq = 1 ORDER BY id")
    for topic, payload, received_ms in enrolled:
        where = parse_topic(topic)
        assert isinstance(where, EventTopic)  # stored, so it parsed
        when = datetime.fromtimestamp(received_ms / 1000, UTC)
        verify_device_message(
            payload, trust=trust, registry=registry, now=when, topic_device=where.device
        )

    def store(batch: list[Delivery]) -> None:
        now = datetime.now(UTC)
        now_ms = int(now.timestamp() * 1000)
        records: list[EventRecord] = []
        refused: list[QuarantineRecord] = []
        for topic, payload, _, _ in batch:
            try:
                where = parse_topic(topic)
                if not isinstance(where, EventTopic):
                    continue
                verified = verify_device_message(
                    payload, trust=trust, registry=registry, now=now, topic_device=where.device
                )
            except VerificationError as err:
                refused.append(
                    QuarantineRecord.from_error(err, received_ms=now_ms, topic=topic, raw=payload)
                )
                continue
            event = verified.event
            records.append(
                EventRecord(
                    device_id=verified.device_id,
                    seq=event.seq,
                    type=event.type,
                    event_time_ms=event.time_ms,
                    received_ms=now_ms,
                    site=where.site,
                    topic=topic,
                    raw=payload,
                )
            )
        events.insert_batch(records, refused)

    return store


def consume(kind: str, args: argparse.Namespace) -> None:
    """Subscribe, then batch -> store -> ack until SIGTERM."""
    store = _naive_store(args.db, args.trust) if kind == "naive" else _raw_store(args.db)
    inbox: queue.SimpleQueue[Delivery] = queue.SimpleQueue()

    def on_message(topic: str, payload: bytes, tag: int, qos: int, _props: dict[str, Any]) -> None:
        inbox.put((topic, payload, tag, qos))

    creds = BrokerConfig.load(args.broker).client(args.client_id)
    # raw-lean: the gateway receiver's own MQTT client, for the receive cost without paho's.
    client = (LeanSubscriber if kind == "raw-lean" else MqttClient)(
        creds,
        host=args.host,
        port=args.port,
        on_message=on_message,
        session_expiry=0,  # nothing lingers on the broker for the next contestant
        receive_maximum=RECEIVE_MAXIMUM,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    client.connect()
    client.subscribe(EVENT_FILTER)
    print("ready", flush=True)
    try:
        while not stop.is_set():
            try:
                first = inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            batch = [first]
            deadline = time.monotonic() + BATCH_S
            while len(batch) < BATCH_MAX:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    batch.append(inbox.get(timeout=left))
                except queue.Empty:
                    break
            store(batch)
            # Acknowledged only after COMMIT (MQTT 5 §4.3.2): a crash before loses nothing. One
            # write for the batch's PUBACKs, as the gateway's receiver does.
            client.ack_many((tag, qos) for _, _, tag, qos in batch)
    finally:
        client.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=["raw", "raw-lean", "naive"])
    parser.add_argument("--broker", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--trust", type=Path, required=True)
    parser.add_argument("--client-id", default="gateway-admin")
    args = parser.parse_args()
    consume(args.kind, args)
    sys.exit(0)


if __name__ == "__main__":
    main()
