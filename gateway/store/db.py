"""One SQLite database per gateway: connection settings, the transaction manager, migrations.

Habits taken from sqlite-utils: every write goes through :meth:`Database.atomic`, and the schema is
a list of registered, named migration functions recorded in the ``_migrations`` table, so a
database file always says which schema steps it has. The same machinery serves other programs'
files (the witness's, :mod:`gateway.store.witness`) through their own :class:`MigrationSet`.

Durability (measured for DESIGN.md on this machine: 1 row per transaction ~13k rows/s, 500 rows
per transaction ~85k rows/s, both in WAL with ``synchronous=NORMAL``):

- ``journal_mode=WAL``: readers never block the writer, and a commit is one sequential append.
- ``synchronous=NORMAL`` (the default here): in WAL mode a committed transaction survives a crash
  of the process (``kill -9``, an exception, an OOM kill) because the WAL is written before
  ``COMMIT`` returns; only an OS crash or power loss can lose the most recent transactions (the WAL
  is not fsynced on every commit), and the file is never corrupted either way
  (https://www.sqlite.org/pragma.html#pragma_synchronous, https://www.sqlite.org/wal.html).
  The MQTT acknowledgement is sent after the commit, so an event lost that way is redelivered by
  the device's QoS 1 session or re-sent from its own buffer.
- ``durable_against_power_loss=True`` selects ``synchronous=FULL``: the WAL is fsynced at every
  commit, at several times the cost per transaction.

Errors: SQLite failures caused by the environment (locked, disk full, I/O error, corrupt or
foreign file, cannot open) are mapped into :class:`~gateway.core.errors.UnavailableError` where
they enter, with a sentence saying what to do. Errors that can only come from a bug in our SQL
(syntax, a violated constraint we did not expect) are left as they are, so they fail loudly.
"""

from __future__ import annotations

import importlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, Self, TypeVar

from gateway.core.errors import UnavailableError

__all__ = [
    "Database",
    "Migration",
    "MigrationSet",
    "gateway_migrations",
    "in_list",
    "migration",
    "padded",
    "registered_migrations",
    "unavailable_from",
]

#: A migration step: receives the connection inside an open transaction; must not commit.
Migration = Callable[[sqlite3.Connection], None]
F = TypeVar("F", bound=Migration)

#: STRICT tables (3.37) and ``RETURNING`` (3.35) are used by the schema.
_MIN_SQLITE = (3, 37, 0)

_log = logging.getLogger(__name__)


class MigrationSet:
    """The ordered, named migrations of one kind of database file (the gateway's, a witness's).

    Each kind of file gets its own set, so opening a file applies only the steps meant for it: a
    witness file never grows the gateway's event tables, and a file recorded by one set is refused
    by another (see :class:`Database`). *modules* are imported before the steps are read, because
    importing them is what registers the steps (they import this module, so it cannot import them
    at its own import time).
    """

    def __init__(self, kind: str, *, modules: Sequence[str] = ()) -> None:
        #: What the file is, in the words of error messages: ``"gateway"``, ``"witness"``.
        self.kind = kind
        self._modules = tuple(modules)
        self._steps: dict[str, Migration] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Register *fn(conn)* as the migration *name*; migrations run in registration order.

        Names are stable forever once shipped (``"0001_events"``, ``"log_0001_tree"``): the name
        is what ``_migrations`` records. A migration runs inside a transaction the caller opened,
        so it must use ``conn.execute`` and never ``executescript`` (which commits first) or
        ``COMMIT``.
        """

        def register(fn: F) -> F:
            known = self._steps.get(name)
            # A module imported twice re-registers the same function; two functions under one
            # name would make the recorded name ambiguous, which is a programming error.
            if known is not None and (known.__module__, known.__qualname__) != (
                fn.__module__,
                fn.__qualname__,
            ):
                msg = f"migration {name!r} is already registered by {known.__module__}"
                raise ValueError(msg)
            self._steps[name] = fn
            return fn

        return register

    def steps(self) -> tuple[tuple[str, Migration], ...]:
        """Return ``(name, fn)`` for every migration of this set, in the order they run."""
        for module in self._modules:
            importlib.import_module(module)
        return tuple(self._steps.items())

    def names(self) -> tuple[str, ...]:
        """Return the names of the migrations of this set, in the order they run."""
        return tuple(name for name, _ in self.steps())

    def before(self, name: str) -> MigrationSet:
        """Return the steps that run before *name*, as a set of the same kind.

        A file opened with it has every step up to *name* and none from it on: what an upgrade
        to *name* starts from (upgrade tests). The order is the order the steps run in, which
        is not their history: in the gateway's set every step of ``gateway.store.schema`` runs
        before those of ``gateway.store.log_schema``. ValueError for an unknown name.
        """
        names = self.names()
        if name not in names:
            msg = f"no {self.kind} migration is named {name!r}"
            raise ValueError(msg)
        older = MigrationSet(self.kind)
        for step_name, step in self.steps()[: names.index(name)]:
            older.register(step_name)(step)
        return older


#: The gateway database's migrations, registered by importing these modules, in this order.
_GATEWAY_MIGRATIONS = MigrationSet(
    "gateway", modules=("gateway.store.schema", "gateway.store.log_schema")
)


def _megabytes(path: str) -> str:
    try:
        return f"{Path(path).stat().st_size / 1e6:,.0f} MB"
    except OSError:
        return "size unknown"


def gateway_migrations() -> MigrationSet:
    """Return the gateway database's migrations: what ``Database(path)`` applies, in order."""
    return _GATEWAY_MIGRATIONS


def migration(name: str) -> Callable[[F], F]:
    """Register *fn(conn)* as the gateway migration *name* (see :meth:`MigrationSet.register`)."""
    return _GATEWAY_MIGRATIONS.register(name)


def registered_migrations() -> tuple[str, ...]:
    """Return the names of all gateway migrations known to this code, in the order they run."""
    return _GATEWAY_MIGRATIONS.names()


# Primary result codes (https://www.sqlite.org/rescode.html); extended codes keep them in the low
# byte, so ``code & 0xFF`` classifies SQLITE_IOERR_FSYNC as SQLITE_IOERR and so on.
_BUSY, _LOCKED, _READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _NOTADB = 5, 6, 8, 10, 11, 13, 14, 26


def unavailable_from(
    exc: sqlite3.Error, path: str, *, kind: str = "gateway"
) -> UnavailableError | None:
    """Map an environmental SQLite failure to :class:`UnavailableError`; ``None`` for bugs.

    *kind* names the program whose file *path* is (``"gateway"``, ``"witness"``) in the message.
    """
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    text = str(exc).lower()
    where = f"The {kind} database {path}"
    if code in (_BUSY, _LOCKED) or "locked" in text:
        return UnavailableError(
            f"{where} is locked by another process for too long; make sure only one {kind} "
            "service uses this file, then retry.",
            reason="store-busy",
        )
    if code in (_CORRUPT, _NOTADB) or "malformed" in text or "not a database" in text:
        return UnavailableError(
            f"{where} is damaged or is not a {kind} database; stop the {kind}, move the file "
            "aside and restore it from the latest backup.",
            reason="store-corrupt",
        )
    if code == _FULL or "disk is full" in text:
        return UnavailableError(
            f"{where} cannot grow because the disk is full; free disk space, then retry "
            "(nothing from the failed batch was stored).",
            reason="store-full",
        )
    if code == _IOERR or "disk i/o" in text:
        return UnavailableError(
            f"{where} hit a disk read/write error; check the disk and its free space, then "
            "retry (nothing from the failed batch was stored).",
            reason="store-io",
        )
    if code in (_CANTOPEN, _READONLY) or "unable to open" in text or "readonly" in text:
        return UnavailableError(
            f"{where} cannot be opened for writing; check that its folder exists and that the "
            f"{kind}'s user may write to the file and the folder.",
            reason="store-unopenable",
        )
    return None


def padded(values: Sequence[Any], fill: object = None) -> list[Any]:
    """*values* padded with *fill* to the next power of two, for a ``?`` list built to fit.

    SQL with one placeholder per value is a new statement for every count, and the ``sqlite3``
    module keeps the last 128 statements of a connection prepared: 128 lookups of 280-400 pairs
    held 13.7 MB of SQLite's heap in one connection (measured; in a live verifier its heap grew
    with every new batch size, 1 -> 10.5 MB). Padded, lookups of up to N values have at most
    log2(N) + 1 shapes, each prepared once. The default *fill*, NULL, equals nothing, so the
    padding matches no row (``x IN (..., NULL)`` is never true where ``x IN (...)`` is false).
    """
    size = 1 << (len(values) - 1).bit_length() if values else 0
    return [*values, *([fill] * (size - len(values)))]


def in_list(values: Sequence[Any]) -> tuple[str, list[Any]]:
    """Return the ``?`` marks and the parameters of ``IN (...)`` over *values*, :func:`padded`."""
    params = padded(values)
    return ",".join("?" * len(params)), params


def _refuse_nested_failure() -> NoReturn:
    msg = (
        "A nested block of this transaction failed and has no savepoint to undo it alone, so the "
        "whole transaction was rolled back; nothing was stored."
    )
    raise UnavailableError(msg, reason="store-nested-failure")


class Database:
    """An open database file with every migration of its :class:`MigrationSet` applied.

    ``Database(path)`` opens (or creates) the file, sets the connection up (WAL,
    ``synchronous``, foreign keys, busy timeout) and applies pending migrations, each in its own
    transaction. Use it as a context manager, or call :meth:`close`.

    *migrations* chooses the kind of file: the gateway's (``None``, the default) or another
    program's, such as the witness's (:data:`gateway.store.witness.WITNESS_MIGRATIONS`). A file
    whose recorded steps all belong to another set is refused (``store-foreign-schema``) rather
    than given this set's tables; a file with some steps this code does not know is refused as
    written by a newer version (``store-newer-schema``). Applying steps to a file that already
    had some (an upgrade) is logged at WARNING, the steps named first and each one when it is
    done, because on a large file an upgrade takes a while.

    The connection is shared between threads (``check_same_thread=False``); a lock serialises
    transactions and queries so one thread's ``BEGIN`` never swallows another thread's writes.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        migrations: MigrationSet | None = None,
        durable_against_power_loss: bool = False,
        busy_timeout_s: float = 5.0,
    ) -> None:
        self.path = str(path)
        self._migrations = _GATEWAY_MIGRATIONS if migrations is None else migrations
        #: The kind of file this is (``"gateway"``, ``"witness"``), as error messages say it.
        self.kind = self._migrations.kind
        if sqlite3.sqlite_version_info < _MIN_SQLITE:
            msg = (
                f"The gateway needs SQLite {'.'.join(map(str, _MIN_SQLITE))} or newer, but this "
                f"Python is linked with SQLite {sqlite3.sqlite_version}; use a newer Python build."
            )
            raise UnavailableError(msg, reason="store-sqlite-too-old")
        self._lock = threading.RLock()
        self._depth = 0
        self._savepoints = True  # the outermost atomic()'s choice (see there)
        self._failed_inside = False
        try:
            # isolation_level=None: autocommit, so the sqlite3 module never opens transactions
            # behind our back; atomic() issues BEGIN IMMEDIATE itself.
            self.conn: sqlite3.Connection = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise (unavailable_from(exc, self.path, kind=self.kind) or exc) from exc
        try:
            self._configure(
                durable_against_power_loss=durable_against_power_loss, busy=busy_timeout_s
            )
            #: Migrations this open applied (empty when the file was already up to date).
            self.migrations_applied: tuple[str, ...] = self._migrate()
        except BaseException:
            self.conn.close()
            raise

    # -- set-up ---------------------------------------------------------------------------------

    def _configure(self, *, durable_against_power_loss: bool, busy: float) -> None:
        with self._mapping_errors():
            # busy_timeout first: the journal_mode switch itself may wait for another opener.
            self.conn.execute(f"PRAGMA busy_timeout = {int(busy * 1000)}")
            mode = self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal" and self.path != ":memory:":
                msg = (
                    f"The {self.kind} database {self.path} could not switch to write-ahead logging "
                    f"(journal mode stayed {mode!r}); put the file on a local disk, not a network "
                    "share."
                )
                raise UnavailableError(msg, reason="store-no-wal")
            sync = "FULL" if durable_against_power_loss else "NORMAL"
            self.conn.execute(f"PRAGMA synchronous = {sync}")
            self.conn.execute("PRAGMA foreign_keys = ON")

    def _migrate(self) -> tuple[str, ...]:
        steps = self._migrations.steps()
        known = {name for name, _ in steps}
        with self.atomic() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS _migrations ("
                " name TEXT PRIMARY KEY, applied_at TEXT NOT NULL) STRICT"
            )
            recorded = {row[0] for row in conn.execute("SELECT name FROM _migrations")}
        unknown = sorted(recorded - known)
        if recorded and len(unknown) == len(recorded):
            # Not one step in common: the file belongs to another program (a witness's file
            # opened as a gateway's, or the reverse). Adding our tables to it would mix two
            # programs' state in one file, so leave it untouched.
            msg = (
                f"The file {self.path} is not a {self.kind} database: its schema steps "
                f"({', '.join(unknown)}) belong to another program; give the {self.kind} its own "
                "file."
            )
            raise UnavailableError(msg, reason="store-foreign-schema")
        if unknown:
            # A newer version wrote this file; running older code on it could corrupt data.
            msg = (
                f"The {self.kind} database {self.path} was written by a newer {self.kind} "
                f"version (schema steps {', '.join(unknown)} are unknown here); run the newer "
                "version."
            )
            raise UnavailableError(msg, reason="store-newer-schema")
        pending = [(name, fn) for name, fn in steps if name not in recorded]
        # An upgrade of a file that holds data can take minutes (0014 rewrites the events table:
        # 8.8 s with 0013 for a million events, measured): said at WARNING, so that it shows
        # whatever logging the program set up, rather than a start that looks hung.
        upgrading = bool(recorded and pending)
        if upgrading:
            _log.warning(
                "Upgrading the %s database %s (%s): %d schema step(s) to apply (%s). On a large "
                "file this takes a while; stopping is safe (an unfinished step is rolled back "
                "and runs again at the next start).",
                self.kind,
                self.path,
                _megabytes(self.path),
                len(pending),
                ", ".join(name for name, _ in pending),
            )
        applied = []
        for number, (name, fn) in enumerate(pending, 1):
            started = time.monotonic()
            with self.atomic() as conn:
                # Re-check under the write lock: another process may have just applied it.
                if conn.execute("SELECT 1 FROM _migrations WHERE name = ?", (name,)).fetchone():
                    continue
                fn(conn)
                if not conn.in_transaction:
                    msg = f"migration {name!r} committed on its own (executescript or COMMIT)"
                    raise RuntimeError(msg)
                conn.execute(
                    "INSERT INTO _migrations (name, applied_at) VALUES (?, ?)",
                    (name, datetime.now(UTC).isoformat(timespec="seconds")),
                )
            applied.append(name)
            if upgrading:
                _log.warning(
                    "The %s database %s: schema step %s applied (%d of %d) in %.1f s.",
                    self.kind,
                    self.path,
                    name,
                    number,
                    len(pending),
                    time.monotonic() - started,
                )
        return tuple(applied)

    # -- transactions and queries -----------------------------------------------------------------

    @contextmanager
    def atomic(self, *, savepoints: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction: ``BEGIN IMMEDIATE`` … ``COMMIT``, ``ROLLBACK`` on any exception.

        Nested use joins the outer transaction through a ``SAVEPOINT``: an exception that escapes
        the inner block undoes only the inner block's writes, and nothing is durable until the
        outermost block commits. ``IMMEDIATE`` takes the write lock up front, so two writers wait
        on ``busy_timeout`` instead of failing at their first write with SQLITE_BUSY.

        ``savepoints=False`` (read on the outermost block only): nested blocks join without a
        ``SAVEPOINT``, and an exception escaping one of them rolls the whole transaction back,
        even if the outer block catches it (the commit is then refused with
        :class:`~gateway.core.errors.UnavailableError`, ``store-nested-failure``). For hot paths
        whose inner blocks never need undoing alone: while a savepoint is open, SQLite copies
        every page the transaction changes into a statement journal, a temporary file past 64 KiB
        (measured in a verifier: ~0.65 page an event, a third of its write syscalls).
        """
        with self._lock, self._mapping_errors():
            depth = self._depth
            if depth and not self._savepoints:
                self._depth += 1
                try:
                    yield self.conn
                except BaseException:
                    self._failed_inside = True
                    raise
                finally:
                    self._depth -= 1
                return
            if depth == 0:
                self._savepoints, self._failed_inside = savepoints, False
            savepoint = f"sp{depth}"
            self.conn.execute("BEGIN IMMEDIATE" if depth == 0 else f"SAVEPOINT {savepoint}")
            self._depth += 1
            try:
                yield self.conn
                if depth == 0 and self._failed_inside:
                    _refuse_nested_failure()
                # COMMIT itself can fail (SQLITE_BUSY, SQLITE_FULL): undo then, as for the body.
                self.conn.execute("COMMIT" if depth == 0 else f"RELEASE {savepoint}")
            except BaseException:
                if depth == 0:
                    self._rollback_quietly("ROLLBACK")
                else:
                    self._rollback_quietly(f"ROLLBACK TO {savepoint}")
                    self._rollback_quietly(f"RELEASE {savepoint}")
                raise
            finally:
                self._depth -= 1
                if depth == 0:
                    self._savepoints = True

    def _rollback_quietly(self, statement: str) -> None:
        # SQLite may already have rolled back on its own (SQLITE_FULL, SQLITE_IOERR); the original
        # exception is the one worth reporting.
        if self.conn.in_transaction:
            with suppress(sqlite3.Error):
                self.conn.execute(statement)

    def query(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[Any]:
        """Run one read statement and return all rows, with SQLite errors mapped."""
        with self._lock, self._mapping_errors():
            return self.conn.execute(sql, params).fetchall()

    @contextmanager
    def _mapping_errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            mapped = unavailable_from(exc, self.path, kind=self.kind)
            if mapped is None:
                raise
            raise mapped from exc

    # -- lifetime ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection; committed data is already on disk."""
        with self._lock:
            self.conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
