"""Strict CBOR for the bytes we receive, deterministic CBOR for the bytes we produce.

:func:`strict_loads` is the only way untrusted CBOR enters the gateway. It decodes exactly one
data item and refuses, with a :class:`~gateway.core.errors.MalformedError` naming what was being
read, anything two parsers could read differently:

1. Indefinite-length strings, arrays and maps (RFC 8949 §3.2.2): not allowed in deterministic
   encoding (RFC 8949 §4.2.1); they let a sender split one value into many encodings.
2. Duplicate map keys: such a map is not valid CBOR (RFC 8949 §5.6); one parser keeps the first
   value, another the last, so the signer and the verifier may see different headers
   (RFC 9052 §14 forbids processing them in COSE).
3. Nesting deeper than ``max_depth``: stack exhaustion from a few hundred bytes.
4. Trailing bytes after the item: the input is one data item, not a CBOR sequence (RFC 8742);
   bytes smuggled behind a signed message must not be stored as if they were part of it.
5. No semantic tag decoding: every tag comes back as an uninterpreted :class:`cbor2.CBORTag`.
   cbor2 would otherwise follow shared references (tags 28/29, which build a cyclic object from
   six bytes), string references (25/256), compile regular expressions (35), parse MIME (36) and
   build sets, dates and big numbers. The schema layer decides which tags a payload may carry.

Every cbor2 error is mapped to :class:`MalformedError` here, where the foreign library is entered.
"""

from __future__ import annotations

import io
from typing import Any

import cbor2

from gateway.core.errors import MalformedError

__all__ = ["MAX_DEPTH", "dumps", "strict_loads"]

#: Deepest nesting of arrays, maps and tags accepted. COSE headers and our event payloads are a
#: few levels deep; the bound stops stack exhaustion, not legitimate data.
MAX_DEPTH = 32

# Every tag cbor2 6 decodes semantically (found by probing tags 0..70000 and 2**32..2**64-1; a
# test pins the list). Mapping each one back to a plain CBORTag switches the interpretation off.
_SEMANTIC_TAGS = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260, 261,
                  1004, 43000, 55799)  # fmt: skip


def _raw_tag(tag: int) -> cbor2.SemanticDecoderCallback:
    def keep(value: object, _immutable: bool) -> cbor2.CBORTag:  # noqa: FBT001 -- cbor2's signature
        return cbor2.CBORTag(tag, value)

    return keep


_RAW_TAGS: dict[int, cbor2.SemanticDecoderCallback] = {t: _raw_tag(t) for t in _SEMANTIC_TAGS}


def strict_loads(
    data: bytes,
    *,
    what: str = "payload",
    allow_indefinite: bool = False,
    max_depth: int = MAX_DEPTH,
) -> Any:  # noqa: ANN401 -- a CBOR item is any of the data model's types
    """Decode exactly one CBOR data item from untrusted *data*, or raise :class:`MalformedError`.

    *what* names the thing being read ("COSE_Sign1 message", "event payload") so the error is a
    sentence a person can act on. ``allow_indefinite=True`` exists only for the COSE library
    layer that must read third-party test vectors; duplicate keys are refused in every mode.
    Big integers beyond 64 bits (tags 2/3) therefore come back as tags too. cbor2 6 decodes
    some arrays as tuples and some maps as read-only mappings (inside tags, as map keys):
    check with ``Sequence``/``Mapping``, not ``list``/``dict``.
    """
    fp = io.BytesIO(data)
    decoder = cbor2.CBORDecoder(
        fp,
        semantic_decoders=_RAW_TAGS,
        max_depth=max_depth,
        allow_indefinite=allow_indefinite,
        allow_duplicate_keys=False,
    )
    # Steps 1-3 and 5: cbor2 enforces them while decoding; map every failure into our tree.
    try:
        item = decoder.decode()
    except cbor2.CBORDecodeEOF as exc:
        raise MalformedError(f"The {what} is truncated: the CBOR data ends early ({exc}).") from exc
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        # ValueError/TypeError/OverflowError: cbor2 surfaces some conversion failures as the
        # builtin exception; RecursionError: belt and braces behind max_depth.
        raise MalformedError(f"The {what} is not valid CBOR: {exc}.") from exc
    # Step 4: one item, nothing after it (RFC 8742 sequences are not accepted here).
    if fp.tell() != len(data):
        extra = len(data) - fp.tell()
        raise MalformedError(
            f"The {what} has {extra} unexpected byte(s) after its CBOR data.", reason="trailing"
        )
    return item


def dumps(obj: Any) -> bytes:  # noqa: ANN401 -- any CBOR-encodable value
    """Encode *obj* deterministically: cbor2's canonical mode.

    Preferred (shortest) serialization, definite lengths, and map keys sorted length-first as in
    RFC 8949 §4.2.3 (the RFC 7049 canonical order; for COSE's small integer labels it equals the
    bytewise order of §4.2.1). Used for every byte string the gateway itself produces, so the
    same value always yields the same bytes and the same digest.
    """
    return cbor2.dumps(obj, canonical=True)
