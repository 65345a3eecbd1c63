from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

from device_sim.events import SimDevice
from device_sim.pki import init_pki, revoke_device, revoke_issuing_ca
from gateway.core.errors import PolicyError, RevokedError, UntrustedSignerError
from gateway.core.identity import verify_device_chain
from gateway.store import devices as devices_module
from gateway.store.devices import DeviceStore, StandingCache
from gateway.store.events import EventRecord, EventStore
from gateway.store.trust_files import load_trust_dir
from tests._helpers import enrol_demo_devices


@pytest.fixture
def devices(db):
    return DeviceStore(db)


def enrol(devices: DeviceStore, device: str = "pump-1", kid: bytes = b"kid-1", **extra):
    fields = {
        "device_id": device,
        "manufacturer": "acme",
        "kid": kid,
        "cert": b"cert-" + kid,
        "chain": [b"intermediate", b"root"],
        "now_ms": 1_000,
    }
    fields.update(extra)
    return devices.enrol(**fields)


def test_enrolled_device_is_found_by_id_and_by_kid_with_its_chain(devices):
    row = enrol(devices)
    assert devices.get("pump-1") == row
    assert devices.by_kid(b"kid-1") == row
    assert row.chain == (b"intermediate", b"root")
    assert (row.manufacturer, row.cert, row.enrolled_ms) == ("acme", b"cert-kid-1", 1_000)
    assert (row.last_seq, row.revoked_ms, row.rotated_from_kid) == (None, None, None)
    assert devices.get("pump-2") is None
    assert devices.by_kid(b"kid-2") is None


def test_reenrolling_with_the_same_key_refreshes_certificate_and_chain(devices):
    enrol(devices)
    row = enrol(devices, cert=b"renewed", chain=[b"new-intermediate"], now_ms=9_999)
    assert (row.cert, row.chain) == (b"renewed", (b"new-intermediate",))
    assert row.enrolled_ms == 1_000
    assert [k.cert for k in devices.key_history("pump-1")] == [b"renewed"]


def test_reenrolling_with_another_key_is_refused(devices):
    enrol(devices)
    with pytest.raises(PolicyError) as info:
        enrol(devices, kid=b"kid-2")
    assert info.value.reason == "kid-changed"
    assert devices.by_kid(b"kid-1") is not None
    assert devices.by_kid(b"kid-2") is None


def test_a_key_id_of_another_device_is_refused(devices):
    enrol(devices, "pump-1", b"shared")
    with pytest.raises(PolicyError) as info:
        enrol(devices, "pump-2", b"shared")
    assert info.value.reason == "kid-in-use"
    assert devices.get("pump-2") is None


def test_rotation_moves_the_device_to_the_new_key_and_keeps_history(devices):
    enrol(devices)
    row = devices.rotate(
        "pump-1", new_kid=b"kid-2", new_cert=b"cert-2", new_chain=[b"ca"], now_ms=5_000
    )
    assert (row.kid, row.cert, row.chain, row.rotated_from_kid) == (
        b"kid-2",
        b"cert-2",
        (b"ca",),
        b"kid-1",
    )
    assert devices.by_kid(b"kid-2") == row
    assert devices.by_kid(b"kid-1") is None
    old = devices.key_owner(b"kid-1")
    assert old is not None
    assert (old.device_id, old.valid_from_ms, old.valid_to_ms) == ("pump-1", 1_000, 5_000)
    assert [(k.kid, k.valid_to_ms) for k in devices.key_history("pump-1")] == [
        (b"kid-1", 5_000),
        (b"kid-2", None),
    ]


def test_a_retired_key_id_is_never_reused(devices):
    enrol(devices)
    devices.rotate("pump-1", new_kid=b"kid-2", new_cert=b"c", new_chain=[], now_ms=5_000)
    with pytest.raises(PolicyError) as by_other:
        enrol(devices, "pump-2", b"kid-1")
    assert by_other.value.reason == "kid-in-use"
    with pytest.raises(PolicyError) as back:
        devices.rotate("pump-1", new_kid=b"kid-1", new_cert=b"c", new_chain=[], now_ms=6_000)
    assert back.value.reason == "kid-in-use"
    row = devices.get("pump-1")
    assert row is not None
    assert row.kid == b"kid-2"


def test_rotating_an_unknown_device_is_refused(devices):
    with pytest.raises(UntrustedSignerError) as info:
        devices.rotate("ghost", new_kid=b"k", new_cert=b"c", new_chain=[], now_ms=1)
    assert info.value.reason == "unknown-device"


def test_revocation_keeps_the_first_time_and_blocks_reenrolment_and_rotation(devices):
    enrol(devices)
    assert devices.revoke("pump-1", now_ms=7_000)
    assert devices.revoke("pump-1", now_ms=8_000)
    row = devices.get("pump-1")
    assert row is not None
    assert row.revoked
    assert row.revoked_ms == 7_000
    with pytest.raises(RevokedError):
        enrol(devices)
    with pytest.raises(RevokedError):
        devices.rotate("pump-1", new_kid=b"kid-2", new_cert=b"c", new_chain=[], now_ms=9_000)
    assert not devices.revoke("ghost", now_ms=1)


def test_device_enrolled_after_its_events_starts_from_the_highest_stored_seq(db, devices):
    EventStore(db).insert_batch(
        [
            EventRecord("pump-1", seq, "custody", 0, 0, "site-a", "t", f"r{seq}".encode())
            for seq in (3, 11, 4)
        ]
    )
    assert enrol(devices).last_seq == 11
    assert devices.last_seq("pump-1") == 11
    assert devices.last_seq("ghost") is None


def test_revoked_by_lists_the_devices_a_crl_revokes_as_the_gateway_would_refuse_them(tmp_path, db):
    # A real demo PKI: the manufacturer revokes one device's certificate and (another maker)
    # its whole issuing CA; the store names exactly those devices, with the core's sentence.
    pki = tmp_path / "pki"
    records = init_pki(pki, devices_per_model=2)
    now = datetime.now(UTC)
    devices = DeviceStore(db)
    chains = {r.id: list(SimDevice.load(pki, r.id).chain) for r in records}
    enrol_demo_devices(db, pki, list(chains), now)
    first = records[0].manufacturer_slug
    stolen, scrapped = [r.id for r in records if r.manufacturer_slug == first][:2]
    second = next(r.manufacturer_slug for r in records if r.manufacturer_slug != first)
    assert devices.revoked_by(load_trust_dir(pki / "trust"), now) == []

    revoke_device(pki, stolen)
    revoke_device(pki, scrapped)
    revoke_issuing_ca(pki, second)
    devices.revoke(scrapped, now_ms=1)  # revoked here already: denied anyway, not listed again
    trust = load_trust_dir(pki / "trust")
    found = dict(devices.revoked_by(trust, now))

    assert set(found) == {stolen, *(r.id for r in records if r.manufacturer_slug == second)}
    for device_id, why in found.items():
        with pytest.raises(RevokedError) as refused:
            verify_device_chain(chains[device_id], trust, now)
        assert why == str(refused.value)


def test_standing_is_the_trust_folders_verdict_on_the_stored_chain_at_a_time(tmp_path, db):
    pki = tmp_path / "pki"
    records = init_pki(pki, devices_per_model=1)
    now = datetime.now(UTC)
    device = records[0]
    enrol_demo_devices(db, pki, [device.id], now)
    row = DeviceStore(db).get(device.id)
    assert row is not None
    trust = load_trust_dir(pki / "trust")

    accepted = row.standing(trust, now)
    path = [x509.load_der_x509_certificate(der) for der in (row.cert, *row.chain)]
    assert accepted.refusal is None
    assert accepted.valid_until == min(cert.not_valid_after_utc for cert in path)
    # From a second after that, the same chain is refused as out of date, as ingest refuses it.
    later = accepted.valid_until + timedelta(seconds=1)
    expired = row.standing(trust, later)
    assert (expired.refusal.reason, expired.valid_until) == ("expired", None)
    assert expired.to_json() == {
        "accepted": False,
        "valid_until": None,
        "reason": "expired",
        "detail": str(expired.refusal),
    }
    # A trust folder without its manufacturer's root: untrusted, whatever the time.
    for path_ in (pki / "trust").glob(f"{device.manufacturer_slug}.*"):
        path_.unlink()
    untrusted = row.standing(load_trust_dir(pki / "trust"), now).refusal
    assert isinstance(untrusted, UntrustedSignerError)
    assert untrusted.reason == "untrusted-issuer"


def test_standing_cache_verifies_a_chain_once_then_rechecks_only_what_moves_with_time(
    tmp_path, db, monkeypatch
):
    pki = tmp_path / "pki"
    records = init_pki(pki, devices_per_model=1)
    now = datetime.now(UTC)
    enrol_demo_devices(db, pki, [records[0].id, records[1].id], now)
    kept, stolen = (DeviceStore(db).get(r.id) for r in records[:2])
    assert kept is not None
    assert stolen is not None
    trust = load_trust_dir(pki / "trust")
    cache = StandingCache()
    first = cache.standing(kept, trust, now)
    assert first == kept.standing(trust, now)
    assert first.refusal is None

    verified = []
    real = devices_module.verify_device_chain
    monkeypatch.setattr(
        devices_module,
        "verify_device_chain",
        lambda *args: verified.append(args[0]) or real(*args),
    )
    # The same chain, the same store: not verified again, and the verdict moves with the time.
    assert cache.standing(kept, trust, now) == first
    later = cache.standing(kept, trust, first.valid_until + timedelta(seconds=1))
    assert later.refusal is not None
    assert later.refusal.reason == "expired"
    assert verified == []
    # A new store (the folder changed): verified in full again, with the new CRL's verdict.
    revoke_device(pki, stolen.device_id)
    changed = load_trust_dir(pki / "trust")
    refused = cache.standing(stolen, changed, now)
    assert cache.standing(kept, changed, now).refusal is None
    assert len(verified) == 2
    assert isinstance(refused.refusal, RevokedError)
    assert str(refused.refusal) == str(stolen.standing(changed, now).refusal)


def test_get_many_reads_the_enrolled_ones_among_many_ids_in_chunks(devices, monkeypatch):
    for n in range(5):
        enrol(devices, f"pump-{n}", b"kid-%d" % n)
    monkeypatch.setattr(devices_module, "_MANY_CHUNK", 2)  # 3 reads for 6 ids
    found = devices.get_many([f"pump-{n}" for n in (4, 0, 2)] + ["ghost", "pump-1", "pump-3"])
    assert sorted(found) == [f"pump-{n}" for n in range(5)]
    assert found["pump-2"] == devices.get("pump-2")
    assert devices.get_many([]) == {}
