"""Recalls in the store: accepted notices, fleet impact, and per-device remediation state.

:class:`RecallStore` keeps each recall's latest revision, answers "which devices does it hit,
and by which rule" (:meth:`RecallStore.affected_devices`), and tracks each affected device's
remediation: ``pending`` -> ``offered`` -> ``installed`` / ``failed`` / ``unreachable`` (the
urgent lane moves it; :meth:`RecallStore.set_state`).

Impact is computed without a per-device loop (goal: 100,000 devices in <= 200 ms, ``make
bench``):

1. The SBOM components of every kept firmware manifest are indexed once per manifest
   (``sbom_components``, :meth:`RecallStore.index_sboms`), so a component rule is one indexed
   lookup by (vendor, purl).
2. Firmware and component rules are decided once per (class, firmware version) group of the
   vendor's fleet (a ``GROUP BY`` on the ``inventory_firmware`` index), with the same rule logic
   as the per-device reference path (:func:`gateway.core.recall.rule_verdict`); only then are the
   matching groups' devices read.
3. Model, serial and lot rules are index scans (serial and lot ranges on their (prefix, number)
   split).

Devices the gateway cannot decide (unknown firmware version, lot or SBOM) are reported as
undetermined, never dropped. Revision rules on :meth:`RecallStore.accept`: a lower revision is a
rollback (:class:`RollbackError`: a stale "terminated" must not close an ongoing recall), the same
revision with other content is a conflict (:class:`ReplayError`), another vendor cannot reuse a
recall id (:class:`MismatchError`), and an unsigned CSAF import never replaces a signed notice
(:class:`PolicyError`).

Trust directory read by :func:`load_recall_trust` (same root as the manifest trust directory)::

    <trust>/recall/<vendor-domain>/*.pem   manufacturer recall-signing keys, trusted for that
                                           vendor only (TUF delegation)
    <trust>/recall-policy.json             optional {"threshold": 2}; never below 2
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple

from gateway.core.errors import (
    MalformedError,
    MismatchError,
    PolicyError,
    ReplayError,
    RollbackError,
    VerificationError,
)
from gateway.core.manifest import TrustedKey, unsafe_read_manifest, vendor_id
from gateway.core.recall import (
    Component,
    DeviceFacts,
    Match,
    Recall,
    RecallFields,
    RecallTrust,
    Rule,
    components_of_sbom,
    range_key,
    rule_detail,
    rule_verdict,
)
from gateway.store.db import Database

__all__ = [
    "REMEDIATION_STATES",
    "Impact",
    "ImpactReport",
    "RecallStore",
    "RecallSummary",
    "Remediation",
    "Undetermined",
    "load_recall_trust",
]

State = Literal["pending", "offered", "installed", "failed", "unreachable"]
#: Remediation states, in the order a device normally goes through them.
REMEDIATION_STATES: tuple[State, ...] = ("pending", "offered", "installed", "failed", "unreachable")
# Allowed moves. A repeat of `offered` is a retry; `installed` is final (a late failure report
# after an install is refused, not recorded over it).
_TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"offered", "installed", "unreachable"}),
    "offered": frozenset({"offered", "installed", "failed", "unreachable"}),
    "failed": frozenset({"offered", "installed"}),
    "unreachable": frozenset({"offered", "installed", "unreachable"}),
    "installed": frozenset(),
}
_POLICY_FILE = "recall-policy.json"
# device_id, class, model, version, site, department, serial, lot
_DEVICE_COLUMNS = "device_id, class, model, version, site, department, serial, lot"
_DeviceRow = tuple[str, bytes, str, str | None, str, str, str, str | None]


class Impact(NamedTuple):
    """One affected device and the rule(s) that matched it.

    A named tuple, not a dataclass: a recall can hit tens of thousands of devices, and building
    one is about three times cheaper (the 200 ms budget of the impact query).
    """

    device_id: str
    class_id: uuid.UUID
    model: str
    version: str | None
    site: str
    department: str
    matches: tuple[Match, ...]

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "device_id": self.device_id,
            "model": self.model,
            "version": self.version,
            "site": self.site,
            "department": self.department,
            "matched": [m.to_json() for m in self.matches],
        }


class Undetermined(NamedTuple):
    """A device in a recall's scope that the gateway could not decide, and why."""

    device_id: str
    model: str
    version: str | None
    reasons: tuple[Match, ...]

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "device_id": self.device_id,
            "model": self.model,
            "version": self.version,
            "undetermined": [m.to_json() for m in self.reasons],
        }


@dataclass(frozen=True)
class ImpactReport:
    """A recall's impact: affected devices, and devices that could not be decided."""

    recall_id: str
    affected: tuple[Impact, ...]
    undetermined: tuple[Undetermined, ...]

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "recall_id": self.recall_id,
            "affected_count": len(self.affected),
            "undetermined_count": len(self.undetermined),
            "affected": [i.to_json() for i in self.affected],
            "undetermined": [u.to_json() for u in self.undetermined],
        }


@dataclass(frozen=True)
class RecallSummary:
    """One stored recall, for listings."""

    recall_id: str
    revision: int
    recall_class: str
    status: str
    signed: bool
    source: str
    reason: str
    affected: int
    states: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "id": self.recall_id,
            "revision": self.revision,
            "class": self.recall_class,
            "status": self.status,
            "signed": self.signed,
            "source": self.source,
            "reason": self.reason,
            "affected": self.affected,
            "states": self.states,
        }


@dataclass(frozen=True)
class Remediation:
    """A device's remediation row for one recall."""

    recall_id: str
    device_id: str
    matches: tuple[Match, ...]
    state: State
    attempts: int
    matched_ms: int
    offered_ms: int | None
    installed_ms: int | None
    failed_ms: int | None
    unreachable_ms: int | None
    detail: str | None
    updated_ms: int

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "device_id": self.device_id,
            "state": self.state,
            "attempts": self.attempts,
            "matched": [m.to_json() for m in self.matches],
            "matched_ms": self.matched_ms,
            "offered_ms": self.offered_ms,
            "installed_ms": self.installed_ms,
            "failed_ms": self.failed_ms,
            "unreachable_ms": self.unreachable_ms,
            "detail": self.detail,
        }


def _matches_json(matches: Sequence[Match]) -> str:
    return json.dumps([[m.rule, m.kind, m.detail] for m in matches], separators=(",", ":"))


def _matches_from(text: str) -> tuple[Match, ...]:
    return tuple(Match(int(r), k, d) for r, k, d in json.loads(text))


class RecallStore:
    """Recalls, their impact on the inventory, and remediation tracking."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- recalls ---------------------------------------------------------------------------------

    def accept(self, recall: Recall, *, now: datetime) -> bool:
        """Keep *recall* (already verified); return False if this exact revision was kept.

        Raises :class:`RollbackError`, :class:`ReplayError`, :class:`MismatchError` or
        :class:`PolicyError` by the revision rules of the module docstring.
        """
        f = recall.fields
        with self._db.atomic() as conn:
            row = conn.execute(
                "SELECT revision, vendor, digest, signed FROM recalls WHERE recall_id = ?",
                (f.recall_id,),
            ).fetchone()
            if row is not None:
                revision, vendor, digest, signed = int(row[0]), bytes(row[1]), bytes(row[2]), row[3]
                if vendor != f.vendor.bytes:
                    raise MismatchError(
                        f"Recall {f.recall_id} is held for another manufacturer; a vendor "
                        "cannot issue revisions of another's recall.",
                        reason="recall-vendor",
                    )
                if signed and not recall.signed:
                    raise PolicyError(
                        f"Recall {f.recall_id} is held as a signed notice; an unsigned import "
                        "cannot replace it.",
                        reason="recall-unsigned",
                    )
                if digest == recall.digest:
                    return False
                if not (recall.signed and not signed):
                    _check_revision(f, revision)
            conn.execute(
                "INSERT INTO recalls (recall_id, revision, vendor, digest, signed, signers, source,"
                " recall_class, status, payload, raw, notes, received_ms)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (recall_id) DO UPDATE SET revision = excluded.revision,"
                " digest = excluded.digest, signed = excluded.signed, signers = excluded.signers,"
                " source = excluded.source, recall_class = excluded.recall_class,"
                " status = excluded.status, payload = excluded.payload, raw = excluded.raw,"
                " notes = excluded.notes, received_ms = excluded.received_ms",
                (
                    f.recall_id,
                    f.revision,
                    f.vendor.bytes,
                    recall.digest,
                    int(recall.signed),
                    json.dumps(list(recall.signers)),
                    recall.source,
                    f.recall_class,
                    f.status,
                    f.to_cbor(),
                    recall.raw,
                    json.dumps(list(recall.notes)),
                    int(now.timestamp() * 1000),
                ),
            )
        return True

    def get(self, recall_id: str) -> Recall | None:
        """Return the kept recall (verified when it was accepted), if any."""
        rows = self._db.query(
            "SELECT payload, digest, signed, signers, source, raw, notes FROM recalls"
            " WHERE recall_id = ?",
            (recall_id,),
        )
        if not rows:
            return None
        payload, digest, signed, signers, source, raw, notes = rows[0]
        return Recall(
            RecallFields.from_cbor(bytes(payload)),
            bytes(digest),
            signed=bool(signed),
            signers=tuple(json.loads(signers)),
            source=source,
            raw=bytes(raw),
            notes=tuple(json.loads(notes)),
        )

    def summaries(self) -> list[RecallSummary]:
        """Return every kept recall, newest first, with its remediation state counts."""
        counts: dict[str, dict[str, int]] = defaultdict(dict)
        for recall_id, state, n in self._db.query(
            "SELECT recall_id, state, count(*) FROM recall_impacts GROUP BY recall_id, state"
        ):
            counts[recall_id][state] = int(n)
        out = []
        for recall_id, revision, klass, status, signed, source, payload in self._db.query(
            "SELECT recall_id, revision, recall_class, status, signed, source, payload"
            " FROM recalls ORDER BY received_ms DESC, recall_id"
        ):
            states = counts.get(recall_id, {})
            out.append(
                RecallSummary(
                    recall_id,
                    int(revision),
                    klass,
                    status,
                    bool(signed),
                    source,
                    RecallFields.from_cbor(bytes(payload)).reason,
                    sum(states.values()),
                    states,
                )
            )
        return out

    # -- SBOM index --------------------------------------------------------------------------------

    def index_sboms(self, *, now: datetime | None = None) -> int:
        """Index the SBOM components of manifests kept since the last call; return how many."""
        todo = self._db.query(
            "SELECT m.digest, m.vendor, m.class, m.version, m.raw FROM manifests AS m"
            " LEFT JOIN sbom_index AS s ON s.digest = m.digest WHERE s.digest IS NULL"
        )
        if not todo:
            return 0
        stamp = int(now.timestamp() * 1000) if now else 0
        with self._db.atomic() as conn:
            for digest, vendor, klass, version, raw in todo:
                components = _manifest_components(bytes(raw))
                conn.execute(
                    "INSERT OR IGNORE INTO sbom_index (digest, vendor, class, version, components,"
                    " indexed_ms) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        digest,
                        vendor,
                        klass,
                        version,
                        -1 if components is None else len(components),
                        stamp,
                    ),
                )
                conn.executemany(
                    "INSERT INTO sbom_components (digest, vendor, class, version, purl, subpath,"
                    " comp_version) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (digest, vendor, klass, version, c.purl_base, c.subpath, c.version)
                        for c in components or ()
                    ],
                )
        return len(todo)

    def sbom_components(
        self, vendor: uuid.UUID, purls: Iterable[str] | None = None
    ) -> dict[tuple[uuid.UUID, str], tuple[Component, ...]]:
        """Return (class, firmware version) -> SBOM components for the vendor's kept firmware.

        Every group whose SBOM is known is a key (an empty tuple if it lists nothing relevant);
        *purls* limits the components returned to those packages.
        """
        out: dict[tuple[uuid.UUID, str], list[Component]] = {
            (uuid.UUID(bytes=klass), version): []
            for klass, version in self._db.query(
                "SELECT class, version FROM sbom_index WHERE vendor = ? AND components >= 0",
                (vendor.bytes,),
            )
        }
        wanted = None if purls is None else sorted(set(purls))
        sql = (
            "SELECT class, version, purl, subpath, comp_version FROM sbom_components"
            " WHERE vendor = ?"
        )
        params: list[Any] = [vendor.bytes]
        if wanted is not None:
            sql += f" AND purl IN ({', '.join('?' * len(wanted))})"
            params += wanted
        for klass, version, purl, subpath, comp_version in self._db.query(sql, params):
            key = (uuid.UUID(bytes=klass), version)
            out.setdefault(key, []).append(Component(purl, subpath, comp_version))
        return {k: tuple(v) for k, v in out.items()}

    # -- impact ----------------------------------------------------------------------------------

    def affected_devices(self, recall: Recall | RecallFields) -> list[Impact]:
        """Return the devices *recall* hits, each with the rule(s) that matched; by device id."""
        return list(self.impact(recall).affected)

    def impact(self, recall: Recall | RecallFields) -> ImpactReport:
        """Compute *recall*'s impact on the inventory (steps in the module docstring)."""
        fields = recall.fields if isinstance(recall, Recall) else recall
        self.index_sboms()  # step 1, incremental: only manifests kept since the last call
        return _ImpactQuery(self._db, self, fields).run()

    def record_impact(self, recall: Recall | RecallFields, *, now: datetime) -> ImpactReport:
        """Compute the impact and keep a remediation row per affected device; one transaction.

        New devices start ``pending``; devices already tracked keep their state (their matched
        rules are refreshed); ``pending`` devices no longer affected are dropped.
        """
        fields = recall.fields if isinstance(recall, Recall) else recall
        report = self.impact(fields)
        now_ms = int(now.timestamp() * 1000)
        with self._db.atomic() as conn:
            conn.executemany(
                "INSERT INTO recall_impacts (recall_id, device_id, matches, state, matched_ms,"
                " updated_ms) VALUES (?, ?, ?, 'pending', ?, ?)"
                " ON CONFLICT (recall_id, device_id) DO UPDATE SET matches = excluded.matches",
                [
                    (fields.recall_id, i.device_id, _matches_json(i.matches), now_ms, now_ms)
                    for i in report.affected
                ],
            )
            current = {i.device_id for i in report.affected}
            stale = [
                (fields.recall_id, device_id)
                for (device_id,) in conn.execute(
                    "SELECT device_id FROM recall_impacts"
                    " WHERE recall_id = ? AND state = 'pending'",
                    (fields.recall_id,),
                )
                if device_id not in current
            ]
            conn.executemany(
                "DELETE FROM recall_impacts WHERE recall_id = ? AND device_id = ?", stale
            )
        return report

    # -- remediation -----------------------------------------------------------------------------

    def remediation(self, recall_id: str, *, state: State | None = None) -> list[Remediation]:
        """Return the remediation rows of a recall (optionally in one state), by device id."""
        sql = (
            "SELECT recall_id, device_id, matches, state, attempts, matched_ms, offered_ms,"
            " installed_ms, failed_ms, unreachable_ms, detail, updated_ms FROM recall_impacts"
            " WHERE recall_id = ?"
        )
        params: tuple[Any, ...] = (recall_id,)
        if state is not None:
            sql += " AND state = ?"
            params = (recall_id, state)
        rows = self._db.query(sql + " ORDER BY device_id", params)
        return [Remediation(r[0], r[1], _matches_from(r[2]), *r[3:]) for r in rows]

    def set_state(
        self,
        recall_id: str,
        device_id: str,
        state: State,
        *,
        at_ms: int,
        detail: str | None = None,
    ) -> bool:
        """Move a device's remediation to *state* at *at_ms*; return False for a repeat.

        ``offered`` counts an attempt (a retry is another ``offered``). Raises
        :class:`PolicyError` for a move the state machine does not allow (``installed`` is
        final) and :class:`MalformedError` when the device is not tracked for the recall.
        """
        if state not in _TRANSITIONS:
            raise ValueError(f"unknown remediation state {state!r}")
        column = f"{state}_ms" if state != "pending" else "matched_ms"
        with self._db.atomic() as conn:
            row = conn.execute(
                "SELECT state FROM recall_impacts WHERE recall_id = ? AND device_id = ?",
                (recall_id, device_id),
            ).fetchone()
            if row is None:
                raise MalformedError(
                    f"Device {device_id} is not tracked for recall {recall_id}.",
                    reason="remediation-unknown",
                )
            current = str(row[0])
            if current == state and state != "offered":
                return False  # a repeated report (QoS 1 redelivery): nothing changes
            if state not in _TRANSITIONS[current]:
                raise PolicyError(
                    f"Device {device_id} is {current} for recall {recall_id}; it cannot become "
                    f"{state}.",
                    reason="remediation-transition",
                )
            conn.execute(
                f"UPDATE recall_impacts SET state = ?, {column} = ?, updated_ms = ?,"  # noqa: S608 -- column from a fixed set
                " detail = coalesce(?, detail), attempts = attempts + ?"
                " WHERE recall_id = ? AND device_id = ?",
                (state, at_ms, at_ms, detail, int(state == "offered"), recall_id, device_id),
            )
        return True

    def state_counts(self, recall_id: str) -> dict[str, int]:
        """Return how many devices are in each remediation state for a recall."""
        rows = self._db.query(
            "SELECT state, count(*) FROM recall_impacts WHERE recall_id = ? GROUP BY state",
            (recall_id,),
        )
        return {state: int(n) for state, n in rows}


def _check_revision(fields: RecallFields, held: int) -> None:
    if fields.revision < held:
        raise RollbackError(
            f"Recall {fields.recall_id} revision {fields.revision} is older than revision "
            f"{held} already held; an old notice cannot replace a newer one.",
            reason="recall-rollback",
        )
    if fields.revision == held:
        raise ReplayError(
            f"Recall {fields.recall_id} revision {fields.revision} arrived again with other "
            "content; the first one is kept. Ask the manufacturer for a new revision.",
            reason="recall-conflict",
        )


def _manifest_components(raw: bytes) -> tuple[Component, ...] | None:
    try:
        sbom = unsafe_read_manifest(raw).sbom  # the manifest was verified when it was kept
        return None if sbom is None else components_of_sbom(sbom)
    except VerificationError:
        return None


class _ImpactQuery:
    """One impact computation: rule by rule, each an index scan or a per-group decision."""

    def __init__(self, db: Database, store: RecallStore, fields: RecallFields) -> None:
        self.db = db
        self.fields = fields
        self.vendor = fields.vendor.bytes
        self.rows: dict[str, _DeviceRow] = {}
        self.classes: dict[bytes, uuid.UUID] = {}
        self._group_rows: dict[tuple[bytes, str | None], list[_DeviceRow]] = {}
        self.hits: dict[str, list[Match]] = defaultdict(list)
        self.unknown: dict[str, list[Match]] = defaultdict(list)
        self._groups: list[tuple[bytes, str | None]] | None = None
        purls = [r.purl_base for r in fields.rules if r.kind == "component" and r.purl_base]
        self.components = store.sbom_components(fields.vendor, purls) if purls else {}

    def run(self) -> ImpactReport:
        for index, rule in enumerate(self.fields.rules):
            if rule.kind in ("model", "serial", "lot"):
                self._scan(index, rule)
            else:
                self._by_group(index, rule)
        # Rules run in index order and each adds a device at most once, so every device's
        # matches are already in rule order.
        rows, classes = self.rows, self.classes
        affected = tuple(
            Impact(d, classes[r[1]], r[2], r[3], r[4], r[5], tuple(self.hits[d]))
            for d in sorted(self.hits)
            for r in (rows[d],)
        )
        undetermined = tuple(
            Undetermined(d, rows[d][2], rows[d][3], tuple(self.unknown[d]))
            for d in sorted(self.unknown.keys() - self.hits.keys())
        )
        return ImpactReport(self.fields.recall_id, affected, undetermined)

    def _scope(self, rule: Rule) -> tuple[str, list[Any]]:
        if rule.gtin is not None:
            return "vendor = ? AND gtin = ?", [self.vendor, rule.gtin]
        if rule.class_id is not None:
            return "vendor = ? AND class = ?", [self.vendor, rule.class_id.bytes]
        return "vendor = ?", [self.vendor]

    def _devices(self, where: str, params: Sequence[Any]) -> list[_DeviceRow]:
        rows: list[_DeviceRow] = self.db.query(
            f"SELECT {_DEVICE_COLUMNS} FROM inventory WHERE {where}",  # noqa: S608 -- fixed text
            params,
        )
        self.rows.update((row[0], row) for row in rows)
        for row in rows:
            if row[1] not in self.classes:
                self.classes[row[1]] = uuid.UUID(bytes=row[1])
        return rows

    def _scan(self, index: int, rule: Rule) -> None:
        # Step 3 - model, serial and lot rules: index scans.
        where, params = self._scope(rule)
        if rule.kind == "model":
            per_model: dict[str, Match] = {}  # one Match per model, shared by its devices
            for row in self._devices(where, params):
                match = per_model.get(row[2])
                if match is None:
                    match = Match(index, "model", f"model rule: {rule.describe(row[2])}")
                    per_model[row[2]] = match
                self.hits[row[0]].append(match)
            return
        assert rule.low is not None
        assert rule.high is not None
        column = "serial" if rule.kind == "serial" else "lot"
        prefix, low = range_key(rule.low)
        _, high = range_key(rule.high)
        if low is None:
            rows = self._devices(f"{where} AND {column} = ?", [*params, rule.low])
        else:
            rows = self._devices(
                f"{where} AND {column}_prefix = ? AND {column}_num BETWEEN ? AND ?",
                [*params, prefix, low, high],
            )
        for row in rows:
            facts = DeviceFacts(row[0], self.fields.vendor, _NIL, "", row[6], row[7], row[3])
            self.hits[row[0]].append(Match(index, rule.kind, rule_detail(rule, facts)))
        if rule.kind == "lot":
            why = Match(index, "lot", "the device's lot is not known to the gateway")
            for row in self._devices(f"{where} AND lot_prefix IS NULL", params):
                self.unknown[row[0]].append(why)

    def groups(self) -> list[tuple[bytes, str | None]]:
        if self._groups is None:
            self._groups = [
                (bytes(k), v)
                for k, v in self.db.query(
                    "SELECT DISTINCT class, version FROM inventory WHERE vendor = ?",
                    (self.vendor,),
                )
            ]
        return self._groups

    def _by_group(self, index: int, rule: Rule) -> None:
        # Step 2 - firmware and component rules: decided once per (class, version) group.
        for klass, version in self.groups():
            if rule.class_id is not None and rule.class_id.bytes != klass:
                continue
            class_uuid = uuid.UUID(bytes=klass)
            facts = DeviceFacts("", self.fields.vendor, class_uuid, "", "", None, version)
            outcome, detail = rule_verdict(rule, facts, self.components)
            if outcome is False:
                continue
            rows = self._group_rows.get((klass, version))
            if rows is None:  # read once, however many rules decide this group
                where = "vendor = ? AND class = ? AND " + (
                    "version IS NULL" if version is None else "version = ?"
                )
                params = [self.vendor, klass] + ([] if version is None else [version])
                rows = self._group_rows[klass, version] = self._devices(where, params)
            match = Match(index, rule.kind, detail)
            target = self.hits if outcome else self.unknown
            for row in rows:
                target[row[0]].append(match)


_NIL = uuid.UUID(int=0)


# --- trust directory ---------------------------------------------------------------------------


def load_recall_trust(path: Path | str) -> RecallTrust:
    """Read ``<trust>/recall/<vendor-domain>/*.pem`` and the optional policy (module docstring).

    Raises :class:`MalformedError` when there is no recall key, a key is unreadable, or the policy
    is not ``{"threshold": n}`` with n >= 2.
    """
    root = Path(path)
    keys: list[TrustedKey] = []
    policy: object = {}
    try:
        recall_dir = root / "recall"
        vendors = (
            sorted(p for p in recall_dir.iterdir() if p.is_dir()) if recall_dir.is_dir() else []
        )
        for vendor_dir in vendors:
            vendor = vendor_id(vendor_dir.name)
            keys.extend(
                TrustedKey.from_pem(
                    pem.read_bytes(), name=f"{vendor_dir.name}/{pem.stem}", vendors={vendor}
                )
                for pem in sorted(vendor_dir.glob("*.pem"))
            )
        policy_file = root / _POLICY_FILE
        if policy_file.is_file():
            policy = json.loads(policy_file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise MalformedError(
            f"The recall trust directory {root} cannot be read ({exc.strerror or exc}).",
            reason="trust-dir-unreadable",
        ) from exc
    except ValueError as exc:
        raise MalformedError(
            f"{root / _POLICY_FILE} is not valid JSON: {exc}.", reason="trust-policy"
        ) from exc
    if not keys:
        raise MalformedError(
            f"The trust directory {root} holds no recall key (recall/<vendor-domain>/*.pem); "
            "no recall notice could be trusted.",
            reason="trust-dir-empty",
        )
    threshold = policy.get("threshold", 2) if isinstance(policy, dict) else None
    if (
        not isinstance(policy, dict)
        or set(policy) - {"threshold"}
        or type(threshold) is not int
        or threshold < 2
    ):
        raise MalformedError(
            f'{root / _POLICY_FILE} must be {{"threshold": n}} with n >= 2 (issue 6: recalls are '
            "signed by at least 2 manufacturer keys).",
            reason="trust-policy",
        )
    return RecallTrust.build(keys, threshold=threshold)
