"""`provgw message verify` and `provgw-sim sign`, run as a user would: the installed scripts."""

import json
import subprocess
import sys

import pytest

from device_sim import pki


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "pki"
    records = pki.init_pki(root, devices_per_model=1)
    return root, records


def run(*args):
    bindir = __import__("pathlib").Path(sys.executable).parent
    return subprocess.run(
        [str(bindir / args[0]), *args[1:]], capture_output=True, text=True, check=False
    )


def sign(root, device_id, out, *extra):
    result = run(
        "provgw-sim", "sign", "--pki", str(root), "--device", device_id,
        "--type", "custody", "-o", str(out), *extra,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out


def test_signed_message_verifies_with_exit_0_and_json_fields(demo, tmp_path):
    root, records = demo
    msg = sign(root, records[0].id, tmp_path / "m.cose")
    result = run("provgw", "message", "verify", str(msg), "--trust", str(root / "trust"), "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["valid"] is True
    assert out["device"] == records[0].id
    assert out["type"] == "custody"
    assert out["seq"] == 1
    assert out["reason"] is None


def test_tampered_message_exits_1_naming_the_fault(demo, tmp_path):
    root, records = demo
    msg = sign(root, records[1].id, tmp_path / "m.cose", "--seq", "5")
    data = bytearray(msg.read_bytes())
    data[-1] ^= 0x80
    msg.write_bytes(bytes(data))
    result = run("provgw", "message", "verify", str(msg), "--trust", str(root / "trust"), "--json")
    assert result.returncode == 1
    out = json.loads(result.stdout)
    assert out["valid"] is False
    assert out["reason"] == "bad-signature"
    assert {"device", "type", "seq"} <= out.keys()


def test_untrusted_device_is_refused_in_text_mode(demo, tmp_path):
    root, _ = demo
    untrusted = pki.load_devices(root / "untrusted")[0]
    msg = sign(root, untrusted.id, tmp_path / "u.cose")
    result = run("provgw", "message", "verify", str(msg), "--trust", str(root / "trust"))
    assert result.returncode == 1
    assert result.stdout.startswith("INVALID")
    assert "[untrusted-issuer]" in result.stdout


def test_kid_only_message_cannot_be_verified_offline(demo, tmp_path):
    root, records = demo
    msg = sign(root, records[2].id, tmp_path / "k.cose", "--no-chain")
    result = run("provgw", "message", "verify", str(msg), "--trust", str(root / "trust"), "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout)["reason"] == "unknown-kid"


def test_missing_trust_directory_is_a_usage_error(demo, tmp_path):
    root, records = demo
    msg = sign(root, records[0].id, tmp_path / "m.cose")
    result = run("provgw", "message", "verify", str(msg), "--trust", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert "does not exist" in result.stderr


def test_unknown_device_is_a_clear_error(demo, tmp_path):
    root, _ = demo
    result = run(
        "provgw-sim", "sign", "--pki", str(root), "--device", "nope",
        "--type", "custody", "-o", str(tmp_path / "x"),
    )  # fmt: skip
    assert result.returncode == 2
    assert "devices.json" in result.stderr
