from __future__ import annotations

import contextlib

import cbor2
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PrivateKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core import cose
from gateway.core.errors import (
    MalformedError,
    OversizeError,
    PolicyError,
    SignatureError,
    VerificationError,
)

ED_KEY = Ed25519PrivateKey.generate()
P256_KEY = ec.generate_private_key(ec.SECP256R1())
KEYS = {"ed25519": ED_KEY, "p256": P256_KEY}


def _sign_raw(tbs: bytes, key) -> bytes:
    if isinstance(key, Ed25519PrivateKey):
        return key.sign(tbs)
    r, s = decode_dss_signature(key.sign(tbs, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def craft(  # noqa: PLR0913 -- each knob is one way to break a message
    protected=None,
    unprotected=None,
    *,
    payload=b"payload",
    key=ED_KEY,
    tag=18,
    protected_bytes=None,
    trailing=b"",
):
    """A correctly signed message with whatever headers and framing the test needs."""
    if protected_bytes is None:
        protected = {1: -8} if protected is None else protected
        # RFC 9052 §3: an empty protected map travels as the empty bstr.
        protected_bytes = cbor2.dumps(protected) if protected else b""
    tbs = cose.sig_structure(protected_bytes, b"", payload)
    body = [
        protected_bytes,
        {} if unprotected is None else unprotected,
        payload,
        _sign_raw(tbs, key),
    ]
    item = body if tag is None else cbor2.CBORTag(tag, body)
    return cbor2.dumps(item) + trailing


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


# -- the happy path ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", KEYS)
def test_signed_message_decodes_and_verifies(name):
    key = KEYS[name]
    data = cose.sign1(b"\xa1\x01\x02", key, kid=b"dev-7", x5chain=(b"leaf", b"ca"))
    msg = cose.decode_sign1(data)
    assert msg.alg == cose.alg_for_key(key)
    assert msg.kid == b"dev-7"
    assert msg.x5chain == (b"leaf", b"ca")
    assert msg.payload == b"\xa1\x01\x02"
    msg.verify(key.public_key())


def test_sign1_puts_alg_kid_and_chain_in_the_protected_header_and_tags_18():
    data = cose.sign1(b"p", P256_KEY, kid=b"k", x5chain=(b"leaf",))
    tagged = cbor2.loads(data)
    assert tagged.tag == 18
    protected_bytes, unprotected, _, signature = tagged.value
    assert cbor2.loads(protected_bytes) == {1: -7, 4: b"k", 33: b"leaf"}
    assert protected_bytes == cose.dumps({1: -7, 4: b"k", 33: b"leaf"})
    assert dict(unprotected) == {}
    assert len(signature) == 64  # raw r || s, RFC 9053 §2.1


def test_message_without_kid_or_chain_has_neither():
    msg = cose.decode_sign1(cose.sign1(b"p", ED_KEY))
    assert msg.kid is None
    assert msg.x5chain == ()


def test_external_aad_must_match():
    data = cose.sign1(b"p", ED_KEY, external_aad=b"topic/a")
    cose.decode_sign1(data).verify(ED_KEY.public_key(), external_aad=b"topic/a")
    with pytest.raises(SignatureError):
        cose.decode_sign1(data).verify(ED_KEY.public_key(), external_aad=b"topic/b")


def test_payload_is_not_decoded():
    data = craft(payload=b"\xff\xff not cbor")
    assert cose.decode_sign1(data).payload == b"\xff\xff not cbor"


def test_alg_for_key_knows_only_the_wire_format_keys():
    assert cose.alg_for_key(ED_KEY) == cose.ALG_EDDSA
    assert cose.alg_for_key(P256_KEY.public_key()) == cose.ALG_ES256
    with pytest.raises(TypeError):
        cose.alg_for_key(ec.generate_private_key(ec.SECP384R1()))


def test_policy_cannot_allow_an_algorithm_we_cannot_verify():
    with pytest.raises(ValueError, match="cannot verify"):
        cose.CosePolicy(allowed_algs=frozenset({cose.ALG_EDDSA, -37}))


def test_header_maps_are_read_only():
    msg = cose.decode_sign1(cose.sign1(b"p", ED_KEY))
    with pytest.raises(TypeError):
        msg.protected[1] = -7  # type: ignore[index]


@pytest.mark.parametrize("length", [0, 1, 23, 24, 255, 256, 65535, 65536])
def test_sig_structure_matches_cbor_encoding(length):
    payload = b"x" * length
    expected = cbor2.dumps(["Signature1", b"\xa1\x01\x27", b"aad" * (length % 7), payload])
    assert cose.sig_structure(b"\xa1\x01\x27", b"aad" * (length % 7), payload) == expected


# -- one test per rejection reason ---------------------------------------------------------------


@pytest.mark.parametrize("name", KEYS)
@pytest.mark.parametrize("where", ["signature", "payload"])
def test_flipped_bit_is_a_signature_error(name, where):
    key = KEYS[name]
    data = cose.sign1(b"payload-bytes", key)
    index = len(data) - 1 if where == "signature" else data.index(b"payload-bytes") + 3
    msg = cose.decode_sign1(_flip(data, index))
    with pytest.raises(SignatureError) as caught:
        msg.verify(key.public_key())
    assert caught.value.reason == "bad-signature"


def test_alg_in_unprotected_header_is_refused():
    data = craft(protected={}, unprotected={1: -8})
    with pytest.raises(PolicyError) as caught:
        cose.decode_sign1(data)
    assert caught.value.reason == "alg-unprotected"
    # The library layer accepts it, and the signature still verifies.
    cose.decode_sign1(data, policy=cose.UNSAFE_LIBRARY_POLICY).verify(ED_KEY.public_key())


def test_missing_alg_is_refused():
    with pytest.raises(PolicyError) as caught:
        cose.decode_sign1(craft(protected={4: b"k"}))
    assert caught.value.reason == "alg-missing"


@pytest.mark.parametrize("alg", [cose.ALG_ES384, -999, "EdDSA", True, None])
def test_alg_outside_the_allow_list_is_refused(alg):
    with pytest.raises(PolicyError) as caught:
        cose.decode_sign1(craft(protected={1: alg}))
    assert caught.value.reason == "alg-not-allowed"


def test_unknown_critical_header_is_refused():
    with pytest.raises(PolicyError) as caught:
        cose.decode_sign1(craft(protected={1: -8, 2: [99], 99: b"must understand"}))
    assert caught.value.reason == "unknown-critical-header"


def test_understood_critical_header_is_accepted():
    msg = cose.decode_sign1(craft(protected={1: -8, 2: [4], 4: b"k"}))
    msg.verify(ED_KEY.public_key())


def test_critical_label_absent_is_refused():
    with pytest.raises(PolicyError) as caught:
        cose.decode_sign1(craft(protected={1: -8, 2: [4]}))
    assert caught.value.reason == "crit-not-protected"


def test_critical_label_only_in_unprotected_header_is_refused():
    with pytest.raises(PolicyError) as caught:
        cose.decode_sign1(craft(protected={1: -8, 2: [4]}, unprotected={4: b"k"}))
    assert caught.value.reason == "crit-not-protected"


def test_crit_in_unprotected_header_is_refused():
    with pytest.raises(PolicyError) as caught:
        cose.decode_sign1(craft(unprotected={2: [4], 4: b"k"}))
    assert caught.value.reason == "crit-unprotected"


@pytest.mark.parametrize("crit", [[], 4, [b"bstr-label"], [1.5]])
def test_crit_that_is_not_a_non_empty_label_array_is_malformed(crit):
    with pytest.raises(MalformedError):
        cose.decode_sign1(craft(protected={1: -8, 2: crit}))


def test_label_in_both_buckets_is_refused():
    with pytest.raises(PolicyError) as caught:
        cose.decode_sign1(craft(protected={1: -8, 4: b"a"}, unprotected={4: b"b"}))
    assert caught.value.reason == "duplicate-header"


def test_trailing_bytes_are_malformed():
    with pytest.raises(MalformedError) as caught:
        cose.decode_sign1(craft(trailing=b"\x00"))
    assert caught.value.reason == "trailing"


def test_indefinite_length_encoding_is_malformed_under_device_policy():
    data = craft()
    # Re-frame the 4-element array (0x84) as indefinite-length (0x9f ... 0xff).
    assert data[1] == 0x84
    indefinite = data[:1] + b"\x9f" + data[2:] + b"\xff"
    with pytest.raises(MalformedError, match="indefinite"):
        cose.decode_sign1(indefinite)
    cose.decode_sign1(indefinite, policy=cose.UNSAFE_LIBRARY_POLICY).verify(ED_KEY.public_key())


def test_indefinite_length_protected_header_is_malformed():
    with pytest.raises(MalformedError, match="protected header"):
        cose.decode_sign1(craft(protected_bytes=b"\xbf\x01\x27\xff"))


@pytest.mark.parametrize("policy", [cose.DEVICE_POLICY, cose.UNSAFE_LIBRARY_POLICY])
def test_duplicate_label_in_protected_header_is_malformed(policy):
    # {1: -8, 1: -8}: a parser keeping the first and one keeping the last may disagree.
    data = craft(protected_bytes=bytes.fromhex("a201270127"))
    with pytest.raises(MalformedError, match="Duplicate"):
        cose.decode_sign1(data, policy=policy)


def test_duplicate_label_in_unprotected_header_is_malformed():
    data = craft()
    header_at = 6  # d2 84 43a10127 | a0: the empty unprotected map
    assert data[header_at] == 0xA0
    duplicated = data[:header_at] + bytes.fromhex("a2044101044101") + data[header_at + 1 :]
    with pytest.raises(MalformedError):
        cose.decode_sign1(duplicated)


def test_oversize_message_is_refused():
    data = craft(payload=b"x" * 100)
    with pytest.raises(OversizeError):
        cose.decode_sign1(data, policy=cose.CosePolicy(max_size=len(data) - 1))
    cose.decode_sign1(data, policy=cose.CosePolicy(max_size=len(data)))


def test_oversize_is_refused_before_parsing(monkeypatch):
    garbage = b"\xff" * (cose.DEVICE_POLICY.max_size + 1)
    with pytest.raises(OversizeError):
        cose.decode_sign1(garbage)

    def no_parsing(*_args, **_kwargs):
        raise AssertionError("the parser ran on an oversize message")

    monkeypatch.setattr(cose, "strict_loads", no_parsing)
    with pytest.raises(OversizeError):
        cose.decode_sign1(garbage)
    with pytest.raises(AssertionError):  # proves the patch is live for messages within the cap
        cose.decode_sign1(garbage[:100])


@pytest.mark.parametrize("tag", [998, 17, 98])
def test_wrong_tag_is_malformed(tag):
    with pytest.raises(MalformedError, match=f"tag {tag}"):
        cose.decode_sign1(craft(tag=tag), policy=cose.UNSAFE_LIBRARY_POLICY)


def test_untagged_message_is_refused_by_device_policy_only():
    data = craft(tag=None)
    with pytest.raises(PolicyError) as caught:
        cose.decode_sign1(data)
    assert caught.value.reason == "untagged"
    cose.decode_sign1(data, policy=cose.UNSAFE_LIBRARY_POLICY).verify(ED_KEY.public_key())


@pytest.mark.parametrize("length", [0, 3, 5])
def test_wrong_array_length_is_malformed(length):
    body = [b"\xa1\x01\x27", {}, b"p", b"s" * 64, b"extra"][:length]
    with pytest.raises(MalformedError, match="four elements"):
        cose.decode_sign1(cbor2.dumps(cbor2.CBORTag(18, body)))


@pytest.mark.parametrize(
    ("index", "value"),
    [(0, {1: -8}), (1, b"not a map"), (2, "text payload"), (3, None)],
)
def test_wrong_element_type_is_malformed(index, value):
    body = [cbor2.dumps({1: -8}), {}, b"p", b"s" * 64]
    body[index] = value
    with pytest.raises(MalformedError):
        cose.decode_sign1(cbor2.dumps(cbor2.CBORTag(18, body)))


def test_detached_payload_is_refused():
    body = [cbor2.dumps({1: -8}), {}, None, b"s" * 64]
    with pytest.raises(PolicyError) as caught:
        cose.decode_sign1(cbor2.dumps(cbor2.CBORTag(18, body)))
    assert caught.value.reason == "detached-payload"


@pytest.mark.parametrize("protected_bytes", [b"\x80", b"\x01", b"\xa1\x01"])
def test_protected_header_that_is_not_a_map_is_malformed(protected_bytes):
    with pytest.raises(MalformedError):
        cose.decode_sign1(craft(protected_bytes=protected_bytes))


@pytest.mark.parametrize("label", [b"bstr", 1.0, None])
def test_header_label_that_is_not_int_or_text_is_malformed(label):
    with pytest.raises(MalformedError, match="label"):
        cose.decode_sign1(craft(unprotected={label: 1}))


@pytest.mark.parametrize(
    ("label", "value"),
    [(4, "text kid"), (33, [b"only-one"]), (33, [b"leaf", 7]), (33, 5)],
)
def test_kid_and_x5chain_of_wrong_shape_are_malformed(label, value):
    with pytest.raises(MalformedError):
        cose.decode_sign1(craft(protected={1: -8, label: value}))


def test_empty_protected_bstr_is_an_empty_map():
    msg = cose.decode_sign1(
        craft(protected_bytes=b"", unprotected={1: -8}), policy=cose.UNSAFE_LIBRARY_POLICY
    )
    assert dict(msg.protected) == {}
    msg.verify(ED_KEY.public_key())


@pytest.mark.parametrize(
    ("signer", "verifier"),
    [
        (ED_KEY, P256_KEY.public_key()),
        (P256_KEY, ED_KEY.public_key()),
        (P256_KEY, Ed448PrivateKey.generate().public_key()),
        (P256_KEY, ec.generate_private_key(ec.SECP256K1()).public_key()),
    ],
)
def test_key_that_does_not_fit_the_alg_is_refused(signer, verifier):
    msg = cose.decode_sign1(cose.sign1(b"p", signer))
    with pytest.raises(SignatureError) as caught:
        msg.verify(verifier)
    assert caught.value.reason == "key-alg-mismatch"


@pytest.mark.parametrize("length", [0, 63, 65, 96])
def test_ecdsa_signature_of_wrong_length_is_refused(length):
    data = craft(protected={1: -7}, key=P256_KEY)
    msg = cose.decode_sign1(data)
    short = cose.Sign1Message(
        msg.protected, msg.protected_bytes, msg.unprotected, msg.payload, b"\x01" * length
    )
    with pytest.raises(SignatureError):
        short.verify(P256_KEY.public_key())


def test_another_key_of_the_right_type_is_a_bad_signature():
    msg = cose.decode_sign1(cose.sign1(b"p", ED_KEY))
    with pytest.raises(SignatureError) as caught:
        msg.verify(Ed25519PrivateKey.generate().public_key())
    assert caught.value.reason == "bad-signature"


# -- properties ----------------------------------------------------------------------------------


@settings(max_examples=50)
@given(
    payload=st.binary(max_size=2048),
    kid=st.none() | st.binary(max_size=64),
    name=st.sampled_from(sorted(KEYS)),
    aad=st.binary(max_size=32),
)
def test_round_trip_verifies(payload, kid, name, aad):
    key = KEYS[name]
    msg = cose.decode_sign1(cose.sign1(payload, key, kid=kid, external_aad=aad))
    assert msg.payload == payload
    assert msg.kid == kid
    msg.verify(key.public_key(), external_aad=aad)


@given(st.binary(max_size=512))
def test_arbitrary_bytes_raise_only_verification_errors(data):
    for policy in (cose.DEVICE_POLICY, cose.UNSAFE_LIBRARY_POLICY):
        with contextlib.suppress(VerificationError):
            cose.decode_sign1(data, policy=policy).verify(ED_KEY.public_key())


cbor_items = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.binary(max_size=16)
    | st.text(max_size=8)
    | st.floats(allow_nan=False),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.integers(-40, 40) | st.text(max_size=3), children, max_size=4)
    ),
    max_leaves=12,
)
labels = st.sampled_from([1, 2, 4, 33, 3, -1, 99, "x"])
headers = st.dictionaries(labels, cbor_items | st.sampled_from([-8, -7, [4], [1, 33]]), max_size=4)


@given(
    protected=headers,
    unprotected=headers | cbor_items,
    payload=st.binary(max_size=16) | cbor_items,
    signature=st.binary(max_size=80) | cbor_items,
    tag=st.sampled_from([18, 18, 18, 17, None]),
)
def test_near_valid_messages_raise_only_verification_errors(
    protected, unprotected, payload, signature, tag
):
    body = [cbor2.dumps(protected), unprotected, payload, signature]
    data = cbor2.dumps(body if tag is None else cbor2.CBORTag(tag, body))
    for policy in (cose.DEVICE_POLICY, cose.UNSAFE_LIBRARY_POLICY):
        for key in (ED_KEY.public_key(), P256_KEY.public_key()):
            with contextlib.suppress(VerificationError):
                cose.decode_sign1(data, policy=policy).verify(key)


# -- the protected-header memo -------------------------------------------------------------------


def test_header_parsed_leniently_is_not_reused_under_the_strict_policy():
    data = craft(protected_bytes=b"\xbf\x01\x27\xff")  # indefinite-length {1: -8}
    cose.decode_sign1(data, policy=cose.UNSAFE_LIBRARY_POLICY).verify(ED_KEY.public_key())
    with pytest.raises(MalformedError, match="indefinite"):
        cose.decode_sign1(data)


def test_memoized_header_still_gets_the_policy_checks():
    data = craft(protected={1: cose.ALG_ES384})
    cose.decode_sign1(data, policy=cose.CosePolicy(allowed_algs=cose.SUPPORTED_ALGS))
    assert cbor2.dumps({1: cose.ALG_ES384}) in cose._PROTECTED_MEMO
    with pytest.raises(PolicyError):
        cose.decode_sign1(data)


def test_protected_memo_is_bounded_and_holds_no_mutable_values():
    for kid in range(cose._PROTECTED_MEMO_MAX + 10):
        cose.decode_sign1(craft(protected={1: -8, 4: kid.to_bytes(4, "big")}))
    assert 0 < len(cose._PROTECTED_MEMO) <= cose._PROTECTED_MEMO_MAX
    chained = craft(protected={1: -8, 33: [b"leaf", b"ca"]})
    cose.decode_sign1(chained)
    assert cbor2.loads(chained).value[0] not in cose._PROTECTED_MEMO


# -- Ed25519 on libsodium: never looser than OpenSSL, stricter on small-order keys ---------------


def _with_signature(msg: cose.Sign1Message, signature: bytes) -> cose.Sign1Message:
    return cose.Sign1Message(
        msg.protected, msg.protected_bytes, msg.unprotected, msg.payload, signature
    )


def _openssl_accepts(key, signature: bytes, message: bytes) -> bool:
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


@settings(max_examples=150, deadline=None)
@given(
    seed=st.binary(min_size=32, max_size=32),
    payload=st.binary(max_size=300),
    flip=st.one_of(st.none(), st.integers(min_value=0, max_value=64 * 8 - 1)),
)
def test_ed25519_verdicts_agree_with_openssl(seed, payload, flip):
    key = Ed25519PrivateKey.from_private_bytes(seed)
    msg = cose.decode_sign1(cose.sign1(payload, key))
    signature = bytearray(msg.signature)
    if flip is not None:
        signature[flip // 8] ^= 1 << (flip % 8)
    tampered = _with_signature(msg, bytes(signature))
    expected = _openssl_accepts(key.public_key(), bytes(signature), msg.to_be_signed())
    assert expected is (flip is None)
    if expected:
        tampered.verify(key.public_key())
    else:
        with pytest.raises(SignatureError):
            tampered.verify(key.public_key())


def test_the_small_order_key_forgery_openssl_accepts_is_refused():
    # The identity point as public key, R = identity, S = 0: [S]B = R + [k]A holds for every
    # message, so OpenSSL accepts it (RFC 8032 does not forbid small-order keys). A device whose
    # certificate carried such a key could be impersonated by anyone; libsodium refuses it.
    identity = bytes([1]) + bytes(31)
    key = Ed25519PublicKey.from_public_bytes(identity)
    msg = cose.decode_sign1(cose.sign1(b"any event at all", ED_KEY))
    forged = _with_signature(msg, identity + bytes(32))
    assert _openssl_accepts(key, forged.signature, forged.to_be_signed())
    with pytest.raises(SignatureError) as caught:
        forged.verify(key)
    assert caught.value.reason == "bad-signature"


@pytest.mark.parametrize("length", [0, 63, 65, 128])
def test_an_ed25519_signature_of_the_wrong_length_is_a_bad_signature(length):
    msg = cose.decode_sign1(cose.sign1(b"p", ED_KEY))
    # 65 bytes: the right signature plus one: must not be read as signature || message.
    signature = (msg.signature + b"\x00" * 64)[:length]
    with pytest.raises(SignatureError) as caught:
        _with_signature(msg, signature).verify(ED_KEY.public_key())
    assert caught.value.reason == "bad-signature"
