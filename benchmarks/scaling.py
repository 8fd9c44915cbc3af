"""How the cost grows with the number of refreshers: 100, 1,000, 10,000 and 100,000.

Three ways to keep N values fresh, each measured in a fresh process of its own:

- ``asgi_refresh``: N refreshers behind RefreshMiddleware (default jitter), the
  lifespan run in process;
- ``seed``: the hand-written pattern, one ``asyncio.create_task`` loop per value
  (fetch, store into a dict, ``asyncio.sleep``);
- ``apscheduler``: APScheduler 3's ``AsyncIOScheduler``, one interval job per value.

Every fetch is the same trivial coroutine, counting its calls. Figures:

- memory: resident memory added by starting the N values (RSS, after a collection),
  per value; on a 60 s schedule, so nothing is due meanwhile;
- startup: from starting until every value has loaded once;
- idle CPU: percent of one core while nothing is due (the same 60 s schedule);
- CPU per refresh: process CPU time per fetch while N values refresh at a total of
  10,000 fetches/s (every N/10,000 s, at least 10 ms: below saturation);
- refreshes/s at saturation: N values every 10 ms, as many fetches as one core runs.

The ratio columns compare asgi_refresh with the seed loop at the same N.

    python benchmarks/scaling.py [--sizes 100,1000,10000,100000] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

VARIANTS = ("asgi_refresh", "seed", "apscheduler")
SIZES = (100, 1_000, 10_000, 100_000)
_TOTAL_RATE = 10_000.0  # fetches/s asked of N values in the "CPU per refresh" phase
_IDLE_EVERY = 60.0
_SATURATION_EVERY = 0.01
_PAGE = os.sysconf("SC_PAGE_SIZE")

fetches = 0
values = 0  # how many values run: their first loads are done once `fetches` reaches it
first_loads = asyncio.Event()


async def fetch() -> int:
    global fetches
    fetches += 1
    if fetches == values:
        first_loads.set()
    return fetches  # a new value each time: every refresh publishes


def _rss() -> int:
    gc.collect()
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE


# -- the three variants, each an async context that runs N values every `every` seconds -------


@asynccontextmanager
async def _asgi_refresh(n: int, every: float) -> Any:
    from _common import Server, trivial_app

    from asgi_refresh import Refresher, RefreshMiddleware

    app = RefreshMiddleware(
        trivial_app, refreshers=[Refresher(f"r{i}", fetch, every=every) for i in range(n)]
    )
    async with Server(app):  # startup returns once every first load is done
        yield


@asynccontextmanager
async def _seed(n: int, every: float) -> Any:
    state: dict[str, int] = {}

    async def loop(name: str) -> None:
        while True:
            state[name] = await fetch()
            await asyncio.sleep(every)

    tasks = [asyncio.create_task(loop(f"r{i}")) for i in range(n)]
    await first_loads.wait()
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@asynccontextmanager
async def _apscheduler(n: int, every: float) -> Any:
    from datetime import datetime

    from apscheduler.schedulers.asyncio import AsyncIOScheduler  # type: ignore[import-untyped]

    logging.getLogger("apscheduler").setLevel(logging.ERROR)  # "missed by", "skipped" at saturation
    state: dict[str, int] = {}

    async def job(name: str) -> None:
        state[name] = await fetch()

    # However late a run is (100,000 jobs due at once), it runs: by default APScheduler
    # drops runs more than a second late, and those values would never load.
    scheduler = AsyncIOScheduler(job_defaults={"misfire_grace_time": None, "coalesce": True})
    now = datetime.now()
    for i in range(n):
        scheduler.add_job(job, "interval", seconds=every, args=(f"r{i}",), next_run_time=now, id=f"r{i}")
    scheduler.start()
    await first_loads.wait()
    try:
        yield
    finally:
        scheduler.shutdown(wait=False)


RUNNERS: dict[str, Callable[[int, float], AbstractAsyncContextManager[Any]]] = {
    "asgi_refresh": _asgi_refresh,
    "seed": _seed,
    "apscheduler": _apscheduler,
}


# -- one phase in this process --------------------------------------------------------------


async def _window(seconds: float) -> tuple[float, int, float]:
    """CPU seconds, fetches and wall seconds over ``seconds``."""
    cpu, count, wall = time.process_time(), fetches, time.perf_counter()
    await asyncio.sleep(seconds)
    return time.process_time() - cpu, fetches - count, time.perf_counter() - wall


async def _warm_up(variant: str) -> None:
    """Run one value once: what the first use imports and caches is not counted against N."""
    global fetches, values, first_loads
    values = 1
    async with RUNNERS[variant](1, _IDLE_EVERY):
        pass
    fetches, first_loads = 0, asyncio.Event()


async def phase(variant: str, n: int, name: str, seconds: float) -> dict[str, float]:
    global values
    await _warm_up(variant)
    values, run = n, RUNNERS[variant]
    if name == "idle":
        before, started = _rss(), time.perf_counter()
        async with run(n, _IDLE_EVERY):
            startup = time.perf_counter() - started
            memory = (_rss() - before) / n
            cpu, _, wall = await _window(seconds)
        return {"startup": startup, "memory": memory, "idle_cpu": 100 * cpu / wall}
    if name == "load":
        every = max(_SATURATION_EVERY, n / _TOTAL_RATE)
        async with run(n, every):
            await asyncio.sleep(every)  # past the burst of first loads
            cpu, count, _ = await _window(max(seconds, 1.5 * every))
        return {"cpu_per_refresh": cpu / max(1, count)}
    async with run(n, _SATURATION_EVERY):
        _, count, wall = await _window(seconds)
    return {"rate": count / wall}


def _in_child(variant: str, n: int, name: str, seconds: float) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", variant, str(n), name, str(seconds)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
    except (subprocess.TimeoutExpired, subprocess.CalledProcessError) as exc:
        print(f"  {variant} x {n:,} ({name}) did not finish: {exc}", file=sys.stderr)
        return {}
    result: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    return result


# -- the table ------------------------------------------------------------------------------


def _figures(sizes: tuple[int, ...], seconds: float) -> dict[tuple[str, int], dict[str, float]]:
    figures: dict[tuple[str, int], dict[str, float]] = {}
    for n in sizes:
        for variant in VARIANTS:
            merged: dict[str, float] = {}
            for name in ("idle", "load", "saturation"):
                merged.update(_in_child(variant, n, name, seconds))
            figures[variant, n] = merged
            print(f"  {variant} x {n:,}: {merged}", file=sys.stderr, flush=True)
    return figures


def _cell(figures: dict[str, float], key: str) -> str:
    value = figures.get(key, math.nan)
    if math.isnan(value):
        return "—"
    return {
        "memory": lambda: f"{value / 1000:,.1f} kB",
        "startup": lambda: f"{value * 1000:,.0f} ms",
        "idle_cpu": lambda: f"{value:.2f} %",
        "cpu_per_refresh": lambda: f"{value * 1e6:.1f} µs",
        "rate": lambda: f"{value:,.0f}/s",
    }[key]()


_COLUMNS = (
    ("memory", "memory/value"),
    ("startup", "startup"),
    ("idle_cpu", "idle CPU"),
    ("cpu_per_refresh", "CPU/refresh"),
    ("rate", "refreshes/s (sat.)"),
)


def table(figures: dict[tuple[str, int], dict[str, float]], sizes: tuple[int, ...]) -> str:
    """A Markdown table: one row per size and variant, and asgi_refresh's ratios to the seed loop."""
    lines = [
        "| values | variant | " + " | ".join(title for _, title in _COLUMNS) + " |",
        "|---:|---|" + "---:|" * len(_COLUMNS),
    ]
    for n in sizes:
        for variant in VARIANTS:
            cells = [_cell(figures[variant, n], key) for key, _ in _COLUMNS]
            lines.append(f"| {n:,} | {variant} | " + " | ".join(cells) + " |")
        ours, seed = figures["asgi_refresh", n], figures["seed", n]
        ratios = []
        for key, _ in _COLUMNS:
            if key == "idle_cpu" or not ours.get(key) or not seed.get(key):
                ratios.append("")
            else:
                ratios.append(f"{ours[key] / seed[key]:.2f}×")
        lines.append(f"| {n:,} | asgi_refresh / seed | " + " | ".join(ratios) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        _, _, variant, size, name, window = sys.argv
        print(json.dumps(asyncio.run(phase(variant, int(size), name, float(window)))))
        sys.exit(0)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    chosen = tuple(int(size) for size in args.sizes.split(","))
    print(table(_figures(chosen, args.seconds), chosen))
