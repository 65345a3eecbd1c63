"""`provgw serve` against a real Mosquitto: valid events stored once, bad ones quarantined."""

from __future__ import annotations

import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from device_sim.events import SimDevice, make_event
from gateway.core import cbor, cose
from gateway.ingest.broker_config import write_broker_config
from gateway.ingest.topics import event_topic
from gateway.store.db import Database, gateway_migrations, registered_migrations
from gateway.views.cli._main import _register, cli

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]

SITE = "icu"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _event(device: str, kind: str, seq: int, rng: random.Random):
    return make_event(device, kind, seq, _now_ms(), rng, today=datetime.now(UTC).date())


def _rows(db_path, sql):
    with sqlite3.connect(db_path) as conn:
        return conn.execute(sql).fetchall()


def _wait_for(db_path, sql, expected, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = _rows(db_path, sql)[0][0]
        except sqlite3.OperationalError:  # not created yet
            value = None
        if value == expected:
            return
        time.sleep(0.05)
    pytest.fail(f"{sql!r} never became {expected!r} (last {value!r})")


@pytest.fixture
def open_acl_broker(gateway_site, start_mosquitto, tmp_path):
    """A MISCONFIGURED broker: any device may write under any device's topic.

    Lets device A publish under device B's topic, so the gateway's own check is what is tested.
    """
    config = write_broker_config(
        gateway_site.pki, tmp_path / "open-broker", now=datetime.now(UTC), routine_workers=2
    )
    acl = config.acl.read_text(encoding="utf-8")
    config.acl.write_text("pattern write provgw/v1/#\n" + acl, encoding="utf-8")
    return config, start_mosquitto(gateway_site.pki, config)


def test_valid_events_are_stored_once_and_bad_ones_quarantined_with_their_reason(
    gateway_site, open_acl_broker, serve_gateway
):
    config, broker = open_acl_broker
    site = type(gateway_site)(gateway_site.pki, config, gateway_site.devices)
    gateway = serve_gateway(site, broker, workers=2)
    db_path = gateway.status["database"]
    rng = random.Random(11)
    a_id, b_id, c_id = gateway_site.devices[0], gateway_site.devices[2], gateway_site.devices[4]
    a, b, c = (SimDevice.load(gateway_site.pki, d) for d in (a_id, b_id, c_id))

    a1 = a.sign(_event(a_id, "maintenance", 1, rng), with_chain=True)
    a2 = a.sign(_event(a_id, "custody", 2, rng), with_chain=False)
    b1 = b.sign(_event(b_id, "firmware_update", 1, rng), with_chain=True)
    b2 = b.sign(_event(b_id, "maintenance", 2, rng), with_chain=False)
    replay = a.sign(_event(a_id, "custody", 2, rng), with_chain=False)  # seq 2, other content
    bad_sig = bytearray(a.sign(_event(a_id, "custody", 3, rng), with_chain=False))
    bad_sig[-1] ^= 0x01
    impersonating = a.sign(_event(a_id, "custody", 4, rng), with_chain=True)
    smuggled = _event(a_id, "custody", 5, rng).to_cbor_map()
    smuggled["body"]["patient_name"] = "Jane Doe"
    unknown_field = cose.sign1(cbor.dumps(smuggled), a.key, kid=a.kid)
    wrong_type = a.sign(_event(a_id, "maintenance", 6, rng), with_chain=False)
    never_enrolled = c.sign(_event(c_id, "custody", 1, rng), with_chain=False)

    with broker.device(a_id) as pub_a, broker.device(b_id) as pub_b, broker.device(c_id) as pub_c:
        pub_a.publish(event_topic(SITE, a_id, "maintenance"), a1)
        pub_b.publish(event_topic(SITE, b_id, "firmware_update"), b1)
        # Kid-only messages right after the chain: whichever worker gets them waits for the
        # enrolment the other worker may be committing.
        pub_a.publish(event_topic(SITE, a_id, "custody"), a2)
        pub_b.publish(event_topic(SITE, b_id, "maintenance"), b2)
        pub_a.publish(event_topic(SITE, a_id, "custody"), a2)  # re-sent: a duplicate
        _wait_for(db_path, "SELECT count(*) FROM events", 4)
        pub_a.publish(event_topic(SITE, a_id, "custody"), replay)
        pub_a.publish(event_topic(SITE, a_id, "custody"), bytes(bad_sig))
        pub_a.publish(event_topic(SITE, a_id, "custody"), b"\xa1\x01\x02 not COSE")  # {1: 2} + junk
        pub_a.publish(event_topic(SITE, b_id, "custody"), impersonating)  # on B's topic
        pub_a.publish(event_topic(SITE, a_id, "custody"), unknown_field)
        pub_a.publish(event_topic(SITE, a_id, "custody"), wrong_type)  # maintenance on custody
        pub_a.publish(event_topic(SITE, a_id, "custody") + "/extra", a1)
        pub_c.publish(event_topic(SITE, c_id, "custody"), never_enrolled)
        _wait_for(db_path, "SELECT count(*) FROM quarantine", 8)

    stopped = gateway.stop()
    assert stopped["status"] == "stopped"
    assert stopped["events_stored"] == 4

    stored = _rows(db_path, "SELECT device_id, seq, raw FROM events ORDER BY device_id, seq")
    assert sorted((d, s) for d, s, _ in stored) == sorted(
        [(a_id, 1), (a_id, 2), (b_id, 1), (b_id, 2)]
    )
    assert {(d, s): bytes(raw) for d, s, raw in stored}[(a_id, 2)] == a2
    quarantined = {
        reason: (topic, bytes(raw))
        for reason, topic, raw in _rows(db_path, "SELECT reason, topic, raw FROM quarantine")
    }
    assert set(quarantined) == {
        "replay",
        "bad-signature",
        "trailing",
        "topic-mismatch",
        "schema-unknown-field",
        "topic-type-mismatch",
        "bad-topic",
        "unknown-kid",
    }
    # Raw bytes and topic are kept exactly as received.
    assert quarantined["replay"] == (event_topic(SITE, a_id, "custody"), replay)
    assert quarantined["topic-mismatch"] == (event_topic(SITE, b_id, "custody"), impersonating)
    assert quarantined["bad-signature"][1] == bytes(bad_sig)
    assert quarantined["unknown-kid"][1] == never_enrolled
    assert stopped["quarantined"] == dict.fromkeys(quarantined, 1)


def test_device_cannot_publish_under_another_devices_topic_through_the_real_acl(
    gateway_site, site_broker, serve_gateway
):
    gateway = serve_gateway(gateway_site, site_broker, workers=1)
    db_path = gateway.status["database"]
    rng = random.Random(12)
    a_id, b_id = gateway_site.devices[0], gateway_site.devices[1]
    a = SimDevice.load(gateway_site.pki, a_id)
    own = a.sign(_event(a_id, "custody", 1, rng), with_chain=True)
    forged = a.sign(_event(a_id, "custody", 2, rng), with_chain=True)
    with site_broker.device(a_id) as pub:
        with pytest.raises(Exception, match="Not authorized"):
            pub.publish(event_topic(SITE, b_id, "custody"), forged)
        pub.publish(event_topic(SITE, a_id, "custody"), own)
    _wait_for(db_path, "SELECT count(*) FROM events", 1)
    assert gateway.stop()["quarantined"] == {}


class _Nowhere:
    """A broker address where nothing listens (the discard port)."""

    host, port = "127.0.0.1", 9


def test_serve_explains_an_unreachable_broker(gateway_site, serve_gateway):
    gateway = serve_gateway(gateway_site, _Nowhere(), start=False)
    status = gateway.start()
    assert gateway.wait_exit() == 1
    assert status["status"] == "failed"
    assert status["reason"] == "broker-down"
    assert "127.0.0.1:9" in status["detail"]
    assert "Is Mosquitto running" in status["detail"]


def test_serve_says_on_stderr_when_it_upgrades_the_database(gateway_site, serve_gateway, tmp_path):
    # An upgrade of a large file takes a while: the operator sees what runs, with a time, before
    # anything else can go wrong (here the broker is down, after the upgrade).
    last = registered_migrations()[-1]
    Database(tmp_path / "gateway.sqlite3", migrations=gateway_migrations().before(last)).close()
    gateway = serve_gateway(gateway_site, _Nowhere(), start=False)
    assert gateway.start()["reason"] == "broker-down"
    assert gateway.wait_exit() == 1
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} provgw WARNING "
    log = gateway.log()
    assert re.search(
        f"^{stamp}Upgrading the gateway database .*gateway.sqlite3", log, re.MULTILINE
    ), log
    assert re.search(f"^{stamp}.*schema step {last} applied \\(1 of 1\\)", log, re.MULTILINE), log
    with Database(tmp_path / "gateway.sqlite3") as db:
        assert db.migrations_applied == ()


def test_serve_says_in_words_which_processes_it_runs(gateway_site, site_broker, serve_gateway):
    conf = serve_gateway(gateway_site, site_broker, workers=2, start=False).config
    exe = Path(sys.executable).with_name("provgw")
    with subprocess.Popen(
        [str(exe), "serve", "--config", str(conf)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    ) as proc:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=30)[0]
    found = re.match(
        r"provgw serving \(pid (\d+)\): receiver \(pid (\d+)\) and 2 verifiers, ", first
    )
    assert found, first
    assert int(found[1]) == proc.pid
    assert int(found[2]) != proc.pid
    assert "provgw stopped after" in rest
    assert proc.returncode == 0


def test_serve_without_a_configuration_file_says_where_one_comes_from(tmp_path):
    _register()
    result = CliRunner().invoke(cli, ["serve", "--config", str(tmp_path / "gateway.toml")])
    assert result.exit_code == 2
    assert "Cannot read the configuration file" in result.output
    # The hint adds where a working file comes from, rather than repeating the error.
    assert "/etc/provgw/gateway.toml" in result.output
    assert "make demo" in result.output


def test_serve_explains_a_missing_trust_directory(gateway_site, site_broker, tmp_path):
    conf = tmp_path / "gateway.toml"
    conf.write_text(
        f'[broker]\nport = {site_broker.port}\nconfig_dir = "{gateway_site.config.directory}"\n'
        f'[trust]\ndir = "{tmp_path / "no-such-trust"}"\n[store]\npath = "g.sqlite3"\n',
        encoding="utf-8",
    )
    _register()
    result = CliRunner().invoke(cli, ["serve", "--config", str(conf)])
    assert result.exit_code == 2
    assert "provgw-sim pki init" in result.output
