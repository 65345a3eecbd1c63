"""Device audit bundles: one device's history, with everything a third party needs to check it.

A manufacturer's security team, a repair depot, an auditor or a regulator asks a hospital what
happened to one device. The FHIR export (:mod:`gateway.views.fhir`) answers a hospital system;
an **audit bundle** answers someone who trusts neither the hospital nor its gateway. It is a
ZIP file of plain, documented parts, so that it can be read with any tool:

``audit.json``
    the index (:data:`FORMAT`): the device, each stored event (its message file, salt and
    receipt), each erased event and its logged erasure, the site's revocation of the device if
    any, the urgent lane's records of it (patch offered, installed, failed, unreachable), and
    the consistency proofs that tie the receipts' checkpoints to one log;
``chain.pem``
    the device's certificate and the chain above it, as the gateway holds them;
``events/SEQ.cose``
    the exact COSE_Sign1 bytes the device signed, one file per event;
``receipts/KIND-ID.cbor``
    the RFC 9942 receipt bundle of each record (:mod:`gateway.ledger.receipts`, the bytes of
    ``provgw log prove --out``): an inclusion proof to a signed checkpoint, with the
    witnesses' cosignatures and any chain anchor;
``recalls/ID.N.bin``
    the kept, manufacturer-signed notice of each recall those records name;
``README.txt``
    what the parts are and how to check them.

:func:`verify_audit` checks a bundle with nothing but the manufacturers' root certificates, the
gateway's public log key and, optionally, witness keys and the manufacturers' recall keys: no
database and no private key.

- **Each event** is verified as the gateway verified it when it arrived
  (:func:`~gateway.core.messages.verify_device_message` at the time it was received): the
  signature, the certificate chain to a trusted root (the first event's ``x5chain``, else
  ``chain.pem``; key rotations followed as signed), the closed schema, the device named by the
  event, its time. CRLs are not applied to the history as the core applies them to live
  traffic (where a revoked certificate is refused whatever it signed): a revocation is dated,
  so an event received *after* its certificate's revocation date is a problem, one received
  before is not.
- **Each event is in the log**: its commitment, recomputed from its salt and the SHA-256 of its
  bytes, is the leaf the receipt proves under a checkpoint signed by the gateway key; it is
  *witnessed* when the quorum of the witness keys given cosigned that checkpoint.
- **Erasures and a revocation** are checked the same way from their logged records (an erased
  event's own commitment can only be shown to be in the log: its salt is gone).
- **The urgent lane's records** are in the log, and say what the device's own reports say
  (:meth:`_Audit.remediation`, by the rules ``provgw log verify`` applies); with the recall
  keys, each recall notice's threshold signatures are verified and the tracker's rule decides
  whether a report counts for its recall.
- **One log**: every checkpoint the receipts stand under is consistent with the largest
  (RFC 9162 consistency proofs), so the bundle cannot mix two forks of the log.
- **Gaps**: device sequence numbers that neither a stored nor an erased event holds are listed.
  The device signed its numbers, so a withheld event shows as a gap; an event lost or
  quarantined shows the same way, and one after the last is not visible at all. A seq is
  monotonic, not always contiguous (the simulated devices' patch reports number by the clock),
  so a gap is a question to ask, not a verdict.
- **The certificate now**: the chain is checked against the trust folder as of *now*, CRLs
  included, as ``provgw device show --trust`` does.

The bundle names the device id (a UDI, serial included): it is for the party the site chooses
to give it to, like the FHIR export, never for the ledger, which holds only commitments.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import re
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.core import merkle, note
from gateway.core.cbor import strict_loads
from gateway.core.cose import decode_sign1
from gateway.core.errors import (
    MalformedError,
    MismatchError,
    OversizeError,
    PolicyError,
    UnavailableError,
    VerificationError,
)
from gateway.core.identity import DeviceRegistry, TrustStore, verify_device_chain
from gateway.core.messages import verify_device_message
from gateway.core.recall import MAX_RECALL_BYTES, Recall, RecallFields, RecallTrust
from gateway.ledger.commitments import erasure_digest, leaf_for, revocation_digest
from gateway.ledger.log import TransparencyLog
from gateway.ledger.quorum import quorum_of
from gateway.ledger.receipts import (
    MAX_BUNDLE_SIZE,
    ReceiptVerifier,
    issue_receipt,
    receipt_tree_size,
)
from gateway.service.claims import report_claim_mismatch
from gateway.service.remediation import (
    Report,
    read_report,
    report_moves_recall,
    unreachable_digest,
)
from gateway.store.devices import DeviceStore, Standing
from gateway.store.events import EventStore
from gateway.store.offers import campaign_id
from gateway.views._files import write_replacing

if TYPE_CHECKING:
    from gateway.core.identity import DeviceIdentity
    from gateway.ledger.keys import GatewayKey
    from gateway.store.db import Database

__all__ = [
    "FORMAT",
    "MAX_AUDIT_SIZE",
    "AuditExport",
    "AuditProblem",
    "AuditReport",
    "export_audit",
    "verify_audit",
]

#: The index's ``format``: a reader refuses any other.
FORMAT = "provgw-device-audit/1"
#: Bundles above this size are refused before they are opened (about 100,000 events).
MAX_AUDIT_SIZE = 256 * 1024 * 1024
#: The largest part of each kind (an uncompressed size; a ZIP may claim less than it holds,
#: so a part is also read no further than this).
_MAX_INDEX = 64 * 1024 * 1024
#: The ZIP's central directory: about 70 bytes a part, two parts an event.
_MAX_DIRECTORY = 16 * 1024 * 1024
_MAX_CHAIN = 64 * 1024
_MAX_MESSAGE = 64 * 1024
_INDEX = "audit.json"
_CHAIN = "chain.pem"
_README = "README.txt"
#: What a recall id may not put in a part's name (it is the manufacturer's to choose).
_UNSAFE_IN_NAME = re.compile(r"[^A-Za-z0-9._-]")
#: CRLs date a revocation to the second (RFC 5280 UTCTime / GeneralizedTime).
_CRL_RESOLUTION = timedelta(seconds=1)

ProgressFn = Callable[[int, int], None]


# --- export ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditExport:
    """An audit bundle (the ZIP's bytes) and what went into it."""

    data: bytes
    device_id: str
    events: int
    erased: int
    #: Stored events that no signed checkpoint covers yet: in the bundle without a receipt.
    pending: int
    revoked: bool

    def write(self, path: Path) -> None:
        """Write the bundle to *path*, complete or not at all (a temporary file, renamed)."""
        write_replacing(path, self.data)


def _ms_iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


class _Parts:
    """The ZIP's members, written in a fixed order with fixed times, and the receipts in it."""

    def __init__(self, log: TransparencyLog, key: GatewayKey, when: datetime) -> None:
        self._log, self._key = log, key
        self.buffer = io.BytesIO()
        self._zip = zipfile.ZipFile(self.buffer, "w")
        self._when = when.astimezone(UTC).timetuple()[:6]
        #: The tree sizes of the checkpoints the receipts stand under.
        self.sizes: set[int] = set()

    def add(self, name: str, data: bytes, *, text: bool = False) -> str:
        info = zipfile.ZipInfo(name, date_time=self._when)
        # Signed messages and receipts are mostly keys, hashes and signatures: deflating them
        # saves little and costs a compressor each; the index and the PEM text shrink well.
        info.compress_type = zipfile.ZIP_DEFLATED if text else zipfile.ZIP_STORED
        self._zip.writestr(info, data)
        return name

    def receipt(self, kind: str, ref_id: int) -> str | None:
        """Add *kind* *ref_id*'s receipt and return its name; ``None`` if it has none yet.

        ``None`` when the record is not under a signed checkpoint yet (the next seal puts it
        there). The receipt is not verified here (that doubled the export's time: two signature
        checks an event); the receiver verifies every one.
        """
        try:
            bundle = issue_receipt(self._log, self._key, ref_id, kind)
        except (UnavailableError, MalformedError):  # not logged, or no checkpoint covers it yet
            return None
        self.sizes.add(receipt_tree_size(bundle))
        return self.add(f"receipts/{kind}-{ref_id}.cbor", bundle)

    def close(self) -> bytes:
        self._zip.close()
        return self.buffer.getvalue()


def export_audit(
    db: Database,
    key: GatewayKey,
    device_id: str,
    *,
    now: datetime,
    progress: ProgressFn | None = None,
) -> AuditExport | None:
    """Return the audit bundle of *device_id*; ``None`` when the gateway never enrolled it.

    *key* is the gateway's log key: each receipt is signed with it (RFC 9942). *now* is the
    bundle's ``exported`` time. *progress* is called as ``progress(done, total)`` over the
    events.
    """
    row = DeviceStore(db).get(device_id)
    if row is None:
        return None
    log = TransparencyLog(db, key.signer)
    log.check_signer()
    parts = _Parts(log, key, now)
    chain = b"".join(
        x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
        for der in (row.cert, *row.chain)
    )
    parts.add(_CHAIN, chain, text=True)
    events, erased = _events(db, log, parts, device_id, progress)
    revocation = _revocation(db, device_id)
    if revocation is not None:
        revocation["receipt"] = parts.receipt("revocation", revocation["revocation_id"])
    remediation = _remediation(db, device_id)
    for record in remediation:
        record["receipt"] = parts.receipt("remediation", record["record_id"])
    recalls = _recalls(db, parts, {r["recall_id"] for r in remediation} - {None})
    index = {
        "format": FORMAT,
        "device_id": device_id,
        "manufacturer": row.manufacturer,
        "exported": now.astimezone(UTC).isoformat(timespec="seconds"),
        "log": {"origin": log.origin, "vkey": key.verifier.vkey},
        "certificate_chain": _CHAIN,
        "events": events,
        "erased": erased,
        "revocation": revocation,
        "remediation": remediation,
        "recalls": recalls,
        "consistency": _consistency(log, parts.sizes),
    }
    parts.add(_INDEX, json.dumps(index, indent=1, sort_keys=True).encode(), text=True)
    parts.add(_README, _readme(device_id, log.origin).encode(), text=True)
    pending = sum(1 for e in events if e["receipt"] is None)
    return AuditExport(
        parts.close(), device_id, len(events), len(erased), pending, revocation is not None
    )


def _events(
    db: Database,
    log: TransparencyLog,
    parts: _Parts,
    device_id: str,
    progress: ProgressFn | None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Add the device's events (messages, receipts) to *parts*; return the kept and erased."""
    history = EventStore(db).history(device_id)
    erasures = _erasures(db, device_id)
    events: list[dict[str, Any]] = []
    erased: list[dict[str, Any]] = []
    for done, event in enumerate(history, 1):
        entry: dict[str, Any] = {
            "event_id": event.id,
            "seq": event.seq,
            "type": event.type,
            "received_ms": event.received_ms,
            "received": _ms_iso(event.received_ms),
            "sha256": event.digest.hex(),
            "receipt": parts.receipt("event", event.id),
        }
        if event.salt is not None:
            entry["message"] = parts.add(f"events/{event.seq}.cose", event.raw)
            entry["salt"] = event.salt.hex()
            events.append(entry)
        else:
            leaf = log.leaf_of("event", event.id)
            entry["commitment"] = None if leaf is None else leaf.commitment.hex()
            erasure = erasures.get(event.id)
            if erasure is not None:
                erasure["receipt"] = parts.receipt("erasure", erasure["erasure_id"])
            entry["erasure"] = erasure
            erased.append(entry)
        if progress is not None:
            progress(done, len(history))
    return events, erased


def _erasures(db: Database, device_id: str) -> dict[int, dict[str, Any]]:
    rows = db.query(
        "SELECT e.id, e.event_id, e.reason, e.erased_ms, e.salt FROM erasures e"
        " JOIN events ON events.id = e.event_id WHERE events.device_id = ?",
        (device_id,),
    )
    return {
        int(event_id): {
            "erasure_id": int(erasure_id),
            "reason": reason,
            "erased_ms": int(erased_ms),
            "erased": _ms_iso(int(erased_ms)),
            "salt": bytes(salt).hex(),
        }
        for erasure_id, event_id, reason, erased_ms, salt in rows
    }


def _revocation(db: Database, device_id: str) -> dict[str, Any] | None:
    rows = db.query(
        "SELECT id, reason, revoked_ms, salt FROM device_revocations WHERE device_id = ?",
        (device_id,),
    )
    if not rows:
        return None
    revocation_id, reason, revoked_ms, salt = rows[0]
    return {
        "revocation_id": int(revocation_id),
        "reason": reason,
        "revoked_ms": int(revoked_ms),
        "revoked": _ms_iso(int(revoked_ms)),
        "salt": bytes(salt).hex(),
    }


def _remediation(db: Database, device_id: str) -> list[dict[str, Any]]:
    """Return the urgent lane's records of the device: offered, installed, failed, unreachable."""
    rows = db.query(
        "SELECT id, recall_id, manifest, state, detail, at_ms, digest, salt FROM urgent_records"
        " WHERE kind = 'remediation' AND device_id = ? ORDER BY id",
        (device_id,),
    )
    return [
        {
            "record_id": int(record_id),
            "recall_id": recall_id,
            "manifest": None if manifest is None else bytes(manifest).hex(),
            "state": state,
            "detail": detail,
            "at_ms": int(at_ms),
            "at": _ms_iso(int(at_ms)),
            "digest": bytes(digest).hex(),
            "salt": bytes(salt).hex(),
        }
        for record_id, recall_id, manifest, state, detail, at_ms, digest, salt in rows
    ]


def _recalls(db: Database, parts: _Parts, recall_ids: set[str]) -> list[dict[str, Any]]:
    """Add the kept notice of each recall the device's records name; return their entries.

    With it, the receiver re-applies the rule by which a device's report counts for a recall
    (its remedy), after checking the manufacturers' signatures on the notice itself.
    """
    entries: list[dict[str, Any]] = []
    for recall_id in sorted(recall_ids):
        rows = db.query(
            "SELECT revision, source, raw FROM recalls WHERE recall_id = ?", (recall_id,)
        )
        if not rows:
            continue
        revision, source, raw = rows[0]
        name = _UNSAFE_IN_NAME.sub("_", recall_id)[:100]
        entries.append(
            {
                "recall_id": recall_id,
                "revision": int(revision),
                "source": source,
                "notice": parts.add(f"recalls/{name}.{len(entries)}.bin", bytes(raw)),
                "accepted": _accepted(db, parts, recall_id, hashlib.sha256(bytes(raw)).digest()),
            }
        )
    return entries


def _accepted(db: Database, parts: _Parts, recall_id: str, digest: bytes) -> dict[str, Any] | None:
    """Return the urgent lane's logged record of taking in these notice bytes, if any."""
    rows = db.query(
        "SELECT id, state, manifest, at_ms, salt FROM urgent_records"
        " WHERE kind = 'recall' AND recall_id = ? AND digest = ? ORDER BY id DESC LIMIT 1",
        (recall_id, digest),
    )
    if not rows:
        return None
    record_id, state, manifest, at_ms, salt = rows[0]
    return {
        "record_id": int(record_id),
        "state": state,
        "manifest": None if manifest is None else bytes(manifest).hex(),
        "at_ms": int(at_ms),
        "at": _ms_iso(int(at_ms)),
        "salt": bytes(salt).hex(),
        "receipt": parts.receipt("recall", int(record_id)),
    }


def _consistency(log: TransparencyLog, sizes: set[int]) -> dict[str, Any] | None:
    """Consistency proofs from each receipt's tree size to the largest (RFC 9162 §2.1.4)."""
    if not sizes:
        return None
    largest = max(sizes)
    return {
        "to": largest,
        "proofs": [
            {"from": size, "proof": [h.hex() for h in log.consistency_proof(size, largest)]}
            for size in sorted(sizes - {largest})
        ],
    }


def _readme(device_id: str, origin: str) -> str:
    return f"""Audit bundle of device {device_id} (format {FORMAT}), from the Provenance Gateway
whose transparency log is {origin}.

  audit.json           the index: every stored event (its message, salt and receipt), every
                       erased event and its logged erasure, the site's revocation of the
                       device if any, the urgent lane's records of it (patch offered,
                       installed, failed, unreachable), and consistency proofs between the
                       receipts' checkpoints
  recalls/*.bin        the manufacturer-signed notice of each recall those records name
  chain.pem            the device's certificate and the chain above it
  events/SEQ.cose      the exact COSE_Sign1 bytes the device signed (RFC 9052)
  receipts/*.cbor      RFC 9942 receipts: inclusion proofs to checkpoints signed by the
                       gateway's log key, with witness cosignatures (C2SP tlog-cosignature)

Check it, with the manufacturers' root certificates and the gateway's public log key
obtained from their owners (not from this file):

  provgw audit verify THIS.zip --trust ROOTS_DIR --key GATEWAY_VKEY [--witness-vkey VKEY]

A log leaf is SHA-256(0x00 || commitment), commitment = SHA-256(b"provgw/v1/event\\0" ||
salt || SHA-256(message bytes)): any RFC 9162 implementation can check the receipts.
The bundle names the device's serial number: share it only with whom the site chooses.
"""


# --- verification ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditProblem:
    """One record of the bundle that does not verify: what it is and why."""

    #: ``event``, ``erasure``, ``revocation``, ``remediation`` or ``consistency``.
    what: str
    #: The gateway's id of the record (event, erasure, revocation or urgent-lane record id;
    #: for ``consistency``, the tree size).
    ref: int | None
    seq: int | None
    reason: str
    detail: str

    def to_json(self) -> dict[str, Any]:
        """``provgw audit verify --json``'s form."""
        return {
            "what": self.what,
            "ref": self.ref,
            "seq": self.seq,
            "reason": self.reason,
            "detail": self.detail,
        }


@dataclass
class AuditReport:
    """What :func:`verify_audit` found."""

    device_id: str
    #: The manufacturer its verified certificate names (the index's claim until one verifies).
    manufacturer: str
    #: When the bundle says it was exported (a claim: nothing in it binds the time).
    exported: str
    #: The log's origin, as the gateway key names it.
    origin: str
    #: Stored events whose signature, chain, schema and receipt verified.
    events: int = 0
    #: Of those: witnessed (quorum of the witness keys given), logged, not under a checkpoint.
    witnessed: int = 0
    logged: int = 0
    pending: int = 0
    #: Receipts that name a chain transaction (a claim: look it up on the chain).
    anchors_claimed: int = 0
    erased: int = 0
    revoked_by_site: str | None = None
    #: The urgent lane's records of the device, each with how far it was checked.
    remediation: list[dict[str, Any]] = field(default_factory=list)
    #: The recall notices that verified (with the recall keys), and when the gateway took each.
    recalls: list[dict[str, Any]] = field(default_factory=list)
    #: Sequence numbers held by neither a stored nor an erased event, as (first, last) ranges.
    gaps: list[tuple[int, int]] = field(default_factory=list)
    checkpoints: int = 0
    tree_size: int | None = None
    standing: Standing | None = None
    problems: list[AuditProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every record in the bundle verified."""
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """``provgw audit verify --json``'s form."""
        return {
            "ok": self.ok,
            "device": self.device_id,
            "manufacturer": self.manufacturer,
            "exported": self.exported,
            "log_origin": self.origin,
            "events": self.events,
            "witnessed": self.witnessed,
            "logged": self.logged,
            "pending": self.pending,
            "anchors_claimed": self.anchors_claimed,
            "erased": self.erased,
            "revoked_by_site": self.revoked_by_site,
            "remediation": self.remediation,
            "recalls": self.recalls,
            "gaps": [list(gap) for gap in self.gaps],
            "checkpoints": self.checkpoints,
            "tree_size": self.tree_size,
            "certificate": None if self.standing is None else self.standing.to_json(),
            "problems": [p.to_json() for p in self.problems],
        }


def _malformed(message: str) -> MalformedError:
    return MalformedError(message, reason="malformed-audit")


def _check_directory(data: bytes) -> None:
    """Refuse a ZIP whose central directory is too large, before it is parsed.

    ``zipfile`` reads the whole directory into one object per part (about 0.5 kB each): a
    hostile bundle of millions of empty parts would exhaust memory inside the size cap. The
    directory's size is in the end record (APPNOTE 4.3.16), found as ``zipfile`` finds it: in
    the last 64 KiB + 22 bytes.
    """
    at = data.rfind(b"PK\x05\x06", max(0, len(data) - 65_557))
    if at < 0 or len(data) < at + 22:
        raise _malformed("The audit bundle is not a ZIP file (it has no end of directory).")
    size = int.from_bytes(data[at + 12 : at + 16], "little")
    if size > _MAX_DIRECTORY:
        raise OversizeError(
            f"The audit bundle's directory is {size:,} bytes; at most {_MAX_DIRECTORY:,} "
            "(about 100,000 events) are read.",
            reason="oversize-audit",
        )


class _Bundle:
    """The ZIP, opened with bounds: named parts only, each read no further than its cap."""

    def __init__(self, data: bytes) -> None:
        if len(data) > MAX_AUDIT_SIZE:
            raise OversizeError(
                f"The audit bundle is {len(data):,} bytes; at most {MAX_AUDIT_SIZE:,} are read.",
                reason="oversize-audit",
            )
        _check_directory(data)
        try:
            self._zip = zipfile.ZipFile(io.BytesIO(data))
            names = [info.filename for info in self._zip.infolist()]
        except (zipfile.BadZipFile, ValueError, EOFError) as err:
            raise _malformed(f"The audit bundle is not a ZIP file: {err}.") from None
        if len(names) != len(set(names)):
            raise _malformed("The audit bundle holds two parts of the same name.")
        self.names = set(names)
        self.read: set[str] = set()

    def part(self, name: object, cap: int) -> bytes:
        if not isinstance(name, str) or name not in self.names:
            raise _malformed(f"The index names a part {name!r} that the bundle does not hold.")
        if name in self.read:
            raise _malformed(f"The index names the part {name!r} twice.")
        self.read.add(name)
        try:
            with self._zip.open(name) as member:
                data = member.read(cap + 1)
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
            raise _malformed(f"The part {name!r} cannot be read: {err}.") from None
        if len(data) > cap:
            raise OversizeError(
                f"The part {name!r} is over {cap:,} bytes.", reason="oversize-audit"
            )
        return data


def _field(entry: Mapping[str, Any], name: str, kind: type, what: str) -> Any:  # noqa: ANN401
    value = entry.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _malformed(f"{what} has no valid {name!r}.")
    return value


def _hex(entry: Mapping[str, Any], name: str, what: str, size: int = 32) -> bytes:
    try:
        value = bytes.fromhex(_field(entry, name, str, what))
    except ValueError:
        raise _malformed(f"{what}: {name!r} is not hexadecimal.") from None
    if len(value) != size:
        raise _malformed(f"{what}: {name!r} is not {size} bytes.")
    return value


def _entries(index: Mapping[str, Any], name: str) -> list[Mapping[str, Any]]:
    value = index.get(name)
    if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
        raise _malformed(f"The index's {name!r} is not a list of records.")
    return value


def _instant(ms: int, what: str) -> datetime:
    try:
        return datetime.fromtimestamp(ms / 1000, tz=UTC)
    except (OverflowError, ValueError, OSError):
        raise _malformed(f"{what}: {ms} ms is not a time.") from None


def _read_index(bundle: _Bundle) -> dict[str, Any]:
    try:
        index = json.loads(bundle.part(_INDEX, _MAX_INDEX))
    except (ValueError, UnicodeDecodeError) as err:
        raise _malformed(f"{_INDEX} is not JSON: {err}.") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        found = index.get("format") if isinstance(index, dict) else None
        raise _malformed(
            f"{_INDEX} is not a {FORMAT} index (format {found!r}); it was written by another "
            "program, or by a newer gateway: verify it with that gateway's provgw."
        )
    return index


def _chain(bundle: _Bundle, name: object) -> list[bytes]:
    try:
        certs = x509.load_pem_x509_certificates(bundle.part(name, _MAX_CHAIN))
    except ValueError as err:
        raise _malformed(f"{name} is not a PEM certificate chain: {err}.") from None
    return [cert.public_bytes(serialization.Encoding.DER) for cert in certs]


def _revoked_on(identity: DeviceIdentity, trust: TrustStore) -> datetime | None:
    """Return the earliest revocation date, in *trust*'s CRLs, of a certificate on the path."""
    path = (identity.certificate, *identity.issuers)
    dates = [
        entry.revocation_date_utc
        for child, issuer in itertools.pairwise(path)
        for crl in trust.verified_crls(issuer)
        if (entry := crl.get_revoked_certificate_by_serial_number(child.serial_number)) is not None
    ]
    return min(dates, default=None)


def _gaps(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Return the ranges of sequence numbers from 1 to the highest that *seqs* does not hold."""
    gaps, expected = [], 1
    for seq in sorted(set(seqs)):
        if seq > expected:
            gaps.append((expected, seq - 1))
        expected = seq + 1
    return gaps


def _named_parts(
    index: Mapping[str, Any],
    events: Sequence[Mapping[str, Any]],
    erased: Sequence[Mapping[str, Any]],
) -> set[object]:
    """Return every part name the index gives (whether or not the bundle holds it)."""
    remediation = index.get("remediation")
    records: list[Any] = [*events, *erased, index.get("revocation")]
    records += remediation if isinstance(remediation, list) else []
    recalls = index.get("recalls")
    records += recalls if isinstance(recalls, list) else []
    records += [e.get("erasure") for e in erased]
    named = {_INDEX, _README, index.get("certificate_chain")}
    for record in records:
        if isinstance(record, dict):
            named.update((record.get("message"), record.get("receipt"), record.get("notice")))
            accepted = record.get("accepted")
            if isinstance(accepted, dict):
                named.add(accepted.get("receipt"))
    return named


def verify_audit(  # noqa: PLR0913 -- the bundle, the three trust inputs, the clock, progress
    data: bytes,
    *,
    trust: TrustStore,
    key: note.Verifier,
    witnesses: Sequence[note.Verifier] = (),
    quorum: int | None = None,
    recall_trust: RecallTrust | None = None,
    now: datetime,
    progress: ProgressFn | None = None,
) -> AuditReport:
    """Verify the audit bundle *data* offline; see the module's docstring for what is checked.

    *trust* holds the manufacturers' roots and CRLs, *key* the gateway's public log key,
    *witnesses* and *quorum* the witness keys of which *quorum* must have cosigned for an event
    to count as witnessed (``None``: witnessing is not checked), *recall_trust* the
    manufacturers' recall keys and threshold (``None``: the recall notices are not checked, nor
    the rule by which a report counts for a recall).

    Raises :class:`MalformedError` or :class:`OversizeError` when the bundle cannot be read at
    all; every record that does not verify is an :class:`AuditProblem` in the report.
    """
    audit = _Audit(_Bundle(data), trust=trust, key=key, witnesses=witnesses, quorum=quorum, now=now)
    index = audit.index
    events = sorted(_entries(index, "events"), key=lambda e: _field(e, "seq", int, "An event"))
    erased = _entries(index, "erased")
    unnamed = audit.bundle.names - _named_parts(index, events, erased)
    if unnamed:
        raise _malformed(f"The bundle holds parts its index does not name: {sorted(unnamed)}.")
    audit.events(events, progress)
    audit.erased(erased)
    if index.get("revocation") is not None:
        audit.revocation(index["revocation"])
    if recall_trust is not None:
        audit.recalls(_entries(index, "recalls"), recall_trust)
    audit.remediation(_entries(index, "remediation"))
    audit.consistency(index.get("consistency"))
    seqs = [e["seq"] for e in events] + [_field(e, "seq", int, "An erased event") for e in erased]
    if len(seqs) != len(set(seqs)):
        raise _malformed("Two records of the bundle hold the same sequence number.")
    report = audit.report
    report.gaps = _gaps(seqs)
    # The certificate as of now, CRLs included, as `provgw device show --trust` reports it.
    report.standing = Standing.of(audit.chain, trust, now)
    return report


@dataclass(frozen=True)
class _UrgentRecord:
    """One urgent-lane record of the index, its fields checked for type."""

    ref: int
    recall_id: str | None
    manifest: bytes | None
    state: str
    detail: str | None
    at_ms: int
    digest: bytes
    salt: bytes

    @classmethod
    def read(cls, entry: Mapping[str, Any]) -> _UrgentRecord:
        what = f"Urgent-lane record {entry.get('record_id')!r}"
        recall_id, detail = entry.get("recall_id"), entry.get("detail")
        if not isinstance(recall_id, str | None) or not isinstance(detail, str | None):
            raise _malformed(f"{what}: its recall id and detail must be text.")
        return cls(
            ref=_field(entry, "record_id", int, what),
            recall_id=recall_id,
            manifest=None if entry.get("manifest") is None else _hex(entry, "manifest", what),
            state=_field(entry, "state", str, what),
            detail=detail,
            at_ms=_field(entry, "at_ms", int, what),
            digest=_hex(entry, "digest", what),
            salt=_hex(entry, "salt", what),
        )


class _Audit:
    """One bundle's verification: its parts, the keys it is checked with, and the report."""

    def __init__(  # noqa: PLR0913 -- the bundle and what verify_audit checks it with
        self,
        bundle: _Bundle,
        *,
        trust: TrustStore,
        key: note.Verifier,
        witnesses: Sequence[note.Verifier],
        quorum: int | None,
        now: datetime,
    ) -> None:
        self.bundle, self._trust, self._key = bundle, trust, key
        self._witnesses, self._quorum, self._now = witnesses, quorum, now
        self.index = _read_index(bundle)
        what = _INDEX
        self.device_id: str = _field(self.index, "device_id", str, what)
        # The log is the one the key names (C2SP: a checkpoint key is named after its log's
        # origin, and every receipt's checkpoint is opened under it), not what the index says.
        self.report = AuditReport(
            device_id=self.device_id,
            manufacturer=_field(self.index, "manufacturer", str, what),
            exported=_field(self.index, "exported", str, what),
            origin=key.name,
        )
        self.chain = _chain(bundle, self.index.get("certificate_chain"))
        #: Tree size -> root, of every checkpoint a verified receipt stands under.
        self.roots: dict[int, bytes] = {}
        self._witnessed: dict[bytes, bool] = {}  # checkpoint note -> quorum reached
        self._receipts = ReceiptVerifier(key, witnesses=witnesses)
        #: SHA-256 of each verified event's bytes -> (event id, arrival, bytes).
        self.by_digest: dict[bytes, tuple[int, int, bytes]] = {}
        self.erased_digests: set[bytes] = set()
        #: Recall id -> (remedy manifest, revision) of each notice that verified; None for an
        #: unsigned CSAF import; absent when not checked.
        self.remedies: dict[str, tuple[bytes | None, int] | None] = {}

    def _problem(self, what: str, ref: int | None, seq: int | None, err: VerificationError) -> None:
        self.report.problems.append(AuditProblem(what, ref, seq, err.reason, str(err)))

    # -- receipts --

    def receipt(self, name: object, leaf: bytes) -> str:
        """Verify the receipt *name* for *leaf*; return ``"witnessed"`` or ``"logged"``."""
        data = self.bundle.part(name, MAX_BUNDLE_SIZE)
        info = self._receipts.verify(data, leaf)
        known = self.roots.setdefault(info.tree_size, info.root)
        if known != info.root:
            raise PolicyError(
                f"Two receipts in the bundle give the log of {info.tree_size} entries two "
                "different roots: the gateway showed two versions of its log (a split view).",
                reason="log-fork",
            )
        if info.anchor is not None:
            self.report.anchors_claimed += 1
        return "witnessed" if self._quorum_reached(data) else "logged"

    def _quorum_reached(self, data: bytes) -> bool:
        if self._quorum is None:
            return False
        checkpoint_note = strict_loads(data, what="receipt")[2]
        reached = self._witnessed.get(checkpoint_note)
        if reached is None:
            now = int(self._now.timestamp())
            counted = quorum_of(checkpoint_note, self._key, self._witnesses, self._quorum, now=now)
            reached = self._witnessed[checkpoint_note] = counted is not None
        return reached

    # -- the records --

    def events(self, events: Sequence[Mapping[str, Any]], progress: ProgressFn | None) -> None:
        """Replay the gateway's checks on each event, at the time it was received, in seq order."""
        # The history is checked against the roots without the CRLs: revocation dates are
        # compared to each event's arrival instead (a revocation applies from its date).
        trust = self._trust
        history_trust = TrustStore(trust.roots, (), trust.intermediates)
        registry = DeviceRegistry()
        revoked_on: dict[bytes, datetime | None] = {}
        report = self.report
        for done, entry in enumerate(events, 1):
            what = f"Event {entry.get('event_id')!r}"
            event_id = _field(entry, "event_id", int, what)
            received_ms = _field(entry, "received_ms", int, what)
            raw = self.bundle.part(entry.get("message"), _MAX_MESSAGE)
            salt = _hex(entry, "salt", what)
            received = _instant(received_ms, what)
            try:
                if not len(registry) and not decode_sign1(raw).x5chain:
                    # The first contact (its chain in x5chain) was erased: enrol the kept chain.
                    registry.enrol(verify_device_chain(self.chain, history_trust, received))
                verified = verify_device_message(
                    raw,
                    trust=history_trust,
                    registry=registry,
                    now=received,
                    topic_device=self.device_id,
                )
                event = verified.event
                if event.seq != entry["seq"] or event.type != entry.get("type"):
                    raise PolicyError(
                        f"The index says seq {entry['seq']} ({entry.get('type')}), the signed "
                        f"event says seq {event.seq} ({event.type}).",
                        reason="index-mismatch",
                    )
                identity = verified.identity
                if identity.kid not in revoked_on:
                    revoked_on[identity.kid] = _revoked_on(identity, trust)
                revoked = revoked_on[identity.kid]
                # A CRL dates a revocation to the second: an event of that second may have
                # come before it, so only one a whole second later is counted against it.
                if revoked is not None and received >= revoked + _CRL_RESOLUTION:
                    raise PolicyError(
                        f"Received on {received:%Y-%m-%d %H:%M} UTC, after its signing "
                        f"certificate was revoked on {revoked:%Y-%m-%d %H:%M} UTC: the gateway "
                        "should have refused it (its CRL was missing or stale).",
                        reason="revoked-before-receipt",
                    )
                report.manufacturer = identity.manufacturer
                self.by_digest[hashlib.sha256(raw).digest()] = (event_id, received_ms, raw)
                name = entry.get("receipt")
                if name is None:
                    report.pending += 1
                else:
                    leaf = leaf_for("event", salt, hashlib.sha256(raw).digest())
                    state = self.receipt(name, leaf)
                    report.witnessed += state == "witnessed"
                    report.logged += state == "logged"
                report.events += 1
            except VerificationError as err:
                self._problem("event", event_id, entry["seq"], err)
            if progress is not None:
                progress(done, len(events))

    def erased(self, erased: Sequence[Mapping[str, Any]]) -> None:
        """Check that each erased event's commitment is in the log, and its erasure too."""
        for entry in erased:
            what = f"Erased event {entry.get('event_id')!r}"
            event_id = _field(entry, "event_id", int, what)
            seq = _field(entry, "seq", int, what)
            self.erased_digests.add(_hex(entry, "sha256", what))
            try:
                if entry.get("receipt") is not None:
                    commitment = _hex(entry, "commitment", what)
                    self.receipt(entry["receipt"], merkle.leaf_hash(commitment))
                erasure = entry.get("erasure")
                if not isinstance(erasure, dict):
                    raise PolicyError(
                        f"Event {event_id} is erased, but the bundle holds no erasure record "
                        "for it.",
                        reason="missing-erasure",
                    )
                if erasure.get("receipt") is not None:
                    reason = _field(erasure, "reason", str, what)
                    digest = erasure_digest(
                        event_id,
                        hashlib.sha256(reason.encode()).digest(),
                        _field(erasure, "erased_ms", int, what),
                    )
                    leaf = leaf_for("erasure", _hex(erasure, "salt", what), digest)
                    self.receipt(erasure["receipt"], leaf)
                self.report.erased += 1
            except VerificationError as err:
                self._problem("erasure", event_id, seq, err)

    def revocation(self, revocation: object) -> None:
        """Check that the site's revocation of the device is the logged record it claims."""
        if not isinstance(revocation, dict):
            raise _malformed("The index's 'revocation' is not a record.")
        what = "The revocation"
        ref = _field(revocation, "revocation_id", int, what)
        reason = _field(revocation, "reason", str, what)
        try:
            if revocation.get("receipt") is not None:
                digest = revocation_digest(
                    self.device_id,
                    hashlib.sha256(reason.encode()).digest(),
                    _field(revocation, "revoked_ms", int, what),
                )
                leaf = leaf_for("revocation", _hex(revocation, "salt", what), digest)
                self.receipt(revocation["receipt"], leaf)
            self.report.revoked_by_site = reason
        except VerificationError as err:
            self._problem("revocation", ref, None, err)

    def recalls(self, entries: Sequence[Mapping[str, Any]], recall_trust: RecallTrust) -> None:
        """Check each recall notice with the manufacturers' recall keys (threshold signed)."""
        for entry in entries:
            recall_id = _field(entry, "recall_id", str, "A recall")
            raw = self.bundle.part(entry.get("notice"), MAX_RECALL_BYTES)
            if entry.get("source") == "csaf":
                # An operator's import of a CSAF advisory: no manufacturer signature to check.
                self.remedies[recall_id] = None
                continue
            try:
                fields = Recall.from_bytes(raw, trust=recall_trust).fields
                if fields.recall_id != recall_id:
                    raise MismatchError(
                        f"The notice filed as recall {recall_id} is recall {fields.recall_id}.",
                        reason="recall-mismatch",
                    )
                self.remedies[recall_id] = (fields.remedy.manifest, fields.revision)
                accepted = self._accepted(entry.get("accepted"), raw, fields)
                self.report.recalls.append(
                    {
                        "recall_id": recall_id,
                        "revision": fields.revision,
                        "status": fields.status,
                        "accepted_ms": None if accepted is None else accepted["at_ms"],
                        "in_log": accepted is not None and accepted.get("receipt") is not None,
                    }
                )
            except VerificationError as err:
                self._problem("recall", None, None, err)

    def _accepted(
        self, accepted: object, raw: bytes, fields: RecallFields
    ) -> Mapping[str, Any] | None:
        """Check the logged record of the gateway accepting the notice: these bytes, as signed."""
        if accepted is None:
            return None
        if not isinstance(accepted, dict):
            raise _malformed("A recall's 'accepted' is not a record.")
        what = f"Recall {fields.recall_id}'s record"
        digest = hashlib.sha256(raw).digest()
        if accepted.get("receipt") is not None:
            leaf = leaf_for("recall", _hex(accepted, "salt", what), digest)
            self.receipt(accepted["receipt"], leaf)
        manifest = None if accepted.get("manifest") is None else _hex(accepted, "manifest", what)
        if (accepted.get("state"), manifest) != (fields.status, fields.remedy.manifest):
            raise MismatchError(
                f"The gateway's record of recall {fields.recall_id} says status "
                f"{accepted.get('state')!r}; the signed notice says {fields.status!r} (or "
                "another remedy).",
                reason="claim-mismatch",
            )
        _field(accepted, "at_ms", int, what)
        return accepted

    def remediation(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Check each urgent-lane record against the log and against what it claims.

        As ``provgw log verify`` does over the store (:mod:`gateway.service.claims`): an
        installed or failed record must be one of the bundle's verified ``firmware_update``
        reports, received when the record says, whose result, detail and manifest are the
        record's; an unreachable one's digest is recomputed from its campaign, device and time;
        an offer's bytes are not kept, so only its commitment is checked. Whether a report
        counts for the record's recall (the tracker's rule, :func:`report_moves_recall`) is
        re-applied when the recall's notice verified (:meth:`recalls`).
        """
        for entry in records:
            record = _UrgentRecord.read(entry)
            shown = {
                "record_id": record.ref,
                "recall_id": record.recall_id,
                "state": record.state,
                "at_ms": record.at_ms,
                "in_log": entry.get("receipt") is not None,
            }
            try:
                if entry.get("receipt") is not None:
                    leaf = leaf_for("remediation", record.salt, record.digest)
                    self.receipt(entry["receipt"], leaf)
                shown["checked"] = self._claim(record)
                self.report.remediation.append(shown)
            except VerificationError as err:
                self._problem("remediation", record.ref, None, err)

    def _claim(self, record: _UrgentRecord) -> str:
        """Check what a record claims; return how (``recomputed``, or why it cannot be)."""
        if record.state == "offered":
            return "commitment only (the offer's bytes are not kept)"
        if record.state == "unreachable":
            campaign = record.recall_id
            if campaign is None and record.manifest is not None:
                campaign = campaign_id(record.manifest)
            if unreachable_digest(campaign, self.device_id, record.at_ms) != record.digest:
                raise MismatchError(
                    "Its campaign, device or time is not what its digest was made from.",
                    reason="claim-mismatch",
                )
            return "recomputed"
        if record.state not in {"installed", "failed"}:
            raise MismatchError(
                f"The gateway never records a device as '{record.state}'.",
                reason="claim-mismatch",
            )
        return self._report_claim(record)

    def _report_claim(self, record: _UrgentRecord) -> str:
        """Check an installed or failed record against the device's own signed report."""
        if record.digest in self.erased_digests:
            return "unverifiable (the device's report was erased)"
        found = self.by_digest.get(record.digest)
        if found is None:
            raise MismatchError(
                f"It claims the device reported '{record.state}', but no verified event of the "
                "bundle has its digest.",
                reason="claim-mismatch",
            )
        event_id, received_ms, raw = found
        report = read_report((event_id, self.device_id, received_ms, raw, record.digest))
        if report is None:
            why: str | None = f"event {event_id} does not read as a firmware report"
        elif received_ms != record.at_ms:
            why = (
                f"the report (event {event_id}) arrived at {received_ms} ms, not {record.at_ms} ms"
            )
        else:
            why = report_claim_mismatch(
                report, record.state, record.detail, record.manifest, f"event {event_id}"
            )
        if report is None or why is not None:
            raise MismatchError(
                f"It does not match the device's report: {why}.", reason="claim-mismatch"
            )
        return self._counts_for_recall(record.recall_id, report, record.state)

    def _counts_for_recall(self, recall_id: str | None, report: Report, state: str) -> str:
        """Re-apply the rule by which *report* counts for the record's recall, where it can be."""
        if recall_id is None:
            return "recomputed"  # an urgent manifest's campaign: no recall to count for
        if recall_id not in self.remedies:
            return "recomputed; the recall's rule not re-applied (its notice was not checked)"
        held = self.remedies[recall_id]
        if held is None:
            return "recomputed; the recall's rule not re-applied (an unsigned CSAF import)"
        remedy, revision = held
        if report_moves_recall(report, state, recall_id, remedy):
            return "recomputed, with the recall's rule"
        if revision > 1 and report.trigger_ref != recall_id:
            # Counted by the remedy of a revision since replaced (only the latest is kept).
            return "recomputed; counted by an earlier revision's remedy (not kept)"
        raise MismatchError(
            f"The device's report does not remediate recall {recall_id}: it names neither the "
            "recall nor its remedy.",
            reason="claim-mismatch",
        )

    def consistency(self, value: object) -> None:
        """Check that every receipt's checkpoint is a prefix of the largest: one log."""
        roots = self.roots
        self.report.checkpoints = len(roots)
        if not roots:
            return
        largest = max(roots)
        self.report.tree_size = largest
        proofs: dict[int, list[bytes]] = {}
        if isinstance(value, dict) and value.get("to") == largest:
            for entry in _entries(value, "proofs"):
                size = _field(entry, "from", int, "A consistency proof")
                path = entry.get("proof")
                if not isinstance(path, list) or not all(isinstance(h, str) for h in path):
                    raise _malformed(f"The consistency proof from {size} is not a list of hashes.")
                try:
                    proofs[size] = [bytes.fromhex(h) for h in path]
                except ValueError:
                    raise _malformed(
                        f"The consistency proof from {size} is not hexadecimal."
                    ) from None
        for size in sorted(set(roots) - {largest}):
            try:
                if size not in proofs:
                    raise PolicyError(
                        f"No consistency proof ties the checkpoint of {size} entries to the one "
                        f"of {largest}: the receipts may stand under two versions of the log.",
                        reason="missing-consistency",
                    )
                merkle.verify_consistency(size, largest, roots[size], roots[largest], proofs[size])
            except VerificationError as err:
                self._problem("consistency", size, None, err)
