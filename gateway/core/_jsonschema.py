"""JSON Schema draft-07 compiled once into Python closures: the fast CycloneDX schema check.

The stock validator (``jsonschema``, used by cyclonedx-python-lib) walks the schema again for
every document, checks ``uniqueItems`` by comparing every pair of items (quadratic in the number
of components, hashes, references) and parses every ``iri-reference`` with an Earley parser
(``rfc3987-syntax``). Here instead:

* the schema is compiled once per spec version into nested closures, so checking a document is
  plain function calls with the keyword logic already decided;
* ``uniqueItems`` buckets items by a cheap hashable key and compares only items in one bucket
  (exactly, with JSON equality), so it is linear for real data;
* formats are compiled regular expressions for the same grammars the stock validator uses
  (RFC 3987 ``iri-reference`` as written in rfc3987-syntax, RFC 3339 ``date-time`` as in
  rfc3339-validator), so both reach the same verdict.

Only the keywords the shipped CycloneDX 1.2-1.6 schemas use are implemented. Compiling a schema
with any other assertion keyword raises :class:`UnsupportedSchemaError`, so a keyword is never
skipped silently. Annotations (``title``, ``description``, ``examples``, ...) are ignored, as the
specification says. As in draft-07, a ``$ref`` makes its sibling keywords void.

Every check takes a parsed JSON value and returns ``None`` when it holds or a list of
``(path, message)`` issues; paths are built only on the failing branch, so the common case
allocates nothing.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Mapping, Sequence
from typing import cast

__all__ = [
    "Check",
    "Issue",
    "UnsupportedSchemaError",
    "compile_schema",
    "format_path",
    "is_date_time",
    "is_idn_email",
    "is_iri_reference",
    "is_uri",
]

JsonPath = tuple[str | int, ...]
Issue = tuple[JsonPath, str]
Check = Callable[[object], list[Issue] | None]
Documents = Mapping[str, Mapping[str, object]]

# Keywords that assert nothing (draft-07 §10 annotations, CycloneDX's own ``meta:enum`` and
# ``deprecated``), or that are read together with another keyword (additionalItems with items,
# then/else with if).
_NON_ASSERTIONS = frozenset(
    {
        "$comment",
        "$id",
        "$schema",
        "additionalItems",
        "default",
        "definitions",
        "deprecated",
        "description",
        "else",
        "examples",
        "meta:enum",
        "readOnly",
        "then",
        "title",
        "writeOnly",
    }
)


class UnsupportedSchemaError(ValueError):
    """The schema uses a keyword or reference this compiler does not implement."""


# --- formats -----------------------------------------------------------------------------------
# The stock validator's format checker, with cyclonedx-python-lib's ``json-validation`` extra,
# checks date-time (rfc3339-validator), iri-reference (rfc3987-syntax), uri (rfc3986-validator)
# and idn-email ("contains @"). CycloneDX 1.2 also says ``"format": "string"``, which is no
# format: unknown formats are annotations (draft-07 §7.2).

# RFC 3339 §5.6 date-time, exactly as rfc3339-validator 0.1.4 writes it (``$`` included, which
# tolerates one trailing newline, as the stock check does). Leap seconds are refused there too.
_RFC3339 = re.compile(
    r"^(\d{4})-(0[1-9]|1[0-2])-(\d{2})T(?:[01]\d|2[0123]):(?:[0-5]\d):(?:[0-5]\d)(?:\.\d+)?"
    r"(?:Z|[+-](?:[01]\d|2[0123]):[0-5]\d)$",
    re.ASCII,
)


def is_date_time(value: str) -> bool:
    """RFC 3339 §5.6 ``date-time`` (case-insensitive ``T``/``Z``), with a real day of month."""
    match = _RFC3339.match(value.upper())
    if match is None:
        return False
    year, month, day = (int(g) for g in match.groups())
    return year != 0 and 1 <= day <= calendar.monthrange(year, month)[1]


def is_idn_email(value: str) -> bool:
    """Check ``idn-email`` and ``email`` as the stock validator does: the value has an ``@``."""
    return "@" in value


# RFC 3987 §2.2 IRI-reference, transcribed rule by rule from the grammar rfc3987-syntax parses
# (its ucschar/iprivate keep to the Basic Multilingual Plane, and its IPv6address lists only nine
# of the RFC's forms, so "[::1]" is refused: we refuse what the stock check refuses).
_HEX = "[0-9A-Fa-f]"
_H16 = f"{_HEX}{{1,4}}"
_DEC_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_IPV4 = rf"{_DEC_OCTET}\.{_DEC_OCTET}\.{_DEC_OCTET}\.{_DEC_OCTET}"
_LS32 = f"(?:{_H16}:{_H16}|{_IPV4})"
_IPV6 = (
    "(?:"
    + "|".join(
        (
            f"(?:{_H16}:){{6}}{_LS32}",
            f"::(?:{_H16}:){{5}}{_LS32}",
            f"{_H16}::(?:{_H16}:){{4}}{_LS32}",
            f"{_H16}:{_H16}::(?:{_H16}:){{3}}{_LS32}",
            f"(?:{_H16}:){{2}}{_H16}::(?:{_H16}:){{2}}{_LS32}",
            f"(?:{_H16}:){{3}}{_H16}::{_H16}:{_LS32}",
            f"(?:{_H16}:){{4}}{_H16}::{_LS32}",
            f"(?:{_H16}:){{5}}{_H16}::{_H16}",
            f"(?:{_H16}:){{6}}{_H16}::",
        )
    )
    + ")"
)
_UNRESERVED = r"A-Za-z0-9\-._~"
_SUB_DELIMS = "!$&'()*+,;="
_PCT = f"%{_HEX}{_HEX}"
_SCHEME = r"[A-Za-z][A-Za-z0-9+\-.]*"


def _iri_patterns(ucschar: str, iprivate: str) -> tuple[str, str]:
    """(absolute, relative) reference patterns; empty character ranges give RFC 3986 URIs."""
    iunreserved = _UNRESERVED + ucschar
    ipchar = f"(?:[{iunreserved}{_SUB_DELIMS}:@]|{_PCT})"
    segment = f"{ipchar}*"
    segment_nz = f"{ipchar}+"
    segment_nz_nc = f"(?:[{iunreserved}{_SUB_DELIMS}@]|{_PCT})+"
    userinfo = f"(?:[{iunreserved}{_SUB_DELIMS}:]|{_PCT})*"
    reg_name = f"(?:[{iunreserved}{_SUB_DELIMS}]|{_PCT})*"  # also covers IPv4address
    ip_literal = rf"\[(?:{_IPV6}|v{_HEX}+\.[{_UNRESERVED}{_SUB_DELIMS}:]+)\]"
    authority = f"(?:{userinfo}@)?(?:{ip_literal}|{reg_name})(?::[0-9]*)?"
    path_abempty = f"(?:/{segment})*"
    path_absolute = f"/(?:{segment_nz}(?:/{segment})*)?"
    path_rootless = f"{segment_nz}(?:/{segment})*"
    path_noscheme = f"{segment_nz_nc}(?:/{segment})*"
    query = f"(?:{ipchar}|[{iprivate}/?])*"
    fragment = f"(?:{ipchar}|[/?])*"
    tail = rf"(?:\?{query})?(?:#{fragment})?"
    hier_part = f"(?://{authority}{path_abempty}|{path_absolute}|{path_rootless}|)"
    relative_part = f"(?://{authority}{path_abempty}|{path_absolute}|{path_noscheme}|)"
    return f"{_SCHEME}:{hier_part}{tail}", f"{relative_part}{tail}"


_IRI, _IRELATIVE = _iri_patterns("\u00a0-\ud7ff\uf900-\ufdcf\ufdf0-\uffef", "\ue000-\uf8ff")
_IRI_REFERENCE = re.compile(f"(?:{_IRI})|(?:{_IRELATIVE})")
_URI = re.compile(_iri_patterns("", "")[0])


def is_iri_reference(value: str) -> bool:
    """RFC 3987 §2.2 ``IRI-reference``: an absolute IRI or a relative reference."""
    return _IRI_REFERENCE.fullmatch(value) is not None


def is_uri(value: str) -> bool:
    """RFC 3986 §3 ``URI`` (absolute, ASCII only)."""
    return _URI.fullmatch(value) is not None


_FORMATS: dict[str, Callable[[str], bool]] = {
    "date-time": is_date_time,
    "email": is_idn_email,
    "idn-email": is_idn_email,
    "iri-reference": is_iri_reference,
    "uri": is_uri,
}


# --- JSON equality (draft-07 §4.2.2: 1 == 1.0, true != 1, objects unordered) ----------------------


def _json_equal(a: object, b: object) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and a.keys() == b.keys()
            and all(_json_equal(v, b[k]) for k, v in a.items())
        )
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_json_equal, a, b))
    if isinstance(a, int | float):
        return isinstance(b, int | float) and a == b
    return type(a) is type(b) and a == b


def _freeze(value: object) -> object:
    """Return a hashable form, equal exactly when the JSON values are equal."""
    if isinstance(value, dict):
        return frozenset((k, _freeze(v)) for k, v in value.items())
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, bool):
        return ("bool", value)  # keeps true apart from 1
    return value


def _shallow_key(value: object) -> object:
    """Cheap bucket key: JSON-equal values always share it (it may also join unequal ones)."""
    if isinstance(value, dict):
        return (
            len(value),
            frozenset((k, v) for k, v in value.items() if not isinstance(v, dict | list)),
        )
    if isinstance(value, list):
        return ("list", len(value))
    return value


def _has_duplicates(items: list[object]) -> bool:
    if all(type(i) is str for i in items):
        return len(set(items)) != len(items)
    buckets: dict[object, list[object]] = {}
    for item in items:
        buckets.setdefault(_shallow_key(item), []).append(item)
    if len(buckets) == len(items):
        return False
    return any(len(b) > 1 and len({_freeze(i) for i in b}) != len(b) for b in buckets.values())


# --- the compiler ------------------------------------------------------------------------------


def _accept(_value: object) -> list[Issue] | None:
    return None


def _issue(message: str) -> list[Issue]:
    return [((), message)]


def _prefix(key: str | int, issues: list[Issue]) -> list[Issue]:
    return [((key, *path), message) for path, message in issues]


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_check(names: Sequence[str]) -> Check:
    def is_integer(x: object) -> bool:
        return (isinstance(x, int) and not isinstance(x, bool)) or (
            isinstance(x, float) and x.is_integer()
        )

    tests: dict[str, Callable[[object], bool]] = {
        "array": lambda x: isinstance(x, list),
        "boolean": lambda x: isinstance(x, bool),
        "integer": is_integer,
        "null": lambda x: x is None,
        "number": lambda x: isinstance(x, int | float) and not isinstance(x, bool),
        "object": lambda x: isinstance(x, dict),
        "string": lambda x: isinstance(x, str),
    }
    try:
        chosen = tuple(tests[n] for n in names)
    except KeyError as err:
        raise UnsupportedSchemaError(f"unknown type {err}") from None
    wanted = " or ".join(names)
    simple = {"array": list, "object": dict, "string": str}
    if len(names) == 1 and names[0] in simple:
        cls = simple[names[0]]

        def check_simple(x: object) -> list[Issue] | None:
            return None if isinstance(x, cls) else _issue(f"{_short(x)} is not of type {wanted}")

        return check_simple

    def check(x: object) -> list[Issue] | None:
        if any(t(x) for t in chosen):
            return None
        return _issue(f"{_short(x)} is not of type {wanted}")

    return check


def _enum_check(options: list[object]) -> Check:
    strings = frozenset(o for o in options if isinstance(o, str))
    others = [o for o in options if not isinstance(o, str)]
    shown = _short(options)

    def check(x: object) -> list[Issue] | None:
        if isinstance(x, str):
            if x in strings:
                return None
        elif any(_json_equal(x, o) for o in others):
            return None
        return _issue(f"{_short(x)} is not one of {shown}")

    return check


def _const_check(expected: object) -> Check:
    def check(x: object) -> list[Issue] | None:
        return None if _json_equal(x, expected) else _issue(f"{_short(expected)} was expected")

    return check


def _object_check(
    properties: dict[str, Check],
    required: tuple[str, ...],
    additional: Check | None,
    *,
    typed: bool,
) -> Check:
    # additional: None = any extra property is fine; otherwise extra properties must pass it.
    # typed: the schema also says "type": "object", checked here to save a call per object.
    def check(x: object) -> list[Issue] | None:
        if not isinstance(x, dict):
            return _issue(f"{_short(x)} is not of type object") if typed else None
        issues: list[Issue] | None = None
        for name in required:
            if name not in x:
                issues = issues or []
                issues.append(((), f"{name!r} is a required property"))
        for key, value in x.items():
            sub = properties.get(key)
            if sub is None:
                if additional is None:
                    continue
                sub = additional
            found = sub(value)
            if found:
                issues = issues or []
                issues.extend(_prefix(key, found))
        return issues

    return check


def _no_additional(_value: object) -> list[Issue] | None:
    return _issue("is not a property the schema allows here (additionalProperties: false)")


def _items_check(items: Check | None, tuple_items: tuple[Check, ...], rest: Check) -> Check | None:
    """Check a list's elements: all against *items*, or position-wise, then *rest* (tuple form)."""
    if items is None and not tuple_items:
        return None

    def check(x: object) -> list[Issue] | None:
        assert isinstance(x, list)  # only called by _array_check
        issues: list[Issue] | None = None
        for index, value in enumerate(x):
            if items is not None:
                found = items(value)
            else:
                found = (tuple_items[index] if index < len(tuple_items) else rest)(value)
            if found:
                issues = issues or []
                issues.extend(_prefix(index, found))
        return issues

    return check


def _array_check(
    elements: Check | None,
    limits: tuple[int | None, int | None],
    *,
    unique: bool,
    typed: bool,
) -> Check:
    min_items, max_items = limits

    def check(x: object) -> list[Issue] | None:
        if not isinstance(x, list):
            return _issue(f"{_short(x)} is not of type array") if typed else None
        issues = elements(x) if elements is not None else None
        if min_items is not None and len(x) < min_items:
            issues = (issues or []) + _issue(f"has {len(x)} items, fewer than {min_items}")
        if max_items is not None and len(x) > max_items:
            issues = (issues or []) + _issue(f"has {len(x)} items, more than {max_items}")
        if unique and len(x) > 1 and _has_duplicates(x):
            issues = (issues or []) + _issue("has non-unique elements")
        return issues

    return check


def _string_check(
    lengths: tuple[int | None, int | None],
    pattern: re.Pattern[str] | None,
    fmt: tuple[str, Callable[[str], bool]] | None,
    *,
    typed: bool,
) -> Check:
    min_length, max_length = lengths

    def check(x: object) -> list[Issue] | None:
        if not isinstance(x, str):
            return _issue(f"{_short(x)} is not of type string") if typed else None
        issues: list[Issue] | None = None
        # Lengths count characters (code points), as draft-07 §6.3.1 says.
        if min_length is not None and len(x) < min_length:
            issues = (issues or []) + _issue(f"{_short(x)} is shorter than {min_length}")
        if max_length is not None and len(x) > max_length:
            issues = (issues or []) + _issue(f"{_short(x)} is longer than {max_length}")
        # ECMA-262 regex in the schema, matched anywhere (draft-07 §6.3.3), as the stock check.
        if pattern is not None and pattern.search(x) is None:
            issues = (issues or []) + _issue(f"{_short(x)} does not match {pattern.pattern!r}")
        if fmt is not None and not fmt[1](x):
            issues = (issues or []) + _issue(f"{_short(x)} is not a {fmt[0]!r}")
        return issues

    return check


def _number_check(minimum: float | None, maximum: float | None) -> Check:
    def check(x: object) -> list[Issue] | None:
        if not isinstance(x, int | float) or isinstance(x, bool):
            return None
        if minimum is not None and x < minimum:
            return _issue(f"{x!r} is less than the minimum of {minimum!r}")
        if maximum is not None and x > maximum:
            return _issue(f"{x!r} is more than the maximum of {maximum!r}")
        return None

    return check


def _one_of(branches: tuple[Check, ...]) -> Check:
    def check(x: object) -> list[Issue] | None:
        passed = 0
        for branch in branches:
            if not branch(x):
                passed += 1
                if passed > 1:
                    return _issue(f"{_short(x)} is valid under more than one of the oneOf schemas")
        return None if passed == 1 else _issue(f"{_short(x)} is not valid under any oneOf schema")

    return check


def _any_of(branches: tuple[Check, ...]) -> Check:
    def check(x: object) -> list[Issue] | None:
        for branch in branches:
            if not branch(x):
                return None
        return _issue(f"{_short(x)} is not valid under any anyOf schema")

    return check


def _all_of(branches: tuple[Check, ...]) -> Check:
    def check(x: object) -> list[Issue] | None:
        issues: list[Issue] = []
        for branch in branches:
            issues.extend(branch(x) or ())
        return issues or None

    return check


def _not(branch: Check) -> Check:
    def check(x: object) -> list[Issue] | None:
        return (
            _issue(f"{_short(x)} must not be valid under the 'not' schema")
            if not branch(x)
            else None
        )

    return check


def _if_then_else(condition: Check, then: Check | None, otherwise: Check | None) -> Check:
    def check(x: object) -> list[Issue] | None:
        chosen = otherwise if condition(x) else then
        return chosen(x) if chosen is not None else None

    return check


def _sequence(first: Check, rest: tuple[Check, ...]) -> Check:
    """Run *first* (the type check); only if it holds run the others and pool their issues."""
    if not rest:
        return first
    if len(rest) == 1:
        only = rest[0]

        def check_two(x: object) -> list[Issue] | None:
            return first(x) or only(x)

        return check_two

    def check(x: object) -> list[Issue] | None:
        issues = first(x)
        if issues:
            return issues
        for sub in rest:
            found = sub(x)
            if found:
                issues = (issues or []) + found
        return issues

    return check


class _Compiler:
    """Turns the schema documents into checks, one per (document, JSON pointer), memoised."""

    def __init__(self, documents: Documents) -> None:
        self._documents = documents
        self._compiled: dict[tuple[str, str], Check] = {}

    def reference(self, ref: str, document: str) -> Check:
        base, _, fragment = ref.partition("#")
        # A reference to another file names it by its last path segment (the files ship together).
        name = base.rsplit("/", 1)[-1] if base else document
        key = (name, fragment)
        if key in self._compiled:
            return self._compiled[key]
        if name not in self._documents:
            raise UnsupportedSchemaError(f"$ref to unknown document {ref!r}")
        target: object = self._documents[name]
        for part in filter(None, fragment.split("/")):
            part = part.replace("~1", "/").replace("~0", "~")  # noqa: PLW2901 - RFC 6901 §4
            if not isinstance(target, dict) or part not in target:
                raise UnsupportedSchemaError(f"$ref {ref!r} points nowhere")
            target = target[part]
        # A recursive schema (a component holds components) meets itself while compiling: the
        # placeholder forwards to the finished check.
        slot: list[Check] = []

        def forward(x: object) -> list[Issue] | None:
            return slot[0](x)

        self._compiled[key] = forward
        compiled = self.compile(target, name)
        slot.append(compiled)
        self._compiled[key] = compiled
        return compiled

    def compile(self, schema: object, document: str) -> Check:  # noqa: C901, PLR0912 - one branch per keyword family
        """Return the check for one (sub)schema of *document*."""
        if schema is True:
            return _accept
        if schema is False:
            return lambda _x: _issue("no value is allowed here")
        if not isinstance(schema, dict):
            raise UnsupportedSchemaError(f"not a schema: {_short(schema)}")
        s = cast("dict[str, object]", schema)
        if "$ref" in s:  # draft-07 §8.3: siblings of $ref are ignored
            return self.reference(str(s["$ref"]), document)
        unknown = set(s) - _NON_ASSERTIONS - _KNOWN_ASSERTIONS
        if unknown:
            raise UnsupportedSchemaError(f"unsupported keywords {sorted(unknown)}")

        # A single "type" of object, array or string is checked by that kind's own check (one
        # call per value instead of two); any other "type" gets its own check. Either goes first:
        # a value of the wrong type gets that one issue.
        names = s.get("type")
        type_names = [names] if isinstance(names, str) else _strs(names or [])
        single = type_names[0] if len(type_names) == 1 else None
        first: Check | None = None
        checks: list[Check] = []
        kinds: list[tuple[str, Check | None]] = []
        if {"properties", "required", "additionalProperties"} & s.keys():
            kinds.append(("object", self._object(s, document, typed=single == "object")))
        if {"items", "minItems", "maxItems", "uniqueItems"} & s.keys():
            kinds.append(("array", self._array(s, document, typed=single == "array")))
        if {"minLength", "maxLength", "pattern", "format"} & s.keys():
            kinds.append(("string", _string_from(s, typed=single == "string")))
        for kind, kind_check in kinds:
            if kind_check is None:
                continue
            if kind == single:
                first = kind_check
            else:
                checks.append(kind_check)
        if first is None and type_names:
            first = _type_check(type_names)
        if "enum" in s:
            checks.append(_enum_check(_list(s["enum"])))
        if "const" in s:
            checks.append(_const_check(s["const"]))
        if {"minimum", "maximum"} & s.keys():
            checks.append(_number_check(_num(s.get("minimum")), _num(s.get("maximum"))))
        for keyword, combine in (("allOf", _all_of), ("anyOf", _any_of), ("oneOf", _one_of)):
            if keyword in s:
                branches = tuple(self.compile(b, document) for b in _list(s[keyword]))
                checks.append(combine(branches))
        if "not" in s:
            checks.append(_not(self.compile(s["not"], document)))
        if "if" in s:
            then = self.compile(s["then"], document) if "then" in s else None
            otherwise = self.compile(s["else"], document) if "else" in s else None
            checks.append(_if_then_else(self.compile(s["if"], document), then, otherwise))
        if first is not None:
            return _sequence(first, tuple(checks))
        if not checks:
            return _accept
        return _sequence(checks[0], tuple(checks[1:]))

    def _object(self, s: dict[str, object], document: str, *, typed: bool) -> Check:
        raw = s.get("properties", {})
        if not isinstance(raw, dict):
            raise UnsupportedSchemaError("properties must be an object")
        properties = {str(k): self.compile(v, document) for k, v in raw.items()}
        additional: Check | None = None
        extra = s.get("additionalProperties", True)
        if extra is False:
            additional = _no_additional
        elif extra is not True:
            additional = self.compile(extra, document)
        required = tuple(_strs(s.get("required", [])))
        return _object_check(properties, required, additional, typed=typed)

    def _array(self, s: dict[str, object], document: str, *, typed: bool) -> Check:
        items = s.get("items", True)
        single: Check | None = None
        many: tuple[Check, ...] = ()
        additional: Check = _accept
        if isinstance(items, list):  # tuple form: additionalItems governs the rest
            many = tuple(self.compile(i, document) for i in items)
            additional = self.compile(s.get("additionalItems", True), document)
        elif items is not True:
            single = self.compile(items, document)
        limits = (_int(s.get("minItems")), _int(s.get("maxItems")))
        unique = s.get("uniqueItems") is True
        elements = _items_check(single, many, additional)
        return _array_check(elements, limits, unique=unique, typed=typed)


_KNOWN_ASSERTIONS = frozenset(
    {
        "additionalProperties",
        "allOf",
        "anyOf",
        "const",
        "enum",
        "format",
        "if",
        "items",
        "maxItems",
        "maxLength",
        "maximum",
        "minItems",
        "minLength",
        "minimum",
        "not",
        "oneOf",
        "pattern",
        "properties",
        "required",
        "type",
        "uniqueItems",
    }
)


def _string_from(s: dict[str, object], *, typed: bool) -> Check | None:
    pattern = re.compile(str(s["pattern"])) if "pattern" in s else None
    fmt: tuple[str, Callable[[str], bool]] | None = None
    name = s.get("format")
    if isinstance(name, str) and name in _FORMATS:
        fmt = (name, _FORMATS[name])
    lengths = (_int(s.get("minLength")), _int(s.get("maxLength")))
    if pattern is None and fmt is None and lengths == (None, None):
        return None  # an unknown format only annotates (draft-07 §7.2)
    return _string_check(lengths, pattern, fmt, typed=typed)


def _list(value: object) -> list[object]:
    if not isinstance(value, list):
        raise UnsupportedSchemaError(f"expected a list, got {_short(value)}")
    return value


def _strs(value: object) -> list[str]:
    return [str(v) for v in _list(value)]


def _int(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise UnsupportedSchemaError(f"expected an integer, got {_short(value)}")
    return value


def _num(value: object) -> float | None:
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise UnsupportedSchemaError(f"expected a number, got {_short(value)}")
    return value


def compile_schema(documents: Documents, root: str) -> Check:
    """Compile the schema document named *root*; ``$ref`` to another file names it in *documents*.

    Raises :class:`UnsupportedSchemaError` if the schema needs a keyword not implemented here.
    """
    if root not in documents:
        raise UnsupportedSchemaError(f"no schema document {root!r}")
    return _Compiler(documents).reference("#", root)


def format_path(path: JsonPath) -> str:
    """``$.components[3].purl`` for ``("components", 3, "purl")``."""
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
