"""The COSE working group's Sign1 vectors (../shared/testvectors/cose/) against gateway.core.cose.

Vector format (github.com/cose-wg/Examples): ``input.sign0`` has the JWK-style ``key`` (EC:
base64url ``x``/``y``; OKP: ``x_hex``), the header buckets, ``alg`` and an optional hex
``external`` AAD; ``output.cbor`` is the message in hex; ``intermediates.ToBeSign_hex`` the
Sig_structure. ``"fail": true`` vectors name the change in ``input.failures``.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.core import cose
from gateway.core.errors import MalformedError, PolicyError, SignatureError
from tests._helpers import outside_vectors

VECTORS = outside_vectors("cose")
FILES = sorted(VECTORS.glob("*/*.json"))
PASS = [f for f in FILES if not json.loads(f.read_text()).get("fail")]
FAIL = [f for f in FILES if json.loads(f.read_text()).get("fail")]

_CURVES = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}
_OKP = {"Ed25519": Ed25519PublicKey, "Ed448": Ed448PublicKey}

# What each kind of WG failure must raise in the library layer.
_FAILURE_ERROR = {
    "ChangeCBORTag": MalformedError,  # tag 998 is not COSE_Sign1
    "ChangeTag": SignatureError,  # payload changed after signing
    "ChangeAttr": PolicyError,  # alg changed to -999 / "unknown"
    "AddProtected": SignatureError,  # protected bucket changed after signing
    "RemoveProtected": SignatureError,
}


def _b64url_int(text: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")


def _load(path: Path):
    vector = json.loads(path.read_text())
    sign0 = vector["input"]["sign0"]
    jwk = sign0["key"]
    if jwk["kty"] == "EC":
        numbers = ec.EllipticCurvePublicNumbers(
            _b64url_int(jwk["x"]), _b64url_int(jwk["y"]), _CURVES[jwk["crv"]]
        )
        key = numbers.public_key()
    else:
        key = _OKP[jwk["crv"]].from_public_bytes(bytes.fromhex(jwk["x_hex"]))
    data = bytes.fromhex(vector["output"]["cbor"])
    aad = bytes.fromhex(sign0.get("external", ""))
    return vector, key, data, aad


def test_vectors_are_all_found():
    assert len(PASS) == 9
    assert len(FAIL) == 6


@pytest.mark.parametrize("path", PASS, ids=lambda p: p.stem)
def test_library_layer_verifies_every_pass_vector(path):
    vector, key, data, aad = _load(path)
    msg = cose.decode_sign1(data, policy=cose.UNSAFE_LIBRARY_POLICY)
    assert msg.to_be_signed(aad) == bytes.fromhex(vector["intermediates"]["ToBeSign_hex"])
    assert msg.payload == vector["input"]["plaintext"].encode()
    msg.verify(key, external_aad=aad)


@pytest.mark.parametrize("path", FAIL, ids=lambda p: p.stem)
def test_library_layer_rejects_every_fail_vector_for_its_reason(path):
    vector, key, data, aad = _load(path)
    (failure,) = vector["input"]["failures"]
    with pytest.raises(_FAILURE_ERROR[failure]):
        cose.decode_sign1(data, policy=cose.UNSAFE_LIBRARY_POLICY).verify(key, external_aad=aad)


# Device policy: alg protected, tag 18, EdDSA or ES256 only.
_DEVICE_VERDICT = {
    "ecdsa-sig-01": None,
    "ecdsa-sig-02": "alg-not-allowed",  # ES384
    "ecdsa-sig-03": "alg-not-allowed",  # ES512
    "ecdsa-sig-04": "alg-not-allowed",  # ES512 over P-256
    "eddsa-sig-01": None,
    "eddsa-sig-02": None,  # EdDSA on Ed448: the alg is allowed; which key is trusted is identity's
    "sign-pass-01": "alg-unprotected",
    "sign-pass-02": None,
    "sign-pass-03": "untagged",
}


@pytest.mark.parametrize("path", PASS, ids=lambda p: p.stem)
def test_device_policy_accepts_only_protected_alg_tagged_vectors(path):
    _, key, data, aad = _load(path)
    reason = _DEVICE_VERDICT[path.stem]
    if reason is None:
        cose.decode_sign1(data, policy=cose.DEVICE_POLICY).verify(key, external_aad=aad)
    else:
        with pytest.raises(PolicyError) as caught:
            cose.decode_sign1(data, policy=cose.DEVICE_POLICY)
        assert caught.value.reason == reason


def test_vector_with_alg_unprotected_is_a_policy_error_under_device_policy():
    _, _, data, _ = _load(VECTORS / "sign1-tests" / "sign-pass-01.json")
    with pytest.raises(PolicyError, match="unprotected header"):
        cose.decode_sign1(data)


def test_external_aad_is_bound_to_the_signature():
    _, key, data, aad = _load(VECTORS / "sign1-tests" / "sign-pass-02.json")
    msg = cose.decode_sign1(data)
    msg.verify(key, external_aad=aad)
    with pytest.raises(SignatureError):
        msg.verify(key)
