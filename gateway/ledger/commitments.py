"""Salted commitments: what the transparency log holds instead of records (pure).

DESIGN, "Transparency log and ledger": a leaf is ``SHA-256(0x00 || commitment)`` (RFC 9162
§2.1.1) with::

    commitment = SHA-256(domain || salt || SHA-256(exact signed bytes received))

- ``domain`` is a fixed ASCII string per record kind, ending in NUL (:data:`DOMAINS`), so a
  commitment made for one kind can never be presented as another (domain separation).
- ``salt`` is 32 random bytes kept in the gateway's store beside the record. Without it nobody can
  recompute the commitment from a record, or test a guessed record (a serial number, a device id)
  against the log: the log reveals nothing about the fleet. Destroying the salt crypto-shreds the
  record; the commitment stays, so the log still verifies.
- The inner digest is over the exact bytes received (the COSE_Sign1 as it came off the wire), so
  the leaf binds the signature too.

An erasure is logged as its own leaf (kind ``"erasure"``) whose "signed bytes" are the
deterministic CBOR ``[event id, SHA-256(reason), erased at (ms)]``: it proves that, when and why
(by digest) a record was erased, without committing to the record's content. A device
revocation (kind ``"revocation"``) commits likewise to ``[device id, SHA-256(reason), revoked at
(ms)]``: the device id only under the salt, so the log does not name the device.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from types import MappingProxyType

from gateway.core import merkle
from gateway.core.cbor import dumps

__all__ = [
    "DOMAINS",
    "SALT_SIZE",
    "URGENT_LOG_KINDS",
    "commitment",
    "erasure_digest",
    "leaf_for",
    "revocation_digest",
]

#: Salt length in bytes (the events table's CHECK requires exactly this).
SALT_SIZE = 32

#: Record kind -> domain-separation prefix. Shipped prefixes never change: a commitment made
#: under one is checked under the same one forever.
DOMAINS: Mapping[str, bytes] = MappingProxyType(
    {
        "event": b"provgw/v1/event\0",
        "erasure": b"provgw/v1/erasure\0",
        "manifest": b"provgw/v1/manifest\0",
        "recall": b"provgw/v1/recall\0",
        "remediation": b"provgw/v1/remediation\0",
        "revocation": b"provgw/v1/revocation\0",
    }
)


#: ``urgent_records`` kind (store migration 0007) -> the record kind its leaf is logged under.
#: The one definition: the urgent lane logs rows with it
#: (:func:`gateway.service.remediation.log_pending_records`) and ``verify_log`` checks each leaf
#: against it. An SBOM verdict is a remediation step, so it shares that domain; shipped entries
#: never change (a leaf logged under one kind is re-derived under the same one forever).
URGENT_LOG_KINDS: Mapping[str, str] = MappingProxyType(
    {"recall": "recall", "remediation": "remediation", "sbom-verdict": "remediation"}
)


def commitment(kind: str, salt: bytes, digest: bytes) -> bytes:
    """``SHA-256(domain(kind) || salt || digest)``; *digest* is SHA-256 of the signed bytes."""
    domain = DOMAINS.get(kind)
    if domain is None:
        raise ValueError(f"no commitment domain for record kind {kind!r}")
    if len(salt) != SALT_SIZE:
        raise ValueError(f"a commitment salt is {SALT_SIZE} bytes, not {len(salt)}")
    if len(digest) != merkle.HASH_SIZE:
        raise ValueError(f"a record digest is {merkle.HASH_SIZE} bytes, not {len(digest)}")
    return hashlib.sha256(domain + salt + digest).digest()


def leaf_for(kind: str, salt: bytes, digest: bytes) -> bytes:
    """Return the RFC 9162 leaf hash of the commitment: what the Merkle tree stores."""
    return merkle.leaf_hash(commitment(kind, salt, digest))


def erasure_digest(event_id: int, reason_digest: bytes, erased_ms: int) -> bytes:
    """Return what an erasure leaf commits to: SHA-256 of CBOR ``[event id, reason hash, ms]``."""
    return hashlib.sha256(dumps([event_id, reason_digest, erased_ms])).digest()


def revocation_digest(device_id: str, reason_digest: bytes, revoked_ms: int) -> bytes:
    """Return what a revocation leaf commits to: SHA-256 of CBOR ``[device, reason hash, ms]``."""
    return hashlib.sha256(dumps([device_id, reason_digest, revoked_ms])).digest()
