"""The supervisor's side channel to its children: names, log lines, signals, stop and ready flags.

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
  each child stops; SIGTERM makes :func:`stopping` true (a verifier ignores it: it stops when its
  receiver says so, after its last commit is acknowledged).

The supervisor asks its children to stop, and they tell it they are ready, through a
:class:`Flag` each, not a ``multiprocessing.Event``. An Event is a lock and a condition shared by
every process, and both break when a process dies or is signalled at the wrong moment (measured:
``tests/service/test_child.py``): a child killed (``kill -9``, the kernel's OOM killer) while it
waits on the Event leaves the next ``set()`` waiting for that child to wake, forever; and a child
whose SIGTERM handler sets the Event while its own main thread waits on it deadlocks, holding the
lock every other process then waits for. So ``provgw serve`` could not stop after a child had been
killed, nor when SIGTERM reached its whole process group (systemd's default ``KillMode``).
"""

from __future__ import annotations

import ctypes
import faulthandler
import logging
import os
import signal
import time
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from pathlib import Path
from types import FrameType

from setproctitle import setproctitle

__all__ = ["ChildStatus", "Flag", "enter", "stopping", "title"]


class Flag:
    """One shared bit in memory, no lock: set, clear and read from any process, in any state.

    A single byte is written and read atomically, so a process that dies mid-call leaves nothing
    held; :meth:`wait` polls instead of sleeping on a condition.
    """

    def __init__(self, ctx: BaseContext) -> None:
        self._value = ctx.RawValue(ctypes.c_bool, False)  # noqa: FBT003 - ctypes' signature

    def set(self) -> None:
        """Raise the flag."""
        self._value.value = True

    def clear(self) -> None:
        """Lower the flag."""
        self._value.value = False

    def is_set(self) -> bool:
        """Whether the flag is raised."""
        return bool(self._value.value)

    def wait(self, timeout: float, poll: float = 0.02) -> bool:
        """Wait up to *timeout* seconds for the flag; return whether it is raised."""
        deadline = time.monotonic() + timeout
        while not self._value.value:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(poll, left))
        return True


@dataclass(frozen=True)
class ChildStatus:
    """One child process as the supervisor sees it (``provgw_child_*`` metrics)."""

    role: str  # the name it gives itself: receiver, worker-N, ledger, urgent
    up: bool
    ready: bool
    restarts: int


class _Received:
    """Set by this process's SIGTERM handler: a plain attribute, safe to write from a handler."""

    sigterm = False


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    del signum, frame
    _Received.sigterm = True


def title(name: str, config_path: str | Path) -> str:
    """Return the process title of child *name* of the gateway configured by *config_path*.

    Its first 15 characters are also the kernel's name for the process (``/proc/PID/comm``:
    ``top``'s default column): ``provgw`` and the role come first. The path is made absolute,
    so that two gateways started from different folders with ``--config gateway.toml`` differ.
    """
    return f"provgw {name} ({Path(config_path).absolute()})"


def enter(name: str, config_path: str | Path, *, sigterm_stops: bool = True) -> None:
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
    signal.signal(signal.SIGTERM, _on_sigterm if sigterm_stops else signal.SIG_IGN)


def stopping(stop: Flag, parent_pid: int) -> bool:
    """Whether this child should finish what it holds and exit.

    True once the supervisor raised *stop*, this process received SIGTERM, or its parent is no
    longer *parent_pid* (``provgw serve`` is gone, even by ``kill -9``: a child left behind would
    contend with a restarted gateway for its MQTT session).
    """
    return _Received.sigterm or stop.is_set() or os.getppid() != parent_pid
