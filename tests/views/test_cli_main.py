from __future__ import annotations

import importlib
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from gateway.views.cli._main import _COMMANDS, _register, cli


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(out.stdout.split())


def test_help_lists_every_command_without_importing_their_modules():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name, entry in _COMMANDS.items():
        assert f"  {name} " in result.output
        assert entry.short_help.split()[0] in result.output
    loaded = _modules_after(
        "from gateway.views.cli._main import cli\n"
        "try:\n    cli(['--help'])\nexcept SystemExit:\n    pass"
    )
    assert {m for m in loaded if m.startswith("gateway.views.cli._")} == {"gateway.views.cli._main"}
    assert not {"web3", "eth_account", "biip"} & loaded


@pytest.mark.parametrize("name", sorted(_COMMANDS))
def test_static_short_help_is_the_commands_own(name):
    entry = _COMMANDS[name]
    command = getattr(importlib.import_module(entry.module), entry.attr)
    assert isinstance(command, click.Command)
    assert command.name == name
    assert command.get_short_help_str(limit=1000) == entry.short_help


def test_a_command_is_imported_when_it_runs():
    result = CliRunner().invoke(cli, ["recall", "--help"])
    assert result.exit_code == 0
    # `recall status` lives in its own module and is attached with the group.
    assert "status" in result.output
    _register()
    assert set(_COMMANDS) <= set(cli.commands)


def test_the_serve_supervisor_imports_neither_the_chain_nor_biip():
    # `provgw serve` runs for months: web3/eth_account (~40 MB) only in the ledger process with
    # [chain] enabled, biip (~25 MB) only where a UDI form needs it.
    loaded = _modules_after("import gateway.views.cli._serve")
    assert not {"web3", "eth_account", "biip"} & loaded
