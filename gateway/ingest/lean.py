"""A lean MQTT 5 subscriber for the ingest receiver's hot path: ~6x less CPU a message than paho.

Why (measured, ``docs/adr/0004-lean-mqtt-receiver.md``): the partitioned receiver's ceiling is
its MQTT receive path, and paho spends ~39 us of CPU on each message (three or four SSL reads per
packet, an MQTTMessage and a Properties object, per-packet bookkeeping). :class:`LeanSubscriber`
does only what :class:`~gateway.service.receiver.IngestReceiver` needs -- one persistent QoS 1
subscription, manual PUBACK, reconnect -- with the public surface the receiver uses of
:class:`~gateway.ingest.mqtt.MqttClient`, and the same contracts:

* delivery tags: connection number << 16 | packet id; :meth:`LeanSubscriber.ack_many` sends a
  PUBACK only for a tag of the current connection that is still outstanding (MQTT 5 §4.3.2, ack
  after commit; a reconnect redelivers what was not acknowledged, §4.4);
* errors: :class:`~gateway.core.errors.UnavailableError` with reason ``broker-down``,
  ``broker-refused``, ``broker-timeout`` or ``tls-config``;
* TCP_NODELAY, and every subscription made again after a reconnect.

Not supported, on purpose: QoS 2, topic aliases (we announce Topic Alias Maximum 0), enhanced
authentication (AUTH), publishing. paho stays for all of that (urgent lane, devices, shared mode).

Threads and TLS: OpenSSL forbids using one SSL object from two threads at once. So the socket
is plain TCP and TLS runs over memory BIOs (``SSLContext.wrap_bio``); every use of the SSL object
happens under one small per-connection lock (``tls_lock``) and never across a blocking call:

* the *reader* thread (``mqtt-reader``) does ``recv_into`` a reused 256 KiB buffer with no lock
  held, then feeds the bytes in and drains the cleartext under ``tls_lock``, then parses whole
  packets and calls
  the handler -- on this thread, with no lock held, so a handler that blocks (the receiver's
  credit counter) stops reading: TCP back-pressure, and nothing is buffered beyond one read;
* writers (``ack_many`` from the receiver's acker threads, PINGREQ from the ``mqtt-keepalive``
  thread, SUBSCRIBE, DISCONNECT) hold ``write_lock`` across encrypt and ``sendall``, so TLS
  records leave in the order they were made; ``tls_lock`` is taken inside it, briefly. Lock order
  is always write_lock, then tls_lock; the reader never holds tls_lock while waiting for
  write_lock.

The reader also owns failure: a server DISCONNECT, EOF, a socket or TLS error, a protocol
violation, or 1.5x the keep-alive with no byte from the broker (watched by the keep-alive
thread, §3.1.2.10) ends the connection; its outstanding tags are dropped, and the reader
reconnects with backoff (1 s doubling to 30 s) until :meth:`LeanSubscriber.disconnect`,
subscribing again every time. The delay starts over only after a connection has lasted
``_STABLE_S``: a broker (or a message) that breaks every connection at once is retried ever
later, not every second for ever.

:meth:`LeanSubscriber.disconnect` does not wait for a reader that is blocked in the handler
(back-pressure): the connection is closed under it, and once the handler returns the reader
hands on nothing more and ends. Each :meth:`~LeanSubscriber.connect` starts threads with a stop
signal of their own, so such a straggler can never reconnect behind a later connection.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Self

from gateway.core.errors import UnavailableError
from gateway.ingest import _mqtt5 as wire
from gateway.ingest.broker_config import ClientCredentials
from gateway.ingest.mqtt import MessageHandler, client_tls_context
from gateway.ingest.topics import shared_filter

__all__ = ["LeanSubscriber"]

logger = logging.getLogger(__name__)

_TAG_BITS = 16  # MQTT packet identifiers are 16-bit (§2.2.1)
_READ_SIZE = 256 * 1024  # one recv; also the most cleartext buffered beyond one packet
# A read of less than this waits _COALESCE_S and takes what came meanwhile with it: interrupt
# coalescing. Under load it cut wake-ups 6x and CPU a message from ~6.3 to ~3.9 us (ADR 0004);
# the price is at most half a millisecond of latency, next to a batch_ms of tens.
_COALESCE_BYTES = 4096
_COALESCE_S = 0.0005
_RECORD_SIZE = 16 * 1024  # the largest TLS record's cleartext (RFC 8446 §5.1)
_RECONNECT_MIN_S = 1.0
_RECONNECT_MAX_S = 30.0
_RECONNECT_TIMEOUT_S = 5.0
_STABLE_S = 60.0  # a connection that lasted this long was a good one: the backoff starts over
_STOP_JOIN_S = 10.0
_NO_KEEPALIVE_POLL_S = 1.0
_READER = "mqtt-reader"


def _remaining(deadline: float) -> float:
    """Seconds left before *deadline*; past it, :class:`TimeoutError`.

    Checked before every read while connecting: a broker that trickles its bytes (each read
    returns something) must not stretch ``connect(timeout)`` without bound.
    """
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


class _Lost(Exception):  # noqa: N818 - not an error to report, the reason a connection ended
    """Why a connection ended, as a phrase for the log."""


class _Connection:
    """One TLS connection: socket, TLS state over memory BIOs, and its outstanding deliveries."""

    def __init__(  # noqa: PLR0913 - the parts of one established connection
        self,
        sock: socket.socket,
        tls: ssl.SSLObject,
        *,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        epoch: int,
        keepalive: int,
        leftover: bytes,
    ) -> None:
        self.sock = sock
        self.tls = tls
        self.incoming = incoming
        self.outgoing = outgoing
        self.epoch = epoch
        self.keepalive = keepalive
        #: Cleartext that arrived with CONNACK (a session's backlog starts right behind it).
        self.leftover = leftover
        self.tls_lock = threading.Lock()
        self.write_lock = threading.Lock()
        #: Tags handed to the handler and not acknowledged yet; only ever touched under
        #: write_lock, except the reader's set.add (atomic) before it hands the tag out.
        self.outstanding: set[int] = set()
        self.alive = True
        #: Set by the keep-alive thread before it aborts a silent connection: the reader's reason.
        self.silent = False
        #: The broker's close_notify arrived: the next receive() reports the end.
        self.peer_closed = False
        self.last_sent = time.monotonic()
        #: When the reader began waiting in recv (0.0: it is not waiting, e.g. in the handler).
        self.waiting_since = 0.0
        #: The reader is parsing a read and calling the handler (it may block there).
        self.handing_on = False
        self.opened = time.monotonic()
        self._buffer = bytearray(_READ_SIZE)
        self._view = memoryview(self._buffer)

    def send_locked(self, packet: bytes) -> None:
        """Encrypt *packet* and send it; the caller holds ``write_lock`` (record order)."""
        with self.tls_lock:
            self.tls.write(packet)
            out = self.outgoing.read()
        self.sock.sendall(out)
        self.last_sent = time.monotonic()

    def send(self, packet: bytes) -> None:
        """Encrypt and send *packet*, in order with every other writer."""
        with self.write_lock:
            self.send_locked(packet)

    def receive(self) -> bytes:
        """Wait for bytes from the broker; return the cleartext (may be empty: TLS-only records).

        Raises :class:`_Lost` on EOF, TLS close or keep-alive silence, ``OSError`` /
        ``ssl.SSLError`` otherwise. Per call, not per message (measured, ADR 0004): one
        ``recv_into`` a reused buffer (no 256 KiB allocation), no socket timeout (that is a
        ``poll`` before every ``recv``; the keep-alive thread watches silence instead), and no
        ``SSLWantReadError`` raised when the bytes end on a record boundary; and a short read
        waits half a millisecond for more (``_COALESCE_S``), so a wake-up carries several
        messages rather than one or two.
        """
        if self.peer_closed:
            reason = "the broker closed the TLS session"
            raise _Lost(reason)
        self.waiting_since = time.monotonic()
        n = self.sock.recv_into(self._buffer)
        self.waiting_since = 0.0
        if 0 < n < _COALESCE_BYTES:
            time.sleep(_COALESCE_S)
            with contextlib.suppress(BlockingIOError):
                n += self.sock.recv_into(self._view[n:], 0, socket.MSG_DONTWAIT)
        if not n:
            reason = "the broker closed the connection"
            if self.silent:
                reason = f"nothing from the broker for 1.5x the keep-alive ({self.keepalive} s)"
            raise _Lost(reason)
        chunks = []
        tls, incoming = self.tls, self.incoming
        with self.tls_lock:
            incoming.write(self._view[:n])
            try:
                while incoming.pending or tls.pending():
                    chunk = tls.read(_RECORD_SIZE)  # one record's cleartext
                    if not chunk:  # close_notify: first hand on what came before (DISCONNECT)
                        self.peer_closed = True
                        break
                    chunks.append(chunk)
            except ssl.SSLWantReadError:
                pass  # the rest of a record is still on its way
            pending = self.outgoing.pending
        if pending:  # e.g. a TLS 1.3 KeyUpdate answer: sent in order with the other writers
            with self.write_lock:
                with self.tls_lock:
                    out = self.outgoing.read()
                self.sock.sendall(out)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def abort(self) -> None:
        """Mark dead, drop the outstanding tags, wake the reader (shutdown, not close)."""
        self.alive = False
        self.outstanding.clear()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Release the socket (after :meth:`abort`; no writer can be inside it then)."""
        self.abort()
        with self.write_lock:
            self.sock.close()


class LeanSubscriber:
    """A minimal MQTT 5 QoS 1 subscriber over TLS with a client certificate; see module docstring.

    *on_message(topic, payload, tag, qos, {})* runs on the reader thread; :meth:`ack`,
    :meth:`ack_many` and :meth:`subscribe` may be called from any thread. Use as a context
    manager, or call :meth:`connect` and :meth:`disconnect`.
    """

    def __init__(  # noqa: PLR0913 - connection settings, all keyword-only
        self,
        credentials: ClientCredentials,
        *,
        host: str,
        port: int,
        on_message: MessageHandler,
        session_expiry: int,
        receive_maximum: int,
        keepalive: int = 30,
    ) -> None:
        """Check the settings; nothing is opened until :meth:`connect`."""
        if not 1 <= receive_maximum <= 0xFFFF:  # §3.1.2.11.3: a two-byte integer, never 0
            msg = f"receive_maximum must be 1..65535, not {receive_maximum}"
            raise ValueError(msg)
        if not 0 <= keepalive <= 0xFFFF or not 0 <= session_expiry <= 0xFFFFFFFF:
            msg = "keepalive must fit two bytes and session_expiry four (§3.1.2.10, §3.1.2.11.2)"
            raise ValueError(msg)
        self.credentials = credentials
        self.host = host
        self.port = port
        self.session_expiry = session_expiry
        self.receive_maximum = receive_maximum
        self.keepalive = keepalive
        self._on_message = on_message
        #: Whether the broker still held our session at the last CONNACK (§3.2.2.1.1).
        self.session_present = False

        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._epoch = 0
        self._next_packet_id = 0
        self._subacks: dict[int, list[int] | None] = {}
        self._subscriptions: list[tuple[str, int]] = []
        self._conn: _Connection | None = None
        #: This run's stop signal: each connect() makes a new one and hands it to its threads.
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._tls: ssl.SSLContext | None = None
        self._retry_delay = 0.0  # the next reconnect's first wait, if the last one was short

    # --- lifecycle ------------------------------------------------------------------------

    def connect(self, timeout: float = 5.0) -> None:
        """Connect over TLS and wait for CONNACK; raise :class:`UnavailableError` if refused.

        Then the reader and keep-alive threads run until :meth:`disconnect`, reconnecting by
        themselves after a loss.
        """
        if self._threads:
            if self.connected:
                return
            self.disconnect()
        stopping = threading.Event()
        self._stopping = stopping
        self._retry_delay = 0.0
        self._conn = self._open(timeout)
        self._threads = [
            threading.Thread(
                target=self._read_forever, args=(stopping,), name=_READER, daemon=True
            ),
            threading.Thread(
                target=self._keep_alive, args=(stopping,), name="mqtt-keepalive", daemon=True
            ),
        ]
        for thread in self._threads:
            thread.start()

    def disconnect(self) -> None:
        """Send DISCONNECT (Normal: the session and anything unacknowledged stay), then close.

        Returns at once even if the reader is blocked in the handler: that call returns when the
        handler does, and no message is handed on after it (the broker redelivers them).
        """
        with self._lock:  # _reconnect installs a new connection only under it, if not stopping
            self._stopping.set()
            conn = self._conn
        if conn is not None and conn.alive:
            with contextlib.suppress(OSError, ssl.SSLError), conn.write_lock:
                conn.send_locked(wire.disconnect_packet())
                with conn.tls_lock, contextlib.suppress(ssl.SSLError):
                    conn.tls.unwrap()  # close_notify (RFC 8446 §6.1); the peer's is not awaited
                with conn.tls_lock:
                    out = conn.outgoing.read()
                conn.sock.sendall(out)
        if conn is not None:
            conn.abort()
        deadline = time.monotonic() + _STOP_JOIN_S
        for thread in self._threads:
            if thread is threading.current_thread():
                continue
            while thread.is_alive() and time.monotonic() < deadline:
                current = self._conn
                if thread.name == _READER and current is not None and current.handing_on:
                    break  # blocked in the handler, maybe until we return: it ends by itself
                thread.join(0.02)
        self._threads = []
        conn = self._conn  # the reader may have reconnected meanwhile
        if conn is not None:
            conn.close()
        with self._changed:
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
        """Whether the connection is up right now (it reconnects by itself after a loss)."""
        conn = self._conn
        return conn is not None and conn.alive and not self._stopping.is_set()

    def _where(self) -> str:
        return f"the MQTT broker at {self.host}:{self.port}"

    def _open(self, timeout: float) -> _Connection:
        """TCP, TLS handshake, CONNECT, CONNACK: an established connection, or the error."""
        if self._tls is None:
            self._tls = client_tls_context(self.credentials)
        deadline = time.monotonic() + timeout
        try:
            sock = socket.create_connection((self.host, self.port), timeout=timeout)
        except OSError as exc:
            msg = f"Cannot reach {self._where()}: {exc}."
            raise UnavailableError(msg, reason="broker-down") from exc
        try:
            return self._establish(sock, deadline, timeout)
        except BaseException:
            sock.close()
            raise

    def _establish(self, sock: socket.socket, deadline: float, timeout: float) -> _Connection:
        # Nagle off: a batch of PUBACKs must not wait for the broker's delayed ACK (40 ms on
        # Linux); Mosquitto turns it off on its side too (`set_tcp_nodelay`, broker_config).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert self._tls is not None
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self._tls.wrap_bio(incoming, outgoing, server_hostname=self.host)
        try:
            self._handshake(sock, tls, incoming, outgoing, deadline)
            sock.settimeout(_remaining(deadline))
            hello = wire.connect_packet(
                self.credentials.client_id,
                keepalive=self.keepalive,
                session_expiry=self.session_expiry,
                receive_maximum=self.receive_maximum,
            )
            tls.write(hello)
            sock.sendall(outgoing.read())
            connack, body, leftover = self._read_connack(sock, tls, incoming, deadline)
        except ssl.SSLCertVerificationError as exc:
            msg = (
                f"{self._where()} presented a certificate that the site CA "
                f"{self.credentials.cafile} does not vouch for ({exc.verify_message}). Check "
                "that broker.host names the site broker and that the CA file is this site's."
            )
            raise UnavailableError(msg, reason="tls-config") from exc
        except TimeoutError as exc:
            # Silence is not a refusal: the broker is overloaded, hung, or not an MQTT broker.
            msg = (
                f"The MQTT broker at {self.host}:{self.port} did not complete the TLS handshake "
                f"and CONNACK for client {self.credentials.client_id!r} within {timeout:g} s. "
                "Check that the broker is running and not overloaded."
            )
            raise UnavailableError(msg, reason="broker-timeout") from exc
        except (OSError, ssl.SSLError, wire.ProtocolError, _Lost) as exc:
            raise self._refused(str(exc)) from exc
        del body
        if connack.reason >= 0x80:
            why = wire.reason_text(connack.reason)
            if connack.reason_string:
                why = f"{why}: {connack.reason_string}"
            raise self._refused(why)
        keepalive = self.keepalive if connack.server_keepalive is None else connack.server_keepalive
        sock.settimeout(None)  # silence is the keep-alive thread's to judge (see receive())
        with self._lock:
            self._epoch += 1
            epoch = self._epoch
        self.session_present = connack.session_present
        return _Connection(
            sock,
            tls,
            incoming=incoming,
            outgoing=outgoing,
            epoch=epoch,
            keepalive=keepalive,
            leftover=leftover,
        )

    def _refused(self, why: str) -> UnavailableError:
        return UnavailableError(
            f"The MQTT broker at {self.host}:{self.port} did not accept client "
            f"{self.credentials.client_id!r} ({why}). Check that its certificate is issued by "
            "a CA the broker trusts and is not revoked.",
            reason="broker-refused",
        )

    @staticmethod
    def _handshake(
        sock: socket.socket,
        tls: ssl.SSLObject,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        deadline: float,
    ) -> None:
        """Pump the memory BIOs until the TLS handshake is done (the caller's thread, no lock)."""
        while True:
            try:
                tls.do_handshake()
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    sock.sendall(outgoing.read())
                sock.settimeout(_remaining(deadline))
                data = sock.recv(_READ_SIZE)
                if not data:
                    reason = "the broker closed the connection during the TLS handshake"
                    raise _Lost(reason) from None
                incoming.write(data)
            else:
                if outgoing.pending:
                    sock.sendall(outgoing.read())
                return

    @staticmethod
    def _read_connack(
        sock: socket.socket, tls: ssl.SSLObject, incoming: ssl.MemoryBIO, deadline: float
    ) -> tuple[wire.Connack, bytes, bytes]:
        """Read until CONNACK; return it, its body, and any bytes after it."""
        data = b""
        while (found := wire.next_packet(data)) is None:
            sock.settimeout(_remaining(deadline))
            raw = sock.recv(_READ_SIZE)
            if not raw:
                # TLS 1.3: the broker checks our certificate after the handshake and drops us.
                reason = "the broker closed the connection before CONNACK"
                raise _Lost(reason)
            incoming.write(raw)
            with contextlib.suppress(ssl.SSLWantReadError):
                while chunk := tls.read(_READ_SIZE):
                    data += chunk
        first, head, end = found
        if first != wire.CONNACK << 4:
            raise wire.ProtocolError(wire.PROTOCOL_ERROR, "the first packet is not CONNACK")
        body = data[head:end]
        return wire.parse_connack(body), body, data[end:]

    # --- the reader thread ---------------------------------------------------------------------

    def _read_forever(self, stopping: threading.Event) -> None:
        conn = self._conn
        while conn is not None and not stopping.is_set():
            try:
                self._read(conn)
            except wire.ProtocolError as exc:
                reason = f"protocol error: {exc}"
                with contextlib.suppress(OSError, ssl.SSLError):
                    conn.send(wire.disconnect_packet(exc.code))  # §4.13: say why, then close
            except _Lost as exc:
                reason = str(exc)
            except (OSError, ssl.SSLError) as exc:
                reason = f"connection error: {exc}"
            if conn.silent:  # we ended it; the broker's answer to that (a reset) is not the why
                reason = f"nothing from the broker for 1.5x the keep-alive ({conn.keepalive} s)"
            lived = time.monotonic() - conn.opened
            conn.close()
            with self._changed:
                self._changed.notify_all()  # a subscribe() waiting for its SUBACK gives up
            if stopping.is_set():
                return
            conn = self._reconnect(reason, lived, stopping)

    def _reconnect(
        self, reason: str, lived: float, stopping: threading.Event
    ) -> _Connection | None:
        """Reconnect with backoff until it works (or we stop); subscribe again every time.

        The first wait is _RECONNECT_MIN_S after a connection that lasted _STABLE_S, and
        otherwise twice the last one: a broker that ends every connection at once (a protocol
        error on each, a poison message) is retried ever later, up to _RECONNECT_MAX_S.
        """
        delay = max(_RECONNECT_MIN_S, 0.0 if lived >= _STABLE_S else self._retry_delay)
        who = self.credentials.client_id
        logger.warning(
            "MQTT client %s lost its connection (%s); reconnecting in %.2g s", who, reason, delay
        )
        while not stopping.wait(delay):
            try:
                conn = self._open(_RECONNECT_TIMEOUT_S)
            except UnavailableError as err:
                delay = min(_RECONNECT_MAX_S, delay * 2)
                logger.warning("MQTT client %s: %s Retrying in %.2g s.", who, err, delay)
                continue
            with self._lock:  # disconnect() sets stopping under it: no connection slips past
                if not stopping.is_set():
                    self._conn = conn
            if stopping.is_set():
                conn.close()
                return None
            self._retry_delay = min(_RECONNECT_MAX_S, delay * 2)
            # Subscribe again even when the session is present: a session that expired while
            # away has none (§4.1), and Mosquitto 2.0.11 restores a persistent SHARED
            # subscription after a broker restart but routes nothing to it until it is made
            # again (tests/service/test_crash_restart.py). Re-subscribing replaces (§3.8.4).
            # The SUBACKs arrive on this thread, in _control; a refusal is logged there.
            with self._lock:
                subscriptions = list(self._subscriptions)
            try:
                for full, qos in subscriptions:
                    conn.send(wire.subscribe_packet(self._packet_id(), full, qos))
            except (OSError, ssl.SSLError) as exc:
                logger.warning("MQTT client %s: re-subscribing failed: %s", who, exc)
                conn.abort()  # the reader sees it at once and starts over
            logger.info(
                "MQTT client %s reconnected (session present: %s)", who, self.session_present
            )
            return conn
        return None

    def _read(self, conn: _Connection) -> None:
        """Receive, parse and hand on packets until the connection ends (by an exception)."""
        outstanding_add = conn.outstanding.add
        base = conn.epoch << _TAG_BITS
        handler = self._on_message

        def deliver(topic: str, payload: bytes, packet_id: int, qos: int) -> None:
            if not conn.alive:
                # Aborted (disconnect() while a handler call blocked, silence, a failed write):
                # its tags can never be acknowledged, so hand on nothing more of this read.
                reason = "the connection was closed while messages were being handed on"
                raise _Lost(reason)
            tag = 0
            if qos:
                tag = base | packet_id
                outstanding_add(tag)
            try:
                handler(topic, payload, tag, qos, {})
            except Exception:
                # Left unacknowledged: redelivered after a reconnect. Raising here would end the
                # connection for every other message too.
                logger.exception("message handler failed on %s; left unacknowledged", topic)

        parse = wire.parse_packets
        data = conn.leftover
        while True:
            if data:
                conn.handing_on = True  # per read, not per message: the hot path stays lean
                try:
                    used = parse(data, deliver, self._control)
                finally:
                    conn.handing_on = False
                data = data[used:] if used else data
            chunk = conn.receive()
            data = data + chunk if data else chunk

    def _control(self, first: int, body: bytes) -> None:
        """Every packet but PUBLISH (reader thread)."""
        kind = first >> 4
        if first == wire.SUBACK << 4:
            packet_id, codes = wire.parse_suback(body)
            with self._changed:
                if packet_id in self._subacks:
                    self._subacks[packet_id] = codes
                    self._changed.notify_all()
                    return
            bad = [c for c in codes if c >= 0x80]
            if bad:
                logger.error(
                    "MQTT client %s: the broker refused a subscription made again after a "
                    "reconnect: %s; no messages arrive for it",
                    self.credentials.client_id,
                    wire.reason_text(bad[0]),
                )
        elif first == wire.PINGRESP << 4:
            return
        elif first == wire.DISCONNECT << 4:
            code, text = wire.parse_disconnect(body)
            reason = f"the broker disconnected us: {wire.reason_text(code)}"
            raise _Lost(f"{reason}: {text}" if text else reason)
        else:
            msg = f"unexpected packet of type {kind} (flags 0x{first & 0xF:x})"
            raise wire.ProtocolError(wire.PROTOCOL_ERROR, msg)

    # --- the keep-alive thread --------------------------------------------------------------

    def _keep_alive(self, stopping: threading.Event) -> None:
        """PINGREQ after the keep-alive with nothing sent; end a connection silent for 1.5x.

        MQTT 5 §3.1.2.10: the client must send something within each keep-alive period, and
        may close a connection whose PINGRESP does not come "within a reasonable amount of
        time" (§3.12.4): 1.5x, the broker's own limit. Silence counts only while the reader
        waits in recv: a reader held in the handler (back-pressure) has not looked.
        """
        while not stopping.is_set():
            conn = self._conn
            if conn is None or not conn.alive or not conn.keepalive:
                stopping.wait(_NO_KEEPALIVE_POLL_S)
                continue
            now = time.monotonic()
            since = conn.waiting_since
            if since and now - since > 1.5 * conn.keepalive:
                conn.silent = True
                conn.abort()  # the reader's recv returns, and it reconnects
                continue
            ping_due = conn.last_sent + conn.keepalive - now
            if ping_due <= 0:
                try:
                    conn.send(wire.PINGREQ)
                except (OSError, ssl.SSLError):
                    conn.abort()
                continue
            silent_due = (since + 1.5 * conn.keepalive - now) if since else conn.keepalive / 4
            stopping.wait(max(0.01, min(ping_due, silent_due)))

    # --- receiving ------------------------------------------------------------------------

    def _packet_id(self) -> int:
        with self._lock:
            self._next_packet_id = self._next_packet_id % 0xFFFF + 1  # 1..65535 (§2.2.1)
            return self._next_packet_id

    def subscribe(
        self,
        topic_filter: str,
        *,
        qos: int = 1,
        share_group: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        """Subscribe and wait for SUBACK; with *share_group*, as an MQTT 5 shared subscription.

        Raises :class:`UnavailableError` if not connected, if no SUBACK comes in *timeout*, or if
        it carries a failure reason code. (Mosquitto 2.0.11 grants subscriptions the ACL does
        not allow, then withholds the messages.)
        """
        full = shared_filter(topic_filter, share_group) if share_group else topic_filter
        conn = self._conn
        if conn is None or not self.connected:
            msg = f"Cannot subscribe to {full!r}: not connected to {self._where()}."
            raise UnavailableError(msg, reason="broker-down")
        packet_id = self._packet_id()
        with self._lock:
            self._subacks[packet_id] = None
        try:
            conn.send(wire.subscribe_packet(packet_id, full, qos))
        except (OSError, ssl.SSLError) as exc:
            with self._lock:
                self._subacks.pop(packet_id, None)
            conn.abort()
            msg = f"Cannot subscribe to {full!r}: {exc}."
            raise UnavailableError(msg, reason="broker-down") from exc
        with self._changed:
            self._changed.wait_for(
                lambda: self._subacks[packet_id] is not None or not conn.alive, timeout
            )
            codes = self._subacks.pop(packet_id)
        if codes is None:
            msg = f"The MQTT broker did not confirm subscription {full!r} within {timeout:g} s."
            raise UnavailableError(msg, reason="broker-timeout")
        bad = [c for c in codes if c >= 0x80]
        if bad:
            msg = (
                f"The MQTT broker refused subscription {full!r} for client "
                f"{self.credentials.client_id!r}: {wire.reason_text(bad[0])}."
            )
            raise UnavailableError(msg, reason="broker-refused")
        with self._lock:
            if (full, qos) not in self._subscriptions:
                self._subscriptions.append((full, qos))

    def ack(self, tag: int, qos: int) -> bool:
        """Acknowledge delivery *tag* now that it is committed; see :meth:`ack_many`."""
        return self.ack_many([(tag, qos)]) == 1

    def ack_many(self, deliveries: Iterable[tuple[int, int]]) -> int:
        """Acknowledge ``(tag, qos)`` deliveries in ONE write; return how many PUBACKs were sent.

        Skipped, never sent: QoS 0, a tag of an earlier connection (its packet id may now name
        another message; the broker redelivers the old one anyway), one already acknowledged.
        """
        conn = self._conn
        if conn is None:
            return 0
        with conn.write_lock:
            if not conn.alive:
                return 0
            epoch, outstanding = conn.epoch, conn.outstanding
            ids = []
            for tag, qos in deliveries:
                if qos and tag >> _TAG_BITS == epoch and tag in outstanding:
                    outstanding.discard(tag)
                    ids.append(tag & 0xFFFF)
            if not ids:
                return 0
            try:
                conn.send_locked(wire.puback_packets(ids))
            except (OSError, ssl.SSLError):
                conn.abort()  # the reader notices, reconnects; the broker redelivers these
                return 0
        return len(ids)
