"""COSE Receipts (RFC 9942) for log entries, bundled with the checkpoint they stand under.

A **receipt** is an RFC 9942 "Receipt of Inclusion" for the RFC9162_SHA256 verifiable data
structure: a COSE_Sign1 (RFC 9052, tag 18) signed with the gateway's Ed25519 log key (EdDSA, -8;
see :mod:`gateway.ledger.keys` for why the checkpoint key is reused) whose

- protected header is ``{1 (alg): -8, 4 (kid): key ID, 395 (vds): 1 (RFC9162_SHA256)}``;
- unprotected header is ``{396 (vdp): {-1 (inclusion proofs): [bstr .cbor [tree-size,
  leaf-index, [path...]]]}}`` with exactly one proof (RFC 9942 §5.2);
- payload is detached: it is the Merkle root at ``tree-size``, which the verifier recomputes from
  the proof, so a signature can never be accepted over a root the proof does not give.

One deviation: for a tree of one leaf RFC 9162 §2.1.3.1 gives an empty path, which RFC 9942's
``[+ bstr]`` does not allow; we emit the empty array rather than invent a hash.

The receipt travels in a small deterministic-CBOR **bundle** that lets its strength rise from
*logged* to *witnessed* to *anchored* without re-signing anything::

    receipt-bundle = {
      1: bstr,                        ; the RFC 9942 receipt above
      2: bstr,                        ; the C2SP signed checkpoint at tree-size, with the
                                      ; witnesses' tlog-cosignature lines appended
      ? 3: [chain: tstr, tx: bstr, block: uint]   ; the chain anchor of that checkpoint
    }

:func:`verify_receipt` checks a bundle offline with nothing but public keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.core import merkle, note
from gateway.core.cbor import dumps, strict_loads
from gateway.core.cose import ALG_EDDSA, COSE_SIGN1_TAG, HEADER_ALG, HEADER_KID, sig_structure
from gateway.core.errors import (
    MalformedError,
    MismatchError,
    OversizeError,
    PolicyError,
    SignatureError,
    UnavailableError,
)
from gateway.ledger.keys import GatewayKey
from gateway.ledger.log import Anchor, TransparencyLog

__all__ = [
    "HEADER_VDP",
    "HEADER_VDS",
    "MAX_BUNDLE_SIZE",
    "VDP_INCLUSION",
    "VDS_RFC9162_SHA256",
    "ReceiptInfo",
    "ReceiptVerifier",
    "issue_receipt",
    "receipt_tree_size",
    "verify_receipt",
]

#: RFC 9942 §2 header labels (IANA "COSE Header Parameters").
HEADER_VDS = 395
HEADER_VDP = 396
#: RFC 9942 §5: verifiable data structure RFC9162_SHA256 and its inclusion-proof label.
VDS_RFC9162_SHA256 = 1
VDP_INCLUSION = -1
#: Bundles above this size are refused before parsing (a 1M-leaf proof is ~700 bytes, a
#: checkpoint with 100 cosignatures under 16 KiB).
MAX_BUNDLE_SIZE = 64 * 1024

_HEADER_CRIT = 2


@dataclass(frozen=True)
class ReceiptInfo:
    """What a verified receipt proves.

    ``state`` is ``"logged"`` (signed by the gateway), ``"witnessed"`` (and cosigned by at least
    the required number of the witness keys given) or ``"anchored"`` (and the bundle names a
    chain transaction; look the transaction up on the chain to confirm it).
    """

    state: str
    origin: str
    leaf_index: int
    tree_size: int
    root: bytes
    witnesses: tuple[str, ...]
    anchor: Anchor | None


def _kid(verifier: note.Verifier) -> bytes:
    return verifier.key_id.to_bytes(4, "big")


def issue_receipt(log: TransparencyLog, key: GatewayKey, ref_id: int, kind: str = "event") -> bytes:
    """Return the receipt bundle for record *ref_id* of *kind* under its strongest checkpoint.

    Raises :class:`MalformedError` when the record is not logged, :class:`UnavailableError`
    when no checkpoint covers it yet (the next seal will).
    """
    if key.verifier != log.verifier:
        raise ValueError("the receipt key must be the log's checkpoint key")
    leaf = log.leaf_of(kind, ref_id)
    if leaf is None:
        raise MalformedError(
            f"The {kind} {ref_id} is not in the transparency log (not stored, or not logged yet).",
            reason="not-logged",
        )
    covering = log.covering_checkpoint(leaf.index)
    if covering is None:
        raise UnavailableError(
            f"The {kind} {ref_id} is logged as entry {leaf.index}, but no signed checkpoint "
            "covers it yet; the next checkpoint (every few seconds) will.",
            reason="not-sealed",
        )
    checkpoint, status = covering
    path = log.inclusion_proof(leaf.index, checkpoint.size)
    proof = dumps([checkpoint.size, leaf.index, path])
    protected = dumps({HEADER_ALG: ALG_EDDSA, HEADER_KID: _kid(key.verifier), HEADER_VDS: 1})
    # RFC 9942 §5.2: the signed payload is the root at tree-size, detached.
    signature = key.private_key.sign(sig_structure(protected, b"", checkpoint.root))
    receipt = dumps(
        cbor2.CBORTag(
            COSE_SIGN1_TAG,
            [protected, {HEADER_VDP: {VDP_INCLUSION: [proof]}}, None, signature],
        )
    )
    bundle: dict[int, Any] = {1: receipt, 2: status.note_with_cosignatures(checkpoint)}
    if status.anchor is not None:
        bundle[3] = [status.anchor.chain, status.anchor.tx, status.anchor.block]
    return dumps(bundle)


def receipt_tree_size(bundle: bytes) -> int:
    """Return the tree size of the checkpoint a bundle :func:`issue_receipt` made stands under.

    For the issuer's bookkeeping (which checkpoints an export's receipts need tied together),
    not a verification: a receiver calls :func:`verify_receipt`.
    """
    checkpoint_note = strict_loads(bundle, what="receipt")[2]
    return int(checkpoint_note.split(b"\n", 2)[1])


def _malformed(message: str) -> MalformedError:
    return MalformedError(message, reason="malformed-receipt")


def _is_uint(value: object) -> bool:
    return type(value) is int and value >= 0


def verify_receipt(
    bundle: bytes,
    leaf: bytes,
    gateway: note.Verifier,
    *,
    witnesses: Iterable[note.Verifier] = (),
    witness_quorum: int = 1,
) -> ReceiptInfo:
    """Verify a receipt bundle for *leaf* (``merkle.leaf_hash(commitment)``), offline.

    Steps (RFC 9942 §5.2, RFC 9162 §2.1.3.2, C2SP tlog-checkpoint and tlog-cosignature):

    1. Size cap before parsing (endless data).
    2. Strict CBOR bundle of the documented shape (malformed input, smuggled fields).
    3. The checkpoint note opens under the gateway key, with the gateway's origin; witness
       cosignatures by the given keys are verified, unknown ones ignored (forged or foreign
       log heads).
    4. The receipt is a tagged COSE_Sign1 whose protected header has alg EdDSA, vds
       RFC9162_SHA256 and the gateway's kid, no ``crit``, and whose payload is detached
       (algorithm substitution, structure confusion, a root smuggled in the payload).
    5. Exactly one inclusion proof ``[tree-size, leaf-index, path]`` for the checkpoint's size
       (a proof for another tree).
    6. The proof leads from *leaf* to the checkpoint's root (forged entry, tampered proof).
    7. The COSE signature verifies over that root with the gateway key (forged receipt, another
       key).
    8. Witnessed when at least *witness_quorum* of *witnesses* cosigned; anchored when the bundle
       names a chain transaction (a claim the verifier can look up on the chain).
    """
    return ReceiptVerifier(gateway, witnesses=witnesses, witness_quorum=witness_quorum).verify(
        bundle, leaf
    )


class ReceiptVerifier:
    """:func:`verify_receipt` for many receipts under the same keys, each checkpoint opened once.

    An audit bundle holds a receipt per event, most under one or two checkpoints: opening a
    checkpoint (the gateway's signature and every given witness's cosignature) once, not once
    a receipt, saves one to three Ed25519 checks an event. What is kept is the opened
    checkpoint of each distinct note (at most :attr:`MAX_CHECKPOINTS`; then it starts over),
    for this verifier's keys only.
    """

    MAX_CHECKPOINTS = 1024

    def __init__(
        self,
        gateway: note.Verifier,
        *,
        witnesses: Iterable[note.Verifier] = (),
        witness_quorum: int = 1,
    ) -> None:
        self._gateway = gateway
        self._witnesses = list(witnesses)
        self._quorum = witness_quorum
        self._known = {(w.name, w.key_id) for w in self._witnesses}
        self._opened: dict[bytes, note.SignedCheckpoint] = {}

    def _open(self, checkpoint_note: bytes) -> note.SignedCheckpoint:
        signed = self._opened.get(checkpoint_note)
        if signed is None:
            signed = note.open_checkpoint(checkpoint_note, self._gateway, self._witnesses)
            if len(self._opened) >= self.MAX_CHECKPOINTS:
                self._opened.clear()
            self._opened[checkpoint_note] = signed
        return signed

    def verify(self, bundle: bytes, leaf: bytes) -> ReceiptInfo:
        """Verify *bundle* for *leaf*: :func:`verify_receipt`'s steps, with these keys."""
        gateway, witness_keys = self._gateway, self._witnesses
        # Step 1 — endless data.
        if len(bundle) > MAX_BUNDLE_SIZE:
            raise OversizeError(
                f"The receipt is {len(bundle)} bytes; at most {MAX_BUNDLE_SIZE} are accepted.",
                reason="oversize-receipt",
            )
        # Step 2 — shape.
        item = strict_loads(bundle, what="receipt")
        if not isinstance(item, Mapping) or not {1, 2} <= set(item) <= {1, 2, 3}:
            raise _malformed(
                "The receipt is not a map of the receipt, the checkpoint and the anchor."
            )
        receipt, checkpoint_note = item[1], item[2]
        if not isinstance(receipt, bytes) or not isinstance(checkpoint_note, bytes):
            raise _malformed("The receipt and its checkpoint must be byte strings.")
        anchor = _anchor(item.get(3))
        # Step 3 — the checkpoint under the receipt.
        signed = self._open(checkpoint_note)
        checkpoint = signed.checkpoint
        # Steps 4-5 — the COSE receipt and its one proof.
        protected, size, index, path, signature = _decode_receipt(receipt, gateway)
        if size != checkpoint.size:
            raise MismatchError(
                f"The receipt proves inclusion in a log of {size} entries, but the checkpoint with "
                f"it is for {checkpoint.size} entries.",
                reason="size-mismatch",
            )
        # Step 6 — RFC 9162 §2.1.3.2: the proof must rebuild the signed root.
        merkle.verify_inclusion(leaf, index, size, path, checkpoint.root)
        # Step 7 — the receipt's own signature over the detached root.
        try:
            Ed25519PublicKey.from_public_bytes(gateway.public_key).verify(
                signature, sig_structure(protected, b"", checkpoint.root)
            )
        except InvalidSignature:
            raise SignatureError(
                "The receipt's signature does not verify with the gateway key: it was altered, or "
                "made by another key.",
                reason="bad-signature",
            ) from None
        # Step 8 — strength.
        cosigners = tuple(
            sorted(s.name for s in signed.note.signatures if (s.name, s.key_id) in self._known)
        )
        witnessed = bool(witness_keys) and len(cosigners) >= max(self._quorum, 1)
        state = "anchored" if anchor is not None else "witnessed" if witnessed else "logged"
        return ReceiptInfo(
            state, checkpoint.origin, index, size, checkpoint.root, cosigners, anchor
        )


def _anchor(value: object) -> Anchor | None:
    if value is None:
        return None
    if (
        not isinstance(value, Sequence)
        or len(value) != 3
        or not isinstance(value[0], str)
        or not isinstance(value[1], bytes)
        or not _is_uint(value[2])
    ):
        raise _malformed("The receipt's chain anchor is not [chain, transaction hash, block].")
    return Anchor(value[0], value[1], value[2])


def _decode_receipt(
    receipt: bytes, gateway: note.Verifier
) -> tuple[bytes, int, int, list[bytes], bytes]:
    item = strict_loads(receipt, what="COSE receipt")
    # Step 4 — tagged COSE_Sign1 (RFC 9052 §4.2) with a detached payload (RFC 9942 §5.2).
    if not isinstance(item, cbor2.CBORTag) or item.tag != COSE_SIGN1_TAG:
        raise _malformed("The receipt is not a tagged COSE_Sign1 message.")
    body = item.value
    if not isinstance(body, Sequence) or len(body) != 4:
        raise _malformed("The receipt is not a COSE_Sign1 array of four elements.")
    protected_bytes, unprotected, payload, signature = body
    if not isinstance(protected_bytes, bytes) or not isinstance(signature, bytes):
        raise _malformed("The receipt's protected header and signature must be byte strings.")
    if payload is not None:
        raise PolicyError(
            "The receipt carries its Merkle root as payload; RFC 9942 receipts from this gateway "
            "detach it so that the root is always recomputed from the proof.",
            reason="attached-payload",
        )
    protected = strict_loads(protected_bytes, what="receipt protected header")
    if not isinstance(protected, Mapping) or not isinstance(unprotected, Mapping):
        raise _malformed("The receipt's headers are not CBOR maps.")
    _check_headers(protected, unprotected, gateway)
    size, index, path = _inclusion_proof(unprotected)
    return protected_bytes, size, index, path, signature


def _check_headers(
    protected: Mapping[Any, Any], unprotected: Mapping[Any, Any], gateway: note.Verifier
) -> None:
    # Step 4 — headers: disjoint buckets (RFC 9052 §3), nothing critical we cannot honour,
    # EdDSA from the protected bucket, vds RFC9162_SHA256 (RFC 9942 §5.2), the gateway's kid.
    if protected.keys() & unprotected.keys():
        raise PolicyError(
            "A receipt header appears both protected and unprotected (RFC 9052 §3).",
            reason="duplicate-header",
        )
    if _HEADER_CRIT in protected or _HEADER_CRIT in unprotected:
        raise PolicyError(
            "The receipt marks headers as critical, which this verifier does not support.",
            reason="unknown-critical-header",
        )
    if protected.get(HEADER_ALG) != ALG_EDDSA or type(protected.get(HEADER_ALG)) is not int:
        raise PolicyError(
            "The receipt is not signed with EdDSA, the gateway key's algorithm.",
            reason="alg-not-allowed",
        )
    vds = protected.get(HEADER_VDS)
    if type(vds) is not int or vds != VDS_RFC9162_SHA256:
        raise PolicyError(
            f"The receipt's verifiable data structure is {vds!r}, not RFC9162_SHA256 (1).",
            reason="unknown-vds",
        )
    kid = protected.get(HEADER_KID)
    if kid is not None and kid != _kid(gateway):
        raise MismatchError(
            "The receipt names another signing key than the gateway key given.",
            reason="kid-mismatch",
        )


def _inclusion_proof(unprotected: Mapping[Any, Any]) -> tuple[int, int, list[bytes]]:
    # Step 5 — exactly one RFC9162_SHA256 inclusion proof (RFC 9942 §5.2).
    vdp = unprotected.get(HEADER_VDP)
    proofs = vdp.get(VDP_INCLUSION) if isinstance(vdp, Mapping) else None
    if not isinstance(proofs, Sequence) or len(proofs) != 1 or not isinstance(proofs[0], bytes):
        raise _malformed("The receipt does not carry exactly one inclusion proof.")
    proof = strict_loads(proofs[0], what="inclusion proof")
    if (
        not isinstance(proof, Sequence)
        or len(proof) != 3
        or not _is_uint(proof[0])
        or not _is_uint(proof[1])
        or not isinstance(proof[2], Sequence)
        or not all(isinstance(h, bytes) for h in proof[2])
    ):
        raise _malformed("The inclusion proof is not [tree-size, leaf-index, [hashes...]].")
    return proof[0], proof[1], list(proof[2])
