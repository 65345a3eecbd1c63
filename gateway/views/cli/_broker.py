"""``provgw broker-config`` and ``provgw broker-acl``: Mosquitto's configuration for a site.

``broker-config`` writes the configuration, ACL and TLS material; ``broker-acl`` writes the ACL
again so that the broker refuses the devices the gateway revoked (and, with ``--trust``, those
the trust folder's CRLs revoke). Single commands rather than a group, exposed as ``command`` and
``acl_command``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from gateway.core.errors import VerificationError
from gateway.ingest.broker_config import BrokerConfig, deny_devices, write_broker_config
from gateway.store.devices import DeviceStore
from gateway.views.cli._output import (
    db_option,
    emit,
    fail,
    json_option,
    long_work_progress,
    open_existing_db,
    read_trust,
    trust_option,
)

if TYPE_CHECKING:
    from gateway.core.identity import TrustStore

__all__ = ["acl_command", "command"]

_F = TypeVar("_F", bound=Callable[..., Any])

#: How an operator makes Mosquitto read its ACL again (no restart: sessions and queues stay).
RELOAD_HINT = "reload Mosquitto to apply it: `systemctl reload mosquitto` or `kill -HUP <its pid>`"


def _out_option(help_text: str) -> Callable[[_F], _F]:
    """``-o/--out DIR``: the broker's configuration directory."""
    return click.option(
        "-o",
        "--out",
        "outdir",
        required=True,
        type=click.Path(file_okay=False, path_type=Path),
        help=help_text,
    )


@click.command("broker-config")
@click.option(
    "--pki",
    "pki",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="PKI directory (as made by `provgw-sim pki init DIR`): trust/ roots and CRLs.",
)
@_out_option(
    "Directory to write mosquitto.conf, acl, tls/ and clients/ into (kept site CA reused)."
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
    `mosquitto -c OUTDIR/mosquitto.conf`. Re-run before the CRL date shown, and after a
    manufacturer's CRL changes, then reload the broker (`systemctl reload mosquitto`, or SIGHUP:
    Mosquitto 2 reads its CRL file and CA bundle again, no restart): an expired CRL makes the
    broker refuse every device of that manufacturer. The new CRLs refuse new connections; a
    revoked device's open connection is denied by `provgw broker-acl --trust DIR`.

    Devices an earlier run denied (`provgw broker-acl`) stay denied.

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
        *(
            [f"  denied     {len(config.denied_devices):,} revoked devices (provgw broker-acl)"]
            if config.denied_devices
            else []
        ),
        (
            f"  CRLs valid until {config.crl_next_update:%Y-%m-%d %H:%M} UTC:"
            " re-run and reload the broker before then"
        ),
    ]
    lines += [
        f"  WARNING: {slug}'s issuing CA is revoked by its root; its devices cannot connect"
        for slug in config.revoked_issuers
    ]
    emit(data, as_json=as_json, text="\n".join(lines))


@click.command("broker-acl")
@_out_option("The directory `provgw broker-config` wrote (mosquitto.conf, acl, broker.json).")
@db_option
@trust_option("The gateway's trust folder (trust.dir): also deny every device its CRLs revoke.")
@json_option
def acl_command(outdir: Path, db_path: Path, trust_dir: Path | None, *, as_json: bool) -> None:
    """Make the broker refuse every device the gateway revoked, then reload it to apply.

    The gateway refuses a revoked device's messages at once (`provgw device revoke`), but the
    device's certificate is still good, so the broker still takes what it sends. This writes the
    broker's ACL again with every device revoked in the database denied all topics; after
    Mosquitto's reload (SIGHUP) it refuses their publishes, on connections already open too. Only
    the ACL and broker.json change: no restart, no new certificates, and devices denied before
    stay denied.

    With --trust, also every enrolled device whose certificate (or issuing CA) a CRL in that
    folder revokes: a re-run of `provgw broker-config` makes the broker refuse such a device's
    new connections, this its connection already open.

    Exit code 0: written (also when no device was new); 1: the broker directory, the database or
    the trust folder cannot be read.
    """
    trust = read_trust(trust_dir)
    with open_existing_db(db_path) as db:
        data, text = deny_revoked(outdir, DeviceStore(db), trust=trust, as_json=as_json)
    emit(data, as_json=as_json, text=text)


def _refused(err: VerificationError) -> NoReturn:
    first = err.reason == "bad-broker-config"
    fail(
        str(err),
        hint="run `provgw broker-config --pki DIR -o DIR` first" if first else None,
        code=1,
    )


def check_broker_dir(outdir: Path) -> None:
    """Stop with exit 1 unless *outdir* holds a configuration ``provgw broker-config`` wrote."""
    try:
        BrokerConfig.load(outdir)
    except VerificationError as err:
        _refused(err)


def deny_revoked(
    outdir: Path, devices: DeviceStore, *, trust: TrustStore | None = None, as_json: bool = False
) -> tuple[dict[str, Any], str]:
    """Deny every device *devices* holds as revoked at the broker in *outdir*; say what was done.

    With *trust*, also the devices its CRLs revoke (:meth:`DeviceStore.revoked_by`; progress on
    stderr if that takes long, unless *as_json*). Returns the JSON data and the text of the
    result. Stops with exit 1 if *outdir* is not a broker configuration, or a device id cannot
    be written into its ACL.
    """
    by_crl = []
    if trust is not None:
        progress = long_work_progress("checked", "enrolled devices", as_json=as_json)
        by_crl = devices.revoked_by(trust, datetime.now(UTC), progress)
    try:
        config, new = deny_devices(outdir, [*devices.revoked_ids(), *(d for d, _ in by_crl)])
    except VerificationError as err:
        _refused(err)
    data: dict[str, Any] = {
        "written": True,
        "acl": str(config.acl),
        "denied": list(config.denied_devices),
        "new": list(new),
        "reload": RELOAD_HINT,
    }
    named = f": {', '.join(new)}" if new else ""
    denied = len(config.denied_devices)
    lines = [f"wrote {config.acl}: {denied:,} revoked devices denied ({len(new):,} new{named})"]
    if trust is not None:
        data["revoked_by_crl"] = [{"device": d, "detail": why} for d, why in by_crl]
        lines += [f"  revoked by a CRL: {d} ({why})" for d, why in by_crl]
    lines.append(RELOAD_HINT if new else "nothing new to deny: no reload needed")
    return data, "\n".join(lines)
