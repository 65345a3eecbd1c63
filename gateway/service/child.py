"""What every child process of ``provgw serve`` does first: name itself, log, take its signals.

The supervisor spawns the ingest process (the receiver, or the ``shared`` workers), the ledger
and the urgent lane; the receiver forks the verifiers. Each calls :func:`enter` as its first
step, so that

- ``ps``, ``top`` and ``pgrep -f`` show what it is and which gateway it belongs to
  (``provgw verifier-0 (/etc/provgw/gateway.toml)``), not multiprocessing's
  ``python -c "from multiprocessing.spawn import spawn_main; ..."`` -- an operator looking at a busy
  core, or reading an out-of-memory report, can tell a verifier from the ledger;
- its log lines say who wrote them, with a time, on stderr;
- ``kill -USR1 PID`` prints every thread's stack (how to see where a stuck process waits);
- Ctrl-C, which reaches the whole process group, is left to the supervisor, which decides when
  each child stops; SIGTERM calls *on_sigterm* (or is ignored: a verifier stops when its
  receiver says so, after its last commit is acknowledged).
"""

from __future__ import annotations

import faulthandler
import logging
import signal
from collections.abc import Callable
from pathlib import Path

from setproctitle import setproctitle

__all__ = ["enter", "title"]


def title(name: str, config_path: str | Path) -> str:
    """Return the process title of child *name* of the gateway configured by *config_path*.

    Its first 15 characters are also the kernel's name for the process (``/proc/PID/comm``:
    ``top``'s default column): ``provgw`` and the role come first. The path is made absolute,
    so that two gateways started from different folders with ``--config gateway.toml`` differ.
    """
    return f"provgw {name} ({Path(config_path).absolute()})"


def enter(
    name: str, config_path: str | Path, on_sigterm: Callable[[], object] | None = None
) -> None:
    """Set up child process *name*: title, log format, SIGUSR1 stack dumps, SIGINT and SIGTERM."""
    setproctitle(title(name, config_path))
    # A forked verifier inherits its receiver's handler ("receiver" lines): replaced, not added.
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s {name} %(levelname)s %(name)s %(message)s",
        force=True,
    )
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if on_sigterm is None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: on_sigterm())
