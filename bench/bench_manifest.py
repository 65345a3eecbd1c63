"""Manifest checks other than SBOM quality, per call, beside a bare COSE_Sign1 verify.

The urgent lane gates delivery on every check except SBOM quality (DESIGN, "Urgent lane"); the
goal is <= 1 ms per manifest. Inputs are the committed samples in ``firmware_manifests/``: an
Ed25519 routine manifest (manufacturer signature + operator approval: two verifies), the Ed25519
urgent fix (one verify) and a P-256 routine manifest, each with its 4 KiB image and its SBOM
binding. The baseline is ``decode_sign1`` + ``verify`` of the same manifest's signature alone.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from bench._table import Row, rate
from gateway.core.cbor import strict_loads
from gateway.core.cose import PublicKey, decode_sign1
from gateway.core.manifest import DeviceTarget, device_target, validate_manifest
from gateway.core.sbom import preload_schemas
from gateway.store.manifests import load_manifest_trust

ROOT = Path(__file__).resolve().parents[1] / "firmware_manifests"
CASES = (
    ("Ed25519 routine + approval", "acme-infusion/volara-lvp-3/4.2.9"),
    ("Ed25519 urgent, no approval", "acme-infusion/volara-lvp-3/4.2.10"),
    ("ES256 routine + approval", "borealis/aurora-m12-bedside-monitor/7.4.1"),
)


def run(*, quick: bool) -> list[Row]:
    preload_schemas(("1.6",))
    trust = load_manifest_trust(ROOT / "trust")
    index = {r["manifest"]: r for r in json.loads((ROOT / "samples/index.json").read_text())}
    now = datetime.now(UTC)
    n = 200 if quick else 1000
    rows: list[Row] = []
    for label, folder in CASES:
        path = ROOT / "samples" / folder / "manifest.cbor"
        row = index[str(path.relative_to(ROOT))]
        data = path.read_bytes()
        image = (path.parent / "image.bin").read_bytes()
        device = device_target({"id": "d", **row})
        signed = strict_loads(data)["manifest"]
        msg = decode_sign1(signed)
        key = trust.manufacturers[msg.kid or b""].key

        def fast(data: bytes = data, image: bytes = image, device: DeviceTarget = device) -> None:
            report = validate_manifest(
                data, trust=trust, state={}, now=now, device=device, image=image,
                check_sbom_quality=False,
            )  # fmt: skip
            assert report.ok

        def bare(signed: bytes = signed, key: PublicKey = key) -> None:
            decode_sign1(signed).verify(key)

        fast_rate = rate(fast, n)
        bare_rate = rate(bare, n)
        rows.append(
            Row(
                "manifest",
                f"checks w/o SBOM quality, {label} ({1e3 / fast_rate:.3f} ms)",
                fast_rate,
                "manifests/s",
                "bare COSE_Sign1 decode+verify",
                bare_rate,
                ">= 1,000/s (<= 1 ms)",
            )
        )
    path = ROOT / "samples" / CASES[0][1] / "manifest.cbor"
    data = path.read_bytes()

    def full() -> None:
        assert validate_manifest(data, trust=trust, state={}, now=now).ok

    full_rate = rate(full, max(n // 10, 20))
    rows.append(
        Row("manifest", f"all checks incl. SBOM quality ({1e3 / full_rate:.2f} ms)", full_rate,
            "manifests/s")
    )  # fmt: skip
    return rows
