"""The gateway's log key: one Ed25519 key, stored as a C2SP signed-note signer key file.

The key file holds ``PRIVATE+KEY+<origin>+<key ID>+base64(0x01 || seed)`` (the format of
golang.org/x/mod/sumdb/note, :meth:`gateway.core.note.Signer.skey`); its public half is the vkey
``<origin>+<key ID>+base64(0x01 || public key)`` that witnesses and verifiers are given.

Decision: the same Ed25519 key signs checkpoints (C2SP signed-note, type 0x01) and COSE receipts
(RFC 9942, EdDSA). The two signed messages cannot be confused: a note signature covers UTF-8 text
(signed-note §Format: valid UTF-8, no control characters but newline), while a COSE signature
covers a ``Sig_structure`` that starts with byte 0x84 (RFC 9052 §4.4), which no UTF-8 text can
start with. One key means one thing for verifiers to pin, and a receipt is checked offline with
the same public key that checks the checkpoint under it.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.core import note
from gateway.core.errors import MalformedError

__all__ = [
    "GatewayKey",
    "load_gateway_key",
    "load_verifier",
    "write_gateway_key",
    "write_secret_file",
]

_SKEY_PREFIX = "PRIVATE+KEY+"


@dataclass(frozen=True)
class GatewayKey:
    """The gateway's private log key, both as a note :class:`~note.Signer` and a raw Ed25519 key.

    Valid on construction through :meth:`generate` or :meth:`from_skey`.
    """

    signer: note.Signer
    private_key: Ed25519PrivateKey

    @classmethod
    def generate(cls, origin: str) -> GatewayKey:
        """Return a new random key named after the log *origin* (C2SP tlog-checkpoint)."""
        key = Ed25519PrivateKey.generate()
        return cls(note.Signer(origin, key), key)

    @classmethod
    def from_skey(cls, skey: str) -> GatewayKey:
        """Parse signer key text; its key ID must match (see :meth:`note.Signer.from_skey`)."""
        signer = note.Signer.from_skey(skey)
        if signer.verifier.sig_type != note.ED25519:
            raise MalformedError(
                "The gateway key must be a plain Ed25519 note key (type 0x01), not a witness "
                "cosigning key.",
                reason="bad-key",
            )
        # from_skey checked the layout: PRIVATE+KEY+name+id+base64(type || seed).
        blob = skey.removeprefix(_SKEY_PREFIX).split("+", 2)[2]
        seed = base64.b64decode(blob)[1:]
        return cls(signer, Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def origin(self) -> str:
        """The log origin: the key's name (open_checkpoint requires them to be equal)."""
        return self.signer.name

    @property
    def verifier(self) -> note.Verifier:
        """The public half, as a note verifier (its ``vkey`` is what witnesses are given)."""
        return self.signer.verifier

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The public half, as a raw Ed25519 key (what COSE receipts are checked with)."""
        return self.private_key.public_key()


def write_secret_file(path: Path, data: bytes) -> None:
    """Create *path* readable only by its owner and write *data*; never replace an existing file.

    For every secret key the gateway or a witness writes. ``O_EXCL``: a key file is never
    overwritten, because every signature made with the old key would stop verifying (log
    checkpoints, cosignatures, offers to devices provisioned with it); an existing file raises
    :class:`FileExistsError`. Mode ``0600`` from the moment the file exists: never readable by
    others, not even between a create and a chmod.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def write_gateway_key(path: Path, key: GatewayKey) -> None:
    """Write *key* to a new file readable only by its owner; never overwrite an existing key."""
    write_secret_file(path, (key.signer.skey() + "\n").encode("ascii"))


def load_gateway_key(path: Path) -> GatewayKey:
    """Read a key file written by :func:`write_gateway_key`."""
    return GatewayKey.from_skey(path.read_text(encoding="ascii").strip())


def load_verifier(text_or_path: str) -> note.Verifier:
    """Return the gateway's public key from a vkey, or a file holding a vkey or a signer key."""
    path = Path(text_or_path)
    text = path.read_text(encoding="ascii").strip() if path.is_file() else text_or_path.strip()
    if text.startswith(_SKEY_PREFIX):
        return GatewayKey.from_skey(text).verifier
    return note.Verifier.from_vkey(text)
