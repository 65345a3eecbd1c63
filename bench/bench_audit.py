"""``provgw audit export | verify``: one device's audit bundle, per event.

One demo device with 1,000 stored events (200 with ``--quick``), signed and stored through the
ingest pipeline (as ``bench fhir`` fills it), logged and sealed under one checkpoint. Figures:

* the export (:func:`gateway.views.audit.export_audit`: each event's receipt issued, the
  index and the ZIP written), beside issuing the same receipts alone (``issue_receipt``), the
  floor of any export that hands out RFC 9942 receipts;
* the verification (:func:`gateway.views.audit.verify_audit`), beside the bare checks it is
  made of, in a loop over the same bytes: each event's ``verify_device_message`` (at its
  arrival time, through one registry) and ``verify_receipt``. The ratio is what reading the
  bundle and the rest of the audit (CRL dates, gaps, consistency, standing) add.
"""

from __future__ import annotations

import hashlib
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from bench._table import Row, seconds
from bench.bench_fhir import fill_one_device
from gateway.core.identity import DeviceRegistry, TrustStore
from gateway.core.messages import verify_device_message
from gateway.ledger.commitments import leaf_for
from gateway.ledger.keys import GatewayKey
from gateway.ledger.log import TransparencyLog
from gateway.ledger.receipts import issue_receipt, verify_receipt
from gateway.store.events import EventStore
from gateway.store.trust_files import load_trust_dir
from gateway.views.audit import export_audit, verify_audit


def run(quick: bool) -> list[Row]:  # noqa: FBT001 -- the bench runner's interface
    events = 200 if quick else 1000
    key = GatewayKey.generate("bench.test/log")
    with tempfile.TemporaryDirectory() as tmp:
        db, device_id = fill_one_device(Path(tmp), events)
        trust = load_trust_dir(Path(tmp) / "pki" / "trust")
        with db:
            log = TransparencyLog(db, key.signer)
            log.append_pending()
            log.seal(datetime.now(UTC))
            history = EventStore(db).history(device_id)
            now = datetime.now(UTC)

            def export() -> bytes:
                exported = export_audit(db, key, device_id, now=now)
                assert exported is not None
                assert exported.events == events
                return exported.data

            def receipts() -> None:
                for event in history:
                    issue_receipt(log, key, event.id)

            bundle = export()
            exported = seconds(export, repeats=3)
            issued = seconds(receipts, repeats=3)
            proofs = [issue_receipt(log, key, event.id) for event in history]

        def verify() -> None:
            report = verify_audit(bundle, trust=trust, key=key.verifier, now=now)
            assert report.ok
            assert report.events == events

        history_trust = TrustStore(trust.roots, (), trust.intermediates)

        def bare() -> None:
            registry = DeviceRegistry()
            for event, proof in zip(history, proofs, strict=True):
                received = datetime.fromtimestamp(event.received_ms / 1000, tz=UTC)
                verify_device_message(
                    event.raw, trust=history_trust, registry=registry, now=received
                )
                leaf = leaf_for("event", event.salt or b"", hashlib.sha256(event.raw).digest())
                verify_receipt(proof, leaf, key.verifier)

        verified = seconds(verify, repeats=3)
        checks = seconds(bare, repeats=3)
    return [
        Row(
            "audit",
            f"audit export: events/s ({events:,} events, ZIP)",
            events / exported,
            "events/s",
            "issue_receipt alone, the same events",
            events / issued,
        ),
        Row(
            "audit",
            "audit verify: events/s (offline, only public keys)",
            events / verified,
            "events/s",
            "verify_device_message + verify_receipt, bare loop",
            events / checks,
        ),
    ]
