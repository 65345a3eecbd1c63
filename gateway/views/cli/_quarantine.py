"""``provgw quarantine``: what the gateway refused, and verifying it again once the cause is fixed.

``list`` and ``show`` read the database; ``retry`` runs :func:`gateway.service.quarantine.
retry_quarantined` with the trust folder and database of the gateway's configuration, so that
a retry judges with exactly what ``provgw serve`` uses.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path

import click

from gateway.core.errors import ProvenanceError
from gateway.service.config import load_config
from gateway.service.quarantine import REFUSED, retry_quarantined
from gateway.store.db import Database
from gateway.store.events import EventStore, QuarantinedRow
from gateway.store.trust_files import load_trust_dir
from gateway.views.cli._output import (
    config_option,
    db_option,
    emit,
    fail,
    json_option,
    long_work_progress,
    open_existing_db,
    refusals,
)

__all__ = ["group"]

_LISTED = 50  # rows listed by default
_DETAILS = 20  # still-refused rows a retry prints in text (--json has them all)


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {n:,}" for reason, n in sorted(counts.items())) or "none"


@click.group("quarantine")
def group() -> None:
    """See the messages the gateway refused, and verify them again once the cause is fixed."""


@group.command("list")
@db_option
@click.option("--reason", help="Only this reason token (e.g. untrusted-issuer).")
@click.option("--device", help="Only messages on this device's topic (the device they claim).")
@click.option("--released", is_flag=True, help="The messages a retry stored since, not the open.")
@click.option(
    "--limit", type=click.IntRange(1, 100_000), default=_LISTED, show_default=True, help="Rows."
)
@json_option
def list_command(  # noqa: PLR0913 - one per option
    db_path: Path,
    reason: str | None,
    device: str | None,
    limit: int,
    *,
    released: bool,
    as_json: bool,
) -> None:
    """List quarantined messages, newest first: reason, time, topic, size and SHA-256.

    The counts are per reason of the first refusal. Exit code 0.
    """
    with open_existing_db(db_path) as db:
        events = EventStore(db)
        rows = events.quarantine_rows(
            reason=reason, device_hint=device, limit=limit, released=released
        )
        counts = events.quarantine_counts(released=released)
        other = sum(events.quarantine_counts(released=not released).values())
        not_kept = events.quarantine_overflow()
    what = "released" if released else "open"
    lines = [f"{sum(counts.values()):,} {what} quarantined message(s): {_counts(counts)}"]
    if not released and other:
        lines[0] += f" ({other:,} released: --released lists them)"
    lines += [
        f"  + {o.messages:,} {o.reason} from {o.device_hint or '(no device)'} in the hour from"
        f" {_when(o.hour_ms)}: counted, not kept (over [ingest] quarantine_per_device_hour)"
        for o in not_kept[:_DETAILS]
    ]
    lines += [_line(row) for row in rows]
    if len(rows) == limit:
        lines.append("  ... and maybe older ones: raise --limit, or narrow with --reason/--device")
    emit(
        {
            "ok": True,
            "released": released,
            "counts": dict(sorted(counts.items())),
            "rows": [row.summary() for row in rows],
            "not_kept": [o.to_json() for o in not_kept],
        },
        as_json=as_json,
        text="\n".join(lines),
    )


def _line(row: QuarantinedRow) -> str:
    head = f"  #{row.id:<8} {_when(row.received_ms)}  {row.reason:24} {row.topic}"
    if row.event_id is not None:
        head += f"  -> event {row.event_id}"
    return f"{head}\n            {row.detail}"


@group.command("show")
@click.argument("row_id", metavar="ID", type=int)
@db_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the message's bytes here (for `provgw message verify`, or the device's maker).",
)
@json_option
def show_command(row_id: int, db_path: Path, out: Path | None, *, as_json: bool) -> None:
    """Show quarantined message ID: why it was refused, and its bytes (--out, or in --json).

    Exit code 0; 1 if there is no such row.
    """
    with open_existing_db(db_path) as db:
        found = EventStore(db).quarantined([row_id])
    row = found[0] if found else None
    if row is None:
        fail(
            f"no quarantined message {row_id} in {db_path}",
            hint="see `provgw quarantine list`",
            code=1,
        )
    if out is not None:
        out.write_bytes(row.raw)
    summary = row.summary()
    lines = [
        f"quarantined message {row.id}, received {_when(row.received_ms)} on {row.topic}",
        f"  refused: {row.reason}: {row.detail}",
        f"  {summary['bytes']:,} bytes, SHA-256 {summary['sha256']}",
    ]
    if row.event_id is not None:
        lines.append(f"  released {_when(row.released_ms)}: stored as event {row.event_id}")
    if out is not None:
        lines.append(f"  bytes written to {out}")
    emit(
        {"ok": True, **summary, "raw_base64": base64.b64encode(row.raw).decode(), "out": out},
        as_json=as_json,
        text="\n".join(lines),
    )


@group.command("retry")
@config_option("The gateway's configuration: its database and trust folder are used.")
@click.option("--reason", help="Only the messages first refused for this reason token.")
@click.option("--device", help="Only messages on this device's topic.")
@click.option("--id", "ids", type=int, multiple=True, help="Only this row (repeatable).")
@click.option("--dry-run", is_flag=True, help="Run every check, write nothing, say what would be.")
@json_option
def retry_command(  # noqa: PLR0913 - one per option
    config_path: Path,
    reason: str | None,
    device: str | None,
    ids: tuple[int, ...],
    *,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Verify open quarantined messages again, as of when they arrived; store those that pass.

    For a cause fixed since: a manufacturer CA added to the trust folder, a current CRL, a
    device whose first message was refused. A message that now verifies becomes an event (the
    transparency log takes it like any other) and its row is marked released; one that still
    fails stays, with the reason it fails for now. Safe while `provgw serve` runs (which reads
    a changed trust folder again by itself).

    Exit code 0: every message retried was stored (or there was none to retry); 1: some are
    still refused.
    """
    try:
        config = load_config(config_path)
    except ProvenanceError as err:
        fail(str(err), hint="pass the configuration `provgw serve --config` runs with")
    if not config.database.exists():
        fail(
            f"there is no gateway database at {config.database}",
            hint="check the [store] path in the configuration",
        )

    progress = long_work_progress("retried", as_json=as_json)

    with refusals(as_json=as_json):
        trust = load_trust_dir(config.trust_dir)
        with Database(
            config.database, durable_against_power_loss=config.durable_against_power_loss
        ) as db:
            report = retry_quarantined(
                db, trust, ids=ids, reason=reason, device=device, dry_run=dry_run, progress=progress
            )
    data = report.to_json()
    would = "would be " if dry_run else ""
    lines = [
        f"{data['retried']:,} quarantined message(s) retried"
        + (" (dry run: nothing written)" if dry_run else "")
        + f": {data['stored']:,} {would}stored, {data['already_stored']:,} already stored"
        + f" ({would}released), {data['still_refused']:,} still refused"
        + (f" ({_counts(data['refused_by_reason'])})" if data["still_refused"] else "")
    ]
    refused = [r for r in report.rows if r.outcome == REFUSED]
    lines += [f"  #{r.id}: {r.reason}: {r.detail}" for r in refused[:_DETAILS]]
    if len(refused) > _DETAILS:
        lines.append(f"  ... {len(refused) - _DETAILS:,} more (--json lists every row)")
    emit(data, as_json=as_json, text="\n".join(lines))
    if not data["ok"]:
        raise SystemExit(1)
