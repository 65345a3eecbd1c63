from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.bench_sbom import generate_sbom
from gateway.views.cli._main import _register, cli
from tests._helpers import outside_vectors

VECTORS = outside_vectors("sbom")


@pytest.fixture
def run():
    _register()
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(cli, ["sbom", "check", *args])

    return invoke


@pytest.fixture
def good_sbom(tmp_path):
    path = tmp_path / "bom.json"
    path.write_text(json.dumps(generate_sbom(5)))
    return path


def test_complete_sbom_passes_with_exit_0(run, good_sbom):
    result = run(str(good_sbom))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith("verdict: PASS")
    assert "NTIA supplier: present in all 5 components" in result.stdout


def test_json_output_carries_the_report_and_the_digest(run, good_sbom):
    result = run(str(good_sbom), "--json")
    assert result.exit_code == 0
    out = json.loads(result.stdout)
    assert out["ok"] is True
    assert out["spec_version"] == "1.6"
    assert out["components"] == 5
    assert len(out["sha256"]) == 64
    assert {e["element"] for e in out["elements"]} >= {"supplier", "timestamp", "end of support"}


def test_failing_sbom_exits_1_and_says_what_is_missing(run, tmp_path):
    doc = generate_sbom(4, fda=False)
    del doc["metadata"]["authors"]
    path = tmp_path / "bom.json"
    path.write_text(json.dumps(doc))
    result = run(str(path))
    assert result.exit_code == 1
    assert "FAIL  NTIA author: missing" in result.stdout
    assert "FAIL  FDA end of support: missing in 4 of 4 components" in result.stdout
    assert result.stdout.strip().endswith("verdict: FAIL")


def test_no_fda_option_downgrades_end_of_support_to_a_warning(run, tmp_path):
    path = tmp_path / "bom.json"
    path.write_text(json.dumps(generate_sbom(2, fda=False)))
    result = run(str(path), "--no-fda")
    assert result.exit_code == 0
    assert "warn  FDA end of support: missing in 2 of 2 components" in result.stdout


def test_schema_errors_are_listed_with_their_path(run, tmp_path):
    doc = generate_sbom(2)
    doc["components"][1]["hashes"][0]["alg"] = "MD6"
    path = tmp_path / "bom.json"
    path.write_text(json.dumps(doc))
    result = run(str(path), "--json")
    assert result.exit_code == 1
    out = json.loads(result.stdout)
    assert out["schema_valid"] is False
    assert out["schema_errors"][0].startswith("$.components[1].hashes[0].alg:")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"not json at all", "sbom-not-json"),
        (b'<bom xmlns="http://cyclonedx.org/schema/bom/1.4"/>', "sbom-unsupported-format"),
        (b'{"bomFormat": "CycloneDX", "specVersion": "1.1"}', "sbom-spec-version"),
    ],
)
def test_unreadable_file_gets_one_line_and_exit_1(run, tmp_path, content, reason):
    path = tmp_path / "bom.json"
    path.write_bytes(content)
    result = run(str(path))
    assert result.exit_code == 1
    assert result.stdout.startswith("FAIL ")
    assert result.stdout.count("\n") == 1
    as_json = json.loads(run(str(path), "--json").stdout)
    assert (as_json["ok"], as_json["reason"]) == (False, reason)


def test_missing_file_is_a_usage_error(run, tmp_path):
    result = run(str(tmp_path / "absent.json"))
    assert result.exit_code == 2


@pytest.mark.parametrize(
    "path", sorted(VECTORS.rglob("*.json")), ids=lambda p: str(p.relative_to(VECTORS))
)
def test_every_test_vector_gets_a_verdict(run, path):
    result = run(str(path), "--json")
    assert result.exit_code in (0, 1)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert json.loads(result.stdout)["spec_version"] in {"1.2", "1.4"}


def test_installed_provgw_prints_no_traceback_for_garbage(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\x00\x01garbage")
    provgw = Path(sys.executable).parent / "provgw"
    result = subprocess.run(
        [str(provgw), "sbom", "check", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert "not valid JSON" in result.stdout
