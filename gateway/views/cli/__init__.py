"""``provgw``: the gateway's command line. Thin: every command calls a service function."""

from gateway.views.cli._main import cli, main

__all__ = ["cli", "main"]
