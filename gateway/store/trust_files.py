"""Load a trust directory from disk into a :class:`~gateway.core.identity.TrustStore`.

Layout (as written by ``provgw-sim pki init``)::

    trust/<mfr>.root.pem            manufacturer root CAs: the trust anchors
    trust/<mfr>.root.crl.pem        CRL by each root (revokes issuing CAs)
    trust/<mfr>.issuing.crl.pem     CRL by each issuing CA (revokes device certificates)

Every ``*.crl.pem`` is a CRL; every other ``*.pem`` is a trust anchor. The core stays pure: this
module only reads bytes and hands them to :meth:`TrustStore.from_pem`.

:class:`TrustFolder` is the folder as a running gateway uses it: read again when its files
change (a current CRL from a manufacturer, a new maker's root), so that neither needs a restart.
"""

from __future__ import annotations

import logging
import stat
import time
from pathlib import Path

from gateway.core.errors import MalformedError, PolicyError
from gateway.core.identity import TrustStore

__all__ = ["TrustFolder", "load_trust_dir"]

_log = logging.getLogger(__name__)

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


#: What :class:`TrustFolder` compares: each ``*.pem`` file's name, size and modification time.
_Stamp = tuple[tuple[str, int, int], ...]


def _stamp(directory: Path) -> _Stamp:
    files = []
    try:
        for path in directory.glob("*.pem"):
            info = path.stat()
            if stat.S_ISREG(info.st_mode):
                files.append((path.name, info.st_size, info.st_mtime_ns))
    except OSError:
        return ()  # unreadable now: loading it says why
    return tuple(sorted(files))


class TrustFolder:
    """A trust folder that is read again when its files change, checked every *every_s*.

    :attr:`store` is the :class:`TrustStore` in force. :meth:`changed` returns a new one once
    the folder's files differ (name, size, modification time) from those it was read from; a
    folder that then fails to load (a half-copied file, a CRL that is not one) keeps the store
    in force, and says so once per state of the folder, at ERROR.
    """

    def __init__(self, path: Path | str, *, every_s: float = 1.0) -> None:
        self.path = Path(path)
        self.every_s = every_s
        self._stamp = _stamp(self.path)
        self.store = load_trust_dir(self.path)
        self._refused: _Stamp | None = None
        self._next = time.monotonic() + every_s

    def changed(self) -> TrustStore | None:
        """Return the folder's new store if its files changed and it loads; else ``None``."""
        now = time.monotonic()
        if now < self._next:
            return None
        self._next = now + self.every_s
        stamp = _stamp(self.path)
        if stamp in (self._stamp, self._refused):
            return None
        try:
            store = load_trust_dir(self.path)
        except (MalformedError, PolicyError) as err:
            self._refused = stamp
            _log.error(
                "the trust folder %s changed but cannot be loaded (%s); still verifying with "
                "the folder as it was before",
                self.path,
                err,
            )
            return None
        self._stamp, self._refused, self.store = stamp, None, store
        _log.info("the trust folder %s changed: read again (%d files)", self.path, len(stamp))
        return store
