"""Enrolled devices and their key history: the persistent side of the device registry.

Plain rows only (device id, manufacturer, kid, certificate DER, chain DER list): verifying a
certificate chain or a rotation event is ``gateway.core``'s job; this module records the outcome
so it survives a restart, and enforces the invariants a database can enforce:

- a key id belongs to at most one device, ever (``device_keys.kid`` is the primary key), so a
  retired or foreign key can never be re-enrolled under another device (key substitution);
- a device's key changes only through :meth:`DeviceStore.rotate` (DESIGN: "key rotation is an
  event signed by the old key"), never by enrolling again with another key;
- a revoked device is neither re-enrolled nor rotated.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cbor2

from gateway.core.errors import PolicyError, RevokedError, UntrustedSignerError, VerificationError
from gateway.core.identity import verify_device_chain
from gateway.store.db import Database

if TYPE_CHECKING:
    from datetime import datetime

    from gateway.core.identity import DeviceIdentity, TrustStore

__all__ = ["DeviceKey", "DeviceRow", "DeviceStore", "Standing", "StandingCache"]

_SELECT_DEVICES = (
    "SELECT device_id, manufacturer, kid, cert, chain, enrolled_ms,"
    " (SELECT max(seq) FROM events WHERE events.device_id = devices.device_id), revoked_ms,"
    " rotated_from_kid,"
    " (SELECT reason FROM device_revocations r WHERE r.device_id = devices.device_id)"
    " FROM devices"
)


#: Device ids per read in :meth:`DeviceStore.get_many` (well under SQLite's variable limit).
_MANY_CHUNK = 500


@dataclass(frozen=True)
class DeviceRow:
    """One enrolled device and its current key; ``chain`` holds the DER certificates above it."""

    device_id: str
    manufacturer: str
    kid: bytes
    cert: bytes
    chain: tuple[bytes, ...]
    enrolled_ms: int
    last_seq: int | None
    revoked_ms: int | None
    rotated_from_kid: bytes | None
    #: Why the site revoked it (``provgw device revoke --reason``; its logged record).
    revoked_reason: str | None = None

    @property
    def revoked(self) -> bool:
        """Whether the device has been revoked."""
        return self.revoked_ms is not None

    def standing(self, trust: TrustStore, now: datetime) -> Standing:
        """Return what *trust* says of the device's current certificate chain at *now*.

        The stored chain is checked as the gateway checks it when it loads a device
        (:func:`~gateway.core.identity.verify_device_chain`): a manufacturer's CRL, a root taken
        out of the trust folder or a certificate out of date refuse it there, whatever this site
        decided (:attr:`revoked` is the site's own revocation).
        """
        return Standing.of([self.cert, *self.chain], trust, now)


@dataclass(frozen=True)
class Standing:
    """A trust folder's verdict on a device's certificate chain at one time."""

    #: Why the gateway refuses the chain (and so every message the device signs), or ``None``.
    refusal: VerificationError | None
    #: Until when an accepted chain stays valid: the earliest ``notAfter`` on its path (the
    #: device's certificate, its CAs); from then it is refused as ``expired``.
    valid_until: datetime | None

    @classmethod
    def of(cls, chain: Sequence[bytes], trust: TrustStore, now: datetime) -> Standing:
        """Verify the DER *chain* (the device's certificate first) against *trust* at *now*."""
        try:
            identity = verify_device_chain(chain, trust, now)
        except VerificationError as err:
            return cls(err, None)
        return cls.accepted(identity)

    @classmethod
    def accepted(cls, identity: DeviceIdentity) -> Standing:
        """Return the standing of a chain that verified as *identity*."""
        path = (identity.certificate, *identity.issuers)
        return cls(None, min(cert.not_valid_after_utc for cert in path))

    def to_json(self) -> dict[str, Any]:
        """``provgw device show --json``'s and the web UI's form."""
        return {
            "accepted": self.refusal is None,
            "valid_until": None if self.valid_until is None else self.valid_until.isoformat(),
            "reason": None if self.refusal is None else self.refusal.reason,
            "detail": None if self.refusal is None else str(self.refusal),
        }


class StandingCache:
    """:meth:`DeviceRow.standing` for reads again and again (the web UI's pages), cheaply.

    A chain is verified once per trust store (about 0.6 ms a device, measured); after that only
    what moves with time is checked again, the dates and the CRLs
    (:meth:`~gateway.core.identity.TrustStore.check_still_valid`, as the verifiers do: under
    a microsecond). So a page of thousands of devices costs that once, then next to nothing,
    and the verdicts are those of :meth:`DeviceRow.standing`. A new trust store (the folder
    changed) starts over. Thread-safe; at most *max_entries* chains are kept (then it starts
    over: a miss only costs the verification again).
    """

    def __init__(self, max_entries: int = 20_000) -> None:
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._trust: TrustStore | None = None
        self._identities: dict[bytes, DeviceIdentity] = {}

    def standing(self, row: DeviceRow, trust: TrustStore, now: datetime) -> Standing:
        """Return ``row.standing(trust, now)``, from what this cache verified before if it can."""
        with self._lock:
            if trust is not self._trust:
                self._trust, self._identities = trust, {}
            identity = self._identities.get(row.cert)
        if identity is None:
            try:
                identity = verify_device_chain([row.cert, *row.chain], trust, now)
            except VerificationError as err:
                return Standing(err, None)  # refused: not kept, the next read checks it in full
            with self._lock:
                if trust is self._trust:
                    if len(self._identities) >= self.max_entries:
                        self._identities.clear()
                    self._identities[row.cert] = identity
            return Standing.accepted(identity)
        try:
            trust.check_still_valid(identity, now)
        except VerificationError as err:
            return Standing(err, None)
        return Standing.accepted(identity)


@dataclass(frozen=True)
class DeviceKey:
    """One key a device has had; ``valid_to_ms`` is ``None`` for the current key."""

    kid: bytes
    device_id: str
    cert: bytes
    valid_from_ms: int
    valid_to_ms: int | None


def _device(row: Sequence[Any]) -> DeviceRow:
    chain = cbor2.loads(row[4])
    return DeviceRow(row[0], row[1], row[2], row[3], tuple(chain), *row[5:])


def _kid_owner(conn: sqlite3.Connection, kid: bytes) -> str | None:
    row = conn.execute("SELECT device_id FROM device_keys WHERE kid = ?", (kid,)).fetchone()
    return None if row is None else str(row[0])


class DeviceStore:
    """Enrolled devices, looked up by device id or by key id (the COSE ``kid``)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def enrol(  # noqa: PLR0913 - one argument per stored column, all keyword-only
        self,
        *,
        device_id: str,
        manufacturer: str,
        kid: bytes,
        cert: bytes,
        chain: Sequence[bytes],
        now_ms: int,
    ) -> DeviceRow:
        """Enrol a device, or refresh its certificate and chain when it re-enrols with its key.

        Raises :class:`PolicyError` (``kid-in-use``) if *kid* belongs to another device or to
        one of this device's retired keys, :class:`PolicyError` (``kid-changed``) if the device
        is enrolled with another key, and :class:`RevokedError` if the device was revoked.
        """
        chain_blob = cbor2.dumps([bytes(c) for c in chain])
        with self._db.atomic() as conn:
            current = conn.execute(
                _SELECT_DEVICES + " WHERE device_id = ?", (device_id,)
            ).fetchone()
            owner = _kid_owner(conn, kid)
            if current is None:
                if owner is not None:
                    raise _kid_in_use(kid, owner)
                conn.execute(
                    "INSERT INTO devices (device_id, manufacturer, kid, cert, chain, enrolled_ms)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (device_id, manufacturer, kid, cert, chain_blob, now_ms),
                )
                conn.execute(
                    "INSERT INTO device_keys (kid, device_id, cert, valid_from_ms)"
                    " VALUES (?, ?, ?, ?)",
                    (kid, device_id, cert, now_ms),
                )
            else:
                existing = _device(current)
                if existing.revoked:
                    raise _revoked(device_id)
                if existing.kid != kid:
                    if owner is not None:
                        raise _kid_in_use(kid, owner)
                    raise PolicyError(
                        f"Device {device_id} is already enrolled with another key; a new key is "
                        "accepted only through a key-rotation event signed by the current key.",
                        reason="kid-changed",
                    )
                conn.execute(
                    "UPDATE devices SET manufacturer = ?, cert = ?, chain = ? WHERE device_id = ?",
                    (manufacturer, cert, chain_blob, device_id),
                )
                conn.execute("UPDATE device_keys SET cert = ? WHERE kid = ?", (cert, kid))
            row = conn.execute(_SELECT_DEVICES + " WHERE device_id = ?", (device_id,)).fetchone()
        return _device(row)

    def rotate(
        self,
        device_id: str,
        *,
        new_kid: bytes,
        new_cert: bytes,
        new_chain: Sequence[bytes],
        now_ms: int,
    ) -> DeviceRow:
        """Replace a device's key after core verified the rotation event signed by the old key.

        The old key is closed in the key history at *now_ms* and recorded as
        ``rotated_from_kid``. Raises :class:`UntrustedSignerError` for an unknown device,
        :class:`RevokedError` for a revoked one, :class:`PolicyError` (``kid-in-use``) if
        *new_kid* was ever used before.
        """
        chain_blob = cbor2.dumps([bytes(c) for c in new_chain])
        with self._db.atomic() as conn:
            current = conn.execute(
                _SELECT_DEVICES + " WHERE device_id = ?", (device_id,)
            ).fetchone()
            if current is None:
                raise UntrustedSignerError(
                    f"Device {device_id} is not enrolled, so it has no key to rotate; enrol it "
                    "first.",
                    reason="unknown-device",
                )
            existing = _device(current)
            if existing.revoked:
                raise _revoked(device_id)
            owner = _kid_owner(conn, new_kid)
            if owner is not None:
                raise _kid_in_use(new_kid, owner)
            conn.execute(
                "UPDATE device_keys SET valid_to_ms = ? WHERE kid = ?", (now_ms, existing.kid)
            )
            conn.execute(
                "INSERT INTO device_keys (kid, device_id, cert, valid_from_ms) VALUES (?, ?, ?, ?)",
                (new_kid, device_id, new_cert, now_ms),
            )
            conn.execute(
                "UPDATE devices SET kid = ?, cert = ?, chain = ?, rotated_from_kid = ?"
                " WHERE device_id = ?",
                (new_kid, new_cert, chain_blob, existing.kid, device_id),
            )
            row = conn.execute(_SELECT_DEVICES + " WHERE device_id = ?", (device_id,)).fetchone()
        return _device(row)

    def revoke(self, device_id: str, *, now_ms: int) -> bool:
        """Mark a device revoked at *now_ms*; return ``False`` if it is not enrolled.

        Revoking twice keeps the first time: the earliest revocation is the one that counts for
        judging what the device signed afterwards. (``provgw device revoke`` calls this through
        :func:`gateway.ledger.log.revoke_device`, which also logs it.)
        """
        with self._db.atomic() as conn:
            cursor = conn.execute(
                "UPDATE devices SET revoked_ms = coalesce(revoked_ms, ?) WHERE device_id = ?",
                (now_ms, device_id),
            )
            return cursor.rowcount == 1

    def revoked_ids(self) -> list[str]:
        """Return the ids of every revoked device, sorted (``provgw broker-acl`` denies them)."""
        rows = self._db.query(
            "SELECT device_id FROM devices WHERE revoked_ms IS NOT NULL ORDER BY device_id"
        )
        return [str(r[0]) for r in rows]

    def revoked_by(
        self,
        trust: TrustStore,
        now: datetime,
        progress: Callable[[int, int], object] = lambda _done, _total: None,
    ) -> list[tuple[str, str]]:
        """Return ``(device_id, why)`` for every device not revoked here that *trust* revokes.

        That is: whose current certificate, or the CA that issued it, a CRL of *trust* lists.
        Each stored chain is checked as the gateway checks it when it loads a device
        (:func:`~gateway.core.identity.verify_device_chain` at *now*), so these are the devices
        it refuses as ``revoked``; *why* is the core's sentence. Sorted by device id. Other
        refusals (a root taken out, a certificate out of date) are not revocations: not listed.
        About half a millisecond a device (measured, 1,008 devices): *progress(done, total)* is
        called after each.
        """
        rows = self._db.query(_SELECT_DEVICES + " WHERE revoked_ms IS NULL ORDER BY device_id")
        found = []
        for done, row in enumerate(map(_device, rows), start=1):
            progress(done, len(rows))
            refusal = row.standing(trust, now).refusal
            if isinstance(refusal, RevokedError):  # other refusals: not revocations (above)
                found.append((row.device_id, str(refusal)))
        return found

    def get_many(self, device_ids: Sequence[str]) -> dict[str, DeviceRow]:
        """Return the enrolled devices among *device_ids*, by id (one read per 500 ids)."""
        found: dict[str, DeviceRow] = {}
        for start in range(0, len(device_ids), _MANY_CHUNK):
            chunk = device_ids[start : start + _MANY_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._db.query(_SELECT_DEVICES + f" WHERE device_id IN ({marks})", chunk)
            found.update((row.device_id, row) for row in map(_device, rows))
        return found

    def get(self, device_id: str) -> DeviceRow | None:
        """Return the enrolled device *device_id*, or ``None``."""
        rows = self._db.query(_SELECT_DEVICES + " WHERE device_id = ?", (device_id,))
        return _device(rows[0]) if rows else None

    def by_kid(self, kid: bytes) -> DeviceRow | None:
        """Return the device whose CURRENT key is *kid*, or ``None`` (retired keys match nothing).

        Use :meth:`key_owner` to attribute a retired key.
        """
        rows = self._db.query(_SELECT_DEVICES + " WHERE kid = ?", (kid,))
        return _device(rows[0]) if rows else None

    def key_owner(self, kid: bytes) -> DeviceKey | None:
        """Return the key-history entry for *kid* (current or retired), or ``None``."""
        rows = self._db.query(
            "SELECT kid, device_id, cert, valid_from_ms, valid_to_ms FROM device_keys"
            " WHERE kid = ?",
            (kid,),
        )
        return DeviceKey(*rows[0]) if rows else None

    def key_history(self, device_id: str) -> list[DeviceKey]:
        """Return every key *device_id* has had, oldest first."""
        rows = self._db.query(
            "SELECT kid, device_id, cert, valid_from_ms, valid_to_ms FROM device_keys"
            " WHERE device_id = ? ORDER BY valid_from_ms, rowid",
            (device_id,),
        )
        return [DeviceKey(*row) for row in rows]

    def last_seq(self, device_id: str) -> int | None:
        """Return the highest seq stored for an enrolled device, ``None`` if none or unknown."""
        # Read from the events' (device_id, seq) index; a device not enrolled has none.
        rows = self._db.query(
            "SELECT (SELECT max(seq) FROM events WHERE device_id = ?1) FROM devices"
            " WHERE device_id = ?1",
            (device_id,),
        )
        return None if not rows or rows[0][0] is None else int(rows[0][0])


def _kid_in_use(kid: bytes, owner: str) -> PolicyError:
    return PolicyError(
        f"Key id {kid.hex()} already belongs to device {owner} (now or in the past); a key id is "
        "never reused, so this enrolment is refused.",
        reason="kid-in-use",
    )


def _revoked(device_id: str) -> RevokedError:
    return RevokedError(
        f"Device {device_id} has been revoked; its identity cannot be re-enrolled or rotated.",
        reason="revoked",
    )
