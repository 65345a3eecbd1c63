from __future__ import annotations

import base64
import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core import merkle
from gateway.core.errors import MalformedError, MismatchError, VerificationError
from tests._helpers import outside_vectors

VECTORS = outside_vectors("merkle")

# The leaves transparency-dev/merkle (and RFC 6962's CT tests) build their reference tree from;
# the happy-path vectors are proofs in this tree.
CT_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    bytes(range(0x50, 0x58)),
    bytes(range(0x60, 0x70)),
]
CT_LEAF_HASHES = [merkle.leaf_hash(leaf) for leaf in CT_LEAVES]


def _b64(value: str) -> bytes:
    return base64.b64decode(value)


def _load(kind: str) -> list[tuple[str, dict]]:
    files = sorted((VECTORS / kind).rglob("*.json"))
    return [(str(f.relative_to(VECTORS)), json.loads(f.read_text())) for f in files]


INCLUSION = _load("inclusion")
CONSISTENCY = _load("consistency")


def test_vector_folders_are_all_loaded():
    # Guards against a moved folder silently turning the parametrised tests into zero tests.
    assert len(INCLUSION) + len(CONSISTENCY) == 196
    assert sum(not v["wantErr"] for _, v in INCLUSION + CONSISTENCY) == 12


@pytest.mark.parametrize("vector", [v for _, v in INCLUSION], ids=[n for n, _ in INCLUSION])
def test_inclusion_vector_verdict_matches_transparency_dev(vector):
    args = (
        _b64(vector["leafHash"]),
        vector["leafIdx"],
        vector["treeSize"],
        [_b64(p) for p in vector["proof"] or []],
        _b64(vector["root"]),
    )
    if vector["wantErr"]:
        with pytest.raises(VerificationError):
            merkle.verify_inclusion(*args)
    else:
        merkle.verify_inclusion(*args)


@pytest.mark.parametrize("vector", [v for _, v in CONSISTENCY], ids=[n for n, _ in CONSISTENCY])
def test_consistency_vector_verdict_matches_transparency_dev(vector):
    args = (
        vector["size1"],
        vector["size2"],
        _b64(vector["root1"]),
        _b64(vector["root2"]),
        [_b64(p) for p in vector["proof"] or []],
    )
    if vector["wantErr"]:
        with pytest.raises(VerificationError):
            merkle.verify_consistency(*args)
    else:
        merkle.verify_consistency(*args)


def _happy(vectors):
    # Only the numbered folders hold proofs in the CT reference tree; "single-entry" and
    # "additional" use made-up roots.
    chosen = [(n, v) for n, v in vectors if not v["wantErr"] and n.split("/")[1].isdigit()]
    return pytest.mark.parametrize("vector", [v for _, v in chosen], ids=[n for n, _ in chosen])


@_happy(INCLUSION)
def test_generated_inclusion_proof_equals_the_vector(vector):
    size = vector["treeSize"]
    subtree = merkle.subtree_from_leaf_hashes(CT_LEAF_HASHES)
    assert merkle.root_from_leaf_hashes(CT_LEAF_HASHES[:size]) == _b64(vector["root"])
    proof = merkle.inclusion_proof(vector["leafIdx"], size, subtree)
    assert proof == [_b64(p) for p in vector["proof"] or []]


@_happy(CONSISTENCY)
def test_generated_consistency_proof_equals_the_vector(vector):
    subtree = merkle.subtree_from_leaf_hashes(CT_LEAF_HASHES)
    assert merkle.root_from_leaf_hashes(CT_LEAF_HASHES[: vector["size1"]]) == _b64(vector["root1"])
    assert merkle.root_from_leaf_hashes(CT_LEAF_HASHES[: vector["size2"]]) == _b64(vector["root2"])
    proof = merkle.consistency_proof(vector["size1"], vector["size2"], subtree)
    assert proof == [_b64(p) for p in vector["proof"] or []]


def test_leaf_and_node_hashes_use_distinct_prefixes():
    assert merkle.leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    assert merkle.node_hash(b"l", b"r") == hashlib.sha256(b"\x01lr").digest()
    # A node is never mistaken for a leaf over the concatenation (second-preimage defence).
    left, right = merkle.leaf_hash(b"a"), merkle.leaf_hash(b"b")
    assert merkle.node_hash(left, right) != merkle.leaf_hash(left + right)


def test_empty_tree_root_is_sha256_of_nothing():
    assert merkle.root_from_leaf_hashes([]) == hashlib.sha256(b"").digest() == merkle.EMPTY_ROOT


def _recursive_mth(leaves: list[bytes]) -> bytes:
    # RFC 9162 §2.1.1 written literally, as an independent oracle.
    if not leaves:
        return merkle.EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return merkle.node_hash(_recursive_mth(leaves[:k]), _recursive_mth(leaves[k:]))


def test_iterative_root_equals_the_rfc_recursion_for_sizes_up_to_130():
    leaves = [merkle.leaf_hash(i.to_bytes(2, "big")) for i in range(130)]
    for n in range(131):
        assert merkle.root_from_leaf_hashes(leaves[:n]) == _recursive_mth(leaves[:n])


def test_complete_subtrees_tile_the_range_with_aligned_powers_of_two():
    for start, end in [(0, 0), (0, 1), (0, 7), (8, 13), (4, 5), (0, 1024), (1024, 1500)]:
        tiles = merkle.complete_subtrees(start, end)
        pos = start
        for level, idx in tiles:
            assert idx << level == pos
            pos += 1 << level
        assert pos == end
    assert merkle.complete_subtrees(0, 13) == [(3, 0), (2, 2), (0, 12)]


def test_inclusion_proof_for_a_leaf_beyond_the_tree_is_refused():
    subtree = merkle.subtree_from_leaf_hashes(CT_LEAF_HASHES)
    with pytest.raises(MalformedError) as err:
        merkle.inclusion_proof(8, 8, subtree)
    assert err.value.reason == "out-of-range"


def test_consistency_proof_towards_a_smaller_tree_is_refused():
    subtree = merkle.subtree_from_leaf_hashes(CT_LEAF_HASHES)
    with pytest.raises(MalformedError, match="never shrinks"):
        merkle.consistency_proof(5, 3, subtree)


def test_consistency_proof_is_empty_for_equal_or_empty_old_size():
    subtree = merkle.subtree_from_leaf_hashes(CT_LEAF_HASHES)
    assert merkle.consistency_proof(0, 8, subtree) == []
    assert merkle.consistency_proof(8, 8, subtree) == []


def test_consistency_from_the_empty_log_is_refused_with_a_sentence():
    root = merkle.root_from_leaf_hashes(CT_LEAF_HASHES)
    with pytest.raises(MalformedError) as err:
        merkle.verify_consistency(0, 8, merkle.EMPTY_ROOT, root, [])
    assert err.value.reason == "empty-old-tree"
    assert "trust the first log head on first use" in err.value.message


def test_wrong_length_proof_hash_is_malformed_not_a_mismatch():
    root = merkle.root_from_leaf_hashes(CT_LEAF_HASHES[:2])
    with pytest.raises(MalformedError) as err:
        merkle.verify_inclusion(CT_LEAF_HASHES[0], 0, 2, [CT_LEAF_HASHES[1][:31]], root)
    assert err.value.reason == "bad-hash-length"


def test_tampered_root_is_a_mismatch_with_a_reason():
    proof = merkle.inclusion_proof(0, 2, merkle.subtree_from_leaf_hashes(CT_LEAF_HASHES))
    with pytest.raises(MismatchError) as err:
        merkle.verify_inclusion(CT_LEAF_HASHES[0], 0, 2, proof, bytes(32))
    assert err.value.reason == "root-mismatch"


# -- properties ------------------------------------------------------------------------------------


def _leaves(n: int) -> list[bytes]:
    return [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


def _flip(value: bytes, bit: int) -> bytes:
    bit %= len(value) * 8
    out = bytearray(value)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


@st.composite
def _tree_and_index(draw):
    size = draw(st.integers(min_value=1, max_value=300))
    return size, draw(st.integers(min_value=0, max_value=size - 1))


@st.composite
def _two_sizes(draw):
    new = draw(st.integers(min_value=1, max_value=300))
    return draw(st.integers(min_value=1, max_value=new)), new


@settings(max_examples=150, deadline=None)
@given(case=_tree_and_index(), bit=st.integers(min_value=0))
def test_generated_inclusion_proofs_verify_and_any_flipped_bit_fails(case, bit):
    size, index = case
    leaves = _leaves(size)
    root = merkle.root_from_leaf_hashes(leaves)
    proof = merkle.inclusion_proof(index, size, merkle.subtree_from_leaf_hashes(leaves))
    merkle.verify_inclusion(leaves[index], index, size, proof, root)

    with pytest.raises(MismatchError):
        merkle.verify_inclusion(_flip(leaves[index], bit), index, size, proof, root)
    with pytest.raises(MismatchError):
        merkle.verify_inclusion(leaves[index], index, size, proof, _flip(root, bit))
    if proof:
        # Flip one bit of one proof element: the whole proof is 32*len(proof) bits.
        which = (bit // 256) % len(proof)
        tampered = [*proof[:which], _flip(proof[which], bit), *proof[which + 1 :]]
        with pytest.raises(MismatchError):
            merkle.verify_inclusion(leaves[index], index, size, tampered, root)


@settings(max_examples=150, deadline=None)
@given(sizes=_two_sizes(), bit=st.integers(min_value=0))
def test_generated_consistency_proofs_verify_and_any_flipped_bit_fails(sizes, bit):
    old, new = sizes
    leaves = _leaves(new)
    old_root = merkle.root_from_leaf_hashes(leaves[:old])
    new_root = merkle.root_from_leaf_hashes(leaves)
    proof = merkle.consistency_proof(old, new, merkle.subtree_from_leaf_hashes(leaves))
    merkle.verify_consistency(old, new, old_root, new_root, proof)

    with pytest.raises(MismatchError):
        merkle.verify_consistency(old, new, _flip(old_root, bit), new_root, proof)
    with pytest.raises(MismatchError):
        merkle.verify_consistency(old, new, old_root, _flip(new_root, bit), proof)
    if proof:
        which = (bit // 256) % len(proof)
        tampered = [*proof[:which], _flip(proof[which], bit), *proof[which + 1 :]]
        with pytest.raises(MismatchError):
            merkle.verify_consistency(old, new, old_root, new_root, tampered)


@settings(max_examples=100, deadline=None)
@given(case=_tree_and_index(), cut=st.integers(min_value=0))
def test_truncated_or_padded_inclusion_proofs_fail(case, cut):
    size, index = case
    leaves = _leaves(size)
    root = merkle.root_from_leaf_hashes(leaves)
    proof = merkle.inclusion_proof(index, size, merkle.subtree_from_leaf_hashes(leaves))
    with pytest.raises(VerificationError):
        merkle.verify_inclusion(leaves[index], index, size, [*proof, leaves[0]], root)
    if proof:
        with pytest.raises(VerificationError):
            merkle.verify_inclusion(leaves[index], index, size, proof[: cut % len(proof)], root)


def test_public_api_is_pinned():
    assert set(merkle.__all__) == {
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
    }
