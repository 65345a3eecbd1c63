"""``provgw-sim demo`` (what ``make demo`` runs): broker, gateway and a fleet, end to end.

In a fresh directory it (1) makes a demo PKI, (2) writes the broker configuration, (3) starts
Mosquitto on a free loopback port, (4) starts ``provgw serve``, (5) runs a small fleet with a
little fault injection, (6) shows what arrived (stored per type, quarantined per reason, one
device's history) and (7) verifies one stored message offline with ``provgw message verify``,
then shows the transparency log ``provgw serve`` keeps beside ingest: its latest checkpoint, the
embedded witness's cosignature, and that message's receipt (``provgw log prove``) verified
offline with nothing but the gateway's and the witness's public keys; and that device's whole
history as an audit bundle (``provgw audit export``), verified by ``provgw audit verify`` with
only the trust folder and those keys. Finally (8) an urgent
recall: biomed imports the inventory (the Volara pumps run 4.2.9), the manufacturer publishes the
2-of-3 signed recall Z-0412-2026 and then its remedy, firmware 4.2.10; the pumps receive signed
offers from the gateway's urgent lane, check them, install (one fails, one is offline) and report,
and ``provgw recall status`` shows each pump's remediation; one patched pump's audit bundle is
then verified with the manufacturer's recall keys (``provgw audit verify --recall-trust``).
From step 4 the read-only web UI (``provgw ui``) runs beside the gateway; at the end the demo
prints its URL and those of one device's page and the recall's page, and with ``browse`` keeps
everything running until Ctrl-C.
Everything it starts is stopped on exit, on error and on Ctrl-C.
"""

from __future__ import annotations

import base64
import getpass
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Self

from device_sim.fleet import FaultRates, FleetOptions, raise_fd_limit, run_fleet
from device_sim.pki import DeviceRecord, init_pki
from gateway.core import note
from gateway.core.errors import ProvenanceError
from gateway.ingest.broker_config import BrokerConfig, write_broker_config
from gateway.ingest.mqtt import client_tls_context
from gateway.ledger.commitments import leaf_for
from gateway.ledger.receipts import verify_receipt
from gateway.views.cli._status import EXIT_NOT_RUNNING

__all__ = ["DemoError", "DemoOptions", "LocalMosquitto", "free_port", "run_demo"]


class DemoError(Exception):
    """A demo step failed; the message says what went wrong and what to do."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port free on *host* right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _mosquitto_exe() -> str:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        msg = (
            "Mosquitto is not installed. Install it (Debian/Ubuntu: sudo apt-get install "
            "mosquitto), or run `make demo`, which installs it when run as root."
        )
        raise DemoError(msg)
    return exe


class LocalMosquitto:
    """A Mosquitto process on a free loopback port, with the configuration ``broker-config`` wrote.

    Its ``mosquitto.conf`` and persistence directory live in *workdir*; its log in
    ``workdir/mosquitto.log``. Use as a context manager: the broker is stopped on exit.
    """

    def __init__(self, config: BrokerConfig, workdir: Path, *, port: int | None = None) -> None:
        self.config = config
        self.workdir = workdir
        self.host = config.host
        self.port = port or free_port(config.host)
        self.conf = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker; wait until it completes a TLS handshake with a client certificate."""
        exe = _mosquitto_exe()
        data = self.workdir / "mosquitto-data"
        data.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            self.config.mosquitto_conf(
                port=self.port, persistence_dir=data, run_as=getpass.getuser()
            ),
            encoding="utf-8",
        )
        # One socket per device: the broker inherits our (raised) limit on open files.
        raise_fd_limit(8192)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - our own executable and config file
                [exe, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT
            )
        ctx = client_tls_context(self.config.client("gateway-admin"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                msg = f"Mosquitto exited with code {self.proc.returncode}; its log:\n{self.log()}"
                raise DemoError(msg)
            try:
                with (
                    socket.create_connection((self.host, self.port), timeout=1) as raw,
                    ctx.wrap_socket(raw, server_hostname=self.host),
                ):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        msg = (
            f"Mosquitto did not accept TLS connections within {timeout:g} s; its log:\n{self.log()}"
        )
        raise DemoError(msg)

    def stop(self) -> None:
        """Stop cleanly (SIGTERM: Mosquitto saves its persistence file); kill if it hangs."""
        _terminate(self.proc)
        self.proc = None

    def restart(self) -> None:
        """Stop and start again on the same port with the same persistence directory."""
        self.stop()
        self.start()

    def reload(self) -> None:
        """Have Mosquitto read its configuration and ACL again (SIGHUP), as ``systemctl reload``."""
        assert self.proc is not None, "the broker is not running"
        self.proc.send_signal(signal.SIGHUP)

    def log(self) -> str:
        """Everything the broker logged so far."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _terminate(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- the demo ------------------------------------------------------------------------------------

_MARKER = ".provgw-demo"
_DEMO_FAULTS = FaultRates(bad_signature=0.01, replay=0.01, malformed=0.01, impersonate=0.01)


@dataclass(frozen=True)
class DemoOptions:
    """What ``provgw-sim demo`` does; see the command's help."""

    directory: Path
    devices: int = 50
    rate: float = 50.0
    duration: float = 20.0
    seed: int | None = None
    faults: FaultRates = field(default_factory=lambda: _DEMO_FAULTS)
    #: After the scenario, keep everything running for the web UI until Ctrl-C.
    browse: bool = False


Say = Callable[[str], None]


def _fresh(directory: Path) -> None:
    # Only a directory an earlier demo made (it holds the marker) is wiped; anything else is kept.
    if directory.exists() and any(directory.iterdir()):
        if not (directory / _MARKER).exists():
            msg = (
                f"{directory} exists and is not an earlier demo's directory; pass --dir with a "
                "new or empty directory"
            )
            raise DemoError(msg)
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / _MARKER).write_text("made by provgw-sim demo; deleted by its next run\n")


def _provgw() -> str:
    beside = Path(sys.executable).with_name("provgw")
    found = str(beside) if beside.exists() else shutil.which("provgw")
    if found is None:
        msg = "the `provgw` command is not installed; run `make demo` (it installs the package)"
        raise DemoError(msg)
    return found


def _has_serve(provgw: str) -> bool:
    result = subprocess.run(  # noqa: S603 - our own command
        [provgw, "serve", "--help"], capture_output=True, text=True, check=False
    )
    return result.returncode == 0


#: The sample recall and its remedy (firmware_manifests/, in the repository beside device_sim).
_SAMPLES = Path(__file__).resolve().parents[1] / "firmware_manifests"
_RECALL = _SAMPLES / "recalls" / "Z-0412-2026.recall.cbor"
_REMEDY = _SAMPLES / "samples" / "acme-infusion" / "volara-lvp-3" / "4.2.10" / "manifest.cbor"
_RECALL_ID = "Z-0412-2026"
_RECALLED_MODEL = "Volara LVP 3"
_RECALL_MFR = "acme-infusion"
#: The demo's offer retries: fast, so an offline pump is reported unreachable within seconds.
_RETRY_S = 1.0
_ATTEMPTS = 2
_STEPS = 8


def _write_gateway_toml(
    path: Path, broker: LocalMosquitto, pki: Path, db: Path, workers: int
) -> None:
    lines = [
        "# Written by `provgw-sim demo`.",
        "[broker]",
        f"host = {json.dumps(broker.host)}",
        f"port = {broker.port}",
        f"config_dir = {json.dumps(str(broker.config.directory))}",
        "[ingest]",
        f"workers = {workers}",
        "[trust]",
        f"dir = {json.dumps(str(pki / 'trust'))}",
        "[store]",
        f"path = {json.dumps(str(db))}",
        "[metrics]",
        f"port = {free_port()}",
        # The embedded default: the log plus a local witness; keys are made at first start.
        "[log]",
        "interval_s = 1.0",
        # The urgent lane trusts the sample manufacturer keys; offers are signed with the log key.
        "[urgent]",
        f"manifest_trust = {json.dumps(str(_SAMPLES / 'trust'))}",
        f"recall_trust = {json.dumps(str(_SAMPLES / 'recalls' / 'trust'))}",
        f"retry_timeout_s = {_RETRY_S}",
        f"retry_max_attempts = {_ATTEMPTS}",
        "retry_backoff = 1.0",
        "tick_s = 0.2",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


class _Child:
    """A ``provgw`` command as a child process that prints one JSON line once it is up."""

    def __init__(self, provgw: str, config: Path, log: Path) -> None:
        self.provgw = provgw
        self.config = config
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None

    def _start(self, args: list[str], timeout: float) -> dict[str, Any] | None:
        """Start ``provgw ARGS --config CONFIG --json``; return its first JSON line (or None)."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - our own command and config
                [self.provgw, *args, "--config", str(self.config), "--json"],
                stdout=subprocess.PIPE,
                stderr=log,
            )
        result: dict[str, Any] = {}
        reader = threading.Thread(target=self._read_first, args=(result,), daemon=True)
        reader.start()
        reader.join(timeout)
        line = result.get("line")
        return line if isinstance(line, dict) else None

    def _read_first(self, result: dict[str, Any]) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with suppress(ValueError):
                result["line"] = json.loads(raw)
                return

    def stop(self, timeout: float = 10.0) -> None:
        _terminate(self.proc, timeout=timeout)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None


class _Gateway(_Child):
    """``provgw serve`` as a child process: started, waited for, stopped."""

    def __init__(self, provgw: str, config: Path, log: Path) -> None:
        super().__init__(provgw, config, log)
        self.status: dict[str, Any] = {}

    def start(self, timeout: float = 60.0) -> dict[str, Any]:
        status = self._start(["serve"], timeout)
        if not status or status.get("status") != "running":
            self.stop()
            detail = (status or {}).get("detail") or self._log_tail()
            msg = f"`provgw serve` did not start: {detail}"
            raise DemoError(msg)
        self.status = dict(status)
        return self.status

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 30.0) -> None:
        super().stop(timeout)


class _WebUi(_Child):
    """``provgw ui`` (the read-only web UI) as a child process, on a free loopback port."""

    url = ""

    def start(self, timeout: float = 20.0) -> str:
        line = self._start(["ui", "--port", "0"], timeout)
        url = (line or {}).get("url")
        if not isinstance(url, str):
            self.stop()
            msg = f"`provgw ui` did not start; see {self.log_path}"
            raise DemoError(msg)
        self.url = url.rstrip("/")
        return self.url

    def overview(self) -> dict[str, Any] | None:
        """Return the UI's /api/overview, or None if it does not answer."""
        url = self.url + "/api/overview"  # http://127.0.0.1:PORT, as `provgw ui` printed it
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:  # noqa: S310 - see above
                return dict(json.loads(reply.read()))
        except (OSError, ValueError):
            return None


def _counts(db: Path) -> tuple[dict[str, int], dict[str, int]]:
    if not db.exists():
        return {}, {}
    conn = sqlite3.connect(db, timeout=5)
    try:
        stored = dict(conn.execute("SELECT type, count(*) FROM events GROUP BY type").fetchall())
        quarantined = dict(
            conn.execute("SELECT reason, count(*) FROM quarantine GROUP BY reason").fetchall()
        )
    except sqlite3.OperationalError:
        return {}, {}
    finally:
        conn.close()
    return stored, quarantined


def _quarantined(counts: dict[str, int], db: Path) -> str:
    if not counts:
        return "nothing"
    return f"{_pairs(counts)} (why, one by one: provgw quarantine list --db {db})"


def _history(db: Path, device: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db, timeout=5)
    try:
        rows = conn.execute(
            "SELECT seq, type, event_time_ms, raw FROM events WHERE device_id = ? ORDER BY seq",
            (device,),
        ).fetchall()
    finally:
        conn.close()
    return [
        {
            "seq": seq,
            "type": kind,
            "time": datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds"),
            "bytes": len(raw),
            "raw": raw,
        }
        for seq, kind, ms, raw in rows
    ]


@contextmanager
def _interruptible(stop: threading.Event) -> Iterator[None]:
    # Ctrl-C (and SIGTERM) set *stop*; every step checks it and the ExitStack cleans up.
    def handler(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        stop.set()

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def run_demo(options: DemoOptions, say: Say) -> dict[str, Any]:  # noqa: PLR0915 - eight steps in order
    """Run the eight demo steps; return what happened (the ``--json`` object).

    Raises :class:`DemoError` with what to do when a step cannot run.
    """
    stop = threading.Event()
    out: dict[str, Any] = {"dir": str(options.directory), "interrupted": False}
    with ExitStack() as cleanup, _interruptible(stop):
        directory = options.directory.resolve()
        _fresh(directory)
        pki, broker_dir, db = directory / "pki", directory / "broker", directory / "gateway.sqlite3"

        say(f"[1/8] demo PKI (TEST KEYS ONLY) in {pki}")
        records = init_pki(pki, devices_per_model=max(1, -(-options.devices // 9)))
        out["pki"] = {"dir": str(pki), "devices": len(records)}

        workers = min(os.cpu_count() or 1, 4)
        say(f"[2/8] broker configuration in {broker_dir} ({workers} gateway workers)")
        port = free_port()
        config = write_broker_config(
            pki, broker_dir, now=datetime.now(UTC), port=port, routine_workers=workers
        )

        say(f"[3/8] Mosquitto on 127.0.0.1:{port} (log: {directory / 'mosquitto.log'})")
        broker = LocalMosquitto(config, directory, port=port)
        broker.start()
        cleanup.callback(broker.stop)
        out["broker"] = {"host": broker.host, "port": broker.port}

        provgw = _provgw()
        gateway_config = directory / "gateway.toml"
        _write_gateway_toml(gateway_config, broker, pki, db, workers)
        ui: _WebUi | None = None
        if _has_serve(provgw):
            say(f"[4/8] provgw serve --config {gateway_config} (log: {directory / 'gateway.log'})")
            gateway = _Gateway(provgw, gateway_config, directory / "gateway.log")
            status = gateway.start()
            cleanup.callback(gateway.stop)
            out["gateway"] = {
                "running": True,
                "pid": status.get("pid"),
                "workers": status.get("workers"),
                "metrics": status.get("metrics"),
            }
            ui = _WebUi(provgw, gateway_config, directory / "ui.log")
            cleanup.callback(ui.stop)
            out["ui"] = {"url": ui.start() + "/", "pid": ui.proc.pid if ui.proc else None}
            say(f"      web UI (read-only): {ui.url}/  (provgw ui --config {gateway_config})")
        else:
            say("[4/8] `provgw serve` is missing in this version: the fleet runs without a gateway")
            out["gateway"] = {"running": False}
        if stop.is_set():
            out["interrupted"] = True
            return out

        say(
            f"[5/8] {options.devices} devices publish {options.rate:g} events/s for "
            f"{options.duration:g} s, with a little fault injection"
        )
        report = run_fleet(
            FleetOptions(
                pki=pki,
                broker_dir=broker_dir,
                devices=options.devices,
                rate=options.rate,
                duration=options.duration,
                port=port,
                seed=options.seed,
                faults=options.faults,
                progress_every=max(1.0, min(5.0, options.duration / 4)),
            ),
            on_progress=lambda p: say(
                f"      {p.elapsed_s:5.1f} s: sent {p.sent}, acked {p.acked}, "
                f"refused by the broker {p.refused}"
            ),
            stop=stop,
        )
        out["fleet"] = report.to_json()
        say(
            f"      fleet done: {report.sent} sent, {report.acked} accepted by the broker, "
            f"{report.refused} refused by its ACL (impersonation attempts)"
        )

        say("[6/8] what arrived at the gateway")
        expected = report.acked
        deadline = time.monotonic() + 15
        stored, quarantined = _counts(db)
        while out["gateway"]["running"] and not stop.is_set() and time.monotonic() < deadline:
            stored, quarantined = _counts(db)
            if sum(stored.values()) + sum(quarantined.values()) >= expected:
                break
            time.sleep(0.2)
        out["stored"], out["quarantined"] = stored, quarantined
        say(f"      stored {sum(stored.values())}: " + _pairs(stored))
        say(f"      quarantined {sum(quarantined.values())}: " + _quarantined(quarantined, db))
        sample_id = records[0].id
        history = _history(db, sample_id) if stored else []
        out["sample"] = {
            "device": sample_id,
            "history": [{k: v for k, v in h.items() if k != "raw"} for h in history],
        }
        say(f"      history of {sample_id} ({records[0].model}):")
        for h in history[:8]:
            say(f"        #{h['seq']:<4} {h['time']}  {h['type']}")
        if len(history) > 8:
            say(f"        ... {len(history) - 8} more")

        if not history:
            say("[7/8] nothing stored, so nothing to verify offline")
            out["verify"] = None
        else:
            sample = directory / "sample-message.cose"
            sample.write_bytes(history[0]["raw"])  # seq 1: it carries the certificate chain
            say(f"[7/8] provgw message verify {sample} --trust {pki / 'trust'}")
            result = subprocess.run(  # noqa: S603 - our own command
                [provgw, "message", "verify", str(sample), "--trust", str(pki / "trust"), "--json"],
                capture_output=True,
                text=True,
                check=False,
            )
            try:
                out["verify"] = json.loads(result.stdout)
            except ValueError:
                out["verify"] = {"valid": False, "detail": result.stderr.strip()}
            verdict = out["verify"]
            say(
                f"      {'VALID' if verdict.get('valid') else 'INVALID'}: "
                + (
                    f"{verdict.get('type')} #{verdict.get('seq')} from {verdict.get('device')}"
                    if verdict.get("valid")
                    else str(verdict.get("detail"))
                )
            )
            if out["gateway"]["running"] and not stop.is_set():
                out["log"] = _show_log(provgw, directory, db, history[0]["seq"], sample_id, say=say)
                out["audit"] = _show_audit(provgw, directory, db, pki, sample_id, say=say)
        running = out["gateway"]["running"] and not stop.is_set()
        setup = _UrgentSetup(provgw, directory, db, pki, broker, records, status if running else {})
        out["urgent"] = _urgent_recall(setup, say=say)
        out["interrupted"] = stop.is_set()
        out["metrics"] = _show_status(provgw, gateway_config, out["gateway"], say=say)
        _show_ui(ui, out, sample_id, browse=options.browse, stop=stop, say=say)
        say("shutting down the gateway and the broker")
    return out


def _show_ui(  # noqa: PLR0913 - the UI, the demo's result and how to end
    ui: _WebUi | None,
    out: dict[str, Any],
    device: str,
    *,
    browse: bool,
    stop: threading.Event,
    say: Say,
) -> None:
    """Point at the web UI's pages; with *browse*, keep everything running until Ctrl-C."""
    if ui is None:
        return
    device_page = f"{ui.url}/devices/{urllib.parse.quote(device, safe='')}"
    recall_page = f"{ui.url}/recalls/{_RECALL_ID}"
    overview = ui.overview()
    out["ui"] |= {
        "device_page": device_page,
        "recall_page": recall_page,
        "stored": None if overview is None else overview["stored"],
    }
    say(f"      web UI: fleet {ui.url}/")
    say(f"              device {device_page}")
    say(f"              recall {recall_page}")
    if browse and not stop.is_set():
        say("      everything keeps running for the web UI; press Ctrl-C to stop")
        stop.wait()


def _show_status(provgw: str, config: Path, gateway: dict[str, Any], *, say: Say) -> dict[str, Any]:
    """Run ``provgw status`` once: what an operator without Prometheus would see."""
    if not gateway["running"]:
        return {}
    result = _run(provgw, "status", "--config", str(config), "--json")
    try:
        # EXIT_NOT_RUNNING: a process not ready yet; the figures are printed all the same.
        readable = result.returncode in (0, EXIT_NOT_RUNNING)
        status = dict(json.loads(result.stdout)) if readable else {}
    except ValueError:
        status = {}
    processes = status.get("processes") or {}
    shown = {
        "url": processes.get("url"),
        "ready": sorted(r for r, c in processes.get("children", {}).items() if c["ready"]),
        "log_entries": status.get("log_entries", 0),
        "witnessed": status.get("checkpoints", {}).get("witnessed", {}).get("size", 0),
    }
    say(
        f"      provgw status: processes ready {', '.join(shown['ready']) or 'none'} "
        f"(from {shown['url']}; deploy/alerts.yml alerts on it); log {shown['log_entries']} "
        f"entries, {shown['witnessed']} witnessed"
    )
    return shown


def _pairs(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {key}" for key, n in sorted(counts.items()))


def _latest_cosigned(db: Path) -> tuple[int, bytes, str] | None:
    conn = sqlite3.connect(db, timeout=5)
    try:
        row = conn.execute(
            "SELECT c.size, c.note, s.cosignatures FROM checkpoints c JOIN checkpoint_status s"
            " ON s.size = c.size ORDER BY c.size DESC LIMIT 1"
        ).fetchone()
        logged = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    except sqlite3.OperationalError:
        return None
    finally:
        conn.close()
    if row is None or row[0] < logged or not row[2]:
        return None
    return int(row[0]), bytes(row[1]), str(row[2])


def _show_log(  # noqa: PLR0913 - the demo's paths and the one event it proves
    provgw: str, directory: Path, db: Path, seq: int, device: str, *, say: Say
) -> dict[str, Any]:
    """Show the latest cosigned checkpoint and verify one event's receipt offline (step 7)."""
    deadline = time.monotonic() + 15
    latest = _latest_cosigned(db)
    while latest is None and time.monotonic() < deadline:
        time.sleep(0.2)
        latest = _latest_cosigned(db)
    if latest is None:
        say("      transparency log: no cosigned checkpoint of every event yet")
        return {"checkpoint": None}
    size, checkpoint, cosignatures = latest
    say(f"      transparency log: latest checkpoint ({size} entries), cosigned by the witness:")
    for line in (checkpoint.decode() + cosignatures).splitlines():
        say(f"        {line}".rstrip())
    conn = sqlite3.connect(db, timeout=5)
    try:
        event_id, salt, digest = conn.execute(
            "SELECT id, salt, digest FROM events WHERE device_id = ? AND seq = ?", (device, seq)
        ).fetchone()
    finally:
        conn.close()
    key_file = directory / "gateway-log.key"
    result = subprocess.run(  # noqa: S603 - our own command
        [provgw, "log", "prove", str(event_id), "--db", str(db), "--key", str(key_file), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    out: dict[str, Any] = {"checkpoint": checkpoint.decode(), "cosignatures": cosignatures}
    try:
        proved = json.loads(result.stdout)
        bundle = base64.b64decode(proved["receipt"])
    except (ValueError, KeyError):
        say(f"      receipt of event {event_id}: not available ({result.stderr.strip()})")
        out["receipt"] = None
        return out
    # Offline: only the two public keys (the gateway's log key and the witness's), the receipt,
    # and the leaf the record's holder can recompute from its salt and digest.
    gateway_key = note.Verifier.from_vkey(_vkey_of(key_file))
    witness_key = note.Verifier.from_vkey(_vkey_of(directory / "witness.key"))
    try:
        info = verify_receipt(
            bundle, leaf_for("event", salt, digest), gateway_key, witnesses=[witness_key]
        )
    except ProvenanceError as err:
        say(f"      receipt of event {event_id}: INVALID ({err})")
        out["receipt"] = {"valid": False, "detail": str(err)}
        return out
    say(
        f"      receipt of event {event_id} ({len(bundle)} bytes): VALID offline, entry "
        f"{info.leaf_index} of {info.tree_size}, state {info.state}, cosigned by "
        f"{', '.join(info.witnesses) or 'nobody'}"
    )
    out["receipt"] = {
        "valid": True,
        "event_id": event_id,
        "state": info.state,
        "leaf_index": info.leaf_index,
        "tree_size": info.tree_size,
        "bytes": len(bundle),
    }
    return out


def _show_audit(  # noqa: PLR0913 - the demo's paths and the device it exports
    provgw: str,
    directory: Path,
    db: Path,
    pki: Path,
    device: str,
    *,
    recall_trust: Path | None = None,
    say: Say,
) -> dict[str, Any]:
    """Export a device's audit bundle and verify it as its receiver would (steps 7 and 8)."""
    bundle = directory / f"{device}.audit.zip"
    key_file = directory / "gateway-log.key"
    subprocess.run(  # noqa: S603 - our own command
        [provgw, "audit", "export", device, "--db", str(db), "--key", str(key_file), "-o",
         str(bundle), "--json"],
        capture_output=True,
        check=False,
    )  # fmt: skip
    also = " --recall-trust (the manufacturer's recall keys)" if recall_trust is not None else ""
    say(f"      provgw audit export {device} -o {bundle.name}, then provgw audit verify{also}:")
    result = subprocess.run(  # noqa: S603 - our own command
        [provgw, "audit", "verify", str(bundle), "--trust", str(pki / "trust"),
         "--key", _vkey_of(key_file), "--witness-vkey", _vkey_of(directory / "witness.key"),
         *(["--recall-trust", str(recall_trust)] if recall_trust is not None else []),
         "--json"],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    try:
        report = dict(json.loads(result.stdout))
    except ValueError:
        say(f"      audit bundle: not verified ({result.stderr.strip()})")
        return {"ok": False}
    if "events" not in report:  # the bundle could not be read at all
        say(f"      audit bundle: REFUSED ({report.get('error')})")
        return report
    say(
        f"      {'VERIFIED' if report['ok'] else 'NOT VERIFIED'} with only the trust folder and "
        f"public keys: {report['events']} events ({report['witnessed']} witnessed, "
        f"{report['pending']} not under a checkpoint yet), {len(report['problems'])} problems"
    )
    for recall in report.get("recalls", []):
        say(
            f"        recall {recall['recall_id']} revision {recall['revision']}: the "
            "manufacturer's signatures verify, and the gateway's record of taking it in"
        )
    for record in report["remediation"]:
        say(f"        {record['recall_id']}: {record['state']}, claim {record['checked']}")
    return report


def _vkey_of(key_file: Path) -> str:
    # A signer key file "PRIVATE+KEY+name+id+base64" names its public half: Signer.from_skey.
    return note.Signer.from_skey(key_file.read_text(encoding="ascii").strip()).verifier.vkey


# --- step 8: an urgent recall, remediated -----------------------------------------------------


@dataclass(frozen=True)
class _UrgentSetup:
    provgw: str
    directory: Path
    db: Path
    pki: Path
    broker: LocalMosquitto
    records: list[DeviceRecord]
    status: dict[str, Any]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=60)  # noqa: S603 - our own commands


def _recall_status(setup: _UrgentSetup) -> dict[str, Any] | None:
    result = _run(setup.provgw, "recall", "status", _RECALL_ID, "--db", str(setup.db), "--json")
    try:
        return dict(json.loads(result.stdout)) if result.returncode == 0 else None
    except ValueError:
        return None


def _publish(setup: _UrgentSetup, kind: str, file: Path) -> None:
    from gateway.ingest.mqtt import MqttClient  # noqa: PLC0415 - step 8 only
    from gateway.ingest.topics import manifest_topic, recall_topic  # noqa: PLC0415

    topic = recall_topic(_RECALL_MFR) if kind == "recall" else manifest_topic(_RECALL_MFR)
    creds = setup.broker.config.client(f"mfr-{_RECALL_MFR}")
    with MqttClient(creds, host=setup.broker.host, port=setup.broker.port, session_expiry=0) as c:
        c.publish(topic, file.read_bytes())


def _wait_status(
    setup: _UrgentSetup, done: Callable[[dict[str, Any]], bool], timeout: float
) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    status = _recall_status(setup)
    while (status is None or not done(status)) and time.monotonic() < deadline:
        time.sleep(0.3)
        status = _recall_status(setup)
    return status


def _urgent_recall(setup: _UrgentSetup, *, say: Say) -> dict[str, Any] | None:
    """Step 8: inventory, signed recall, remedy, patching pumps, remediation table."""
    from cryptography.hazmat.primitives.asymmetric.ec import (  # noqa: PLC0415
        EllipticCurvePublicKey,
    )
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
        Ed25519PublicKey,
    )
    from cryptography.hazmat.primitives.serialization import load_pem_public_key  # noqa: PLC0415

    from device_sim.patching import Installed, PatchFleet, PatchOptions  # noqa: PLC0415
    from gateway.core.identity import kid_for  # noqa: PLC0415
    from gateway.core.manifest import PublicKey  # noqa: PLC0415
    from gateway.store.manifests import load_manifest_trust  # noqa: PLC0415

    urgent = setup.status.get("urgent")
    pumps = [r for r in setup.records if r.model == _RECALLED_MODEL]
    if not urgent or not _RECALL.is_file() or not _REMEDY.is_file() or len(pumps) < 3:
        say(f"[8/{_STEPS}] urgent recall: skipped (no gateway or no sample recall here)")
        return None
    say(
        f"[8/{_STEPS}] urgent recall {_RECALL_ID}: the urgent lane is pid {urgent['pid']} "
        f"(client gateway-urgent, nice {urgent['nice']})"
    )
    versions = f"{_RECALLED_MODEL}=4.2.9"
    say(f"      provgw inventory import devices.json --firmware '{versions}'")
    imported = _run(
        setup.provgw, "inventory", "import", str(setup.pki / "devices.json"),
        "--db", str(setup.db), "--firmware", versions,
    )  # fmt: skip
    if imported.returncode != 0:
        say(f"      inventory not imported: {imported.stderr.strip()}")
        return None
    public = load_pem_public_key(Path(urgent["offer_public_key"]).read_bytes())
    if not isinstance(public, Ed25519PublicKey | EllipticCurvePublicKey):
        say("      the gateway's offer key is neither Ed25519 nor P-256")
        return None
    keys: dict[bytes, PublicKey] = {kid_for(public): public}
    trust = load_manifest_trust(_SAMPLES / "trust")
    failing, offline = pumps[-2], pumps[-1]
    online = [r for r in pumps if r is not offline and r is not failing]

    def fleet(records: list[DeviceRecord], fail_rate: float = 0.0) -> PatchFleet:
        return PatchFleet(
            setup.pki,
            setup.broker.config,
            records,
            keys,
            trust,
            {_RECALLED_MODEL: Installed("4.2.9", 2)},
            PatchOptions(fail_rate=fail_rate),
            host=setup.broker.host,
            port=setup.broker.port,
        )

    with fleet(online) as good, fleet([failing], fail_rate=1.0) as bad:
        say(
            f"      {len(pumps)} {_RECALLED_MODEL} pumps online to take patches except "
            f"{offline.id} (offline); {failing.id} will fail its install"
        )
        say(f"      manufacturer publishes recall {_RECALL_ID} (2 of 3 signatures)")
        _publish(setup, "recall", _RECALL)
        held = _wait_status(setup, lambda s: sum(s["counts"].values()) > 0, 10)
        if held is None:
            say("      the gateway did not take the recall (see gateway.log)")
            return None
        say(
            f"      gateway: recall held, {sum(held['counts'].values())} pumps affected, "
            f"{_pairs(held['counts'])} (the remedy, firmware 4.2.10, is not here yet)"
        )
        say("      manufacturer publishes the remedy: firmware 4.2.10 (urgent, signed manifest)")
        sent = time.monotonic()
        _publish(setup, "manifest", _REMEDY)
        good.wait_for(lambda o: len(o) >= len(online), 10)
        arrived = [o.arrived - sent for o in good.outcomes + bad.outcomes]
        settle = _RETRY_S * (_ATTEMPTS + 1) + 5

        def settled(s: dict[str, Any]) -> bool:
            return not {"pending", "offered"} & set(s["counts"])

        final = _wait_status(setup, settled, settle)
    if final is None:
        return None
    say(
        f"      offers reached the online pumps {1000 * max(arrived or [0]):.0f} ms after the "
        f"remedy was published"
    )
    return _show_remediation(setup, final, urgent["pid"], arrived, say=say)


def _show_remediation(
    setup: _UrgentSetup, final: dict[str, Any], lane_pid: int, arrived: list[float], *, say: Say
) -> dict[str, Any]:
    """Step 8's end: each pump's remediation, and one patched pump's audit bundle checked."""
    say(f"      provgw recall status {_RECALL_ID}:")
    say(f"        {'device':32} {'state':12} attempts  detail")
    for d in final["devices"]:
        line = f"{d['device_id']:32} {d['state']:12} {d['attempts']:>8}  {d['detail'] or ''}"
        say(f"        {line}".rstrip())
    say(f"      {_pairs(final['counts'])}")
    installed = next((d["device_id"] for d in final["devices"] if d["state"] == "installed"), None)
    audit = None
    if installed is not None:
        # What the manufacturer's security team gets: one patched pump's history, checked with
        # its own recall keys, so the install is shown to remedy this recall.
        audit = _show_audit(
            setup.provgw, setup.directory, setup.db, setup.pki, installed,
            recall_trust=_SAMPLES / "recalls" / "trust", say=say,
        )  # fmt: skip
    return {
        "recall": _RECALL_ID,
        "audit": audit,
        "lane_pid": lane_pid,
        "counts": final["counts"],
        "devices": [
            {k: d[k] for k in ("device_id", "state", "attempts", "detail")}
            for d in final["devices"]
        ],
        "offer_ms": [round(1000 * a, 1) for a in arrived],
    }
