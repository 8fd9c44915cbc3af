"""Memory and idle CPU of 10,000 refreshers on a 60 s schedule.

Memory: Python allocations (tracemalloc) made by starting the middleware, per
refresher, against the hand-written pattern holding the same values (one
``asyncio.create_task`` loop and one dict entry per refresher). Idle CPU: process CPU
time over a window with no refresh due, as a percentage of one core, against the
same event loop running nothing (the baseline).

    python benchmarks/idle.py [--refreshers 10000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import tracemalloc
from collections.abc import Awaitable, Callable

from _common import Row, Server, constant, print_rows, trivial_app

from asgi_refresh import Refresher, RefreshMiddleware


async def cpu_percent(seconds: float) -> float:
    """Percent of one core this process uses while the event loop waits for ``seconds``."""
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    return 100 * (time.process_time() - cpu) / (time.perf_counter() - wall)


class allocations:
    """Bytes Python allocated between entering and `measure` (tracemalloc)."""

    def __enter__(self) -> allocations:
        tracemalloc.start()
        self.before = tracemalloc.take_snapshot()
        self.total = 0
        return self

    def measure(self) -> None:
        after = tracemalloc.take_snapshot()
        self.total = sum(stat.size_diff for stat in after.compare_to(self.before, "filename"))

    def __exit__(self, *exc: object) -> None:
        tracemalloc.stop()


async def hand_written(refreshers: int, memory: allocations) -> None:
    """The usual pattern, measured while it runs: a create_task loop and a dict entry each."""
    state: dict[str, int] = {}

    async def loop(name: str, fetch: Callable[[], Awaitable[int]]) -> None:
        while True:
            state[name] = await fetch()
            await asyncio.sleep(60)

    tasks = [asyncio.create_task(loop(f"r{i}", constant(i))) for i in range(refreshers)]
    await asyncio.sleep(0.1)
    memory.measure()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def measure(refreshers: int = 10_000, seconds: float = 10.0) -> list[Row]:
    baseline_cpu = await cpu_percent(seconds)
    specs = [Refresher(f"r{i}", constant(i), every="60s") for i in range(refreshers)]

    started = time.perf_counter()
    async with Server(RefreshMiddleware(trivial_app, refreshers=specs)):
        startup = time.perf_counter() - started
        idle_cpu = await cpu_percent(seconds)  # the first refreshes are 54-60 s away

    # Memory in runs of their own: tracemalloc slows everything down.
    with allocations() as ours:
        async with Server(RefreshMiddleware(trivial_app, refreshers=specs)):
            ours.measure()
    with allocations() as theirs:
        await hand_written(refreshers, theirs)
    per, baseline = ours.total / refreshers, theirs.total / refreshers
    return [
        Row(f"memory per running refresher, {refreshers:,} / hand-written task", f"{per:,.0f} B", f"{baseline:,.0f} B", per / baseline),
        Row(f"idle CPU, {refreshers:,} refreshers every 60 s (% of a core / idle loop)", f"{idle_cpu:.2f} %", f"{baseline_cpu:.2f} %", None),
        Row(f"startup, {refreshers:,} refreshers with instant first loads", f"{startup * 1000:,.0f} ms", "", None),
    ]  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--refreshers", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    print_rows(asyncio.run(measure(args.refreshers, args.seconds)))
