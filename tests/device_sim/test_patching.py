"""Simulated devices check offers themselves: real Mosquitto, gateway-urgent as the sender."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_sim.patching import Installed, PatchFleet, PatchOptions
from device_sim.pki import MANUFACTURERS, init_pki
from gateway.core.cbor import strict_loads
from gateway.core.cose import decode_sign1
from gateway.core.identity import kid_for
from gateway.core.offer import Offer, make_offer, sever_sbom
from gateway.ingest.broker_config import write_broker_config
from gateway.ingest.topics import EVENT_FILTER, command_topic
from gateway.store.manifests import load_manifest_trust

pytestmark = pytest.mark.broker

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "firmware_manifests" / "samples" / "acme-infusion" / "volara-lvp-3"
TRUST = load_manifest_trust(REPO / "firmware_manifests" / "trust")
MODEL = "Volara LVP 3"


@pytest.fixture(scope="module")
def acme(tmp_path_factory):
    pki = tmp_path_factory.mktemp("patching") / "pki"
    records = init_pki(pki, devices_per_model=1, manufacturers=MANUFACTURERS[:1])
    config = write_broker_config(
        pki, tmp_path_factory.mktemp("patch-broker"), now=datetime.now(UTC)
    )
    return pki, config, next(r for r in records if r.model == MODEL)


@pytest.fixture
def device(acme, start_mosquitto):
    """One Volara pump running 4.2.10 (seq 3), a listener on its reports, a gateway key."""
    pki, config, record = acme
    broker = start_mosquitto(pki, config)
    key = Ed25519PrivateKey.generate()
    reports = []
    listener = broker.client(
        "gateway-admin",
        session_expiry=0,
        on_message=lambda _t, payload, *_: reports.append(payload),
    )
    listener.connect()
    listener.subscribe(EVENT_FILTER)
    fleet = PatchFleet(
        pki,
        config,
        [record],
        {kid_for(key.public_key()): key.public_key()},
        TRUST,
        {MODEL: Installed("4.2.10", 3)},
        PatchOptions(),
        host=broker.host,
        port=broker.port,
    )
    fleet.start()
    yield broker, record, key, fleet, reports
    fleet.stop()
    listener.disconnect()


def _send(broker, record, key, version, *, device_id=None):
    envelope = sever_sbom((SAMPLES / version / "manifest.cbor").read_bytes())
    offer = Offer(device_id or record.id, envelope, 1, int(time.time() * 1000), "Z-0412-2026")
    with broker.client("gateway-urgent", session_expiry=0) as gateway:
        gateway.publish(command_topic(record.site, record.id), make_offer(offer, key))


def _body(report):
    return strict_loads(decode_sign1(report).payload)["body"]


def test_rollback_offer_is_refused_by_the_device_and_reported(device):
    broker, record, key, fleet, reports = device
    _send(broker, record, key, "4.2.9")
    assert fleet.wait_for(lambda o: len(o) == 1, 5)
    [outcome] = fleet.outcomes
    assert outcome.result == "rejected"
    assert outcome.detail.startswith("rollback:")
    assert fleet.devices[record.id].installed == Installed("4.2.10", 3)  # nothing installed
    deadline = time.monotonic() + 5
    while not reports and time.monotonic() < deadline:
        time.sleep(0.02)
    body = _body(reports[0])
    assert (body["result"], body["to_version"], body["from_version"]) == (
        "rejected",
        "4.2.9",
        "4.2.10",
    )
    assert (body["trigger"], body["trigger_ref"]) == ("recall", "Z-0412-2026")


def test_offer_signed_by_another_key_is_ignored_and_not_reported(device):
    broker, record, _, fleet, reports = device
    _send(broker, record, Ed25519PrivateKey.generate(), "4.2.10")
    assert fleet.wait_for(lambda o: len(o) == 1, 5)
    assert fleet.outcomes[0].result == "ignored"
    assert "offer-untrusted" in fleet.outcomes[0].detail
    time.sleep(0.2)
    assert reports == []


def test_offer_naming_another_device_is_ignored(device):
    broker, record, key, fleet, reports = device
    _send(broker, record, key, "4.2.10", device_id="08500340100319-VL3-0000099")
    assert fleet.wait_for(lambda o: len(o) == 1, 5)
    assert "offer-device" in fleet.outcomes[0].detail
    assert reports == []


def test_offer_of_the_installed_firmware_is_reported_installed_not_rejected(device):
    broker, record, key, fleet, _ = device
    digest = decode_sign1(
        strict_loads((SAMPLES / "4.2.10" / "manifest.cbor").read_bytes())["manifest"]
    ).payload
    import hashlib  # noqa: PLC0415

    fleet.devices[record.id].installed = Installed("4.2.10", 3, hashlib.sha256(digest).digest())
    _send(broker, record, key, "4.2.10")
    assert fleet.wait_for(lambda o: len(o) == 1, 5)
    assert (fleet.outcomes[0].result, fleet.outcomes[0].detail) == (
        "installed",
        "already installed",
    )
