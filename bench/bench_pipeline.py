"""CPU per message of one verifier process: ``IngestPipeline`` beside the bare signature checks.

A verifier of ``provgw serve`` gets batches of raw deliveries and runs
:meth:`~gateway.service.ingest.IngestPipeline.process` on each: decode COSE, resolve the signer,
verify the signature, check the event schema, store the batch in one SQLite transaction, ack.
This measures that in-process (no MQTT, no pipes), on pre-signed events of a demo fleet (half
Ed25519, half P-256 devices, the simulator's event mix), batches of 500, CPU time
(``time.process_time``):

* the pipeline, from :data:`~gateway.service.verifier.RawDelivery` tuples to the acks, per
  message (a fresh database each repeat, every device enrolled first, outside the timing);
* the same run's bare verify (libsodium for Ed25519, ``cryptography`` for P-256) of the very
  same signatures over the very same ``Sig_structure`` bytes: the part no Python change can
  remove;
* the difference: the non-crypto remainder (decoding, schema checks, SQLite), what the gateway
  itself adds to the signature check.

Pipeline and baseline alternate within each repeat, so noise from other work hits both alike.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from nacl.bindings import crypto_sign_open

from bench._table import Row
from device_sim.events import SimDevice, make_event
from device_sim.fleet import EVENT_MIX, select_devices
from device_sim.pki import init_pki
from gateway.core import cose
from gateway.ingest.topics import event_topic
from gateway.service.ingest import BatchOutcome, Delivery, IngestPipeline
from gateway.store.db import Database
from gateway.store.trust_files import load_trust_dir

DEVICES = 100
BATCH = 500

#: ``(topic, payload, tag, qos, received_ms, received_mono)``, as a verifier receives them.
Raw = tuple[str, bytes, int, int, int, float]


class Discard:
    """The verifier's metrics sink (the receiver records the outcomes)."""

    def record(self, outcome: BatchOutcome) -> None:
        del outcome


def sign(pki: Path, count: int) -> tuple[list[Raw], list[Raw]]:
    """Return the enrolment messages (seq 1, with chain) and *count* kid-only events."""
    rng = random.Random(21)  # noqa: S311 - reproducible bench contents, not secrets
    records = select_devices(pki, DEVICES)
    sims = [SimDevice.load(pki, r.id) for r in records]
    types = [t for t, _ in EVENT_MIX]
    weights = [w for _, w in EVENT_MIX]
    now = datetime.now(UTC)
    now_ms = int(now.timestamp() * 1000)

    def raw(i: int, seq: int) -> Raw:
        event_type = rng.choices(types, weights)[0]
        event = make_event(records[i].id, event_type, seq, now_ms, rng, today=now.date())
        payload = sims[i].sign(event, with_chain=seq == 1)
        topic = event_topic(records[i].site, records[i].id, event_type)
        return (topic, payload, seq * DEVICES + i, 1, now_ms, time.monotonic())

    enrol = [raw(i, 1) for i in range(DEVICES)]
    events = [raw(k % DEVICES, 2 + k // DEVICES) for k in range(count)]
    return enrol, events


def _bare_checks(pki: Path, enrol: list[Raw], events: list[Raw]) -> list[Callable[[], object]]:
    """One closure per event: the bare verify of its signature, nothing else.

    The library ``Sign1Message.verify`` uses: libsodium for Ed25519 (ADR 0001), OpenSSL through
    ``cryptography`` for P-256.
    """
    trust = load_trust_dir(pki / "trust")
    with tempfile.TemporaryDirectory() as tmp, Database(Path(tmp) / "keys.sqlite3") as db:
        pipeline = IngestPipeline(db, trust, ack=lambda _t, _q: None, metrics=Discard())
        checks: list[Callable[[], object]] = []
        ecdsa = ec.ECDSA(hashes.SHA256())
        pipeline.process([Delivery(*item) for item in enrol])  # learn every device's key
        for _topic, payload, *_ in events:
            msg = cose.decode_sign1(payload)
            assert msg.kid is not None
            key = pipeline.registry.by_kid(msg.kid).public_key
            tbs, sig = msg.to_be_signed(), msg.signature
            if isinstance(key, Ed25519PublicKey):
                checks.append(partial(crypto_sign_open, sig + tbs, key.public_bytes_raw()))
            else:
                assert isinstance(key, ec.EllipticCurvePublicKey)
                der = encode_dss_signature(
                    int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
                )
                checks.append(partial(key.verify, der, tbs, ecdsa))
    return checks


def pipeline_seconds(pki: Path, enrol: list[Raw], events: list[Raw]) -> float:
    """CPU seconds of the pipeline over *events*, on a fresh database with every device enrolled."""
    trust = load_trust_dir(pki / "trust")
    acks: list[tuple[int, int]] = []
    with tempfile.TemporaryDirectory() as tmp, Database(Path(tmp) / "bench.sqlite3") as db:
        pipeline = IngestPipeline(
            db, trust, ack=lambda tag, qos: acks.append((tag, qos)), metrics=Discard()
        )
        pipeline.process([Delivery(*item) for item in enrol])
        start = time.process_time()
        for i in range(0, len(events), BATCH):
            # As run_verifier does: RawDelivery tuples in, one commit, the acks out.
            acks.clear()
            outcome = pipeline.process([Delivery(*item) for item in events[i : i + BATCH]])
            assert outcome.stored == len(acks)
        return time.process_time() - start


def run(quick: bool) -> list[Row]:  # noqa: FBT001 -- the bench runner's interface
    """Pipeline, bare verify and the non-crypto remainder, us/msg, medians of alternating runs."""
    count, repeats = (2000, 3) if quick else (10_000, 3)
    with tempfile.TemporaryDirectory() as tmp:
        pki = Path(tmp) / "pki"
        init_pki(pki, devices_per_model=-(-DEVICES // 8))
        enrol, events = sign(pki, count)
        bare = _bare_checks(pki, enrol, events)
        pipe_us: list[float] = []
        bare_us: list[float] = []
        for _ in range(repeats):
            start = time.process_time()
            for check in bare:
                check()
            bare_us.append((time.process_time() - start) / count * 1e6)
            pipe_us.append(pipeline_seconds(pki, enrol, events) / count * 1e6)
    pipe, crypto = statistics.median(pipe_us), statistics.median(bare_us)
    rest = statistics.median(p - b for p, b in zip(pipe_us, bare_us, strict=True))
    n = f"{count // 1000}k"
    return [
        Row(
            "pipeline",
            f"verifier pipeline, {n} pre-signed events, CPU",
            pipe,
            "us/msg",
            "bare signature verify of the same messages",
            crypto,
        ),
        Row(
            "pipeline",
            "non-crypto remainder (pipeline - bare verify)",
            rest,
            "us/msg",
            "bare signature verify",
            crypto,
        ),
    ]
