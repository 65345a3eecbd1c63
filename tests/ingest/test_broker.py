"""The real Mosquitto, configured by `write_broker_config`, enforcing who may connect and write."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import socket
import ssl
import time

import pytest
from click.testing import CliRunner

from device_sim import pki
from gateway.core.errors import UnavailableError
from gateway.ingest import mqtt
from gateway.ingest.broker_config import ClientCredentials, deny_devices, write_broker_config
from gateway.ingest.mqtt import MqttClient
from gateway.ingest.topics import EVENT_FILTER, MANUFACTURER_FILTER, command_topic, event_topic
from gateway.store.db import Database
from gateway.views.cli._main import _register, cli
from tests._helpers import Inbox, enrol_demo_devices, logged, self_signed_credentials

pytestmark = [pytest.mark.broker, pytest.mark.timeout(30)]

ACME_1 = "09506000134352-A1001"  # Ed25519 device
ACME_2 = "09506000134352-A1002"
ACME_REVOKED = "09506000134352-R9"
GLOBEX_1 = "04012345000016-G7"  # P-256 device


def _tls_version(creds: ClientCredentials, broker) -> str | None:
    ctx = ssl.create_default_context(cafile=str(creds.cafile))
    ctx.load_cert_chain(str(creds.certfile), str(creds.keyfile))
    with (
        socket.create_connection((broker.host, broker.port), timeout=3) as raw,
        ctx.wrap_socket(raw, server_hostname=broker.host) as tls,
    ):
        return tls.version()


@pytest.mark.parametrize("device", [ACME_1, GLOBEX_1], ids=["ed25519", "p256"])
def test_device_certificate_connects_over_tls13(mosquitto, broker_config, device):
    assert _tls_version(broker_config.device(device), mosquitto) == "TLSv1.3"
    with mosquitto.device(device) as client:
        assert client.connected


def test_client_turns_nagle_off_so_small_bursts_are_not_held_back(mosquitto):
    with mosquitto.client("gateway-urgent") as gw:
        sock = gw._client.socket()
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


def test_device_event_reaches_the_gateway(mosquitto):
    inbox = Inbox()
    with mosquitto.client("gateway-routine", on_message=inbox) as gw:
        gw.subscribe(EVENT_FILTER, share_group="provgw")
        with mosquitto.device(ACME_1) as dev:
            dev.publish(event_topic("icu", ACME_1, "maintenance"), b"signed-bytes")
        topic, payload, mid, qos, _ = inbox.get()
        assert (topic, payload, qos) == (
            event_topic("icu", ACME_1, "maintenance"),
            b"signed-bytes",
            1,
        )
        assert gw.ack(mid, qos)


def test_device_cannot_publish_under_another_devices_topic(mosquitto):
    inbox = Inbox()
    with mosquitto.client("gateway-routine", on_message=inbox) as gw:
        gw.subscribe(EVENT_FILTER)
        with mosquitto.device(ACME_1) as dev:
            # MQTT 5: Mosquitto 2.0.11 answers an ACL-denied QoS 1 publish with PUBACK 0x87.
            with pytest.raises(UnavailableError, match="Not authorized") as err:
                dev.publish(event_topic("icu", ACME_2, "maintenance"), b"forged")
            assert err.value.reason == "broker-refused"
            dev.publish(event_topic("icu", ACME_1, "custody"), b"own")
        # Only the device's own event arrives, never the forged one.
        assert inbox.get()[0] == event_topic("icu", ACME_1, "custody")
        assert inbox.nothing_within(0.3)


def test_device_never_receives_another_devices_commands(mosquitto):
    inbox = Inbox()
    with (
        mosquitto.device(ACME_1, on_message=inbox) as dev,
        mosquitto.client("gateway-urgent") as gw,
    ):
        # Mosquitto 2.0.11 grants the SUBSCRIBE itself; the ACL's `read` is enforced on delivery.
        dev.subscribe(command_topic("icu", ACME_2))
        dev.subscribe("provgw/#")
        gw.publish(command_topic("icu", ACME_2), b"offer for A1002")
        gw.publish(command_topic("icu", ACME_1), b"offer for A1001")
        assert inbox.get()[:2] == (command_topic("icu", ACME_1), b"offer for A1001")
        assert inbox.nothing_within(0.3)


def test_gateway_command_reaches_only_its_device(mosquitto):
    inbox = Inbox()
    with (
        mosquitto.device(ACME_1, on_message=inbox) as dev,
        mosquitto.client("gateway-urgent") as gw,
    ):
        dev.subscribe(command_topic("icu", ACME_1))
        gw.publish(command_topic("icu", ACME_1), b"offer")
        topic, payload, mid, qos, _ = inbox.get()
        assert (topic, payload) == (command_topic("icu", ACME_1), b"offer")
        assert dev.ack(mid, qos)


def test_manufacturer_publishes_only_its_own_manifests(mosquitto):
    inbox = Inbox()
    with mosquitto.client("gateway-urgent", on_message=inbox) as gw:
        gw.subscribe(MANUFACTURER_FILTER)
        with mosquitto.client("mfr-acme") as mfr:
            mfr.publish("provgw/v1/mfr/acme/manifest", b"m")
            with pytest.raises(UnavailableError, match="Not authorized"):
                mfr.publish("provgw/v1/mfr/globex/recall", b"forged recall")
        assert inbox.get()[:2] == ("provgw/v1/mfr/acme/manifest", b"m")
        assert inbox.nothing_within(0.3)


def test_device_cannot_publish_as_a_manufacturer(mosquitto):
    with (
        mosquitto.device(ACME_1) as dev,
        pytest.raises(UnavailableError, match="Not authorized"),
    ):
        dev.publish("provgw/v1/mfr/acme/manifest", b"forged")


def _connect_raw(broker, ctx) -> None:
    """TLS handshake and one read: TLS 1.3 servers reject client certificates after Finished."""
    with (
        socket.create_connection((broker.host, broker.port), timeout=3) as raw,
        ctx.wrap_socket(raw, server_hostname=broker.host) as tls,
    ):
        tls.sendall(b"\x10\x00")  # a (malformed) CONNECT: any read now shows the alert
        tls.recv(1)


def test_client_without_certificate_cannot_connect(mosquitto, broker_config):
    ctx = ssl.create_default_context(cafile=str(broker_config.config.site_ca))
    with pytest.raises(OSError):  # noqa: PT011 - EOF or alert, depending on timing
        _connect_raw(mosquitto, ctx)
    assert logged(mosquitto.log, "peer did not return a certificate"), mosquitto.log()


def test_client_with_untrusted_certificate_cannot_connect(mosquitto, broker_config, tmp_path):
    # Same CN as a real gateway client, but self-signed: a CA the broker was never told about.
    creds = self_signed_credentials("gateway-routine", broker_config.config.site_ca, tmp_path)
    client = MqttClient(creds, host=mosquitto.host, port=mosquitto.port)
    with pytest.raises(UnavailableError, match="did not accept") as err:
        client.connect(timeout=3)
    assert err.value.reason == "broker-refused"
    assert logged(mosquitto.log, "certificate verify failed"), mosquitto.log()


def test_revoked_device_cannot_connect(mosquitto):
    # Its certificate is on the acme issuing CA's CRL, which sits in the concatenated crlfile.
    with pytest.raises(UnavailableError, match="did not accept") as err:
        mosquitto.device(ACME_REVOKED).connect(timeout=3)
    assert err.value.reason == "broker-refused"
    assert logged(mosquitto.log, "certificate verify failed"), mosquitto.log()
    # Same manufacturer, same issuing CA, not on the CRL: admitted. So the CRL is what refused.
    with mosquitto.device(ACME_1) as dev:
        assert dev.connected


def test_device_cannot_take_over_the_gateways_session_by_client_id(mosquitto, broker_config):
    # use_username_as_clientid: the broker replaces the id a client asks for by its certificate CN,
    # so a device asking for "gateway-urgent" does not disconnect the real one.
    creds = broker_config.device(ACME_1)
    impostor = ClientCredentials("gateway-urgent", creds.cafile, creds.certfile, creds.keyfile)
    inbox = Inbox()
    with mosquitto.client("gateway-urgent", on_message=inbox) as gw:
        gw.subscribe(MANUFACTURER_FILTER)
        with MqttClient(impostor, host=mosquitto.host, port=mosquitto.port):
            time.sleep(0.2)
            assert gw.connected
        with mosquitto.client("mfr-globex") as mfr:
            mfr.publish("provgw/v1/mfr/globex/recall", b"r")
        assert inbox.get()[:2] == ("provgw/v1/mfr/globex/recall", b"r")


def test_unacked_message_is_redelivered_after_reconnect(mosquitto):
    topic = event_topic("icu", ACME_1, "maintenance")
    first = Inbox()
    gw = mosquitto.client("gateway-routine", on_message=first)
    with gw:
        gw.subscribe(EVENT_FILTER, share_group="provgw")
        with mosquitto.device(ACME_1) as dev:
            dev.publish(topic, b"e1")
            dev.publish(topic, b"e2")
        (_, p1, mid1, qos1, _), (_, p2, _, _, _) = first.get(), first.get()
        assert (p1, p2) == (b"e1", b"e2")
        assert gw.ack(mid1, qos1)  # e1 committed; e2 not (say the process died before commit)
    again = Inbox()
    with mosquitto.client("gateway-routine", on_message=again) as gw2:
        assert gw2.session_present
        _, payload, mid, qos, _ = again.get()
        assert payload == b"e2"
        assert again.nothing_within(0.3)
        assert gw2.ack(mid, qos)


def test_ack_from_an_earlier_connection_is_ignored(mosquitto):
    inbox = Inbox()
    gw = mosquitto.client("gateway-routine", on_message=inbox)
    with gw:
        gw.subscribe(EVENT_FILTER)
        with mosquitto.device(ACME_1) as dev:
            dev.publish(event_topic("icu", ACME_1, "custody"), b"e")
        _, _, mid, qos, _ = inbox.get()
    with gw:
        _, _, mid_again, _, _ = inbox.get()  # redelivered: never acknowledged
        assert mid_again != mid
        assert not gw.ack(mid, qos)  # stale tag: must not acknowledge whatever reuses the id
        assert gw.ack(mid_again, qos)
        assert not gw.ack(mid_again, qos)  # and only once


def test_message_published_while_gateway_offline_is_delivered_on_reconnect(mosquitto):
    with mosquitto.client("gateway-routine") as gw:
        gw.subscribe(EVENT_FILTER, share_group="provgw")
    with mosquitto.device(GLOBEX_1) as dev:
        dev.publish(event_topic("or", GLOBEX_1, "firmware_update"), b"while away")
    inbox = Inbox()
    with mosquitto.client("gateway-routine", on_message=inbox):
        assert inbox.get()[:2] == (event_topic("or", GLOBEX_1, "firmware_update"), b"while away")


def test_queued_messages_survive_a_broker_restart(mosquitto):
    with mosquitto.client("gateway-routine") as gw:
        gw.subscribe(EVENT_FILTER, share_group="provgw")
    with mosquitto.device(ACME_2) as dev:
        for i in range(5):
            dev.publish(event_topic("icu", ACME_2, "maintenance"), b"%d" % i)
    mosquitto.restart()  # SIGTERM: Mosquitto writes its persistence file
    inbox = Inbox()
    with mosquitto.client("gateway-routine", on_message=inbox) as gw:
        assert gw.session_present
        got = [inbox.get() for _ in range(5)]
        assert [m[1] for m in got] == [b"0", b"1", b"2", b"3", b"4"]
        for _, _, mid, qos, _ in got:
            assert gw.ack(mid, qos)


def test_receive_maximum_bounds_unacknowledged_deliveries(mosquitto):
    inbox = Inbox()
    with mosquitto.client("gateway-routine", on_message=inbox, receive_maximum=3) as gw:
        gw.subscribe(EVENT_FILTER)
        with mosquitto.device(ACME_1) as dev:
            for i in range(10):
                dev.publish(event_topic("icu", ACME_1, "maintenance"), b"%d" % i)
        held = [inbox.get() for _ in range(3)]
        assert inbox.nothing_within(0.3)  # the other 7 wait in the broker, not in our memory
        for _, _, mid, qos, _ in held:
            gw.ack(mid, qos)
        assert len([inbox.get() for _ in range(3)]) == 3


def test_shared_subscription_splits_events_between_workers(mosquitto):
    a, b = Inbox(), Inbox()
    with (
        mosquitto.client("gateway-routine", on_message=a) as w1,
        mosquitto.client("gateway-routine-2", on_message=b) as w2,
    ):
        w1.subscribe(EVENT_FILTER, share_group="provgw")
        w2.subscribe(EVENT_FILTER, share_group="provgw")
        with mosquitto.device(ACME_1) as dev:
            for i in range(10):
                dev.publish(event_topic("icu", ACME_1, "maintenance"), b"%d" % i)
        deadline = time.monotonic() + 3
        while a.q.qsize() + b.q.qsize() < 10 and time.monotonic() < deadline:
            time.sleep(0.02)
        got_a = [a.get()[1] for _ in range(a.q.qsize())]
        got_b = [b.get()[1] for _ in range(b.q.qsize())]
    assert got_a
    assert got_b
    assert sorted(got_a + got_b) == sorted(b"%d" % i for i in range(10))


def test_a_goodbye_is_quiet_and_a_lost_connection_is_a_warning(mosquitto, caplog):
    caplog.set_level("INFO", logger=mqtt.__name__)
    with mosquitto.client("gateway-admin"):
        pass  # what every `provgw serve` start does to probe the broker
    assert [r for r in caplog.records if r.levelno >= 20] == []
    with mosquitto.client("gateway-urgent") as gw:
        mosquitto.restart()
        deadline = time.monotonic() + 10
        while not (caplog.records and gw.connected) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gw.connected  # paho came back by itself
    (lost,) = [r for r in caplog.records if r.levelno >= 20]
    assert lost.levelname == "WARNING"
    assert lost.getMessage().startswith("MQTT client gateway-urgent lost its connection (")
    assert lost.getMessage().endswith("); reconnecting")


def test_publish_to_a_stopped_broker_raises_unavailable(mosquitto):
    with mosquitto.client("gateway-urgent") as gw:
        mosquitto.stop()
        with pytest.raises(UnavailableError) as err:
            gw.publish(command_topic("icu", ACME_1), b"offer", timeout=1)
        assert err.value.reason in {"broker-down", "broker-timeout"}


def test_connect_to_a_closed_port_raises_unavailable(broker_config):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = MqttClient(broker_config.client("gateway-routine"), host="127.0.0.1", port=port)
    with pytest.raises(UnavailableError, match="Cannot reach") as err:
        client.connect(timeout=1)
    assert err.value.reason == "broker-down"


def test_devices_of_the_demo_pki_generator_connect_and_untrusted_ones_do_not(
    tmp_path, start_mosquitto
):
    records = pki.init_pki(tmp_path / "pki", devices_per_model=1)
    config = write_broker_config(tmp_path / "pki", tmp_path / "broker", now=dt.datetime.now(dt.UTC))
    broker = start_mosquitto(tmp_path / "pki", config)
    inbox = Inbox()
    with broker.client("gateway-routine", on_message=inbox) as gw:
        gw.subscribe(EVENT_FILTER)
        for alg in ("Ed25519", "P-256"):
            record = next(r for r in records if r.alg == alg)
            with broker.device(record.id) as dev:
                dev.publish(event_topic(record.site, record.id, "maintenance"), alg.encode())
            assert inbox.get()[:2] == (
                event_topic(record.site, record.id, "maintenance"),
                alg.encode(),
            )
    untrusted = pki.load_devices(tmp_path / "pki" / "untrusted")[0]
    ddir = tmp_path / "pki" / "untrusted" / "devices" / untrusted.id
    creds = ClientCredentials(untrusted.id, config.site_ca, ddir / "chain.pem", ddir / "key.pem")
    with pytest.raises(UnavailableError, match="did not accept"):
        MqttClient(creds, host=broker.host, port=broker.port).connect(timeout=3)


def test_devices_under_a_revoked_issuing_ca_cannot_connect(tmp_path, demo_pki, start_mosquitto):
    # Mosquitto checks only the leaf's CRL, and the device sends its issuing CA itself: only
    # leaving the manufacturer out of the CA bundle keeps these devices out.
    pki_dir = demo_pki(tmp_path / "pki", revoke_issuing=frozenset({"globex"}))
    config = write_broker_config(pki_dir, tmp_path / "broker", now=dt.datetime.now(dt.UTC))
    broker = start_mosquitto(pki_dir, config)
    with pytest.raises(UnavailableError, match="did not accept"):
        broker.device(GLOBEX_1).connect(timeout=3)
    with broker.device(ACME_1) as dev:
        assert dev.connected


def test_failing_handler_leaves_its_message_unacked_and_delivery_goes_on(mosquitto, caplog):
    seen = Inbox()

    def handler(topic, payload, mid, qos, properties):
        seen(topic, payload, mid, qos, properties)
        if payload == b"poison":
            raise RuntimeError("handler bug")

    with mosquitto.client("gateway-routine", on_message=handler) as gw:
        gw.subscribe(EVENT_FILTER)
        with mosquitto.device(ACME_1) as dev:
            dev.publish(event_topic("icu", ACME_1, "custody"), b"poison")
            dev.publish(event_topic("icu", ACME_1, "custody"), b"next")
        assert [seen.get()[1] for _ in range(2)] == [b"poison", b"next"]
    assert "left unacknowledged" in caplog.text
    again = Inbox()
    with mosquitto.client("gateway-routine", on_message=again):
        assert again.get()[1] == b"poison"  # redelivered; "next" was never acked either
        assert again.get()[1] == b"next"


def test_mqtt_public_api_is_pinned():
    assert mqtt.__all__ == ["MessageHandler", "MqttClient", "client_tls_context"]


def test_a_device_the_gateway_revoked_is_refused_by_the_broker_after_a_reload(
    tmp_path, broker_config, start_mosquitto
):
    # Its certificate is still good, so only the ACL can refuse it: `topic deny #` for its
    # username beats the device pattern, on the connection already open, once Mosquitto reloads.
    config = write_broker_config(
        broker_config.pki, tmp_path / "broker", now=dt.datetime.now(dt.UTC)
    )
    broker = start_mosquitto(broker_config.pki, config)
    inbox = Inbox()
    with (
        broker.client("gateway-routine", on_message=inbox) as gw,
        broker.device(ACME_1) as stolen,
        broker.device(ACME_2) as other,
    ):
        gw.subscribe(EVENT_FILTER)
        stolen.publish(event_topic("icu", ACME_1, "custody"), b"before")
        assert inbox.get()[:2] == (event_topic("icu", ACME_1, "custody"), b"before")
        _, new = deny_devices(config.directory, [ACME_1])
        assert new == (ACME_1,)
        broker.reload()
        refused = _publish_until_refused(stolen, event_topic("icu", ACME_1, "custody"), inbox)
        assert "Not authorized" in refused
        other.publish(event_topic("icu", ACME_2, "custody"), b"other")
        assert inbox.get()[:2] == (event_topic("icu", ACME_2, "custody"), b"other")
        assert inbox.nothing_within(0.3)
    # A reconnect does not help it either, and a later broker-config keeps it denied.
    with broker.device(ACME_1) as again, pytest.raises(UnavailableError, match="Not authorized"):
        again.publish(event_topic("icu", ACME_1, "custody"), b"reconnected")
    rerun = write_broker_config(broker_config.pki, config.directory, now=dt.datetime.now(dt.UTC))
    assert rerun.denied_devices == (ACME_1,)
    assert f"user {ACME_1}\ntopic deny #" in rerun.acl.read_text()


def _publish_until_refused(device: MqttClient, topic: str, inbox: Inbox) -> str:
    """Publish on *device*'s open connection until the broker refuses it; return the refusal.

    Each publish still taken must reach *inbox*. A reload is asynchronous (Mosquitto applies it
    at its next loop), so this tries for 5 s.
    """
    deadline = time.monotonic() + 5
    while True:
        try:
            device.publish(topic, b"after")
        except UnavailableError as err:
            return str(err)
        assert time.monotonic() < deadline, "the broker still takes the revoked device"
        assert inbox.get()[1] == b"after"
        time.sleep(0.05)


def _refused_within(broker, device_id: str, seconds: float) -> UnavailableError | None:
    """The error a new connection of *device_id* meets, tried until *seconds* have passed."""
    deadline = time.monotonic() + seconds
    while True:  # a reload is asynchronous: Mosquitto applies it at its next loop
        try:
            with broker.device(device_id):
                pass
        except UnavailableError as err:
            return err
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.1)


def _demo_site(tmp_path, start_mosquitto):
    """A `provgw-sim pki init` PKI in *tmp_path*, its broker configuration, a running broker."""
    records = pki.init_pki(tmp_path / "pki", devices_per_model=2)
    now = dt.datetime.now(dt.UTC)
    config = write_broker_config(tmp_path / "pki", tmp_path / "broker", now=now)
    return records, now, config, start_mosquitto(tmp_path / "pki", config)


def test_a_crl_or_ca_bundle_rewritten_by_broker_config_takes_effect_at_a_reload(
    tmp_path, start_mosquitto
):
    # Mosquitto 2 builds its listener's TLS context again on SIGHUP, CRL file and CA bundle
    # included: a manufacturer's new CRL (or a renewed one, before nextUpdate) needs a re-run of
    # broker-config and a reload, not a restart. A connection already open keeps its handshake.
    records, now, config, broker = _demo_site(tmp_path, start_mosquitto)
    stolen, kept = [r for r in records if r.manufacturer_slug == records[0].manufacturer_slug][:2]
    other = next(r for r in records if r.manufacturer_slug != stolen.manufacturer_slug)
    pki.revoke_device(tmp_path / "pki", stolen.id)
    pki.revoke_issuing_ca(tmp_path / "pki", other.manufacturer_slug)
    rerun = write_broker_config(tmp_path / "pki", config.directory, now=now)
    assert rerun.revoked_issuers == (other.manufacturer_slug,)
    # Written, not yet read: the running broker still admits both.
    assert _refused_within(broker, stolen.id, 0) is None
    assert _refused_within(broker, other.id, 0) is None
    inbox = Inbox()
    with (
        broker.client("gateway-routine", on_message=inbox) as gw,
        broker.device(stolen.id) as still_open,
    ):
        gw.subscribe(EVENT_FILTER)
        broker.reload()
        # Waited for on the other maker's device: a handshake of the stolen one that began
        # before the reload applied would take over still_open's session (same client id).
        untrusted = _refused_within(broker, other.id, 5)
        assert untrusted is not None, "a reload did not put the new CA bundle in force"
        assert untrusted.reason == "broker-refused"
        revoked = _refused_within(broker, stolen.id, 0)
        assert revoked is not None, "a reload did not put the new CRL in force"
        assert revoked.reason == "broker-refused"
        assert _refused_within(broker, kept.id, 0) is None  # the CRL, not the reload, refused
        # The revoked device's open connection goes on: `provgw broker-acl --trust` denies it
        # (test_broker_acl_with_the_trust_folder_cuts_a_crl_revoked_devices_open_connection).
        topic = event_topic(stolen.site, stolen.id, "custody")
        still_open.publish(topic, b"open")
        assert inbox.get()[:2] == (topic, b"open")


def test_broker_acl_with_the_trust_folder_cuts_a_crl_revoked_devices_open_connection(
    tmp_path, start_mosquitto
):
    # The manufacturer revoked the device's certificate: a re-run of broker-config refuses its
    # new connections (above), and `provgw broker-acl --trust` the one it holds open, from the
    # certificates the gateway enrolled, without a `provgw device revoke` of its own.
    records, now, config, broker = _demo_site(tmp_path, start_mosquitto)
    stolen, kept = [r for r in records if r.manufacturer_slug == records[0].manufacturer_slug][:2]
    db_path = tmp_path / "gateway.sqlite3"
    with Database(db_path) as db:
        enrol_demo_devices(db, tmp_path / "pki", [stolen.id, kept.id], now)
    inbox = Inbox()
    with (
        broker.client("gateway-routine", on_message=inbox) as gw,
        broker.device(stolen.id) as still_open,
        broker.device(kept.id) as other,
    ):
        gw.subscribe(EVENT_FILTER)
        pki.revoke_device(tmp_path / "pki", stolen.id)
        _register()
        acl = CliRunner().invoke(
            cli,
            ["broker-acl", "-o", str(config.directory), "--db", str(db_path),
             "--trust", str(tmp_path / "pki" / "trust"), "--json"],
        )  # fmt: skip
        assert acl.exit_code == 0, acl.output
        data = json.loads(acl.output)
        assert data["new"] == [stolen.id]
        assert [d["device"] for d in data["revoked_by_crl"]] == [stolen.id]
        assert "revoked" in data["revoked_by_crl"][0]["detail"]
        broker.reload()
        topic = event_topic(stolen.site, stolen.id, "custody")
        assert "Not authorized" in _publish_until_refused(still_open, topic, inbox)
        other_topic = event_topic(kept.site, kept.id, "custody")
        other.publish(other_topic, b"other")
        assert inbox.get()[:2] == (other_topic, b"other")


def test_a_worker_identity_added_by_broker_config_can_subscribe_after_a_reload(
    tmp_path, broker_config, start_mosquitto
):
    # `[ingest] workers` raised: broker-config writes the new client's certificate (from the
    # site CA the broker already trusts) and its ACL lines; a reload is enough to admit it.
    now = dt.datetime.now(dt.UTC)
    config = write_broker_config(broker_config.pki, tmp_path / "broker", now=now)
    broker = start_mosquitto(broker_config.pki, config)
    assert "gateway-routine-2" not in config.clients
    more = write_broker_config(broker_config.pki, config.directory, now=now, routine_workers=2)
    broker.setup = dataclasses.replace(broker.setup, config=more)  # its new client's files
    topic = event_topic("icu", ACME_1, "custody")
    inbox = Inbox()
    with (
        broker.device(ACME_1) as dev,
        broker.client("gateway-routine-2", on_message=inbox) as worker,
    ):
        worker.subscribe(EVENT_FILTER)
        # Written, not yet read: the running broker's ACL grants the new identity nothing.
        dev.publish(topic, b"before")
        assert inbox.nothing_within(0.5)
        broker.reload()
        deadline = time.monotonic() + 5
        while not inbox.messages:  # the reload is asynchronous: applied at the next loop
            assert time.monotonic() < deadline, "the new worker identity still gets nothing"
            dev.publish(topic, b"after")
            time.sleep(0.1)
    assert inbox.get()[:2] == (topic, b"after")
