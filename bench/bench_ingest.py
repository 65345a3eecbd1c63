"""Ingest at line rate: ``provgw serve`` beside a raw subscriber and the naive pipeline.

Same run, same Mosquitto, same PRE-SIGNED publisher (1,000 devices, one TLS connection each,
QoS 1), the consumers in interleaved rounds (below), each its own process (tree) with a SQLite
file of its own:

* (a) raw subscriber: paho -> SQLite batch -> ack, no verification (issue 3's ceiling);
* (a') the same with the gateway receiver's MQTT client instead of paho (the receive ceiling);
* (b) naive pipeline: paho -> verify -> ``EventStore`` batch -> ack, one process;
* the gateway: ``provgw serve`` (one MQTT receiver process, ``cpu_count`` verifier processes),
  with its ledger process switched off (``[log] enabled = false``): issue 3's figures are about
  ingest; the ledger tails the store beside it and is measured once more, switched on, for the
  record (``gateway+ledger``).

Interleaved rounds (:func:`contest`): round 1 of every consumer, then round 2 of every consumer,
and so on, each consumer started for its round and stopped after it. A consumer's slice and the
others' of the same round are then seconds apart, not minutes: this host drifts within the hour
(``docs/BENCHMARKS.md``), and a ratio of two slices taken far apart measured the drift too.
In its round a consumer first gets one message a device, outside the timing (in round 1 the
enrolment, with the certificate chain; after that a warm-up, since a consumer started again
meets every device afresh), then one saturated slice of kid-only events, published as fast as it
commits them, a window of ``WINDOW`` uncommitted messages at most (so the backlog, and with it
the latency, stays bounded instead of piling up in the broker). In its last round come the
memory slice and a paced phase at a rate every consumer sustains, for latency without queueing.

"Committed" is observed, not reported: a thread polls the consumer's database every few ms for
new rows and matches each row's SHA-256 digest to the time the publisher sent those bytes. So
latency is publish -> visible after COMMIT, measured the same way for all three.

Memory, peak over one more saturated slice (not one of the rate slices: sampling costs the
observer CPU in proportion to the consumer's processes), summed over the consumer's process tree
(the gateway's supervisor, receiver, verifiers, urgent lane): RSS (VmRSS:
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
SESSION_EXPIRY_S = 1  # the gateway's, between its rounds (the least its config allows)
#: The gateway's verifier processes (``ingest.workers``) and its broker client certificates.
WORKERS = os.cpu_count() or 1

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
    #: One message a device before each round but the first, outside the timing: a contestant
    #: started again meets every device afresh (the gateway re-checks its certificate).
    warm: list[list[Msg]]
    slices: list[list[Msg]]
    memory: list[Msg]
    paced: list[Msg]
    paced_rate: float

    @property
    def size(self) -> int:
        parts = (self.enrol, *self.warm, *self.slices, self.memory, self.paced)
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

    # In the order they are published, each device's seq rising.
    warm, slices = [], []
    for index in range(plan.slices):
        if index:
            warm.append(take(n))
        slices.append(take(plan.per_slice))
    memory = take(plan.per_slice)
    paced = take(int(plan.paced_rate * plan.paced_s))
    return Workload(enrol, warm, slices, memory, paced, plan.paced_rate)


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
    # the role is enough here.
    for part in cmd:
        if part.startswith(b"provgw "):
            name = part.decode().partition(" (")[0]
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


def host_steal_s() -> float:
    """CPU seconds the hypervisor has taken from this VM so far, all CPUs (``/proc/stat``).

    ``steal``: time a virtual CPU was ready to run while the host ran something else (proc(5)),
    the noise of this shared machine that no process's own CPU time shows.
    """
    fields = Path("/proc/stat").read_text(encoding="ascii").split("\n", 1)[0].split()
    # "cpu", then user nice system idle iowait irq softirq steal: steal is field 8.
    return int(fields[8]) * _TICK_S if len(fields) > 8 else 0.0


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
    #: The newest row seen: a consumer started again for its next round is watched from there.
    last_id: int = 0
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
        next_rss = 0.0
        try:
            while not self._stop.wait(POLL_S):
                try:
                    rows = conn.execute(
                        "SELECT id, digest FROM events WHERE id > ? ORDER BY id", (self.last_id,)
                    ).fetchall()
                except sqlite3.OperationalError:
                    continue  # table not created yet, or a writer's checkpoint
                now = time.monotonic()
                for row_id, digest in rows:
                    self.last_id = row_id
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
    """SIGTERM *proc* (if it runs) and wait for it, killing it after 30 s; close its stdout pipe."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc is not None and proc.stdout is not None:
        proc.stdout.close()


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
    # Appended to, round after round; the child keeps its own copy of the descriptor.
    with (folder / f"{kind}.log").open("a") as log:
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
                # Its session ends soon after each round (the baselines' at once): nothing
                # meant for the other contestants waits on the broker for its next round.
                f"session_expiry_s = {SESSION_EXPIRY_S}",
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
    with (folder / f"{name}.log").open("a") as log:  # as start_baseline's
        proc = subprocess.Popen(
            [str(provgw), "serve", "--config", str(config), "--json"],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    _wait_line(proc, lambda line: '"running"' in line, "provgw serve")
    return proc, db


Starter = Callable[[], tuple[subprocess.Popen[str], Path]]


@dataclass
class Contestant:
    """One consumer of the contest and what its rounds measured (module docstring)."""

    name: str
    start: Starter
    rates: list[float] = field(default_factory=list)
    saturated_ms: list[float] = field(default_factory=list)
    paced_ms: list[float] = field(default_factory=list)
    peak: Memory = field(default_factory=Memory)
    events: int = 0
    # CPU seconds over its saturated slices: its process tree, the broker, the publisher.
    consumer_s: float = 0.0
    broker_s: float = 0.0
    publisher_s: float = 0.0
    by_process: dict[str, float] = field(default_factory=dict)  # CPU of the consumer's processes
    #: Per saturated slice, the share of the VM's CPU time the host took (:func:`host_steal_s`).
    steal: list[float] = field(default_factory=list)
    last_id: int = 0
    #: Seconds to wait after a round, until the broker has ended the contestant's session.
    linger_s: float = 0.0

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)

    @property
    def cpu(self) -> Cpu:
        per = 1e6 / max(1, self.events)
        return Cpu(self.consumer_s * per, self.broker_s * per, self.publisher_s * per)


def _round(  # noqa: PLR0913 - one round of one contestant, with what it needs
    who: Contestant,
    pool: LeanPublisher,
    work: Workload,
    index: int,
    broker_pid: int,
    *,
    last: bool,
) -> None:
    """Start *who*, publish saturated slice *index* to it (and, in its last round, the memory
    slice and the paced phase), stop it."""
    proc, db = who.start()
    observer = Observer(db, proc.pid, last_id=who.last_id)
    observer.start()
    try:
        publish(pool, observer, work.warm[index - 1] if index else work.enrol)
        # CPU of every process of the consumer's tree, of the broker and of this process (the
        # publisher, with the observer thread: a few % of it) over the saturated slice.
        tree = _tree(proc.pid)
        before, self_before = cpu_seconds([*tree, broker_pid]), time.process_time()
        steal_before, wall_before = host_steal_s(), time.monotonic()
        part = work.slices[index]
        seconds = publish(pool, observer, part)
        after, self_after = cpu_seconds([*tree, broker_pid]), time.process_time()
        # Over the CPU time the VM had in that while: wall time on every CPU.
        vm_cpu_s = (time.monotonic() - wall_before) * (os.cpu_count() or 1)
        who.steal.append((host_steal_s() - steal_before) / vm_cpu_s)
        who.rates.append(len(part) / seconds)
        who.saturated_ms += latencies_ms(observer, part)
        who.events += len(part)
        used = {pid: after[pid] - before[pid] for pid in after if pid in before}
        who.consumer_s += sum(v for pid, v in used.items() if pid != broker_pid)
        who.broker_s += used.get(broker_pid, 0.0)
        who.publisher_s += self_after - self_before
        for pid, value in used.items():
            if pid != broker_pid and (rollup := _rollup(pid)) is not None:
                who.by_process[rollup[0]] = who.by_process.get(rollup[0], 0.0) + value
        print(
            f"  {who.name}: {who.rates[-1]:,.0f} events/s (host steal {who.steal[-1]:.0%})",
            file=sys.stderr,
            flush=True,
        )
        if last:
            # Memory over a saturated slice of its own (module docstring; cost: Observer._run).
            observer.measuring_rss = True
            publish(pool, observer, work.memory)
            observer.measuring_rss = False
            publish(pool, observer, work.paced, rate=work.paced_rate)
            who.paced_ms = latencies_ms(observer, work.paced)
            who.peak = observer.peak
    finally:
        observer.stop()
        who.last_id = observer.last_id
        stop_process(proc)
        time.sleep(who.linger_s)


def contest(
    contestants: list[Contestant], pool: LeanPublisher, work: Workload, broker_pid: int
) -> None:
    """Run every contestant's rounds, interleaved: round 1 of each, then round 2 of each, ...

    A contestant's round and the others' of the same round are seconds apart, so a host that
    drifts over the run (they do here: ``docs/BENCHMARKS.md``) moves them alike.
    """
    rounds = len(work.slices)
    for index in range(rounds):
        print(f"  round {index + 1} of {rounds}", file=sys.stderr, flush=True)
        for who in contestants:
            _round(who, pool, work, index, broker_pid, last=index == rounds - 1)
    for who in contestants:
        cpu = who.cpu
        print(
            f"    {who.name} CPU per event: consumer {cpu.consumer:.0f} us, broker"
            f" {cpu.broker:.0f} us, publisher {cpu.publisher:.0f} us",
            file=sys.stderr,
        )
        for role, seconds in sorted(who.by_process.items()):
            print(f"      {role}: {seconds / who.events * 1e6:.0f} us", file=sys.stderr)
        for proc_name, rss, pss, uss in who.peak.detail:
            print(
                f"    {who.name} {proc_name}: RSS {rss / MB:.1f} MB, PSS {pss / MB:.1f} MB,"
                f" USS {uss / MB:.1f} MB",
                file=sys.stderr,
            )


def contestant(
    name: str, folder: Path, broker: LocalMosquitto, pki: Path, workers: int
) -> Contestant:
    """The contestant *name* (``gateway``, ``gateway+ledger`` or a baseline of
    :mod:`bench._ingest_consumers`), each round on the same SQLite file."""
    if name.startswith("gateway"):
        ledger = name == "gateway+ledger"
        start = functools.partial(start_gateway, folder, broker, pki, workers, ledger=ledger)
        return Contestant(name, start, linger_s=SESSION_EXPIRY_S + 1.5)
    return Contestant(name, functools.partial(start_baseline, name, folder, broker, pki))


def run(quick: bool) -> list[Row]:  # noqa: FBT001 - the bench runner's interface
    plan = QUICK if quick else FULL
    raise_fd_limit(plan.devices * 2 + 512)
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        folder = Path(tmp)
        pki = folder / "pki"
        init_pki(pki, devices_per_model=-(-plan.devices // 9))
        config = write_broker_config(
            pki, folder / "broker", now=datetime.now(UTC), routine_workers=WORKERS
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
    assert broker.proc is not None  # started by the caller's `with`
    names = ("raw", "raw-lean", "naive", "gateway", "gateway+ledger")
    contestants = [contestant(name, folder, broker, pki, WORKERS) for name in names]
    try:
        contest(contestants, pool, work, broker.proc.pid)
    finally:
        pool.close()
    results = {who.name: who for who in contestants}
    raw, naive, gw = results["raw"], results["naive"], results["gateway"]
    gl = results["gateway+ledger"]
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
            "host steal in the gateway's saturated slices, median",
            statistics.median(gw.steal) * 100,
            "%",
            "(a) raw's slices",
            statistics.median(raw.steal) * 100,
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
