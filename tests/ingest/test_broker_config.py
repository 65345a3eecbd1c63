"""`write_broker_config` and `provgw broker-config`: what is written, and what PKI is refused."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from device_sim.pki import init_pki
from gateway.core.errors import (
    ExpiredError,
    MalformedError,
    SignatureError,
    UntrustedSignerError,
)
from gateway.ingest import broker_config as bc
from gateway.ingest.broker_config import (
    BrokerConfig,
    BrokerLimits,
    deny_devices,
    render_acl,
    write_broker_config,
)
from gateway.store.db import Database
from gateway.views.cli import _output
from gateway.views.cli._main import _register, cli
from tests._helpers import enrol_demo_devices, revoked_devices_db

NOW = dt.datetime.now(dt.UTC)


def _certs(path):
    return x509.load_pem_x509_certificates(path.read_bytes())


def _crl_issuers(path):
    text = path.read_bytes()
    marker = b"-----END X509 CRL-----\n"
    return [x509.load_pem_x509_crl(part + marker).issuer for part in text.split(marker)[:-1]]


@pytest.fixture(autouse=True)
def _commands_registered():
    _register()  # what `provgw` (main) does before parsing


@pytest.fixture
def pki(tmp_path, demo_pki):
    return demo_pki(tmp_path / "pki")


def test_conf_enforces_client_certificates_acl_and_persistence(pki, tmp_path):
    config = write_broker_config(pki, tmp_path / "out", now=NOW, port=18883)
    conf = config.conf.read_text().splitlines()
    for line in [
        "listener 18883 127.0.0.1",
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        "allow_anonymous false",
        f"acl_file {config.acl}",
        f"cafile {config.cafile}",
        f"crlfile {config.crlfile}",
        "persistence true",
        f"persistence_location {config.persistence_dir}/",
        "max_queued_messages 1000000",
        "persistent_client_expiration 14d",
    ]:
        assert line in conf
    assert config.persistence_dir.is_dir()


def test_acl_confines_devices_to_their_own_topics_and_manufacturers_to_theirs(pki, tmp_path):
    acl = write_broker_config(pki, tmp_path / "out", now=NOW).acl.read_text()
    assert "pattern write provgw/v1/+/dev/%u/evt/#" in acl
    assert "pattern read provgw/v1/+/dev/%u/cmd" in acl
    for user in ("gateway-admin", "gateway-routine", "gateway-urgent"):
        block = acl.split(f"user {user}\n")[1].split("\n\n")[0]
        assert block.splitlines() == [
            "topic read provgw/v1/+/dev/+/evt/#",
            "topic read provgw/v1/mfr/#",
            "topic write provgw/v1/+/dev/+/cmd",
        ]
    assert "user mfr-acme\ntopic write provgw/v1/mfr/acme/#\n" in acl
    assert "user mfr-globex\ntopic write provgw/v1/mfr/globex/#\n" in acl
    # Nothing else is granted: every topic line is one of the above.
    granted = [line for line in acl.splitlines() if line.startswith(("topic", "pattern"))]
    assert len(granted) == 2 + 3 * 3 + 2


def test_ca_bundle_holds_site_ca_and_every_manufacturer_root_and_issuing_ca(pki, tmp_path):
    config = write_broker_config(pki, tmp_path / "out", now=NOW)
    subjects = {c.subject.rfc4514_string() for c in _certs(config.cafile)}
    assert subjects == {
        "CN=Provenance Gateway site CA,O=Provenance Gateway site",
        "CN=acme root CA",
        "CN=acme issuing CA",
        "CN=globex root CA",
        "CN=globex issuing CA",
    }


def test_crl_bundle_holds_the_site_crl_and_every_manufacturer_crl(pki, tmp_path):
    config = write_broker_config(pki, tmp_path / "out", now=NOW)
    issuers = {n.rfc4514_string() for n in _crl_issuers(config.crlfile)}
    assert issuers == {
        "CN=Provenance Gateway site CA,O=Provenance Gateway site",
        "CN=acme root CA",
        "CN=acme issuing CA",
        "CN=globex root CA",
        "CN=globex issuing CA",
    }
    assert config.crl_next_update <= NOW + dt.timedelta(days=7)


def test_server_certificate_names_both_the_ip_and_localhost(pki, tmp_path):
    config = write_broker_config(pki, tmp_path / "out", now=NOW)
    (server,) = _certs(config.certfile)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    (site_ca,) = _certs(config.site_ca)
    server.verify_directly_issued_by(site_ca)


def test_client_certificates_carry_the_client_id_as_cn_and_keys_are_private(pki, tmp_path):
    config = write_broker_config(pki, tmp_path / "out", now=NOW, routine_workers=3)
    assert sorted(config.clients) == [
        "gateway-admin",
        "gateway-routine",
        "gateway-routine-2",
        "gateway-routine-3",
        "gateway-urgent",
        "mfr-acme",
        "mfr-globex",
    ]
    for cid, creds in config.clients.items():
        (cert,) = _certs(creds.certfile)
        assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == cid
        assert creds.keyfile.stat().st_mode & 0o077 == 0


def test_rerun_keeps_the_site_ca_devices_were_given(pki, tmp_path):
    first = write_broker_config(pki, tmp_path / "out", now=NOW)
    ca_before = first.site_ca.read_bytes()
    second = write_broker_config(pki, tmp_path / "out", now=NOW + dt.timedelta(days=1))
    assert second.site_ca.read_bytes() == ca_before


def test_written_config_loads_back(pki, tmp_path):
    limits = BrokerLimits(max_queued_messages=5000)
    written = write_broker_config(pki, tmp_path / "out", now=NOW, port=9999, limits=limits)
    assert BrokerConfig.load(tmp_path / "out") == written


def test_loading_a_directory_without_config_is_refused(tmp_path):
    with pytest.raises(MalformedError, match="broker-config"):
        BrokerConfig.load(tmp_path)


def test_manufacturer_with_revoked_issuing_ca_is_left_out_of_the_bundle(tmp_path, demo_pki):
    pki = demo_pki(tmp_path / "pki", revoke_issuing=frozenset({"globex"}))
    config = write_broker_config(pki, tmp_path / "out", now=NOW)
    subjects = {c.subject.rfc4514_string() for c in _certs(config.cafile)}
    assert not {"CN=globex issuing CA", "CN=globex root CA"} & subjects
    assert {"CN=acme issuing CA", "CN=acme root CA"} <= subjects
    assert config.revoked_issuers == ("globex",)


def test_expired_crl_is_refused(tmp_path, demo_pki):
    pki = demo_pki(tmp_path / "pki", crl_next_update=NOW - dt.timedelta(minutes=1))
    with pytest.raises(ExpiredError, match="expired") as err:
        write_broker_config(pki, tmp_path / "out", now=NOW)
    assert err.value.reason == "crl-expired"
    assert not (tmp_path / "out").exists()


def test_crl_signed_by_another_key_is_refused(pki, tmp_path):
    path = pki / "trust" / "acme.issuing.crl.pem"
    genuine = x509.load_pem_x509_crl(path.read_bytes())
    forged = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(genuine.issuer)
        .last_update(NOW - dt.timedelta(days=1))
        .next_update(NOW + dt.timedelta(days=1))
        .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    )
    path.write_bytes(forged.public_bytes(bc.serialization.Encoding.PEM))
    with pytest.raises(SignatureError):
        write_broker_config(pki, tmp_path / "out", now=NOW)


def test_issuing_ca_not_signed_by_the_trusted_root_is_refused(pki, tmp_path):
    # Swap globex's issuing CA in for acme's: well-formed, but not acme's root's child.
    issuing = pki / "manufacturers" / "globex" / "issuing.cert.pem"
    (pki / "manufacturers" / "acme" / "issuing.cert.pem").write_bytes(issuing.read_bytes())
    with pytest.raises(UntrustedSignerError):
        write_broker_config(pki, tmp_path / "out", now=NOW)


def test_pki_without_trust_directory_is_refused(tmp_path):
    with pytest.raises(MalformedError, match="pki init"):
        write_broker_config(tmp_path, tmp_path / "out", now=NOW)


def test_cli_writes_config_and_reports_json(pki, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli, ["broker-config", "--pki", str(pki), "-o", str(out), "--port", "8884", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["written"] is True
    assert data["port"] == 8884
    assert data["manufacturers"] == ["acme", "globex"]
    assert "listener 8884 127.0.0.1" in (out / "mosquitto.conf").read_text()


def test_cli_refuses_a_bad_pki_with_exit_1(tmp_path, demo_pki):
    pki = demo_pki(tmp_path / "pki", crl_next_update=NOW - dt.timedelta(minutes=1))
    result = CliRunner().invoke(
        cli, ["broker-config", "--pki", str(pki), "-o", str(tmp_path / "o")]
    )
    assert result.exit_code == 1
    assert "crl-expired" in result.output


def test_cli_text_output_says_when_to_regenerate(pki, tmp_path):
    result = CliRunner().invoke(
        cli, ["broker-config", "--pki", str(pki), "-o", str(tmp_path / "o")]
    )
    assert result.exit_code == 0, result.output
    assert "re-run and reload the broker before then" in result.output


def test_denied_devices_are_refused_everything_and_the_list_only_grows(pki, tmp_path):
    config = write_broker_config(pki, tmp_path / "out", now=NOW)
    assert config.denied_devices == ()
    first, new = deny_devices(config.directory, ["pump-2", "pump-1"])
    assert (first.denied_devices, new) == (("pump-1", "pump-2"), ("pump-1", "pump-2"))
    second, new = deny_devices(config.directory, ["pump-3", "pump-1"])
    assert (second.denied_devices, new) == (("pump-1", "pump-2", "pump-3"), ("pump-3",))
    acl = config.acl.read_text()
    for device in ("pump-1", "pump-2", "pump-3"):
        assert f"user {device}\ntopic deny #\n" in acl
    # Everything else is as broker-config wrote it, and broker.json says what the ACL holds.
    assert acl.startswith(
        render_acl(("gateway-admin", "gateway-routine", "gateway-urgent"), ("acme", "globex"))
    )
    assert BrokerConfig.load(config.directory) == second
    assert BrokerConfig.load(config.directory).clients == config.clients


def test_a_broker_json_from_before_denials_loads_with_none_denied(pki, tmp_path):
    config = write_broker_config(pki, tmp_path / "out", now=NOW)
    path = config.directory / "broker.json"
    data = json.loads(path.read_text())
    del data["denied_devices"]
    path.write_text(json.dumps(data))
    assert BrokerConfig.load(config.directory).denied_devices == ()


@pytest.mark.parametrize("device", ["pump 1", "pump-1\ntopic readwrite #", "#", ""])
def test_a_device_id_that_would_change_the_acl_rules_is_refused(device):
    with pytest.raises(MalformedError) as err:
        render_acl(("gateway-routine",), ("acme",), (device,))
    assert err.value.reason == "bad-device-id"


def test_cli_broker_acl_denies_the_revoked_devices_and_says_to_reload(pki, tmp_path):
    out = tmp_path / "out"
    write_broker_config(pki, out, now=NOW)
    db = revoked_devices_db(tmp_path / "gw.sqlite3", "pump-9")
    result = CliRunner().invoke(cli, ["broker-acl", "-o", str(out), "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["denied"], data["new"]) == (["pump-9"], ["pump-9"])
    assert "kill -HUP" in data["reload"]
    acl = (out / "acl").read_text()
    assert "user pump-9\ntopic deny #" in acl
    assert "user kept" not in acl
    again = CliRunner().invoke(cli, ["broker-acl", "-o", str(out), "--db", str(db)])
    assert again.exit_code == 0, again.output
    assert "1 revoked devices denied (0 new)" in again.output
    assert "no reload needed" in again.output
    # broker-config run again keeps the denial, and says so.
    rerun = CliRunner().invoke(cli, ["broker-config", "--pki", str(pki), "-o", str(out)])
    assert "denied     1 revoked devices" in rerun.output
    assert "user pump-9\ntopic deny #" in (out / "acl").read_text()


def test_cli_broker_acl_without_a_broker_config_says_what_to_run(tmp_path):
    db = revoked_devices_db(tmp_path / "gw.sqlite3", "pump-9")
    result = CliRunner().invoke(cli, ["broker-acl", "-o", str(tmp_path / "nope"), "--db", str(db)])
    assert result.exit_code == 1
    assert "provgw broker-config --pki DIR -o DIR" in result.output


def test_cli_broker_acl_with_a_trust_folder_that_does_not_load_changes_nothing(pki, tmp_path):
    out = tmp_path / "out"
    write_broker_config(pki, out, now=NOW)
    before = (out / "acl").read_text()
    db = revoked_devices_db(tmp_path / "gw.sqlite3", "pump-9")
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(
        cli, ["broker-acl", "-o", str(out), "--db", str(db), "--trust", str(tmp_path / "empty")]
    )
    assert result.exit_code == 1
    assert "empty" in result.output
    assert (out / "acl").read_text() == before  # not even the database's revocations


def test_cli_broker_acl_with_trust_reports_progress_on_stderr_only_in_text(tmp_path, monkeypatch):
    records = init_pki(tmp_path / "pki", devices_per_model=1)[:3]
    out = tmp_path / "out"
    write_broker_config(tmp_path / "pki", out, now=NOW)
    with Database(tmp_path / "gw.sqlite3") as db:
        enrol_demo_devices(db, tmp_path / "pki", [r.id for r in records], NOW)
    monkeypatch.setattr(_output, "PROGRESS_EVERY_S", 0.0)  # every device counts as long work
    args = ["broker-acl", "-o", str(out), "--db", str(tmp_path / "gw.sqlite3")]
    args += ["--trust", str(tmp_path / "pki" / "trust")]
    text = CliRunner().invoke(cli, args)
    assert text.exit_code == 0, text.output
    assert "checked 3 of 3 enrolled devices" in text.stderr
    assert "0 revoked devices denied (0 new)" in text.stdout
    quiet = CliRunner().invoke(cli, [*args, "--json"])
    assert quiet.stderr == ""
    assert json.loads(quiet.stdout)["revoked_by_crl"] == []


def test_public_api_is_pinned():
    assert set(bc.__all__) == {
        "GATEWAY_CLIENTS",
        "BrokerConfig",
        "BrokerLimits",
        "ClientCredentials",
        "deny_devices",
        "render_acl",
        "write_broker_config",
    }


def test_broker_acl_writes_absolute_paths_from_a_relative_directory(pki, tmp_path, monkeypatch):
    write_broker_config(pki, tmp_path / "out", now=NOW)
    monkeypatch.chdir(tmp_path)
    config, _ = deny_devices(tmp_path.joinpath("out").relative_to(tmp_path), ["pump-1"])
    data = json.loads((tmp_path / "out" / "broker.json").read_text())
    assert data["acl"] == str(tmp_path / "out" / "acl") == str(config.acl)


def test_a_rerun_over_an_unreadable_broker_json_refuses_rather_than_forget_denials(pki, tmp_path):
    config = write_broker_config(pki, tmp_path / "out", now=NOW)
    deny_devices(config.directory, ["pump-1"])
    (config.directory / "broker.json").write_text("{not json")
    with pytest.raises(MalformedError, match="provgw broker-acl"):
        write_broker_config(pki, config.directory, now=NOW)
    assert "user pump-1\ntopic deny #" in config.acl.read_text()  # nothing was written
