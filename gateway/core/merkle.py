"""RFC 9162 Merkle tree hashing, proof generation and proof verification (pure).

The transparency log (DESIGN, "Transparency log and ledger") is an RFC 9162 §2.1 Merkle tree over
SHA-256 with distinct prefixes for leaves (``0x00``) and interior nodes (``0x01``), so a leaf can
never be passed off as a node (second-preimage protection, RFC 9162 §2.1.1).

Proof *generation* takes a function ``subtree(start, end)`` that returns the hash of leaves
``[start, end)``; the same code then serves an in-memory list (:func:`subtree_from_leaf_hashes`)
and the SQLite-backed tree in :mod:`gateway.ledger.tree`. Generation only ever asks for ranges
whose ``start`` is a multiple of a power of two at least ``end - start`` (the ranges of the
RFC 9162 §2.1.1 split rule), so a store that keeps every complete subtree answers any request
from O(log n) stored hashes (:func:`complete_subtrees`).

Proof *verification* follows RFC 9162 §2.1.3.2 (inclusion) and §2.1.4.2 (consistency) step by
step and raises :class:`~gateway.core.errors.MalformedError` for a proof that cannot be right by
its shape, :class:`~gateway.core.errors.MismatchError` when the recomputed root differs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from gateway.core.errors import MalformedError, MismatchError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "SubtreeHash",
    "complete_subtrees",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_from_leaf_hashes",
    "subtree_from_leaf_hashes",
    "verify_consistency",
    "verify_inclusion",
]

#: SHA-256 output size: every leaf hash, node hash and proof element is this long.
HASH_SIZE = 32
#: MTH({}) = SHA-256() — the root of the empty tree (RFC 9162 §2.1.1).
EMPTY_ROOT = hashlib.sha256(b"").digest()

#: ``subtree(start, end)`` returns MTH(D[start:end]), the hash of leaves ``start .. end - 1``.
SubtreeHash = Callable[[int, int], bytes]

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    """MTH({d}) = SHA-256(0x00 || d) (RFC 9162 §2.1.1)."""
    return _sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right), the hash of an interior node (RFC 9162 §2.1.1)."""
    return _sha256(_NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """Return the largest power of two smaller than *n* (n > 1): RFC 9162 §2.1.1's ``k``."""
    return 1 << ((n - 1).bit_length() - 1)


def complete_subtrees(start: int, end: int) -> list[tuple[int, int]]:
    """Split ``[start, end)`` into complete subtrees, left to right, as ``(level, index)``.

    A subtree ``(level, index)`` covers leaves ``[index << level, (index + 1) << level)``. For the
    ranges proof generation asks for (``start`` aligned to a power of two at least the range's
    length, or ``start == 0``) this is exactly the RFC 9162 §2.1.1 decomposition, so
    MTH(D[start:end]) is the right-to-left fold of these subtrees with :func:`node_hash`.
    """
    if not 0 <= start <= end:
        raise ValueError(f"bad leaf range [{start}, {end})")
    out: list[tuple[int, int]] = []
    pos = start
    while pos < end:
        # Largest aligned block that starts at pos and fits before end.
        level = (end - pos).bit_length() - 1
        if pos:
            level = min(level, (pos & -pos).bit_length() - 1)
        out.append((level, pos >> level))
        pos += 1 << level
    return out


def root_from_leaf_hashes(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH(D[n]) of a list of leaf hashes (RFC 9162 §2.1.1), in O(n) time and O(log n) memory."""
    # A stack of (level, hash) of complete subtrees, merged as soon as two of equal level meet;
    # what is left is the binary decomposition of n, folded right to left.
    stack: list[tuple[int, bytes]] = []
    for h in leaf_hashes:
        level, acc = 0, h
        while stack and stack[-1][0] == level:
            acc = node_hash(stack.pop()[1], acc)
            level += 1
        stack.append((level, acc))
    if not stack:
        return EMPTY_ROOT
    acc = stack.pop()[1]
    while stack:
        acc = node_hash(stack.pop()[1], acc)
    return acc


def subtree_from_leaf_hashes(leaf_hashes: Sequence[bytes]) -> SubtreeHash:
    """Return a ``subtree(start, end)`` function over an in-memory list of leaf hashes."""

    def subtree(start: int, end: int) -> bytes:
        return root_from_leaf_hashes(leaf_hashes[start:end])

    return subtree


def _out_of_range(message: str) -> MalformedError:
    return MalformedError(message, reason="out-of-range")


def inclusion_proof(index: int, size: int, subtree: SubtreeHash) -> list[bytes]:
    """PATH(index, D[size]) (RFC 9162 §2.1.3.1): the audit path, leaf level first."""
    if not 0 <= index < size:
        raise _out_of_range(
            f"Entry {index} is not in a log of {size} entries, so it has no inclusion proof."
        )
    # Walk down from the root; each step keeps the half holding the leaf and records the other
    # half, whose hash is the sibling at that level. The RFC lists siblings bottom-up.
    path: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            path.append(subtree(lo + k, hi))
            hi = lo + k
        else:
            path.append(subtree(lo, lo + k))
            lo += k
    path.reverse()
    return path


def consistency_proof(old_size: int, new_size: int, subtree: SubtreeHash) -> list[bytes]:
    """PROOF(old_size, D[new_size]) (RFC 9162 §2.1.4.1); empty when the sizes are equal or 0."""
    if not 0 <= old_size <= new_size:
        raise _out_of_range(
            f"A log of {new_size} entries cannot be proved consistent with one of {old_size} "
            "entries: an append-only log never shrinks."
        )
    if old_size in (0, new_size):
        return []
    # SUBPROOF(m, D[lo:hi], b) unrolled: ``complete`` is b, True while the old tree's root is
    # still the left part of the range (then it is not repeated in the proof).
    proof: list[bytes] = []
    lo, hi, complete = 0, new_size, True
    while old_size - lo != hi - lo:
        k = _split(hi - lo)
        if old_size - lo <= k:
            proof.append(subtree(lo + k, hi))
            hi = lo + k
        else:
            proof.append(subtree(lo, lo + k))
            lo += k
            complete = False
    if not complete:
        proof.append(subtree(lo, hi))
    proof.reverse()
    return proof


def _check_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise MalformedError(
            f"The {what} is {len(value)} bytes long; a SHA-256 log hash is {HASH_SIZE} bytes.",
            reason="bad-hash-length",
        )


def _lsb(x: int) -> int:
    return x & 1


def verify_inclusion(
    leaf_hash: bytes,
    index: int,
    size: int,
    proof: Sequence[bytes],
    root: bytes,
) -> None:
    """Check that *leaf_hash* is entry *index* of the log of *size* entries with *root*.

    Steps (RFC 9162 §2.1.3.2):

    1. Every hash has the SHA-256 length (a truncated or padded hash is not a proof).
    2. ``index < size`` (a leaf beyond the tree cannot be in it).
    3. Fold the path: a sibling goes on the left when ``fn`` is odd or is the last node of its
       level, else on the right; fail when the path is longer than the tree is tall.
    4. ``sn`` ends at 0 (the path reached the root: a truncated path stops short) and the result
       equals *root* (a forged leaf, index, size or path cannot).

    Raises :class:`MalformedError` for 1-3 and the length part of 4, :class:`MismatchError` when
    the recomputed root differs.
    """
    # Step 1 — stops malformed input: every hash must have SHA-256 length. The root is only
    # compared, never hashed, so a wrong-length root fails the comparison in step 4.
    _check_hash(leaf_hash, "leaf hash")
    for i, p in enumerate(proof):
        _check_hash(p, f"inclusion proof element {i}")
    # Step 2 — stops proofs for entries the log never had.
    if not 0 <= index < size:
        raise _out_of_range(
            f"Entry {index} cannot be in a log of {size} entries; the receipt names the wrong "
            "entry or the wrong log size."
        )
    # Step 3 — RFC 9162 §2.1.3.2 steps 2-4, verbatim.
    fn, sn, r = index, size - 1, leaf_hash
    for p in proof:
        if sn == 0:
            raise MalformedError(
                f"The inclusion proof has {len(proof)} hashes, more than a log of {size} entries "
                "needs; it was padded or belongs to another log size.",
                reason="bad-proof-length",
            )
        if _lsb(fn) or fn == sn:
            r = node_hash(p, r)
            # Shift until fn is a right child again, or reaches the left edge (fn == 0).
            while fn and not _lsb(fn):
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    # Step 4 — stops truncated paths (sn != 0) and every forged input (root differs).
    if sn != 0:
        raise MalformedError(
            f"The inclusion proof has {len(proof)} hashes, fewer than a log of {size} entries "
            "needs; it was truncated or belongs to another log size.",
            reason="bad-proof-length",
        )
    if r != root:
        raise MismatchError(
            f"Entry {index} with this hash is not in the log of {size} entries with this root: "
            "the entry, the proof or the signed log head was altered.",
            reason="root-mismatch",
        )


def verify_consistency(
    old_size: int,
    new_size: int,
    old_root: bytes,
    new_root: bytes,
    proof: Sequence[bytes],
) -> None:
    """Check that the log of *new_size* entries with *new_root* extends the one of *old_size*.

    Steps (RFC 9162 §2.1.4.2, with the edge cases of transparency-dev/merkle):

    1. Every proof hash has the SHA-256 length (malformed input).
    2. ``old_size <= new_size`` (a log that shrank rewrote history).
    3. Equal sizes: the proof is empty and the roots are equal (and, for the empty log, equal
       to SHA-256("")) — a fork at the same size is a split view.
    4. ``old_size == 0 < new_size`` is refused: every log extends the empty log, so such a proof
       proves nothing; a first checkpoint is trusted on first use by the caller, not here.
    5. The proof is not empty, and the RFC 9162 §2.1.4.2 fold reproduces *both* roots with
       ``sn`` ending at 0 (history rewritten, or a proof for other sizes).

    Raises :class:`MalformedError` for a proof that cannot be right by its shape and
    :class:`MismatchError` when a recomputed root differs.
    """
    # Step 1 — stops malformed input. Roots are only compared, never parsed: a wrong-length root
    # cannot equal a computed one, so it fails step 3 or 5.
    for i, p in enumerate(proof):
        _check_hash(p, f"consistency proof element {i}")
    # Step 2 — stops a rollback: an append-only log never shrinks.
    if not 0 <= old_size <= new_size:
        raise _out_of_range(
            f"The log claims to have gone from {old_size} to {new_size} entries; an append-only "
            "log never shrinks, so its history was rewritten.",
        )
    # Step 3 — stops a split view at one size: the same size must mean the same tree.
    if old_size == new_size:
        _verify_same_size(new_size, old_root, new_root, proof)
        return
    # Step 4 — stops a meaningless "proof" from the empty log being taken as evidence.
    if old_size == 0:
        raise MalformedError(
            "A consistency proof from an empty log proves nothing; trust the first log head "
            "on first use instead of asking for a proof.",
            reason="empty-old-tree",
        )
    # Step 5 — RFC 9162 §2.1.4.2 steps 1-7: stops rewritten history and altered proofs.
    if not proof:
        raise MalformedError(
            f"The consistency proof from {old_size} to {new_size} entries is empty.",
            reason="bad-proof-length",
        )
    fr, sr = _fold_consistency(old_size, new_size, old_root, proof)
    if fr != old_root:
        raise MismatchError(
            f"The log of {new_size} entries does not contain the earlier log of {old_size} "
            "entries: its history was rewritten, or the proof was altered.",
            reason="root-mismatch",
        )
    if sr != new_root:
        raise MismatchError(
            f"The consistency proof does not lead to the root of the log of {new_size} entries: "
            "the new log head or the proof was altered.",
            reason="root-mismatch",
        )


def _verify_same_size(size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> None:
    if proof:
        raise MalformedError(
            "A consistency proof between two log heads of the same size must be empty, but "
            f"this one has {len(proof)} hashes.",
            reason="bad-proof-length",
        )
    if old_root != new_root:
        raise MismatchError(
            f"Two log heads of {size} entries have different roots: the log showed two "
            "different histories (split view).",
            reason="root-mismatch",
        )
    if size == 0 and new_root != EMPTY_ROOT:
        raise MismatchError(
            "The root given for the empty log is not SHA-256 of nothing (RFC 9162 §2.1.1).",
            reason="root-mismatch",
        )


def _fold_consistency(
    old_size: int, new_size: int, old_root: bytes, proof: Sequence[bytes]
) -> tuple[bytes, bytes]:
    """RFC 9162 §2.1.4.2 steps 2-7: the (old, new) roots the proof leads to; checks ``sn``."""
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        # Step 2: the old tree is a complete subtree of the new one; its root starts the fold.
        path.insert(0, old_root)
    # Steps 3-4.
    fn, sn = old_size - 1, new_size - 1
    while _lsb(fn):
        fn >>= 1
        sn >>= 1
    # Steps 5-6.
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise MalformedError(
                f"The consistency proof has {len(proof)} hashes, more than needed from "
                f"{old_size} to {new_size} entries; it was padded or is for other sizes.",
                reason="bad-proof-length",
            )
        if _lsb(fn) or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            # Shift until fn is a right child again, or reaches the left edge (fn == 0).
            while fn and not _lsb(fn):
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    # Step 7 (the size part): the fold must end at the root.
    if sn != 0:
        raise MalformedError(
            f"The consistency proof has {len(proof)} hashes, fewer than needed from {old_size} "
            f"to {new_size} entries; it was truncated or is for other sizes.",
            reason="bad-proof-length",
        )
    return fr, sr
