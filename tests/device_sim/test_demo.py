"""`provgw-sim demo` (what `make demo` runs) end to end, through the installed script."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests._helpers import alive

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.timeout(120)]

SIM = Path(sys.executable).with_name("provgw-sim")


def test_demo_runs_end_to_end_and_leaves_nothing_running(tmp_path):
    directory = tmp_path / "demo"
    result = subprocess.run(
        [
            *(str(SIM), "demo", "--dir", str(directory), "--duration", "3", "--seed", "5"),
            *("--no-browse", "--json"),
        ],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert [line[:5] for line in result.stderr.splitlines() if line.startswith("[")] == [
        f"[{i}/8]" for i in range(1, 9)
    ]
    # No stray library noise in what the user reads (paho once logged "Client is not
    # connected" at ERROR after every clean disconnect of a manufacturer's publish).
    assert "not connected" not in result.stderr
    fleet = out["fleet"]
    assert fleet["connected"] == 50
    assert fleet["unacked"] == 0
    # Every valid event is stored once; every fault that got past the broker is quarantined.
    kinds = fleet["kinds"]
    assert sum(out["stored"].values()) == kinds["valid"]["acked"] > 100
    faults = sum(kinds[k]["acked"] for k in ("bad_signature", "replay", "malformed", "impersonate"))
    assert sum(out["quarantined"].values()) == faults
    assert out["verify"]["valid"] is True
    assert out["verify"]["device"] == out["sample"]["device"]
    assert [h["seq"] for h in out["sample"]["history"]][:1] == [1]
    # The log beside ingest: a cosigned checkpoint, and the sample's receipt verified offline.
    assert "\u2014 provgw.local/log/witness " in out["log"]["cosignatures"]
    assert out["log"]["receipt"]["state"] == "witnessed"
    # The sample's whole history as an audit bundle, verified with only public keys.
    audit = out["audit"]
    assert (audit["ok"], audit["device"], audit["problems"]) == (True, out["sample"]["device"], [])
    assert audit["events"] == len(out["sample"]["history"]) > 0
    assert audit["witnessed"] >= 1
    # The urgent recall: 6 Volara pumps affected; one failed its install, one stayed offline,
    # every other one installed the remedy it was offered under the recall's id.
    urgent = out["urgent"]
    assert urgent["counts"] == {"installed": 4, "failed": 1, "unreachable": 1}
    states = {d["state"]: d for d in urgent["devices"]}
    assert states["unreachable"]["attempts"] == 2
    assert "simulated install failure" in states["failed"]["detail"]
    assert max(urgent["offer_ms"]) < 2000
    assert not alive(urgent["lane_pid"])
    # One patched pump's audit bundle, checked with the manufacturer's recall keys: its install
    # is its own signed report, and that report remedies the recall by the tracker's rule.
    patched = urgent["audit"]
    assert (patched["ok"], patched["problems"]) == (True, [])
    assert [r["recall_id"] for r in patched["recalls"]] == ["Z-0412-2026"]
    assert ("Z-0412-2026", "installed", "recomputed, with the recall's rule") in {
        (r["recall_id"], r["state"], r["checked"]) for r in patched["remediation"]
    }
    # The web UI ran beside the gateway, served the same store, and pointed at its pages.
    ui = out["ui"]
    reports = urgent["counts"]["installed"] + urgent["counts"]["failed"]  # the pumps' step 8
    assert ui["stored"] == sum(out["stored"].values()) + reports
    assert ui["recall_page"] == ui["url"] + "recalls/Z-0412-2026"
    assert ui["device_page"].startswith(ui["url"] + "devices/")
    assert not alive(ui["pid"])
    # Its metrics endpoint showed every process ready and the log witnessed.
    metrics = out["metrics"]
    assert metrics["url"] == out["gateway"]["metrics"]
    assert metrics["ready"] == ["ledger", "receiver", "urgent"]
    assert metrics["log_entries"] >= sum(out["stored"].values())
    assert 0 < metrics["witnessed"] <= metrics["log_entries"]
    # Shut down on exit: the gateway's process is gone and the broker's port is closed.
    assert not alive(out["gateway"]["pid"])
    broker = ("127.0.0.1", out["broker"]["port"])
    with pytest.raises(ConnectionRefusedError), socket.create_connection(broker, 1):
        pass


def test_demo_refuses_to_wipe_a_directory_it_did_not_make(tmp_path):
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("precious", encoding="utf-8")
    result = subprocess.run(
        [str(SIM), "demo", "--dir", str(keep), "--duration", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "new or empty directory" in result.stderr
    assert (keep / "notes.txt").read_text(encoding="utf-8") == "precious"
