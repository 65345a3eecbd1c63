"""``ingest.mode = "shared"``: each worker process runs the whole pipeline on a shared subscription.

Every worker holds its own member session of one MQTT 5 shared subscription (§4.8.2), receives
its share of the device events, verifies and commits them (:class:`~gateway.service.ingest.
IngestPipeline`) and acknowledges after the commit. See :mod:`gateway.service.workers` for why
this is not the default on Mosquitto 2.0.11 (messages lost after a broker restart).
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from typing import Any

from gateway.ingest.mqtt import MqttClient
from gateway.service.config import GatewayConfig
from gateway.service.ingest import Delivery, IngestPipeline, commit_with_retry, open_pipeline
from gateway.service.metrics import IngestMetrics
from gateway.service.receiver import connect_and_subscribe

__all__ = ["IngestWorker"]


class IngestWorker:
    """``shared`` mode: one whole pipeline on its own member session of a shared subscription.

    :meth:`run` blocks until *should_stop()* is true, then finishes the batch at hand, sends its
    acknowledgements, and disconnects (the session stays on the broker).
    """

    def __init__(self, config: GatewayConfig, index: int, metrics: IngestMetrics) -> None:
        self.config = config
        self.index = index
        self.metrics = metrics
        settings = config.broker
        # Bounded: at most Receive Maximum deliveries of the current connection, plus as many
        # left over from the one before a reconnect (redelivered anyway, their acks are dropped).
        # A put never blocks unless the broker oversteps the limit, and then it pushes back (TCP)
        # instead of growing.
        self._queue: queue.Queue[Delivery] = queue.Queue(maxsize=2 * settings.receive_maximum)
        self._client = MqttClient(
            config.credentials(index),
            host=settings.host,
            port=settings.port,
            on_message=self._on_message,
            session_expiry=settings.session_expiry_s,
            receive_maximum=settings.receive_maximum,
        )
        self._pending: list[Delivery] = []

    def _on_message(
        self, topic: str, payload: bytes, tag: int, qos: int, properties: dict[str, Any]
    ) -> None:
        del properties
        self._queue.put(Delivery(topic, payload, tag, qos, time.time_ns() // 1_000_000))

    def _forget_queued(self) -> None:
        # Deliveries of a dropped connection: never acknowledged, so the broker sends them again;
        # keeping them would only let a failing reconnect loop fill the queue.
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        self._pending.clear()

    def run(
        self, should_stop: Callable[[], bool], on_ready: Callable[[], object] = lambda: None
    ) -> int:
        """Ingest until *should_stop()*; call *on_ready()* once subscribed. Returns 0."""
        cfg = self.config
        who = f"worker {self.index}"
        self._forget_queued()
        with open_pipeline(cfg, ack=self._client.ack, metrics=self.metrics) as pipeline:
            try:
                connect_and_subscribe(
                    self._client, should_stop, who, share_group=cfg.broker.share_group
                )
                on_ready()
                while not should_stop():
                    self._commit(pipeline, self._collect(), should_stop, who)
                    self.metrics.in_flight.set(self._queue.qsize() + len(self._pending))
                # Drain what already arrived: acknowledged now rather than redelivered.
                self._commit(pipeline, self._collect(wait=False), lambda: True, who)
            finally:
                self._client.disconnect()
        return 0

    def _commit(
        self,
        pipeline: IngestPipeline,
        batch: list[Delivery],
        should_stop: Callable[[], bool],
        who: str,
    ) -> None:
        if batch:
            outcome = commit_with_retry(pipeline, batch, should_stop, who)
            self._pending = outcome.deferred if outcome is not None else []

    def _collect(self, *, wait: bool = True) -> list[Delivery]:
        """Up to ``batch_max`` deliveries: the first waits up to 50 ms, the rest ``batch_ms``."""
        ingest = self.config.ingest
        batch, self._pending = self._pending, []
        try:
            if not batch:
                batch.append(self._queue.get(timeout=0.05) if wait else self._queue.get_nowait())
            deadline = time.monotonic() + ingest.batch_ms / 1000
            while len(batch) < ingest.batch_max:
                left = deadline - time.monotonic()
                if left <= 0 or not wait:
                    batch.append(self._queue.get_nowait())
                else:
                    batch.append(self._queue.get(timeout=left))
        except queue.Empty:
            pass
        return batch

    @property
    def client(self) -> MqttClient:
        """The worker's MQTT client (tests use it to check the session)."""
        return self._client
