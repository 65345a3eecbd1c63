"""The anchor contract and its web3 backend, on an in-process London-fork EVM (eth-tester)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess

import pytest
from eth.vm.forks import LondonVM
from eth_account import Account
from eth_tester import EthereumTester, PyEVMBackend
from web3 import EthereumTesterProvider, Web3

from gateway.core.errors import MismatchError, UnavailableError
from gateway.core.note import Checkpoint
from gateway.ledger.anchor import (
    ARTIFACT_DIR,
    Anchor,
    MemoryAnchorBackend,
    TxStatus,
    Web3AnchorBackend,
    contract_artifacts,
    deploy_anchor_contract,
    log_id,
)

ORIGIN = "gw.st-example-hospital.example/cardiology-icu/log"
ROOT = hashlib.sha256(b"root").digest()


@pytest.fixture
def chain():
    """A fresh London-fork chain (the fork our Besu genesis runs) with the contract deployed."""
    evm = PyEVMBackend(vm_configuration=((0, LondonVM),))
    w3 = Web3(EthereumTesterProvider(EthereumTester(evm)))
    account = Account.from_key(evm.account_keys[0].to_bytes())
    address, block = deploy_anchor_contract(w3, account)
    return w3, Web3AnchorBackend(w3, address, account, from_block=block), evm


def _anchor(size, root=ROOT, origin=ORIGIN):
    return Anchor.from_checkpoint(Checkpoint(origin, size, root))


def _events(backend):
    return list(backend._contract.events.Anchored.get_logs(from_block=0))


def test_anchored_head_is_read_back_from_its_event(chain):
    _w3, backend, _ = chain
    tx_hash = backend.submit(_anchor(1000))

    state = backend.tx_state(tx_hash)
    assert state.status is TxStatus.MINED
    assert state.confirmations == 1
    found = backend.find_anchor(_anchor(1000))
    assert found is not None
    assert found.tx_hash == tx_hash
    assert found.block_number == state.block_number
    [event] = _events(backend)
    assert event["args"]["logId"] == log_id(ORIGIN) == hashlib.sha256(ORIGIN.encode()).digest()
    assert event["args"]["treeSize"] == 1000
    assert event["args"]["rootHash"] == ROOT
    assert event["args"]["submitter"] == backend.account.address
    assert backend.anchored_size(log_id(ORIGIN)) == 1000


def test_non_growing_size_is_refused_by_the_contract(chain):
    _w3, backend, _ = chain
    backend.submit(_anchor(1000))
    for size in (1000, 999):
        tx_hash = backend.submit(_anchor(size, hashlib.sha256(b"other").digest()))
        assert backend.tx_state(tx_hash).status is TxStatus.REVERTED
    assert backend.anchored_size(log_id(ORIGIN)) == 1000
    assert [e["args"]["treeSize"] for e in _events(backend)] == [1000]
    backend.submit(_anchor(1001))
    assert backend.anchored_size(log_id(ORIGIN)) == 1001


def test_sizes_are_kept_per_submitter_so_no_account_can_block_another_log(chain):
    w3, backend, evm = chain
    intruder = Account.from_key(evm.account_keys[1].to_bytes())
    other = Web3AnchorBackend(w3, backend.address, intruder)
    # Another account anchors a huge size under our log id first (griefing) ...
    other.submit(_anchor(2**64 - 1))
    # ... and our log still anchors, and only our own events are found as ours.
    tx_hash = backend.submit(_anchor(5))
    assert backend.tx_state(tx_hash).status is TxStatus.MINED
    assert backend.anchored_size(log_id(ORIGIN)) == 5
    assert backend.find_anchor(_anchor(2**64 - 1)) is None


def test_an_anchored_head_with_another_root_is_reported_as_a_fork(chain):
    _, backend, _ = chain
    backend.submit(_anchor(7))
    with pytest.raises(MismatchError) as info:
        backend.find_anchor(_anchor(7, hashlib.sha256(b"forked").digest()))
    assert info.value.reason == "anchor-fork"


def test_transaction_input_carries_only_log_id_size_and_root(chain):
    w3, backend, _ = chain
    tx_hash = backend.submit(_anchor(123_456))
    data = bytes(w3.eth.get_transaction(tx_hash)["input"])
    selector = Web3.keccak(text="anchor(bytes32,uint64,bytes32)")[:4]
    expected = selector + log_id(ORIGIN) + (123_456).to_bytes(32, "big") + ROOT
    assert data == expected
    for secret in (ORIGIN, "st-example-hospital", "cardiology-icu"):
        assert secret.encode() not in data
        assert secret.encode().hex() not in data.hex()


def test_gas_per_anchor_is_one_storage_write_above_an_event(chain):
    w3, backend, _ = chain
    first = w3.eth.get_transaction_receipt(backend.submit(_anchor(1000)))["gasUsed"]
    later = w3.eth.get_transaction_receipt(backend.submit(_anchor(2000)))["gasUsed"]
    # First anchor of a log: 21k base + calldata + a fresh slot (SSTORE 0 -> x, 20k, EIP-2929
    # cold) + LOG2; later anchors rewrite the slot (2.9k + 2.1k cold load).
    assert 40_000 < first < 50_000
    assert 25_000 < later < 32_000
    assert first - later > 15_000


def test_push0_is_refused_on_a_london_chain_and_absent_from_our_bytecode(chain):
    w3, _, evm = chain
    account = Account.from_key(evm.account_keys[2].to_bytes())
    # Init code PUSH0 PUSH0 RETURN: what solc emits for shanghai and later (EIP-3855).
    tx = {
        "from": account.address,
        "nonce": 0,
        "gas": 100_000,
        "gasPrice": w3.eth.gas_price,
        "chainId": w3.eth.chain_id,
        "data": "0x5f5ff3",
    }
    tx_hash = w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
    assert w3.eth.get_transaction_receipt(tx_hash)["status"] == 0
    _, bytecode = contract_artifacts()
    assert 0x5F not in _opcodes(bytecode)


def _opcodes(code):
    ops, i = [], 0
    while i < len(code):
        op = code[i]
        ops.append(op)
        i += 1 + (op - 0x5F if 0x60 <= op <= 0x7F else 0)  # skip PUSH1..PUSH32 data
    return ops


def test_unreachable_node_raises_unavailable_without_retrying():
    backend = Web3AnchorBackend.from_url(
        "http://127.0.0.1:9", "0x" + "11" * 20, "0x" + "22" * 32, timeout_s=1
    )
    for call in (
        lambda: backend.anchored_size(log_id(ORIGIN)),
        lambda: backend.submit(_anchor(1)),
        lambda: backend.tx_state(b"\0" * 32),
    ):
        with pytest.raises(UnavailableError) as info:
            call()
        assert info.value.reason == "chain-unavailable"


def test_memory_backend_follows_the_contract_rules():
    chain = MemoryAnchorBackend(lose_replies=1)
    with pytest.raises(UnavailableError):
        chain.submit(_anchor(3))
    assert chain.anchored_size(log_id(ORIGIN)) == 3  # landed although the reply was lost
    tx_hash = chain.submit(_anchor(3))
    assert chain.tx_state(tx_hash).status is TxStatus.REVERTED
    assert len(chain.events) == 1
    chain.available = False
    with pytest.raises(UnavailableError):
        chain.anchored_size(log_id(ORIGIN))


def test_anchor_refuses_fields_the_contract_cannot_hold():
    with pytest.raises(ValueError, match="uint64"):
        Anchor(log_id(ORIGIN), 2**64, ROOT)
    with pytest.raises(ValueError, match="32-byte"):
        Anchor(b"short", 1, ROOT)


def test_committed_artifacts_match_a_rebuild_with_the_pinned_solc():
    assert shutil.which("node"), "Node.js is missing: install it, then run `make node-deps`"
    assert (ARTIFACT_DIR / "node_modules" / "solc").is_dir(), "run `make node-deps` first"
    result = subprocess.run(
        ["node", "build.mjs", "--check"],
        cwd=ARTIFACT_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_public_api_is_pinned():
    import gateway.ledger.anchor as module  # noqa: PLC0415

    assert module.__all__ == [
        "Anchor",
        "AnchorBackend",
        "Confirmation",
        "MemoryAnchorBackend",
        "TxState",
        "TxStatus",
        "Web3AnchorBackend",
        "contract_artifacts",
        "deploy_anchor_contract",
        "log_id",
    ]
