from __future__ import annotations

import hashlib
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.errors import SignatureError
from gateway.store.db import Database, gateway_migrations, in_list, padded
from gateway.store.devices import DeviceStore
from gateway.store.events import EventRecord, EventStore, QuarantineRecord, signed_payload
from tests._helpers import cose_signed


def record(device: str = "pump-1", seq: int = 0, raw: bytes | None = None) -> EventRecord:
    return EventRecord(
        device_id=device,
        seq=seq,
        type="maintenance",
        event_time_ms=1_700_000_000_000 + seq,
        received_ms=1_700_000_000_500 + seq,
        site="site-a",
        topic=f"provgw/v1/site-a/dev/{device}/evt/maintenance",
        raw=raw if raw is not None else cose_signed(f"cbor:{device}:{seq}".encode()),
    )


def refused(marker: str = "x", reason: str = "bad-signature") -> QuarantineRecord:
    return QuarantineRecord(
        received_ms=1,
        topic="provgw/v1/site-a/dev/pump-9/evt/custody",
        raw=marker.encode(),
        reason=reason,
        detail="The signature does not verify.",
        device_hint="pump-9",
    )


@pytest.fixture
def store(db):
    return EventStore(db)


def test_batch_insert_stores_every_record_with_its_row_id(store):
    batch = [record(seq=s) for s in range(5)] + [record("monitor-2", 0)]
    result = store.insert_batch(batch)
    assert len(result.stored) == 6
    assert result.duplicates == 0
    assert result.conflicts == []
    assert store.count() == 6
    for row_id, rec in zip(result.stored, batch, strict=True):
        stored = store.by_id(row_id)
        assert stored is not None
        assert (stored.device_id, stored.seq, stored.raw) == (rec.device_id, rec.seq, rec.raw)
        assert stored.payload == f"cbor:{rec.device_id}:{rec.seq}".encode()  # read from raw
        assert (stored.type, stored.site, stored.topic) == (rec.type, rec.site, rec.topic)
        assert (stored.event_time_ms, stored.received_ms) == (rec.event_time_ms, rec.received_ms)


def test_the_payload_is_read_from_the_signed_bytes_and_an_erased_row_has_none(store, db):
    # The store keeps one copy of an event, the COSE bytes received: what readers get as its
    # payload is what the device signed, so no unsigned copy can disagree with the log's digest.
    signed = cose_signed(b"\xa1\x61v\x01")
    stored_id = store.insert_batch([record(raw=signed)]).stored[0]
    assert "payload" not in {row[1] for row in db.conn.execute("PRAGMA table_info(events)")}
    assert store.by_id(stored_id).payload == b"\xa1\x61v\x01"
    db.conn.execute("UPDATE events SET raw = x'' WHERE id = ?", (stored_id,))  # as erasure does
    assert store.by_id(stored_id).payload == b""
    assert signed_payload(b"not a COSE message") == b""
    assert signed_payload(signed[:-1]) == b""  # truncated: no payload, never a guess


def test_a_database_from_before_0014_keeps_its_events_and_reads_their_payload_from_raw(tmp_path):
    # Upgrading drops the payload column; nothing stored is lost, and what readers get as the
    # payload is still the event the device signed.
    before = gateway_migrations().before("0014_events_payload_from_raw")
    path = tmp_path / "gateway.sqlite3"
    signed = cose_signed(b"\xa1\x61v\x02")
    with Database(path, migrations=before) as old:
        old.conn.execute(
            "INSERT INTO events (device_id, seq, type, event_time_ms, received_ms, site, topic,"
            " raw, digest, payload, salt) VALUES ('pump-1', 1, 'maintenance', 1, 2, 's', 't', ?,"
            " ?, ?, ?)",
            (signed, hashlib.sha256(signed).digest(), b"\xa1\x61v\x02", b"\0" * 32),
        )
    with Database(path) as db:
        stored = EventStore(db).get("pump-1", 1)
        columns = {row[1] for row in db.conn.execute("PRAGMA table_info(events)")}
    assert stored is not None
    assert (stored.raw, stored.payload) == (signed, b"\xa1\x61v\x02")
    assert "payload" not in columns


def test_row_ids_keep_growing_across_batches(store):
    first = store.insert_batch([record(seq=s) for s in range(3)])
    second = store.insert_batch([record(seq=s) for s in range(3, 6)])
    assert first.stored + second.stored == sorted(first.stored + second.stored)
    assert len(set(first.stored + second.stored)) == 6


def test_digest_is_sha256_of_the_exact_bytes_and_each_salt_is_fresh(store):
    store.insert_batch([record(seq=0), record(seq=1)])
    a, b = store.history("pump-1")
    assert a.digest == hashlib.sha256(a.raw).digest()
    assert a.salt is not None
    assert b.salt is not None
    assert len(a.salt) == 32
    assert a.salt != b.salt


def test_redelivered_batch_stores_nothing_new_and_counts_duplicates(store):
    batch = [record(seq=s) for s in range(10)]
    store.insert_batch(batch)
    again = store.insert_batch(batch)
    assert again.stored == []
    assert again.duplicates == 10
    assert again.conflicts == []
    assert store.count() == 10
    assert store.quarantine_counts() == {}


def test_lookups_of_every_batch_size_share_few_statements_and_find_every_duplicate(db, store):
    # One statement per batch size would keep up to 128 large ones prepared (gateway.store.db.
    # padded): the sizes are padded to powers of two, the padding matching nothing.
    shapes: set[int] = set()

    def trace(sql: str) -> None:  # the expanded SQL: one "(...)" of values a pair
        if sql.startswith("WITH k(d, s) AS (VALUES"):
            shapes.add(sql.partition(") SELECT")[0].count("),(") + 1)

    db.conn.set_trace_callback(trace)
    seq = 0
    for size in range(1, 41):
        batch = [record(seq=seq + i) for i in range(size)]
        seq += size
        assert len(store.insert_batch(batch).stored) == size
        assert store.insert_batch(batch).duplicates == size
    assert shapes == {1, 2, 4, 8, 16, 32, 64}
    assert store.count() == seq


@pytest.mark.parametrize(("count", "size"), [(0, 0), (1, 1), (2, 2), (3, 4), (5, 8), (400, 512)])
def test_padded_fills_to_the_next_power_of_two_and_keeps_the_values_first(count, size):
    values = list(range(count))
    out = padded(values, fill=-1)
    assert len(out) == size
    assert out[:count] == values
    assert out[count:] == [-1] * (size - count)


def test_in_list_marks_match_its_padded_parameters_and_the_padding_matches_no_row(db):
    marks, params = in_list([3, 1, 2])
    assert (marks, params) == ("?,?,?,?", [3, 1, 2, None])
    sql = f"SELECT value FROM json_each('[1, 2, 5]') WHERE value IN ({marks})"  # noqa: S608
    rows = db.conn.execute(sql, params)
    assert sorted(v for (v,) in rows) == [1, 2]
    assert in_list([]) == ("", [])


def test_replayed_seq_with_other_bytes_is_quarantined_as_replay_and_first_kept(store):
    original = record(seq=7, raw=b"original")
    store.insert_batch([original])
    forged = record(seq=7, raw=b"forged")
    result = store.insert_batch([forged, record(seq=8)])
    assert len(result.stored) == 1
    assert [rec for rec, _ in result.conflicts] == [forged]
    assert "sequence number 7" in result.conflicts[0][1]
    kept = store.get("pump-1", 7)
    assert kept is not None
    assert kept.raw == b"original"
    assert store.quarantine_counts() == {"replay": 1}
    (row,) = store.quarantine_rows(reason="replay")
    assert (row.raw, row.device_hint, row.topic) == (b"forged", "pump-1", forged.topic)
    assert row.detail == result.conflicts[0][1]


def test_repeats_inside_one_batch_are_judged_against_their_first_occurrence(store):
    result = store.insert_batch(
        [record(seq=1, raw=b"a"), record(seq=1, raw=b"a"), record(seq=1, raw=b"b")]
    )
    assert len(result.stored) == 1
    assert result.duplicates == 1
    assert [rec.raw for rec, _ in result.conflicts] == [b"b"]
    assert store.count() == 1
    assert store.quarantine_counts() == {"replay": 1}


def test_same_seq_on_two_devices_is_not_a_conflict(store):
    result = store.insert_batch([record("pump-1", 3), record("pump-2", 3)])
    assert len(result.stored) == 2
    assert result.conflicts == []


def test_quarantined_input_is_stored_with_the_batch(store):
    result = store.insert_batch([record(seq=0)], [refused("a"), refused("b", reason="schema")])
    assert len(result.stored) == 1
    assert store.quarantine_counts() == {"bad-signature": 1, "schema": 1}


def test_failed_batch_stores_neither_events_nor_quarantine(store):
    # seq -1 violates the table's CHECK: the whole batch, quarantine rows included, is undone.
    with pytest.raises(sqlite3.IntegrityError):
        store.insert_batch([record(seq=0), record(seq=-1)], [refused()])
    assert store.count() == 0
    assert store.quarantine_counts() == {}


def test_batch_of_only_quarantine_rows_is_stored(store):
    result = store.insert_batch([], [refused()])
    assert result.stored == []
    assert store.quarantine_counts() == {"bad-signature": 1}


def test_history_is_in_seq_order_and_only_for_that_device(store):
    store.insert_batch([record(seq=s) for s in (5, 1, 3)] + [record("other", 2)])
    assert [e.seq for e in store.history("pump-1")] == [1, 3, 5]
    assert store.history("nobody") == []
    assert store.get("pump-1", 2) is None
    assert store.by_id(10_000) is None


def test_history_newest_n_keeps_seq_order_and_count_covers_all(store):
    store.insert_batch([record(seq=s) for s in (5, 1, 3, 9, 7)] + [record("other", 2)])
    assert [e.seq for e in store.history("pump-1", newest=2)] == [7, 9]
    assert [e.seq for e in store.history("pump-1", newest=10)] == [1, 3, 5, 7, 9]
    assert store.count_for("pump-1") == 5
    assert store.count_for("nobody") == 0


def test_quarantine_rows_are_newest_first_filterable_and_pageable(store):
    store.insert_batch(
        [], [refused(str(i), reason="schema" if i % 2 else "oversize") for i in range(7)]
    )
    newest = store.quarantine_rows(limit=3)
    assert [r.raw for r in newest] == [b"6", b"5", b"4"]
    older = store.quarantine_rows(limit=3, before_id=newest[-1].id)
    assert [r.raw for r in older] == [b"3", b"2", b"1"]
    assert [r.raw for r in store.quarantine_rows(reason="schema")] == [b"5", b"3", b"1"]
    assert store.quarantine_rows(device_hint="pump-1") == []
    assert len(store.quarantine_rows(device_hint="pump-9")) == 7
    assert store.quarantine_counts() == {"schema": 3, "oversize": 4}


def test_quarantine_record_from_error_keeps_reason_and_sentence():
    error = SignatureError("The signature does not verify over the bytes received.")
    q = QuarantineRecord.from_error(error, received_ms=5, topic="t", raw=b"r", device_hint="d")
    assert (q.reason, q.detail, q.device_hint) == ("bad-signature", error.message, "d")


def test_quarantine_record_keeps_at_most_keep_bytes_and_names_the_whole_digest():
    error = SignatureError("The signature does not verify over the bytes received.")
    raw = bytes(range(256)) * 40  # 10,240 bytes
    q = QuarantineRecord.from_error(error, received_ms=5, topic="t", raw=raw, keep_bytes=1000)
    assert q.raw == raw[:1000]
    assert q.detail.startswith(error.message)
    assert (
        f"first 1,000 of 10,240 bytes (SHA-256 of all of them: {hashlib.sha256(raw).hexdigest()})"
        in (q.detail)
    )
    whole = QuarantineRecord.from_error(
        error, received_ms=5, topic="t", raw=raw[:1000], keep_bytes=1000
    )
    assert (whole.raw, whole.detail) == (raw[:1000], error.message)  # at the cap: kept whole


def test_enrolled_device_last_seq_follows_the_highest_stored_seq(db, store):
    devices = DeviceStore(db)
    devices.enrol(
        device_id="pump-1", manufacturer="acme", kid=b"k1", cert=b"der", chain=[], now_ms=0
    )
    store.insert_batch([record(seq=4), record(seq=9), record("not-enrolled", 1)])
    assert devices.last_seq("pump-1") == 9
    store.insert_batch([record(seq=2)])  # late arrival: the high-water mark does not go back
    assert devices.last_seq("pump-1") == 9
    assert devices.last_seq("not-enrolled") is None


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(
                st.sampled_from(["a", "b"]), st.integers(0, 6), st.sampled_from([b"x", b"y"])
            ),
            max_size=8,
        ),
        max_size=5,
    )
)
def test_any_mix_of_batches_stores_each_pair_once_with_its_first_bytes(batches):
    with tempfile.TemporaryDirectory() as folder, Database(Path(folder) / "gw.sqlite3") as db:
        store = EventStore(db)
        first: dict[tuple[str, int], bytes] = {}
        duplicates = conflicts = 0
        for batch in batches:
            result = store.insert_batch([record(d, s, raw) for d, s, raw in batch])
            duplicates += result.duplicates
            conflicts += len(result.conflicts)
            for d, s, raw in batch:
                first.setdefault((d, s), raw)
        assert store.count() == len(first)
        for (d, s), raw in first.items():
            stored = store.get(d, s)
            assert stored is not None
            assert stored.raw == raw
        total = sum(len(b) for b in batches)
        assert len(first) + duplicates + conflicts == total
        assert store.quarantine_counts().get("replay", 0) == conflicts
