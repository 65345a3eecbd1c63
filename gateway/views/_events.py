"""What a stored event says, in words: shared by the web UI's pages and the FHIR export."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.core.cbor import strict_loads
from gateway.core.errors import VerificationError

if TYPE_CHECKING:
    from gateway.store.events import StoredEvent

__all__ = ["event_body", "summary"]


def _plain(value: object) -> object:
    # Event bodies hold bytes (digests): hex for JSON and for display.
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def summary(event_type: str, body: dict[str, Any]) -> str:
    """One line a biomed engineer reads: what the event says."""
    if event_type == "firmware_update":
        trigger = body.get("trigger", "?")
        if body.get("trigger_ref"):
            trigger = f"{trigger} {body['trigger_ref']}"
        text = (
            f"firmware {body.get('from_version', '?')} -> {body.get('to_version', '?')}: "
            f"{body.get('result', '?')} ({trigger}, {body.get('cycle', '?')})"
        )
        return text + (f": {body['detail']}" if body.get("detail") else "")
    if event_type == "maintenance":
        due = f", next due {body['next_due']}" if body.get("next_due") else ""
        return (
            f"{body.get('kind', '?')} work order {body.get('work_order', '?')}: "
            f"{body.get('status', '?')}{due}"
        )
    if event_type == "custody":
        where = body.get("location") or {}
        at = f" at {where.get('department_class')}" if where.get("department_class") else ""
        return f"{body.get('biz_step', '?')}, {body.get('disposition', '?')}{at}"
    if event_type == "key_rotation":
        return f"key rotated ({body.get('reason', '?')})"
    return event_type


def event_body(event: StoredEvent) -> dict[str, Any]:
    """Return the event's ``body`` map, bytes as hex; ``{}`` when erased or unreadable."""
    try:
        item = strict_loads(bytes(event.payload), what="event payload")
        body = item["body"]
    except (VerificationError, KeyError, TypeError):
        return {}
    plain = _plain(body)
    return plain if isinstance(plain, dict) else {}
