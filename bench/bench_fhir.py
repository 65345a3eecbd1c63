"""``provgw device fhir``: exporting one device's history as a FHIR R4B Bundle, per event.

One demo device with 1,000 stored events (200 with ``--quick``), each really signed and stored
through the ingest pipeline. The export (:func:`gateway.views.fhir.device_bundle` and
``to_json``) reads the device, its inventory row and its history, builds the Bundle, validates
it whole with ``fhir.resources``' R4B models and writes it with :func:`json.dumps`. Baselines,
same run, same document:

* the library's own serialization after the same validation (``model_dump_json``), what the
  export did at first: the price of letting the models write the JSON;
* the export without the validation: what the check that no invalid Bundle leaves costs.

And ``provgw device fhir-bulk`` (:func:`gateway.views.fhir.bulk_export`: the same events as
NDJSON files, each resource validated alone, written durably) beside the single-device export.
"""

from __future__ import annotations

import json
import random
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

from fhir.resources.R4B.bundle import Bundle

from bench._table import Row, seconds
from device_sim.events import SimDevice, make_event
from device_sim.pki import init_pki, load_devices
from gateway.ingest.topics import event_topic
from gateway.service.ingest import Delivery, IngestPipeline
from gateway.store.db import Database
from gateway.store.trust_files import load_trust_dir
from gateway.views import fhir


def fill_one_device(directory: Path, events: int) -> tuple[Database, str]:
    """A demo PKI in *directory* and one device's *events*, signed and stored through ingest.

    Shared with ``bench audit``. Returns the open database and the device's id.
    """
    pki = directory / "pki"
    init_pki(pki, devices_per_model=1)
    record = load_devices(pki)[0]
    sim = SimDevice.load(pki, record.id)
    rng = random.Random(5)  # noqa: S311 - reproducible bench contents, not secrets
    now = datetime.now(UTC)
    now_ms = int(now.timestamp() * 1000)
    kinds = ("maintenance", "custody", "firmware_update")
    deliveries = []
    for seq in range(1, events + 1):
        kind = kinds[seq % 3]
        event = make_event(record.id, kind, seq, now_ms - events + seq, rng, today=now.date())
        raw = sim.sign(event, with_chain=seq == 1)
        deliveries.append(Delivery(event_topic("icu", record.id, kind), raw, seq, 1, now_ms))
    db = Database(directory / "gateway.sqlite3")
    pipeline = IngestPipeline(db, load_trust_dir(pki / "trust"), ack=lambda _t, _q: None)
    for start in range(0, events, 500):
        pipeline.process(deliveries[start : start + 500])
    return db, record.id


class _Unchecked:
    """Stands in for the R4B ``Bundle`` model in the baseline without validation."""

    @staticmethod
    def model_validate(document: dict[str, Any]) -> None:
        del document


def run(quick: bool) -> list[Row]:  # noqa: FBT001 -- the bench runner's interface
    events = 200 if quick else 1000
    with tempfile.TemporaryDirectory() as tmp:
        db, device_id = fill_one_device(Path(tmp), events)
        with db:
            now = datetime.now(UTC)

            def export() -> str:
                exported = fhir.device_bundle(db, device_id, now=now)
                assert exported is not None
                assert exported.events == events
                return exported.to_json()

            document = json.loads(export())
            ours = seconds(export, repeats=5)
            models = seconds(
                lambda: Bundle.model_validate(document).model_dump_json(exclude_none=True),
                repeats=5,
            )
            with mock.patch.object(fhir, "Bundle", _Unchecked):
                unvalidated = seconds(export, repeats=5)
            bulk_dir = Path(tmp) / "bulk"
            bulk = seconds(lambda: fhir.bulk_export(db, bulk_dir), repeats=5)
    per_s = events / ours
    return [
        Row(
            "fhir",
            f"device fhir: events exported/s ({events:,} events, validated)",
            per_s,
            "events/s",
            "fhir.resources validate + model_dump_json",
            events / models,
        ),
        Row(
            "fhir",
            "device fhir: events exported/s, validated",
            per_s,
            "events/s",
            "the same without the validation",
            events / unvalidated,
        ),
        Row(
            "fhir",
            "device fhir-bulk: events exported/s (NDJSON, each resource validated)",
            events / bulk,
            "events/s",
            "device fhir, the same events",
            per_s,
        ),
    ]
