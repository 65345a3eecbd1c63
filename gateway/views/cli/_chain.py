"""``provgw chain``: the consortium chain the gateway anchors its checkpoints on."""

from __future__ import annotations

from pathlib import Path

import click
from eth_account import Account
from web3 import Web3
from web3.providers import HTTPProvider

from gateway.core.errors import UnavailableError
from gateway.ledger.anchor import deploy_anchor_contract
from gateway.views.cli._output import emit, fail, json_option

__all__ = ["group"]

#: A secp256k1 private key is 32 bytes.
_KEY_HEX_DIGITS = 64


@click.group("chain")
def group() -> None:
    """Set up anchoring on the consortium chain (Hyperledger Besu, or any EVM JSON-RPC node)."""


def _account_key(path: Path) -> str:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as err:
        fail(f"cannot read the chain key file {path}: {err}")
    digits = text.removeprefix("0x")
    if len(digits) != _KEY_HEX_DIGITS or any(c not in "0123456789abcdefABCDEF" for c in digits):
        fail(f"{path} does not hold a private key in hex", hint="64 hex digits, 0x optional")
    return "0x" + digits


@group.command("deploy")
@click.option(
    "--rpc",
    "rpc_url",
    required=True,
    help="JSON-RPC URL of a chain node, e.g. http://127.0.0.1:8545 (docker-compose.yml).",
)
@click.option(
    "--key",
    "key_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="File holding the deploying account's private key (hex).",
)
@click.option(
    "--timeout", default=30.0, show_default=True, help="Seconds to wait for each node reply."
)
@json_option
def deploy(rpc_url: str, key_file: Path, timeout: float, *, as_json: bool) -> None:
    """Deploy the ProvenanceAnchor contract once per consortium; print its address.

    The committed bytecode (contracts/, built for the london fork) is deployed from the account
    in --key. Put the address into [chain] contract of gateway.toml (or PROVGW_CHAIN_CONTRACT)
    and the block into [chain] from_block. Exit 0: deployed; 1: the node is unreachable or
    refused the deployment; 2: usage error.
    """
    account = Account.from_key(_account_key(key_file))
    # No web3 retry loop: one clear failure beats a long silent wait on a node that is down.
    provider = HTTPProvider(
        rpc_url, request_kwargs={"timeout": timeout}, exception_retry_configuration=None
    )
    w3 = Web3(provider)
    try:
        address, block = deploy_anchor_contract(w3, account)
    except UnavailableError as err:
        fail(str(err), hint="is the node running, and may this account deploy?", code=1)
    emit(
        {"address": address, "block": block, "deployer": account.address, "rpc": rpc_url},
        as_json=as_json,
        text=(
            f"ProvenanceAnchor deployed at {address} (block {block}, from {account.address})\n"
            f'  in gateway.toml: [chain] contract = "{address}", from_block = {block}'
        ),
    )
