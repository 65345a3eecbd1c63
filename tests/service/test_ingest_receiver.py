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
from typing import TYPE_CHECKING

import pytest

from device_sim.events import SimDevice, make_event
from gateway.core.errors import UnavailableError
from gateway.ingest.topics import event_topic
from gateway.service.receiver import LaneMemo, lane_of
from tests._helpers import stored_count

if TYPE_CHECKING:
    from tests.conftest import ServeProcess

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


def test_the_lane_memo_answers_as_lane_of_and_stays_bounded():
    memo = LaneMemo(3, limit=50)
    topics = [event_topic(SITE, f"dev-{i}", "custody") for i in range(200)] + ["junk", "a/b"]
    for _ in range(2):  # the second pass is answered from memory, or after a restart of it
        assert [memo(t) for t in topics] == [lane_of(t, 3) for t in topics]
        assert len(memo.known) <= 50


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
    while stored_count(db_path) < 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(verifiers[0], signal.SIGKILL)  # mid-stream: batches in flight on both verifiers
    with lock:
        assert len(acked) < len(devices) * per_device, "the kill must land during ingest"
    for t in threads:
        t.join(40)
    assert len(acked) == len(devices) * per_device
    deadline = time.monotonic() + 30
    while stored_count(db_path) < len(acked) and time.monotonic() < deadline:
        time.sleep(0.05)
    stopped = gateway.stop()
    assert stopped["events_stored"] == len(acked)
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT device_id, seq, digest FROM events").fetchall()
        quarantined = conn.execute("SELECT count(*) FROM quarantine").fetchone()[0]
    assert {(d, s): bytes(g) for d, s, g in rows} == acked  # all of them, each once, exact bytes
    assert quarantined == 0  # the redelivered batches were absorbed as duplicates
    assert "died" in gateway.log()  # the receiver noticed and was restarted


def _receiver_and_verifiers(gateway: ServeProcess) -> tuple[int, list[int]]:
    """The pids of a 2-verifier gateway's receiver process and of its verifiers."""
    assert gateway.proc is not None
    receivers = [p for p in _children(gateway.proc.pid) if len(_children(p)) == 2]
    assert len(receivers) == 1
    return receivers[0], _children(receivers[0])


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    msg = f"no VmRSS for {pid}"
    raise AssertionError(msg)


@pytest.mark.broker
@pytest.mark.timeout(120)
def test_a_backlog_released_onto_slow_verifiers_waits_in_the_broker_not_in_the_receiver(
    gateway_site, site_broker, serve_gateway, tmp_path
):
    # Receive Maximum 10 per verifier, 2 verifiers: the receiver's credit counter lets at most
    # 2 x 20 = 40 deliveries in before their acknowledgement. Mosquitto 2.0.11 honours Receive
    # Maximum only until PUBACKs flow; then it sends its whole queue (ADR 0004). So: a backlog
    # queued while the verifiers are stopped, then verifiers that commit (and so acknowledge)
    # slowly, behind a disk that is busy most of the time.
    gateway = serve_gateway(
        gateway_site, site_broker, workers=2, broker_extra="receive_maximum = 10\n"
    )
    receiver, verifiers = _receiver_and_verifiers(gateway)
    device_id = gateway_site.devices[0]
    topic = event_topic(SITE, device_id, "custody")
    db = tmp_path / "gateway.sqlite3"
    flood, size = 900, 60_000  # 54 MB: what the receiver would hold if nothing bounded it

    def quarantined() -> int:
        with sqlite3.connect(db, timeout=30) as conn:
            return int(conn.execute("SELECT count(*) FROM quarantine").fetchone()[0])

    rss_before = _rss(receiver)
    for pid in verifiers:
        os.kill(pid, signal.SIGSTOP)
    try:
        with site_broker.device(device_id) as pub:
            for _ in range(flood // 100):
                batch = [(topic, os.urandom(size)) for _ in range(100)]
                assert pub.publish_many(batch, timeout=30) == [None] * 100  # the broker has them
    finally:
        for pid in verifiers:
            os.kill(pid, signal.SIGCONT)
    busy = threading.Event()

    def busy_disk() -> None:
        # Holds the write lock 0.3 s of every 0.35 s: each verifier commit waits its turn.
        conn = sqlite3.connect(db, timeout=30, isolation_level=None)
        while not busy.is_set():
            conn.execute("BEGIN IMMEDIATE")
            time.sleep(0.3)
            conn.execute("COMMIT")
            time.sleep(0.05)
        conn.close()

    disk = threading.Thread(target=busy_disk, daemon=True)
    disk.start()
    peak = 0
    try:
        until = time.monotonic() + 4
        while time.monotonic() < until:
            peak = max(peak, _rss(receiver) - rss_before)
            time.sleep(0.05)
    finally:
        busy.set()
        disk.join()
    # Bounded, it grows by ~9 MB (40 deliveries, a pickled batch, TLS and read buffers).
    assert peak < 20 * 1024 * 1024, f"the receiver grew by {peak / 2**20:.1f} MB"
    # Then everything comes through, each message decided once: junk is quarantined, not lost.
    deadline = time.monotonic() + 60
    while quarantined() < flood and time.monotonic() < deadline:
        time.sleep(0.2)
    assert quarantined() == flood
    assert stored_count(db) == 0


@pytest.mark.broker
@pytest.mark.timeout(120)
def test_a_flood_of_large_messages_is_bounded_by_bytes_not_only_by_count(
    gateway_site, site_broker, serve_gateway, tmp_path
):
    # Receive Maximum (1,000 a verifier by default) counts messages; the broker accepts packets of
    # up to 8 MiB. 24 junk messages of 3 MiB (72 MiB) fit the count many times over, so only the
    # byte budget (in_flight_mb = 4) keeps them in the broker while the verifiers are stopped.
    gateway = serve_gateway(gateway_site, site_broker, workers=2, ingest_extra="in_flight_mb = 4\n")
    receiver, verifiers = _receiver_and_verifiers(gateway)
    device_id = gateway_site.devices[0]
    topic = event_topic(SITE, device_id, "custody")
    db = tmp_path / "gateway.sqlite3"
    flood, size = 24, 3 * 2**20

    rss_before = _rss(receiver)
    for pid in verifiers:
        os.kill(pid, signal.SIGSTOP)
    peak = 0
    try:
        with site_broker.device(device_id) as pub:
            for _ in range(flood // 4):
                batch = [(topic, os.urandom(size)) for _ in range(4)]
                assert pub.publish_many(batch, timeout=30) == [None] * 4  # the broker has them
                peak = max(peak, _rss(receiver) - rss_before)
        until = time.monotonic() + 3
        while time.monotonic() < until:
            peak = max(peak, _rss(receiver) - rss_before)
            time.sleep(0.05)
    finally:
        for pid in verifiers:
            os.kill(pid, signal.SIGCONT)
    # Bounded: 4 MiB held (+ one message over), a pickled copy on its way to a verifier, a packet
    # being reassembled, TLS buffers: 17 MB measured. Unbounded, it grew by 100 MB.
    assert peak < 30 * 2**20, f"the receiver grew by {peak / 2**20:.1f} MB"
    # Then every message is decided once: each is over the device message limit and quarantined,
    # with its first 64 KiB kept (the flood must not fill the disk through the quarantine).
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with sqlite3.connect(db, timeout=30) as conn:
            rows = conn.execute("SELECT reason, length(raw), detail FROM quarantine").fetchall()
        if len(rows) >= flood:
            break
        time.sleep(0.2)
    assert [(reason, kept) for reason, kept, _ in rows] == [("oversize", 64 * 1024)] * flood
    assert all(f"first 65,536 of {size:,} bytes (SHA-256" in detail for *_, detail in rows)
    assert stored_count(db) == 0
