"""COSE_Sign1 decode + verify against a bare verify of the same signature.

The baseline verifies the very signature of the message over the very Sig_structure bytes with
the library ``Sign1Message.verify`` uses (libsodium for Ed25519, OpenSSL via cryptography for
ES256), so the ratio is the cost of everything around the signature check: size cap, strict
CBOR, header policy, Sig_structure, r||s -> DER. One more row measures that library choice:
Ed25519 verify in libsodium against OpenSSL, same key, signature and bytes. Ours and the baseline
alternate within each repeat so that noise from other work on the machine hits both alike.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from functools import partial

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from nacl.bindings import crypto_sign_open

from bench._table import Row, rate
from gateway.core import cose
from gateway.core.cbor import dumps

# A device event is a small CBOR map; 200 bytes is typical of our payloads.
PAYLOAD = bytes(range(200))
KID = b"\x01" * 16


def _paired(
    ours: Callable[[], object], base: Callable[[], object], n: int, repeats: int
) -> tuple[float, float]:
    mine: list[float] = []
    theirs: list[float] = []
    for _ in range(repeats):
        theirs.append(rate(base, n, repeats=1))
        mine.append(rate(ours, n, repeats=1))
    return statistics.median(mine), statistics.median(theirs)


def _decode_and_verify(data: bytes, public: cose.PublicKey) -> None:
    cose.decode_sign1(data).verify(public)


def _bare_verify(msg: cose.Sign1Message, key: cose.PrivateKey) -> Callable[[], object]:
    tbs = msg.to_be_signed()
    public = key.public_key()
    if isinstance(public, Ed25519PublicKey):
        raw = public.public_bytes_raw()
        return lambda: crypto_sign_open(msg.signature + tbs, raw)
    der = encode_dss_signature(
        int.from_bytes(msg.signature[:32], "big"), int.from_bytes(msg.signature[32:], "big")
    )
    ecdsa = ec.ECDSA(hashes.SHA256())
    return lambda: public.verify(der, tbs, ecdsa)


def run(quick: bool) -> list[Row]:  # noqa: FBT001 -- the bench runner's interface
    n, repeats = (300, 3) if quick else (3000, 7)
    rows: list[Row] = []
    for name, key in (
        ("Ed25519", Ed25519PrivateKey.generate()),
        ("ES256", ec.generate_private_key(ec.SECP256R1())),
    ):
        data = cose.sign1(PAYLOAD, key, kid=KID)
        public = key.public_key()
        msg = cose.decode_sign1(data)
        msg.verify(public)

        ours, base = _paired(
            partial(_decode_and_verify, data, public), _bare_verify(msg, key), n, repeats
        )
        rows.append(
            Row(
                "cose",
                f"decode_sign1+verify {name}",
                ours,
                "msg/s",
                f"bare {'libsodium' if name == 'Ed25519' else 'cryptography'} {name} verify,"
                " same sig+bytes",
                base,
                ">= 0.85x",
            )
        )

        ours, base = _paired(
            partial(cose.decode_sign1, data),
            partial(cbor2.loads, data),
            n * 10,
            repeats,
        )
        rows.append(
            Row(
                "cose",
                f"decode_sign1 alone {name}",
                ours,
                "msg/s",
                "cbor2.loads, no checks",
                base,
                "info: cost of the checks",
            )
        )

    key = Ed25519PrivateKey.generate()
    msg = cose.decode_sign1(cose.sign1(PAYLOAD, key, kid=KID))
    tbs, public = msg.to_be_signed(), key.public_key()
    ours, base = _paired(
        _bare_verify(msg, key), partial(public.verify, msg.signature, tbs), n, repeats
    )
    rows.append(
        Row(
            "cose",
            "Ed25519 verify, libsodium (what verify uses)",
            ours,
            "msg/s",
            "OpenSSL via cryptography, same sig+bytes",
            base,
            "info: ADR 0001",
        )
    )

    protected = dumps({cose.HEADER_ALG: cose.ALG_EDDSA, cose.HEADER_KID: KID})
    ours, base = _paired(
        partial(cose.sig_structure, protected, b"", PAYLOAD),
        partial(cbor2.dumps, ["Signature1", protected, b"", PAYLOAD]),
        n * 30,
        repeats,
    )
    rows.append(
        Row(
            "cose",
            "Sig_structure, hand-encoded",
            ours,
            "ops/s",
            "cbor2.dumps of the same array",
            base,
            ">= 1x",
        )
    )
    return rows
