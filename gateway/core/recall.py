"""Recall notices: a closed CBOR map signed by 2-of-N manufacturer keys, CSAF 2.0 import, matching.

A recall notice names what is recalled (openFDA device recall fields: recall number such as
``Z-1234-2026``, class I/II/III, reason, root cause, status, dates), the **affected set** as rules,
and the **remedy** (the digest of a firmware manifest that fixes it, or an action text). Its
format is documented with CDDL in ``firmware_manifests/recalls/README.md``.

Rules are alternatives: a device is affected when *any* rule matches it, and the impact report
names which rule(s) did. Every rule is limited to the signing vendor's devices (a manufacturer can
recall only its own devices); ``class`` (the model's class id, RFC 9124 §6.1) or ``gtin`` (the
GS1 device identifier) narrow it to one model:

- ``model`` — every device of the model (class id or GTIN);
- ``serial`` / ``lot`` — serial numbers or lots from ``from`` to ``to`` inclusive, within a model.
  Range order: same text prefix, then the numeric value of the trailing digits
  (``VL3-2600001`` .. ``VL3-2600050``); a value without trailing digits matches only itself;
- ``firmware`` — the model's devices whose current firmware version is in a ``vers:semver`` range
  (compared by :mod:`gateway.core.semver`: 4.2.9 < 4.2.10, pre-releases below their release,
  four-part versions handled with missing parts as zero);
- ``component`` — devices whose current firmware's SBOM lists a component with the package URL
  ``purl`` (type/namespace/name; a given subpath must match too; version and qualifiers ignored)
  whose version is in the ``vers:semver`` range.

When the gateway cannot decide a rule for a device (its firmware version, lot or SBOM is unknown,
or a component version is not a semantic version) the device is **undetermined**, never silently
unaffected: :class:`Verdict` carries the reason, and impact reports list such devices apart.

Verification of a signed notice (:meth:`Recall.from_bytes`), in order:

1. Size cap before parsing — endless data.
2. Envelope: a CBOR map ``{"recall": [COSE_Sign1, ...]}``, each signature a COSE_Sign1 whose
   ``alg`` is protected (RFC 9052 §3.1), all over the same payload — parser confusion, signatures
   over different notices spliced together.
3. Signatures: every signature by a trusted recall key must verify (tampering is never outvoted),
   and at least ``threshold`` (>= 2) distinct keys trusted *for the notice's vendor* must have
   signed (TUF-style threshold and delegation, Uptane §5.4.4.3) — one stolen or rogue key cannot
   recall a fleet or suppress a recall by issuing a fake "terminated" revision.
4. Closed schema, read only after 3 — smuggled fields, one notice read two ways.

CSAF 2.0 advisories (:func:`unsafe_recall_from_csaf`) carry no signature the gateway verifies (a
CSAF provider may publish an OpenPGP signature next to the file; we do not check PGP). Decision:
they are imported only when the operator says so explicitly (``provgw recall import
--trust-unsigned``), and the resulting :class:`Recall` has ``signed=False``: the impact is shown
and tracked, but the urgent lane acts only on signed notices, and an unsigned import never
replaces a signed notice in the store.

Pure: bytes, trust and facts in; verdicts out. No clock (``issued`` is the signer's claim, shown
only), no file, no database.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from types import MappingProxyType
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from packageurl import PackageURL

from gateway.core._json import too_deep_to_parse
from gateway.core.cbor import dumps, strict_loads
from gateway.core.cose import ALG_EDDSA, ALG_ES256, CosePolicy, PrivateKey, decode_sign1, sign1
from gateway.core.errors import (
    MalformedError,
    OversizeError,
    PolicyError,
    SchemaError,
)
from gateway.core.identity import kid_for
from gateway.core.manifest import TrustedKey, class_id, vendor_id, verify_threshold
from gateway.core.semver import Version, VersRange, parse_vers

__all__ = [
    "MAX_RECALL_BYTES",
    "RECALL_FORMAT",
    "RECALL_TYPE",
    "RULE_KINDS",
    "Component",
    "DeviceFacts",
    "Match",
    "Recall",
    "RecallFields",
    "RecallTrust",
    "Remedy",
    "Rule",
    "Verdict",
    "add_signature",
    "build_recall",
    "component_verdict",
    "components_of_sbom",
    "fields_from_spec",
    "match_device",
    "purl_key",
    "range_key",
    "rule_detail",
    "rule_verdict",
    "sign_recall",
    "unsafe_recall_from_csaf",
]

#: ``type`` of the signed map: domain separation from manifests, approvals and events.
RECALL_TYPE = "recall-notice"
#: The ``format`` value this code reads and writes.
RECALL_FORMAT = 1
#: Largest envelope (signed notice) accepted; refused before parsing.
MAX_RECALL_BYTES = 64 * 1024
#: Largest CSAF document read.
MAX_CSAF_BYTES = 4 * 1024 * 1024
#: Rule kinds, in the order impact reports list them.
RULE_KINDS = ("model", "serial", "lot", "firmware", "component")

RuleKind = Literal["model", "serial", "lot", "firmware", "component"]
RecallClass = Literal["I", "II", "III"]
RecallStatus = Literal["ongoing", "completed", "terminated"]

_POLICY = CosePolicy(max_size=MAX_RECALL_BYTES, allowed_algs=frozenset({ALG_EDDSA, ALG_ES256}))
_MAX_SIGNATURES = 16
_MAX_RULES = 256
_MAX_TEXT = 2048
_MAX_LIST = 64
_INT64 = 2**63 - 1
_TOKEN = re.compile(r"[A-Za-z0-9._:/-]{1,64}\Z", re.ASCII)
_CVE = re.compile(r"CVE-\d{4}-\d{4,}\Z", re.ASCII)
_GTIN = re.compile(r"\d{14}\Z", re.ASCII)
_RANGE_VALUE = re.compile(r"[!\"%&'*+,\-./0-9:;<=>?A-Z_a-z]{1,20}\Z", re.ASCII)
_TRAILING_DIGITS = re.compile(r"(\d{1,18})\Z", re.ASCII)
_T = TypeVar("_T", bound=str)
_CLASSES: tuple[RecallClass, ...] = ("I", "II", "III")
_STATUSES: tuple[RecallStatus, ...] = ("ongoing", "completed", "terminated")


# --- small shared helpers ---------------------------------------------------------------------


def range_key(value: str) -> tuple[str, int | None]:
    """Split a serial number or lot into (text prefix, value of the trailing digits).

    ``VL3-2600017`` -> ``("VL3-", 2600017)``; a value without trailing digits -> ``(value, None)``.
    Ranges compare by equal prefix, then number; the store indexes the same two parts.
    """
    match = _TRAILING_DIGITS.search(value)
    if match is None:
        return value, None
    return value[: match.start()], int(match.group(1))


def _in_range(value: str, low: str, high: str) -> bool:
    prefix, number = range_key(value)
    low_prefix, low_number = range_key(low)
    _, high_number = range_key(high)
    if prefix != low_prefix:
        return False
    if number is None or low_number is None or high_number is None:
        return value in (low, high)
    return low_number <= number <= high_number


def purl_key(text: str) -> tuple[str, str]:
    """Return (``pkg:type/namespace/name``, subpath) of a package URL, normalised.

    Version and qualifiers are dropped: a recall names a package and a version *range*. Raises
    :class:`MalformedError` for text that is not a package URL.
    """
    try:
        purl = PackageURL.from_string(text)
    except ValueError as exc:
        raise MalformedError(
            f"{text[:120]!r} is not a package URL (pkg:type/namespace/name): {exc}",
            reason="bad-purl",
        ) from exc
    base = PackageURL(type=purl.type, namespace=purl.namespace, name=purl.name).to_string()
    # purl spec: the github/bitbucket types are case-insensitive and normalised to lower case.
    if purl.type in ("github", "bitbucket"):
        base = base.lower()
    return base, (purl.subpath or "").strip("/")


def _component_version(text: str) -> Version | None:
    for candidate in (text, text[1:] if text[:1] in "vV" else None):
        if candidate:
            try:
                return Version.parse(candidate, strict=False)
            except MalformedError:
                continue
    return None


# --- rules and remedy ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One rule of a recall's affected set (kinds in the module docstring)."""

    kind: RuleKind
    class_id: uuid.UUID | None = None
    gtin: str | None = None
    low: str | None = None
    high: str | None = None
    vers: str | None = None
    purl: str | None = None
    #: Parsed forms, derived on construction.
    range: VersRange | None = field(default=None, compare=False, repr=False)
    purl_base: str | None = field(default=None, compare=False, repr=False)
    subpath: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.vers is not None and self.range is None:
            object.__setattr__(self, "range", parse_vers(self.vers))
        if self.purl is not None and self.purl_base is None:
            base, sub = purl_key(self.purl)
            object.__setattr__(self, "purl_base", base)
            object.__setattr__(self, "subpath", sub)

    def describe(self, model: str | None = None) -> str:
        """Return a short sentence naming what the rule covers (*model* replaces the class id)."""
        scope = (
            f"(01){self.gtin}"
            if self.gtin
            else (model or f"class {self.class_id}")
            if self.class_id
            else "any model"
        )
        if self.kind == "model":
            return f"every device of {scope}"
        if self.kind in ("serial", "lot"):
            span = self.low if self.low == self.high else f"{self.low} .. {self.high}"
            return f"{scope}, {self.kind} {span}"
        if self.kind == "firmware":
            return f"{scope}, firmware {self.vers}"
        return f"{scope}, SBOM component {self.purl} {self.vers}"

    def to_item(self) -> dict[str, Any]:
        """Return the rule's CBOR map (what is signed)."""
        item: dict[str, Any] = {"kind": self.kind}
        if self.class_id is not None:
            item["class"] = self.class_id.bytes
        if self.gtin is not None:
            item["gtin"] = self.gtin
        if self.low is not None:
            item["from"] = self.low
        if self.high is not None:
            item["to"] = self.high
        if self.purl is not None:
            item["purl"] = self.purl
        if self.vers is not None:
            item["vers"] = self.vers
        return item

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        out: dict[str, Any] = {"kind": self.kind}
        for name in ("gtin", "low", "high", "purl", "vers"):
            value = getattr(self, name)
            if value is not None:
                out[{"low": "from", "high": "to"}.get(name, name)] = value
        if self.class_id is not None:
            out["class"] = str(self.class_id)
        return out


# Allowed keys per kind: (required, optional). Scope is class XOR gtin where a scope is required.
_RULE_KEYS: Mapping[str, tuple[frozenset[str], frozenset[str]]] = MappingProxyType(
    {
        "model": (frozenset(), frozenset({"class", "gtin"})),
        "serial": (frozenset({"from", "to"}), frozenset({"class", "gtin"})),
        "lot": (frozenset({"from", "to"}), frozenset({"class", "gtin"})),
        "firmware": (frozenset({"class", "vers"}), frozenset()),
        "component": (frozenset({"purl", "vers"}), frozenset({"class"})),
    }
)


def _rule_from_item(index: int, item: object) -> Rule:
    where = f"affected[{index}]"
    if not isinstance(item, Mapping) or not isinstance(item.get("kind"), str):
        raise SchemaError(f"The recall's {where} is not a rule map with a kind.", reason="rule")
    kind = item["kind"]
    if kind not in _RULE_KEYS:
        raise SchemaError(
            f"The recall's {where} has kind {kind!r}; known kinds: {', '.join(RULE_KINDS)}.",
            reason="rule",
        )
    required, optional = _RULE_KEYS[kind]
    keys = set(item) - {"kind"}
    if not required <= keys or not keys <= required | optional:
        raise SchemaError(
            f"The recall's {where} ({kind}) must have {sorted(required)} and may have "
            f"{sorted(optional)}; it has {sorted(str(k) for k in keys)}.",
            reason="rule",
        )
    klass, gtin = _rule_scope(where, kind, item)
    low, high = item.get("from"), item.get("to")
    if kind in ("serial", "lot"):
        _rule_range(where, kind, low, high)
    for name in ("vers", "purl"):
        value = item.get(name)
        if value is not None and (not isinstance(value, str) or not 0 < len(value) <= 512):
            raise SchemaError(f"The recall's {where}.{name} must be text.", reason="rule")
    try:
        return Rule(
            kind=kind,
            class_id=None if klass is None else uuid.UUID(bytes=klass),
            gtin=gtin,
            low=low,
            high=high,
            vers=item.get("vers"),
            purl=item.get("purl"),
        )
    except MalformedError as exc:
        raise SchemaError(f"The recall's {where}: {exc}", reason="rule") from exc


def _rule_scope(where: str, kind: str, item: Mapping[Any, Any]) -> tuple[bytes | None, str | None]:
    if kind in ("model", "serial", "lot") and len(set(item) & {"class", "gtin"}) != 1:
        raise SchemaError(
            f"The recall's {where} ({kind}) must name its model by exactly one of class or gtin.",
            reason="rule",
        )
    klass = item.get("class")
    if klass is not None and (not isinstance(klass, bytes) or len(klass) != 16):
        raise SchemaError(f"The recall's {where}.class must be a 16-byte class id.", reason="rule")
    gtin = item.get("gtin")
    if gtin is not None and (not isinstance(gtin, str) or not _GTIN.match(gtin)):
        raise SchemaError(f"The recall's {where}.gtin must be a GTIN-14.", reason="rule")
    return klass, gtin


def _rule_range(where: str, kind: str, low: object, high: object) -> None:
    for name, value in (("from", low), ("to", high)):
        if not isinstance(value, str) or not _RANGE_VALUE.match(value):
            raise SchemaError(
                f"The recall's {where}.{name} must be a {kind} of 1-20 GS1 characters.",
                reason="rule",
            )
    assert isinstance(low, str)
    assert isinstance(high, str)
    (lp, ln), (hp, hn) = range_key(low), range_key(high)
    if lp != hp or (ln is None) != (hn is None) or (ln is None and low != high):
        raise SchemaError(
            f"The recall's {where} range {low} .. {high} must share a prefix and end in "
            "numbers (or name one value).",
            reason="rule",
        )
    if ln is not None and hn is not None and ln > hn:
        raise SchemaError(f"The recall's {where} range {low} .. {high} is empty.", reason="rule")


@dataclass(frozen=True)
class Remedy:
    """What fixes the affected devices: a firmware manifest (by digest), an action, or both."""

    manifest: bytes | None = None
    action: str | None = None

    def to_item(self) -> dict[str, Any]:
        """Return the remedy's CBOR map."""
        item: dict[str, Any] = {}
        if self.manifest is not None:
            item["manifest"] = self.manifest
        if self.action is not None:
            item["action"] = self.action
        return item

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "manifest": None if self.manifest is None else self.manifest.hex(),
            "action": self.action,
        }


# --- the signed map ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecallFields:
    """The closed recall map (CDDL in ``firmware_manifests/recalls/README.md``)."""

    recall_id: str
    revision: int
    vendor: uuid.UUID
    recall_class: RecallClass
    status: RecallStatus
    reason: str
    root_cause: str
    initiated: str
    issued: int
    rules: tuple[Rule, ...]
    remedy: Remedy
    posted: str | None = None
    terminated: str | None = None
    cves: tuple[str, ...] = ()

    @property
    def firmware_remedy(self) -> bool:
        """Whether the remedy is a firmware manifest (what the urgent lane delivers)."""
        return self.remedy.manifest is not None

    def to_item(self) -> dict[str, Any]:
        """Return the CBOR map."""
        item: dict[str, Any] = {
            "type": RECALL_TYPE,
            "format": RECALL_FORMAT,
            "id": self.recall_id,
            "revision": self.revision,
            "vendor": self.vendor.bytes,
            "recall-class": self.recall_class,
            "status": self.status,
            "reason": self.reason,
            "root-cause": self.root_cause,
            "initiated": self.initiated,
            "issued": self.issued,
            "affected": [r.to_item() for r in self.rules],
            "remedy": self.remedy.to_item(),
        }
        if self.posted is not None:
            item["posted"] = self.posted
        if self.terminated is not None:
            item["terminated"] = self.terminated
        if self.cves:
            item["cves"] = list(self.cves)
        return item

    def to_cbor(self) -> bytes:
        """Deterministic CBOR (RFC 8949 §4.2): the bytes manufacturers sign."""
        return dumps(self.to_item())

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "id": self.recall_id,
            "revision": self.revision,
            "vendor": str(self.vendor),
            "class": self.recall_class,
            "status": self.status,
            "reason": self.reason,
            "root_cause": self.root_cause,
            "initiated": self.initiated,
            "posted": self.posted,
            "terminated": self.terminated,
            "issued": self.issued,
            "cves": list(self.cves),
            "affected": [r.to_json() for r in self.rules],
            "remedy": self.remedy.to_json(),
        }

    @classmethod
    def from_cbor(cls, payload: bytes) -> RecallFields:
        """Decode and check the closed map (step 4), or raise SchemaError."""
        try:
            item = strict_loads(payload, what="signed recall notice")
        except MalformedError as exc:
            raise SchemaError(str(exc), reason="not-cbor") from exc
        return cls.from_item(item)

    @classmethod
    def from_item(cls, item: object) -> RecallFields:
        """Check the closed schema of a decoded recall map, or raise SchemaError."""
        if not isinstance(item, Mapping):
            raise SchemaError("The signed recall notice is not a CBOR map.", reason="not-a-map")
        unknown = sorted(str(k) for k in item if k not in _REQUIRED | _OPTIONAL)
        if unknown:
            # Closed map: a field we do not know could change what is recalled; refuse it.
            raise SchemaError(
                f"The recall notice has field(s) this gateway does not know: {', '.join(unknown)}.",
                reason="unknown-field",
            )
        missing = sorted(k for k in _REQUIRED if k not in item)
        if missing:
            raise SchemaError(
                f"The recall notice lacks the field(s) {', '.join(missing)}.",
                reason="missing-field",
            )
        if item["type"] != RECALL_TYPE or item["format"] != RECALL_FORMAT:
            raise SchemaError(
                f"The signed map is not a recall notice of format {RECALL_FORMAT} "
                f"(type {item['type']!r}, format {item['format']!r}).",
                reason="format-version",
            )
        rules = item["affected"]
        if not isinstance(rules, list) or not 0 < len(rules) <= _MAX_RULES:
            raise SchemaError(
                f"The recall's affected set must list 1 to {_MAX_RULES} rules.", reason="rule"
            )
        return cls(
            recall_id=_token("id", item["id"]),
            revision=_uint("revision", item["revision"]),
            vendor=uuid.UUID(bytes=_bstr("vendor", item["vendor"], 16)),
            recall_class=_choice("recall-class", item["recall-class"], _CLASSES),
            status=_choice("status", item["status"], _STATUSES),
            reason=_text("reason", item["reason"]),
            root_cause=_text("root-cause", item["root-cause"]),
            initiated=_date("initiated", item["initiated"]),
            issued=_uint("issued", item["issued"]),
            rules=tuple(_rule_from_item(i, r) for i, r in enumerate(rules)),
            remedy=_remedy(item["remedy"]),
            posted=_date("posted", item["posted"]) if "posted" in item else None,
            terminated=_date("terminated", item["terminated"]) if "terminated" in item else None,
            cves=_cves(item.get("cves", [])),
        )


_REQUIRED = frozenset(
    {
        "type",
        "format",
        "id",
        "revision",
        "vendor",
        "recall-class",
        "status",
        "reason",
        "root-cause",
        "initiated",
        "issued",
        "affected",
        "remedy",
    }
)
_OPTIONAL = frozenset({"posted", "terminated", "cves"})


def _fail(name: str, what: str) -> SchemaError:
    return SchemaError(f"The recall field {name} must be {what}.", reason="field-type")


def _token(name: str, value: object) -> str:
    if not isinstance(value, str) or not _TOKEN.match(value):
        raise _fail(name, "an identifier of 1-64 letters, digits or . _ : / -")
    return value


def _uint(name: str, value: object) -> int:
    if type(value) is not int or not 0 <= value <= _INT64:
        raise _fail(name, "an unsigned integer")
    return value


def _bstr(name: str, value: object, size: int) -> bytes:
    if not isinstance(value, bytes) or len(value) != size:
        raise _fail(name, f"a {size}-byte string")
    return value


def _text(name: str, value: object) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_TEXT:
        raise _fail(name, f"text of 1 to {_MAX_TEXT} characters")
    return value


def _date(name: str, value: object) -> str:
    if not isinstance(value, str) or len(value) != 10:
        raise _fail(name, "a date written YYYY-MM-DD")
    try:
        date.fromisoformat(value)
    except ValueError:
        raise _fail(name, "a date written YYYY-MM-DD") from None
    return value


def _choice(name: str, value: object, allowed: tuple[_T, ...]) -> _T:
    for option in allowed:
        if value == option:
            return option
    raise _fail(name, "one of " + ", ".join(allowed))


def _cves(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > _MAX_LIST:
        raise _fail("cves", f"a list of at most {_MAX_LIST} CVE ids")
    for cve in value:
        if not isinstance(cve, str) or not _CVE.match(cve):
            raise _fail("cves", "a list of CVE ids such as CVE-2024-23170")
    return tuple(value)


def _remedy(value: object) -> Remedy:
    if not isinstance(value, Mapping) or not value or not set(value) <= {"manifest", "action"}:
        raise _fail("remedy", "a map with a manifest digest, an action, or both")
    manifest = value.get("manifest")
    action = value.get("action")
    return Remedy(
        None if manifest is None else _bstr("remedy.manifest", manifest, 32),
        None if action is None else _text("remedy.action", action),
    )


# --- trust and the verified object --------------------------------------------------------------


@dataclass(frozen=True)
class RecallTrust:
    """Manufacturer recall-signing keys (each trusted for its vendors) and the threshold (>= 2)."""

    keys: Mapping[bytes, TrustedKey]
    threshold: int = 2

    def __post_init__(self) -> None:
        # Issue 6: a recall is signed by 2 of N manufacturer keys; one key alone never suffices.
        if self.threshold < 2:
            raise ValueError("the recall signature threshold must be at least 2")

    @classmethod
    def build(cls, keys: Iterable[TrustedKey], *, threshold: int = 2) -> RecallTrust:
        """Index *keys* by kid."""
        return cls(MappingProxyType({k.kid: k for k in keys}), threshold)


@dataclass(frozen=True)
class Recall:
    """A recall notice that passed verification (signed), or an operator-trusted CSAF import.

    Build it with :meth:`from_bytes` (signed) or :func:`unsafe_recall_from_csaf` (unsigned,
    ``signed=False``). ``digest`` is the SHA-256 of the signed (or mapped) recall map bytes.
    """

    fields: RecallFields
    digest: bytes
    signed: bool
    signers: tuple[str, ...]
    source: Literal["notice", "csaf"]
    raw: bytes
    notes: tuple[str, ...] = ()

    @property
    def recall_id(self) -> str:
        """The recall number."""
        return self.fields.recall_id

    @classmethod
    def from_bytes(cls, data: bytes, *, trust: RecallTrust) -> Recall:
        """Verify a signed recall envelope (steps 1-4 of the module docstring)."""
        # Step 1 - size cap before any parsing (endless data).
        if len(data) > MAX_RECALL_BYTES:
            raise OversizeError(
                f"The recall notice is {len(data):,} bytes, over the {MAX_RECALL_BYTES:,}-byte "
                "limit; it was refused without being read.",
                reason="recall-oversize",
            )
        # Step 2 - envelope and COSE policy (parser confusion, spliced signatures).
        messages = [decode_sign1(blob, policy=_POLICY) for blob in _open_envelope(data)]
        payload = messages[0].payload
        if any(m.payload != payload for m in messages[1:]):
            raise MalformedError(
                "The signatures in the recall envelope are over different notices.",
                reason="recall-envelope",
            )
        # Step 3 - signatures. First: every trusted key's signature verifies and at least one
        # does, so the payload is read only once a trusted key vouches for it; then the
        # threshold among keys trusted for the vendor the notice names (key compromise).
        verify_threshold(messages, trust.keys, threshold=1, role="manufacturer recall")
        try:
            item = strict_loads(payload, what="signed recall notice")
        except MalformedError as exc:
            raise SchemaError(str(exc), reason="not-cbor") from exc
        vendor = item.get("vendor") if isinstance(item, Mapping) else None
        scope = uuid.UUID(bytes=vendor) if isinstance(vendor, bytes) and len(vendor) == 16 else None
        if scope is None:
            raise SchemaError("The recall notice names no vendor.", reason="missing-field")
        signers = verify_threshold(
            messages, trust.keys, threshold=trust.threshold, role="manufacturer recall", scope=scope
        )
        # Step 4 - closed schema, now that the payload is authentic (smuggled fields).
        fields = RecallFields.from_item(item)
        names = tuple(sorted(s.name for s in signers))
        return cls(
            fields,
            hashlib.sha256(payload).digest(),
            signed=True,
            signers=names,
            source="notice",
            raw=data,
        )

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "recall": self.fields.to_json(),
            "digest": self.digest.hex(),
            "signed": self.signed,
            "signers": list(self.signers),
            "source": self.source,
            "notes": list(self.notes),
        }


def _open_envelope(data: bytes) -> tuple[bytes, ...]:
    item = strict_loads(data, what="recall notice envelope")
    if not isinstance(item, Mapping) or set(item) != {"recall"}:
        raise MalformedError(
            'The recall notice is not an envelope {"recall": [signatures]}.',
            reason="recall-envelope",
        )
    members = item["recall"]
    members = [members] if isinstance(members, bytes) else members
    if (
        not isinstance(members, list)
        or not 0 < len(members) <= _MAX_SIGNATURES
        or not all(isinstance(m, bytes) for m in members)
    ):
        raise MalformedError(
            f"The recall envelope must hold 1 to {_MAX_SIGNATURES} signed notices.",
            reason="recall-envelope",
        )
    return tuple(members)


# --- producing notices (manufacturer tooling) -----------------------------------------------------


def sign_recall(fields: RecallFields, key: PrivateKey) -> bytes:
    """One manufacturer key's COSE_Sign1 over the recall map; kid from the public key."""
    return sign1(fields.to_cbor(), key, kid=kid_for(key.public_key()))


def build_recall(fields: RecallFields, keys: Sequence[PrivateKey]) -> bytes:
    """Return an envelope signed by each of *keys* (at least one)."""
    if not keys:
        raise ValueError("a recall envelope needs at least one signature")
    return dumps({"recall": [sign_recall(fields, k) for k in keys]})


def add_signature(envelope: bytes, key: PrivateKey) -> bytes:
    """Co-sign: add *key*'s signature over the envelope's notice (replacing an earlier one by it).

    Does not verify the other signatures; ``provgw recall import`` does.
    """
    members = _open_envelope(envelope)
    messages = [decode_sign1(blob, policy=_POLICY) for blob in members]
    kid = kid_for(key.public_key())
    kept = [blob for blob, m in zip(members, messages, strict=True) if m.kid != kid]
    signed = sign1(messages[0].payload, key, kid=kid)
    return dumps({"recall": [*kept, signed]})


# Keys of a recall spec (fields_from_spec): the top level, a rule, the remedy.
_SPEC_KEYS = frozenset(
    {
        "id",
        "revision",
        "vendor",
        "class",
        "status",
        "reason",
        "root_cause",
        "initiated",
        "posted",
        "terminated",
        "issued",
        "cves",
        "affected",
        "remedy",
    }
)
_SPEC_RULE_KEYS = frozenset({"kind", "model", "gtin", "from", "to", "purl", "vers"})
_SPEC_REMEDY_KEYS = frozenset({"manifest", "action"})


def _spec_object(where: str, value: object, known: frozenset[str]) -> Mapping[str, Any]:
    # A spec is written by hand: a misspelt key ("terminatd", "purl_") would otherwise be
    # dropped without a word and sign a notice that says less than its author meant.
    if not isinstance(value, Mapping):
        raise SchemaError(f"The recall spec's {where} must be a JSON object.", reason="recall-spec")
    unknown = sorted(str(k) for k in value if k not in known)
    if unknown:
        raise SchemaError(
            f"The recall spec's {where} has unknown key(s) {', '.join(map(repr, unknown))}; "
            f"known keys: {', '.join(sorted(known))}.",
            reason="recall-spec",
        )
    return value


def fields_from_spec(spec: Mapping[str, Any]) -> RecallFields:
    """Build the recall map from a JSON spec (what ``provgw recall build`` reads).

    The spec names the vendor by domain and models by name (``"model": "Volara LVP 3"``); they
    become the vendor and class ids (RFC 9124 §6.1). Keys: ``id``, ``revision`` (default 1),
    ``vendor``, ``class``, ``status`` (default ongoing), ``reason``, ``root_cause``,
    ``initiated``, optional ``posted``, ``terminated``, ``issued`` (POSIX seconds), ``cves``,
    ``affected`` (rules with ``kind``, ``model`` or ``gtin``, ``from``/``to``, ``purl``,
    ``vers``), ``remedy`` (``manifest`` digest hex and/or ``action``). Raises
    :class:`SchemaError` naming what is wrong, including any key not listed here.
    """
    _spec_object("top level", spec, _SPEC_KEYS)
    try:
        vendor = vendor_id(str(spec["vendor"]))
        rules = []
        if not isinstance(spec["affected"], list):
            raise SchemaError(
                "The recall spec's affected must be a list of rule objects.",
                reason="recall-spec",
            )
        for index, raw in enumerate(spec["affected"]):
            _spec_object(f"affected[{index}]", raw, _SPEC_RULE_KEYS)
            rule = {k: v for k, v in raw.items() if k != "model"}
            if "model" in raw:
                rule["class"] = class_id(vendor, str(raw["model"])).bytes
            rules.append(rule)
        remedy = dict(_spec_object("remedy", spec["remedy"], _SPEC_REMEDY_KEYS))
        if "manifest" in remedy:
            remedy["manifest"] = bytes.fromhex(str(remedy["manifest"]))
        item = {
            "type": RECALL_TYPE,
            "format": RECALL_FORMAT,
            "id": spec["id"],
            "revision": spec.get("revision", 1),
            "vendor": vendor.bytes,
            "recall-class": spec["class"],
            "status": spec.get("status", "ongoing"),
            "reason": spec["reason"],
            "root-cause": spec["root_cause"],
            "initiated": spec["initiated"],
            "issued": spec.get("issued", 0),
            "affected": rules,
            "remedy": remedy,
        }
        for key in ("posted", "terminated", "cves"):
            if key in spec:
                item[key] = spec[key]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SchemaError(
            f"The recall spec is incomplete or mistyped ({type(exc).__name__}: {exc}).",
            reason="recall-spec",
        ) from exc
    return RecallFields.from_item(item)


# --- impact matching ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Component:
    """One SBOM component as a recall rule sees it."""

    purl_base: str
    subpath: str
    version: str


def components_of_sbom(data: bytes) -> tuple[Component, ...]:
    """List the components (nested ones too) of a CycloneDX JSON SBOM that have a package URL.

    A component's version is its ``version`` field, else the purl's version. Raises
    :class:`MalformedError` for a document that is not JSON; components with a bad purl are
    skipped (the SBOM quality check reports them).
    """
    if too_deep_to_parse(data):  # as for CSAF: the recursion limit may have been raised
        raise MalformedError("The SBOM is nested too deeply to be read.", reason="sbom-not-json")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise MalformedError(
            f"The SBOM is not valid JSON ({exc}).", reason="sbom-not-json"
        ) from exc
    out: list[Component] = []
    stack: list[object] = [doc.get("components") if isinstance(doc, dict) else None]
    while stack:
        level = stack.pop()
        if not isinstance(level, list):
            continue
        for comp in level:
            if not isinstance(comp, dict):
                continue
            stack.append(comp.get("components"))
            purl = comp.get("purl")
            if not isinstance(purl, str):
                continue
            try:
                parsed = PackageURL.from_string(purl)
                base, sub = purl_key(purl)
            except (ValueError, MalformedError):
                continue
            version = comp.get("version")
            text = version if isinstance(version, str) and version else (parsed.version or "")
            out.append(Component(base, sub, text))
    return tuple(out)


@dataclass(frozen=True)
class DeviceFacts:
    """What the gateway knows about one device, as rules need it (``None`` = unknown)."""

    device_id: str
    vendor: uuid.UUID
    class_id: uuid.UUID
    gtin: str
    serial: str
    lot: str | None = None
    version: str | None = None


@dataclass(frozen=True)
class Match:
    """A rule that matched a device: its index in the recall, its kind, and why."""

    rule: int
    kind: RuleKind
    detail: str

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {"rule": self.rule, "kind": self.kind, "detail": self.detail}


@dataclass(frozen=True)
class Verdict:
    """A device's verdict: the rules that matched, and the rules that could not be decided."""

    matches: tuple[Match, ...] = ()
    undetermined: tuple[Match, ...] = ()

    @property
    def affected(self) -> bool:
        """True when at least one rule matched."""
        return bool(self.matches)


def _scope(rule: Rule, device: DeviceFacts) -> bool:
    if rule.gtin is not None:
        return device.gtin == rule.gtin
    return rule.class_id is None or rule.class_id == device.class_id


def component_verdict(
    rule: Rule, version: str, components: Sequence[Component] | None
) -> tuple[bool | None, str]:
    """Decide a component rule for firmware *version* with SBOM *components*.

    Returns (True, detail) on a match, (None, why) when undecidable, (False, "") otherwise.
    Shared by the per-device path and the store's per-(class, version) path.
    """
    if components is None:
        return None, f"the SBOM of firmware {version} is not known to the gateway"
    unknown = ""
    for comp in components:
        if comp.purl_base != rule.purl_base or (rule.subpath and comp.subpath != rule.subpath):
            continue
        parsed = _component_version(comp.version)
        if parsed is None:
            unknown = f"component {comp.purl_base} has version {comp.version!r}, not comparable"
            continue
        assert rule.range is not None
        if rule.range.contains(parsed):
            return True, (
                f"SBOM of firmware {version} lists {comp.purl_base} {comp.version}, in {rule.vers}"
            )
    if unknown:
        return None, unknown
    return False, ""


def match_device(
    fields: RecallFields,
    device: DeviceFacts,
    components: Mapping[tuple[uuid.UUID, str], Sequence[Component]],
) -> Verdict:
    """Evaluate every rule for one device (the reference path; the store has a faster one).

    *components* maps (class id, firmware version) to that firmware's SBOM components; a
    missing key means the SBOM is unknown.
    """
    if device.vendor != fields.vendor:
        return Verdict()  # a manufacturer recalls only its own devices
    matches: list[Match] = []
    unknown: list[Match] = []
    for index, rule in enumerate(fields.rules):
        if not _scope(rule, device):
            continue
        outcome, detail = rule_verdict(rule, device, components)
        if outcome is True:
            matches.append(Match(index, rule.kind, detail))
        elif outcome is None:
            unknown.append(Match(index, rule.kind, detail))
    return Verdict(tuple(matches), tuple(unknown))


def rule_verdict(
    rule: Rule,
    device: DeviceFacts,
    components: Mapping[tuple[uuid.UUID, str], Sequence[Component]],
) -> tuple[bool | None, str]:
    """Decide one rule (its scope already checked) for *device*: matched, undetermined or not.

    Returns ``(True, detail)``, ``(None, why undecidable)`` or ``(False, "")``.
    """
    if rule.kind == "model":
        return True, rule_detail(rule, device)
    if rule.kind in ("serial", "lot"):
        value = device.serial if rule.kind == "serial" else device.lot
        if value is None:
            return None, "the device's lot is not known to the gateway"
        assert rule.low is not None
        assert rule.high is not None
        hit = _in_range(value, rule.low, rule.high)
        return hit, rule_detail(rule, device) if hit else ""
    if device.version is None:
        return None, "the device's firmware version is not known to the gateway"
    if rule.kind == "firmware":
        return _firmware_verdict(rule, device)
    return component_verdict(
        rule, device.version, components.get((device.class_id, device.version))
    )


def _firmware_verdict(rule: Rule, device: DeviceFacts) -> tuple[bool | None, str]:
    assert device.version is not None
    parsed = _component_version(device.version)
    if parsed is None:
        return None, f"the device's firmware version {device.version!r} is not comparable"
    assert rule.range is not None
    hit = rule.range.contains(parsed)
    return hit, rule_detail(rule, device) if hit else ""


def rule_detail(rule: Rule, device: DeviceFacts) -> str:
    """Return the sentence an impact report shows for a model, serial, lot or firmware match."""
    if rule.kind == "model":
        return f"model rule: {rule.describe()}"
    if rule.kind == "serial":
        return f"serial {device.serial} in {rule.low} .. {rule.high}"
    if rule.kind == "lot":
        return f"lot {device.lot} in {rule.low} .. {rule.high}"
    return f"firmware {device.version} in {rule.vers}"


# --- CSAF 2.0 import ------------------------------------------------------------------------------

_CSAF_STATUS: Mapping[str, RecallStatus] = MappingProxyType(
    {"final": "ongoing", "interim": "ongoing"}
)
_COMPONENT_RELATIONS = ("default_component_of", "installed_on")
_SEVERITY_CLASS: Mapping[str, RecallClass] = MappingProxyType(
    {"critical": "I", "high": "II", "important": "II", "moderate": "III", "medium": "III"}
)


@dataclass(frozen=True)
class _CsafProduct:
    product_id: str
    vendor: str | None
    model: str | None
    version: str | None
    version_range: str | None
    helper: Mapping[str, Any]


def _walk_branches(branches: object, path: dict[str, str], out: dict[str, _CsafProduct]) -> None:
    # CSAF 2.0 §3.1.2: branches nest vendor -> product_name -> product_version(_range); the leaf
    # carries the full product name with its product_id and identification helper.
    if not isinstance(branches, list):
        return
    for branch in branches:
        if not isinstance(branch, dict):
            continue
        here = dict(path)
        category, name = branch.get("category"), branch.get("name")
        if isinstance(category, str) and isinstance(name, str):
            here[category] = name
        product = branch.get("product")
        if isinstance(product, dict) and isinstance(product.get("product_id"), str):
            helper = product.get("product_identification_helper")
            out[product["product_id"]] = _CsafProduct(
                product["product_id"],
                here.get("vendor"),
                here.get("product_name") or here.get("product_family"),
                here.get("product_version"),
                here.get("product_version_range"),
                helper if isinstance(helper, dict) else {},
            )
        _walk_branches(branch.get("branches"), here, out)


def _csaf_vendor_domain(meta: Mapping[str, Any]) -> str | None:
    namespace = _dict(meta.get("publisher")).get("namespace")
    host = urlsplit(namespace).hostname if isinstance(namespace, str) else None
    return host or None


def _csaf_range(product: _CsafProduct) -> str | None:
    if product.version_range is not None:
        return product.version_range if product.version_range.startswith("vers:") else None
    if product.version is not None:
        return f"vers:semver/{product.version}"
    return None


def _csaf_rules(
    product: _CsafProduct, vendor: uuid.UUID, scope: uuid.UUID | None, notes: list[str]
) -> list[Rule]:
    purl = product.helper.get("purl")
    vers = _csaf_range(product)
    if isinstance(purl, str):
        # A software component (it has a package URL): a component rule, limited to the device
        # model it is installed on when a relationship says so.
        if vers is None:
            text = PackageURL.from_string(purl).version if purl.startswith("pkg:") else None
            vers = f"vers:semver/{text.lstrip('vV')}" if text else None
        if vers is None:
            notes.append(f"{product.product_id}: component {purl} without a version range")
            return []
        return [Rule("component", class_id=scope, purl=purl.split("@", 1)[0], vers=vers)]
    if product.model is None:
        notes.append(f"{product.product_id}: no product_name branch, cannot name a model")
        return []
    klass = class_id(vendor, product.model)
    rules: list[Rule] = []
    serials = product.helper.get("serial_numbers")
    if isinstance(serials, list) and serials:
        for serial in serials:
            # CSAF 2.0 §3.1.2.3.3.4: "*" and "?" are wildcards there; a range cannot say them.
            if (
                isinstance(serial, str)
                and _RANGE_VALUE.match(serial)
                and not {"*", "?"} & set(serial)
            ):
                rules.append(Rule("serial", class_id=klass, low=serial, high=serial))
            else:
                notes.append(f"{product.product_id}: serial {serial!r} not mapped (wildcard?)")
    elif vers is not None:
        rules.append(Rule("firmware", class_id=klass, vers=vers))
    else:
        rules.append(Rule("model", class_id=klass))
    return rules


def unsafe_recall_from_csaf(
    data: bytes,
    *,
    vendor_domain: str | None = None,
    fixed_manifests: Mapping[tuple[uuid.UUID, str], bytes] | None = None,
    issued: int = 0,
) -> Recall:
    """Map a CSAF 2.0 advisory into a :class:`Recall` with ``signed=False`` (NOT verified).

    Unsafe: nothing here proves who wrote the advisory (module docstring: the operator decides,
    ``--trust-unsigned``). Mapping (CSAF 2.0 §3.1-§3.2):

    - ``document.tracking.id`` -> recall id; ``tracking.version`` (or the revision history's
      length) -> revision; ``initial_release_date`` -> initiated; ``current_release_date`` ->
      posted; ``title`` -> reason; ``aggregate_severity`` critical/high/other -> class I/II/III;
      ``tracking.status`` final/interim -> ongoing (a draft is refused).
    - vendor: *vendor_domain*, else the host of ``document.publisher.namespace``.
    - ``vulnerabilities[].product_status.known_affected`` -> rules: a product with a purl is a
      component rule (scoped to the model of a ``default_component_of``/``installed_on``
      relationship, else any model of the vendor); a device product (``product_name`` branch)
      with serial numbers -> serial rules, with a ``product_version``/``product_version_range``
      -> a firmware rule, else a model rule.
    - ``fixed`` -> the remedy manifest, when *fixed_manifests* maps (class, version) of a fixed
      device product to a kept manifest's digest; ``remediations`` -> the action text; CVEs and
      vulnerability titles -> root cause.

    Raises :class:`MalformedError` for a document that is not CSAF 2.0 JSON and
    :class:`SchemaError` / :class:`PolicyError` when nothing usable can be mapped.
    """
    if len(data) > MAX_CSAF_BYTES:
        raise OversizeError(f"The CSAF document is over {MAX_CSAF_BYTES:,} bytes.")
    # Untrusted JSON: bound its nesting before the decoder recurses into it, in case a library
    # raised the recursion limit (gateway.core._json: the C stack would overflow, not raise).
    if too_deep_to_parse(data):
        raise MalformedError("The CSAF document is nested too deeply to be read.", reason="csaf")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise MalformedError(f"The CSAF document is not JSON ({exc}).", reason="csaf") from exc
    meta = _dict(doc).get("document")
    if not isinstance(meta, dict) or meta.get("csaf_version") != "2.0":
        raise MalformedError("The document is not a CSAF 2.0 advisory.", reason="csaf")
    tracking = _dict(meta.get("tracking"))
    status = _CSAF_STATUS.get(str(tracking.get("status")))
    if status is None:
        raise PolicyError(
            f"The CSAF advisory has tracking status {tracking.get('status')!r}; only final or "
            "interim advisories are imported, never drafts.",
            reason="csaf-draft",
        )
    domain = vendor_domain or _csaf_vendor_domain(meta)
    if not domain:
        raise SchemaError(
            "The CSAF advisory names no publisher namespace; give the vendor domain.",
            reason="csaf-vendor",
        )
    vendor = vendor_id(domain)
    reader = _CsafReader(vendor, _dict(doc.get("product_tree")))
    vulns = [v for v in _list(doc.get("vulnerabilities")) if isinstance(v, dict)]
    for vuln in vulns:
        reader.vulnerability(vuln)
    rules = tuple(dict.fromkeys(reader.rules))
    if not rules:
        raise SchemaError(
            "The CSAF advisory names no known_affected product the gateway can map to devices: "
            + "; ".join(reader.notes or ["no known_affected products"]),
            reason="csaf-no-products",
        )
    severity = _dict(meta.get("aggregate_severity"))
    history = tracking.get("revision_history")
    version = str(tracking.get("version", ""))
    revision = (version.isdigit() and int(version)) or (
        len(history) if isinstance(history, list) else 1
    )
    current = str(tracking.get("current_release_date", ""))[:10]
    fields = RecallFields.from_item(
        RecallFields(
            recall_id=str(tracking.get("id", "")),
            revision=revision,
            vendor=vendor,
            recall_class=_SEVERITY_CLASS.get(str(severity.get("text", "")).lower(), "III"),
            status=status,
            reason=str(meta.get("title", ""))[:_MAX_TEXT],
            root_cause=("; ".join(reader.causes) or "See the advisory.")[:_MAX_TEXT],
            initiated=str(tracking.get("initial_release_date", ""))[:10],
            issued=issued,
            rules=rules,
            remedy=reader.remedy(vulns, fixed_manifests or {}),
            posted=current or None,
            cves=tuple(reader.cves),
        ).to_item()
    )  # round trip through the closed schema: an import is held to the same rules
    payload = fields.to_cbor()
    return Recall(
        fields,
        hashlib.sha256(payload).digest(),
        signed=False,
        signers=(),
        source="csaf",
        raw=data,
        notes=tuple(reader.notes),
    )


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


class _CsafReader:
    """Collects rules, CVEs and causes from the vulnerabilities of one advisory."""

    def __init__(self, vendor: uuid.UUID, tree: dict[str, Any]) -> None:
        self.vendor = vendor
        self.products: dict[str, _CsafProduct] = {}
        _walk_branches(tree.get("branches"), {}, self.products)
        # CSAF 2.0 §3.1.3: a relationship names a new product id for "component X in device Y".
        self.relations: dict[str, tuple[str, str]] = {}
        for item in _list(tree.get("relationships")):
            rel = _dict(item)
            full = _dict(rel.get("full_product_name"))
            if rel.get("category") in _COMPONENT_RELATIONS and isinstance(
                full.get("product_id"), str
            ):
                self.relations[full["product_id"]] = (
                    str(rel.get("product_reference")),
                    str(rel.get("relates_to_product_reference")),
                )
        self.rules: list[Rule] = []
        self.notes: list[str] = []
        self.cves: list[str] = []
        self.causes: list[str] = []
        self.fixed: list[str] = []

    def vulnerability(self, vuln: dict[str, Any]) -> None:
        cve, title = vuln.get("cve"), vuln.get("title")
        if isinstance(cve, str) and _CVE.match(cve) and cve not in self.cves:
            self.cves.append(cve)
        if isinstance(cve, str) or isinstance(title, str):
            self.causes.append(f"{cve or 'vulnerability'}: {title or 'see the advisory'}")
        status = _dict(vuln.get("product_status"))
        for pid in _list(status.get("known_affected")):
            self._affected(str(pid))
        self.fixed += [p for p in _list(status.get("fixed")) if isinstance(p, str)]

    def _affected(self, pid: str) -> None:
        if pid in self.relations:
            component_id, device_id = self.relations[pid]
            component, device = self.products.get(component_id), self.products.get(device_id)
            scope = class_id(self.vendor, device.model) if device and device.model else None
            if component is not None:
                self.rules += _csaf_rules(component, self.vendor, scope, self.notes)
                return
        product = self.products.get(pid)
        if product is None:
            self.notes.append(f"{pid}: not in the product tree")
            return
        self.rules += _csaf_rules(product, self.vendor, None, self.notes)

    def remedy(
        self, vulns: list[dict[str, Any]], manifests: Mapping[tuple[uuid.UUID, str], bytes]
    ) -> Remedy:
        manifest = None
        for pid in self.fixed:
            product = self.products.get(pid)
            if product and product.model and product.version:
                key = (class_id(self.vendor, product.model), product.version)
                manifest = manifest or manifests.get(key)
        actions = []
        for vuln in vulns:
            for rem in _list(vuln.get("remediations")):
                details = _dict(rem).get("details")
                if isinstance(details, str):
                    url = f" ({rem['url']})" if isinstance(rem.get("url"), str) else ""
                    actions.append(f"{rem.get('category', 'remediation')}: {details}{url}")
        action = "; ".join(dict.fromkeys(actions))[:_MAX_TEXT] or None
        if manifest is None and action is None:
            action = "See the advisory; it gives no remediation."
        return Remedy(manifest, action)
