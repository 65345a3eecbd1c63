"""The receiver forks its verifiers (shared pages) from one thread, each with only its own pipes."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from gateway.service import receiver

_MB = 1024 * 1024


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text(encoding="ascii")
    return [int(p) for p in text.split()]


def _pipe_ends(pid: int, mode: int) -> set[str]:
    """The pipes *pid* holds an end of opened with *mode* (``os.O_RDONLY`` or ``os.O_WRONLY``)."""
    ends = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = str(fd.readlink())
            info = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text(encoding="ascii")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("pipe:"):
            flags = next(line for line in info.splitlines() if line.startswith("flags:"))
            if int(flags.split()[1], 8) & os.O_ACCMODE == mode:
                ends.add(target)
    return ends


def _shared_anonymous_bytes(pid: int) -> int:
    """Anonymous memory (Python's heap) *pid* shares with another process: only a fork does that."""
    shared, anonymous = 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text(encoding="ascii").splitlines():
        head = line.split()
        if "-" in head[0] and not head[0].endswith(":"):  # a mapping's header line
            anonymous = len(head) < 6 or head[5] == "[heap]"  # no path column
        elif anonymous and head[0] in {"Shared_Clean:", "Shared_Dirty:"}:
            shared += int(head[1]) * 1024
    return shared


@pytest.mark.broker
@pytest.mark.timeout(60)
def test_verifiers_share_the_receivers_heap_and_hold_only_their_own_pipe_ends(
    gateway_site, site_broker, serve_gateway
):
    gateway = serve_gateway(gateway_site, site_broker, workers=2)
    (pid,) = gateway.status["worker_pids"]
    verifiers = _children(pid)
    assert len(verifiers) == 2
    for verifier in verifiers:
        # Forked after the receiver loaded the verifier's modules: their pages are shared, not
        # one private copy per verifier (a spawned verifier shares no anonymous memory at all).
        assert _shared_anonymous_bytes(verifier) > 4 * _MB
    receiver_writes = _pipe_ends(pid, os.O_WRONLY)
    receiver_reads = _pipe_ends(pid, os.O_RDONLY)
    writes = {v: _pipe_ends(v, os.O_WRONLY) for v in verifiers}
    for verifier in verifiers:
        # The pipes the receiver writes and this verifier reads: its batches pipe (and
        # multiprocessing's own liveness pipe, whose write end later forks do inherit).
        inbound = _pipe_ends(verifier, os.O_RDONLY) & receiver_writes
        # The verifier holds no write end of them: with one it would never read EOF from a dead
        # receiver; and its batches pipe has no write end in any verifier, sibling or itself.
        assert not inbound & writes[verifier]
        assert any(all(p not in w for w in writes.values()) for p in inbound)
        # What it writes to the receiver (its results pipe) no sibling can write: its death
        # reads as EOF in the receiver.
        outbound = writes[verifier] & receiver_reads
        assert outbound
        assert not any(outbound & writes[v] for v in verifiers if v != verifier)
    assert gateway.stop()["status"] == "stopped"


def test_verifiers_are_not_forked_once_the_receiver_runs_a_thread():
    # fork() copies only the calling thread: a lock another thread holds stays locked in the child.
    release = threading.Event()
    busy = threading.Thread(target=release.wait, name="busy-thread")
    busy.start()
    try:
        with pytest.raises(RuntimeError, match="busy-thread"):
            receiver._fork_context()
    finally:
        release.set()
        busy.join()
