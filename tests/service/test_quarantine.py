"""Recovering from refusals: retrying the quarantine, the trust folder read again, the budget.

Real SQLite files and the demo PKI: a gateway whose trust folder lacks one manufacturer's root
quarantines that maker's devices; with the root added, a retry stores their events.
"""

from __future__ import annotations

import logging
import random
import shutil
import sqlite3
import time
from datetime import UTC, datetime

import pytest

from device_sim.events import SimDevice, make_event
from device_sim.pki import init_pki, load_devices
from gateway.core.errors import UnavailableError, UntrustedSignerError
from gateway.ingest.topics import event_topic
from gateway.service.ingest import HOUR_MS, Delivery, IngestPipeline, StoreBackedRegistry
from gateway.service.quarantine import ALREADY_STORED, REFUSED, STORED, retry_quarantined
from gateway.store.db import Database
from gateway.store.devices import DeviceStore
from gateway.store.events import EventStore
from gateway.store.trust_files import TrustFolder, load_trust_dir
from tests.service.test_ledger_service import (
    FAST_LOG,
    Fleet,
    cosigned_head_covers,
    events,
    provgw,
    query,
    wait_for,
)

DAY_MS = 86_400_000


def _no_ack(_tag, _qos):
    return None


class Site:
    """The session's demo site, a trust folder without one device's maker, and a database."""

    def __init__(self, pki, tmp_path) -> None:
        records = {r.id: r for r in load_devices(pki)}
        self.device, *others = records
        self.other = next(
            d
            for d in others
            if records[d].manufacturer_slug != records[self.device].manufacturer_slug
        )
        maker = records[self.device].manufacturer_slug
        self.partial = tmp_path / "trust-partial"
        shutil.copytree(pki / "trust", self.partial)
        for path in self.partial.glob(f"{maker}.*"):
            path.unlink()
        self.full = load_trust_dir(pki / "trust")
        self.path = tmp_path / "gateway.sqlite3"
        self.pki = pki
        self.rng = random.Random(7)
        self.seq: dict[str, int] = {}

    def message(self, device, *, received_ms=None, event_ms=None, kind="maintenance"):
        """The device's next event as a delivery, with its chain on its first one."""
        seq = self.seq[device] = self.seq.get(device, 0) + 1
        received_ms = received_ms or int(time.time() * 1000)
        event = make_event(
            device,
            kind,
            seq,
            event_ms or received_ms - 1_000,
            self.rng,
            today=datetime.fromtimestamp(received_ms / 1000, tz=UTC).date(),
        )
        raw = SimDevice.load(self.pki, device).sign(event, with_chain=seq == 1)
        return Delivery(event_topic("icu", device, kind), raw, seq, 1, received_ms)

    def pipeline(self, db, *, trust=None, clock=None, budget=1000):
        """An ingest pipeline on *db*, with the partial trust folder unless told otherwise."""
        return IngestPipeline(
            db,
            trust or load_trust_dir(self.partial),
            ack=_no_ack,
            enrol_grace_s=0,
            clock=clock or (lambda: datetime.now(UTC)),
            quarantine_per_device_hour=budget,
        )

    def ingest(self, deliveries, **options):
        """Run *deliveries* through a fresh pipeline (one batch); *options* as for pipeline."""
        with Database(self.path) as db:
            return self.pipeline(db, **options).process(deliveries)

    def query(self, sql, params=()):
        with sqlite3.connect(self.path) as conn:
            return conn.execute(sql, params).fetchall()


@pytest.fixture
def site(gateway_site, tmp_path):
    return Site(gateway_site.pki, tmp_path)


def test_a_root_added_later_stores_the_quarantined_events_in_order_and_releases_them(site):
    theirs = [site.message(site.device) for _ in range(3)]  # chain first, then kid-only
    ours = [site.message(site.other)]
    outcome = site.ingest([*theirs, *ours])
    assert outcome.stored == 1
    assert outcome.rejected == {"untrusted-issuer": 1, "unknown-kid": 2}

    with Database(site.path) as db:
        report = retry_quarantined(db, site.full)
        store = EventStore(db)
        assert [r.outcome for r in report.rows] == [STORED] * 3
        assert report.to_json()["ok"] is True
        # Each row became the event of its own bytes, in the order they arrived.
        for row, delivery in zip(report.rows, theirs, strict=True):
            event = store.by_id(row.event_id)
            assert event is not None
            assert (event.raw, event.received_ms) == (delivery.payload, delivery.received_ms)
        assert [e.seq for e in store.history(site.device)] == [1, 2, 3]
        assert store.quarantine_counts() == {}
        assert store.quarantine_counts(released=True) == {"untrusted-issuer": 1, "unknown-kid": 2}
        released = store.quarantine_rows(released=True)
        assert {r.event_id for r in released} == {r.event_id for r in report.rows}
        assert all(r.reason in {"untrusted-issuer", "unknown-kid"} for r in released)
        device = DeviceStore(db).get(site.device)
        assert device is not None
        assert device.enrolled_ms == theirs[0].received_ms  # first seen then, not now
        # Nothing is left to retry.
        assert retry_quarantined(db, site.full).rows == []


def test_a_dry_run_gives_the_same_verdicts_and_writes_nothing(site):
    site.ingest([site.message(site.device) for _ in range(3)])
    before = site.query("SELECT * FROM quarantine"), site.query("SELECT count(*) FROM devices")
    with Database(site.path) as db:
        dry = retry_quarantined(db, site.full, dry_run=True)
    # The kid-only messages pass because the dry run keeps the enrolment it would have made.
    assert [r.outcome for r in dry.rows] == [STORED] * 3
    assert dry.to_json()["dry_run"] is True
    assert site.query("SELECT count(*) FROM events") == [(0,)]
    assert (site.query("SELECT * FROM quarantine"), site.query("SELECT count(*) FROM devices")) == (
        before
    )
    with Database(site.path) as db:
        assert [r.outcome for r in retry_quarantined(db, site.full).rows] == [STORED] * 3


def test_a_message_is_judged_as_of_its_arrival_not_as_of_the_retry(tmp_path):
    # A PKI issued before the messages arrived, 40 days ago; the policy's max age is 30 days.
    now = int(time.time() * 1000)
    arrived = now - 40 * DAY_MS
    pki = tmp_path / "pki"
    init_pki(pki, devices_per_model=1, now=datetime.fromtimestamp(arrived / 1000 - 86_400, UTC))
    site = Site(pki, tmp_path)
    in_time = site.message(site.device, received_ms=arrived, event_ms=arrived - 60_000)
    stale_then = site.message(site.device, received_ms=arrived, event_ms=arrived - 31 * DAY_MS)
    site.ingest([in_time, stale_then], clock=lambda: datetime.fromtimestamp(arrived / 1000, UTC))
    with Database(site.path) as db:
        report = retry_quarantined(db, site.full)
    assert [(r.outcome, r.reason) for r in report.rows] == [(STORED, None), (REFUSED, "stale")]
    assert report.refused == {"stale": 1}
    assert report.to_json()["ok"] is False


def test_a_message_still_refused_stays_open_with_the_reason_it_fails_for_now(site):
    good = site.message(site.device)
    forged = bytearray(good.payload)
    forged[-1] ^= 1  # the last byte of the signature
    site.ingest([Delivery(good.topic, bytes(forged), 1, 1, good.received_ms)])
    with Database(site.path) as db:
        (row,) = retry_quarantined(db, site.full).rows
        store = EventStore(db)
        assert (row.outcome, row.reason, row.event_id) == (REFUSED, "bad-signature", None)
        assert row.detail
        assert store.quarantine_counts() == {"untrusted-issuer": 1}  # why it was first refused
        assert store.count() == 0


def test_a_replay_stays_quarantined_once_and_a_copy_already_stored_only_releases(site):
    first = site.message(site.other)
    site.ingest([first])
    # Another message under a taken seq (a replay), and a copy of the stored event, both in the
    # quarantine (a copy lands there when, say, the trust folder changed between deliveries).
    site.seq[site.other] = 0
    other_bytes = site.message(site.other)
    with Database(site.path) as db:
        stored = EventStore(db).get(site.other, 1)
        assert stored is not None
        db.conn.executemany(
            "INSERT INTO quarantine (received_ms, topic, raw, reason, detail, device_hint)"
            " VALUES (?, ?, ?, 'crl-stale', 'The CRL ran out.', ?)",
            [
                (other_bytes.received_ms, other_bytes.topic, other_bytes.payload, site.other),
                (first.received_ms, first.topic, first.payload, site.other),
            ],
        )
        db.conn.commit()
        replay, copy = retry_quarantined(db, site.full).rows
        store = EventStore(db)
        assert (replay.outcome, replay.reason) == (REFUSED, "replay")
        assert (copy.outcome, copy.event_id) == (ALREADY_STORED, stored.id)
        assert store.count() == 1
        assert store.quarantine_counts() == {"crl-stale": 1}  # no second row for the replay
        assert store.quarantine_counts(released=True) == {"crl-stale": 1}


def test_an_event_is_never_stored_without_its_row_released(site):
    # The insert and the release are one transaction: a failure at the release undoes both.
    site.ingest([site.message(site.device)])
    with Database(site.path) as db:
        db.conn.execute(
            "CREATE TEMP TRIGGER no_release BEFORE UPDATE ON quarantine"
            " BEGIN SELECT RAISE(ABORT, 'disk trouble'); END"
        )
        with pytest.raises(sqlite3.IntegrityError, match="disk trouble"):
            retry_quarantined(db, site.full)
        assert EventStore(db).count() == 0
        assert DeviceStore(db).get(site.device) is None
        db.conn.execute("DROP TRIGGER no_release")
        assert [r.outcome for r in retry_quarantined(db, site.full).rows] == [STORED]


def test_the_selection_by_id_reason_and_device(site):
    site.ingest([*(site.message(site.device) for _ in range(2)), _garbage(site.other)])
    with Database(site.path) as db:
        ids = [r.id for r in EventStore(db).quarantine_rows()][::-1]
        assert [
            r.id for r in retry_quarantined(db, site.full, dry_run=True, ids=[ids[1]]).rows
        ] == [ids[1]]
        by_reason = retry_quarantined(db, site.full, dry_run=True, reason="unknown-kid")
        assert [r.id for r in by_reason.rows] == [ids[1]]
        by_device = retry_quarantined(db, site.full, dry_run=True, device=site.other)
        assert [(r.id, r.outcome) for r in by_device.rows] == [(ids[2], REFUSED)]
        progress: list[tuple[int, int]] = []
        retry_quarantined(db, site.full, progress=lambda d, t: progress.append((d, t)))
        assert progress == [(3, 3)]


def _garbage(device):
    return Delivery(event_topic("icu", device, "custody"), b"\xa0", 9, 1, int(time.time() * 1000))


def test_a_retry_records_no_quarantine_of_its_own(site):
    site.ingest([site.message(site.device)])
    with Database(site.path) as db:
        partial = load_trust_dir(site.partial)
        (row,) = retry_quarantined(db, partial).rows
        assert (row.outcome, row.reason) == (REFUSED, "untrusted-issuer")
        assert site.query("SELECT count(*) FROM quarantine") == [(1,)]


@pytest.mark.broker
@pytest.mark.timeout(90)
def test_a_live_gateway_stores_and_logs_what_a_retry_releases(
    gateway_site, site_broker, serve_gateway, tmp_path
):
    # Hospital IT's path: a new maker's devices are refused (its root is missing), the root is
    # added to the trust folder of the running gateway, and the quarantine retried.
    site = Site(gateway_site.pki, tmp_path)
    gateway = serve_gateway(gateway_site, site_broker, workers=2, start=False)
    config = gateway.config.read_text(encoding="utf-8")
    gateway.config.write_text(
        config.replace(str(gateway_site.pki / "trust"), str(site.partial)) + FAST_LOG,
        encoding="utf-8",
    )
    status = gateway.start()
    db_path, key = status["database"], status["ledger"]["log_vkey"]
    fleet = Fleet(site_broker, gateway_site.pki, [site.device, site.other])
    sent = fleet.publish(rounds=3)
    wait_for(lambda: query(db_path, "SELECT count(*) FROM quarantine") == [(3,)], "3 quarantined")
    wait_for(lambda: events(db_path) == 3, "the other maker's 3 events")

    for pem in (gateway_site.pki / "trust").iterdir():  # the missing root (and CRLs) added
        shutil.copy(pem, site.partial / pem.name)
    retried = provgw("quarantine", "retry", "--config", str(gateway.config))
    assert (retried["stored"], retried["still_refused"]) == (3, 0)
    # The device is enrolled now, and the verifiers read the changed folder at their next batch:
    # its next events go straight in, with no restart.
    time.sleep(1.1)  # TrustFolder looks at the folder at most once a second
    more = fleet.publish(rounds=1)
    wait_for(lambda: events(db_path) == sent + more, "every event stored")
    assert "changed: read again" in gateway.log()
    wait_for(lambda: cosigned_head_covers(db_path, sent + more), "a checkpoint of every event")
    verified = provgw("log", "verify", "--db", db_path, "--key", key)
    assert (verified["ok"], verified["events"]) == (True, sent + more)
    assert query(db_path, "SELECT count(*) FROM quarantine WHERE released_ms IS NULL") == [(0,)]
    assert gateway.stop()["quarantined"] == {}


def test_a_chunk_that_lost_a_key_write_race_is_verified_again(site, monkeypatch):
    # A running gateway may enrol the device between the retry's checks and its write: the
    # device-key write then fails, and the chunk is verified again against what the store has.
    site.ingest([site.message(site.device) for _ in range(2)])
    real = StoreBackedRegistry.persist
    calls: list[int] = []

    def lose_once(self):
        calls.append(1)
        if len(calls) == 1:
            raise UntrustedSignerError("raced", reason="key-conflict")
        real(self)

    monkeypatch.setattr(StoreBackedRegistry, "persist", lose_once)
    with Database(site.path) as db:
        report = retry_quarantined(db, site.full)
    assert len(calls) == 2
    assert [r.outcome for r in report.rows] == [STORED, STORED]


def _junk(device, n, received_ms):
    topic = event_topic("icu", device, "custody")
    return [Delivery(topic, b"\xa1junk" + bytes([i]), i, 1, received_ms + i) for i in range(n)]


def test_past_its_budget_a_device_s_refusals_are_counted_not_kept(site, monkeypatch, caplog):
    hour = int(time.time() * 1000) // HOUR_MS * HOUR_MS
    flood, other = _junk(site.device, 12, hour), _junk(site.other, 2, hour)
    with Database(site.path) as db:
        pipeline = IngestPipeline(db, site.full, ack=_no_ack, quarantine_per_device_hour=5)
        # A batch that fails to commit takes nothing of the budget: its retry is judged afresh.
        real = EventStore.insert_batch

        def fail_once(*_args, **_kwargs):
            monkeypatch.setattr(EventStore, "insert_batch", real)
            raise UnavailableError("disk busy", reason="store-busy")

        monkeypatch.setattr(EventStore, "insert_batch", fail_once)
        with pytest.raises(UnavailableError):
            pipeline.process(flood[:4])
        first = pipeline.process(flood[:4])
        with caplog.at_level(logging.WARNING, logger="gateway.service.ingest"):
            second = pipeline.process(flood[4:] + other)
        store = EventStore(db)
        (reason,) = first.rejected
        # Every refusal is counted in the metrics and acknowledged; only 5 of the device's are kept.
        assert first.rejected[reason] + second.rejected[reason] == 14
        assert first.acked + second.acked == 14
        assert len(store.quarantine_rows(device_hint=site.device)) == 5
        assert len(store.quarantine_rows(device_hint=site.other)) == 2  # another device's own
        (over,) = store.quarantine_overflow()
        assert (over.device_hint, over.reason, over.hour_ms, over.messages) == (
            site.device,
            reason,
            hour,
            7,
        )
        assert over.bytes == sum(len(d.payload) for d in flood[5:])
        assert (over.first_ms, over.last_ms) == (hour + 5, hour + 11)
        assert (
            sum(f"device {site.device} is over its quarantine budget" in m for m in caplog.messages)
            == 1
        )
        # The next hour the device has a budget again; the counts add up per hour.
        pipeline.process(_junk(site.device, 6, hour + HOUR_MS))
        assert len(store.quarantine_rows(device_hint=site.device, limit=100)) == 10
        assert [(o.hour_ms, o.messages) for o in store.quarantine_overflow()] == [
            (hour + HOUR_MS, 1),
            (hour, 7),
        ]


@pytest.mark.broker
@pytest.mark.timeout(60)
def test_a_device_flooding_junk_through_the_broker_is_kept_to_its_budget(
    gateway_site, site_broker, serve_gateway
):
    gateway = serve_gateway(
        gateway_site, site_broker, workers=2, ingest_extra="quarantine_per_device_hour = 3\n"
    )
    db_path = gateway.status["database"]
    device = gateway_site.devices[0]
    with site_broker.device(device) as client:
        for i in range(10):
            client.publish(event_topic("icu", device, "custody"), b"\xa1junk" + bytes([i]))
    wait_for(
        lambda: query(db_path, "SELECT sum(messages) FROM quarantine_overflow") == [(7,)],
        "7 refusals counted",
    )
    assert query(db_path, "SELECT count(*) FROM quarantine") == [(3,)]
    assert "is over its quarantine budget" in gateway.log()
    assert gateway.stop()["status"] == "stopped"


def test_a_root_taken_out_of_the_trust_folder_takes_effect_at_the_next_batch(site):
    # The reverse of adding one: a running verifier's key cache must not keep vouching for a
    # device whose root the site removed (or whose certificate a new CRL lists).
    full = site.partial.parent / "trust-full"
    shutil.copytree(site.pki / "trust", full)
    with Database(site.path) as db:
        folder = TrustFolder(full, every_s=0.0)
        pipeline = IngestPipeline(db, folder.store, ack=_no_ack, trust_folder=folder)
        assert pipeline.process([site.message(site.device), site.message(site.device)]).stored == 2
        for pem in full.iterdir():
            if not (site.partial / pem.name).exists():
                pem.unlink()  # the device's maker is no longer trusted
        outcome = pipeline.process([site.message(site.device), site.message(site.other)])
    assert outcome.stored == 1  # the other maker's device
    assert outcome.rejected == {"untrusted-issuer": 1}
