"""Root of the ``provgw`` command tree; each command group lives in its own module."""

from __future__ import annotations

import click

from gateway import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="provgw")
def cli() -> None:
    """Provenance Gateway: verifiable firmware, maintenance and custody history for device fleets.

    Every command takes --json for scripts; exit code 0 means success (or "valid"), 1 means the
    input was refused, 2 means the command was used wrongly.
    """


def _register() -> None:
    # Imported here so that `provgw --help` lists every group; each module adds one group.
    import gateway.views.cli._broker as broker_cli  # noqa: PLC0415
    import gateway.views.cli._chain as chain_cli  # noqa: PLC0415
    import gateway.views.cli._log as log_cli  # noqa: PLC0415
    import gateway.views.cli._manifest as manifest_cli  # noqa: PLC0415
    import gateway.views.cli._recall as recall_cli  # noqa: PLC0415
    import gateway.views.cli._recall_status as recall_status_cli  # noqa: PLC0415
    import gateway.views.cli._sbom as sbom_cli  # noqa: PLC0415
    import gateway.views.cli._serve as serve_cli  # noqa: PLC0415
    import gateway.views.cli._witness as witness_cli  # noqa: PLC0415
    from gateway.views.cli import _message  # noqa: PLC0415

    for module in (_message,):
        cli.add_command(module.group)
    cli.add_command(sbom_cli.group)
    cli.add_command(broker_cli.command)
    cli.add_command(serve_cli.command)
    cli.add_command(log_cli.group)
    cli.add_command(log_cli.erase_command)
    cli.add_command(manifest_cli.group)
    cli.add_command(witness_cli.group)
    cli.add_command(chain_cli.group)
    cli.add_command(recall_cli.group)
    recall_cli.group.add_command(recall_status_cli.command)
    cli.add_command(recall_cli.inventory_group)


def main() -> None:
    """Console-script entry point."""
    _register()
    cli()
