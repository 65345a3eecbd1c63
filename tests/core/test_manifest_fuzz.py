from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.cbor import dumps
from gateway.core.cose import sign1
from gateway.core.errors import VerificationError
from gateway.core.identity import kid_for
from gateway.core.manifest import (
    Manifest,
    ManifestFields,
    ManifestTrust,
    TrustedKey,
    build_envelope,
    sign_manifest,
    unsafe_read_manifest,
    validate_manifest,
    vendor_id,
)

KEY = Ed25519PrivateKey.generate()
TRUST = ManifestTrust.build([TrustedKey.from_public_key(KEY.public_key(), name="k")])
NOW = datetime(2026, 6, 1, tzinfo=UTC)
SBOM = b'{"bomFormat": "CycloneDX"}'
FIELDS = ManifestFields(
    seq=1,
    vendor=vendor_id("a.example"),
    class_id=vendor_id("b.example"),
    image_digest=b"\0" * 32,
    image_size=1,
    version="1.0.0",
    use_before=2**40,
    priority=-1,
    sbom_digest=hashlib.sha256(SBOM).digest(),
    uri="https://a.example/x",
)
VALID = build_envelope(sign_manifest(FIELDS, KEY), sbom=SBOM)


def _decode(data: bytes) -> None:
    # The decoder may accept or refuse, but only ever with our own typed errors.
    with contextlib.suppress(VerificationError):
        Manifest.from_bytes(data, trust=TRUST, state={}, now=NOW, check_sbom_quality=False)
    report = validate_manifest(data, trust=TRUST, state={}, now=NOW, check_sbom_quality=False)
    assert report.ok == (report.first_error is None)
    with contextlib.suppress(VerificationError):
        unsafe_read_manifest(data)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_random_bytes_raise_only_typed_errors(data):
    _decode(data)


def test_the_fuzzing_seed_envelope_is_valid():
    report = validate_manifest(VALID, trust=TRUST, state={}, now=NOW, check_sbom_quality=False)
    assert report.ok, report.to_json()


@settings(max_examples=300)
@given(st.integers(0, len(VALID) - 1), st.integers(0, 255), st.sampled_from(["flip", "cut", "dup"]))
def test_mutated_valid_envelopes_raise_only_typed_errors(position, byte, how):
    if how == "flip":
        data = VALID[:position] + bytes([byte]) + VALID[position + 1 :]
    elif how == "cut":
        data = VALID[:position]
    else:
        data = VALID[:position] + VALID[position:] * 2
    _decode(data)


_cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
_field_names = st.sampled_from(
    ["format", "seq", "vendor", "class", "image-digest", "image-size", "version", "use-before",
     "priority", "sbom-digest", "uri", "extra"]
)  # fmt: skip


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_field_names, _cbor_values, max_size=12) | _cbor_values)
def test_signed_payloads_of_any_shape_raise_only_typed_errors(payload):
    # Signed by a trusted key, so the schema step sees exactly this value.
    signed = sign1(dumps(payload), KEY, kid=kid_for(KEY.public_key()))
    _decode(build_envelope(signed, sbom=SBOM))


@settings(max_examples=200)
@given(st.dictionaries(st.text(max_size=10), _cbor_values, max_size=4) | _cbor_values)
def test_envelopes_of_any_shape_raise_only_typed_errors(envelope):
    _decode(dumps(envelope))


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_bound_sboms_of_any_content_raise_only_typed_errors(sbom):
    # The SBOM-quality step reads whatever the manufacturer bound; it must fail cleanly too.
    fields = dataclasses.replace(FIELDS, sbom_digest=hashlib.sha256(sbom).digest())
    data = build_envelope(sign_manifest(fields, KEY), sbom=sbom)
    report = validate_manifest(data, trust=TRUST, state={}, now=NOW)
    assert report.check("sbom-binding").ok
    assert report.ok == (report.first_error is None)
