"""How ``provgw serve`` starts its children: both ends of one command line.

The supervisor (:class:`~gateway.service.workers.Supervisor`) starts the ingest processes, the
ledger and the urgent lane with :func:`start`::

    python -P -m gateway.service.launch ROLE INDEX CONFIG PARENT_PID FLAGS_FD STOP READY

passing one descriptor, the :class:`~gateway.service.child.SharedFlags` block (*STOP* and
*READY* are the child's two flags in it); :func:`main` is the child's end. A child imports only
the module of its role.

Not multiprocessing's ``spawn``, for two costs it has that nothing here needs:

- it starts multiprocessing's resource tracker, a process of its own (6.6 MB PSS, measured by
  ``bench/bench_ingest.py``), to remove the named semaphores and shared memory that dead
  children leave behind; the gateway makes none (its flags are a memory file, gone with the
  last process that maps it);
- a spawned child first runs its parent's main module again: for ``provgw`` the console
  script, which loads the command line (click and every command) into each child
  (2.8 MB more RSS each, measured with ``resource.getrusage``).

``-P``: the working directory is not put on the child's module path (a ``gateway`` folder where
``provgw serve`` was started must not shadow the installed package).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gateway.service import child

__all__ = ["INGEST", "LEDGER", "URGENT", "main", "start"]

#: The roles a child can have (its first argument).
INGEST = "ingest"
LEDGER = "ledger"
URGENT = "urgent"


def start(  # noqa: PLR0913 - the child's arguments, each one a field of its command line
    role: str,
    *,
    index: int,
    config_path: Path,
    parent_pid: int,
    flags: child.SharedFlags,
    stop: int,
    ready: int,
) -> subprocess.Popen[bytes]:
    """Start child *role* (ingest process *index*) of the gateway *config_path*; see the module."""
    args = [role, index, config_path, parent_pid, flags.fd, stop, ready]
    return subprocess.Popen(  # noqa: S603 - this interpreter, fixed arguments
        [sys.executable, "-P", "-m", __name__, *map(str, args)], pass_fds=(flags.fd,)
    )


def main(argv: list[str]) -> None:
    """Run the child's end: map the flags, import the role's module, run it."""
    role, index, config_path, parent, fd, stop_at, ready_at = argv
    flags = child.SharedFlags.attach(int(fd))
    stop, ready, parent_pid = flags[int(stop_at)], flags[int(ready_at)], int(parent)
    # Each import only here: a child loads its own role's modules, not the others'.
    if role == INGEST:
        from gateway.service.receiver import run_worker  # noqa: PLC0415

        run_worker(config_path, int(index), parent_pid, stop, ready)
    elif role == LEDGER:
        from gateway.service.ledger_service import run_ledger  # noqa: PLC0415

        run_ledger(config_path, parent_pid, stop, ready)
    elif role == URGENT:
        from gateway.service.urgent import run_urgent  # noqa: PLC0415

        run_urgent(config_path, parent_pid, stop, ready)
    else:
        sys.exit(f"gateway.service.launch: unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
