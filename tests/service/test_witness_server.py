from __future__ import annotations

import http.client
import socket
import statistics
import time

import pytest

from gateway.core.merkle import (
    consistency_proof,
    leaf_hash,
    root_from_leaf_hashes,
    subtree_from_leaf_hashes,
)
from gateway.core.note import COSIGNATURE_V1, Checkpoint, Signer, open_checkpoint
from gateway.ledger.witness import MAX_REQUEST_SIZE, AddCheckpointRequest, Witness
from gateway.service.witness_server import WitnessServer
from gateway.store.witness import WitnessStore

ORIGIN = "gateway.example/log"
NOW = 1_750_000_000


def _leaves(n: int, salt: bytes = b"") -> list[bytes]:
    return [leaf_hash(salt + str(i).encode()) for i in range(n)]


def _checkpoint(signer: Signer, leaves: list[bytes]) -> bytes:
    return Checkpoint(signer.name, len(leaves), root_from_leaf_hashes(leaves)).sign(signer)


def _body(signer: Signer, leaves: list[bytes], old: int) -> bytes:
    proof = consistency_proof(old, len(leaves), subtree_from_leaf_hashes(leaves))
    return AddCheckpointRequest(old, tuple(proof), _checkpoint(signer, leaves)).to_bytes()


@pytest.fixture
def log_signer() -> Signer:
    return Signer.generate(ORIGIN)


@pytest.fixture
def witness_signer() -> Signer:
    return Signer.generate("witness.example/w1", COSIGNATURE_V1)


@pytest.fixture
def server(tmp_path, log_signer, witness_signer):
    with WitnessStore(tmp_path / "witness.sqlite3") as store:
        witness = Witness(witness_signer, [log_signer.verifier], store)
        with WitnessServer(witness, clock=lambda: NOW, request_timeout=2).start() as srv:
            yield srv


@pytest.fixture
def conn(server):
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    yield c
    c.close()


def _post(conn, body: bytes, path: str = "/add-checkpoint"):
    conn.request("POST", path, body=body)
    response = conn.getresponse()
    return response.status, response.getheader("Content-Type"), response.read()


def test_server_binds_loopback_on_a_random_port_by_default(server):
    assert server.url == f"http://127.0.0.1:{server.port}"
    assert server.port > 0


def test_first_checkpoint_gets_200_and_cosignature_lines(conn, log_signer, witness_signer):
    leaves = _leaves(5)
    status, _, answer = _post(conn, _body(log_signer, leaves, 0))
    assert status == 200
    assert answer.startswith("\u2014 witness.example/w1 ".encode())
    assert answer.endswith(b"\n")
    opened = open_checkpoint(
        _checkpoint(log_signer, leaves) + answer, log_signer.verifier, [witness_signer.verifier]
    )
    assert opened.cosignatures == {"witness.example/w1": NOW}


def test_consistent_growth_is_cosigned_over_one_keep_alive_connection(conn, log_signer):
    leaves = _leaves(20)
    assert _post(conn, _body(log_signer, leaves[:3], 0))[0] == 200
    assert _post(conn, _body(log_signer, leaves[:11], 3))[0] == 200
    assert _post(conn, _body(log_signer, leaves, 11))[0] == 200


def test_stale_old_size_gets_409_with_the_latest_size_as_text_x_tlog_size(conn, log_signer):
    leaves = _leaves(12)
    _post(conn, _body(log_signer, leaves[:10], 0))
    status, content_type, answer = _post(conn, _body(log_signer, leaves, 4))
    assert (status, content_type, answer) == (409, "text/x.tlog.size", b"10\n")


def test_fork_at_the_same_size_gets_409_and_the_witness_keeps_its_state(conn, log_signer):
    leaves = _leaves(8)
    _post(conn, _body(log_signer, leaves, 0))
    forked = _leaves(8, salt=b"fork")
    status, content_type, answer = _post(
        conn, AddCheckpointRequest(8, (), _checkpoint(log_signer, forked)).to_bytes()
    )
    assert (status, content_type, answer) == (409, "text/x.tlog.size", b"8\n")
    # The honest log still extends what the witness holds.
    assert _post(conn, _body(log_signer, [*leaves, *_leaves(3, b"more")], 8))[0] == 200


def test_proof_that_does_not_connect_gets_422(conn, log_signer):
    leaves = _leaves(8)
    _post(conn, _body(log_signer, leaves, 0))
    forked = _leaves(16, salt=b"fork")
    status, _, answer = _post(conn, _body(log_signer, forked, 8))
    assert status == 422
    assert b"not proven to extend" in answer


def test_unknown_log_gets_404(conn):
    other = Signer.generate("other.example/log")
    assert _post(conn, _body(other, _leaves(2), 0))[0] == 404


def test_checkpoint_not_signed_by_the_log_key_gets_403(conn):
    impostor = Signer.generate(ORIGIN)
    assert _post(conn, _body(impostor, _leaves(2), 0))[0] == 403


def test_bad_log_signature_gets_403(conn, log_signer):
    note = _checkpoint(log_signer, _leaves(2)).replace(b"\n2\n", b"\n3\n", 1)
    status, _, _ = _post(conn, AddCheckpointRequest(0, (), note).to_bytes())
    assert status == 403


def test_old_size_above_checkpoint_size_gets_400(conn, log_signer):
    body = AddCheckpointRequest(5, (), _checkpoint(log_signer, _leaves(2))).to_bytes()
    assert _post(conn, body)[0] == 400


def test_malformed_body_gets_400(conn):
    assert _post(conn, b"hello\n\nworld")[0] == 400


def test_oversize_body_gets_413_without_being_read(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            b"POST /add-checkpoint HTTP/1.1\r\nHost: x\r\n"
            + f"Content-Length: {MAX_REQUEST_SIZE + 1}\r\n\r\n".encode()
        )
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413 ")


def test_other_paths_and_methods_are_refused(conn):
    assert _post(conn, b"x", path="/elsewhere")[0] == 404
    conn.request("GET", "/add-checkpoint")
    response = conn.getresponse()
    response.read()
    assert response.status == 405


def test_kept_alive_requests_do_not_wait_on_delayed_acks(conn, log_signer):
    # With Nagle on, the body written after the headers waited ~40 ms for the client's delayed
    # ACK on every request of a kept-alive connection (measured 44 ms median; < 1 ms without).
    leaves = _leaves(40)
    _post(conn, _body(log_signer, leaves[:1], 0))
    times = []
    for size in range(2, 12):
        body = _body(log_signer, leaves[:size], size - 1)
        start = time.perf_counter()
        assert _post(conn, body)[0] == 200
        times.append(time.perf_counter() - start)
    assert statistics.median(times) < 0.02
