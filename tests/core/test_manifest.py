from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cbor2 import CBORTag
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.core import errors
from gateway.core.cbor import dumps, strict_loads
from gateway.core.cose import decode_sign1, sign1
from gateway.core.identity import kid_for
from gateway.core.manifest import (
    CHECKS,
    MAX_ENVELOPE_BYTES,
    DeviceTarget,
    Manifest,
    ManifestFields,
    ManifestTrust,
    TrustedKey,
    add_approval,
    build_envelope,
    class_id,
    device_target,
    make_approval,
    manifest_digest,
    sign_manifest,
    unsafe_read_manifest,
    validate_manifest,
    vendor_id,
    verify_threshold,
)

SAMPLE = Path(__file__).resolve().parents[2] / "firmware_manifests" / "samples"
SBOM = (SAMPLE / "acme-infusion" / "volara-lvp-3" / "4.2.9" / "sbom.cdx.json").read_bytes()
IMAGE = bytes(range(256)) * 16
NOW = datetime(2026, 6, 1, tzinfo=UTC)
VENDOR = vendor_id("acme-infusion.example")
CLASS = class_id(VENDOR, "Volara LVP 3")
OTHER_VENDOR = vendor_id("borealis.example")

MFR = Ed25519PrivateKey.generate()
MFR2 = ec.generate_private_key(ec.SECP256R1())
OPERATOR = Ed25519PrivateKey.generate()
STRANGER = Ed25519PrivateKey.generate()

MFR_TRUST = TrustedKey.from_public_key(MFR.public_key(), name="acme", vendors={VENDOR})
MFR2_TRUST = TrustedKey.from_public_key(MFR2.public_key(), name="acme-2", vendors={VENDOR})
OP_TRUST = TrustedKey.from_public_key(OPERATOR.public_key(), name="riverside")
TRUST = ManifestTrust.build([MFR_TRUST], [OP_TRUST])
STATE = {(VENDOR, CLASS): 4}
DEVICE = DeviceTarget("09506000134352-A1001", VENDOR, CLASS, installed_seq=3)

BASE = ManifestFields(
    seq=5,
    vendor=VENDOR,
    class_id=CLASS,
    image_digest=hashlib.sha256(IMAGE).digest(),
    image_size=len(IMAGE),
    version="4.2.10",
    use_before=int((NOW + timedelta(days=30)).timestamp()),
    priority=0,
    sbom_digest=hashlib.sha256(SBOM).digest(),
    uri="https://firmware.acme-infusion.example/volara/4.2.10.bin",
)


def envelope(fields=BASE, *, key=MFR, approvers=(OPERATOR,), sbom=SBOM, payload=None):
    signed = (
        sign_manifest(fields, key)
        if payload is None
        else sign1(payload, key, kid=kid_for(key.public_key()))
    )
    digest = manifest_digest(fields.to_cbor() if payload is None else payload)
    approvals = [make_approval(digest, a, now=NOW) for a in approvers]
    return build_envelope(signed, sbom=sbom, approvals=approvals)


def validate(data, **kwargs):
    args = {"trust": TRUST, "state": STATE, "now": NOW, "device": DEVICE, "image": IMAGE}
    args.update(kwargs)
    return validate_manifest(data, **args)


def failing(report):
    return {c.name for c in report.checks if c.verdict == "fail"}


def only_failure(report, name, error_type, reason=None):
    assert failing(report) == {name}, report.to_json()
    error = report.check(name).error
    assert isinstance(error, error_type)
    if reason is not None:
        assert error.reason == reason
    assert isinstance(report.first_error, error_type)
    assert not report.ok
    return error


# --- the good case ---------------------------------------------------------------------------


def test_valid_manifest_passes_every_check_in_order():
    report = validate(envelope())
    assert report.ok, report.to_json()
    assert [c.name for c in report.checks] == list(CHECKS)
    assert all(c.verdict == "pass" for c in report.checks)
    assert all(c.threat for c in report.checks)
    assert report.fields == BASE
    assert report.digest == hashlib.sha256(BASE.to_cbor()).digest()
    assert report.signers == ("acme",)
    assert report.approvers == ("riverside",)


def test_from_bytes_returns_a_manifest_with_the_envelope_and_sbom():
    data = envelope()
    manifest = Manifest.from_bytes(data, trust=TRUST, state=STATE, now=NOW, image=IMAGE)
    assert manifest.fields.version == "4.2.10"
    assert manifest.envelope == data
    assert manifest.sbom == SBOM


def test_missing_device_and_image_are_skipped_not_failed():
    report = validate(envelope(), device=None, image=None)
    assert report.ok
    assert report.check("device-match").verdict == "skip"
    assert report.check("image").verdict == "skip"


# --- each check, failing alone -----------------------------------------------------------------


def test_oversize_envelope_is_refused_unread():
    data = envelope()
    report = validate(data, max_size=len(data) - 1)
    only_failure(report, "size-cap", errors.OversizeError)
    assert {c.verdict for c in report.checks[1:]} == {"not-run"}


def test_default_size_cap_refuses_before_parsing():
    report = validate(b"\xff" * (MAX_ENVELOPE_BYTES + 1))
    only_failure(report, "size-cap", errors.OversizeError)


def test_untrusted_signer_fails_only_the_signature_check():
    report = validate(envelope(key=STRANGER))
    only_failure(report, "signature", errors.UntrustedSignerError)
    assert {c.verdict for c in report.checks[2:]} == {"not-run"}
    assert report.fields is None


def test_trusted_key_of_another_vendor_cannot_sign_this_vendors_firmware():
    trust = ManifestTrust.build(
        [TrustedKey.from_public_key(MFR.public_key(), name="acme", vendors={OTHER_VENDOR})],
        [OP_TRUST],
    )
    report = validate(envelope(), trust=trust)
    error = only_failure(report, "signature", errors.UntrustedSignerError)
    assert "not trusted for this vendor" in str(error)


def test_tampered_manifest_signature_is_a_signature_error():
    item = strict_loads(envelope())
    protected, unprotected, payload, signature = strict_loads(item["manifest"]).value
    bad = bytes([signature[0] ^ 1]) + signature[1:]
    item["manifest"] = dumps(CBORTag(18, [protected, dict(unprotected), payload, bad]))
    only_failure(validate(dumps(item)), "signature", errors.SignatureError)


def test_malformed_envelope_fails_the_signature_check_as_malformed():
    report = validate(dumps({"manifest": b"not cose"}))
    only_failure(report, "signature", errors.MalformedError)
    report = validate(dumps({"manifest": envelope(), "extra": 1}))
    only_failure(report, "signature", errors.MalformedError, "envelope")


def test_unknown_manifest_field_fails_only_the_schema_check():
    payload = dumps({**strict_loads(BASE.to_cbor()), "install-hook": "rm -rf /"})
    report = validate(envelope(payload=payload))
    error = only_failure(report, "schema", errors.SchemaError, "unknown-field")
    assert "install-hook" in str(error)


@pytest.mark.parametrize(
    ("field", "value"),
    [("seq", -1), ("seq", True), ("vendor", b"short"), ("version", "4.2"), ("uri", "")],
)
def test_ill_typed_manifest_field_fails_the_schema_check(field, value):
    item = strict_loads(BASE.to_cbor())
    item[field] = value
    report = validate(envelope(payload=dumps(item)))
    only_failure(report, "schema", errors.SchemaError)


def test_missing_field_and_other_format_version_fail_the_schema_check():
    item = strict_loads(BASE.to_cbor())
    del item["uri"]
    only_failure(validate(envelope(payload=dumps(item))), "schema", errors.SchemaError)
    item = strict_loads(BASE.to_cbor())
    item["format"] = 2
    report = validate(envelope(payload=dumps(item)))
    only_failure(report, "schema", errors.SchemaError, "format-version")


@pytest.mark.parametrize("highest", [5, 6])
def test_equal_or_lower_sequence_number_fails_only_rollback(highest):
    report = validate(envelope(), state={(VENDOR, CLASS): highest})
    only_failure(report, "rollback", errors.RollbackError)


def test_sequence_not_above_the_devices_installed_one_fails_rollback():
    device = dataclasses.replace(DEVICE, installed_seq=5)
    only_failure(validate(envelope(), device=device), "rollback", errors.RollbackError)


def test_rollback_state_of_another_class_does_not_matter():
    report = validate(envelope(), state={(VENDOR, class_id(VENDOR, "SyriFlow")): 99})
    assert report.ok


def test_wrong_vendor_fails_only_device_match():
    device = DeviceTarget("d", OTHER_VENDOR, CLASS)
    only_failure(
        validate(envelope(), device=device), "device-match", errors.MismatchError, "wrong-vendor"
    )


def test_wrong_class_fails_only_device_match():
    device = DeviceTarget("d", VENDOR, class_id(VENDOR, "SyriFlow S2 syringe pump"))
    only_failure(
        validate(envelope(), device=device), "device-match", errors.MismatchError, "wrong-class"
    )


def test_expired_use_before_fails_only_use_before():
    now = datetime.fromtimestamp(BASE.use_before, tz=UTC)
    only_failure(validate(envelope(), now=now), "use-before", errors.ExpiredError, "use-before")
    assert validate(envelope(), now=now - timedelta(seconds=1)).ok


def test_tampered_image_fails_only_the_image_check():
    image = IMAGE[:-1] + bytes([IMAGE[-1] ^ 1])
    only_failure(validate(envelope(), image=image), "image", errors.MismatchError, "image-digest")


def test_image_with_extra_data_fails_on_size():
    report = validate(envelope(), image=IMAGE + b"\0")
    only_failure(report, "image", errors.MismatchError, "image-size")


def test_unapproved_routine_rollout_fails_only_operator_approval():
    report = validate(envelope(approvers=()))
    error = only_failure(report, "operator-approval", errors.PolicyError, "not-approved")
    assert "approve" in str(error)


def test_urgent_security_fix_proceeds_without_approval_and_says_so():
    urgent = dataclasses.replace(BASE, priority=-1)
    report = validate(envelope(urgent, approvers=()))
    assert report.ok
    assert "Urgent security fix" in report.check("operator-approval").detail


def test_approval_by_an_unknown_operator_does_not_count():
    report = validate(envelope(approvers=(STRANGER,)))
    only_failure(report, "operator-approval", errors.PolicyError)


def test_approval_of_another_manifest_does_not_count():
    other = make_approval(b"\x01" * 32, OPERATOR, now=NOW)
    data = build_envelope(sign_manifest(BASE, MFR), sbom=SBOM, approvals=[other])
    only_failure(validate(data), "operator-approval", errors.PolicyError)


def test_forged_approval_by_a_trusted_operator_is_a_signature_error():
    good = strict_loads(make_approval(manifest_digest(BASE.to_cbor()), OPERATOR, now=NOW))
    protected, unprotected, payload, signature = good.value
    forged = dumps(CBORTag(18, [protected, dict(unprotected), payload, signature[::-1]]))
    data = build_envelope(sign_manifest(BASE, MFR), sbom=SBOM, approvals=[forged])
    only_failure(validate(data), "operator-approval", errors.SignatureError)


def test_tampered_sbom_fails_only_the_sbom_binding():
    tampered = SBOM.replace(b"3.5.1", b"3.5.2")
    assert tampered != SBOM
    report = validate(envelope(sbom=tampered))
    only_failure(report, "sbom-binding", errors.MismatchError, "sbom-digest")
    assert report.check("sbom-quality").verdict == "not-run"


def test_severed_sbom_fails_the_sbom_binding():
    only_failure(validate(envelope(sbom=None)), "sbom-binding", errors.SbomError, "sbom-missing")


def test_poor_sbom_fails_only_sbom_quality():
    doc = json.loads(SBOM)
    for component in doc["components"]:
        del component["supplier"]
    poor = json.dumps(doc).encode()
    fields = dataclasses.replace(BASE, sbom_digest=hashlib.sha256(poor).digest())
    report = validate(envelope(fields, sbom=poor))
    error = only_failure(report, "sbom-quality", errors.SbomError)
    assert "supplier" in str(error)


def test_sbom_quality_can_be_deferred_for_the_urgent_lane():
    report = validate(envelope(), check_sbom_quality=False)
    assert report.ok
    assert report.check("sbom-quality").verdict == "skip"


def test_independent_failures_are_all_reported():
    report = validate(envelope(approvers=()), state={(VENDOR, CLASS): 9}, image=b"x")
    assert failing(report) == {"rollback", "image", "operator-approval"}
    assert isinstance(report.first_error, errors.RollbackError)


def test_from_bytes_raises_the_first_failing_checks_error():
    with pytest.raises(errors.RollbackError):
        Manifest.from_bytes(
            envelope(approvers=()), trust=TRUST, state={(VENDOR, CLASS): 9}, now=NOW
        )


# --- thresholds ---------------------------------------------------------------------------------


def _two_signatures(keys):
    return build_envelope(
        [sign_manifest(BASE, k) for k in keys],
        sbom=SBOM,
        approvals=[make_approval(manifest_digest(BASE.to_cbor()), OPERATOR, now=NOW)],
    )


def test_manufacturer_threshold_of_two_needs_two_distinct_trusted_keys():
    trust = ManifestTrust.build([MFR_TRUST, MFR2_TRUST], [OP_TRUST], manufacturer_threshold=2)
    only_failure(validate(envelope(), trust=trust), "signature", errors.UntrustedSignerError)
    only_failure(
        validate(_two_signatures([MFR, MFR]), trust=trust), "signature", errors.UntrustedSignerError
    )
    only_failure(
        validate(_two_signatures([MFR, STRANGER]), trust=trust),
        "signature",
        errors.UntrustedSignerError,
    )
    report = validate(_two_signatures([MFR, MFR2]), trust=trust)
    assert report.ok
    assert sorted(report.signers) == ["acme", "acme-2"]


def test_signatures_over_different_manifests_are_refused():
    other = dataclasses.replace(BASE, seq=6)
    data = build_envelope([sign_manifest(BASE, MFR), sign_manifest(other, MFR2)], sbom=SBOM)
    only_failure(validate(data), "signature", errors.MalformedError)


def test_operator_threshold_of_two_needs_two_operators():
    second = Ed25519PrivateKey.generate()
    trust = ManifestTrust.build(
        [MFR_TRUST],
        [OP_TRUST, TrustedKey.from_public_key(second.public_key(), name="ops-2")],
        operator_threshold=2,
    )
    only_failure(validate(envelope(), trust=trust), "operator-approval", errors.PolicyError)
    assert validate(envelope(approvers=(OPERATOR, second)), trust=trust).ok


def test_verify_threshold_is_generic_over_signed_messages():
    messages = [decode_sign1(sign1(b"recall", k, kid=kid_for(k.public_key()))) for k in (MFR, MFR2)]
    keys = {k.kid: k for k in (MFR_TRUST, MFR2_TRUST)}
    assert len(verify_threshold(messages, keys, threshold=2, role="recall")) == 2
    with pytest.raises(errors.UntrustedSignerError):
        verify_threshold(messages[:1], keys, threshold=2, role="recall")


def test_thresholds_below_one_are_refused():
    with pytest.raises(ValueError, match="at least 1"):
        ManifestTrust.build([MFR_TRUST], manufacturer_threshold=0)


# --- tooling ------------------------------------------------------------------------------------


def test_add_approval_replaces_an_earlier_approval_by_the_same_key():
    data = envelope(approvers=())
    once = add_approval(data, OPERATOR, now=NOW)
    twice = add_approval(once, OPERATOR, now=NOW + timedelta(hours=1))
    assert unsafe_read_manifest(twice).approvals == 1
    assert validate(twice).ok


def test_unsafe_read_decodes_without_trust():
    seen = unsafe_read_manifest(envelope(key=STRANGER))
    assert seen.fields == BASE
    assert seen.signer_kids == (kid_for(STRANGER.public_key()),)


def test_device_target_from_a_devices_json_row_uses_the_demo_domain():
    row = {"id": "x", "manufacturer_slug": "acme-infusion", "model": "Volara LVP 3"}
    target = device_target(row, installed_seq=2)
    assert (target.vendor, target.class_id, target.installed_seq) == (VENDOR, CLASS, 2)
    assert device_target({**row, "vendor_domain": "borealis.example"}).vendor == OTHER_VENDOR


def test_trusted_key_refuses_other_key_types():
    with pytest.raises(errors.PolicyError):
        TrustedKey.from_public_key(ec.generate_private_key(ec.SECP384R1()).public_key(), name="x")
    with pytest.raises(errors.MalformedError):
        TrustedKey.from_pem(
            b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", name="x"
        )
