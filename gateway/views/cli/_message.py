"""``provgw message``: verify a signed device message offline."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from gateway.core.errors import VerificationError
from gateway.core.identity import DeviceRegistry
from gateway.core.messages import verify_device_message
from gateway.views.cli._output import emit, json_option, load_trust, trust_option


@click.group("message")
def group() -> None:
    """Inspect and verify signed device messages."""


@group.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@trust_option(
    "Directory of trusted manufacturer root certificates (*.pem) and CRLs (*.crl.pem).",
    required=True,
)
@click.option("--topic-device", help="Device id of the MQTT topic the message came on, if known.")
@json_option
def verify(file: Path, trust_dir: Path, topic_device: str | None, *, as_json: bool) -> None:
    """Verify FILE, one COSE_Sign1 device message, with nothing but a trust directory.

    The message must carry its certificate chain (x5chain), as on a device's first contact.
    Exit code 0: valid; 1: refused (the reason says why).
    """
    trust = load_trust(trust_dir, hint="run provgw-sim pki init", code=2)
    now = datetime.now(UTC)
    data = file.read_bytes()
    try:
        verified = verify_device_message(
            data, trust=trust, registry=DeviceRegistry(), now=now, topic_device=topic_device
        )
    except VerificationError as err:
        emit(
            {
                "valid": False,
                "device": None,
                "type": None,
                "seq": None,
                "reason": err.reason,
                "detail": str(err),
                "file": str(file),
            },
            as_json=as_json,
            text=f"INVALID {file}: {err} [{err.reason}]",
        )
        sys.exit(1)
    event = verified.event
    emit(
        {
            "valid": True,
            "device": verified.device_id,
            "manufacturer": verified.identity.manufacturer,
            "type": event.type,
            "seq": event.seq,
            "time": datetime.fromtimestamp(event.time_ms / 1000, tz=UTC).isoformat(),
            "digest": verified.digest.hex(),
            "reason": None,
            "file": str(file),
        },
        as_json=as_json,
        text=(
            f"VALID {file}: {event.type} #{event.seq} from {verified.device_id} "
            f"({verified.identity.manufacturer}), sha256 {verified.digest.hex()[:16]}…"
        ),
    )
