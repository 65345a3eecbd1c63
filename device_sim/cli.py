"""``provgw-sim``: the device and manufacturer simulator's command line."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import click

from device_sim import pki as pki_module
from device_sim.events import SimDevice, make_event
from gateway.views.cli._output import emit, fail, json_option

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Simulate medical devices and manufacturers for Provenance Gateway (TEST KEYS ONLY).

    Every command takes --json for scripts; exit code 0 means success, 1 refused, 2 misuse.
    """


@cli.group("pki")
def pki() -> None:
    """Create and change a demo PKI: manufacturer CAs, device certificates, CRLs."""


@pki.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--devices-per-model",
    type=click.IntRange(1, 999),
    default=2,
    show_default=True,
    help="How many devices to make of each model.",
)
@json_option
def init(directory: Path, devices_per_model: int, *, as_json: bool) -> None:
    """Create a demo PKI in DIRECTORY (new or empty): trust dir, CAs, devices, devices.json."""
    try:
        records = pki_module.init_pki(directory, devices_per_model=devices_per_model)
    except FileExistsError as err:
        fail(str(err), hint="pass a new directory, or delete the old demo PKI first")
    kinds = Counter(record.kind for record in records)
    manufacturers = sorted({record.manufacturer_slug for record in records})
    data = {
        "directory": str(directory),
        "trust_dir": str(directory / "trust"),
        "devices": len(records),
        "kinds": dict(sorted(kinds.items())),
        "manufacturers": manufacturers,
        "untrusted_dir": str(directory / "untrusted"),
    }
    kinds_text = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    text = (
        f"Demo PKI (TEST KEYS ONLY) in {directory}: {len(manufacturers)} manufacturers, "
        f"{len(records)} devices ({kinds_text}).\n"
        f"Trust directory: {directory / 'trust'}; inventory: {directory / 'devices.json'}."
    )
    emit(data, as_json=as_json, text=text)


@pki.command("revoke")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--device", "device_id", help="Revoke this device's certificate (device id).")
@click.option("--issuing-ca", "mfr_slug", help="Revoke this manufacturer's issuing CA (slug).")
@json_option
def revoke(directory: Path, device_id: str | None, mfr_slug: str | None, *, as_json: bool) -> None:
    """Revoke a device certificate or an issuing CA by rewriting the CRL in DIRECTORY/trust."""
    if (device_id is None) == (mfr_slug is None):
        fail("give exactly one of --device or --issuing-ca")
    try:
        if device_id is not None:
            serial = pki_module.revoke_device(directory, device_id)
            what, crl = f"device {device_id}", "issuing CA"
        else:
            assert mfr_slug is not None
            serial = pki_module.revoke_issuing_ca(directory, mfr_slug)
            what, crl = f"issuing CA of {mfr_slug}", "root"
    except (KeyError, FileNotFoundError) as err:
        fail(str(err.args[0] if err.args else err), hint="see DIRECTORY/devices.json")
    emit(
        {"revoked": what, "serial": hex(serial), "crl": crl},
        as_json=as_json,
        text=f"Revoked {what} (certificate serial {serial:x}) in the {crl} CRL.",
    )


@cli.command("sign")
@click.option(
    "--pki",
    "pki_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Demo PKI directory made by 'provgw-sim pki init'.",
)
@click.option("--device", "device_id", required=True, help="Device id (see PKI/devices.json).")
@click.option(
    "--type",
    "event_type",
    required=True,
    type=click.Choice(["firmware_update", "maintenance", "custody"]),
    help="Event type to simulate.",
)
@click.option(
    "--seq", type=click.IntRange(0), default=1, show_default=True, help="Sequence number."
)
@click.option("--no-chain", is_flag=True, help="Send only the kid, as after first contact.")
@click.option("--seed", type=int, default=None, help="Random seed for a reproducible body.")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the COSE_Sign1 message.",
)
@json_option
def sign(  # noqa: PLR0913 - one parameter per option
    *,
    pki_dir: Path,
    device_id: str,
    event_type: str,
    seq: int,
    output: Path,
    seed: int | None,
    no_chain: bool,
    as_json: bool,
) -> None:
    """Write one signed event of DEVICE, as the device would publish it."""
    device = _load_device(pki_dir, device_id)
    now = datetime.now(UTC)
    event = make_event(
        device_id,
        event_type,
        seq,
        int(now.timestamp() * 1000),
        random.Random(seed),
        today=now.date(),
    )
    data = device.sign(event, with_chain=not no_chain)
    output.write_bytes(data)
    emit(
        {
            "file": str(output),
            "device": device_id,
            "type": event_type,
            "seq": seq,
            "bytes": len(data),
            "chain": not no_chain,
        },
        as_json=as_json,
        text=f"Wrote {event_type} #{seq} of {device_id} to {output} ({len(data)} bytes).",
    )


def _load_device(pki_dir: Path, device_id: str) -> SimDevice:
    # Devices of the untrusted manufacturer live under PKI/untrusted/ for negative demos.
    found = [b for b in (pki_dir, pki_dir / "untrusted") if (b / "devices" / device_id).is_dir()]
    if not found:
        fail(f"no device {device_id!r} in {pki_dir}", hint=f"see {pki_dir / 'devices.json'}")
    return SimDevice.load(found[0], device_id)


def main() -> None:
    """Console-script entry point."""
    cli()
