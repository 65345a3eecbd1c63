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
  names it): devices still ``offered`` or ``unreachable`` are the ones to chase;
- ``provgw_broker_crl_next_update_timestamp_seconds``: when the broker's copy of the CRLs
  (``provgw broker-config``'s ``crl-bundle.pem``, from its ``broker.json``) runs out. From then
  Mosquitto refuses every device of that manufacturer at the TLS handshake, and the gateway
  hears nothing from them: re-run ``provgw broker-config`` with current CRLs and reload the
  broker before it. Left out of a scrape when ``[broker] config_dir`` holds no readable
  ``broker.json``;
- ``provgw_broker_revoked_not_denied``: devices revoked in the database (``provgw device
  revoke``) that the broker's ACL does not deny yet, so that it still takes what they publish
  (the gateway refuses it): run ``provgw broker-acl`` (or ``device revoke --broker``) and reload
  the broker. A count, no device named; left out with the CRL date above;
- ``provgw_trust_crl_next_update_timestamp_seconds``: the same for the gateway's own trust
  folder (``[trust] dir``): from then the verifiers quarantine that manufacturer's devices as
  ``crl-stale``. Drop the manufacturer's current CRL in; it is read without a restart. Read
  through a :class:`~gateway.store.trust_files.TrustFolder`, as the verifiers read it: parsed
  again only when its files change, and a folder that then fails to load leaves the store in
  force, and its date, as it leaves the verifiers'. Left out when the folder holds no CRL.

``deploy/alerts.yml`` holds alerting rules on these and on ingest's counters.

The store's figures come from :func:`gateway.store.health.read_store_health` (``provgw status``
shows the same): one end of an index per figure, so a scrape costs the same on a database of
millions of events. No label holds a device id, serial number or site: only roles, strengths,
states and campaign ids, which the manufacturers publish.

Imported by the supervisor only when ``[metrics] port`` is set (prometheus_client's memory).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from gateway.core.errors import MalformedError, UnavailableError
from gateway.ingest.broker_config import BrokerConfig
from gateway.service.child import ChildStatus
from gateway.store.health import StoreHealth, read_store_health
from gateway.store.trust_files import TrustFolder

__all__ = ["HealthCollector"]

_log = logging.getLogger(__name__)


class HealthCollector:
    """A prometheus_client collector: the gateway's state at the moment of each scrape.

    *children* returns the supervisor's view of its processes; *broker_dir* is the broker
    configuration ``provgw broker-config`` wrote (``[broker] config_dir``); *trust* the gateway's
    trust folder (``[trust] dir``). If the database cannot be read (missing, locked beyond the
    busy timeout), the store's families are left out of that scrape and ``provgw_store_readable``
    is 0, rather than the scrape failing.
    """

    def __init__(
        self,
        database: Path,
        children: Callable[[], Sequence[ChildStatus]],
        broker_dir: Path | None = None,
        trust: TrustFolder | None = None,
    ) -> None:
        self.database = database
        self.children = children
        self.broker_dir = broker_dir
        self.trust = trust

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
            health: StoreHealth | None = read_store_health(self.database)
        except UnavailableError as err:
            _log.warning("metrics: cannot read %s: %s", self.database, err)
            health = None
        yield GaugeMetricFamily(
            "provgw_store_readable",
            "Whether this scrape could read the database.",
            value=1 if health is not None else 0,
        )
        if health is not None:
            yield from self._store_families(health)
        if self.broker_dir is not None:
            try:
                broker = BrokerConfig.load(self.broker_dir)
            except MalformedError as err:
                _log.warning("metrics: cannot read the broker configuration: %s", err)
            else:
                yield GaugeMetricFamily(
                    "provgw_broker_crl_next_update_timestamp_seconds",
                    "When the broker's copy of the CRLs runs out (the earliest nextUpdate):"
                    " re-run provgw broker-config and reload the broker before it.",
                    value=broker.crl_next_update.timestamp(),
                )
                if health is not None:
                    yield GaugeMetricFamily(
                        "provgw_broker_revoked_not_denied",
                        "Devices revoked in the gateway's database that the broker's ACL does"
                        " not deny yet: run provgw broker-acl and reload the broker.",
                        value=len(health.not_denied(broker.denied_devices)),
                    )
        if self.trust is not None:
            self.trust.changed()  # read again only if its files changed, as the verifiers do
            trusted = self.trust.store.crls_next_update
            if trusted is not None:
                yield GaugeMetricFamily(
                    "provgw_trust_crl_next_update_timestamp_seconds",
                    "When the first CRL of the gateway's trust folder runs out (the earliest"
                    " nextUpdate): put the manufacturer's current CRL in before it.",
                    value=trusted.timestamp(),
                )

    def _store_families(self, health: StoreHealth) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "provgw_store_events", "Device events stored (the newest id).", value=health.events
        )
        yield GaugeMetricFamily(
            "provgw_log_unlogged_events",
            "Stored events not yet committed to the transparency log.",
            value=health.unlogged,
        )
        yield GaugeMetricFamily(
            "provgw_log_entries", "Entries in the transparency log.", value=health.entries
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
        for strength, newest in health.newest.items():
            size.add_metric([strength], newest.size)
            # 0 for "never", so that an alert on the age of the newest one fires from the start.
            when.add_metric([strength], (newest.at_ms or 0) / 1000)
        yield from (size, when)
        family = GaugeMetricFamily(
            "provgw_anchor_outbox", "Chain anchors not yet confirmed.", labels=["status"]
        )
        for status, count in health.anchors.items():
            family.add_metric([status], count)
        yield family
        family = GaugeMetricFamily(
            "provgw_remediation_devices",
            "Devices of each recall or urgent manifest campaign, by remediation state.",
            labels=["campaign", "state"],
        )
        for campaign, state, count in health.remediation:
            family.add_metric([campaign, state], count)
        yield family
