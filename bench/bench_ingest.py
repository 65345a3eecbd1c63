"""Ingest at line rate: ``provgw serve`` beside a raw subscriber and the naive pipeline.

Same run, same Mosquitto, same PRE-SIGNED publisher (1,000 devices, one TLS connection each,
QoS 1), the consumers in turn, each its own process (tree) with a fresh SQLite file:

* (a) raw subscriber: paho -> SQLite batch -> ack, no verification (issue 3's ceiling);
* (a') the same with the gateway receiver's MQTT client instead of paho (the receive ceiling);
* (b) naive pipeline: paho -> verify -> ``EventStore`` batch -> ack, one process;
* the gateway: ``provgw serve`` (one MQTT receiver process, ``cpu_count`` verifier processes),
  with its ledger process switched off (``[log] enabled = false``): issue 3's figures are about
  ingest; the ledger tails the store beside it and is measured once more, switched on, for the
  record (``gateway+ledger``).

Per consumer: enrol every device (its first message, with the certificate chain), then publish
kid-only events as fast as the consumer commits them, a window of ``WINDOW`` uncommitted messages
at most (so the backlog, and with it the latency, stays bounded instead of piling up in the
broker); then a paced phase at a rate every consumer sustains, for latency without queueing.

"Committed" is observed, not reported: a thread polls the consumer's database every few ms for
new rows and matches each row's SHA-256 digest to the time the publisher sent those bytes. So
latency is publish -> visible after COMMIT, measured the same way for all three.

Memory, peak over one more saturated slice (not one of the rate slices: sampling costs the
observer CPU in proportion to the consumer's processes), summed over the consumer's process tree
(the gateway's supervisor, receiver, verifiers, multiprocessing's resource tracker): RSS (VmRSS:
counts every shared page -- libcrypto, libpython, ... -- once per process), PSS
(``/proc/PID/smaps_rollup`` Pss: each shared page split among the processes sharing it: what the
tree costs the machine) and USS (private pages only). Everything, publisher and broker included,
shares this machine's cores.
"""

from __future__ import annotations

import functools
import hashlib
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench._publisher import LeanPublisher, publish_prefix
from bench._table import Row
from device_sim.demo import LocalMosquitto
from device_sim.events import SimDevice, make_event
from device_sim.fleet import (
    EVENT_MIX,
    device_credentials,
    raise_fd_limit,
    select_devices,
)
from device_sim.pki import DeviceRecord, init_pki
from gateway.ingest.broker_config import write_broker_config
from gateway.ingest.topics import event_topic

WINDOW = 2000  # uncommitted messages the publisher allows itself
POLL_S = 0.005  # how often the observer looks for new rows
STALL_S = 30.0  # no commit for this long: the consumer is stuck, stop the benchmark

MB = 1024 * 1024


@dataclass(frozen=True)
class Msg:
    index: int  # device (= client) index
    topic: str
    wire_topic: bytes  # encoded for the PUBLISH packet (bench._publisher.publish_prefix)
    extra: int
    payload: bytes
    digest: bytes


@dataclass(frozen=True)
class Plan:
    devices: int
    slices: int
    per_slice: int
    paced_rate: float
    paced_s: float


QUICK = Plan(devices=100, slices=1, per_slice=3000, paced_rate=500, paced_s=2)
FULL = Plan(devices=1000, slices=3, per_slice=20000, paced_rate=1000, paced_s=4)


# --- messages ------------------------------------------------------------------------------------


def _msg(index: int, record: DeviceRecord, sim: SimDevice, seq: int, rng: random.Random) -> Msg:
    now = datetime.now(UTC)
    event_type = rng.choices([t for t, _ in EVENT_MIX], [w for _, w in EVENT_MIX])[0]
    event = make_event(
        record.id, event_type, seq, int(now.timestamp() * 1000), rng, today=now.date()
    )
    payload = sim.sign(event, with_chain=seq == 1)
    topic = event_topic(record.site, record.id, event_type)
    wire_topic, extra = publish_prefix(topic)
    return Msg(index, topic, wire_topic, extra, payload, hashlib.sha256(payload).digest())


@dataclass(frozen=True)
class Workload:
    """Pre-signed messages: enrolment (seq 1, with chain), throughput slices, a saturated slice
    for memory, paced phase."""

    enrol: list[Msg]
    slices: list[list[Msg]]
    memory: list[Msg]
    paced: list[Msg]
    paced_rate: float

    @property
    def size(self) -> int:
        parts = (self.enrol, *self.slices, self.memory, self.paced)
        return sum(map(len, parts))


def presign(pki: Path, records: list[DeviceRecord], plan: Plan) -> Workload:
    """Sign every message of the run before any is published."""
    rng = random.Random(3)  # noqa: S311 - reproducible bench contents, not secrets
    sims = [SimDevice.load(pki, r.id) for r in records]
    n = len(records)
    enrol = [_msg(i, r, sims[i], 1, rng) for i, r in enumerate(records)]
    seqs = [2] * n
    k = 0

    def take(count: int) -> list[Msg]:
        nonlocal k
        out = []
        for _ in range(count):
            i = k % n
            out.append(_msg(i, records[i], sims[i], seqs[i], rng))
            seqs[i] += 1
            k += 1
        return out

    slices = [take(plan.per_slice) for _ in range(plan.slices)]
    memory = take(plan.per_slice)
    paced = take(int(plan.paced_rate * plan.paced_s))
    return Workload(enrol, slices, memory, paced, plan.paced_rate)


# --- watching the consumer -----------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text(encoding="ascii").split()
        except OSError:
            continue
        todo.extend(int(c) for c in children)
    return pids


@dataclass(frozen=True)
class Memory:
    """RSS, PSS and USS of one process or (summed) of a process tree, in bytes."""

    rss: int = 0
    pss: int = 0
    uss: int = 0
    detail: tuple[tuple[str, int, int, int], ...] = ()  # (name, rss, pss, uss) per process


def _rollup(pid: int) -> tuple[str, int, int, int] | None:
    try:
        name = Path(f"/proc/{pid}/comm").read_text(encoding="ascii").strip()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        fields: dict[str, int] = {}
        text = Path(f"/proc/{pid}/smaps_rollup").read_text(encoding="ascii")
    except OSError:
        return None
    for line in text.splitlines()[1:]:
        key, _, rest = line.partition(":")
        fields[key] = int(rest.split()[0]) * 1024
    # The serve processes name themselves ("provgw verifier-0 (CONFIG)", gateway.service.child):
    # the role is enough here. multiprocessing's resource tracker shows "python3": its entry point.
    for part in cmd:
        if part.startswith(b"provgw "):
            name = part.decode().partition(" (")[0]
        elif part.startswith(b"from multiprocessing"):
            name = part.decode()[:60]
    uss = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    return name, fields.get("Rss", 0), fields.get("Pss", 0), uss


_TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds so far of each of *pids* still alive (``/proc/PID/stat``)."""
    out = {}
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
        except OSError:
            continue
        # Fields after the parenthesised command name (which may hold spaces): utime is the
        # 14th field of the line, stime the 15th (proc(5)).
        fields = text.rpartition(")")[2].split()
        out[pid] = (int(fields[11]) + int(fields[12])) * _TICK_S
    return out


@dataclass(frozen=True)
class Cpu:
    """CPU microseconds per committed event, over the saturated slices."""

    consumer: float
    broker: float
    publisher: float


def memory(pid: int) -> Memory:
    """RSS, PSS and USS summed over *pid* and its descendants."""
    detail = tuple(r for r in map(_rollup, _tree(pid)) if r is not None)
    return Memory(
        sum(r[1] for r in detail), sum(r[2] for r in detail), sum(r[3] for r in detail), detail
    )


@dataclass
class Observer:
    """Polls the consumer's ``events`` table; records when each published digest became visible."""

    db: Path
    pid: int
    published: dict[bytes, float] = field(default_factory=dict)
    committed: dict[bytes, float] = field(default_factory=dict)
    peak: Memory = field(default_factory=Memory)
    measuring_rss: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="observer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self.db.exists() and not self._stop.wait(POLL_S):
            pass
        conn = sqlite3.connect(self.db, timeout=5)
        last_id = 0
        next_rss = 0.0
        try:
            while not self._stop.wait(POLL_S):
                try:
                    rows = conn.execute(
                        "SELECT id, digest FROM events WHERE id > ? ORDER BY id", (last_id,)
                    ).fetchall()
                except sqlite3.OperationalError:
                    continue  # table not created yet, or a writer's checkpoint
                now = time.monotonic()
                for row_id, digest in rows:
                    last_id = row_id
                    if digest in self.published and digest not in self.committed:
                        self.committed[digest] = now
                if self.measuring_rss and now >= next_rss:
                    sample = memory(self.pid)
                    if sample.pss > self.peak.pss:
                        self.peak = sample
                    # 4 Hz: reading smaps_rollup costs ~0.75 ms a process under load (4.5 ms
                    # for the gateway's six), charged to this process (the publisher).
                    next_rss = now + 0.25
        finally:
            conn.close()

    def done(self, msgs: list[Msg]) -> int:
        return sum(1 for m in msgs if m.digest in self.committed)


# --- the publisher -------------------------------------------------------------------------------


def publish(
    pool: LeanPublisher,
    observer: Observer,
    msgs: list[Msg],
    *,
    rate: float | None = None,
    window: int = WINDOW,
) -> float:
    """Publish *msgs* (paced at *rate*, or as fast as the window allows); wait for all commits.

    Returns the seconds from the first publish to the last commit.
    """
    base = len(observer.committed)
    start = time.monotonic()
    sent = 0
    last_progress, last_count = start, base
    while True:
        now = time.monotonic()
        count = len(observer.committed)
        if count != last_count:
            last_progress, last_count = now, count
        elif now - last_progress > STALL_S:
            done = f"{count - base} of {len(msgs)}"
            msg = f"consumer stalled: {done} committed after {now - start:.1f} s"
            raise RuntimeError(msg)
        if sent < len(msgs):
            limit = len(msgs) if rate is None else min(len(msgs), int((now - start) * rate) + 1)
            room = window - (sent - (count - base))
            for _ in range(max(0, min(limit - sent, room, 500))):
                m = msgs[sent]
                observer.published[m.digest] = time.monotonic()
                pool.publish(m.index, m.wire_topic, m.extra, m.payload)
                sent += 1
        elif count - base >= len(msgs) and observer.done(msgs) == len(msgs):
            break
        pool.poll(0.001)
    return max(observer.committed[m.digest] for m in msgs) - start


def latencies_ms(observer: Observer, msgs: list[Msg]) -> list[float]:
    return [(observer.committed[m.digest] - observer.published[m.digest]) * 1000 for m in msgs]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- the consumers -------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    rates: list[float]
    saturated_ms: list[float]
    paced_ms: list[float]
    peak: Memory
    cpu: Cpu

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)


def _wait_line(proc: subprocess.Popen[str], want: Callable[[str], bool], what: str) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            msg = f"{what} exited with code {proc.wait()} before it was ready"
            raise RuntimeError(msg)
        if want(line):
            return line
    msg = f"{what} not ready within 60 s"
    raise RuntimeError(msg)


def stop_process(proc: subprocess.Popen[str] | None) -> None:
    """SIGTERM *proc* (if it runs) and wait for it; kill it after 30 s."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_baseline(
    kind: str, folder: Path, broker: LocalMosquitto, pki: Path
) -> tuple[subprocess.Popen[str], Path]:
    db = folder / f"{kind}.sqlite3"
    cmd = [
        sys.executable,
        "-m",
        "bench._ingest_consumers",
        kind,
        "--broker",
        str(broker.config.directory),
        "--port",
        str(broker.port),
        "--db",
        str(db),
        "--trust",
        str(pki / "trust"),
    ]
    log = (folder / f"{kind}.log").open("w")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    _wait_line(proc, lambda line: line.strip() == "ready", f"baseline {kind}")
    return proc, db


def start_gateway(
    folder: Path, broker: LocalMosquitto, pki: Path, workers: int, *, ledger: bool = False
) -> tuple[subprocess.Popen[str], Path]:
    name = "gateway-ledger" if ledger else "gateway"
    db = folder / f"{name}.sqlite3"
    config = folder / f"{name}.toml"
    config.write_text(
        "\n".join(
            [
                "[broker]",
                f'host = "{broker.host}"',
                f"port = {broker.port}",
                f'config_dir = "{broker.config.directory}"',
                "[ingest]",
                f"workers = {workers}",
                "[trust]",
                f'dir = "{pki / "trust"}"',
                "[store]",
                f'path = "{db}"',
                "[metrics]",
                "port = 0",
                "[log]",
                f"enabled = {'true' if ledger else 'false'}",
                f'key = "{folder / name}.log.key"',
                "[witnesses]",
                f'embedded_key = "{folder / name}.witness.key"',
                f'embedded_db = "{folder / name}.witness.sqlite3"',
                "",
            ]
        ),
        encoding="utf-8",
    )
    provgw = Path(sys.executable).with_name("provgw")
    log = (folder / f"{name}.log").open("w")
    proc = subprocess.Popen(
        [str(provgw), "serve", "--config", str(config), "--json"],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    _wait_line(proc, lambda line: '"running"' in line, "provgw serve")
    return proc, db


def measure(
    name: str,
    consumer: tuple[subprocess.Popen[str], Path],
    pool: LeanPublisher,
    work: Workload,
    broker_pid: int,
) -> Result:
    proc, db = consumer
    observer = Observer(db, proc.pid)
    observer.start()
    try:
        publish(pool, observer, work.enrol)
        rates, saturated = [], []
        # CPU of every process of the consumer's tree, of the broker and of this process (the
        # publisher, with the observer thread: a few % of it) over the saturated slices.
        tree = _tree(proc.pid)
        before, self_before = cpu_seconds([*tree, broker_pid]), time.process_time()
        for part in work.slices:
            seconds = publish(pool, observer, part)
            rates.append(len(part) / seconds)
            saturated += latencies_ms(observer, part)
            print(f"  {name}: {rates[-1]:,.0f} events/s", file=sys.stderr, flush=True)
        after, self_after = cpu_seconds([*tree, broker_pid]), time.process_time()
        events = sum(len(part) for part in work.slices)
        used = {pid: after[pid] - before[pid] for pid in after if pid in before}
        cpu = Cpu(
            consumer=sum(v for pid, v in used.items() if pid != broker_pid) / events * 1e6,
            broker=used.get(broker_pid, 0.0) / events * 1e6,
            publisher=(self_after - self_before) / events * 1e6,
        )
        print(
            f"    {name} CPU per event: consumer {cpu.consumer:.0f} us, broker"
            f" {cpu.broker:.0f} us, publisher {cpu.publisher:.0f} us",
            file=sys.stderr,
        )
        for pid, seconds in sorted(used.items()):
            if pid != broker_pid and (who := _rollup(pid)) is not None:
                print(
                    f"      {who[0]} (pid {pid}): {seconds / events * 1e6:.0f} us",
                    file=sys.stderr,
                )
        # Memory over a saturated slice of its own (module docstring; cost: Observer._run).
        observer.measuring_rss = True
        publish(pool, observer, work.memory)
        observer.measuring_rss = False
        publish(pool, observer, work.paced, rate=work.paced_rate)
        paced = latencies_ms(observer, work.paced)
        for proc_name, rss, pss, uss in observer.peak.detail:
            print(
                f"    {name} {proc_name}: RSS {rss / MB:.1f} MB, PSS {pss / MB:.1f} MB,"
                f" USS {uss / MB:.1f} MB",
                file=sys.stderr,
            )
        return Result(name, rates, saturated, paced, observer.peak, cpu)
    finally:
        observer.stop()
        stop_process(proc)


def run(quick: bool) -> list[Row]:  # noqa: FBT001 - the bench runner's interface
    plan = QUICK if quick else FULL
    raise_fd_limit(plan.devices * 2 + 512)
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        folder = Path(tmp)
        pki = folder / "pki"
        init_pki(pki, devices_per_model=-(-plan.devices // 9))
        workers = os.cpu_count() or 1
        config = write_broker_config(
            pki, folder / "broker", now=datetime.now(UTC), routine_workers=workers
        )
        records = select_devices(pki, plan.devices)
        t = time.perf_counter()
        work = presign(pki, records, plan)
        took = time.perf_counter() - t
        print(f"  signed {work.size:,} messages in {took:.1f} s", file=sys.stderr)
        with LocalMosquitto(config, folder) as broker:
            return _contest(folder, broker, pki, records, work)


def connect_pool(
    broker: LocalMosquitto, pki: Path, records: list[DeviceRecord], parallel: int
) -> tuple[LeanPublisher, float]:
    pool = LeanPublisher(broker.host, broker.port)
    for r in records:
        pool.add(device_credentials(pki, broker.config, r.id))
    result = pool.connect_all(parallel=parallel)
    if result.failures:
        first = next(iter(result.failures.items()))
        msg = f"{len(result.failures)} devices could not connect, e.g. {first}"
        raise RuntimeError(msg)
    return pool, result.seconds


def _contest(
    folder: Path, broker: LocalMosquitto, pki: Path, records: list[DeviceRecord], work: Workload
) -> list[Row]:
    sequential_pool, sequential_s = connect_pool(broker, pki, records, 1)
    sequential_pool.close()
    pool, parallel_s = connect_pool(broker, pki, records, 4)
    results: dict[str, Result] = {}
    assert broker.proc is not None  # started by the caller's `with`
    broker_pid = broker.proc.pid
    try:
        for name in ("raw", "raw-lean", "naive"):
            consumer = start_baseline(name, folder, broker, pki)
            results[name] = measure(name, consumer, pool, work, broker_pid)
        consumer = start_gateway(folder, broker, pki, os.cpu_count() or 1)
        results["gateway"] = measure("gateway", consumer, pool, work, broker_pid)
        consumer = start_gateway(folder, broker, pki, os.cpu_count() or 1, ledger=True)
        results["ledger"] = measure("gateway+ledger", consumer, pool, work, broker_pid)
    finally:
        pool.close()
    raw, naive, gw, gl = results["raw"], results["naive"], results["gateway"], results["ledger"]
    lean = results["raw-lean"]
    n = len(records)
    at = f"{n:,} devices, QoS 1"
    paced = f"paced {work.paced_rate:,.0f}/s"
    saturated = f"saturated, window {WINDOW}"

    row = functools.partial(Row, "ingest")

    return [
        row(f"connect {n:,} devices (TLS, 4 threads)", parallel_s, "s", "1 thread", sequential_s),
        row(
            f"gateway verified+stored+acked ({at})",
            gw.rate,
            "events/s",
            "(a) raw subscriber, no verify",
            raw.rate,
            ">= 5,000/s and >= 0.7x raw",
        ),
        row(
            f"gateway verified+stored+acked ({at})",
            gw.rate,
            "events/s",
            "(b) naive 1-process pipeline",
            naive.rate,
            ">= 1.7x naive",
        ),
        row(
            f"gateway verified+stored+acked ({at})",
            gw.rate,
            "events/s",
            "(a') raw, the gateway's MQTT client",
            lean.rate,
        ),
        row(
            f"gateway p50 publish->commit ({paced})",
            pct(gw.paced_ms, 0.5),
            "ms",
            "(a) raw",
            pct(raw.paced_ms, 0.5),
        ),
        row(
            f"gateway p99 publish->commit ({paced})",
            pct(gw.paced_ms, 0.99),
            "ms",
            "(a) raw",
            pct(raw.paced_ms, 0.99),
        ),
        row(
            f"gateway p50 publish->commit ({saturated})",
            pct(gw.saturated_ms, 0.5),
            "ms",
            "(b) naive",
            pct(naive.saturated_ms, 0.5),
        ),
        row(
            f"gateway p99 publish->commit ({saturated})",
            pct(gw.saturated_ms, 0.99),
            "ms",
            "(b) naive",
            pct(naive.saturated_ms, 0.99),
        ),
        row(
            "gateway CPU per event, all processes (saturated)",
            gw.cpu.consumer,
            "us",
            "(b) naive, 1 process",
            naive.cpu.consumer,
        ),
        row(
            "raw subscriber CPU per event (saturated)",
            raw.cpu.consumer,
            "us",
            "publisher + broker, same slices",
            raw.cpu.publisher + raw.cpu.broker,
        ),
        row(
            "(a') raw, gateway's MQTT client, CPU per event",
            lean.cpu.consumer,
            "us",
            "(a) raw, paho",
            raw.cpu.consumer,
        ),
        row(
            f"gateway+ledger process verified+stored+acked ({at})",
            gl.rate,
            "events/s",
            "gateway, ledger off (above)",
            gw.rate,
        ),
        row(
            f"gateway PSS, {len(gw.peak.detail)} processes, peak",
            gw.peak.pss / MB,
            "MB",
            "(b) naive, 1 process",
            naive.peak.pss / MB,
            "<= 150 MB (RSS, read as PSS)",
        ),
        row(
            f"gateway RSS summed over {len(gw.peak.detail)} processes, peak",
            gw.peak.rss / MB,
            "MB",
            "(b) naive, 1 process",
            naive.peak.rss / MB,
            "<= 150 MB",
        ),
        row(
            "gateway USS (private pages), peak",
            gw.peak.uss / MB,
            "MB",
            "(b) naive, 1 process",
            naive.peak.uss / MB,
        ),
        row(
            f"gateway+ledger PSS, {len(gl.peak.detail)} processes, peak",
            gl.peak.pss / MB,
            "MB",
            "gateway, ledger off (above)",
            gw.peak.pss / MB,
        ),
    ]
