"""``provgw log`` (the transparency log: keys, checkpoints, proofs) and ``provgw erase``."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import click

from gateway.core import merkle
from gateway.core.errors import ProvenanceError
from gateway.ledger.commitments import leaf_for
from gateway.ledger.keys import GatewayKey, load_gateway_key, load_verifier, write_gateway_key
from gateway.ledger.log import TransparencyLog, erase_event, verify_log
from gateway.ledger.receipts import issue_receipt, verify_receipt
from gateway.ledger.tree import MerkleTree
from gateway.store.events import EventStore
from gateway.views.cli._output import emit, fail, json_option, open_existing_db, refusals

DEFAULT_ORIGIN = "provgw.local/log"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


db_option = click.option(
    "--db",
    "db_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The gateway's SQLite database file.",
)
key_option = click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The gateway's log key file (written by `provgw log keygen`).",
)


def _load_key(path: Path) -> GatewayKey:
    try:
        return load_gateway_key(path)
    except (ProvenanceError, ValueError, UnicodeDecodeError) as err:
        fail(f"cannot read the log key {path}: {err}", hint="create one with provgw log keygen")


@click.group("log")
def group() -> None:
    """Inspect the transparency log: checkpoints, inclusion and consistency proofs, verification."""


@group.command("keygen")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="File to write the private key to (created with mode 0600; never overwritten).",
)
@click.option(
    "--origin",
    default=DEFAULT_ORIGIN,
    show_default=True,
    help="The log's origin line (C2SP tlog-checkpoint); published: never a site or device name.",
)
@json_option
def keygen(out: Path, origin: str, *, as_json: bool) -> None:
    """Create the gateway's Ed25519 log key; print its public key (vkey) for witnesses.

    The same key signs checkpoints (C2SP signed-note) and COSE receipts (RFC 9942).
    """
    try:
        key = GatewayKey.generate(origin)
    except ProvenanceError as err:
        fail(f"the origin {origin!r} cannot name a key: {err}")
    try:
        write_gateway_key(out, key)
    except FileExistsError:
        fail(f"{out} already exists; a log key is never overwritten", hint="choose another --out")
    vkey = key.verifier.vkey
    emit({"key_file": str(out), "origin": origin, "vkey": vkey}, as_json=as_json, text=vkey)


@group.command("checkpoint")
@db_option
@key_option
@json_option
def checkpoint(db_path: Path, key_path: Path, *, as_json: bool) -> None:
    """Log every pending event and sign a checkpoint if the log grew; print the signed note.

    Before signing, the new head is proved consistent with the last signed one; the log refuses
    to sign (exit 1) when it is not. Exit 0 also when nothing was new (the latest note is shown).
    """
    key = _load_key(key_path)
    with refusals(as_json=as_json), open_existing_db(db_path) as db:
        log = TransparencyLog(db, key.signer)
        appended = log.append_pending()
        signed = log.seal(datetime.now(UTC))
        latest = log.latest_checkpoint()
        note_text = latest.note.decode() if latest is not None else ""
        emit(
            {
                "appended": appended,
                "new_checkpoint": signed is not None,
                "size": latest.size if latest is not None else 0,
                "root": _b64(latest.root) if latest is not None else None,
                "note": note_text,
            },
            as_json=as_json,
            text=note_text or "the log is empty: nothing to sign",
        )


@group.command("prove")
@click.argument("event_id", type=int)
@db_option
@key_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the receipt bundle (CBOR) to this file.",
)
@json_option
def prove(event_id: int, db_path: Path, key_path: Path, out: Path | None, *, as_json: bool) -> None:
    """Print EVENT_ID's inclusion proof and COSE receipt, verified before printing.

    The receipt (RFC 9942, with the checkpoint and any witness cosignatures and chain anchor)
    verifies offline with the gateway's public key. Exit 1 if the event is not logged under a
    checkpoint yet, or has been erased (then it can no longer be linked to the log).
    """
    key = _load_key(key_path)
    with refusals(as_json=as_json), open_existing_db(db_path) as db:
        log = TransparencyLog(db, key.signer)
        event = EventStore(db).by_id(event_id)
        if event is None or event.salt is None:
            what = "no such event" if event is None else "the event was erased"
            fail(f"event {event_id} cannot be proved: {what}", code=1)
        bundle = issue_receipt(log, key, event_id)
        leaf = leaf_for("event", event.salt, event.digest)
        info = verify_receipt(bundle, leaf, key.verifier)
        path = log.inclusion_proof(info.leaf_index, info.tree_size)
        if out is not None:
            out.write_bytes(bundle)
        emit(
            {
                "event_id": event_id,
                "leaf_index": info.leaf_index,
                "tree_size": info.tree_size,
                "root": _b64(info.root),
                "leaf_hash": _b64(leaf),
                "inclusion_proof": [_b64(h) for h in path],
                "state": info.state,
                "receipt": _b64(bundle),
                "receipt_file": str(out) if out is not None else None,
            },
            as_json=as_json,
            text="\n".join(
                [
                    (
                        f"event {event_id} is entry {info.leaf_index} of {info.tree_size} "
                        f"(state: {info.state}); receipt verified"
                    ),
                    f"root {_b64(info.root)}",
                    f"leaf {_b64(leaf)}",
                    *(f"  {_b64(h)}" for h in path),
                    f"receipt {_b64(bundle)}",
                ]
            ),
        )


@group.command("consistency")
@click.argument("old", type=int)
@click.argument("new", type=int)
@db_option
@json_option
def consistency(old: int, new: int, db_path: Path, *, as_json: bool) -> None:
    """Print the RFC 9162 proof that the log at NEW entries extends the log at OLD, verified."""
    with refusals(as_json=as_json), open_existing_db(db_path) as db:
        # Read-only: no key needed. Sizes beyond the log are refused by the tree.
        tree = MerkleTree(db)
        proof = tree.consistency_proof(old, new)
        old_root, new_root = tree.root(old), tree.root(new)
        # RFC 9162 §2.1.4: every log extends the empty one; there is nothing to verify from 0.
        if old > 0:
            merkle.verify_consistency(old, new, old_root, new_root, proof)
        emit(
            {
                "old_size": old,
                "new_size": new,
                "old_root": _b64(old_root),
                "new_root": _b64(new_root),
                "proof": [_b64(h) for h in proof],
                "verified": True,
            },
            as_json=as_json,
            text="\n".join(
                [
                    f"log at {new} entries extends log at {old} entries: proof verified",
                    f"old root {_b64(old_root)}",
                    f"new root {_b64(new_root)}",
                    *(f"  {_b64(h)}" for h in proof),
                ]
            ),
        )


def _progress(quiet: bool) -> Callable[[int, int], None] | None:  # noqa: FBT001 -- flag value
    if quiet:
        return None

    def show(done: int, total: int) -> None:
        click.echo(f"verified {done:,} of {total:,} entries", err=True)

    return show


@group.command("verify")
@db_option
@click.option(
    "--key",
    "key_ref",
    required=True,
    help="The gateway's public key: a vkey, or a file holding the vkey or the log key.",
)
@click.option("--quiet", is_flag=True, help="No progress lines on stderr.")
@json_option
def verify(db_path: Path, key_ref: str, *, quiet: bool, as_json: bool) -> None:
    """Re-derive the whole log from the store and check every checkpoint.

    Recomputes each commitment from salt and digest (erased events keep only their
    commitment), rebuilds the roots, and checks every signed checkpoint's signature, root and
    consistency with the one before. Exit 0: the log is intact; 1: the first mismatch is named.
    """
    try:
        verifier = load_verifier(key_ref)
    except (ProvenanceError, ValueError, UnicodeDecodeError) as err:
        fail(f"cannot read the gateway public key {key_ref!r}: {err}")
    with refusals(as_json=as_json), open_existing_db(db_path) as db:
        report = verify_log(db, verifier, _progress(quiet or as_json))
        emit(
            {
                "ok": True,
                "leaves": report.leaves,
                "events": report.events,
                "erased_events": report.erased_events,
                "erasures": report.erasures,
                "other_records": report.other_records,
                "checkpoints": report.checkpoints,
                "pending_events": report.pending_events,
                "root": _b64(report.root),
            },
            as_json=as_json,
            text=(
                f"log OK: {report.leaves} entries ({report.events} events, "
                f"{report.erased_events} erased, {report.erasures} erasures, "
                f"{report.other_records} other), {report.checkpoints} checkpoints verified, "
                f"{report.pending_events} events pending"
            ),
        )


@click.command("erase")
@click.argument("event_id", type=int)
@click.option(
    "--reason", required=True, help="Why the record is erased (kept in the gateway only)."
)
@db_option
@json_option
def erase_command(event_id: int, reason: str, db_path: Path, *, as_json: bool) -> None:
    """Crypto-shred EVENT_ID: destroy its salt and stored bytes, and log the erasure.

    The log still verifies (the entry keeps its commitment), but the record can no longer be
    linked to it. The erasure is itself a log entry committing to the event id, a digest of the
    reason and the time — not to the content. Exit 1: unknown or already erased event.
    """
    with refusals(as_json=as_json), open_existing_db(db_path) as db:
        erasure = erase_event(db, event_id, reason, datetime.now(UTC))
        emit(
            {
                "event_id": event_id,
                "erasure_id": erasure.erasure_id,
                "leaf_index": erasure.leaf_index,
                "erased_ms": erasure.erased_ms,
            },
            as_json=as_json,
            text=(
                f"event {event_id} erased; the erasure is log entry {erasure.leaf_index} "
                "(sealed at the next checkpoint)"
            ),
        )
