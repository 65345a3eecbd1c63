from __future__ import annotations

import random

import pytest

from gateway.core import merkle
from gateway.core.errors import MalformedError, UnavailableError
from gateway.ledger.tree import Frontier, MerkleTree
from gateway.store.db import Database


def _leaves(start: int, count: int) -> list[bytes]:
    return [merkle.leaf_hash(i.to_bytes(8, "big")) for i in range(start, start + count)]


@pytest.fixture
def tree(db):
    return MerkleTree(db)


def test_empty_tree_has_size_zero_and_the_empty_root(tree):
    assert tree.size() == 0
    assert tree.root() == merkle.EMPTY_ROOT


def test_roots_of_every_size_up_to_300_equal_the_in_memory_computation(tree):
    leaves = _leaves(0, 300)
    # Uneven batches, so batch boundaries fall on odd and even sizes alike.
    pos, batch = 0, 1
    while pos < len(leaves):
        assert tree.append_many(leaves[pos : pos + batch]) == pos
        pos += batch
        batch = batch % 7 + 1
    assert tree.size() == 300
    for size in range(301):
        assert tree.root(size) == merkle.root_from_leaf_hashes(leaves[:size]), size


def test_random_large_sizes_match_and_writes_stay_logarithmic(tree, db):
    leaves = _leaves(0, 5000)
    tree.append_many(leaves[:4000])
    tree.append_many(leaves[4000:])
    sizes = random.Random(5).sample(range(1, 5001), 20)
    for size in [*sizes, 4096, 4097, 5000]:
        assert tree.root(size) == merkle.root_from_leaf_hashes(leaves[:size]), size
    # One row per complete subtree: 2n - popcount(n), i.e. under two rows per leaf.
    (rows,) = db.query("SELECT COUNT(*) FROM log_nodes")[0]
    assert rows == 2 * 5000 - (5000).bit_count()


def test_single_append_writes_at_most_log2_n_plus_one_rows(tree, db):
    tree.append_many(_leaves(0, 1023))
    before = db.query("SELECT COUNT(*) FROM log_nodes")[0][0]
    assert tree.append(_leaves(1023, 1)[0]) == 1023  # completes the 1024-leaf subtree
    after = db.query("SELECT COUNT(*) FROM log_nodes")[0][0]
    assert after - before == 11  # the leaf + levels 1..10


def test_inclusion_proofs_from_the_database_verify_with_the_core_verifier(tree):
    leaves = _leaves(0, 777)
    tree.append_many(leaves)
    for size in (1, 2, 3, 64, 500, 777):
        root = tree.root(size)
        for index in {0, size // 3, size // 2, size - 1}:
            proof = tree.inclusion_proof(index, size)
            merkle.verify_inclusion(leaves[index], index, size, proof, root)
            in_memory = merkle.subtree_from_leaf_hashes(leaves[:size])
            assert proof == merkle.inclusion_proof(index, size, in_memory)


def test_consistency_proofs_from_the_database_verify_with_the_core_verifier(tree):
    leaves = _leaves(0, 777)
    tree.append_many(leaves)
    for old, new in [(1, 2), (3, 7), (64, 65), (100, 777), (511, 512), (513, 777), (777, 777)]:
        proof = tree.consistency_proof(old, new)
        merkle.verify_consistency(old, new, tree.root(old), tree.root(new), proof)
    assert tree.consistency_proof(300) == merkle.consistency_proof(
        300, 777, merkle.subtree_from_leaf_hashes(leaves)
    )


def test_reopening_the_file_gives_the_same_tree(tmp_path):
    path = tmp_path / "log.sqlite3"
    leaves = _leaves(0, 1000)
    with Database(path) as first:
        MerkleTree(first).append_many(leaves[:999])
        root = MerkleTree(first).root()
    with Database(path) as again:
        reopened = MerkleTree(again)
        assert reopened.size() == 999
        assert reopened.root() == root
        # Appending after a reopen continues the frontier read back from disk.
        assert reopened.append(leaves[999]) == 999
        assert reopened.root() == merkle.root_from_leaf_hashes(leaves)


def test_interrupted_append_leaves_no_partial_leaf(tree, db):
    tree.append_many(_leaves(0, 10))
    root = tree.root()

    def failing_batch():
        yield from _leaves(10, 5)
        raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        tree.append_many(failing_batch())
    assert tree.size() == 10
    assert tree.root() == root
    assert db.query("SELECT COUNT(*) FROM log_nodes WHERE level = 0")[0][0] == 10
    # The next append picks up exactly where the committed tree ended.
    assert tree.append_many(_leaves(10, 5)) == 10
    assert tree.root() == merkle.root_from_leaf_hashes(_leaves(0, 15))


def test_append_inside_an_outer_transaction_rolls_back_with_it(tree, db):
    tree.append_many(_leaves(0, 3))
    seen_inside = []

    def batch_then_fail():
        with db.atomic():
            tree.append_many(_leaves(3, 4))
            seen_inside.append(tree.size())
            raise KeyError

    with pytest.raises(KeyError):
        batch_then_fail()
    assert seen_inside == [7]
    assert tree.size() == 3


def test_malformed_leaf_hash_aborts_the_whole_batch(tree):
    with pytest.raises(MalformedError) as err:
        tree.append_many([*_leaves(0, 3), b"short"])
    assert err.value.reason == "bad-hash-length"
    assert tree.size() == 0


def test_sizes_beyond_the_tree_are_refused(tree):
    tree.append_many(_leaves(0, 4))
    with pytest.raises(MalformedError, match="no state at 5 entries"):
        tree.root(5)
    with pytest.raises(MalformedError):
        tree.inclusion_proof(4, 4)
    with pytest.raises(MalformedError):
        tree.consistency_proof(2, 5)


def test_missing_stored_subtree_is_reported_as_a_damaged_file(tree, db):
    tree.append_many(_leaves(0, 8))
    with db.atomic() as conn:
        conn.execute("DELETE FROM log_nodes WHERE level = 3")
    with pytest.raises(UnavailableError) as err:
        tree.root()
    assert err.value.reason == "store-corrupt"


def test_frontier_root_equals_rfc9162_mth_at_every_size():
    leaves = _leaves(0, 130)
    frontier = Frontier()
    assert frontier.root() == merkle.EMPTY_ROOT
    for size, leaf in enumerate(leaves, start=1):
        frontier.add(leaf)
        assert frontier.size == size
        assert frontier.root() == merkle.root_from_leaf_hashes(leaves[:size]), size


def test_frontier_reports_each_completed_subtree_with_its_position_and_hash():
    leaves = _leaves(0, 64)
    frontier = Frontier()
    closed = [node for leaf in leaves for node in frontier.add(leaf)]
    # 64 leaves close 32 + 16 + 8 + 4 + 2 + 1 interior subtrees, each exactly once.
    assert len(closed) == 63
    for level, idx, h in closed:
        width = 1 << level
        assert h == merkle.root_from_leaf_hashes(leaves[idx * width : (idx + 1) * width])


def test_frontier_resumed_from_stored_subtrees_grows_like_the_original(tree):
    leaves = _leaves(0, 45)
    tree.append_many(leaves[:21])
    resumed = tree._frontier(21)
    assert resumed.size == 21
    assert resumed.root() == tree.root()
    for leaf in leaves[21:]:
        resumed.add(leaf)
    assert resumed.root() == merkle.root_from_leaf_hashes(leaves)
