from __future__ import annotations

import socket
import time
from contextlib import ExitStack

import pytest

from gateway.core.errors import (
    ConflictError,
    MismatchError,
    SignatureError,
    UnavailableError,
    UntrustedSignerError,
)
from gateway.core.note import COSIGNATURE_V1, Signer
from gateway.ledger.quorum import require_quorum
from gateway.ledger.witness import Witness
from gateway.ledger.witness_client import WitnessClient, WitnessPool
from gateway.service.witness_server import WitnessServer
from gateway.store.witness import WitnessStore
from tests._helpers import ToyLog

ORIGIN = "gateway.example/log"
NOW = 1_750_000_000


@pytest.fixture
def log_signer() -> Signer:
    return Signer.generate(ORIGIN)


@pytest.fixture
def witnesses(tmp_path, log_signer):
    """Three witnesses on random loopback ports: (signer, server) pairs."""
    with ExitStack() as stack:
        out = []
        for i in range(3):
            signer = Signer.generate(f"witness.example/w{i}", COSIGNATURE_V1)
            store = stack.enter_context(WitnessStore(tmp_path / f"w{i}.sqlite3"))
            witness = Witness(signer, [log_signer.verifier], store)
            server = stack.enter_context(WitnessServer(witness, clock=lambda: NOW).start())
            out.append((signer, server))
        yield out


@pytest.fixture
def client(witnesses):
    signer, server = witnesses[0]
    c = WitnessClient(server.url, signer.verifier, timeout=2)
    yield c
    c.close()


@pytest.fixture
def blackhole():
    """A port that accepts TCP connections (kernel backlog) but never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.fixture
def closed_port() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now: connection refused
    return f"http://127.0.0.1:{port}"


# -- one witness ----------------------------------------------------------------------------------


def test_client_returns_verified_cosignature_lines(client, log_signer):
    log = ToyLog(log_signer, 4)
    [line] = client.submit(log.checkpoint(), 0, [])
    assert line.startswith("\u2014 witness.example/w0 ")
    signed = require_quorum(
        log.checkpoint() + line.encode(), log_signer.verifier, [client.verifier], 1
    )
    assert signed.witnesses == ("witness.example/w0",)


def test_client_follows_consistent_growth(client, log_signer):
    log = ToyLog(log_signer, 4)
    client.submit(log.checkpoint(), 0, [])
    for _ in range(3):
        old = len(log.leaves)
        log.grow(5)
        assert client.submit(log.checkpoint(), old, log.prove(old))


def test_client_maps_409_to_conflict_with_the_known_size(client, log_signer):
    log = ToyLog(log_signer, 6)
    client.submit(log.checkpoint(), 0, [])
    log.grow(2)
    with pytest.raises(ConflictError) as info:
        client.submit(log.checkpoint(), 0, [])
    assert info.value.known_size == 6


def test_client_maps_a_forked_log_to_a_refusal(client, log_signer):
    log = ToyLog(log_signer, 6)
    client.submit(log.checkpoint(), 0, [])
    forked = ToyLog(log_signer, 6, salt=b"fork")
    with pytest.raises(ConflictError) as same_size:
        client.submit(forked.checkpoint(), 6, [])
    assert same_size.value.known_size == 6
    forked.grow(6)
    with pytest.raises(MismatchError) as grown:
        client.submit(forked.checkpoint(), 6, forked.prove(6))
    assert grown.value.reason == "bad-consistency-proof"


def test_client_maps_404_for_an_unknown_log(client):
    other = ToyLog(Signer.generate("other.example/log"), 2)
    with pytest.raises(UntrustedSignerError) as info:
        client.submit(other.checkpoint(), 0, [])
    assert info.value.reason == "unknown-log"


def test_dead_witness_refusing_connections_is_unavailable_at_once(closed_port, log_signer):
    wrong = Signer.generate("witness.example/dead", COSIGNATURE_V1).verifier
    client = WitnessClient(closed_port, wrong, timeout=1)
    start = time.monotonic()
    with pytest.raises(UnavailableError) as info:
        client.submit(ToyLog(log_signer, 1).checkpoint(), 0, [])
    assert time.monotonic() - start < 1
    assert info.value.reason == "witness-unreachable"


def test_silent_witness_times_out_as_unavailable(blackhole, log_signer):
    verifier = Signer.generate("witness.example/silent", COSIGNATURE_V1).verifier
    client = WitnessClient(blackhole, verifier, timeout=0.3)
    start = time.monotonic()
    with pytest.raises(UnavailableError) as info:
        client.submit(ToyLog(log_signer, 1).checkpoint(), 0, [])
    assert 0.2 < time.monotonic() - start < 2
    assert "did not answer within 0.3 s" in str(info.value)


# -- the pool -------------------------------------------------------------------------------------


def _pool(witnesses, *extra, deadline=5.0, timeout=2.0):
    clients = [WitnessClient(srv.url, s.verifier, timeout=timeout) for s, srv in witnesses]
    return WitnessPool([*clients, *extra], deadline=deadline)


def test_pool_collects_every_cosignature_into_one_note(witnesses, log_signer):
    log = ToyLog(log_signer, 5)
    with _pool(witnesses) as pool:
        result = pool.submit(log.checkpoint(), log.prove)
    assert sorted(result.cosignatures) == [f"witness.example/w{i}" for i in range(3)]
    assert result.failures == {}
    verifiers = [s.verifier for s, _ in witnesses]
    assert len(require_quorum(result.checkpoint, log_signer.verifier, verifiers, 3).witnesses) == 3
    assert pool.latest == result


def test_pool_with_a_dead_witness_still_returns_the_others_quickly(
    witnesses, log_signer, blackhole
):
    silent = WitnessClient(
        blackhole, Signer.generate("witness.example/silent", COSIGNATURE_V1).verifier, timeout=0.5
    )
    log = ToyLog(log_signer, 5)
    with _pool(witnesses, silent, deadline=3) as pool:
        start = time.monotonic()
        result = pool.submit(log.checkpoint(), log.prove)
        elapsed = time.monotonic() - start
    assert elapsed < 2
    assert len(result.cosignatures) == 3
    assert isinstance(result.failures["witness.example/silent"], UnavailableError)


def test_pool_deadline_bounds_a_round_even_when_a_client_waits_longer(
    witnesses, log_signer, blackhole
):
    silent = WitnessClient(
        blackhole, Signer.generate("witness.example/silent", COSIGNATURE_V1).verifier, timeout=1.5
    )
    log = ToyLog(log_signer, 5)
    with _pool(witnesses, silent, deadline=0.5) as pool:
        start = time.monotonic()
        result = pool.submit(log.checkpoint(), log.prove)
        assert time.monotonic() - start < 1.2
    assert len(result.cosignatures) == 3
    assert "did not cosign within 0.5 s" in str(result.failures["witness.example/silent"])


def test_pool_brings_a_witness_that_missed_checkpoints_up_to_date(witnesses, log_signer):
    log = ToyLog(log_signer, 3)
    first_only = [witnesses[0]]
    with _pool(first_only) as pool:
        pool.submit(log.checkpoint(), log.prove)
        log.grow(4)
        pool.submit(log.checkpoint(), log.prove)
    log.grow(4)
    proofs_asked = []

    def prove(old):
        proofs_asked.append(old)
        return log.prove(old)

    # A fresh pool knows no sizes: it probes w0 with old 0, learns 7 from the 409 and proves
    # from there; w1 and w2 accept old 0 as their first checkpoint.
    with _pool(witnesses) as pool:
        result = pool.submit(log.checkpoint(), prove)
        assert result.failures == {}
        assert len(result.cosignatures) == 3
        assert sorted(proofs_asked) == [0, 0, 0, 7]
        assert pool.known_sizes == dict.fromkeys(result.cosignatures, 11)


def test_pool_reports_a_forked_log_as_refused_by_every_witness(witnesses, log_signer):
    log = ToyLog(log_signer, 6)
    with _pool(witnesses) as pool:
        pool.submit(log.checkpoint(), log.prove)
        forked = ToyLog(log_signer, 6, salt=b"fork")
        result = pool.submit(forked.checkpoint(), forked.prove)
    assert result.cosignatures == {}
    assert all(isinstance(e, ConflictError) for e in result.failures.values())
    assert result.checkpoint == forked.checkpoint()


def test_pool_says_when_a_witness_holds_more_of_the_log_than_the_log_itself(witnesses, log_signer):
    # The log's database was put back to an older copy: its newest checkpoint (6) is behind
    # what the witnesses cosigned (10). A fresh pool (a restart) probes and learns that.
    grown = ToyLog(log_signer, 10)
    with _pool(witnesses) as pool:
        assert len(pool.submit(grown.checkpoint(), grown.prove).cosignatures) == 3
    restored = ToyLog(log_signer, 6)
    with _pool(witnesses) as pool:
        result = pool.submit(restored.checkpoint(), restored.prove)
    assert result.cosignatures == {}
    assert {e.reason for e in result.failures.values()} == {"witness-ahead"}
    assert all(isinstance(e, ConflictError) for e in result.failures.values())
    assert {e.known_size for e in result.failures.values()} == {10}  # type: ignore[attr-defined]
    assert "has cosigned 10 entries of this log" in str(next(iter(result.failures.values())))


def test_pool_refuses_two_witnesses_with_one_name(witnesses):
    signer, server = witnesses[0]
    twice = [WitnessClient(server.url, signer.verifier) for _ in range(2)]
    with pytest.raises(ValueError, match="share a key name"):
        WitnessPool(twice)


def test_wrong_witness_key_is_a_signature_error(witnesses, log_signer):
    _, server = witnesses[0]
    wrong = Signer.generate("witness.example/w0", COSIGNATURE_V1).verifier
    client = WitnessClient(server.url, wrong, timeout=2)
    with pytest.raises(SignatureError) as info:
        client.submit(ToyLog(log_signer, 2).checkpoint(), 0, [])
    assert info.value.reason == "witness-wrong-key"
    client.close()


def test_client_resends_once_when_the_witness_dropped_the_idle_connection(tmp_path, log_signer):
    signer = Signer.generate("witness.example/idle", COSIGNATURE_V1)
    with (
        WitnessStore(tmp_path / "idle.sqlite3") as store,
        WitnessServer(
            Witness(signer, [log_signer.verifier], store), request_timeout=0.2
        ).start() as server,
    ):
        client = WitnessClient(server.url, signer.verifier, timeout=2)
        log = ToyLog(log_signer, 2)
        client.submit(log.checkpoint(), 0, [])
        time.sleep(0.5)  # the server closes the kept-alive connection after 0.2 s idle
        log.grow(2)
        assert client.submit(log.checkpoint(), 2, log.prove(2))
        client.close()
