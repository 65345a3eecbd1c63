"""Witness add-checkpoint: over HTTP (keep-alive), in process, and the bare crypto floor.

Each round grows the log by 1,000 leaves (one batcher checkpoint at the default N) and asks the
witness to cosign it with a real consistency proof, so every figure includes parsing, the log
signature check, the RFC 9162 proof check, one SQLite transaction (synchronous=FULL, as served)
and the Ed25519 cosignature. The floor is one Ed25519 verify plus one Ed25519 sign over the same
checkpoint text: what no witness can avoid. The HTTP figure is one client, sequential requests.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from bench._table import Row, rate
from gateway.core.merkle import (
    consistency_proof,
    leaf_hash,
    root_from_leaf_hashes,
    subtree_from_leaf_hashes,
)
from gateway.core.note import COSIGNATURE_V1, Checkpoint, Signer
from gateway.ledger.witness import AddCheckpointRequest, Witness
from gateway.ledger.witness_client import WitnessClient
from gateway.service.witness_server import WitnessServer
from gateway.store.witness import WitnessStore

ORIGIN = "bench.example/log"
STEP = 1000


def _requests(log: Signer, rounds: int) -> list[tuple[bytes, int, list[bytes]]]:
    """(signed checkpoint, old size, proof) for rounds of STEP leaves, in order."""
    leaves = [leaf_hash(i.to_bytes(8, "big")) for i in range(STEP * rounds)]
    subtree = subtree_from_leaf_hashes(leaves)
    out = []
    for r in range(1, rounds + 1):
        size = r * STEP
        note = Checkpoint(ORIGIN, size, root_from_leaf_hashes(leaves[:size])).sign(log)
        old = size - STEP
        out.append((note, old, consistency_proof(old, size, subtree)))
    return out


def run(*, quick: bool) -> list[Row]:
    rounds = 30 if quick else 200
    log = Signer.generate(ORIGIN)
    requests = _requests(log, rounds)
    text = Checkpoint(ORIGIN, STEP, bytes(32)).to_text()
    cosigner = Signer.generate("bench.example/w", COSIGNATURE_V1)
    log_sig = log.sign(text).signature

    def floor() -> None:
        log.verifier.verify(text, log_sig)
        cosigner.sign(text, timestamp=1)

    floor_rate = rate(floor, 500)
    with tempfile.TemporaryDirectory() as tmp:
        # In process: the witness logic and its SQLite file, no HTTP.
        with WitnessStore(Path(tmp) / "inproc.sqlite3") as store:
            witness = Witness(cosigner, [log.verifier], store)
            bodies = [AddCheckpointRequest(o, tuple(p), n).to_bytes() for n, o, p in requests]
            start = time.perf_counter()
            for body in bodies:
                witness.add_checkpoint(body, now=1)
            inproc_rate = len(bodies) / (time.perf_counter() - start)
        # Over HTTP on loopback, one keep-alive client, as the gateway's pool does per witness.
        with (
            WitnessStore(Path(tmp) / "http.sqlite3") as store,
            WitnessServer(Witness(cosigner, [log.verifier], store)).start() as server,
        ):
            client = WitnessClient(server.url, cosigner.verifier)
            samples = []
            for note, old, proof in requests:
                t0 = time.perf_counter()
                client.submit(note, old, proof)
                samples.append(time.perf_counter() - t0)
            client.close()
    http_ms = statistics.median(samples) * 1000
    return [
        Row(
            "witness",
            "add-checkpoint in process (+1,000 leaves, proof, fsync)",
            inproc_rate,
            "/s",
            "Ed25519 verify + sign alone",
            floor_rate,
        ),
        Row(
            "witness",
            "add-checkpoint over HTTP, median latency",
            http_ms,
            "ms",
            "same, in process",
            1000 / inproc_rate,
            goal="<< batcher interval (2 s)",
        ),
    ]
