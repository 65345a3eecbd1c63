"""The MQTT side of ingest: one session receives, verifier processes verify and commit.

``partitioned`` mode (the default), :class:`IngestReceiver`: ONE persistent MQTT session
receives every device event and deals each message to one of ``ingest.workers`` verifier
processes (:mod:`gateway.service.verifier`) by the CRC-32 of the topic's device id. Each verifier
verifies and commits its batches and sends back what it committed; the receiver then PUBACKs
those messages, and only those (ack after commit, MQTT 5 §4.3.2).

Why this split (measured, ``docs/BENCHMARKS.md``): verification is the CPU cost (~120 us a
message, Ed25519 or P-256 plus X.509 re-checks), receiving is cheap, and the earlier layout --
every worker process on its own non-shared session, dropping the devices not hashed to it -- paid
the receive cost once per worker and made the broker send every message once per worker. One
receiver keeps a single copy of each message on the wire and in the broker,
keeps the restart safety of a non-shared persistent session (Mosquitto 2.0.11 loses
shared-subscription messages after a broker restart: ``tests/service/test_crash_restart.py``),
and still verifies one device's events in order in one process (no enrolment or key-rotation race).

Threads of the receiver process, per verifier ("lane"): a *sender* that cuts the lane's buffer
into batches (``batch_max`` messages, or ``batch_ms`` after the first) and writes them to the
verifier's pipe, and an *acker* that reads what the verifier committed, PUBACKs it in one write
(:meth:`~gateway.ingest.lean.LeanSubscriber.ack_many`) and records the batch's metrics. The MQTT
reader thread only appends to a lane's buffer.

The receiver's MQTT client is :class:`~gateway.ingest.lean.LeanSubscriber`, not paho: paho's
receive path cost ~39 us of CPU a message, the ceiling of the whole gateway; the lean subscriber
does only what this process needs (one QoS 1 subscription, manual PUBACK, reconnect) for a tenth
of that (``docs/adr/0004-lean-mqtt-receiver.md``). Everything else still uses paho.

Memory is bounded: the receiver announces Receive Maximum (MQTT 5 §3.1.2.11.3) of
``broker.receive_maximum`` per verifier, so the broker never has more unacknowledged messages out
to the gateway; and a credit counter of twice that (deliveries of a dropped connection may still
be in the verifiers while the broker redelivers them) blocks the reader thread -- TCP back-pressure
to the broker -- rather than let any buffer grow. The same counter bounds the bytes,
``ingest.in_flight_mb`` (32 MiB by default): Receive Maximum counts messages, and the broker
accepts packets of up to 8 MiB, so 2,000 large junk messages would otherwise be 16 GiB. Under a
flood the backlog waits in the broker (Mosquitto ``max_queued_messages``, raised by
``provgw broker-config``).

Failure: if a verifier dies, the messages it held are neither stored nor acknowledged, and the
broker resends them only after a reconnect. So the receiver stops (non-zero exit) and the
supervisor starts it again: new connection, redelivery, the store absorbs what was committed.
A ``kill -9`` of the receiver is the same story; its verifiers notice that their parent is gone.

``shared`` mode (:mod:`gateway.service.shared_worker`): each worker process runs the whole
pipeline on its own member session of an MQTT 5 shared subscription (§4.8.2). Kept for brokers
where shared subscriptions survive a restart; on Mosquitto 2.0.11 they do not (see above).

Memory: the receiver loads the verifiers' modules (core, store, cryptography) and forks the
verifiers before it starts any thread, so the three processes share those pages copy-on-write
(measured: 18 MB less PSS than spawned verifiers, ``docs/BENCHMARKS.md``).
"""

from __future__ import annotations

import gc
import importlib
import logging
import multiprocessing
import os
import sys
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Protocol

from gateway.core.errors import UnavailableError
from gateway.ingest.lean import LeanSubscriber
from gateway.ingest.topics import EVENT_FILTER
from gateway.service import child
from gateway.service.config import GatewayConfig, load_config
from gateway.service.metrics import IngestMetrics
from gateway.service.verifier import RawDelivery, run_verifier

__all__ = [
    "IngestReceiver",
    "LaneMemo",
    "Subscriber",
    "connect_and_subscribe",
    "lane_of",
    "run_worker",
]

_log = logging.getLogger(__name__)

_RECEIVE_MAXIMUM_LIMIT = 65535  # a two-byte integer (MQTT 5 §3.1.2.11.3)
_VERIFIER_STOP_S = 10.0
_DEVICE_SEGMENT = 4  # provgw/v1/{site}/dev/{device}/evt/{type}


def lane_of(topic: str, lanes: int) -> int:
    """Which verifier gets *topic*'s messages: CRC-32 of the device id, modulo *lanes*.

    One device always maps to one verifier, so its events are verified in order by one process.
    A topic without a device segment goes to verifier 0, which quarantines it (``bad-topic``).
    """
    parts = topic.split("/", _DEVICE_SEGMENT + 1)
    if lanes == 1 or len(parts) <= _DEVICE_SEGMENT:
        return 0
    return zlib.crc32(parts[_DEVICE_SEGMENT].encode()) % lanes


class LaneMemo:
    """:func:`lane_of` for *lanes*, remembered per topic (0.45 us a message saved, measured).

    At most *limit* topics are kept (a fleet's devices times its event types, and then some);
    past that it starts again, so a flood of made-up topics cannot grow it.
    """

    def __init__(self, lanes: int, limit: int = 100_000) -> None:
        self.lanes = lanes
        self.limit = limit
        self.known: dict[str, int] = {}

    def __call__(self, topic: str) -> int:
        """Return *topic*'s lane."""
        index = self.known.get(topic)
        if index is None:
            if len(self.known) >= self.limit:
                self.known.clear()
            index = self.known[topic] = lane_of(topic, self.lanes)
        return index


class Subscriber(Protocol):
    """What :func:`connect_and_subscribe` needs: a LeanSubscriber or a paho MqttClient."""

    def connect(self, timeout: float = 5.0) -> None:
        """Connect; raise UnavailableError if the broker cannot be reached or refuses."""

    def subscribe(
        self,
        topic_filter: str,
        *,
        qos: int = 1,
        share_group: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        """Subscribe and wait for SUBACK; raise UnavailableError on a refusal or a timeout."""

    def disconnect(self) -> None:
        """Disconnect, keeping the session."""


def connect_and_subscribe(
    client: Subscriber,
    should_stop: Callable[[], bool],
    who: str,
    share_group: str | None = None,
) -> None:
    """Connect and subscribe, retrying with backoff (1 s doubling to 30 s) until it works.

    A broker that is restarting must not take ingest down; the supervisor's preflight check
    already reported a broker that was never reachable.
    """
    delay = 1.0
    while True:
        try:
            client.connect()
            # The broker may send a session's backlog before the SUBACK: allow for it.
            client.subscribe(EVENT_FILTER, timeout=30.0, qos=1, share_group=share_group)
        except UnavailableError as err:
            if should_stop():
                raise
            _log.warning("%s: %s; retrying in %.0f s", who, err, delay)
            client.disconnect()
            until = time.monotonic() + delay
            while time.monotonic() < until and not should_stop():
                time.sleep(0.05)
            if should_stop():
                raise
            delay = min(30.0, delay * 2)
        else:
            return


def run_worker(
    config_path: str,
    index: int,
    parent_pid: int,
    stop: child.Flag,
    ready: child.Flag,
) -> None:
    """Entry point of ingest process *index* (started by ``workers.Supervisor``).

    It lives here rather than beside the supervisor so that the process imports only what ingest
    needs (:mod:`gateway.service.launch` imports the module of its role's entry point).
    """
    config = load_config(Path(config_path))
    shared = config.ingest.mode == "shared"
    child.enter(child.ingest_role(index, shared=shared), config_path)

    def should_stop() -> bool:
        return child.stopping(stop, parent_pid)

    if shared:
        # Only then: that module imports the whole pipeline, which this process does not need.
        from gateway.service.shared_worker import IngestWorker  # noqa: PLC0415

        code = IngestWorker(config, index, IngestMetrics()).run(should_stop, ready.set)
    else:
        code = IngestReceiver(config, IngestMetrics()).run(should_stop, ready.set)
    sys.exit(code)


#: What a verifier process imports (:func:`~gateway.service.verifier.run_verifier`, and the store's
#: schema modules its :class:`~gateway.store.db.Database` imports), loaded here before the
#: verifiers are forked so that they share it (:meth:`IngestReceiver._start_lanes`).
_VERIFIER_MODULES = (
    "cryptography.hazmat.backends.openssl",
    "gateway.service.config",
    "gateway.service.ingest",
    "gateway.service.metrics",
    "gateway.store.db",
    "gateway.store.log_schema",
    "gateway.store.schema",
    "gateway.store.trust_files",
)


def _fork_context() -> multiprocessing.context.ForkContext:
    """Load and freeze the verifiers' modules; return the ``fork`` start method.

    Raises RuntimeError if a second thread runs: forking then is unsafe (see ``_start_lanes``).
    """
    if threading.active_count() != 1:
        names = ", ".join(t.name for t in threading.enumerate())
        msg = f"verifiers must be forked before the receiver starts threads (running: {names})"
        raise RuntimeError(msg)
    for name in _VERIFIER_MODULES:
        importlib.import_module(name)
    # Moves every object made so far out of the collector's reach: a collection in a verifier
    # would otherwise write to each object's GC header and copy every shared page it touches
    # (Python docs, gc.freeze).
    gc.collect()
    gc.freeze()
    return multiprocessing.get_context("fork")


def _run_forked_verifier(
    inherited: tuple[Connection, ...],
    args: tuple[str, int, Connection, Connection, int],
) -> None:
    """Entry point of a forked verifier: drop what it inherited from the receiver, then verify.

    *inherited*: the receiver's ends of every lane's pipes made so far, its own lane's included.
    A verifier holding another lane's ``results`` write side or its own ``batches`` write side
    would keep that pipe open after its real owner died: the receiver would never read EOF from
    a dead verifier, nor a verifier from a dead receiver.
    """
    for conn in inherited:
        conn.close()
    run_verifier(*args)


class _Credits:
    """At most *limit* deliveries, and *byte_limit* payload bytes, awaiting acknowledgement.

    Counted from the MQTT reader thread's hand-over to the acknowledgement; one delivery larger
    than *byte_limit* may pass, alone.

    *report(used)* (the ``in_flight`` gauge) is called under the lock, so a report can never
    overwrite a newer one; it runs after each acknowledged batch and from :meth:`report`.
    """

    def __init__(self, limit: int, byte_limit: int, report: Callable[[int], object]) -> None:
        self.limit = limit
        self.byte_limit = byte_limit
        self.used = 0
        self.used_bytes = 0
        self.closed = False
        self._cond = threading.Condition()
        self._report = report

    def take(self, size: int) -> bool:
        """Take one credit for *size* bytes, waiting while none is left; False once closed."""
        with self._cond:
            while not self.closed and (
                self.used >= self.limit
                or (self.used_bytes and self.used_bytes + size > self.byte_limit)
            ):
                self._cond.wait()
            if self.closed:
                return False
            self.used += 1
            self.used_bytes += size
            return True

    def give(self, n: int, size: int) -> None:
        """Give back *n* credits holding *size* bytes (an acknowledged batch)."""
        with self._cond:
            self.used -= n
            self.used_bytes -= size
            self._report(self.used)
            self._cond.notify_all()

    def report(self) -> None:
        with self._cond:
            self._report(self.used)

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


@dataclass(eq=False)
class _Lane:
    """One verifier process, its two pipes, and the deliveries not yet sent to it."""

    index: int
    process: BaseProcess
    to_verifier: Connection
    from_verifier: Connection
    buffer: list[RawDelivery] = field(default_factory=list)
    first: float = 0.0  # monotonic time the oldest buffered delivery arrived
    draining: bool = False
    cond: threading.Condition = field(default_factory=threading.Condition)
    threads: list[threading.Thread] = field(default_factory=list)


class IngestReceiver:
    """``partitioned`` mode: one MQTT session, ``ingest.workers`` verifier processes.

    :meth:`run` blocks until *should_stop()* is true (or a verifier died), then sends what is
    buffered, waits for the verifiers' last commits, acknowledges them, and disconnects (the
    session stays on the broker).
    """

    def __init__(self, config: GatewayConfig, metrics: IngestMetrics) -> None:
        self.config = config
        self.metrics = metrics
        settings = config.broker
        self.lanes = config.ingest.workers
        receive_maximum = min(_RECEIVE_MAXIMUM_LIMIT, settings.receive_maximum * self.lanes)
        self._credits = _Credits(
            2 * receive_maximum, config.ingest.in_flight_mb * 2**20, metrics.in_flight.set
        )
        self._client = LeanSubscriber(
            config.credentials(0),
            host=settings.host,
            port=settings.port,
            on_message=self._on_message,
            session_expiry=settings.session_expiry_s,
            receive_maximum=receive_maximum,
        )
        self._lanes: list[_Lane] = []
        self._lane_of = LaneMemo(self.lanes)  # reader thread only
        self._batch_max = config.ingest.batch_max
        self._batch_s = config.ingest.batch_ms / 1000
        self.failed: str | None = None

    @property
    def client(self) -> LeanSubscriber:
        """The receiver's MQTT client."""
        return self._client

    @property
    def verifier_pids(self) -> list[int]:
        """Process ids of the verifier processes."""
        return [lane.process.pid for lane in self._lanes if lane.process.pid is not None]

    # --- the MQTT reader thread ---------------------------------------------------------------

    def _on_message(
        self, topic: str, payload: bytes, tag: int, qos: int, properties: dict[str, Any]
    ) -> None:
        del properties
        if not self._credits.take(len(payload)):
            return  # stopping: left unacknowledged, redelivered after the restart
        lane = self._lanes[self._lane_of(topic)]
        now = time.monotonic()
        item = (topic, payload, tag, qos, time.time_ns() // 1_000_000, now)
        with lane.cond:
            lane.buffer.append(item)
            # The sender waits for the first message of a batch (to start the batch_ms clock)
            # and for a full one; nothing in between needs waking it.
            n = len(lane.buffer)
            if n == 1:
                lane.first = now
                lane.cond.notify()
            elif n == self._batch_max:
                lane.cond.notify()

    # --- per lane: sender and acker -----------------------------------------------------------

    def _next_batch(self, lane: _Lane) -> list[RawDelivery] | None:
        """Wait for a full batch, or one ``batch_ms`` old; None when drained and stopping."""
        with lane.cond:
            while True:
                n = len(lane.buffer)
                if n >= self._batch_max or (n and lane.draining):
                    break
                if n:
                    left = lane.first + self._batch_s - time.monotonic()
                    if left <= 0:
                        break
                    lane.cond.wait(left)
                elif lane.draining:
                    return None
                else:
                    lane.cond.wait(0.05)
            batch = lane.buffer[: self._batch_max]
            del lane.buffer[: self._batch_max]
            if lane.buffer:
                lane.first = lane.buffer[0][5]
            return batch

    def _send_loop(self, lane: _Lane) -> None:
        try:
            while (batch := self._next_batch(lane)) is not None:
                # Blocks while the verifier is busy with the previous batch: the buffer grows
                # meanwhile (bounded by the credits) and the next batch is a full one.
                lane.to_verifier.send(batch)
            lane.to_verifier.send(None)
        except OSError as exc:
            self._fail(f"verifier {lane.index} stopped reading ({exc})")

    def _ack_loop(self, lane: _Lane) -> None:
        while True:
            try:
                acks, stats, released = lane.from_verifier.recv()
            except (EOFError, OSError):
                if not lane.draining:
                    self._fail(f"verifier {lane.index} (pid {lane.process.pid}) died")
                return
            self._client.ack_many(acks)
            self._credits.give(len(acks), released)
            self.metrics.record_stats(stats)

    def _fail(self, why: str) -> None:
        if self.failed is None:
            self.failed = why
            _log.error("receiver: %s; stopping so that the supervisor restarts ingest", why)

    # --- lifecycle ------------------------------------------------------------------------------

    def _start_lanes(self) -> None:
        # Forked, not spawned (H22, measured with bench_ingest): a spawned verifier is a fresh
        # interpreter with its own private copy of every module it imports (cryptography, cbor2,
        # sqlite3, the gateway's core and store: ~20 MB each); forked from here, after the
        # receiver has imported them, the verifiers share those pages copy-on-write.
        # fork() copies only the calling thread, and a lock another thread held at that moment
        # stays locked forever in the child: so every verifier is forked before this process
        # starts any thread (the lanes' threads, the MQTT client's threads at connect).
        ctx = _fork_context()
        ours: list[Connection] = []  # this process's pipe ends: inherited by every later fork
        for index in range(self.lanes):
            batches_r, batches_w = ctx.Pipe(duplex=False)
            results_r, results_w = ctx.Pipe(duplex=False)
            ours += (batches_w, results_r)
            process = ctx.Process(
                target=_run_forked_verifier,
                args=(
                    tuple(ours),
                    (str(self.config.path), index, batches_r, results_w, os.getpid()),
                ),
                name=f"provgw-verifier-{index}",
                daemon=True,
            )
            process.start()
            # Our copies of the child's ends: closed, so a dead verifier reads as EOF here.
            batches_r.close()
            results_w.close()
            self._lanes.append(_Lane(index, process, batches_w, results_r))
        for lane in self._lanes:
            for role, target in (("send", self._send_loop), ("ack", self._ack_loop)):
                thread = threading.Thread(
                    target=target, args=(lane,), name=f"{role}-{lane.index}", daemon=True
                )
                lane.threads.append(thread)
                thread.start()

    def run(
        self, should_stop: Callable[[], bool], on_ready: Callable[[], object] = lambda: None
    ) -> int:
        """Ingest until *should_stop()*; call *on_ready()* once subscribed.

        Returns 0 after an orderly stop, 1 if a verifier died (the caller exits with it, and the
        supervisor restarts ingest).
        """
        self._start_lanes()
        try:
            connect_and_subscribe(
                self._client, lambda: should_stop() or self.failed is not None, "receiver"
            )
            on_ready()
            while not should_stop() and self.failed is None:
                self._credits.report()
                time.sleep(0.05)
        finally:
            self._shutdown()
        return 0 if self.failed is None else 1

    def _shutdown(self) -> None:
        # 1. Forward nothing more (what arrives now is redelivered after the restart), 2. send
        # what is buffered and tell each verifier to stop, 3. acknowledge their last commits,
        # 4. disconnect: the last PUBACKs are written before the DISCONNECT, so they go out first.
        self._credits.close()
        for lane in self._lanes:
            with lane.cond:
                lane.draining = True
                lane.cond.notify_all()
        deadline = time.monotonic() + _VERIFIER_STOP_S
        for lane in self._lanes:
            lane.process.join(max(0.1, deadline - time.monotonic()))
            if lane.process.exitcode is None:
                _log.error("verifier %d did not stop in time; killing it", lane.index)
                lane.process.kill()
                lane.process.join(5)
            for thread in lane.threads:
                thread.join(max(0.1, deadline - time.monotonic()))
        self._client.disconnect()
        self.metrics.in_flight.set(0)
        for lane in self._lanes:
            lane.to_verifier.close()
            lane.from_verifier.close()
