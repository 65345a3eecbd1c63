"""The few MQTT 5.0 packets :class:`~gateway.ingest.lean.LeanSubscriber` speaks, as bytes.

Pure: bytes in, packets out, no sockets and no clock, so every edge case is a unit test on bytes.
Only what a QoS 1 subscriber needs (OASIS MQTT 5.0): CONNECT, SUBSCRIBE, PUBACK, PINGREQ and
DISCONNECT out; CONNACK, PUBLISH, SUBACK, PINGRESP and DISCONNECT in. Anything else the broker
sends is a :class:`ProtocolError` (the client disconnects, §4.13).

:func:`parse_packets` is the receive hot path: it walks a buffer of decrypted bytes and hands
each complete PUBLISH to a callback without building any object for it, and stops at the first
incomplete packet (the caller keeps the tail and calls again when more bytes arrive).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import NamedTuple

__all__ = [
    "CONNACK",
    "DISCONNECT",
    "MALFORMED",
    "PINGREQ",
    "PINGRESP",
    "PROTOCOL_ERROR",
    "PUBLISH",
    "SUBACK",
    "Connack",
    "ControlSink",
    "ProtocolError",
    "PublishSink",
    "connect_packet",
    "decode_varint",
    "disconnect_packet",
    "encode_varint",
    "next_packet",
    "parse_connack",
    "parse_disconnect",
    "parse_packets",
    "parse_suback",
    "puback_packets",
    "read_properties",
    "reason_text",
    "subscribe_packet",
]

# Control packet types (§2.1.2), the high nibble of the first byte.
CONNACK = 2
PUBLISH = 3
SUBACK = 9
PINGRESP = 13
DISCONNECT = 14

PINGREQ = b"\xc0\x00"  # §3.12: type 12, no body

_MAX_VARINT_BYTES = 4  # §1.5.5: at most four bytes, 268,435,455
_MAX_VARINT = 268_435_455
_PUBACK = struct.Struct("!BBH")  # §3.4: type 4, length 2, packet id; reason Success omitted

# Reason codes that fail (§2.4: 0x80 and above), named as in the standard's table.
_REASONS = {
    0x00: "Success",
    0x01: "Granted QoS 1",
    0x02: "Granted QoS 2",
    0x04: "Disconnect with Will Message",
    0x80: "Unspecified error",
    0x81: "Malformed Packet",
    0x82: "Protocol Error",
    0x83: "Implementation specific error",
    0x84: "Unsupported Protocol Version",
    0x85: "Client Identifier not valid",
    0x86: "Bad User Name or Password",
    0x87: "Not authorized",
    0x88: "Server unavailable",
    0x89: "Server busy",
    0x8A: "Banned",
    0x8B: "Server shutting down",
    0x8C: "Bad authentication method",
    0x8D: "Keep Alive timeout",
    0x8E: "Session taken over",
    0x8F: "Topic Filter invalid",
    0x90: "Topic Name invalid",
    0x91: "Packet Identifier in use",
    0x92: "Packet Identifier not found",
    0x93: "Receive Maximum exceeded",
    0x94: "Topic Alias invalid",
    0x95: "Packet too large",
    0x96: "Message rate too high",
    0x97: "Quota exceeded",
    0x98: "Administrative action",
    0x99: "Payload format invalid",
    0x9A: "Retain not supported",
    0x9B: "QoS not supported",
    0x9C: "Use another server",
    0x9D: "Server moved",
    0x9E: "Shared Subscriptions not supported",
    0x9F: "Connection rate exceeded",
    0xA0: "Maximum connect time",
    0xA1: "Subscription Identifiers not supported",
    0xA2: "Wildcard Subscriptions not supported",
}

MALFORMED = 0x81
PROTOCOL_ERROR = 0x82
TOPIC_ALIAS_INVALID = 0x94

# Property identifiers (§2.2.2.2) by how their value is encoded: what read_properties skips by.
_FIXED_PROPS = (
    dict.fromkeys((0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A), 1)  # Byte
    | dict.fromkeys((0x13, 0x21, 0x22, 0x23), 2)  # Two Byte Integer
    | dict.fromkeys((0x02, 0x11, 0x18, 0x27), 4)  # Four Byte Integer
)
_VARINT_PROPS = frozenset({0x0B})
_STRING_PROPS = frozenset({0x03, 0x08, 0x12, 0x15, 0x1A, 0x1C, 0x1F})
_BINARY_PROPS = frozenset({0x09, 0x16})
_PAIR_PROPS = frozenset({0x26})
TOPIC_ALIAS = 0x23
SERVER_KEEP_ALIVE = 0x13
REASON_STRING = 0x1F

#: ``on_publish(topic, payload, packet_id, qos)``; packet_id is 0 for QoS 0.
PublishSink = Callable[[str, bytes, int, int], None]
#: ``on_control(first_byte, body)`` for every packet but PUBLISH.
ControlSink = Callable[[int, bytes], None]


class ProtocolError(Exception):
    """The broker broke MQTT 5: *code* is the DISCONNECT reason to send it (§4.13)."""

    def __init__(self, code: int, text: str) -> None:
        """Carry the reason code to disconnect with and what was wrong."""
        super().__init__(text)
        self.code = code


def reason_text(code: int) -> str:
    """Name a reason code: ``"Not authorized (0x87)"``."""
    return f"{_REASONS.get(code, 'Unknown reason')} (0x{code:02x})"


def encode_varint(value: int) -> bytes:
    """Encode a Variable Byte Integer (§1.5.5): seven bits a byte, least significant first."""
    if not 0 <= value <= _MAX_VARINT:
        msg = f"{value} does not fit a Variable Byte Integer"
        raise ValueError(msg)
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        if value:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


def decode_varint(data: bytes, pos: int) -> tuple[int, int] | None:
    """Decode a Variable Byte Integer at *pos*: ``(value, next_pos)``, None if bytes are missing.

    Raises :class:`ProtocolError` for a fifth byte (§1.5.5 allows four): a broker sending one is
    broken, and waiting for "more" would buffer without bound.
    """
    value = 0
    for i in range(_MAX_VARINT_BYTES):
        if pos + i >= len(data):
            return None
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + i + 1
    raise ProtocolError(MALFORMED, "a length field runs past four bytes")


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("!H", len(raw)) + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + encode_varint(len(body)) + body


def connect_packet(
    client_id: str, *, keepalive: int, session_expiry: int, receive_maximum: int
) -> bytes:
    """CONNECT (§3.1): MQTT 5, Clean Start 0, no will, no user name or password.

    The broker knows us by the TLS client certificate (``use_identity_as_username``). Properties:
    Session Expiry Interval (the session and its queue outlive the connection, §3.1.2.11.2) and
    Receive Maximum (at most that many unacknowledged QoS 1 messages out to us, §3.1.2.11.3).
    Topic Alias Maximum is left out, so it is 0 and the broker may not use aliases (§3.1.2.11.5).
    """
    props = struct.pack("!BIBH", 0x11, session_expiry, 0x21, receive_maximum)
    variable = (
        _string("MQTT")
        + bytes([5, 0x00])  # protocol level 5; connect flags: Clean Start 0, nothing else
        + struct.pack("!H", keepalive)
        + encode_varint(len(props))
        + props
    )
    return _packet(0x10, variable + _string(client_id))


def subscribe_packet(packet_id: int, topic_filter: str, qos: int) -> bytes:
    """SUBSCRIBE (§3.8) of one filter at *qos*; no properties, default options otherwise."""
    body = struct.pack("!HB", packet_id, 0) + _string(topic_filter) + bytes([qos])
    return _packet(0x82, body)  # flags 0b0010 are required (§3.8.1)


def puback_packets(packet_ids: Iterable[int]) -> bytes:
    """One PUBACK per id, back to back (§3.4.2.1: reason Success and no properties omitted)."""
    pack = _PUBACK.pack
    return b"".join([pack(0x40, 2, pid) for pid in packet_ids])


def disconnect_packet(reason: int = 0) -> bytes:
    """DISCONNECT (§3.14); reason 0 (Normal) is sent as the short form, keeping the session."""
    return b"\xe0\x00" if reason == 0 else bytes([0xE0, 1, reason])


def next_packet(data: bytes, pos: int = 0) -> tuple[int, int, int] | None:
    """``(first_byte, body_start, end)`` of the packet at *pos*, or None if it is incomplete."""
    if len(data) - pos < 2:
        return None
    decoded = decode_varint(data, pos + 1)
    if decoded is None:
        return None
    length, head = decoded
    end = head + length
    return (data[pos], head, end) if end <= len(data) else None


def read_properties(data: bytes, pos: int, end: int) -> tuple[dict[int, int | str | bytes], int]:
    """Read the properties at *pos* (length first, §2.2.2); return them and where they end.

    User Properties are skipped (nothing here needs them); any other property keeps its last
    value. An unknown identifier or a value running past the end is a Malformed Packet.
    """
    decoded = decode_varint(data, pos)
    if decoded is None or decoded[1] + decoded[0] > end:
        raise ProtocolError(MALFORMED, "properties run past the end of the packet")
    length, p = decoded
    stop = p + length
    props: dict[int, int | str | bytes] = {}
    while p < stop:
        ident = data[p]
        p += 1
        width = _FIXED_PROPS.get(ident)
        if width is not None:
            props[ident], p = int.from_bytes(data[p : p + width]), p + width
        elif ident in _VARINT_PROPS:
            varint = decode_varint(data, p)
            if varint is None:
                break
            props[ident], p = varint
        elif ident in _STRING_PROPS or ident in _BINARY_PROPS:
            n = int.from_bytes(data[p : p + 2])
            raw = data[p + 2 : p + 2 + n]
            props[ident] = raw.decode("utf-8", "replace") if ident in _STRING_PROPS else raw
            p += 2 + n
        elif ident in _PAIR_PROPS:
            for _ in range(2):
                p += 2 + int.from_bytes(data[p : p + 2])
        else:
            raise ProtocolError(MALFORMED, f"unknown property 0x{ident:02x}")
    if p != stop:
        raise ProtocolError(MALFORMED, "a property runs past the properties' length")
    return props, stop


class Connack(NamedTuple):
    """What CONNACK (§3.2) says: session kept, reason, Server Keep Alive, reason string."""

    session_present: bool
    reason: int
    server_keepalive: int | None
    reason_string: str | None


def parse_connack(body: bytes) -> Connack:
    """Parse a CONNACK body; a CONNACK too short to hold its two bytes is Malformed."""
    if len(body) < 2:
        raise ProtocolError(MALFORMED, "CONNACK is too short")
    props: dict[int, int | str | bytes] = {}
    if len(body) > 2:
        props, _ = read_properties(body, 2, len(body))
    keepalive = props.get(SERVER_KEEP_ALIVE)
    text = props.get(REASON_STRING)
    return Connack(
        bool(body[0] & 1),
        body[1],
        keepalive if isinstance(keepalive, int) else None,
        text if isinstance(text, str) else None,
    )


def parse_suback(body: bytes) -> tuple[int, list[int]]:
    """``(packet_id, reason codes)`` of a SUBACK (§3.9); one code per filter subscribed."""
    if len(body) < 3:
        raise ProtocolError(MALFORMED, "SUBACK is too short")
    _, p = read_properties(body, 2, len(body))
    return int.from_bytes(body[:2]), list(body[p:])


def parse_disconnect(body: bytes) -> tuple[int, str | None]:
    """``(reason, reason string)`` of a DISCONNECT (§3.14); an empty body means Normal (0)."""
    if not body:
        return 0, None
    text = None
    if len(body) > 1:
        props, _ = read_properties(body, 1, len(body))
        value = props.get(REASON_STRING)
        text = value if isinstance(value, str) else None
    return body[0], text


def _publish_properties_end(data: bytes, pos: int, end: int) -> int:
    """Where a PUBLISH's properties end; a Topic Alias among them is refused."""
    props, p = read_properties(data, pos, end)
    if TOPIC_ALIAS in props:
        # We announce Topic Alias Maximum 0 (the default): a broker sending one broke §3.3.2.3.4.
        raise ProtocolError(TOPIC_ALIAS_INVALID, "the broker sent a Topic Alias")
    return p


def _bad_publish(qos: int, packet_id: int, head: int, topic_end: int, end: int) -> ProtocolError:
    """Say what is wrong with a PUBLISH that failed parse_packets' combined check."""
    if qos == 2:  # we subscribe at QoS 1, so the broker may not send QoS 2 (§3.8.3.1)
        return ProtocolError(
            PROTOCOL_ERROR, "the broker sent a QoS 2 message to a QoS 1 subscriber"
        )
    if qos == 3:
        return ProtocolError(MALFORMED, "a PUBLISH has QoS 3 (§3.3.1.2)")
    if topic_end == head + 2:
        # An empty topic is only legal with a Topic Alias (§3.3.2.1), which we never allow.
        return ProtocolError(PROTOCOL_ERROR, "a PUBLISH has an empty topic name")
    if topic_end < end and qos and not packet_id:
        return ProtocolError(MALFORMED, "a QoS 1 PUBLISH has packet identifier 0 (§2.2.1)")
    return ProtocolError(MALFORMED, "a PUBLISH's fields run past its end")


def parse_packets(data: bytes, on_publish: PublishSink, on_control: ControlSink) -> int:
    """Hand every complete packet in *data* to a sink; return how many bytes they took.

    The bytes from the return value on are an incomplete packet: keep them, append what arrives
    next, call again. Raises :class:`ProtocolError` for a malformed PUBLISH, a QoS 2 one (we
    subscribe at QoS 1, so the broker may not send one, §3.8.3.1), or a remaining length of
    more than four bytes; the packets before it have been handed on.
    """
    pos = 0
    n = len(data)
    while n - pos >= 2:
        first = data[pos]
        length = data[pos + 1]
        head = pos + 2
        if length & 0x80:  # a length of 128 or more: the general decoder (§1.5.5)
            decoded = decode_varint(data, pos + 1)
            if decoded is None:
                break
            length, head = decoded
        end = head + length
        if end > n:
            break
        if first >> 4 != PUBLISH:
            on_control(first, data[head:end])
            pos = end
            continue
        # PUBLISH (§3.3): topic name, packet id if QoS > 0, properties, payload.
        qos = (first >> 1) & 3
        topic_end = head + 2 + (data[head] << 8 | data[head + 1]) if length >= 3 else end
        # Packet id (QoS 1 only) and the properties' length byte must fit before the end.
        p = topic_end + (2 if qos else 0)
        packet_id = data[topic_end] << 8 | data[topic_end + 1] if qos and p < end else 0
        if qos > 1 or p >= end or topic_end == head + 2 or (qos and not packet_id):
            raise _bad_publish(qos, packet_id, head, topic_end, end)
        if data[p]:  # properties present: rare for device events, so off the fast path
            p = _publish_properties_end(data, p, end)
        else:
            p += 1
        try:
            topic = data[head + 2 : topic_end].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(MALFORMED, "a topic name is not UTF-8 (§1.5.4)") from exc
        on_publish(topic, data[p:end], packet_id, qos)
        pos = end
    return pos
