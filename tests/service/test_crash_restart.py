"""Restart safety against the real broker: kill -9 of the gateway, broker restart, offline members.

The publisher waits for each PUBACK and re-sends on failure (the same signed bytes), so "acked"
is exactly the set of events the broker took responsibility for. The gateway must end up storing
exactly that set: nothing acknowledged lost, nothing stored twice.
"""

from __future__ import annotations

import hashlib
import random
import sqlite3
import threading
import time
from datetime import UTC, datetime

import pytest

from device_sim.events import SimDevice, make_event
from gateway.core.errors import UnavailableError
from gateway.ingest.topics import EVENT_FILTER, event_topic
from tests._helpers import alive, stored_count, unit_settings

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]

SITE = "ward-3"
TODAY = datetime.now(UTC).date()
EVENTS_PER_DEVICE = 400
DEVICES = 4
#: deploy/provgw.service's TimeoutStopSec: after it, systemd kills what is left.
_SYSTEMD_STOP_S = float(unit_settings()["TimeoutStopSec"][-1])


class Publisher:
    """Devices publishing pre-signed events in order, one thread each, recording what was acked."""

    def __init__(self, broker, pki, device_ids, per_device, pace=0.0) -> None:
        self.pace = pace
        rng = random.Random(7)
        now_ms = int(time.time() * 1000)
        self.broker = broker
        self.messages: dict[str, list[tuple[int, str, bytes]]] = {}
        for device_id in device_ids:
            sim = SimDevice.load(pki, device_id)
            msgs = []
            for seq in range(1, per_device + 1):
                kind = rng.choice(["maintenance", "custody", "firmware_update"])
                event = make_event(device_id, kind, seq, now_ms + seq, rng, today=TODAY)
                # The chain on first contact, the kid afterwards (DESIGN "Device identity").
                msgs.append((seq, kind, sim.sign(event, with_chain=seq == 1)))
            self.messages[device_id] = msgs
        self.acked: dict[tuple[str, int], bytes] = {}
        self.failures = 0
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(d,), daemon=True) for d in device_ids
        ]

    def _run(self, device_id: str) -> None:
        client = self.broker.device(device_id)
        deadline = time.monotonic() + 40
        while True:
            try:
                client.connect()
                break
            except UnavailableError:
                time.sleep(0.2)
        try:
            for seq, kind, raw in self.messages[device_id]:
                while time.monotonic() < deadline:
                    try:
                        client.publish(event_topic(SITE, device_id, kind), raw, timeout=2)
                    except UnavailableError:
                        with self._lock:
                            self.failures += 1
                        time.sleep(0.1)  # broker away: same bytes again once it is back
                        continue
                    with self._lock:
                        self.acked[(device_id, seq)] = hashlib.sha256(raw).digest()
                    time.sleep(self.pace)
                    break
        finally:
            client.disconnect()

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def join(self, timeout: float = 40) -> None:
        for t in self._threads:
            t.join(timeout)
        assert not any(t.is_alive() for t in self._threads), "publisher did not finish"

    @property
    def total(self) -> int:
        return sum(len(m) for m in self.messages.values())


def _wait_count(db_path, predicate, timeout=30.0) -> int:
    deadline = time.monotonic() + timeout
    n = stored_count(db_path)
    while time.monotonic() < deadline and not predicate(n):
        time.sleep(0.02)
        n = stored_count(db_path)
    return n


def _assert_stored_exactly(db_path, acked):
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT device_id, seq, digest FROM events").fetchall()
        quarantined = conn.execute("SELECT reason, count(*) FROM quarantine GROUP BY reason")
        quarantined = dict(quarantined.fetchall())
    stored = {(d, s): bytes(digest) for d, s, digest in rows}
    assert len(rows) == len(stored)  # (device, seq) unique: nothing stored twice
    assert stored == acked  # every acknowledged event, with the exact bytes, and nothing else
    assert quarantined == {}  # redeliveries were absorbed as duplicates, not replays


def test_kill_9_of_the_gateway_loses_no_acknowledged_event_and_stores_none_twice(
    gateway_site, site_broker, serve_gateway
):
    publisher = Publisher(
        site_broker, gateway_site.pki, gateway_site.devices[:DEVICES], EVENTS_PER_DEVICE
    )
    gateway = serve_gateway(gateway_site, site_broker, workers=2)
    db_path = gateway.status["database"]
    publisher.start()

    # Mid-stream: batches committed, others verified but not committed, acks in flight.
    before = _wait_count(db_path, lambda n: n >= 300)
    assert before < publisher.total, "the kill must land during ingest"
    gateway.kill9()
    at_kill = stored_count(db_path)
    time.sleep(0.5)  # the publisher goes on: the broker queues for both workers' sessions
    gateway.start()

    publisher.join()
    final = _wait_count(db_path, lambda n: n >= len(publisher.acked))
    assert at_kill < final
    assert len(publisher.acked) == publisher.total
    assert final == len(publisher.acked)
    stopped = gateway.stop()
    assert stopped["events_stored"] == publisher.total
    _assert_stored_exactly(db_path, publisher.acked)


@pytest.mark.parametrize("group", [False, True], ids=["supervisor", "every-process"])
def test_a_stop_mid_stream_ends_every_process_and_loses_nothing_acknowledged(
    gateway_site, site_broker, serve_gateway, group
):
    # SIGTERM to `provgw serve` alone is how systemd stops it (deploy/provgw.service,
    # KillMode=mixed) and how `docker stop` does; to every process of the group is systemd's
    # default KillMode and `kill -TERM -- -PGID`. Either way each child commits and acknowledges
    # what it holds, and none is left for the final SIGKILL.
    # Paced (about 800 events/s in all: a 2-s stream) so that the stop lands mid-stream on any
    # host: unpaced, a fast host stored all 1,600 events before the SIGTERM arrived (session 18).
    publisher = Publisher(
        site_broker, gateway_site.pki, gateway_site.devices[:DEVICES], EVENTS_PER_DEVICE, 0.005
    )
    gateway = serve_gateway(gateway_site, site_broker, workers=2)
    db_path = gateway.status["database"]
    assert gateway.proc is not None
    pgid = gateway.proc.pid
    publisher.start()
    _wait_count(db_path, lambda n: n >= 300)
    started = time.monotonic()
    stopped = gateway.stop(timeout=_SYSTEMD_STOP_S, group=group)
    assert stopped["status"] == "stopped"
    assert stopped["events_stored"] < publisher.total, "the stop must land during ingest"
    # multiprocessing's resource tracker leaves once the supervisor's pipe closes: allow it that.
    while time.monotonic() - started < _SYSTEMD_STOP_S and alive(pgid, group=True):
        time.sleep(0.05)
    assert not alive(pgid, group=True)
    gateway.start()
    publisher.join()
    final = _wait_count(db_path, lambda n: n >= len(publisher.acked))
    assert final == len(publisher.acked) == publisher.total
    gateway.stop()
    _assert_stored_exactly(db_path, publisher.acked)


def test_broker_restart_mid_stream_loses_nothing(gateway_site, site_broker, serve_gateway):
    # Paced (about 1,000 events/s in all) so that the restart hits publishers mid-stream too.
    publisher = Publisher(
        site_broker, gateway_site.pki, gateway_site.devices[:DEVICES], EVENTS_PER_DEVICE, 0.003
    )
    gateway = serve_gateway(gateway_site, site_broker, workers=2)
    db_path = gateway.status["database"]
    publisher.start()

    # Mid-stream for both sides: publishers still sending, the gateway storing.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (
        len(publisher.acked) < publisher.total // 3 or stored_count(db_path) < 100
    ):
        time.sleep(0.005)
    site_broker.restart()  # SIGTERM: Mosquitto saves sessions and queues, then starts again
    assert len(publisher.acked) < publisher.total, "the restart must land mid-stream"

    publisher.join()
    final = _wait_count(db_path, lambda n: n >= len(publisher.acked))
    assert final == len(publisher.acked) == publisher.total
    gateway.stop()
    _assert_stored_exactly(db_path, publisher.acked)


def _acking_member(broker, cid: str, sink: list[bytes]):
    """A gateway client that appends every payload to *sink* and acknowledges it at once."""

    def on_message(_topic, payload, mid, qos, _props):
        sink.append(payload)
        client.ack(mid, qos)

    client = broker.client(cid, on_message=on_message, receive_maximum=1000)
    return client


def test_shared_subscription_queues_for_offline_members(gateway_site, site_broker):
    # The measurement behind gateway.service.workers' design: Mosquitto 2.0.11 hands shared-
    # subscription messages round-robin to members whose persistent session is OFFLINE too, and
    # keeps them queued for that member, across a broker restart.
    received: dict[str, list[bytes]] = {"gateway-routine": [], "gateway-routine-2": []}

    def member(cid):
        return _acking_member(site_broker, cid, received[cid])

    for cid in received:
        with member(cid) as client:
            client.subscribe(EVENT_FILTER, share_group="provgw")
    device = gateway_site.devices[0]
    with site_broker.device(device) as pub:
        for i in range(100):
            pub.publish(event_topic(SITE, device, "custody"), b"%d" % i)
    site_broker.restart()

    first = member("gateway-routine")
    first.connect()
    deadline = time.monotonic() + 5
    while len(received["gateway-routine"]) < 50 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    # Only its share: the rest waits for the other member, not redistributed.
    assert len(received["gateway-routine"]) == 50
    assert received["gateway-routine-2"] == []
    with member("gateway-routine-2"):
        while len(received["gateway-routine-2"]) < 50 and time.monotonic() < deadline + 5:
            time.sleep(0.02)
    first.disconnect()
    everything = received["gateway-routine"] + received["gateway-routine-2"]
    assert sorted(everything) == sorted(b"%d" % i for i in range(100))


def test_shared_subscription_drops_what_is_published_before_members_return_after_restart(
    gateway_site, site_broker
):
    # Why ingest.mode defaults to "partitioned": after a broker restart Mosquitto 2.0.11 restores
    # the sessions, but its restored SHARED subscription routes nothing until re-subscribed;
    # meanwhile devices get PUBACK for messages that reach no one. The non-shared subscription
    # of a persistent session keeps queueing across the restart.
    received: dict[str, list[bytes]] = {"gateway-routine": [], "gateway-routine-2": []}
    share = {"gateway-routine": "provgw", "gateway-routine-2": None}

    def member(cid):
        return _acking_member(site_broker, cid, received[cid])

    for cid in received:
        with member(cid) as client:
            client.subscribe(EVENT_FILTER, share_group=share[cid])
    site_broker.restart()
    device = gateway_site.devices[0]
    with site_broker.device(device) as pub:
        for i in range(50):
            pub.publish(event_topic(SITE, device, "custody"), b"%d" % i)  # PUBACKed, all of them
    with member("gateway-routine") as shared_member, member("gateway-routine-2"):
        assert shared_member.session_present
        deadline = time.monotonic() + 5
        while len(received["gateway-routine-2"]) < 50 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
    assert len(received["gateway-routine-2"]) == 50  # non-shared: every message kept
    assert received["gateway-routine"] == []  # shared: all 50 lost


def test_serve_in_shared_mode_warns_of_that_loss(gateway_site, site_broker, serve_gateway):
    # The loss above is the broker's, so the gateway cannot prevent it; it says so at start, in
    # the log and in `--json`'s running status, where an operator or a script sees it. (The
    # shipped partitioned configuration warns of nothing: tests/service/test_deploy.py.)
    shared = serve_gateway(gateway_site, site_broker, workers=2, ingest_extra='mode = "shared"\n')
    assert [w["reason"] for w in shared.status["warnings"]] == ["shared-mode-restart-loss"]
    assert shared.stop()["status"] == "stopped"
    assert 'WARNING ingest.mode = "shared": after a broker restart' in shared.log()
