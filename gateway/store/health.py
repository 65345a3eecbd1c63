"""The gateway's progress as the database records it: what ``/metrics`` and ``provgw status`` show.

:func:`read_store_health` reads, in one read-only snapshot
(:class:`~gateway.store.readonly.ReadOnlyDatabase`: it never blocks ingest), the events stored and
those not yet logged, the log's size, the newest checkpoint of each strength (signed, witnessed:
reached the witness quorum, anchored: on the chain), the anchors not yet confirmed, and each
recall's or urgent manifest's devices by remediation state, and the devices revoked.

Every statement reads one end of an index, the remediation tables (a row per device and
campaign) or the revoked devices' partial index, never the events or the log (query plans
pinned by ``tests/service/test_health.py``), so it costs the same on a database of millions of
events (``python -m bench health``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gateway.store.readonly import ReadOnlyDatabase

__all__ = ["QUERIES", "STRENGTHS", "NewestCheckpoint", "StoreHealth", "read_store_health"]

#: What one reading runs. Each statement reads one end of an index (the events' and the
#: checkpoints' primary keys, log_leaves' UNIQUE (kind, ref_id), log_0103's partial indexes, whose
#: WHERE terms the checkpoint statements repeat), the open anchors' partial index, or the
#: remediation tables.
QUERIES = {
    "stored": "SELECT coalesce(max(id), 0) FROM events",
    "logged": "SELECT coalesce(max(ref_id), 0) FROM log_leaves WHERE kind = 'event'",
    "entries": "SELECT coalesce(max(idx) + 1, 0) FROM log_leaves",
    "signed": "SELECT size, signed_ms FROM checkpoints ORDER BY size DESC LIMIT 1",
    "witnessed": (
        "SELECT size, witnessed_ms FROM checkpoint_status WHERE witnessed_ms IS NOT NULL"
        " ORDER BY size DESC LIMIT 1"
    ),
    "anchored": (
        "SELECT size, anchored_ms FROM checkpoint_status WHERE anchored_tx IS NOT NULL"
        " ORDER BY size DESC LIMIT 1"
    ),
    "outbox": (
        "SELECT status, count(*) FROM anchor_outbox WHERE status IN ('pending', 'sent')"
        " GROUP BY status"
    ),
    "campaigns": (
        "SELECT recall_id, state, count(*) FROM recall_impacts GROUP BY recall_id, state"
        " UNION ALL"
        " SELECT 'manifest:' || lower(hex(manifest)), state, count(*) FROM manifest_offers"
        " GROUP BY manifest, state"
    ),
    # The revoked devices only, from their partial index (a handful, not the fleet).
    "revoked": "SELECT device_id FROM devices WHERE revoked_ms IS NOT NULL",
}
STRENGTHS = ("signed", "witnessed", "anchored")


@dataclass(frozen=True)
class NewestCheckpoint:
    """The newest checkpoint of one strength: its tree size and when (0 and None: none yet)."""

    size: int
    at_ms: int | None


@dataclass(frozen=True)
class StoreHealth:
    """One consistent reading of the gateway's progress."""

    events: int
    #: Stored events not yet committed to the transparency log.
    unlogged: int
    entries: int
    #: ``signed``, ``witnessed``, ``anchored`` -> the newest checkpoint of that strength.
    newest: dict[str, NewestCheckpoint]
    #: ``pending``, ``sent`` -> chain anchors not yet confirmed.
    anchors: dict[str, int]
    #: ``(campaign, state, devices)``; a campaign is a recall id or ``manifest:<digest>``.
    remediation: list[tuple[str, str, int]]
    #: The devices revoked in this database (``provgw device revoke``), by id.
    revoked: frozenset[str]

    def not_denied(self, denied: Iterable[str]) -> list[str]:
        """Return the revoked devices missing from *denied* (the broker's ACL), sorted."""
        return sorted(self.revoked.difference(denied))


def read_store_health(path: str | Path) -> StoreHealth:
    """Read *path*'s progress; raise :class:`~gateway.core.errors.UnavailableError` if it can't."""
    db = ReadOnlyDatabase(path)
    try:
        with db.snapshot():
            rows = {name: db.conn.execute(sql).fetchall() for name, sql in QUERIES.items()}
    finally:
        db.close()
    stored, logged, entries = (int(rows[name][0][0]) for name in ("stored", "logged", "entries"))
    newest = {
        strength: NewestCheckpoint(int(found[0][0]), found[0][1])
        if (found := rows[strength])
        else NewestCheckpoint(0, None)
        for strength in STRENGTHS
    }
    anchors = dict(rows["outbox"])
    return StoreHealth(
        events=stored,
        # Event ids are given in order and logged in order (gateway.service.batcher).
        unlogged=max(0, stored - logged),
        entries=entries,
        newest=newest,
        anchors={status: int(anchors.get(status, 0)) for status in ("pending", "sent")},
        remediation=[(str(c), str(s), int(n)) for c, s, n in rows["campaigns"]],
        revoked=frozenset(str(d) for (d,) in rows["revoked"]),
    )
