r"""C2SP signed notes, tlog checkpoints and tlog cosignatures (pure).

- **Signed note** (https://c2sp.org/signed-note): UTF-8 text ending in a newline, a blank line,
  then signature lines ``— <key name> base64(key ID || signature)``. The key ID is
  ``SHA-256(name || 0x0A || type || public key)[:4]``; keys travel as *vkeys*
  ``name+hex(key ID)+base64(type || public key)`` and signer keys as
  ``PRIVATE+KEY+name+hex(key ID)+base64(type || seed)`` (golang.org/x/mod/sumdb/note).
- **Checkpoint** (https://c2sp.org/tlog-checkpoint): the note text ``origin``, decimal tree size,
  base64 root hash, then optional extension lines; signed by the log's Ed25519 key (type 0x01).
- **Cosignature** (https://c2sp.org/tlog-cosignature, Ed25519 v1): a witness's note signature of
  type 0x04 whose signature is ``u64 timestamp || Ed25519 signature`` over
  ``"cosignature/v1\ntime <T>\n" || note text``.

Opening a note verifies every signature from a known key and ignores unknown keys (signed-note
§Signatures); a known key whose signature fails rejects the whole note. Errors are
:class:`~gateway.core.errors.VerificationError` subclasses with a sentence.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.core.errors import (
    MalformedError,
    MismatchError,
    OversizeError,
    SignatureError,
    UntrustedSignerError,
)

__all__ = [
    "COSIGNATURE_V1",
    "ED25519",
    "MAX_NOTE_SIZE",
    "MAX_SIGNATURES",
    "Checkpoint",
    "Note",
    "Signature",
    "SignedCheckpoint",
    "Signer",
    "Verifier",
    "cosignature_message",
    "key_id",
    "open_checkpoint",
    "open_note",
    "sign_note",
]

#: Signature type 0x01: plain Ed25519 over the note text (signed-note §Ed25519 signatures).
ED25519 = 0x01
#: Signature type 0x04: timestamped Ed25519 witness cosignature (tlog-cosignature, v1).
COSIGNATURE_V1 = 0x04
_TYPES = {ED25519: "Ed25519", COSIGNATURE_V1: "Ed25519 cosignature/v1"}

#: Notes above this size are refused before parsing (a checkpoint with 100 cosignatures is < 16k).
MAX_NOTE_SIZE = 1 << 20
#: Signature lines accepted per note; the spec requires at least 16 (golang.org/x/mod uses 100).
MAX_SIGNATURES = 100

_SIG_PREFIX = "\u2014 "  # em dash, space (signed-note §Format)
_SKEY_PREFIX = "PRIVATE+KEY+"
_MAX_TIMESTAMP = (1 << 63) - 1  # tlog-cosignature: "MUST NOT exceed 2^63 - 1"
_MAX_TREE_SIZE = (1 << 64) - 1
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_HEX8 = re.compile(r"[0-9a-f]{8}")
_ED25519_SIG = 64
_KEY_LEN = 32


def _malformed(message: str, reason: str = "malformed-note") -> MalformedError:
    return MalformedError(message, reason=reason)


def _has_control(text: str) -> bool:
    # signed-note §Format: no ASCII control characters other than newline.
    return any(ch < " " and ch != "\n" for ch in text)


def _check_name(name: str) -> None:
    # signed-note §Format: key names are non-empty, without Unicode spaces or "+".
    if not name or "+" in name or any(ch.isspace() or ch < " " for ch in name):
        raise _malformed(
            f"The key name {name!r} is not allowed: it must be non-empty, with no spaces, "
            "control characters or '+'.",
            reason="bad-key-name",
        )


def _b64decode(text: str, what: str, reason: str) -> bytes:
    # Standard base64 with padding (RFC 4648 §4), canonical only: one value, one spelling.
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _malformed(f"The {what} is not valid base64.", reason=reason) from exc
    if base64.b64encode(raw).decode("ascii") != text:
        raise _malformed(f"The {what} is not canonical base64.", reason=reason)
    return raw


def key_id(name: str, sig_type: int, public_key: bytes) -> int:
    """``SHA-256(name || 0x0A || type || public key)[:4]`` as a big-endian uint32."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([sig_type]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def cosignature_message(text: str, timestamp: int) -> bytes:
    """Return the bytes an Ed25519 v1 cosignature signs (tlog-cosignature, signed message)."""
    return f"cosignature/v1\ntime {timestamp}\n".encode() + text.encode()


def _check_timestamp(timestamp: int) -> None:
    if not 0 <= timestamp <= _MAX_TIMESTAMP:
        raise _malformed(
            f"The cosignature time {timestamp} is outside 0 .. 2^63-1.", reason="bad-timestamp"
        )


@dataclass(frozen=True)
class Signature:
    """One signature line of a note; ``timestamp`` is set for verified cosignatures only."""

    name: str
    key_id: int
    signature: bytes
    timestamp: int | None = None

    @property
    def line(self) -> str:
        """The signature line, ``— name base64(key ID || signature)`` and a newline."""
        blob = self.key_id.to_bytes(4, "big") + self.signature
        return f"{_SIG_PREFIX}{self.name} {base64.b64encode(blob).decode('ascii')}\n"


@dataclass(frozen=True)
class Verifier:
    """A known public key: name, key ID, type (0x01 or 0x04) and 32-byte Ed25519 key.

    Valid on construction: the name is allowed, the type supported, and the key ID is the one
    the name, type and key give (a vkey whose ID was edited is refused).
    """

    name: str
    key_id: int
    sig_type: int
    public_key: bytes
    _key: Ed25519PublicKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_name(self.name)
        if self.sig_type not in _TYPES:
            raise _malformed(
                f"The key {self.name} has signature type {self.sig_type:#04x}; only Ed25519 "
                "(0x01) and Ed25519 cosignatures (0x04) are supported.",
                reason="bad-key",
            )
        if len(self.public_key) != _KEY_LEN:
            raise _malformed(
                f"The key {self.name} is {len(self.public_key)} bytes; Ed25519 keys are 32.",
                reason="bad-key",
            )
        if key_id(self.name, self.sig_type, self.public_key) != self.key_id:
            raise _malformed(
                f"The key ID {self.key_id:08x} does not belong to the key {self.name}; the key "
                "text was altered or mistyped.",
                reason="bad-key",
            )
        try:
            key = Ed25519PublicKey.from_public_bytes(self.public_key)
        except ValueError as exc:
            raise _malformed(f"The key {self.name} is not an Ed25519 key.", "bad-key") from exc
        object.__setattr__(self, "_key", key)

    @classmethod
    def from_public_key(cls, name: str, public_key: bytes, sig_type: int = ED25519) -> Verifier:
        """Return the verifier for *public_key* under *name*, with its key ID computed."""
        return cls(name, key_id(name, sig_type, public_key), sig_type, public_key)

    @classmethod
    def from_vkey(cls, vkey: str) -> Verifier:
        """Parse ``name+hex(key ID)+base64(type || public key)`` (signed-note vkey)."""
        parts = vkey.split("+", 2)
        if len(parts) != 3 or not _HEX8.fullmatch(parts[1]):
            raise _malformed(
                "A verifier key must read name+8-hex-digit-key-ID+base64-key.", reason="bad-key"
            )
        name, hex_id, b64 = parts
        raw = _b64decode(b64, f"key of {name}", "bad-key")
        if not raw:
            raise _malformed(f"The key of {name} is empty.", reason="bad-key")
        return cls(name, int(hex_id, 16), raw[0], raw[1:])

    @property
    def vkey(self) -> str:
        """This key as ``name+hex(key ID)+base64(type || public key)``."""
        blob = base64.b64encode(bytes([self.sig_type]) + self.public_key).decode("ascii")
        return f"{self.name}+{self.key_id:08x}+{blob}"

    def verify(self, text: str, signature: bytes) -> int | None:
        """Verify *signature* (without key ID) over note *text*; the cosignature time, if any.

        Raises :class:`SignatureError` when it does not verify.
        """
        message = text.encode()
        timestamp = None
        if self.sig_type == COSIGNATURE_V1:
            # tlog-cosignature: timestamped_signature = u64 timestamp (big-endian) || Ed25519.
            if len(signature) != 8 + _ED25519_SIG:
                raise self._bad()
            timestamp = int.from_bytes(signature[:8], "big")
            if timestamp > _MAX_TIMESTAMP:
                raise self._bad()
            message = cosignature_message(text, timestamp)
            signature = signature[8:]
        if len(signature) != _ED25519_SIG:
            raise self._bad()
        try:
            self._key.verify(signature, message)
        except InvalidSignature as exc:
            raise self._bad() from exc
        return timestamp

    def _bad(self) -> SignatureError:
        return SignatureError(
            f"The signature by {self.name} (key {self.key_id:08x}) does not verify: the signed "
            "text was altered after signing, or the signature was forged.",
            reason="bad-signature",
        )


class Signer:
    """A private Ed25519 key that signs notes (type 0x01) or cosigns checkpoints (type 0x04)."""

    def __init__(self, name: str, private_key: Ed25519PrivateKey, sig_type: int = ED25519) -> None:
        self._private_key = private_key
        #: The public half, valid by construction (same name, type and key ID rules).
        self.verifier = Verifier.from_public_key(
            name, private_key.public_key().public_bytes_raw(), sig_type
        )

    @classmethod
    def generate(cls, name: str, sig_type: int = ED25519) -> Signer:
        """Return a new random key."""
        return cls(name, Ed25519PrivateKey.generate(), sig_type)

    @classmethod
    def from_skey(cls, skey: str) -> Signer:
        """Parse ``PRIVATE+KEY+name+hex(key ID)+base64(type || seed)``; the ID must match."""
        if not skey.startswith(_SKEY_PREFIX):
            raise _malformed("A signer key must start with PRIVATE+KEY+.", reason="bad-key")
        parts = skey.removeprefix(_SKEY_PREFIX).split("+", 2)
        if len(parts) != 3 or not _HEX8.fullmatch(parts[1]):
            raise _malformed(
                "A signer key must read PRIVATE+KEY+name+8-hex-digit-key-ID+base64-key.",
                reason="bad-key",
            )
        name, hex_id, b64 = parts
        raw = _b64decode(b64, f"signer key of {name}", "bad-key")
        if len(raw) != 1 + _KEY_LEN:
            raise _malformed(f"The signer key of {name} has the wrong length.", reason="bad-key")
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(raw[1:]), raw[0])
        if signer.key_id != int(hex_id, 16):
            raise _malformed(
                f"The signer key ID {hex_id} does not belong to the key {name}.", reason="bad-key"
            )
        return signer

    @property
    def name(self) -> str:
        """The key name that appears in signature lines."""
        return self.verifier.name

    @property
    def key_id(self) -> int:
        """The 32-bit key ID."""
        return self.verifier.key_id

    def skey(self) -> str:
        """Return the secret key text ``PRIVATE+KEY+…``; store it like a password."""
        seed = self._private_key.private_bytes_raw()
        blob = base64.b64encode(bytes([self.verifier.sig_type]) + seed).decode("ascii")
        return f"{_SKEY_PREFIX}{self.name}+{self.key_id:08x}+{blob}"

    def sign(self, text: str, *, timestamp: int | None = None) -> Signature:
        """Sign note *text*; a cosigner (type 0x04) needs *timestamp*, a plain signer must not."""
        _check_text(text)
        if self.verifier.sig_type == COSIGNATURE_V1:
            if timestamp is None:
                raise ValueError("a cosignature needs the time it is made")
            _check_timestamp(timestamp)
            raw = self._private_key.sign(cosignature_message(text, timestamp))
            raw = timestamp.to_bytes(8, "big") + raw
        else:
            if timestamp is not None:
                raise ValueError("plain Ed25519 note signatures carry no timestamp")
            raw = self._private_key.sign(text.encode())
        return Signature(self.name, self.key_id, raw, timestamp)


def _check_text(text: str) -> None:
    if not text.endswith("\n") or _has_control(text):
        raise _malformed(
            "A note text must end with a newline and contain no control characters.",
            reason="bad-note-text",
        )


def sign_note(text: str, signers: Sequence[Signer], *, timestamp: int | None = None) -> bytes:
    """Return the signed note: *text*, a blank line, one signature line per signer.

    *timestamp* is passed to cosigners (type 0x04); the clock is read by the caller.
    """
    if not signers:
        raise ValueError("a signed note needs at least one signer")
    lines = []
    for signer in signers:
        ts = timestamp if signer.verifier.sig_type == COSIGNATURE_V1 else None
        lines.append(signer.sign(text, timestamp=ts).line)
    return (text + "\n" + "".join(lines)).encode()


@dataclass(frozen=True)
class Note:
    """An opened note: its text, the signatures verified by known keys, and the unknown ones."""

    text: str
    signatures: tuple[Signature, ...]
    unverified: tuple[Signature, ...] = ()

    def signed_by(self, verifier: Verifier) -> Signature | None:
        """Return the verified signature by *verifier*, if there is one."""
        for sig in self.signatures:
            if (sig.name, sig.key_id) == (verifier.name, verifier.key_id):
                return sig
        return None


def _index(verifiers: Iterable[Verifier]) -> dict[tuple[str, int], Verifier]:
    known: dict[tuple[str, int], Verifier] = {}
    for v in verifiers:
        seen = known.setdefault((v.name, v.key_id), v)
        if seen.public_key != v.public_key or seen.sig_type != v.sig_type:
            raise ValueError(f"two different keys share the name {v.name} and ID {v.key_id:08x}")
    return known


def _parse_signature_line(line: str) -> Signature:
    if not line.startswith(_SIG_PREFIX):
        raise _malformed(
            "A line after the blank line of a signed note is not a signature line.",
            reason="malformed-note",
        )
    name, sep, b64 = line.removeprefix(_SIG_PREFIX).partition(" ")
    if not sep:
        raise _malformed("A signature line has no signature.", reason="malformed-note")
    _check_name(name)
    raw = _b64decode(b64, f"signature by {name}", "malformed-note")
    if len(raw) < 5:
        raise _malformed(f"The signature by {name} is too short.", reason="malformed-note")
    return Signature(name, int.from_bytes(raw[:4], "big"), raw[4:])


def open_note(data: bytes, verifiers: Iterable[Verifier]) -> Note:
    """Parse a signed note and verify it against *verifiers*.

    Steps (C2SP signed-note):

    1. Size cap before parsing (endless data).
    2. Valid UTF-8, no control characters but newline, ends with a newline, and a blank line
       separates text from one or more signature lines (malformed input).
    3. Each signature line is ``— name base64(key ID || signature)`` with an allowed name and
       canonical base64, at most :data:`MAX_SIGNATURES` of them (malformed input, endless data).
    4. Signatures whose (name, key ID) match no known key are set aside, unverified (§Signatures:
       "MUST ignore"); each known one must verify, or the note is refused (forgery, tampering).
    5. At least one known key signed (untrusted signer).
    """
    # Step 1 — endless data.
    if len(data) > MAX_NOTE_SIZE:
        raise OversizeError(
            f"The signed note is {len(data)} bytes; at most {MAX_NOTE_SIZE} are accepted.",
            reason="oversize-note",
        )
    # Step 2 — malformed input.
    try:
        note = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _malformed("The signed note is not valid UTF-8 text.") from exc
    if _has_control(note):
        raise _malformed("The signed note contains control characters.")
    split = note.rfind("\n\n")
    if not note.endswith("\n") or split < 0 or split + 2 == len(note):
        raise _malformed(
            "The signed note is not text, a blank line and signature lines, each line ending "
            "with a newline."
        )
    text, block = note[: split + 1], note[split + 2 :]
    lines = block[:-1].split("\n")
    # Step 3 — malformed signature lines; too many of them (endless data).
    if len(lines) > MAX_SIGNATURES:
        raise _malformed(
            f"The signed note has {len(lines)} signatures; at most {MAX_SIGNATURES} are accepted."
        )
    parsed = [_parse_signature_line(line) for line in lines]
    # Step 4 — unknown keys ignored, known keys verified.
    known = _index(verifiers)
    verified: dict[tuple[str, int], Signature] = {}
    unverified: dict[tuple[str, int, bytes], Signature] = {}
    for sig in parsed:
        verifier = known.get((sig.name, sig.key_id))
        if verifier is None:
            unverified.setdefault((sig.name, sig.key_id, sig.signature), sig)
            continue
        timestamp = verifier.verify(text, sig.signature)
        verified.setdefault(
            (sig.name, sig.key_id), Signature(sig.name, sig.key_id, sig.signature, timestamp)
        )
    # Step 5 — untrusted signer.
    if not verified:
        names = ", ".join(sorted({s.name for s in parsed}))
        raise UntrustedSignerError(
            f"The signed note is signed only by keys this gateway does not trust ({names}).",
            reason="untrusted-signer",
        )
    return Note(text, tuple(verified.values()), tuple(unverified.values()))


def _bad_checkpoint(message: str) -> MalformedError:
    return MalformedError(message, reason="bad-checkpoint")


@dataclass(frozen=True)
class Checkpoint:
    """A log head: origin, tree size, root hash, extension lines (C2SP tlog-checkpoint).

    Valid on construction: the origin and extension lines are non-empty single lines without
    control characters, the size fits in a uint64 and the root is a 32-byte SHA-256 hash.
    """

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for what, line in (
            ("origin", self.origin),
            *(("extension line", e) for e in self.extensions),
        ):
            if not line or "\n" in line or _has_control(line):
                raise _bad_checkpoint(
                    f"The checkpoint {what} {line!r} must be one non-empty line of text."
                )
        if not 0 <= self.size <= _MAX_TREE_SIZE:
            raise _bad_checkpoint(f"The checkpoint tree size {self.size} is out of range.")
        if len(self.root) != 32:
            raise _bad_checkpoint(
                f"The checkpoint root hash is {len(self.root)} bytes; SHA-256 gives 32."
            )

    def to_text(self) -> str:
        """Return the note text: origin, size, base64 root, extension lines, each newline-ended."""
        root = base64.b64encode(self.root).decode("ascii")
        return "".join(
            f"{line}\n" for line in (self.origin, str(self.size), root, *self.extensions)
        )

    @classmethod
    def from_text(cls, text: str) -> Checkpoint:
        """Parse a checkpoint note text strictly (canonical decimal size and base64 root)."""
        if not text.endswith("\n"):
            raise _bad_checkpoint("The checkpoint text must end with a newline.")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise _bad_checkpoint("A checkpoint has at least three lines: origin, size, root.")
        origin, size, root, *extensions = lines
        # tlog-checkpoint: "ASCII decimal ... with no leading zeroes".
        if not _DECIMAL.fullmatch(size):
            raise _bad_checkpoint(f"The checkpoint tree size {size!r} is not a plain decimal.")
        root_bytes = _b64decode(root, "checkpoint root hash", "bad-checkpoint")
        return cls(origin, int(size), root_bytes, tuple(extensions))

    def sign(self, signer: Signer) -> bytes:
        """Return this checkpoint as a signed note, signed by the log's key *signer*."""
        return sign_note(self.to_text(), [signer])


@dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint whose log signature verified, with the cosignatures that verified."""

    checkpoint: Checkpoint
    note: Note

    @property
    def cosignatures(self) -> Mapping[str, int]:
        """Witness name -> cosignature time (POSIX seconds), for verified cosignatures only."""
        return {s.name: s.timestamp for s in self.note.signatures if s.timestamp is not None}


def open_checkpoint(
    data: bytes, log: Verifier, cosigners: Iterable[Verifier] = ()
) -> SignedCheckpoint:
    """Open a signed checkpoint of the log *log*, verifying any cosignatures by *cosigners*.

    Steps (C2SP tlog-checkpoint, tlog-cosignature):

    1. Open the note with the log key and the cosigner keys (every signed-note check).
    2. The log's own Ed25519 signature is among those verified (a note signed only by witnesses,
       or by another log, is not this log's head).
    3. The text is a well-formed checkpoint (malformed input).
    4. The origin line is the log key's name (a head of another log signed with a shared key).

    Quorum rules are the caller's: :attr:`SignedCheckpoint.cosignatures` lists who cosigned when.
    Cosignature times are not compared with a clock here (core reads no clock).
    """
    if log.sig_type != ED25519:
        raise ValueError("a log signs its checkpoints with a plain Ed25519 key (type 0x01)")
    # Step 1 — every signed-note check.
    note = open_note(data, [log, *cosigners])
    # Step 2 — the log itself must have signed.
    if note.signed_by(log) is None:
        raise UntrustedSignerError(
            f"The checkpoint is not signed by the log {log.name}; it cannot be trusted as that "
            "log's head.",
            reason="untrusted-signer",
        )
    # Step 3 — malformed input.
    checkpoint = Checkpoint.from_text(note.text)
    # Step 4 — another log's head.
    if checkpoint.origin != log.name:
        raise MismatchError(
            f"The checkpoint is for the log {checkpoint.origin!r}, not {log.name!r}.",
            reason="origin-mismatch",
        )
    return SignedCheckpoint(checkpoint, note)
