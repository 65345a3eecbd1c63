"""The supervisor's side channel to its children: names, log lines, signals, stop and ready flags.

The supervisor starts the ingest process (the receiver, or the ``shared`` workers), the ledger
and the urgent lane (:mod:`gateway.service.launch`); the receiver forks the verifiers. Each calls
:func:`enter` as its first step, so that

- ``ps``, ``top`` and ``pgrep -f`` show what it is and which gateway it belongs to
  (``provgw verifier-0 (/etc/provgw/gateway.toml)``), not ``python -m gateway.service.launch
  ...`` -- an operator looking at a busy core, or reading an out-of-memory report, can tell a
  verifier from the ledger;
- its log lines say who wrote them, with a time, on stderr;
- ``kill -USR1 PID`` prints every thread's stack (how to see where a stuck process waits);
- Ctrl-C, which reaches the whole process group, is left to the supervisor, which decides when
  each child stops; SIGTERM makes :func:`stopping` true (a verifier ignores it: it stops when its
  receiver says so, after its last commit is acknowledged).

The supervisor asks its children to stop, and they tell it they are ready, through a
:class:`Flag` each (in one :class:`SharedFlags` block), not a ``multiprocessing.Event``. An
Event is a lock and a condition shared by every process, and both break when a process dies or
is signalled at the wrong moment: a child killed (``kill -9``, the kernel's OOM killer) while it
waits on the Event leaves the next ``set()`` waiting for that child to wake, forever; and a
child whose SIGTERM handler sets the Event while its own main thread waits on it deadlocks,
holding the lock every other process then waits for. So ``provgw serve`` could not stop after a
child had been killed, nor when SIGTERM reached its whole process group (systemd's default
``KillMode``). Both hangs were reproduced before the change, by ``tests/service/test_child.py``
and by the ``every-process`` case of ``tests/service/test_crash_restart.py``.
"""

from __future__ import annotations

import faulthandler
import logging
import mmap
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

__all__ = [
    "LEDGER",
    "SUPERVISOR_LOG_FORMAT",
    "URGENT",
    "ChildStatus",
    "Flag",
    "SharedFlags",
    "enter",
    "ingest_role",
    "stopping",
    "title",
]


class Flag:
    """One shared byte in memory, no lock: set, clear and read from any process, in any state.

    A single byte is written and read atomically, so a process that dies mid-call leaves nothing
    held; :meth:`wait` polls instead of sleeping on a condition. Made by :class:`SharedFlags`.
    """

    def __init__(self, byte: memoryview) -> None:
        self._byte = byte

    def set(self) -> None:
        """Raise the flag."""
        self._byte[0] = 1

    def clear(self) -> None:
        """Lower the flag."""
        self._byte[0] = 0

    def is_set(self) -> bool:
        """Whether the flag is raised."""
        return bool(self._byte[0])

    def wait(self, timeout: float, poll: float = 0.02) -> bool:
        """Wait up to *timeout* seconds for the flag; return whether it is raised."""
        deadline = time.monotonic() + timeout
        while not self._byte[0]:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(poll, left))
        return True


class SharedFlags:
    """*count* :class:`Flag` bytes in one block of memory that the supervisor's children share.

    The block is a memory file (``memfd_create(2)``: on no disk, gone with its last user) mapped
    shared. The supervisor makes it; a child it starts gets the descriptor (``pass_fds``,
    :mod:`gateway.service.launch`) and :meth:`attach` maps the same pages.
    """

    def __init__(self, count: int, *, fd: int | None = None) -> None:
        if fd is None:
            fd = os.memfd_create("provgw-flags")  # close-on-exec: passed on only on purpose
            os.ftruncate(fd, count)
        self.fd = fd
        self.count = count
        self._map = mmap.mmap(fd, count)
        view = memoryview(self._map)
        self._flags = [Flag(view[i : i + 1]) for i in range(count)]

    @classmethod
    def attach(cls, fd: int) -> SharedFlags:
        """Map the block the supervisor passed as descriptor *fd* (in a child)."""
        return cls(os.fstat(fd).st_size, fd=fd)

    def __getitem__(self, index: int) -> Flag:
        return self._flags[index]


@dataclass(frozen=True)
class ChildStatus:
    """One child process as the supervisor sees it (``provgw_child_*`` metrics)."""

    role: str  # the name it gives itself: receiver, worker-N, ledger, urgent
    up: bool
    ready: bool
    restarts: int


#: The names the children give themselves (titles, log lines, the ``role`` label of metrics).
LEDGER = "ledger"
URGENT = "urgent"

#: The log line format of ``provgw serve`` itself, and of its start-up checks' child
#: (:mod:`gateway.service.preflight`), whose lines were the supervisor's before it had one.
SUPERVISOR_LOG_FORMAT = "%(asctime)s provgw %(levelname)s %(message)s"


def ingest_role(index: int, *, shared: bool) -> str:
    """Return the name of ingest process *index*: ``receiver``, or ``worker-N`` when shared."""
    return f"worker-{index}" if shared else "receiver"


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
    # Here, not at the top: the supervisor imports this module and needs no title (0.5 MB).
    from setproctitle import setproctitle  # noqa: PLC0415

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
