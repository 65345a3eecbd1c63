"""`partitioned` mode: one MQTT receiver deals devices to verifier processes, acks after commit."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from device_sim.events import SimDevice, make_event
from gateway.core.errors import UnavailableError
from gateway.ingest.topics import event_topic
from gateway.service.receiver import lane_of

SITE = "ward-7"


def test_one_device_always_goes_to_the_same_verifier_and_devices_spread():
    devices = [f"09506000134352-D{i}" for i in range(200)]
    lanes = {d: lane_of(event_topic(SITE, d, "custody"), 2) for d in devices}
    for d in devices:  # whatever the event type or site: its events stay in order in one process
        assert lane_of(event_topic("icu", d, "maintenance"), 2) == lanes[d]
    assert 60 < sum(lanes.values()) < 140
    assert lane_of("provgw/v1/not-an-event", 2) == 0  # quarantined by verifier 0
    assert {lane_of(event_topic(SITE, d, "custody"), 1) for d in devices} == {0}


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text(encoding="ascii")
    return [int(p) for p in text.split()]


def _count(db_path) -> int:
    try:
        with sqlite3.connect(db_path) as conn:
            return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


@pytest.mark.broker
@pytest.mark.timeout(90)
def test_a_killed_verifier_loses_no_acknowledged_event_and_stores_none_twice(
    gateway_site, site_broker, serve_gateway
):
    rng = random.Random(21)
    now_ms = int(time.time() * 1000)
    today = datetime.now(UTC).date()
    devices = gateway_site.devices[:4]
    per_device = 300
    messages = {}
    for device_id in devices:
        sim = SimDevice.load(gateway_site.pki, device_id)
        messages[device_id] = [
            sim.sign(
                make_event(device_id, "custody", seq, now_ms + seq, rng, today=today),
                with_chain=seq == 1,
            )
            for seq in range(1, per_device + 1)
        ]
    acked: dict[tuple[str, int], bytes] = {}
    lock = threading.Lock()

    def publish(device_id: str) -> None:
        with site_broker.device(device_id) as pub:
            for seq, raw in enumerate(messages[device_id], start=1):
                while True:
                    try:
                        pub.publish(event_topic(SITE, device_id, "custody"), raw, timeout=2)
                        break
                    except UnavailableError:
                        time.sleep(0.1)
                with lock:
                    acked[(device_id, seq)] = hashlib.sha256(raw).digest()
                time.sleep(0.002)

    gateway = serve_gateway(gateway_site, site_broker, workers=2)
    db_path = gateway.status["database"]
    (receiver,) = gateway.status["worker_pids"]
    verifiers = _children(receiver)
    assert len(verifiers) == 2
    threads = [threading.Thread(target=publish, args=(d,), daemon=True) for d in devices]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while _count(db_path) < 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(verifiers[0], signal.SIGKILL)  # mid-stream: batches in flight on both verifiers
    with lock:
        assert len(acked) < len(devices) * per_device, "the kill must land during ingest"
    for t in threads:
        t.join(40)
    assert len(acked) == len(devices) * per_device
    deadline = time.monotonic() + 30
    while _count(db_path) < len(acked) and time.monotonic() < deadline:
        time.sleep(0.05)
    stopped = gateway.stop()
    assert stopped["events_stored"] == len(acked)
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT device_id, seq, digest FROM events").fetchall()
        quarantined = conn.execute("SELECT count(*) FROM quarantine").fetchone()[0]
    assert {(d, s): bytes(g) for d, s, g in rows} == acked  # all of them, each once, exact bytes
    assert quarantined == 0  # the redelivered batches were absorbed as duplicates
    assert "died" in gateway.log()  # the receiver noticed and was restarted
