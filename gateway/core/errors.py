"""The one exception tree of Provenance Gateway.

Every error a caller can see is a :class:`ProvenanceError`. Foreign exceptions (cbor2,
cryptography, sqlite3, paho) are mapped into this tree where they enter our code, so callers never
catch a library's exception type::

    ProvenanceError
    ├── VerificationError            bad data: the input is refused, and quarantined with the reason
    │   ├── MalformedError           not well-formed CBOR / COSE / X.509 / JSON
    │   ├── OversizeError            over the size cap, refused before parsing (endless data)
    │   ├── PolicyError              well-formed but against the message policy (alg unprotected, …)
    │   ├── SignatureError           signature does not verify
    │   ├── UntrustedSignerError     signer unknown, chain to no trusted root, wrong key for the kid
    │   ├── RevokedError             signer's certificate or key was revoked
    │   ├── SchemaError              payload is not the closed map its type requires
    │   ├── ReplayError              (device, seq) seen before with other content, or seq went back
    │   ├── RollbackError            manifest sequence number not above the highest seen
    │   ├── ExpiredError             outside its validity window (certificate, use-before, skew)
    │   ├── MismatchError            digest, size, vendor, class or topic do not match
    │   ├── ConflictError            the other side's latest state is not the one assumed (witness)
    │   └── SbomError                SBOM fails schema or minimum-element checks
    └── UnavailableError             a service is down: broker, ledger, witness, chain

Each error carries ``reason``, a short stable machine token (``"bad-signature"``) used for
quarantine rows and metrics, and its message is a sentence a biomed engineer can act on.
"""

from __future__ import annotations

__all__ = [
    "ConflictError",
    "ExpiredError",
    "MalformedError",
    "MismatchError",
    "OversizeError",
    "PolicyError",
    "ProvenanceError",
    "ReplayError",
    "RevokedError",
    "RollbackError",
    "SbomError",
    "SchemaError",
    "SignatureError",
    "UnavailableError",
    "UntrustedSignerError",
    "VerificationError",
]


class ProvenanceError(Exception):
    """Root of every error Provenance Gateway raises."""

    #: Default machine token for the error class; an instance may carry a finer one.
    default_reason = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or self.default_reason

    @property
    def message(self) -> str:
        """The human sentence."""
        return str(self)


class VerificationError(ProvenanceError):
    """The input was refused: it is quarantined with this reason, never stored as valid."""

    default_reason = "invalid"


class MalformedError(VerificationError):
    """The bytes are not well-formed (CBOR, COSE, X.509, JSON)."""

    default_reason = "malformed"


class OversizeError(VerificationError):
    """The input is larger than the configured cap; refused before any parsing."""

    default_reason = "oversize"


class PolicyError(VerificationError):
    """Well-formed, but the message policy forbids it (e.g. ``alg`` in the unprotected header)."""

    default_reason = "policy"


class SignatureError(VerificationError):
    """The signature does not verify over the bytes received."""

    default_reason = "bad-signature"


class UntrustedSignerError(VerificationError):
    """The signer is unknown or its certificate chains to no trusted manufacturer root."""

    default_reason = "untrusted-signer"


class RevokedError(VerificationError):
    """The signer's certificate or key has been revoked."""

    default_reason = "revoked"


class SchemaError(VerificationError):
    """The payload is not the closed map its type requires."""

    default_reason = "schema"


class ReplayError(VerificationError):
    """A sequence number was reused with other content, or went backwards."""

    default_reason = "replay"


class RollbackError(VerificationError):
    """A manifest's sequence number is not above the highest already accepted (anti-rollback)."""

    default_reason = "rollback"


class ExpiredError(VerificationError):
    """The object is outside its validity window (certificate dates, use-before, clock skew)."""

    default_reason = "expired"


class MismatchError(VerificationError):
    """A digest, size, vendor, class or topic does not match what it must."""

    default_reason = "mismatch"


class ConflictError(VerificationError):
    """The other side's latest state is not the one the request assumed.

    A C2SP tlog-witness answers "409 Conflict" with the size of the latest checkpoint it cosigned
    when the submitted old size is not that size, or when it holds another root at the same size
    (a split view); ``known_size`` carries that size so the log can prove consistency from it.
    """

    default_reason = "conflict"

    def __init__(
        self, message: str, *, reason: str | None = None, known_size: int | None = None
    ) -> None:
        super().__init__(message, reason=reason)
        #: The size of the latest state the other side holds, when it said.
        self.known_size = known_size


class SbomError(VerificationError):
    """The SBOM fails schema or minimum-element checks."""

    default_reason = "sbom"


class UnavailableError(ProvenanceError):
    """A service the gateway talks to (broker, ledger, witness, chain) cannot be reached."""

    default_reason = "unavailable"
