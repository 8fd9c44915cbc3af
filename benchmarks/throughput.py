"""The cost of a refresh, against hand-written refresh loops doing the same.

Two figures, each side by side with the hand-written pattern (one
``asyncio.create_task`` loop per refresher: sleep, fetch, store into a dict):

1. **CPU per refresh** below saturation: 1,000 refreshers every 100 ms, process CPU
   time divided by the refreshes done. What a refresh costs the process, whatever
   else the machine does.
2. **Refreshes per second at saturation**: 1,000 refreshers every 10 ms (the shortest
   interval) keep the event loop busy; the ratio is the share of the hand-written
   rate the runtime keeps.

The two differ: at saturation, whatever is left of the loop's time goes to the
other side's refreshes, so a small difference in CPU per refresh shows as a larger
one in the rate, and the rate also depends on how the event loop orders ready
tasks (a batch of due refreshes runs in one pass of the loop). CPU per refresh is
the figure to compare; the rate shows where a process that cannot keep up stands.

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


async def hand_written_cpu(refreshers: int, seconds: float) -> float:
    """CPU seconds per refresh of the create_task loops, every 100 ms (not saturated)."""
    state: dict[str, int] = {}
    count = 0

    async def loop(name: str) -> None:
        nonlocal count
        while True:
            await asyncio.sleep(0.1)
            state[name] = await fetch()
            count += 1

    tasks = [asyncio.create_task(loop(f"r{i}")) for i in range(refreshers)]
    await asyncio.sleep(0.3)
    before, cpu = count, time.process_time()
    await asyncio.sleep(seconds)
    per_refresh = (time.process_time() - cpu) / max(1, count - before)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return per_refresh


async def refreshed_cpu(refreshers: int, seconds: float) -> float:
    """CPU seconds per refresh of as many refreshers every 100 ms behind RefreshMiddleware."""
    app = RefreshMiddleware(
        trivial_app,
        refreshers=[Refresher(f"r{i}", fetch, every="100ms", jitter=0) for i in range(refreshers)],
    )
    async with Server(app):
        await asyncio.sleep(0.3)
        before = sum(entry["refresh_count"] for entry in app.handle.status().values())
        cpu = time.process_time()
        await asyncio.sleep(seconds)
        spent = time.process_time() - cpu
        after = sum(entry["refresh_count"] for entry in app.handle.status().values())
    return spent / max(1, after - before)


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


async def measure(refreshers: int = 1000, seconds: float = 3.0, rounds: int = 3) -> list[Row]:
    """Medians over alternating rounds: CPU per refresh, then the rates at saturation."""
    ours_cpu, theirs_cpu, ours, theirs = [], [], [], []
    for _ in range(rounds):
        ours_cpu.append(await refreshed_cpu(refreshers, seconds))
        theirs_cpu.append(await hand_written_cpu(refreshers, seconds))
        ours.append(await refreshed(refreshers, seconds))
        theirs.append(await hand_written(refreshers, seconds))
    cpu, raw_cpu = statistics.median(ours_cpu), statistics.median(theirs_cpu)
    rate, raw = statistics.median(ours), statistics.median(theirs)
    return [
        Row(
            f"CPU per refresh, {refreshers:,} every 100 ms / hand-written loops (target <= 1.5)",
            f"{cpu * 1e6:.1f} us",
            f"{raw_cpu * 1e6:.1f} us",
            cpu / raw_cpu,
        ),
        Row(
            f"refreshes/s at saturation, {refreshers:,} every 10 ms / hand-written loops",
            f"{rate:,.0f}/s",
            f"{raw:,.0f}/s",
            rate / raw,
        ),
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--refreshers", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    print_rows(asyncio.run(measure(args.refreshers, args.seconds)))
