"""Shared output for commands: one JSON object with --json, readable lines otherwise."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from gateway.core.errors import ProvenanceError, VerificationError
from gateway.store.db import Database

if TYPE_CHECKING:
    from gateway.core.identity import TrustStore

_F = TypeVar("_F", bound=Callable[..., Any])

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object instead of text (for scripts)."
)

#: ``--db FILE``: the gateway's database, for commands that read or change it directly.
db_option = click.option(
    "--db",
    "db_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The gateway's SQLite database file.",
)


def config_option(help_text: str) -> Callable[[_F], _F]:
    """``--config FILE``: the gateway's TOML configuration, as ``provgw serve`` runs with it."""
    return click.option(
        "--config",
        "config_path",
        required=True,
        type=click.Path(dir_okay=False, path_type=Path),
        help=help_text,
    )


def trust_option(help_text: str, *, required: bool = False) -> Callable[[_F], _F]:
    """``--trust DIR``: a trust folder (roots and CRLs), loaded by :func:`read_trust`."""
    return click.option(
        "--trust",
        "trust_dir",
        required=required,
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        help=help_text,
    )


def load_trust(trust_dir: Path, *, hint: str | None = None, code: int = 1) -> TrustStore:
    """Load the ``--trust`` folder; one that does not load stops (exit *code*, 1 by default)."""
    from gateway.store.trust_files import load_trust_dir  # noqa: PLC0415 - X.509 code, on demand

    try:
        return load_trust_dir(trust_dir)
    except VerificationError as err:
        fail(str(err), hint=hint, code=code)


def read_trust(trust_dir: Path | None) -> TrustStore | None:
    """Load an optional ``--trust`` folder (None without one), as :func:`load_trust` does."""
    return None if trust_dir is None else load_trust(trust_dir)


#: Seconds between two progress lines of long work.
PROGRESS_EVERY_S = 2.0


def long_work_progress(verb: str, what: str = "", *, as_json: bool) -> Callable[[int, int], None]:
    """Return a ``progress(done, total)``: ``VERB done of total WHAT`` on stderr in long work.

    Silent for work that ends within :data:`PROGRESS_EVERY_S`; then a line every that many
    seconds, and one at the end. Never with ``--json`` (scripts read stdout; nothing to say).
    """
    last = time.monotonic()  # the start, then the last line printed
    spoke = False

    def progress(done: int, total: int) -> None:
        nonlocal last, spoke
        now = time.monotonic()
        if not as_json and (now - last >= PROGRESS_EVERY_S or (spoke and done == total)):
            last, spoke = now, True
            click.echo(f"{verb} {done:,} of {total:,}{' ' if what else ''}{what}", err=True)

    return progress


def emit(data: dict[str, Any], *, as_json: bool, text: str) -> None:
    """Print *data* as JSON, or *text* for people."""
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        click.echo(text)


def fail(message: str, *, hint: str | None = None, code: int = 2) -> NoReturn:
    """Stop with a clear error on stderr, saying what to do where we know it."""
    click.echo(f"error: {message}", err=True)
    if hint:
        click.echo(f"hint: {hint}", err=True)
    sys.exit(code)


@contextmanager
def refusals(*, as_json: bool) -> Iterator[None]:
    """Report a gateway error as a refusal (exit 1), in JSON when asked."""
    try:
        yield
    except ProvenanceError as err:
        if as_json:
            emit({"ok": False, "reason": err.reason, "error": str(err)}, as_json=True, text="")
        else:
            click.echo(f"error: {err}", err=True)
        sys.exit(1)


def open_existing_db(path: Path) -> Database:
    """Open the gateway's database, refusing to create an empty one by mistake."""
    if not path.exists():
        fail(f"there is no gateway database at {path}", hint="pass the gateway's --db file")
    return Database(path)
