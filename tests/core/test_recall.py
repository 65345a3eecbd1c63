from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_manifests.recalls.generate import hardware_spec, mbedtls_spec, recall_key
from gateway.core.cbor import dumps, strict_loads
from gateway.core.cose import sign1
from gateway.core.errors import (
    MalformedError,
    OversizeError,
    PolicyError,
    SchemaError,
    SignatureError,
    UntrustedSignerError,
)
from gateway.core.identity import kid_for
from gateway.core.manifest import TrustedKey, class_id, vendor_id
from gateway.core.recall import (
    MAX_RECALL_BYTES,
    Component,
    DeviceFacts,
    Recall,
    RecallTrust,
    add_signature,
    build_recall,
    components_of_sbom,
    fields_from_spec,
    match_device,
    range_key,
    unsafe_recall_from_csaf,
)
from gateway.store.recalls import load_recall_trust

ROOT = Path(__file__).resolve().parents[2] / "firmware_manifests"
ACME = vendor_id("acme-infusion.example")
BOREALIS = vendor_id("borealis.example")
VOLARA = class_id(ACME, "Volara LVP 3")
SYRIFLOW = class_id(ACME, "SyriFlow S2 syringe pump")
GTIN = "00850034100319"


def _key(role: str, vendor: str = "acme-infusion"):
    return recall_key(vendor, role, "Ed25519")


def _trust(*, threshold: int = 2) -> RecallTrust:
    keys = [
        TrustedKey.from_public_key(_key(r).public_key(), name=r, vendors={ACME})
        for r in ("quality", "security", "regulatory")
    ]
    keys.append(
        TrustedKey.from_public_key(
            _key("quality", "borealis").public_key(), name="borealis", vendors={BOREALIS}
        )
    )
    return RecallTrust.build(keys, threshold=threshold)


def _fields(**changes):
    spec = {**mbedtls_spec(), **changes}
    return fields_from_spec(spec)


# --- signatures: 2 of N ------------------------------------------------------------------------


def test_recall_signed_by_two_of_three_keys_is_accepted():
    recall = Recall.from_bytes(
        build_recall(_fields(), [_key("quality"), _key("regulatory")]), trust=_trust()
    )
    assert recall.signed
    assert recall.signers == ("quality", "regulatory")
    assert recall.fields.recall_id == "Z-0412-2026"


def test_recall_with_one_of_two_signatures_is_refused():
    with pytest.raises(UntrustedSignerError, match="1 valid signature"):
        Recall.from_bytes(build_recall(_fields(), [_key("quality")]), trust=_trust())


def test_committed_one_signature_sample_is_refused_and_full_sample_accepted():
    trust = load_recall_trust(ROOT / "recalls" / "trust")
    with pytest.raises(UntrustedSignerError):
        Recall.from_bytes(
            (ROOT / "recalls" / "Z-0412-2026.one-signature.cbor").read_bytes(), trust=trust
        )
    for name in ("Z-0412-2026", "Z-0413-2026"):
        recall = Recall.from_bytes(
            (ROOT / "recalls" / f"{name}.recall.cbor").read_bytes(), trust=trust
        )
        assert recall.fields.recall_id == name


def test_same_key_signing_twice_counts_once():
    envelope = build_recall(_fields(), [_key("quality"), _key("quality")])
    with pytest.raises(UntrustedSignerError):
        Recall.from_bytes(envelope, trust=_trust())


def test_another_vendors_key_does_not_count_toward_the_threshold():
    envelope = build_recall(_fields(), [_key("quality"), _key("quality", "borealis")])
    with pytest.raises(UntrustedSignerError, match="not trusted for this vendor"):
        Recall.from_bytes(envelope, trust=_trust())


def test_untrusted_keys_do_not_count():
    rogue = Ed25519PrivateKey.generate()
    with pytest.raises(UntrustedSignerError):
        Recall.from_bytes(build_recall(_fields(), [_key("quality"), rogue]), trust=_trust())


def test_a_trusted_keys_bad_signature_is_refused_even_with_enough_others():
    good = build_recall(_fields(), [_key("quality"), _key("security")])
    members = strict_loads(good)["recall"]
    forged = sign1(
        _fields().to_cbor(),
        Ed25519PrivateKey.generate(),
        kid=kid_for(_key("regulatory").public_key()),
    )
    with pytest.raises(SignatureError):
        Recall.from_bytes(dumps({"recall": [*members, forged]}), trust=_trust())


def test_signatures_over_different_notices_are_refused():
    a = strict_loads(build_recall(_fields(), [_key("quality")]))["recall"][0]
    b = strict_loads(build_recall(_fields(revision=2), [_key("security")]))["recall"][0]
    with pytest.raises(MalformedError, match="different notices"):
        Recall.from_bytes(dumps({"recall": [a, b]}), trust=_trust())


def test_co_signing_adds_the_second_signature():
    one = build_recall(_fields(), [_key("quality")])
    two = add_signature(one, _key("security"))
    assert Recall.from_bytes(two, trust=_trust()).signers == ("quality", "security")


def test_oversize_recall_is_refused_unread():
    with pytest.raises(OversizeError):
        Recall.from_bytes(b"\xa1" + b"x" * MAX_RECALL_BYTES, trust=_trust())


def test_unknown_field_is_refused_after_the_signature():
    item = _fields().to_item() | {"note": "extra"}
    payload = dumps(item)
    kid = kid_for
    envelope = dumps(
        {
            "recall": [
                sign1(payload, k, kid=kid(k.public_key()))
                for k in (_key("quality"), _key("security"))
            ]
        }
    )
    with pytest.raises(SchemaError, match="does not know"):
        Recall.from_bytes(envelope, trust=_trust())


def test_threshold_below_two_cannot_be_configured():
    with pytest.raises(ValueError, match="at least 2"):
        _trust(threshold=1)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"kind": "serial", "model": "Volara LVP 3", "from": "VL3-9", "to": "VL3-1"}, "empty"),
        ({"kind": "serial", "model": "Volara LVP 3", "from": "A1", "to": "B9"}, "prefix"),
        ({"kind": "serial", "from": "A1", "to": "A9"}, "exactly one"),
        (
            {"kind": "firmware", "model": "Volara LVP 3", "vers": "vers:semver/>4.2.10|<4.2.9"},
            "increasing",
        ),
        (
            {"kind": "firmware", "model": "Volara LVP 3", "vers": "vers:intdot/<4.2.10"},
            "vers:semver",
        ),
        ({"kind": "component", "purl": "not a purl", "vers": "vers:semver/<1.0.0"}, "package URL"),
        ({"kind": "recall-everything"}, "known kinds"),
    ],
)
def test_malformed_rules_are_refused(rule, message):
    with pytest.raises(SchemaError, match=message):
        _fields(affected=[rule])


# --- specs (provgw recall build) -----------------------------------------------------------------


def test_committed_specs_build_their_recalls():
    for path in sorted((ROOT / "recalls").glob("*.spec.json")):
        fields = fields_from_spec(json.loads(path.read_text(encoding="utf-8")))
        assert fields.recall_id == path.name.removesuffix(".spec.json")


@pytest.mark.parametrize("key", ["terminatd", "root-cause", "affected_rules"])
def test_spec_with_an_unknown_top_level_key_is_refused_naming_it(key):
    with pytest.raises(SchemaError, match=rf"top level has unknown key.*'{key}'") as caught:
        fields_from_spec({**mbedtls_spec(), key: "2026-03-01"})
    assert caught.value.reason == "recall-spec"


def test_spec_rule_with_an_unknown_key_is_refused_naming_the_rule_and_key():
    rules = [
        {"kind": "firmware", "model": "Volara LVP 3", "vers": "vers:semver/<4.2.10"},
        {"kind": "lot", "model": "Volara LVP 3", "from": "B1", "to": "B9", "lot_to": "B12"},
    ]
    with pytest.raises(SchemaError, match=r"affected\[1\] has unknown key.*'lot_to'"):
        _fields(affected=rules)


def test_spec_remedy_with_an_unknown_key_is_refused_naming_it():
    with pytest.raises(SchemaError, match=r"remedy has unknown key.*'url'"):
        _fields(remedy={"action": "Replace the battery.", "url": "https://example.com"})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"affected": {"kind": "model", "model": "Volara LVP 3"}}, "affected must be a list"),
        ({"affected": ["model"]}, r"affected\[0\] must be a JSON object"),
        ({"remedy": "replace it"}, "remedy must be a JSON object"),
    ],
)
def test_spec_with_mistyped_nested_objects_is_refused(changes, message):
    with pytest.raises(SchemaError, match=message):
        _fields(**changes)


def test_spec_that_is_not_an_object_is_refused():
    with pytest.raises(SchemaError, match="top level must be a JSON object"):
        fields_from_spec(["id", "Z-1"])


# --- matching, every rule kind -------------------------------------------------------------------


def _device(serial="VL3-2600005", *, version="4.2.9", lot=None, klass=VOLARA, vendor=ACME):
    return DeviceFacts(f"{GTIN}-{serial}", vendor, klass, GTIN, serial, lot, version)


def _verdict(rule, device, components=None):
    fields = _fields(affected=[rule])
    return match_device(fields, device, components or {})


@pytest.mark.parametrize(
    ("version", "affected"),
    [
        ("4.2.9", True),
        ("4.2.10", False),  # univers vers:intdot orders 4.2.9 after 4.2.10: it would say True
        ("4.2.10-rc.1", True),  # a pre-release ranks below its release (SemVer §11)
        ("4.2.10+build.5", False),  # build metadata is ignored (SemVer §10)
        ("4.2.9.1", True),  # four-part firmware version: handled, missing parts are zero
        ("4.2.10.0", False),
        ("4.2.100", False),
        ("4.10.0", False),
    ],
)
def test_firmware_rule_compares_versions_by_semver(version, affected):
    rule = {"kind": "firmware", "model": "Volara LVP 3", "vers": "vers:semver/<4.2.10"}
    assert _verdict(rule, _device(version=version)).affected is affected


def test_firmware_rule_with_closed_range_includes_both_ends():
    rule = {"kind": "firmware", "model": "Volara LVP 3", "vers": "vers:semver/>=4.2.9|<=4.2.10"}
    versions = ("4.2.8", "4.2.9", "4.2.10", "4.2.11")
    verdicts = [_verdict(rule, _device(version=v)).affected for v in versions]
    assert verdicts == [False, True, True, False]


def test_firmware_rule_is_undetermined_when_the_version_is_unknown():
    rule = {"kind": "firmware", "model": "Volara LVP 3", "vers": "vers:semver/<4.2.10"}
    verdict = _verdict(rule, _device(version=None))
    assert not verdict.affected
    assert "not known" in verdict.undetermined[0].detail


def test_firmware_rule_only_hits_its_model():
    rule = {"kind": "firmware", "model": "Volara LVP 3", "vers": "vers:semver/<9.0.0"}
    assert not _verdict(rule, _device(klass=SYRIFLOW)).affected


@pytest.mark.parametrize(
    ("serial", "affected"),
    [("VL3-2600001", True), ("VL3-2600008", True), ("VL3-2600009", False), ("VL3-2600000", False),
     ("VLX-2600005", False), ("VL3-26000050", False)],
)  # fmt: skip
def test_serial_range_is_inclusive_and_numeric_within_a_prefix(serial, affected):
    rule = {"kind": "serial", "model": "Volara LVP 3", "from": "VL3-2600001", "to": "VL3-2600008"}
    verdict = _verdict(rule, _device(serial))
    assert verdict.affected is affected
    if affected:
        assert verdict.matches[0].kind == "serial"
        assert serial in verdict.matches[0].detail


def test_serial_range_compares_numbers_not_text():
    rule = {"kind": "serial", "gtin": GTIN, "from": "SN9", "to": "SN100"}
    assert _verdict(rule, _device("SN10")).affected
    assert not _verdict(rule, _device("SN101")).affected


def test_lot_rule_matches_in_range_and_is_undetermined_without_a_lot():
    rule = {"kind": "lot", "model": "Volara LVP 3", "from": "B2025-110", "to": "B2025-119"}
    assert _verdict(rule, _device(lot="B2025-115")).matches[0].kind == "lot"
    assert not _verdict(rule, _device(lot="B2025-120")).affected
    unknown = _verdict(rule, _device(lot=None))
    assert not unknown.affected
    assert unknown.undetermined[0].kind == "lot"


def test_model_rule_by_class_and_by_gtin():
    assert _verdict({"kind": "model", "model": "Volara LVP 3"}, _device()).affected
    assert not _verdict(
        {"kind": "model", "model": "Volara LVP 3"}, _device(klass=SYRIFLOW)
    ).affected
    assert _verdict({"kind": "model", "gtin": GTIN}, _device()).affected
    assert not _verdict({"kind": "model", "gtin": "00850034100425"}, _device()).affected


def test_a_vendor_cannot_recall_another_vendors_devices():
    rule = {"kind": "component", "purl": "pkg:github/mbed-tls/mbedtls", "vers": "vers:semver/*"}
    device = _device(vendor=BOREALIS)
    components = {(VOLARA, "4.2.9"): (Component("pkg:github/mbed-tls/mbedtls", "", "3.5.1"),)}
    assert not _verdict(rule, device, components).affected


def _sbom(folder: str) -> bytes:
    return (ROOT / "samples" / "acme-infusion" / folder / "sbom.cdx.json").read_bytes()


def test_component_rule_reads_the_firmwares_sbom():
    rule = {
        "kind": "component",
        "purl": "pkg:github/mbed-tls/mbedtls",
        "vers": "vers:semver/<3.5.2",
    }
    components = {
        (VOLARA, v): components_of_sbom(_sbom(f"volara-lvp-3/{v}")) for v in ("4.2.9", "4.2.10")
    }
    hit = _verdict(rule, _device(version="4.2.9"), components)
    assert hit.matches[0].kind == "component"
    assert "3.5.1" in hit.matches[0].detail
    assert not _verdict(rule, _device(version="4.2.10"), components).affected


def test_component_rule_is_undetermined_without_the_sbom():
    rule = {
        "kind": "component",
        "purl": "pkg:github/mbed-tls/mbedtls",
        "vers": "vers:semver/<3.5.2",
    }
    verdict = _verdict(rule, _device(version="4.2.8"), {})
    assert "SBOM" in verdict.undetermined[0].detail


def test_component_rule_subpath_and_case_normalisation():
    components = {(VOLARA, "4.2.9"): components_of_sbom(_sbom("volara-lvp-3/4.2.9"))}
    bt = {"kind": "component", "purl": "pkg:github/ZephyrProject-RTOS/zephyr#subsys/bluetooth/host",
          "vers": "vers:semver/<3.7.0"}  # fmt: skip
    verdict = _verdict(bt, _device(), components)
    assert len(verdict.matches) == 1
    assert "3.6.0" in verdict.matches[0].detail


def test_component_with_unparsable_version_is_undetermined_not_unaffected():
    components = {(VOLARA, "4.2.9"): (Component("pkg:generic/wpa_supplicant", "", "2.10-devel-x"),)}
    rule = {
        "kind": "component",
        "purl": "pkg:generic/wpa_supplicant",
        "vers": "vers:semver/<2.11.0",
    }
    assert _verdict(rule, _device(), components).affected  # "2.10-devel-x" is a semver pre-release
    components = {(VOLARA, "4.2.9"): (Component("pkg:generic/wpa_supplicant", "", "2.10_p1"),)}
    verdict = _verdict(rule, _device(), components)
    assert not verdict.affected
    assert "not comparable" in verdict.undetermined[0].detail


def test_component_version_with_v_prefix_is_compared():
    components = {(VOLARA, "4.2.9"): (Component("pkg:github/mbed-tls/mbedtls", "", "v3.5.1"),)}
    rule = {
        "kind": "component",
        "purl": "pkg:github/mbed-tls/mbedtls",
        "vers": "vers:semver/<3.5.2",
    }
    assert _verdict(rule, _device(), components).affected


def test_several_rules_are_all_named():
    spec = hardware_spec()
    fields = fields_from_spec(spec)
    verdict = match_device(fields, _device("VL3-2600004", lot="B2025-111"), {})
    assert [m.kind for m in verdict.matches] == ["serial", "lot"]


def test_range_key_splits_trailing_digits():
    assert range_key("VL3-2600017") == ("VL3-", 2600017)
    assert range_key("LOT-A") == ("LOT-A", None)


# --- CSAF 2.0 ------------------------------------------------------------------------------------

CSAF = ROOT / "recalls" / "acme-sa-2026-001.csaf.json"


def test_csaf_advisory_maps_to_unsigned_recall_with_firmware_and_component_rules():
    recall = unsafe_recall_from_csaf(CSAF.read_bytes())
    assert not recall.signed
    assert recall.source == "csaf"
    f = recall.fields
    assert f.recall_id == "ACME-SA-2026-001"
    assert f.vendor == ACME
    assert f.recall_class == "II"
    assert f.cves == ("CVE-2024-23170", "CVE-2024-23775")
    assert [(r.kind, r.class_id, r.vers) for r in f.rules] == [
        ("firmware", VOLARA, "vers:semver/<4.2.10"),
        ("component", VOLARA, "vers:semver/<3.5.2"),  # scoped by the relationship
    ]
    assert "4.2.10" in (f.remedy.action or "")


def test_csaf_fixed_product_resolves_to_a_kept_manifest():
    digest = bytes(range(32))
    recall = unsafe_recall_from_csaf(
        CSAF.read_bytes(), fixed_manifests={(VOLARA, "4.2.10"): digest}
    )
    assert recall.fields.remedy.manifest == digest
    assert recall.fields.firmware_remedy


def test_csaf_serial_numbers_become_serial_rules():
    doc = json.loads(CSAF.read_bytes())
    leaf = doc["product_tree"]["branches"][0]["branches"][0]["branches"][0]["product"]
    leaf["product_identification_helper"] = {"serial_numbers": ["VL3-2600003", "VL3-26*"]}
    recall = unsafe_recall_from_csaf(json.dumps(doc).encode())
    serials = [r for r in recall.fields.rules if r.kind == "serial"]
    assert [(r.low, r.high) for r in serials] == [("VL3-2600003", "VL3-2600003")]
    assert any("VL3-26*" in n for n in recall.notes)


def test_csaf_draft_is_refused():
    doc = json.loads(CSAF.read_bytes())
    doc["document"]["tracking"]["status"] = "draft"
    with pytest.raises(PolicyError, match="draft"):
        unsafe_recall_from_csaf(json.dumps(doc).encode())


def test_csaf_without_mappable_products_is_refused():
    doc = json.loads(CSAF.read_bytes())
    for vuln in doc["vulnerabilities"]:
        vuln["product_status"] = {"known_affected": ["CSAFPID-9999"]}
    with pytest.raises(SchemaError, match="CSAFPID-9999"):
        unsafe_recall_from_csaf(json.dumps(doc).encode())


@pytest.mark.parametrize("data", [b"not json", b"[]", b'{"document": {"csaf_version": "1.2"}}'])
def test_non_csaf_input_is_malformed(data):
    with pytest.raises(MalformedError):
        unsafe_recall_from_csaf(data)


def test_hostile_csaf_shapes_raise_typed_errors_only():
    doc = json.loads(CSAF.read_bytes())
    doc["product_tree"] = {"branches": "x", "relationships": [1, None]}
    doc["vulnerabilities"] = [{"product_status": {"known_affected": "CSAFPID-0001"}}, 7]
    with pytest.raises(SchemaError):
        unsafe_recall_from_csaf(json.dumps(doc).encode())


def test_deeply_nested_csaf_is_refused_even_after_a_library_raised_the_recursion_limit():
    # py-evm / py_ecc raise the limit to 100,000 on import; json's C decoder would then overflow
    # the C stack on this input and kill the process instead of raising.
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)
    try:
        with pytest.raises(MalformedError, match="nested too deeply") as caught:
            unsafe_recall_from_csaf(b'{"document": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
        assert caught.value.reason == "csaf"
        with pytest.raises(MalformedError, match="nested too deeply"):
            components_of_sbom(b'{"components": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
        # A real advisory is far from the bound and still imports.
        assert unsafe_recall_from_csaf(CSAF.read_bytes()).fields.recall_id == "ACME-SA-2026-001"
    finally:
        sys.setrecursionlimit(old)
