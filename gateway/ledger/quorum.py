"""Verifier policy: trust a log checkpoint only when k of n known witnesses cosigned it (pure).

One witness can be down, lagging, or colluding with the log; a split view is only stopped when
the verifier insists on cosignatures from enough independent witnesses that any two quorums
share an honest one (C2SP tlog-cosignature: "Log clients can verify a quorum of cosignatures to
prevent split-view attacks before trusting an inclusion proof"). The clock is the caller's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.core.errors import PolicyError
from gateway.core.note import COSIGNATURE_V1, SignedCheckpoint, Verifier, open_checkpoint

__all__ = ["DEFAULT_FUTURE_SKEW", "QuorumCheckpoint", "quorum_of", "require_quorum"]

#: Cosignatures timestamped more than this many seconds after ``now`` do not count.
DEFAULT_FUTURE_SKEW = 300


@dataclass(frozen=True)
class QuorumCheckpoint:
    """A checkpoint signed by its log and cosigned by at least the required witnesses."""

    signed: SignedCheckpoint
    #: The witnesses whose cosignatures counted, by key name, sorted.
    witnesses: tuple[str, ...]


def require_quorum(  # noqa: PLR0913 - checkpoint, keys, k, and the optional clock with its skew
    signed_checkpoint: bytes,
    log_verifier: Verifier,
    witness_verifiers: Sequence[Verifier],
    k: int,
    *,
    now: int | None = None,
    future_skew: int = DEFAULT_FUTURE_SKEW,
) -> QuorumCheckpoint:
    """Open *signed_checkpoint* and require cosignatures by at least *k* of *witness_verifiers*.

    Steps:

    1. The policy is sound: every witness key is a cosignature key (type 0x04), no public key
       is listed twice (Ed25519 v1 cosignatures do not commit to the name, so one key under two
       names would count twice — tlog-cosignature), and ``1 <= k <= n`` (a policy that counts
       nothing, or can never be met).
    2. The log signed the checkpoint, every signature by a known key verifies, and the text is
       a checkpoint of that log (:func:`~gateway.core.note.open_checkpoint`: forgery,
       tampering, another log's head).
    3. When *now* is given, cosignatures dated more than *future_skew* seconds ahead do not
       count (tlog-cosignature: verifiers "MAY reject cosignatures with timestamps in the
       future"; a witness with a broken clock).
    4. At least *k* distinct witnesses cosigned (split view: too few independent observers).

    Raises :class:`~gateway.core.errors.PolicyError` (reason ``"witness-quorum"``) when step 4
    fails, and the errors of :func:`open_checkpoint` for step 2.
    """
    # Step 1 — a policy that counts nothing or counts one witness twice.
    if any(v.sig_type != COSIGNATURE_V1 for v in witness_verifiers):
        raise ValueError("witness keys must be cosignature keys (type 0x04)")
    if len({v.public_key for v in witness_verifiers}) != len(witness_verifiers):
        raise ValueError("a witness public key is listed twice; each counts once")
    if not 1 <= k <= len(witness_verifiers):
        raise ValueError(f"a quorum of {k} of {len(witness_verifiers)} witnesses cannot be met")
    # Step 2 — forgery, tampering, another log's head.
    signed = open_checkpoint(signed_checkpoint, log_verifier, witness_verifiers)
    # Step 3 — cosignatures from the future; step 4 — count the distinct witnesses.
    witnesses = sorted(
        name
        for name, timestamp in signed.cosignatures.items()
        if now is None or timestamp <= now + future_skew
    )
    if len(witnesses) < k:
        cp = signed.checkpoint
        got = ", ".join(witnesses) or "none"
        raise PolicyError(
            f"The log head of {cp.origin} at {cp.size} entries is cosigned by {len(witnesses)} "
            f"of the {k} witnesses required ({got}); it may be a view shown to this verifier "
            "only, so it is not trusted yet.",
            reason="witness-quorum",
        )
    return QuorumCheckpoint(signed, tuple(witnesses))


def quorum_of(
    signed_checkpoint: bytes,
    log_verifier: Verifier,
    witness_verifiers: Sequence[Verifier],
    k: int,
    *,
    now: int | None = None,
) -> tuple[str, ...] | None:
    """Return the witnesses counted when *k* of them cosigned; ``None`` when fewer did.

    :func:`require_quorum` as a question (``provgw log prove``, ``provgw audit verify``): a
    checkpoint below the quorum is an answer, not an error. An unsound policy still raises
    ``ValueError``, and a checkpoint that does not open still raises.
    """
    try:
        return require_quorum(
            signed_checkpoint, log_verifier, witness_verifiers, k, now=now
        ).witnesses
    except PolicyError as err:
        if err.reason != "witness-quorum":
            raise
        return None
