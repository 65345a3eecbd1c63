"""Regenerate the sample recalls: ``python -m firmware_manifests.recalls.generate``.

TEST KEYS ONLY: every recall key is derived from a public label
(:func:`firmware_manifests.generate.demo_key`), so anyone can recompute it.

Writes, next to this file:

- ``keys/<vendor>-recall-<role>.key.pem`` and ``trust/recall/<vendor-domain>/<role>.pem``: three
  Ed25519 recall keys for Acme Infusion Systems (quality, product security, regulatory), two
  P-256 keys for Borealis Monitoring; the threshold is 2 (``trust/recall-policy.json``).
- ``Z-0412-2026.recall.cbor``: the urgent Mbed TLS recall of the Volara LVP 3 (firmware and SBOM
  component rules), remedy = the 4.2.10 urgent manifest, signed by 2 of Acme's 3 keys;
  ``Z-0412-2026.one-signature.cbor``: the same notice with one signature (refused).
- ``Z-0413-2026.recall.cbor``: a class I hardware recall (serial range, lot range, a whole model),
  remedy = an action; 2 signatures.
- ``acme-sa-2026-001.csaf.json``: the Mbed TLS advisory as CSAF 2.0 (unsigned).
- ``*.spec.json``: the specs ``provgw recall build`` signs.

Deterministic: Ed25519 signatures and everything else are the same on every run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from firmware_manifests.generate import BUILT, demo_key
from gateway.core.cose import PrivateKey
from gateway.core.recall import build_recall, fields_from_spec

HERE = Path(__file__).resolve().parent
SAMPLES = HERE.parent / "samples"
#: (vendor slug, algorithm, key roles)
KEYS = (
    ("acme-infusion", "Ed25519", ("quality", "security", "regulatory")),
    ("borealis", "P-256", ("quality", "security")),
)
ISSUED = int(BUILT.timestamp()) + 86400


def recall_key(slug: str, role: str, alg: str) -> PrivateKey:
    """Return the TEST recall key of *slug* for *role*."""
    return demo_key(f"recall {slug} {role}", alg)


def _index() -> dict[tuple[str, str], str]:
    rows = json.loads((SAMPLES / "index.json").read_text(encoding="utf-8"))
    return {(r["model"], r["version"]): r["digest"] for r in rows}


def mbedtls_spec() -> dict[str, Any]:
    """Return the urgent Mbed TLS recall of the Volara LVP 3 (remedy: the 4.2.10 manifest)."""
    return {
        "id": "Z-0412-2026",
        "revision": 1,
        "vendor": "acme-infusion.example",
        "class": "II",
        "status": "ongoing",
        "reason": "Volara LVP 3 firmware before 4.2.10 ships Mbed TLS 3.5.1, whose TLS 1.3 "
        "handshake and X.509 parsing flaws let a network attacker disrupt pump communication.",
        "root_cause": "Software design: vulnerable third-party component (Mbed TLS < 3.5.2; "
        "CVE-2024-23170, CVE-2024-23775).",
        "initiated": "2026-01-21",
        "posted": "2026-01-23",
        "issued": ISSUED,
        "cves": ["CVE-2024-23170", "CVE-2024-23775"],
        "affected": [
            {"kind": "firmware", "model": "Volara LVP 3", "vers": "vers:semver/<4.2.10"},
            {
                "kind": "component",
                "purl": "pkg:github/mbed-tls/mbedtls",
                "vers": "vers:semver/<3.5.2",
            },
        ],
        "remedy": {
            "manifest": _index()[("Volara LVP 3", "4.2.10")],
            "action": "Install firmware 4.2.10 (urgent security fix).",
        },
    }


def hardware_spec() -> dict[str, Any]:
    """Return a class I hardware recall: serial and lot ranges, one whole model; action remedy."""
    return {
        "id": "Z-0413-2026",
        "revision": 1,
        "vendor": "acme-infusion.example",
        "class": "I",
        "status": "ongoing",
        "reason": "Battery packs of some Volara LVP 3 pumps may swell and stop the pump without "
        "the low-battery alarm.",
        "root_cause": "Component change control: a battery cell supplier change.",
        "initiated": "2026-02-02",
        "issued": ISSUED + 86400 * 12,
        "affected": [
            {"kind": "serial", "model": "Volara LVP 3", "from": "VL3-2600001", "to": "VL3-2600008"},
            {"kind": "lot", "model": "Volara LVP 3", "from": "B2025-110", "to": "B2025-119"},
            {"kind": "model", "model": "SyriFlow S2 syringe pump"},
        ],
        "remedy": {"action": "Replace the battery pack (service kit VL3-BAT-2); until then keep "
                   "the pump on mains power."},
    }  # fmt: skip


def csaf_advisory() -> dict[str, Any]:
    """Return the Mbed TLS advisory as a CSAF 2.0 security advisory."""
    helper_model = {"model_numbers": ["VL3"]}
    return {
        "document": {
            "category": "csaf_security_advisory",
            "csaf_version": "2.0",
            "title": "Volara LVP 3: Mbed TLS vulnerabilities in pump firmware before 4.2.10",
            "publisher": {
                "category": "vendor",
                "name": "Acme Infusion Systems",
                "namespace": "https://acme-infusion.example",
            },
            "aggregate_severity": {"text": "High"},
            "tracking": {
                "id": "ACME-SA-2026-001",
                "status": "final",
                "version": "1",
                "initial_release_date": "2026-01-21T00:00:00.000Z",
                "current_release_date": "2026-01-21T00:00:00.000Z",
                "revision_history": [
                    {"number": "1", "date": "2026-01-21T00:00:00.000Z", "summary": "Initial"}
                ],
                "generator": {"engine": {"name": "provgw sample generator"}},
            },
        },
        "product_tree": {
            "branches": [
                {
                    "category": "vendor",
                    "name": "Acme Infusion Systems",
                    "branches": [
                        {
                            "category": "product_name",
                            "name": "Volara LVP 3",
                            "branches": [
                                {
                                    "category": "product_version_range",
                                    "name": "vers:semver/<4.2.10",
                                    "product": {
                                        "product_id": "CSAFPID-0001",
                                        "name": "Volara LVP 3 firmware < 4.2.10",
                                        "product_identification_helper": helper_model,
                                    },
                                },
                                {
                                    "category": "product_version",
                                    "name": "4.2.10",
                                    "product": {
                                        "product_id": "CSAFPID-0002",
                                        "name": "Volara LVP 3 firmware 4.2.10",
                                        "product_identification_helper": helper_model,
                                    },
                                },
                            ],
                        }
                    ],
                },
                {
                    "category": "vendor",
                    "name": "Trusted Firmware",
                    "branches": [
                        {
                            "category": "product_name",
                            "name": "Mbed TLS",
                            "branches": [
                                {
                                    "category": "product_version_range",
                                    "name": "vers:semver/<3.5.2",
                                    "product": {
                                        "product_id": "CSAFPID-0003",
                                        "name": "Mbed TLS < 3.5.2",
                                        "product_identification_helper": {
                                            "purl": "pkg:github/mbed-tls/mbedtls"
                                        },
                                    },
                                }
                            ],
                        }
                    ],
                },
            ],
            "relationships": [
                {
                    "category": "default_component_of",
                    "product_reference": "CSAFPID-0003",
                    "relates_to_product_reference": "CSAFPID-0001",
                    "full_product_name": {
                        "product_id": "CSAFPID-0004",
                        "name": "Mbed TLS < 3.5.2 in Volara LVP 3 firmware < 4.2.10",
                    },
                }
            ],
        },
        "vulnerabilities": [
            {
                "cve": cve,
                "title": title,
                "product_status": {
                    "known_affected": ["CSAFPID-0001", "CSAFPID-0004"],
                    "fixed": ["CSAFPID-0002"],
                },
                "remediations": [
                    {
                        "category": "vendor_fix",
                        "details": "Install Volara LVP 3 firmware 4.2.10.",
                        "product_ids": ["CSAFPID-0001"],
                        "url": "https://acme-infusion.example/security/ACME-SA-2026-001",
                    }
                ],
            }
            for cve, title in (
                ("CVE-2024-23170", "Mbed TLS: timing side channel in RSA private operations"),
                ("CVE-2024-23775", "Mbed TLS: integer overflow in mbedtls_x509_set_extensions"),
            )
        ],
    }


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_bytes() != data:
        path.write_bytes(data)


def _json(obj: object) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


def generate(root: Path = HERE) -> list[Path]:
    """Write keys, trust and samples under *root*; return the sample files written."""
    for slug, alg, roles in KEYS:
        for role in roles:
            key = recall_key(slug, role, alg)
            private = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            public = key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            _write(root / "keys" / f"{slug}-recall-{role}.key.pem", private)
            _write(root / "trust" / "recall" / f"{slug}.example" / f"{role}.pem", public)
    _write(root / "trust" / "recall-policy.json", _json({"threshold": 2}))
    quality = recall_key("acme-infusion", "quality", "Ed25519")
    security = recall_key("acme-infusion", "security", "Ed25519")
    written = []
    for name, spec in (("Z-0412-2026", mbedtls_spec()), ("Z-0413-2026", hardware_spec())):
        fields = fields_from_spec(spec)
        _write(root / f"{name}.spec.json", _json(spec))
        _write(root / f"{name}.recall.cbor", build_recall(fields, [quality, security]))
        written += [root / f"{name}.spec.json", root / f"{name}.recall.cbor"]
        if name == "Z-0412-2026":
            _write(root / f"{name}.one-signature.cbor", build_recall(fields, [quality]))
            written.append(root / f"{name}.one-signature.cbor")
    _write(root / "acme-sa-2026-001.csaf.json", _json(csaf_advisory()))
    written.append(root / "acme-sa-2026-001.csaf.json")
    return written


if __name__ == "__main__":
    for path in generate():
        print(path.relative_to(HERE.parent.parent))  # noqa: T201 -- a script
