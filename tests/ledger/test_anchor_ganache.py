"""Anchoring through the outbox against a real JSON-RPC node: ganache on a random loopback port.

ganache (pinned in contracts/package-lock.json, installed by `make node-deps`) keeps its chain in
--database.dbPath, so a node killed mid-run comes back with the same chain state, as a Besu
validator restarting from its data directory does.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

import pytest
from eth_account import Account
from web3 import Web3

from gateway.core.note import Checkpoint, Signer, open_checkpoint
from gateway.ledger.anchor import (
    Web3AnchorBackend,
    contract_artifacts,
    deploy_anchor_contract,
    log_id,
)
from gateway.service.outbox import AnchorPolicy, Backoff, Outbox

ORIGIN = "gw.example/log"
SIGNER = Signer.generate(ORIGIN)


@pytest.fixture
def node(ganache):
    return ganache, Account.from_key(ganache.key)


def signed(size):
    root = Web3.keccak(b"root %d" % size)
    return open_checkpoint(Checkpoint(ORIGIN, size, bytes(root)).sign(SIGNER), SIGNER.verifier)


def anchored_sizes(url, address, from_block):
    w3 = Web3(Web3.HTTPProvider(url))
    contract = w3.eth.contract(address=address, abi=contract_artifacts()[0])
    events = contract.events.Anchored.get_logs(
        argument_filters={"logId": log_id(ORIGIN)}, from_block=from_block
    )
    return Counter(e["args"]["treeSize"] for e in events), w3, events


def test_chain_killed_mid_run_then_every_checkpoint_is_anchored_exactly_once(node, db):
    ganache, account = node
    w3 = Web3(Web3.HTTPProvider(ganache.url))
    address, block = deploy_anchor_contract(w3, account)
    backend = Web3AnchorBackend.from_url(
        ganache.url, address, account.key, from_block=block, timeout_s=2
    )
    outbox = Outbox(
        db,
        backend,
        policy=AnchorPolicy.every_checkpoint(),
        backoff=Backoff(base_s=0.05, max_s=0.4),
        poll_s=0.05,
        resend_after_s=2,
        rng=random.Random(3),
    )
    enqueue_s = []

    def enqueue(size):
        start = time.perf_counter()
        assert outbox.enqueue(signed(size)) is True
        enqueue_s.append(time.perf_counter() - start)

    async def run():
        async with outbox:
            for size in range(1, 6):
                enqueue(size)
                await asyncio.sleep(0.05)
            await outbox.drained(30)
            ganache.kill()
            # Ingest goes on: the batcher keeps handing checkpoints over, none blocks or raises.
            for size in range(6, 13):
                enqueue(size)
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)
            waiting = [r for r in outbox.rows() if r.status != "confirmed"]
            assert waiting
            assert outbox.rows()[5].attempts >= 3  # retried, with backoff
            assert outbox.rows()[5].last_error.startswith("chain-unavailable")
            ganache.start()  # same port, same chain database
            await outbox.drained(60)

    asyncio.run(run())

    counts, w3, events = anchored_sizes(ganache.url, address, block)
    assert counts == dict.fromkeys(range(1, 13), 1)
    assert all(r.status == "confirmed" for r in outbox.rows())
    assert {r.tx_hash for r in outbox.rows()} == {bytes(e["transactionHash"]) for e in events}
    assert max(enqueue_s) < 0.25
    # Nothing identifying on chain: every anchor transaction's input is selector + 3 words.
    selector = bytes(Web3.keccak(text="anchor(bytes32,uint64,bytes32)")[:4])
    for event in events:
        data = bytes(w3.eth.get_transaction(event["transactionHash"])["input"])
        assert data[:4] == selector
        assert len(data) == 4 + 3 * 32
        assert data[4:36] == log_id(ORIGIN)
        assert ORIGIN.encode() not in data


def test_outbox_rows_survive_a_gateway_restart_and_anchor_once(node, tmp_path):
    from gateway.store.db import Database  # noqa: PLC0415 -- two opens of one file in this test

    ganache, account = node
    w3 = Web3(Web3.HTTPProvider(ganache.url))
    address, block = deploy_anchor_contract(w3, account)
    backend = Web3AnchorBackend.from_url(ganache.url, address, account.key, from_block=block)
    path = tmp_path / "gateway.sqlite3"
    with Database(path) as db:
        first = Outbox(db, backend, policy=AnchorPolicy.every_checkpoint())
        for size in (10, 20):
            first.enqueue(signed(size))
        # The first process sends size 10 and dies before it learns the outcome.
        asyncio.run(first.step())
        assert [r.status for r in first.rows()] == ["sent", "pending"]
    with Database(path) as db:
        second = Outbox(db, backend, policy=AnchorPolicy.every_checkpoint(), poll_s=0.05)

        async def run():
            async with second:
                await second.drained(30)

        asyncio.run(run())
        assert [r.status for r in second.rows()] == ["confirmed", "confirmed"]
    counts, _, _ = anchored_sizes(ganache.url, address, block)
    assert counts == {10: 1, 20: 1}
