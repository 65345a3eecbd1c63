"""``provgw sbom``: check a CycloneDX SBOM the way the gateway checks a firmware manifest's SBOM."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from gateway.core.errors import VerificationError
from gateway.core.sbom import SbomReport, check_sbom, sbom_digest
from gateway.views.cli._output import emit, json_option


@click.group("sbom")
def group() -> None:
    """Check software bills of materials (CycloneDX 1.2-1.6 JSON; XML and SPDX are refused)."""


@group.command("check")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--no-fda",
    "no_fda",
    is_flag=True,
    help="Report the FDA end-of-support field but do not fail the SBOM when it is missing.",
)
@json_option
def check(file: Path, *, no_fda: bool, as_json: bool) -> None:
    """Check FILE, a CycloneDX 1.2-1.6 JSON SBOM.

    Checks the CycloneDX schema, the NTIA minimum elements (supplier, name, version, unique
    identifier, dependency relationships, author, timestamp), the FDA end-of-support field
    (component property cdx:lifecycle:milestone:endOfSupport), duplicate bom-refs, dependency
    references that point nowhere, and purl validity.

    Exit code 0: the SBOM passes; 1: it fails, or it is not a CycloneDX JSON SBOM; 2: usage error.
    """
    data = file.read_bytes()
    digest = sbom_digest(data).hex()
    try:
        report = check_sbom(data, require_fda=not no_fda)
    except VerificationError as err:
        emit(
            {
                "ok": False,
                "file": str(file),
                "sha256": digest,
                "reason": err.reason,
                "error": str(err),
            },
            as_json=as_json,
            text=f"FAIL {file}: {err}",
        )
        sys.exit(1)
    emit(
        {"file": str(file), "sha256": digest, **report.to_json()},
        as_json=as_json,
        text=_text(file, digest, report),
    )
    sys.exit(0 if report.ok else 1)


def _text(file: Path, digest: str, report: SbomReport) -> str:
    lines = [
        (
            f"{file}: CycloneDX {report.spec_version}, {report.components} components, "
            f"sha256 {digest[:16]}..."
        ),
        (
            f"  {'ok  ' if not report.schema_errors else 'FAIL'}  schema "
            f"(CycloneDX {report.spec_version} JSON schema)"
        ),
    ]
    lines.extend(f"          {error}" for error in report.schema_errors)
    for element in report.elements:
        mark = "ok  " if element.ok else "FAIL" if element.required else "warn"
        if element.scope == "component" and element.ok:
            where = f"present in all {report.components} components"
        elif element.scope == "component":
            where = f"missing in {element.missing} of {report.components} components"
        else:
            where = "missing" if element.missing else "present"
        lines.append(f"  {mark}  {element.source} {element.element}: {where} ({element.meaning})")
    lines.extend(f"  FAIL  {problem}" for problem in report.problems)
    verdict = "PASS" if report.ok else "FAIL"
    lines.append(f"verdict: {verdict}")
    return "\n".join(lines)
