"""`MqttClient.ack_many`: a batch's PUBACKs in one write, with the same rules as `ack`."""

from __future__ import annotations

import pytest

from gateway.ingest.topics import EVENT_FILTER, event_topic
from tests._helpers import Inbox

pytestmark = [pytest.mark.broker, pytest.mark.timeout(30)]

ACME_1 = "09506000134352-A1001"


def _publish(mosquitto, payloads):
    with mosquitto.device(ACME_1) as dev:
        for payload in payloads:
            dev.publish(event_topic("icu", ACME_1, "custody"), payload)


def test_ack_many_acknowledges_every_delivery_so_none_is_redelivered(mosquitto):
    inbox = Inbox()
    gw = mosquitto.client("gateway-routine", on_message=inbox, receive_maximum=100)
    with gw:
        gw.subscribe(EVENT_FILTER)
        _publish(mosquitto, [b"%d" % i for i in range(50)])
        got = inbox.take(50)
        assert gw.ack_many((mid, qos) for _, _, mid, qos, _ in got[:30]) == 30
    again = Inbox()
    with mosquitto.client("gateway-routine", on_message=again) as gw2:
        assert gw2.session_present
        # Exactly the 20 never acknowledged come back, in order.
        redelivered = again.take(20)
        assert [p for _, p, _, _, _ in redelivered] == [b"%d" % i for i in range(30, 50)]
        assert again.nothing_within(0.3)
        assert gw2.ack_many((mid, qos) for _, _, mid, qos, _ in redelivered) == 20


def test_ack_many_skips_stale_repeated_and_qos0_tags(mosquitto):
    inbox = Inbox()
    gw = mosquitto.client("gateway-routine", on_message=inbox)
    with gw:
        gw.subscribe(EVENT_FILTER)
        _publish(mosquitto, [b"a"])
        (_, _, old, qos, _) = inbox.take(1)[0]
    with gw:  # a new connection: the old tag is stale, the message comes again
        (_, _, new, _, _) = inbox.take(1)[0]
        assert gw.ack_many([(old, qos), (new, 0)]) == 0
        assert gw.ack_many([(new, qos), (new, qos)]) == 1  # acknowledged once only
    with mosquitto.client("gateway-routine", on_message=inbox):
        assert inbox.nothing_within(0.3)
