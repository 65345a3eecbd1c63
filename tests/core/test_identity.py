from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from device_sim.pki import (
    CertifiedKey,
    make_crl,
    make_device_cert,
    make_issuing_ca,
    make_root_ca,
    new_key,
)
from gateway.core.errors import (
    ExpiredError,
    MalformedError,
    MismatchError,
    PolicyError,
    RevokedError,
    UntrustedSignerError,
)
from gateway.core.identity import (
    DeviceRegistry,
    TrustStore,
    kid_for,
    verify_device_chain,
)
from gateway.core.udi import Udi

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PEM = Encoding.PEM
DER = Encoding.DER


@dataclass(frozen=True)
class Maker:
    name: str
    root: CertifiedKey
    issuing: CertifiedKey

    def crls(self, *, root_revokes=(), issuing_revokes=(), now=NOW) -> list[bytes]:
        return [
            make_crl(self.root, [(s, now) for s in root_revokes], now=now, number=1).public_bytes(
                PEM
            ),
            make_crl(
                self.issuing, [(s, now) for s in issuing_revokes], now=now, number=1
            ).public_bytes(PEM),
        ]


def _maker(name: str, alg) -> Maker:
    root = make_root_ca(name, alg=alg, now=NOW - timedelta(days=30))
    return Maker(name, root, make_issuing_ca(root, alg=alg, now=NOW - timedelta(days=30)))


@pytest.fixture(scope="module")
def acme() -> Maker:
    return _maker("Acme Infusion Systems", "Ed25519")


@pytest.fixture(scope="module")
def borealis() -> Maker:
    return _maker("Borealis Monitoring", "P-256")


@pytest.fixture(scope="module")
def rogue() -> Maker:
    return _maker("Grey Harbor Medical Refurb", "Ed25519")


@pytest.fixture(scope="module")
def trust(acme, borealis) -> TrustStore:
    return TrustStore.from_pem(
        [acme.root.cert.public_bytes(PEM), borealis.root.cert.public_bytes(PEM)],
        acme.crls() + borealis.crls(),
    )


_serials = iter(range(1, 10_000))


def _device(maker: Maker, *, alg="Ed25519", serial=None, **overrides) -> tuple[CertifiedKey, Udi]:
    udi = Udi("09506000134352", serial or f"SN{next(_serials):05d}")
    key = new_key(alg)
    cert = make_device_cert(
        maker.issuing,
        udi,
        overrides.pop("manufacturer", maker.name),
        key.public_key(),
        now=overrides.pop("now", NOW - timedelta(days=1)),
        **overrides,
    )
    return CertifiedKey(key, cert), udi


def _chain(device: CertifiedKey, *cas: CertifiedKey) -> list[bytes]:
    return [device.cert.public_bytes(DER)] + [ca.cert.public_bytes(DER) for ca in cas]


# --- happy paths ---------------------------------------------------------------------------


@pytest.mark.parametrize(("maker_name", "alg"), [("acme", "Ed25519"), ("borealis", "P-256")])
def test_valid_chain_yields_the_identity_the_certificate_names(request, trust, maker_name, alg):
    maker = request.getfixturevalue(maker_name)
    device, udi = _device(maker, alg=alg)
    identity = verify_device_chain(_chain(device, maker.issuing), trust, NOW)
    assert identity.device_id == udi.device_id
    assert identity.udi == udi
    assert identity.manufacturer == maker.name
    assert identity.certificate == device.cert
    assert identity.issuers == (maker.issuing.cert, maker.root.cert)
    expected_type = Ed25519PublicKey if alg == "Ed25519" else EllipticCurvePublicKey
    assert isinstance(identity.public_key, expected_type)
    assert identity.kid == kid_for(device.key.public_key())


def test_kid_is_the_first_16_bytes_of_sha256_over_the_spki():
    key = new_key("P-256").public_key()
    spki = key.public_bytes(DER, PublicFormat.SubjectPublicKeyInfo)
    assert kid_for(key) == hashlib.sha256(spki).digest()[:16]
    assert len(kid_for(new_key("Ed25519").public_key())) == 16


def test_chain_that_includes_the_root_itself_is_accepted(acme, trust):
    device, _ = _device(acme)
    identity = verify_device_chain(_chain(device, acme.issuing, acme.root), trust, NOW)
    assert identity.issuers[-1] == acme.root.cert


def test_single_leaf_bstr_verifies_when_the_store_knows_the_intermediate(acme):
    device, udi = _device(acme)
    store = TrustStore.from_pem(
        [acme.root.cert.public_bytes(PEM)], intermediates=[acme.issuing.cert.public_bytes(PEM)]
    )
    # RFC 9360 §2: a single certificate travels as one bstr instead of an array.
    identity = verify_device_chain(device.cert.public_bytes(DER), store, NOW)
    assert identity.device_id == udi.device_id


def test_the_stores_crls_end_at_their_earliest_next_update(acme, borealis):
    earlier = borealis.crls(now=NOW - timedelta(days=1))
    store = TrustStore.from_pem(
        [acme.root.cert.public_bytes(PEM), borealis.root.cert.public_bytes(PEM)],
        acme.crls() + earlier,
    )
    ends = {x509.load_pem_x509_crl(pem).next_update_utc for pem in acme.crls() + earlier}
    assert len(ends) == 2  # acme's, and borealis's a day sooner
    assert store.crls_next_update == min(ends)
    assert store.crls_next_update == x509.load_pem_x509_crl(earlier[0]).next_update_utc
    assert TrustStore.from_pem([acme.root.cert.public_bytes(PEM)]).crls_next_update is None


# --- refusals ------------------------------------------------------------------------------


def test_certificate_from_an_untrusted_ca_is_refused_naming_the_issuer(rogue, trust):
    device, _ = _device(rogue)
    with pytest.raises(UntrustedSignerError, match="Grey Harbor Medical Refurb Root CA") as info:
        verify_device_chain(_chain(device, rogue.issuing, rogue.root), trust, NOW)
    assert info.value.reason == "untrusted-issuer"


def test_chain_without_its_issuing_ca_is_refused(acme, trust):
    device, _ = _device(acme)
    with pytest.raises(UntrustedSignerError, match="Device Issuing CA 1"):
        verify_device_chain(_chain(device), trust, NOW)


def test_certificate_signed_by_another_ca_under_the_same_name_is_refused(acme, trust):
    # An attacker's CA copies the name of Acme's issuing CA and signs with its own key.
    impostor = CertifiedKey(new_key("Ed25519"), acme.issuing.cert)
    device, _ = _device(Maker(acme.name, acme.root, impostor))
    with pytest.raises(UntrustedSignerError, match="signed by another CA") as info:
        verify_device_chain(_chain(device, acme.issuing), trust, NOW)
    assert info.value.reason == "chain-signature"


def test_issuing_ca_of_another_manufacturer_cannot_vouch_for_a_device(acme, borealis, trust):
    device, _ = _device(acme)
    # The leaf names Acme's issuing CA; offering Borealis's issuing CA does not build a path.
    with pytest.raises(UntrustedSignerError):
        verify_device_chain(_chain(device, borealis.issuing), trust, NOW)


def test_device_certificate_cannot_certify_another_device(acme, trust):
    parent, _ = _device(acme)
    child_key = new_key("Ed25519")
    udi = Udi("09506000134352", "CLONE1")
    child = make_device_cert(
        CertifiedKey(parent.key, parent.cert),  # the device certificate acts as an issuer
        udi,
        acme.name,
        child_key.public_key(),
        now=NOW - timedelta(days=1),
    )
    chain = [child.public_bytes(DER), *_chain(parent, acme.issuing)]
    with pytest.raises(UntrustedSignerError, match="not a CA") as info:
        verify_device_chain(chain, trust, NOW)
    assert info.value.reason == "not-a-ca"


def test_expired_device_certificate_is_refused(acme, trust):
    device, _ = _device(acme, now=NOW - timedelta(days=400), days=365)
    with pytest.raises(ExpiredError, match="expired on") as info:
        verify_device_chain(_chain(device, acme.issuing), trust, NOW)
    assert info.value.reason == "expired"


def test_not_yet_valid_device_certificate_is_refused(acme, trust):
    device, _ = _device(acme, not_before=NOW + timedelta(hours=2))
    with pytest.raises(ExpiredError, match="not valid before") as info:
        verify_device_chain(_chain(device, acme.issuing), trust, NOW)
    assert info.value.reason == "not-yet-valid"


def test_revoked_device_certificate_is_refused(acme):
    device, _ = _device(acme)
    store = TrustStore.from_pem(
        [acme.root.cert.public_bytes(PEM)],
        acme.crls(issuing_revokes=[device.cert.serial_number]),
    )
    with pytest.raises(RevokedError, match="device certificate") as info:
        verify_device_chain(_chain(device, acme.issuing), store, NOW)
    assert info.value.reason == "revoked"
    other, _ = _device(acme)
    assert verify_device_chain(_chain(other, acme.issuing), store, NOW).certificate == other.cert


def test_revoked_issuing_ca_refuses_every_device_it_issued(acme):
    store = TrustStore.from_pem(
        [acme.root.cert.public_bytes(PEM)],
        acme.crls(root_revokes=[acme.issuing.cert.serial_number]),
    )
    for _ in range(2):
        device, _ = _device(acme)
        with pytest.raises(RevokedError, match="CA"):
            verify_device_chain(_chain(device, acme.issuing), store, NOW)


def test_crl_not_signed_by_its_ca_fails_closed(acme):
    forged_ca = CertifiedKey(new_key("Ed25519"), acme.issuing.cert)
    forged = make_crl(forged_ca, [], now=NOW, number=7).public_bytes(PEM)
    store = TrustStore.from_pem([acme.root.cert.public_bytes(PEM)], [forged])
    device, _ = _device(acme)
    with pytest.raises(RevokedError, match="cannot be established") as info:
        verify_device_chain(_chain(device, acme.issuing), store, NOW)
    assert info.value.reason == "crl-unverifiable"


def test_stale_crl_is_refused(acme):
    store = TrustStore.from_pem(
        [acme.root.cert.public_bytes(PEM)], acme.crls(now=NOW - timedelta(days=400))
    )
    device, _ = _device(acme)
    with pytest.raises(ExpiredError, match="revocation list") as info:
        verify_device_chain(_chain(device, acme.issuing), store, NOW)
    assert info.value.reason == "crl-stale"


def test_cn_naming_another_device_than_the_udi_is_refused(acme, trust):
    device, _ = _device(acme, common_name="09506000134352-SOMEONE-ELSE")
    with pytest.raises(MismatchError, match="does not match its UDI") as info:
        verify_device_chain(_chain(device, acme.issuing), trust, NOW)
    assert info.value.reason == "cn-udi-mismatch"


def test_cn_that_is_not_a_device_id_is_refused(acme, trust):
    device, _ = _device(acme, common_name="infusion-pump-7")
    with pytest.raises(MalformedError, match="not a device id"):
        verify_device_chain(_chain(device, acme.issuing), trust, NOW)


def test_manufacturer_cannot_issue_in_another_manufacturers_name(acme, trust):
    device, _ = _device(acme, manufacturer="Borealis Monitoring")
    with pytest.raises(MismatchError, match="Borealis Monitoring") as info:
        verify_device_chain(_chain(device, acme.issuing), trust, NOW)
    assert info.value.reason == "manufacturer-mismatch"


@pytest.mark.parametrize(
    "chain",
    [[], [b"not a certificate"], [b"\x30\x03\x02\x01\x01"], ["text"], [b"x"] * 5],
    ids=["empty", "garbage", "truncated-der", "not-bytes", "too-long"],
)
def test_malformed_chains_are_refused(trust, chain):
    with pytest.raises(MalformedError):
        verify_device_chain(chain, trust, NOW)


def test_root_presented_as_a_device_certificate_is_refused(acme, trust):
    with pytest.raises(PolicyError):
        verify_device_chain([acme.root.cert.public_bytes(DER)], trust, NOW)


def test_naive_now_is_a_programming_error(acme, trust):
    device, _ = _device(acme)
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_device_chain(_chain(device, acme.issuing), trust, datetime(2026, 3, 1))  # noqa: DTZ001


# --- trust store ---------------------------------------------------------------------------


def test_trust_store_refuses_bytes_that_are_not_pem():
    with pytest.raises(MalformedError):
        TrustStore.from_pem([b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"])
    with pytest.raises(MalformedError):
        TrustStore.from_pem([], [b"not a crl"])


def test_trust_store_refuses_an_intermediate_as_anchor(acme):
    with pytest.raises(PolicyError, match="not a self-signed root"):
        TrustStore.from_pem([acme.issuing.cert.public_bytes(PEM)])


def test_still_valid_check_sees_revocation_issued_after_enrolment(acme, trust):
    device, _ = _device(acme)
    identity = verify_device_chain(_chain(device, acme.issuing), trust, NOW)
    trust.check_still_valid(identity, NOW)
    later = TrustStore.from_pem(
        [acme.root.cert.public_bytes(PEM)],
        acme.crls(issuing_revokes=[device.cert.serial_number]),
    )
    with pytest.raises(RevokedError):
        later.check_still_valid(identity, NOW)


def test_still_valid_check_sees_expiry_and_removed_roots(acme, borealis, trust):
    device, _ = _device(acme, days=30)
    identity = verify_device_chain(_chain(device, acme.issuing), trust, NOW)
    with pytest.raises(ExpiredError):
        trust.check_still_valid(identity, NOW + timedelta(days=60))
    only_borealis = TrustStore.from_pem([borealis.root.cert.public_bytes(PEM)])
    with pytest.raises(UntrustedSignerError) as info:
        only_borealis.check_still_valid(identity, NOW)
    assert info.value.reason == "anchor-removed"


def _verdict(check, *args) -> str | None:
    try:
        check(*args)
    except (ExpiredError, RevokedError, UntrustedSignerError) as err:
        return f"{err.reason}: {err.message}"
    return None


@pytest.mark.parametrize("store_kind", ["clean", "device-revoked", "ca-revoked", "forged-crl"])
def test_still_valid_check_agrees_with_a_full_verification_at_every_time(acme, store_kind):
    # The re-check keeps a per-identity memo of what does not depend on the time; whatever the
    # memo holds, its verdict (reason AND sentence) is the full chain verification's at `now`.
    device, _ = _device(acme, days=3 * 365, not_before=NOW - timedelta(days=1))
    chain = _chain(device, acme.issuing)
    no_crls = TrustStore.from_pem([acme.root.cert.public_bytes(PEM)])
    enrolled = verify_device_chain(chain, no_crls, NOW)
    crls = {
        "clean": acme.crls(),
        "device-revoked": acme.crls(issuing_revokes=[device.cert.serial_number]),
        "ca-revoked": acme.crls(root_revokes=[acme.issuing.cert.serial_number]),
        "forged-crl": [
            make_crl(
                CertifiedKey(new_key("Ed25519"), acme.issuing.cert), [], now=NOW, number=7
            ).public_bytes(PEM)
        ],
    }[store_kind]
    store = TrustStore.from_pem([acme.root.cert.public_bytes(PEM)], crls)
    times = [
        NOW,  # valid, unless a CRL says otherwise
        NOW - timedelta(days=2),  # before the device certificate: not-yet-valid
        NOW + timedelta(days=366),  # past the CRLs' nextUpdate: crl-stale
        NOW,  # back again: the memo must not have kept a verdict
        NOW + timedelta(days=4 * 365),  # past the device certificate: expired
    ]
    verdicts = [_verdict(store.check_still_valid, enrolled, t) for t in times]
    assert verdicts == [_verdict(verify_device_chain, chain, store, t) for t in times]
    assert (verdicts[0] is None) == (store_kind == "clean")
    assert verdicts[1] is not None
    assert verdicts[1].startswith("not-yet-valid")


def test_still_valid_check_of_a_renewed_certificate_uses_the_new_certificate(acme, trust):
    # Same key (same kid), new certificate: the re-check must judge the identity it is given,
    # not one remembered under its kid.
    key = new_key("Ed25519")
    udi = Udi("09506000134352", f"SN{next(_serials):05d}")
    short = make_device_cert(acme.issuing, udi, acme.name, key.public_key(), now=NOW, days=10)
    renewed = make_device_cert(acme.issuing, udi, acme.name, key.public_key(), now=NOW, days=900)
    old = verify_device_chain(
        [short.public_bytes(DER), acme.issuing.cert.public_bytes(DER)], trust, NOW
    )
    new = verify_device_chain(
        [renewed.public_bytes(DER), acme.issuing.cert.public_bytes(DER)], trust, NOW
    )
    assert old.kid == new.kid
    later = NOW + timedelta(days=30)
    with pytest.raises(ExpiredError):
        trust.check_still_valid(old, later)
    trust.check_still_valid(new, later)
    with pytest.raises(ExpiredError):
        trust.check_still_valid(old, later)


def test_identities_issued_by_one_ca_share_its_certificate_object(acme, trust):
    # Memory: cryptography caches parsed names and extensions per certificate object, and a
    # verifier holds one identity per enrolled device.
    first, second = (_identity(acme, trust)[1] for _ in range(2))
    assert first.issuers[0] is second.issuers[0]
    assert first.issuers[0] == acme.issuing.cert
    assert first.issuers[-1] is second.issuers[-1]


# --- registry ------------------------------------------------------------------------------


def _identity(maker, trust, **kw):
    device, _ = _device(maker, **kw)
    return device, verify_device_chain(_chain(device, maker.issuing), trust, NOW)


def test_enrolled_device_resolves_by_kid_and_enrolment_is_idempotent(acme, trust):
    registry = DeviceRegistry()
    _, identity = _identity(acme, trust)
    registry.enrol(identity)
    registry.enrol(identity)
    assert registry.by_kid(identity.kid) is identity
    assert registry.by_device_id(identity.device_id) is identity
    assert len(registry) == 1


def test_unknown_kid_is_an_untrusted_signer():
    with pytest.raises(UntrustedSignerError, match="must first send its certificate chain"):
        DeviceRegistry().by_kid(b"\x00" * 16)


def test_second_key_for_an_enrolled_device_is_not_silently_accepted(acme, trust):
    registry = DeviceRegistry()
    _, first = _identity(acme, trust, serial="DUP1")
    _, second = _identity(acme, trust, serial="DUP1")
    registry.enrol(first)
    with pytest.raises(UntrustedSignerError, match="key rotation") as info:
        registry.enrol(second)
    assert info.value.reason == "key-conflict"
    assert registry.by_kid(first.kid) is first
    with pytest.raises(UntrustedSignerError):
        registry.by_kid(second.kid)


def test_one_key_cannot_belong_to_two_devices(acme, trust):
    key = new_key("Ed25519")
    identities = []
    for serial in ("TWIN-A", "TWIN-B"):
        udi = Udi("09506000134352", serial)
        cert = make_device_cert(acme.issuing, udi, acme.name, key.public_key(), now=NOW)
        chain = [cert.public_bytes(DER), acme.issuing.cert.public_bytes(DER)]
        identities.append(verify_device_chain(chain, trust, NOW))
    registry = DeviceRegistry()
    registry.enrol(identities[0])
    with pytest.raises(UntrustedSignerError, match="share a key"):
        registry.enrol(identities[1])


def test_rotation_moves_the_device_to_its_new_key_and_retires_the_old(acme, trust):
    registry = DeviceRegistry()
    _, old = _identity(acme, trust, serial="ROT1")
    registry.enrol(old)
    new_device, _ = _device(acme, serial="ROT1")
    new_chain = _chain(new_device, acme.issuing)
    new = registry.rotate(old, new_chain, trust, NOW)
    assert new.device_id == old.device_id
    assert registry.by_kid(new.kid) is new
    with pytest.raises(UntrustedSignerError, match="replaced by a key rotation") as info:
        registry.by_kid(old.kid)
    assert info.value.reason == "retired-key"
    # the rotation announcement redelivered (MQTT QoS 1) changes nothing
    assert registry.rotate(old, new_chain, trust, NOW) is new
    # and a third key cannot be slipped in under the retired one
    third, _ = _device(acme, serial="ROT1")
    with pytest.raises(UntrustedSignerError, match="not its enrolled key"):
        registry.rotate(old, _chain(third, acme.issuing), trust, NOW)


def test_rotation_to_another_devices_certificate_is_refused(acme, trust):
    registry = DeviceRegistry()
    _, old = _identity(acme, trust)
    registry.enrol(old)
    other, _ = _device(acme)
    with pytest.raises(MismatchError, match="only rotate its own key"):
        registry.rotate(old, _chain(other, acme.issuing), trust, NOW)
    assert registry.by_kid(old.kid) is old


def test_rotation_chain_is_fully_verified(acme, rogue, trust):
    registry = DeviceRegistry()
    _, old = _identity(acme, trust, serial="ROT2")
    registry.enrol(old)
    rogue_device, _ = _device(rogue, serial="ROT2")
    with pytest.raises(UntrustedSignerError):
        registry.rotate(old, _chain(rogue_device, rogue.issuing, rogue.root), trust, NOW)
    assert registry.by_kid(old.kid) is old


def test_revoked_device_stops_resolving_and_cannot_enrol_again(acme, trust):
    registry = DeviceRegistry()
    device, identity = _identity(acme, trust)
    registry.enrol(identity)
    registry.revoke(identity.device_id)
    with pytest.raises(RevokedError):
        registry.by_kid(identity.kid)
    with pytest.raises(RevokedError):
        registry.enrol(identity)
    with pytest.raises(RevokedError):
        registry.rotate(identity, _chain(device, acme.issuing), trust, NOW)
    assert len(registry) == 0


def test_a_device_revoked_before_this_registry_knew_it_is_refused_as_revoked(acme, trust):
    # A cache loading a device the store holds as revoked: its kid says "revoked", not
    # "unknown" (which would tell the operator the device must send its certificate chain).
    registry = DeviceRegistry()
    _, identity = _identity(acme, trust)
    registry.revoke(identity.device_id, kid=identity.kid)
    with pytest.raises(RevokedError) as refused:
        registry.by_kid(identity.kid)
    assert refused.value.reason == "device-revoked"
    with pytest.raises(RevokedError):
        registry.enrol(identity)
