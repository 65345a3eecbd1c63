"""The health metrics `provgw serve` reads at each scrape: its children, and the store."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import re
import signal
import sqlite3
import time
import urllib.request
from pathlib import Path

import promql_parser
import pytest
import yaml
from click.testing import CliRunner
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from device_sim.demo import free_port
from device_sim.events import SimDevice, make_event
from device_sim.fleet import flip_signature_bit
from device_sim.pki import CRL_DAYS, init_pki, revoke_device
from gateway.ingest.broker_config import deny_devices, write_broker_config
from gateway.ingest.topics import event_topic
from gateway.service.child import ChildStatus
from gateway.service.health import HealthCollector
from gateway.store.db import Database
from gateway.store.health import QUERIES
from gateway.store.trust_files import TrustFolder
from gateway.views.cli._main import _register, cli
from gateway.views.cli._status import EXIT_NOT_RUNNING, _running
from tests._helpers import revoked_devices_db
from tests.service.test_ledger_service import FAST_LOG, SITE, TODAY, Fleet

ALERTS = Path(__file__).resolve().parents[2] / "deploy" / "alerts.yml"


def _rules() -> list[dict]:
    return [
        rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    ]


def _parse(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _collect(collector: HealthCollector) -> dict[tuple[str, tuple], float]:
    registry = CollectorRegistry()
    registry.register(collector)
    return _parse(generate_latest(registry).decode())


def _exposition(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback http URL
        return response.read().decode()


def _scrape(url: str) -> dict[tuple[str, tuple], float]:
    return _parse(_exposition(url))


def _recall_devices(path: Path, **states: int) -> None:
    """Recall Z-0412-2026's devices DEV-1, DEV-2, ... in *states* (state -> how many)."""
    rows = [state for state, count in states.items() for _ in range(count)]
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO recall_impacts (recall_id, device_id, matches, state, matched_ms,"
            " updated_ms) VALUES ('Z-0412-2026', ?, '[]', ?, 0, 0)",
            [(f"DEV-{n}", state) for n, state in enumerate(rows, 1)],
        )


def test_the_alerting_rules_parse_and_say_how_urgent_and_what():
    rules = _rules()
    assert len({rule["alert"] for rule in rules}) == len(rules)
    for rule in rules:
        promql_parser.parse(rule["expr"])  # raises ValueError on a syntax error
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"]
    assert any(r["labels"]["severity"] == "critical" and "urgent" in r["expr"] for r in rules)


def test_each_scrape_reads_an_index_end_never_the_events_or_the_log(tmp_path):
    path = tmp_path / "gateway.sqlite3"
    Database(path).close()
    with sqlite3.connect(path) as conn:
        plans = {
            name: " / ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
            for name, sql in QUERIES.items()
        }
    # max() of a key: one read from an index end.
    assert plans["stored"] == "SEARCH events"
    assert plans["entries"] == "SEARCH log_leaves"
    assert plans["logged"] == (
        "SEARCH log_leaves USING COVERING INDEX sqlite_autoindex_log_leaves_1 (kind=?)"
    )
    # The newest row in index order, LIMIT 1: no sort, so the first row read is the answer.
    assert plans["signed"] == "SCAN checkpoints"
    assert plans["witnessed"] == "SCAN checkpoint_status USING INDEX checkpoint_status_witnessed"
    assert plans["anchored"] == "SCAN checkpoint_status USING INDEX checkpoint_status_anchored"
    # The revoked devices' partial index: a handful of rows, not the fleet.
    assert plans["revoked"] == "SEARCH devices USING INDEX devices_revoked (revoked_ms>?)"
    # Only the open anchors (a partial index), and the remediation tables: a row per device.
    assert plans["outbox"].startswith("SCAN anchor_outbox USING INDEX anchor_outbox_open")
    for table in ("events", "log_leaves", "checkpoints", "checkpoint_status"):
        assert table not in plans["outbox"] + plans["campaigns"]


def test_remediation_is_counted_per_campaign_and_state_and_no_label_names_a_device(tmp_path):
    path = tmp_path / "gateway.sqlite3"
    Database(path).close()
    digest = bytes(range(32))
    _recall_devices(path, installed=2, unreachable=1)
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO manifest_offers (manifest, device_id, state, first_ms, updated_ms)"
            " VALUES (?, 'DEV-4', 'offered', 0, 0)",
            (digest,),
        )
    children = [ChildStatus("urgent", up=True, ready=False, restarts=2)]
    samples = _collect(HealthCollector(path, lambda: children))
    devices = {k[1]: v for k, v in samples.items() if k[0] == "provgw_remediation_devices"}
    assert devices == {
        (("campaign", "Z-0412-2026"), ("state", "installed")): 2,
        (("campaign", "Z-0412-2026"), ("state", "unreachable")): 1,
        (("campaign", f"manifest:{digest.hex()}"), ("state", "offered")): 1,
    }
    assert samples[("provgw_child_up", (("role", "urgent"),))] == 1
    assert samples[("provgw_child_ready", (("role", "urgent"),))] == 0
    assert samples[("provgw_child_restarts_total", (("role", "urgent"),))] == 2
    assert samples[("provgw_store_readable", ())] == 1
    assert samples[("provgw_checkpoint_size", (("strength", "witnessed"),))] == 0  # none yet
    assert not any("DEV-" in value for key in samples for _, value in key[1])


def test_the_broker_crls_end_is_the_earliest_next_update_broker_config_wrote(
    gateway_site, tmp_path
):
    config = gateway_site.config
    samples = _collect(HealthCollector(tmp_path / "gateway.sqlite3", list, config.directory))
    key = ("provgw_broker_crl_next_update_timestamp_seconds", ())
    assert samples[key] == config.crl_next_update.timestamp()
    assert samples[key] > time.time()  # the demo PKI's CRLs are current
    # No broker.json there: that family is left out, the scrape still answers.
    samples = _collect(HealthCollector(tmp_path / "gateway.sqlite3", list, tmp_path))
    assert key not in samples
    assert ("provgw_store_readable", ()) in samples


def test_the_trust_folders_crls_end_is_read_as_the_verifiers_read_the_folder(tmp_path, caplog):
    soon = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=2)
    # The demo PKI issued a year ago: its CRLs (CRL_DAYS long) run out in two days.
    issued = soon - dt.timedelta(days=CRL_DAYS)
    records = init_pki(tmp_path / "pki", devices_per_model=1, now=issued)
    trust = tmp_path / "pki" / "trust"
    folder = TrustFolder(trust, every_s=0)  # look at every scrape, not once a second
    collector = HealthCollector(tmp_path / "gateway.sqlite3", list, trust=folder)
    key = ("provgw_trust_crl_next_update_timestamp_seconds", ())
    assert _collect(collector)[key] == soon.timestamp()
    assert soon.timestamp() - time.time() < 3 * 86400  # the rule fires on it
    # A CRL issued a day earlier still (a revocation dated then): the folder is read again.
    revoke_device(tmp_path / "pki", records[0].id, now=issued - dt.timedelta(days=1))
    sooner = soon - dt.timedelta(days=1)
    assert _collect(collector)[key] == sooner.timestamp()
    # A half-copied CRL: the folder does not load, so the store in force (and its date) stays,
    # as it stays the verifiers'; the scrape still answers.
    (trust / "partial.crl.pem").write_bytes(b"-----BEGIN X509 CRL-----\nMIIB")
    samples = _collect(collector)
    assert "cannot be loaded" in caplog.text
    assert samples[key] == sooner.timestamp()
    assert ("provgw_store_readable", ()) in samples


def test_an_unreadable_database_is_a_zero_not_a_failed_scrape(tmp_path):
    samples = _collect(HealthCollector(tmp_path / "missing.sqlite3", list))
    assert samples[("provgw_store_readable", ())] == 0
    assert ("provgw_store_events", ()) not in samples


@pytest.mark.broker
@pytest.mark.timeout(90)
def test_the_endpoint_shows_the_log_keeping_up_and_a_killed_child_restarted(
    gateway_site, site_broker, serve_gateway
):
    port = free_port()
    gateway = serve_gateway(gateway_site, site_broker, start=False, metrics_port=port)
    with gateway.config.open("a", encoding="utf-8") as config:
        config.write(FAST_LOG)
    status = gateway.start()
    url = status["metrics"]
    samples = _scrape(url)
    for role in ("receiver", "ledger", "urgent"):
        assert samples[("provgw_child_up", (("role", role),))] == 1
        assert samples[("provgw_child_ready", (("role", role),))] == 1
        assert samples[("provgw_child_restarts_total", (("role", role),))] == 0

    sent = Fleet(site_broker, gateway_site.pki, gateway_site.devices[:3]).publish(rounds=5)
    _publish_forged(gateway_site, site_broker)  # one refused message: the rejected counter shows
    samples = _scrape_until(
        url,
        lambda got: (
            got[("provgw_store_events", ())] == sent
            and got[("provgw_checkpoint_size", (("strength", "witnessed"),))] == sent
        ),
        30,
    )
    assert samples[("provgw_store_events", ())] == sent
    assert samples[("provgw_log_unlogged_events", ())] == 0
    assert samples[("provgw_log_entries", ())] == sent
    assert samples[("provgw_checkpoint_size", (("strength", "signed"),))] == sent
    assert samples[("provgw_checkpoint_size", (("strength", "witnessed"),))] == sent
    assert samples[("provgw_checkpoint_size", (("strength", "anchored"),))] == 0  # no chain
    signed_at = samples[("provgw_checkpoint_timestamp_seconds", (("strength", "signed"),))]
    assert abs(signed_at - time.time()) < 30
    assert samples[("provgw_anchor_outbox", (("status", "pending"),))] == 0
    assert samples[("provgw_checkpoint_timestamp_seconds", (("strength", "anchored"),))] == 0
    # Every metric the alerting rules name is one this gateway exports (a family without
    # samples yet, such as remediation before any recall, still says its name).
    families = list(text_string_to_metric_families(_exposition(url)))
    exported = {f.name for f in families} | {s.name for f in families for s in f.samples}
    for rule in _rules():
        assert set(re.findall(r"provgw_[a-z_]+", rule["expr"])) <= exported, rule["alert"]

    os.kill(status["urgent_pid"], signal.SIGKILL)
    samples = _scrape_until(
        url,
        lambda got: (
            got[("provgw_child_restarts_total", (("role", "urgent"),))] == 1
            and got[("provgw_child_ready", (("role", "urgent"),))] == 1
        ),
        20,
    )
    assert samples[("provgw_child_restarts_total", (("role", "urgent"),))] == 1
    assert samples[("provgw_child_up", (("role", "urgent"),))] == 1
    assert samples[("provgw_child_ready", (("role", "urgent"),))] == 1
    assert samples[("provgw_child_restarts_total", (("role", "receiver"),))] == 0
    # `provgw status` shows the same, for whoever has no Prometheus.
    _register()
    result = _status(gateway.config, "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["events"] == sent
    assert shown["processes"]["children"] == {
        "ledger": {"up": True, "ready": True, "restarts": 0},
        "receiver": {"up": True, "ready": True, "restarts": 0},
        "urgent": {"up": True, "ready": True, "restarts": 1},
    }
    assert "urgent ready (1 restarts)" in _status(gateway.config).output
    assert gateway.stop()["status"] == "stopped"


def _publish_forged(site, broker) -> None:
    device = site.devices[3]
    event = make_event(device, "custody", 1, int(time.time() * 1000), random.Random(1), today=TODAY)
    forged = SimDevice.load(site.pki, device).sign(event, with_chain=True)
    with broker.device(device) as client:
        client.publish(event_topic(SITE, device, "custody"), flip_signature_bit(forged))


def _scrape_until(url: str, done, timeout: float) -> dict[tuple[str, tuple], float]:
    deadline = time.monotonic() + timeout
    samples = _scrape(url)
    while not done(samples) and time.monotonic() < deadline:
        time.sleep(0.1)
        samples = _scrape(url)
    return samples


def _status(conf: Path, *args: str):
    return CliRunner().invoke(cli, ["status", "--config", str(conf), *args])


def test_status_says_the_same_from_the_database_when_no_gateway_serves_metrics(
    gateway_site, tmp_path
):
    _register()
    db = tmp_path / "gateway.sqlite3"
    Database(db).close()
    _recall_devices(db, installed=1, unreachable=1)
    conf = tmp_path / "gateway.toml"
    conf.write_text(
        f'[broker]\nconfig_dir = "{gateway_site.config.directory}"\n'
        f'[trust]\ndir = "{gateway_site.pki / "trust"}"\n'
        f'[store]\npath = "{db}"\n[ingest]\nworkers = 2\n[metrics]\nport = 0\n',
        encoding="utf-8",
    )
    result = _status(conf, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["events"], data["unlogged"], data["log_entries"]) == (0, 0, 0)
    assert data["checkpoints"]["witnessed"] == {"size": 0, "at_ms": None}
    assert data["remediation"] == [
        {"campaign": "Z-0412-2026", "state": "installed", "devices": 1},
        {"campaign": "Z-0412-2026", "state": "unreachable", "devices": 1},
    ]
    assert data["processes"] is None
    assert data["broker_crls_valid_until"] == gateway_site.config.crl_next_update.isoformat()
    text = _status(conf).output
    when = f"{gateway_site.config.crl_next_update:%Y-%m-%d %H:%M} UTC"
    assert f"broker CRLs valid until {when}: re-run `provgw broker-config` and reload" in text
    assert "remediation Z-0412-2026: 1 installed, 1 unreachable" in text
    assert "witnessed 0 (never)" in text
    assert "[metrics] port is 0" in text
    db.unlink()
    refused = _status(conf, "--json")
    assert refused.exit_code == 1
    assert json.loads(refused.output)["reason"] == "store-missing"


def test_revoked_devices_the_broker_still_takes_are_counted_by_metrics_and_named_by_status(
    gateway_site, tmp_path
):
    # `provgw device revoke` without `--broker`, and no `provgw broker-acl` after it: the
    # gateway refuses the device, the broker still takes what it publishes.
    _register()
    db = revoked_devices_db(tmp_path / "gateway.sqlite3", "pump-7", "pump-8")
    broker = write_broker_config(gateway_site.pki, tmp_path / "broker", now=dt.datetime.now(dt.UTC))
    deny_devices(broker.directory, ["pump-7"])
    conf = tmp_path / "gateway.toml"
    conf.write_text(
        f'[broker]\nconfig_dir = "{broker.directory}"\n'
        f'[trust]\ndir = "{gateway_site.pki / "trust"}"\n'
        f'[store]\npath = "{db}"\n[ingest]\nworkers = 1\n[metrics]\nport = 0\n',
        encoding="utf-8",
    )
    key = ("provgw_broker_revoked_not_denied", ())

    assert _collect(HealthCollector(db, list, broker.directory))[key] == 1
    data = json.loads(_status(conf, "--json").output)
    assert (data["revoked_devices"], data["revoked_not_denied_at_broker"]) == (2, ["pump-8"])
    text = _status(conf).output
    assert "NOT denied at the broker yet, so it still takes what they publish: pump-8" in text
    assert f"provgw broker-acl -o {broker.directory} --db {db}" in text

    deny_devices(broker.directory, ["pump-8"])
    assert _collect(HealthCollector(db, list, broker.directory))[key] == 0
    assert "revoked devices: 2, all denied at the broker" in _status(conf).output
    assert json.loads(_status(conf, "--json").output)["revoked_not_denied_at_broker"] == []


def test_status_exits_3_when_the_gateway_does_not_answer_so_a_check_script_sees_it(
    gateway_site, tmp_path
):
    db = tmp_path / "gateway.sqlite3"
    Database(db).close()
    port = free_port()  # nothing listens there
    conf = tmp_path / "gateway.toml"
    conf.write_text(
        f'[broker]\nconfig_dir = "{gateway_site.config.directory}"\n'
        f'[trust]\ndir = "{gateway_site.pki / "trust"}"\n'
        f'[store]\npath = "{db}"\n[metrics]\nhost = "127.0.0.1"\nport = {port}\n',
        encoding="utf-8",
    )
    result = _status(conf)
    assert result.exit_code == EXIT_NOT_RUNNING == 3, result.output
    assert f"no answer from http://127.0.0.1:{port}/metrics" in result.output
    assert "is `provgw serve` running with this configuration?" in result.output
    shown = _status(conf, "--json")
    assert shown.exit_code == 3
    assert json.loads(shown.output)["processes"]["answered"] is False


@pytest.mark.parametrize(
    ("children", "running"),
    [
        ({"receiver": {"up": True, "ready": True, "restarts": 0}}, True),
        ({"receiver": {"up": True, "ready": False, "restarts": 0}}, False),  # starting
        ({"receiver": {"up": False, "ready": False, "restarts": 2}}, False),  # down
    ],
)
def test_status_is_running_only_when_every_process_is_ready(children, running):
    assert _running({"url": "u", "answered": True, "children": children}) is running
    assert _running({"url": "u", "answered": False, "error": "refused", "children": {}}) is False
    assert _running(None) is True  # [metrics] port 0: nothing to ask
