"""``provgw serve``: run the ingest service until stopped (SIGTERM or Ctrl-C).

A single command rather than a group, so it is exposed as ``command``.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from gateway.core.errors import UnavailableError, VerificationError
from gateway.service.child import SUPERVISOR_LOG_FORMAT
from gateway.service.workers import serve
from gateway.views.cli._output import config_option, fail, json_option

__all__ = ["command"]

_HINTS = {
    "trust-dir-missing": "for a demo: `provgw-sim pki init DIR`, then trust.dir = DIR/trust",
    "broker-config-missing": "run `provgw broker-config --pki DIR -o BROKER_DIR` first",
    "config-missing-client": "re-run `provgw broker-config` with --routine-workers N",
    "tls-file-missing": "re-run `provgw broker-config`, then `systemctl reload mosquitto`",
    "config-unreadable": "as a service: deploy/gateway.toml, installed as /etc/provgw/gateway.toml;"
    " for a try: `make demo` writes and runs demo-run/gateway.toml",
}


def _line(data: dict[str, Any], *, as_json: bool) -> None:
    # One JSON object per line (not indented): scripts read the start line before the stop line.
    if as_json:
        click.echo(json.dumps(data, sort_keys=True, default=str))
    elif data["status"] == "running":
        pids = ", ".join(str(pid) for pid in data["worker_pids"])
        ingest = (
            f"{data['workers']} ingest workers on a shared subscription (pids {pids})"
            if data["ingest_mode"] == "shared"
            else f"receiver (pid {pids}) and {data['workers']} verifiers"
        )
        click.echo(
            f"provgw serving (pid {data['pid']}): {ingest}, broker {data['broker']}, "
            f"database {data['database']}, metrics {data['metrics'] or 'off'}"
        )
        ledger = data.get("ledger")
        if ledger:
            click.echo(_ledger_line(ledger))
        urgent = data.get("urgent")
        if urgent:
            click.echo(_urgent_line(urgent))
    else:
        click.echo(
            f"provgw stopped after {data['uptime_s']:.1f} s: {data['events_stored']} events "
            f"stored, quarantined {data['quarantined'] or 'nothing'}"
        )
        log = data.get("log")
        if log:
            click.echo(
                f"transparency log: {log['entries']} entries, {log['checkpoints']} checkpoints "
                f"({log['witnessed']} reached the witness quorum, {log['anchored']} anchored)"
            )
    sys.stdout.flush()


def _urgent_line(urgent: dict[str, Any]) -> str:
    trusted = (
        f"manifest keys {urgent['manifest_trust']}, recall keys {urgent['recall_trust']}"
        if urgent["manifest_trust"] or urgent["recall_trust"]
        else "NO manufacturer trusted yet (set urgent.manifest_trust and urgent.recall_trust)"
    )
    nice = urgent["nice"]
    priority = (
        f"nice {nice}"
        if nice is None or nice <= urgent["nice_wanted"]
        else f"nice {nice} (wanted {urgent['nice_wanted']}: needs CAP_SYS_NICE)"
    )
    made = " (generated at first start)" if urgent["offer_key_generated"] else ""
    return (
        f"urgent lane: pid {urgent['pid']}, client gateway-urgent, {priority}, "
        f"{'subscribed' if urgent['subscribed'] else 'NOT subscribed yet'}; {trusted}\n"
        f"  offer key {urgent['offer_key']}{made}; devices trust its public half "
        f"{urgent['offer_public_key']} (kid {urgent['offer_kid'][:16]}..)"
    )


def _ledger_line(ledger: dict[str, Any]) -> str:
    made = ledger["keys_generated"]
    return (
        f"transparency log {ledger['origin']}: checkpoint every {ledger['interval_s']:g} s or "
        f"{ledger['max_pending']} events, {ledger['witnesses']} witnesses (quorum "
        f"{ledger['quorum']}), chain {ledger['chain'] or 'off'}\n"
        f"  log key (vkey) {ledger['log_vkey']}\n"
        + (
            f"  embedded witness key (vkey) {ledger['embedded_witness_vkey']}\n"
            if ledger["embedded_witness_vkey"]
            else ""
        )
        + (f"  generated at first start: {', '.join(made)}" if made else "  keys loaded")
    )


@click.command("serve")
@config_option("Gateway configuration (TOML); see gateway.example.toml.")
@json_option
def command(config_path: Path, *, as_json: bool) -> None:
    """Run the gateway: ingest device events, the transparency log, and the urgent patch lane.

    Ingest: one receiver process holds the gateway's MQTT session and deals device events to
    ingest.workers verifier processes (default: one per CPU core) by device; each verifies and
    stores its batches, and the receiver acknowledges what was stored. A Prometheus endpoint
    runs if metrics.port is set. Stops cleanly on SIGTERM or Ctrl-C: each process commits and
    acknowledges what it holds first. With --json, prints one JSON status line on start and one
    on stop.

    Beside the workers, a ledger process ([log]) logs every stored event in the transparency log,
    seals checkpoints, has them cosigned by the witnesses ([witnesses]; by default a local one)
    and anchors them on the consortium chain ([chain], off by default). The gateway log key and
    the local witness key are generated at first start; the start line says so.

    The urgent lane ([urgent], on by default) is a process of its own with its own MQTT client
    (gateway-urgent), at a raised CPU priority where allowed: it verifies manufacturer manifests
    and recalls, sends each affected device a signed firmware offer, and tracks the devices'
    reports (`provgw recall status`). Refused manufacturer messages are quarantined.

    Exit code 0: stopped cleanly; 1: a service it needs is unavailable (broker, database);
    2: the configuration or its files are wrong.
    """
    # The supervisor's own lines (a database upgrade, a worker restarted, a signal) go to stderr
    # with a time, as each worker's do; stdout stays the status lines (JSON with --json).
    logging.basicConfig(level=logging.INFO, format=SUPERVISOR_LOG_FORMAT)
    try:
        final = serve(config_path, lambda status: _line(status, as_json=as_json))
    except UnavailableError as err:
        if as_json:
            _line({"status": "failed", "reason": err.reason, "detail": str(err)}, as_json=True)
        fail(str(err), code=1)
    except VerificationError as err:
        if as_json:
            _line({"status": "failed", "reason": err.reason, "detail": str(err)}, as_json=True)
        fail(str(err), hint=_HINTS.get(err.reason), code=2)
    _line(final, as_json=as_json)
