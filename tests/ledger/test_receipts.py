from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import cbor2
import pytest

from gateway.core import merkle, note
from gateway.core.cbor import dumps, strict_loads
from gateway.core.errors import (
    MalformedError,
    MismatchError,
    PolicyError,
    SignatureError,
    UnavailableError,
    UntrustedSignerError,
    VerificationError,
)
from gateway.ledger.commitments import leaf_for
from gateway.ledger.keys import GatewayKey
from gateway.ledger.log import TransparencyLog, erase_event
from gateway.ledger.receipts import (
    HEADER_VDP,
    HEADER_VDS,
    VDP_INCLUSION,
    ReceiptVerifier,
    issue_receipt,
    verify_receipt,
)
from gateway.store.events import EventRecord, EventStore

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
ORIGIN = "provgw.test/log"


@pytest.fixture
def key():
    return GatewayKey.generate(ORIGIN)


@pytest.fixture
def log(db, key):
    store = EventStore(db)
    store.insert_batch(
        [
            EventRecord("dev-1", seq, "custody", 0, 0, "site-a", "t", b"msg-%d" % seq)
            for seq in range(13)
        ]
    )
    log = TransparencyLog(db, key.signer)
    log.append_pending()
    log.seal(NOW)
    return log


def _leaf(log, event_id):
    event = EventStore(log.db).by_id(event_id)
    return leaf_for("event", event.salt, event.digest)


def _parts(bundle):
    item = strict_loads(bundle)
    receipt = strict_loads(item[1])
    return item, receipt


def _rebuild(item, receipt):
    item = dict(item)
    item[1] = dumps(receipt)
    return dumps(item)


def test_receipt_verifies_offline_with_only_the_gateway_public_key(log, key):
    bundle = issue_receipt(log, key, 6)
    # The verifier has nothing but the vkey text and the bytes.
    gateway = note.Verifier.from_vkey(key.verifier.vkey)
    info = verify_receipt(bundle, _leaf(log, 6), gateway)
    assert (info.state, info.origin, info.leaf_index, info.tree_size) == ("logged", ORIGIN, 5, 13)
    assert info.root == log.root(13)
    assert info.witnesses == ()


def test_receipt_has_the_rfc_9942_shape(log, key):
    _, receipt = _parts(issue_receipt(log, key, 6))
    assert receipt.tag == 18
    protected_bytes, unprotected, payload, signature = receipt.value
    protected = strict_loads(protected_bytes)
    assert protected == {1: -8, 4: key.verifier.key_id.to_bytes(4, "big"), HEADER_VDS: 1}
    assert payload is None  # detached root
    assert len(signature) == 64
    (proof,) = unprotected[HEADER_VDP][VDP_INCLUSION]
    size, index, path = strict_loads(proof)
    assert (size, index) == (13, 5)
    assert list(path) == log.inclusion_proof(5, 13)


def test_receipt_fails_with_another_gateway_key(log, key):
    bundle = issue_receipt(log, key, 6)
    other = GatewayKey.generate(ORIGIN)
    with pytest.raises(UntrustedSignerError):
        verify_receipt(bundle, _leaf(log, 6), other.verifier)


def test_receipt_fails_for_another_entry(log, key):
    bundle = issue_receipt(log, key, 6)
    with pytest.raises(MismatchError):
        verify_receipt(bundle, _leaf(log, 7), key.verifier)


def test_a_tampered_inclusion_proof_fails(log, key):
    item, receipt = _parts(issue_receipt(log, key, 6))
    protected, unprotected, payload, signature = receipt.value
    size, index, path = strict_loads(unprotected[HEADER_VDP][VDP_INCLUSION][0])
    path = list(path)
    path[1] = bytes(b ^ 1 for b in path[1])
    unprotected = {HEADER_VDP: {VDP_INCLUSION: [dumps([size, index, path])]}}
    tampered = _rebuild(item, cbor2.CBORTag(18, [protected, unprotected, payload, signature]))
    with pytest.raises(MismatchError):
        verify_receipt(tampered, _leaf(log, 6), key.verifier)


def test_a_receipt_whose_signature_was_altered_fails(log, key):
    item, receipt = _parts(issue_receipt(log, key, 6))
    protected, unprotected, payload, signature = receipt.value
    forged = bytes([signature[0] ^ 1]) + signature[1:]
    tampered = _rebuild(item, cbor2.CBORTag(18, [protected, unprotected, payload, forged]))
    with pytest.raises(SignatureError):
        verify_receipt(tampered, _leaf(log, 6), key.verifier)


@pytest.mark.parametrize(
    ("position", "value", "error"),
    [
        (0, dumps({1: -7, 395: 1}), PolicyError),  # ES256: not the gateway key's algorithm
        (0, dumps({1: -8, 395: 2}), PolicyError),  # another verifiable data structure
        (0, dumps({1: -8, 395: 1, 2: [395]}), PolicyError),  # crit
        (0, dumps({1: -8, 395: 1, 4: b"\0\0\0\0"}), MismatchError),  # another kid
        (2, b"\x00" * 32, PolicyError),  # attached root
        (1, {396: {-1: []}}, MalformedError),  # no proof
        (1, {396: {-1: [b"\x80", b"\x80"]}}, MalformedError),  # two proofs
        (1, {396: {-1: [dumps([13, 5])]}}, MalformedError),  # proof without path
        (1, {396: {-1: [dumps([13, -5, []])]}}, MalformedError),  # negative index
    ],
)
def test_receipts_of_the_wrong_shape_are_refused(log, key, position, value, error):
    item, receipt = _parts(issue_receipt(log, key, 6))
    parts = list(receipt.value)
    parts[position] = value
    with pytest.raises(error):
        verify_receipt(_rebuild(item, cbor2.CBORTag(18, parts)), _leaf(log, 6), key.verifier)


def test_a_header_in_both_buckets_is_refused(log, key):
    item, receipt = _parts(issue_receipt(log, key, 6))
    protected, unprotected, payload, signature = receipt.value
    altered = cbor2.CBORTag(18, [protected, {**unprotected, 1: -8}, payload, signature])
    with pytest.raises(PolicyError):
        verify_receipt(_rebuild(item, altered), _leaf(log, 6), key.verifier)


def test_a_receipt_for_another_tree_size_than_its_checkpoint_fails(log, key):
    item, receipt = _parts(issue_receipt(log, key, 6))
    protected, unprotected, payload, signature = receipt.value
    path = log.inclusion_proof(5, 12)
    unprotected = {HEADER_VDP: {VDP_INCLUSION: [dumps([12, 5, path])]}}
    tampered = _rebuild(item, cbor2.CBORTag(18, [protected, unprotected, payload, signature]))
    with pytest.raises(MismatchError):
        verify_receipt(tampered, _leaf(log, 6), key.verifier)


def test_garbage_and_oversize_bundles_are_refused(log, key):
    with pytest.raises(MalformedError):
        verify_receipt(b"\xa1\x01", _leaf(log, 6), key.verifier)
    with pytest.raises(VerificationError):
        verify_receipt(b"\x00" * 70_000, _leaf(log, 6), key.verifier)


def test_receipt_state_rises_from_logged_to_witnessed_to_anchored(log, key):
    witnesses = [note.Signer.generate(f"w{i}.test", note.COSIGNATURE_V1) for i in range(3)]
    verifiers = [w.verifier for w in witnesses]
    text = note.Checkpoint(ORIGIN, 13, log.root(13)).to_text()
    leaf = _leaf(log, 6)
    assert verify_receipt(issue_receipt(log, key, 6), leaf, key.verifier).state == "logged"

    log.add_cosignatures(13, [witnesses[0].sign(text, timestamp=1_700_000_000).line])
    bundle = issue_receipt(log, key, 6)
    one = verify_receipt(bundle, leaf, key.verifier, witnesses=verifiers, witness_quorum=2)
    assert (one.state, one.witnesses) == ("logged", ("w0.test",))
    # Without the witness keys the verifier cannot count the cosignature.
    assert verify_receipt(bundle, leaf, key.verifier).state == "logged"

    log.add_cosignatures(13, [witnesses[1].sign(text, timestamp=1_700_000_001).line])
    two = verify_receipt(
        issue_receipt(log, key, 6), leaf, key.verifier, witnesses=verifiers, witness_quorum=2
    )
    assert (two.state, two.witnesses) == ("witnessed", ("w0.test", "w1.test"))

    log.record_anchor(13, chain="besu:2018", tx=b"\xab" * 32, block=77, now=NOW)
    anchored = verify_receipt(
        issue_receipt(log, key, 6), leaf, key.verifier, witnesses=verifiers, witness_quorum=2
    )
    assert anchored.state == "anchored"
    assert anchored.anchor is not None
    assert (anchored.anchor.chain, anchored.anchor.block) == ("besu:2018", 77)


def test_a_forged_cosignature_makes_the_receipt_fail(log, key):
    witness = note.Signer.generate("w0.test", note.COSIGNATURE_V1)
    # The witness cosigned another head of the same size: its line does not verify here.
    other = note.Checkpoint(ORIGIN, 13, hashlib.sha256(b"fork").digest()).to_text()
    log.add_cosignatures(13, [witness.sign(other, timestamp=1_700_000_000).line])
    bundle = issue_receipt(log, key, 6)
    with pytest.raises(SignatureError):
        verify_receipt(bundle, _leaf(log, 6), key.verifier, witnesses=[witness.verifier])


def test_receipts_prefer_the_strongest_covering_checkpoint(log, key):
    EventStore(log.db).insert_batch(
        [EventRecord("dev-2", 0, "custody", 0, 0, "site-a", "t", b"late")]
    )
    log.append_pending()
    log.seal(NOW)
    leaf = _leaf(log, 6)
    assert verify_receipt(issue_receipt(log, key, 6), leaf, key.verifier).tree_size == 14
    log.record_anchor(13, chain="besu:2018", tx=b"\x01" * 32, block=5, now=NOW)
    info = verify_receipt(issue_receipt(log, key, 6), leaf, key.verifier)
    assert (info.tree_size, info.state) == (13, "anchored")


def test_no_receipt_before_logging_or_sealing_and_none_for_erased_records(log, key):
    with pytest.raises(MalformedError):
        issue_receipt(log, key, 999)
    EventStore(log.db).insert_batch(
        [EventRecord("dev-2", 0, "custody", 0, 0, "site-a", "t", b"late")]
    )
    log.append_pending()
    with pytest.raises(UnavailableError):
        issue_receipt(log, key, 14)
    # An erased record keeps its receipt, but nobody can compute the leaf it proves any more.
    bundle = issue_receipt(log, key, 6)
    erase_event(log.db, 6, "patient request", NOW)
    assert EventStore(log.db).by_id(6).salt is None
    with pytest.raises(MismatchError):
        verify_receipt(bundle, merkle.leaf_hash(hashlib.sha256(b"msg-5").digest()), key.verifier)


def test_a_receipt_verifier_opens_each_checkpoint_once_and_still_checks_every_receipt(
    log, key, monkeypatch
):
    opened = []
    real_open = note.open_checkpoint
    monkeypatch.setattr(note, "open_checkpoint", lambda *a: opened.append(1) or real_open(*a))
    verifier = ReceiptVerifier(key.verifier)
    for event_id in (2, 6, 9):
        info = verifier.verify(issue_receipt(log, key, event_id), _leaf(log, event_id))
        assert info.leaf_index == event_id - 1
    assert len(opened) == 1  # three receipts under one checkpoint
    # The receipt's own signature and proof are still checked each time.
    item, receipt = _parts(issue_receipt(log, key, 4))
    protected, unprotected, payload, _ = receipt.value
    forged = cbor2.CBORTag(18, [protected, unprotected, payload, bytes(64)])
    with pytest.raises(SignatureError):
        verifier.verify(_rebuild(item, forged), _leaf(log, 4))
    with pytest.raises(VerificationError):
        verifier.verify(issue_receipt(log, key, 4), _leaf(log, 5))
    # A note altered by one byte is another note: opened (and refused) afresh.
    item, _ = _parts(issue_receipt(log, key, 4))
    item = dict(item)
    item[2] = item[2].replace(ORIGIN.encode(), b"provgw.test/lag", 1)
    with pytest.raises(VerificationError):
        verifier.verify(dumps(item), _leaf(log, 4))
    assert len(opened) == 2
