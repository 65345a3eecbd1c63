"""Root of the ``provgw`` command tree; each command group lives in its own module.

Command modules are imported only when their command runs (click's "lazy loading of subcommands"
pattern, a :class:`click.Group` whose ``get_command`` imports on demand). Some pull in heavy
libraries -- ``chain`` imports web3 / eth_account (~0.7 s, ~40 MB) -- and ``provgw serve``, a
long-running supervisor, must not carry them. ``provgw --help`` lists every command from the
static table :data:`_COMMANDS` without importing any; a test pins the table to the modules.
"""

from __future__ import annotations

import importlib
from typing import NamedTuple

import click

from gateway import __version__


class _Entry(NamedTuple):
    """Where a top-level command lives, and its one-line help for ``provgw --help``."""

    module: str
    attr: str
    short_help: str


_P = "gateway.views.cli."

#: name -> where the command is, and the short help it shows (pinned by a test).
_COMMANDS: dict[str, _Entry] = {
    "audit": _Entry(
        _P + "_audit",
        "group",
        "Give a device's history with its proofs to another party, and check one given to you.",
    ),
    "broker-acl": _Entry(
        _P + "_broker",
        "acl_command",
        "Make the broker refuse every device the gateway revoked, then reload it to apply.",
    ),
    "broker-config": _Entry(
        _P + "_broker",
        "command",
        "Write Mosquitto's configuration for this site's devices, gateway and manufacturers.",
    ),
    "chain": _Entry(
        _P + "_chain",
        "group",
        "Set up anchoring on the consortium chain (Hyperledger Besu, or any EVM JSON-RPC node).",
    ),
    "device": _Entry(
        _P + "_device",
        "group",
        "See a device's keys and state, revoke one the site no longer trusts, export it as FHIR.",
    ),
    "erase": _Entry(
        _P + "_log",
        "erase_command",
        "Crypto-shred EVENT_ID: destroy its salt and stored bytes, and log the erasure.",
    ),
    "inventory": _Entry(
        _P + "_recall",
        "inventory_group",
        "Keep the device inventory that recalls are matched against.",
    ),
    "log": _Entry(
        _P + "_log",
        "group",
        "Inspect the transparency log: checkpoints, inclusion and consistency proofs, "
        "verification.",
    ),
    "manifest": _Entry(
        _P + "_manifest",
        "group",
        "Build, approve, validate and inspect signed firmware manifests.",
    ),
    "message": _Entry(
        _P + "_message",
        "group",
        "Inspect and verify signed device messages.",
    ),
    "quarantine": _Entry(
        _P + "_quarantine",
        "group",
        "See the messages the gateway refused, and verify them again once the cause is fixed.",
    ),
    "recall": _Entry(
        _P + "_recall",
        "group",
        "Import recall notices and CSAF advisories, and see which devices they hit.",
    ),
    "sbom": _Entry(
        _P + "_sbom",
        "group",
        "Check software bills of materials (CycloneDX 1.2-1.6 JSON; XML and SPDX are refused).",
    ),
    "serve": _Entry(
        _P + "_serve",
        "command",
        "Run the gateway: ingest device events, the transparency log, and the urgent patch lane.",
    ),
    "status": _Entry(
        _P + "_status",
        "command",
        "Show the gateway's progress: events, log, witnesses, anchors, remediation, processes.",
    ),
    "ui": _Entry(
        _P + "_ui",
        "command",
        "Serve the read-only web UI: fleet, device histories with proofs, recalls, quarantine.",
    ),
    "witness": _Entry(
        _P + "_witness",
        "group",
        "Witness other gateways' transparency logs (C2SP tlog-witness over HTTP).",
    ),
}

#: Subcommands kept in a module of their own: group name -> ((module, attr), ...).
_SUBCOMMANDS: dict[str, tuple[tuple[str, str], ...]] = {
    "recall": ((_P + "_recall_status", "command"),),
}


class _LazyGroup(click.Group):
    """A group whose commands are imported from :data:`_COMMANDS` on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every command name, without importing any module."""
        return sorted({*super().list_commands(ctx), *_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """Return *cmd_name*, importing its module the first time."""
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in _COMMANDS:
            command = _load(cmd_name)
            self.add_command(command, cmd_name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List the commands with the static short help: ``--help`` imports nothing."""
        rows: list[tuple[str, str]] = []
        limit = formatter.width - 6 - max(map(len, self.list_commands(ctx)))
        for name in self.list_commands(ctx):
            loaded = self.commands.get(name)
            if loaded is not None:
                if not loaded.hidden:
                    rows.append((name, loaded.get_short_help_str(limit)))
            else:
                rows.append((name, _shorten(_COMMANDS[name].short_help, limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _load(name: str) -> click.Command:
    entry = _COMMANDS[name]
    found: object = getattr(importlib.import_module(entry.module), entry.attr)
    if not isinstance(found, click.Command):
        msg = f"{entry.module}.{entry.attr} is not a click command"
        raise TypeError(msg)
    for module, attr in _SUBCOMMANDS.get(name, ()):
        sub: object = getattr(importlib.import_module(module), attr)
        if isinstance(found, click.Group) and isinstance(sub, click.Command):
            found.add_command(sub)
    return found


def _shorten(text: str, limit: int) -> str:
    # Exactly what the loaded command would show: click shortens its help to *limit*.
    return click.Command(None, help=text).get_short_help_str(limit)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="provgw")
def cli() -> None:
    """Provenance Gateway: verifiable firmware, maintenance and custody history for device fleets.

    Every command takes --json for scripts; exit code 0 means success (or "valid"), 1 means the
    input was refused, 2 means the command was used wrongly.
    """


def _register() -> None:
    """Import and add every command now (tests, and anything that wants the command objects)."""
    ctx = click.Context(cli)
    for name in _COMMANDS:
        cli.get_command(ctx, name)


def main() -> None:
    """Console-script entry point."""
    cli()
