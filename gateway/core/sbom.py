"""CycloneDX SBOM checks: schema, NTIA minimum elements, FDA support fields, reference integrity.

A firmware manifest binds its SBOM by digest (:func:`sbom_digest`); :func:`check_sbom` says what
a biomed engineer and a regulator need to know about it. Pure: bytes in, a report out. The only
files read are the CycloneDX schemas shipped inside this package (``schemas/``), once per spec
version; the SBOM itself never comes from anywhere but the caller.

Verification steps of :func:`check_sbom` (each block below carries its number):

1. Size cap before parsing (endless data).
2. Strict JSON: UTF-8/16/32, no ``NaN``/``Infinity``, bounded nesting (parser exhaustion,
   numbers other tools read differently).
3. CycloneDX JSON of a supported ``specVersion`` 1.2-1.6; XML and SPDX are named and refused
   (checking a document against the wrong rules).
4. The CycloneDX JSON schema of that version, compiled once (SBOMs that downstream tools misread
   or reject; a forged field that a lax reader accepts).
5. ``bom-ref`` uniqueness and dependency references that resolve (CycloneDX 1.5 §"bom-ref": MUST
   be unique; a graph that points nowhere hides what a component really pulls in).
6. purl validity (package-url specification): a bad purl silently never matches a vulnerability
   or a recall's affected-component range.
7. NTIA minimum elements (NTIA, "The Minimum Elements For a Software Bill of Materials", 2021):
   supplier, component name, version, unique identifier, dependency relationship, author of the
   SBOM data, timestamp.
8. FDA support fields (FDA premarket cybersecurity guidance, 2023, SBOM section: each component's
   end-of-support date), as the CycloneDX property ``cdx:lifecycle:milestone:endOfSupport``
   (components whose support has ended go unnoticed).

Malformed input (steps 1-3) raises :class:`~gateway.core.errors.MalformedError` or
:class:`~gateway.core.errors.OversizeError`; a readable SBOM always yields a :class:`SbomReport`,
whose ``ok`` is the verdict. :func:`verify_sbom` raises
:class:`~gateway.core.errors.SbomError` instead of returning a failing report.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from functools import cache
from importlib import resources
from typing import Any

from packageurl import PackageURL

from gateway.core._json import too_deep_to_parse
from gateway.core._jsonschema import Check, compile_schema, format_path, is_date_time
from gateway.core.errors import MalformedError, OversizeError, SbomError

__all__ = [
    "END_OF_SUPPORT_PROPERTY",
    "MAX_SBOM_BYTES",
    "SUPPORTED_SPEC_VERSIONS",
    "ElementResult",
    "SbomReport",
    "check_sbom",
    "preload_schemas",
    "sbom_digest",
    "verify_sbom",
]

#: CycloneDX versions whose JSON schema ships with the gateway (JSON exists from 1.2 on).
SUPPORTED_SPEC_VERSIONS = ("1.2", "1.3", "1.4", "1.5", "1.6")
#: Refused before parsing; the largest real SBOM in the test vectors is 2.2 MB.
MAX_SBOM_BYTES = 32 * 1024 * 1024
#: CycloneDX property taxonomy name for a component's end-of-support date (FDA support field).
END_OF_SUPPORT_PROPERTY = "cdx:lifecycle:milestone:endOfSupport"

# Schema issues listed in a report; the rest are counted (a broken generator can emit thousands).
_MAX_LISTED = 25
_SCHEMA_FILES = {v: f"bom-{v}.SNAPSHOT.schema.json" for v in SUPPORTED_SPEC_VERSIONS}
_SHARED_SCHEMA_FILES = ("spdx.SNAPSHOT.schema.json", "jsf-0.82.SNAPSHOT.schema.json")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)


@dataclass(frozen=True)
class ElementResult:
    """One required element: how many components lack it (document-wide elements: 0 or 1)."""

    element: str
    source: str  # "NTIA" or "FDA"
    scope: str  # "component" or "document"
    missing: int
    required: bool
    meaning: str

    @property
    def ok(self) -> bool:
        """True if nothing lacks this element."""
        return self.missing == 0

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "element": self.element,
            "source": self.source,
            "scope": self.scope,
            "missing": self.missing,
            "required": self.required,
            "ok": self.ok,
            "meaning": self.meaning,
        }


@dataclass(frozen=True)
class SbomReport:
    """What :func:`check_sbom` found; ``ok`` is the verdict."""

    spec_version: str
    serial_number: str | None
    components: int
    schema_errors: tuple[str, ...]
    elements: tuple[ElementResult, ...]
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """Schema-valid, no problems, and no required element missing anywhere."""
        return (
            not self.schema_errors
            and not self.problems
            and all(e.ok for e in self.elements if e.required)
        )

    def summary(self) -> str:
        """One sentence for logs and refusals."""
        if self.ok:
            return f"CycloneDX {self.spec_version} SBOM with {self.components} components passes."
        parts = []
        if self.schema_errors:
            parts.append(f"schema: {self.schema_errors[0]}")
        parts.extend(
            f"{e.element} missing in {e.missing} of {self.components}"
            if e.scope == "component"
            else f"{e.element} missing"
            for e in self.elements
            if e.required and not e.ok
        )
        parts.extend(self.problems[:3])
        return f"CycloneDX {self.spec_version} SBOM fails: " + "; ".join(parts) + "."

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict (what ``provgw sbom check --json`` prints)."""
        return {
            "ok": self.ok,
            "spec_version": self.spec_version,
            "serial_number": self.serial_number,
            "components": self.components,
            "schema_valid": not self.schema_errors,
            "schema_errors": list(self.schema_errors),
            "elements": [e.to_json() for e in self.elements],
            "problems": list(self.problems),
        }


def sbom_digest(data: bytes) -> bytes:
    """SHA-256 over the exact bytes: what a firmware manifest binds (never a re-serialisation)."""
    return hashlib.sha256(data).digest()


def preload_schemas(versions: tuple[str, ...] = SUPPORTED_SPEC_VERSIONS) -> None:
    """Compile the schemas now (about a second for all), e.g. at gateway start, not on a patch."""
    for version in versions:
        _schema_check(version)


def verify_sbom(
    data: bytes, *, require_fda: bool = True, max_bytes: int = MAX_SBOM_BYTES
) -> SbomReport:
    """Like :func:`check_sbom`, but a failing verdict raises :class:`SbomError`."""
    report = check_sbom(data, require_fda=require_fda, max_bytes=max_bytes)
    if not report.ok:
        raise SbomError(report.summary())
    return report


def check_sbom(
    data: bytes, *, require_fda: bool = True, max_bytes: int = MAX_SBOM_BYTES
) -> SbomReport:
    """Check one CycloneDX JSON SBOM (steps in the module docstring).

    Raises :class:`MalformedError` if *data* is not a CycloneDX 1.2-1.6 JSON document and
    :class:`OversizeError` above *max_bytes*; every other finding is in the report.
    """
    # Step 1 - size cap before parsing (endless data).
    if len(data) > max_bytes:
        raise OversizeError(
            f"The SBOM is {len(data):,} bytes, over the {max_bytes:,}-byte limit.",
            reason="sbom-oversize",
        )
    # Step 2 - strict JSON (parser exhaustion, numbers other tools read differently).
    doc = _parse(data)
    # Step 3 - CycloneDX JSON of a version whose schema we ship (checking against wrong rules).
    version = _spec_version(doc)
    components = _flatten(doc.get("components"))
    # Step 4 - the CycloneDX schema of that version (documents downstream tools misread).
    schema_errors = _schema_errors(_schema_check(version), doc)
    problems: list[str] = []
    if not components:
        problems.append("The SBOM lists no components.")
    # Step 5 - bom-ref uniqueness and resolvable dependency references (hidden dependencies).
    refs = _bom_refs(doc, components, problems)
    depended = _dependency_refs(doc, refs, problems)
    # Step 6 - purl validity (a bad purl never matches a vulnerability or a recall).
    valid_purls = _valid_purls(components, problems)
    # Steps 7 and 8 - NTIA minimum elements and FDA support fields (transparency).
    elements = _elements(doc, components, valid_purls, depended, problems, require_fda=require_fda)
    serial = doc.get("serialNumber")
    return SbomReport(
        spec_version=version,
        serial_number=serial if isinstance(serial, str) else None,
        components=len(components),
        schema_errors=schema_errors,
        elements=elements,
        problems=tuple(problems),
    )


# --- steps 2 and 3: reading ----------------------------------------------------------------------


def _reject_constant(name: str) -> float:
    raise MalformedError(
        f"The SBOM is not valid JSON: {name} is not a JSON number.", reason="sbom-not-json"
    )


def _parse_float(text: str) -> float | int:
    # JSON has one number type (RFC 8259 §6): 1.0 and 1 are the same value. Normalising here
    # lets uniqueItems and enum compare numbers by value, as JSON Schema requires.
    value = float(text)
    return int(value) if value.is_integer() else value


def _parse(data: bytes) -> dict[str, Any]:
    # Bound the nesting first: a library may have raised the recursion limit (core._json).
    if too_deep_to_parse(data):
        raise MalformedError("The SBOM is nested too deeply to be read.", reason="sbom-not-json")
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"<"):
        what = "CycloneDX XML" if b"cyclonedx" in data[:4096].lower() else "XML"
        raise MalformedError(
            f"The SBOM is {what}; only CycloneDX JSON is supported "
            "(convert it, e.g. `cyclonedx convert --output-format json`).",
            reason="sbom-unsupported-format",
        )
    try:
        doc = json.loads(data, parse_float=_parse_float, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise MalformedError(
            f"The SBOM is not valid JSON ({err}).", reason="sbom-not-json"
        ) from None
    except RecursionError:
        raise MalformedError(
            "The SBOM is nested too deeply to be read.", reason="sbom-not-json"
        ) from None
    if not isinstance(doc, dict):
        raise MalformedError(
            "The SBOM is JSON but not a CycloneDX document (no top-level object).",
            reason="sbom-not-cyclonedx",
        )
    return doc


def _spec_version(doc: dict[str, Any]) -> str:
    if doc.get("bomFormat") != "CycloneDX":
        what = "an SPDX document" if "spdxVersion" in doc else "not a CycloneDX document"
        raise MalformedError(
            f'The SBOM is {what} (bomFormat is not "CycloneDX"); only CycloneDX JSON is supported.',
            reason="sbom-not-cyclonedx",
        )
    version = doc.get("specVersion")
    if version not in SUPPORTED_SPEC_VERSIONS:
        shown = repr(version) if version is not None else "missing"
        raise MalformedError(
            f"CycloneDX specVersion {shown} is not supported; "
            f"supported: {', '.join(SUPPORTED_SPEC_VERSIONS)}.",
            reason="sbom-spec-version",
        )
    return str(version)


def _list(value: object) -> list[Any]:
    # The reference and element checks run on schema-invalid documents too: never trust a shape.
    return value if isinstance(value, list) else []


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _flatten(top: object) -> list[dict[str, Any]]:
    """Every component, nested ones included (CycloneDX components may hold components)."""
    out: list[dict[str, Any]] = []
    stack = [top]
    while stack:
        level = stack.pop()
        if not isinstance(level, list):
            continue
        for component in level:
            if isinstance(component, dict):
                out.append(component)
                stack.append(component.get("components"))
    return out


# --- step 4: schema ------------------------------------------------------------------------------


@cache
def _schema_check(version: str) -> Check:
    folder = resources.files("gateway.core").joinpath("schemas")
    documents = {
        name: json.loads(folder.joinpath(name).read_bytes())
        for name in (_SCHEMA_FILES[version], *_SHARED_SCHEMA_FILES)
    }
    return compile_schema(documents, _SCHEMA_FILES[version])


def _schema_errors(check: Check, doc: dict[str, Any]) -> tuple[str, ...]:
    try:
        issues = check(doc) or []
    except RecursionError:
        return ("The SBOM is nested too deeply to be checked against the schema.",)
    listed = [f"{format_path(path)}: {message}" for path, message in issues[:_MAX_LISTED]]
    if len(issues) > _MAX_LISTED:
        listed.append(f"... and {len(issues) - _MAX_LISTED} more schema errors")
    return tuple(listed)


# --- steps 5 and 6: references and purls ---------------------------------------------------------


def _label(component: dict[str, Any]) -> str:
    name, version = component.get("name"), component.get("version")
    if isinstance(name, str) and name:
        return f"{name}@{version}" if isinstance(version, str) and version else name
    ref = component.get("bom-ref")
    return f"bom-ref {ref!r}" if isinstance(ref, str) else "an unnamed component"


def _bom_refs(
    doc: dict[str, Any], components: list[dict[str, Any]], problems: list[str]
) -> set[str]:
    """All bom-refs of components and services (metadata's own component included)."""
    holders = list(components)
    primary = _dict(doc.get("metadata")).get("component")
    if isinstance(primary, dict):
        holders.append(primary)
        holders.extend(_flatten(primary.get("components")))
    services = list(_list(doc.get("services")))
    while services:
        service = services.pop()
        if isinstance(service, dict):
            holders.append(service)
            services.extend(_list(service.get("services")))
    seen: set[str] = set()
    duplicated: set[str] = set()
    for holder in holders:
        ref = holder.get("bom-ref")
        if isinstance(ref, str):
            if ref in seen:
                duplicated.add(ref)
            seen.add(ref)
    problems.extend(f"bom-ref {ref!r} is used more than once." for ref in sorted(duplicated))
    return seen


def _dependency_refs(doc: dict[str, Any], refs: set[str], problems: list[str]) -> set[str]:
    """Return the refs that have a dependency entry; report refs that point nowhere."""
    described: set[str] = set()
    dangling: set[str] = set()
    for entry in _list(doc.get("dependencies")):
        if not isinstance(entry, dict):
            continue
        ref = entry.get("ref")
        if isinstance(ref, str):
            described.add(ref)
            if ref not in refs:
                dangling.add(ref)
        for target in _list(entry.get("dependsOn")):
            if isinstance(target, str) and target not in refs:
                dangling.add(target)
    problems.extend(
        f"Dependency reference {ref!r} names no component or service (no such bom-ref)."
        for ref in sorted(dangling)
    )
    return described


def _valid_purls(components: list[dict[str, Any]], problems: list[str]) -> set[int]:
    """Ids (``id()``) of components whose purl parses."""
    valid: set[int] = set()
    for component in components:
        purl = component.get("purl")
        if not isinstance(purl, str):
            continue
        try:
            PackageURL.from_string(purl)
        except ValueError as err:
            problems.append(
                f"{_label(component)}: purl {purl!r} is not a valid package URL ({err})."
            )
        else:
            valid.add(id(component))
    return valid


# --- steps 7 and 8: minimum elements -------------------------------------------------------------


def _text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _entity_named(value: object) -> bool:
    return isinstance(value, dict) and _text(value.get("name"))


def _has_supplier(c: dict[str, Any]) -> bool:
    # NTIA's "supplier" is the entity that creates, defines and identifies the component:
    # CycloneDX supplier, manufacturer (1.6) or publisher.
    return (
        _entity_named(c.get("supplier"))
        or _entity_named(c.get("manufacturer"))
        or _text(c.get("publisher"))
    )


def _has_identifier(c: dict[str, Any], valid_purls: set[int]) -> bool:
    # NTIA "other unique identifiers": purl, CPE, SWID tag id; CycloneDX 1.6 adds OmniBOR, SWHID.
    swid = c.get("swid")
    return (
        id(c) in valid_purls
        or _text(c.get("cpe"))
        or (isinstance(swid, dict) and _text(swid.get("tagId")))
        or bool(c.get("omniborId"))
        or bool(c.get("swhid"))
    )


def _end_of_support(c: dict[str, Any], problems: list[str]) -> bool:
    for prop in _list(c.get("properties")):
        if isinstance(prop, dict) and prop.get("name") == END_OF_SUPPORT_PROPERTY:
            value = prop.get("value")
            if isinstance(value, str) and (_is_date(value) or is_date_time(value)):
                return True
            problems.append(
                f"{_label(c)}: end-of-support {value!r} is not a date (YYYY-MM-DD or RFC 3339)."
            )
            return False
    return False


def _is_date(value: str) -> bool:
    if _DATE.fullmatch(value) is None:
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


def _elements(  # noqa: PLR0913 - the facts each element needs, gathered by the steps before
    doc: dict[str, Any],
    components: list[dict[str, Any]],
    valid_purls: set[int],
    depended: set[str],
    problems: list[str],
    *,
    require_fda: bool,
) -> tuple[ElementResult, ...]:
    def count(test: Callable[[dict[str, Any]], bool]) -> int:
        return sum(1 for c in components if not test(c))

    metadata = _dict(doc.get("metadata"))
    has_author = any(
        isinstance(a, dict) and (_text(a.get("name")) or _text(a.get("email")))
        for a in _list(metadata.get("authors"))
    )
    ntia = (
        ("supplier", "component", count(_has_supplier), "supplier, manufacturer or publisher name"),
        ("name", "component", count(lambda c: _text(c.get("name"))), "component name"),
        ("version", "component", count(lambda c: _text(c.get("version"))), "component version"),
        (
            "unique identifier",
            "component",
            count(lambda c: _has_identifier(c, valid_purls)),
            "valid purl, CPE, SWID tag id, OmniBOR or SWHID",
        ),
        (
            "dependency relationships",
            "component",
            count(lambda c: _text(c.get("bom-ref")) and c["bom-ref"] in depended),
            "an entry in dependencies; a leaf has an empty dependsOn",
        ),
        ("author", "document", 0 if has_author else 1, "metadata.authors: who wrote the SBOM"),
        (
            "timestamp",
            "document",
            0 if _text(metadata.get("timestamp")) else 1,
            "metadata.timestamp: when the SBOM was written",
        ),
    )
    results = [
        ElementResult(e, "NTIA", scope, n, required=True, meaning=meaning)
        for e, scope, n, meaning in ntia
    ]
    # A malformed end-of-support date is a problem only where the FDA fields are required.
    date_problems = problems if require_fda else []
    results.append(
        ElementResult(
            "end of support",
            "FDA",
            "component",
            count(lambda c: _end_of_support(c, date_problems)),
            require_fda,
            f"component property {END_OF_SUPPORT_PROPERTY} with a date",
        )
    )
    return tuple(results)
