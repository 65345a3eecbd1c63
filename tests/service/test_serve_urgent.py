"""`provgw serve` runs the urgent lane: a signed recall remediated end to end, ledger down.

Real processes throughout: Mosquitto, `provgw serve` (receiver + verifier, ledger process, urgent
lane process), the manufacturer publishing with `provgw-sim publish-recall`, simulated devices
that verify, install and report, and `provgw recall status` reading the result.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from device_sim.patching import Installed, PatchFleet, PatchOptions
from device_sim.pki import MANUFACTURERS, init_pki
from gateway.core.identity import kid_for
from gateway.core.manifest import unsafe_read_manifest
from gateway.core.note import COSIGNATURE_V1, Signer
from gateway.ingest.broker_config import write_broker_config
from gateway.ingest.topics import manifest_topic
from gateway.ledger.keys import load_gateway_key
from gateway.store.db import Database
from gateway.store.inventory import Inventory
from gateway.store.manifests import ManifestStore, load_manifest_trust

pytestmark = [pytest.mark.broker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "firmware_manifests" / "samples" / "acme-infusion" / "volara-lvp-3"
REMEDY = (SAMPLES / "4.2.10" / "manifest.cbor").read_bytes()
RECALLS = REPO / "firmware_manifests" / "recalls"
RECALL_FILE = RECALLS / "Z-0412-2026.recall.cbor"
MODEL = "Volara LVP 3"
MANIFEST_TRUST_DIR = REPO / "firmware_manifests" / "trust"
BIN = Path(sys.executable).parent
#: Manufacturer publish -> every online device holds its offer, with the ledger's witness and
#: chain endpoints dead. Measured ~0.05 s idle here; the bound leaves room for a loaded CI box.
OFFER_BOUND_S = 2.0


@pytest.fixture(scope="module")
def acme(tmp_path_factory):
    pki = tmp_path_factory.mktemp("serve-urgent") / "pki"
    records = init_pki(pki, devices_per_model=4, manufacturers=MANUFACTURERS[:1])
    config = write_broker_config(
        pki, tmp_path_factory.mktemp("serve-urgent-broker"), now=datetime.now(UTC)
    )
    return pki, config, [r for r in records if r.model == MODEL]


def _dead_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def gateway(acme, start_mosquitto, serve_gateway, tmp_path):
    """`provgw serve` with the urgent lane on, its witness and chain node unreachable."""
    pki, config, volara = acme
    broker = start_mosquitto(pki, config)
    db_path = tmp_path / "gateway.sqlite3"
    with Database(db_path) as db:
        Inventory(db).import_devices_json(pki / "devices.json", default_versions={MODEL: "4.2.9"})
        # The gateway already holds the remedy (an earlier, routine publication of 4.2.10).
        ManifestStore(db).accept(
            REMEDY, trust=load_manifest_trust(MANIFEST_TRUST_DIR), now=datetime.now(UTC)
        )
    serve = serve_gateway(SimpleNamespace(pki=pki, config=config), broker, workers=1, start=False)
    witness = Signer.generate("witness.example/dead", COSIGNATURE_V1).verifier.vkey
    (tmp_path / "chain.key").write_text("11" * 32, encoding="ascii")
    with serve.config.open("a", encoding="utf-8") as conf:
        conf.write(
            "[log]\ninterval_s = 0.2\n"
            "[witnesses]\nembedded = false\nquorum = 1\ntimeout_s = 1.0\n"
            f'remote = [{{ url = "http://127.0.0.1:{_dead_port()}", vkey = "{witness}" }}]\n'
            f'[chain]\nenabled = true\nrpc_url = "http://127.0.0.1:{_dead_port()}"\n'
            f'contract = "0x{"22" * 20}"\nkey_file = "{tmp_path / "chain.key"}"\n'
            "retry_max_s = 1\n"
            f'[urgent]\nmanifest_trust = "{MANIFEST_TRUST_DIR}"\n'
            f'recall_trust = "{RECALLS / "trust"}"\ntick_s = 0.1\n'
        )
    status = serve.start()
    assert status["status"] == "running", serve.log()
    return SimpleNamespace(
        pki=pki, config=config, broker=broker, serve=serve, db=db_path, volara=volara
    )


def _fleet(gw, records, public_pem, **options):
    public = load_pem_public_key(public_pem.read_bytes())
    return PatchFleet(
        gw.pki,
        gw.config,
        records,
        {kid_for(public): public},
        load_manifest_trust(MANIFEST_TRUST_DIR),
        {MODEL: Installed("4.2.9", 2)},
        PatchOptions(**options),
        host=gw.broker.host,
        port=gw.broker.port,
    )


def _run(*args):
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def _status(gw, campaign="Z-0412-2026"):
    result = _run(str(BIN / "provgw"), "recall", "status", campaign, "--db", str(gw.db), "--json")
    return json.loads(result.stdout) if result.returncode == 0 else None


def _wait(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_signed_recall_is_remediated_through_provgw_serve_with_the_ledger_down(gateway):
    gw = gateway
    urgent = gw.serve.status["urgent"]
    # The lane is its own process, niced up (the tests run as root here), subscribed, and signs
    # with the gateway's log key; its public half is where the start line says.
    assert urgent["pid"] not in (gw.serve.status["pid"], *gw.serve.status["worker_pids"])
    assert urgent["pid"] != gw.serve.status["ledger_pid"]
    assert urgent["subscribed"] is True
    if os.geteuid() == 0:
        assert urgent["nice"] == -10
    log_key = load_gateway_key(Path(urgent["offer_key"]))
    public_pem = Path(urgent["offer_public_key"])
    assert kid_for(log_key.public_key).hex() == urgent["offer_kid"]
    ok, failing = gw.volara[:3], gw.volara[3]
    with (
        _fleet(gw, ok, public_pem) as good,
        _fleet(gw, [failing], public_pem, fail_rate=1.0) as bad,
    ):
        sent = time.monotonic()
        published = _run(
            str(BIN / "provgw-sim"),
            "publish-recall",
            str(RECALL_FILE),
            "--broker-dir",
            str(gw.config.directory),
            "--manufacturer",
            "acme-infusion",
            "--port",
            str(gw.broker.port),
        )
        assert published.returncode == 0, published.stderr
        assert good.wait_for(lambda o: len(o) == len(ok), 10)
        assert bad.wait_for(lambda o: len(o) == 1, 10)
        arrived = max(o.arrived for o in good.outcomes + bad.outcomes) - sent
        want = {"installed": 3, "failed": 1}
        assert _wait(lambda: (_status(gw) or {}).get("counts") == want, 15), _status(gw)
    assert arrived < OFFER_BOUND_S, f"offers took {arrived:.3f} s"
    assert {o.recall_id for o in good.outcomes} == {"Z-0412-2026"}
    status = _status(gw)
    states = {d["device_id"]: d["state"] for d in status["devices"]}
    assert states == {**dict.fromkeys((r.id for r in ok), "installed"), failing.id: "failed"}
    assert status["recall"]["signed"] is True
    # The witness and the chain were unreachable the whole time: nothing witnessed or anchored,
    # while the lane's records (recall, offers, reports) still reached the log.
    with Database(gw.db) as db:
        witnessed = db.query("SELECT count(*) FROM checkpoint_status WHERE witnessed_ms > 0")
        anchored = db.query("SELECT count(*) FROM anchor_outbox WHERE status = 'confirmed'")
    assert witnessed[0][0] == 0
    assert anchored[0][0] == 0
    stopped = gw.serve.stop()
    assert stopped["status"] == "stopped"
    assert stopped["quarantined"] == {}


def test_urgent_lane_killed_is_restarted_and_gets_what_was_published_meanwhile(gateway):
    gw = gateway
    pid = gw.serve.status["urgent"]["pid"]
    public_pem = Path(gw.serve.status["urgent"]["offer_public_key"])
    with _fleet(gw, gw.volara, public_pem) as fleet:
        os.kill(pid, signal.SIGKILL)
        # Published while the lane is down: its persistent session holds it for the restart.
        with gw.broker.client("mfr-acme-infusion", session_expiry=0) as mfr:
            mfr.publish(manifest_topic("acme-infusion"), REMEDY)
        assert fleet.wait_for(lambda o: len(o) == len(gw.volara), 15), fleet.outcomes
    assert {o.result for o in fleet.outcomes} == {"installed"}
    campaign = "manifest:" + unsafe_read_manifest(REMEDY).digest.hex()
    assert _wait(lambda: (_status(gw, campaign) or {}).get("counts") == {"installed": 4}, 10)
    assert f"urgent lane (pid {pid}) exited" in gw.serve.log()
