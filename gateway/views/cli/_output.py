"""Shared output for commands: one JSON object with --json, readable lines otherwise."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import click

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object instead of text (for scripts)."
)


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
