"""Offers of urgent manifests that no recall names: per manifest digest and device, a state.

A manufacturer may publish an urgent security fix (priority < 0) without a recall notice; the
urgent lane offers it to every device of the model below its version. Those offers are tracked
here, as a recall's are in ``recall_impacts`` (:mod:`gateway.store.recalls`), and under the same
states and moves: ``offered`` (a repeat is a retry) -> ``installed`` (final) / ``failed`` /
``unreachable``. They are addressed by a *campaign id* ``manifest:<digest hex>``
(:func:`campaign_id`), so the remediation tracker, ``provgw recall status`` and the retries treat
a manifest campaign like a recall.
"""

from __future__ import annotations

import re
from typing import Any

from gateway.core.errors import MalformedError
from gateway.store.db import Database
from gateway.store.recalls import _TRANSITIONS as _RECALL_TRANSITIONS
from gateway.store.recalls import Remediation, State, _move_state, _RowAddress

__all__ = ["MANIFEST_CAMPAIGN_PREFIX", "ManifestOffers", "campaign_id", "campaign_manifest"]

#: Campaign ids of manifest offers start with this. No recall id can equal one: a campaign id is
#: 73 characters, a recall id at most 64 (``gateway.core.recall``, closed schema).
MANIFEST_CAMPAIGN_PREFIX = "manifest:"
_CAMPAIGN = re.compile(r"manifest:([0-9a-f]{64})\Z")
# RecallStore's moves, without `pending`: a manifest offer exists only once it was sent.
_MOVES: dict[str, frozenset[str]] = {
    state: moves for state, moves in _RECALL_TRANSITIONS.items() if state != "pending"
}
_COLUMNS = (
    "device_id, state, attempts, first_ms, offered_ms, installed_ms, failed_ms, unreachable_ms,"
    " detail, updated_ms"
)


def campaign_id(manifest: bytes) -> str:
    """Return the campaign id of the offers of *manifest* (its 32-byte digest)."""
    return MANIFEST_CAMPAIGN_PREFIX + manifest.hex()


def campaign_manifest(campaign: str) -> bytes | None:
    """Return the manifest digest a campaign id names, or None for a recall id."""
    match = _CAMPAIGN.match(campaign)
    return bytes.fromhex(match.group(1)) if match else None


class ManifestOffers:
    """The ``manifest_offers`` table: one row per (manifest, device) offered."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def set_state(
        self,
        manifest: bytes,
        device_id: str,
        state: State,
        *,
        at_ms: int,
        detail: str | None = None,
    ) -> bool:
        """Move a device's offer of *manifest* to *state*; return False for a repeat.

        ``offered`` creates the row (first offer) or counts another attempt. Raises
        :class:`PolicyError` for a move the states do not allow (``installed`` is final) and
        :class:`MalformedError` for a report about a device never offered *manifest*.
        """
        campaign = f"manifest {manifest.hex()[:16]}"
        row = _RowAddress("manifest_offers", "manifest", manifest, device_id, campaign, _MOVES)
        with self._db.atomic() as conn:
            moved = _move_state(conn, row, state, at_ms=at_ms, detail=detail)
            if moved is not None:
                return moved
            if state != "offered":
                raise MalformedError(
                    f"Device {device_id} was never offered {campaign}.",
                    reason="remediation-unknown",
                )
            conn.execute(
                "INSERT INTO manifest_offers (manifest, device_id, state, attempts, first_ms,"
                " offered_ms, detail, updated_ms) VALUES (?, ?, 'offered', 1, ?, ?, ?, ?)",
                (manifest, device_id, at_ms, at_ms, detail, at_ms),
            )
        return True

    def open_for(self, device_id: str) -> list[tuple[bytes, str]]:
        """Return (manifest, state) of every offer to *device_id* not yet installed."""
        rows = self._db.query(
            "SELECT manifest, state FROM manifest_offers WHERE device_id = ?"
            " AND state != 'installed'",
            (device_id,),
        )
        return [(bytes(m), str(s)) for m, s in rows]

    def offered(self, *, sent_before: int | None = None) -> list[tuple[bytes, str, int, int]]:
        """Return (manifest, device, attempts, offered_ms) of every offer awaiting a report.

        *sent_before*: only offers sent at or before this time (ms), read from the
        ``(state, offered_ms)`` index.
        """
        rows = self._db.query(
            "SELECT manifest, device_id, attempts, offered_ms FROM manifest_offers"
            " WHERE state = 'offered' AND offered_ms <= ? ORDER BY offered_ms",
            (2**63 - 1 if sent_before is None else sent_before,),
        )
        return [(bytes(m), str(d), int(a), int(o)) for m, d, a, o in rows]

    def remediation(self, manifest: bytes) -> list[Remediation]:
        """Return the rows of *manifest*'s offers, by device id, as remediation rows."""
        rows = self._db.query(
            f"SELECT {_COLUMNS} FROM manifest_offers WHERE manifest = ?"  # noqa: S608 -- fixed columns
            " ORDER BY device_id",
            (manifest,),
        )
        campaign = campaign_id(manifest)
        return [Remediation(campaign, r[0], (), *r[1:]) for r in rows]

    def state_counts(self, manifest: bytes) -> dict[str, int]:
        """Return how many devices are in each state for *manifest*'s offers."""
        rows = self._db.query(
            "SELECT state, count(*) FROM manifest_offers WHERE manifest = ? GROUP BY state",
            (manifest,),
        )
        return {str(state): int(n) for state, n in rows}

    def summary(self, manifest: bytes) -> dict[str, Any]:
        """Return a JSON-ready summary of *manifest*'s campaign (for status output)."""
        counts = self.state_counts(manifest)
        return {"manifest": manifest.hex(), "devices": sum(counts.values()), "counts": counts}
