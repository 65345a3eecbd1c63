from __future__ import annotations

import pytest

from gateway.store import db, devices, events, schema

PINNED = {
    db: [
        "Database",
        "Migration",
        "MigrationSet",
        "gateway_migrations",
        "in_list",
        "migration",
        "padded",
        "registered_migrations",
        "unavailable_from",
    ],
    devices: ["DeviceKey", "DeviceRow", "DeviceStore", "Standing", "StandingCache"],
    events: [
        "BatchResult",
        "EventRecord",
        "EventStore",
        "QuarantineOverflow",
        "QuarantineRecord",
        "QuarantinedRow",
        "StoredEvent",
        "signed_payload",
    ],
    schema: [],
}


@pytest.mark.parametrize("module", list(PINNED), ids=lambda m: m.__name__)
def test_public_api_is_pinned_sorted_and_present(module):
    assert module.__all__ == PINNED[module]
    assert module.__all__ == sorted(module.__all__)
    for name in module.__all__:
        assert hasattr(module, name)
