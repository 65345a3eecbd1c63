"""Interop with an independent COSE implementation (pycose), with an x5chain device certificate.

Reusable helpers (module level, no fixtures needed):

- ``make_device_pki(kind)``: a throwaway manufacturer CA and a device certificate signed by it.
- ``independent_sign1(payload, key, kid=, x5chain=)``: a COSE_Sign1 made by pycose, ``alg``, ``kid``
  and ``x5chain`` in the protected header.
- ``independent_verify(data, public_key)``: pycose's verdict on a COSE_Sign1.

pycose 1.1 and cbor2 6: pycose signs fine, but ``Sign1Message.decode`` refuses every message,
because cbor2 6 decodes the content of a tag as a tuple (and maps as ``frozendict``) while pycose
checks ``isinstance(..., list)`` / ``type(...) is dict``. ``independent_verify`` hands pycose the
tag content as a list and dict through its ``from_cose_obj``; header parsing, the Sig_structure
and the signature check stay pycose's own.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from cryptography.x509.oid import NameOID
from pycose.algorithms import EdDSA, Es256
from pycose.headers import KID, Algorithm, X5chain
from pycose.keys import CoseKey
from pycose.messages import Sign1Message as PycoseSign1

from gateway.core import cose
from gateway.core.errors import SignatureError

SigningKey = Ed25519PrivateKey | ec.EllipticCurvePrivateKey
KINDS = ("ed25519", "p256")


@dataclass(frozen=True)
class DevicePki:
    """A manufacturer CA and one device certificate it issued (DER), with the device key."""

    ca_key: SigningKey
    ca_cert: bytes
    device_key: SigningKey
    device_cert: bytes

    @property
    def chain(self) -> tuple[bytes, ...]:
        """The x5chain value: leaf first (RFC 9360 §2)."""
        return (self.device_cert, self.ca_cert)

    @property
    def device_public_key(self):
        """The key in the device certificate, as a verifier gets it."""
        return x509.load_der_x509_certificate(self.device_cert).public_key()


def _new_key(kind: str) -> SigningKey:
    return (
        Ed25519PrivateKey.generate()
        if kind == "ed25519"
        else ec.generate_private_key(ec.SECP256R1())
    )


def _cert(subject, issuer, public_key, signer, *, ca: bool) -> bytes:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    algorithm = None if isinstance(signer, Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(signer, algorithm).public_bytes(Encoding.DER)


def make_device_pki(kind: str = "ed25519", device_id: str = "(01)09506000134352(21)SN-0001"):
    """A throwaway CA and device certificate; *kind* is ``"ed25519"`` or ``"p256"``."""
    ca_key, device_key = _new_key(kind), _new_key(kind)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Manufacturer CA")])
    device_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
    ca_cert = _cert(ca_name, ca_name, ca_key.public_key(), ca_key, ca=True)
    device_cert = _cert(device_name, ca_name, device_key.public_key(), ca_key, ca=False)
    return DevicePki(ca_key, ca_cert, device_key, device_cert)


def _pycose_key(key):
    if hasattr(key, "private_bytes"):
        pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        return CoseKey.from_pem_private_key(pem.decode())
    pem = key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    return CoseKey.from_pem_public_key(pem.decode())


def independent_sign1(
    payload: bytes,
    key: SigningKey,
    *,
    kid: bytes | None = None,
    x5chain: Sequence[bytes] = (),
) -> bytes:
    """Sign with pycose: alg, kid and x5chain in the protected header, tag 18."""
    header = {Algorithm: EdDSA if isinstance(key, Ed25519PrivateKey) else Es256}
    if kid is not None:
        header[KID] = kid
    if x5chain:
        header[X5chain] = x5chain[0] if len(x5chain) == 1 else list(x5chain)
    msg = PycoseSign1(phdr=header, payload=payload)
    msg.key = _pycose_key(key)
    return msg.encode()


def independent_verify(data: bytes, public_key) -> bool:
    """pycose's verdict on *data* (see the module doc for the cbor2 6 workaround)."""
    tagged = cbor2.loads(data)
    assert isinstance(tagged, cbor2.CBORTag)
    assert tagged.tag == 18
    protected, unprotected, payload, signature = tagged.value
    msg = PycoseSign1.from_cose_obj(
        [protected, dict(unprotected), payload, signature], allow_unknown_attributes=True
    )
    msg.key = _pycose_key(public_key)
    return bool(msg.verify_signature())


def _flip_last_bit(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


@pytest.mark.parametrize("kind", KINDS)
def test_independent_message_with_x5chain_verifies_under_device_policy(kind):
    pki = make_device_pki(kind)
    data = independent_sign1(b"\xa1\x61t\x01", pki.device_key, kid=b"dev-1", x5chain=pki.chain)

    msg = cose.decode_sign1(data, policy=cose.DEVICE_POLICY)
    assert msg.alg == cose.alg_for_key(pki.device_key)
    assert cose.HEADER_ALG in msg.protected
    assert msg.x5chain == pki.chain
    assert msg.kid == b"dev-1"
    assert msg.payload == b"\xa1\x61t\x01"
    # The verifier takes the key from the leaf certificate carried in the message.
    leaf_key = x509.load_der_x509_certificate(msg.x5chain[0]).public_key()
    msg.verify(leaf_key)


@pytest.mark.parametrize("kind", KINDS)
def test_independent_message_tampered_is_refused_here(kind):
    pki = make_device_pki(kind)
    data = independent_sign1(b"payload", pki.device_key, x5chain=pki.chain)
    with pytest.raises(SignatureError):
        cose.decode_sign1(_flip_last_bit(data)).verify(pki.device_public_key)


@pytest.mark.parametrize("kind", KINDS)
def test_our_message_with_x5chain_verifies_independently(kind):
    pki = make_device_pki(kind)
    data = cose.sign1(b"payload", pki.device_key, kid=b"dev-1", x5chain=pki.chain)

    assert independent_verify(data, pki.device_public_key)
    # pycose reads the chain we put in the protected header.
    protected = cbor2.loads(cbor2.loads(data).value[0])
    assert protected[cose.HEADER_X5CHAIN] == list(pki.chain)


@pytest.mark.parametrize("kind", KINDS)
def test_our_message_tampered_fails_independently(kind):
    pki = make_device_pki(kind)
    data = cose.sign1(b"payload", pki.device_key, x5chain=pki.chain)
    assert not independent_verify(_flip_last_bit(data), pki.device_public_key)


def test_single_certificate_x5chain_is_a_bare_bstr_both_ways():
    pki = make_device_pki("ed25519")
    ours = cose.decode_sign1(cose.sign1(b"p", pki.device_key, x5chain=(pki.device_cert,)))
    assert ours.protected[cose.HEADER_X5CHAIN] == pki.device_cert
    theirs = cose.decode_sign1(independent_sign1(b"p", pki.device_key, x5chain=(pki.device_cert,)))
    assert theirs.x5chain == (pki.device_cert,)
    theirs.verify(pki.device_public_key)
