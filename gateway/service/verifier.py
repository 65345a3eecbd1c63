"""A verifier process of ``provgw serve`` (``partitioned`` mode): raw batches in, acks out.

:class:`~gateway.service.receiver.IngestReceiver` starts ``ingest.workers`` of these and deals each
one the devices whose id hashes to it. A verifier runs :class:`~gateway.service.ingest.
IngestPipeline` on every batch it is sent -- verify, commit in one transaction -- and only then
sends back the ``(tag, qos)`` of every message the commit decided, for the receiver to PUBACK
(ack after commit, MQTT 5 §4.3.2), with the batch's :class:`~gateway.service.ingest.BatchOutcome`
for the metrics.

Two one-way pipes (:func:`multiprocessing.Pipe`), so neither side can block the other's reads:

- receiver -> verifier: a list of :data:`RawDelivery` tuples, or ``None``: finish and exit;
- verifier -> receiver: ``(acks, stats, released)`` after each commit, *stats* being
  :data:`~gateway.service.metrics.BatchStats` (plain values: the receiver need not import the
  pipeline to unpickle them) and *released* the payload bytes of the messages the commit decided
  (the receiver's byte budget, ``ingest.in_flight_mb``).

The receiver forks its verifiers (:meth:`~gateway.service.receiver.IngestReceiver._start_lanes`)
after loading the modules :func:`run_verifier` imports, so that all of them share those pages
copy-on-write; the imports inside :func:`run_verifier` only name what a verifier uses.

A verifier exits when the receiver says so, when its pipe closes, or when its parent is gone
(checked every 0.2 s), so a ``kill -9`` of the gateway leaves no verifier behind. It ignores
SIGINT and SIGTERM: the receiver decides when it stops, after its last commit is acknowledged.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.service import child

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from gateway.service.ingest import BatchOutcome

__all__ = ["RawDelivery", "run_verifier"]

_log = logging.getLogger(__name__)

#: ``(topic, payload, tag, qos, received_ms, received_mono)``: a delivery as the receiver pickles
#: it (a tuple pickles several times faster than a dataclass).
RawDelivery = tuple[str, bytes, int, int, int, float]

_IDLE_POLL_S = 0.2


class _Discard:
    """The pipeline's metrics sink here: the receiver records the outcomes it is sent."""

    def record(self, outcome: BatchOutcome) -> None:
        del outcome


def run_verifier(
    config_path: str, index: int, batches: Connection, results: Connection, parent_pid: int
) -> None:
    """Entry point of verifier process *index* (module docstring)."""
    # Here, not at the top: see the module docstring.
    from gateway.service.config import load_config  # noqa: PLC0415
    from gateway.service.ingest import (  # noqa: PLC0415
        Delivery,
        commit_with_retry,
        open_pipeline,
    )
    from gateway.service.metrics import batch_stats  # noqa: PLC0415

    child.enter(f"verifier-{index}", config_path, sigterm_stops=False)
    config = load_config(Path(config_path))
    acks: list[tuple[int, int]] = []
    who = f"verifier {index}"

    def parent_gone() -> bool:
        return os.getppid() != parent_pid

    with open_pipeline(
        config, ack=lambda tag, qos: acks.append((tag, qos)), metrics=_Discard()
    ) as pipeline:
        # Kept unacknowledged for another try (IngestPipeline: unknown-kid in its grace period).
        pending: list[Delivery] = []
        retry_s = config.ingest.batch_ms / 1000
        while not parent_gone():
            try:
                if not batches.poll(retry_s if pending else _IDLE_POLL_S):
                    if not pending:
                        continue
                    raw: list[RawDelivery] | None = []
                else:
                    raw = batches.recv()
            except (EOFError, OSError):
                return  # the receiver is gone: what was not acknowledged will be redelivered
            if raw is None:
                return  # asked to stop; deferred messages are redelivered after the restart
            batch = pending + [Delivery(*item) for item in raw]
            acks.clear()
            outcome = commit_with_retry(pipeline, batch, parent_gone, who)
            if outcome is None:
                return
            pending = outcome.deferred
            released = sum(len(d.payload) for d in batch) - sum(len(d.payload) for d in pending)
            try:
                results.send((list(acks), batch_stats(outcome), released))
            except OSError:
                return
