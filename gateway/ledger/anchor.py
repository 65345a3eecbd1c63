"""Consortium-chain anchors: put a log head (log id, tree size, root) on the chain.

The seam is :class:`AnchorBackend`, one narrow interface to the chain, with two implementations:

- :class:`Web3AnchorBackend` talks JSON-RPC through ``web3.py`` to the ``ProvenanceAnchor``
  contract (``contracts/ProvenanceAnchor.sol``; its ABI and bytecode are committed beside it). It
  signs transactions locally with the gateway's chain key, so the node never holds the key. Users
  run it against Hyperledger Besu (QBFT, ``docker-compose.yml``); tests run it against ganache on
  a random loopback port and against ``eth-tester`` in-process.
- :class:`MemoryAnchorBackend` is an in-memory chain with the contract's rules, for fast unit
  tests of the outbox (it can be switched off, and can lose a reply after the transaction landed).

What reaches the chain is exactly three values (the transaction input is the ``anchor`` selector
and these): ``logId = SHA-256(origin)`` — hashed so a site name inside a log's origin line never
leaves the gateway (DESIGN: nothing identifying leaves except as a commitment) —, the tree size,
and the RFC 9162 root hash, which is itself a hash of salted commitments.

Errors: a node that cannot be reached, times out or refuses our transaction raises
:class:`~gateway.core.errors.UnavailableError` (web3, requests and socket errors are mapped where
they enter); a head the contract refuses because its size does not grow raises
:class:`~gateway.core.errors.RollbackError`; an anchored event whose root differs from ours raises
:class:`~gateway.core.errors.MismatchError` (the chain holds another head of the same size: a
fork of the log).
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Self, cast

from eth_account import Account
from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import (
    ContractLogicError,
    ProviderConnectionError,
    TransactionNotFound,
    Web3Exception,
    Web3RPCError,
)
from web3.providers import HTTPProvider

from gateway.core.errors import MismatchError, RollbackError, UnavailableError
from gateway.core.note import Checkpoint

__all__ = [
    "Anchor",
    "AnchorBackend",
    "Confirmation",
    "MemoryAnchorBackend",
    "TxState",
    "TxStatus",
    "Web3AnchorBackend",
    "contract_artifacts",
    "deploy_anchor_contract",
    "log_id",
]

#: Where ``contracts/build.mjs`` writes the committed ABI and bytecode (repository root).
ARTIFACT_DIR = Path(__file__).resolve().parents[2] / "contracts"
_CONTRACT = "ProvenanceAnchor"
_MAX_UINT64 = (1 << 64) - 1
#: Gas limit per anchor: measured ~47k for a log's first anchor (a fresh storage slot), ~30k
#: after; the margin covers a future fork's repricing without an estimate round trip per send.
_ANCHOR_GAS = 100_000
_DEPLOY_GAS = 1_000_000


def log_id(origin: str) -> bytes:
    """``SHA-256(origin)``: the log's name on chain, which never shows the origin in clear."""
    return hashlib.sha256(origin.encode()).digest()


@dataclass(frozen=True)
class Anchor:
    """One log head as the contract takes it: 32-byte log id, uint64 tree size, 32-byte root.

    Valid on construction: the sizes of the three fields are what the contract's ABI types hold.
    """

    log_id: bytes
    tree_size: int
    root: bytes

    def __post_init__(self) -> None:
        if len(self.log_id) != 32 or len(self.root) != 32:
            raise ValueError("an anchor's log id and root are 32-byte SHA-256 hashes")
        if not 0 <= self.tree_size <= _MAX_UINT64:
            raise ValueError("an anchor's tree size is a uint64")

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint) -> Anchor:
        """Return the anchor of a checkpoint: its origin hashed, its size and its root."""
        return cls(log_id(checkpoint.origin), checkpoint.size, checkpoint.root)


@dataclass(frozen=True)
class Confirmation:
    """An ``Anchored`` event on chain: the transaction that carried it and its block."""

    tx_hash: bytes
    block_number: int


class TxStatus(enum.Enum):
    """What the chain knows of a transaction we sent."""

    #: The node knows nothing of it (dropped from the pool, or the node lost its pool).
    UNKNOWN = "unknown"
    #: In the node's pool, not yet in a block.
    PENDING = "pending"
    #: In a block and executed successfully.
    MINED = "mined"
    #: In a block, but the contract refused it (its state changed nothing).
    REVERTED = "reverted"


@dataclass(frozen=True)
class TxState:
    """The status of a transaction, with its block and confirmation depth once mined."""

    status: TxStatus
    block_number: int | None = None
    #: Blocks on top of and including the transaction's block (1 = just mined). QBFT blocks are
    #: final when produced, so 1 suffices on Besu; a proof-of-work chain would want more.
    confirmations: int = 0


class AnchorBackend(Protocol):
    """The chain as the outbox sees it; every method raises UnavailableError when it is down."""

    def anchored_size(self, log_id: bytes) -> int:
        """Return the largest tree size this gateway anchored for *log_id* (0 if none)."""
        ...

    def find_anchor(self, anchor: Anchor) -> Confirmation | None:
        """Return the ``Anchored`` event of exactly this head by this gateway, if on chain.

        Raises MismatchError if the chain holds this log id and size with another root.
        """
        ...

    def submit(self, anchor: Anchor) -> bytes:
        """Send the anchor transaction; return its hash (before it is mined)."""
        ...

    def tx_state(self, tx_hash: bytes) -> TxState:
        """Return what the chain knows of the transaction *tx_hash*."""
        ...


def _fork(anchor: Anchor, other_root: bytes) -> MismatchError:
    return MismatchError(
        f"The chain already holds tree size {anchor.tree_size} of this log with root "
        f"{other_root.hex()[:16]}..., not {anchor.root.hex()[:16]}...: the log was forked; stop "
        "the gateway and investigate before anchoring anything else.",
        reason="anchor-fork",
    )


def _not_growing(anchor: Anchor, last: int) -> RollbackError:
    return RollbackError(
        f"The chain refused tree size {anchor.tree_size}: this log is already anchored at size "
        f"{last}, and an anchored log may only grow.",
        reason="anchor-not-growing",
    )


# -- the contract's committed artifacts ---------------------------------------------------------


@functools.cache
def contract_artifacts(directory: Path = ARTIFACT_DIR) -> tuple[list[dict[str, Any]], bytes]:
    """Return the committed ABI and creation bytecode of ``ProvenanceAnchor`` (build.mjs)."""
    abi = json.loads((directory / f"{_CONTRACT}.abi.json").read_text())
    bytecode = bytes.fromhex((directory / f"{_CONTRACT}.bin").read_text().strip())
    return abi, bytecode


# -- web3 backend ---------------------------------------------------------------------------------


@contextmanager
def _chain_errors(url: str) -> Iterator[None]:
    """Map the errors of web3, requests and sockets into UnavailableError where they enter."""
    try:
        yield
    # requests' exceptions derive from OSError, as do refused and reset sockets.
    except (ProviderConnectionError, OSError) as exc:
        raise UnavailableError(
            f"The consortium chain node at {url} cannot be reached ({type(exc).__name__}); "
            "anchors wait in the outbox and are sent when it is back.",
            reason="chain-unavailable",
        ) from exc
    except ContractLogicError:
        raise  # the contract's verdict, handled by the caller
    except (Web3RPCError, Web3Exception) as exc:
        raise UnavailableError(
            f"The consortium chain node at {url} refused the request: {exc}. Check the gateway "
            "account's permission and balance on the chain.",
            reason="chain-refused",
        ) from exc


@dataclass
class Web3AnchorBackend:
    """The ``ProvenanceAnchor`` contract at *address*, reached through *w3*, signing as *account*.

    Construction does no network call (the gateway starts while the chain is down); the first
    call that needs the node raises UnavailableError if it cannot be reached.
    """

    w3: Web3
    address: str
    account: LocalAccount
    #: First block to search for events (the deployment block): bounds eth_getLogs.
    from_block: int = 0
    gas_limit: int = _ANCHOR_GAS
    _contract: Contract = field(init=False, repr=False)
    _chain_id: int | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        abi, _ = contract_artifacts()
        self.address = Web3.to_checksum_address(self.address)
        self._contract = self.w3.eth.contract(address=self.address, abi=abi)

    @classmethod
    def from_url(
        cls,
        url: str,
        address: str,
        private_key: str | bytes,
        *,
        from_block: int = 0,
        timeout_s: float = 5.0,
    ) -> Self:
        """Connect to the JSON-RPC node at *url* (HTTP), without web3's own retries.

        The outbox owns retrying, with backoff and jitter; web3's retry loop would hold the
        worker thread for seconds per call while the node is down.
        """
        provider = HTTPProvider(
            url, request_kwargs={"timeout": timeout_s}, exception_retry_configuration=None
        )
        return cls(Web3(provider), address, Account.from_key(private_key), from_block=from_block)

    @property
    def _url(self) -> str:
        return str(getattr(self.w3.provider, "endpoint_uri", None) or "in-process")

    def anchored_size(self, log_id: bytes) -> int:
        """Read ``lastSize(us, logId)`` from the contract."""
        with _chain_errors(self._url):
            return int(self._contract.functions.lastSize(self.account.address, log_id).call())

    def find_anchor(self, anchor: Anchor) -> Confirmation | None:
        """Search the ``Anchored`` events of this log id (indexed topic) sent by us."""
        with _chain_errors(self._url):
            events = self._contract.events.Anchored.get_logs(
                argument_filters={"logId": anchor.log_id}, from_block=self.from_block
            )
        for event in events:
            args = event["args"]
            # Only our own events count: another account may use the same log id, and the
            # contract keeps sizes per submitter (ProvenanceAnchor.sol).
            if args["submitter"] != self.account.address or args["treeSize"] != anchor.tree_size:
                continue
            if bytes(args["rootHash"]) != anchor.root:
                raise _fork(anchor, bytes(args["rootHash"]))
            return Confirmation(bytes(event["transactionHash"]), int(event["blockNumber"]))
        return None

    def submit(self, anchor: Anchor) -> bytes:
        """Sign ``anchor(logId, treeSize, rootHash)`` locally and send it; return its hash."""
        with _chain_errors(self._url):
            if self._chain_id is None:
                self._chain_id = int(self.w3.eth.chain_id)
            sender = self.account.address
            tx = self._contract.functions.anchor(
                anchor.log_id, anchor.tree_size, anchor.root
            ).build_transaction(
                {
                    "from": sender,
                    "chainId": self._chain_id,
                    # "pending": a transaction of ours still in the pool keeps its nonce.
                    "nonce": self.w3.eth.get_transaction_count(sender, "pending"),
                    "gas": self.gas_limit,
                    # A legacy gas price works on every fork; Besu QBFT networks run at 0.
                    "gasPrice": self.w3.eth.gas_price,
                }
            )
            # eth-account types the dict more narrowly than web3 builds it; the shape is the same.
            signed = self.account.sign_transaction(cast("dict[str, Any]", tx))
            try:
                return bytes(self.w3.eth.send_raw_transaction(signed.raw_transaction))
            except ContractLogicError as exc:
                # Nodes that execute on submission (eth-tester) report the revert here.
                raise _not_growing(anchor, self.anchored_size(anchor.log_id)) from exc

    def tx_state(self, tx_hash: bytes) -> TxState:
        """Receipt, then pool, then nothing: what the node knows of *tx_hash*."""
        with _chain_errors(self._url):
            try:
                receipt = self.w3.eth.get_transaction_receipt(HexBytes(tx_hash))
            except TransactionNotFound:
                try:
                    self.w3.eth.get_transaction(HexBytes(tx_hash))
                except TransactionNotFound:
                    return TxState(TxStatus.UNKNOWN)
                return TxState(TxStatus.PENDING)
            block = int(receipt["blockNumber"])
            depth = int(self.w3.eth.block_number) - block + 1
            status = TxStatus.MINED if receipt["status"] == 1 else TxStatus.REVERTED
            return TxState(status, block, depth)


def deploy_anchor_contract(w3: Web3, account: LocalAccount) -> tuple[str, int]:
    """Deploy ``ProvenanceAnchor`` signed by *account*; return its address and block number."""
    abi, bytecode = contract_artifacts()
    url = str(getattr(w3.provider, "endpoint_uri", None) or "in-process")
    with _chain_errors(url):
        tx = (
            w3.eth.contract(abi=abi, bytecode=bytecode)
            .constructor()
            .build_transaction(
                {
                    "from": account.address,
                    "chainId": int(w3.eth.chain_id),
                    "nonce": w3.eth.get_transaction_count(account.address, "pending"),
                    "gas": _DEPLOY_GAS,
                    "gasPrice": w3.eth.gas_price,
                }
            )
        )
        signed = account.sign_transaction(cast("dict[str, Any]", tx))
        tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)
    if receipt["status"] != 1 or not receipt["contractAddress"]:
        raise UnavailableError(
            "The chain did not accept the anchor contract deployment; check that the account may "
            "deploy contracts and that the chain's fork is london or later.",
            reason="chain-deploy-failed",
        )
    return str(receipt["contractAddress"]), int(receipt["blockNumber"])


# -- in-memory fake ------------------------------------------------------------------------------


@dataclass
class MemoryAnchorBackend:
    """An in-memory chain with the contract's rule (size grows per log), for unit tests.

    ``available = False`` makes every call raise UnavailableError (the node is down).
    ``lose_replies`` > 0 makes that many ``submit`` calls land on chain but raise anyway, as when
    the connection drops after the node accepted the transaction (the reply is lost).
    ``instamine = False`` keeps sent transactions pending until :meth:`mine`.
    """

    available: bool = True
    lose_replies: int = 0
    instamine: bool = True
    #: Every ``Anchored`` event, in chain order: (anchor, confirmation).
    events: list[tuple[Anchor, Confirmation]] = field(default_factory=list)
    submits: int = 0
    _last: dict[bytes, int] = field(default_factory=dict)
    _pool: dict[bytes, Anchor] = field(default_factory=dict)
    _receipts: dict[bytes, TxState] = field(default_factory=dict)
    _block: int = 0

    def _up(self) -> None:
        if not self.available:
            raise UnavailableError("The in-memory chain is switched off.", reason="chain-down")

    def anchored_size(self, log_id: bytes) -> int:
        """See :meth:`AnchorBackend.anchored_size`."""
        self._up()
        return self._last.get(log_id, 0)

    def find_anchor(self, anchor: Anchor) -> Confirmation | None:
        """See :meth:`AnchorBackend.find_anchor`."""
        self._up()
        for event, confirmation in self.events:
            if (event.log_id, event.tree_size) == (anchor.log_id, anchor.tree_size):
                if event.root != anchor.root:
                    raise _fork(anchor, event.root)
                return confirmation
        return None

    def submit(self, anchor: Anchor) -> bytes:
        """See :meth:`AnchorBackend.submit`."""
        self._up()
        self.submits += 1
        tx_hash = hashlib.sha256(b"tx%d" % self.submits).digest()
        self._pool[tx_hash] = anchor
        if self.instamine:
            self.mine()
        if self.lose_replies > 0:
            self.lose_replies -= 1
            raise UnavailableError("The reply from the chain was lost.", reason="chain-reply-lost")
        return tx_hash

    def mine(self) -> None:
        """Put every pooled transaction in a new block, applying the contract's rule."""
        self._block += 1
        for tx_hash, anchor in self._pool.items():
            if anchor.tree_size <= self._last.get(anchor.log_id, 0):
                self._receipts[tx_hash] = TxState(TxStatus.REVERTED, self._block)
                continue
            self._last[anchor.log_id] = anchor.tree_size
            self.events.append((anchor, Confirmation(tx_hash, self._block)))
            self._receipts[tx_hash] = TxState(TxStatus.MINED, self._block)
        self._pool.clear()

    def tx_state(self, tx_hash: bytes) -> TxState:
        """See :meth:`AnchorBackend.tx_state`."""
        self._up()
        if tx_hash in self._pool:
            return TxState(TxStatus.PENDING)
        state = self._receipts.get(tx_hash)
        if state is None or state.block_number is None:
            return TxState(TxStatus.UNKNOWN)
        return TxState(state.status, state.block_number, self._block - state.block_number + 1)
