"""Process supervision for ``provgw serve``: ingest, ledger and urgent lane processes, metrics.

Slots the :class:`Supervisor` starts, watches, restarts with backoff and stops:

- the ingest process(es) (below);
- the ledger process (``[log]``, :mod:`gateway.service.ledger_service`): log, witnesses, chain;
- the urgent lane (``[urgent]``, :func:`gateway.service.urgent.run_urgent`): its own process,
  MQTT connection and client id (``gateway-urgent``), at a raised CPU priority (``urgent.nice``)
  when allowed, so neither routine ingest nor the ledger can hold up a patch (DESIGN "Urgent
  lane"). It shares nothing with ingest but the SQLite file (WAL: its reads never wait).

Ingest layout (``ingest.mode``), **measured on Mosquitto 2.0.11**
(``tests/service/test_crash_restart.py``, ``docs/BENCHMARKS.md``):

- ``partitioned`` (the default): ONE ingest process, the receiver
  (:class:`~gateway.service.receiver.IngestReceiver`), holds one persistent, non-shared MQTT
  session -- restored intact by a broker restart, queued while the gateway is away -- and deals
  each message to one of ``ingest.workers`` verifier processes by the hash of its device id; each
  verifier verifies and commits its batches (SQLite WAL: writers take turns under
  ``BEGIN IMMEDIATE`` and ``busy_timeout``), and the receiver acknowledges what they committed.
  Why not N processes each running the whole pipeline: in one Python process the paho network
  loop, COSE verification and SQLite share one GIL, and a non-shared session per worker makes
  every worker receive (and the broker send) every message -- N x the receive work. Receiving once
  and verifying in a pool costs the receive work once.
- ``shared`` (MQTT 5 shared subscription, §4.8.2): ``ingest.workers`` processes each run the
  whole pipeline (:class:`~gateway.service.shared_worker.IngestWorker`) as members of one shared
  subscription. The broker deals messages round-robin to the members, *offline persistent
  members included*, and queues them there until that member returns (also across a broker
  restart). But after a broker restart the restored shared subscription routes **nothing** until
  it is subscribed again, and a message a device publishes in that window is acknowledged to the
  device and dropped. (``MqttClient`` re-subscribes at every reconnect, which shortens the window
  but cannot close it: devices may reconnect first.)

Each ingest process has a stable client id (the receiver: ``gateway-routine``; shared members:
``gateway-routine``, ``gateway-routine-2``, ...), hence its own session: the supervisor restarts
one that dies under the same index (the receiver exits when one of its verifiers dies, so a
restart always comes with a reconnect and the redelivery of whatever was not acknowledged).
Change ``ingest.mode`` only with the broker's queues drained: a session that is no longer used
keeps what was queued for it.

Every process watches its parent: if ``provgw serve`` is killed (even ``kill -9``) they stop
within a batch window rather than linger and contend with a restarted gateway for their sessions.

Memory (issue 3, measured with ``bench/bench_ingest.py``'s per-process PSS): the supervisor
starts each child as a command of its own (:mod:`gateway.service.launch`: a fresh interpreter)
-- it restarts them while its metrics thread runs, and a fork beside a running thread may copy
a lock that thread holds; the receiver *forks* its verifiers before it starts any thread, after
loading their modules, so they share those pages. Not multiprocessing's ``spawn``: that adds a
resource tracker process and runs the ``provgw`` script again in each child. Not kept,
measured: a ``forkserver`` with the common modules preloaded (one more interpreter: more PSS,
not less). The start-up checks, and the first start's keys, are made in a short-lived child of
their own (:mod:`gateway.service.preflight`): the supervisor never imports the manifest, recall
and SBOM checks, paho, or the ledger's and the lane's key handling (7-9 MB less PSS, measured).

``stop`` (the supervisor to every child) and each child's ``ready`` are lock-free flags in
shared memory (:class:`gateway.service.child.Flag`), not ``multiprocessing.Event``: an Event
hangs the next ``set()`` once a child died waiting on it, and deadlocks when a child's SIGTERM
handler sets it (the module docstring of :mod:`gateway.service.child`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.core.errors import UnavailableError
from gateway.service import child, launch
from gateway.service.config import GatewayConfig, load_config
from gateway.service.metrics import (
    MetricsServer,
    mark_worker_dead,
    prepare_multiprocess_dir,
)
from gateway.service.preflight import run_checked
from gateway.store.db import Database
from gateway.store.events import EventStore
from gateway.store.trust_files import TrustFolder

__all__ = ["Supervisor", "ingest_processes", "serve"]

_log = logging.getLogger(__name__)

#: How long a stop waits for the children to finish (deploy/provgw.service allows more).
STOP_TIMEOUT_S = 15.0
_MAX_RESTART_DELAY_S = 30.0
_READY_TIMEOUT_S = 30.0
#: Slot index of the ledger process (gateway.service.ledger_service); workers count from 0.
_LEDGER = -1
#: Slot index of the urgent lane process (gateway.service.urgent).
_URGENT = -2
_NAMES = {_LEDGER: "ledger", _URGENT: "urgent lane"}


def ingest_processes(config: GatewayConfig) -> int:
    """How many ingest processes the supervisor runs: one receiver, or one per shared member."""
    return config.ingest.workers if config.ingest.mode == "shared" else 1


class _Child:
    """A started child as the supervisor watches it (:class:`subprocess.Popen` underneath)."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid: int | None = popen.pid

    @property
    def exitcode(self) -> int | None:
        """Its exit status once it ended (``-N``: killed by signal N), else None."""
        return self._popen.poll()

    def join(self, timeout: float) -> None:
        """Wait up to *timeout* seconds for it to end."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(timeout)

    def kill(self) -> None:
        """SIGKILL it."""
        self._popen.kill()


@dataclass
class _Slot:
    index: int
    #: Its ``ready`` flag's place in the supervisor's :class:`~gateway.service.child.SharedFlags`.
    flag: int
    ready: child.Flag
    process: _Child | None = None
    restarts: int = 0  # in a row, each within a minute of its start: the backoff
    total_restarts: int = 0
    next_start: float = 0.0
    started: float = field(default_factory=time.monotonic)


class Supervisor:
    """Start, watch and stop the worker processes (and the metrics endpoint)."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        indexes = list(range(ingest_processes(config)))
        if config.log.enabled:
            # The ledger process runs beside the workers under the same watch and restart rules;
            # it only reads what they stored, so it can never hold up ingest.
            indexes.append(_LEDGER)
        if config.urgent.enabled:
            # Its own process: no GIL, connection or client id shared with routine ingest.
            indexes.append(_URGENT)
        # Flags, not multiprocessing Events (see gateway.service.child): 0 is stop, then one
        # ready flag per child.
        self._flags = child.SharedFlags(1 + len(indexes))
        self._stop = self._flags[0]
        self._slots = [_Slot(i, n, self._flags[n]) for n, i in enumerate(indexes, start=1)]
        self.metrics: MetricsServer | None = None

    @property
    def pids(self) -> list[int]:
        """Process ids of the running ingest workers."""
        return [
            s.process.pid
            for s in self._slots
            if s.index >= 0 and s.process and s.process.pid is not None
        ]

    def _pid(self, index: int) -> int | None:
        for s in self._slots:
            if s.index == index and s.process is not None:
                return s.process.pid
        return None

    @property
    def ledger_pid(self) -> int | None:
        """Process id of the ledger process, if it runs."""
        return self._pid(_LEDGER)

    @property
    def urgent_pid(self) -> int | None:
        """Process id of the urgent lane's process, if it runs."""
        return self._pid(_URGENT)

    def children(self) -> list[child.ChildStatus]:
        """Each child as the metrics show it: role, running, ready, restarts so far."""
        return [
            child.ChildStatus(
                role=self._role(s.index),
                # watch() drops a process within 0.2 s of its exit; asking the process here
                # would reap it from this (the HTTP server's) thread, racing watch().
                up=s.process is not None,
                ready=s.ready.is_set(),
                restarts=s.total_restarts,
            )
            for s in self._slots
        ]

    def _role(self, index: int) -> str:
        if index == _LEDGER:
            return child.LEDGER
        if index == _URGENT:
            return child.URGENT
        return child.ingest_role(index, shared=self.config.ingest.mode == "shared")

    def urgent_status(self) -> dict[str, Any] | None:
        """Return the urgent lane's pid, niceness and whether it has subscribed (status lines)."""
        for s in self._slots:
            if s.index == _URGENT and s.process is not None and s.process.pid is not None:
                try:
                    nice: int | None = os.getpriority(os.PRIO_PROCESS, s.process.pid)
                except OSError:
                    nice = None
                return {
                    "pid": s.process.pid,
                    "nice": nice,
                    "subscribed": s.ready.is_set(),
                    "restarts": s.restarts,
                }
        return None

    def start(self) -> None:
        """Start the metrics endpoint (if configured) and every worker."""
        cfg = self.config
        if cfg.metrics_port:
            directory = prepare_multiprocess_dir()
            # Only with metrics on: prometheus_client's memory (gateway.service.metrics).
            from gateway.service.health import HealthCollector  # noqa: PLC0415

            health = HealthCollector(
                cfg.database, self.children, cfg.broker.config_dir, TrustFolder(cfg.trust_dir)
            )
            try:
                self.metrics = MetricsServer(
                    cfg.metrics_host, cfg.metrics_port, directory, collectors=[health]
                )
            except OSError as exc:
                raise UnavailableError(
                    f"Cannot serve metrics on {cfg.metrics_host}:{cfg.metrics_port}: {exc}; "
                    f"pick a free port (metrics.port in {cfg.path}) or 0 to turn metrics off.",
                    reason="metrics-port",
                ) from exc
        for slot in self._slots:
            self._start(slot)

    def wait_ready(self, timeout: float) -> int:
        """Wait until every worker has subscribed (or *timeout*); return how many have.

        Until then, a message published to a topic nobody subscribed yet is discarded by the
        broker (MQTT has no subscription to queue it for): scripts should publish after "running".
        """
        deadline = time.monotonic() + timeout
        for slot in self._slots:
            slot.ready.wait(max(0.0, deadline - time.monotonic()))
        return sum(slot.ready.is_set() for slot in self._slots)

    def _start(self, slot: _Slot) -> None:
        role = {_LEDGER: launch.LEDGER, _URGENT: launch.URGENT}.get(slot.index, launch.INGEST)
        popen = launch.start(
            role,
            index=slot.index,
            config_path=self.config.path,
            parent_pid=os.getpid(),
            flags=self._flags,
            stop=0,
            ready=slot.flag,
        )
        slot.process = _Child(popen)
        slot.started = time.monotonic()

    def watch(self, stopping: Callable[[], bool], interval: float = 0.2) -> None:
        """Restart workers that die (same index: same session) until *stopping()*.

        Backoff per worker: 1 s, doubling to 30 s while it keeps dying within a minute.
        """
        while not stopping():
            now = time.monotonic()
            for slot in self._slots:
                proc = slot.process
                if proc is not None and proc.exitcode is not None:
                    _log.error(
                        "%s (pid %s) exited with %s; restarting",
                        _NAMES.get(slot.index, f"worker {slot.index}"),
                        proc.pid,
                        proc.exitcode,
                    )
                    if proc.pid is not None:
                        mark_worker_dead(proc.pid)
                    quick = now - slot.started < 60
                    slot.restarts = slot.restarts + 1 if quick else 1
                    slot.total_restarts += 1
                    slot.next_start = now + min(_MAX_RESTART_DELAY_S, 2.0 ** (slot.restarts - 1))
                    slot.process = None
                    slot.ready.clear()
                if slot.process is None and now >= slot.next_start:
                    self._start(slot)
            time.sleep(interval)

    def stop(self) -> None:
        """Ask every worker to finish its batch and acknowledge it, then wait; kill stragglers."""
        self._stop.set()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for slot in self._slots:
            proc = slot.process
            if proc is None:
                continue
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.exitcode is None:
                # Unacknowledged messages are redelivered after the restart: killing is safe.
                _log.error(
                    "%s did not stop in time; killing it",
                    _NAMES.get(slot.index, f"worker {slot.index}"),
                )
                proc.kill()
                proc.join(5)
            if proc.pid is not None:
                mark_worker_dead(proc.pid)
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None


def _urgent_line(
    config: GatewayConfig, supervisor: Supervisor, offer_key: dict[str, Any] | None
) -> dict[str, Any] | None:
    status = supervisor.urgent_status()
    if status is None or offer_key is None:
        return None
    u = config.urgent
    return {
        **status,
        **offer_key,
        "nice_wanted": u.nice,
        "manifest_trust": str(u.manifest_trust) if u.manifest_trust else None,
        "recall_trust": str(u.recall_trust) if u.recall_trust else None,
    }


def _notify_systemd(state: str) -> None:
    """Tell systemd (``Type=notify``, deploy/provgw.service) *state*; nothing without it.

    The sd_notify(3) protocol: one datagram of ``KEY=value`` lines to the unix socket named by
    ``$NOTIFY_SOCKET`` (a leading ``@`` is the abstract namespace). ``systemctl start`` returns
    once READY=1 arrives, and ``systemctl status`` shows STATUS.
    """
    where = os.environ.get("NOTIFY_SOCKET")
    if not where:
        return
    address = "\0" + where[1:] if where.startswith("@") else where
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        _log.warning("cannot notify systemd at %s: %s", where, exc)


def serve(config_path: Path, on_status: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Run the gateway until SIGTERM or SIGINT; report ``running`` then return the final status.

    Raises what :func:`load_config` and :func:`~gateway.service.preflight.preflight` raise,
    before anything starts.
    """
    config = load_config(config_path)
    # In a child of its own (gateway.service.preflight says why), as is making the keys a first
    # start needs: once, before any process could race to make them.
    prepared = run_checked(config)
    checked, ledger, offer_key = prepared["checked"], prepared["ledger"], prepared["offer_key"]
    warnings = config.warnings()
    for warning in warnings:
        _log.warning("%s", warning["message"])
    stopping = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        del frame
        _log.info("signal %d: stopping", signum)
        stopping.set()

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    supervisor = Supervisor(config)
    started = time.monotonic()
    try:
        supervisor.start()
        ready = supervisor.wait_ready(_READY_TIMEOUT_S)
        on_status(
            {
                "status": "running",
                "pid": os.getpid(),
                "workers": config.ingest.workers,
                "ingest_mode": config.ingest.mode,
                "workers_subscribed": ready,
                "worker_pids": supervisor.pids,
                "ledger_pid": supervisor.ledger_pid,
                "ledger": ledger,
                "urgent_pid": supervisor.urgent_pid,
                "urgent": _urgent_line(config, supervisor, offer_key),
                "broker": f"{config.broker.host}:{config.broker.port}",
                "database": str(config.database),
                "metrics": (
                    f"http://{supervisor.metrics.host}:{supervisor.metrics.port}/metrics"
                    if supervisor.metrics
                    else None
                ),
                "warnings": warnings,
                **checked,
            }
        )
        children = supervisor.children()
        _notify_systemd(
            f"READY=1\nSTATUS={ready} of {len(children)} processes subscribed"
            f" ({', '.join(c.role for c in children)}); {checked['events_stored']} events stored"
            " at start"
        )
        supervisor.watch(stopping.is_set)
    finally:
        _notify_systemd("STOPPING=1\nSTATUS=stopping: each process commits what it holds")
        supervisor.stop()
        for sig, handler in old.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)
    with Database(config.database) as db:
        events = EventStore(db)
        summary = None
        if config.log.enabled:
            from gateway.service.ledger_service import ledger_summary  # noqa: PLC0415 - at the stop only

            summary = ledger_summary(db)
        return {
            "status": "stopped",
            "uptime_s": round(time.monotonic() - started, 3),
            "events_stored": events.count(),
            "quarantined": events.quarantine_counts(),
            "log": summary,
        }
