"""``provgw message``: verify a signed device message offline."""

from __future__ import annotations

import click


@click.group("message")
def group() -> None:
    """Inspect and verify signed device messages."""
