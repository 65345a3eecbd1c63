"""``provgw manifest``: build, approve, validate and show firmware manifests.

Thin: file reading, key loading and output only; every rule lives in :mod:`gateway.core.manifest`.
"""

from __future__ import annotations

import hashlib
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.core.cose import PrivateKey
from gateway.core.errors import VerificationError
from gateway.core.manifest import (
    DeviceTarget,
    ManifestFields,
    ManifestReport,
    add_approval,
    build_envelope,
    class_id,
    device_target,
    sign_manifest,
    unsafe_read_manifest,
    validate_manifest,
    vendor_id,
)
from gateway.core.semver import Version
from gateway.store.manifests import load_manifest_trust
from gateway.views.cli._output import emit, fail, json_option

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
#: Default validity of a new manifest when --use-before is not given.
_DEFAULT_VALIDITY = timedelta(days=365)


@click.group("manifest")
def group() -> None:
    """Build, approve, validate and inspect signed firmware manifests."""


def _load_key(path: Path) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        fail(f"{path} is not an unencrypted PEM private key: {exc}", hint="see firmware_manifests")
    if not isinstance(key, Ed25519PrivateKey | ec.EllipticCurvePrivateKey) or (
        isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name != "secp256r1"
    ):
        fail(f"{path} is neither an Ed25519 nor a P-256 key; manifests are signed with those only.")
    return key


def _parse_when(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        fail(f"--use-before {text!r} is not a date such as 2027-01-31 or 2027-01-31T12:00:00Z")
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


@group.command("build")
@click.option("--image", "image_path", required=True, type=_FILE, help="Firmware image file.")
@click.option("--sbom", "sbom_path", required=True, type=_FILE, help="CycloneDX JSON SBOM.")
@click.option(
    "--vendor", required=True, help="Manufacturer DNS domain, e.g. acme-infusion.example."
)
@click.option("--class", "model", required=True, help="Device model name, e.g. 'Volara LVP 3'.")
@click.option("--version", "version", required=True, help="Display version (semver), e.g. 4.2.10.")
@click.option("--seq", required=True, type=click.IntRange(0, 2**63 - 1), help="Sequence number.")
@click.option(
    "--priority",
    default=0,
    show_default=True,
    type=click.IntRange(-(2**31), 2**31 - 1),
    help="Update priority; below 0 = urgent security fix (needs no operator approval).",
)
@click.option("--use-before", help="Last moment the manifest may be used (ISO date); +1 year.")
@click.option("--uri", help="Where devices fetch the image (default: a URL under the vendor).")
@click.option("--key", "key_path", required=True, type=_FILE, help="Manufacturer key (PEM).")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Output.")
@json_option
def build(  # noqa: PLR0913 -- one parameter per command-line option
    *,
    image_path: Path,
    sbom_path: Path,
    vendor: str,
    model: str,
    version: str,
    seq: int,
    priority: int,
    use_before: str | None,
    uri: str | None,
    key_path: Path,
    output: Path,
    as_json: bool,
) -> None:
    """Sign a firmware manifest for an image and its SBOM (manufacturer role).

    The envelope written to OUTPUT carries the signed manifest and the SBOM; hospitals add
    their approval with `provgw manifest approve`.
    """
    try:
        Version.parse(version, strict=True)
    except VerificationError as err:
        fail(str(err))
    key = _load_key(key_path)
    image = image_path.read_bytes()
    sbom = sbom_path.read_bytes()
    when = _parse_when(use_before) if use_before else datetime.now(UTC) + _DEFAULT_VALIDITY
    vendor_uuid = vendor_id(vendor)
    fields = ManifestFields(
        seq=seq,
        vendor=vendor_uuid,
        class_id=class_id(vendor_uuid, model),
        image_digest=hashlib.sha256(image).digest(),
        image_size=len(image),
        version=version,
        use_before=int(when.timestamp()),
        priority=priority,
        sbom_digest=hashlib.sha256(sbom).digest(),
        uri=uri or f"https://firmware.{vendor}/{image_path.name}",
    )
    output.write_bytes(build_envelope(sign_manifest(fields, key), sbom=sbom))
    emit(
        {"file": str(output), "manifest": fields.to_json()},
        as_json=as_json,
        text=f"wrote {output}: {model} {version} (seq {seq}, priority {priority})",
    )


@group.command("approve")
@click.argument("file", type=_FILE)
@click.option("--key", "key_path", required=True, type=_FILE, help="Operator key (PEM).")
@click.option(
    "--trust",
    "trust_dir",
    type=_DIR,
    help="Validate against this trust directory first, and refuse to approve an invalid manifest.",
)
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Write here, not FILE.")
@json_option
def approve(
    file: Path, key_path: Path, trust_dir: Path | None, output: Path | None, *, as_json: bool
) -> None:
    """Add the hospital operator's approval to FILE (Uptane director role).

    Routine updates (priority >= 0) need it before the gateway offers them to devices.
    """
    data = file.read_bytes()
    key = _load_key(key_path)
    now = datetime.now(UTC)
    if trust_dir is not None:
        report = validate_manifest(data, trust=_trust(trust_dir), state={}, now=now)
        bad = [c for c in report.checks if not c.ok and c.name != "operator-approval"]
        if bad:
            fail(f"refusing to approve {file}: {bad[0].detail}", code=1)
    try:
        approved = add_approval(data, key, now=now)
    except VerificationError as err:
        fail(f"{file} is not a firmware manifest envelope: {err}", code=1)
    target = output or file
    target.write_bytes(approved)
    emit(
        {"file": str(target), "approved": True},
        as_json=as_json,
        text=f"approved {file} -> {target}",
    )


def _trust(trust_dir: Path) -> Any:  # noqa: ANN401 -- ManifestTrust; fail() never returns
    try:
        return load_manifest_trust(trust_dir)
    except VerificationError as err:
        fail(f"cannot load the trust directory {trust_dir}: {err}")


def _device(device_id: str, devices: Path | None) -> DeviceTarget:
    if devices is None:
        fail("--device needs --devices devices.json (from provgw-sim pki init)")
    try:
        rows = json.loads(devices.read_text(encoding="utf-8"))
        row = next(r for r in rows if r.get("id") == device_id)
        return device_target(row)
    except (OSError, ValueError, AttributeError, KeyError, TypeError) as exc:
        fail(f"cannot read {devices}: {exc}")
    except StopIteration:
        fail(f"no device {device_id!r} in {devices}")


def _report_text(file: Path, report: ManifestReport) -> str:
    lines = [f"{'VALID' if report.ok else 'INVALID'} {file}"]
    if report.fields is not None:
        f = report.fields
        kind = "URGENT security fix" if f.urgent else "routine"
        lines.append(f"  version {f.version}, seq {f.seq}, priority {f.priority} ({kind})")
    for check in report.checks:
        lines.append(f"  {check.verdict.upper():7} {check.name:17} {check.detail}")
        lines.append(f"  {'':7} {'':17} stops: {check.threat}")
    return "\n".join(lines)


@group.command("validate")
@click.argument("file", type=_FILE)
@click.option("--trust", "trust_dir", required=True, type=_DIR, help="Manifest trust directory.")
@click.option("--device", "device_id", help="Check vendor and class against this device id.")
@click.option("--devices", type=_FILE, help="devices.json naming the device's manufacturer/model.")
@click.option("--image", "image_path", type=_FILE, help="Check the image's size and digest.")
@json_option
def validate(  # noqa: PLR0913 -- one parameter per command-line option
    *,
    file: Path,
    trust_dir: Path,
    device_id: str | None,
    devices: Path | None,
    image_path: Path | None,
    as_json: bool,
) -> None:
    """Run every manifest check on FILE and report each with its verdict and threat.

    Rollback is checked against an empty in-memory state here (offline). Exit code 0: valid;
    1: refused.
    """
    trust = _trust(trust_dir)
    device = _device(device_id, devices) if device_id else None
    image = image_path.read_bytes() if image_path else None
    report = validate_manifest(
        file.read_bytes(), trust=trust, state={}, now=datetime.now(UTC), device=device, image=image
    )
    emit({"file": str(file), **report.to_json()}, as_json=as_json, text=_report_text(file, report))
    sys.exit(0 if report.ok else 1)


@group.command("show")
@click.argument("file", type=_FILE)
@json_option
def show(file: Path, *, as_json: bool) -> None:
    """Print what FILE claims, WITHOUT checking signatures (use `validate` for a verdict)."""
    try:
        seen = unsafe_read_manifest(file.read_bytes())
    except VerificationError as err:
        fail(f"{file} is not a readable firmware manifest: {err}", code=1)
    data = {
        "file": str(file),
        "verified": False,
        "digest": seen.digest.hex(),
        "manifest": seen.fields.to_json(),
        "signer_kids": [k.hex() for k in seen.signer_kids],
        "approvals": seen.approvals,
        "sbom_bytes": None if seen.sbom is None else len(seen.sbom),
    }
    f = seen.fields
    text = "\n".join(
        [
            f"{file} (NOT VERIFIED: run `provgw manifest validate`)",
            f"  version      {f.version} (seq {f.seq})",
            f"  priority     {f.priority}{' URGENT security fix' if f.urgent else ''}",
            f"  vendor       {f.vendor}",
            f"  class        {f.class_id}",
            f"  image        {f.image_size:,} bytes, sha256 {f.image_digest.hex()}",
            f"  uri          {f.uri}",
            f"  use before   {datetime.fromtimestamp(f.use_before, tz=UTC).isoformat()}",
            f"  sbom         sha256 {f.sbom_digest.hex()}, "
            + ("severed" if seen.sbom is None else f"{len(seen.sbom):,} bytes attached"),
            f"  signatures   {len(seen.signer_kids)} manufacturer, {seen.approvals} approval(s)",
            f"  digest       {seen.digest.hex()}",
        ]
    )
    emit(data, as_json=as_json, text=text)
