"""``python -m bench.ab_ingest [--workers N] [--slice N] CONSUMER ...``: chosen ingest runs only.

For A/B work on one change: ``bench ingest`` runs every consumer (a few minutes); this runs only
the consumers named (``gateway``, ``gateway+ledger``, ``naive``, ``raw``, ``raw-lean``) on the
same broker, fleet and pre-signed publisher as ``bench ingest``, in the same interleaved rounds
(:func:`bench.bench_ingest.contest`), and prints one line each: the median rate of the saturated
slices and the CPU an event of the consumer, the broker and the publisher. Alternate the two
builds (``git stash``) several times and compare medians; the consumer's CPU over the
publisher's cancels much of the host's noise.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from bench import bench_ingest as ingest
from device_sim.demo import LocalMosquitto
from device_sim.fleet import raise_fd_limit, select_devices
from device_sim.pki import init_pki
from gateway.ingest.broker_config import write_broker_config

CONSUMERS = ("gateway", "gateway+ledger", "naive", "raw", "raw-lean")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ab_ingest", description=__doc__)
    parser.add_argument("consumers", nargs="+", choices=CONSUMERS)
    parser.add_argument(
        "--workers", type=int, default=ingest.WORKERS, help="gateway verifier processes"
    )
    parser.add_argument(
        "--slice", type=int, default=ingest.FULL.per_slice, help="events per saturated slice"
    )
    args = parser.parse_args()
    plan = replace(ingest.FULL, per_slice=args.slice)
    raise_fd_limit(plan.devices * 2 + 512)
    with tempfile.TemporaryDirectory(prefix="bench-ab-ingest-") as tmp:
        folder = Path(tmp)
        pki = folder / "pki"
        init_pki(pki, devices_per_model=-(-plan.devices // 9))
        config = write_broker_config(
            pki, folder / "broker", now=datetime.now(UTC), routine_workers=args.workers
        )
        records = select_devices(pki, plan.devices)
        work = ingest.presign(pki, records, plan)
        with LocalMosquitto(config, folder) as broker:
            assert broker.proc is not None  # started by the `with`
            pool, _ = ingest.connect_pool(broker, pki, records, 4)
            contestants = [
                ingest.contestant(name, folder, broker, pki, args.workers)
                for name in args.consumers
            ]
            try:
                ingest.contest(contestants, pool, work, broker.proc.pid)
                for who in contestants:
                    cpu = who.cpu
                    print(
                        f"{who.name}: {who.rate:,.0f} events/s (slices"
                        f" {', '.join(f'{r:,.0f}' for r in who.rates)}); CPU an event:"
                        f" consumer {cpu.consumer:.1f} us, broker {cpu.broker:.1f} us,"
                        f" publisher {cpu.publisher:.1f} us; host steal"
                        f" {', '.join(f'{x:.0%}' for x in who.steal)}",
                        flush=True,
                    )
            finally:
                pool.close()


if __name__ == "__main__":
    main()
