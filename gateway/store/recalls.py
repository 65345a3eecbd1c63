"""Recalls in the store: accepted notices, fleet impact, and per-device remediation state.

:class:`RecallStore` keeps each recall's latest revision, answers "which devices does it hit,
and by which rule" (:meth:`RecallStore.affected_devices`), and tracks each affected device's
remediation: ``pending`` -> ``offered`` -> ``installed`` / ``failed`` / ``unreachable`` (the
urgent lane moves it; :meth:`RecallStore.set_state`).

Impact is computed without running the rules per device (goal: 100,000 devices in <= 200 ms,
``python -m bench recall``):

1. The SBOM components of every kept firmware manifest are indexed once per manifest
   (``sbom_components``, :meth:`RecallStore.index_sboms`), so a component rule is one indexed
   lookup by (vendor, purl).
2. Firmware and component rules are decided once per (class, firmware version) group of the
   vendor's fleet (a ``DISTINCT`` on the ``inventory_firmware`` index), with the same rule logic
   as the per-device reference path (:func:`gateway.core.recall.rule_verdict`).
3. Model, serial and lot rules become SQL conditions (serial and lot ranges on their indexed
   (prefix, number) split). One ``SELECT``, ordered by device id, reads exactly the devices in
   one of these ranges or in a group of step 2, and SQLite computes each model / serial / lot
   rule's outcome per device. When the ranges hold a large share of the table, one sequential
   pass replaces the index lookups (the answer is the same).
4. Devices with the same outcomes, class, firmware version and model share one verdict, built
   once; each device then costs one named tuple (plus a match naming its serial or lot when a
   serial or lot rule hit it).

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
import sqlite3
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
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
from gateway.store.db import Database, in_list

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
            marks, values = in_list(wanted)
            sql += f" AND purl IN ({marks})"
            params += values
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
        row = _RowAddress(
            "recall_impacts", "recall_id", recall_id, device_id, f"recall {recall_id}", _TRANSITIONS
        )
        with self._db.atomic() as conn:
            moved = _move_state(conn, row, state, at_ms=at_ms, detail=detail)
        if moved is None:
            raise MalformedError(
                f"Device {device_id} is not tracked for recall {recall_id}.",
                reason="remediation-unknown",
            )
        return moved

    def state_counts(self, recall_id: str) -> dict[str, int]:
        """Return how many devices are in each remediation state for a recall."""
        rows = self._db.query(
            "SELECT state, count(*) FROM recall_impacts WHERE recall_id = ? GROUP BY state",
            (recall_id,),
        )
        return {state: int(n) for state, n in rows}


class _RowAddress(NamedTuple):
    """One device's remediation row in a campaign table, and the moves that table allows."""

    table: str  # recall_impacts / manifest_offers
    key: str  # the campaign column: recall_id / manifest
    value: object  # the campaign: a recall id / a manifest digest
    device_id: str
    campaign: str  # the campaign in a refusal's words: "recall R-7"
    transitions: Mapping[str, frozenset[str]]


def _move_state(
    conn: sqlite3.Connection, row: _RowAddress, state: str, *, at_ms: int, detail: str | None
) -> bool | None:
    """Move one remediation row to *state*; False for a repeat, None when there is no row.

    The one state move of recall impacts and manifest offers (:mod:`gateway.store.offers`). It
    runs inside the caller's transaction, so a caller can create the missing row in the same one.
    """
    table, key, value, device_id, campaign, transitions = row
    if state not in transitions:
        raise ValueError(f"unknown remediation state {state!r}")
    current_row = conn.execute(
        f"SELECT state FROM {table} WHERE {key} = ? AND device_id = ?",  # noqa: S608 -- fixed names
        (value, device_id),
    ).fetchone()
    if current_row is None:
        return None
    current = str(current_row[0])
    if current == state and state != "offered":
        return False  # a repeated report (QoS 1 redelivery): nothing changes
    if state not in transitions[current]:
        raise PolicyError(
            f"Device {device_id} is {current} for {campaign}; it cannot become {state}.",
            reason="remediation-transition",
        )
    column = "matched_ms" if state == "pending" else f"{state}_ms"
    conn.execute(
        f"UPDATE {table} SET state = ?, {column} = ?, updated_ms = ?,"  # noqa: S608 -- column from a fixed set
        " detail = coalesce(?, detail), attempts = attempts + ?"
        f" WHERE {key} = ? AND device_id = ?",
        (state, at_ms, at_ms, detail, int(state == "offered"), value, device_id),
    )
    return True


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


# --- impact query -------------------------------------------------------------------------------

# Rule kinds SQLite decides per device (step 3); firmware and component rules are decided per
# (class, firmware version) group (step 2).
_ROW_KINDS = frozenset({"model", "serial", "lot"})
# SQLite refuses a compound SELECT of over 500 terms (SQLITE_MAX_COMPOUND_SELECT); past this many
# ranges the query makes one sequential pass instead.
_MAX_RANGES = 400
# When the ranges hold more than this share of the table (index counts), one sequential pass is
# cheaper than an index lookup per device: ~0.13 us a row read in order against ~0.6 us a device
# looked up (measured on this machine, 100,000 devices).
_SCAN_SHARE = 0.2
# Per model / serial / lot rule the query returns 0 (no), _HIT or _UNDETERMINED: two bits each of
# one integer for up to 31 rules, else a text of one digit per rule (_outcome_sql).
_INT_OUTCOMES = 31
_HIT = 1
_UNDETERMINED = 2
# A device as the query returns it: device_id, class, model, version, site, department, the
# rules' outcomes (_outcome_of), serial and lot (NULL unless a serial / lot rule hit: its match
# names them).
_ImpactRow = tuple[str, bytes, str, str | None, str, str, int | str, str | None, str | None]
# (rule index, rule): a serial or lot rule that hit, whose match names the device's serial or lot.
_PerDevice = tuple[int, Rule]
# (class, firmware version) -> {rule index: (hit, match or reason)}, for decided groups only.
_GroupVerdicts = dict[tuple[bytes, str | None], dict[int, tuple[bool, Match]]]


class _Verdict(NamedTuple):
    """The verdict shared by every device with the same outcomes, class, version and model."""

    class_id: uuid.UUID
    matches: tuple[Match, ...]
    reasons: tuple[Match, ...]
    #: Instead of matches when a serial or lot rule hit: completed per device.
    template: tuple[Match | _PerDevice, ...] | None


class _Params:
    """Named SQL parameters, one per distinct value (a 256-rule recall stays far under the cap)."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self._names: dict[tuple[type, Any], str] = {}

    def __call__(self, value: bytes | str | int) -> str:
        key = (type(value), value)
        name = self._names.get(key)
        if name is None:
            name = self._names[key] = f"p{len(self._names)}"
            self.values[name] = value
        return f":{name}"


class _ImpactQuery:
    """One impact computation (steps 2-4 of the module docstring)."""

    def __init__(self, db: Database, store: RecallStore, fields: RecallFields) -> None:
        self.db = db
        self.fields = fields
        self.vendor = fields.vendor.bytes
        self.rules = fields.rules
        purls = [r.purl_base for r in fields.rules if r.kind == "component" and r.purl_base]
        self.components = store.sbom_components(fields.vendor, purls) if purls else {}
        #: rule index -> position of its outcome in a row, for model, serial and lot rules.
        self.position = {
            index: position
            for position, index in enumerate(
                i for i, r in enumerate(fields.rules) if r.kind in _ROW_KINDS
            )
        }
        self.classes: dict[bytes, uuid.UUID] = {}
        self.model_matches: dict[tuple[int, str], Match] = {}
        # The reason comes from the reference rule logic, so both paths say the same.
        self.no_lot = {
            index: Match(index, "lot", rule_verdict(rule, _NO_LOT, {})[1])
            for index, rule in enumerate(fields.rules)
            if rule.kind == "lot"
        }

    def run(self) -> ImpactReport:
        groups = self._group_verdicts()
        affected: list[Impact] = []
        undetermined: list[Undetermined] = []
        verdicts: dict[tuple[int | str, bytes, str | None, str], _Verdict | None] = {}
        # Step 4. This loop runs once per device: tuple.__new__ builds the named tuples without
        # their Python-level __new__ (a third cheaper), and no rule logic runs here.
        new = tuple.__new__
        rows = self._devices(groups)
        for device_id, klass, model, version, site, department, outcomes, serial, lot in rows:
            key = (outcomes, klass, version, model)
            verdict = verdicts.get(key, _UNSEEN)
            if verdict is _UNSEEN:
                verdict = verdicts[key] = self._verdict(key, groups.get((klass, version), {}))
            if verdict is None:
                continue  # not reached: every range the query reads holds only decided devices
            class_uuid, matches, reasons, template = verdict
            if template is not None:
                matches = self._complete(template, serial, lot)
            if matches:
                affected.append(
                    new(Impact, (device_id, class_uuid, model, version, site, department, matches))
                )
            else:
                undetermined.append(new(Undetermined, (device_id, model, version, reasons)))
        # Rows come ordered by device id, so both lists are too.
        return ImpactReport(self.fields.recall_id, tuple(affected), tuple(undetermined))

    def _group_verdicts(self) -> _GroupVerdicts:
        # Step 2 - firmware and component rules, once per (class, version) group. The closed
        # schema gives these rules a class scope or none, never a GTIN.
        rules = [(i, r) for i, r in enumerate(self.rules) if r.kind not in _ROW_KINDS]
        if not rules:
            return {}
        out: _GroupVerdicts = {}
        for klass, version in self.db.query(
            "SELECT DISTINCT class, version FROM inventory WHERE vendor = ?", (self.vendor,)
        ):
            class_uuid = self._class_id(klass)
            facts = DeviceFacts("", self.fields.vendor, class_uuid, "", "", None, version)
            for index, rule in rules:
                if rule.class_id is not None and rule.class_id != class_uuid:
                    continue
                outcome, detail = rule_verdict(rule, facts, self.components)
                if outcome is not False:
                    group = out.setdefault((klass, version), {})
                    group[index] = (outcome is True, Match(index, rule.kind, detail))
        return out

    def _devices(self, groups: _GroupVerdicts) -> list[_ImpactRow]:
        # Step 3 - one SELECT: the devices in any range, with each row rule's outcome.
        p = _Params()
        ranges: list[str] = []  # conditions whose union is exactly the devices to report
        outcomes: list[str] = []
        serials: list[str] = []
        lots: list[str] = []
        wide = len(self.position) > _INT_OUTCOMES
        for index, position in self.position.items():
            rule = self.rules[index]
            scope = _scope_sql(rule, p)
            hit, unknown = scope, None
            if rule.kind != "model":
                hit = f"{scope} AND {_range_sql(rule, rule.kind, p)}"
                (serials if rule.kind == "serial" else lots).append(hit)
            if rule.kind == "lot":
                unknown = f"{scope} AND lot_prefix IS NULL"  # undetermined, never unaffected
                ranges.append(unknown)
            ranges.append(hit)
            outcomes.append(_outcome_sql(position, hit, unknown, wide=wide))
        versions: dict[bytes, list[str]] = defaultdict(list)
        for klass, version in groups:
            if version is None:
                ranges.append(f"class = {p(klass)} AND version IS NULL")
            else:
                versions[klass].append(p(version))
        ranges.extend(
            f"class = {p(klass)} AND version IN ({', '.join(names)})"
            for klass, names in versions.items()
        )
        if not ranges:
            return []
        vendor = p(self.vendor)
        if len(ranges) <= _MAX_RANGES and not self._large(vendor, ranges, p):
            # Few devices: the union of the index ranges, each device then looked up once.
            arms = " UNION ALL ".join(_select("rowid FROM inventory", vendor, r) for r in ranges)
            source = f"inventory WHERE rowid IN ({arms})"
        else:
            source = f"inventory NOT INDEXED WHERE vendor = {vendor} AND {_any(ranges)}"
        serial = f"iif({_any(serials)}, serial, NULL)" if serials else "NULL"
        lot = f"iif({_any(lots)}, lot, NULL)" if lots else "NULL"
        outcome = _balanced(" || " if wide else " + ", outcomes) if outcomes else "0"
        columns = f"device_id, class, model, version, site, department, {outcome}, {serial}, {lot}"
        rows: list[_ImpactRow] = self.db.query(
            f"SELECT {columns} FROM {source} ORDER BY device_id",  # noqa: S608 -- our SQL; values are parameters
            p.values,
        )
        return rows

    def _large(self, vendor: str, ranges: list[str], p: _Params) -> bool:
        """Whether *ranges* hold more than :data:`_SCAN_SHARE` of the table (index counts)."""
        counts = [f"({_select('count(*) FROM inventory', vendor, r)})" for r in ranges]
        # max(rowid) is one index seek: the table's size, as inventory rows are never deleted.
        [(table, wanted)] = self.db.query(
            f"SELECT (SELECT max(rowid) FROM inventory), {_balanced(' + ', counts)}",  # noqa: S608 -- our SQL; values are parameters
            p.values,
        )
        return bool(wanted > (table or 0) * _SCAN_SHARE)

    def _verdict(
        self, key: tuple[int | str, bytes, str | None, str], group: dict[int, tuple[bool, Match]]
    ) -> _Verdict | None:
        # Every rule in rule order, so matches and reasons list rules as the recall does.
        outcomes, klass, _, model = key
        matches: list[Match | _PerDevice] = []
        reasons: list[Match] = []
        for index, rule in enumerate(self.rules):
            position = self.position.get(index)
            if position is None:
                if index in group:
                    hit, match = group[index]
                    (matches if hit else reasons).append(match)
                continue
            outcome = _outcome_of(outcomes, position)
            if outcome == _HIT:
                matches.append(
                    self._model_match(index, rule, model) if rule.kind == "model" else (index, rule)
                )
            elif outcome == _UNDETERMINED:
                reasons.append(self.no_lot[index])
        if not matches and not reasons:
            return None
        class_uuid = self._class_id(klass)
        plain = tuple(m for m in matches if isinstance(m, Match))
        if len(plain) < len(matches):
            return _Verdict(class_uuid, (), (), tuple(matches))
        return _Verdict(class_uuid, plain, tuple(reasons), None)

    def _class_id(self, klass: bytes) -> uuid.UUID:
        found = self.classes.get(klass)
        if found is None:
            found = self.classes[klass] = uuid.UUID(bytes=klass)
        return found

    def _model_match(self, index: int, rule: Rule, model: str) -> Match:
        match = self.model_matches.get((index, model))
        if match is None:
            match = Match(index, "model", f"model rule: {rule.describe(model)}")
            self.model_matches[index, model] = match
        return match

    def _complete(
        self, template: tuple[Match | _PerDevice, ...], serial: str | None, lot: str | None
    ) -> tuple[Match, ...]:
        facts = DeviceFacts("", self.fields.vendor, _NIL, "", serial or "", lot)
        return tuple(
            m if isinstance(m, Match) else Match(m[0], m[1].kind, rule_detail(m[1], facts))
            for m in template
        )


def _select(what: str, vendor: str, condition: str) -> str:
    return f"SELECT {what} WHERE vendor = {vendor} AND {condition}"


def _outcome_sql(position: int, hit: str, unknown: str | None, *, wide: bool) -> str:
    # The rule's outcome (0, _HIT or _UNDETERMINED): two bits of an integer at its position, or
    # one digit of a text (_INT_OUTCOMES); _outcome_of reads it back.
    def code(value: int) -> str:
        return f"'{value}'" if wide else str(value << 2 * position)

    otherwise = code(0) if unknown is None else f"iif({unknown}, {code(_UNDETERMINED)}, {code(0)})"
    return f"iif({hit}, {code(_HIT)}, {otherwise})"


def _outcome_of(outcomes: int | str, position: int) -> int:
    if isinstance(outcomes, int):
        return outcomes >> 2 * position & 3
    return int(outcomes[position])


def _balanced(op: str, terms: list[str]) -> str:
    # A balanced tree: SQLite refuses expressions nested over 1000 deep (SQLITE_MAX_EXPR_DEPTH),
    # which a chain of a few hundred rules or ranges would come near.
    if len(terms) == 1:
        return f"({terms[0]})"
    middle = len(terms) // 2
    return f"({_balanced(op, terms[:middle])}{op}{_balanced(op, terms[middle:])})"


def _any(terms: list[str]) -> str:
    return _balanced(" OR ", terms)


def _scope_sql(rule: Rule, p: _Params) -> str:
    # Model, serial and lot rules name exactly one of GTIN or class (closed schema).
    if rule.gtin is not None:
        return f"gtin = {p(rule.gtin)}"
    if rule.class_id is not None:
        return f"class = {p(rule.class_id.bytes)}"
    return "1"


def _range_sql(rule: Rule, column: str, p: _Params) -> str:
    # The range order of gateway.core.recall: same text prefix, then the trailing number; a
    # value without trailing digits matches only itself. Both parts are indexed columns.
    assert rule.low is not None
    assert rule.high is not None
    prefix, low = range_key(rule.low)
    _, high = range_key(rule.high)
    if low is None or high is None:
        return f"{column}_prefix = {p(prefix)} AND {column}_num IS NULL"
    return f"{column}_prefix = {p(prefix)} AND {column}_num BETWEEN {p(low)} AND {p(high)}"


_NIL = uuid.UUID(int=0)
_UNSEEN = _Verdict(_NIL, (), (), None)
_NO_LOT = DeviceFacts("", _NIL, _NIL, "", "")


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
