"""The ledger service's witness task records "witnessed" only when the witness quorum is met.

Real witnesses over HTTP on loopback ports (a witness that is down refuses connections), a real
SQLite log, the task ``witness`` (:class:`WitnessRounds`) as ``provgw serve`` runs it.
"""

from __future__ import annotations

import asyncio
import socket
from contextlib import ExitStack
from datetime import UTC, datetime

import pytest

from gateway.core import note
from gateway.ledger.keys import GatewayKey
from gateway.ledger.log import TransparencyLog
from gateway.ledger.witness import Witness
from gateway.ledger.witness_client import WitnessClient, WitnessPool
from gateway.service.ledger_service import WitnessRounds
from gateway.service.witness_server import WitnessServer
from gateway.store.db import Database
from gateway.store.events import EventRecord, EventStore
from gateway.store.witness import WitnessStore

pytestmark = pytest.mark.timeout(60)

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Witnesses:
    """Three witnesses of one log, each on its own loopback port; none serving until started."""

    def __init__(self, stack: ExitStack, directory, log_key: GatewayKey) -> None:
        self._stack = stack
        self.signers = [note.Signer.generate(f"w{i}.test", note.COSIGNATURE_V1) for i in range(3)]
        self.ports = [_free_port() for _ in self.signers]
        self._witnesses = [
            Witness(
                signer,
                [log_key.verifier],
                stack.enter_context(WitnessStore(directory / f"w{i}.db")),
            )
            for i, signer in enumerate(self.signers)
        ]

    def start(self, i: int) -> None:
        server = WitnessServer(self._witnesses[i], port=self.ports[i]).start()
        self._stack.callback(server.close)

    def pool(self) -> WitnessPool:
        clients = [
            WitnessClient(f"http://127.0.0.1:{port}", signer.verifier, timeout=2)
            for signer, port in zip(self.signers, self.ports, strict=True)
        ]
        return self._stack.enter_context(WitnessPool(clients, deadline=3))

    @property
    def names(self) -> frozenset[str]:
        return frozenset(s.verifier.name for s in self.signers)

    def line(self, i: int, log: TransparencyLog, size: int) -> str:
        text = note.open_checkpoint(log.checkpoint(size).note, log.verifier).note.text
        return self.signers[i].sign(text, timestamp=1_700_000_000).line


@pytest.fixture
def setup(tmp_path):
    """(log, witnesses) with 2 events logged; three witnesses configured, none running."""
    key = GatewayKey.generate("provgw.test/log")
    with ExitStack() as stack:
        db = stack.enter_context(Database(tmp_path / "gw.sqlite3"))
        log = TransparencyLog(db, key.signer)
        EventStore(db).insert_batch(
            [
                EventRecord("dev-1", seq, "custody", 0, 0, "s", "t", b"m-%d" % seq)
                for seq in range(2)
            ]
        )
        log.append_pending()
        yield log, Witnesses(stack, tmp_path, key)


def _seal_one(log: TransparencyLog) -> note.SignedCheckpoint:
    store = EventStore(log.db)
    store.insert_batch(
        [EventRecord("dev-2", log.size(), "custody", 0, 0, "s", "t", b"x-%d" % log.size())]
    )
    log.append_pending()
    signed = log.seal(NOW)
    assert signed is not None
    return signed


async def _until(predicate) -> None:
    for _ in range(500):  # 10 s
        if predicate():
            return
        await asyncio.sleep(0.02)
    pytest.fail("timed out")


def test_one_cosignature_of_a_two_of_three_quorum_stays_logged_until_a_second_arrives(setup):
    log, witnesses = setup
    witnesses.start(0)  # w1 and w2 are down: 1 of the 3 can cosign, the quorum is 2
    anchored: list[int] = []

    async def anchor(head: note.SignedCheckpoint) -> None:
        anchored.append(head.checkpoint.size)

    async def scenario() -> None:
        rounds = WitnessRounds(
            log, witnesses.pool(), names=witnesses.names, quorum=2, on_witnessed=anchor
        )
        head = _seal_one(log)
        async with rounds:
            await rounds.offer(head)
            await _until(lambda: rounds.short_rounds >= 2)  # the first round and one retry
            status = log.status(3)
            # Each retry may bring w0's line again (a new timestamp): one witness all the same.
            assert {line.split(" ")[1] for line in status.cosignatures} == {"w0.test"}
            assert (status.state, status.witnessed, status.witnessed_ms) == ("logged", False, None)
            assert (anchored, rounds.witnessed_size) == ([], 0)
            # A second witness comes up: the next retry reaches the quorum.
            witnesses.start(1)
            await asyncio.wait_for(rounds.idle(), 15)
        status = log.status(3)
        assert {line.split(" ")[1] for line in status.cosignatures} == {"w0.test", "w1.test"}
        assert (status.state, status.witnessed) == ("witnessed", True)
        assert (anchored, rounds.witnessed_size) == ([3], 3)

    asyncio.run(scenario())


def test_restart_recounts_kept_cosignatures_and_marks_those_that_reach_the_quorum(setup):
    # The state migration log_0103 leaves: cosignatures kept, no quorum moment recorded.
    log, witnesses = setup  # every witness down: only what is kept can count
    stranger = note.Signer.generate("stranger.test", note.COSIGNATURE_V1)
    sizes = [_seal_one(log).checkpoint.size for _ in range(3)]
    two_of_three, one_and_a_stranger, plain = sizes
    log.add_cosignatures(
        two_of_three, [witnesses.line(0, log, two_of_three), witnesses.line(2, log, two_of_three)]
    )
    text = note.open_checkpoint(log.checkpoint(one_and_a_stranger).note, log.verifier).note.text
    log.add_cosignatures(
        one_and_a_stranger,
        [witnesses.line(1, log, one_and_a_stranger), stranger.sign(text, timestamp=1).line],
    )

    async def scenario() -> None:
        rounds = WitnessRounds(log, witnesses.pool(), names=witnesses.names, quorum=2)
        async with rounds:
            await rounds.recover()

    asyncio.run(scenario())
    assert log.status(two_of_three).state == "witnessed"
    # A witness that is not configured does not count towards the quorum.
    assert log.status(one_and_a_stranger).state == "logged"
    assert len(log.status(one_and_a_stranger).cosignatures) == 2
    assert log.status(plain).state == "logged"
    assert [s.size for s in log.cosigned_below_quorum()] == [one_and_a_stranger]


def test_a_quorum_of_zero_witnesses_lets_heads_through_but_witnesses_nothing(setup):
    log, _ = setup
    anchored: list[int] = []

    async def anchor(head: note.SignedCheckpoint) -> None:
        anchored.append(head.checkpoint.size)

    async def scenario() -> None:
        with WitnessPool([]) as pool:
            rounds = WitnessRounds(log, pool, names=frozenset(), quorum=0, on_witnessed=anchor)
            async with rounds:
                await rounds.offer(_seal_one(log))
                await asyncio.wait_for(rounds.idle(), 10)

    asyncio.run(scenario())
    assert anchored == [3]
    assert (log.status(3).state, log.status(3).witnessed) == ("logged", False)
