"""`LeanSubscriber` against a real Mosquitto, and its MQTT 5 packet codec on bytes."""

from __future__ import annotations

import itertools
import signal
import struct
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.core.errors import UnavailableError
from gateway.ingest import _mqtt5 as wire
from gateway.ingest.broker_config import ClientCredentials
from gateway.ingest.lean import LeanSubscriber
from gateway.ingest.topics import EVENT_FILTER, event_topic
from tests._helpers import Inbox, self_signed_credentials

ACME_1 = "09506000134352-A1001"
ACME_REVOKED = "09506000134352-R9"


def _subscriber(broker, creds) -> LeanSubscriber:
    """A subscriber with *creds* (which the test expects the broker or the client to refuse)."""
    return LeanSubscriber(
        creds,
        host=broker.host,
        port=broker.port,
        on_message=Inbox(),
        session_expiry=60,
        receive_maximum=10,
    )


def lean(broker, inbox, client_id="gateway-routine", **kwargs) -> LeanSubscriber:
    settings = {"session_expiry": 3600, "receive_maximum": 100} | kwargs
    return LeanSubscriber(
        broker.setup.client(client_id),
        host=broker.host,
        port=broker.port,
        on_message=inbox,
        **settings,
    )


def publish(broker, payloads, qos=1, kind="custody"):
    with broker.device(ACME_1) as dev:
        for payload in payloads:
            dev.publish(event_topic("icu", ACME_1, kind), payload, qos=qos)


# -- against Mosquitto ----------------------------------------------------------------------------


@pytest.mark.broker
@pytest.mark.timeout(30)
class TestAgainstMosquitto:
    def test_receives_qos0_and_qos1_byte_exact_with_tags_of_this_connection(self, mosquitto):
        inbox = Inbox()
        big = bytes(range(256)) * 240  # 60 KiB: a packet across several TLS records and reads
        with lean(mosquitto, inbox) as gw:
            gw.subscribe(EVENT_FILTER)
            with mosquitto.device(ACME_1) as dev:
                dev.publish(event_topic("icu", ACME_1, "custody"), b"\x00\xff signed", qos=1)
                dev.publish(event_topic("icu", ACME_1, "maintenance"), b"q0", qos=0)
                dev.publish(event_topic("icu", ACME_1, "firmware_update"), big, qos=1)
            got = {
                topic: (payload, tag, qos, props)
                for topic, payload, tag, qos, props in inbox.take(3)
            }
            custody = got[event_topic("icu", ACME_1, "custody")]
            assert custody[0] == b"\x00\xff signed"
            assert (custody[1] >> 16, custody[2], custody[3]) == (1, 1, {})  # first connection
            assert got[event_topic("icu", ACME_1, "maintenance")][:3] == (b"q0", 0, 0)
            assert got[event_topic("icu", ACME_1, "firmware_update")][0] == big
            # QoS 0 carries nothing to acknowledge; each QoS 1 delivery is acknowledged once.
            assert gw.ack_many([(0, 0)]) == 0
            assert gw.ack(custody[1], 1)
            assert not gw.ack(custody[1], 1)

    def test_properties_on_a_publish_are_skipped(self, mosquitto):
        inbox = Inbox()
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("origin", "sim"), ("k", "v" * 300)]
        props.MessageExpiryInterval = 3600
        props.ContentType = "application/cose"
        props.ResponseTopic = "provgw/v1/icu/dev/x/cmd"
        props.CorrelationData = b"\x01\x02"
        props.PayloadFormatIndicator = 0
        with lean(mosquitto, inbox) as gw:
            gw.subscribe(EVENT_FILTER)
            with mosquitto.device(ACME_1) as dev:
                info = dev._client.publish(
                    event_topic("icu", ACME_1, "custody"), b"payload", qos=1, properties=props
                )
                info.wait_for_publish(3)
            topic, payload, tag, qos, _ = inbox.take(1)[0]
            assert (topic, payload) == (event_topic("icu", ACME_1, "custody"), b"payload")
            assert gw.ack(tag, qos)
            assert gw.connected

    def test_unacknowledged_deliveries_all_come_back_after_reconnect_and_acked_ones_do_not(
        self, mosquitto
    ):
        inbox = Inbox()
        gw = lean(mosquitto, inbox)
        with gw:
            gw.subscribe(EVENT_FILTER)
            publish(mosquitto, [b"%d" % i for i in range(40)])
            got = inbox.take(40)
            assert gw.ack_many((tag, qos) for _, _, tag, qos, _ in got[:25]) == 25
        with gw:  # the same session: the 15 never acknowledged come back, in order, as DUPs
            assert gw.session_present
            again = inbox.take(15)
            assert [p for _, p, _, _, _ in again] == [b"%d" % i for i in range(25, 40)]
            assert {tag >> 16 for _, _, tag, _, _ in again} == {2}
            assert inbox.nothing_within(0.3)
            assert gw.ack_many((tag, qos) for _, _, tag, qos, _ in again) == 15
        with gw:
            assert inbox.nothing_within(0.3)

    def test_a_tag_from_an_earlier_connection_is_never_sent(self, mosquitto):
        inbox = Inbox()
        gw = lean(mosquitto, inbox)
        with gw:
            gw.subscribe(EVENT_FILTER)
            publish(mosquitto, [b"a"])
            (_, _, old, qos, _) = inbox.take(1)[0]
        with gw:
            (_, _, new, _, _) = inbox.take(1)[0]  # redelivered, most likely with the same id
            assert old & 0xFFFF == new & 0xFFFF
            assert gw.ack_many([(old, qos)]) == 0
            assert gw.ack_many([(new, qos)]) == 1
        with gw:
            assert inbox.nothing_within(0.3)

    def test_the_broker_sends_no_more_than_receive_maximum_before_the_first_ack(self, mosquitto):
        inbox = Inbox()
        with lean(mosquitto, inbox, receive_maximum=5) as gw:
            gw.subscribe(EVENT_FILTER)
            publish(mosquitto, [b"%d" % i for i in range(12)])
            first = inbox.take(5)
            assert inbox.nothing_within(0.5)
            assert gw.ack_many((tag, qos) for _, _, tag, qos, _ in first[:3]) == 3
            # Measured: after that, Mosquitto 2.0.11 sends everything it had queued (its
            # queued -> in-flight move does not take send quota), 9 unacknowledged here. So the
            # receiver's bound is its credit counter blocking the reader thread, not the broker.
            rest = inbox.take(7)
            assert [p for _, p, _, _, _ in first + rest] == [b"%d" % i for i in range(12)]
            assert gw.ack_many((tag, qos) for _, _, tag, qos, _ in first[3:] + rest) == 9

    def test_after_a_broker_restart_it_reconnects_resubscribes_and_gets_what_was_queued(
        self, mosquitto
    ):
        inbox = Inbox()
        with lean(mosquitto, inbox, session_expiry=0) as gw:
            # Session Expiry 0: the broker forgets the subscription with the connection, so
            # only a re-subscription after the reconnect can bring these messages.
            gw.subscribe(EVENT_FILTER)
            mosquitto.restart()
            deadline = time.monotonic() + 10
            while not gw.connected and time.monotonic() < deadline:
                time.sleep(0.05)
            assert gw.connected
            time.sleep(0.3)  # the re-subscription's SUBACK
            publish(mosquitto, [b"after-1", b"after-2"])
            got = inbox.take(2)
            assert [p for _, p, _, _, _ in got] == [b"after-1", b"after-2"]
            assert {tag >> 16 for _, _, tag, _, _ in got} == {2}  # the second connection's
            assert gw.ack_many((tag, qos) for _, _, tag, qos, _ in got) == 2

    def test_a_persistent_session_keeps_its_queue_across_a_broker_restart(self, mosquitto):
        inbox = Inbox()
        gw = lean(mosquitto, inbox)
        with gw:
            gw.subscribe(EVENT_FILTER)
        publish(mosquitto, [b"queued"])  # while the gateway is away
        mosquitto.restart()
        with gw:
            (_, payload, tag, qos, _) = inbox.take(1)[0]
            assert payload == b"queued"
            assert gw.ack(tag, qos)

    def test_a_connection_the_broker_ends_is_logged_and_made_again(self, mosquitto, caplog):
        inbox = Inbox()
        with lean(mosquitto, inbox) as gw:
            gw.subscribe(EVENT_FILTER, timeout=3)
            # Another connection with our client id takes the session over (§3.1.4); Mosquitto
            # 2.0.11 then closes ours without a DISCONNECT packet (measured).
            with mosquitto.client("gateway-routine"):
                pass
            deadline = time.monotonic() + 10
            while "lost its connection" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.05)
            assert "gateway-routine lost its connection (the broker closed" in caplog.text
            while not gw.connected and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)  # the re-subscription's SUBACK
            publish(mosquitto, [b"after takeover"])
            (_, payload, tag, _, _) = inbox.take(1)[0]
            assert payload == b"after takeover"
            assert tag >> 16 == 2  # the second connection

    def test_a_server_disconnect_packet_ends_the_connection_with_its_reason(self, broker_config):
        # Mosquitto 2.0.11 sends none (takeover, shutdown: it just closes), so on bytes.
        gw = LeanSubscriber(
            broker_config.client("gateway-routine"),
            host="127.0.0.1",
            port=1,
            on_message=Inbox(),
            session_expiry=60,
            receive_maximum=10,
        )
        with pytest.raises(Exception, match=r"Server shutting down \(0x8b\): bye") as err:
            gw._control(0xE0, b"\x8b\x06\x1f\x00\x03bye")
        assert type(err.value).__name__ == "_Lost"
        with pytest.raises(wire.ProtocolError, match="unexpected packet of type 4"):
            gw._control(0x40, b"\x00\x01")  # a PUBACK: we never publish

    def test_keepalive_pings_keep_an_idle_connection_up(self, mosquitto):
        inbox = Inbox()
        with lean(mosquitto, inbox, keepalive=1) as gw:
            gw.subscribe(EVENT_FILTER)
            time.sleep(3.2)  # over twice the broker's 1.5x keep-alive limit, nothing sent by us
            assert gw.connected
            publish(mosquitto, [b"still here"])
            (_, payload, tag, _, _) = inbox.take(1)[0]
            assert payload == b"still here"
            assert tag >> 16 == 1  # never reconnected
        assert "exceeded timeout" not in mosquitto.log()

    def test_a_broker_that_stops_answering_pings_is_given_up_and_reconnected(
        self, mosquitto, caplog
    ):
        inbox = Inbox()
        with lean(mosquitto, inbox, keepalive=1) as gw:
            gw.subscribe(EVENT_FILTER)
            mosquitto.proc.send_signal(signal.SIGSTOP)  # alive to TCP, silent to MQTT
            try:
                deadline = time.monotonic() + 5
                while gw.connected and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert not gw.connected
                assert "nothing from the broker for 1.5x the keep-alive (1 s)" in caplog.text
            finally:
                mosquitto.proc.send_signal(signal.SIGCONT)
            deadline = time.monotonic() + 10
            while not gw.connected and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)  # the re-subscription's SUBACK
            publish(mosquitto, [b"back"])
            (_, payload, tag, _, _) = inbox.take(1)[0]
            assert (payload, tag >> 16) == (b"back", 2)

    def test_a_handler_that_raises_leaves_the_message_for_redelivery(self, mosquitto):
        seen: list[bytes] = []

        def handler(*delivery) -> None:
            seen.append(delivery[1])
            raise RuntimeError("store unavailable")

        gw = lean(mosquitto, handler)
        with gw:
            gw.subscribe(EVENT_FILTER)
            publish(mosquitto, [b"x", b"y"])
            deadline = time.monotonic() + 5
            while len(seen) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert gw.connected
        inbox = Inbox()
        gw._on_message = inbox
        with gw:
            assert [p for _, p, _, _, _ in inbox.take(2)] == [b"x", b"y"]

    def test_a_client_certificate_the_broker_does_not_trust_is_refused(
        self, mosquitto, broker_config, tmp_path
    ):
        creds = self_signed_credentials("gateway-routine", broker_config.config.site_ca, tmp_path)
        gw = _subscriber(mosquitto, creds)
        with pytest.raises(
            UnavailableError, match="did not accept client 'gateway-routine'"
        ) as err:
            gw.connect(timeout=3)
        assert err.value.reason == "broker-refused"
        assert "not revoked" in str(err.value)
        assert not gw.connected

    def test_a_revoked_device_certificate_is_refused(self, mosquitto, broker_config):
        creds = broker_config.device(ACME_REVOKED)
        gw = _subscriber(mosquitto, creds)
        with pytest.raises(UnavailableError, match="did not accept") as err:
            gw.connect(timeout=3)
        assert err.value.reason == "broker-refused"

    def test_a_broker_certificate_from_another_ca_is_a_tls_config_error(
        self, mosquitto, broker_config
    ):
        real = broker_config.client("gateway-routine")
        wrong_ca = broker_config.pki / "trust" / "acme.root.pem"  # a CA, but not the site's
        creds = ClientCredentials(real.client_id, wrong_ca, real.certfile, real.keyfile)
        gw = _subscriber(mosquitto, creds)
        with pytest.raises(UnavailableError, match="does not vouch for") as err:
            gw.connect(timeout=3)
        assert err.value.reason == "tls-config"

    def test_no_broker_listening_is_broker_down_and_subscribe_needs_a_connection(
        self, broker_config, mosquitto
    ):
        port = mosquitto.port
        mosquitto.stop()
        gw = LeanSubscriber(
            broker_config.client("gateway-routine"),
            host="127.0.0.1",
            port=port,
            on_message=Inbox(),
            session_expiry=60,
            receive_maximum=10,
        )
        with pytest.raises(UnavailableError, match="Cannot reach") as err:
            gw.connect(timeout=2)
        assert err.value.reason == "broker-down"
        with pytest.raises(UnavailableError, match="not connected") as err:
            gw.subscribe(EVENT_FILTER)
        assert err.value.reason == "broker-down"

    def test_settings_outside_mqtt_limits_are_refused_on_construction(self, broker_config):
        creds = broker_config.client("gateway-routine")
        for bad in ({"receive_maximum": 0}, {"receive_maximum": 65536}, {"keepalive": 70000}):
            settings = {"session_expiry": 60, "receive_maximum": 10} | bad
            with pytest.raises(ValueError, match="must"):
                LeanSubscriber(creds, host="127.0.0.1", port=1, on_message=Inbox(), **settings)


# -- the codec on bytes ---------------------------------------------------------------------------


def publish_bytes(topic: bytes, payload: bytes, qos: int = 1, packet_id: int = 7, props=b""):
    body = struct.pack("!H", len(topic)) + topic
    if qos:
        body += struct.pack("!H", packet_id)
    body += wire.encode_varint(len(props)) + props + payload
    return bytes([0x30 | qos << 1]) + wire.encode_varint(len(body)) + body


def parse_all(data: bytes):
    got, control = [], []
    used = wire.parse_packets(data, lambda *a: got.append(a), lambda *a: control.append(a))
    return used, got, control


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 1),
        (127, 1),
        (128, 2),
        (16383, 2),
        (16384, 3),
        (2097151, 3),
        (2097152, 4),
        (268435455, 4),
    ],
)
def test_remaining_length_round_trips_at_every_byte_boundary(value, size):
    encoded = wire.encode_varint(value)
    assert len(encoded) == size
    assert wire.decode_varint(b"\x30" + encoded, 1) == (value, 1 + size)
    # One byte short: not an error, just wait for more.
    assert wire.decode_varint(b"\x30" + encoded[:-1], 1) is None


@pytest.mark.parametrize("value", [127, 128, 16383, 16384])
def test_a_publish_with_a_remaining_length_at_a_boundary_parses_whole_and_not_before(value):
    topic = b"provgw/v1/icu/dev/d/evt/custody"
    overhead = 2 + len(topic) + 2 + 1
    packet = publish_bytes(topic, b"p" * (value - overhead))
    assert wire.decode_varint(packet, 1)[0] == value
    assert parse_all(packet[:-1]) == (0, [], [])
    used, got, _ = parse_all(packet)
    assert used == len(packet)
    assert got == [(topic.decode(), b"p" * (value - overhead), 7, 1)]


def test_a_remaining_length_of_five_bytes_is_refused_not_waited_for():
    with pytest.raises(wire.ProtocolError) as err:
        parse_all(b"\x30\xff\xff\xff\xff\x01")
    assert err.value.code == wire.MALFORMED
    with pytest.raises(ValueError, match="Variable Byte Integer"):
        wire.encode_varint(268435456)


@given(
    messages=st.lists(
        st.tuples(
            st.text(
                st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                min_size=1,
                max_size=40,
            ),
            st.binary(max_size=300),
            st.sampled_from([0, 1]),
            st.integers(1, 0xFFFF),
        ),
        max_size=8,
    ),
    cuts=st.lists(st.integers(0, 4000), max_size=6),
)
def test_any_split_of_the_stream_yields_the_same_packets_in_order(messages, cuts):
    stream = b"".join(
        publish_bytes(t.encode(), p, qos, pid) for t, p, qos, pid in messages
    ) + wire.PINGREQ.replace(b"\xc0", b"\xd0")  # a PINGRESP at the end
    expected = [(t, p, pid if qos else 0, qos) for t, p, qos, pid in messages]
    bounds = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    got, control, data = [], [], b""
    for a, b in itertools.pairwise(bounds):
        data += stream[a:b]
        used = wire.parse_packets(data, lambda *x: got.append(x), lambda *x: control.append(x))
        data = data[used:]
    assert got == expected
    assert control == [(0xD0, b"")]
    assert data == b""


def test_publish_properties_are_skipped_and_a_topic_alias_is_refused():
    props = (
        b"\x01\x01"  # Payload Format Indicator
        b"\x02\x00\x00\x0e\x10"  # Message Expiry Interval
        b"\x03\x00\x04text"  # Content Type
        b"\x09\x00\x02\x01\x02"  # Correlation Data
        b"\x0b\x80\x01"  # Subscription Identifier 128
        b"\x26\x00\x01k\x00\x01v"  # User Property
    )
    used, got, _ = parse_all(publish_bytes(b"t", b"body", props=props))
    assert used > 0
    assert got == [("t", b"body", 7, 1)]
    with pytest.raises(wire.ProtocolError) as err:
        parse_all(publish_bytes(b"t", b"body", props=b"\x23\x00\x01"))
    assert err.value.code == wire.TOPIC_ALIAS_INVALID


@pytest.mark.parametrize(
    ("packet", "code"),
    [
        (
            publish_bytes(b"t", b"x", qos=1).replace(b"\x32", b"\x34", 1),
            wire.PROTOCOL_ERROR,
        ),  # QoS 2
        (publish_bytes(b"t", b"x", qos=1).replace(b"\x32", b"\x36", 1), wire.MALFORMED),  # QoS 3
        (publish_bytes(b"", b"x"), wire.PROTOCOL_ERROR),  # empty topic (needs an alias)
        (publish_bytes(b"t", b"x", packet_id=0), wire.MALFORMED),
        (publish_bytes(b"\xff\xfe", b"x"), wire.MALFORMED),  # not UTF-8
        (b"\x30\x05\x00\x09abc", wire.MALFORMED),  # topic longer than the packet
        (b"\x30\x02\x00\x00", wire.PROTOCOL_ERROR),  # too short to hold properties
        (publish_bytes(b"t", b"x", props=b"\x7f\x00"), wire.MALFORMED),  # unknown property
        (publish_bytes(b"t", b"x", props=b"\x26\x00\x09k"), wire.MALFORMED),  # runs past
    ],
    ids=["qos2", "qos3", "empty-topic", "packet-id-0", "utf8", "overrun", "short", "prop", "past"],
)
def test_a_malformed_or_forbidden_publish_is_a_protocol_error(packet, code):
    with pytest.raises(wire.ProtocolError) as err:
        parse_all(packet)
    assert err.value.code == code


def test_packets_out_are_what_mqtt5_prescribes():
    hello = wire.connect_packet("gw", keepalive=30, session_expiry=3600, receive_maximum=200)
    assert hello == (
        b"\x10\x17\x00\x04MQTT\x05\x00\x00\x1e"  # level 5, Clean Start 0, keep-alive 30
        b"\x08\x11\x00\x00\x0e\x10\x21\x00\xc8"  # Session Expiry 3600, Receive Maximum 200
        b"\x00\x02gw"
    )
    assert wire.subscribe_packet(1, "a/#", 1) == b"\x82\x09\x00\x01\x00\x00\x03a/#\x01"
    assert wire.puback_packets([1, 0x1234]) == b"\x40\x02\x00\x01\x40\x02\x12\x34"
    assert wire.disconnect_packet() == b"\xe0\x00"
    assert wire.disconnect_packet(0x82) == b"\xe0\x01\x82"


def test_acks_in_tell_session_keepalive_refusals_and_reasons():
    assert wire.parse_connack(b"\x01\x00\x03\x13\x00\x05") == wire.Connack(
        session_present=True, reason=0, server_keepalive=5, reason_string=None
    )
    refused = wire.parse_connack(b"\x00\x87\x07\x1f\x00\x04nope")
    assert refused == wire.Connack(
        session_present=False, reason=0x87, server_keepalive=None, reason_string="nope"
    )
    assert wire.parse_suback(b"\x00\x09\x00\x01\x87") == (9, [1, 0x87])
    assert wire.parse_disconnect(b"") == (0, None)
    assert wire.parse_disconnect(b"\x8e\x00") == (0x8E, None)
    assert wire.reason_text(0x8E) == "Session taken over (0x8e)"
    assert wire.next_packet(b"\x20\x03\x00\x00\x00rest") == (0x20, 2, 5)
    assert wire.next_packet(b"\x20\x03\x00") is None
