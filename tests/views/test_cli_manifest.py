from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization

from firmware_manifests.generate import demo_key
from gateway.views.cli._main import _register, cli

ROOT = Path(__file__).resolve().parents[2] / "firmware_manifests"
TRUST = str(ROOT / "trust")
VOLARA = ROOT / "samples" / "acme-infusion" / "volara-lvp-3"
MFR_KEY = str(ROOT / "keys" / "acme-infusion-firmware.key.pem")
OPERATOR_KEY = str(ROOT / "keys" / "operator-riverside-general.key.pem")


@pytest.fixture
def run():
    _register()
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(cli, ["manifest", *map(str, args)])

    return invoke


@pytest.fixture
def devices(tmp_path):
    rows = [
        {"id": "pump-1", "manufacturer_slug": "acme-infusion", "model": "Volara LVP 3"},
        {"id": "pump-2", "manufacturer_slug": "acme-infusion", "model": "SyriFlow S2 syringe pump"},
    ]
    path = tmp_path / "devices.json"
    path.write_text(json.dumps(rows))
    return path


def _build(run, tmp_path, *extra):
    out = tmp_path / "m.cbor"
    result = run(
        "build",
        "--image", VOLARA / "4.2.9" / "image.bin",
        "--sbom", VOLARA / "4.2.9" / "sbom.cdx.json",
        "--vendor", "acme-infusion.example",
        "--class", "Volara LVP 3",
        "--version", "4.2.11",
        "--seq", "7",
        "--key", MFR_KEY,
        "-o", out,
        *extra,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def test_sample_validates_with_exit_zero_and_lists_every_check(run, devices):
    result = run(
        "validate", VOLARA / "4.2.10" / "manifest.cbor", "--trust", TRUST,
        "--device", "pump-1", "--devices", devices, "--image", VOLARA / "4.2.10" / "image.bin",
        "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["valid"] is True
    assert [c["check"] for c in report["checks"]][:3] == ["size-cap", "signature", "schema"]
    assert all(c["verdict"] == "pass" for c in report["checks"])
    assert all(c["threat"] for c in report["checks"])


def test_manifest_for_another_model_exits_one_naming_the_check(run, devices):
    result = run(
        "validate", VOLARA / "4.2.10" / "manifest.cbor", "--trust", TRUST,
        "--device", "pump-2", "--devices", devices,
    )  # fmt: skip
    assert result.exit_code == 1
    assert "INVALID" in result.output
    assert "FAIL    device-match" in result.output


def test_tampered_image_exits_one(run, tmp_path):
    image = tmp_path / "image.bin"
    original = (VOLARA / "4.2.10" / "image.bin").read_bytes()
    image.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    result = run(
        "validate", VOLARA / "4.2.10" / "manifest.cbor", "--trust", TRUST, "--image", image
    )
    assert result.exit_code == 1
    assert "FAIL    image" in result.output


def test_built_routine_manifest_needs_approval_then_validates(run, tmp_path):
    out = _build(run, tmp_path)
    result = run("validate", out, "--trust", TRUST, "--json")
    assert result.exit_code == 1
    failed = [c["check"] for c in json.loads(result.output)["checks"] if c["verdict"] == "fail"]
    assert failed == ["operator-approval"]
    assert run("approve", out, "--key", OPERATOR_KEY, "--trust", TRUST).exit_code == 0
    result = run("validate", out, "--trust", TRUST)
    assert result.exit_code == 0, result.output
    assert "VALID" in result.output


def test_built_urgent_manifest_validates_without_approval(run, tmp_path):
    out = _build(run, tmp_path, "--priority", "-1", "--use-before", "2035-01-01")
    result = run("validate", out, "--trust", TRUST)
    assert result.exit_code == 0, result.output
    assert "URGENT" in result.output


def test_approve_with_trust_refuses_an_untrusted_manifest(run, tmp_path):
    key = tmp_path / "stranger.pem"
    key.write_bytes(
        demo_key("stranger", "Ed25519").private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    out = tmp_path / "m.cbor"
    result = run(
        "build", "--image", VOLARA / "4.2.9" / "image.bin", "--sbom",
        VOLARA / "4.2.9" / "sbom.cdx.json", "--vendor", "acme-infusion.example", "--class",
        "Volara LVP 3", "--version", "4.2.11", "--seq", "7", "--key", key, "-o", out,
    )  # fmt: skip
    assert result.exit_code == 0
    before = out.read_bytes()
    result = run("approve", out, "--key", OPERATOR_KEY, "--trust", TRUST)
    assert result.exit_code == 1
    assert "refusing to approve" in result.output
    assert out.read_bytes() == before


def test_show_prints_the_claims_and_says_they_are_not_verified(run):
    result = run("show", VOLARA / "4.2.10" / "manifest.cbor")
    assert result.exit_code == 0
    assert "NOT VERIFIED" in result.output
    assert "4.2.10" in result.output
    data = json.loads(run("show", VOLARA / "4.2.10" / "manifest.cbor", "--json").output)
    assert data["verified"] is False
    assert data["manifest"]["urgent"] is True


def test_show_of_garbage_is_a_clear_error(run, tmp_path):
    junk = tmp_path / "junk.cbor"
    junk.write_bytes(b"\x00\x01garbage")
    result = run("show", junk)
    assert result.exit_code == 1
    assert "not a readable firmware manifest" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args",
    [
        ("--device", "pump-1"),  # --device without --devices
        ("--trust", "/nonexistent"),
    ],
)
def test_usage_errors_exit_two(run, args):
    extra = ("--trust", TRUST) if args[0] != "--trust" else ()
    result = run("validate", VOLARA / "4.2.10" / "manifest.cbor", *extra, *args)
    assert result.exit_code == 2


def test_build_refuses_a_non_semver_version_and_a_non_key(run, tmp_path):
    base = ["build", "--image", VOLARA / "4.2.9" / "image.bin", "--sbom",
            VOLARA / "4.2.9" / "sbom.cdx.json", "--vendor", "v.example", "--class", "c",
            "--seq", "1", "-o", tmp_path / "x"]  # fmt: skip
    assert run(*base, "--version", "4.2", "--key", MFR_KEY).exit_code == 2
    result = run(*base, "--version", "4.2.0", "--key", VOLARA / "4.2.9" / "sbom.cdx.json")
    assert result.exit_code == 2
    assert "private key" in result.output


@pytest.mark.parametrize("command", ["build", "approve", "validate", "show"])
def test_every_command_has_help_and_json(run, command):
    result = run(command, "--help")
    assert result.exit_code == 0
    assert "--json" in result.output
