"""``provgw recall status RECALL_ID``: where each affected device's remediation stands.

Added to the ``provgw recall`` group (:mod:`gateway.views.cli._recall`). Thin: the states come
from :class:`gateway.service.remediation.RemediationTracker`, which the urgent lane drives from
the devices' own signed ``firmware_update`` reports.
"""

from __future__ import annotations

from pathlib import Path

import click

from gateway.core.errors import ProvenanceError
from gateway.service.remediation import RemediationTracker
from gateway.store.db import Database
from gateway.views.cli._output import emit, fail, json_option

__all__ = ["command"]

_LISTED = 50  # devices listed in text output; --json lists all


@click.command("status")
@click.argument("recall_id")
@click.option(
    "--db",
    "db_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The gateway's SQLite database file.",
)
@json_option
def command(recall_id: str, db_path: Path, *, as_json: bool) -> None:
    """Show the remediation of recall RECALL_ID: each affected device and its state.

    States: pending (not offered yet), offered (waiting for the device's report), installed,
    failed (the device reported a failure or refused the firmware), unreachable (no report after
    every retry). RECALL_ID may also be manifest:DIGEST (64 hex digits): the offers of an urgent
    manifest that no recall names. Exit code 0 when the recall is held (or the manifest was
    offered), 1 when it is not.
    """
    try:
        with Database(db_path) as db:
            status = RemediationTracker(db).status(recall_id)
    except ProvenanceError as err:
        fail(str(err), code=1)
    if status is None:
        fail(f"no recall {recall_id!r} in {db_path}", hint="see `provgw recall list`", code=1)
    counts = ", ".join(f"{n} {state}" for state, n in sorted(status.counts.items()))
    what = (
        f"urgent manifest {status.recall.get('version', '(not kept)')} "
        f"{status.recall['manifest'][:16]}.."
        if "manifest" in status.recall
        else f"recall {recall_id} ({status.recall['status']}, class {status.recall['class']})"
    )
    head = f"{what}: {sum(status.counts.values())} device(s): {counts or 'none tracked'}"
    lines = [head]
    for row in status.devices[:_LISTED]:
        detail = f"  {row.detail}" if row.detail else ""
        lines.append(f"  {row.device_id:32} {row.state:11} attempts {row.attempts}{detail}")
    if len(status.devices) > _LISTED:
        lines.append(f"  ... {len(status.devices) - _LISTED} more (use --json for all)")
    emit(status.to_json(), as_json=as_json, text="\n".join(lines))
