"""`provgw serve`'s start-up checks run in a child process: same verdicts, fewer modules held."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.core.errors import ProvenanceError, UnavailableError
from gateway.service.config import load_config
from gateway.service.preflight import prepare, run_checked
from gateway.store.trust_files import load_trust_dir

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]


def _config(tmp_path: Path, site, port: int, trust: Path | None = None) -> Path:
    conf = tmp_path / "gateway.toml"
    conf.write_text(
        f'[broker]\nhost = "127.0.0.1"\nport = {port}\nconfig_dir = "{site.config.directory}"\n'
        f'[trust]\ndir = "{trust or site.pki / "trust"}"\n[store]\npath = "g.sqlite3"\n'
        f'[log]\nkey = "log.key"\n[witnesses]\nembedded_key = "witness.key"\n'
        f'embedded_db = "witness.sqlite3"\n',
        encoding="utf-8",
    )
    return conf


def test_the_child_reports_what_the_checks_found_and_makes_the_keys_once(
    gateway_site, site_broker, tmp_path
):
    config = load_config(_config(tmp_path, gateway_site, site_broker.port))

    first = run_checked(config)

    roots = len(load_trust_dir(gateway_site.pki / "trust").roots)
    assert first["checked"] == {"roots": roots, "events_stored": 0}
    assert (tmp_path / "g.sqlite3").exists()  # migrations applied by the child
    assert sorted(Path(p).name for p in first["ledger"]["keys_generated"]) == [
        "log.key",
        "witness.key",
    ]
    assert Path(first["offer_key"]["offer_key"]).is_file()  # made now, or by an earlier start
    again = run_checked(config)
    assert again["ledger"]["keys_generated"] == []
    assert again["offer_key"]["offer_key_generated"] is False
    assert again["ledger"]["log_vkey"] == first["ledger"]["log_vkey"]
    assert again["offer_key"]["offer_kid"] == first["offer_key"]["offer_kid"]


@pytest.mark.parametrize("fault", ["empty-trust-directory", "no-broker"])
def test_a_refusal_comes_back_as_the_error_the_checks_raise_in_process(
    gateway_site, site_broker, tmp_path, fault
):
    if fault == "empty-trust-directory":
        (tmp_path / "empty").mkdir()  # exists (load_config checks that), holds no root
        conf = _config(tmp_path, gateway_site, site_broker.port, trust=tmp_path / "empty")
    else:
        conf = _config(tmp_path, gateway_site, _closed_port())
    config = load_config(conf)
    with pytest.raises(ProvenanceError) as here:
        prepare(config)

    with pytest.raises(ProvenanceError) as there:
        run_checked(config)

    assert type(there.value) is type(here.value)
    assert there.value.reason == here.value.reason
    assert str(there.value) == str(here.value)
    if fault == "no-broker":
        assert "Is Mosquitto running" in str(there.value)


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_child_that_ends_without_an_answer_is_reported_not_taken_for_a_pass(
    gateway_site, tmp_path, monkeypatch
):
    config = load_config(_config(tmp_path, gateway_site, 1))
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'Traceback (most recent call last):' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))

    with pytest.raises(UnavailableError) as failed:
        run_checked(config)

    assert failed.value.reason == "preflight-failed"
    assert "exit status 3" in str(failed.value)


def test_the_supervisor_does_not_load_what_only_the_checks_need():
    # A Python process keeps every module it imported: these would stay in provgw serve for
    # its whole life (7-9 MB of PSS, docs/BENCHMARKS.md session 16).
    probe = (
        "import json, sys, gateway.service.workers; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(("
        "'paho', 'gateway.store.manifests', 'gateway.store.recalls', 'gateway.core.sbom', "
        "'gateway.service.ledger_service', 'gateway.service.urgent', 'gateway.ingest.mqtt')))))"
    )
    out = subprocess.run(
        [sys.executable, "-P", "-c", probe], check=True, capture_output=True, text=True
    ).stdout

    assert json.loads(out) == []


def test_while_it_waits_the_child_names_itself_in_ps(gateway_site, tmp_path):
    # A broker port that accepts and never answers: the checks wait there (as on a long
    # database upgrade), and an operator's ps shows what is waiting.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        conf = _config(tmp_path, gateway_site, silent.getsockname()[1])
        proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "gateway.service.preflight", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            cmdline = Path(f"/proc/{proc.pid}/cmdline")
            deadline = time.monotonic() + 20
            title = f"provgw preflight ({conf})".encode()
            while not cmdline.read_bytes().startswith(title):
                assert proc.poll() is None, "the checks ended instead of waiting"
                assert time.monotonic() < deadline, cmdline.read_bytes()
                time.sleep(0.02)
        finally:
            proc.kill()
            proc.wait()
