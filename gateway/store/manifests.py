"""Firmware manifests kept in the store, anti-rollback state, and the manifest trust directory.

:class:`ManifestStore` keeps every verified manifest (raw envelope, SBOM included) and the
rollback state RFC 9124 REQ.SEC.SEQUENCE needs: the highest sequence number accepted per
(vendor, class), and per device the sequence number installed. :meth:`ManifestStore.accept`
reads the state, validates and records in ONE transaction, so two copies racing in cannot both
pass the rollback check. Validation itself is :mod:`gateway.core.manifest`; this module only
moves bytes and rows.

Trust directory layout read by :func:`load_manifest_trust` (it can be the same directory as the
device trust anchors of ``provgw-sim pki init``; those are top-level ``*.pem`` files)::

    <trust>/firmware/<vendor-domain>/*.pem   manufacturer firmware-signing keys (public key or
                                             certificate PEM), trusted for that vendor only
    <trust>/operators/*.pem                  hospital operator keys (Uptane director role)
    <trust>/manifest-policy.json             optional: {"manufacturer_threshold": 1,
                                                        "operator_threshold": 1}
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.core.errors import MalformedError, ReplayError, RollbackError, VerificationError
from gateway.core.manifest import (
    Manifest,
    ManifestTrust,
    TrustedKey,
    unsafe_read_manifest,
    vendor_id,
)
from gateway.store.db import Database

__all__ = ["ManifestRow", "ManifestStore", "load_manifest_trust"]

_POLICY_FILE = "manifest-policy.json"
_POLICY_KEYS = frozenset({"manufacturer_threshold", "operator_threshold"})


@dataclass(frozen=True)
class ManifestRow:
    """One stored manifest: the envelope as last received and the fields indexed."""

    digest: bytes
    vendor: uuid.UUID
    class_id: uuid.UUID
    seq: int
    version: str
    priority: int
    use_before: int
    raw: bytes
    received_ms: int


def _row(values: tuple[Any, ...]) -> ManifestRow:
    digest, vendor, klass, *rest = values
    return ManifestRow(digest, uuid.UUID(bytes=vendor), uuid.UUID(bytes=klass), *rest)


_SELECT = (
    "SELECT digest, vendor, class, seq, version, priority, use_before, raw, received_ms"
    " FROM manifests"
)


class ManifestStore:
    """Verified manifests and anti-rollback state in the gateway database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- rollback state -----------------------------------------------------------------------

    def state(self) -> dict[tuple[uuid.UUID, uuid.UUID], int]:
        """Return the highest accepted sequence number per (vendor, class)."""
        rows = self._db.query("SELECT vendor, class, seq FROM manifest_rollback")
        return {(uuid.UUID(bytes=v), uuid.UUID(bytes=c)): s for v, c, s in rows}

    def highest_seq(self, vendor: uuid.UUID, class_id: uuid.UUID) -> int | None:
        """Return the highest accepted sequence number for (vendor, class), if any."""
        rows = self._db.query(
            "SELECT seq FROM manifest_rollback WHERE vendor = ? AND class = ?",
            (vendor.bytes, class_id.bytes),
        )
        return None if not rows else int(rows[0][0])

    # -- manifests ------------------------------------------------------------------------------

    def accept(
        self,
        data: bytes,
        *,
        trust: ManifestTrust,
        now: datetime,
        check_sbom_quality: bool = True,
    ) -> Manifest:
        """Validate *data* against the stored rollback state and keep it; one transaction.

        A copy of an already kept manifest (QoS 1 redelivery, or the same manifest with more
        operator approvals) is checked again and replaces the stored envelope; it never adds a
        row, and passes the rollback check only while it is still the newest for its class.
        Raises the first failing check's :class:`~gateway.core.errors.VerificationError`.
        """
        received_ms = int(now.timestamp() * 1000)
        with self._db.atomic() as conn:
            state = {
                (uuid.UUID(bytes=v), uuid.UUID(bytes=c)): (s, d)
                for v, c, s, d in conn.execute(
                    "SELECT vendor, class, seq, digest FROM manifest_rollback"
                )
            }
            own = _peek_digest(data)
            # The newest manifest of a class does not roll back over itself.
            rollback = {key: seq for key, (seq, digest) in state.items() if digest != own}
            manifest = Manifest.from_bytes(
                data, trust=trust, state=rollback, now=now, check_sbom_quality=check_sbom_quality
            )
            fields = manifest.fields
            conn.execute(
                "INSERT INTO manifests (digest, vendor, class, seq, version, priority, use_before,"
                " raw, received_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (digest) DO UPDATE SET raw = excluded.raw,"
                " received_ms = excluded.received_ms",
                (
                    manifest.digest,
                    fields.vendor.bytes,
                    fields.class_id.bytes,
                    fields.seq,
                    fields.version,
                    fields.priority,
                    fields.use_before,
                    data,
                    received_ms,
                ),
            )
            conn.execute(
                "INSERT INTO manifest_rollback (vendor, class, seq, digest, updated_ms)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (vendor, class) DO UPDATE SET"
                " seq = excluded.seq, digest = excluded.digest, updated_ms = excluded.updated_ms"
                " WHERE excluded.seq > manifest_rollback.seq",
                (
                    fields.vendor.bytes,
                    fields.class_id.bytes,
                    fields.seq,
                    manifest.digest,
                    received_ms,
                ),
            )
        return manifest

    def get(self, digest: bytes) -> ManifestRow | None:
        """Return the manifest with this digest, if kept."""
        rows = self._db.query(f"{_SELECT} WHERE digest = ?", (digest,))
        return _row(rows[0]) if rows else None

    def for_class(self, vendor: uuid.UUID, class_id: uuid.UUID) -> list[ManifestRow]:
        """Return the kept manifests of one (vendor, class), oldest sequence number first."""
        rows = self._db.query(
            f"{_SELECT} WHERE vendor = ? AND class = ? ORDER BY seq",
            (vendor.bytes, class_id.bytes),
        )
        return [_row(r) for r in rows]

    def count(self) -> int:
        """Return how many manifests are kept."""
        return int(self._db.query("SELECT count(*) FROM manifests")[0][0])

    # -- per-device installed firmware -----------------------------------------------------------

    def installed_seq(self, device_id: str, vendor: uuid.UUID, class_id: uuid.UUID) -> int | None:
        """Return the sequence number installed on a device for (vendor, class), if known."""
        rows = self._db.query(
            "SELECT seq FROM device_firmware WHERE device_id = ? AND vendor = ? AND class = ?",
            (device_id, vendor.bytes, class_id.bytes),
        )
        return None if not rows else int(rows[0][0])

    def record_installed(  # noqa: PLR0913 -- one device report's facts
        self,
        device_id: str,
        vendor: uuid.UUID,
        class_id: uuid.UUID,
        seq: int,
        digest: bytes,
        *,
        installed_ms: int,
    ) -> None:
        """Record that *device_id* installed manifest *digest* (sequence *seq*).

        The same report again is a no-op. Raises :class:`RollbackError` if *seq* is below the
        device's recorded one, and :class:`ReplayError` for another manifest with the same *seq*.
        """
        with self._db.atomic() as conn:
            row = conn.execute(
                "SELECT seq, digest FROM device_firmware WHERE device_id = ? AND vendor = ?"
                " AND class = ?",
                (device_id, vendor.bytes, class_id.bytes),
            ).fetchone()
            if row is not None:
                _check_install(device_id, row, seq, digest)
                if (row[0], row[1]) == (seq, digest):
                    return
            conn.execute(
                "INSERT INTO device_firmware (device_id, vendor, class, seq, digest,"
                " installed_ms) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (device_id, vendor, class)"
                " DO UPDATE SET seq = excluded.seq, digest = excluded.digest,"
                " installed_ms = excluded.installed_ms",
                (device_id, vendor.bytes, class_id.bytes, seq, digest, installed_ms),
            )


def _check_install(
    device_id: str, row: sqlite3.Row | tuple[Any, ...], seq: int, digest: bytes
) -> None:
    current_seq, current_digest = int(row[0]), bytes(row[1])
    if seq < current_seq:
        raise RollbackError(
            f"Device {device_id} reports firmware sequence {seq}, below the {current_seq} it "
            "had installed: its firmware went backwards."
        )
    if seq == current_seq and digest != current_digest:
        raise ReplayError(
            f"Device {device_id} reports another manifest under sequence number {seq}.",
            reason="install-conflict",
        )


def _peek_digest(data: bytes) -> bytes | None:
    # Only used to tell a copy of a kept manifest from a new one; the full checks follow.
    try:
        return unsafe_read_manifest(data).digest
    except VerificationError:
        return None


# --- trust directory ---------------------------------------------------------------------------


def load_manifest_trust(path: Path | str) -> ManifestTrust:
    """Read the manifest trust directory (layout in the module docstring).

    Raises :class:`MalformedError` when the directory has no manufacturer key, a key file is
    unreadable or not a key, or the policy file is not the expected JSON.
    """
    root = Path(path)
    manufacturers: list[TrustedKey] = []
    operators: list[TrustedKey] = []
    try:
        firmware = root / "firmware"
        for vendor_dir in sorted(p for p in firmware.iterdir() if p.is_dir()):
            vendor = vendor_id(vendor_dir.name)
            for pem in sorted(vendor_dir.glob("*.pem")):
                name = f"{vendor_dir.name}/{pem.stem}"
                manufacturers.append(
                    TrustedKey.from_pem(pem.read_bytes(), name=name, vendors={vendor})
                )
        operator_dir = root / "operators"
        if operator_dir.is_dir():
            operators.extend(
                TrustedKey.from_pem(pem.read_bytes(), name=f"operator/{pem.stem}")
                for pem in sorted(operator_dir.glob("*.pem"))
            )
        policy_file = root / _POLICY_FILE
        policy = (
            json.loads(policy_file.read_text(encoding="utf-8")) if policy_file.is_file() else {}
        )
    except OSError as exc:
        raise MalformedError(
            f"The manifest trust directory {root} cannot be read ({exc.strerror or exc}); it needs "
            "firmware/<vendor-domain>/*.pem and optionally operators/*.pem.",
            reason="trust-dir-unreadable",
        ) from exc
    except json.JSONDecodeError as exc:
        raise MalformedError(
            f"{root / _POLICY_FILE} is not valid JSON: {exc}.", reason="trust-policy"
        ) from exc
    if not manufacturers:
        raise MalformedError(
            f"The manifest trust directory {root} holds no manufacturer key "
            "(firmware/<vendor-domain>/*.pem); no manifest could be trusted.",
            reason="trust-dir-empty",
        )
    thresholds = _thresholds(policy, root / _POLICY_FILE)
    return ManifestTrust.build(manufacturers, operators, **thresholds)


def _thresholds(policy: object, where: Path) -> dict[str, int]:
    if not isinstance(policy, dict) or not set(policy) <= _POLICY_KEYS:
        raise MalformedError(
            f"{where} must be a JSON object with only {sorted(_POLICY_KEYS)}.",
            reason="trust-policy",
        )
    for key, value in policy.items():
        if type(value) is not int or value < 1:
            raise MalformedError(
                f"{where}: {key} must be a whole number >= 1.", reason="trust-policy"
            )
    return dict(policy)
