"""The ingest bench's interleaved rounds, small, against a real Mosquitto and ``provgw serve``."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench import bench_ingest as ingest
from device_sim.demo import LocalMosquitto
from device_sim.fleet import select_devices
from device_sim.pki import init_pki
from gateway.ingest.broker_config import write_broker_config

pytestmark = [pytest.mark.broker, pytest.mark.timeout(180)]

PLAN = ingest.Plan(devices=9, slices=2, per_slice=60, paced_rate=100, paced_s=0.5)


def test_every_round_of_every_contestant_commits_its_own_slice_and_nothing_else(tmp_path):
    pki = tmp_path / "pki"
    init_pki(pki, devices_per_model=1)
    config = write_broker_config(pki, tmp_path / "broker", now=datetime.now(UTC), routine_workers=2)
    records = select_devices(pki, PLAN.devices)
    work = ingest.presign(pki, records, PLAN)
    with LocalMosquitto(config, tmp_path) as broker:
        assert broker.proc is not None
        pool, _ = ingest.connect_pool(broker, pki, records, 2)
        names = ("raw", "naive", "gateway")
        contestants = [ingest.contestant(n, tmp_path, broker, pki, 2) for n in names]
        try:
            ingest.contest(contestants, pool, work, broker.proc.pid)
        finally:
            pool.close()
    stored = len(work.enrol) + sum(map(len, (*work.warm, *work.slices, work.memory, work.paced)))
    for who in contestants:
        assert len(who.rates) == PLAN.slices, who.name
        assert who.events == PLAN.slices * PLAN.per_slice, who.name
        assert len(who.paced_ms) == len(work.paced), who.name
        assert who.peak.pss > 0, who.name
        # The host's steal over each slice, a share of the VM's CPU time: printed beside it.
        assert len(who.steal) == PLAN.slices, who.name
        assert all(0 <= share <= 1 for share in who.steal), (who.name, who.steal)
        # Every message once: none lost across the restarts, none delivered to a contestant
        # from another's round (the observer would have waited for it, and the row counted).
        db = tmp_path / f"{who.name}.sqlite3"
        with sqlite3.connect(db) as conn:
            (rows,) = conn.execute("SELECT count(*) FROM events").fetchone()
        assert rows == stored, who.name


def test_host_steal_is_proc_stats_steal_column_in_seconds():
    fields = Path("/proc/stat").read_text(encoding="ascii").split("\n", 1)[0].split()
    assert fields[0] == "cpu"
    before = int(fields[8]) * ingest._TICK_S

    steal = ingest.host_steal_s()

    assert before <= steal <= before + 1.0  # read a moment later: it only grows
