"""The ingest bench's load generator: many device connections, pre-signed messages, little CPU.

A benchmark's publisher shares the machine with what it measures, so every microsecond it spends
is taken from the consumer under test. ``device_sim.fleet.ClientPool`` (paho, callbacks, the
fleet simulator's fault injection) costs ~70 us of CPU per message on this machine -- more than
the broker and the raw subscriber together. This publisher does only what the bench needs:

* TLS connection and MQTT 5 CONNECT per device (client certificate = device identity; clean
  start, no session), handshakes on a few threads;
* PUBLISH at QoS 1 (MQTT 5 §3.3) written straight to the device's TLS socket; a device never has
  more unacknowledged messages out than the broker's Receive Maximum (§3.2.2.3.3);
* PUBACKs counted per device (§3.4); a failure reason code or a DISCONNECT from the broker stops
  the bench with the reason.

Everything runs on the caller's thread; it is not a general MQTT client (no QoS 2, no session,
no reconnect) -- the fleet simulator is that.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import ssl
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from gateway.core.errors import UnavailableError
from gateway.ingest.broker_config import ClientCredentials
from gateway.ingest.mqtt import client_tls_context

_CONNECT, _CONNACK, _PUBLISH_QOS1, _PUBACK, _PINGREQ, _DISCONNECT = 0x10, 2, 0x32, 4, 0xC0, 14
_PROPERTY_SIZES = {0x11: 4, 0x21: 2, 0x24: 1, 0x25: 1, 0x27: 4, 0x22: 2, 0x13: 2}
_PROPERTY_SIZES |= {0x28: 1, 0x29: 1, 0x2A: 1}
_STRING_PROPERTIES = {0x12, 0x1F, 0x1A, 0x1C, 0x15, 0x16}
_USER_PROPERTY = 0x26
_SERVER_KEEP_ALIVE = 0x13
_RECEIVE_MAXIMUM = 0x21


def varint(n: int) -> bytes:
    """MQTT Variable Byte Integer (§1.5.5)."""
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def connect_packet(client_id: str, keepalive: int) -> bytes:
    """CONNECT, MQTT 5, Clean Start, no properties, no credentials (§3.1)."""
    body = _utf8("MQTT") + bytes([5, 0x02]) + struct.pack("!H", keepalive) + b"\x00"
    body += _utf8(client_id)
    return bytes([_CONNECT]) + varint(len(body)) + body


def publish_prefix(topic: str) -> tuple[bytes, int]:
    """The topic part of a QoS 1 PUBLISH and the remaining length it adds (§3.3.2)."""
    encoded = _utf8(topic)
    return encoded, len(encoded) + 3  # + packet id (2) + properties length 0 (1)


def _read_varint(buf: bytes | bytearray, at: int) -> tuple[int, int] | None:
    """(value, next offset), or None if *buf* ends first; a 5th byte is a protocol error."""
    value, shift = 0, 0
    for i in range(4):
        if at + i >= len(buf):
            return None
        byte = buf[at + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at + i + 1
        shift += 7
    msg = "malformed remaining length from the broker"
    raise ConnectionError(msg)


def _connack_properties(props: bytes) -> dict[int, int]:
    """The integer properties of a CONNACK (§3.2.2.3); strings and pairs are skipped."""
    out, at = {}, 0
    while at < len(props):
        ident = props[at]
        at += 1
        if ident in _PROPERTY_SIZES:
            size = _PROPERTY_SIZES[ident]
            out[ident] = int.from_bytes(props[at : at + size], "big")
            at += size
        elif ident in _STRING_PROPERTIES or ident == _USER_PROPERTY:
            for _ in range(2 if ident == _USER_PROPERTY else 1):
                at += 2 + int.from_bytes(props[at : at + 2], "big")
        else:
            msg = f"unknown CONNACK property {ident:#x}"
            raise ConnectionError(msg)
    return out


@dataclass(eq=False)
class _Device:
    index: int
    client_id: str
    sock: ssl.SSLSocket
    receive_maximum: int
    inflight: int = 0
    next_id: int = 1
    out: bytearray = field(default_factory=bytearray)
    inbox: bytearray = field(default_factory=bytearray)
    writing: bool = False


@dataclass(frozen=True)
class Connected:
    seconds: float
    failures: dict[str, str]


class LeanPublisher:
    """One TLS connection per device; publish pre-signed payloads at QoS 1 from one thread."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.acked = 0
        self._devices: list[_Device | None] = []
        self._creds: list[ClientCredentials] = []
        self._sel = selectors.DefaultSelector()
        self._dirty: set[_Device] = set()
        self._keepalive = 0
        self._next_ping = float("inf")

    def add(self, creds: ClientCredentials) -> int:
        """Add a device (connected by :meth:`connect_all`); return its index."""
        self._creds.append(creds)
        self._devices.append(None)
        return len(self._creds) - 1

    def _handshake(self, index: int) -> tuple[_Device, int]:
        creds = self._creds[index]
        ctx = client_tls_context(creds)
        raw = socket.create_connection((self.host, self.port), timeout=30)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = ctx.wrap_socket(raw, server_hostname=self.host)
        sock.sendall(connect_packet(creds.client_id, 0))
        buf = bytearray()
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                msg = "the broker closed the connection before CONNACK"
                raise ConnectionError(msg)
            buf += chunk
            head = _read_varint(buf, 1)
            if head is not None and len(buf) >= head[1] + head[0]:
                break
        at = head[1]
        if buf[0] >> 4 != _CONNACK or buf[at + 1] != 0:
            msg = f"CONNACK refused, reason code {buf[at + 1]:#x}"
            raise ConnectionError(msg)
        plen, pat = _read_varint(buf, at + 2) or (0, at + 2)
        props = _connack_properties(bytes(buf[pat : pat + plen]))
        sock.setblocking(False)  # noqa: FBT003 - the stdlib's signature
        return _Device(index, creds.client_id, sock, props.get(_RECEIVE_MAXIMUM, 65535)), props.get(
            _SERVER_KEEP_ALIVE, 0
        )

    def connect_all(self, *, parallel: int = 4) -> Connected:
        """Connect every device; TLS handshakes on *parallel* threads."""
        start = time.monotonic()
        failures: dict[str, str] = {}

        def one(index: int) -> tuple[int, _Device | str, int]:
            try:
                device, keepalive = self._handshake(index)
            except (OSError, ssl.SSLError, ConnectionError, UnavailableError) as exc:
                return index, f"{type(exc).__name__}: {exc}", 0
            return index, device, keepalive

        with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
            for index, got, keepalive in pool.map(one, range(len(self._creds))):
                if isinstance(got, str):
                    failures[self._creds[index].client_id] = got
                    continue
                self._devices[index] = got
                self._sel.register(got.sock, selectors.EVENT_READ, got)
                if keepalive:
                    self._keepalive = keepalive
        if self._keepalive:
            self._next_ping = time.monotonic() + self._keepalive / 2
        return Connected(time.monotonic() - start, failures)

    def publish(self, index: int, topic: bytes, extra: int, payload: bytes) -> None:
        """Queue a QoS 1 PUBLISH (*topic*, *extra* from :func:`publish_prefix`) on device *index*.

        Written at the next :meth:`flush` or :meth:`poll`; waits while the device has the
        broker's Receive Maximum of messages unacknowledged.
        """
        device = self._devices[index]
        if device is None:
            msg = f"device {self._creds[index].client_id} is not connected"
            raise ConnectionError(msg)
        while device.inflight >= device.receive_maximum:
            self.poll(0.001)
        packet_id = device.next_id
        device.next_id = packet_id % 65535 + 1
        device.inflight += 1
        device.out += b"%c%s%s%s\x00%s" % (
            _PUBLISH_QOS1,
            varint(extra + len(payload)),
            topic,
            packet_id.to_bytes(2, "big"),
            payload,
        )
        self._dirty.add(device)

    def flush(self) -> None:
        """Write what every device has queued, as far as the sockets take it."""
        for device in self._dirty:
            self._write(device)
        self._dirty.clear()

    def _write(self, device: _Device) -> None:
        try:
            while device.out:
                sent = device.sock.send(device.out)
                del device.out[:sent]
        except (ssl.SSLWantWriteError, BlockingIOError):
            pass
        want = bool(device.out)
        if want != device.writing:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0)
            self._sel.modify(device.sock, events, device)
            device.writing = want

    def poll(self, timeout: float) -> None:
        """Flush, then wait up to *timeout* seconds for PUBACKs and writable sockets."""
        self.flush()
        for key, mask in self._sel.select(timeout):
            device: _Device = key.data
            if mask & selectors.EVENT_READ:
                self._read(device)
            if mask & selectors.EVENT_WRITE:
                self._write(device)
        if time.monotonic() >= self._next_ping:
            self._next_ping = time.monotonic() + self._keepalive / 2
            for device in filter(None, self._devices):
                device.out += bytes([_PINGREQ, 0])
                self._write(device)

    def _read(self, device: _Device) -> None:
        with contextlib.suppress(ssl.SSLWantReadError, BlockingIOError):
            # TLS may hold decrypted bytes the kernel no longer signals: read while it has some
            # (pending()); what is still in the kernel's buffer is signalled again by epoll.
            while True:
                chunk = device.sock.recv(65536)
                if not chunk:
                    msg = f"the broker closed the connection of {device.client_id}"
                    raise ConnectionError(msg)
                device.inbox += chunk
                if not device.sock.pending():
                    break
        buf, at = device.inbox, 0
        while (head := _read_varint(buf, at + 1)) is not None:
            length, body = head
            if len(buf) < body + length:
                break
            kind = buf[at] >> 4
            if kind == _PUBACK:
                if length >= 3 and buf[body + 2] >= 0x80:  # reason code byte
                    msg = f"PUBACK with reason {buf[body + 2]:#x} for {device.client_id}"
                    raise ConnectionError(msg)
                device.inflight -= 1
                self.acked += 1
            elif kind == _DISCONNECT:
                reason = buf[body] if length else 0
                msg = f"the broker disconnected {device.client_id}, reason {reason:#x}"
                raise ConnectionError(msg)
            at = body + length
        del buf[:at]

    def close(self) -> None:
        """DISCONNECT (§3.14, reason 0) every device and close its socket."""
        for device in filter(None, self._devices):
            with contextlib.suppress(OSError):
                device.sock.setblocking(True)  # noqa: FBT003 - the stdlib's signature
                device.sock.sendall(bytes([_DISCONNECT << 4, 0]))
                device.sock.close()
        self._devices = [None] * len(self._devices)
        self._sel.close()
