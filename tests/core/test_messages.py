"""Whole-message verification against a demo PKI: the issue's "must show" list, one test each."""

import hashlib
import random
import shutil
from datetime import UTC, datetime, timedelta

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from pycose.algorithms import EdDSA, Es256
from pycose.headers import KID, Algorithm, X5chain
from pycose.keys import CoseKey
from pycose.messages import Sign1Message as PycoseSign1

from device_sim import pki
from device_sim.events import SimDevice, make_event
from gateway.core import cbor, cose
from gateway.core.errors import (
    ExpiredError,
    MalformedError,
    MismatchError,
    OversizeError,
    PolicyError,
    RevokedError,
    SignatureError,
    UntrustedSignerError,
)
from gateway.core.events import Event
from gateway.core.identity import DeviceRegistry
from gateway.core.messages import MessagePolicy, verify_device_message
from gateway.core.udi import Udi
from gateway.store.trust_files import load_trust_dir

NOW = datetime.now(UTC)
NOW_MS = int(NOW.timestamp() * 1000)


@pytest.fixture(scope="module")
def pki_template(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki") / "demo"
    records = pki.init_pki(root, devices_per_model=1)
    return root, records


@pytest.fixture
def demo(pki_template, tmp_path):
    """A private copy of the demo PKI (tests revoke things in it)."""
    src, records = pki_template
    dst = tmp_path / "demo"
    shutil.copytree(src, dst)
    return dst, records


def device_of(root, records, alg):
    record = next(r for r in records if r.alg == alg)
    return SimDevice.load(root, record.id)


def event_for(device_id, *, seq=1, time_ms=NOW_MS, type_="maintenance"):
    return make_event(device_id, type_, seq, time_ms, random.Random(seq), today=NOW.date())


def verify(data, root, registry=None, **kwargs):
    return verify_device_message(
        data,
        trust=load_trust_dir(root / "trust"),
        registry=registry if registry is not None else DeviceRegistry(),
        now=NOW,
        **kwargs,
    )


@pytest.mark.parametrize("alg", ["Ed25519", "P-256"])
def test_first_contact_with_chain_verifies_and_enrols(demo, alg):
    root, records = demo
    device = device_of(root, records, alg)
    registry = DeviceRegistry()
    verified = verify(device.sign(event_for(device.device_id)), root, registry)
    assert verified.device_id == device.device_id
    assert verified.event.type == "maintenance"
    assert registry.by_kid(device.kid).device_id == device.device_id


def test_after_enrolment_the_kid_alone_is_enough(demo):
    root, records = demo
    device = device_of(root, records, "Ed25519")
    registry = DeviceRegistry()
    verify(device.sign(event_for(device.device_id, seq=1)), root, registry)
    later = device.sign(event_for(device.device_id, seq=2), with_chain=False)
    assert verify(later, root, registry).event.seq == 2


def test_unknown_kid_without_chain_is_untrusted(demo):
    root, records = demo
    device = device_of(root, records, "Ed25519")
    with pytest.raises(UntrustedSignerError):
        verify(device.sign(event_for(device.device_id), with_chain=False), root)


def _pycose_sign(payload, key, kid, chain, *, alg_protected=True):
    alg = EdDSA if isinstance(key, Ed25519PrivateKey) else Es256
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    phdr = {KID: kid, X5chain: list(chain)}
    uhdr = {}
    (phdr if alg_protected else uhdr)[Algorithm] = alg
    msg = PycoseSign1(phdr=phdr, uhdr=uhdr, payload=payload)
    msg.key = CoseKey.from_pem_private_key(pem)
    return msg.encode()


@pytest.mark.parametrize("alg", ["Ed25519", "P-256"])
def test_message_signed_by_an_independent_cose_implementation_verifies(demo, alg):
    root, records = demo
    device = device_of(root, records, alg)
    payload = cbor.dumps(event_for(device.device_id).to_cbor_map())
    data = _pycose_sign(payload, device.key, device.kid, device.chain)
    assert verify(data, root).device_id == device.device_id


def test_independent_message_with_one_flipped_bit_is_refused(demo):
    root, records = demo
    device = device_of(root, records, "P-256")
    payload = cbor.dumps(event_for(device.device_id).to_cbor_map())
    data = bytearray(_pycose_sign(payload, device.key, device.kid, device.chain))
    data[-10] ^= 0x01  # inside the signature
    with pytest.raises(SignatureError) as info:
        verify(bytes(data), root)
    assert info.value.reason == "bad-signature"


def test_flipped_bit_in_payload_is_refused(demo):
    root, records = demo
    device = device_of(root, records, "Ed25519")
    data = device.sign(event_for(device.device_id))
    msg = cbor2.loads(data).value
    payload = bytearray(msg[2])
    payload[-3] ^= 0x01
    tampered = cbor2.dumps(cbor2.CBORTag(18, [msg[0], msg[1], bytes(payload), msg[3]]))
    with pytest.raises(SignatureError):
        verify(tampered, root)


def test_alg_in_unprotected_header_is_refused(demo):
    root, records = demo
    device = device_of(root, records, "Ed25519")
    payload = cbor.dumps(event_for(device.device_id).to_cbor_map())
    data = _pycose_sign(payload, device.key, device.kid, device.chain, alg_protected=False)
    with pytest.raises(PolicyError) as info:
        verify(data, root)
    assert info.value.reason == "alg-unprotected"


def test_trailing_bytes_are_refused(demo):
    root, records = demo
    device = device_of(root, records, "Ed25519")
    with pytest.raises(MalformedError) as info:
        verify(device.sign(event_for(device.device_id)) + b"\x00", root)
    assert info.value.reason == "trailing"


def test_certificate_from_untrusted_ca_is_refused(demo):
    root, _ = demo
    untrusted = pki.load_devices(root / "untrusted")[0]
    device = SimDevice.load(root / "untrusted", untrusted.id)
    with pytest.raises(UntrustedSignerError) as info:
        verify(device.sign(event_for(device.device_id)), root)
    assert "trusted" in str(info.value)


def test_certificate_from_revoked_issuing_ca_is_refused(demo):
    root, records = demo
    device = device_of(root, records, "Ed25519")
    slug = next(r.manufacturer_slug for r in records if r.id == device.device_id)
    pki.revoke_issuing_ca(root, slug)
    with pytest.raises(RevokedError):
        verify(device.sign(event_for(device.device_id)), root)


def test_revoked_device_is_refused_even_by_kid_after_enrolment(demo):
    root, records = demo
    device = device_of(root, records, "P-256")
    registry = DeviceRegistry()
    verify(device.sign(event_for(device.device_id, seq=1)), root, registry)
    pki.revoke_device(root, device.device_id)
    with pytest.raises(RevokedError):
        verify(device.sign(event_for(device.device_id, seq=2), with_chain=False), root, registry)


def test_event_about_another_device_is_refused(demo):
    root, records = demo
    device = device_of(root, records, "Ed25519")
    other = next(r.id for r in records if r.id != device.device_id)
    with pytest.raises(MismatchError) as info:
        verify(device.sign(event_for(other)), root)
    assert info.value.reason == "device-mismatch"


def test_publishing_on_another_devices_topic_is_refused(demo):
    root, records = demo
    device = device_of(root, records, "Ed25519")
    other = next(r.id for r in records if r.id != device.device_id)
    with pytest.raises(MismatchError) as info:
        verify(device.sign(event_for(device.device_id)), root, topic_device=other)
    assert info.value.reason == "topic-mismatch"


def test_event_from_the_future_is_refused(demo):
    root, records = demo
    device = device_of(root, records, "Ed25519")
    future = NOW_MS + int(timedelta(hours=1).total_seconds() * 1000)
    with pytest.raises(ExpiredError) as info:
        verify(device.sign(event_for(device.device_id, time_ms=future)), root)
    assert info.value.reason == "clock-skew"


def test_stale_event_is_refused(demo):
    root, records = demo
    device = device_of(root, records, "Ed25519")
    old = NOW_MS - int(timedelta(days=60).total_seconds() * 1000)
    with pytest.raises(ExpiredError) as info:
        verify(device.sign(event_for(device.device_id, time_ms=old)), root)
    assert info.value.reason == "stale"


def test_key_rotation_signed_with_old_key_moves_the_binding(demo):
    root, records = demo
    device = device_of(root, records, "Ed25519")
    record = next(r for r in records if r.id == device.device_id)
    registry = DeviceRegistry()
    verify(device.sign(event_for(device.device_id, seq=1)), root, registry)

    # The manufacturer issues a new certificate for the same device (same id, new key).
    issuing = pki._load_ca(root / "manufacturers" / record.manufacturer_slug, "issuing")
    new_key = pki.new_key("Ed25519")
    new_cert = pki.make_device_cert(
        issuing,
        Udi.parse(record.udi),
        record.manufacturer,
        new_key.public_key(),
        now=NOW,
    )
    new_chain = (new_cert.public_bytes(Encoding.DER), device.chain[1])
    rotation = Event(
        type="key_rotation",
        device=device.device_id,
        seq=2,
        time_ms=NOW_MS,
        body={"new_x5chain": list(new_chain), "reason": "certificate_renewal"},
    )
    verified = verify(device.sign(rotation, with_chain=False), root, registry)
    assert verified.rotated_to is not None

    renewed = SimDevice(device.device_id, new_key, new_chain)
    after = renewed.sign(event_for(device.device_id, seq=3), with_chain=False)
    assert verify(after, root, registry).event.seq == 3
    with pytest.raises(UntrustedSignerError):  # the old kid no longer resolves
        verify(device.sign(event_for(device.device_id, seq=4), with_chain=False), root, registry)


def test_oversize_message_is_refused_before_parsing(demo):
    root, _ = demo
    with pytest.raises(OversizeError):
        verify(b"\xff" * (cose.DEVICE_POLICY.max_size + 1), root)


def test_event_time_beyond_year_9999_is_refused_as_clock_skew_not_a_crash(demo):
    # A u64 time far past what a datetime holds once raised ValueError out of the verifier: a
    # poison message no batch could get past.
    root, records = demo
    device = device_of(root, records, "Ed25519")
    with pytest.raises(ExpiredError, match="ms after 1970") as info:
        verify(device.sign(event_for(device.device_id, time_ms=2**64 - 1)), root)
    assert info.value.reason == "clock-skew"


def test_skew_and_age_limits_are_inclusive_to_the_millisecond(demo):
    root, records = demo
    device = device_of(root, records, "Ed25519")
    policy = MessagePolicy()
    epoch, ms, us = (
        datetime(1970, 1, 1, tzinfo=UTC),
        timedelta(milliseconds=1),
        timedelta(microseconds=1),
    )
    edge_future = (NOW + policy.max_future_skew - epoch) // ms  # the last ms not ahead
    edge_past = -(-((NOW - policy.max_age - epoch) // us) // 1000)  # the first ms not too old
    for seq, time_ms in ((1, edge_future), (2, edge_past)):
        verify(device.sign(event_for(device.device_id, seq=seq, time_ms=time_ms)), root)
    with pytest.raises(ExpiredError, match="ahead"):
        verify(device.sign(event_for(device.device_id, seq=3, time_ms=edge_future + 1)), root)
    with pytest.raises(ExpiredError, match="older"):
        verify(device.sign(event_for(device.device_id, seq=4, time_ms=edge_past - 1)), root)


def test_digest_is_sha256_of_the_exact_bytes_received(demo):
    root, records = demo
    device = device_of(root, records, "Ed25519")
    data = device.sign(event_for(device.device_id))
    assert verify(data, root).digest == hashlib.sha256(data).digest()
