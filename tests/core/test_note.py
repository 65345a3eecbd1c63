from __future__ import annotations

import base64
import hashlib
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.core import note
from gateway.core.errors import (
    MalformedError,
    MismatchError,
    OversizeError,
    SignatureError,
    UntrustedSignerError,
)
from gateway.core.note import (
    COSIGNATURE_V1,
    Checkpoint,
    Signer,
    Verifier,
    open_checkpoint,
    open_note,
    sign_note,
)
from tests._helpers import outside_vectors

VECTOR = json.loads((outside_vectors("signed-note") / "go-sumdb-note.json").read_text())

ORIGIN = "gateway.example/log"
ROOT = hashlib.sha256(b"root").digest()


@pytest.fixture(scope="module")
def log_signer():
    return Signer(ORIGIN, Ed25519PrivateKey.from_private_bytes(b"\x01" * 32))


@pytest.fixture(scope="module")
def witness():
    return Signer(
        "witness.example/w1", Ed25519PrivateKey.from_private_bytes(b"\x02" * 32), COSIGNATURE_V1
    )


# -- the golang.org/x/mod/sumdb/note known answer --------------------------------------------------


def test_go_vkey_parses_and_prints_back_identically():
    verifier = Verifier.from_vkey(VECTOR["verifier_key"])
    assert verifier.name == "PeterNeumann"
    assert verifier.key_id == 0xC74F20A3
    assert verifier.vkey == VECTOR["verifier_key"]


def test_go_signer_key_round_trips_and_matches_the_vkey():
    signer = Signer.from_skey(VECTOR["signer_key"])
    assert signer.skey() == VECTOR["signer_key"]
    assert signer.verifier == Verifier.from_vkey(VECTOR["verifier_key"])


def test_signing_reproduces_the_go_note_byte_for_byte():
    signer = Signer.from_skey(VECTOR["signer_key"])
    assert sign_note(VECTOR["text"], [signer]) == VECTOR["note"].encode()


def test_go_note_opens_with_its_verifier():
    opened = open_note(VECTOR["note"].encode(), [Verifier.from_vkey(VECTOR["verifier_key"])])
    assert opened.text == VECTOR["text"]
    assert [s.name for s in opened.signatures] == ["PeterNeumann"]
    assert opened.unverified == ()


def test_key_id_is_sha256_of_name_newline_type_key():
    verifier = Verifier.from_vkey(VECTOR["verifier_key"])
    digest = hashlib.sha256(b"PeterNeumann\n\x01" + verifier.public_key).digest()
    assert note.key_id("PeterNeumann", 1, verifier.public_key) == int.from_bytes(digest[:4])


# -- verifier keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "vkey",
    [
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # ID edited
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TX",  # key edited
        "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # upper-case ID
        "PeterNeumann+c74f20a3",  # no key
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # space in name
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T",  # bad base64
    ],
)
def test_altered_or_malformed_vkey_is_refused(vkey):
    with pytest.raises(MalformedError):
        Verifier.from_vkey(vkey)


def test_vkey_with_unsupported_signature_type_is_refused():
    raw = b"\x02" + bytes(32)
    kid = note.key_id("x", 2, bytes(32))
    with pytest.raises(MalformedError, match="signature type 0x02"):
        Verifier.from_vkey(f"x+{kid:08x}+{base64.b64encode(raw).decode()}")


def test_signer_key_whose_id_was_edited_is_refused():
    with pytest.raises(MalformedError):
        Signer.from_skey(VECTOR["signer_key"].replace("c74f20a3", "c74f20a4"))


# -- opening notes ---------------------------------------------------------------------------------


def test_tampered_text_fails_the_known_signature():
    tampered = VECTOR["note"].replace("cryptography", "Cryptography").encode()
    with pytest.raises(SignatureError) as err:
        open_note(tampered, [Verifier.from_vkey(VECTOR["verifier_key"])])
    assert err.value.reason == "bad-signature"


def test_unknown_signatures_are_ignored_and_listed(log_signer):
    stranger = Signer.generate("stranger.example")
    data = sign_note("hello\n", [stranger, log_signer])
    opened = open_note(data, [log_signer.verifier])
    assert [s.name for s in opened.signatures] == [ORIGIN]
    assert [s.name for s in opened.unverified] == ["stranger.example"]


def test_unknown_key_sharing_a_name_with_a_known_key_is_ignored(log_signer):
    # signed-note: ignore signatures from unknown keys even if they share a name with a known key.
    impostor = Signer.generate(ORIGIN)
    data = sign_note("hello\n", [log_signer, impostor])
    opened = open_note(data, [log_signer.verifier])
    assert len(opened.signatures) == 1
    assert opened.unverified[0].key_id == impostor.key_id


def test_note_signed_only_by_unknown_keys_is_refused():
    data = sign_note("hello\n", [Signer.generate("stranger.example")])
    with pytest.raises(UntrustedSignerError, match=r"stranger\.example"):
        open_note(data, [Verifier.from_vkey(VECTOR["verifier_key"])])


def test_a_failing_known_signature_rejects_the_note_even_beside_a_good_one(log_signer):
    good = sign_note("hello\n", [log_signer]).decode()
    forged = note.Signature(ORIGIN, log_signer.key_id, bytes(64)).line
    with pytest.raises(SignatureError):
        open_note((good + forged).encode(), [log_signer.verifier])


@pytest.mark.parametrize(
    "data",
    [
        b"no blank line\n\xe2\x80\x94 a AAAAAAA=\n",
        "text\n\n\u2014 a AAAAAAA=".encode(),  # no final newline
        b"text\n\n",  # no signature lines
        b"text\n\n- a AAAAAAA=\n",  # hyphen, not em dash
        "text\n\n\u2014 a\n".encode(),  # no signature
        "text\n\n\u2014 a AAAA\n".encode(),  # under 5 bytes
        "text\n\n\u2014 a+b AAAAAAA=\n".encode(),  # plus in key name
        "te\tx\n\n\u2014 a AAAAAAA=\n".encode(),  # control character
        b"\xff\n\n\xe2\x80\x94 a AAAAAAA=\n",  # not UTF-8
    ],
)
def test_malformed_note_is_refused(data):
    with pytest.raises(MalformedError):
        open_note(data, [Verifier.from_vkey(VECTOR["verifier_key"])])


def test_note_over_the_size_cap_is_refused_before_parsing():
    with pytest.raises(OversizeError):
        open_note(b"x" * (note.MAX_NOTE_SIZE + 1), [])


def test_more_signatures_than_the_limit_is_refused(log_signer):
    line = sign_note("t\n", [log_signer]).decode().split("\n\n")[1]
    with pytest.raises(MalformedError, match="at most 100"):
        open_note(("t\n\n" + line * (note.MAX_SIGNATURES + 1)).encode(), [log_signer.verifier])


def test_text_must_end_with_newline_to_be_signed(log_signer):
    with pytest.raises(MalformedError):
        sign_note("no newline", [log_signer])


# -- checkpoints -----------------------------------------------------------------------------------


def test_checkpoint_text_is_origin_size_root_lines():
    cp = Checkpoint(ORIGIN, 20852163, ROOT, ("ext one",))
    assert cp.to_text() == f"{ORIGIN}\n20852163\n{base64.b64encode(ROOT).decode()}\next one\n"
    assert Checkpoint.from_text(cp.to_text()) == cp


def test_c2sp_example_checkpoint_parses():
    text = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    cp = Checkpoint.from_text(text)
    assert (cp.origin, cp.size, cp.to_text()) == ("example.com/behind-the-sofa", 20852163, text)


@pytest.mark.parametrize(
    "text",
    [
        f"{ORIGIN}\n012\n{base64.b64encode(ROOT).decode()}\n",  # leading zero
        f"{ORIGIN}\n-1\n{base64.b64encode(ROOT).decode()}\n",
        f"{ORIGIN}\n\u0661\n{base64.b64encode(ROOT).decode()}\n",  # Arabic-Indic digit one
        f"{ORIGIN}\n12\n{base64.b64encode(ROOT[:31]).decode()}\n",  # 31-byte root
        f"{ORIGIN}\n12\n{base64.b64encode(ROOT).decode()}",  # no final newline
        f"{ORIGIN}\n12\n",  # no root
        f"\n12\n{base64.b64encode(ROOT).decode()}\n",  # empty origin
        f"{ORIGIN}\n12\n{base64.b64encode(ROOT).decode()}\n\n",  # empty extension line
    ],
)
def test_malformed_checkpoint_text_is_refused(text):
    with pytest.raises(MalformedError):
        Checkpoint.from_text(text)


def test_signed_checkpoint_opens_with_the_log_key(log_signer):
    cp = Checkpoint(ORIGIN, 7, ROOT)
    opened = open_checkpoint(cp.sign(log_signer), log_signer.verifier)
    assert opened.checkpoint == cp
    assert opened.cosignatures == {}


def test_checkpoint_of_another_origin_is_refused(log_signer):
    cp = Checkpoint("other.example/log", 7, ROOT)
    with pytest.raises(MismatchError) as err:
        open_checkpoint(cp.sign(log_signer), log_signer.verifier)
    assert err.value.reason == "origin-mismatch"


def test_checkpoint_signed_only_by_a_witness_is_not_the_logs_head(log_signer, witness):
    text = Checkpoint(ORIGIN, 7, ROOT).to_text()
    only_witness = sign_note(text, [witness], timestamp=1_700_000_000)
    with pytest.raises(UntrustedSignerError, match="not signed by the log"):
        open_checkpoint(only_witness, log_signer.verifier, [witness.verifier])


# -- cosignatures ----------------------------------------------------------------------------------


def test_cosignature_signs_the_c2sp_message_with_a_big_endian_timestamp(witness):
    text = Checkpoint(ORIGIN, 7, ROOT).to_text()
    sig = witness.sign(text, timestamp=1679315147)
    assert sig.signature[:8] == (1679315147).to_bytes(8, "big")
    message = b"cosignature/v1\ntime 1679315147\n" + text.encode()
    # Verifies with the raw Ed25519 key over the message built by hand from the spec.
    Ed25519PrivateKey.from_private_bytes(b"\x02" * 32).public_key().verify(
        sig.signature[8:], message
    )
    # tlog-cosignature: the vkey's type byte is 0x04.
    assert base64.b64decode(witness.verifier.vkey.split("+", 2)[2])[0] == 0x04


def test_witness_cosignature_line_appended_to_a_checkpoint_verifies(log_signer, witness):
    cp = Checkpoint(ORIGIN, 7, ROOT)
    line = witness.sign(cp.to_text(), timestamp=1_700_000_000).line
    opened = open_checkpoint(
        cp.sign(log_signer) + line.encode(), log_signer.verifier, [witness.verifier]
    )
    assert opened.cosignatures == {"witness.example/w1": 1_700_000_000}


def test_cosignature_with_an_altered_timestamp_fails(log_signer, witness):
    cp = Checkpoint(ORIGIN, 7, ROOT)
    sig = witness.sign(cp.to_text(), timestamp=1_700_000_000)
    moved = note.Signature(
        sig.name, sig.key_id, (1_700_000_001).to_bytes(8, "big") + sig.signature[8:]
    )
    with pytest.raises(SignatureError):
        open_checkpoint(
            cp.sign(log_signer) + moved.line.encode(), log_signer.verifier, [witness.verifier]
        )


def test_cosignature_of_a_different_checkpoint_fails(log_signer, witness):
    line = witness.sign(Checkpoint(ORIGIN, 8, ROOT).to_text(), timestamp=1).line
    data = Checkpoint(ORIGIN, 7, ROOT).sign(log_signer) + line.encode()
    with pytest.raises(SignatureError):
        open_checkpoint(data, log_signer.verifier, [witness.verifier])


def test_plain_signature_is_not_accepted_as_a_cosignature(log_signer):
    # Same key and name, type 0x01 vs 0x04: the key IDs differ, so the line is just unknown.
    same_key_plain = Signer(
        "witness.example/w1", Ed25519PrivateKey.from_private_bytes(b"\x02" * 32)
    )
    cp = Checkpoint(ORIGIN, 7, ROOT)
    line = same_key_plain.sign(cp.to_text()).line
    cosigner = Verifier.from_public_key(
        "witness.example/w1", same_key_plain.verifier.public_key, COSIGNATURE_V1
    )
    opened = open_checkpoint(cp.sign(log_signer) + line.encode(), log_signer.verifier, [cosigner])
    assert opened.cosignatures == {}
    assert len(opened.note.unverified) == 1


def test_cosigner_needs_a_timestamp_and_a_plain_signer_refuses_one(log_signer, witness):
    with pytest.raises(ValueError, match="time"):
        witness.sign("t\n")
    with pytest.raises(ValueError, match="no timestamp"):
        log_signer.sign("t\n", timestamp=1)
    with pytest.raises(MalformedError):
        witness.sign("t\n", timestamp=1 << 63)


def test_public_api_is_pinned():
    assert set(note.__all__) == {
        "COSIGNATURE_V1",
        "ED25519",
        "MAX_NOTE_SIZE",
        "MAX_SIGNATURES",
        "Checkpoint",
        "Note",
        "Signature",
        "SignedCheckpoint",
        "Signer",
        "Verifier",
        "cosignature_message",
        "key_id",
        "open_checkpoint",
        "open_note",
        "sign_note",
    }
