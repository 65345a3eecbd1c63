"""The Prometheus endpoint of `provgw serve` reports what the workers really did."""

from __future__ import annotations

import random
import socket
import time
import urllib.request
from datetime import UTC, datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families

from device_sim.events import SimDevice, make_event
from device_sim.fleet import flip_signature_bit
from gateway.ingest.topics import event_topic
from gateway.service.metrics import IngestMetrics, lag_counts

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _samples(url: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback http URL
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("provgw_ingest_")
    }


def test_metrics_endpoint_serves_the_counts_of_every_worker(
    gateway_site, site_broker, serve_gateway
):
    gateway = serve_gateway(gateway_site, site_broker, workers=2, metrics_port=_free_port())
    url = gateway.status["metrics"]
    assert url.startswith("http://127.0.0.1:")
    rng = random.Random(3)
    now_ms = int(time.time() * 1000)
    today = datetime.now(UTC).date()
    devices = gateway_site.devices[:4]  # spread over both workers' partitions
    with_bad = 0
    for device_id in devices:
        sim = SimDevice.load(gateway_site.pki, device_id)
        with site_broker.device(device_id) as pub:
            for seq in (1, 2, 3):
                event = make_event(device_id, "custody", seq, now_ms, rng, today=today)
                raw = sim.sign(event, with_chain=seq == 1)
                pub.publish(event_topic("icu", device_id, "custody"), raw)
            pub.publish(event_topic("icu", device_id, "custody"), raw)  # a duplicate
            pub.publish(event_topic("icu", device_id, "custody"), flip_signature_bit(raw))
            with_bad += 1

    deadline = time.monotonic() + 20
    samples = _samples(url)
    while time.monotonic() < deadline:
        samples = _samples(url)
        done = samples.get(("provgw_ingest_accepted_total", ()), 0) == 12
        if done and samples.get(("provgw_ingest_duplicates_total", ()), 0) == 4:
            rejected = samples.get(("provgw_ingest_rejected_total", (("reason", "bad-signature"),)))
            if rejected == with_bad:
                break
        time.sleep(0.1)
    assert samples[("provgw_ingest_accepted_total", ())] == 12
    assert samples[("provgw_ingest_duplicates_total", ())] == 4
    assert samples[("provgw_ingest_rejected_total", (("reason", "bad-signature"),))] == 4
    assert samples[("provgw_ingest_in_flight", ())] == 0  # everything acknowledged
    assert samples[("provgw_ingest_commit_seconds_count", ())] >= 2  # batches, timed
    assert samples[("provgw_ingest_lag_seconds_count", ())] == 16  # every verified copy
    assert samples[("provgw_ingest_batch_size_sum", ())] == 20  # every message, once
    stopped = gateway.stop()
    assert stopped["events_stored"] == 12


def _lag_exposition(metrics: IngestMetrics) -> dict[str, float]:
    exposed = {}
    for family in metrics.registry.collect():
        if family.name == "provgw_ingest_lag_seconds":
            for sample in family.samples:
                exposed[sample.name + repr(sorted(sample.labels.items()))] = sample.value
    return exposed


def test_a_batch_of_counted_lags_exposes_what_one_observe_per_event_would():
    # The receiver adds a batch's lags as bucket counts (one update per bucket, not two locked
    # writes per event); the exposition must be exactly that of observe() per event, bounds
    # included (a bucket holds values <= its bound), for every batch.
    rng = random.Random(11)
    bounds = [0.0, 0.01, 0.025, 1, 2.5, 86400, 1e9]
    one_by_one, counted = IngestMetrics(), IngestMetrics()
    for _ in range(20):
        lags = [rng.choice(bounds) if rng.random() < 0.3 else rng.expovariate(2) for _ in range(50)]
        for lag in lags:
            one_by_one.lag_seconds.observe(lag)
        counted.record_stats((0, 0, {}, 0.0, len(lags), lag_counts(lags)))
    counted.record_stats((0, 0, {}, 0.0, 0, lag_counts([])))  # an empty batch adds nothing
    assert _lag_exposition(counted) == pytest.approx(_lag_exposition(one_by_one))
    assert _lag_exposition(counted)["provgw_ingest_lag_seconds_count[]"] == 1000
