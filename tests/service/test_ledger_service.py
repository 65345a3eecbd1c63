"""`provgw serve` runs the ledger: events it ingests are logged, sealed, cosigned and anchored.

Real Mosquitto, real `provgw serve` subprocess (its ledger process spawned by the supervisor), real
witnesses over HTTP (the embedded one, or `provgw witness serve` as a subprocess), and a real
chain node: ganache (contracts/node_modules, `make node-deps`) on a random loopback port with its
chain in a directory, so a node killed mid-run comes back with the same state, as a Besu
validator does. The chain run is also scanned for anything identifying the fleet.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import pytest
from web3 import Web3

from device_sim.events import SimDevice, make_event
from device_sim.pki import load_devices
from gateway.core import note
from gateway.ingest.topics import event_topic
from gateway.ledger.anchor import contract_artifacts, log_id
from gateway.ledger.commitments import leaf_for
from gateway.ledger.keys import load_gateway_key
from gateway.ledger.log import TransparencyLog
from gateway.ledger.quorum import require_quorum
from gateway.ledger.receipts import issue_receipt, verify_receipt
from gateway.store.db import Database

pytestmark = [pytest.mark.broker, pytest.mark.timeout(90)]

SITE = "ward-7"
TODAY = datetime.now(UTC).date()
PROVGW = Path(sys.executable).with_name("provgw")
FAST_LOG = "[log]\ninterval_s = 0.3\n"
#: Measured figures go to the log: `pytest --log-cli-level=INFO` shows them.
_log = logging.getLogger(__name__)


class Fleet:
    """The site's devices publishing signed events in rounds (one event per device per round)."""

    def __init__(self, broker, pki, devices) -> None:
        self.broker = broker
        self.sims = {d: SimDevice.load(pki, d) for d in devices}
        self.seq = dict.fromkeys(devices, 0)
        self.rng = random.Random(5)

    def publish(self, rounds: int, pace: float = 0.0) -> int:
        """Publish *rounds* events per device, each acknowledged (PUBACK); return how many."""
        sent = 0
        with ExitStack() as stack:
            clients = {d: stack.enter_context(self.broker.device(d)) for d in self.sims}
            for _ in range(rounds):
                for device, sim in self.sims.items():
                    self.seq[device] += 1
                    seq = self.seq[device]
                    kind = self.rng.choice(["maintenance", "custody", "firmware_update"])
                    now_ms = int(time.time() * 1000)
                    event = make_event(device, kind, seq, now_ms, self.rng, today=TODAY)
                    raw = sim.sign(event, with_chain=seq == 1)
                    clients[device].publish(event_topic(SITE, device, kind), raw)
                    sent += 1
                time.sleep(pace)
        return sent


def serve_with(serve_gateway, site, broker, extra: str, *, workers: int):
    """`provgw serve` with *extra* TOML sections ([log], [witnesses], [chain]) in its config."""
    gateway = serve_gateway(site, broker, workers=workers, start=False)
    with gateway.config.open("a", encoding="utf-8") as config:
        config.write(extra)
    gateway.start()
    return gateway


def query(db_path, sql, params=()):
    with sqlite3.connect(db_path, timeout=10) as conn:
        return conn.execute(sql, params).fetchall()


def wait_for(predicate, what, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except sqlite3.OperationalError:  # a table not created yet
            pass
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def events(db_path) -> int:
    return query(db_path, "SELECT count(*) FROM events")[0][0]


def head(db_path) -> tuple[int, str]:
    """(size, cosignature lines) of the newest checkpoint, (0, '') before the first."""
    rows = query(db_path, "SELECT size, cosignatures FROM checkpoint_status ORDER BY size DESC")
    return (rows[0][0], rows[0][1]) if rows else (0, "")


def cosigned_head_covers(db_path, count):
    size, cosignatures = head(db_path)
    return size >= count and cosignatures != ""


def provgw(*args: str) -> dict:
    result = subprocess.run(
        [str(PROVGW), *args, "--json"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def verify_event_receipt(db_path, key_file: Path, event_id: int, gateway, witnesses):
    """`provgw log prove`, then verify its receipt offline with only the public keys."""
    proved = provgw("log", "prove", str(event_id), "--db", str(db_path), "--key", str(key_file))
    bundle = base64.b64decode(proved["receipt"])
    salt, digest = query(db_path, "SELECT salt, digest FROM events WHERE id = ?", (event_id,))[0]
    leaf = leaf_for("event", bytes(salt), bytes(digest))
    info = verify_receipt(bundle, leaf, gateway, witnesses=witnesses, witness_quorum=1)
    return proved, info


def test_served_events_are_sealed_cosigned_by_the_embedded_witness_and_provable_offline(
    gateway_site, site_broker, serve_gateway, tmp_path
):
    gateway = serve_with(serve_gateway, gateway_site, site_broker, FAST_LOG, workers=2)
    ledger = gateway.status["ledger"]
    db_path = gateway.status["database"]
    # First start: both keys are generated, and the status line says so.
    assert ledger["keys_generated"] == [
        str(tmp_path / "gateway-log.key"),
        str(tmp_path / "witness.key"),
    ]
    assert ledger["witnesses"] == ledger["quorum"] == 1
    assert gateway.status["ledger_pid"] not in gateway.status["worker_pids"]
    gateway_key = note.Verifier.from_vkey(ledger["log_vkey"])
    witness_key = note.Verifier.from_vkey(ledger["embedded_witness_vkey"])

    fleet = Fleet(site_broker, gateway_site.pki, gateway_site.devices)
    start = time.monotonic()
    sent = fleet.publish(rounds=10)
    wait_for(lambda: events(db_path) == sent, f"{sent} events stored")
    stored_s = time.monotonic() - start
    wait_for(lambda: cosigned_head_covers(db_path, sent), "a cosigned checkpoint of every event")
    cosigned_s = time.monotonic() - start
    _log.info(
        "%d events: stored after %.2f s, cosigned head after %.2f s", sent, stored_s, cosigned_s
    )

    # The newest checkpoint with its cosignature meets a 1-of-1 quorum of the witness key.
    latest = query(
        db_path,
        "SELECT c.note, s.cosignatures FROM checkpoints c JOIN checkpoint_status s"
        " ON s.size = c.size ORDER BY c.size DESC LIMIT 1",
    )[0]
    quorum = require_quorum(
        bytes(latest[0]) + latest[1].encode(), gateway_key, [witness_key], 1, now=int(time.time())
    )
    assert quorum.signed.checkpoint.size == sent
    assert quorum.witnesses == (witness_key.name,)

    verified = provgw("log", "verify", "--db", db_path, "--key", ledger["log_vkey"])
    assert verified["ok"] is True
    assert verified["events"] == sent
    assert verified["pending_events"] == 0
    proved, info = verify_event_receipt(
        db_path, tmp_path / "gateway-log.key", 17, gateway_key, [witness_key]
    )
    assert info.state == "witnessed"
    assert info.witnesses == (witness_key.name,)
    # Without the witness key the same receipt proves only "logged"; another key proves nothing.
    bundle = base64.b64decode(proved["receipt"])
    salt, digest = query(db_path, "SELECT salt, digest FROM events WHERE id = 17")[0]
    leaf = leaf_for("event", bytes(salt), bytes(digest))
    assert verify_receipt(bundle, leaf, gateway_key).state == "logged"
    stranger = note.Signer.generate(witness_key.name, note.COSIGNATURE_V1).verifier
    assert verify_receipt(bundle, leaf, gateway_key, witnesses=[stranger]).state == "logged"

    stopped = gateway.stop()
    assert stopped["log"]["entries"] == sent
    assert stopped["log"]["witnessed"] >= 1

    # Restart: the keys are kept (same log, same witness), and the embedded witness, which
    # remembers its last checkpoint, cosigns the next one by its consistency proof.
    again = gateway.start()
    assert again["ledger"]["keys_generated"] == []
    assert again["ledger"]["log_vkey"] == ledger["log_vkey"]
    more = fleet.publish(rounds=3)
    wait_for(lambda: cosigned_head_covers(db_path, sent + more), "the next cosigned checkpoint")
    verified = provgw("log", "verify", "--db", db_path, "--key", ledger["log_vkey"])
    assert verified["events"] == sent + more


def test_a_killed_ledger_process_is_restarted_and_loses_no_entry(
    gateway_site, site_broker, serve_gateway
):
    gateway = serve_with(serve_gateway, gateway_site, site_broker, FAST_LOG, workers=1)
    db_path = gateway.status["database"]
    fleet = Fleet(site_broker, gateway_site.pki, gateway_site.devices[:4])
    sent = fleet.publish(rounds=5)
    wait_for(lambda: cosigned_head_covers(db_path, sent), "the first cosigned checkpoint")
    os.kill(gateway.status["ledger_pid"], signal.SIGKILL)
    # Ingest does not depend on the ledger process: events are stored while it is down.
    sent += fleet.publish(rounds=5)
    wait_for(lambda: events(db_path) == sent, "events stored while the ledger is down", 5)
    # The supervisor restarts it (1 s backoff); it logs what is pending and seals.
    wait_for(lambda: cosigned_head_covers(db_path, sent), "a cosigned checkpoint after restart")
    key = gateway.status["ledger"]["log_vkey"]
    assert provgw("log", "verify", "--db", db_path, "--key", key)["events"] == sent
    assert "exited with -9; restarting" in gateway.log()


def _copy_database(source: str, target: Path) -> None:
    """A consistent copy, as a backup tool would take it (the SQLite backup API)."""
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)


def test_a_database_older_than_what_the_witnesses_hold_stops_the_log_not_ingest(
    gateway_site, site_broker, serve_gateway, tmp_path
):
    gateway = serve_with(serve_gateway, gateway_site, site_broker, FAST_LOG, workers=1)
    db_path = gateway.status["database"]
    fleet = Fleet(site_broker, gateway_site.pki, gateway_site.devices[:3])
    sent = fleet.publish(rounds=2)
    wait_for(lambda: cosigned_head_covers(db_path, sent), "the first cosigned checkpoint")
    gateway.stop()
    _copy_database(db_path, tmp_path / "backup.sqlite3")
    backed_up = head(db_path)[0]
    # The log grows on, and the embedded witness (its own file) cosigns more of it.
    gateway.start()
    sent += fleet.publish(rounds=2)
    wait_for(lambda: cosigned_head_covers(db_path, sent), "a later cosigned checkpoint")
    assert head(db_path)[0] > backed_up
    gateway.stop()
    # The gateway's database alone is put back to the older copy.
    for suffix in ("", "-wal", "-shm"):
        Path(db_path + suffix).unlink(missing_ok=True)
    _copy_database(str(tmp_path / "backup.sqlite3"), Path(db_path))
    status = gateway.start()
    assert status["status"] == "running"
    # Ingest goes on; the log signs nothing that would fork what the witness holds.
    more = fleet.publish(rounds=2)
    wait_for(lambda: events(db_path) == backed_up + more, "events stored after the restore")
    time.sleep(1.0)  # three seal intervals of FAST_LOG
    assert query(db_path, "SELECT max(size) FROM checkpoints") == [(backed_up,)]
    assert query(db_path, "SELECT count(*) FROM log_leaves") == [(backed_up,)]
    log = gateway.log()
    assert "witness provgw.local/log/witness has cosigned" in log
    assert "is older than the log it published" in log
    assert gateway.stop()["status"] == "stopped"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class WitnessProcess:
    """`provgw witness serve` on a fixed loopback port, restartable on the same state file."""

    def __init__(self, key: Path, log_vkey: str, db: Path, log: Path) -> None:
        self.port = _free_port()
        self.args = [
            str(PROVGW),
            "witness",
            "serve",
            "--key",
            str(key),
            "--log-key",
            log_vkey,
            "--db",
            str(db),
            "--port",
            str(self.port),
            "--json",
        ]
        self.log = log
        self.proc = None

    def start(self) -> None:
        with self.log.open("a") as err:
            self.proc = subprocess.Popen(
                self.args, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True
            )
        # The witness prints its JSON object once it listens (several lines: indented).
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        pytest.fail("the witness did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            self.proc.stdout.close()
        self.proc = None


@pytest.fixture
def remote_witness(tmp_path):
    """A gateway log key, a witness key, and `provgw witness serve` for that log (started)."""
    log_key = tmp_path / "log.key"
    log_vkey = provgw("log", "keygen", "--out", str(log_key), "--origin", "provgw.test/log")["vkey"]
    witness_key = tmp_path / "remote-witness.key"
    witness_vkey = provgw("witness", "keygen", "witness.test/w1", "--out", str(witness_key))["vkey"]
    witness = WitnessProcess(witness_key, log_vkey, tmp_path / "w1.sqlite3", tmp_path / "w1.log")
    witness.start()
    yield log_key, log_vkey, witness_vkey, witness
    witness.kill()


def test_an_unreachable_witness_stops_neither_ingest_nor_sealing_and_cosigning_resumes(
    gateway_site, site_broker, serve_gateway, remote_witness
):
    log_key, log_vkey, witness_vkey, witness = remote_witness
    extra = (
        f'[log]\ninterval_s = 0.3\nkey = "{log_key}"\n'
        "[witnesses]\nembedded = false\nquorum = 1\ntimeout_s = 1.0\n"
        f'remote = [{{ url = "http://127.0.0.1:{witness.port}", vkey = "{witness_vkey}" }}]\n'
    )
    gateway = serve_with(serve_gateway, gateway_site, site_broker, extra, workers=2)
    assert gateway.status["ledger"]["keys_generated"] == []
    assert gateway.status["ledger"]["embedded_witness_vkey"] is None
    db_path = gateway.status["database"]
    fleet = Fleet(site_broker, gateway_site.pki, gateway_site.devices)
    sent = fleet.publish(rounds=4)
    wait_for(lambda: cosigned_head_covers(db_path, sent), "a checkpoint cosigned by the witness")

    witness.kill()
    start = time.monotonic()
    during = fleet.publish(rounds=6, pace=0.05)
    sent += during
    wait_for(lambda: events(db_path) == sent, "events stored while the witness is down", 5)
    stored_s = time.monotonic() - start
    # Sealing goes on: the events are under a signed checkpoint, which no witness cosigned.
    wait_for(lambda: head(db_path)[0] == sent, "a checkpoint sealed while the witness is down")
    assert head(db_path)[1] == ""
    _log.info("witness down: %d events stored %.2f s after the first was sent", during, stored_s)

    witness.start()
    sent += fleet.publish(rounds=2)
    wait_for(lambda: cosigned_head_covers(db_path, sent), "cosignatures after the witness is back")
    uncosigned = query(db_path, "SELECT count(*) FROM checkpoint_status WHERE cosignatures = ''")
    assert uncosigned[0][0] >= 1  # the outage's checkpoints: superseded by the newer cosigned one
    witness_verifier = note.Verifier.from_vkey(witness_vkey)
    gateway_verifier = note.Verifier.from_vkey(log_vkey)
    # An event logged during the outage now has a witnessed receipt under the newer head.
    event_id = sent - 3 * len(gateway_site.devices)
    _, info = verify_event_receipt(db_path, log_key, event_id, gateway_verifier, [witness_verifier])
    assert info.state == "witnessed"
    assert info.tree_size == sent
    assert provgw("log", "verify", "--db", db_path, "--key", log_vkey)["events"] == sent


# -- the chain ------------------------------------------------------------------------------------


@pytest.fixture
def chain(ganache, tmp_path):
    key_file = tmp_path / "chain.key"
    key_file.write_text(ganache.key.removeprefix("0x") + "\n", encoding="ascii")
    return ganache, key_file


def anchored_events(url, address, origin, from_block):
    w3 = Web3(Web3.HTTPProvider(url))
    contract = w3.eth.contract(address=address, abi=contract_artifacts()[0])
    logs = contract.events.Anchored.get_logs(
        argument_filters={"logId": log_id(origin)}, from_block=from_block
    )
    return w3, logs


def anchored_heads(db_path):
    return query(
        db_path,
        "SELECT size, anchored_tx, anchored_block, anchor_chain FROM checkpoint_status"
        " WHERE anchored_tx IS NOT NULL ORDER BY size",
    )


def outbox_open(db_path) -> int:
    return query(db_path, "SELECT count(*) FROM anchor_outbox WHERE status IN ('pending', 'sent')")[
        0
    ][0]


def identifier_forms(pki) -> dict[bytes, str]:
    """Every serial, UDI, GTIN, device id and site of the fleet, as text, base64 and SHA-256."""
    names = {SITE}
    for device in load_devices(pki):
        names |= {device.id, device.udi, device.gtin, device.serial, device.site}
        # The GS1 element string forms of the UDI too: (01)GTIN(21)SERIAL and 01GTIN21SERIAL.
        names |= {f"(01){device.gtin}(21){device.serial}", f"01{device.gtin}21{device.serial}"}
    forms = {}
    for name in names:
        raw = name.encode()
        digest = hashlib.sha256(raw).digest()
        for form in (
            raw,
            base64.b64encode(raw),
            digest,
            base64.b64encode(digest),
            raw.hex().encode(),
        ):
            forms[form] = name
    return forms


def check_anchored_once(db_path, node, address, origin, from_block):
    """Every anchored head has exactly one Anchored event, the one checkpoint_status names."""
    heads = anchored_heads(db_path)
    w3, logs = anchored_events(node.url, address, origin, from_block)
    per_size = Counter(e["args"]["treeSize"] for e in logs)
    assert set(per_size.values()) == {1}  # exactly once
    assert sorted(per_size) == [size for size, *_ in heads]
    by_size = {e["args"]["treeSize"]: e for e in logs}
    for size, tx, block_number, chain_name in heads:
        assert bytes(by_size[size]["transactionHash"]) == bytes(tx)
        assert by_size[size]["blockNumber"] == block_number
        assert chain_name == "eip155:1337"
    confirmed = query(db_path, "SELECT count(*) FROM anchor_outbox WHERE status = 'confirmed'")
    assert confirmed[0][0] == len(heads)
    return w3, logs, heads


def published_by_the_gateway(db_path, log_key, witness_key, event_count) -> list[bytes]:
    """Everything that leaves the gateway: keys, tree, checkpoints, cosignatures, receipts."""
    key = load_gateway_key(log_key)
    published = [key.verifier.vkey.encode(), witness_key.vkey.encode()]
    with Database(db_path) as db:
        published += [bytes(h) for (h,) in db.query("SELECT hash FROM log_nodes")]
        published += [bytes(c) for (c,) in db.query("SELECT commitment FROM log_leaves")]
        published += [bytes(n) for (n,) in db.query("SELECT note FROM checkpoints")]
        published += [c.encode() for (c,) in db.query("SELECT cosignatures FROM checkpoint_status")]
        log = TransparencyLog(db, key.signer)
        published += [issue_receipt(log, key, event_id) for event_id in range(1, event_count + 1)]
    return published


def published_on_chain(w3, logs) -> list[bytes]:
    """Each anchor transaction's input, and its receipt's event data and topics."""
    published = []
    for event in logs:
        published.append(bytes(w3.eth.get_transaction(event["transactionHash"])["input"]))
        for entry in w3.eth.get_transaction_receipt(event["transactionHash"])["logs"]:
            published.append(bytes(entry["data"]))
            published += [bytes(topic) for topic in entry["topics"]]
    return published


def publish_until_stored(fleet, db_path, before, rounds=8, pace=0.1) -> tuple[int, float]:
    """Publish at a steady pace; return how many, and seconds until the last one was stored."""
    start = time.monotonic()
    sent = fleet.publish(rounds=rounds, pace=pace)
    wait_for(lambda: events(db_path) == before + sent, f"{sent} more events stored", 10)
    return sent, time.monotonic() - start


def test_chain_outage_never_stalls_ingest_then_each_head_is_anchored_once_nothing_identifying(
    gateway_site, site_broker, serve_gateway, chain, tmp_path
):
    node, key_file = chain
    deployed = provgw("chain", "deploy", "--rpc", node.url, "--key", str(key_file))
    address, block = deployed["address"], deployed["block"]
    extra = (
        "[log]\ninterval_s = 0.3\n"
        "[chain]\nenabled = true\n"
        f'rpc_url = "{node.url}"\ncontract = "{address}"\nkey_file = "{key_file}"\n'
        f'from_block = {block}\nname = "eip155:1337"\n'
        # Anchor every witnessed head, in order, none superseded; retry at most every second.
        "min_growth = 1\nmax_interval_s = 0\nsupersede = false\nretry_max_s = 1.0\npoll_s = 0.1\n"
    )
    gateway = serve_with(serve_gateway, gateway_site, site_broker, extra, workers=2)
    db_path = gateway.status["database"]
    ledger = gateway.status["ledger"]
    assert ledger["chain"] == node.url
    fleet = Fleet(site_broker, gateway_site.pki, gateway_site.devices)

    # Phase 1 — chain up: heads are witnessed, then anchored.
    sent, up_s = publish_until_stored(fleet, db_path, 0)
    wait_for(
        lambda: anchored_heads(db_path) and anchored_heads(db_path)[-1][0] == sent,
        "the head of every event anchored",
    )

    # Phase 2 — chain node killed: ingest, sealing and cosigning go on at the same pace.
    node.kill()
    during, down_s = publish_until_stored(fleet, db_path, sent)
    sent += during
    assert down_s < 2 * up_s + 1.0
    wait_for(lambda: head(db_path)[0] == sent and head(db_path)[1], "heads cosigned meanwhile")
    time.sleep(1.0)  # the outbox retries against the dead node, with backoff
    assert outbox_open(db_path) >= 1
    errors = query(db_path, "SELECT last_error FROM anchor_outbox WHERE last_error IS NOT NULL")
    assert any(e.startswith("chain-unavailable") for (e,) in errors)
    _log.info(
        "%d events published and stored in %.2f s with the chain down, %.2f s with it up",
        during,
        down_s,
        up_s,
    )

    # Phase 3 — the node is back (same chain): the outbox drains, each head anchored once.
    restarted = time.monotonic()
    node.start()
    wait_for(lambda: outbox_open(db_path) == 0, "the outbox drained", 30)
    _log.info("outbox drained %.2f s after the node restarted", time.monotonic() - restarted)
    w3, logs, heads = check_anchored_once(db_path, node, address, ledger["origin"], block)
    assert heads[-1][0] == sent
    gas = [w3.eth.get_transaction_receipt(e["transactionHash"])["gasUsed"] for e in logs]
    _log.info(
        "%d anchors for %d events; gas per anchor %d-%d", len(heads), sent, min(gas), max(gas)
    )

    # A receipt now says "anchored" and names the anchoring transaction.
    log_key = tmp_path / "gateway-log.key"
    gateway_key = note.Verifier.from_vkey(ledger["log_vkey"])
    witness_key = note.Verifier.from_vkey(ledger["embedded_witness_vkey"])
    _, info = verify_event_receipt(db_path, log_key, 5, gateway_key, [witness_key])
    assert info.state == "anchored"
    assert info.anchor.tx in {bytes(tx) for _, tx, _, _ in heads}
    assert provgw("log", "verify", "--db", db_path, "--key", str(log_key))["events"] == sent
    gateway.stop()

    # Privacy — nothing the gateway publishes names a device, a UDI, a GTIN, a serial or a site.
    published = published_by_the_gateway(db_path, log_key, witness_key, sent)
    published += published_on_chain(w3, logs)
    assert len(published) > 2 * sent
    assert_nothing_identifying(published, gateway_site.pki, db_path)


def assert_nothing_identifying(published: list[bytes], pki, db_path) -> None:
    blob = b"\n".join(published)
    forms = identifier_forms(pki)
    assert {name for form, name in forms.items() if form in blob} == set()
    # The scan is not vacuous: the gateway's own store does hold those identifiers.
    with Database(db_path) as db:
        stored = b"\n".join(bytes(raw) for (raw,) in db.query("SELECT raw FROM events"))
    assert {name for form, name in forms.items() if form in stored}
