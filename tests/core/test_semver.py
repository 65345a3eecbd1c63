from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.errors import MalformedError
from gateway.core.semver import Version, in_range, parse_vers

V = Version.parse

# SemVer 2.0.0 §11.4: the precedence example, lowest first.
SPEC_ORDER = [
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.0",
]


def test_semver_spec_precedence_example_is_ordered():
    parsed = [V(t) for t in SPEC_ORDER]
    shuffled = parsed[3:] + parsed[:3]
    assert sorted(shuffled) == parsed
    for low, high in itertools.pairwise(parsed):
        assert low < high
        assert not high < low


def test_numeric_parts_compare_numerically_where_intdot_gets_it_wrong():
    # univers vers:intdot orders 4.2.9 after 4.2.10 (DESIGN, "Version ranges").
    assert V("4.2.9") < V("4.2.10")
    assert V("4.10.0") > V("4.9.99")
    assert V("10.0.0") > V("9.0.0")


def test_build_metadata_is_ignored_for_precedence():
    assert V("1.2.3+build.7") == V("1.2.3+other")
    assert hash(V("1.2.3+a")) == hash(V("1.2.3"))


def test_prerelease_ranks_below_its_release_and_above_the_previous_one():
    assert V("4.2.9") < V("4.2.10-rc.1") < V("4.2.10")


@pytest.mark.parametrize(
    "text",
    ["4.2", "4.2.10.1", "01.2.3", "1.02.3", "1.2.3-01", "1.2.3-", "1.2.3+", "v1.2.3", "", "1..2"],
)
def test_strict_parse_refuses_non_semver(text):
    with pytest.raises(MalformedError):
        V(text)


def test_four_part_versions_order_between_their_neighbours():
    lax = [Version.parse(t, strict=False) for t in ("4.2.9", "4.2.10", "4.2.10.1", "4.2.11")]
    assert sorted([lax[2], lax[0], lax[3], lax[1]]) == lax
    assert Version.parse("4.2", strict=False) == Version.parse("4.2.0.0", strict=False)


def test_five_part_versions_are_refused():
    with pytest.raises(MalformedError):
        Version.parse("1.2.3.4.5", strict=False)


@pytest.mark.parametrize(
    ("version", "inside"),
    [
        ("4.1.99", False),
        ("4.2.0-rc.1", False),
        ("4.2.0", True),
        ("4.2.9", True),
        ("4.2.10-rc.1", True),
        ("4.2.10", False),
        ("4.2.9.3", True),
        ("4.2.10.1", False),
    ],
)
def test_vers_range_boundaries(version, inside):
    assert in_range(version, "vers:semver/>=4.2.0|<4.2.10") is inside


def test_vers_range_with_two_intervals_and_a_gap():
    rng = parse_vers("vers:semver/<1.0.0|>=2.0.0|<2.5.0|>3.0.0")
    assert rng.contains("0.9.0")
    assert not rng.contains("1.5.0")
    assert rng.contains("2.4.9")
    assert not rng.contains("3.0.0")
    assert rng.contains("3.0.1")


def test_vers_equal_and_not_equal_constraints():
    assert in_range("1.2.3", "vers:semver/1.2.3|2.0.0")
    assert not in_range("1.2.4", "vers:semver/1.2.3|2.0.0")
    assert not in_range("1.2.3", "vers:semver/!=1.2.3")
    assert in_range("1.2.4", "vers:semver/!=1.2.3")
    assert not in_range("1.5.0", "vers:semver/>=1.0.0|!=1.5.0|<2.0.0")
    assert in_range("1.6.0", "vers:semver/>=1.0.0|!=1.5.0|<2.0.0")
    assert in_range("9.9.9", "vers:semver/*")


@pytest.mark.parametrize(
    "text",
    [
        "vers:intdot/>=1.0.0",
        ">=1.0.0",
        "vers:semver/",
        "vers:semver/<2.0.0|>=1.0.0",
        "vers:semver/>=1.0.0|<=1.0.0",
        "vers:semver/>=x",
    ],
)
def test_malformed_or_unsorted_ranges_are_refused(text):
    with pytest.raises(MalformedError):
        parse_vers(text)


_num = st.integers(0, 10_000)
_ident = st.one_of(
    st.integers(0, 50).map(str), st.from_regex(r"[a-z][a-z0-9-]{0,5}", fullmatch=True)
)
_versions = st.builds(
    lambda a, b, c, pre: Version.parse(f"{a}.{b}.{c}" + ("-" + ".".join(pre) if pre else "")),
    _num,
    _num,
    _num,
    st.lists(_ident, max_size=3),
)


@given(_versions, _versions, _versions)
def test_precedence_is_a_total_order(a, b, c):
    assert (a < b) + (b < a) + (a == b) == 1
    if a <= b <= c:
        assert a <= c


@given(_versions)
def test_text_round_trips(v):
    assert Version.parse(str(v)) == v
