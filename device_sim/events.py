"""Plausible event bodies for simulated devices, and signing them as a device would."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key
from cryptography.x509 import load_pem_x509_certificates

from gateway.core import cose
from gateway.core.events import DEPARTMENT_CLASSES, Event, parse_event
from gateway.core.identity import kid_for

__all__ = ["SimDevice", "make_body", "make_event"]

_SIMPLE_TYPES = ("firmware_update", "maintenance", "custody")


@dataclass(frozen=True)
class SimDevice:
    """A simulated device: its id, key and certificate chain from a demo PKI directory."""

    device_id: str
    key: Ed25519PrivateKey | EllipticCurvePrivateKey
    chain: tuple[bytes, ...]  # DER, leaf first

    @classmethod
    def load(cls, pki: Path, device_id: str) -> SimDevice:
        """Load a device from ``PKI/devices/<id>/`` as written by ``provgw-sim pki init``."""
        folder = pki / "devices" / device_id
        if not folder.is_dir():
            msg = f"no device {device_id!r} in {pki}/devices (see {pki}/devices.json)"
            raise FileNotFoundError(msg)
        key = load_pem_private_key((folder / "key.pem").read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey | EllipticCurvePrivateKey):
            msg = f"{folder / 'key.pem'} is neither an Ed25519 nor a P-256 key"
            raise TypeError(msg)
        certs = load_pem_x509_certificates((folder / "chain.pem").read_bytes())
        return cls(device_id, key, tuple(c.public_bytes(Encoding.DER) for c in certs))

    @property
    def kid(self) -> bytes:
        """The key id the gateway binds after first contact."""
        return kid_for(self.key.public_key())

    def sign(self, event: Event, *, with_chain: bool = True) -> bytes:
        """Sign *event* as COSE_Sign1; the chain travels on first contact, the kid after."""
        payload = event.to_cbor()
        return cose.sign1(payload, self.key, kid=self.kid, x5chain=self.chain if with_chain else ())


def make_body(event_type: str, rng: random.Random, *, today: date) -> dict[str, Any]:
    """Return a realistic body for *event_type* (values a biomed team would recognise)."""
    if event_type == "firmware_update":
        minor = rng.randint(0, 9)
        patch = rng.randint(0, 12)
        image = rng.randbytes(64)
        return {
            "from_version": f"4.{minor}.{patch}",
            "to_version": f"4.{minor}.{patch + 1}",
            "manifest_digest": hashlib.sha256(b"manifest" + image).digest(),
            "image_digest": hashlib.sha256(image).digest(),
            "result": rng.choices(["installed", "failed"], weights=[19, 1])[0],
            "trigger": "routine",
            "cycle": "routine",
        }
    if event_type == "maintenance":
        kind = rng.choice(["scheduled_pm", "electrical_safety", "corrective", "acceptance"])
        body: dict[str, Any] = {
            "work_order": f"WO-{today.year}-{rng.randint(1, 99999):05d}",
            "kind": kind,
            "status": rng.choices(["pass", "corrective", "deferred"], weights=[17, 2, 1])[0],
            "next_due": (today + timedelta(days=rng.choice([90, 180, 365]))).isoformat(),
            "procedure_version": f"PM-{rng.randint(1, 9)}.{rng.randint(0, 9)}",
        }
        if kind == "electrical_safety":
            body["test_equipment"] = f"ESA615-{rng.randint(1000, 9999)}"
            earth = round(rng.uniform(0.05, 0.25), 3)
            leak = round(rng.uniform(5, 120), 1)
            body["safety_tests"] = [
                {
                    "test": "protective_earth_resistance",
                    "value": earth,
                    "unit": "ohm",
                    "limit": 0.3,
                    "pass": earth <= 0.3,
                },
                {
                    "test": "equipment_leakage",
                    "value": leak,
                    "unit": "uA",
                    "limit": 500.0,
                    "pass": leak <= 500,
                },
            ]
        return body
    if event_type == "custody":
        step, disposition = rng.choice(
            [
                ("receiving", "in_progress"),
                ("accepting", "active"),
                ("installing", "active"),
                ("shipping", "in_transit"),
                ("repairing", "in_progress"),
                ("storing", "available"),
            ]
        )
        return {
            "biz_step": step,
            "disposition": disposition,
            "source": "urn:epc:id:pgln:4012345.00000",
            "destination": "urn:epc:id:pgln:4098765.00000",
            "location": {
                "facility": "urn:epc:id:sgln:4098765.00001.0",
                "department_class": rng.choice(DEPARTMENT_CLASSES[:-1]),
            },
        }
    msg = f"cannot simulate event type {event_type!r}; choose one of {', '.join(_SIMPLE_TYPES)}"
    raise ValueError(msg)


def make_event(  # noqa: PLR0913 - one argument per event field
    device_id: str,
    event_type: str,
    seq: int,
    time_ms: int,
    rng: random.Random,
    *,
    today: date,
) -> Event:
    """Build a schema-valid event (checked by the gateway's own parser before it is signed)."""
    event = Event(
        type=event_type,
        device=device_id,
        seq=seq,
        time_ms=time_ms,
        body=make_body(event_type, rng, today=today),
    )
    # The simulator never emits what the gateway would refuse unless a fault is injected on purpose.
    return parse_event(event.to_cbor_map())
