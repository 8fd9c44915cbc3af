"""Run every benchmark and print one table of figures, baselines and ratios.

Each ratio is measured side by side with its baseline in this run; on a shared
machine, absolute figures mean little. ``--quick`` runs each one briefly, the
cluster ones on Redis only (a smoke run for CI: its figures mean nothing).

    python benchmarks/run_all.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import time

import busy
import cluster
import coordinator_idle
import failure_logs
import families
import idle
import import_cost
import overhead
import push
import snapshots
import sources
import startup
import throughput
import uvicorn_load
from _common import Row, print_rows


async def run(quick: bool) -> list[Row]:
    if quick:
        return [
            *await overhead.measure(refreshers=10, rounds=2, requests=200),
            *await uvicorn_load.measure(rounds=1, seconds=0.5),
            *await busy.measure(rounds=1, seconds=0.5),
            await startup.measure(rounds=1),
            *await idle.measure(refreshers=1000, seconds=0.5),
            *await throughput.measure(refreshers=100, seconds=0.5, rounds=1),
            *await sources.measure(polls=2, rounds=1, seconds=0.2),
            # One backend: the smoke run shares CI's cores with the peer suites, and what
            # differs between backends is the coordinators' code, which the tests cover.
            *await cluster.measure(
                workers=2, seconds=1.0, changes=2, kills=1, lease_ttl=1.5, backends=["redis"]
            ),
            *await coordinator_idle.measure(refreshers=200, lease_ttl=1.5, polls=1, chosen=["redis"]),
            *await failure_logs.measure(refreshers=50, minutes=5),
            *await import_cost.measure(rounds=2),
            *await snapshots.measure(refreshers=20, rounds=1, refreshes=3),
            *await push.measure(changes=2, quiet=1.0, every=0.5, workers=2, deliveries=20),
            *await families.measure(seconds=0.5, keys=100, memory_keys=1000),
        ]
    return [
        *await overhead.measure(),
        *await uvicorn_load.measure(),
        *await busy.measure(),
        await startup.measure(),
        *await idle.measure(),
        *await throughput.measure(),
        *await sources.measure(),
        *await cluster.measure(),
        *await coordinator_idle.measure(),
        *await failure_logs.measure(),
        *await import_cost.measure(),
        *await snapshots.measure(),
        *await push.measure(),
        *await families.measure(),
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: every benchmark, briefly")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = asyncio.run(run(args.quick))
    print(
        f"asgi_refresh benchmarks on {platform.python_implementation()} {platform.python_version()}, {platform.machine()}"
    )
    print_rows(rows)
    print(f"({time.perf_counter() - started:.0f} s{', quick: figures mean nothing' if args.quick else ''})")
