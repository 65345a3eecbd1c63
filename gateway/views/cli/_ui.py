"""``provgw ui``: serve the read-only web UI for biomed engineers until stopped.

A single command, exposed as ``command``. It runs beside ``provgw serve`` (its own process: the
demo starts it; ``provgw serve`` does not supervise it), reading the same database read-only.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from types import FrameType

import click

from gateway.core.errors import ProvenanceError
from gateway.ledger.keys import GatewayKey, load_gateway_key
from gateway.service.config import load_config
from gateway.views.cli._output import config_option, fail, json_option
from gateway.views.web import make_server

__all__ = ["command"]


def _key(path: Path) -> GatewayKey | None:
    # Only receipts need it (signing is deterministic: the same bytes `provgw log prove` gives).
    try:
        return load_gateway_key(path)
    except (OSError, ProvenanceError, ValueError, UnicodeDecodeError):
        return None


def _stop(signum: int, frame: FrameType | None) -> None:
    del signum, frame
    raise KeyboardInterrupt


@click.command("ui")
@config_option("Gateway configuration (TOML): the database and log key it names are used.")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; keep it on loopback unless a reverse proxy guards it.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8080,
    show_default=True,
    help="TCP port (0: any free port; the URL printed says which).",
)
@json_option
def command(config_path: Path, host: str, port: int, *, as_json: bool) -> None:
    """Serve the read-only web UI: fleet, device histories with proofs, recalls, quarantine.

    Opens the gateway's database read-only (it never writes and never slows ingest) and prints
    the URL, or one JSON line {"url": ...} with --json; runs until Ctrl-C or SIGTERM. Every
    page is also JSON under /api/. Receipts need the gateway log key named in the
    configuration; a device's page checks its certificate chain against the trust folder
    (trust.dir, read again when it changes). Exit code 0: stopped; 1: the database or the trust
    folder is unavailable; 2: wrong configuration or the port is taken.
    """
    try:
        config = load_config(config_path)
    except ProvenanceError as err:
        fail(str(err), hint="pass the configuration `provgw serve` runs with")
    key = _key(config.log.key)
    try:
        server = make_server(config.database, key, host=host, port=port, trust_dir=config.trust_dir)
    except ProvenanceError as err:
        fail(str(err), code=1)
    except OSError as err:
        fail(f"cannot listen on {host}:{port}: {err.strerror or err}", hint="choose another --port")
    info = {
        "url": server.url,
        "database": str(config.database),
        "receipts": key is not None,
        "read_only": True,
    }
    if as_json:
        click.echo(json.dumps(info, sort_keys=True))
    else:
        click.echo(f"provgw ui: {server.url} (read-only view of {config.database}); Ctrl-C stops")
        if key is None:
            click.echo(f"  no log key at {config.log.key}: receipts are not offered", err=True)
    sys.stdout.flush()
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.server_close()
