"""``provgw audit export | verify``: a device's history as a bundle anyone can check offline.

``export`` (the site's side: it needs the database and the log key) writes one device's audit
bundle (:mod:`gateway.views.audit`): its signed events, their salts and receipts, erasures, the
site's revocation, and the proofs that tie them to one log. ``verify`` (the receiver's side: a
manufacturer, a repair depot, an auditor) checks it with nothing but the manufacturers' roots,
the gateway's public key and, optionally, the witnesses' keys.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import click

from gateway.core.errors import ProvenanceError
from gateway.ledger.keys import load_verifier
from gateway.store.recalls import load_recall_trust
from gateway.views.audit import MAX_AUDIT_SIZE, AuditReport, export_audit, verify_audit
from gateway.views.cli._log import key_option, load_log_key, witness_policy, witness_vkey_option
from gateway.views.cli._output import (
    db_option,
    emit,
    fail,
    json_option,
    load_trust,
    long_work_progress,
    open_existing_db,
    refusals,
    trust_option,
)

__all__ = ["group"]


@click.group("audit")
def group() -> None:
    """Give a device's history with its proofs to another party, and check one given to you."""


@group.command("export")
@click.argument("device_id")
@db_option
@key_option
@click.option(
    "-o",
    "--out",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Where to write the audit bundle (a ZIP file).",
)
@json_option
def export_command(
    device_id: str, db_path: Path, key_path: Path, out: Path, *, as_json: bool
) -> None:
    """Write DEVICE_ID's audit bundle: its history with everything needed to check it offline.

    The bundle (a ZIP) holds each event's exact signed bytes, its salt and RFC 9942 receipt
    (an inclusion proof to a checkpoint signed with the log key, with the witnesses'
    cosignatures), the device's certificate chain, every erasure and the site's revocation of
    the device as logged, the urgent lane's records of it (patch offered, installed, failed,
    unreachable) with the notices of the recalls they name, and consistency proofs between the
    receipts' checkpoints. The receiver checks it with `provgw audit verify`. It names the
    device's serial number: give it only to whom the site chooses. Events not under a
    checkpoint yet go in without a receipt (run it again after the next checkpoint, every few
    seconds).

    Exit code 0: written; 1: the gateway never enrolled the device, or --key is not the key
    that signed the log's checkpoints.
    """
    key = load_log_key(key_path)
    with refusals(as_json=as_json), open_existing_db(db_path) as db:
        exported = export_audit(
            db,
            key,
            device_id,
            now=datetime.now(UTC),
            progress=long_work_progress("exported", "events", as_json=as_json),
        )
    if exported is None:
        fail(
            f"the gateway never enrolled a device {device_id!r} in {db_path}: there is no "
            "signed history to export",
            hint="check the id with `provgw device show ID`",
            code=1,
        )
    exported.write(out)
    pending = (
        f"; {exported.pending:,} not under a checkpoint yet (no receipt: export again after "
        "the next checkpoint)"
        if exported.pending
        else ""
    )
    emit(
        {
            "ok": True,
            "device": device_id,
            "out": str(out),
            "bytes": len(exported.data),
            "events": exported.events,
            "erased": exported.erased,
            "pending": exported.pending,
            "revoked_by_site": exported.revoked,
        },
        as_json=as_json,
        text=f"wrote {out}: audit bundle of device {device_id}, {exported.events:,} events "
        f"and {exported.erased:,} erased ({len(exported.data):,} bytes){pending}\n"
        f"check it with: provgw audit verify {out} --trust DIR --key GATEWAY_VKEY",
    )


@group.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@trust_option(
    "Directory of the manufacturers' root certificates (*.pem) and CRLs (*.crl.pem).",
    required=True,
)
@click.option(
    "--key",
    "key_ref",
    required=True,
    help="The gateway's public log key (vkey, or a file holding it), from its operator.",
)
@witness_vkey_option
@click.option(
    "--quorum",
    type=click.IntRange(min=1),
    help="Witnesses that must have cosigned for an event to count as witnessed (default 1).",
)
@click.option(
    "--recall-trust",
    "recall_trust_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The manufacturers' recall keys (recall/<vendor>/*.pem, recall-policy.json): check "
    "the recall notices in the bundle and whether each patch report counts for its recall.",
)
@click.option(
    "--require-witnessed",
    is_flag=True,
    help="Exit 1 unless every event is witnessed (needs --witness-vkey).",
)
@json_option
def verify_command(  # noqa: PLR0913 -- one parameter per command-line option
    *,
    file: Path,
    trust_dir: Path,
    key_ref: str,
    witness_vkeys: tuple[str, ...],
    quorum: int | None,
    recall_trust_dir: Path | None,
    require_witnessed: bool,
    as_json: bool,
) -> None:
    """Check FILE, a device's audit bundle, with nothing but public keys.

    Each event is checked as the gateway checked it when it arrived: the device's signature,
    its certificate chain to a root in --trust (and its key rotations), the event's schema,
    device and time, and that it was not received after a CRL's revocation date. Each event's
    commitment (from its salt and bytes) must be in the log under a checkpoint signed by --key,
    witnessed when --quorum of the --witness-vkey keys cosigned it; erasures and the site's
    revocation likewise; the urgent lane's records of the device against its reports (with
    --recall-trust, also the recall notices and whether each report counts for its recall);
    and all checkpoints must be one log (consistency proofs). Sequence numbers missing from
    the bundle are listed; the certificate's standing now is shown.

    Exit code 0: every record verified; 1: a record did not (each is named), or the bundle
    cannot be read.
    """
    trust = load_trust(trust_dir)
    try:
        key = load_verifier(key_ref)
    except (OSError, ProvenanceError, ValueError, UnicodeDecodeError) as err:
        fail(f"cannot read the gateway public key {key_ref!r}: {err}")
    witnesses, required = witness_policy(witness_vkeys, None, quorum)
    recall_trust = None
    if recall_trust_dir is not None:
        try:
            recall_trust = load_recall_trust(recall_trust_dir)
        except ProvenanceError as err:
            fail(str(err), hint="point --recall-trust at the folder `provgw recall import` uses")
    if require_witnessed and not witnesses:
        fail("--require-witnessed needs the witnesses' keys", hint="add --witness-vkey VKEY")
    if file.stat().st_size > MAX_AUDIT_SIZE:
        fail(
            f"{file} is {file.stat().st_size:,} bytes; audit bundles over {MAX_AUDIT_SIZE:,} "
            "are not read",
            code=1,
        )
    with refusals(as_json=as_json):
        report = verify_audit(
            file.read_bytes(),
            trust=trust,
            key=key,
            witnesses=witnesses,
            quorum=required,
            recall_trust=recall_trust,
            now=datetime.now(UTC),
            progress=long_work_progress("verified", "events", as_json=as_json),
        )
    below = report.events - report.witnessed if require_witnessed else 0
    facts = report.to_json()
    facts["file"] = str(file)
    facts["require_witnessed"] = require_witnessed
    emit(facts, as_json=as_json, text=_text(file, report, below))
    if not report.ok or below:
        raise SystemExit(1)


def _ranges(gaps: list[tuple[int, int]]) -> str:
    shown = [str(a) if a == b else f"{a}-{b}" for a, b in gaps[:10]]
    more = f" and {len(gaps) - 10} more" if len(gaps) > 10 else ""
    return ", ".join(shown) + more


def _text(file: Path, report: AuditReport, below: int) -> str:
    verdict = "VERIFIED" if report.ok and not below else "NOT VERIFIED"
    head = f"{verdict} {file}: device {report.device_id} ({report.manufacturer})"
    events = (
        f"{report.events:,} verified: {report.witnessed:,} witnessed, {report.logged:,} "
        f"logged, {report.pending:,} not under a checkpoint yet"
    )
    if report.anchors_claimed:
        events += f"; {report.anchors_claimed:,} receipts claim a chain anchor (look it up)"
    forked = any(p.what == "consistency" for p in report.problems)
    log = (
        f"{report.checkpoints} checkpoint(s) of {report.origin}"
        f"{'' if forked else ', one consistent log'}, up to {report.tree_size or 0:,} entries"
    )
    lines = [
        f"{head}, exported {report.exported}",
        f"  events       {events}",
        f"  erased       {report.erased:,}, each with its logged erasure",
        f"  log          {log}",
    ]
    if report.revoked_by_site is not None:
        lines.append(f"  revoked      by the site (logged): {report.revoked_by_site}")
    if report.gaps:
        lines.append(
            f"  gaps         seq {_ranges(report.gaps)} not in the bundle: events lost, "
            "quarantined or withheld, unless the device skips numbers (seq is monotonic, "
            "not always contiguous)"
        )
    lines += _urgent_lines(report)
    standing = report.standing
    if standing is not None and standing.refusal is None and standing.valid_until is not None:
        lines.append(
            f"  certificate  accepted by the trust folder until {standing.valid_until:%Y-%m-%d}"
        )
    elif standing is not None and standing.refusal is not None:
        refusal = standing.refusal
        lines.append(
            f"  certificate  REFUSED by the trust folder now ({refusal.reason}): {refusal}"
        )
    if below:
        lines.append(f"  {below:,} event(s) not witnessed, and --require-witnessed was given")
    for problem in report.problems:
        seq = f" (seq {problem.seq})" if problem.seq is not None else ""
        lines.append(
            f"  PROBLEM {problem.what} {problem.ref}{seq}: {problem.detail} [{problem.reason}]"
        )
    return "\n".join(lines)


def _utc(ms: int) -> str:
    return f"{datetime.fromtimestamp(ms / 1000, tz=UTC):%Y-%m-%d %H:%M:%S} UTC"


def _urgent_lines(report: AuditReport) -> list[str]:
    """Return the lines of the verified recall notices and the urgent lane's records."""
    lines = []
    for recall in report.recalls:
        if recall["accepted_ms"] is None:
            taken = "not recorded as taken in"
        else:
            pending = "" if recall["in_log"] else " (not under a checkpoint yet)"
            taken = f"taken in {_utc(recall['accepted_ms'])}{pending}"
        lines.append(
            f"  recall       {recall['recall_id']} revision {recall['revision']} "
            f"({recall['status']}): the manufacturers' signatures verify; {taken}"
        )
    for record in report.remediation:
        campaign = record["recall_id"] or "urgent manifest"
        where = "in the log" if record["in_log"] else "not under a checkpoint yet"
        lines.append(
            f"  patch        {campaign}: {record['state']} {_utc(record['at_ms'])}, {where}; "
            f"claim {record['checked']}"
        )
    return lines
