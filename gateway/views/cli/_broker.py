"""``provgw broker-config``: write Mosquitto's configuration, ACL and TLS material for a site.

A single command rather than a group, so it is exposed as ``command``.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from gateway.core.errors import VerificationError
from gateway.ingest.broker_config import write_broker_config
from gateway.views.cli._output import emit, json_option

__all__ = ["command"]


@click.command("broker-config")
@click.option(
    "--pki",
    "pki",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="PKI directory (as made by `provgw-sim pki init DIR`): trust/ roots and CRLs.",
)
@click.option(
    "-o",
    "--out",
    "outdir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write mosquitto.conf, acl, tls/ and clients/ into (kept site CA reused).",
)
@click.option(
    "--port", default=8883, show_default=True, type=click.IntRange(1, 65535), help="TLS port."
)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address the broker listens on."
)
@click.option(
    "--routine-workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Gateway worker processes sharing the routine subscription (one identity each).",
)
@json_option
def command(  # noqa: PLR0913 - one parameter per command-line option
    pki: Path, outdir: Path, port: int, host: str, routine_workers: int, *, as_json: bool
) -> None:
    """Write Mosquitto's configuration for this site's devices, gateway and manufacturers.

    Devices connect with their manufacturer-issued certificates; the gateway's clients
    (gateway-routine, gateway-urgent, gateway-admin) and each manufacturer (mfr-<name>) get
    certificates from a site CA created here. Start the broker with
    `mosquitto -c OUTDIR/mosquitto.conf`. Re-run, and restart the broker, before the CRL date
    shown: an expired CRL makes the broker refuse every device of that manufacturer.

    Exit code 0: written; 1: the PKI was refused (nothing written; the reason says why).
    """
    now = datetime.now(UTC)
    try:
        config = write_broker_config(
            pki, outdir, now=now, host=host, port=port, routine_workers=routine_workers
        )
    except VerificationError as err:
        emit(
            {"written": False, "reason": err.reason, "detail": str(err)},
            as_json=as_json,
            text=f"REFUSED {pki}: {err} [{err.reason}]",
        )
        sys.exit(1)
    data = {"written": True, **config.to_json()}
    lines = [
        f"wrote {config.conf}",
        f"  listener   {config.host}:{config.port} (TLS, client certificate required)",
        f"  ACL        {config.acl}",
        f"  CA bundle  {config.cafile} (site CA + {len(config.manufacturers)} manufacturers)",
        f"  clients    {', '.join(sorted(config.clients))}",
        f"  CRLs valid until {config.crl_next_update:%Y-%m-%d %H:%M} UTC: re-run before then",
    ]
    lines += [
        f"  WARNING: {slug}'s issuing CA is revoked by its root; its devices cannot connect"
        for slug in config.revoked_issuers
    ]
    emit(data, as_json=as_json, text="\n".join(lines))
