"""``provgw log`` (the transparency log: keys, checkpoints, proofs) and ``provgw erase``."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import click

from gateway.core import merkle, note
from gateway.core.cbor import strict_loads
from gateway.core.errors import ProvenanceError
from gateway.ledger.commitments import leaf_for
from gateway.ledger.keys import GatewayKey, load_gateway_key, load_verifier, write_gateway_key
from gateway.ledger.log import TransparencyLog, erase_event, verify_log
from gateway.ledger.quorum import quorum_of
from gateway.ledger.receipts import ReceiptInfo, issue_receipt, verify_receipt
from gateway.ledger.tree import MerkleTree
from gateway.service.claims import verify_urgent_claims
from gateway.service.config import load_config
from gateway.store.events import EventStore
from gateway.views.cli._output import db_option, emit, fail, json_option, open_existing_db, refusals

DEFAULT_ORIGIN = "provgw.local/log"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


key_option = click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The gateway's log key file (written by `provgw log keygen`).",
)


witness_vkey_option = click.option(
    "--witness-vkey",
    "witness_vkeys",
    multiple=True,
    metavar="VKEY",
    help="A witness's cosignature public key (vkey, or a file holding it); repeatable.",
)


def load_log_key(path: Path) -> GatewayKey:
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
    key = load_log_key(key_path)
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


def _witness_vkey(ref: str) -> note.Verifier:
    """Read a witness cosignature key: a vkey, or a file holding its vkey or private key."""
    path = Path(ref)
    try:
        text = path.read_text(encoding="ascii").strip() if path.is_file() else ref.strip()
        if text.startswith("PRIVATE+KEY+"):
            verifier = note.Signer.from_skey(text).verifier
        else:
            verifier = note.Verifier.from_vkey(text)
    except (OSError, ProvenanceError, ValueError, UnicodeDecodeError) as err:
        fail(f"cannot read the witness key {ref!r}: {err}")
    if verifier.sig_type != note.COSIGNATURE_V1:
        fail(
            f"{ref!r} is not a witness cosignature key (type 0x04)",
            hint="`provgw witness serve` and `provgw serve` print each witness's vkey",
        )
    return verifier


def witness_policy(
    vkeys: tuple[str, ...], config_path: Path | None, quorum: int | None
) -> tuple[list[note.Verifier], int | None]:
    """Return the witness keys and quorum: --config's [witnesses], then --witness-vkey."""
    keys: list[note.Verifier] = []
    if config_path is not None:
        try:
            config = load_config(config_path)
        except ProvenanceError as err:
            fail(str(err), hint="pass the configuration `provgw serve` runs with")
        witnesses = config.witnesses
        if witnesses.embedded:
            keys.append(_witness_vkey(str(witnesses.embedded_key)))
        keys.extend(remote.verifier for remote in witnesses.remote)
        quorum = witnesses.quorum if quorum is None else quorum
    keys.extend(_witness_vkey(ref) for ref in vkeys)
    keys = list(dict.fromkeys(keys))  # the same key from --config and --witness-vkey counts once
    if len({k.public_key for k in keys}) != len(keys):
        # Ed25519 v1 cosignatures do not commit to the name: one key under two names would be
        # counted twice towards the quorum (C2SP tlog-cosignature).
        fail("one witness public key is given under two names; each witness counts once")
    if not keys:
        if quorum is not None:
            fail("--quorum needs witness keys", hint="add --witness-vkey VKEY or --config")
        return [], None
    quorum = 1 if quorum is None else quorum
    if quorum > len(keys):
        fail(f"a quorum of {quorum} cannot be met by the {len(keys)} witness keys given")
    return keys, quorum


def _verified_state(
    bundle: bytes, key: GatewayKey, witnesses: list[note.Verifier], quorum: int | None
) -> tuple[str, tuple[str, ...]]:
    """``("witnessed", cosigners)`` when *quorum* of *witnesses* cosigned, else ``("logged", ())``.

    The receipt itself was verified before (signature, inclusion proof, every cosignature by a
    given key). The quorum is counted by :func:`require_quorum` (C2SP tlog-cosignature: a split
    view is stopped only by enough independent witnesses), with cosignatures dated in the future
    not counted. A chain anchor in the bundle is a claim this command does not look up, so the
    verified state is never ``"anchored"``.
    """
    if quorum is None:
        return "logged", ()
    checkpoint_note = strict_loads(bundle, what="receipt")[2]
    now = int(datetime.now(UTC).timestamp())
    counted = quorum_of(checkpoint_note, key.verifier, witnesses, quorum, now=now)
    return ("logged", ()) if counted is None else ("witnessed", counted)


def _prove_text(
    event_id: int, info: ReceiptInfo, facts: dict[str, object], path: list[bytes]
) -> str:
    if facts["state"] == "witnessed":
        verified = f"witnessed by {', '.join(info.witnesses)} (quorum {facts['witness_quorum']})"
    elif facts["witness_quorum"] is None:
        verified = "logged; no witness keys given, so witnessing was not checked"
    else:
        verified = (
            f"logged; cosigned by {len(info.witnesses)} of the {facts['witness_quorum']} "
            "witnesses required"
        )
    lines = [
        f"event {event_id} is entry {info.leaf_index} of {info.tree_size}; receipt verified",
        f"state verified: {verified}",
        f"state recorded by the gateway: {facts['recorded_state']}",
    ]
    if info.anchor is not None:
        lines.append(
            f"anchor claimed: {info.anchor.chain} block {info.anchor.block} tx "
            f"{info.anchor.tx.hex()} (not looked up on the chain here)"
        )
    return "\n".join(
        [
            *lines,
            f"root {_b64(info.root)}",
            f"leaf {facts['leaf_hash']}",
            *(f"  {_b64(h)}" for h in path),
            f"receipt {facts['receipt']}",
        ]
    )


@group.command("prove")
@click.argument("event_id", type=int)
@db_option
@key_option
@witness_vkey_option
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="gateway.toml: verify with the witnesses of its [witnesses] section (remote vkeys, "
    "the embedded witness's key file) and its quorum.",
)
@click.option(
    "--quorum",
    type=click.IntRange(min=1),
    help="Witnesses that must have cosigned for 'witnessed' (default: the quorum of --config, "
    "else 1).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the receipt bundle (CBOR) to this file.",
)
@json_option
def prove(  # noqa: PLR0913 -- one parameter per command-line option
    *,
    event_id: int,
    db_path: Path,
    key_path: Path,
    witness_vkeys: tuple[str, ...],
    config_path: Path | None,
    quorum: int | None,
    out: Path | None,
    as_json: bool,
) -> None:
    """Print EVENT_ID's inclusion proof and COSE receipt, verified before printing.

    The receipt (RFC 9942, with the checkpoint and any witness cosignatures and chain anchor)
    verifies offline with the gateway's public key. Two states are reported. "state" is what
    this command verified: "logged" (the gateway key signed the checkpoint holding the event),
    or "witnessed" when at least the quorum of the witness keys given (--witness-vkey, --config)
    cosigned it; without witness keys it is never more than "logged", and a wrong key never
    counts. "recorded_state" is what the gateway's database records for that checkpoint
    (logged; witnessed: its cosignatures reached the configured witness quorum, fewer do not
    count; anchored: a chain transaction recorded), not verified here; a chain anchor is shown
    as claimed, for lookup on the chain. Exit 1 if the event is not logged under a checkpoint
    yet, has been erased (then it can no longer be linked to the log), a cosignature by a
    given witness key does not verify, or --key did not sign the log's checkpoints.
    """
    key = load_log_key(key_path)
    witnesses, required = witness_policy(witness_vkeys, config_path, quorum)
    with refusals(as_json=as_json), open_existing_db(db_path) as db:
        log = TransparencyLog(db, key.signer)
        log.check_signer()
        event = EventStore(db).by_id(event_id)
        if event is None or event.salt is None:
            what = "no such event" if event is None else "the event was erased"
            fail(f"event {event_id} cannot be proved: {what}", code=1)
        bundle = issue_receipt(log, key, event_id)
        leaf = leaf_for("event", event.salt, event.digest)
        # RFC 9942 §5.2 and C2SP tlog-cosignature: the receipt, its proof and every cosignature
        # by a given witness key verify (a forged one refuses the receipt) ...
        info = verify_receipt(
            bundle, leaf, key.verifier, witnesses=witnesses, witness_quorum=required or 1
        )
        # ... and the state is the one those keys prove, never the one the database records.
        state, cosigners = _verified_state(bundle, key, witnesses, required)
        recorded = log.status(info.tree_size).state
        path = log.inclusion_proof(info.leaf_index, info.tree_size)
        if out is not None:
            out.write_bytes(bundle)
        anchor = info.anchor
        facts: dict[str, object] = {
            "event_id": event_id,
            "leaf_index": info.leaf_index,
            "tree_size": info.tree_size,
            "root": _b64(info.root),
            "leaf_hash": _b64(leaf),
            "inclusion_proof": [_b64(h) for h in path],
            "state": state,
            "recorded_state": recorded,
            "witnesses": list(cosigners),
            "witness_keys": len(witnesses),
            "witness_quorum": required,
            "anchor_claimed": None
            if anchor is None
            else {"chain": anchor.chain, "tx": anchor.tx.hex(), "block": anchor.block},
            "receipt": _b64(bundle),
            "receipt_file": str(out) if out is not None else None,
        }
        emit(facts, as_json=as_json, text=_prove_text(event_id, info, facts, path))


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

    Recomputes each commitment from salt and digest, for events (erased events keep only
    their commitment) and for the urgent lane's records (recalls, offers, device reports, SBOM
    verdicts), checks that no stored record is missing from the log, rebuilds the roots, and
    checks every signed checkpoint's signature, root and consistency with the one before.
    Then checks what each urgent-lane record claims (a device's installed / failed state, its
    recall, manifest and time; a timeout; a recall's status; an SBOM verdict) against the stored
    bytes behind its digest; offers are counted, their bytes are not kept.
    Exit 0: the log is intact; 1: the first mismatch is named.
    """
    try:
        verifier = load_verifier(key_ref)
    except (ProvenanceError, ValueError, UnicodeDecodeError) as err:
        fail(f"cannot read the gateway public key {key_ref!r}: {err}")
    with refusals(as_json=as_json), open_existing_db(db_path) as db:
        report = verify_log(db, verifier, _progress(quiet or as_json))
        # The log binds each urgent-lane record's digest; this binds what the record claims
        # (state, device, recall, manifest, time) to the bytes behind that digest.
        claims = verify_urgent_claims(db)
        emit(
            {
                "ok": True,
                "leaves": report.leaves,
                "events": report.events,
                "erased_events": report.erased_events,
                "erasures": report.erasures,
                "urgent_records": report.urgent_records,
                "revocations": report.revocations,
                "other_records": report.other_records,
                "checkpoints": report.checkpoints,
                "pending_events": report.pending_events,
                "root": _b64(report.root),
                "urgent_claims": claims.to_json(),
            },
            as_json=as_json,
            text=(
                f"log OK: {report.leaves} entries ({report.events} events, "
                f"{report.erased_events} erased, {report.erasures} erasures, "
                f"{report.urgent_records} urgent-lane records, "
                f"{report.revocations} device revocations, {report.other_records} other), "
                f"{report.checkpoints} checkpoints verified, "
                f"{report.pending_events} events pending\n{claims.summary()}"
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
