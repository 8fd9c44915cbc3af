"""Refreshes per second at saturation, against hand-written refresh loops doing the same.

Many refreshers at the shortest interval (10 ms) keep the event loop saturated:
every refresh goes through scheduling, the fetch, change detection and
publishing. The baseline is the hand-written pattern at the same load: one
``asyncio.create_task`` loop per refresher, sleeping 10 ms, fetching, storing
into a dict. The ratio is the share of the hand-written rate the runtime keeps.

    python benchmarks/throughput.py [--refreshers 1000] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import time

from _common import Row, Server, print_rows, trivial_app

from asgi_refresh import Refresher, RefreshMiddleware

_counter = itertools.count()


async def fetch() -> int:
    return next(_counter)  # a new value each time: every refresh publishes


async def hand_written(refreshers: int, seconds: float) -> float:
    """Refreshes per second of the usual create_task loops, one per refresher."""
    state: dict[str, int] = {}
    count = 0

    async def loop(name: str) -> None:
        nonlocal count
        while True:
            await asyncio.sleep(0.01)
            state[name] = await fetch()
            count += 1

    tasks = [asyncio.create_task(loop(f"r{i}")) for i in range(refreshers)]
    await asyncio.sleep(0.1)  # all running, as the middleware's are once started
    before, started = count, time.perf_counter()
    await asyncio.sleep(seconds)
    rate = (count - before) / (time.perf_counter() - started)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return rate


async def refreshed(refreshers: int, seconds: float) -> float:
    """Refreshes per second of as many refreshers behind RefreshMiddleware."""

    app = RefreshMiddleware(
        trivial_app, refreshers=[Refresher(f"r{i}", fetch, every="10ms", jitter=0) for i in range(refreshers)]
    )
    async with Server(app):
        status = app.handle.status()
        before = sum(entry["refresh_count"] for entry in status.values())
        started = time.perf_counter()
        await asyncio.sleep(seconds)
        elapsed = time.perf_counter() - started
        after = sum(entry["refresh_count"] for entry in app.handle.status().values())
    return float(after - before) / elapsed


async def measure(refreshers: int = 1000, seconds: float = 3.0, rounds: int = 3) -> Row:
    """Median over alternating rounds of both rates."""
    ours, theirs = [], []
    for _ in range(rounds):
        ours.append(await refreshed(refreshers, seconds))
        theirs.append(await hand_written(refreshers, seconds))
    rate, raw = statistics.median(ours), statistics.median(theirs)
    return Row(
        f"refreshes/s at saturation, {refreshers:,} every 10 ms / hand-written loops",
        f"{rate:,.0f}/s",
        f"{raw:,.0f}/s",
        rate / raw,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--refreshers", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    print_rows([asyncio.run(measure(args.refreshers, args.seconds))])
