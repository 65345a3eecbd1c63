"""``provgw status``: the gateway's progress at a glance, for whoever has no Prometheus."""

from __future__ import annotations

import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import click

from gateway.core.errors import ProvenanceError
from gateway.ingest.broker_config import BrokerConfig
from gateway.service.config import GatewayConfig, load_config
from gateway.store.health import StoreHealth, read_store_health
from gateway.views.cli._output import config_option, emit, fail, json_option, refusals

__all__ = ["command"]

_SCRAPE_TIMEOUT_S = 3.0
#: Exit code when the gateway's processes do not answer or one is not ready: LSB's "program is
#: not running" (``systemctl status`` says the same with it), so a check script sees it.
EXIT_NOT_RUNNING = 3


def _processes(config: GatewayConfig) -> dict[str, Any] | None:
    """Read the running gateway's children from its /metrics; None when metrics are off."""
    if not config.metrics_port:
        return None
    # Only here: the parser imports prometheus_client.
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    url = f"http://{config.metrics_host}:{config.metrics_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=_SCRAPE_TIMEOUT_S) as response:
            text = response.read().decode()
    except OSError as exc:
        why = getattr(exc, "reason", exc)  # URLError wraps the socket's error
        return {"url": url, "answered": False, "error": str(why), "children": {}}
    children: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in {
                "provgw_child_up",
                "provgw_child_ready",
                "provgw_child_restarts_total",
            }:
                key = sample.name.removeprefix("provgw_child_").removesuffix("_total")
                children.setdefault(sample.labels["role"], {})[key] = sample.value
    return {
        "url": url,
        "answered": True,
        "children": {
            role: {
                "up": v.get("up") == 1,
                "ready": v.get("ready") == 1,
                "restarts": int(v.get("restarts", 0)),
            }
            for role, v in sorted(children.items())
        },
    }


def _running(processes: dict[str, Any] | None) -> bool:
    """Whether the gateway answered and every process of it is ready (True when unknowable)."""
    if processes is None:
        return True  # [metrics] port 0: nothing to ask; the text says so
    children = processes["children"].values()
    return bool(processes["answered"]) and all(c["ready"] for c in children)


def _ago(at_ms: int | None, now_ms: int) -> str:
    if at_ms is None:
        return "never"
    seconds = max(0, (now_ms - at_ms) // 1000)
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def _text(
    config: GatewayConfig,
    health: StoreHealth,
    processes: dict[str, Any] | None,
    broker: BrokerConfig,
) -> str:
    now_ms = int(time.time() * 1000)
    newest = health.newest
    signed, witnessed, anchored = (newest[k] for k in ("signed", "witnessed", "anchored"))
    lines = [
        (
            f"database {config.database}: {health.events:,} events stored, "
            f"{health.unlogged:,} not yet in the transparency log"
        ),
        (
            f"log: {health.entries:,} entries; newest checkpoint {signed.size:,} signed "
            f"{_ago(signed.at_ms, now_ms)}; witnessed {witnessed.size:,} "
            f"({_ago(witnessed.at_ms, now_ms)}); anchored {anchored.size:,} "
            f"({_ago(anchored.at_ms, now_ms)})"
        ),
        f"anchors waiting: {health.anchors['pending']} pending, {health.anchors['sent']} sent",
        (
            f"broker CRLs valid until {broker.crl_next_update:%Y-%m-%d %H:%M} UTC: re-run "
            "`provgw broker-config` and reload the broker before then"
        ),
    ]
    if not_denied := health.not_denied(broker.denied_devices):
        lines.append(
            f"revoked devices: {len(health.revoked):,}; NOT denied at the broker yet, so it still"
            f" takes what they publish: {', '.join(not_denied)}. Run `provgw broker-acl -o"
            f" {config.broker.config_dir} --db {config.database}` and reload the broker"
        )
    elif health.revoked:
        lines.append(f"revoked devices: {len(health.revoked):,}, all denied at the broker")
    campaigns: dict[str, list[str]] = {}
    for campaign, state, count in health.remediation:
        campaigns.setdefault(campaign, []).append(f"{count} {state}")
    for campaign, states in sorted(campaigns.items()):
        lines.append(f"remediation {campaign}: {', '.join(states)}")
    if processes is None:
        lines.append("processes: unknown ([metrics] port is 0: the gateway serves no /metrics)")
    elif not processes["answered"]:
        lines.append(
            f"processes: no answer from {processes['url']} ({processes['error']}): "
            "is `provgw serve` running with this configuration?"
        )
    else:
        shown = [
            f"{role} {'ready' if c['ready'] else 'up' if c['up'] else 'DOWN'}"
            + (f" ({c['restarts']} restarts)" if c["restarts"] else "")
            for role, c in processes["children"].items()
        ]
        lines.append(f"processes ({processes['url']}): {', '.join(shown)}")
    return "\n".join(lines)


@click.command("status")
@config_option("The gateway's configuration (TOML), as given to `provgw serve`.")
@json_option
def command(config_path: Path, *, as_json: bool) -> None:
    """Show the gateway's progress: events, log, witnesses, anchors, remediation, processes.

    Also when the broker's copy of the CRLs runs out (`provgw broker-config`'s broker.json):
    re-run that and reload the broker before then; and devices revoked here that the broker does
    not deny yet (`provgw broker-acl`).

    Reads the database read-only (it never slows ingest) and, when [metrics] port is set, the
    running gateway's /metrics for its processes. The same figures as `/metrics`
    (deploy/alerts.yml alerts on them).

    Exit code 0: read, and every process of the gateway is ready (or [metrics] port is 0, so
    there is none to ask); 1: the database cannot be read; 3: the gateway's /metrics does not
    answer, or one of its processes is down or not ready yet (LSB: not running).
    """
    try:
        config = load_config(config_path)
    except ProvenanceError as err:
        fail(str(err), hint="pass the configuration `provgw serve --config` runs with")
    with refusals(as_json=as_json):
        health = read_store_health(config.database)
        broker = BrokerConfig.load(config.broker.config_dir)
    processes = _processes(config)
    data = {
        "database": str(config.database),
        "events": health.events,
        "unlogged": health.unlogged,
        "log_entries": health.entries,
        "checkpoints": {
            strength: {"size": newest.size, "at_ms": newest.at_ms}
            for strength, newest in health.newest.items()
        },
        "anchors": health.anchors,
        "remediation": [
            {"campaign": c, "state": s, "devices": n} for c, s, n in health.remediation
        ],
        "processes": processes,
        "broker_crls_valid_until": broker.crl_next_update.isoformat(),
        "revoked_devices": len(health.revoked),
        "revoked_not_denied_at_broker": health.not_denied(broker.denied_devices),
    }
    emit(data, as_json=as_json, text=_text(config, health, processes, broker))
    if not _running(processes):
        sys.exit(EXIT_NOT_RUNNING)
