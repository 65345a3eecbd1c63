"""The urgent lane against a real Mosquitto, real SQLite, simulated devices and `provgw serve`."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import socket
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from device_sim.patching import Installed, PatchFleet, PatchOptions
from device_sim.pki import MANUFACTURERS, init_pki
from gateway.core.identity import kid_for
from gateway.core.manifest import unsafe_read_manifest
from gateway.core.note import COSIGNATURE_V1, Signer
from gateway.ingest.broker_config import write_broker_config
from gateway.ingest.topics import manifest_topic, recall_topic
from gateway.ledger.anchor import Web3AnchorBackend
from gateway.ledger.keys import GatewayKey
from gateway.ledger.log import TransparencyLog
from gateway.ledger.witness_client import WitnessClient, WitnessPool
from gateway.service.batcher import Batcher
from gateway.service.claims import verify_urgent_claims
from gateway.service.outbox import Outbox
from gateway.service.remediation import RecordLogger, RemediationTracker
from gateway.service.urgent import URGENT_CLIENT_ID, UrgentLane
from gateway.store.db import Database
from gateway.store.inventory import Inventory
from gateway.store.manifests import ManifestStore, load_manifest_trust
from gateway.store.recalls import load_recall_trust
from gateway.views.cli._main import _register, cli

_register()
provgw = cli

pytestmark = pytest.mark.broker

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "firmware_manifests" / "samples" / "acme-infusion" / "volara-lvp-3"
URGENT = (SAMPLES / "4.2.10" / "manifest.cbor").read_bytes()
RECALLS = REPO / "firmware_manifests" / "recalls"
RECALL = (RECALLS / "Z-0412-2026.recall.cbor").read_bytes()
ONE_SIGNATURE = (RECALLS / "Z-0412-2026.one-signature.cbor").read_bytes()
MODEL = "Volara LVP 3"
MANIFEST_TRUST = load_manifest_trust(REPO / "firmware_manifests" / "trust")
RECALL_TRUST = load_recall_trust(RECALLS / "trust")


@pytest.fixture(scope="module")
def acme_site(tmp_path_factory):
    """Acme's two models, four devices each; broker config with the gateway-urgent identity."""
    pki = tmp_path_factory.mktemp("urgent") / "pki"
    records = init_pki(pki, devices_per_model=4, manufacturers=MANUFACTURERS[:1])
    config = write_broker_config(pki, tmp_path_factory.mktemp("urgent-broker"), now=_now())
    return pki, config, records


def _now():
    return datetime.now(UTC)


@pytest.fixture
def site(acme_site, start_mosquitto, tmp_path):
    pki, config, records = acme_site
    broker = start_mosquitto(pki, config)
    db_path = tmp_path / "gateway.sqlite3"
    with Database(db_path) as db:
        Inventory(db).import_devices_json(pki / "devices.json", default_versions={MODEL: "4.2.9"})
    key = Ed25519PrivateKey.generate()
    volara = [r for r in records if r.model == MODEL]
    return pki, config, broker, db_path, key, volara


def _lane(site, **kw):
    _, config, broker, db_path, key, _ = site
    return UrgentLane(
        db_path,
        config.client(URGENT_CLIENT_ID),
        host=broker.host,
        port=broker.port,
        manifest_trust=MANIFEST_TRUST,
        recall_trust=RECALL_TRUST,
        offer_key=key,
        **kw,
    )


def _fleet(site, records, **options):
    pki, config, broker, _, key, _ = site
    return PatchFleet(
        pki,
        config,
        records,
        {kid_for(key.public_key()): key.public_key()},
        MANIFEST_TRUST,
        {MODEL: Installed("4.2.9", 2)},
        PatchOptions(**options),
        host=broker.host,
        port=broker.port,
    )


def _publish(broker, topic, payload):
    with broker.client("mfr-acme-infusion", session_expiry=0) as mfr:
        mfr.publish(topic, payload)


def _states(db_path, recall_id="Z-0412-2026"):
    with Database(db_path) as db:
        status = RemediationTracker(db).status(recall_id)
    return {} if status is None else {d.device_id: d.state for d in status.devices}


def _wait(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.mark.slow
def test_recall_remediation_tracks_installed_failed_and_unreachable_devices(site, serve_gateway):
    """`provgw serve` runs ingest AND the lane (its own process); reports move each device."""
    pki, config, broker, db_path, key, volara = site
    ok, failing, offline = volara[:2], volara[2], volara[3]
    with Database(db_path) as db:  # the gateway already holds the remedy manifest
        ManifestStore(db).accept(URGENT, trust=MANIFEST_TRUST, now=_now())
    serve = serve_gateway(SimpleNamespace(pki=pki, config=config), broker, workers=1, start=False)
    offer_key = serve.config.parent / "offer.pem"
    offer_key.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    with serve.config.open("a", encoding="utf-8") as conf:
        conf.write(
            f'[urgent]\noffer_key = "{offer_key}"\n'
            f'manifest_trust = "{REPO / "firmware_manifests" / "trust"}"\n'
            f'recall_trust = "{RECALLS / "trust"}"\n'
            "retry_timeout_s = 0.5\nretry_max_attempts = 2\nretry_backoff = 1.0\ntick_s = 0.1\n"
        )
    assert serve.start()["status"] == "running"
    assert serve.status["urgent"]["subscribed"] is True
    with (
        _fleet(site, ok) as good,
        _fleet(site, [failing], fail_rate=1.0) as bad,
    ):
        _publish(broker, recall_topic("acme-infusion"), RECALL)
        want = {**dict.fromkeys((r.id for r in ok), "installed"), failing.id: "failed"}
        want[offline.id] = "unreachable"
        assert _wait(lambda: _states(db_path) == want, 20), _states(db_path)
    assert {o.result for o in good.outcomes} == {"installed"}
    assert {o.result for o in bad.outcomes} == {"failed"}
    assert all(o.recall_id == "Z-0412-2026" for o in good.outcomes + bad.outcomes)
    with Database(db_path) as db:
        rows = db.query(
            "SELECT state, count(*) FROM urgent_records WHERE recall_id = 'Z-0412-2026'"
            " GROUP BY state"
        )
        unreachable = RemediationTracker(db).status("Z-0412-2026")
        # What each record claims recomputes from the real reports, recall and timeout.
        claims = verify_urgent_claims(db).checked
    counts = dict(rows)
    assert (claims["recall/ongoing"], claims["remediation/unreachable"]) == (1, 1)
    assert (claims["remediation/installed"], claims["remediation/failed"]) == (2, 1)
    assert counts["ongoing"] == 1  # the recall itself
    assert counts["installed"] == 2
    assert counts["failed"] == 1
    assert counts["unreachable"] == 1
    offline_row = next(d for d in unreachable.devices if d.device_id == offline.id)
    assert offline_row.attempts == 2


def test_recall_with_one_of_two_signatures_is_refused_and_offers_nothing(site):
    _, _, broker, db_path, _, volara = site
    with Database(db_path) as db:
        ManifestStore(db).accept(URGENT, trust=MANIFEST_TRUST, now=_now())
    with _lane(site) as lane, _fleet(site, volara) as fleet:
        _publish(broker, recall_topic("acme-infusion"), ONE_SIGNATURE)
        assert _wait(lambda: lane.stats.refused, 5)
        time.sleep(0.3)  # an offer, had one been sent, would have arrived by now
        assert fleet.outcomes == []
    assert lane.stats.refused == [("recall", "untrusted-signer")]
    assert lane.stats.offers == 0
    with Database(db_path) as db:
        assert db.query("SELECT count(*) FROM recalls")[0][0] == 0


def _dead_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Hang(http.server.BaseHTTPRequestHandler):
    """A witness that accepts the connection and never answers."""

    def do_POST(self):
        time.sleep(2)


@contextlib.contextmanager
def _failing_ledger(db_path):
    """The ledger side, all failing: batcher sealing every 100 ms, two dead witnesses, no chain."""
    key = GatewayKey.generate("urgent-test.example/log")
    hang = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hang)
    threading.Thread(target=hang.serve_forever, daemon=True).start()
    dead = [f"http://127.0.0.1:{_dead_port()}", f"http://127.0.0.1:{hang.server_port}"]
    pool = WitnessPool(
        [
            WitnessClient(
                url, Signer.generate(f"witness.example/w{i}", COSIGNATURE_V1).verifier, timeout=1
            )
            for i, url in enumerate(dead)
        ],
        deadline=2.0,
    )
    ledger_db = Database(db_path)
    log = TransparencyLog(ledger_db, key.signer)
    chain = Web3AnchorBackend.from_url(
        f"http://127.0.0.1:{_dead_port()}", "0x" + "11" * 20, "0x" + "22" * 32
    )
    outbox = Outbox(ledger_db, chain, poll_s=0.05)
    stop = threading.Event()

    async def ledger_side():
        async def witnesses(signed):
            size = signed.checkpoint.size
            stored = log.checkpoint(size)
            await asyncio.to_thread(
                pool.submit, stored.note, lambda old: log.consistency_proof(old, size)
            )

        async def anchor(signed):
            outbox.enqueue(signed)

        async with (
            Batcher(log, interval_s=0.1, on_checkpoint=[witnesses, anchor], poll_s=0.05),
            outbox,
        ):
            await asyncio.to_thread(stop.wait)

    ledger = threading.Thread(target=asyncio.run, args=(ledger_side(),), daemon=True)
    ledger.start()
    recorder = RecordLogger(ledger_db, log, interval_s=0.05)
    recorder.start()
    try:
        yield
    finally:
        stop.set()
        ledger.join(10)
        recorder.stop()
        hang.shutdown()
        hang.server_close()
        pool.close()
        ledger_db.close()


def test_urgent_offers_arrive_while_chain_and_every_witness_are_down(site):
    """The log batcher, witnesses and chain run beside the lane, all failing; offers still flow."""
    _, _, broker, db_path, _, volara = site
    with (
        _failing_ledger(db_path),
        _lane(site) as lane,
        _fleet(site, volara) as fleet,
    ):
        sent = time.monotonic()
        _publish(broker, manifest_topic("acme-infusion"), URGENT)
        assert fleet.wait_for(lambda o: len(o) >= len(volara), 5)
        arrived = max(o.arrived for o in fleet.outcomes) - sent
        assert _wait(lambda: lane.stats.sbom_verdicts == 1, 5)
        time.sleep(0.3)  # the record logger's next round
    assert {o.device_id for o in fleet.outcomes} == {r.id for r in volara}
    assert {o.result for o in fleet.outcomes} == {"installed"}
    assert arrived < 1.0, f"offers took {arrived:.3f} s"
    # Witnesses and chain were down the whole time, and the lane's records still reached the log.
    with Database(db_path) as db:
        kinds = dict(db.query("SELECT kind, count(*) FROM log_leaves GROUP BY kind"))
        anchored = db.query("SELECT count(*) FROM anchor_outbox WHERE status = 'confirmed'")
        witnessed = db.query("SELECT count(*) FROM checkpoint_status WHERE witnessed_ms > 0")
    assert kinds.get("remediation", 0) >= 1  # the SBOM verdict
    assert anchored[0][0] == 0
    assert witnessed[0][0] == 0


def _quarantine(db_path):
    with Database(db_path) as db:
        return db.query("SELECT topic, raw, reason, received_ms FROM quarantine ORDER BY id")


def test_recall_below_the_signature_threshold_is_quarantined_with_its_bytes(site):
    _, _, broker, db_path, _, _ = site
    sent = time.time() * 1000
    with _lane(site) as lane:
        _publish(broker, recall_topic("acme-infusion"), ONE_SIGNATURE)
        assert _wait(lambda: lane.stats.quarantined == 1, 5)
    [(topic, raw, reason, received_ms)] = _quarantine(db_path)
    assert topic == recall_topic("acme-infusion")
    assert bytes(raw) == ONE_SIGNATURE
    assert reason == "untrusted-signer"
    assert sent - 1000 <= received_ms <= time.time() * 1000


def test_manifest_with_a_broken_signature_is_quarantined_and_offers_nothing(site):
    _, _, broker, db_path, _, volara = site
    tampered = bytearray(URGENT)
    tampered[-10] ^= 0x01  # inside the signature (the SBOM member comes before it)
    with _lane(site) as lane, _fleet(site, volara) as fleet:
        _publish(broker, manifest_topic("acme-infusion"), bytes(tampered))
        assert _wait(lambda: lane.stats.quarantined == 1, 5)
        time.sleep(0.3)  # an offer, had one been sent, would have arrived by now
        assert fleet.outcomes == []
    [(topic, raw, reason, _)] = _quarantine(db_path)
    assert (topic, bytes(raw)) == (manifest_topic("acme-infusion"), bytes(tampered))
    assert reason in {"bad-signature", "malformed", "schema", "envelope"}, reason


def test_rolled_back_manifest_is_quarantined_as_rollback(site):
    _, _, broker, db_path, _, _ = site
    older = (SAMPLES / "4.2.9" / "manifest.cbor").read_bytes()
    with Database(db_path) as db:
        ManifestStore(db).accept(URGENT, trust=MANIFEST_TRUST, now=_now())
    with _lane(site) as lane:
        _publish(broker, manifest_topic("acme-infusion"), older)
        assert _wait(lambda: lane.stats.quarantined == 1, 5)
    [(_, raw, reason, _)] = _quarantine(db_path)
    assert bytes(raw) == older
    assert "rollback" in reason


def _ingest_only(site, serve_gateway):
    """`provgw serve` storing the devices' reports, its own urgent lane off (the test runs one)."""
    pki, config, broker, *_ = site
    serve = serve_gateway(SimpleNamespace(pki=pki, config=config), broker, workers=1, start=False)
    with serve.config.open("a", encoding="utf-8") as conf:
        conf.write("[urgent]\nenabled = false\n")
    status = serve.start()
    assert status["status"] == "running"
    assert status["urgent"] is None
    return serve


@pytest.mark.slow
def test_urgent_manifest_without_a_recall_is_tracked_per_device(site, serve_gateway):
    """Offers of a bare urgent manifest: offered -> installed / failed, shown by recall status."""
    _, _, broker, db_path, _, volara = site
    _ingest_only(site, serve_gateway)
    ok, failing = volara[:3], volara[3]
    campaign = "manifest:" + unsafe_read_manifest(URGENT).digest.hex()
    with (
        _lane(site, tick_s=0.1),
        _fleet(site, ok),
        _fleet(site, [failing], fail_rate=1.0),
    ):
        _publish(broker, manifest_topic("acme-infusion"), URGENT)
        want = {**dict.fromkeys((r.id for r in ok), "installed"), failing.id: "failed"}
        assert _wait(lambda: _states(db_path, campaign) == want, 10), _states(db_path, campaign)
    result = CliRunner().invoke(
        provgw, ["recall", "status", campaign, "--db", str(db_path), "--json"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["counts"] == {"installed": 3, "failed": 1}
    assert out["recall"]["version"] == "4.2.10"
    assert all(d["attempts"] == 1 for d in out["devices"])
    text = CliRunner().invoke(provgw, ["recall", "status", campaign, "--db", str(db_path)])
    assert "urgent manifest 4.2.10" in text.output
    with Database(db_path) as db:
        states = dict(
            db.query(
                "SELECT state, count(*) FROM urgent_records WHERE manifest = ?"
                " AND recall_id IS NULL AND kind = 'remediation' GROUP BY state",
                (bytes.fromhex(campaign.removeprefix("manifest:")),),
            )
        )
    assert states == {"offered": 4, "installed": 3, "failed": 1}
    with Database(db_path) as db:
        claims = verify_urgent_claims(db).checked
    assert (claims["remediation/installed"], claims["remediation/failed"]) == (3, 1)


@pytest.mark.slow
def test_recall_waiting_for_its_remedy_is_offered_under_its_id_when_the_manifest_arrives(
    site, serve_gateway
):
    """Recall first (remedy not held: pending), then the urgent remedy: one offer per device."""
    _, _, broker, db_path, _, volara = site
    _ingest_only(site, serve_gateway)
    with _lane(site, tick_s=0.1) as lane, _fleet(site, volara) as fleet:
        _publish(broker, recall_topic("acme-infusion"), RECALL)
        pending = dict.fromkeys((r.id for r in volara), "pending")
        assert _wait(lambda: _states(db_path) == pending, 5), _states(db_path)
        _publish(broker, manifest_topic("acme-infusion"), URGENT)
        installed = dict.fromkeys((r.id for r in volara), "installed")
        assert _wait(lambda: _states(db_path) == installed, 10), _states(db_path)
    # Each device got exactly one offer, under the recall's id (not a second, bare one).
    assert sorted(o.device_id for o in fleet.outcomes) == sorted(r.id for r in volara)
    assert {o.recall_id for o in fleet.outcomes} == {"Z-0412-2026"}
    assert lane.stats.offers == len(volara)
