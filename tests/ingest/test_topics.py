"""Topic names: built and parsed symmetrically; nothing that could widen an ACL gets through."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.errors import MalformedError
from gateway.ingest import topics
from gateway.ingest.topics import (
    CommandTopic,
    EventTopic,
    ManufacturerTopic,
    command_topic,
    event_topic,
    manifest_topic,
    parse_topic,
    recall_topic,
    shared_filter,
)

DEVICE = "09506000134352-A1001"


def test_topics_have_the_documented_shape():
    assert (
        event_topic("icu", DEVICE, "maintenance") == f"provgw/v1/icu/dev/{DEVICE}/evt/maintenance"
    )
    assert command_topic("icu", DEVICE) == f"provgw/v1/icu/dev/{DEVICE}/cmd"
    assert manifest_topic("acme") == "provgw/v1/mfr/acme/manifest"
    assert recall_topic("acme") == "provgw/v1/mfr/acme/recall"


def test_each_topic_parses_back_to_its_parts():
    assert parse_topic(event_topic("icu", DEVICE, "custody")) == EventTopic(
        "icu", DEVICE, "custody"
    )
    assert parse_topic(command_topic("or", DEVICE)) == CommandTopic("or", DEVICE)
    assert parse_topic(manifest_topic("acme")) == ManufacturerTopic("acme", "manifest")
    assert parse_topic(recall_topic("globex")) == ManufacturerTopic("globex", "recall")


segment = st.text(
    alphabet=st.characters(blacklist_characters="/+#\x00", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=40,
).filter(lambda s: s != "mfr")


@given(site=segment, device=segment, event_type=segment)
def test_any_valid_segments_round_trip(site, device, event_type):
    assert parse_topic(event_topic(site, device, event_type)) == (site, device, event_type)
    assert parse_topic(command_topic(site, device)) == (site, device)


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "dev+", "x#", "a\x00b", "x" * 257])
def test_wildcards_slashes_and_empty_segments_are_refused(bad):
    for build in (
        lambda: event_topic(bad, DEVICE, "custody"),
        lambda: event_topic("icu", bad, "custody"),
        lambda: event_topic("icu", DEVICE, bad),
        lambda: command_topic("icu", bad),
        lambda: manifest_topic(bad),
    ):
        with pytest.raises(MalformedError) as err:
            build()
        assert err.value.reason == "bad-topic"


@pytest.mark.parametrize(
    "topic",
    [
        "provgw/v1/icu/dev/+/evt/custody",
        "provgw/v1/icu/dev/#",
        f"provgw/v1//dev/{DEVICE}/evt/custody",
        f"provgw/v1/icu/dev/{DEVICE}/evt/",
        f"provgw/v1/icu/dev/{DEVICE}/evt/custody/extra",  # the device ACL's evt/# admits this
        f"provgw/v1/icu/dev/{DEVICE}/cmd/extra",
        f"provgw/v2/icu/dev/{DEVICE}/cmd",
        f"other/v1/icu/dev/{DEVICE}/cmd",
        "provgw/v1/mfr/acme/firmware",
        "provgw/v1/mfr/acme/manifest/x",
        "provgw/v1/mfr//manifest",
        "provgw/v1",
        "",
    ],
)
def test_foreign_or_malformed_topics_are_refused(topic):
    with pytest.raises(MalformedError):
        parse_topic(topic)


def test_site_named_mfr_is_refused_so_manufacturers_cannot_write_device_events():
    # Manufacturer "dev" may write provgw/v1/mfr/dev/#, which would cover site "mfr"'s events.
    with pytest.raises(MalformedError, match="reserved"):
        event_topic("mfr", DEVICE, "custody")
    with pytest.raises(MalformedError, match="reserved"):
        parse_topic(f"provgw/v1/mfr/dev/{DEVICE}/evt/custody")


def test_filters_match_the_topics_they_are_for():
    assert topics.EVENT_FILTER == "provgw/v1/+/dev/+/evt/#"
    assert topics.COMMAND_FILTER == "provgw/v1/+/dev/+/cmd"
    assert topics.MANUFACTURER_FILTER == "provgw/v1/mfr/#"
    assert shared_filter(topics.EVENT_FILTER) == "$share/provgw/provgw/v1/+/dev/+/evt/#"
    with pytest.raises(MalformedError):
        shared_filter(topics.EVENT_FILTER, group="a/b")


def test_public_api_is_pinned():
    assert set(topics.__all__) == {
        "COMMAND_FILTER",
        "EVENT_FILTER",
        "MANUFACTURER_FILTER",
        "PREFIX",
        "RESERVED_SITE",
        "CommandTopic",
        "EventTopic",
        "ManufacturerTopic",
        "command_topic",
        "event_topic",
        "manifest_topic",
        "parse_topic",
        "recall_topic",
        "shared_filter",
    }
