"""The ingest pipeline without a broker: commit before ack, retries, the device-key cache."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime

import pytest

from device_sim.events import SimDevice, make_event
from gateway.core import cbor, cose
from gateway.core.errors import UnavailableError
from gateway.ingest.topics import event_topic
from gateway.service.ingest import Delivery, IngestPipeline
from gateway.store.db import Database
from gateway.store.devices import DeviceStore
from gateway.store.events import EventStore
from gateway.store.trust_files import load_trust_dir

TODAY = datetime.now(UTC).date()


def _no_ack(_tag, _qos):
    return None


@pytest.fixture
def site(gateway_site, tmp_path):
    rng = random.Random(5)
    device_id = gateway_site.devices[0]
    sim = SimDevice.load(gateway_site.pki, device_id)
    now_ms = int(time.time() * 1000)

    def message(seq, *, with_chain, tag=None):
        event = make_event(device_id, "custody", seq, now_ms + seq, rng, today=TODAY)
        raw = sim.sign(event, with_chain=with_chain)
        return Delivery(event_topic("icu", device_id, "custody"), raw, tag or seq, 1, now_ms)

    return load_trust_dir(gateway_site.pki / "trust"), device_id, message, tmp_path / "g.sqlite3"


def test_acks_are_sent_only_after_the_batch_commits(site):
    trust, _, message, path = site
    with Database(path) as db, Database(path) as observer:
        seen_at_ack: list[int] = []

        def ack(_tag, _qos):
            seen_at_ack.append(EventStore(observer).count())  # another connection's view

        pipeline = IngestPipeline(db, trust, ack=ack)
        batch = [message(1, with_chain=True), message(2, with_chain=False)]
        outcome = pipeline.process(batch)
    assert outcome.stored == 2
    assert seen_at_ack == [2, 2]


def test_a_batch_is_one_transaction_without_savepoints(site):
    # A savepoint makes SQLite copy every page the batch changes into a statement journal (a
    # temporary file past 64 KiB): measured as ~5 % of a verifier's CPU (docs/BENCHMARKS.md).
    trust, _, message, path = site
    with Database(path) as db:
        statements: list[str] = []
        db.conn.set_trace_callback(statements.append)
        pipeline = IngestPipeline(db, trust, ack=_no_ack)
        outcome = pipeline.process([message(1, with_chain=True), message(2, with_chain=False)])
        db.conn.set_trace_callback(None)
    assert outcome.stored == 2
    control = [s.split()[0].upper() for s in statements if s.split()[0].upper() != "SELECT"]
    assert "SAVEPOINT" not in control
    assert control.count("BEGIN") == control.count("COMMIT") == 1


def test_a_failed_commit_acknowledges_nothing_and_the_retry_stores_the_batch(site, monkeypatch):
    trust, device_id, message, path = site
    acked: list[int] = []
    with Database(path) as db:
        pipeline = IngestPipeline(db, trust, ack=lambda tag, _qos: acked.append(tag))
        batch = [message(1, with_chain=True), message(2, with_chain=False)]
        real = EventStore.insert_batch

        def disk_full(self, records, quarantined=(), **kwargs):
            real(self, records, quarantined, **kwargs)  # written, then the transaction fails
            raise UnavailableError("disk full", reason="store-full")

        monkeypatch.setattr(EventStore, "insert_batch", disk_full)
        with pytest.raises(UnavailableError):
            pipeline.process(batch)
        assert acked == []
        assert EventStore(db).count() == 0
        assert DeviceStore(db).get(device_id) is None  # the enrolment rolled back with it
        monkeypatch.setattr(EventStore, "insert_batch", real)
        outcome = pipeline.process(batch)
        assert (outcome.stored, acked) == (2, [1, 2])
        assert DeviceStore(db).get(device_id) is not None


def test_the_stored_payload_is_the_payload_the_device_signed_byte_for_byte(site, gateway_site):
    # Valid CBOR in a non-deterministic form (keys reversed at the top level): the store keeps
    # the raw message as received, and the payload read from it is what was signed, not a
    # re-encoding of the checked event.
    trust, device_id, message, path = site
    sim = SimDevice.load(gateway_site.pki, device_id)
    event = make_event(
        device_id, "custody", 2, int(time.time() * 1000), random.Random(1), today=TODAY
    )
    signed = event.to_cbor()
    reversed_keys = _reversed_keys_cbor(event.to_cbor_map())
    assert reversed_keys != signed  # the test would prove nothing otherwise
    raw = cose.sign1(reversed_keys, sim.key, kid=sim.kid)
    topic = event_topic("icu", device_id, "custody")
    with Database(path) as db:
        pipeline = IngestPipeline(db, trust, ack=_no_ack)
        pipeline.process([message(1, with_chain=True), Delivery(topic, raw, 9, 1, 0)])
        stored = EventStore(db).get(device_id, 2)
    assert stored is not None
    assert stored.raw == raw  # the message as received, not a re-encoding
    assert stored.payload == reversed_keys


def _reversed_keys_cbor(item: dict[str, object]) -> bytes:
    """*item*'s CBOR with its top-level keys in reverse deterministic order."""
    head = bytes([0xA0 | len(item)])
    return head + b"".join(cbor.dumps(k) + cbor.dumps(v) for k, v in reversed(item.items()))


def test_a_redelivered_batch_is_stored_once_and_counted_as_duplicates(site):
    trust, _, message, path = site
    with Database(path) as db:
        pipeline = IngestPipeline(db, trust, ack=_no_ack)
        batch = [message(1, with_chain=True), message(2, with_chain=False)]
        pipeline.process(batch)
        again = pipeline.process(batch)
        assert (again.stored, again.duplicates, again.acked) == (0, 2, 2)
        assert EventStore(db).count() == 2
        assert pipeline.metrics.duplicates._value.get() == 2


def test_kid_only_message_waits_for_the_enrolment_another_worker_commits(site):
    trust, _, message, path = site
    with Database(path) as db_a, Database(path) as db_b:
        worker_a = IngestPipeline(db_a, trust, ack=_no_ack)
        worker_b = IngestPipeline(db_b, trust, ack=_no_ack)
        first, second = message(1, with_chain=True), message(2, with_chain=False)
        early = worker_b.process([second])  # B sees the kid before A enrolled the device
        assert (early.stored, early.deferred, early.acked) == (0, [second], 0)
        worker_a.process([first])
        later = worker_b.process(early.deferred)
        assert (later.stored, later.acked) == (1, 1)


def test_unknown_kid_is_quarantined_once_the_grace_period_is_over(site):
    trust, device_id, message, path = site
    with Database(path) as db:
        pipeline = IngestPipeline(db, trust, ack=_no_ack, enrol_grace_s=0)
        outcome = pipeline.process([message(2, with_chain=False)])
        assert outcome.rejected == {"unknown-kid": 1}
        assert EventStore(db).quarantine_rows()[0].device_hint == device_id


def test_an_enrolment_survives_a_restart_of_the_gateway(site):
    trust, _, message, path = site
    with Database(path) as db:
        IngestPipeline(db, trust, ack=_no_ack).process([message(1, with_chain=True)])
    with Database(path) as db:  # a new process: empty in-memory registry
        outcome = IngestPipeline(db, trust, ack=_no_ack, enrol_grace_s=0).process(
            [message(2, with_chain=False)]
        )
        assert (outcome.stored, outcome.rejected) == (1, {})
