"""CPU per row of ``provgw quarantine retry``, beside ingest's CPU per message of the same events.

The events of ``bench pipeline`` (100 devices, the fleet's mix, half Ed25519, half P-256) are
first all quarantined by a gateway that trusts no manufacturer (``untrusted-issuer`` for each
device's first message, ``unknown-kid`` for the rest), then retried with the full trust folder:
every row is verified as of its arrival, stored, and released, one transaction a row
(:mod:`gateway.service.quarantine`). The baseline is the ingest pipeline over the same events on
a fresh database, batches of 500 (``bench pipeline``'s figure): the retry pays a commit per row,
and ingest one per batch.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from bench._table import Row
from bench.bench_pipeline import BATCH, DEVICES, Discard, pipeline_seconds, sign
from device_sim.pki import init_pki
from gateway.core.identity import TrustStore
from gateway.service.ingest import Delivery, IngestPipeline
from gateway.service.quarantine import STORED, retry_quarantined
from gateway.store.db import Database
from gateway.store.trust_files import load_trust_dir


def _retry_seconds(pki: Path, messages: list[Delivery]) -> float:
    """CPU seconds of retrying *messages*, each quarantined first by a gateway trusting no one."""
    with tempfile.TemporaryDirectory() as tmp, Database(Path(tmp) / "bench.sqlite3") as db:
        nobody = IngestPipeline(
            db, TrustStore([], [], []), ack=lambda _t, _q: None, metrics=Discard(), enrol_grace_s=0
        )
        for i in range(0, len(messages), BATCH):
            nobody.process(messages[i : i + BATCH])
        start = time.process_time()
        report = retry_quarantined(db, load_trust_dir(pki / "trust"))
        spent = time.process_time() - start
    assert report.counts == {STORED: len(messages)}, report.counts
    return spent


def run(quick: bool) -> list[Row]:  # noqa: FBT001 -- the bench runner's interface
    """Retry and ingest, us a message, medians of alternating runs."""
    count, repeats = (1000, 3) if quick else (5000, 3)
    with tempfile.TemporaryDirectory() as tmp:
        pki = Path(tmp) / "pki"
        init_pki(pki, devices_per_model=-(-DEVICES // 8))
        enrol, events = sign(pki, count)
        everything = [Delivery(*item) for item in (*enrol, *events)]
        retry_us: list[float] = []
        ingest_us: list[float] = []
        for _ in range(repeats):
            retry_us.append(_retry_seconds(pki, everything) / len(everything) * 1e6)
            ingest_us.append(pipeline_seconds(pki, enrol, events) / count * 1e6)
    return [
        Row(
            "quarantine",
            f"retry of {len(everything):,} quarantined messages, CPU",
            statistics.median(retry_us),
            "us/row",
            "ingest of the same events, batches of 500",
            statistics.median(ingest_us),
        )
    ]
