"""Load a trust directory from disk into a :class:`~gateway.core.identity.TrustStore`.

Layout (as written by ``provgw-sim pki init``)::

    trust/<mfr>.root.pem            manufacturer root CAs: the trust anchors
    trust/<mfr>.root.crl.pem        CRL by each root (revokes issuing CAs)
    trust/<mfr>.issuing.crl.pem     CRL by each issuing CA (revokes device certificates)

Every ``*.crl.pem`` is a CRL; every other ``*.pem`` is a trust anchor. The core stays pure: this
module only reads bytes and hands them to :meth:`TrustStore.from_pem`.
"""

from __future__ import annotations

from pathlib import Path

from gateway.core.errors import MalformedError, PolicyError
from gateway.core.identity import TrustStore

__all__ = ["load_trust_dir"]

_CRL_SUFFIX = ".crl.pem"


def load_trust_dir(path: Path | str) -> TrustStore:
    """Read every root certificate and CRL in the directory *path*.

    Raises:
        MalformedError: the directory cannot be read, holds no root certificate, or a file is
            not a PEM certificate or CRL (the message names the file).
        PolicyError: a root is not a self-signed CA certificate.

    """
    directory = Path(path)
    if not directory.is_dir():
        raise MalformedError(
            f"The trust directory {directory} is not a directory; create it with "
            "`provgw-sim pki init` or point to the right place.",
            reason="trust-dir-missing",
        )
    try:
        files = sorted(p for p in directory.glob("*.pem") if p.is_file())
        roots = [(p, p.read_bytes()) for p in files if not p.name.endswith(_CRL_SUFFIX)]
        crls = [(p, p.read_bytes()) for p in files if p.name.endswith(_CRL_SUFFIX)]
    except OSError as exc:
        raise MalformedError(
            f"The trust directory {directory} cannot be read: {exc.strerror or exc}.",
            reason="trust-dir-unreadable",
        ) from exc
    if not roots:
        raise MalformedError(
            f"The trust directory {directory} holds no root certificate (*.pem); without one no "
            "device can be trusted.",
            reason="trust-dir-empty",
        )
    # Parse file by file first, so that an error names the file that is wrong.
    for file, blob in roots:
        _named(file, [blob], [])
    for file, blob in crls:
        _named(file, [], [blob])
    return TrustStore.from_pem([b for _, b in roots], [b for _, b in crls])


def _named(file: Path, roots: list[bytes], crls: list[bytes]) -> None:
    try:
        TrustStore.from_pem(roots, crls)
    except (MalformedError, PolicyError) as exc:
        raise type(exc)(f"{file}: {exc}", reason=exc.reason) from exc
