"""deploy/: the systemd unit and the configuration it runs, as users install them."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest

from device_sim.demo import free_port
from gateway.service import workers
from gateway.service.config import load_config
from tests._helpers import SERVICE_UNIT, unit_settings

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "deploy" / "gateway.toml"
STATE, ETC = "/var/lib/provgw", "/etc/provgw"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")  # `make system-deps` installs it


def _runnable_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's provgw (verify checks it exists)."""
    provgw = Path(sys.executable).with_name("provgw")
    text = SERVICE_UNIT.read_text(encoding="utf-8").replace("/opt/provgw/bin/provgw", str(provgw))
    unit = tmp_path / "provgw.service"
    unit.write_text(text, encoding="utf-8")
    return unit


def test_the_unit_passes_systemd_analyze_verify_without_a_word(tmp_path):
    assert SYSTEMD_ANALYZE, "systemd-analyze is missing: run `make system-deps`"
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(_runnable_unit(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Unknown keys, bad values and a missing ExecStart binary are warnings on stderr.
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_a_broken_unit_is_caught_by_the_same_check(tmp_path):
    unit = _runnable_unit(tmp_path)
    unit.write_text(unit.read_text().replace("KillMode=mixed", "KillMode=gently"))
    done = subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert "kill mode" in done.stderr


def test_the_unit_is_sandboxed(tmp_path):
    done = subprocess.run(
        [str(SYSTEMD_ANALYZE), "security", "--offline=true", str(_runnable_unit(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = re.search(r"Overall exposure level for provgw\.service: ([\d.]+) (\w+)", done.stdout)
    assert found, done.stdout + done.stderr
    # systemd's scale: 0 (locked down) .. 10 (unprotected); "OK" is below 4.
    assert float(found[1]) <= 2.5, done.stdout
    assert found[2] == "OK"


def test_the_unit_stops_the_gateway_through_its_supervisor_in_time():
    unit = unit_settings()
    assert unit["ExecStart"] == ["/opt/provgw/bin/provgw serve --config /etc/provgw/gateway.toml"]
    assert unit["User"] == ["provgw"]
    # SIGTERM to the supervisor only; SIGKILL to what is left once TimeoutStopSec is over. The
    # supervisor's own budget for its children must fit inside it.
    assert unit["KillMode"] == ["mixed"]
    assert float(unit["TimeoutStopSec"][-1]) > workers.STOP_TIMEOUT_S
    assert unit["Restart"] == ["on-failure"]
    # What deploy/gateway.toml writes and reads must be where the sandbox allows it.
    assert unit["StateDirectory"] == ["provgw"]  # /var/lib/provgw, writable
    assert unit["ConfigurationDirectory"] == ["provgw"]  # /etc/provgw
    assert unit["ProtectSystem"] == ["strict"]  # everything else read-only


@pytest.mark.broker
@pytest.mark.timeout(60)
def test_the_shipped_configuration_serves_and_writes_only_its_state_folder(
    gateway_site, site_broker, serve_gateway, tmp_path
):
    etc, state = tmp_path / "etc", tmp_path / "state"
    shutil.copytree(gateway_site.config.directory, etc / "broker")
    shutil.copytree(gateway_site.pki / "trust", etc / "trust")
    shutil.copytree(REPO / "firmware_manifests" / "trust", etc / "manufacturers" / "firmware")
    recalls = REPO / "firmware_manifests" / "recalls" / "trust"
    shutil.copytree(recalls, etc / "manufacturers" / "recalls")
    state.mkdir()
    text = CONFIG.read_text(encoding="utf-8")
    assert "port = 8883" in text
    text = text.replace(ETC, str(etc)).replace(STATE, str(state))
    assert "port = 9464" in text
    text = text.replace("port = 9464", f"port = {free_port()}")
    conf = etc / "gateway.toml"
    conf.write_text(text.replace("port = 8883", f"port = {site_broker.port}"), encoding="utf-8")
    config = load_config(conf)
    assert config.broker.host == site_broker.host
    before = {p: p.stat().st_mtime_ns for p in etc.rglob("*")}

    serve = serve_gateway(gateway_site, site_broker, start=False)
    serve.config = conf
    status = serve.start()
    assert status["status"] == "running", serve.log()
    assert status["workers_subscribed"] == 3  # receiver, ledger, urgent lane
    assert status["warnings"] == []  # partitioned ingest: nothing risked
    assert status["ledger"]["keys_generated"] == [
        str(state / "gateway-log.key"),
        str(state / "witness.key"),
    ]
    with urllib.request.urlopen(status["metrics"], timeout=5) as response:  # noqa: S310 - loopback
        assert "provgw_store_readable 1.0" in response.read().decode()
    assert serve.stop()["status"] == "stopped"
    assert "ingest.mode" not in serve.log()

    assert {p: p.stat().st_mtime_ns for p in etc.rglob("*")} == before  # read only
    made = {p.name for p in state.iterdir()}
    assert {"gateway.sqlite3", "gateway-log.key", "witness.key", "witness.sqlite3"} <= made
    assert "offer-key.pub.pem" in made
    for key in ("gateway-log.key", "witness.key"):
        assert (state / key).stat().st_mode & 0o077 == 0  # private keys: the owner's only


@pytest.mark.broker
@pytest.mark.timeout(60)
@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_serve_tells_systemd_when_it_is_ready_and_when_it_stops(
    gateway_site, site_broker, serve_gateway, monkeypatch, abstract
):
    # What systemd does for Type=notify: a datagram socket named by $NOTIFY_SOCKET.
    assert unit_settings()["Type"] == ["notify"]
    folder = Path(tempfile.mkdtemp(prefix="sd-", dir="/tmp"))  # unix socket paths are short
    name = f"@provgw-test-{os.getpid()}" if abstract else str(folder / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name[1:] if abstract else name)
        sock.settimeout(30)
        monkeypatch.setenv("NOTIFY_SOCKET", name)
        gateway = serve_gateway(gateway_site, site_broker, workers=2)  # returns once running
        assert sock.recv(4096).decode() == (
            "READY=1\nSTATUS=3 of 3 processes subscribed (receiver, ledger, urgent); "
            "0 events stored at start"
        )
        assert gateway.stop()["status"] == "stopped"
        assert sock.recv(4096).decode().startswith("STOPPING=1\n")
    shutil.rmtree(folder)
