"""JSON from untrusted bytes: bound the nesting depth before CPython's decoder recurses into it.

CPython's JSON decoder guards its recursion with the interpreter's recursion limit, which is
safe at the default (1,000) but not after a library raises it: py-evm and py_ecc (pulled in by
the chain backend) set it to 100,000 on import, and 100,000 nested "[" then overflow the C stack
and kill the process instead of raising RecursionError. Above a safe limit the nesting depth is
bounded here, before parsing (:func:`too_deep_to_parse`). Used for SBOMs (``gateway.core.sbom``,
``gateway.core.recall``) and CSAF advisories.
"""

from __future__ import annotations

import re
import sys

__all__ = ["nesting_too_deep", "too_deep_to_parse"]

_SAFE_RECURSION_LIMIT = 4_000
_MAX_NESTING = 900  # what the decoder itself allows at the default recursion limit
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(range(256)).translate(None, b"[]{}")


def too_deep_to_parse(data: bytes) -> bool:
    """Return True if the recursion limit was raised and *data* may nest too deep to decode."""
    return sys.getrecursionlimit() > _SAFE_RECURSION_LIMIT and nesting_too_deep(data)


def nesting_too_deep(data: bytes) -> bool:
    """Return True if *data* may nest deeper than ``_MAX_NESTING``.

    Strings are removed first (they may contain brackets); then each pass deletes the innermost
    ``[]`` / ``{}`` pairs, so the number of passes is the depth. When brackets stop pairing up
    (not JSON), the openers left over bound how deep the decoder would go before its error.
    """
    brackets = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    for depth in range(_MAX_NESTING + 1):
        if not brackets:
            return False
        shorter = brackets.replace(b"[]", b"").replace(b"{}", b"")
        if len(shorter) == len(brackets):
            return depth + brackets.count(b"[") + brackets.count(b"{") > _MAX_NESTING
        brackets = shorter
    return True
