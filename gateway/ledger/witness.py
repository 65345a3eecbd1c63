r"""A C2SP tlog-witness: checks a log's checkpoints for consistency and cosigns them.

Split-view protection (DESIGN, "Witnesses"): a log could show one history to some verifiers and
another to the rest. A witness remembers the latest checkpoint it cosigned for each log and only
cosigns a new one that provably extends it, so a verifier that requires cosignatures from a
quorum of witnesses (:mod:`gateway.ledger.quorum`) can only be shown the one history those
witnesses saw.

Wire format (https://c2sp.org/tlog-witness, ``add-checkpoint``): the request body is
``old <size>\n``, up to 63 base64 consistency-proof lines, an empty line, then the signed
checkpoint note; the answer is the witness's cosignature lines (https://c2sp.org/tlog-cosignature,
Ed25519 v1, timestamped). :class:`AddCheckpointRequest` is that body; :class:`Witness` does every
check and takes ``now`` from its caller; the HTTP server (:mod:`gateway.service.witness_server`)
only moves bytes and maps the typed errors onto the status codes the spec names.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.core.errors import (
    ConflictError,
    MalformedError,
    MismatchError,
    OversizeError,
    UntrustedSignerError,
    VerificationError,
)
from gateway.core.merkle import EMPTY_ROOT, HASH_SIZE, verify_consistency
from gateway.core.note import (
    COSIGNATURE_V1,
    ED25519,
    MAX_NOTE_SIZE,
    SignedCheckpoint,
    Signer,
    Verifier,
    open_checkpoint,
)
from gateway.store.witness import WitnessedCheckpoint, WitnessStore

__all__ = ["MAX_PROOF_LINES", "MAX_REQUEST_SIZE", "AddCheckpointRequest", "Witness"]

#: tlog-witness: "The client MUST NOT send more than 63 consistency proof lines".
MAX_PROOF_LINES = 63
#: The largest well-formed request: the old size line, 63 proof lines, the blank line, the note.
MAX_REQUEST_SIZE = len("old 18446744073709551615\n") + MAX_PROOF_LINES * 45 + 1 + MAX_NOTE_SIZE

#: Sizes are stored as SQLite INTEGERs (signed 64-bit); no real log comes near this.
_MAX_STORED_SIZE = (1 << 63) - 1
_OLD_LINE = re.compile(rb"old (0|[1-9][0-9]{0,19})")


def _malformed(message: str, reason: str = "malformed-request") -> MalformedError:
    return MalformedError(message, reason=reason)


@dataclass(frozen=True)
class AddCheckpointRequest:
    """The body of a tlog-witness ``add-checkpoint`` request.

    Valid on construction: the old size is a non-negative integer, the proof has at most 63
    SHA-256-sized hashes, and the checkpoint is non-empty bytes. The note itself is checked by
    the witness, with the log's keys.
    """

    old_size: int
    proof: tuple[bytes, ...]
    checkpoint: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.old_size < 1 << 64:
            raise _malformed(f"The old size {self.old_size} is out of range.")
        if len(self.proof) > MAX_PROOF_LINES:
            raise _malformed(
                f"The consistency proof has {len(self.proof)} hashes; tlog-witness allows at "
                f"most {MAX_PROOF_LINES}."
            )
        if any(len(h) != HASH_SIZE for h in self.proof):
            raise _malformed("A consistency proof hash is not 32 bytes long (SHA-256).")
        if not self.checkpoint:
            raise _malformed("The request carries no checkpoint.")

    def to_bytes(self) -> bytes:
        """Return the body: ``old N``, one base64 line per proof hash, a blank line, the note."""
        lines = [f"old {self.old_size}\n".encode()]
        lines.extend(base64.b64encode(h) + b"\n" for h in self.proof)
        return b"".join(lines) + b"\n" + self.checkpoint

    @classmethod
    def from_bytes(cls, body: bytes) -> AddCheckpointRequest:
        """Parse a request body strictly (canonical decimal and base64; size cap first).

        Raises :class:`OversizeError` above :data:`MAX_REQUEST_SIZE` and
        :class:`MalformedError` for anything that is not the tlog-witness request format.
        """
        # Endless data: refuse before looking at the bytes.
        if len(body) > MAX_REQUEST_SIZE:
            raise OversizeError(
                f"The witness request is {len(body)} bytes; at most {MAX_REQUEST_SIZE} are "
                "accepted.",
                reason="oversize-request",
            )
        # The proof lines are never empty, so the first empty line ends them (tlog-witness).
        end = body.find(b"\n\n")
        if end < 0:
            raise _malformed(
                "The witness request is not an old size line, proof lines, an empty line and "
                "a checkpoint."
            )
        header, checkpoint = body[:end].split(b"\n"), body[end + 2 :]
        old = _OLD_LINE.fullmatch(header[0])
        if old is None:
            raise _malformed(
                "The witness request must start with 'old' and the previous tree size in plain "
                "decimal."
            )
        if len(header) - 1 > MAX_PROOF_LINES:
            raise _malformed(
                f"The consistency proof has {len(header) - 1} lines; tlog-witness allows at "
                f"most {MAX_PROOF_LINES}."
            )
        proof = tuple(_proof_hash(line) for line in header[1:])
        return cls(int(old.group(1)), proof, checkpoint)


def _proof_hash(line: bytes) -> bytes:
    # RFC 4648 §4 base64, canonical only, one SHA-256 hash per line.
    try:
        raw = base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _malformed("A consistency proof line is not valid base64.") from exc
    if len(raw) != HASH_SIZE or base64.b64encode(raw) != line:
        raise _malformed("A consistency proof line is not one canonically encoded SHA-256 hash.")
    return raw


class Witness:
    """A tlog-witness for a fixed set of logs, keeping its state in a :class:`WitnessStore`.

    *signer* is the witness's cosigning key (type 0x04, tlog-cosignature Ed25519 v1); *logs* are
    the logs' Ed25519 keys, whose names are the logs' origin lines (tlog-checkpoint). A log may
    have several keys (rotation); any one of them signing is enough.
    """

    def __init__(self, signer: Signer, logs: Iterable[Verifier], store: WitnessStore) -> None:
        if signer.verifier.sig_type != COSIGNATURE_V1:
            raise ValueError("a witness cosigns with an Ed25519 cosignature key (type 0x04)")
        self._signer = signer
        self._store = store
        self._logs: dict[str, list[Verifier]] = {}
        for log in logs:
            if log.sig_type != ED25519:
                raise ValueError(f"the log key {log.name} is not a plain Ed25519 key (type 0x01)")
            self._logs.setdefault(log.name, []).append(log)
        if not self._logs:
            raise ValueError("a witness needs at least one log key")

    @property
    def verifier(self) -> Verifier:
        """The witness's public key, the one verifiers configure (``vkey``)."""
        return self._signer.verifier

    @property
    def origins(self) -> tuple[str, ...]:
        """The logs this witness serves, by origin line."""
        return tuple(sorted(self._logs))

    def add_checkpoint(self, body: bytes, *, now: int) -> bytes:
        """Check an ``add-checkpoint`` request body and return the cosignature line(s).

        *now* is the time to put in the cosignature (POSIX seconds), read by the caller.

        Steps (C2SP tlog-witness, ``add-checkpoint``):

        1. The body is the request format (endless data, malformed input) — 400.
        2. The origin line names a configured log (unknown log) — 404.
        3. A key of that log signed the checkpoint, and the checkpoint is well-formed (forged
           or foreign checkpoint) — 403, or 400 if malformed.
        4. The old size is at most the checkpoint size (a log that shrank) — 400.
        5. Atomically with step 8: the old size is the size of the latest cosigned checkpoint,
           or 0 if none (stale view of the witness) — 409 with that size.
        6. Same size as the latest: same root, empty proof (split view at one size) — 409;
           the request is kept as evidence.
        7. Larger: the proof is empty from an unknown or empty log (trust on first use), else
           an RFC 9162 §2.1.4.2 consistency proof from the latest checkpoint (forked or
           rewritten history) — 422; the request is kept as evidence.
        8. Persist the checkpoint as the latest, then cosign it with a time never earlier than
           the previous cosignature for this log (a clock stepping back must not make two
           cosignatures claim the opposite order).
        """
        # Step 1 — endless data, malformed input.
        request = AddCheckpointRequest.from_bytes(body)
        # Step 2 — unknown log. The origin is read before any signature so the right keys can
        # be chosen; nothing else is trusted until step 3.
        origin = _origin_line(request.checkpoint)
        keys = self._logs.get(origin)
        if keys is None:
            raise UntrustedSignerError(
                f"This witness does not witness the log {origin!r}; ask its operator to add "
                "the log's public key.",
                reason="unknown-log",
            )
        # Step 3 — forged checkpoint: one of the log's keys must have signed it.
        signed = _open_with_any(request.checkpoint, keys)
        checkpoint = signed.checkpoint
        if checkpoint.size > _MAX_STORED_SIZE:
            raise _malformed(
                f"The checkpoint tree size {checkpoint.size} is above 2^63-1, more than this "
                "witness can record."
            )
        if checkpoint.size == 0 and checkpoint.root != EMPTY_ROOT:
            # RFC 9162 §2.1.1: MTH({}) = SHA-256(); any other root for no entries is made up.
            raise _malformed("The checkpoint of an empty log does not carry the empty root.")
        # Step 4 — a log that shrank.
        if request.old_size > checkpoint.size:
            raise _malformed(
                f"The old size {request.old_size} is above the checkpoint size "
                f"{checkpoint.size}; a log never shrinks.",
                reason="old-size-above-checkpoint",
            )
        with self._store.atomic():
            latest = self._store.latest(origin)
            known = 0 if latest is None else latest.size
            # Step 5 — the client's view of the witness is stale (or it is probing with old 0).
            if request.old_size != known:
                raise ConflictError(
                    f"The witness's latest checkpoint of {origin} has {known} entries, not "
                    f"{request.old_size}; prove consistency from {known}.",
                    reason="stale-old-size",
                    known_size=known,
                )
            refusal = _refusal(latest, signed, request.proof)
            if refusal is None:
                # Step 8 — persist before answering; the time never goes back for this log.
                timestamp = max(now, 0 if latest is None else latest.cosigned_at)
                self._store.put(
                    WitnessedCheckpoint(
                        origin, checkpoint.size, checkpoint.root, request.checkpoint, timestamp
                    )
                )
                return self._signer.sign(signed.note.text, timestamp=timestamp).line.encode()
        # Steps 6-7 — a validly signed head that does not extend the last one is evidence of a
        # split view: kept (after the state transaction, which stays untouched), then refused.
        self._store.record_evidence(origin, refusal.reason, body, now)
        raise refusal


def _refusal(
    latest: WitnessedCheckpoint | None, signed: SignedCheckpoint, proof: Sequence[bytes]
) -> ConflictError | MismatchError | None:
    """Say why *signed* does not extend *latest* (steps 6-7 of :meth:`Witness.add_checkpoint`)."""
    checkpoint = signed.checkpoint
    # Step 6 — split view at one size.
    if latest is not None and checkpoint.size == latest.size:
        if checkpoint.root != latest.root:
            return ConflictError(
                f"The log {checkpoint.origin} showed this witness two different histories of "
                f"{checkpoint.size} entries (a split view); the witness keeps the first and "
                "refuses to cosign the other.",
                reason="split-view",
                known_size=latest.size,
            )
        if proof:
            return _bad_proof("A consistency proof between heads of one size must be empty.")
        return None
    # Step 7 — first sight of the log (or of its empty tree): nothing to be consistent with;
    # tlog-witness: "The proof MUST be empty if the old size is zero".
    if latest is None or latest.size == 0:
        return _bad_proof("A consistency proof from size 0 must be empty.") if proof else None
    try:
        verify_consistency(latest.size, checkpoint.size, latest.root, checkpoint.root, proof)
    except VerificationError as exc:
        return _bad_proof(
            f"The log {checkpoint.origin} of {checkpoint.size} entries is not proven to extend "
            f"the {latest.size} entries this witness cosigned: {exc}"
        )
    return None


def _bad_proof(message: str) -> MismatchError:
    return MismatchError(message, reason="bad-consistency-proof")


def _origin_line(note: bytes) -> str:
    first, sep, _ = note.partition(b"\n")
    try:
        origin = first.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _malformed("The checkpoint's origin line is not UTF-8 text.") from exc
    if not sep or not origin:
        raise _malformed("The checkpoint has no origin line.")
    return origin


def _open_with_any(note: bytes, keys: Sequence[Verifier]) -> SignedCheckpoint:
    # tlog-witness: verify "against the public key(s) it trusts for the checkpoint origin" and
    # "ignore signatures from unknown keys". Each key is tried on its own, so a bad signature by
    # a retired key cannot hide a good one by the current key.
    error: VerificationError | None = None
    for key in keys:
        try:
            return open_checkpoint(note, key)
        except VerificationError as exc:
            error = exc
    assert error is not None  # keys is never empty
    raise error
