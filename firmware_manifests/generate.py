"""Regenerate the sample firmware manifests: ``python -m firmware_manifests.generate``.

TEST KEYS ONLY: every key here is derived from a public label (see :func:`demo_key`), so anyone
can recompute it. Never trust ``firmware_manifests/trust`` outside demos and tests.

The set: three device models of two demo manufacturers (names as in ``device_sim/pki.py``),
three releases each, one of them an urgent security fix; every release has a small image, a
CycloneDX 1.6 SBOM of what such a firmware contains (RTOS, TLS library, bootloader, BLE and Wi-Fi
stacks, application) and a signed envelope. Routine releases carry the demo hospital operator's
approval; the urgent fix does not need one.

Deterministic: keys, images, SBOMs and Ed25519 signatures are the same on every run. ES256
signatures are randomised, so an envelope whose signed content did not change is left as it is
on disk, and regeneration gives an empty diff.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.core.cose import PrivateKey
from gateway.core.errors import VerificationError
from gateway.core.manifest import (
    DEMO_DOMAIN_SUFFIX,
    ManifestFields,
    build_envelope,
    class_id,
    make_approval,
    manifest_digest,
    sign_manifest,
    unsafe_read_manifest,
    vendor_id,
)

HERE = Path(__file__).resolve().parent
#: Fixed clock of the sample set: SBOM timestamps and approval times.
BUILT = datetime(2026, 1, 20, 9, 0, tzinfo=UTC)
#: Use-before of every sample manifest (RFC 9124 REQ.SEC.EXP); far enough for the tests.
USE_BEFORE = datetime(2036, 1, 1, tzinfo=UTC)
OPERATOR = "riverside-general"
IMAGE_SIZE = 4096
EOS = "cdx:lifecycle:milestone:endOfSupport"


def demo_key(label: str, alg: str) -> PrivateKey:
    """Derive the TEST key called *label*: SHA-256 of a public phrase is the private key."""
    seed = hashlib.sha256(f"provgw TEST key, never for production: {label}".encode()).digest()
    if alg == "Ed25519":
        return Ed25519PrivateKey.from_private_bytes(seed)
    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # P-256 n
    return ec.derive_private_key(int.from_bytes(seed, "big") % (order - 1) + 1, ec.SECP256R1())


@dataclass(frozen=True)
class Part:
    """One SBOM component: what it is, who supplies it, its purl and support end."""

    role: str  # rtos, tls, bootloader, ble, wifi, net, app
    name: str
    version: str
    supplier: str
    purl: str
    license: str
    end_of_support: str
    ctype: str = "library"


@dataclass(frozen=True)
class Release:
    """One firmware release of a model."""

    version: str
    seq: int
    priority: int
    parts: tuple[Part, ...]
    note: str


@dataclass(frozen=True)
class Model:
    """A device model of a manufacturer (names as in ``device_sim/pki.py``)."""

    mfr_slug: str
    mfr_name: str
    alg: str
    model: str
    app: str
    releases: tuple[Release, ...]

    @property
    def domain(self) -> str:
        """The demo vendor domain, ``<slug>.example`` (RFC 2606)."""
        return f"{self.mfr_slug}{DEMO_DOMAIN_SUFFIX}"


def _zephyr(v: str, eos: str) -> Part:
    return Part(
        "rtos", "zephyr", v, "Zephyr Project (Linux Foundation)",
        f"pkg:github/zephyrproject-rtos/zephyr@v{v}", "Apache-2.0", eos, "operating-system",
    )  # fmt: skip


def _zephyr_bt(v: str, eos: str) -> Part:
    return Part(
        "ble", "zephyr-bluetooth-host", v, "Zephyr Project (Linux Foundation)",
        f"pkg:github/zephyrproject-rtos/zephyr@v{v}#subsys/bluetooth/host", "Apache-2.0", eos,
    )  # fmt: skip


def _mbedtls(v: str, eos: str) -> Part:
    return Part(
        "tls", "mbedtls", v, "Trusted Firmware (Linaro)",
        f"pkg:github/mbed-tls/mbedtls@v{v}", "Apache-2.0", eos,
    )  # fmt: skip


def _mcuboot(v: str, eos: str) -> Part:
    return Part(
        "bootloader", "mcuboot", v, "MCUboot project (Linaro)",
        f"pkg:github/mcu-tools/mcuboot@v{v}", "Apache-2.0", eos,
    )  # fmt: skip


def _hostap(v: str, eos: str) -> Part:
    return Part(
        "wifi", "wpa_supplicant", v, "hostap project (Jouni Malinen)",
        f"pkg:generic/wpa_supplicant@{v}?download_url=https://w1.fi/releases/wpa_supplicant-{v}.tar.gz",
        "BSD-3-Clause", eos,
    )  # fmt: skip


def _freertos(v: str, eos: str) -> Part:
    return Part(
        "rtos", "freertos-kernel", v, "Amazon Web Services",
        f"pkg:github/freertos/freertos-kernel@V{v}", "MIT", eos, "operating-system",
    )  # fmt: skip


def _wolfssl(v: str, eos: str) -> Part:
    return Part(
        "tls", "wolfssl", v, "wolfSSL Inc.",
        f"pkg:github/wolfssl/wolfssl@v{v}-stable", "GPL-2.0-or-later", eos,
    )  # fmt: skip


def _nimble(v: str, eos: str) -> Part:
    return Part(
        "ble", "mynewt-nimble", v, "Apache Software Foundation",
        f"pkg:github/apache/mynewt-nimble@nimble_{v.replace('.', '_')}_tag", "Apache-2.0", eos,
    )  # fmt: skip


def _lwip(v: str, eos: str) -> Part:
    return Part(
        "net", "lwip", v, "lwIP project (Savannah)",
        f"pkg:generic/lwip@{v}?download_url=https://download.savannah.nongnu.org/releases/lwip/lwip-{v}.zip",
        "BSD-3-Clause", eos,
    )  # fmt: skip


def _app(slug: str, app: str, v: str, supplier: str) -> Part:
    return Part(
        "app", app, v, supplier, f"pkg:generic/{slug}/{app}@{v}", "LicenseRef-proprietary",
        "2033-12-31", "application",
    )  # fmt: skip


ACME = ("acme-infusion", "Acme Infusion Systems", "Ed25519")
BOREALIS = ("borealis", "Borealis Monitoring", "P-256")

MODELS: tuple[Model, ...] = (
    Model(*ACME, "Volara LVP 3", "volara-lvp3-app", (
        Release("4.2.8", 1, 0, (
            _zephyr("3.5.0", "2024-12-31"), _zephyr_bt("3.5.0", "2024-12-31"),
            _mbedtls("3.5.1", "2025-03-31"), _mcuboot("2.0.0", "2026-06-30"),
            _hostap("2.10", "2027-12-31")), "routine release"),
        Release("4.2.9", 2, 0, (
            _zephyr("3.6.0", "2025-06-30"), _zephyr_bt("3.6.0", "2025-06-30"),
            _mbedtls("3.5.1", "2025-03-31"), _mcuboot("2.0.0", "2026-06-30"),
            _hostap("2.10", "2027-12-31")), "routine release: Zephyr 3.6"),
        Release("4.2.10", 3, -1, (
            _zephyr("3.6.0", "2025-06-30"), _zephyr_bt("3.6.0", "2025-06-30"),
            _mbedtls("3.5.2", "2025-03-31"), _mcuboot("2.0.0", "2026-06-30"),
            _hostap("2.10", "2027-12-31")),
            "URGENT security fix: Mbed TLS 3.5.2 (CVE-2024-23170, CVE-2024-23775)"),
    )),
    Model(*ACME, "SyriFlow S2 syringe pump", "syriflow-s2-app", (
        Release("2.0.0", 1, 0, (
            _zephyr("3.6.0", "2025-06-30"), _zephyr_bt("3.6.0", "2025-06-30"),
            _mbedtls("3.5.2", "2025-03-31"), _mcuboot("2.0.0", "2026-06-30")), "first release"),
        Release("2.1.0", 2, 0, (
            _zephyr("3.7.0", "2029-07-31"), _zephyr_bt("3.7.0", "2029-07-31"),
            _mbedtls("3.6.0", "2027-03-31"), _mcuboot("2.1.0", "2027-06-30")),
            "routine release: Zephyr 3.7 LTS, Mbed TLS 3.6 LTS"),
        Release("2.1.1", 3, 1, (
            _zephyr("3.7.0", "2029-07-31"), _zephyr_bt("3.7.0", "2029-07-31"),
            _mbedtls("3.6.0", "2027-03-31"), _mcuboot("2.1.0", "2027-06-30")),
            "low-priority bug fix"),
    )),
    Model(*BOREALIS, "Aurora M12 bedside monitor", "aurora-m12-app", (
        Release("7.3.0", 1, 0, (
            _freertos("10.6.2", "2026-12-31"), _lwip("2.1.3", "2025-12-31"),
            _wolfssl("5.6.4", "2026-10-31"), _mcuboot("2.0.0", "2026-06-30"),
            _nimble("1.6.0", "2026-06-30"), _hostap("2.10", "2027-12-31")), "routine release"),
        Release("7.4.0", 2, 0, (
            _freertos("11.0.1", "2028-12-31"), _lwip("2.2.0", "2028-12-31"),
            _wolfssl("5.6.6", "2027-03-31"), _mcuboot("2.0.0", "2026-06-30"),
            _nimble("1.7.0", "2027-06-30"), _hostap("2.10", "2027-12-31")),
            "routine release: FreeRTOS 11"),
        Release("7.4.1", 3, 0, (
            _freertos("11.1.0", "2028-12-31"), _lwip("2.2.0", "2028-12-31"),
            _wolfssl("5.7.0", "2027-09-30"), _mcuboot("2.1.0", "2027-06-30"),
            _nimble("1.7.0", "2027-06-30"), _hostap("2.11", "2029-07-31")),
            "routine maintenance release"),
    )),
)  # fmt: skip

# Who depends on whom, by role (the application pulls in the stacks; the stacks need the RTOS).
_DEPENDS = {
    "app": ("rtos", "tls", "ble", "wifi", "net"),
    "tls": ("rtos",),
    "ble": ("rtos",),
    "wifi": ("tls", "rtos", "net"),
    "net": ("rtos",),
    "bootloader": (),
    "rtos": (),
}


def slug(text: str) -> str:
    """Lower-case words joined by hyphens."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def image_bytes(model: Model, release: Release) -> bytes:
    """Return a small, deterministic stand-in firmware image (header, then a SHA-256 stream)."""
    header = f"PROVGW TEST FIRMWARE\n{model.model}\n{release.version}\n".encode()
    out = bytearray(header)
    counter = 0
    while len(out) < IMAGE_SIZE:
        out += hashlib.sha256(header + counter.to_bytes(4, "big")).digest()
        counter += 1
    return bytes(out[:IMAGE_SIZE])


def _component(part: Part) -> dict[str, Any]:
    ref = f"{part.role}:{part.name}@{part.version}"
    # Hashes are of the simulated component builds (the name and version): the images are
    # stand-ins, so are their parts.
    content = hashlib.sha256(f"{part.name}@{part.version}".encode()).hexdigest()
    return {
        "type": part.ctype,
        "bom-ref": ref,
        "supplier": {"name": part.supplier},
        "name": part.name,
        "version": part.version,
        "purl": part.purl,
        "hashes": [{"alg": "SHA-256", "content": content}],
        "licenses": [
            {"license": {"name": part.license}}
            if part.license.startswith("LicenseRef")
            else {"license": {"id": part.license}}
        ],
        "properties": [{"name": EOS, "value": part.end_of_support}],
    }


def sbom_document(model: Model, release: Release, image: bytes) -> dict[str, Any]:
    """Return the CycloneDX 1.6 SBOM of one release, with NTIA and FDA elements."""
    parts = (
        *release.parts,
        _app(model.mfr_slug, model.app, release.version, model.mfr_name),
    )
    components = [_component(p) for p in parts]
    by_role = {p.role: c["bom-ref"] for p, c in zip(parts, components, strict=True)}
    firmware_ref = f"firmware:{slug(model.model)}@{release.version}"
    dependencies = [{"ref": firmware_ref, "dependsOn": [by_role["app"], by_role["bootloader"]]}]
    dependencies += [
        {"ref": c["bom-ref"], "dependsOn": [by_role[r] for r in _DEPENDS[p.role] if r in by_role]}
        for p, c in zip(parts, components, strict=True)
    ]
    serial = uuid.uuid5(vendor_id(model.domain), f"sbom {model.model} {release.version}")
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": f"urn:uuid:{serial}",
        "version": 1,
        "metadata": {
            "timestamp": BUILT.isoformat().replace("+00:00", "Z"),
            "lifecycles": [{"phase": "build"}],
            "authors": [
                {"name": f"{model.mfr_name} firmware team", "email": f"sbom@{model.domain}"}
            ],
            "supplier": {"name": model.mfr_name, "url": [f"https://{model.domain}/"]},
            "component": {
                "type": "firmware",
                "bom-ref": firmware_ref,
                "supplier": {"name": model.mfr_name},
                "name": f"{slug(model.model)}-firmware",
                "version": release.version,
                "description": f"{model.model} firmware {release.version}: {release.note}",
                "hashes": [{"alg": "SHA-256", "content": hashlib.sha256(image).hexdigest()}],
            },
        },
        "components": components,
        "dependencies": dependencies,
    }


def _pem_private(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _pem_public(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_bytes() != data:
        path.write_bytes(data)


def _same_envelope(path: Path, digest: bytes, sbom: bytes, approvals: int) -> bool:
    # An ES256 envelope whose signed content is unchanged is kept as it is (small diffs).
    if not path.exists():
        return False
    try:
        old = unsafe_read_manifest(path.read_bytes())
    except VerificationError:
        return False
    return old.digest == digest and old.sbom == sbom and old.approvals == approvals


def generate(root: Path = HERE) -> list[dict[str, Any]]:
    """Write keys, trust directory and samples under *root*; return the index rows."""
    operator = demo_key(f"operator {OPERATOR}", "Ed25519")
    _write(root / "keys" / f"operator-{OPERATOR}.key.pem", _pem_private(operator))
    _write(root / "trust" / "operators" / f"{OPERATOR}.pem", _pem_public(operator))
    index: list[dict[str, Any]] = []
    for model in MODELS:
        key = demo_key(f"firmware {model.mfr_slug}", model.alg)
        _write(root / "keys" / f"{model.mfr_slug}-firmware.key.pem", _pem_private(key))
        _write(root / "trust" / "firmware" / model.domain / "firmware-2026.pem", _pem_public(key))
        vendor = vendor_id(model.domain)
        klass = class_id(vendor, model.model)
        for release in model.releases:
            folder = root / "samples" / model.mfr_slug / slug(model.model) / release.version
            image = image_bytes(model, release)
            sbom = (json.dumps(sbom_document(model, release, image), indent=2) + "\n").encode()
            fields = ManifestFields(
                seq=release.seq,
                vendor=vendor,
                class_id=klass,
                image_digest=hashlib.sha256(image).digest(),
                image_size=len(image),
                version=release.version,
                use_before=int(USE_BEFORE.timestamp()),
                priority=release.priority,
                sbom_digest=hashlib.sha256(sbom).digest(),
                uri=f"https://firmware.{model.domain}/{slug(model.model)}/{release.version}/image.bin",
            )
            digest = manifest_digest(fields.to_cbor())
            approvals = [] if release.priority < 0 else [make_approval(digest, operator, now=BUILT)]
            _write(folder / "image.bin", image)
            _write(folder / "sbom.cdx.json", sbom)
            envelope_path = folder / "manifest.cbor"
            if not _same_envelope(envelope_path, digest, sbom, len(approvals)):
                envelope = build_envelope(
                    sign_manifest(fields, key), sbom=sbom, approvals=approvals
                )
                _write(envelope_path, envelope)
            index.append(
                {
                    "manifest": str(envelope_path.relative_to(root)),
                    "manufacturer_slug": model.mfr_slug,
                    "vendor_domain": model.domain,
                    "model": model.model,
                    "version": release.version,
                    "seq": release.seq,
                    "priority": release.priority,
                    "approved": bool(approvals),
                    "digest": digest.hex(),
                    "note": release.note,
                }
            )
    _write(root / "samples" / "index.json", (json.dumps(index, indent=2) + "\n").encode())
    return index


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="where to write (default: here)")
    args = parser.parse_args()
    rows = generate(args.out)
    print(f"{len(rows)} sample manifests under {args.out / 'samples'}")  # noqa: T201 -- a script


if __name__ == "__main__":
    main()
