from __future__ import annotations

import hashlib

import pytest

from gateway.core.errors import PolicyError, SignatureError, UntrustedSignerError
from gateway.core.note import COSIGNATURE_V1, Checkpoint, Signer
from gateway.ledger.quorum import require_quorum

ORIGIN = "gateway.example/log"
NOW = 1_750_000_000
CHECKPOINT = Checkpoint(ORIGIN, 42, hashlib.sha256(b"root").digest())


@pytest.fixture(scope="module")
def log_signer() -> Signer:
    return Signer.generate(ORIGIN)


@pytest.fixture(scope="module")
def witness_signers() -> list[Signer]:
    return [Signer.generate(f"witness.example/w{i}", COSIGNATURE_V1) for i in range(4)]


def _cosigned(log_signer, signers, *, timestamp=NOW) -> bytes:
    note = CHECKPOINT.sign(log_signer)
    text = CHECKPOINT.to_text()
    lines = "".join(s.sign(text, timestamp=timestamp).line for s in signers)
    return note + lines.encode()


def test_k_of_n_cosignatures_meet_the_quorum(log_signer, witness_signers):
    note = _cosigned(log_signer, witness_signers[:2])
    verifiers = [s.verifier for s in witness_signers]
    result = require_quorum(note, log_signer.verifier, verifiers, 2)
    assert result.witnesses == ("witness.example/w0", "witness.example/w1")
    assert result.signed.checkpoint == CHECKPOINT


def test_fewer_than_k_cosignatures_fail_the_quorum(log_signer, witness_signers):
    note = _cosigned(log_signer, witness_signers[:2])
    verifiers = [s.verifier for s in witness_signers]
    with pytest.raises(PolicyError) as info:
        require_quorum(note, log_signer.verifier, verifiers, 3)
    assert info.value.reason == "witness-quorum"
    assert "2 of the 3 witnesses required" in str(info.value)


def test_a_checkpoint_without_cosignatures_fails_any_quorum(log_signer, witness_signers):
    with pytest.raises(PolicyError):
        require_quorum(
            CHECKPOINT.sign(log_signer), log_signer.verifier, [witness_signers[0].verifier], 1
        )


def test_cosignatures_by_unconfigured_witnesses_do_not_count(log_signer, witness_signers):
    w0, w1, w2, w3 = witness_signers
    note = _cosigned(log_signer, [w0, w1, w3])  # w3 is not trusted by this verifier
    trusted = [w0.verifier, w1.verifier, w2.verifier]
    assert require_quorum(note, log_signer.verifier, trusted, 2).witnesses == (w0.name, w1.name)
    with pytest.raises(PolicyError):
        require_quorum(note, log_signer.verifier, trusted, 3)


def test_one_cosignature_repeated_counts_once(log_signer, witness_signers):
    note = _cosigned(log_signer, [witness_signers[0]] * 3)
    verifiers = [s.verifier for s in witness_signers]
    with pytest.raises(PolicyError):
        require_quorum(note, log_signer.verifier, verifiers, 2)


def test_one_public_key_under_two_names_is_refused_as_a_policy(log_signer, witness_signers):
    key = witness_signers[0]._private_key
    twin = Signer("witness.example/twin", key, COSIGNATURE_V1)
    with pytest.raises(ValueError, match="listed twice"):
        require_quorum(
            _cosigned(log_signer, [witness_signers[0], twin]),
            log_signer.verifier,
            [witness_signers[0].verifier, twin.verifier],
            2,
        )


def test_plain_signature_keys_cannot_act_as_witnesses(log_signer):
    plain = Signer.generate("witness.example/plain")
    with pytest.raises(ValueError, match="cosignature keys"):
        require_quorum(CHECKPOINT.sign(log_signer), log_signer.verifier, [plain.verifier], 1)


@pytest.mark.parametrize("k", [0, 5])
def test_a_quorum_that_counts_nothing_or_cannot_be_met_is_refused(log_signer, witness_signers, k):
    verifiers = [s.verifier for s in witness_signers]
    with pytest.raises(ValueError, match="cannot be met"):
        require_quorum(CHECKPOINT.sign(log_signer), log_signer.verifier, verifiers, k)


def test_cosignatures_from_the_future_do_not_count_when_now_is_given(log_signer, witness_signers):
    note = _cosigned(log_signer, witness_signers[:2], timestamp=NOW + 3600)
    verifiers = [s.verifier for s in witness_signers]
    assert require_quorum(note, log_signer.verifier, verifiers, 2).witnesses
    with pytest.raises(PolicyError):
        require_quorum(note, log_signer.verifier, verifiers, 2, now=NOW)
    assert require_quorum(note, log_signer.verifier, verifiers, 2, now=NOW + 3500).witnesses


def test_a_tampered_cosignature_time_is_refused(log_signer, witness_signers):
    note = _cosigned(log_signer, witness_signers[:1])
    w = witness_signers[0]
    sig = w.sign(CHECKPOINT.to_text(), timestamp=NOW)
    forged = type(sig)(sig.name, sig.key_id, (NOW + 9).to_bytes(8, "big") + sig.signature[8:])
    tampered = note.replace(sig.line.encode(), forged.line.encode())
    assert tampered != note
    with pytest.raises(SignatureError):
        require_quorum(tampered, log_signer.verifier, [w.verifier], 1)


def test_cosignatures_on_another_log_head_are_refused(log_signer, witness_signers):
    other = Signer.generate("other.example/log")
    note = Checkpoint("other.example/log", 1, bytes(32)).sign(other)
    with pytest.raises(UntrustedSignerError):
        require_quorum(note, log_signer.verifier, [witness_signers[0].verifier], 1)
