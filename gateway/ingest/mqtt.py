"""A thin paho-mqtt 2.x adapter: TLS client certificate, MQTT 5 persistent session, manual ack.

The service layer sees only :class:`MqttClient` and :data:`MessageHandler`; paho's types and
exceptions stay in this module, mapped into :class:`~gateway.core.errors.UnavailableError` with the
broker's reason text where they enter.

Delivery contract (MQTT 5 §4.3.2, QoS 1 "at least once"):

* the session is persistent (Clean Start 0 and a Session Expiry Interval, §3.1.2.4 and
  §3.1.2.11.2), so messages published while the gateway is away are queued by the broker;
* acknowledgement is manual: PUBACK is sent only when the caller calls :meth:`MqttClient.ack`
  after its own commit; a message never acknowledged is sent again after a reconnect (§4.4), so
  a crash between receive and commit loses nothing (the store absorbs the duplicate);
* Receive Maximum (§3.1.2.11.3) bounds how many unacknowledged messages the broker sends at
  once, so a backlog queues in the broker, not in this process's memory.

Packet identifiers are reused by the broker as soon as they are acknowledged, and a reconnect makes
unacknowledged ones stale. The ``mid`` handed to the caller is therefore a *delivery tag*: the
packet id in its low 16 bits and the connection number above. :meth:`MqttClient.ack` sends a
PUBACK only for a tag of the current connection that is still outstanding; a late ack for an
earlier connection is dropped (the broker redelivers that message anyway), and can never
acknowledge another message that happens to reuse the packet id.

Per-message cost (measured with py-spy on this machine; the receive path is the ceiling of the
whole gateway, ``docs/BENCHMARKS.md``): paho formats a debug line for every packet whenever an
``on_log`` callback is set, properties included, so :class:`MqttClient` sets one only while it
connects; MQTT 5 properties are converted only when a message carries any; and
:meth:`MqttClient.ack_many` sends a batch's PUBACKs as ONE write (one TLS record, one wake-up of
paho's loop) instead of one per message.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway.core.errors import UnavailableError
from gateway.ingest.broker_config import ClientCredentials
from gateway.ingest.topics import shared_filter

__all__ = ["MessageHandler", "MqttClient", "client_tls_context"]

logger = logging.getLogger(__name__)

#: ``handler(topic, payload, mid, qos, properties)``; *mid* is the delivery tag to :meth:`ack`.
#: It runs on paho's network thread: hand the message to a queue and return, or keepalives and
#: every other delivery wait behind it.
MessageHandler = Callable[[str, bytes, int, int, dict[str, Any]], None]

_TAG_BITS = 16  # MQTT packet identifiers are 16-bit (§2.2.1)

#: A PUBACK with reason Success and no properties: type 4, remaining length 2, packet id
#: (MQTT 5 §3.4.2.1 allows omitting the reason code and properties then; paho sends this form).
_PUBACK = struct.Struct("!BBH")
_PUBACK_TYPE = 0x40


# paho's Properties is untyped; these two typed seams keep mypy strict everywhere else.
_new_properties: Callable[[int], Properties] = Properties

#: Instance attributes of a paho Properties object that carries no property: paho stores each
#: property received as one more attribute, so more than these means there is something to convert.
_EMPTY_PROPERTY_ATTRS = len(vars(_new_properties(PacketTypes.PUBLISH)))


def _properties_dict(props: Any) -> dict[str, Any]:  # noqa: ANN401 - paho's untyped Properties
    """MQTT 5 properties as a plain dict (``{"UserProperty": [(k, v)], ...}``)."""
    # props.json() walks all 27 property names (~3 us); device events usually carry none.
    if props is None or len(vars(props)) <= _EMPTY_PROPERTY_ATTRS:
        return {}
    return dict(props.json())


def client_tls_context(credentials: ClientCredentials) -> ssl.SSLContext:
    """Build an MQTT client's TLS context: the site CA, TLS 1.2 or later, its certificate.

    Raises :class:`UnavailableError` (``tls-config``) when the files cannot be loaded.
    """
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(credentials.cafile))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(credentials.certfile), str(credentials.keyfile))
    except (OSError, ssl.SSLError) as exc:
        raise UnavailableError(
            f"The TLS files of MQTT client {credentials.client_id!r} are unusable: {exc}.",
            reason="tls-config",
        ) from exc
    return ctx


def _reason_text(rc: object) -> str:
    if isinstance(rc, ReasonCode):
        return f"{rc.getName()} (0x{rc.value:02x})"
    if isinstance(rc, int):
        return paho.error_string(rc)
    return str(rc)


class MqttClient:
    """One MQTT 5 connection to the site broker, authenticated by a client certificate.

    Callbacks run on paho's network thread; :meth:`ack`, :meth:`publish` and :meth:`subscribe`
    may be called from any thread. Use as a context manager, or call :meth:`connect` and
    :meth:`disconnect`.
    """

    def __init__(  # noqa: PLR0913 - connection settings, all keyword-only and defaulted
        self,
        credentials: ClientCredentials,
        *,
        host: str,
        port: int,
        on_message: MessageHandler | None = None,
        session_expiry: int = 7 * 24 * 3600,  # away longer: the broker drops session and queue
        receive_maximum: int = 100,
        keepalive: int = 30,
    ) -> None:
        self.credentials = credentials
        self.host = host
        self.port = port
        self.session_expiry = session_expiry
        self.receive_maximum = receive_maximum
        self.keepalive = keepalive
        self._on_message = on_message
        #: Whether the broker still held our session at the last CONNACK (§3.2.2.1.1).
        self.session_present = False

        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._epoch = 0
        self._outstanding: set[int] = set()
        self._connected = False
        self._leaving = False  # disconnect() was called: the next drop is ours
        self._failure: str | None = None
        self._puback: dict[int, ReasonCode] = {}
        self._awaiting_sub: dict[int, list[ReasonCode] | None] = {}
        self._subscriptions: list[tuple[str, int]] = []

        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=credentials.client_id,
            protocol=paho.MQTTv5,
            manual_ack=True,
        )
        self._client.enable_logger(logger)
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.on_connect = self._handle_connect
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_message = self._handle_message
        self._client.on_publish = self._handle_publish
        self._client.on_subscribe = self._handle_subscribe
        self._last_error: str | None = None
        self._tls_ready = False

    # --- lifecycle ------------------------------------------------------------------------

    def connect(self, timeout: float = 5.0) -> None:
        """Connect over TLS and wait for CONNACK; raise :class:`UnavailableError` if refused."""
        where = f"the MQTT broker at {self.host}:{self.port}"
        if not self._tls_ready:
            self._client.tls_set_context(self._tls_context())
            self._tls_ready = True
        props = _new_properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry
        props.ReceiveMaximum = self.receive_maximum
        self._reset_failure()
        # Only while connecting: with on_log set, paho formats a debug line for every packet
        # (module docstring). What it reports here (e.g. a TLS alert) explains a refusal.
        self._client.on_log = self._handle_log
        try:
            self._client.connect(
                self.host, self.port, self.keepalive, clean_start=False, properties=props
            )
        except (OSError, ssl.SSLError) as exc:
            self._client.on_log = None
            raise UnavailableError(f"Cannot reach {where}: {exc}.", reason="broker-down") from exc
        self._client.loop_start()
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self._connected and self._failure is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            connected, failure, detail = self._connected, self._failure, self._last_error
        self._client.on_log = None
        if not connected:
            self._stop()
            # A TLS alert (e.g. "certificate revoked") shows only in paho's log: pass it on.
            why = failure or f"no CONNACK within {timeout:g} s"
            if detail:
                why = f"{why}; {detail}"
            raise UnavailableError(
                f"The MQTT broker at {self.host}:{self.port} did not accept client "
                f"{self.credentials.client_id!r} ({why}). Check that its certificate is issued "
                "by a CA the broker trusts and is not revoked.",
                reason="broker-refused",
            )

    def _reset_failure(self) -> None:
        # A method of its own: assigned inline, mypy would take these for None ever after,
        # not knowing that paho's thread sets them.
        with self._lock:
            self._failure = self._last_error = None
            self._leaving = False

    def _tls_context(self) -> ssl.SSLContext:
        return client_tls_context(self.credentials)

    def disconnect(self) -> None:
        """Disconnect cleanly; the session (and anything not acknowledged) stays on the broker."""
        self._stop()

    def _stop(self) -> None:
        # paho's network thread runs one more loop after DISCONNECT and logs "Client is not
        # connected" at ERROR for the socket it just closed: expected here, so not logged.
        self._client.disable_logger()
        with self._changed:
            self._leaving = True
        self._client.disconnect()
        self._client.loop_stop()
        self._client.enable_logger(logger)
        # paho 2.2's loop_start() makes a new wake-up socketpair without closing the previous
        # one, leaking two sockets per reconnect; close them while the loop is stopped.
        self._client._reset_sockets(sockpair_only=True)  # noqa: SLF001 - no public way to do this
        with self._changed:
            self._connected = False
            self._outstanding.clear()
            self._changed.notify_all()

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.disconnect()

    @property
    def connected(self) -> bool:
        """Whether the connection is up right now (paho reconnects by itself after a drop)."""
        with self._lock:
            return self._connected

    # --- receiving ------------------------------------------------------------------------

    def subscribe(
        self,
        topic_filter: str,
        *,
        qos: int = 1,
        share_group: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        """Subscribe and wait for SUBACK; with *share_group*, as an MQTT 5 shared subscription.

        Raises :class:`UnavailableError` if SUBACK carries a failure reason code. (Mosquitto
        2.0.11 grants subscriptions the ACL does not allow, then withholds the messages.)
        """
        full = shared_filter(topic_filter, share_group) if share_group else topic_filter
        codes = self._subscribe(full, qos, timeout)
        bad = [c for c in codes if c.is_failure]
        if bad:
            raise UnavailableError(
                f"The MQTT broker refused subscription {full!r} for client "
                f"{self.credentials.client_id!r}: {_reason_text(bad[0])}.",
                reason="broker-refused",
            )
        with self._lock:
            if (full, qos) not in self._subscriptions:
                self._subscriptions.append((full, qos))

    def _subscribe(self, full: str, qos: int, timeout: float) -> list[ReasonCode]:
        with self._changed:
            rc, mid = self._client.subscribe(full, options=SubscribeOptions(qos=qos))
            if rc != paho.MQTT_ERR_SUCCESS or mid is None:
                raise UnavailableError(
                    f"Cannot subscribe to {full!r}: {_reason_text(rc)}.", reason="broker-down"
                )
            self._awaiting_sub[mid] = None
            ok = self._changed.wait_for(lambda: self._awaiting_sub[mid] is not None, timeout)
            codes = self._awaiting_sub.pop(mid)
        if not ok or codes is None:
            raise UnavailableError(
                f"The MQTT broker did not confirm subscription {full!r} within {timeout:g} s.",
                reason="broker-timeout",
            )
        return codes

    def ack(self, mid: int, qos: int) -> bool:
        """Acknowledge delivery *mid* (the tag the handler got) now that it is committed.

        Returns False when there is nothing to acknowledge: QoS 0, a tag from an earlier
        connection, or one already acknowledged. The broker then redelivers the message (if it
        still needs to), and the store absorbs the duplicate.
        """
        if qos == 0:
            return False
        with self._lock:
            if mid >> _TAG_BITS != self._epoch or mid not in self._outstanding:
                return False
            self._outstanding.discard(mid)
            rc = self._client.ack(mid & 0xFFFF, qos)
        return bool(rc == paho.MQTT_ERR_SUCCESS)

    def ack_many(self, deliveries: Iterable[tuple[int, int]]) -> int:
        """Acknowledge many ``(tag, qos)`` deliveries at once; return how many PUBACKs were sent.

        Same rules as :meth:`ack` for each delivery, but the PUBACKs go out as one write: paho
        would otherwise make a TLS record and a wake-up of its network loop per PUBACK.
        """
        with self._lock:
            mids = []
            for tag, qos in deliveries:
                if qos == 0 or tag >> _TAG_BITS != self._epoch or tag not in self._outstanding:
                    continue
                self._outstanding.discard(tag)
                mids.append(tag & 0xFFFF)
            if not mids:
                return 0
            # Consecutive PUBACK packets are exactly what one ack() each would write (§3.4);
            # paho's queue takes them as one packet (no callback runs for a PUBACK it sends).
            packet = b"".join(_PUBACK.pack(_PUBACK_TYPE, 2, mid) for mid in mids)
            rc = self._client._packet_queue(_PUBACK_TYPE, packet, 0, 1)  # noqa: SLF001 - see above
        return len(mids) if rc == paho.MQTT_ERR_SUCCESS else 0

    # --- sending --------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, qos: int = 1, timeout: float = 5.0) -> None:
        """Publish; for QoS 1, wait for the broker's PUBACK.

        Raises :class:`UnavailableError` when the broker is unreachable, does not acknowledge in
        *timeout* seconds, or answers with a failure reason code (e.g. "Not authorized"). After a
        timeout paho may still deliver the message later: QoS 1 is at least once, and receivers
        absorb duplicates.
        """
        # Our lock is NOT held while calling paho here: paho holds its message lock while it runs
        # the PUBACK callback, which takes ours; the other order would deadlock.
        info = self._client.publish(topic, payload, qos=qos)
        error = self._outcome(topic, info, qos, time.monotonic() + timeout, timeout)
        if error is not None:
            raise error

    def publish_many(
        self, messages: Sequence[tuple[str, bytes]], qos: int = 1, timeout: float = 5.0
    ) -> list[UnavailableError | None]:
        """Publish every message first, then wait for their PUBACKs: one round trip, not N.

        Returns, per message in order, None when the broker acknowledged it or the
        :class:`UnavailableError` :meth:`publish` would have raised. (Serial publishes waited a
        round trip each: under a routine flood that was the urgent lane's p99, bench_urgent.)
        """
        infos = [self._client.publish(topic, payload, qos=qos) for topic, payload in messages]
        deadline = time.monotonic() + timeout
        return [
            self._outcome(topic, info, qos, deadline, timeout)
            for (topic, _), info in zip(messages, infos, strict=True)
        ]

    def _outcome(
        self, topic: str, info: paho.MQTTMessageInfo, qos: int, deadline: float, timeout: float
    ) -> UnavailableError | None:
        """Wait until *deadline* for the PUBACK of *info*; return the error, or None when acked."""
        if qos == 0 and info.rc == paho.MQTT_ERR_SUCCESS:
            return None
        try:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            published = info.is_published()
        except (RuntimeError, ValueError) as exc:
            error = UnavailableError(f"Cannot publish to {topic!r}: {exc}.", reason="broker-down")
            error.__cause__ = exc
            return error
        with self._lock:
            # paho runs on_publish before it marks the message published, so this is current.
            code = self._puback.pop(info.mid, None)
        if not published or code is None:
            return UnavailableError(
                f"The MQTT broker did not acknowledge a message on {topic!r} within {timeout:g} s.",
                reason="broker-timeout",
            )
        if code.is_failure:
            return UnavailableError(
                f"The MQTT broker refused a message on {topic!r}: {_reason_text(code)}.",
                reason="broker-refused",
            )
        return None

    # --- paho callbacks (network thread) ----------------------------------------------------

    def _no_delay(self) -> None:
        # paho leaves Nagle's algorithm on: a burst of small packets (an urgent lane's offers, a
        # batch of PUBACKs) then waits for the broker's delayed ACK, up to 40 ms on Linux.
        # Mosquitto turns it off on its side (`set_tcp_nodelay`, broker_config); we do on ours.
        sock = self._client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _handle_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        del client, userdata, properties
        with self._changed:
            if reason_code.is_failure:
                self._failure = _reason_text(reason_code)
            else:
                self._epoch += 1
                self._outstanding.clear()
                self._connected = True
                self._no_delay()
                self.session_present = bool(flags.session_present)
                # Subscribe again even when the session is present: a session that expired while
                # away has none (§4.1), and Mosquitto 2.0.11 restores a persistent session's
                # SHARED subscription after a broker restart (session_present=1) but routes no new
                # message to it until it is made again (measured: tests/service/
                # test_crash_restart.py). Re-subscribing an existing subscription only replaces it
                # (MQTT 5 §3.8.4).
                for full, qos in self._subscriptions:
                    self._client.subscribe(full, options=SubscribeOptions(qos=qos))
            self._changed.notify_all()

    def _handle_disconnect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        del client, userdata, flags, properties
        with self._changed:
            if not self._connected and self._failure is None:
                self._failure = _reason_text(reason_code)
            was_connected, self._connected = self._connected, False
            leaving = self._leaving
            self._changed.notify_all()
        if leaving or not was_connected:
            # Ours (every preflight probe and stop says goodbye), or a refused connect, which
            # connect() reports: nothing for an operator to act on.
            logger.debug("MQTT client %s disconnected: %s", self.credentials.client_id, reason_code)
        else:
            logger.warning(
                "MQTT client %s lost its connection (%s); reconnecting",
                self.credentials.client_id,
                _reason_text(reason_code),
            )

    def _handle_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        del client, userdata
        with self._lock:
            tag = (self._epoch << _TAG_BITS) | msg.mid
            if msg.qos > 0:
                self._outstanding.add(tag)
        if self._on_message is None:
            return
        props = _properties_dict(msg.properties)
        try:
            self._on_message(msg.topic, bytes(msg.payload), tag, msg.qos, props)
        except Exception:
            # Left unacknowledged: the broker redelivers it after a reconnect. Raising here would
            # kill paho's network thread and stop every delivery.
            logger.exception("message handler failed on %s; message left unacknowledged", msg.topic)

    def _handle_log(self, client: paho.Client, userdata: object, level: int, buf: str) -> None:
        del client, userdata
        if level == paho.MQTT_LOG_ERR:
            with self._lock:
                # The first error after a connect attempt is the cause; later ones are echoes.
                self._last_error = self._last_error or buf

    def _handle_publish(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        del client, userdata, properties
        with self._lock:
            # Keyed by packet id, so at most 65,535 entries; a stale one is overwritten before
            # the next publish with that id is marked published.
            self._puback[mid] = reason_code

    def _handle_subscribe(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        del client, userdata, properties
        with self._changed:
            if mid in self._awaiting_sub:
                self._awaiting_sub[mid] = reason_codes
                self._changed.notify_all()
