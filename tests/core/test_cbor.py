from __future__ import annotations

import contextlib

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core import cbor
from gateway.core.errors import MalformedError

# JSON-like CBOR values: what our payloads are made of.
values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)  # bignums are tags 2/3, left raw
    | st.binary(max_size=40)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.integers(-(2**63), 2**63) | st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)


def test_one_item_decodes():
    assert cbor.strict_loads(bytes.fromhex("a201260442aabb")) == {1: -7, 4: b"\xaa\xbb"}


def test_trailing_bytes_are_refused_and_named():
    with pytest.raises(MalformedError, match="event payload has 1 unexpected byte") as caught:
        cbor.strict_loads(b"\x01\x02", what="event payload")
    assert caught.value.reason == "trailing"


def test_a_cbor_sequence_is_refused():
    with pytest.raises(MalformedError):
        cbor.strict_loads(cbor2.dumps({1: 2}) + cbor2.dumps({3: 4}))


@pytest.mark.parametrize(
    "hex_data",
    [
        "5f4101ff",  # indefinite byte string
        "7f6161ff",  # indefinite text string
        "9f01ff",  # indefinite array
        "bf0102ff",  # indefinite map
    ],
)
def test_indefinite_lengths_are_refused_unless_allowed(hex_data):
    data = bytes.fromhex(hex_data)
    with pytest.raises(MalformedError, match="indefinite"):
        cbor.strict_loads(data)
    cbor.strict_loads(data, allow_indefinite=True)


@pytest.mark.parametrize("allow_indefinite", [False, True])
def test_duplicate_map_keys_are_refused_in_every_mode(allow_indefinite):
    with pytest.raises(MalformedError, match="Duplicate"):
        cbor.strict_loads(bytes.fromhex("a201270126"), allow_indefinite=allow_indefinite)


def test_duplicate_keys_in_a_nested_map_are_refused():
    with pytest.raises(MalformedError):
        cbor.strict_loads(bytes.fromhex("81a2616101616102"))


def test_nesting_is_bounded():
    cbor.strict_loads(b"\x81" * (cbor.MAX_DEPTH - 1) + b"\x00")
    with pytest.raises(MalformedError, match="depth"):
        cbor.strict_loads(b"\x81" * (cbor.MAX_DEPTH + 1) + b"\x00")


def test_deep_nesting_attack_is_cheap_to_refuse():
    with pytest.raises(MalformedError):
        cbor.strict_loads(b"\x81" * 100_000)


@pytest.mark.parametrize(
    "hex_data",
    [
        "",  # nothing
        "5818aa",  # byte string shorter than its length
        "a1",  # map without its entry
        "1c",  # reserved additional information
        "62fffe",  # invalid UTF-8
        "f818",  # two-byte simple value below 32
        "ff",  # break outside an indefinite item
        "5b7fffffffffffffff",  # claims a huge byte string
    ],
)
def test_ill_formed_input_is_malformed(hex_data):
    with pytest.raises(MalformedError, match="manifest"):
        cbor.strict_loads(bytes.fromhex(hex_data), what="manifest")


def test_tags_are_not_interpreted():
    # cbor2 would return a datetime, a set and a big integer.
    assert cbor.strict_loads(bytes.fromhex("c11a5f5e1000")) == cbor2.CBORTag(1, 1600000000)
    as_set = cbor.strict_loads(bytes.fromhex("d901028101"))
    assert as_set.tag == 258
    assert list(as_set.value) == [1]
    assert cbor.strict_loads(bytes.fromhex("c24101")) == cbor2.CBORTag(2, b"\x01")


def test_shared_reference_cycle_is_not_built():
    cyclic = bytes.fromhex("d81c81d81d00")  # cbor2 alone: a list that contains itself
    plain = cbor2.loads(cyclic)
    assert plain[0] is plain
    item = cbor.strict_loads(cyclic)
    assert item.tag == 28
    assert list(item.value) == [cbor2.CBORTag(29, 0)]


def test_no_tag_is_interpreted_semantically():
    # Pins the probe behind _SEMANTIC_TAGS: a cbor2 upgrade that interprets a new tag fails here.
    for tag in [*range(70_000), 2**32, 2**63, 2**64 - 1]:
        for value in (0, b"\x01", "a", [0]):
            item = cbor.strict_loads(cbor2.dumps(cbor2.CBORTag(tag, value)))
            assert isinstance(item, cbor2.CBORTag), tag
            assert item.tag == tag


def test_dumps_is_deterministic():
    assert (
        cbor.dumps({4: b"k", 1: -8})
        == cbor.dumps({1: -8, 4: b"k"})
        == bytes.fromhex("a201270441" + "6b")
    )
    assert cbor.dumps(1.5) == bytes.fromhex("f93e00")  # shortest float that holds the value


@given(values)
def test_what_we_encode_strict_loads_reads_back(value):
    assert cbor.strict_loads(cbor.dumps(value)) == value


@given(values)
def test_dumps_is_a_function_of_the_value(value):
    assert cbor.dumps(value) == cbor.dumps(cbor.strict_loads(cbor.dumps(value)))


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_malformed(data):
    with contextlib.suppress(MalformedError):
        cbor.strict_loads(data)
