"""Every process of ``provgw serve`` says in ``ps`` and ``top`` what it is and whose it is."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.service import child


def _cmdline(pid: int) -> str:
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return raw.replace(b"\0", b" ").decode().strip()


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text(encoding="utf-8").strip()


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text(encoding="ascii")
    return [int(p) for p in text.split()]


@pytest.mark.broker
@pytest.mark.timeout(60)
def test_each_serve_process_is_named_for_its_role_and_its_configuration(
    gateway_site, site_broker, serve_gateway
):
    gateway = serve_gateway(gateway_site, site_broker, workers=2)
    status = gateway.status
    conf = gateway.config
    (receiver,) = status["worker_pids"]
    verifiers = sorted(_children(receiver))
    assert len(verifiers) == 2
    expected = {
        receiver: "receiver",
        status["ledger_pid"]: "ledger",
        status["urgent_pid"]: "urgent",
    }
    # Forked in index order: the lower pid is verifier 0.
    expected.update({pid: f"verifier-{i}" for i, pid in enumerate(verifiers)})
    for pid, role in expected.items():
        assert _cmdline(pid) == f"provgw {role} ({conf})"
        # top's default column: the kernel's 15 characters, which name the role.
        assert _comm(pid) == f"provgw {role} ({conf})"[:15]
    # The supervisor is the command the operator ran; it keeps its command line.
    assert f"serve --config {conf}" in _cmdline(status["pid"])
    # Its children are these three and nothing else (no multiprocessing resource tracker).
    assert sorted(_children(status["pid"])) == sorted(
        [receiver, status["ledger_pid"], status["urgent_pid"]]
    )
    assert gateway.stop()["status"] == "stopped"


@pytest.mark.broker
@pytest.mark.timeout(60)
def test_shared_mode_workers_are_named_by_their_index(gateway_site, site_broker, serve_gateway):
    gateway = serve_gateway(gateway_site, site_broker, workers=2, ingest_extra='mode = "shared"\n')
    pids = gateway.status["worker_pids"]
    assert [_cmdline(pid) for pid in pids] == [
        f"provgw worker-{i} ({gateway.config})" for i in range(2)
    ]
    assert gateway.stop()["status"] == "stopped"


def test_a_relative_configuration_path_is_shown_absolute(tmp_path, monkeypatch):
    # Two gateways run from different folders with `--config gateway.toml` must differ in ps.
    monkeypatch.chdir(tmp_path)
    assert child.title("ledger", "gateway.toml") == f"provgw ledger ({tmp_path / 'gateway.toml'})"


def _waiter(flags: child.SharedFlags) -> subprocess.Popen[bytes]:
    """A child process that maps *flags* and waits up to 60 s for flag 1: exit 0 if it saw it."""
    code = (
        "import sys; from gateway.service import child; "
        f"sys.exit(0 if child.SharedFlags.attach({flags.fd})[1].wait(60) else 3)"
    )
    return subprocess.Popen([sys.executable, "-c", code], pass_fds=(flags.fd,))


def test_a_flag_still_works_after_a_process_waiting_on_it_was_killed():
    # A multiprocessing.Event's set() would wait forever here for the dead waiter to wake.
    flags = child.SharedFlags(2)
    waiter = _waiter(flags)
    time.sleep(0.5)  # in wait()
    waiter.kill()
    waiter.wait()
    started = time.monotonic()
    flags[1].set()
    assert time.monotonic() - started < 0.1
    again = _waiter(flags)
    assert again.wait(5) == 0  # saw the flag raised
    assert not flags[0].is_set()  # one byte each: raising flag 1 left flag 0 alone


def test_a_child_sees_the_flags_its_supervisor_raises_and_the_supervisor_sees_the_childs():
    flags = child.SharedFlags(3)
    code = (
        "import sys; from gateway.service import child; "
        f"f = child.SharedFlags.attach({flags.fd}); f[2].set(); sys.exit(0 if f[0].wait(30) else 3)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=(flags.fd,))
    assert flags[2].wait(30)  # raised in the child
    assert not flags[1].is_set()
    flags[0].set()
    assert proc.wait(30) == 0


@pytest.mark.broker
@pytest.mark.timeout(60)
def test_serve_stops_cleanly_after_a_child_was_killed(gateway_site, site_broker, serve_gateway):
    gateway = serve_gateway(gateway_site, site_broker, workers=2)
    supervisor, killed = gateway.status["pid"], gateway.status["urgent_pid"]
    os.kill(killed, signal.SIGKILL)  # as the kernel's OOM killer would
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        urgent = [p for p in _children(supervisor) if _cmdline(p).startswith("provgw urgent ")]
        if urgent and urgent != [killed]:
            break
        time.sleep(0.1)
    assert urgent, "the supervisor restarts the urgent lane"
    assert urgent != [killed]
    assert gateway.stop(timeout=20)["status"] == "stopped"
