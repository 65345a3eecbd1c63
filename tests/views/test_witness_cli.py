from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.core.merkle import leaf_hash, root_from_leaf_hashes
from gateway.core.note import COSIGNATURE_V1, Checkpoint, Signer, Verifier
from gateway.ledger.quorum import require_quorum
from gateway.ledger.witness_client import WitnessClient
from gateway.views.cli._main import _register, cli

ORIGIN = "gateway.example/log"


@pytest.fixture
def run():
    _register()
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(cli, ["witness", *args])

    return invoke


def test_keygen_writes_a_private_cosigning_key_and_prints_its_vkey(run, tmp_path):
    out = tmp_path / "w.key"
    result = run("keygen", "witness.example/w1", "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    signer = Signer.from_skey(out.read_text().strip())
    assert signer.verifier.sig_type == COSIGNATURE_V1
    assert data["vkey"] == signer.verifier.vkey
    assert Verifier.from_vkey(data["vkey"]).name == "witness.example/w1"
    assert out.stat().st_mode & 0o777 == 0o600


def test_keygen_never_overwrites_a_key(run, tmp_path):
    out = tmp_path / "w.key"
    out.write_text("precious\n")
    result = run("keygen", "witness.example/w1", "--out", str(out))
    assert result.exit_code == 2
    assert "not overwriting" in result.stderr
    assert out.read_text() == "precious\n"


def test_keygen_refuses_a_name_with_spaces(run, tmp_path):
    result = run("keygen", "bad name", "--out", str(tmp_path / "k"))
    assert result.exit_code == 2


def test_serve_refuses_a_plain_signing_key(run, tmp_path):
    key = tmp_path / "plain.key"
    key.write_text(Signer.generate("w").skey())
    log = Signer.generate(ORIGIN).verifier.vkey
    result = run("serve", "--key", str(key), "--log-key", log, "--db", str(tmp_path / "w.db"))
    assert result.exit_code == 2
    assert "not a witness cosigning key" in result.stderr


def test_serve_refuses_a_malformed_log_key(run, tmp_path):
    key = tmp_path / "w.key"
    key.write_text(Signer.generate("w", COSIGNATURE_V1).skey())
    result = run("serve", "--key", str(key), "--log-key", "nonsense", "--db", str(tmp_path / "d"))
    assert result.exit_code == 2
    assert "--log-key" in result.stderr


def test_serve_runs_a_witness_that_cosigns_until_interrupted(tmp_path):
    witness = Signer.generate("witness.example/w1", COSIGNATURE_V1)
    key = tmp_path / "w.key"
    key.write_text(witness.skey() + "\n")
    log = Signer.generate(ORIGIN)
    cmd = [sys.executable, "-c", "from gateway.views.cli import main; main()"]
    args = ["witness", "serve", "--key", str(key), "--log-key", log.verifier.vkey]
    args += ["--db", str(tmp_path / "w.db"), "--port", "0", "--json"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([*cmd, *args], stdout=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.rstrip() == "}":
                break
        info = json.loads("".join(lines))
        assert info["witness"] == witness.verifier.vkey
        assert info["url"].startswith("http://127.0.0.1:")
        leaves = [leaf_hash(b"a"), leaf_hash(b"b")]
        note = Checkpoint(ORIGIN, 2, root_from_leaf_hashes(leaves)).sign(log)
        client = WitnessClient(info["url"], witness.verifier, timeout=5)
        lines = client.submit(note, 0, [])
        client.close()
        cosigned = note + "".join(lines).encode()
        assert require_quorum(cosigned, log.verifier, [witness.verifier], 1).witnesses
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        proc.stdout.close()
    assert Path(tmp_path / "w.db").exists()
