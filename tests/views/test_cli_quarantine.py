"""`provgw quarantine list | show | retry`: text and JSON, the bytes, exit codes."""

from __future__ import annotations

import base64
import hashlib
import json
import time

import pytest

from gateway.service.ingest import Delivery
from gateway.store.db import Database
from gateway.views.cli import _output
from gateway.views.web._data import Page, quarantine_page
from gateway.views.web._html import quarantine_html
from tests._helpers import invoke_cli
from tests.service.test_quarantine import Site


@pytest.fixture
def site(gateway_site, tmp_path):
    site = Site(gateway_site.pki, tmp_path)
    site.ingest([site.message(site.device) for _ in range(2)])  # untrusted-issuer, unknown-kid
    site.config = tmp_path / "gateway.toml"
    site.config.write_text(
        f'[broker]\nconfig_dir = "{gateway_site.config.directory}"\n'
        f'[trust]\ndir = "{gateway_site.pki / "trust"}"\n'
        f'[store]\npath = "{site.path}"\n',
        encoding="utf-8",
    )
    return site


def test_list_shows_the_open_rows_with_their_reasons(site):
    result = invoke_cli("quarantine", "list", "--db", site.path)
    assert result.exit_code == 0, result.output
    assert "2 open quarantined message(s): unknown-kid 1, untrusted-issuer 1" in result.output
    assert f"provgw/v1/icu/dev/{site.device}/evt/maintenance" in result.output
    data = json.loads(invoke_cli("quarantine", "list", "--db", site.path, "--json").output)
    assert data["counts"] == {"unknown-kid": 1, "untrusted-issuer": 1}
    assert [r["reason"] for r in data["rows"]] == ["unknown-kid", "untrusted-issuer"]
    assert all(r["released_ms"] is None for r in data["rows"])
    only = json.loads(
        invoke_cli(
            "quarantine", "list", "--db", site.path, "--reason", "unknown-kid", "--json"
        ).output
    )
    assert [r["reason"] for r in only["rows"]] == ["unknown-kid"]


def test_show_writes_the_exact_bytes_for_offline_inspection(site, tmp_path):
    (row,) = site.query("SELECT id, raw FROM quarantine WHERE reason = 'untrusted-issuer'")
    out = tmp_path / "refused.cose"
    result = invoke_cli("quarantine", "show", row[0], "--db", site.path, "--out", out)
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == row[1]
    assert hashlib.sha256(row[1]).hexdigest() in result.output
    assert "refused: untrusted-issuer" in result.output
    data = json.loads(invoke_cli("quarantine", "show", row[0], "--db", site.path, "--json").output)
    assert base64.b64decode(data["raw_base64"]) == row[1]
    # What the maker's security team would run on it: with the full trust folder it verifies.
    verify = invoke_cli("message", "verify", out, "--trust", site.pki / "trust")
    assert verify.exit_code == 0, verify.output
    missing = invoke_cli("quarantine", "show", 999, "--db", site.path)
    assert missing.exit_code == 1
    assert "no quarantined message 999" in missing.output


def test_retry_stores_what_now_verifies_and_says_so(site):
    dry = invoke_cli("quarantine", "retry", "--config", site.config, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "(dry run: nothing written): 2 would be stored" in dry.output
    assert site.query("SELECT count(*) FROM events") == [(0,)]
    result = invoke_cli("quarantine", "retry", "--config", site.config, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["ok"], data["retried"], data["stored"], data["still_refused"]) == (True, 2, 2, 0)
    assert site.query("SELECT count(*) FROM events") == [(2,)]
    listed = invoke_cli("quarantine", "list", "--db", site.path)
    assert "0 open quarantined message(s): none (2 released: --released lists them)" in (
        listed.output
    )
    released = json.loads(
        invoke_cli("quarantine", "list", "--db", site.path, "--released", "--json").output
    )
    assert sorted(r["event_id"] for r in released["rows"]) == [1, 2]
    again = invoke_cli("quarantine", "retry", "--config", site.config)
    assert (again.exit_code, again.output.split(":")[0]) == (0, "0 quarantined message(s) retried")


def test_retry_exits_1_while_some_are_still_refused(site):
    site.config.write_text(
        site.config.read_text(encoding="utf-8").replace(str(site.pki / "trust"), str(site.partial)),
        encoding="utf-8",
    )
    result = invoke_cli("quarantine", "retry", "--config", site.config)
    assert result.exit_code == 1
    assert "2 still refused (unknown-kid 1, untrusted-issuer 1)" in result.output
    (first,) = site.query("SELECT id FROM quarantine WHERE reason = 'untrusted-issuer'")
    assert f"  #{first[0]}: untrusted-issuer: " in result.output


def test_retry_without_a_database_says_where_it_looked(site):
    site.path.unlink()
    result = invoke_cli("quarantine", "retry", "--config", site.config)
    assert result.exit_code == 2
    assert f"there is no gateway database at {site.path}" in result.output


def test_the_web_page_lists_the_open_rows_and_counts_the_released(site):
    # The web UI reads what the CLI reads: after a retry of one row it lists the other.
    (kid_only,) = site.query("SELECT id FROM quarantine WHERE reason = 'unknown-kid'")
    first = invoke_cli("quarantine", "retry", "--config", site.config, "--id", kid_only[0])
    assert first.exit_code == 1  # the device is not enrolled yet: its first message is refused
    both = invoke_cli("quarantine", "retry", "--config", site.config)
    assert both.exit_code == 0, both.output
    with Database(site.path) as db:
        data = quarantine_page(Page(db, None), reason=None, limit=10, before=None)
    assert (data["rows"], data["counts"], data["released"]) == ([], {}, 2)
    assert "2 more were stored since" in quarantine_html(data)


def test_a_long_retry_reports_progress_on_stderr_only_in_text(site, monkeypatch):
    monkeypatch.setattr(_output, "PROGRESS_EVERY_S", 0.0)  # every chunk counts as long
    text = invoke_cli("quarantine", "retry", "--config", site.config, "--dry-run")
    assert "retried 2 of 2" in text.stderr
    quiet = invoke_cli("quarantine", "retry", "--config", site.config, "--dry-run", "--json")
    assert quiet.stderr == ""
    assert json.loads(quiet.stdout)["retried"] == 2


def test_refusals_past_the_budget_are_shown_as_counted_not_kept(site):
    topic = f"provgw/v1/icu/dev/{site.other}/evt/custody"
    now = int(time.time() * 1000)
    site.ingest([Delivery(topic, b"\xa1junk" + bytes([i]), i, 1, now) for i in range(4)], budget=1)
    text = invoke_cli("quarantine", "list", "--db", site.path).output
    assert "  + 3 " in text
    assert f"from {site.other} in the hour from" in text
    data = json.loads(invoke_cli("quarantine", "list", "--db", site.path, "--json").output)
    (over,) = data["not_kept"]
    assert (over["device_hint"], over["messages"], over["bytes"]) == (site.other, 3, 18)
    with Database(site.path) as db:
        page = quarantine_page(Page(db, None), reason=None, limit=10, before=None)
    html = quarantine_html(page)
    assert "Counted, not kept" in html
    assert f"<td>{site.other}</td>" in html
