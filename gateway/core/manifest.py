"""Firmware manifests: a SUIT-shaped envelope, Uptane roles, and every check DESIGN names, in order.

The format is documented with CDDL in ``firmware_manifests/README.md``. In short: a CBOR map
``{"manifest": COSE_Sign1 (manufacturer), "approvals": [COSE_Sign1 (operator)], "sbom": bstr}``;
the manufacturer signs a closed manifest map, hospital operators sign its digest (Uptane's
director role), and the CycloneDX SBOM is severable: the manifest binds its SHA-256.

:func:`validate_manifest` runs the checks in this order and reports each one by name, with its
verdict and the threat it stops (RFC 9124 §4 threats and REQ.SEC.*, Uptane, TUF). A check that
cannot run because an earlier one failed is reported as ``not-run``; checks that do not depend
on each other all run, so one report names every problem:

1. ``size-cap`` — endless data (RFC 9124 THREAT.NET.DOS): the envelope is refused before parsing
   when over the cap.
2. ``signature`` — arbitrary software, key compromise (REQ.SEC.AUTHENTIC, Uptane §5.4.4.3):
   the envelope is well-formed, every manufacturer signature is a COSE_Sign1 whose ``alg`` is in
   the protected header, a signature by a trusted key that does not verify is refused, at least
   ``manufacturer_threshold`` distinct trusted keys verify, and those keys are trusted for the
   manifest's vendor (a key of one manufacturer cannot sign another's firmware; TUF delegation).
3. ``schema`` — parser confusion, smuggled fields (REQ.SEC.AUTHENTIC): the signed payload is the
   closed manifest map, read only after the signature holds.
4. ``rollback`` — rollback (RFC 9124 THREAT.UPD.ROLLBACK, REQ.SEC.SEQUENCE): the sequence number
   is above the highest accepted for (vendor, class), and above the target device's installed one.
5. ``device-match`` — incompatible image (THREAT.IMG.INCOMPATIBLE, REQ.SEC.COMPATIBLE): vendor
   and class ids equal the target device's.
6. ``use-before`` — freeze (THREAT.UPD.REPLAY / Uptane freeze attack, REQ.SEC.EXP): ``now`` is
   before the manifest's use-before time.
7. ``image`` — image replacement, extra data (THREAT.IMG.REPLACE, REQ.SEC.AUTH.IMG_TYPE): size,
   then SHA-256 of the image equal the signed ones.
8. ``operator-approval`` — unapproved update (Uptane director role): a routine manifest
   (priority >= 0) carries ``operator_threshold`` approvals of its digest by trusted operator
   keys. An urgent security fix (priority < 0) proceeds without one, and the report says so.
9. ``sbom-binding`` — SBOM substitution: the SBOM's SHA-256 equals the signed ``sbom-digest``.
10. ``sbom-quality`` — transparency: CycloneDX schema, NTIA minimum elements and FDA support
    fields (:func:`gateway.core.sbom.check_sbom`). Slow for big SBOMs, so the urgent lane runs
    the other checks first (``check_sbom_quality=False``; sub-millisecond) and this one after.

:meth:`Manifest.from_bytes` raises the first failing check's typed error; a :class:`Manifest` that
exists passed every check it was given the inputs for. Pure: bytes, trust, state and ``now`` in.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.core.cbor import dumps, strict_loads
from gateway.core.cose import (
    ALG_EDDSA,
    ALG_ES256,
    CosePolicy,
    PrivateKey,
    Sign1Message,
    decode_sign1,
    sign1,
)
from gateway.core.errors import (
    ExpiredError,
    MalformedError,
    MismatchError,
    OversizeError,
    PolicyError,
    RollbackError,
    SbomError,
    SchemaError,
    SignatureError,
    UntrustedSignerError,
    VerificationError,
)
from gateway.core.identity import kid_for
from gateway.core.sbom import check_sbom, sbom_digest
from gateway.core.semver import Version

__all__ = [
    "APPROVAL_TYPE",
    "CHECKS",
    "DEMO_DOMAIN_SUFFIX",
    "MANIFEST_FORMAT",
    "MAX_ENVELOPE_BYTES",
    "MAX_SIGNED_BYTES",
    "CheckResult",
    "DeviceTarget",
    "Manifest",
    "ManifestFields",
    "ManifestReport",
    "ManifestState",
    "ManifestTrust",
    "TrustedKey",
    "UnverifiedManifest",
    "add_approval",
    "build_envelope",
    "class_id",
    "device_target",
    "make_approval",
    "manifest_digest",
    "sign_manifest",
    "unsafe_read_manifest",
    "validate_manifest",
    "vendor_id",
    "verify_threshold",
]

#: The manifest map's ``format`` value this code reads and writes.
MANIFEST_FORMAT = 1
#: Largest envelope accepted (manifest + approvals + SBOM); refused before parsing.
MAX_ENVELOPE_BYTES = 8 * 1024 * 1024
#: Largest single signed member (the manufacturer's manifest, one approval).
MAX_SIGNED_BYTES = 16 * 1024
#: ``type`` of an operator approval payload: domain separation from every other signed object.
APPROVAL_TYPE = "manifest-approval"
#: Demo manufacturers have no registered domain; theirs is ``<slug>.example`` (RFC 2606 §3).
DEMO_DOMAIN_SUFFIX = ".example"
#: Check names, in the order they run.
CHECKS = (
    "size-cap",
    "signature",
    "schema",
    "rollback",
    "device-match",
    "use-before",
    "image",
    "operator-approval",
    "sbom-binding",
    "sbom-quality",
)
_THREATS = {
    "size-cap": "endless data: a huge envelope exhausting the gateway before it is read",
    "signature": "arbitrary software and key compromise: firmware not signed by enough trusted "
    "manufacturer keys",
    "schema": "parser confusion: fields the signer did not mean, or that a device would misread",
    "rollback": "rollback: an older, vulnerable firmware re-offered as an update",
    "device-match": "incompatible image: firmware for another vendor or device model",
    "use-before": "freeze: a stale manifest held back and replayed later",
    "image": "image replacement and extra data: an image other than the one signed",
    "operator-approval": "unapproved update: a routine rollout the hospital did not approve",
    "sbom-binding": "SBOM substitution: a bill of materials other than the one signed",
    "sbom-quality": "lack of transparency: an SBOM missing schema, NTIA or FDA elements",
}

_SIGNED_POLICY = CosePolicy(
    max_size=MAX_SIGNED_BYTES, allowed_algs=frozenset({ALG_EDDSA, ALG_ES256})
)
_ENVELOPE_KEYS = frozenset({"manifest", "approvals", "sbom"})
_MAX_SIGNATURES = 16  # more manufacturer signatures or approvals than any policy needs
_MAX_URI = 2048
_INT64 = 2**63 - 1  # SQLite INTEGER; also far beyond any real sequence number or size

#: Highest sequence number accepted so far per (vendor id, class id): the anti-rollback state.
ManifestState = Mapping[tuple[uuid.UUID, uuid.UUID], int]
Verdict = Literal["pass", "fail", "skip", "not-run"]
PublicKey = Ed25519PublicKey | ec.EllipticCurvePublicKey


def vendor_id(domain: str) -> uuid.UUID:
    """Return the vendor id: UUIDv5 of the manufacturer's DNS domain (RFC 9124 §6.1)."""
    return uuid.uuid5(uuid.NAMESPACE_DNS, domain.strip().lower())


def class_id(vendor: uuid.UUID, model: str) -> uuid.UUID:
    """Return the class id: UUIDv5 of the model name in the vendor's namespace (RFC 9124)."""
    return uuid.uuid5(vendor, model)


# --- trust, state and targets ------------------------------------------------------------------


@dataclass(frozen=True)
class TrustedKey:
    """A public key trusted for one role; ``vendors`` limits a manufacturer key to its vendors."""

    kid: bytes
    key: PublicKey
    name: str
    vendors: frozenset[uuid.UUID] | None = None

    @classmethod
    def from_public_key(
        cls, key: PublicKey, *, name: str, vendors: Iterable[uuid.UUID] | None = None
    ) -> TrustedKey:
        """Wrap *key*; its kid is derived from it (:func:`gateway.core.identity.kid_for`)."""
        if not isinstance(key, Ed25519PublicKey) and not (
            isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
        ):
            raise PolicyError(
                f"The key {name} is neither Ed25519 nor P-256, the two firmware signature "
                "algorithms the gateway accepts.",
                reason="key-type",
            )
        return cls(kid_for(key), key, name, None if vendors is None else frozenset(vendors))

    @classmethod
    def from_pem(
        cls, blob: bytes, *, name: str, vendors: Iterable[uuid.UUID] | None = None
    ) -> TrustedKey:
        """Read a PEM public key, or a PEM certificate whose public key is trusted."""
        key: object
        try:
            if b"BEGIN CERTIFICATE" in blob:
                from cryptography import x509  # noqa: PLC0415 -- only for certificate files

                key = x509.load_pem_x509_certificate(blob).public_key()
            else:
                key = serialization.load_pem_public_key(blob)
        except ValueError as exc:
            raise MalformedError(
                f"The trusted key {name} is not a PEM public key or certificate: {exc}.",
                reason="bad-trusted-key",
            ) from exc
        if not isinstance(key, Ed25519PublicKey | ec.EllipticCurvePublicKey):
            raise PolicyError(
                f"The trusted key {name} is neither Ed25519 nor P-256.", reason="key-type"
            )
        return cls.from_public_key(key, name=name, vendors=vendors)


@dataclass(frozen=True)
class ManifestTrust:
    """Who may sign what: manufacturer firmware keys, hospital operator keys, thresholds."""

    manufacturers: Mapping[bytes, TrustedKey]
    operators: Mapping[bytes, TrustedKey]
    manufacturer_threshold: int = 1
    operator_threshold: int = 1

    def __post_init__(self) -> None:
        if self.manufacturer_threshold < 1 or self.operator_threshold < 1:
            raise ValueError("signature thresholds must be at least 1")

    @classmethod
    def build(
        cls,
        manufacturers: Iterable[TrustedKey],
        operators: Iterable[TrustedKey] = (),
        *,
        manufacturer_threshold: int = 1,
        operator_threshold: int = 1,
    ) -> ManifestTrust:
        """Index the keys by kid."""
        return cls(
            MappingProxyType({k.kid: k for k in manufacturers}),
            MappingProxyType({k.kid: k for k in operators}),
            manufacturer_threshold,
            operator_threshold,
        )


@dataclass(frozen=True)
class DeviceTarget:
    """The device a manifest is checked for: its vendor and class ids, its installed sequence."""

    device_id: str
    vendor: uuid.UUID
    class_id: uuid.UUID
    installed_seq: int | None = None


def device_target(record: Mapping[str, Any], *, installed_seq: int | None = None) -> DeviceTarget:
    """Build a :class:`DeviceTarget` from a ``devices.json`` row (``provgw-sim pki init``).

    The vendor domain is the row's ``vendor_domain`` if present, else ``<manufacturer_slug>``
    plus :data:`DEMO_DOMAIN_SUFFIX`; the class is the row's ``model``.
    """
    domain = record.get("vendor_domain") or f"{record['manufacturer_slug']}{DEMO_DOMAIN_SUFFIX}"
    vendor = vendor_id(str(domain))
    return DeviceTarget(
        str(record["id"]), vendor, class_id(vendor, str(record["model"])), installed_seq
    )


# --- the manifest map ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestFields:
    """The closed manifest map the manufacturer signs (CDDL in ``firmware_manifests/README.md``)."""

    seq: int
    vendor: uuid.UUID
    class_id: uuid.UUID
    image_digest: bytes
    image_size: int
    version: str
    use_before: int
    priority: int
    sbom_digest: bytes
    uri: str
    format: int = MANIFEST_FORMAT

    @property
    def urgent(self) -> bool:
        """An urgent security fix (priority < 0): never blocked waiting for an operator."""
        return self.priority < 0

    def to_cbor(self) -> bytes:
        """Encode the map as deterministic CBOR: the bytes the manufacturer signs."""
        return dumps(
            {
                "format": self.format,
                "seq": self.seq,
                "vendor": self.vendor.bytes,
                "class": self.class_id.bytes,
                "image-digest": self.image_digest,
                "image-size": self.image_size,
                "version": self.version,
                "use-before": self.use_before,
                "priority": self.priority,
                "sbom-digest": self.sbom_digest,
                "uri": self.uri,
            }
        )

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "format": self.format,
            "seq": self.seq,
            "vendor": str(self.vendor),
            "class": str(self.class_id),
            "image_digest": self.image_digest.hex(),
            "image_size": self.image_size,
            "version": self.version,
            "use_before": self.use_before,
            "priority": self.priority,
            "urgent": self.urgent,
            "sbom_digest": self.sbom_digest.hex(),
            "uri": self.uri,
        }

    @classmethod
    def from_item(cls, item: object) -> ManifestFields:
        """Check the closed schema of a decoded manifest map (step 3), or raise SchemaError."""
        if not isinstance(item, Mapping):
            raise SchemaError("The signed manifest is not a CBOR map.", reason="not-a-map")
        unknown = sorted(str(k) for k in item if k not in _FIELDS)
        if unknown:
            # Closed map (SUIT RFC 9124 REQ.SEC.AUTHENTIC): a field we do not understand may
            # carry a meaning the signer intended and a device would act on; refuse, never skip.
            raise SchemaError(
                f"The signed manifest has field(s) this gateway does not know: "
                f"{', '.join(unknown)}.",
                reason="unknown-field",
            )
        missing = [k for k in _FIELDS if k not in item]
        if missing:
            raise SchemaError(
                f"The signed manifest lacks the field(s) {', '.join(missing)}.",
                reason="missing-field",
            )
        values = {name: check(name, item[name]) for name, check in _FIELDS.items()}
        if values["format"] != MANIFEST_FORMAT:
            raise SchemaError(
                f"The manifest has format version {values['format']}; this gateway reads "
                f"version {MANIFEST_FORMAT}.",
                reason="format-version",
            )
        return cls(
            seq=values["seq"],
            vendor=uuid.UUID(bytes=values["vendor"]),
            class_id=uuid.UUID(bytes=values["class"]),
            image_digest=values["image-digest"],
            image_size=values["image-size"],
            version=values["version"],
            use_before=values["use-before"],
            priority=values["priority"],
            sbom_digest=values["sbom-digest"],
            uri=values["uri"],
            format=values["format"],
        )


def _int_in(low: int, high: int) -> Any:  # noqa: ANN401 -- a field checker
    def check(name: str, value: object) -> int:
        # bool is an int in Python but not in CBOR: a `true` must not pass as 1.
        if type(value) is not int or not low <= value <= high:
            raise SchemaError(
                f"The manifest field {name} must be an integer from {low} to {high}.",
                reason="field-type",
            )
        return value

    return check


def _bstr(size: int) -> Any:  # noqa: ANN401 -- a field checker
    def check(name: str, value: object) -> bytes:
        if not isinstance(value, bytes) or len(value) != size:
            raise SchemaError(
                f"The manifest field {name} must be a {size}-byte string.", reason="field-type"
            )
        return value

    return check


def _version(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise SchemaError(f"The manifest field {name} must be text.", reason="field-type")
    try:
        Version.parse(value, strict=True)
    except MalformedError as exc:
        raise SchemaError(f"The manifest field {name}: {exc}", reason="bad-version") from exc
    return value


def _uri(name: str, value: object) -> str:
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= _MAX_URI
        or any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in value)
    ):
        raise SchemaError(
            f"The manifest field {name} must be a URI of 1 to {_MAX_URI} printable characters.",
            reason="field-type",
        )
    return value


_FIELDS: dict[str, Any] = {
    "format": _int_in(0, 2**32),
    "seq": _int_in(0, _INT64),
    "vendor": _bstr(16),
    "class": _bstr(16),
    "image-digest": _bstr(32),
    "image-size": _int_in(1, _INT64),
    "version": _version,
    "use-before": _int_in(0, _INT64),
    "priority": _int_in(-(2**31), 2**31 - 1),
    "sbom-digest": _bstr(32),
    "uri": _uri,
}


def manifest_digest(payload: bytes) -> bytes:
    """Return a manifest's identity: SHA-256 over the exact signed manifest map bytes."""
    return hashlib.sha256(payload).digest()


# --- reports -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome. ``ok`` is True for ``pass`` and ``skip`` (input not given)."""

    name: str
    verdict: Verdict
    threat: str
    detail: str
    error: VerificationError | None = field(default=None, compare=False, repr=False)

    @property
    def ok(self) -> bool:
        """Whether the check did not fail (passed, or was skipped for lack of input)."""
        return self.verdict in ("pass", "skip")

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "check": self.name,
            "verdict": self.verdict,
            "ok": self.ok,
            "threat": self.threat,
            "detail": self.detail,
            "reason": None if self.error is None else self.error.reason,
        }


@dataclass(frozen=True)
class ManifestReport:
    """Every check in order; ``fields`` and ``digest`` are set once signature and schema hold."""

    checks: tuple[CheckResult, ...]
    fields: ManifestFields | None = None
    digest: bytes | None = None
    signers: tuple[str, ...] = ()
    approvers: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when no check failed or was left unrun."""
        return all(c.ok for c in self.checks)

    @property
    def first_error(self) -> VerificationError | None:
        """The typed error of the first failing check, if any."""
        return next((c.error for c in self.checks if c.error is not None), None)

    def check(self, name: str) -> CheckResult:
        """Return the result of the check called *name*."""
        return next(c for c in self.checks if c.name == name)

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict (what ``provgw manifest validate --json`` prints)."""
        return {
            "valid": self.ok,
            "digest": None if self.digest is None else self.digest.hex(),
            "manifest": None if self.fields is None else self.fields.to_json(),
            "signers": list(self.signers),
            "approvers": list(self.approvers),
            "checks": [c.to_json() for c in self.checks],
        }


class _Checks:
    """Collects results in order; ``stop`` marks every remaining check not-run."""

    def __init__(self) -> None:
        self.results: list[CheckResult] = []

    def passed(self, name: str, detail: str) -> None:
        self.results.append(CheckResult(name, "pass", _THREATS[name], detail))

    def skipped(self, name: str, detail: str) -> None:
        self.results.append(CheckResult(name, "skip", _THREATS[name], detail))

    def failed(self, name: str, error: VerificationError) -> None:
        self.results.append(CheckResult(name, "fail", _THREATS[name], str(error), error))

    def not_run(self, name: str, why: str) -> None:
        self.results.append(CheckResult(name, "not-run", _THREATS[name], why))

    def stop(self, why: str) -> None:
        done = {r.name for r in self.results}
        for name in CHECKS:
            if name not in done:
                self.not_run(name, why)


# --- envelope ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Envelope:
    manifests: tuple[bytes, ...]
    approvals: tuple[bytes, ...]
    sbom: bytes | None


def _bstr_list(value: object, what: str, *, allow_empty: bool) -> tuple[bytes, ...]:
    items = (value,) if isinstance(value, bytes) else value
    if (
        not isinstance(items, list | tuple)
        or (not items and not allow_empty)
        or len(items) > _MAX_SIGNATURES
        or not all(isinstance(b, bytes) for b in items)
    ):
        raise MalformedError(
            f"The envelope's {what} member must be a byte string or an array of at most "
            f"{_MAX_SIGNATURES} byte strings.",
            reason="envelope",
        )
    return tuple(items)


def _open_envelope(data: bytes) -> _Envelope:
    item = strict_loads(data, what="firmware manifest envelope")
    if not isinstance(item, Mapping):
        raise MalformedError("The firmware manifest envelope is not a CBOR map.", reason="envelope")
    unknown = sorted(str(k) for k in item if k not in _ENVELOPE_KEYS)
    if unknown:
        raise MalformedError(
            f"The firmware manifest envelope has unknown member(s): {', '.join(unknown)}.",
            reason="envelope",
        )
    if "manifest" not in item:
        raise MalformedError(
            "The firmware manifest envelope has no signed manifest.", reason="envelope"
        )
    sbom = item.get("sbom")
    if sbom is not None and not isinstance(sbom, bytes):
        raise MalformedError("The envelope's SBOM member is not a byte string.", reason="envelope")
    return _Envelope(
        _bstr_list(item["manifest"], "manifest", allow_empty=False),
        _bstr_list(item.get("approvals", []), "approvals", allow_empty=True),
        sbom,
    )


# --- thresholds (generic: manifests, approvals, recalls) -----------------------------------------


def verify_threshold(
    messages: Sequence[Sign1Message],
    keys: Mapping[bytes, TrustedKey],
    *,
    threshold: int,
    role: str,
    scope: uuid.UUID | None = None,
) -> tuple[TrustedKey, ...]:
    """Verify *messages* against *keys*; return the distinct trusted signers, at least *threshold*.

    A message by a trusted kid whose signature does not verify raises :class:`SignatureError`
    (tampering is never outvoted). Messages by unknown kids are ignored; if fewer than
    *threshold* distinct keys trusted for *scope* (a vendor id, when given) remain,
    :class:`UntrustedSignerError` says how many were found. Used for manifests (default 1),
    approvals, and recalls (2-of-N).
    """
    return _enough(_verified(messages, keys), threshold=threshold, role=role, scope=scope)


def _verified(
    messages: Sequence[Sign1Message], keys: Mapping[bytes, TrustedKey]
) -> tuple[TrustedKey, ...]:
    signers: dict[bytes, TrustedKey] = {}
    for message in messages:
        trusted = keys.get(message.kid or b"")
        if trusted is None:
            continue
        message.verify(trusted.key)  # SignatureError: a trusted key's signature that fails
        signers[trusted.kid] = trusted  # distinct keys: one key signing twice counts once
    return tuple(signers.values())


def _enough(
    signers: Sequence[TrustedKey], *, threshold: int, role: str, scope: uuid.UUID | None
) -> tuple[TrustedKey, ...]:
    in_scope = tuple(s for s in signers if scope is None or s.vendors is None or scope in s.vendors)
    if len(in_scope) >= threshold:
        return in_scope
    out_of_scope = [s.name for s in signers if s not in in_scope]
    why = (
        f"; key(s) {', '.join(out_of_scope)} are not trusted for this vendor"
        if out_of_scope
        else ""
    )
    raise UntrustedSignerError(
        f"Found {len(in_scope)} valid signature(s) by trusted {role} keys, {threshold} "
        f"required{why}.",
        reason="untrusted-signer",
    )


# --- validation ----------------------------------------------------------------------------------


def validate_manifest(  # noqa: PLR0913 -- each argument is one input a verdict depends on
    data: bytes,
    *,
    trust: ManifestTrust,
    state: ManifestState,
    now: datetime,
    device: DeviceTarget | None = None,
    image: bytes | None = None,
    check_sbom_quality: bool = True,
    max_size: int = MAX_ENVELOPE_BYTES,
) -> ManifestReport:
    """Run every check of the module docstring, in order, and report each one.

    Never raises for bad input: each failure is a ``fail`` entry carrying its typed error.
    """
    checks = _Checks()
    # Step 1 - size cap, before any byte is parsed (endless data).
    if len(data) > max_size:
        checks.failed(
            "size-cap",
            OversizeError(
                f"The manifest envelope is {len(data):,} bytes, over the {max_size:,}-byte "
                "limit; it was refused without being read."
            ),
        )
        checks.stop("Not checked: the envelope was refused unread.")
        return ManifestReport(tuple(checks.results))
    checks.passed("size-cap", f"{len(data):,} bytes, within the {max_size:,}-byte limit.")

    # Step 2 - envelope, manufacturer signatures, trusted kids, threshold, vendor scope
    # (arbitrary software, key compromise).
    try:
        envelope, payload, item, signers = _authenticate(data, trust)
    except VerificationError as err:
        checks.failed("signature", err)
        checks.stop("Not checked: the manifest is not authentic, so its content means nothing.")
        return ManifestReport(tuple(checks.results))
    names = tuple(s.name for s in signers)
    checks.passed(
        "signature",
        f"Signed by {len(signers)} trusted manufacturer key(s) ({', '.join(names)}); "
        f"{trust.manufacturer_threshold} required.",
    )

    # Step 3 - closed schema, only now that the payload is authentic (parser confusion).
    try:
        if isinstance(item, VerificationError):
            raise item
        fields = ManifestFields.from_item(item)
    except VerificationError as err:
        checks.failed("schema", err)
        checks.stop("Not checked: the signed manifest is not a valid manifest map.")
        return ManifestReport(tuple(checks.results), signers=names)
    digest = manifest_digest(payload)
    checks.passed(
        "schema", f"Closed manifest map, format {fields.format}, version {fields.version}."
    )

    _rollback(checks, fields, state, device)  # step 4
    _device_match(checks, fields, device)  # step 5
    _use_before(checks, fields, now)  # step 6
    _image(checks, fields, image)  # step 7
    approvers = _approval(checks, fields, digest, envelope.approvals, trust)  # step 8
    _sbom(checks, fields, envelope.sbom, check_quality=check_sbom_quality)  # steps 9-10
    return ManifestReport(tuple(checks.results), fields, digest, names, approvers)


def _authenticate(
    data: bytes, trust: ManifestTrust
) -> tuple[_Envelope, bytes, object, tuple[TrustedKey, ...]]:
    envelope = _open_envelope(data)
    messages = [decode_sign1(blob, policy=_SIGNED_POLICY) for blob in envelope.manifests]
    payload = messages[0].payload
    if any(m.payload != payload for m in messages[1:]):
        raise MalformedError(
            "The manufacturer signatures in the envelope are over different manifests.",
            reason="envelope",
        )
    # Verify the trusted signatures first (any vendor), so the payload is read only once it is
    # known to come from a trusted manufacturer key.
    verified = _verified(messages, trust.manufacturers)
    _enough(verified, threshold=1, role="manufacturer firmware", scope=None)
    item: object
    try:
        item = strict_loads(payload, what="signed manifest")
    except MalformedError as err:
        item = SchemaError(str(err), reason="not-cbor")  # reported by the schema step
    vendor = item.get("vendor") if isinstance(item, Mapping) else None
    scope = uuid.UUID(bytes=vendor) if isinstance(vendor, bytes) and len(vendor) == 16 else None
    # Threshold within the vendor's keys (TUF delegation: a key is trusted for its vendor only).
    signers = _enough(
        verified, threshold=trust.manufacturer_threshold, role="manufacturer firmware", scope=scope
    )
    return envelope, payload, item, signers


def _rollback(
    checks: _Checks, fields: ManifestFields, state: ManifestState, device: DeviceTarget | None
) -> None:
    # Step 4 - RFC 9124 REQ.SEC.SEQUENCE (rollback): strictly above the highest accepted.
    highest = state.get((fields.vendor, fields.class_id))
    installed = None if device is None else device.installed_seq
    if highest is not None and fields.seq <= highest:
        checks.failed(
            "rollback",
            RollbackError(
                f"The manifest has sequence number {fields.seq}, not above {highest}, the "
                "highest already accepted for this device model: it would roll firmware back."
            ),
        )
    elif installed is not None and fields.seq <= installed:
        checks.failed(
            "rollback",
            RollbackError(
                f"The manifest has sequence number {fields.seq}, not above {installed}, the one "
                f"installed on device {device.device_id if device else ''}."
            ),
        )
    else:
        known = "none accepted yet" if highest is None else f"highest accepted {highest}"
        checks.passed("rollback", f"Sequence number {fields.seq} ({known}).")


def _device_match(checks: _Checks, fields: ManifestFields, device: DeviceTarget | None) -> None:
    # Step 5 - RFC 9124 REQ.SEC.COMPATIBLE (incompatible image).
    if device is None:
        checks.skipped("device-match", "No target device given; vendor and class not compared.")
        return
    if fields.vendor != device.vendor:
        checks.failed(
            "device-match",
            MismatchError(
                f"The manifest is for vendor {fields.vendor}, but device {device.device_id} is "
                f"from vendor {device.vendor}.",
                reason="wrong-vendor",
            ),
        )
    elif fields.class_id != device.class_id:
        checks.failed(
            "device-match",
            MismatchError(
                f"The manifest is for device class {fields.class_id}, but device "
                f"{device.device_id} is of class {device.class_id} (another model).",
                reason="wrong-class",
            ),
        )
    else:
        checks.passed("device-match", f"Vendor and class match device {device.device_id}.")


def _use_before(checks: _Checks, fields: ManifestFields, now: datetime) -> None:
    # Step 6 - RFC 9124 REQ.SEC.EXP (freeze): the gateway clock, captured once by the caller.
    when = int(now.timestamp())
    if when >= fields.use_before:
        checks.failed(
            "use-before",
            ExpiredError(
                f"The manifest was to be used before {_iso(fields.use_before)}; it is now "
                f"{_iso(when)}. Ask the manufacturer for a fresh manifest.",
                reason="use-before",
            ),
        )
    else:
        checks.passed("use-before", f"Usable until {_iso(fields.use_before)}.")


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(min(epoch, 253402300799), tz=UTC).isoformat()


def _image(checks: _Checks, fields: ManifestFields, image: bytes | None) -> None:
    # Step 7 - RFC 9124 REQ.SEC.AUTH.IMG_TYPE / THREAT.IMG.REPLACE: size first (extra data, and
    # cheap), then the digest.
    if image is None:
        checks.skipped("image", "No image given; size and digest not compared.")
        return
    if len(image) != fields.image_size:
        checks.failed(
            "image",
            MismatchError(
                f"The image is {len(image):,} bytes; the manifest signs {fields.image_size:,}.",
                reason="image-size",
            ),
        )
    elif hashlib.sha256(image).digest() != fields.image_digest:
        checks.failed(
            "image",
            MismatchError(
                "The image's SHA-256 differs from the one the manufacturer signed: it is not "
                "the firmware the manifest describes.",
                reason="image-digest",
            ),
        )
    else:
        checks.passed("image", f"{len(image):,} bytes, SHA-256 as signed.")


def _approval(
    checks: _Checks,
    fields: ManifestFields,
    digest: bytes,
    approvals: Sequence[bytes],
    trust: ManifestTrust,
) -> tuple[str, ...]:
    # Step 8 - Uptane director role (unapproved update). Approvals that are malformed or for
    # another manifest are ignored (they approve nothing); a trusted operator's signature that
    # fails is tampering and fails the check.
    messages: list[Sign1Message] = []
    ignored = 0
    for blob in approvals:
        try:
            message = decode_sign1(blob, policy=_SIGNED_POLICY)
            _approval_payload(message.payload, digest)
        except VerificationError:
            ignored += 1
            continue
        messages.append(message)
    try:
        approvers = verify_threshold(
            messages, trust.operators, threshold=trust.operator_threshold, role="operator"
        )
    except SignatureError as err:
        checks.failed("operator-approval", err)
        return ()
    except UntrustedSignerError as err:
        if fields.urgent:
            checks.passed(
                "operator-approval",
                f"Urgent security fix (priority {fields.priority}): proceeds without operator "
                f"approval ({err})",
            )
        else:
            checks.failed(
                "operator-approval",
                PolicyError(
                    f"This routine update (priority {fields.priority}) is not approved by the "
                    f"hospital: {err} Ask an operator to run `provgw manifest approve`.",
                    reason="not-approved",
                ),
            )
        return ()
    names = tuple(a.name for a in approvers)
    extra = f"; {ignored} approval(s) for nothing valid ignored" if ignored else ""
    checks.passed("operator-approval", f"Approved by {', '.join(names)}{extra}.")
    return names


def _approval_payload(payload: bytes, digest: bytes) -> None:
    item = strict_loads(payload, what="operator approval")
    if (
        not isinstance(item, Mapping)
        or set(item) != {"type", "manifest", "approved"}
        or item["type"] != APPROVAL_TYPE
        or item["manifest"] != digest
        or type(item["approved"]) is not int
    ):
        raise SchemaError("The approval is not an approval of this manifest.", reason="approval")


def _sbom(
    checks: _Checks, fields: ManifestFields, sbom: bytes | None, *, check_quality: bool
) -> None:
    # Step 9 - SBOM binding (substitution): the exact bytes, never a re-serialisation.
    if sbom is None:
        checks.failed(
            "sbom-binding",
            SbomError(
                "The envelope carries no SBOM (it was severed); the gateway needs it to check "
                "what the firmware contains.",
                reason="sbom-missing",
            ),
        )
        checks.not_run("sbom-quality", "Not checked: no SBOM.")
        return
    if sbom_digest(sbom) != fields.sbom_digest:
        checks.failed(
            "sbom-binding",
            MismatchError(
                "The SBOM's SHA-256 differs from the one the manufacturer signed: it does not "
                "describe this firmware.",
                reason="sbom-digest",
            ),
        )
        checks.not_run("sbom-quality", "Not checked: the SBOM is not the one signed.")
        return
    checks.passed("sbom-binding", f"SBOM of {len(sbom):,} bytes, SHA-256 as signed.")
    # Step 10 - SBOM quality (transparency); deferred on the urgent lane.
    if not check_quality:
        checks.skipped("sbom-quality", "Deferred: checked after delivery (urgent lane).")
        return
    try:
        report = check_sbom(sbom)
    except VerificationError as err:
        checks.failed("sbom-quality", err)
        return
    if report.ok:
        checks.passed("sbom-quality", report.summary())
    else:
        checks.failed("sbom-quality", SbomError(report.summary(), reason="sbom-quality"))


# --- the verified object -------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    """A firmware manifest that passed every check it was given inputs for.

    Build it with :meth:`from_bytes`; it never exists half-checked.
    """

    fields: ManifestFields
    digest: bytes
    envelope: bytes
    sbom: bytes | None
    report: ManifestReport

    @classmethod
    def from_bytes(  # noqa: PLR0913 -- the inputs of validate_manifest
        cls,
        data: bytes,
        *,
        trust: ManifestTrust,
        state: ManifestState,
        now: datetime,
        device: DeviceTarget | None = None,
        image: bytes | None = None,
        check_sbom_quality: bool = True,
    ) -> Manifest:
        """Validate *data* (:func:`validate_manifest`); raise the first failing check's error."""
        report = validate_manifest(
            data,
            trust=trust,
            state=state,
            now=now,
            device=device,
            image=image,
            check_sbom_quality=check_sbom_quality,
        )
        error = report.first_error
        if error is not None:
            raise error
        assert report.fields is not None  # every check passed, so schema did
        assert report.digest is not None
        sbom = _open_envelope(data).sbom
        return cls(report.fields, report.digest, data, sbom, report)


# --- producing manifests and approvals (manufacturer and operator tooling) ---------------------


def sign_manifest(fields: ManifestFields, key: PrivateKey) -> bytes:
    """Sign the manifest map with a manufacturer key; kid = :func:`kid_for` of its public key."""
    return sign1(fields.to_cbor(), key, kid=kid_for(key.public_key()))


def build_envelope(
    signed: bytes | Sequence[bytes], *, sbom: bytes | None = None, approvals: Sequence[bytes] = ()
) -> bytes:
    """Assemble an envelope from one or more manufacturer signatures, approvals and the SBOM."""
    members = [signed] if isinstance(signed, bytes) else list(signed)
    item: dict[str, Any] = {"manifest": members[0] if len(members) == 1 else members}
    if approvals:
        item["approvals"] = list(approvals)
    if sbom is not None:
        item["sbom"] = sbom
    return dumps(item)


def make_approval(digest: bytes, key: PrivateKey, *, now: datetime) -> bytes:
    """Sign an operator's approval: COSE_Sign1 over ``{type, manifest digest, approved}``."""
    payload = dumps({"type": APPROVAL_TYPE, "manifest": digest, "approved": int(now.timestamp())})
    return sign1(payload, key, kid=kid_for(key.public_key()))


def add_approval(envelope: bytes, key: PrivateKey, *, now: datetime) -> bytes:
    """Return *envelope* with an approval by *key* added (replacing an earlier one by that key).

    Does not verify the manifest: validate it first (``provgw manifest approve --trust``).
    """
    opened = _open_envelope(envelope)
    payload = decode_sign1(opened.manifests[0], policy=_SIGNED_POLICY).payload
    kid = kid_for(key.public_key())
    kept = []
    for blob in opened.approvals:
        try:
            if decode_sign1(blob, policy=_SIGNED_POLICY).kid == kid:
                continue
        except VerificationError:
            pass  # an unreadable approval is kept as it was: not ours to drop
        kept.append(blob)
    kept.append(make_approval(manifest_digest(payload), key, now=now))
    return build_envelope(opened.manifests, sbom=opened.sbom, approvals=kept)


@dataclass(frozen=True)
class UnverifiedManifest:
    """What an envelope claims, with no signature checked: for display, never for decisions."""

    fields: ManifestFields
    digest: bytes
    signer_kids: tuple[bytes, ...]
    approvals: int
    sbom: bytes | None


def unsafe_read_manifest(data: bytes) -> UnverifiedManifest:
    """Decode an envelope WITHOUT checking any signature: for display only (``show``).

    Raises typed errors for a malformed envelope or manifest map. Never act on the result.
    """
    if len(data) > MAX_ENVELOPE_BYTES:
        raise OversizeError(f"The manifest envelope is over {MAX_ENVELOPE_BYTES:,} bytes.")
    opened = _open_envelope(data)
    messages = [decode_sign1(blob, policy=_SIGNED_POLICY) for blob in opened.manifests]
    payload = messages[0].payload
    try:
        item = strict_loads(payload, what="signed manifest")
    except MalformedError as err:
        raise SchemaError(str(err), reason="not-cbor") from err
    fields = ManifestFields.from_item(item)
    kids = tuple(m.kid or b"" for m in messages)
    return UnverifiedManifest(
        fields, manifest_digest(payload), kids, len(opened.approvals), opened.sbom
    )
