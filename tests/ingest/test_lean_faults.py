"""`LeanSubscriber` against a scripted MQTT 5 broker that breaks the protocol on cue.

Mosquitto cannot be made to send a QoS 2 PUBLISH to a QoS 1 subscriber, a Topic Alias, a
malformed length, a DISCONNECT with a reason, a refusing or a missing CONNACK, or to withhold
PINGRESP while it still reads. This broker does each of them. It is a thread with an `ssl` server
socket on 127.0.0.1 holding the test PKI's broker certificate and demanding a client certificate
from the site CA bundle, so the client verifies it exactly as it verifies Mosquitto.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from gateway.core.errors import UnavailableError
from gateway.ingest import _mqtt5 as wire
from gateway.ingest import lean
from gateway.ingest.lean import LeanSubscriber
from gateway.ingest.topics import EVENT_FILTER, event_topic
from tests._helpers import Inbox

TOPIC = event_topic("icu", "09506000134352-A1001", "custody")
_CLIENT_PACKETS = {1: "CONNECT", 4: "PUBACK", 8: "SUBSCRIBE", 12: "PINGREQ", 14: "DISCONNECT"}
PINGRESP = b"\xd0\x00"


# -- packets the broker sends ---------------------------------------------------------------------


def packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + wire.encode_varint(len(body)) + body


def reason_string(text: str) -> bytes:
    raw = text.encode()
    return b"\x1f" + struct.pack("!H", len(raw)) + raw


def connack(*, session_present=False, reason=0, props=b"") -> bytes:
    return packet(0x20, bytes([session_present, reason]) + wire.encode_varint(len(props)) + props)


def publish(payload: bytes, *, packet_id=1, qos=1, dup=False, props=b"") -> bytes:
    body = struct.pack("!H", len(TOPIC)) + TOPIC.encode()
    if qos:
        body += struct.pack("!H", packet_id)
    body += wire.encode_varint(len(props)) + props + payload
    return packet(0x30 | dup << 3 | qos << 1, body)


def disconnect(reason: int, text: str) -> bytes:
    props = reason_string(text)
    return packet(0xE0, bytes([reason]) + wire.encode_varint(len(props)) + props)


# -- the scripted broker --------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """Something the broker saw on connection *conn*: a client packet, `accepted`, `closed`."""

    conn: int
    kind: str
    body: bytes
    at: float


class Peer:
    """One accepted TLS connection, as the script sees it (one thread: reads and writes)."""

    def __init__(self, broker: ScriptedBroker, sock: ssl.SSLSocket, index: int) -> None:
        self.broker = broker
        self.sock = sock
        self.index = index
        self._buffer = bytearray()

    def read(self) -> tuple[str, bytes] | None:
        """The client's next packet (noted), or None once it has closed the connection."""
        while (found := wire.next_packet(bytes(self._buffer))) is None:
            try:
                chunk = self.sock.recv(65536)
            except OSError:  # ssl.SSLError, a reset or our own timeout: the connection is over
                chunk = b""
            if not chunk:
                self.broker.note(self.index, "closed")
                return None
            self._buffer += chunk
        first, head, end = found
        kind = _CLIENT_PACKETS.get(first >> 4, f"type {first >> 4}")
        body = bytes(self._buffer[head:end])
        del self._buffer[:end]
        self.broker.note(self.index, kind, body)
        return kind, body

    def expect(self, kind: str) -> bytes:
        got = self.read()
        assert got is not None, f"connection {self.index} closed; expected {kind}"
        assert got[0] == kind, f"connection {self.index}: expected {kind}, got {got}"
        return got[1]

    def send(self, *packets: bytes) -> None:
        """All *packets* in one write (one TLS record): they reach the client in one read."""
        self.sock.sendall(b"".join(packets))

    def open_session(self, *, props=b"", session_present=False, then=b"", subscribe=True) -> None:
        """CONNECT -> CONNACK (+ *then* in the same record); SUBSCRIBE -> SUBACK granting QoS 1."""
        self.expect("CONNECT")
        self.send(connack(session_present=session_present, props=props), then)
        if subscribe:
            body = self.expect("SUBSCRIBE")
            self.send(packet(0x90, body[:2] + b"\x00\x01"))
            self.broker.note(self.index, "subscribed", body[2:])

    def drain(self, *, answer_pings=True) -> None:
        """Read (and note) until the client closes; answer PINGREQ unless told not to."""
        while (got := self.read()) is not None:
            if got[0] == "PINGREQ" and answer_pings:
                with contextlib.suppress(OSError):
                    self.send(PINGRESP)

    def close(self, *, close_notify=False) -> None:
        """End the connection: TCP FIN alone, or TLS close_notify first (RFC 8446 §6.1)."""
        if close_notify:
            self.sock.settimeout(0.5)  # unwrap waits for the client's close_notify: none comes
            with contextlib.suppress(OSError):
                self.sock.unwrap()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class ScriptedBroker:
    """Accepts TLS connections on 127.0.0.1 and runs *script(peer)* for each, then drains it."""

    def __init__(self, setup, script: Callable[[Peer], None]) -> None:
        config = setup.config
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._tls.load_cert_chain(str(config.certfile), str(config.keyfile))
        self._tls.load_verify_locations(str(config.cafile))
        self._tls.verify_mode = ssl.CERT_REQUIRED  # as Mosquitto's require_certificate
        self._script = script
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        self.seen: list[Seen] = []
        self.errors: list[BaseException] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._socks: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, name="scripted-broker")]
        self._threads[0].start()

    def note(self, conn: int, kind: str, body: bytes = b"") -> None:
        with self._cond:
            self.seen.append(Seen(conn, kind, body, time.monotonic()))
            self._cond.notify_all()

    def wait(self, conn: int, kind: str, count: int = 1, timeout: float = 5.0) -> list[Seen]:
        """The first *count* `kind` seen on connection *conn*, waiting for them."""

        def found() -> list[Seen]:
            return [s for s in self.seen if s.conn == conn and s.kind == kind][:count]

        with self._cond:
            self._cond.wait_for(lambda: len(found()) == count, timeout)
            got = found()
        assert len(got) == count, f"no {count}x {kind} on connection {conn}: {self.seen}"
        return got

    def kinds(self, conn: int) -> list[str]:
        with self._cond:
            return [s.kind for s in self.seen if s.conn == conn]

    def connections(self) -> int:
        with self._cond:
            return sum(s.kind == "accepted" for s in self.seen)

    def _accept(self) -> None:
        index = 0
        while not self._stop.is_set():
            try:
                raw, _ = self._listener.accept()
            except TimeoutError:
                continue
            raw.settimeout(10)
            self._socks.append(raw)
            thread = threading.Thread(target=self._serve, args=(raw, index), name=f"peer-{index}")
            self._threads.append(thread)
            thread.start()
            index += 1

    def _serve(self, raw: socket.socket, index: int) -> None:
        self.note(index, "accepted")
        try:
            sock = self._tls.wrap_socket(raw, server_side=True)
        except OSError as exc:
            self.note(index, "handshake failed", str(exc).encode())
            raw.close()
            return
        peer = Peer(self, sock, index)
        try:
            self._script(peer)
            peer.drain()
        except Exception as exc:  # noqa: BLE001 - reported by stop(), on the test's thread
            self.errors.append(exc)
        finally:
            peer.close()

    def stop(self) -> None:
        """Close everything, join every thread, and raise what a script thread raised."""
        self._stop.set()
        self._threads[0].join(5)
        self._listener.close()
        for sock in list(self._socks):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads[1:]:
            thread.join(5)
        if self.errors:
            raise self.errors[0]


@pytest.fixture
def scripted(broker_config):
    """`scripted(script)`: a started ScriptedBroker; stopped (script errors raised) after."""
    started: list[ScriptedBroker] = []

    def start(script: Callable[[Peer], None]) -> ScriptedBroker:
        broker = ScriptedBroker(broker_config, script)
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop()


@pytest.fixture(autouse=True)
def quick_reconnect(monkeypatch):
    """Reconnect after 50 ms, not 1 s: the backoff's shape is what is pinned, not its scale."""
    monkeypatch.setattr(lean, "_RECONNECT_MIN_S", 0.05)


def subscriber(broker_config, broker, on_message, **settings) -> LeanSubscriber:
    return LeanSubscriber(
        broker_config.client("gateway-routine"),
        host="127.0.0.1",
        port=broker.port,
        on_message=on_message,
        **({"session_expiry": 3600, "receive_maximum": 100} | settings),
    )


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


# -- protocol errors: DISCONNECT with the reason, then reconnect -------------------------------


def test_a_qos2_publish_is_a_protocol_error_and_what_came_before_is_redelivered_not_acked(
    scripted, broker_config, caplog
):
    def script(peer: Peer) -> None:
        if peer.index == 0:
            peer.open_session()
            peer.send(publish(b"before", packet_id=1), publish(b"qos2", packet_id=2, qos=2))
        else:  # the session's backlog right behind CONNACK: the unacknowledged one, as a DUP
            peer.open_session(session_present=True, then=publish(b"before", dup=True))

    broker = scripted(script)
    inbox = Inbox()
    with subscriber(broker_config, broker, inbox) as gw:
        gw.subscribe(EVENT_FILTER)
        topic, payload, old, qos, _ = inbox.get(timeout=5.0)
        assert (topic, payload, old >> 16, old & 0xFFFF, qos) == (TOPIC, b"before", 1, 1, 1)
        # §4.13 / §3.8.3.1: we subscribed at QoS 1, so QoS 2 is a Protocol Error (0x82).
        assert broker.wait(0, "DISCONNECT")[0].body == b"\x82"
        assert wait_until(lambda: "(protocol error: the broker sent a QoS 2 m" in caplog.text)
        _, again, new, _, _ = inbox.get(timeout=5.0)
        assert (again, new >> 16, new & 0xFFFF) == (b"before", 2, 1)  # same packet id
        assert inbox.nothing_within(0.1)  # the QoS 2 message was never handed on
        assert not gw.ack(old, 1)  # the old connection's tag names nothing now
        assert gw.ack(new, 1)
        assert broker.wait(1, "PUBACK")[0].body == b"\x00\x01"
        # Subscribed again after the reconnect, to the same filter at the same QoS.
        assert broker.wait(1, "subscribed")[0].body == broker.wait(0, "subscribed")[0].body
        assert "PUBACK" not in broker.kinds(0)
        assert gw.connected


@pytest.mark.parametrize(
    "case",
    [
        (publish(b"x", props=b"\x23\x00\x01"), b"\x94", "the broker sent a Topic Alias"),
        (b"\x30\xff\xff\xff\xff\x01", b"\x81", "a length field runs past four bytes"),
    ],
    ids=["topic-alias", "five-byte-length"],
)
def test_a_forbidden_or_malformed_packet_gets_disconnect_with_its_reason_then_a_reconnect(
    scripted, broker_config, caplog, case
):
    fault, code, why = case

    def script(peer: Peer) -> None:
        peer.open_session()
        if peer.index == 0:
            peer.send(fault)

    broker = scripted(script)
    inbox = Inbox()
    with subscriber(broker_config, broker, inbox) as gw:
        gw.subscribe(EVENT_FILTER)
        assert broker.wait(0, "DISCONNECT")[0].body == code
        broker.wait(1, "subscribed")
        assert f"lost its connection (protocol error: {why})" in caplog.text
        assert wait_until(lambda: gw.connected)
        assert inbox.nothing_within(0.05)


@pytest.mark.parametrize("close_notify", [False, True], ids=["tcp-fin", "tls-close-notify"])
def test_a_truncated_packet_then_the_end_is_a_lost_connection_and_a_reconnect(
    scripted, broker_config, caplog, close_notify
):
    def script(peer: Peer) -> None:
        peer.open_session()
        if peer.index == 0:
            peer.send(publish(b"x" * 100)[:40])
            time.sleep(0.05)  # the half packet arrives first, alone
            peer.close(close_notify=close_notify)

    broker = scripted(script)
    inbox = Inbox()
    with subscriber(broker_config, broker, inbox) as gw:
        gw.subscribe(EVENT_FILTER)
        broker.wait(1, "subscribed")
        ended = "the broker closed the TLS session" if close_notify else "the broker closed the "
        assert f"lost its connection ({ended}" in caplog.text
        assert "DISCONNECT" not in broker.kinds(0)  # nobody left to tell
        assert inbox.nothing_within(0.05)  # half a message is no message


def test_a_server_disconnect_with_a_reason_string_is_logged_with_it_and_reconnected(
    scripted, broker_config, caplog
):
    def script(peer: Peer) -> None:
        peer.open_session()
        if peer.index == 0:
            peer.send(disconnect(0x8B, "maintenance window"))
            peer.close()

    broker = scripted(script)
    with subscriber(broker_config, broker, Inbox()) as gw:
        gw.subscribe(EVENT_FILTER)
        broker.wait(1, "subscribed")
        assert (
            "lost its connection (the broker disconnected us: Server shutting down (0x8b): "
            "maintenance window)" in caplog.text
        )
        assert "DISCONNECT" not in broker.kinds(0)  # §3.14: no answer to a DISCONNECT
        assert wait_until(lambda: gw.connected)


def test_a_broker_that_breaks_every_connection_is_retried_ever_later_until_one_lasts(
    scripted, broker_config, monkeypatch
):
    # Without growth a broker (or a poison message) that breaks every connection at once is
    # reconnected to every _RECONNECT_MIN_S, for ever.
    monkeypatch.setattr(lean, "_STABLE_S", 0.3)

    def script(peer: Peer) -> None:
        peer.open_session()
        if peer.index == 4:
            time.sleep(0.5)  # this one lasts past _STABLE_S: the delay starts over
        if peer.index <= 4:
            peer.send(publish(b"q2", qos=2))

    broker = scripted(script)
    with subscriber(broker_config, broker, Inbox()) as gw:
        gw.subscribe(EVENT_FILTER)
        broker.wait(5, "subscribed", timeout=8)
        closed = [broker.wait(i, "closed")[0].at for i in range(5)]
        accepted = [broker.wait(i, "accepted")[0].at for i in range(1, 6)]
    gaps = [b - a for a, b in zip(closed, accepted, strict=True)]
    for i, gap in enumerate(gaps[:4]):  # 0.05, 0.1, 0.2, 0.4 s
        assert gap >= 0.9 * 0.05 * 2**i, gaps
    assert gaps[4] < 0.6, gaps  # 0.05 s again, not 0.8


# -- CONNACK: refusal, Server Keep Alive, silence ------------------------------------------------


def test_a_connack_with_a_failure_reason_is_broker_refused_naming_it(scripted, broker_config):
    def script(peer: Peer) -> None:
        peer.expect("CONNECT")
        peer.send(connack(reason=0x87, props=reason_string("not on the site's list")))

    broker = scripted(script)
    gw = subscriber(broker_config, broker, Inbox())
    with pytest.raises(UnavailableError) as err:
        gw.connect(timeout=3)
    assert err.value.reason == "broker-refused"
    assert "Not authorized (0x87): not on the site's list" in str(err.value)
    assert not gw.connected
    assert gw._threads == []
    broker.wait(0, "closed")
    time.sleep(0.1)
    assert broker.connections() == 1  # connect() failing is final: no retry behind the caller


def test_the_server_keep_alive_in_connack_sets_the_ping_interval(scripted, broker_config):
    def script(peer: Peer) -> None:
        peer.open_session(props=b"\x13\x00\x01")  # Server Keep Alive 1 s (§3.2.2.3.14)

    broker = scripted(script)
    with subscriber(broker_config, broker, Inbox(), keepalive=30) as gw:
        gw.subscribe(EVENT_FILTER)
        subscribed = broker.wait(0, "SUBSCRIBE")[0].at
        pings = [s.at for s in broker.wait(0, "PINGREQ", count=2, timeout=4)]
        assert gw.connected
    assert 0.9 <= pings[0] - subscribed <= 1.5
    assert 0.9 <= pings[1] - pings[0] <= 1.5
    assert broker.connections() == 1


def test_a_broker_that_never_sends_connack_is_broker_timeout_within_the_timeout(
    scripted, broker_config
):
    def script(peer: Peer) -> None:
        peer.expect("CONNECT")  # ...and nothing more: drained until the client gives up

    broker = scripted(script)
    gw = subscriber(broker_config, broker, Inbox())
    start = time.monotonic()
    with pytest.raises(UnavailableError, match=r"within 1 s") as err:
        gw.connect(timeout=1.0)
    assert time.monotonic() - start < 1.5
    assert err.value.reason == "broker-timeout"
    assert not gw.connected


def test_a_broker_that_trickles_its_connack_does_not_stretch_the_timeout(scripted, broker_config):
    def script(peer: Peer) -> None:
        peer.expect("CONNECT")
        slow = connack(props=reason_string("x" * 2000))
        for i in range(len(slow)):  # a TLS record a byte, 2 ms apart: 4 s in all
            try:
                peer.send(slow[i : i + 1])
            except OSError:
                return  # the client gave up
            time.sleep(0.002)

    broker = scripted(script)
    gw = subscriber(broker_config, broker, Inbox())
    start = time.monotonic()
    with pytest.raises(UnavailableError) as err:
        gw.connect(timeout=0.5)
    assert time.monotonic() - start < 1.0
    assert err.value.reason == "broker-timeout"


def test_no_pingresp_drops_the_connection_after_one_and_a_half_keepalives(
    scripted, broker_config, caplog
):
    def script(peer: Peer) -> None:
        peer.open_session()
        if peer.index == 0:
            peer.drain(answer_pings=False)  # reads on, answers nothing

    broker = scripted(script)
    with subscriber(broker_config, broker, Inbox(), keepalive=1) as gw:
        gw.subscribe(EVENT_FILTER)
        last_word = broker.wait(0, "subscribed")[0].at  # the SUBACK: the last byte it sends
        broker.wait(0, "PINGREQ")
        dropped = broker.wait(0, "closed", timeout=4)[0].at
        assert 1.4 <= dropped - last_word <= 2.2
        broker.wait(1, "subscribed")  # logged before it reconnects
        assert "(nothing from the broker for 1.5x the keep-alive (1 s))" in caplog.text


# -- disconnect() under back-pressure -------------------------------------------------------------


class Blocking:
    """A handler that blocks (the receiver's credit counter, full) until released."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []
        self.release = threading.Event()

    def __call__(self, *delivery) -> None:
        self.seen.append(delivery[1])  # (topic, payload, tag, qos, properties)
        self.release.wait(10)


def two_messages(peer: Peer) -> None:
    peer.open_session(subscribe=peer.index == 0)
    if peer.index == 0:
        peer.send(publish(b"first", packet_id=1), publish(b"second", packet_id=2))


def test_disconnect_while_the_handler_blocks_returns_at_once_and_hands_on_nothing_more(
    scripted, broker_config
):
    broker = scripted(two_messages)
    handler = Blocking()
    gw = subscriber(broker_config, broker, handler)
    gw.connect()
    try:
        gw.subscribe(EVENT_FILTER)
        assert wait_until(lambda: handler.seen == [b"first"])
        (reader,) = (t for t in gw._threads if t.name == "mqtt-reader")
        start = time.monotonic()
        gw.disconnect()
        assert time.monotonic() - start < 1.0
        assert broker.wait(0, "DISCONNECT")[0].body == b""  # Normal: the session stays
        assert not gw.connected
    finally:
        handler.release.set()
    reader.join(2)
    assert not reader.is_alive()
    assert handler.seen == [b"first"]  # "second" is the broker's to redeliver, not ours
    assert broker.connections() == 1


def test_a_reader_released_after_disconnect_never_reconnects_behind_a_new_connect(
    scripted, broker_config
):
    broker = scripted(two_messages)
    handler = Blocking()
    gw = subscriber(broker_config, broker, handler)
    gw.connect()
    try:
        gw.subscribe(EVENT_FILTER)
        assert wait_until(lambda: handler.seen == [b"first"])
        (old_reader,) = (t for t in gw._threads if t.name == "mqtt-reader")
        gw.disconnect()
        gw.connect()  # connection 1
        broker.wait(1, "CONNECT")
    finally:
        handler.release.set()
    try:
        old_reader.join(2)
        assert not old_reader.is_alive()
        time.sleep(0.2)  # a reconnect would come after _RECONNECT_MIN_S (0.05 s)
        assert broker.connections() == 2
        assert gw.connected
        assert "DISCONNECT" not in broker.kinds(1)
    finally:
        gw.disconnect()
    assert handler.seen == [b"first"]
