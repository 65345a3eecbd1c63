"""Writing an export file: beside its name first, durably, then renamed into place.

So a reader never finds half a file under the final name, whatever stopped the writer: the
FHIR exports (``provgw device fhir``, ``fhir-bulk``) and the audit bundle (``provgw audit
export``) all write this way.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

__all__ = ["write_partial", "write_replacing"]


def write_partial(path: Path, chunks: Iterable[bytes]) -> Path:
    """Write *chunks* to ``PATH.partial`` and fsync it; return that path (removed if it fails).

    The caller renames it into place (:meth:`Path.replace`) once everything that belongs
    together is written.
    """
    partial = path.with_name(path.name + ".partial")
    try:
        with partial.open("wb") as out:
            out.writelines(chunks)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return partial


def write_replacing(path: Path, data: bytes) -> None:
    """Write *data* to *path*, complete or not at all."""
    write_partial(path, [data]).replace(path)
