"""The web UI against a real store filled through the ingest pipeline, over real HTTP."""

from __future__ import annotations

import hashlib
import html
import http.client
import json
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fhir.resources.R4B.bundle import Bundle

from device_sim.events import SimDevice, make_event
from device_sim.pki import revoke_device as revoke_certificate
from gateway.core.errors import UnavailableError
from gateway.core.note import COSIGNATURE_V1, Signer
from gateway.core.recall import Recall
from gateway.ingest.topics import event_topic
from gateway.ledger.commitments import leaf_for
from gateway.ledger.keys import GatewayKey, write_gateway_key
from gateway.ledger.log import TransparencyLog
from gateway.ledger.receipts import verify_receipt
from gateway.service.ingest import Delivery, IngestPipeline
from gateway.service.remediation import RemediationTracker
from gateway.store.db import Database
from gateway.store.events import EventRecord, EventStore, QuarantineRecord
from gateway.store.inventory import Inventory
from gateway.store.offers import ManifestOffers
from gateway.store.readonly import ReadOnlyDatabase
from gateway.store.recalls import RecallStore, load_recall_trust
from gateway.store.trust_files import load_trust_dir
from gateway.views.web import SECURITY_HEADERS, make_server
from tests._helpers import invoke_cli

RECALLS = Path(__file__).resolve().parents[2] / "firmware_manifests" / "recalls"
RECALL_ID = "Z-0412-2026"
CAMPAIGN = b"\x02" * 32
HOSTILE = "<script>alert(1)</script>"
NOW = datetime.now(UTC)
PROVGW = Path(sys.executable).with_name("provgw")


class Site:
    """A gateway database filled through the real pipeline, and the UI serving it."""

    def __init__(self, directory: Path, gateway_site) -> None:
        self.db_path = directory / "gateway.sqlite3"
        self.key_path = directory / "gateway-log.key"
        self.key = GatewayKey.generate("provgw.local/log")
        write_gateway_key(self.key_path, self.key)
        self.pki = gateway_site.pki
        self.pump = self._pump()
        self.other = next(d for d in gateway_site.devices if d != self.pump)
        self.hostile_topic = f"provgw/v1/{HOSTILE}/dev/x/evt/custody"
        self._fill()
        # The UI's own copy of the PKI: a test has its manufacturer revoke a device there.
        self.own_pki = directory / "pki"
        shutil.copytree(self.pki, self.own_pki)
        self.server = make_server(self.db_path, self.key, port=0, trust_dir=self.own_pki / "trust")
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _pump(self) -> str:
        records = json.loads((self.pki / "devices.json").read_text(encoding="utf-8"))
        return next(r["id"] for r in records if r["model"] == "Volara LVP 3")

    def _deliveries(self, device_id: str, seqs: range, now_ms: int) -> list[Delivery]:
        rng = random.Random(7)
        sim = SimDevice.load(self.pki, device_id)
        kinds = ("custody", "maintenance", "firmware_update")
        out = []
        for seq in seqs:
            kind = kinds[seq % 3]
            event = make_event(device_id, kind, seq, now_ms + seq, rng, today=NOW.date())
            raw = sim.sign(event, with_chain=seq == 1)
            out.append(Delivery(event_topic("icu", device_id, kind), raw, seq, 1, now_ms))
        return out

    def _fill(self) -> None:
        now_ms = int(time.time() * 1000)
        trust = load_trust_dir(self.pki / "trust")
        with Database(self.db_path) as db:
            pipeline = IngestPipeline(db, trust, ack=lambda _tag, _qos: None)
            junk = Delivery(self.hostile_topic, b"\xa1junk", 99, 1, now_ms)
            pipeline.process([*self._deliveries(self.pump, range(1, 7), now_ms), junk])
            pipeline.process(self._deliveries(self.other, range(1, 4), now_ms))
            EventStore(db).insert_batch(
                [], [QuarantineRecord(now_ms, "t/" + HOSTILE, b"raw", HOSTILE, HOSTILE, HOSTILE)]
            )
            # The log: everything so far sealed and anchored, then two more events of the pump
            # appended but not sealed, then one more only stored.
            log = TransparencyLog(db, self.key.signer)
            log.append_pending()
            size = log.size()
            log.seal(NOW)
            log.record_anchor(size, chain="eip155:2033", tx=b"\x01" * 32, block=7, now=NOW)
            pipeline.process(self._deliveries(self.pump, range(7, 9), now_ms))
            log.append_pending()
            pipeline.process(self._deliveries(self.pump, range(9, 10), now_ms))
            # A recall hitting the pump, offered once; an urgent manifest offered without one.
            Inventory(db).import_devices_json(
                self.pki / "devices.json", default_versions={"Volara LVP 3": "4.2.9"}
            )
            recall = Recall.from_bytes(
                (RECALLS / f"{RECALL_ID}.recall.cbor").read_bytes(),
                trust=load_recall_trust(RECALLS / "trust"),
            )
            RecallStore(db).accept(recall, now=NOW)
            RecallStore(db).record_impact(recall, now=NOW)
            RemediationTracker(db).mark_offered(
                RECALL_ID, self.pump, b"offer", manifest=b"\0" * 32, at_ms=now_ms
            )
            ManifestOffers(db).set_state(CAMPAIGN, self.other, "offered", at_ms=now_ms)

    def request(self, path: str, method: str = "GET", host: str | None = None, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        headers = {"Host": host or f"127.0.0.1:{self.port}"}
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def page(self, path: str) -> str:
        status, _, body = self.request(path)
        assert status == 200, body
        return body.decode()

    def download(self, link: str, content_type: str, file_name: str) -> bytes:
        """GET a device page's download *link*: linked from the page, served as an attachment."""
        assert f'href="{link}"' in self.page(f"/devices/{self.pump}")
        status, headers, body = self.request(link)
        assert status == 200
        assert headers["Content-Type"] == content_type
        assert headers["Content-Disposition"] == f'attachment; filename="{file_name}"'
        assert headers["X-Content-Type-Options"] == "nosniff"
        return body

    def api(self, path: str):
        status, headers, body = self.request(path)
        assert status == 200, body
        assert headers["Content-Type"] == "application/json"
        return json.loads(body)

    def files(self) -> dict[str, str]:
        return {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(self.db_path.parent.glob("gateway.sqlite3*"))
            if not p.name.endswith("-shm")  # the WAL index: shared memory, not data
        }


@pytest.fixture(scope="module")
def site(gateway_site, tmp_path_factory):
    s = Site(tmp_path_factory.mktemp("web"), gateway_site)
    yield s
    s.server.shutdown()
    s.server.server_close()


def _cli_json(*args):
    result = invoke_cli(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_overview_lists_every_device_with_totals_and_the_latest_checkpoint(site):
    page = site.page("/")
    assert f'href="/devices/{site.pump}"' in page
    assert f'href="/devices/{site.other}"' in page
    assert "Volara LVP 3" in page
    data = site.api("/api/overview")
    assert data["stored"] == 12
    assert data["quarantined"] == 2
    assert data["quarantined_by_reason"] == {"bad-topic": 1, HOSTILE: 1}
    pump = next(d for d in data["devices"] if d["device_id"] == site.pump)
    assert (pump["events"], pump["model"], pump["firmware"]) == (9, "Volara LVP 3", "4.2.9")
    newest = max(site.api(f"/api/devices/{site.pump}")["events"], key=lambda e: e["seq"])
    assert pump["last_event_ms"] == newest["received_ms"]
    cp = data["checkpoint"]
    assert (cp["size"], cp["anchored"], cp["witnessed"], cp["state"]) == (
        9,
        True,
        False,
        "anchored",
    )
    assert cp["pending_events"] == 1
    assert "eip155:2033 block 7" in page


def test_device_page_shows_history_newest_first_with_each_proof_state(site):
    data = site.api(f"/api/devices/{site.pump}")
    assert [e["seq"] for e in data["events"]] == list(range(9, 0, -1))
    proofs = {e["seq"]: e["proof"] for e in data["events"]}
    assert proofs == {9: "stored", 8: "appended", 7: "appended"} | dict.fromkeys(
        range(1, 7), "anchored"
    )
    assert [e["receipt"] is not None for e in data["events"]] == [False] * 3 + [True] * 6
    first = data["events"][-1]
    by_seq = {e["seq"]: e for e in data["events"]}
    maintenance, firmware, custody = by_seq[1], by_seq[2], by_seq[3]
    assert maintenance["summary"].startswith(maintenance["body"]["kind"] + " work order ")
    assert firmware["summary"].startswith(f"firmware {firmware['body']['from_version']} -> ")
    assert custody["summary"].startswith(custody["body"]["biz_step"])
    page = site.page(f"/devices/{site.pump}")
    assert 'class="state anchored"' in page
    assert 'class="state appended"' in page
    assert f'href="/receipts/{first["id"]}.cbor"' in page


def test_device_page_checks_the_certificate_against_the_trust_folder_as_it_changes(site):
    # Another device than the pump, whose certificate its manufacturer revokes mid-test.
    before = site.api(f"/api/devices/{site.other}")["enrolled"]["certificate"]
    assert (before["accepted"], before["reason"]) == (True, None)
    assert f"valid until {before['valid_until']}" in site.page(f"/devices/{site.other}")
    revoke_certificate(site.own_pki, site.other)
    deadline = time.monotonic() + 10
    while (after := site.api(f"/api/devices/{site.other}")["enrolled"]["certificate"])["accepted"]:
        assert time.monotonic() < deadline, "the UI did not read the changed trust folder"
        time.sleep(0.2)
    assert (after["reason"], after["valid_until"]) == ("revoked", None)
    assert "refused (revoked)" in site.page(f"/devices/{site.other}")
    # And the fleet overview names it, beside the devices the folder still accepts.
    fleet = {d["device_id"]: d for d in site.api("/api/overview")["devices"]}
    assert fleet[site.other]["certificate"] == after
    assert fleet[site.pump]["certificate"]["accepted"] is True
    assert '<span class="state failed">refused (revoked)</span>' in site.page("/")
    # The pump, on the same folder, is still accepted.
    assert site.api(f"/api/devices/{site.pump}")["enrolled"]["certificate"]["accepted"] is True


def test_device_page_limit_shows_the_newest_events_and_counts_them_all(site):
    full = site.api(f"/api/devices/{site.pump}")
    one = site.api(f"/api/devices/{site.pump}?limit=1")
    assert [e["seq"] for e in one["events"]] == [max(e["seq"] for e in full["events"])]
    assert one["events_total"] == full["events_total"] == len(full["events"])


def test_proof_states_are_labelled_as_recorded_not_verified(site):
    # The UI holds no witness keys and does not query the chain: it shows what the gateway
    # recorded (here an anchor without any cosignature), and says so.
    device = site.api(f"/api/devices/{site.pump}")
    assert device["proof_source"] == "recorded"
    assert "provgw log prove" in device["proof_note"]
    checkpoint = site.api("/api/overview")["checkpoint"]
    assert (checkpoint["state"], checkpoint["state_source"]) == ("anchored", "recorded")
    assert "recorded by the gateway" in site.page(f"/devices/{site.pump}")


def test_receipt_download_is_the_bundle_log_prove_writes_and_verifies_offline(site, tmp_path):
    event = site.api(f"/api/devices/{site.pump}")["events"][-1]
    status, headers, bundle = site.request(event["receipt"])
    assert status == 200
    assert headers["Content-Type"] == "application/cbor"
    assert "attachment" in headers["Content-Disposition"]
    out = tmp_path / "r.cbor"
    _cli_json(
        "log", "prove", str(event["id"]), "--db", str(site.db_path), "--key",
        str(site.key_path), "--out", str(out),
    )  # fmt: skip
    assert bundle == out.read_bytes()
    with Database(site.db_path) as db:
        stored = EventStore(db).by_id(event["id"])
    info = verify_receipt(bundle, leaf_for("event", stored.salt, stored.digest), site.key.verifier)
    assert info.state == "anchored"


def test_fhir_download_is_the_bundle_provgw_device_fhir_writes(site, tmp_path):
    data = site.api(f"/api/devices/{site.pump}")
    body = site.download(data["fhir"], "application/fhir+json", f"{site.pump}.fhir.json")
    out = tmp_path / "pump.fhir.json"
    result = invoke_cli("device", "fhir", site.pump, "--db", site.db_path, "-o", out)
    assert result.exit_code == 0, result.output
    served, written = Bundle.model_validate_json(body), Bundle.model_validate_json(out.read_text())
    assert [e.model_dump() for e in served.entry] == [e.model_dump() for e in written.entry]
    assert len(served.entry) == 1 + data["events_total"]
    missing, _, _ = site.request("/devices/ghost/fhir")
    assert missing == 404


def test_audit_download_is_the_bundle_provgw_audit_export_writes_and_it_verifies(site, tmp_path):
    data = site.api(f"/api/devices/{site.pump}")
    body = site.download(data["audit"], "application/zip", f"{site.pump}.audit.zip")
    served = tmp_path / "served.zip"
    served.write_bytes(body)
    # What the receiver runs: the roots and the gateway's vkey. Events 1-6 are under the
    # anchored checkpoint, 7-9 not sealed yet.
    result = invoke_cli(
        "audit", "verify", served, "--trust", site.pki / "trust", "--key",
        site.key.verifier.vkey, "--json",
    )  # fmt: skip
    report = json.loads(result.stdout)
    assert result.exit_code == 0, result.output
    assert (report["events"], report["logged"], report["pending"]) == (9, 6, 3)
    assert report["anchors_claimed"] == 6
    out = tmp_path / "written.zip"
    result = invoke_cli(
        "audit", "export", site.pump, "--db", site.db_path, "--key", site.key_path, "-o", out
    )
    assert result.exit_code == 0, result.output
    with zipfile.ZipFile(served) as a, zipfile.ZipFile(out) as b:
        assert sorted(a.namelist()) == sorted(b.namelist())
        assert a.read("events/1.cose") == b.read("events/1.cose")
    missing, _, _ = site.request("/devices/ghost/audit")
    assert missing == 404


def test_a_ui_given_another_gateways_log_key_says_so(site):
    server = make_server(site.db_path, GatewayKey.generate("provgw.local/log"), port=0)
    try:
        host = f"127.0.0.1:{server.server_address[1]}"
        event_id = site.api(f"/api/devices/{site.pump}")["events"][-1]["id"]  # seq 1: sealed
        for path in (f"/receipts/{event_id}.cbor", f"/devices/{site.pump}/audit"):
            reply = server.respond("GET", path, host)
            assert reply.status == 404
            assert b"did not sign the checkpoints" in reply.body
    finally:
        server.server_close()


def test_without_the_log_key_the_ui_offers_no_audit_bundle(site):
    server = make_server(site.db_path, None, port=0)
    try:
        host = f"127.0.0.1:{server.server_address[1]}"
        reply = server.respond("GET", f"/devices/{site.pump}/audit", host)
        assert reply.status == 404
        assert b"need the gateway log key" in reply.body
        page = server.respond("GET", f"/api/devices/{site.pump}", host)
        assert json.loads(page.body)["audit"] is None
    finally:
        server.server_close()


def test_recall_pages_show_impact_rule_and_remediation_state_as_the_cli_does(site):
    listing = site.api("/api/recalls")
    assert [r["id"] for r in listing["recalls"]] == [RECALL_ID]
    assert listing["campaigns"][0]["id"] == "manifest:" + CAMPAIGN.hex()
    assert f'href="/recalls/{RECALL_ID}"' in site.page("/recalls")
    data = site.api(f"/api/recalls/{RECALL_ID}")
    status = _cli_json("recall", "status", RECALL_ID, "--db", str(site.db_path))
    assert data["status"] == status
    assert data["status"]["counts"] == {"offered": 1}
    assert [a["device_id"] for a in data["impact"]["affected"]] == [site.pump]
    page = site.page(f"/recalls/{RECALL_ID}")
    assert 'class="state offered"' in page
    remedy = data["status"]["recall"]["remedy"]  # shown as words and a digest, not a dict
    assert html.escape(remedy["action"]) in page
    assert f"manifest {remedy['manifest']}" in page
    assert "{&#x27;" not in page
    assert html.escape(data["impact"]["rules"][0]) in page
    campaign = site.api(f"/api/recalls/manifest:{CAMPAIGN.hex()}")
    assert campaign["status"]["devices"][0]["device_id"] == site.other


def test_quarantine_lists_refusals_without_their_bytes_and_filters_by_reason(site):
    data = site.api("/api/quarantine")
    assert {r["reason"] for r in data["rows"]} == {"bad-topic", HOSTILE}
    row = next(r for r in data["rows"] if r["reason"] == "bad-topic")
    assert row["topic"] == site.hostile_topic
    assert "raw" not in row
    assert row["sha256"] == hashlib.sha256(b"\xa1junk").hexdigest()
    only = site.api("/api/quarantine?reason=bad-topic&limit=1")
    assert [r["reason"] for r in only["rows"]] == ["bad-topic"]
    assert only["next_before"] == row["id"]


@pytest.mark.parametrize("path", ["/", "/quarantine", "/quarantine?reason=bad-topic"])
def test_hostile_strings_are_escaped_never_rendered_as_markup(site, path):
    page = site.page(path)
    assert "<script" not in page.lower()
    assert "&lt;script&gt;" in page


def test_every_response_carries_the_security_headers(site):
    for path in ("/", "/api/overview", "/style.css", "/nope", "/api/devices/nope"):
        _, headers, _ = site.request(path)
        for name, value in SECURITY_HEADERS.items():
            assert headers[name] == value
    assert SECURITY_HEADERS["Content-Security-Policy"].startswith(
        "default-src 'none'; style-src 'self'"
    )
    assert SECURITY_HEADERS["X-Content-Type-Options"] == "nosniff"


def test_unknown_device_recall_and_page_are_404_in_html_and_json(site):
    for path in ("/devices/nope", "/recalls/R-0", "/nothing", "/devices/a/b"):
        status, headers, body = site.request(path)
        assert status == 404
        assert headers["Content-Type"].startswith("text/html")
    status, _, body = site.request("/api/devices/" + HOSTILE.replace("/", "%2F"))
    assert status == 404
    assert json.loads(body)["status"] == 404
    status, _, body = site.request("/devices/" + HOSTILE.replace("/", "%2F"))
    assert "<script" not in body.decode()


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=abc",
        "limit=99999999",
        "reason=%3Cscript%3E",
        "before=-1",
        "x=" + "a" * 200,
    ],
)
def test_out_of_bounds_query_parameters_are_refused(site, query):
    status, _, body = site.request("/api/quarantine?" + query)
    assert status == 400, body
    assert "<script" not in site.request("/quarantine?" + query)[2].decode()


def test_writes_are_refused_with_405_and_change_nothing(site):
    before = site.files()
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, headers, _ = site.request("/api/overview", method, body=b"{}")
        assert status == 405
        assert headers["Allow"] == "GET, HEAD"
    status, headers, body = site.request("/", "HEAD")
    assert (status, body) == (200, b"")
    assert int(headers["Content-Length"]) > 0
    site.page("/")
    assert site.files() == before


def test_a_host_that_is_not_loopback_is_refused_against_dns_rebinding(site):
    status, _, _ = site.request("/", host=f"evil.example:{site.port}")
    assert status == 421
    assert site.request("/", host=f"localhost:{site.port}")[0] == 200


def test_the_read_only_database_refuses_every_write(site, tmp_path):
    db = ReadOnlyDatabase(site.db_path)
    try:
        with pytest.raises(UnavailableError) as err, db.atomic():
            pass
        assert err.value.reason == "store-read-only"
        with pytest.raises(sqlite3.OperationalError):
            db.conn.execute("DELETE FROM events")
        assert EventStore(db).count() == 12
    finally:
        db.close()
    with pytest.raises(UnavailableError) as err:
        ReadOnlyDatabase(tmp_path / "missing.sqlite3")
    assert err.value.reason == "store-missing"
    assert not (tmp_path / "missing.sqlite3").exists()


def test_provgw_ui_prints_its_url_serves_and_stops_on_sigterm(site, gateway_site, tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text(
        "\n".join(
            [
                "[broker]",
                'host = "127.0.0.1"',
                "port = 8883",
                f"config_dir = {json.dumps(str(gateway_site.config.directory))}",
                "[trust]",
                f"dir = {json.dumps(str(gateway_site.pki / 'trust'))}",
                "[store]",
                f"path = {json.dumps(str(site.db_path))}",
                "[log]",
                f"key = {json.dumps(str(site.key_path))}",
                "",
            ]
        ),
        encoding="utf-8",
    )
    proc = subprocess.Popen(
        [str(PROVGW), "ui", "--config", str(config), "--port", "0", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = json.loads(proc.stdout.readline())
        assert line["url"].startswith("http://127.0.0.1:")
        assert (line["receipts"], line["read_only"]) == (True, True)
        port = int(line["url"].rsplit(":", 1)[1].strip("/"))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/api/overview")
        assert json.loads(conn.getresponse().read())["stored"] == 12
        conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()
    assert code == 0


def test_overview_calls_a_checkpoint_witnessed_only_once_it_reached_the_quorum(tmp_path):
    db_path, key = tmp_path / "gw.sqlite3", GatewayKey.generate("provgw.local/log")
    witnesses = [Signer.generate(f"w{i}.test", COSIGNATURE_V1) for i in range(3)]
    with Database(db_path) as db:
        EventStore(db).insert_batch(
            [EventRecord("dev-1", s, "custody", 0, 0, "icu", "t", b"m%d" % s) for s in range(3)]
        )
        log = TransparencyLog(db, key.signer)
        log.append_pending()
        signed = log.seal(NOW)
        # 2 of 3 witnesses cosigned, below a quorum of 3: kept, counted, not "witnessed".
        log.add_cosignatures(3, [w.sign(signed.note.text, timestamp=1).line for w in witnesses[:2]])
    server = make_server(db_path, key, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = int(server.server_address[1])

        def get(path: str) -> bytes:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                conn.request("GET", path)
                return conn.getresponse().read()
            finally:
                conn.close()

        def overview():
            return json.loads(get("/api/overview"))["checkpoint"], get("/").decode()

        cp, page = overview()
        assert (cp["state"], cp["witnessed"], cp["cosignatures"]) == ("logged", False, 2)
        assert "no (2 cosignatures, quorum not reached)" in page
        with Database(db_path) as db:  # the ledger service counted the third: quorum reached
            log = TransparencyLog(db, key.signer)
            log.add_cosignatures(3, [witnesses[2].sign(signed.note.text, timestamp=2).line])
            log.mark_witnessed(3, NOW)
        cp, page = overview()
        assert (cp["state"], cp["witnessed"], cp["cosignatures"]) == ("witnessed", True, 3)
        assert "yes (3 cosignatures, quorum reached)" in page
    finally:
        server.shutdown()
        server.server_close()
