"""`provgw device show | revoke`: a device's keys and state; a revoked device is refused."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime

import pytest
from cryptography import x509

from device_sim.pki import revoke_device as revoke_certificate
from gateway.ingest.broker_config import write_broker_config
from gateway.store.db import Database
from gateway.store.devices import DeviceStore
from gateway.store.trust_files import load_trust_dir
from gateway.views.web._data import Page, device_page
from gateway.views.web._html import device_html
from tests._helpers import invoke_cli
from tests.service.test_ledger_service import Fleet, events, provgw, query, wait_for
from tests.service.test_quarantine import Site


@pytest.fixture
def site(gateway_site, tmp_path):
    site = Site(gateway_site.pki, tmp_path)
    site.ingest([site.message(site.other) for _ in range(2)])  # trusted maker: enrolled, stored
    return site


def test_show_lists_the_keys_events_and_state(site):
    result = invoke_cli("device", "show", site.other, "--db", site.path)
    assert result.exit_code == 0, result.output
    assert f"device {site.other} (" in result.output
    assert "2 events stored (last seq 2), 0 open in the quarantine" in result.output
    assert "(current)" in result.output
    assert "not revoked at this site" in result.output
    assert "certificate not checked (add --trust DIR" in result.output
    data = json.loads(invoke_cli("device", "show", site.other, "--db", site.path, "--json").output)
    assert (data["events"], data["revoked"], len(data["keys"])) == (2, None, 1)
    assert data["certificate"] is None


def test_show_with_the_trust_folder_says_what_the_gateway_does_with_the_device(site, tmp_path):
    # A copy of the site's PKI, so that its manufacturer can revoke the device in this test only.
    pki_copy = tmp_path / "pki"
    shutil.copytree(site.pki, pki_copy)
    trust = pki_copy / "trust"
    with Database(site.path) as db:
        row = DeviceStore(db).get(site.other)
    assert row is not None
    path = [x509.load_der_x509_certificate(der) for der in (row.cert, *row.chain)]
    expires = min(cert.not_valid_after_utc for cert in path)

    show = ("device", "show", site.other, "--db", site.path, "--trust", trust)
    accepted = invoke_cli(*show)
    assert accepted.exit_code == 0, accepted.output
    assert f"certificate accepted by {trust} until {expires.isoformat()}" in accepted.output
    data = json.loads(invoke_cli(*show, "--json").output)
    assert data["certificate"] == {
        "accepted": True, "valid_until": expires.isoformat(), "reason": None, "detail": None,
    }  # fmt: skip

    # The manufacturer revokes the certificate: nothing changed at this site, yet the gateway
    # refuses the device, and `show` says so (with the core's reason and sentence).
    revoke_certificate(pki_copy, site.other)
    refused = invoke_cli(*show)
    assert refused.exit_code == 0, refused.output
    assert "not revoked at this site" in refused.output
    assert f"CERTIFICATE REFUSED by {trust} (revoked):" in refused.output
    assert "Its messages are quarantined as revoked." in refused.output
    data = json.loads(invoke_cli(*show, "--json").output)["certificate"]
    assert (data["accepted"], data["valid_until"], data["reason"]) == (False, None, "revoked")
    # What the gateway's pipeline does with its next message, given the same folder.
    with Database(site.path) as db:
        outcome = site.pipeline(db, trust=load_trust_dir(trust)).process([site.message(site.other)])
        assert outcome.rejected == {"revoked": 1}
        page = device_page(Page(db, None, load_trust_dir(trust)), site.other, limit=10)
    assert page is not None
    assert page["enrolled"]["certificate"] == data
    assert '<span class="state failed">refused (revoked)</span>' in device_html(page)


def test_show_with_a_trust_folder_that_does_not_load_fails_and_says_why(site, tmp_path):
    broken = tmp_path / "trust"
    broken.mkdir()
    (broken / "acme.root.pem").write_text("not a certificate")
    result = invoke_cli("device", "show", site.other, "--db", site.path, "--trust", broken)
    assert result.exit_code == 1
    assert "acme.root.pem" in result.output


def test_a_revoked_device_is_refused_from_the_next_batch_and_keeps_its_history(site):
    with Database(site.path) as db:
        # One long-lived pipeline, as a running verifier holds one: its key cache knows the device.
        pipeline = site.pipeline(db)
        assert pipeline.process([site.message(site.other)]).stored == 1
        revoked = invoke_cli(
            "device", "revoke", site.other, "--db", site.path, "--reason", "stolen"
        )
        assert revoked.exit_code == 0, revoked.output
        assert "everything it signs is refused from now on" in revoked.output
        assert "its 3 stored events stay" in revoked.output
        assert "Logged as entry 0 of the transparency log" in revoked.output  # nothing else yet
        outcome = pipeline.process([site.message(site.other)])
        assert (outcome.stored, outcome.rejected) == (0, {"device-revoked": 1})
        page = device_page(Page(db, None), site.other, limit=10)
    assert page is not None
    assert page["enrolled"]["revoked_reason"] == "stolen"
    assert "(stolen)" in device_html(page)
    data = json.loads(invoke_cli("device", "show", site.other, "--db", site.path, "--json").output)
    assert (data["events"], data["revoked_reason"], data["quarantined"]) == (3, "stolen", 1)
    # Revoking again changes nothing: the first revocation and its reason stand.
    again = invoke_cli(
        "device", "revoke", site.other, "--db", site.path, "--reason", "found", "--json"
    )
    assert again.exit_code == 0
    assert json.loads(again.output)["already_revoked"] is True
    assert json.loads(again.output)["revoked_reason"] == "stolen"


def test_an_unknown_device_or_an_empty_reason_is_refused(site):
    unknown = invoke_cli("device", "revoke", "ghost", "--db", site.path, "--reason", "lost")
    assert unknown.exit_code == 1
    assert "no enrolled device 'ghost'" in unknown.output
    assert invoke_cli("device", "show", "ghost", "--db", site.path).exit_code == 1
    empty = invoke_cli("device", "revoke", site.other, "--db", site.path, "--reason", " ")
    assert empty.exit_code == 2
    assert "a revocation needs a reason" in empty.output


def test_a_revocation_record_the_log_does_not_hold_is_reported_not_repeated(site):
    assert (
        invoke_cli("device", "revoke", site.other, "--db", site.path, "--reason", "x").exit_code
        == 0
    )
    with Database(site.path) as db:
        db.conn.execute("DELETE FROM log_leaves WHERE kind = 'revocation'")
    again = invoke_cli("device", "revoke", site.other, "--db", site.path, "--reason", "x")
    assert again.exit_code == 1
    assert "revocation record that the log does not hold" in again.output
    assert "no enrolled device" not in again.output


def test_revoke_with_broker_also_denies_the_device_at_the_broker(gateway_site, site, tmp_path):
    broker = write_broker_config(gateway_site.pki, tmp_path / "broker", now=datetime.now(UTC))
    result = invoke_cli(
        "device", "revoke", site.other, "--db", site.path, "--reason", "stolen",
        "--broker", broker.directory, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["revoked_reason"], data["broker"]["new"]) == ("stolen", [site.other])
    assert f"user {site.other}\ntopic deny #" in broker.acl.read_text()
    text = invoke_cli("device", "show", site.other, "--db", site.path)
    assert "REVOKED" in text.output


def test_revoke_with_a_broker_dir_that_is_not_one_revokes_nothing(site, tmp_path):
    result = invoke_cli(
        "device", "revoke", site.other, "--db", site.path, "--reason", "stolen",
        "--broker", tmp_path / "not-a-broker",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "provgw broker-config --pki DIR -o DIR" in result.output
    with Database(site.path) as db:
        assert db.query("SELECT count(*) FROM device_revocations") == [(0,)]


@pytest.mark.broker
@pytest.mark.timeout(60)
def test_a_running_gateway_refuses_a_device_once_it_is_revoked(
    gateway_site, site_broker, serve_gateway
):
    gateway = serve_gateway(gateway_site, site_broker, workers=2)
    db_path = gateway.status["database"]
    stolen, other = gateway_site.devices[:2]
    fleet = Fleet(site_broker, gateway_site.pki, [stolen, other])
    sent = fleet.publish(rounds=2)
    wait_for(lambda: events(db_path) == sent, "the first events")
    revoked = provgw("device", "revoke", stolen, "--db", db_path, "--reason", "stolen from ward 4")
    assert revoked["revoked_reason"] == "stolen from ward 4"
    fleet.publish(rounds=2)
    wait_for(
        lambda: (
            query(db_path, "SELECT count(*) FROM quarantine WHERE reason = 'device-revoked'")
            == [(2,)]
        ),
        "the stolen device's next 2 messages refused",
    )
    wait_for(lambda: events(db_path) == sent + 2, "the other device's 2 stored")
    assert query(db_path, "SELECT count(*) FROM events WHERE device_id = ?", (stolen,)) == [(2,)]
    # The revocation is in the log beside the events, and the log verifies.
    verified = provgw(
        "log", "verify", "--db", db_path, "--key", gateway.status["ledger"]["log_vkey"]
    )
    assert (verified["ok"], verified["revocations"]) == (True, 1)
    assert gateway.stop()["status"] == "stopped"
