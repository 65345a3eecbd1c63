from __future__ import annotations

import base64
import hashlib

import pytest

from gateway.core.errors import (
    ConflictError,
    MalformedError,
    MismatchError,
    OversizeError,
    SignatureError,
    UntrustedSignerError,
)
from gateway.core.merkle import (
    EMPTY_ROOT,
)
from gateway.core.note import COSIGNATURE_V1, Checkpoint, Signer, Verifier, open_checkpoint
from gateway.ledger.witness import MAX_REQUEST_SIZE, AddCheckpointRequest, Witness
from gateway.store.witness import MAX_EVIDENCE_PER_LOG, WitnessStore
from tests._helpers import ToyLog

ORIGIN = "gateway.example/log"
NOW = 1_750_000_000


@pytest.fixture
def log_signer() -> Signer:
    return Signer.generate(ORIGIN)


@pytest.fixture
def witness_signer() -> Signer:
    return Signer.generate("witness.example/w1", COSIGNATURE_V1)


@pytest.fixture
def store(tmp_path):
    with WitnessStore(tmp_path / "witness.sqlite3") as s:
        yield s


@pytest.fixture
def witness(witness_signer, log_signer, store) -> Witness:
    return Witness(witness_signer, [log_signer.verifier], store)


def _cosigned(log: ToyLog, answer: bytes, witness_signer: Signer):
    """The checkpoint with the witness's answer appended, opened with both keys."""
    return open_checkpoint(
        log.checkpoint() + answer, log.signer.verifier, [witness_signer.verifier]
    )


# -- the request body -----------------------------------------------------------------------------


def test_request_body_round_trips_in_the_tlog_witness_format():
    proof = (hashlib.sha256(b"a").digest(), hashlib.sha256(b"b").digest())
    note = "note\n\n\u2014 x AAAA\n".encode()
    request = AddCheckpointRequest(20852014, proof, note)
    body = request.to_bytes()
    b64 = [base64.b64encode(p) for p in proof]
    assert body == b"old 20852014\n" + b64[0] + b"\n" + b64[1] + b"\n\n" + note
    assert AddCheckpointRequest.from_bytes(body) == request


def test_request_with_old_zero_and_no_proof_parses():
    request = AddCheckpointRequest.from_bytes(b"old 0\n\nlog\n0\nroot\n\n")
    assert request.old_size == 0
    assert request.proof == ()
    assert request.checkpoint == b"log\n0\nroot\n\n"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"old 1\n",  # no empty line
        b"old 01\n\ncp",  # leading zero
        b"old -1\n\ncp",
        b"old  1\n\ncp",
        b"new 1\n\ncp",
        b"old 1\nnot base64!\n\ncp",
        b"old 1\n" + base64.b64encode(b"short") + b"\n\ncp",  # not a 32-byte hash
        b"old 1\n" + base64.b64encode(bytes(32)).rstrip(b"=") + b"\n\ncp",  # not canonical
        b"old 1\n" + b"".join(base64.b64encode(bytes(32)) + b"\n" for _ in range(64)) + b"\ncp",
        b"old 1\n\n",  # no checkpoint
        b"old 18446744073709551616\n\ncp",  # above uint64
    ],
)
def test_malformed_request_bodies_are_refused(body):
    with pytest.raises(MalformedError):
        AddCheckpointRequest.from_bytes(body)


def test_oversize_request_is_refused_before_parsing():
    with pytest.raises(OversizeError):
        AddCheckpointRequest.from_bytes(b"x" * (MAX_REQUEST_SIZE + 1))


# -- cosigning ------------------------------------------------------------------------------------


def test_first_checkpoint_with_old_zero_is_cosigned_and_recorded(
    witness, witness_signer, log_signer, store
):
    log = ToyLog(log_signer, 5)
    answer = witness.add_checkpoint(log.request(0), now=NOW)
    cosigned = _cosigned(log, answer, witness_signer)
    assert cosigned.cosignatures == {"witness.example/w1": NOW}
    latest = store.latest(ORIGIN)
    assert (latest.size, latest.root, latest.cosigned_at) == (5, log.root(), NOW)
    assert latest.note == log.checkpoint()


def test_consistent_growth_is_cosigned_and_becomes_the_latest(
    witness, witness_signer, log_signer, store
):
    log = ToyLog(log_signer, 5)
    witness.add_checkpoint(log.request(0), now=NOW)
    log.grow(8)
    answer = witness.add_checkpoint(log.request(5), now=NOW + 2)
    assert _cosigned(log, answer, witness_signer).cosignatures == {"witness.example/w1": NOW + 2}
    assert store.latest(ORIGIN).size == 13


def test_the_same_checkpoint_again_is_cosigned_with_an_empty_proof(witness, log_signer):
    log = ToyLog(log_signer, 4)
    witness.add_checkpoint(log.request(0), now=NOW)
    assert witness.add_checkpoint(log.request(4), now=NOW + 1).startswith("\u2014 ".encode())


def test_cosignature_verifies_with_the_witness_key_and_binds_its_timestamp(
    witness, witness_signer, log_signer
):
    log = ToyLog(log_signer, 3)
    line = witness.add_checkpoint(log.request(0), now=NOW).decode()
    blob = base64.b64decode(line.split(" ")[-1])
    assert int.from_bytes(blob[:4], "big") == witness_signer.key_id
    text = Checkpoint(ORIGIN, 3, log.root()).to_text()
    verifier = Verifier.from_vkey(witness_signer.verifier.vkey)
    assert verifier.verify(text, blob[4:]) == NOW
    # Moving the time by one second breaks the signature: the time is signed, not decoration.
    moved = (NOW + 1).to_bytes(8, "big") + blob[12:]
    with pytest.raises(SignatureError):
        verifier.verify(text, moved)


def test_cosignature_time_never_goes_back_when_the_clock_does(witness, log_signer, store):
    log = ToyLog(log_signer, 3)
    witness.add_checkpoint(log.request(0), now=NOW)
    log.grow(1)
    witness.add_checkpoint(log.request(3), now=NOW - 3600)
    assert store.latest(ORIGIN).cosigned_at == NOW


def test_state_survives_a_restart_of_the_witness(tmp_path, witness_signer, log_signer):
    log = ToyLog(log_signer, 6)
    path = tmp_path / "w.sqlite3"
    with WitnessStore(path) as store:
        Witness(witness_signer, [log_signer.verifier], store).add_checkpoint(
            log.request(0), now=NOW
        )
    with WitnessStore(path) as store:
        again = Witness(witness_signer, [log_signer.verifier], store)
        with pytest.raises(ConflictError) as info:
            again.add_checkpoint(log.request(0), now=NOW)
        assert info.value.known_size == 6


def test_a_second_log_key_for_one_origin_is_accepted(witness_signer, store, log_signer):
    rotated = Signer.generate(ORIGIN)
    witness = Witness(witness_signer, [log_signer.verifier, rotated.verifier], store)
    log = ToyLog(rotated, 2)
    assert witness.add_checkpoint(log.request(0), now=NOW)


# -- refusals -------------------------------------------------------------------------------------


def test_stale_old_size_conflicts_with_the_latest_size_and_keeps_state(witness, log_signer, store):
    log = ToyLog(log_signer, 10)
    witness.add_checkpoint(log.request(0), now=NOW)
    log.grow(5)
    with pytest.raises(ConflictError) as info:
        witness.add_checkpoint(log.request(4), now=NOW + 1)
    assert info.value.known_size == 10
    assert info.value.reason == "stale-old-size"
    assert store.latest(ORIGIN).size == 10


def test_probe_with_old_zero_learns_the_latest_size(witness, log_signer):
    log = ToyLog(log_signer, 7)
    witness.add_checkpoint(log.request(0), now=NOW)
    log.grow(1)
    probe = AddCheckpointRequest(0, (), log.checkpoint()).to_bytes()
    with pytest.raises(ConflictError) as info:
        witness.add_checkpoint(probe, now=NOW)
    assert info.value.known_size == 7


def test_fork_at_the_same_size_is_refused_kept_as_evidence_and_state_kept(
    witness, log_signer, store
):
    log = ToyLog(log_signer, 8)
    witness.add_checkpoint(log.request(0), now=NOW)
    forked = log.fork(3)
    request = AddCheckpointRequest(8, (), forked.checkpoint()).to_bytes()
    with pytest.raises(ConflictError) as info:
        witness.add_checkpoint(request, now=NOW + 1)
    assert info.value.reason == "split-view"
    assert info.value.known_size == 8
    assert store.latest(ORIGIN).root == log.root()
    [evidence] = store.evidence(ORIGIN)
    assert (evidence.reason, evidence.request, evidence.received_at) == (
        "split-view",
        request,
        NOW + 1,
    )


def test_forked_growth_whose_proof_does_not_connect_is_refused_and_state_kept(
    witness, log_signer, store
):
    log = ToyLog(log_signer, 8)
    witness.add_checkpoint(log.request(0), now=NOW)
    forked = log.fork(2).grow(8)  # history rewritten below the witnessed size, then grown
    with pytest.raises(MismatchError) as info:
        witness.add_checkpoint(forked.request(8), now=NOW + 1)
    assert info.value.reason == "bad-consistency-proof"
    latest = store.latest(ORIGIN)
    assert (latest.size, latest.root) == (8, log.root())
    assert [e.reason for e in store.evidence(ORIGIN)] == ["bad-consistency-proof"]
    # The honest log, grown from the witnessed state, is still cosigned afterwards.
    log.grow(8)
    assert witness.add_checkpoint(log.request(8), now=NOW + 2)


def test_tampered_proof_is_refused(witness, log_signer, store):
    log = ToyLog(log_signer, 5)
    witness.add_checkpoint(log.request(0), now=NOW)
    log.grow(6)
    proof = log.prove(5)
    proof[0] = hashlib.sha256(b"tampered").digest()
    body = AddCheckpointRequest(5, tuple(proof), log.checkpoint()).to_bytes()
    with pytest.raises(MismatchError):
        witness.add_checkpoint(body, now=NOW)
    assert store.latest(ORIGIN).size == 5


def test_missing_proof_for_growth_is_refused(witness, log_signer):
    log = ToyLog(log_signer, 5)
    witness.add_checkpoint(log.request(0), now=NOW)
    log.grow(1)
    with pytest.raises(MismatchError):
        witness.add_checkpoint(AddCheckpointRequest(5, (), log.checkpoint()).to_bytes(), now=NOW)


def test_proof_with_old_zero_must_be_empty(witness, log_signer):
    log = ToyLog(log_signer, 4)
    body = AddCheckpointRequest(0, (bytes(32),), log.checkpoint()).to_bytes()
    with pytest.raises(MismatchError):
        witness.add_checkpoint(body, now=NOW)


def test_old_size_above_the_checkpoint_size_is_malformed(witness, log_signer, store):
    log = ToyLog(log_signer, 4)
    body = AddCheckpointRequest(9, (), log.checkpoint()).to_bytes()
    with pytest.raises(MalformedError) as info:
        witness.add_checkpoint(body, now=NOW)
    assert info.value.reason == "old-size-above-checkpoint"
    assert store.latest(ORIGIN) is None


def test_unknown_log_is_refused(witness):
    other = ToyLog(Signer.generate("other.example/log"), 3)
    with pytest.raises(UntrustedSignerError) as info:
        witness.add_checkpoint(other.request(0), now=NOW)
    assert info.value.reason == "unknown-log"


def test_checkpoint_signed_by_another_key_for_the_origin_is_refused(witness, store):
    impostor = ToyLog(Signer.generate(ORIGIN), 3)
    with pytest.raises(UntrustedSignerError) as info:
        witness.add_checkpoint(impostor.request(0), now=NOW)
    assert info.value.reason == "untrusted-signer"
    assert store.latest(ORIGIN) is None


def test_bad_log_signature_is_refused(witness, log_signer, store):
    log = ToyLog(log_signer, 3)
    note = bytearray(log.checkpoint())
    note[-10] ^= 1  # inside the base64 of the signature
    body = AddCheckpointRequest(0, (), bytes(note)).to_bytes()
    with pytest.raises((SignatureError, MalformedError)):
        witness.add_checkpoint(body, now=NOW)
    # The text altered instead: the signature no longer matches.
    altered = log.checkpoint().replace(b"\n3\n", b"\n4\n", 1)
    with pytest.raises(SignatureError):
        witness.add_checkpoint(AddCheckpointRequest(0, (), altered).to_bytes(), now=NOW)
    assert store.latest(ORIGIN) is None


def test_empty_log_checkpoint_must_carry_the_empty_root(witness, log_signer):
    fake = Checkpoint(ORIGIN, 0, hashlib.sha256(b"x").digest()).sign(log_signer)
    with pytest.raises(MalformedError):
        witness.add_checkpoint(AddCheckpointRequest(0, (), fake).to_bytes(), now=NOW)
    empty = Checkpoint(ORIGIN, 0, EMPTY_ROOT).sign(log_signer)
    assert witness.add_checkpoint(AddCheckpointRequest(0, (), empty).to_bytes(), now=NOW)


def test_growth_from_a_witnessed_empty_log_needs_no_proof(witness, log_signer, store):
    empty = Checkpoint(ORIGIN, 0, EMPTY_ROOT).sign(log_signer)
    witness.add_checkpoint(AddCheckpointRequest(0, (), empty).to_bytes(), now=NOW)
    log = ToyLog(log_signer, 3)
    witness.add_checkpoint(log.request(0), now=NOW)
    assert store.latest(ORIGIN).size == 3


def test_witness_refuses_a_plain_signing_key_as_its_cosigning_key(store, log_signer):
    with pytest.raises(ValueError, match="cosignature key"):
        Witness(Signer.generate("w"), [log_signer.verifier], store)


def test_evidence_is_capped_per_log(store):
    for i in range(MAX_EVIDENCE_PER_LOG + 5):
        store.record_evidence(ORIGIN, "split-view", str(i).encode(), NOW)
    store.record_evidence(ORIGIN, "split-view", b"0", NOW)
    assert len(store.evidence(ORIGIN)) == MAX_EVIDENCE_PER_LOG
