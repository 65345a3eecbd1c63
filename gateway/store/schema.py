"""Store tables for events, quarantine and devices, as numbered migrations.

Tables are ``STRICT`` (SQLite 3.37+), so a value of the wrong type is refused by SQLite itself
instead of being stored and surprising a verifier later. Shipped migrations are never edited: a
change is a new numbered function.

Events are append-only and never deleted: crypto-shredding (DESIGN, transparency log) destroys a
row's ``salt`` (and later its data key), which is why ``salt`` is the only nullable secret.
"""

from __future__ import annotations

import sqlite3

from gateway.store.db import migration

__all__: list[str] = []


@migration("0001_events")
def _events(conn: sqlite3.Connection) -> None:
    # (device_id, seq) is unique (DESIGN, wire format): a QoS 1 redelivery is absorbed, and the
    # UNIQUE index doubles as the index for a device's history ordered by seq.
    conn.execute(
        """
        CREATE TABLE events (
            id            INTEGER PRIMARY KEY,
            device_id     TEXT    NOT NULL,
            seq           INTEGER NOT NULL CHECK (seq >= 0),
            type          TEXT    NOT NULL,
            event_time_ms INTEGER NOT NULL,
            received_ms   INTEGER NOT NULL,
            site          TEXT    NOT NULL,
            topic         TEXT    NOT NULL,
            raw           BLOB    NOT NULL,
            digest        BLOB    NOT NULL CHECK (length(digest) = 32),
            payload       BLOB    NOT NULL,
            salt          BLOB             CHECK (salt IS NULL OR length(salt) = 32),
            UNIQUE (device_id, seq)
        ) STRICT
        """
    )


@migration("0002_quarantine")
def _quarantine(conn: sqlite3.Connection) -> None:
    # Refused input is kept, with the machine reason and the human sentence, so an engineer can
    # see what a device or an attacker sent; nothing here is ever treated as valid.
    conn.execute(
        """
        CREATE TABLE quarantine (
            id          INTEGER PRIMARY KEY,
            received_ms INTEGER NOT NULL,
            topic       TEXT    NOT NULL,
            raw         BLOB    NOT NULL,
            reason      TEXT    NOT NULL,
            detail      TEXT    NOT NULL,
            device_hint TEXT
        ) STRICT
        """
    )
    conn.execute("CREATE INDEX quarantine_reason ON quarantine (reason)")
    conn.execute("CREATE INDEX quarantine_device_hint ON quarantine (device_hint)")


@migration("0003_devices")
def _devices(conn: sqlite3.Connection) -> None:
    # One row per device with its current key; device_keys keeps every key the device ever had,
    # so a kid is never reused (PRIMARY KEY) and an old signature can be attributed after a
    # rotation (DESIGN: "key rotation is an event signed by the old key").
    conn.execute(
        """
        CREATE TABLE devices (
            device_id        TEXT    PRIMARY KEY,
            manufacturer     TEXT    NOT NULL,
            kid              BLOB    NOT NULL UNIQUE,
            cert             BLOB    NOT NULL,
            chain            BLOB    NOT NULL,
            enrolled_ms      INTEGER NOT NULL,
            last_seq         INTEGER,
            revoked_ms       INTEGER,
            rotated_from_kid BLOB
        ) STRICT
        """
    )
    conn.execute(
        """
        CREATE TABLE device_keys (
            kid           BLOB    PRIMARY KEY,
            device_id     TEXT    NOT NULL REFERENCES devices (device_id),
            cert          BLOB    NOT NULL,
            valid_from_ms INTEGER NOT NULL,
            valid_to_ms   INTEGER,
            CHECK (valid_to_ms IS NULL OR valid_to_ms >= valid_from_ms)
        ) STRICT
        """
    )
    conn.execute("CREATE INDEX device_keys_device ON device_keys (device_id)")
