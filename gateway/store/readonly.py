"""The gateway database opened read-only: for the web UI, and for the metrics read at each scrape.

SQLite's ``mode=ro`` URI (https://www.sqlite.org/uri.html) opens the file so that no statement
can change it, and ``PRAGMA query_only`` refuses writes even to the temporary schema. In WAL mode
a reader never blocks the writer and the writer never blocks a reader
(https://www.sqlite.org/wal.html): browsing the UI, or a Prometheus scrape, never slows ingest.
Each request opens its own connection and reads inside one ``BEGIN`` ... ``COMMIT``, so a page
is one consistent snapshot even while the gateway commits batches.
"""

from __future__ import annotations

import sqlite3
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gateway.core.errors import UnavailableError
from gateway.store.db import Database, registered_migrations, unavailable_from

__all__ = ["ReadOnlyDatabase"]


class ReadOnlyDatabase(Database):
    """A :class:`~gateway.store.db.Database` that can only read (the store classes take it as is).

    Unlike ``Database(path)`` it never creates the file, never switches the journal mode and
    never migrates: a file that is missing, or not yet migrated by ``provgw serve``, is refused
    with :class:`UnavailableError`. :meth:`atomic` (every write in the store goes through it)
    raises ``store-read-only``, so a store method that would write fails loudly instead.
    """

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 5.0) -> None:
        # Deliberately not Database.__init__: that one creates, switches to WAL and migrates.
        self.path = str(path)
        self.kind = "gateway"
        self._lock = threading.RLock()
        self._depth = 0
        if not Path(self.path).is_file():
            msg = (
                f"There is no gateway database at {self.path}; start the gateway "
                "(`provgw serve`) first, or check store.path in the configuration."
            )
            raise UnavailableError(msg, reason="store-missing")
        uri = f"file:{urllib.parse.quote(str(Path(self.path).resolve()))}?mode=ro"
        try:
            self.conn = sqlite3.connect(
                uri, uri=True, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise (unavailable_from(exc, self.path) or exc) from exc
        try:
            with self._mapping_errors():
                self.conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
                self.conn.execute("PRAGMA query_only = ON")
                self._check_schema()
        except BaseException:
            self.conn.close()
            raise
        #: Nothing is ever migrated here.
        self.migrations_applied: tuple[str, ...] = ()

    def _check_schema(self) -> None:
        try:
            recorded = {row[0] for row in self.conn.execute("SELECT name FROM _migrations")}
        except sqlite3.OperationalError:
            recorded = set()
        missing = [name for name in registered_migrations() if name not in recorded]
        if missing:
            msg = (
                f"The gateway database {self.path} lacks schema steps {', '.join(missing)}; "
                "start the gateway (`provgw serve`) once so it brings the file up to date."
            )
            raise UnavailableError(msg, reason="store-not-migrated")

    @contextmanager
    def atomic(self, *, savepoints: bool = True) -> Iterator[sqlite3.Connection]:
        """Refuse: this connection only reads (``store-read-only``)."""
        del savepoints
        yield from self._refuse_write()

    def _refuse_write(self) -> Iterator[sqlite3.Connection]:
        msg = f"{self.path} is open read-only here (web UI, metrics): nothing may write to it."
        raise UnavailableError(msg, reason="store-read-only")

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Read inside one transaction: every query sees the same committed state."""
        with self._lock, self._mapping_errors():
            self.conn.execute("BEGIN")
            try:
                yield
            finally:
                self.conn.execute("COMMIT")
