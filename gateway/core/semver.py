"""Firmware version precedence (SemVer 2.0.0) and ``vers:`` range checks, our own and tested.

Why not a library: ``univers``' ``vers:intdot`` orders ``4.2.9`` after ``4.2.10`` and its
``generic`` scheme mangles four-part versions (DESIGN, "Version ranges"); a recall that names the
wrong firmware range misses devices. So firmware versions are compared here:

- :class:`Version` follows SemVer 2.0.0 §2, §9-§11: numeric identifiers compare numerically,
  a pre-release ranks below its release, pre-release identifiers compare field by field
  (numeric < alphanumeric, numeric numerically, text in ASCII order, a shorter list of equal
  prefix ranks lower), and build metadata is ignored for precedence (§10).
- Extension for firmware: with ``strict=False`` the release part may have one to four numeric
  parts; missing trailing parts count as zero, so ``4.2 == 4.2.0 < 4.2.0.1 < 4.2.1``. A manifest's
  display version is parsed with ``strict=True`` (exactly ``MAJOR.MINOR.PATCH``).
- :func:`in_range` evaluates a ``vers:`` range (package-url "vers" specification) with the
  ``semver`` scheme: ``vers:semver/>=4.2.0|<4.2.10``. Constraints are ``=``, ``!=``, ``<``,
  ``<=``, ``>``, ``>=`` (no comparator means ``=``), or a lone ``*``; they must be sorted by
  version without duplicates, as the specification requires, and are evaluated with its
  algorithm (intervals between a ``>``/``>=`` and the next ``<``/``<=``).

Bad input raises :class:`~gateway.core.errors.MalformedError` with a sentence naming the text.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from functools import total_ordering
from typing import Literal

from gateway.core.errors import MalformedError

__all__ = ["VersRange", "Version", "in_range", "parse_vers"]

# SemVer 2.0.0 §2 (no leading zeros), §9 (pre-release), §10 (build). One to four release parts;
# strict parsing additionally requires exactly three.
_NUM = r"0|[1-9]\d*"
_IDENT = r"[0-9A-Za-z-]+"
_VERSION = re.compile(
    rf"(?P<release>(?:{_NUM})(?:\.(?:{_NUM})){{0,3}})"
    rf"(?:-(?P<pre>{_IDENT}(?:\.{_IDENT})*))?"
    rf"(?:\+(?P<build>{_IDENT}(?:\.{_IDENT})*))?",
    re.ASCII,
)
_NUMERIC = re.compile(rf"(?:{_NUM})\Z", re.ASCII)
_MAX_LEN = 256  # no real version is longer; bounds the regex work on hostile input

Comparator = Literal["=", "!=", "<", "<=", ">", ">="]
_COMPARATORS: tuple[Comparator, ...] = ("<=", ">=", "!=", "<", ">", "=")  # longest first


def _pre_key(identifier: str) -> tuple[int, int, str]:
    # SemVer §11.4.1-3: numeric identifiers compare numerically and rank below alphanumeric ones.
    if _NUMERIC.match(identifier):
        return (0, int(identifier), "")
    return (1, 0, identifier)


@total_ordering
@dataclass(frozen=True, eq=False)
class Version:
    """A parsed version; ``==``, ``<`` and ``hash`` follow SemVer precedence (build ignored)."""

    release: tuple[int, ...]
    prerelease: tuple[str, ...] = ()
    build: tuple[str, ...] = ()
    text: str = field(default="", compare=False)

    @classmethod
    def parse(cls, text: str, *, strict: bool = True) -> Version:
        """Parse *text*; ``strict`` requires exactly ``MAJOR.MINOR.PATCH`` (SemVer 2.0.0 §2).

        Raises :class:`MalformedError` if *text* is not a version.
        """
        match = _VERSION.fullmatch(text) if len(text) <= _MAX_LEN else None
        if match is None:
            raise MalformedError(
                f"{text[:80]!r} is not a semantic version such as 4.2.10 or 4.2.10-rc.1.",
                reason="bad-version",
            )
        release = tuple(int(part) for part in match["release"].split("."))
        if strict and len(release) != 3:
            raise MalformedError(
                f"{text!r} is not a semantic version: it needs exactly three numbers "
                "(MAJOR.MINOR.PATCH), such as 4.2.10.",
                reason="bad-version",
            )
        pre = tuple(match["pre"].split(".")) if match["pre"] else ()
        for identifier in pre:
            # SemVer §9: numeric pre-release identifiers MUST NOT include leading zeros.
            if identifier.isdigit() and not _NUMERIC.match(identifier):
                raise MalformedError(
                    f"{text!r} is not a semantic version: the pre-release part {identifier!r} "
                    "has a leading zero.",
                    reason="bad-version",
                )
        build = tuple(match["build"].split(".")) if match["build"] else ()
        return cls(release, pre, build, text)

    def _key(self) -> tuple[tuple[int, ...], int, tuple[tuple[int, int, str], ...]]:
        # Trailing zero parts are dropped so 4.2 == 4.2.0 == 4.2.0.0 (firmware extension).
        release = self.release
        while len(release) > 1 and release[-1] == 0:
            release = release[:-1]
        # SemVer §11.3: a version without pre-release ranks above the same one with it.
        has_no_pre = 0 if self.prerelease else 1
        return (release, has_no_pre, tuple(_pre_key(i) for i in self.prerelease))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() == other._key()

    def __lt__(self, other: Version) -> bool:
        return self._key() < other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __str__(self) -> str:
        if self.text:
            return self.text
        text = ".".join(map(str, self.release))
        if self.prerelease:
            text += "-" + ".".join(self.prerelease)
        if self.build:
            text += "+" + ".".join(self.build)
        return text


@dataclass(frozen=True)
class VersRange:
    """A parsed ``vers:semver/...`` range; test membership with :meth:`contains`."""

    constraints: tuple[tuple[Comparator, Version], ...]
    any_version: bool = False

    def contains(self, version: Version | str) -> bool:
        """Whether *version* is in the range (the "vers" specification's algorithm)."""
        tested = Version.parse(version, strict=False) if isinstance(version, str) else version
        if self.any_version:
            return True
        # vers spec: "=" and "!=" decide first.
        for comparator, bound in self.constraints:
            if comparator in ("=", "!=") and tested == bound:
                return comparator == "="
        ranged = [(c, v) for c, v in self.constraints if c not in ("=", "!=")]
        if not ranged:
            # Only "=" (none matched) -> out; only "!=" (none matched) -> everything else is in.
            return all(c == "!=" for c, _ in self.constraints)
        return _in_intervals(tested, ranged)


def _satisfies(tested: Version, comparator: Comparator, bound: Version) -> bool:
    return {
        "<": tested < bound,
        "<=": tested <= bound,
        ">": tested > bound,
        ">=": tested >= bound,
    }[comparator]


def _in_intervals(tested: Version, ranged: list[tuple[Comparator, Version]]) -> bool:
    # vers spec: an open start ("<" first), an open end (">" last), and each ">"/">=" followed by
    # a "<"/"<=" bounds an interval; a "<" followed by a ">" is a gap between intervals.
    first_c, first_v = ranged[0]
    last_c, last_v = ranged[-1]
    if (first_c in ("<", "<=") and _satisfies(tested, first_c, first_v)) or (
        last_c in (">", ">=") and _satisfies(tested, last_c, last_v)
    ):
        return True
    return any(
        c1 in (">", ">=")
        and c2 in ("<", "<=")
        and _satisfies(tested, c1, v1)
        and _satisfies(tested, c2, v2)
        for (c1, v1), (c2, v2) in itertools.pairwise(ranged)
    )


def parse_vers(text: str) -> VersRange:
    """Parse ``vers:semver/<constraint>|<constraint>...``.

    Raises :class:`MalformedError` for another scheme, an empty or unsorted constraint list,
    a repeated version or an unparsable version.
    """
    scheme, sep, body = text.partition("/")
    if not sep or scheme.strip().lower() != "vers:semver":
        raise MalformedError(
            f"{text[:80]!r} is not a firmware version range of the form "
            "vers:semver/>=4.2.0|<4.2.10.",
            reason="bad-vers",
        )
    body = body.strip()
    if body == "*":
        return VersRange((), any_version=True)
    constraints: list[tuple[Comparator, Version]] = []
    for raw in body.split("|"):
        item = raw.strip()
        comparator: Comparator = "="
        for candidate in _COMPARATORS:
            if item.startswith(candidate):
                comparator, item = candidate, item[len(candidate) :].strip()
                break
        if not item:
            raise MalformedError(f"The range {text!r} has an empty constraint.", reason="bad-vers")
        constraints.append((comparator, Version.parse(item, strict=False)))
    versions = [v for _, v in constraints]
    # vers spec: constraints are sorted by version and each version appears once; refusing
    # anything else keeps one text meaning one range.
    if any(a >= b for a, b in itertools.pairwise(versions)):
        raise MalformedError(
            f"The range {text!r} must list its versions in increasing order, each once "
            "(vers specification).",
            reason="bad-vers",
        )
    return VersRange(tuple(constraints))


def in_range(version: str | Version, vers: str | VersRange) -> bool:
    """Whether *version* lies in the ``vers:semver`` range *vers*."""
    parsed = parse_vers(vers) if isinstance(vers, str) else vers
    return parsed.contains(version)
