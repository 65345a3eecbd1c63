"""``provgw-sim``: the device and manufacturer simulator's command line."""

from __future__ import annotations

import random
import signal
import sys
import threading
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from device_sim import pki as pki_module
from device_sim.demo import DemoError, DemoOptions, run_demo
from device_sim.events import SimDevice, make_event
from device_sim.fleet import FaultRates, FleetOptions, FleetProgress, FleetReport, run_fleet
from gateway.core.errors import ProvenanceError
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


_rate = click.FloatRange(0.0, 1.0)


@cli.command("fleet")
@click.option(
    "--pki",
    "pki_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Demo PKI directory made by 'provgw-sim pki init' (devices and their keys).",
)
@click.option(
    "--broker",
    "broker_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Directory 'provgw broker-config -o DIR' wrote (site CA, client certificates).",
)
@click.option("--host", default=None, help="Broker address [default: the one in broker.json].")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Broker TLS port [default: the one in broker.json].",
)
@click.option(
    "--devices",
    type=click.IntRange(1),
    default=10,
    show_default=True,
    help="How many devices of PKI/devices.json publish (one TLS connection each).",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0.0, min_open=True),
    default=10.0,
    show_default=True,
    help="Events per second, all devices together.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0.0),
    default=10.0,
    show_default=True,
    help="Seconds of publishing (then PUBACKs still due are awaited briefly).",
)
@click.option("--seed", type=int, default=None, help="Random seed for reproducible contents.")
@click.option("--bad-signature-rate", type=_rate, default=0.0, help="Share with a flipped bit.")
@click.option("--replay-rate", type=_rate, default=0.0, help="Share reusing a seq, other content.")
@click.option("--malformed-rate", type=_rate, default=0.0, help="Share of random/truncated bytes.")
@click.option(
    "--impersonate-rate",
    type=_rate,
    default=0.0,
    help="Share published on another device's topic (the broker ACL refuses these).",
)
@click.option(
    "--privileged-publisher",
    default=None,
    help="Client id (in the broker config) whose ACL may write any device topic; it publishes "
    "the impersonations, so the gateway's own topic check is exercised. Tests only.",
)
@click.option(
    "--state",
    "state_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Per-device sequence numbers, kept across runs [default: PKI/fleet-state.json].",
)
@click.option(
    "--progress-every",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds between progress lines.",
)
@json_option
def fleet(  # noqa: PLR0913 - one parameter per option
    *,
    pki_dir: Path,
    broker_dir: Path,
    host: str | None,
    port: int | None,
    devices: int,
    rate: float,
    duration: float,
    seed: int | None,
    bad_signature_rate: float,
    replay_rate: float,
    malformed_rate: float,
    impersonate_rate: float,
    privileged_publisher: str | None,
    state_path: Path | None,
    progress_every: float,
    as_json: bool,
) -> None:
    """Run a simulated fleet: DEVICES publish signed events over TLS at RATE for DURATION.

    Each device logs in with its own certificate. Most events are maintenance and custody, some
    firmware updates; a device's first message carries its certificate chain, later ones its
    key id. Faults are injected at the given rates. Ctrl-C stops early and still prints the
    summary. Exit code 0: every message got its PUBACK (refusals by the broker ACL included);
    1: some did not, or no device could connect.
    """
    try:
        faults = FaultRates(bad_signature_rate, replay_rate, malformed_rate, impersonate_rate)
    except ValueError as err:
        fail(str(err))
    options = FleetOptions(
        pki=pki_dir,
        broker_dir=broker_dir,
        devices=devices,
        rate=rate,
        duration=duration,
        host=host,
        port=port,
        seed=seed,
        faults=faults,
        state_path=state_path,
        privileged_publisher=privileged_publisher,
        progress_every=progress_every,
    )
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())

    def progress(p: FleetProgress) -> None:
        click.echo(
            f"  {p.elapsed_s:6.1f} s  sent {p.sent}  acked {p.acked}  refused by broker "
            f"{p.refused}  ({p.sent / max(p.elapsed_s, 1e-9):.0f}/s)",
            err=as_json,
        )

    try:
        report = run_fleet(options, on_progress=progress, stop=stop)
    except (ValueError, KeyError) as err:
        fail(str(err.args[0] if err.args else err))
    except ProvenanceError as err:
        fail(str(err), hint="start the broker: mosquitto -c BROKER/mosquitto.conf", code=1)
    finally:
        signal.signal(signal.SIGINT, previous)
    emit(report.to_json(), as_json=as_json, text=fleet_summary(report))
    if report.unacked or report.connected < report.devices:
        sys.exit(1)


def fleet_summary(report: FleetReport) -> str:
    """Return the readable summary of a fleet run."""
    lines = [
        f"Fleet: {report.connected}/{report.devices} devices connected in "
        f"{report.connect_s:.2f} s; {report.sent} messages in {report.duration_s:.1f} s "
        f"({report.sent / max(report.duration_s, 1e-9):.0f}/s)"
        + (" - interrupted" if report.interrupted else ""),
        f"  acked {report.acked}, refused by broker {report.refused}, no PUBACK {report.unacked}",
    ]
    lines += [
        f"  {kind:<14} sent {c['sent']:>7}  acked {c['acked']:>7}  refused {c['refused']:>5}"
        for kind, c in report.kinds.items()
        if c["sent"]
    ]
    lines += [f"  refused: {n} x {reason}" for reason, n in sorted(report.refusals.items())]
    lines += [
        f"  could not connect: {d} ({why})" for d, why in sorted(report.connect_failures.items())
    ]
    if report.state_file:
        lines.append(f"  sequence numbers saved in {report.state_file}")
    return "\n".join(lines)


@cli.command("demo")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo-run"),
    show_default=True,
    help="Fresh directory for everything the demo makes (an earlier demo's is replaced).",
)
@click.option(
    "--devices", type=click.IntRange(1, 2000), default=50, show_default=True, help="Fleet size."
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0.0, min_open=True),
    default=50.0,
    show_default=True,
    help="Events per second, all devices together.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0.0),
    default=20.0,
    show_default=True,
    help="Seconds the fleet publishes.",
)
@click.option("--seed", type=int, default=None, help="Random seed for reproducible contents.")
@click.option(
    "--browse/--no-browse",
    default=True,
    show_default=True,
    help="After the scenario, keep everything running for the web UI until Ctrl-C; "
    "--no-browse exits at the end (scripts, tests).",
)
@json_option
def demo(  # noqa: PLR0913 - one parameter per option
    *,
    directory: Path,
    devices: int,
    rate: float,
    duration: float,
    seed: int | None,
    browse: bool,
    as_json: bool,
) -> None:
    """Run Mosquitto, the gateway and a simulated fleet end to end, and show what arrives.

    Steps: (1) demo PKI, (2) broker configuration, (3) Mosquitto on a free loopback port,
    (4) provgw serve, (5) the fleet with a little fault injection, (6) what was stored and
    quarantined, and one device's history, (7) one stored message verified offline with
    provgw message verify, (8) an urgent recall: the signed recall and its remedy published,
    the affected pumps patched (one fails, one is offline) and their remediation shown.
    The read-only web UI (provgw ui) runs from step 4; its URL and those of one device page and
    the recall page are printed, and with --browse (the default) everything keeps running until
    Ctrl-C. Everything started is stopped on exit and on Ctrl-C.
    Exit code 0: the demo ran and the sample message verified; 1: a step failed.
    """
    options = DemoOptions(
        directory, devices=devices, rate=rate, duration=duration, seed=seed, browse=browse
    )
    try:
        result = run_demo(options, lambda line: click.echo(line, err=as_json))
    except DemoError as err:
        fail(str(err), code=1)
    except ProvenanceError as err:
        fail(str(err), hint="see the logs in the demo directory", code=1)
    verdict = result.get("verify") or {}
    emit(result, as_json=as_json, text=_demo_summary(result))
    if result["interrupted"] or not verdict.get("valid"):
        sys.exit(1)


def _demo_summary(result: dict[str, Any]) -> str:
    if result["interrupted"]:
        return "Demo interrupted; everything it started has been stopped."
    stored = sum(result.get("stored", {}).values())
    quarantined = sum(result.get("quarantined", {}).values())
    return (
        f"Demo done in {result['dir']}: {stored} events stored, {quarantined} messages "
        "quarantined; the sample message verified offline."
        if (result.get("verify") or {}).get("valid")
        else f"Demo finished in {result['dir']}, but no stored message verified offline."
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


# --- the urgent lane: manufacturers publishing, devices taking patches ---------------------------

_BROKER_DIR = click.Path(exists=True, file_okay=False, path_type=Path)


def _mfr_publish(  # noqa: PLR0913, PLR0917 -- the command's options, passed through
    file: Path, broker_dir: Path, slug: str, host: str | None, port: int | None, topic: str
) -> dict[str, Any]:
    """Publish FILE's bytes on TOPIC as manufacturer SLUG; exit 1 if the broker is unreachable."""
    from gateway.ingest.broker_config import BrokerConfig  # noqa: PLC0415
    from gateway.ingest.mqtt import MqttClient  # noqa: PLC0415

    data = file.read_bytes()
    try:
        config = BrokerConfig.load(broker_dir)
        try:
            creds = config.client(f"mfr-{slug}")
        except KeyError as err:
            fail(str(err.args[0]), hint="the manufacturer slug of the demo PKI, e.g. acme-infusion")
        with MqttClient(
            creds, host=host or config.host, port=port or config.port, session_expiry=0
        ) as client:
            client.publish(topic, data)
    except ProvenanceError as err:
        fail(str(err), code=1)
    return {"topic": topic, "bytes": len(data)}


def _publish_options(fn: Any) -> Any:  # noqa: ANN401 -- a click decorator stack
    fn = click.option("--port", type=int, default=None, help="Broker port [default: broker.json].")(
        fn
    )
    fn = click.option("--host", default=None, help="Broker address [default: broker.json].")(fn)
    fn = click.option(
        "--manufacturer", "slug", required=True, help="Manufacturer slug (MQTT id mfr-SLUG)."
    )(fn)
    return click.option(
        "--broker-dir",
        required=True,
        type=_BROKER_DIR,
        help="Directory written by 'provgw broker-config'.",
    )(fn)


@cli.command("publish-manifest")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_publish_options
@json_option
def publish_manifest(  # noqa: PLR0913 - one parameter per option
    file: Path, broker_dir: Path, slug: str, host: str | None, port: int | None, *, as_json: bool
) -> None:
    """Publish the signed manifest FILE as manufacturer SLUG (provgw/v1/mfr/SLUG/manifest)."""
    from gateway.ingest.topics import manifest_topic  # noqa: PLC0415

    topic = manifest_topic(slug)
    sent = _mfr_publish(file, broker_dir, slug, host, port, topic)
    emit(sent, as_json=as_json, text=f"published {topic}")


@cli.command("publish-recall")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_publish_options
@json_option
def publish_recall(  # noqa: PLR0913 - one parameter per option
    file: Path, broker_dir: Path, slug: str, host: str | None, port: int | None, *, as_json: bool
) -> None:
    """Publish the signed recall notice FILE as manufacturer SLUG (provgw/v1/mfr/SLUG/recall)."""
    from gateway.ingest.topics import recall_topic  # noqa: PLC0415

    topic = recall_topic(slug)
    sent = _mfr_publish(file, broker_dir, slug, host, port, topic)
    emit(sent, as_json=as_json, text=f"published {topic}")


def _installed(values: tuple[str, ...]) -> dict[str, Any]:
    from device_sim.patching import Installed  # noqa: PLC0415

    out: dict[str, Any] = {}
    for item in values:
        model, sep, rest = item.rpartition("=")
        version, colon, seq = rest.partition(":")
        if not sep or not colon or not seq.isdigit():
            fail(f"--firmware {item!r} must be MODEL=VERSION:SEQ, e.g. 'Volara LVP 3=4.2.9:2'")
        out[model] = Installed(version, int(seq))
    return out


@cli.command("patch-devices")
@click.option("--pki", "pki_dir", required=True, type=_BROKER_DIR, help="Demo PKI directory.")
@click.option("--broker-dir", required=True, type=_BROKER_DIR, help="'provgw broker-config' dir.")
@click.option(
    "--gateway-key",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The gateway's offer-signing PUBLIC key (PEM) the devices trust.",
)
@click.option(
    "--trust", "trust_dir", required=True, type=_BROKER_DIR, help="Manifest trust directory."
)
@click.option(
    "--firmware",
    multiple=True,
    metavar="MODEL=VERSION:SEQ",
    help="What a model's devices run at the start (repeatable).",
)
@click.option("--devices", type=click.IntRange(1), default=None, help="First N devices [all].")
@click.option("--duration", type=float, default=60.0, show_default=True, help="Seconds to run.")
@click.option("--offline-rate", type=_rate, default=0.0, help="Share of devices never online.")
@click.option("--slow-ms", type=click.IntRange(0), default=0, help="Simulated install time.")
@click.option("--fail-rate", type=_rate, default=0.0, help="Share of installs that fail.")
@click.option("--seed", type=int, default=None, help="Random seed.")
@json_option
def patch_devices(  # noqa: PLR0913 - one parameter per option
    *,
    pki_dir: Path,
    broker_dir: Path,
    gateway_key: Path,
    trust_dir: Path,
    firmware: tuple[str, ...],
    devices: int | None,
    duration: float,
    offline_rate: float,
    slow_ms: int,
    fail_rate: float,
    seed: int | None,
    as_json: bool,
) -> None:
    """Run devices that take firmware offers: verify, install (simulated), report.

    Each device checks the gateway's signature on the offer and the manufacturer's manifest
    itself (signature, its own model, anti-rollback), then publishes a signed firmware_update
    report. Runs for --duration seconds or until Ctrl-C.
    """
    from cryptography.hazmat.primitives.asymmetric.ec import (  # noqa: PLC0415
        EllipticCurvePublicKey,
    )
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
        Ed25519PublicKey,
    )
    from cryptography.hazmat.primitives.serialization import load_pem_public_key  # noqa: PLC0415

    from device_sim.patching import PatchFleet, PatchOptions  # noqa: PLC0415
    from gateway.core.identity import kid_for  # noqa: PLC0415
    from gateway.ingest.broker_config import BrokerConfig  # noqa: PLC0415
    from gateway.store.manifests import load_manifest_trust  # noqa: PLC0415

    public = load_pem_public_key(gateway_key.read_bytes())
    if not isinstance(public, Ed25519PublicKey | EllipticCurvePublicKey):
        fail(f"{gateway_key} is neither an Ed25519 nor a P-256 public key")
    records = pki_module.load_devices(pki_dir)[:devices]
    try:
        fleet = PatchFleet(
            pki_dir,
            BrokerConfig.load(broker_dir),
            records,
            {kid_for(public): public},
            load_manifest_trust(trust_dir),
            _installed(firmware),
            PatchOptions(offline_rate, slow_ms, fail_rate, seed),
        )
        stop = threading.Event()
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        with fleet:
            stop.wait(duration)
    except ProvenanceError as err:
        fail(str(err), code=1)
    results = Counter(o.result for o in fleet.outcomes)
    emit(
        {
            "devices": len(records),
            "offline": fleet.offline,
            "outcomes": dict(results),
            "offers": [
                {"device": o.device_id, "result": o.result, "detail": o.detail}
                for o in fleet.outcomes
            ],
        },
        as_json=as_json,
        text=f"{len(records)} devices ({len(fleet.offline)} offline): "
        + (", ".join(f"{n} {r}" for r, n in sorted(results.items())) or "no offers"),
    )
