"""Tables of the transparency log's Merkle tree, as numbered migrations.

The tree (RFC 9162 §2.1, :mod:`gateway.ledger.tree`) stores the hash of every *complete* subtree
as it completes: ``(level, idx)`` covers leaves ``[idx << level, (idx + 1) << level)``, level 0
being the leaf hashes. A tree of n leaves holds 2n - popcount(n) rows, an append writes at most
log2(n) + 1 of them, and any root or proof needs O(log n) point reads. Rows are never updated or
deleted: the log is append-only, and a row once written is the same forever.
"""

from __future__ import annotations

import sqlite3

from gateway.store.db import migration

__all__: list[str] = []


@migration("log_0001_tree")
def _tree(conn: sqlite3.Connection) -> None:
    # WITHOUT ROWID: the (level, idx) key is the row, so each lookup is one B-tree descent and
    # the table is no larger than the data. STRICT + CHECK: a hash of the wrong length or a
    # negative coordinate is refused by SQLite, never stored.
    conn.execute(
        """
        CREATE TABLE log_nodes (
            level INTEGER NOT NULL CHECK (level BETWEEN 0 AND 63),
            idx   INTEGER NOT NULL CHECK (idx >= 0),
            hash  BLOB    NOT NULL CHECK (length(hash) = 32),
            PRIMARY KEY (level, idx)
        ) STRICT, WITHOUT ROWID
        """
    )


@migration("log_0002_leaves_checkpoints")
def _leaves_checkpoints(conn: sqlite3.Connection) -> None:
    # What each leaf commits to (gateway.ledger.log): the record kind, the row it stands for in
    # that kind's table, and the salted commitment whose RFC 9162 leaf hash is log_nodes level 0
    # at the same idx. UNIQUE (kind, ref_id): a record is logged once, so the tail of the events
    # table restarts exactly after the last committed leaf (kill -9 loses and repeats nothing).
    conn.execute(
        """
        CREATE TABLE log_leaves (
            idx        INTEGER PRIMARY KEY CHECK (idx >= 0),
            kind       TEXT    NOT NULL,
            ref_id     INTEGER NOT NULL,
            commitment BLOB    NOT NULL CHECK (length(commitment) = 32),
            UNIQUE (kind, ref_id)
        ) STRICT
        """
    )
    # Every checkpoint the gateway ever signed (C2SP tlog-checkpoint in a signed note), one per
    # tree size: "a log never signs two inconsistent checkpoints" is checked against this table
    # before each new signature, and `provgw log verify` re-checks all of it.
    conn.execute(
        """
        CREATE TABLE checkpoints (
            size      INTEGER PRIMARY KEY CHECK (size > 0),
            root      BLOB    NOT NULL CHECK (length(root) = 32),
            note      BLOB    NOT NULL,
            signed_ms INTEGER NOT NULL
        ) STRICT
        """
    )
    # How strong each checkpoint has become (logged -> witnessed -> anchored): the witnesses'
    # cosignature lines (C2SP tlog-cosignature, appended to the note in receipts) and the chain
    # anchor. Filled by the witness client and the chain outbox through TransparencyLog.
    conn.execute(
        """
        CREATE TABLE checkpoint_status (
            size           INTEGER PRIMARY KEY REFERENCES checkpoints (size),
            cosignatures   TEXT    NOT NULL DEFAULT '',
            witnessed_ms   INTEGER,
            anchor_chain   TEXT,
            anchored_tx    BLOB,
            anchored_block INTEGER,
            anchored_ms    INTEGER
        ) STRICT
        """
    )
    # Crypto-shredding (DESIGN, transparency log): one row per erased event. The erasure is
    # itself a log leaf (kind "erasure") committing to (event id, SHA-256(reason), time) under
    # its own salt; the reason text stays here, in the gateway, never in the log.
    conn.execute(
        """
        CREATE TABLE erasures (
            id            INTEGER PRIMARY KEY,
            event_id      INTEGER NOT NULL UNIQUE REFERENCES events (id),
            reason        TEXT    NOT NULL,
            reason_digest BLOB    NOT NULL CHECK (length(reason_digest) = 32),
            erased_ms     INTEGER NOT NULL,
            salt          BLOB    NOT NULL CHECK (length(salt) = 32)
        ) STRICT
        """
    )


@migration("log_0101_anchor_outbox")
def _anchor_outbox(conn: sqlite3.Connection) -> None:
    # The durable chain-anchor outbox (gateway.service.outbox): one row per checkpoint handed to
    # it, so anchors survive a restart and a chain outage. status: pending (to send) -> sent (tx
    # hash known, waiting for its block) -> confirmed (block recorded); or superseded (a later
    # head of the same log was anchored instead: by RFC 9162 consistency it covers this one).
    # UNIQUE (log_id, size): a checkpoint is queued once however often it is handed over.
    # The origin stays here, in the gateway; only log_id = SHA-256(origin) goes on chain.
    conn.execute(
        """
        CREATE TABLE anchor_outbox (
            id              INTEGER PRIMARY KEY,
            origin          TEXT    NOT NULL,
            log_id          BLOB    NOT NULL CHECK (length(log_id) = 32),
            size            INTEGER NOT NULL CHECK (size >= 0),
            root            BLOB    NOT NULL CHECK (length(root) = 32),
            status          TEXT    NOT NULL DEFAULT 'pending'
                            CHECK (status IN ('pending', 'sent', 'confirmed', 'superseded')),
            enqueued_ms     INTEGER NOT NULL,
            attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
            next_attempt_ms INTEGER NOT NULL,
            tx_hash         BLOB    CHECK (tx_hash IS NULL OR length(tx_hash) = 32),
            sent_ms         INTEGER,
            block_number    INTEGER,
            confirmed_ms    INTEGER,
            last_error      TEXT,
            UNIQUE (log_id, size)
        ) STRICT
        """
    )
    # The worker only ever looks at open rows, a handful per log: this partial index keeps each
    # of its queries O(log n) however many confirmed rows pile up (queries repeat the exact
    # "status IN ('pending', 'sent')" term so SQLite may use it).
    conn.execute(
        "CREATE INDEX anchor_outbox_open ON anchor_outbox (log_id, size) "
        "WHERE status IN ('pending', 'sent')"
    )


@migration("log_0102_checkpoint_strength_indexes")
def _checkpoint_strength_indexes(conn: sqlite3.Connection) -> None:
    # TransparencyLog.covering_checkpoint picks, for every receipt and every event on a device
    # page, the strongest checkpoint holding a leaf: the newest anchored-and-witnessed one, else
    # the newest anchored, else the newest witnessed, else the newest. A gateway seals a
    # checkpoint every 1,000 entries or 300 s (over 100k a year), so each pick must be a max()
    # read from one end of an index, O(log n), not a sort of every checkpoint. Partial indexes
    # hold only the rows each max() reads (queries repeat these exact WHERE terms so SQLite may
    # use them).
    for name, where in (
        ("anchored_witnessed", "anchored_tx IS NOT NULL AND cosignatures != ''"),
        ("anchored", "anchored_tx IS NOT NULL"),
        ("witnessed", "cosignatures != ''"),
    ):
        conn.execute(
            f"CREATE INDEX checkpoint_status_{name} ON checkpoint_status (size) WHERE {where}"
        )


@migration("log_0103_witnessed_means_quorum")
def _witnessed_means_quorum(conn: sqlite3.Connection) -> None:
    # "Witnessed" means the checkpoint reached the consortium's witness quorum ([witnesses]
    # quorum, k of n: C2SP tlog-cosignature, a split view is only stopped by a quorum), not "has
    # a cosignature". Until now witnessed_ms was set at the FIRST cosignature kept, and the
    # partial indexes of log_0102 selected rows by "cosignatures != ''", so a checkpoint cosigned
    # by 1 of 3 required witnesses was called witnessed. From now on witnessed_ms is the moment
    # the quorum was reached (TransparencyLog.mark_witnessed); cosignature lines below the quorum
    # are still kept, just not counted as witnessed.
    #
    # Existing rows: the quorum a row's cosignatures reached is unknown here (the witness names
    # and the quorum live in gateway.toml, not in this file), so:
    # - anchored rows keep witnessed_ms: the ledger service queues an anchor only after the
    #   quorum is met, so they certainly reached it;
    # - every other row loses witnessed_ms (it is "logged" until re-counted), because claiming a
    #   quorum that may never have been reached is the error being fixed; under-claiming for a
    #   while is the safe side. Their cosignature lines are kept untouched.
    # The ledger service re-counts them at its next start (WitnessRounds.recover): each
    # non-anchored checkpoint with cosignatures is counted against the configured witness names
    # and quorum, and marked witnessed (at that start's time) when it reaches it, so nothing that
    # truly reached the quorum stays downgraded after a restart. Until then a receipt's verified
    # state (provgw log prove with the witness keys) is unaffected: it never read witnessed_ms.
    conn.execute("UPDATE checkpoint_status SET witnessed_ms = NULL WHERE anchored_tx IS NULL")
    # Same index names as log_0102 (TransparencyLog's _STRONGEST_SIZES names them in INDEXED BY),
    # new WHERE terms: max(size) over quorum-witnessed rows stays one read from an index end.
    for name, where in (
        ("anchored_witnessed", "anchored_tx IS NOT NULL AND witnessed_ms IS NOT NULL"),
        ("witnessed", "witnessed_ms IS NOT NULL"),
    ):
        conn.execute(f"DROP INDEX checkpoint_status_{name}")
        conn.execute(
            f"CREATE INDEX checkpoint_status_{name} ON checkpoint_status (size) WHERE {where}"
        )


@migration("log_0104_device_revocations")
def _device_revocations(conn: sqlite3.Connection) -> None:
    # `provgw device revoke` (gateway.ledger.log.revoke_device): a device the site takes out of
    # trust (stolen, scrapped). Logged as a leaf of its own kind committing to (device id,
    # SHA-256(reason), time) under this salt, so every party can see that, when and why (by
    # digest) the gateway began refusing a device: a revocation cannot be made, undone or
    # backdated quietly. devices.revoked_ms is the flag ingest reads; this is its record.
    conn.execute(
        """
        CREATE TABLE device_revocations (
            id            INTEGER PRIMARY KEY,
            device_id     TEXT    NOT NULL UNIQUE,
            revoked_ms    INTEGER NOT NULL,
            reason        TEXT    NOT NULL,
            reason_digest BLOB    NOT NULL CHECK (length(reason_digest) = 32),
            salt          BLOB    NOT NULL CHECK (length(salt) = 32)
        ) STRICT
        """
    )
