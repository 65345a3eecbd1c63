from __future__ import annotations

import hashlib
import random
from datetime import UTC, datetime, timedelta

import pytest

from gateway.core import merkle, note
from gateway.core.errors import MalformedError, MismatchError, PolicyError, VerificationError
from gateway.ledger import commitments
from gateway.ledger.keys import GatewayKey
from gateway.ledger.log import TransparencyLog, append_pending, erase_event, verify_log
from gateway.ledger.receipts import issue_receipt
from gateway.service import remediation
from gateway.store.events import EventRecord, EventStore

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
ORIGIN = "provgw.test/log"


def _records(start: int, count: int, device: str = "dev-1") -> list[EventRecord]:
    return [
        EventRecord(device, seq, "maintenance", 0, 0, "site-a", "t", b"signed-%d" % seq)
        for seq in range(start, start + count)
    ]


@pytest.fixture
def key():
    return GatewayKey.generate(ORIGIN)


@pytest.fixture
def log(db, key):
    return TransparencyLog(db, key.signer, ORIGIN)


@pytest.fixture
def store(db):
    return EventStore(db)


# -- commitments ----------------------------------------------------------------------------------


def test_commitment_is_sha256_of_domain_salt_and_digest():
    salt, digest = bytes(range(32)), hashlib.sha256(b"x").digest()
    expected = hashlib.sha256(b"provgw/v1/event\0" + salt + digest).digest()
    assert commitments.commitment("event", salt, digest) == expected
    assert commitments.leaf_for("event", salt, digest) == merkle.leaf_hash(expected)


def test_commitment_domains_separate_record_kinds():
    salt, digest = bytes(32), bytes(32)
    values = {commitments.commitment(kind, salt, digest) for kind in commitments.DOMAINS}
    assert len(values) == len(commitments.DOMAINS)


def test_commitment_refuses_unknown_kind_and_wrong_sizes():
    with pytest.raises(ValueError, match="domain"):
        commitments.commitment("photo", bytes(32), bytes(32))
    with pytest.raises(ValueError, match="salt"):
        commitments.commitment("event", bytes(31), bytes(32))
    with pytest.raises(ValueError, match="digest"):
        commitments.commitment("event", bytes(32), bytes(33))


# -- tailing the events table ---------------------------------------------------------------------


def test_pending_events_are_appended_in_id_order_with_their_commitments(log, store, db):
    ids = store.insert_batch(_records(0, 7)).stored
    assert log.pending_events() == 7
    assert log.append_pending() == 7
    assert log.pending_events() == 0
    assert log.size() == 7
    for index, event_id in enumerate(ids):
        leaf = log.leaf(index)
        event = store.by_id(event_id)
        assert leaf is not None
        assert event is not None
        assert event.salt is not None
        assert (leaf.kind, leaf.ref_id) == ("event", event_id)
        assert leaf.commitment == commitments.commitment("event", event.salt, event.digest)
        assert db.query("SELECT hash FROM log_nodes WHERE level = 0 AND idx = ?", (index,)) == [
            (leaf.leaf_hash,)
        ]


def test_appending_again_appends_nothing_and_later_events_follow(log, store):
    store.insert_batch(_records(0, 3))
    assert log.append_pending() == 3
    assert log.append_pending() == 0
    store.insert_batch(_records(3, 4))
    assert append_pending(log.db, limit=2) == 2
    assert log.append_pending() == 2
    assert [log.leaf(i).ref_id for i in range(7)] == list(range(1, 8))


def test_append_record_logs_other_kinds_under_their_domain(log, store):
    store.insert_batch(_records(0, 2))
    log.append_pending()
    salt, digest = bytes(range(32)), hashlib.sha256(b"manifest").digest()
    index = log.append_record("manifest", 42, digest, salt)
    assert index == 2
    leaf = log.leaf_of("manifest", 42)
    assert leaf is not None
    assert leaf.commitment == commitments.commitment("manifest", salt, digest)


# -- sealing --------------------------------------------------------------------------------------


def test_seal_signs_a_checkpoint_that_opens_with_the_log_key(log, store, key):
    assert log.seal(NOW) is None  # empty log: nothing to sign
    store.insert_batch(_records(0, 5))
    log.append_pending()
    signed = log.seal(NOW)
    assert signed is not None
    assert signed.checkpoint == note.Checkpoint(ORIGIN, 5, log.root())
    stored = log.latest_checkpoint()
    assert stored is not None
    assert stored.size == 5
    assert stored.signed_ms == int(NOW.timestamp() * 1000)
    assert note.open_checkpoint(stored.note, key.verifier).checkpoint == signed.checkpoint


def test_seal_without_growth_signs_nothing(log, store):
    store.insert_batch(_records(0, 3))
    log.append_pending()
    assert log.seal(NOW) is not None
    assert log.seal(NOW) is None
    assert [c.size for c in log.checkpoints()] == [3]


def test_seal_refuses_to_run_inside_an_open_transaction(log, store, db):
    store.insert_batch(_records(0, 3))
    with db.atomic():
        log.append_pending()
        with pytest.raises(RuntimeError, match="committed"):
            log.seal(NOW)


def test_seal_refuses_to_sign_a_head_inconsistent_with_the_last_checkpoint(log, store, key, db):
    store.insert_batch(_records(0, 4))
    log.append_pending()
    # A checkpoint of 4 entries with another root, validly signed: the stored history forks.
    forged = note.Checkpoint(ORIGIN, 4, hashlib.sha256(b"other").digest()).sign(key.signer)
    with db.atomic() as conn:
        conn.execute(
            "INSERT INTO checkpoints (size, root, note, signed_ms) VALUES (4, ?, ?, 0)",
            (hashlib.sha256(b"other").digest(), forged),
        )
        conn.execute("INSERT INTO checkpoint_status (size) VALUES (4)")
    store.insert_batch(_records(4, 2))
    log.append_pending()
    with pytest.raises(MismatchError) as info:
        log.seal(NOW)
    assert info.value.reason == "log-fork"
    assert [c.size for c in log.checkpoints()] == [4]


def test_log_origin_must_be_the_signer_name(db, key):
    with pytest.raises(ValueError, match="origin"):
        TransparencyLog(db, key.signer, "another/log")


# -- witnesses and chain status -------------------------------------------------------------------


def _cosignature(log, size: int, witness: note.Signer) -> str:
    text = log.checkpoint(size).note.decode().split("\n\n")[0] + "\n"
    return witness.sign(text, timestamp=1_700_000_000 + size).line


def _witnesses(count: int) -> list[note.Signer]:
    return [note.Signer.generate(f"w{i}.test", note.COSIGNATURE_V1) for i in range(count)]


def test_cosignatures_below_the_quorum_are_kept_but_the_checkpoint_stays_logged(log, store):
    store.insert_batch(_records(0, 3))
    log.append_pending()
    assert log.seal(NOW) is not None
    assert log.status(3).state == "logged"
    w0, w1, _ = _witnesses(3)
    line0, line1 = _cosignature(log, 3, w0), _cosignature(log, 3, w1)
    status = log.add_cosignatures(3, [line0, line0])
    assert status.cosignatures == (line0,)
    status = log.add_cosignatures(3, [line1])
    # Two cosignatures kept, in order, repeats dropped: still not witnessed (the quorum is the
    # ledger service's to count), and nothing says when it was.
    assert status.cosignatures == (line0, line1)
    assert (status.state, status.witnessed, status.witnessed_ms) == ("logged", False, None)
    assert log.status(3) == status


def test_mark_witnessed_records_the_quorum_moment_once_and_anchor_raises_it(log, store):
    store.insert_batch(_records(0, 3))
    log.append_pending()
    log.seal(NOW)
    [w0] = _witnesses(1)
    log.add_cosignatures(3, [_cosignature(log, 3, w0)])
    status = log.mark_witnessed(3, NOW)
    assert (status.state, status.witnessed) == ("witnessed", True)
    assert status.witnessed_ms == int(NOW.timestamp() * 1000)
    # Idempotent: a repeated round or a restart never moves the moment.
    again = log.mark_witnessed(3, NOW + timedelta(minutes=5))
    assert again == status
    status = log.record_anchor(3, chain="besu:1337", tx=b"\x01" * 32, block=9, now=NOW)
    assert (status.state, status.witnessed_ms) == ("anchored", again.witnessed_ms)
    assert status.anchor is not None
    assert status.anchor.block == 9
    with pytest.raises(MalformedError) as info:
        log.mark_witnessed(4, NOW)
    assert info.value.reason == "unknown-checkpoint"


def test_cosigned_below_quorum_lists_only_cosigned_unwitnessed_unanchored_checkpoints(log, store):
    w0, w1, _ = _witnesses(3)
    for seq in range(5):  # checkpoints of 1 .. 5 entries
        store.insert_batch(_records(seq, 1))
        log.append_pending()
        log.seal(NOW)
    for size in (1, 2, 3, 4):
        log.add_cosignatures(size, [_cosignature(log, size, w0)])
    log.add_cosignatures(4, [_cosignature(log, 4, w1)])
    log.mark_witnessed(2, NOW)
    log.record_anchor(3, chain="besu:1337", tx=b"\x03" * 32, block=3, now=NOW)
    assert [s.size for s in log.cosigned_below_quorum()] == [1, 4]
    assert log.cosigned_below_quorum()[1].cosignatures == log.status(4).cosignatures


def test_malformed_cosignature_lines_are_refused(log, store):
    store.insert_batch(_records(0, 1))
    log.append_pending()
    log.seal(NOW)
    with pytest.raises(MalformedError):
        log.add_cosignatures(1, ["not a signature line"])
    with pytest.raises(MalformedError):
        log.add_cosignatures(1, ["\u2014 witness.test !!!notbase64"])
    assert log.status(1).cosignatures == ()


# -- erasure (crypto-shredding) -------------------------------------------------------------------


def test_erase_keeps_the_log_verifying_and_logs_the_erasure(log, store, key, db):
    store.insert_batch(_records(0, 5))
    log.append_pending()
    log.seal(NOW)
    before = log.leaf_of("event", 3)
    erasure = erase_event(db, 3, "patient request 2025-17", NOW)
    log.seal(NOW)
    # The event's leaf and every earlier checkpoint are untouched.
    assert log.leaf_of("event", 3) == before
    report = verify_log(db, key.verifier)
    assert (report.events, report.erased_events, report.erasures) == (4, 1, 1)
    assert report.checkpoints == 2
    # The erasure is itself a leaf that commits to (event id, reason digest, time) only.
    leaf = log.leaf(erasure.leaf_index)
    assert leaf is not None
    assert (leaf.kind, leaf.ref_id) == ("erasure", erasure.erasure_id)
    salt = db.query("SELECT salt FROM erasures WHERE id = ?", (erasure.erasure_id,))[0][0]
    reason_digest = hashlib.sha256(b"patient request 2025-17").digest()
    digest = commitments.erasure_digest(3, reason_digest, erasure.erased_ms)
    assert leaf.commitment == commitments.commitment("erasure", salt, digest)


def test_an_erased_record_can_no_longer_be_linked_to_its_leaf(log, store, db):
    store.insert_batch(_records(0, 3))
    log.append_pending()
    event = store.by_id(2)
    assert event is not None
    erase_event(db, 2, "court order", NOW)
    after = store.by_id(2)
    assert after is not None
    assert after.salt is None
    assert after.raw == b""
    assert after.payload == b""
    # Whoever holds the original bytes cannot recompute the commitment without the salt: no
    # commitment over any stored value matches the leaf.
    leaf = log.leaf_of("event", 2)
    assert leaf is not None
    stored_values = [
        bytes(v)
        for row in db.query("SELECT * FROM events WHERE id = 2")
        for v in row
        if isinstance(v, bytes) and len(v) == 32
    ]
    digest = hashlib.sha256(event.raw).digest()
    candidates = {commitments.commitment("event", s, digest) for s in stored_values}
    assert leaf.commitment not in candidates
    assert b"signed-1" not in b"".join(
        bytes(v) for row in db.query("SELECT * FROM events") for v in row if isinstance(v, bytes)
    )


def test_erase_logs_pending_events_before_destroying_the_salt(log, store, db, key):
    store.insert_batch(_records(0, 3))
    erase_event(db, 3, "wrong patient", NOW)  # event 3 was never logged before
    assert log.leaf_of("event", 3) is not None
    assert log.leaf(3).kind == "erasure"
    log.seal(NOW)
    assert verify_log(db, key.verifier).erased_events == 1


def test_erase_refuses_unknown_and_already_erased_events(store, db):
    store.insert_batch(_records(0, 1))
    with pytest.raises(MalformedError):
        erase_event(db, 99, "x", NOW)
    erase_event(db, 1, "x", NOW)
    with pytest.raises(PolicyError) as info:
        erase_event(db, 1, "x", NOW)
    assert info.value.reason == "already-erased"
    with pytest.raises(PolicyError):
        erase_event(db, 1, "  ", NOW)


# -- log verify -----------------------------------------------------------------------------------


@pytest.fixture
def sealed(log, store, db):
    for start in range(0, 40, 10):
        store.insert_batch(_records(start, 10))
        log.append_pending()
        log.seal(NOW)
    return db


def test_verify_log_passes_on_an_intact_log(sealed, key):
    progress = []
    report = verify_log(sealed, key.verifier, lambda done, total: progress.append((done, total)))
    assert (report.leaves, report.events, report.checkpoints) == (40, 40, 4)
    assert progress[-1] == (40, 40)


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ("UPDATE events SET salt = randomblob(32) WHERE id = 7", "commitment-mismatch"),
        ("UPDATE events SET raw = x'00' WHERE id = 7", "digest-mismatch"),
        ("UPDATE log_nodes SET hash = randomblob(32) WHERE level = 0 AND idx = 5", "leaf-mismatch"),
        ("UPDATE log_nodes SET hash = randomblob(32) WHERE level = 2 AND idx = 1", "node-mismatch"),
        ("UPDATE log_nodes SET hash = randomblob(32) WHERE level = 5 AND idx = 0", "node-mismatch"),
        ("UPDATE log_leaves SET commitment = randomblob(32) WHERE idx = 9", "leaf-mismatch"),
        ("DELETE FROM log_leaves WHERE idx = 39", "size-mismatch"),
        ("UPDATE events SET salt = NULL WHERE id = 3", "missing-record"),
        ("UPDATE checkpoints SET root = randomblob(32) WHERE size = 20", "checkpoint-mismatch"),
    ],
)
def test_verify_log_names_the_first_mismatch(sealed, key, tamper, reason):
    sealed.conn.execute(tamper)
    with pytest.raises(VerificationError) as info:
        verify_log(sealed, key.verifier)
    assert info.value.reason == reason


# -- log verify: the urgent lane's records --------------------------------------------------------

#: One urgent_records row per kind, logged through the urgent lane's own path: (kind, state).
_URGENT = (("recall", "ongoing"), ("remediation", "offered"), ("sbom-verdict", "pass"))


@pytest.fixture
def urgent(sealed, log):
    """The sealed log, then urgent records 1-3 at leaves 40-42, then 10 more events (43-52)."""
    for i, (kind, state) in enumerate(_URGENT):
        remediation.record(
            sealed,
            kind,
            state=state,
            digest=hashlib.sha256(b"urgent-%d" % i).digest(),
            at_ms=1_000 + i,
            recall_id="Z-0412-2026",
        )
    assert remediation.log_pending_records(sealed, log) == len(_URGENT)
    EventStore(sealed).insert_batch(_records(40, 10))
    log.append_pending()
    log.seal(NOW)
    return sealed


def test_urgent_records_are_logged_at_the_leaf_they_name_under_their_log_kind(urgent, log):
    rows = urgent.query("SELECT id, kind, leaf FROM urgent_records ORDER BY id")
    assert rows == [(1, "recall", 40), (2, "remediation", 41), (3, "sbom-verdict", 42)]
    for row_id, kind, leaf in rows:
        assert (log.leaf(leaf).kind, log.leaf(leaf).ref_id) == (
            commitments.URGENT_LOG_KINDS[kind],
            row_id,
        )


def test_verify_log_rederives_urgent_records_and_counts_them(urgent, key):
    report = verify_log(urgent, key.verifier)
    assert (report.leaves, report.events, report.checkpoints) == (53, 50, 5)
    assert (report.urgent_records, report.other_records) == (3, 0)


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ("UPDATE urgent_records SET salt = randomblob(32) WHERE id = 1", "commitment-mismatch"),
        ("UPDATE urgent_records SET digest = randomblob(32) WHERE id = 2", "commitment-mismatch"),
        ("UPDATE urgent_records SET salt = randomblob(32) WHERE id = 3", "commitment-mismatch"),
        (
            (
                "UPDATE urgent_records SET salt = (SELECT salt FROM urgent_records WHERE id = 3)"
                " WHERE id = 2"
            ),
            "commitment-mismatch",
        ),
        ("DELETE FROM urgent_records WHERE id = 2", "missing-record"),
        ("UPDATE urgent_records SET leaf = 7 WHERE id = 1", "order-mismatch"),
        ("UPDATE urgent_records SET leaf = NULL WHERE id = 3", "order-mismatch"),
        (
            "UPDATE urgent_records SET leaf = CASE id WHEN 2 THEN 42 ELSE 41 END WHERE id > 1",
            "order-mismatch",
        ),
        ("UPDATE urgent_records SET kind = 'recall' WHERE id = 2", "kind-mismatch"),
        ("UPDATE urgent_records SET kind = 'sbom-verdict' WHERE id = 1", "kind-mismatch"),
        # The log's leaf records re-pointed: to no row, to a row of another kind, or out of the
        # urgent lane altogether (its row is then unaccounted for).
        ("UPDATE log_leaves SET ref_id = 99 WHERE idx = 41", "missing-record"),
        ("UPDATE log_leaves SET kind = 'recall' WHERE idx = 41", "kind-mismatch"),
        ("UPDATE log_leaves SET kind = 'manifest' WHERE idx = 41", "missing-record"),
        # Rows claiming a leaf the log does not hold for them: a forged record, a copied one.
        (
            (
                "INSERT INTO urgent_records (kind, state, at_ms, digest, salt, leaf)"
                " VALUES ('remediation', 'installed', 0, randomblob(32), randomblob(32), 99)"
            ),
            "missing-record",
        ),
        (
            (
                "INSERT INTO urgent_records (kind, state, at_ms, digest, salt, leaf)"
                " SELECT kind, state, at_ms, digest, salt, leaf FROM urgent_records WHERE id = 2"
            ),
            "missing-record",
        ),
    ],
)
def test_verify_log_names_the_first_urgent_record_mismatch(urgent, key, tamper, reason):
    urgent.conn.execute(tamper)
    with pytest.raises(VerificationError) as info:
        verify_log(urgent, key.verifier)
    assert info.value.reason == reason


def test_unlogged_urgent_records_do_not_fail_verify(urgent, key):
    # A row the recorder thread has not appended yet (leaf NULL) is pending, not missing.
    remediation.record(urgent, "remediation", state="offered", digest=bytes(32), at_ms=5)
    assert verify_log(urgent, key.verifier).urgent_records == 3


def test_verify_log_refuses_a_checkpoint_signed_by_another_key(sealed):
    other = GatewayKey.generate(ORIGIN)
    with pytest.raises(MismatchError) as info:
        verify_log(sealed, other.verifier)
    assert info.value.reason == "checkpoint-invalid"


def test_verify_log_refuses_a_forged_checkpoint_in_the_store(sealed, key):
    root = hashlib.sha256(b"fork").digest()
    forged = note.Checkpoint(ORIGIN, 30, root).sign(key.signer)
    sealed.conn.execute("UPDATE checkpoints SET root = ?, note = ? WHERE size = 30", (root, forged))
    with pytest.raises(MismatchError) as info:
        verify_log(sealed, key.verifier)
    assert info.value.reason == "root-mismatch"


# -- the checkpoint a receipt is issued under ----------------------------------------------------

#: covering_checkpoint before it read indexes: sort every checkpoint holding the leaf by
#: (anchored, witnessed, size). Kept as the reference answer the indexed version must give;
#: witnessed means the quorum was reached (witnessed_ms), not "has a cosignature".
_SORTED_COVERING = (
    "SELECT c.size FROM checkpoints c JOIN checkpoint_status s ON s.size = c.size"
    " WHERE c.size > ? ORDER BY (s.anchored_tx IS NOT NULL) DESC,"
    " (s.witnessed_ms IS NOT NULL) DESC, c.size DESC LIMIT 1"
)


def _assert_covering_matches_the_full_sort(log, db):
    for index in range(log.size() + 2):
        rows = db.query(_SORTED_COVERING, (index,))
        covering = log.covering_checkpoint(index)
        if not rows:
            assert covering is None, index
            continue
        size = rows[0][0]
        assert covering == (log.checkpoint(size), log.status(size)), index


@pytest.mark.parametrize("seed", range(4))
def test_covering_checkpoint_gives_the_answer_of_sorting_every_checkpoint(log, store, db, seed):
    rng = random.Random(seed)
    witness = note.Signer.generate("witness.test", note.COSIGNATURE_V1)
    assert log.covering_checkpoint(0) is None
    sizes, seq = [], 0
    for round_ in range(48):
        count = rng.randint(1, 3)
        store.insert_batch(_records(seq, count))
        seq += count
        log.append_pending()
        signed = log.seal(NOW)
        assert signed is not None
        sizes.append(signed.checkpoint.size)
        # Strength arrives late and out of order: any earlier checkpoint may be cosigned (below
        # the quorum or reaching it), witnessed and/or anchored (an anchor without a
        # cosignature too), the newest may stay plain.
        for size in rng.sample(sizes, k=min(len(sizes), rng.randint(0, 2))):
            if rng.random() < 0.6:
                log.add_cosignatures(size, [_cosignature(log, size, witness)])
                if rng.random() < 0.5:
                    log.mark_witnessed(size, NOW)
            if rng.random() < 0.3:
                log.record_anchor(
                    size, chain="besu:1337", tx=bytes([size % 256]) * 32, block=size, now=NOW
                )
        if round_ % 8 == 7:
            _assert_covering_matches_the_full_sort(log, db)
    states = {log.status(size).state for size in sizes}
    assert states == {"logged", "witnessed", "anchored"}
    # Some checkpoints are cosigned but below the quorum: they must not count as witnessed.
    assert log.cosigned_below_quorum()
    _assert_covering_matches_the_full_sort(log, db)


def test_covering_checkpoint_prefers_the_quorum_over_a_newer_cosignature_below_it(log, store, key):
    w0, w1, w2 = _witnesses(3)
    store.insert_batch(_records(0, 4))
    log.append_pending()
    log.seal(NOW)
    store.insert_batch(_records(4, 4))
    log.append_pending()
    log.seal(NOW)
    # Checkpoint 4 reached a 2-of-3 quorum; the newer checkpoint 8 has 1 of the 3 witnesses.
    log.add_cosignatures(4, [_cosignature(log, 4, w0), _cosignature(log, 4, w1)])
    log.mark_witnessed(4, NOW)
    log.add_cosignatures(8, [_cosignature(log, 8, w2)])
    checkpoint, status = log.covering_checkpoint(2)
    assert (checkpoint.size, status.state, len(status.cosignatures)) == (4, "witnessed", 2)
    # A receipt is issued under the witnessed checkpoint: it carries the quorum's lines.
    bundle = issue_receipt(log, key, 3)
    assert _cosignature(log, 4, w1).encode() in bundle
    # A leaf only the newer checkpoint holds is covered by it, below the quorum: "logged".
    checkpoint, status = log.covering_checkpoint(6)
    assert (checkpoint.size, status.state) == (8, "logged")


def test_issuing_a_receipt_reads_only_index_lookups(log, store, db, key):
    # The receipt path runs per event on a device page, against >100k checkpoints a year: no
    # statement may sort, scan a table, or walk a range of rows (the old covering query did).
    store.insert_batch(_records(0, 20))
    for size in (5, 10, 15, 20):
        append_pending(db, limit=5)
        log.seal(NOW)
        assert log.size() == size
    log.record_anchor(10, chain="besu:1337", tx=b"\x01" * 32, block=3, now=NOW)
    statements: list[str] = []
    db.conn.set_trace_callback(statements.append)
    try:
        issue_receipt(log, key, 3)
        log.covering_checkpoint(12)
    finally:
        db.conn.set_trace_callback(None)
    plans = {
        sql: [row[3] for row in db.conn.execute("EXPLAIN QUERY PLAN " + sql)]
        for sql in statements
        if sql.lstrip().upper().startswith("SELECT")
    }
    used = {line.rsplit(" ", 1)[-1] for lines in plans.values() for line in lines}
    assert {
        "checkpoint_status_anchored_witnessed",
        "checkpoint_status_anchored",
        "checkpoint_status_witnessed",
    } <= used
    for sql, lines in plans.items():
        for line in lines:
            assert "TEMP B-TREE" not in line, (sql, line)
            assert not line.startswith("SCAN ") or line == "SCAN CONSTANT ROW", (sql, line)
            assert "<" not in line, (sql, line)  # a range of rows
            assert ">" not in line, (sql, line)


def test_public_api_of_the_log_and_batcher_is_pinned():
    from gateway.ledger import keys, log  # noqa: PLC0415
    from gateway.service import batcher  # noqa: PLC0415

    assert keys.__all__ == [
        "GatewayKey",
        "load_gateway_key",
        "load_verifier",
        "write_gateway_key",
        "write_secret_file",
    ]
    assert log.__all__ == [
        "Anchor",
        "CheckpointStatus",
        "Erasure",
        "LeafRecord",
        "LogReport",
        "Revocation",
        "StoredCheckpoint",
        "TransparencyLog",
        "append_pending",
        "erase_event",
        "revoke_device",
        "verify_log",
    ]
    assert batcher.__all__ == ["Batcher", "CheckpointHook", "in_thread", "stop_task"]
