"""The gateway's MQTT topic names (DESIGN.md "MQTT topics"): build them and parse them.

::

    provgw/v1/{site}/dev/{device}/evt/{type}   device -> gateway (QoS 1)
    provgw/v1/{site}/dev/{device}/cmd          gateway -> device: firmware offers (QoS 1)
    provgw/v1/mfr/{manufacturer}/manifest      manufacturer -> gateways
    provgw/v1/mfr/{manufacturer}/recall        manufacturer -> gateways

Every variable segment is checked: not empty, and free of ``/`` (it would shift the segments and
let one device's name reach into another's topic), ``+`` and ``#`` (wildcards are only legal in
filters, MQTT 5 §4.7.1; in a name Mosquitto's ``%u`` ACL substitution must never see them) and
U+0000 (MQTT 5 §1.5.4). The site name ``mfr`` is reserved: otherwise
``provgw/v1/mfr/dev/{device}/evt/{type}`` would sit under manufacturer ``dev``'s
``provgw/v1/mfr/dev/#`` write grant, and that manufacturer could publish events for site ``mfr``.

Parsing only says *which* topic it is; the gateway still checks that the topic's device is the
one that signed the payload.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from gateway.core.errors import MalformedError

__all__ = [
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
]

#: Protocol name and version: the first two levels of every topic.
PREFIX = "provgw/v1"
#: A site may not be called this: its topics would fall under the manufacturer tree.
RESERVED_SITE = "mfr"
#: Everything devices report, at every site. ``#`` rather than ``+`` so that a malformed deeper
#: topic (which the device ACL lets through) reaches the gateway and is quarantined, not lost.
EVENT_FILTER = f"{PREFIX}/+/dev/+/evt/#"
#: Every device's command topic (firmware offers).
COMMAND_FILTER = f"{PREFIX}/+/dev/+/cmd"
#: Every manufacturer's manifests and recalls (and anything malformed they publish, to quarantine).
MANUFACTURER_FILTER = f"{PREFIX}/{RESERVED_SITE}/#"

_MAX_SEGMENT = 256  # far above any GS1 id (14 + 1 + 20) or site name; caps log and row sizes


class EventTopic(NamedTuple):
    """``provgw/v1/{site}/dev/{device}/evt/{type}``."""

    site: str
    device: str
    event_type: str


class CommandTopic(NamedTuple):
    """``provgw/v1/{site}/dev/{device}/cmd``."""

    site: str
    device: str


class ManufacturerTopic(NamedTuple):
    """``provgw/v1/mfr/{manufacturer}/manifest`` or ``.../recall``."""

    manufacturer: str
    kind: Literal["manifest", "recall"]


def _segment(value: str, what: str) -> str:
    if not value:
        raise MalformedError(f"The {what} in an MQTT topic is empty.", reason="bad-topic")
    if len(value) > _MAX_SEGMENT:
        raise MalformedError(
            f"The {what} in an MQTT topic is longer than {_MAX_SEGMENT} characters.",
            reason="bad-topic",
        )
    bad = sorted({c for c in value if c in "/+#\x00"})
    if bad:
        raise MalformedError(
            f"The {what} {value!r} in an MQTT topic contains {' '.join(map(repr, bad))}, which "
            "topic names may not carry there.",
            reason="bad-topic",
        )
    return value


def _site(value: str) -> str:
    if value == RESERVED_SITE:
        raise MalformedError(
            f"{RESERVED_SITE!r} is reserved for manufacturer topics and cannot name a site.",
            reason="bad-topic",
        )
    return _segment(value, "site")


def event_topic(site: str, device: str, event_type: str) -> str:
    """Name the topic a device publishes an event of *event_type* on."""
    return (
        f"{PREFIX}/{_site(site)}/dev/{_segment(device, 'device id')}"
        f"/evt/{_segment(event_type, 'event type')}"
    )


def command_topic(site: str, device: str) -> str:
    """Name the topic the gateway sends a device its firmware offers on."""
    return f"{PREFIX}/{_site(site)}/dev/{_segment(device, 'device id')}/cmd"


def manifest_topic(manufacturer: str) -> str:
    """Name the topic a manufacturer publishes signed firmware manifests on."""
    return f"{PREFIX}/{RESERVED_SITE}/{_segment(manufacturer, 'manufacturer')}/manifest"


def recall_topic(manufacturer: str) -> str:
    """Name the topic a manufacturer publishes signed recall notices on."""
    return f"{PREFIX}/{RESERVED_SITE}/{_segment(manufacturer, 'manufacturer')}/recall"


def shared_filter(topic_filter: str, group: str = "provgw") -> str:
    """Wrap *topic_filter* as an MQTT 5 shared subscription (§4.8.2), split among *group*.

    Each message matching the filter goes to one member of *group* only, so several gateway
    worker processes can share one stream of device events.
    """
    _segment(group, "shared-subscription group")
    return f"$share/{group}/{topic_filter}"


def parse_topic(topic: str) -> EventTopic | CommandTopic | ManufacturerTopic:
    """Say which gateway topic *topic* is, or raise :class:`MalformedError`."""
    parts = topic.split("/")
    if len(parts) < 5 or "/".join(parts[:2]) != PREFIX:
        raise MalformedError(f"{topic!r} is not a Provenance Gateway topic.", reason="bad-topic")
    rest = parts[2:]
    match rest:
        case [site, "dev", device, "evt", event_type]:
            return EventTopic(
                _site(site), _segment(device, "device id"), _segment(event_type, "event type")
            )
        case [site, "dev", device, "cmd"]:
            return CommandTopic(_site(site), _segment(device, "device id"))
        case ["mfr", manufacturer, "manifest"]:
            return ManufacturerTopic(_segment(manufacturer, "manufacturer"), "manifest")
        case ["mfr", manufacturer, "recall"]:
            return ManufacturerTopic(_segment(manufacturer, "manufacturer"), "recall")
        case _:
            raise MalformedError(
                f"{topic!r} is not a Provenance Gateway topic.", reason="bad-topic"
            )
