"""Firmware offers: what the urgent lane sends a device on its ``cmd`` topic, and how it checks.

An offer is a COSE_Sign1 (RFC 9052 §4.2) by the **gateway's** key over a closed CBOR map::

    offer = {
      "type"     => "firmware-offer",   ; domain separation from every other signed object
      "format"   => 1,
      "device"   => tstr,               ; the one device this offer is for
      "manifest" => bstr,               ; the manufacturer's manifest envelope, SBOM severed
      ? "recall" => tstr,               ; the recall this offer remedies
      ? "cves"   => [* tstr],           ; what it fixes (for the device's report)
      "attempt"  => uint,               ; 1 for the first offer, +1 per retry
      "issued"   => uint,               ; gateway clock, ms since the epoch
    }

Two signatures, two roles (Uptane: the director says *which* device gets *what*, the image
repository says *what* is authentic): the gateway's signature says this device is targeted,
and the manufacturer's signature inside the manifest says the firmware is genuine. The device
checks both (:func:`open_offer`), so neither a rogue broker client nor a compromised gateway
alone can install firmware: a gateway key can only point at firmware the manufacturer signed.

Verification on the device, in order:

1. Size cap before parsing — endless data.
2. COSE envelope (alg protected, EdDSA or ES256) and the gateway's signature, by a key the
   device was provisioned with — offers pushed by anyone else (rogue client, wrong gateway).
3. Closed offer map, read only after 2 — parser confusion, smuggled fields.
4. The offer names this device — an offer for another device replayed to this one.
5. The manifest, by the device itself (:func:`gateway.core.manifest.validate_manifest`):
   manufacturer signature, schema, sequence number above the installed one (rollback), vendor
   and class of this device (incompatible image), use-before (freeze). The SBOM is severed
   (devices do not need it, ``firmware_manifests/README.md``), so the two SBOM checks are not
   the device's to make; every other check must pass.

Pure: bytes, keys, the device's own state and ``now`` in; a :class:`VerifiedOffer` or a typed
error out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.core.cbor import dumps, strict_loads
from gateway.core.cose import ALG_EDDSA, ALG_ES256, CosePolicy, PrivateKey, decode_sign1, sign1
from gateway.core.errors import (
    MalformedError,
    MismatchError,
    OversizeError,
    SchemaError,
    UntrustedSignerError,
    VerificationError,
)
from gateway.core.identity import kid_for
from gateway.core.manifest import (
    CheckResult,
    DeviceTarget,
    ManifestFields,
    ManifestTrust,
    PublicKey,
    validate_manifest,
)

__all__ = [
    "MAX_OFFER_BYTES",
    "OFFER_FORMAT",
    "OFFER_TYPE",
    "Offer",
    "VerifiedOffer",
    "check_offer_manifest",
    "make_offer",
    "open_offer",
    "read_offer",
    "sever_sbom",
]

#: ``type`` of the signed offer map.
OFFER_TYPE = "firmware-offer"
#: The ``format`` value this code reads and writes.
OFFER_FORMAT = 1
#: Largest offer accepted: a manifest envelope without SBOM (a few signatures) plus the map.
MAX_OFFER_BYTES = 64 * 1024

_POLICY = CosePolicy(max_size=MAX_OFFER_BYTES, allowed_algs=frozenset({ALG_EDDSA, ALG_ES256}))
_FIELDS = frozenset({"type", "format", "device", "manifest", "recall", "cves", "attempt", "issued"})
_REQUIRED = frozenset({"type", "format", "device", "manifest", "attempt", "issued"})
_TOKEN = re.compile(r"[A-Za-z0-9._:/-]{1,64}\Z", re.ASCII)  # as event trigger_ref (core.events)
_CVE = re.compile(r"CVE-\d{4}-\d{4,}\Z", re.ASCII)
_SBOM_CHECKS = frozenset({"sbom-binding", "sbom-quality"})
_MAX_DEVICE = 256
_MAX_CVES = 64


@dataclass(frozen=True)
class Offer:
    """The content of a firmware offer (the closed map of the module docstring)."""

    device: str
    manifest: bytes
    attempt: int
    issued_ms: int
    recall_id: str | None = None
    cves: tuple[str, ...] = ()

    def to_cbor(self) -> bytes:
        """Deterministic CBOR (RFC 8949 §4.2): the bytes the gateway signs."""
        item: dict[str, Any] = {
            "type": OFFER_TYPE,
            "format": OFFER_FORMAT,
            "device": self.device,
            "manifest": self.manifest,
            "attempt": self.attempt,
            "issued": self.issued_ms,
        }
        if self.recall_id is not None:
            item["recall"] = self.recall_id
        if self.cves:
            item["cves"] = list(self.cves)
        return dumps(item)

    @classmethod
    def from_item(cls, item: object) -> Offer:
        """Check the closed offer map (step 3), or raise :class:`SchemaError`."""
        if not isinstance(item, Mapping):
            raise SchemaError("The firmware offer is not a CBOR map.", reason="offer-schema")
        keys = set(item)
        if not keys <= _FIELDS or not keys >= _REQUIRED:
            # Closed map: a field we do not know could change what the device is told to do.
            raise SchemaError(
                f"The firmware offer has fields {sorted(map(str, keys))}; expected "
                f"{sorted(_REQUIRED)} and optionally recall, cves.",
                reason="offer-schema",
            )
        if item["type"] != OFFER_TYPE or item["format"] != OFFER_FORMAT:
            raise SchemaError(
                f"This is not a format {OFFER_FORMAT} firmware offer.", reason="offer-schema"
            )
        device, manifest = item["device"], item["manifest"]
        attempt, issued = item["attempt"], item["issued"]
        recall, cves = item.get("recall"), item.get("cves", [])
        if (
            not isinstance(device, str)
            or not 0 < len(device) <= _MAX_DEVICE
            or not isinstance(manifest, bytes)
            or type(attempt) is not int
            or not 1 <= attempt < 2**32
            or type(issued) is not int
            or not 0 <= issued < 2**63
            or (recall is not None and not (isinstance(recall, str) and _TOKEN.match(recall)))
            or not isinstance(cves, list)
            or len(cves) > _MAX_CVES
            or not all(isinstance(c, str) and _CVE.match(c) for c in cves)
        ):
            raise SchemaError("A field of the firmware offer has the wrong type or value.")
        return cls(device, manifest, attempt, issued, recall, tuple(cves))


def sever_sbom(envelope: bytes) -> bytes:
    """Return the manifest *envelope* without its SBOM member (devices do not need it).

    The manufacturer's signature is over the manifest map, which binds the SBOM by digest only,
    so severing it changes no signed byte (``firmware_manifests/README.md``).
    """
    item = strict_loads(envelope, what="firmware manifest envelope")
    if not isinstance(item, Mapping) or "manifest" not in item:
        raise MalformedError(
            "The firmware manifest envelope is not a CBOR map with a manifest.", reason="envelope"
        )
    return dumps({k: v for k, v in item.items() if k != "sbom"})


def make_offer(offer: Offer, key: PrivateKey) -> bytes:
    """Sign *offer* with the gateway's key; kid = :func:`kid_for` of its public key."""
    return sign1(offer.to_cbor(), key, kid=kid_for(key.public_key()))


@dataclass(frozen=True)
class VerifiedOffer:
    """An offer whose gateway signature, target and manifest the device has checked."""

    offer: Offer
    fields: ManifestFields
    digest: bytes
    signers: tuple[str, ...]


def read_offer(data: bytes, *, gateway_keys: Mapping[bytes, PublicKey], device_id: str) -> Offer:
    """Check the gateway's signature and that the offer is for *device_id* (steps 1-4).

    What it returns is authentic gateway content; the manifest inside is not checked yet
    (:func:`check_offer_manifest`). Raises a :class:`~gateway.core.errors.VerificationError`.
    """
    # Step 1 - size cap before parsing (endless data).
    if len(data) > MAX_OFFER_BYTES:
        raise OversizeError(
            f"The firmware offer is {len(data):,} bytes, over the {MAX_OFFER_BYTES:,}-byte limit."
        )
    # Step 2 - the gateway's signature (offers pushed by anyone but the gateway).
    message = decode_sign1(data, policy=_POLICY)
    key = gateway_keys.get(message.kid or b"")
    if key is None:
        raise UntrustedSignerError(
            "The firmware offer is not signed by a gateway key this device trusts.",
            reason="offer-untrusted",
        )
    message.verify(key)
    # Step 3 - closed schema, only after the signature (parser confusion).
    try:
        item = strict_loads(message.payload, what="firmware offer")
    except MalformedError as exc:
        raise SchemaError(str(exc), reason="offer-schema") from exc
    offer = Offer.from_item(item)
    # Step 4 - the offer is for this device (an offer replayed to another device).
    if offer.device != device_id:
        raise MismatchError(
            f"The firmware offer is for device {offer.device}, not {device_id}.",
            reason="offer-device",
        )
    return offer


def check_offer_manifest(
    offer: Offer, *, trust: ManifestTrust, device: DeviceTarget, now: datetime
) -> VerifiedOffer:
    """Step 5: the manufacturer's manifest, checked by the device itself.

    Raises the first failing check's error (a rollback is a ``RollbackError``, another model's
    firmware a ``MismatchError``, a stale manifest an ``ExpiredError``).
    """
    report = validate_manifest(
        offer.manifest, trust=trust, state={}, now=now, device=device, check_sbom_quality=False
    )
    failed = _first_failure(report.checks)
    if failed is not None:
        raise failed
    assert report.fields is not None  # signature and schema passed
    assert report.digest is not None
    return VerifiedOffer(offer, report.fields, report.digest, report.signers)


def open_offer(
    data: bytes,
    *,
    gateway_keys: Mapping[bytes, PublicKey],
    trust: ManifestTrust,
    device: DeviceTarget,
    now: datetime,
) -> VerifiedOffer:
    """Verify an offer as the device does (steps 1-5 of the module docstring).

    *gateway_keys* maps kid to the gateway public keys the device trusts; *device* carries the
    device's vendor, class and installed sequence number. Raises the first failing step's
    :class:`~gateway.core.errors.VerificationError`.
    """
    offer = read_offer(data, gateway_keys=gateway_keys, device_id=device.device_id)
    return check_offer_manifest(offer, trust=trust, device=device, now=now)


def _first_failure(checks: Sequence[CheckResult]) -> VerificationError | None:
    for check in checks:
        if check.name in _SBOM_CHECKS:
            continue  # the SBOM is severed on purpose; the gateway checked it
        if check.error is not None:
            return check.error
        if check.verdict == "not-run":
            return MalformedError(check.detail, reason="offer-manifest")
    return None
