from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime

from gateway.core import note
from gateway.ledger.keys import GatewayKey
from gateway.ledger.log import TransparencyLog, erase_event
from gateway.ledger.receipts import issue_receipt
from gateway.store.events import EventRecord, EventStore

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)

# A small fleet: GS1 UDIs (GTIN + serial), the gateway's device ids, and the sites.
FLEET = [
    ("09506000134352", "A1001", "st-marys-icu"),
    ("09506000134352", "A1002", "st-marys-icu"),
    ("04012345000016", "G7-55123", "riverside-or-3"),
]
SITES = {site for _, _, site in FLEET}


def _identifiers() -> set[str]:
    found = set(SITES)
    for gtin, serial, _ in FLEET:
        found |= {
            gtin,
            serial,
            f"(01){gtin}(21){serial}",
            f"01{gtin}21{serial}",
            f"{gtin}-{serial}",
        }
    return found


def _forms(text: str) -> set[bytes]:
    # The identifier as text, in base64 (notes are base64 inside), and as an unsalted SHA-256
    # (a hash of an identifier is as linkable as the identifier).
    raw = text.encode()
    digest = hashlib.sha256(raw).digest()
    return {raw, base64.b64encode(raw), digest, base64.b64encode(digest)}


def test_no_leaf_checkpoint_note_or_receipt_contains_a_fleet_identifier(db):
    store = EventStore(db)
    records = []
    for gtin, serial, site in FLEET:
        device = f"{gtin}-{serial}"
        for seq in range(5):
            udi = f"(01){gtin}(21){serial}"
            body = f"device {device} udi {udi} serial {serial} at {site} seq {seq}".encode()
            records.append(
                EventRecord(
                    device,
                    seq,
                    "maintenance",
                    0,
                    0,
                    site,
                    f"provgw/v1/{site}/dev/{device}/evt/maintenance",
                    body,
                )
            )
    store.insert_batch(records)
    key = GatewayKey.generate("provgw.example/log")
    log = TransparencyLog(db, key.signer)
    log.append_pending()
    signed = log.seal(NOW)
    assert signed is not None
    witness = note.Signer.generate("witness.example", note.COSIGNATURE_V1)
    log.add_cosignatures(15, [witness.sign(signed.note.text, timestamp=1_700_000_000).line])
    erase_event(db, 4, f"request about {FLEET[0][1]}", NOW)
    log.seal(NOW)

    published = [h for (h,) in db.query("SELECT hash FROM log_nodes")]
    published += [c for (c,) in db.query("SELECT commitment FROM log_leaves")]
    published += [n for (n,) in db.query("SELECT note FROM checkpoints")]
    published += [c.encode() for (c,) in db.query("SELECT cosignatures FROM checkpoint_status")]
    published += [issue_receipt(log, key, event_id) for event_id in range(1, 16) if event_id != 4]
    published += [key.verifier.vkey.encode()]
    blob = b"\n".join(published)
    assert len(published) > 50
    for identifier in _identifiers():
        for form in _forms(identifier):
            assert form not in blob, identifier
