"""Every process of ``provgw serve`` says in ``ps`` and ``top`` what it is and whose it is."""

from __future__ import annotations

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
