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


@migration("0004_manifests")
def _manifests(conn: sqlite3.Connection) -> None:
    # Every verified manifest is kept whole (raw envelope, SBOM included), keyed by the digest of
    # its signed manifest map, so a later copy with more operator approvals replaces the envelope
    # but never adds a second row. Rollback state is its own table (RFC 9124 REQ.SEC.SEQUENCE):
    # the highest sequence number accepted per (vendor, class), and per device the installed one,
    # so neither can go backwards even if manifest rows were ever pruned.
    conn.execute(
        """
        CREATE TABLE manifests (
            digest      BLOB    PRIMARY KEY CHECK (length(digest) = 32),
            vendor      BLOB    NOT NULL CHECK (length(vendor) = 16),
            class       BLOB    NOT NULL CHECK (length(class) = 16),
            seq         INTEGER NOT NULL CHECK (seq >= 0),
            version     TEXT    NOT NULL,
            priority    INTEGER NOT NULL,
            use_before  INTEGER NOT NULL,
            raw         BLOB    NOT NULL,
            received_ms INTEGER NOT NULL,
            UNIQUE (vendor, class, seq)
        ) STRICT
        """
    )
    conn.execute(
        """
        CREATE TABLE manifest_rollback (
            vendor     BLOB    NOT NULL,
            class      BLOB    NOT NULL,
            seq        INTEGER NOT NULL CHECK (seq >= 0),
            digest     BLOB    NOT NULL REFERENCES manifests (digest),
            updated_ms INTEGER NOT NULL,
            PRIMARY KEY (vendor, class)
        ) STRICT
        """
    )
    conn.execute(
        """
        CREATE TABLE device_firmware (
            device_id    TEXT    NOT NULL,
            vendor       BLOB    NOT NULL,
            class        BLOB    NOT NULL,
            seq          INTEGER NOT NULL CHECK (seq >= 0),
            digest       BLOB    NOT NULL CHECK (length(digest) = 32),
            installed_ms INTEGER NOT NULL,
            PRIMARY KEY (device_id, vendor, class)
        ) STRICT
        """
    )


@migration("0005_inventory")
def _inventory(conn: sqlite3.Connection) -> None:
    # The device inventory recalls are matched against (gateway.store.inventory). Serial numbers
    # and lots are also kept split as (text prefix, trailing number) so a recall's serial or lot
    # range is one index range scan (gateway.core.recall.range_key); (vendor, class, version)
    # groups the fleet by firmware, so firmware and SBOM-component rules are decided once per
    # group, not once per device. `version_seq` is the seq of the firmware_update event that set
    # `version` (NULL: the inventory's initial version), so an older report never overwrites it.
    conn.execute(
        """
        CREATE TABLE inventory (
            device_id       TEXT    PRIMARY KEY,
            vendor          BLOB    NOT NULL CHECK (length(vendor) = 16),
            class           BLOB    NOT NULL CHECK (length(class) = 16),
            vendor_domain   TEXT    NOT NULL,
            manufacturer    TEXT    NOT NULL,
            model           TEXT    NOT NULL,
            gtin            TEXT    NOT NULL CHECK (length(gtin) = 14),
            serial          TEXT    NOT NULL,
            serial_prefix   TEXT    NOT NULL,
            serial_num      INTEGER,
            lot             TEXT,
            lot_prefix      TEXT,
            lot_num         INTEGER,
            site            TEXT    NOT NULL,
            department      TEXT    NOT NULL,
            initial_version TEXT,
            version         TEXT,
            version_seq     INTEGER,
            version_ms      INTEGER,
            imported_ms     INTEGER NOT NULL
        ) STRICT
        """
    )
    conn.execute("CREATE INDEX inventory_firmware ON inventory (vendor, class, version)")
    conn.execute(
        "CREATE INDEX inventory_serial ON inventory (vendor, class, serial_prefix, serial_num)"
    )
    conn.execute("CREATE INDEX inventory_lot ON inventory (vendor, class, lot_prefix, lot_num)")
    conn.execute(
        "CREATE INDEX inventory_gtin_serial ON inventory (gtin, serial_prefix, serial_num)"
    )
    conn.execute("CREATE INDEX inventory_gtin_lot ON inventory (gtin, lot_prefix, lot_num)")
    # How far the inventory has read the events table for firmware_update reports.
    conn.execute(
        """
        CREATE TABLE inventory_cursor (
            id         INTEGER PRIMARY KEY CHECK (id = 1),
            last_event INTEGER NOT NULL
        ) STRICT
        """
    )


@migration("0006_recalls")
def _recalls(conn: sqlite3.Connection) -> None:
    # One row per recall id: its latest accepted revision (gateway.store.recalls), the recall map
    # as CBOR (`payload`) and the bytes as received (`raw`: signed envelope or CSAF JSON).
    conn.execute(
        """
        CREATE TABLE recalls (
            recall_id    TEXT    PRIMARY KEY,
            revision     INTEGER NOT NULL CHECK (revision >= 0),
            vendor       BLOB    NOT NULL CHECK (length(vendor) = 16),
            digest       BLOB    NOT NULL CHECK (length(digest) = 32),
            signed       INTEGER NOT NULL CHECK (signed IN (0, 1)),
            signers      TEXT    NOT NULL,
            source       TEXT    NOT NULL CHECK (source IN ('notice', 'csaf')),
            recall_class TEXT    NOT NULL,
            status       TEXT    NOT NULL,
            payload      BLOB    NOT NULL,
            raw          BLOB    NOT NULL,
            notes        TEXT    NOT NULL,
            received_ms  INTEGER NOT NULL
        ) STRICT
        """
    )
    # Per recall and device: which rules matched, and the remediation state the urgent lane
    # moves along (pending -> offered -> installed / failed / unreachable), with timestamps.
    conn.execute(
        """
        CREATE TABLE recall_impacts (
            recall_id      TEXT    NOT NULL REFERENCES recalls (recall_id),
            device_id      TEXT    NOT NULL,
            matches        TEXT    NOT NULL,
            state          TEXT    NOT NULL CHECK (state IN
                               ('pending', 'offered', 'installed', 'failed', 'unreachable')),
            attempts       INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
            matched_ms     INTEGER NOT NULL,
            offered_ms     INTEGER,
            installed_ms   INTEGER,
            failed_ms      INTEGER,
            unreachable_ms INTEGER,
            detail         TEXT,
            updated_ms     INTEGER NOT NULL,
            PRIMARY KEY (recall_id, device_id)
        ) STRICT, WITHOUT ROWID
        """
    )
    conn.execute("CREATE INDEX recall_impacts_state ON recall_impacts (recall_id, state)")
    # The SBOM components of every kept firmware manifest, precomputed once per manifest, so a
    # component rule is one indexed lookup per (vendor, purl) instead of parsing SBOMs per query.
    conn.execute(
        """
        CREATE TABLE sbom_index (
            digest     BLOB    PRIMARY KEY CHECK (length(digest) = 32),
            vendor     BLOB    NOT NULL,
            class      BLOB    NOT NULL,
            version    TEXT    NOT NULL,
            components INTEGER NOT NULL,
            indexed_ms INTEGER NOT NULL
        ) STRICT
        """
    )
    conn.execute("CREATE INDEX sbom_index_group ON sbom_index (vendor, class, version)")
    conn.execute(
        """
        CREATE TABLE sbom_components (
            digest       BLOB NOT NULL REFERENCES sbom_index (digest),
            vendor       BLOB NOT NULL,
            class        BLOB NOT NULL,
            version      TEXT NOT NULL,
            purl         TEXT NOT NULL,
            subpath      TEXT NOT NULL,
            comp_version TEXT NOT NULL
        ) STRICT
        """
    )
    conn.execute("CREATE INDEX sbom_components_purl ON sbom_components (vendor, purl)")


@migration("0007_urgent_lane")
def _urgent_lane(conn: sqlite3.Connection) -> None:
    # The urgent lane's records (gateway.service.urgent, gateway.service.remediation): one row per
    # recall accepted, offer sent, device report applied, timeout, and full SBOM verdict, with the
    # SHA-256 of the bytes it stands for and the salt of its transparency-log commitment (kept
    # here, beside the record: destroying it crypto-shreds the record). `leaf` is NULL until the
    # recorder thread has appended the row to the log, off the urgent path.
    conn.execute(
        """
        CREATE TABLE urgent_records (
            id        INTEGER PRIMARY KEY,
            kind      TEXT    NOT NULL CHECK (kind IN ('recall', 'remediation', 'sbom-verdict')),
            recall_id TEXT,
            device_id TEXT,
            manifest  BLOB    CHECK (manifest IS NULL OR length(manifest) = 32),
            state     TEXT    NOT NULL,
            detail    TEXT,
            at_ms     INTEGER NOT NULL,
            digest    BLOB    NOT NULL CHECK (length(digest) = 32),
            salt      BLOB    NOT NULL CHECK (length(salt) = 32),
            leaf      INTEGER
        ) STRICT
        """
    )
    conn.execute("CREATE INDEX urgent_records_unlogged ON urgent_records (id) WHERE leaf IS NULL")
    conn.execute("CREATE INDEX urgent_records_recall ON urgent_records (recall_id, device_id)")
    # How far the remediation tracker has read the events table for firmware_update reports
    # (its own cursor: the inventory keeps another).
    conn.execute(
        """
        CREATE TABLE remediation_cursor (
            id         INTEGER PRIMARY KEY CHECK (id = 1),
            last_event INTEGER NOT NULL
        ) STRICT
        """
    )


@migration("0008_manifest_offers")
def _manifest_offers(conn: sqlite3.Connection) -> None:
    # Offers of an urgent manifest that no recall names (gateway.store.offers): per manifest
    # digest and device, the same states as a recall's remediation (offered -> installed /
    # failed / unreachable), so `provgw recall status manifest:<digest>` can show them. No
    # foreign key to `manifests`: offers stand even when a newer manifest of the class won the
    # race to be kept (devices check rollback themselves).
    conn.execute(
        """
        CREATE TABLE manifest_offers (
            manifest       BLOB    NOT NULL CHECK (length(manifest) = 32),
            device_id      TEXT    NOT NULL,
            state          TEXT    NOT NULL CHECK (state IN
                               ('offered', 'installed', 'failed', 'unreachable')),
            attempts       INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
            first_ms       INTEGER NOT NULL,
            offered_ms     INTEGER,
            installed_ms   INTEGER,
            failed_ms      INTEGER,
            unreachable_ms INTEGER,
            detail         TEXT,
            updated_ms     INTEGER NOT NULL,
            PRIMARY KEY (manifest, device_id)
        ) STRICT, WITHOUT ROWID
        """
    )
    conn.execute("CREATE INDEX manifest_offers_device ON manifest_offers (device_id, state)")
    conn.execute("CREATE INDEX manifest_offers_state ON manifest_offers (state, offered_ms)")


@migration("0009_devices_last_seq_derived")
def _devices_last_seq_derived(conn: sqlite3.Connection) -> None:
    # A device's highest stored seq is max(seq) over the events (device_id, seq) index, read
    # when asked (gateway.store.devices). Keeping it in `devices` meant rewriting one wide row
    # (certificate and chain) per device per ingest batch: ~10 us an event with 1,000 devices.
    conn.execute("ALTER TABLE devices DROP COLUMN last_seq")


@migration("0010_revocation_counts")
def _revocation_counts(conn: sqlite3.Connection) -> None:
    # Every ingest batch counts retired keys and revoked devices to see whether its key cache
    # went stale (gateway.service.ingest StoreBackedRegistry.refresh). Without these partial
    # indexes that is a scan of both tables, certificates included (~1 us an event with 1,000
    # devices, measured); with them it reads only the few rows that are retired or revoked.
    conn.execute(
        "CREATE INDEX device_keys_retired ON device_keys (valid_to_ms)"
        " WHERE valid_to_ms IS NOT NULL"
    )
    conn.execute(
        "CREATE INDEX devices_revoked ON devices (revoked_ms) WHERE revoked_ms IS NOT NULL"
    )


@migration("0011_recall_impacts_by_device")
def _recall_impacts_by_device(conn: sqlite3.Connection) -> None:
    # Every firmware report the urgent lane applies looks up the device's open recalls
    # (gateway.service.remediation, RemediationTracker._apply). The primary key starts with
    # recall_id, so without this index that was a scan of every impact row, inside the lane's
    # write transaction: 1.44 ms a report with three recalls of 20,000 devices each (measured),
    # more than a second of CPU a second at 1,300 reports/s, with ingest waiting on the write
    # lock. With it: 6.8 us. (device_id, state): the query reads recall_id and state only, and
    # an index of a WITHOUT ROWID table carries the primary key, so it is covering.
    conn.execute("CREATE INDEX recall_impacts_device ON recall_impacts (device_id, state)")


@migration("0012_offers_awaiting_a_report")
def _offers_awaiting_a_report(conn: sqlite3.Connection) -> None:
    # The urgent lane asks every tick (0.25 s) which recall offers timed out
    # (gateway.service.remediation, RemediationTracker.due). That read every impact row: 16.6 ms a
    # tick with 20,000 offers awaiting a report (measured), 7 % of a core for as long as a campaign
    # lasts. With this it reads only the offers sent at least one timeout ago, the only ones that
    # can be due. (Manifest offers have their (state, offered_ms) index since 0008.)
    conn.execute(
        "CREATE INDEX recall_impacts_offered ON recall_impacts (offered_ms) WHERE state = 'offered'"
    )


@migration("0013_firmware_reports")
def _firmware_reports(conn: sqlite3.Connection) -> None:
    # Every tick (0.25 s) the urgent lane reads the firmware_update reports stored since its
    # cursors (gateway.store.inventory, gateway.service.remediation). Without this index that
    # read every event since the cursor, to look at its type: with 10 % firmware reports, nine
    # rows read for each one wanted, twice a tick. With it only the reports are read: the lane's
    # CPU per ingested event 4 -> 3 us at ~10,000 events/s (bench.ab_ingest, two runs; the rest
    # is applying the reports). Partial, so the other 90 % of inserts do not touch it; the
    # queries repeat its WHERE term, which is what lets SQLite use it.
    conn.execute(
        "CREATE INDEX events_firmware_reports ON events (id) WHERE type = 'firmware_update'"
    )


@migration("0014_events_payload_from_raw")
def _events_payload_from_raw(conn: sqlite3.Connection) -> None:
    # `payload` was a copy of the COSE payload inside `raw`: ~30 % of an event's row (bytes
    # written, WAL frames, checkpoints, disk), and a copy nobody signed, which the urgent lane
    # read while the log and the audits read `raw`. Readers now take it from `raw`
    # (gateway.store.events.signed_payload).
    conn.execute("ALTER TABLE events DROP COLUMN payload")


@migration("0015_quarantine_released")
def _quarantine_released(conn: sqlite3.Connection) -> None:
    # `provgw quarantine retry` (gateway.service.quarantine) verifies a quarantined message again
    # once its cause is fixed (a manufacturer CA added to the trust folder, say). One that then
    # verifies is stored as an event, and its quarantine row is kept, marked released: when, and
    # as which event. The row stays as the record of what arrived and why it was first refused.
    # Readers list the open rows by default, through the partial index.
    conn.execute("ALTER TABLE quarantine ADD COLUMN released_ms INTEGER")
    conn.execute("ALTER TABLE quarantine ADD COLUMN event_id INTEGER")
    conn.execute("CREATE INDEX quarantine_open ON quarantine (id) WHERE released_ms IS NULL")


@migration("0016_quarantine_overflow")
def _quarantine_overflow(conn: sqlite3.Connection) -> None:
    # Refusals past a device's quarantine budget (`[ingest] quarantine_per_device_hour`): counted
    # here per device, reason and clock hour instead of kept one row each with their bytes, so
    # that one device flooding junk cannot fill the gateway's disk (an SD card, often) and stop
    # ingest for every other device. Nothing is dropped unseen: each refusal is counted, with
    # its size, and the time of the first and last. '' stands for "no device in the topic".
    conn.execute(
        """
        CREATE TABLE quarantine_overflow (
            device_hint TEXT    NOT NULL,
            reason      TEXT    NOT NULL,
            hour_ms     INTEGER NOT NULL,
            messages    INTEGER NOT NULL,
            bytes       INTEGER NOT NULL,
            first_ms    INTEGER NOT NULL,
            last_ms     INTEGER NOT NULL,
            PRIMARY KEY (device_hint, reason, hour_ms)
        ) STRICT, WITHOUT ROWID
        """
    )
