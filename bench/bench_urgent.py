"""Urgent patch latency: manufacturer's publish -> the offer arriving at the device.

Same run, same Mosquitto, same receiving devices (two Volara LVP 3 pumps, each its own TLS
session, subscribed to its own ``cmd`` topic). Each urgent patch is a fresh manufacturer-signed
manifest (priority -1, next sequence number) published by ``mfr-acme-infusion``; its latency is
from that publish to the offer arriving at the LAST of the two devices, all timestamps taken in
this process on one monotonic clock. Scenarios, each on a fresh gateway database:

* (a) idle: ``provgw serve`` (routine ingest, 2 verifiers; the ledger process off) with its
  urgent lane process exactly as serve runs it (``[urgent]``), no other traffic;
* (b) a routine flood at the gateway's maximum ingest rate, measured first in the same run
  (pre-signed events from 100 devices, published as fast as the gateway commits them);
* (c) the same flood with serve's ledger process on and failing: the log sealing every 200 ms,
  its only witness unreachable, the chain node down (the outbox retries);
* baseline: the same flood into a naive consumer that puts urgent manifests in the routine queue
  (one client, one FIFO queue, one worker: events verified and stored, a manifest offered when
  its batch comes up).

Everything, broker, flood publisher and devices included, shares this machine's two cores. The
lane's process runs at nice -10 (``urgent.nice``, a deployment setting its separation allows; the
naive baseline has no such lever, since its urgent work sits in the same queue as the flood).

Where the time goes: the lane logs, per urgent message, its queue wait, checks, target selection
and publishing (``gateway.service.urgent``); the rest of publish -> arrival is the two broker hops
(manufacturer -> lane, lane -> device). Each scenario prints the p50/p99 of each part.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench._table import Row
from bench.bench_ingest import pct, start_gateway, stop_process
from device_sim.demo import LocalMosquitto
from device_sim.fleet import device_credentials, raise_fd_limit
from device_sim.pki import init_pki, load_devices
from firmware_manifests.generate import demo_key
from gateway.core.cbor import strict_loads
from gateway.core.cose import decode_sign1
from gateway.core.manifest import (
    ManifestFields,
    build_envelope,
    class_id,
    sign_manifest,
    unsafe_read_manifest,
    vendor_id,
)
from gateway.core.note import COSIGNATURE_V1, Signer
from gateway.core.sbom import sbom_digest
from gateway.ingest.broker_config import write_broker_config
from gateway.ingest.mqtt import MqttClient
from gateway.ingest.topics import command_topic, manifest_topic
from gateway.store.db import Database
from gateway.store.inventory import Inventory

REPO = Path(__file__).resolve().parents[1]
SBOM = (
    REPO / "firmware_manifests" / "samples" / "acme-infusion" / "volara-lvp-3" / "4.2.10"
).joinpath("sbom.cdx.json")
MODEL = "Volara LVP 3"
RECEIVERS = 2
LANE_NICE = -10
_PROVGW = str(Path(sys.executable).with_name("provgw"))
FLOOD_DEVICES = 100


@dataclass(frozen=True)
class Plan:
    patches: int
    interval_s: float
    flood_count: int


QUICK = Plan(patches=30, interval_s=0.05, flood_count=6_000)
FULL = Plan(patches=200, interval_s=0.05, flood_count=40_000)


def urgent_manifests(count: int, first_seq: int = 10) -> list[tuple[str, bytes]]:
    """Pre-sign *count* urgent Volara manifests: (version, envelope), sequence numbers rising."""
    key = demo_key("firmware acme-infusion", "Ed25519")
    vendor = vendor_id("acme-infusion.example")
    sbom = SBOM.read_bytes()
    image = b"\x5a" * 4096
    out = []
    for i in range(count):
        version = f"5.0.{i + 1}"
        fields = ManifestFields(
            seq=first_seq + i,
            vendor=vendor,
            class_id=class_id(vendor, MODEL),
            image_digest=hashlib.sha256(image).digest(),
            image_size=len(image),
            version=version,
            use_before=int(time.time()) + 30 * 86400,
            priority=-1,
            sbom_digest=sbom_digest(sbom),
            uri=f"https://firmware.acme-infusion.example/volara-lvp-3/{version}/image.bin",
        )
        out.append((version, build_envelope(sign_manifest(fields, key), sbom=sbom)))
    return out


class Receivers:
    """The target devices: arrival time (monotonic) of each offered version, per device."""

    def __init__(self, pki: Path, broker: LocalMosquitto, records: list[Any]) -> None:
        self.arrivals: dict[str, dict[str, float]] = defaultdict(dict)
        self.lock = threading.Lock()
        self.clients = []
        for record in records:
            client = MqttClient(
                device_credentials(pki, broker.config, record.id),
                host=broker.host,
                port=broker.port,
                on_message=self._handler(record.id),
                session_expiry=0,
            )
            client.connect()
            client.subscribe(command_topic(record.site, record.id))
            self.clients.append(client)

    def _handler(self, device: str) -> Any:  # noqa: ANN401
        def on_message(topic: str, payload: bytes, tag: int, qos: int, _p: object) -> None:
            now = time.monotonic()
            del topic
            offer = strict_loads(decode_sign1(payload).payload)
            version = unsafe_read_manifest(offer["manifest"]).fields.version
            with self.lock:
                self.arrivals[version].setdefault(device, now)
            for client in self.clients:
                client.ack(tag, qos)  # only the owner's tag is outstanding; others return False

        return on_message

    def close(self) -> None:
        for client in self.clients:
            client.disconnect()


def _proc(*args: str, stdin: bool = False) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench._urgent_procs", *args],
        stdin=subprocess.PIPE if stdin else None,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        msg = f"bench._urgent_procs {args[0]} did not start: {line!r}"
        raise RuntimeError(msg)
    return proc


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_serve(
    folder: Path, broker: LocalMosquitto, pki: Path, key: Path, *, ledger_down: bool
) -> tuple[subprocess.Popen[str], Path]:
    """``provgw serve`` with its urgent lane as deployed (nice -10); return it and its log."""
    lines = [
        "[broker]",
        f'host = "{broker.host}"',
        f"port = {broker.port}",
        f'config_dir = "{broker.config.directory}"',
        "[ingest]",
        f"workers = {os.cpu_count() or 1}",
        "[trust]",
        f'dir = "{pki / "trust"}"',
        "[store]",
        f'path = "{folder / "gateway.sqlite3"}"',
        "[metrics]",
        "port = 0",
        "[urgent]",
        f'offer_key = "{key}"',
        f'manifest_trust = "{REPO / "firmware_manifests" / "trust"}"',
        f'recall_trust = "{REPO / "firmware_manifests" / "recalls" / "trust"}"',
        f"nice = {LANE_NICE}",
        "[log]",
        f"enabled = {'true' if ledger_down else 'false'}",
        "interval_s = 0.2",
    ]
    if ledger_down:
        # The real ledger process, failing: its only witness and the chain node unreachable.
        vkey = Signer.generate("witness.example/dead", COSIGNATURE_V1).verifier.vkey
        (folder / "chain.key").write_text("11" * 32, encoding="ascii")
        lines += [
            "[witnesses]",
            "embedded = false",
            "timeout_s = 5",
            f'remote = [{{ url = "http://127.0.0.1:{_dead_port()}", vkey = "{vkey}" }}]',
            "[chain]",
            "enabled = true",
            f'rpc_url = "http://127.0.0.1:{_dead_port()}"',
            f'contract = "0x{"22" * 20}"',
            f'key_file = "{folder / "chain.key"}"',
            "retry_max_s = 2",
        ]
    config = folder / "gateway.toml"
    config.write_text("\n".join([*lines, ""]), encoding="utf-8")
    log = folder / "serve.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [_PROVGW, "serve", "--config", str(config), "--json"],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    assert proc.stdout is not None
    status = json.loads(proc.stdout.readline() or "{}")
    if status.get("status") != "running" or not (status.get("urgent") or {}).get("subscribed"):
        stop_process(proc)
        msg = f"provgw serve did not start its urgent lane: {status} {log.read_text()[-2000:]}"
        raise RuntimeError(msg)
    if status["urgent"]["nice"] != LANE_NICE:
        print("  (urgent lane at normal priority: no CAP_SYS_NICE)", file=sys.stderr)
    return proc, log


_TIMING = re.compile(
    r"urgent offers: manifest \S+ \d+ offers in ([\d.]+) ms \(queued ([\d.]+), checks "
    r"([\d.]+), targets ([\d.]+), publish ([\d.]+)\)"
)
PHASES = ("lane total", "queued", "checks", "targets", "publish")


def lane_phases(log: Path) -> dict[str, list[float]]:
    """The lane's own timing lines from serve's log: ms per phase, per urgent manifest."""
    out: dict[str, list[float]] = {p: [] for p in PHASES}
    for match in _TIMING.finditer(log.read_text(encoding="utf-8", errors="replace")):
        for name, value in zip(PHASES, match.groups(), strict=True):
            out[name].append(float(value))
    return out


def _inventory(db_path: Path, pki: Path) -> None:
    with Database(db_path) as db:
        rows = [dict(r.__dict__) for r in load_devices(pki)]
        Inventory(db).import_rows(rows, now=datetime.now(UTC), default_versions={MODEL: "4.2.9"})


def _events(db_path: Path) -> int:
    try:
        with sqlite3.connect(db_path, timeout=5) as conn:
            return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


class Flood:
    """The flood publisher process (``bench._urgent_procs flood``)."""

    def __init__(self, pki: Path, broker: LocalMosquitto, count: int) -> None:
        self.proc = _proc(
            "flood",
            "--pki",
            str(pki),
            "--broker",
            str(broker.config.directory),
            "--port",
            str(broker.port),
            "--devices",
            str(FLOOD_DEVICES),
            "--count",
            str(count),
            stdin=True,
        )

    def start(self, rate: float, seconds: float) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{rate} {seconds}\n")
        self.proc.stdin.flush()

    def wait(self) -> tuple[int, float]:
        assert self.proc.stdout is not None
        _, sent, took = self.proc.stdout.readline().split()
        return int(sent), float(took)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def max_ingest_rate(folder: Path, broker: LocalMosquitto, pki: Path, flood: Flood) -> float:
    """Publish the whole flood as fast as the gateway commits it; return events per second."""
    gateway, db = start_gateway(folder, broker, pki, os.cpu_count() or 1)
    try:
        start = time.monotonic()
        flood.start(0, 0)
        sent, _ = flood.wait()
        while _events(db) < sent and time.monotonic() - start < 300:
            time.sleep(0.05)
        return _events(db) / (time.monotonic() - start)
    finally:
        stop_process(gateway)


def patch_latencies(
    broker: LocalMosquitto, receivers: Receivers, manifests: list[tuple[str, bytes]], plan: Plan
) -> list[float]:
    """Publish each urgent manifest; return publish -> last device's arrival, in ms."""
    published: dict[str, float] = {}
    with receivers.lock:
        receivers.arrivals.clear()  # every scenario offers the same versions
    with MqttClient(
        broker.config.client("mfr-acme-infusion"),
        host=broker.host,
        port=broker.port,
        session_expiry=0,
    ) as mfr:
        for version, envelope in manifests:
            published[version] = time.monotonic()
            mfr.publish(manifest_topic("acme-infusion"), envelope)
            time.sleep(plan.interval_s)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and any(
            len(receivers.arrivals.get(v, {})) < RECEIVERS for v in published
        ):
            time.sleep(0.05)
    out = []
    for version, sent in published.items():
        got = receivers.arrivals.get(version, {})
        last = max(got.values()) if len(got) == RECEIVERS else float("inf")
        out.append((last - sent) * 1000)
    return out


def scenario(  # noqa: PLR0913, PLR0917 -- one scenario's parts
    name: str,
    folder: Path,
    broker: LocalMosquitto,
    pki: Path,
    key: Path,
    receivers: Receivers,
    flood: Flood | None,
    rate: float,
    plan: Plan,
    *,
    mode: str = "lane",
    ledger_down: bool = False,
) -> list[float]:
    where = folder / name
    where.mkdir()
    db = where / "gateway.sqlite3"
    _inventory(db, pki)
    gateway = lane = None
    log = None
    if mode == "lane":
        gateway, log = start_serve(where, broker, pki, key, ledger_down=ledger_down)
    else:
        args = ["--db", str(db), "--broker", str(broker.config.directory)]
        args += ["--port", str(broker.port), "--key", str(key), "--trust", str(pki / "trust")]
        lane = _proc(mode, *args)
    try:
        seconds = plan.patches * plan.interval_s + 2
        if flood is not None:
            flood.start(rate, seconds)
            time.sleep(1.0)  # the flood is under way before the first patch
        latencies = patch_latencies(broker, receivers, urgent_manifests(plan.patches), plan)
        if flood is not None:
            flood.wait()
    finally:
        stop_process(lane)
        stop_process(gateway)
    done = [x for x in latencies if x != float("inf")]
    print(
        f"  {name}: p50 {pct(done, 0.5):.1f} ms, p99 {pct(done, 0.99):.1f} ms, max "
        f"{max(done):.1f} ms, {len(latencies) - len(done)} not delivered",
        file=sys.stderr,
        flush=True,
    )
    if log is not None:
        phases = lane_phases(log)
        if phases["lane total"]:
            lane_ms = phases["lane total"]
            hops = [t - lane for t, lane in zip(done, lane_ms, strict=False)]
            print(
                "    where the time goes (p50 / p99 / max ms): "
                + ", ".join(
                    f"{k} {pct(v, 0.5):.1f} / {pct(v, 0.99):.1f} / {max(v):.1f}"
                    for k, v in (*phases.items(), ("broker hops", hops))
                ),
                file=sys.stderr,
                flush=True,
            )
    return latencies


def run(quick: bool) -> list[Row]:  # noqa: FBT001 - the bench runner's interface
    plan = QUICK if quick else FULL
    raise_fd_limit(2048)
    with tempfile.TemporaryDirectory(prefix="bench-urgent-") as tmp:
        folder = Path(tmp)
        pki = folder / "pki"
        # Volara pumps are the receivers; the flood comes from the other 8 models' devices.
        records = init_pki(pki, devices_per_model=-(-FLOOD_DEVICES // 8))
        config = write_broker_config(
            pki, folder / "broker", now=datetime.now(UTC), routine_workers=os.cpu_count() or 1
        )
        key = Ed25519PrivateKey.generate()
        key_file = folder / "offer-key.pem"
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        targets = [r for r in records if r.model == MODEL][:RECEIVERS]
        with LocalMosquitto(config, folder) as broker:
            receivers = Receivers(pki, broker, targets)
            flood = Flood(pki, broker, plan.flood_count)
            try:
                (folder / "rate").mkdir()
                rate = max_ingest_rate(folder / "rate", broker, pki, flood)
                print(f"  max ingest rate {rate:,.0f} events/s", file=sys.stderr, flush=True)
                common = (broker, pki, key_file, receivers)
                idle = scenario("idle", folder, *common, None, 0, plan)
                flooded = scenario("flood", folder, *common, flood, rate, plan)
                down = scenario("down", folder, *common, flood, rate, plan, ledger_down=True)
                naive = scenario("naive", folder, *common, flood, rate, plan, mode="naive")
            finally:
                flood.close()
                receivers.close()
    return _rows(plan, rate, idle, flooded, down, naive)


def _rows(  # noqa: PLR0913, PLR0917 -- one list of latencies per scenario
    plan: Plan,
    rate: float,
    idle: list[float],
    flooded: list[float],
    down: list[float],
    naive: list[float],
) -> list[Row]:
    n = f"{plan.patches} patches x {RECEIVERS} devices"
    flood = f"flood {rate:,.0f}/s"
    base = "naive: urgent in the routine queue"
    return [
        Row("urgent", f"(a) idle p50 publish->offer ({n})", pct(idle, 0.5), "ms"),
        Row("urgent", "(a) idle p99", pct(idle, 0.99), "ms"),
        Row("urgent", f"(b) {flood} p50", pct(flooded, 0.5), "ms", base, pct(naive, 0.5)),
        Row("urgent", f"(b) {flood} p99", pct(flooded, 0.99), "ms", base, pct(naive, 0.99)),
        Row(
            "urgent",
            f"(c) {flood}, chain + witnesses down, p50",
            pct(down, 0.5),
            "ms",
            base,
            pct(naive, 0.5),
        ),
        Row(
            "urgent",
            f"(c) {flood}, chain + witnesses down, p99",
            pct(down, 0.99),
            "ms",
            base,
            pct(naive, 0.99),
            "<= 50 ms and <= 1/20 of baseline",
        ),
    ]
