"""A simulated fleet: many devices publishing signed events over MQTT/TLS, with fault injection.

Each device logs in to the broker with its own certificate (the broker's ACL then lets it write
only under its own topic) and publishes a realistic mix of events at QoS 1: mostly maintenance and
custody, some firmware updates. The first message of a device carries its certificate chain
(``x5chain``), later ones only the ``kid`` (DESIGN.md "Wire format"). Sequence numbers are per
device and monotonic, and persist in a small JSON state file so that a rerun continues them.

Fault injection, each standing for a threat the gateway must catch:

* ``bad_signature``: a valid event with one bit of its signature flipped (tampering in transit);
* ``replay``: a device's last stored sequence number sent again with other content, validly
  signed (a replayed or cloned device); the gateway quarantines it as ``replay``;
* ``malformed``: random bytes, or a signed message cut short (parser attacks, broken firmware);
* ``impersonate``: device A's signed event published on device B's topic. A's own connection is
  refused by the broker's ACL (MQTT 5 PUBACK 0x87, counted as *refused by broker*); with a
  privileged publisher client whose ACL allows every device topic, the message reaches the
  gateway, which must refuse it itself (``topic-mismatch``).

Many devices, one thread: a TLS connection per device with paho's thread per client does not scale
to a thousand devices. :class:`ClientPool` drives every paho client from ONE ``selectors`` loop
(epoll; ``select()`` stops at 1,024 descriptors) through paho's external-loop API
(``socket()``, ``loop_read()``, ``loop_write()``, ``loop_misc()``, ``want_write()``). The blocking
part of a connection, the TCP and TLS handshakes, runs on a few threads at connect time only.
"""

from __future__ import annotations

import contextlib
import json
import random
import selectors
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from device_sim.events import SimDevice, make_event
from device_sim.pki import DeviceRecord, load_devices
from gateway.core.errors import UnavailableError
from gateway.ingest.broker_config import BrokerConfig, ClientCredentials
from gateway.ingest.mqtt import client_tls_context
from gateway.ingest.topics import event_topic

__all__ = [
    "EVENT_MIX",
    "FAULT_KINDS",
    "KINDS",
    "ClientPool",
    "ConnectResult",
    "FaultRates",
    "FleetOptions",
    "FleetProgress",
    "FleetReport",
    "SeqState",
    "device_credentials",
    "flip_signature_bit",
    "raise_fd_limit",
    "run_fleet",
    "select_devices",
]

#: Event types and their weights: a hospital's devices mostly report maintenance and custody.
EVENT_MIX: tuple[tuple[str, int], ...] = (
    ("maintenance", 45),
    ("custody", 45),
    ("firmware_update", 10),
)
FAULT_KINDS = ("bad_signature", "replay", "malformed", "impersonate")
#: Every kind of message the fleet sends: valid events, then each injected fault.
KINDS = ("valid", *FAULT_KINDS)

_STATE_VERSION = 1
_MQTT_NOT_AUTHORIZED = 0x87  # MQTT 5 §3.4.2.1: what Mosquitto answers an ACL-denied publish


# --- fault rates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultRates:
    """Probability that a message is each kind of fault; the rest are valid events."""

    bad_signature: float = 0.0
    replay: float = 0.0
    malformed: float = 0.0
    impersonate: float = 0.0

    def __post_init__(self) -> None:
        for kind in FAULT_KINDS:
            value = getattr(self, kind)
            if not 0.0 <= value <= 1.0:
                msg = f"the {kind.replace('_', '-')} rate must be between 0 and 1, not {value}"
                raise ValueError(msg)
        if self.total > 1.0:
            msg = f"the fault rates add up to {self.total:g}; together they may be at most 1"
            raise ValueError(msg)

    @property
    def total(self) -> float:
        """Probability that a message is a fault of any kind."""
        return self.bad_signature + self.replay + self.malformed + self.impersonate

    def pick(self, u: float) -> str:
        """Map a uniform draw *u* in [0, 1) to a kind of message."""
        for kind in FAULT_KINDS:
            u -= getattr(self, kind)
            if u < 0:
                return kind
        return "valid"


# --- per-device sequence state -----------------------------------------------------------------


@dataclass
class _DeviceState:
    next_seq: int = 1
    introduced: bool = False
    last_seq: int | None = None
    last_time_ms: int | None = None


def _check_version(version: object) -> None:
    if version != _STATE_VERSION:
        msg = f"unknown version {version!r}"
        raise ValueError(msg)


class SeqState:
    """Per-device sequence numbers, persisted as JSON so that reruns continue them.

    For each device: the next sequence number to use, whether the gateway has seen its certificate
    chain (a message carrying it was acknowledged), and its last valid (seq, time) for replays.
    """

    def __init__(self, path: Path | None, devices: dict[str, _DeviceState] | None = None) -> None:
        self.path = path
        self._devices: dict[str, _DeviceState] = devices or {}

    @classmethod
    def load(cls, path: Path | None) -> SeqState:
        """Read *path* (a missing file starts every device at seq 1); ``None`` keeps no file."""
        if path is None or not path.exists():
            return cls(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            _check_version(data.get("version"))
            devices = {
                device: _DeviceState(
                    int(item["next_seq"]),
                    bool(item["introduced"]),
                    None if item["last_seq"] is None else int(item["last_seq"]),
                    None if item["last_time_ms"] is None else int(item["last_time_ms"]),
                )
                for device, item in data["devices"].items()
            }
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            msg = (
                f"{path} is not a fleet state file ({exc}); move it aside to start every device "
                "at sequence number 1"
            )
            raise ValueError(msg) from exc
        return cls(path, devices)

    def _get(self, device: str) -> _DeviceState:
        state = self._devices.get(device)
        if state is None:
            state = self._devices[device] = _DeviceState()
        return state

    def take(self, device: str) -> int:
        """Return *device*'s next sequence number and move past it."""
        state = self._get(device)
        seq = state.next_seq
        state.next_seq += 1
        return seq

    def peek(self, device: str) -> int:
        """Return the next sequence number without using it."""
        return self._get(device).next_seq

    def introduced(self, device: str) -> bool:
        """Whether a message with *device*'s certificate chain was acknowledged."""
        return self._get(device).introduced

    def mark_introduced(self, device: str) -> None:
        """Record that *device*'s chain reached the broker: later messages carry the kid only."""
        self._get(device).introduced = True

    def record_valid(self, device: str, seq: int, time_ms: int) -> None:
        """Remember the last valid event sent, the one a replay fault reuses."""
        state = self._get(device)
        state.last_seq, state.last_time_ms = seq, time_ms

    def last_valid(self, device: str) -> tuple[int, int] | None:
        """Return the last valid (seq, time_ms) *device* sent, or ``None``."""
        state = self._get(device)
        if state.last_seq is None or state.last_time_ms is None:
            return None
        return state.last_seq, state.last_time_ms

    def save(self) -> None:
        """Write the state file atomically (beside, then renamed): a crash never leaves half."""
        if self.path is None:
            return
        data = {
            "version": _STATE_VERSION,
            "devices": {
                device: {
                    "next_seq": s.next_seq,
                    "introduced": s.introduced,
                    "last_seq": s.last_seq,
                    "last_time_ms": s.last_time_ms,
                }
                for device, s in sorted(self._devices.items())
            },
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        tmp.replace(self.path)


# --- many paho clients on one selector ---------------------------------------------------------


@dataclass
class _Client:
    index: int
    client_id: str
    client: paho.Client
    sock: Any = None  # the socket paho opened (ssl.SSLSocket)
    writing: bool = False  # registered for EVENT_WRITE
    connected: bool = False
    failure: str | None = None


@dataclass(frozen=True)
class ConnectResult:
    """How connecting went: wall time, clients up, and each failure's reason."""

    seconds: float
    connected: int
    failures: dict[str, str]


#: ``on_ack(client_index, mid, ok, reason)``: the broker's PUBACK for a QoS 1 publish.
AckHandler = Callable[[int, int, bool, str], None]


def _reason_text(rc: object) -> str:
    if isinstance(rc, ReasonCode):
        return f"{rc.getName()} (0x{rc.value:02x})"
    if isinstance(rc, int):
        return str(paho.error_string(rc))
    return str(rc)


class ClientPool:
    """Many MQTT 5 clients (one TLS connection each) driven from one selector loop.

    Not thread-safe: call every method from the thread that created the pool. Callbacks
    (``on_ack``) run inside :meth:`poll` and :meth:`publish`.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        on_ack: AckHandler | None = None,
        keepalive: int = 60,
        max_inflight: int = 20,
    ) -> None:
        self.host = host
        self.port = port
        self.keepalive = keepalive
        self.max_inflight = max_inflight
        self._on_ack = on_ack
        self._clients: list[_Client] = []
        self._sel = selectors.DefaultSelector()
        self._next_misc = 0.0

    def __len__(self) -> int:
        return len(self._clients)

    def client_id(self, index: int) -> str:
        """Return the client id (= certificate CN) of client *index*."""
        return self._clients[index].client_id

    def is_connected(self, index: int) -> bool:
        """Whether client *index* has its CONNACK and has not dropped since."""
        return self._clients[index].connected

    def add(self, creds: ClientCredentials) -> int:
        """Add a client for *creds* (not yet connected); return its index."""
        index = len(self._clients)
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=creds.client_id,
            protocol=paho.MQTTv5,
            userdata=index,
        )
        client.tls_set_context(client_tls_context(creds))
        client.max_inflight_messages_set(self.max_inflight)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_publish = self._handle_publish
        client.on_socket_close = self._handle_socket_close
        self._clients.append(_Client(index, creds.client_id, client))
        return index

    # -- connecting ------------------------------------------------------------------------------

    def connect_all(self, *, parallel: int = 4, timeout: float = 60.0) -> ConnectResult:
        """Connect every client; TCP+TLS handshakes run on *parallel* threads, CONNACKs here."""
        start = time.monotonic()
        pending = [c for c in self._clients if not c.connected]

        def handshake(c: _Client) -> None:
            try:
                # Clean start, no session expiry: a device that only publishes needs no session
                # kept for it, and the broker keeps none of a thousand devices' state.
                c.client.connect(self.host, self.port, self.keepalive, clean_start=True)
            except (OSError, ssl.SSLError, ValueError) as exc:
                c.failure = f"{type(exc).__name__}: {exc}"

        with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
            for c, _ in zip(pending, pool.map(handshake, pending), strict=True):
                if c.failure is None:
                    c.sock = c.client.socket()
                    self._sel.register(c.sock, selectors.EVENT_READ, c)
                    self._sync_write(c)
        deadline = start + timeout
        while time.monotonic() < deadline and any(
            c.failure is None and not c.connected for c in pending
        ):
            self.poll(0.05)
        failures: dict[str, str] = {}
        for c in pending:
            if not c.connected:
                failures[c.client_id] = c.failure or f"no CONNACK within {timeout:g} s"
        return ConnectResult(time.monotonic() - start, len(pending) - len(failures), failures)

    # -- publishing and the loop -----------------------------------------------------------------

    def publish(self, index: int, topic: str, payload: bytes, qos: int = 1) -> int:
        """Publish on client *index*; return the message id its PUBACK will carry."""
        c = self._clients[index]
        if not c.connected:
            raise UnavailableError(
                f"MQTT client {c.client_id!r} is not connected ({c.failure or 'not yet'}).",
                reason="broker-down",
            )
        info = c.client.publish(topic, payload, qos=qos)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_QUEUE_SIZE):
            raise UnavailableError(
                f"Cannot publish on {c.client_id!r}: {_reason_text(info.rc)}.",
                reason="broker-down",
            )
        self._sync_write(c)
        return int(info.mid)

    def poll(self, timeout: float) -> None:
        """Wait up to *timeout* seconds for socket events and handle them."""
        for key, mask in self._sel.select(timeout):
            c: _Client = key.data
            if mask & selectors.EVENT_READ:
                self._read(c)
            if mask & selectors.EVENT_WRITE and c.sock is not None:
                c.client.loop_write()
            if c.sock is not None:
                self._sync_write(c)
        now = time.monotonic()
        if now >= self._next_misc:
            # Keepalive PINGREQs and their timeouts (MQTT 5 §3.1.2.10), once a second is plenty.
            self._next_misc = now + 1.0
            for c in self._clients:
                if c.sock is not None:
                    c.client.loop_misc()
                    if c.sock is not None:
                        self._sync_write(c)

    def _read(self, c: _Client) -> None:
        c.client.loop_read()
        # TLS may hold decrypted bytes the kernel no longer signals (paho's own loop checks too).
        while c.sock is not None and c.sock.pending() > 0:
            c.client.loop_read()

    def _sync_write(self, c: _Client) -> None:
        want = c.client.want_write()
        if want != c.writing and c.sock is not None:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0)
            self._sel.modify(c.sock, events, c)
            c.writing = want

    def close(self, timeout: float = 2.0) -> None:
        """Disconnect every client cleanly (DISCONNECT sent), then close what is left."""
        for c in self._clients:
            if c.sock is not None:
                c.client.disconnect()
                if c.sock is not None:
                    self._sync_write(c)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(c.sock is not None for c in self._clients):
            self.poll(0.02)
        for c in self._clients:
            if c.sock is not None:
                self._forget(c.sock)
                with contextlib.suppress(OSError):
                    c.sock.close()
                c.sock = None
        self._sel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- paho callbacks (run inside poll/publish on this thread) --------------------------------

    def _forget(self, sock: object) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(sock)  # type: ignore[arg-type]

    def _handle_socket_close(self, client: paho.Client, userdata: int, sock: object) -> None:
        del client
        c = self._clients[userdata]
        self._forget(sock)
        c.sock = None
        c.writing = False
        c.connected = False

    def _handle_connect(
        self,
        client: paho.Client,
        userdata: int,
        flags: object,
        reason_code: ReasonCode,
        properties: object,
    ) -> None:
        del client, flags, properties
        c = self._clients[userdata]
        if reason_code.is_failure:
            c.failure = _reason_text(reason_code)
        else:
            c.connected = True

    def _handle_disconnect(
        self,
        client: paho.Client,
        userdata: int,
        flags: object,
        reason_code: ReasonCode,
        properties: object,
    ) -> None:
        del client, flags, properties
        c = self._clients[userdata]
        c.connected = False
        c.failure = c.failure or f"disconnected: {_reason_text(reason_code)}"

    def _handle_publish(
        self,
        client: paho.Client,
        userdata: int,
        mid: int,
        reason_code: ReasonCode,
        properties: object,
    ) -> None:
        del client, properties
        if self._on_ack is not None:
            self._on_ack(userdata, mid, not reason_code.is_failure, _reason_text(reason_code))


def raise_fd_limit(wanted: int) -> None:
    """Raise the soft limit on open files towards *wanted* (one socket per device)."""
    import resource  # noqa: PLC0415 - POSIX only, and needed only here

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def device_credentials(pki: Path, broker: BrokerConfig, device_id: str) -> ClientCredentials:
    """Return a device's MQTT login: its chain (device + issuing CA) and key, and the site CA."""
    folder = pki / "devices" / device_id
    return ClientCredentials(device_id, broker.site_ca, folder / "chain.pem", folder / "key.pem")


# --- the fleet ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetOptions:
    """What ``provgw-sim fleet`` runs; see the command's help for each field."""

    pki: Path
    broker_dir: Path
    devices: int
    rate: float
    duration: float
    host: str | None = None
    port: int | None = None
    seed: int | None = None
    faults: FaultRates = field(default_factory=FaultRates)
    #: Default: ``PKI/fleet-state.json``.
    state_path: Path | None = None
    #: A client id in the broker configuration whose ACL lets it write on every device topic.
    privileged_publisher: str | None = None
    progress_every: float = 5.0
    connect_parallelism: int = 4


@dataclass(frozen=True)
class FleetProgress:
    """A progress line's figures."""

    elapsed_s: float
    sent: int
    acked: int
    refused: int


@dataclass
class _Counts:
    sent: int = 0
    acked: int = 0
    refused: int = 0


@dataclass(frozen=True)
class FleetReport:
    """What a fleet run did. ``refused`` counts PUBACKs with a failure code (broker ACL)."""

    devices: int
    connected: int
    connect_s: float
    connect_failures: dict[str, str]
    duration_s: float
    kinds: dict[str, dict[str, int]]
    refusals: dict[str, int]
    state_file: str | None
    interrupted: bool

    @property
    def sent(self) -> int:
        """Messages published."""
        return sum(k["sent"] for k in self.kinds.values())

    @property
    def acked(self) -> int:
        """Messages the broker accepted (PUBACK success)."""
        return sum(k["acked"] for k in self.kinds.values())

    @property
    def refused(self) -> int:
        """Messages the broker refused (PUBACK failure, e.g. 0x87 Not authorized)."""
        return sum(k["refused"] for k in self.kinds.values())

    @property
    def unacked(self) -> int:
        """Messages with no PUBACK by the end of the run."""
        return self.sent - self.acked - self.refused

    def to_json(self) -> dict[str, Any]:
        """JSON-ready summary (what ``--json`` prints)."""
        return {
            "devices": self.devices,
            "connected": self.connected,
            "connect_s": round(self.connect_s, 3),
            "connect_failures": self.connect_failures,
            "duration_s": round(self.duration_s, 3),
            "sent": self.sent,
            "acked": self.acked,
            "refused_by_broker": self.refused,
            "unacked": self.unacked,
            "rate": round(self.sent / self.duration_s, 1) if self.duration_s > 0 else 0.0,
            "kinds": self.kinds,
            "refusals": self.refusals,
            "state_file": self.state_file,
            "interrupted": self.interrupted,
        }


@dataclass(frozen=True)
class _Outgoing:
    kind: str
    device: str
    seq: int | None
    time_ms: int
    chain: bool


class _Fleet:
    """One fleet run: device selection, message generation, accounting."""

    def __init__(
        self,
        options: FleetOptions,
        records: Sequence[DeviceRecord],
        broker: BrokerConfig,
        state: SeqState,
    ) -> None:
        self.options = options
        self.records = list(records)
        self.rng = random.Random(options.seed)
        self.state = state
        self.sims = {r.id: SimDevice.load(options.pki, r.id) for r in self.records}
        self.counts = {kind: _Counts() for kind in KINDS}
        self.refusals: Counter[str] = Counter()
        self.pending: dict[tuple[int, int], _Outgoing] = {}
        host = options.host or broker.host
        port = options.port or broker.port
        self.pool = ClientPool(host, port, on_ack=self._on_ack)
        for r in self.records:
            self.pool.add(device_credentials(options.pki, broker, r.id))
        self.privileged: int | None = None
        if options.privileged_publisher is not None:
            self.privileged = self.pool.add(broker.client(options.privileged_publisher))
        self._types = [t for t, _ in EVENT_MIX]
        self._weights = [w for _, w in EVENT_MIX]

    # -- accounting ------------------------------------------------------------------------------

    def _on_ack(self, index: int, mid: int, ok: bool, reason: str) -> None:  # noqa: FBT001
        out = self.pending.pop((index, mid), None)
        if out is None:
            return
        counts = self.counts[out.kind]
        if ok:
            counts.acked += 1
            if out.chain:
                self.state.mark_introduced(out.device)
            if out.kind == "valid" and out.seq is not None:
                self.state.record_valid(out.device, out.seq, out.time_ms)
        else:
            counts.refused += 1
            self.refusals[reason] += 1

    def progress(self, elapsed: float) -> FleetProgress:
        """Figures so far."""
        return FleetProgress(
            elapsed,
            sum(c.sent for c in self.counts.values()),
            sum(c.acked for c in self.counts.values()),
            sum(c.refused for c in self.counts.values()),
        )

    # -- one message -----------------------------------------------------------------------------

    def send_one(self, live: list[int]) -> bool:
        """Pick a connected device and a kind of message, build it, publish it.

        Devices found disconnected are dropped from *live*; returns False when none is left.
        """
        while live:
            pick = self.rng.randrange(len(live))
            index = live[pick]
            if self.pool.is_connected(index):
                break
            live[pick] = live[-1]
            live.pop()
        else:
            return False
        record = self.records[index]
        kind = self.options.faults.pick(self.rng.random())
        # A fault on a device the gateway has not enrolled yet would be refused for the wrong
        # reason (unknown kid); its chain goes first, in a valid event.
        if kind != "valid" and not self.state.introduced(record.id):
            kind = "valid"
        if (kind == "replay" and self.state.last_valid(record.id) is None) or (
            kind == "impersonate" and len(self.records) < 2
        ):
            kind = "valid"
        now_ms = int(time.time() * 1000)
        event_type = self.rng.choices(self._types, self._weights)[0]
        sim = self.sims[record.id]
        publisher = index
        topic = event_topic(record.site, record.id, event_type)
        seq: int | None
        chain = False
        if kind == "valid":
            chain = not self.state.introduced(record.id)
            seq = self.state.take(record.id)
            payload = sim.sign(self._event(record.id, event_type, seq, now_ms), with_chain=chain)
        elif kind == "bad_signature":
            seq = self.state.take(record.id)
            signed = sim.sign(self._event(record.id, event_type, seq, now_ms), with_chain=False)
            payload = flip_signature_bit(signed)
        elif kind == "replay":
            last = self.state.last_valid(record.id)
            assert last is not None
            seq, last_time = last
            # Other content under a stored seq: a later time makes the bytes differ for sure.
            now_ms = max(now_ms, last_time + 1)
            payload = sim.sign(self._event(record.id, event_type, seq, now_ms), with_chain=False)
        elif kind == "malformed":
            seq = None
            payload = self._malformed(sim, record.id, event_type, now_ms)
        else:  # impersonate: this device's event on another device's topic
            seq = self.state.take(record.id)
            payload = sim.sign(self._event(record.id, event_type, seq, now_ms), with_chain=False)
            others = len(self.records) - 1
            victim = self.records[(index + 1 + self.rng.randrange(others)) % len(self.records)]
            topic = event_topic(victim.site, victim.id, event_type)
            if self.privileged is not None:
                publisher = self.privileged
        mid = self.pool.publish(publisher, topic, payload)
        self.pending[(publisher, mid)] = _Outgoing(kind, record.id, seq, now_ms, chain)
        self.counts[kind].sent += 1
        return True

    def _event(self, device: str, event_type: str, seq: int, time_ms: int) -> Any:  # noqa: ANN401
        today = datetime.fromtimestamp(time_ms / 1000, tz=UTC).date()
        return make_event(device, event_type, seq, time_ms, self.rng, today=today)

    def _malformed(self, sim: SimDevice, device: str, event_type: str, now_ms: int) -> bytes:
        if self.rng.random() < 0.5:
            # Random bytes: what a broken or hostile client sends.
            return self.rng.randbytes(self.rng.randint(1, 300))
        # A real message cut short (a truncated CBOR item): the seq is never consumed, since
        # the message can never decode.
        signed = sim.sign(
            self._event(device, event_type, self.state.peek(device), now_ms), with_chain=False
        )
        return signed[: self.rng.randint(1, len(signed) - 1)]

    def snapshot(self, *, connect: ConnectResult, elapsed: float, interrupted: bool) -> FleetReport:
        """Return the final report."""
        return FleetReport(
            devices=len(self.records),
            connected=connect.connected,
            connect_s=connect.seconds,
            connect_failures=connect.failures,
            duration_s=elapsed,
            kinds={
                k: {"sent": c.sent, "acked": c.acked, "refused": c.refused}
                for k, c in self.counts.items()
            },
            refusals=dict(self.refusals),
            state_file=None if self.state.path is None else str(self.state.path),
            interrupted=interrupted,
        )


def flip_signature_bit(signed: bytes) -> bytes:
    """Flip one bit of a COSE_Sign1's signature: its last byte is the signature's last byte.

    (The signature is the final member of the array and nothing may follow it, RFC 9052 §4.2.)
    """
    return signed[:-1] + bytes([signed[-1] ^ 0x01])


def select_devices(pki: Path, count: int) -> list[DeviceRecord]:
    """Return the first *count* devices of ``PKI/devices.json``; ValueError if too few."""
    records = load_devices(pki)
    if count > len(records):
        per_model = -(-count // max(1, len({r.model for r in records})))
        msg = (
            f"{pki} has {len(records)} devices, fewer than the {count} asked for; make a PKI "
            f"with more, e.g. `provgw-sim pki init NEWDIR --devices-per-model {per_model}`"
        )
        raise ValueError(msg)
    return records[:count]


def run_fleet(
    options: FleetOptions,
    *,
    on_progress: Callable[[FleetProgress], None] | None = None,
    stop: threading.Event | None = None,
) -> FleetReport:
    """Connect the fleet, publish at ``rate`` for ``duration`` seconds, wait for PUBACKs.

    Stops early when *stop* is set (Ctrl-C); the state file is saved either way. Raises
    :class:`ValueError` for unusable options and :class:`UnavailableError` when no device can
    connect.
    """
    if options.devices < 1 or options.rate <= 0 or options.duration < 0:
        msg = "devices must be at least 1, rate above 0 and duration at least 0"
        raise ValueError(msg)
    broker = BrokerConfig.load(options.broker_dir)
    records = select_devices(options.pki, options.devices)
    state = SeqState.load(options.state_path or options.pki / "fleet-state.json")
    raise_fd_limit(len(records) + 256)
    stop = stop or threading.Event()
    fleet = _Fleet(options, records, broker, state)
    pool = fleet.pool
    try:
        connect = pool.connect_all(parallel=options.connect_parallelism)
        live = [i for i in range(len(records)) if pool.is_connected(i)]
        if not live:
            first = next(iter(connect.failures.values()), "unknown")
            raise UnavailableError(
                f"No device could connect to the MQTT broker at {pool.host}:{pool.port} "
                f"(first failure: {first}). Is Mosquitto running with the configuration in "
                f"{options.broker_dir}?",
                reason="broker-down",
            )
        if fleet.privileged is not None and not pool.is_connected(fleet.privileged):
            raise UnavailableError(
                f"The privileged publisher {options.privileged_publisher!r} could not connect: "
                f"{connect.failures.get(pool.client_id(fleet.privileged))}.",
                reason="broker-refused",
            )
        elapsed = _publish_loop(fleet, live, options, stop, on_progress)
        return fleet.snapshot(connect=connect, elapsed=elapsed, interrupted=stop.is_set())
    finally:
        pool.close()
        state.save()


def _publish_loop(
    fleet: _Fleet,
    live: list[int],
    options: FleetOptions,
    stop: threading.Event,
    on_progress: Callable[[FleetProgress], None] | None,
) -> float:
    pool = fleet.pool
    # Never more unacknowledged than a second's worth (at least 100): a stalled broker must not
    # grow this process's memory without bound.
    window = max(100, int(options.rate))
    start = time.monotonic()
    end = start + options.duration
    next_progress = start + options.progress_every
    scheduled = 0
    now = start
    while now < end and not stop.is_set():
        due = int((now - start) * options.rate) + 1 - scheduled
        # A burst is capped so that reading PUBACKs is never starved.
        for _ in range(min(due, 200)):
            if len(fleet.pending) >= window:
                break
            if not fleet.send_one(live):
                stop.set()  # every device dropped its connection
                break
            scheduled += 1
        now = time.monotonic()
        next_due = start + scheduled / options.rate
        pool.poll(max(0.0, min(next_due - now, end - now, 0.05)))
        now = time.monotonic()
        if now >= next_progress and on_progress is not None:
            on_progress(fleet.progress(now - start))
            next_progress += options.progress_every
            fleet.state.save()
    elapsed = time.monotonic() - start
    # Drain: wait (briefly) for the PUBACKs still due.
    deadline = time.monotonic() + 5.0
    while fleet.pending and time.monotonic() < deadline and not stop.is_set():
        pool.poll(0.05)
    return elapsed
