"""What an operator alerts on, beside ingest's counters: read fresh at every Prometheus scrape.

Ingest counts what it does as it does it (:mod:`gateway.service.metrics`). Whether the gateway as
a whole keeps its promises is in the database and in the supervisor, so :class:`HealthCollector`
reads them when ``/metrics`` is scraped, in one read-only snapshot
(:class:`~gateway.store.readonly.ReadOnlyDatabase`: it never blocks ingest), and reports:

- ``provgw_child_up``, ``provgw_child_ready``, ``provgw_child_restarts_total`` (label ``role``:
  ``receiver`` or ``worker-N``, ``ledger``, ``urgent``): a process that keeps dying, or an urgent
  lane that is not subscribed;
- ``provgw_store_events`` and ``provgw_log_unlogged_events``: events stored, and stored but not yet
  committed to the transparency log (the ledger is behind, or ``[log]`` is off);
- ``provgw_log_entries``, and ``provgw_checkpoint_size`` / ``provgw_checkpoint_timestamp_seconds``
  for the newest checkpoint of each ``strength``: ``signed``, ``witnessed`` (reached the witness
  quorum), ``anchored`` (on the chain); size and time 0 while there is none. A witnessed size
  falling behind the signed one means the witnesses are unreachable or refuse; an old anchored
  timestamp, that the chain is;
- ``provgw_anchor_outbox`` (label ``status``: ``pending``, ``sent``): anchors not yet confirmed;
- ``provgw_remediation_devices`` (labels ``campaign``, ``state``): each recall's devices by state
  (``manifest:<digest>`` for an urgent manifest without a recall, as ``provgw recall status``
  names it): devices still ``offered`` or ``unreachable`` are the ones to chase.

``deploy/alerts.yml`` holds alerting rules on these and on ingest's counters.

Every query reads one end of an index, or the remediation tables (a row per device and campaign),
never the events or the log (query plans pinned by ``tests/service/test_health.py``), so a scrape
costs the same on a database of millions of events. No label holds a device id, serial number or
site: only roles, strengths, states and campaign ids, which the manufacturers publish.

Imported by the supervisor only when ``[metrics] port`` is set (prometheus_client's memory).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from gateway.core.errors import UnavailableError
from gateway.service.child import ChildStatus
from gateway.store.readonly import ReadOnlyDatabase

__all__ = ["QUERIES", "HealthCollector"]

_log = logging.getLogger(__name__)

#: What one scrape reads. Each statement reads one end of an index (the events' and the
#: checkpoints' primary keys, log_leaves' UNIQUE (kind, ref_id), log_0103's partial indexes, whose
#: WHERE terms the checkpoint statements repeat), the open anchors' partial index, or the
#: remediation tables.
QUERIES = {
    "stored": "SELECT coalesce(max(id), 0) FROM events",
    "logged": "SELECT coalesce(max(ref_id), 0) FROM log_leaves WHERE kind = 'event'",
    "entries": "SELECT coalesce(max(idx) + 1, 0) FROM log_leaves",
    "signed": "SELECT size, signed_ms FROM checkpoints ORDER BY size DESC LIMIT 1",
    "witnessed": (
        "SELECT size, witnessed_ms FROM checkpoint_status WHERE witnessed_ms IS NOT NULL"
        " ORDER BY size DESC LIMIT 1"
    ),
    "anchored": (
        "SELECT size, anchored_ms FROM checkpoint_status WHERE anchored_tx IS NOT NULL"
        " ORDER BY size DESC LIMIT 1"
    ),
    "outbox": (
        "SELECT status, count(*) FROM anchor_outbox WHERE status IN ('pending', 'sent')"
        " GROUP BY status"
    ),
    "campaigns": (
        "SELECT recall_id, state, count(*) FROM recall_impacts GROUP BY recall_id, state"
        " UNION ALL"
        " SELECT 'manifest:' || lower(hex(manifest)), state, count(*) FROM manifest_offers"
        " GROUP BY manifest, state"
    ),
}
_STRENGTHS = ("signed", "witnessed", "anchored")


class HealthCollector:
    """A prometheus_client collector: the gateway's state at the moment of each scrape.

    *children* returns the supervisor's view of its processes. If the database cannot be read
    (missing, locked beyond the busy timeout), the store's families are left out of that scrape
    and ``provgw_store_readable`` is 0, rather than the scrape failing.
    """

    def __init__(self, database: Path, children: Callable[[], Sequence[ChildStatus]]) -> None:
        self.database = database
        self.children = children

    def describe(self) -> list[Metric]:
        """Nothing up front: the registry then reads the families at scrape time only."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Yield the families of one scrape (prometheus_client's collector protocol)."""
        up = GaugeMetricFamily("provgw_child_up", "Child process running.", labels=["role"])
        ready = GaugeMetricFamily(
            "provgw_child_ready", "Child process ready (subscribed, serving).", labels=["role"]
        )
        restarts = CounterMetricFamily(
            "provgw_child_restarts", "Times the supervisor restarted a child.", labels=["role"]
        )
        for child in self.children():
            up.add_metric([child.role], float(child.up))
            ready.add_metric([child.role], float(child.ready))
            restarts.add_metric([child.role], float(child.restarts))
        yield from (up, ready, restarts)

        try:
            store = list(self._store_families())
        except UnavailableError as err:
            _log.warning("metrics: cannot read %s: %s", self.database, err)
            store = []
        yield GaugeMetricFamily(
            "provgw_store_readable",
            "Whether this scrape could read the database.",
            value=1 if store else 0,
        )
        yield from store

    def _store_families(self) -> Iterator[Metric]:
        db = ReadOnlyDatabase(self.database)
        try:
            with db.snapshot():
                rows = {name: db.conn.execute(sql).fetchall() for name, sql in QUERIES.items()}
        finally:
            db.close()

        stored, logged, entries = (rows[name][0][0] for name in ("stored", "logged", "entries"))
        yield GaugeMetricFamily(
            "provgw_store_events", "Device events stored (the newest id).", value=stored
        )
        # Event ids are given in order and logged in order (gateway.service.batcher).
        yield GaugeMetricFamily(
            "provgw_log_unlogged_events",
            "Stored events not yet committed to the transparency log.",
            value=max(0, stored - logged),
        )
        yield GaugeMetricFamily(
            "provgw_log_entries", "Entries in the transparency log.", value=entries
        )
        size = GaugeMetricFamily(
            "provgw_checkpoint_size",
            "Tree size of the newest checkpoint of each strength (0: none yet).",
            labels=["strength"],
        )
        when = GaugeMetricFamily(
            "provgw_checkpoint_timestamp_seconds",
            "When the newest checkpoint of each strength was signed, witnessed or anchored"
            " (0: never).",
            labels=["strength"],
        )
        for strength in _STRENGTHS:
            newest = rows[strength]
            size.add_metric([strength], float(newest[0][0]) if newest else 0.0)
            # 0 for "never", so that an alert on the age of the newest one fires from the start.
            at = newest[0][1] if newest and newest[0][1] is not None else 0
            when.add_metric([strength], at / 1000)
        yield from (size, when)
        family = GaugeMetricFamily(
            "provgw_anchor_outbox", "Chain anchors not yet confirmed.", labels=["status"]
        )
        outbox = dict(rows["outbox"])
        for status in ("pending", "sent"):
            family.add_metric([status], float(outbox.get(status, 0)))
        yield family
        family = GaugeMetricFamily(
            "provgw_remediation_devices",
            "Devices of each recall or urgent manifest campaign, by remediation state.",
            labels=["campaign", "state"],
        )
        for campaign, state, count in rows["campaigns"]:
            family.add_metric([campaign, state], float(count))
        yield family
