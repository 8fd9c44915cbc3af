"""Startup time with 100 refreshers whose first load takes 100 ms each, against the sum.

First loads run concurrently, so startup should take about as long as the
slowest load, not the sum of all of them (what loading one after the other in a
lifespan function costs).

    python benchmarks/startup.py [--refreshers 100] [--load-ms 100] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

from _common import Row, Server, print_rows, trivial_app

from asgi_refresh import Refresher, RefreshMiddleware


def slow_load(seconds: float) -> Callable[[], Awaitable[float]]:
    async def load() -> float:
        await asyncio.sleep(seconds)
        return seconds

    return load


async def measure(refreshers: int = 100, load_ms: float = 100, rounds: int = 5) -> Row:
    """Median startup time over rounds, against refreshers x load time."""
    load = load_ms / 1000
    times = []
    for _ in range(rounds):
        app = RefreshMiddleware(
            trivial_app,
            refreshers=[Refresher(f"r{i}", slow_load(load), every="1h") for i in range(refreshers)],
        )
        started = time.perf_counter()
        async with Server(app):
            times.append(time.perf_counter() - started)
    startup, total = statistics.median(times), refreshers * load
    return Row(
        f"startup, {refreshers} refreshers x {load_ms:g} ms first load / their sum",
        f"{startup * 1000:.0f} ms",
        f"{total * 1000:.0f} ms",
        startup / total,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--refreshers", type=int, default=100)
    parser.add_argument("--load-ms", type=float, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print_rows([asyncio.run(measure(args.refreshers, args.load_ms, args.rounds))])
