"""``provgw recall`` and ``provgw inventory``: recall notices, fleet impact, the device inventory.

Thin: file reading, key loading and output; the rules live in :mod:`gateway.core.recall`, the
queries in :mod:`gateway.store.recalls` and :mod:`gateway.store.inventory`.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import click
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.core.cose import PrivateKey
from gateway.core.errors import VerificationError
from gateway.core.manifest import class_id
from gateway.core.recall import (
    Recall,
    add_signature,
    build_recall,
    fields_from_spec,
    unsafe_recall_from_csaf,
)
from gateway.store.db import Database
from gateway.store.inventory import Inventory
from gateway.store.recalls import ImpactReport, RecallStore, load_recall_trust
from gateway.views.cli._output import emit, fail, json_option, refusals

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
_LISTED = 50  # devices listed in text output; --json lists all

db_option = click.option(
    "--db",
    "db_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The gateway's SQLite database file (created if missing).",
)


@click.group("recall")
def group() -> None:
    """Import recall notices and CSAF advisories, and see which devices they hit."""


@click.group("inventory")
def inventory_group() -> None:
    """Keep the device inventory that recalls are matched against."""


def _load_key(path: Path) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        fail(f"{path} is not an unencrypted PEM private key: {exc}")
    if not isinstance(key, Ed25519PrivateKey | ec.EllipticCurvePrivateKey) or (
        isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name != "secp256r1"
    ):
        fail(f"{path} is neither an Ed25519 nor a P-256 key; recalls are signed with those only.")
    return key


# --- manufacturer tooling -----------------------------------------------------------------------


@group.command("build")
@click.argument("spec", type=_FILE)
@click.option(
    "--key",
    "key_paths",
    multiple=True,
    required=True,
    type=_FILE,
    help="Recall-signing key (PEM); repeat for each signer present.",
)
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Output.")
@json_option
def build(spec: Path, key_paths: tuple[Path, ...], output: Path, *, as_json: bool) -> None:
    """Sign the recall described by SPEC (JSON) with each --key (manufacturer role).

    Gateways need signatures by 2 different keys of the manufacturer; a second signer can add
    theirs later with `provgw recall sign`.
    """
    with refusals(as_json=as_json):
        try:
            data = json.loads(spec.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            fail(f"{spec} is not JSON: {exc}")
        if not isinstance(data, dict):
            fail(f"{spec} must be a JSON object (see firmware_manifests/recalls/*.spec.json)")
        fields = fields_from_spec(data)
        output.write_bytes(build_recall(fields, [_load_key(p) for p in key_paths]))
    emit(
        {"file": str(output), "signatures": len(key_paths), "recall": fields.to_json()},
        as_json=as_json,
        text=f"wrote {output}: recall {fields.recall_id} revision {fields.revision}, "
        f"{len(key_paths)} signature(s)",
    )


@group.command("sign")
@click.argument("file", type=_FILE)
@click.option("--key", "key_path", required=True, type=_FILE, help="Recall-signing key (PEM).")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Write here, not FILE.")
@json_option
def sign(file: Path, key_path: Path, output: Path | None, *, as_json: bool) -> None:
    """Add a co-signature to the signed recall FILE (the second of 2-of-N signers)."""
    with refusals(as_json=as_json):
        signed = add_signature(file.read_bytes(), _load_key(key_path))
    target = output or file
    target.write_bytes(signed)
    emit({"file": str(target)}, as_json=as_json, text=f"co-signed {file} -> {target}")


# --- gateway side -------------------------------------------------------------------------------


def _fixed_manifests(db: Database) -> dict[tuple[uuid.UUID, str], bytes]:
    # CSAF "fixed" products become the remedy manifest when the gateway holds that release.
    rows = db.query("SELECT digest, vendor, class, version FROM manifests")
    return {(uuid.UUID(bytes=c), v): bytes(d) for d, _, c, v in rows}


def _read_recall(
    data: bytes, db: Database, trust_dir: Path | None, *, trust_unsigned: bool, vendor: str | None
) -> Recall:
    if data.lstrip()[:1] == b"{":
        # CSAF 2.0 JSON: unsigned (gateway.core.recall module docstring); the operator decides.
        if not trust_unsigned:
            fail(
                "this is a CSAF advisory, which carries no signature the gateway can verify",
                hint="re-run with --trust-unsigned if you trust where the file came from; the "
                "recall is then marked unsigned and the urgent lane will not act on it",
                code=1,
            )
        now = int(datetime.now(UTC).timestamp())
        return unsafe_recall_from_csaf(
            data, vendor_domain=vendor, fixed_manifests=_fixed_manifests(db), issued=now
        )
    if trust_dir is None:
        fail("a signed recall notice needs --trust DIR (recall/<vendor-domain>/*.pem)")
    return Recall.from_bytes(data, trust=load_recall_trust(trust_dir))


def _open(db_path: Path) -> Database:
    return Database(db_path)


@group.command("import")
@click.argument("file", type=_FILE)
@db_option
@click.option("--trust", "trust_dir", type=_DIR, help="Trust directory with recall/ keys.")
@click.option(
    "--trust-unsigned",
    is_flag=True,
    help="Accept a CSAF advisory, which is unsigned; it is marked unsigned.",
)
@click.option("--vendor", help="CSAF only: the manufacturer's domain, if not its namespace.")
@json_option
def import_(  # noqa: PLR0913 -- one parameter per command-line option
    *,
    file: Path,
    db_path: Path,
    trust_dir: Path | None,
    trust_unsigned: bool,
    vendor: str | None,
    as_json: bool,
) -> None:
    """Verify and keep a recall notice (signed CBOR) or a CSAF 2.0 advisory (JSON).

    A signed notice needs 2 signatures by the manufacturer's recall keys in --trust. The impact
    on the inventory is computed and a remediation row is kept per affected device.
    """
    now = datetime.now(UTC)
    with refusals(as_json=as_json), _open(db_path) as db:
        recall = _read_recall(
            file.read_bytes(), db, trust_dir, trust_unsigned=trust_unsigned, vendor=vendor
        )
        store = RecallStore(db)
        new = store.accept(recall, now=now)
        Inventory(db).apply_firmware_events()
        report = store.record_impact(recall, now=now)
    f = recall.fields
    how = f"signed by {', '.join(recall.signers)}" if recall.signed else "UNSIGNED (CSAF import)"
    text = "\n".join(
        [
            (
                f"{'imported' if new else 'already held'} recall {f.recall_id} "
                f"revision {f.revision} (class {f.recall_class}, {f.status}), {how}"
            ),
            f"  reason    {f.reason}",
            (
                f"  affected  {len(report.affected)} device(s); undetermined "
                f"{len(report.undetermined)}"
            ),
            *[f"  note      {n}" for n in recall.notes],
        ]
    )
    emit(
        {
            "ok": True,
            "new": new,
            **recall.to_json(),
            "affected_count": len(report.affected),
            "undetermined_count": len(report.undetermined),
        },
        as_json=as_json,
        text=text,
    )


def _impact_text(report: ImpactReport, rules: list[str]) -> str:
    lines = [
        (
            f"recall {report.recall_id}: {len(report.affected)} affected device(s), "
            f"{len(report.undetermined)} undetermined"
        )
    ]
    lines += [f"  rule {i}: {text}" for i, text in enumerate(rules)]
    for impact in report.affected[:_LISTED]:
        lines.append(
            f"  {impact.device_id:28} {impact.model:26} {impact.version or '?':10} {impact.site}"
        )
        lines += [f"      rule {m.rule} ({m.kind}): {m.detail}" for m in impact.matches]
    if len(report.affected) > _LISTED:
        lines.append(f"  ... {len(report.affected) - _LISTED} more (use --json for all)")
    for item in report.undetermined[:_LISTED]:
        why = "; ".join(f"rule {m.rule}: {m.detail}" for m in item.reasons)
        lines.append(f"  UNDETERMINED {item.device_id} ({item.model}): {why}")
    return "\n".join(lines)


@group.command("impact")
@click.argument("recall_id")
@db_option
@json_option
def impact(recall_id: str, db_path: Path, *, as_json: bool) -> None:
    """List the devices recall RECALL_ID hits and, for each, which rule matched.

    Devices the gateway cannot decide (firmware version, lot or SBOM unknown) are listed as
    undetermined. Exit code 0 also when no device is affected.
    """
    with refusals(as_json=as_json), _open(db_path) as db:
        store = RecallStore(db)
        recall = store.get(recall_id)
        if recall is None:
            fail(f"no recall {recall_id!r} in {db_path}", hint="see `provgw recall list`", code=1)
        Inventory(db).apply_firmware_events()
        report = store.impact(recall)
        models = {
            class_id(recall.fields.vendor, m): m
            for (m,) in db.query(
                "SELECT DISTINCT model FROM inventory WHERE vendor = ?",
                (recall.fields.vendor.bytes,),
            )
        }
    rules = [
        r.describe(models.get(r.class_id) if r.class_id else None) for r in recall.fields.rules
    ]
    data = {**report.to_json(), "signed": recall.signed, "rules": rules}
    emit(data, as_json=as_json, text=_impact_text(report, rules))


@group.command("list")
@db_option
@json_option
def list_(db_path: Path, *, as_json: bool) -> None:
    """List the recalls the gateway holds, with affected devices and remediation states."""
    with refusals(as_json=as_json), _open(db_path) as db:
        summaries = RecallStore(db).summaries()
    lines = [f"{len(summaries)} recall(s)"]
    for s in summaries:
        states = ", ".join(f"{k} {v}" for k, v in sorted(s.states.items())) or "none tracked"
        lines.append(
            f"  {s.recall_id:18} rev {s.revision} class {s.recall_class:3} {s.status:10} "
            f"{'signed' if s.signed else 'UNSIGNED'}  {s.affected} device(s): {states}"
        )
        lines.append(f"      {s.reason}")
    emit({"recalls": [s.to_json() for s in summaries]}, as_json=as_json, text="\n".join(lines))


@inventory_group.command("import")
@click.argument("devices", type=_FILE)
@db_option
@click.option(
    "--firmware",
    "defaults",
    multiple=True,
    metavar="MODEL=VERSION",
    help="Initial firmware version for a model's devices that give none (repeatable).",
)
@json_option
def inventory_import(
    devices: Path, db_path: Path, defaults: tuple[str, ...], *, as_json: bool
) -> None:
    """Import DEVICES (devices.json from `provgw-sim pki init`) into the inventory.

    Rows may carry `lot` and `firmware_version`; later firmware_update reports replace the
    version. One bad row refuses the whole file.
    """
    versions: dict[str, str] = {}
    for item in defaults:
        model, sep, version = item.rpartition("=")
        if not sep or not model or not version:
            fail(f"--firmware {item!r} must be MODEL=VERSION, e.g. 'Volara LVP 3=4.2.9'")
        versions[model] = version
    with refusals(as_json=as_json), _open(db_path) as db:
        inventory = Inventory(db)
        try:
            result = inventory.import_devices_json(devices, default_versions=versions)
        except VerificationError as err:
            fail(f"{devices} was not imported: {err}", code=1)
        total = inventory.count()
    emit(
        {"ok": True, "added": result.added, "updated": result.updated, "total": total},
        as_json=as_json,
        text=f"inventory: {result.added} added, {result.updated} updated, {total} device(s)",
    )
