"""The ingest bench's lean publisher against a real Mosquitto: what it sends arrives, acked."""

from __future__ import annotations

import queue

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench._publisher import LeanPublisher, _read_varint, publish_prefix, varint
from gateway.ingest.topics import EVENT_FILTER, event_topic

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]

ACME_1 = "09506000134352-A1001"


@given(st.integers(min_value=0, max_value=268_435_455))
def test_varint_round_trips_every_mqtt_length(n):
    encoded = varint(n)
    assert len(encoded) <= 4
    assert _read_varint(b"\x30" + encoded, 1) == (n, 1 + len(encoded))


def test_truncated_varint_waits_for_more_bytes_and_a_fifth_byte_is_refused():
    assert _read_varint(b"\x30\x80", 1) is None
    with pytest.raises(ConnectionError, match="remaining length"):
        _read_varint(b"\x30\xff\xff\xff\xff\x01", 1)


def test_published_messages_arrive_byte_exact_and_every_one_is_acknowledged(mosquitto):
    inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
    gateway = mosquitto.client(
        "gateway-routine",
        on_message=lambda t, p, *_: inbox.put((t, p)),
        session_expiry=0,
        receive_maximum=1000,  # never acknowledged here: room for all of them
    )
    publisher = LeanPublisher(mosquitto.host, mosquitto.port)
    index = publisher.add(mosquitto.setup.device(ACME_1))
    topic = event_topic("icu", ACME_1, "custody")
    encoded, extra = publish_prefix(topic)
    # Sizes across the 1- to 3-byte remaining-length boundaries (127 / 16,383 bytes).
    payloads = [b"", b"x" * 120, b"y" * 200, b"z" * 20_000, *(b"%d" % i for i in range(300))]
    with gateway:
        gateway.subscribe(EVENT_FILTER)
        connected = publisher.connect_all(parallel=1)
        assert connected.failures == {}
        try:
            for payload in payloads:
                publisher.publish(index, encoded, extra, payload)
            while publisher.acked < len(payloads):
                publisher.poll(0.05)
        finally:
            publisher.close()
        got = [inbox.get(timeout=5) for _ in payloads]
    assert got == [(topic, p) for p in payloads]
    assert publisher.acked == len(payloads)


def test_a_device_whose_tls_handshake_fails_is_reported_not_raised(mosquitto):
    creds = mosquitto.setup.device(ACME_1)
    stranger = type(creds)(creds.client_id, creds.certfile, creds.certfile, creds.keyfile)
    publisher = LeanPublisher(mosquitto.host, mosquitto.port)
    publisher.add(stranger)  # its CA file is its own chain: the broker's certificate fails
    result = publisher.connect_all(parallel=1)
    assert list(result.failures) == [ACME_1]
    assert "SSL" in result.failures[ACME_1] or "certificate" in result.failures[ACME_1]
    publisher.close()
