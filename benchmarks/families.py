"""RefresherFamily against a hand-written dict-with-expiry cache and cashews' early refresh, in one run.

Three figures, each measured for every variant in the same run (asyncio; cashews
is asyncio-only):

- p99 latency of reading a value, across key expiries: 1,000 hot keys with a 1 s
  lifetime, an upstream that takes 20 ms, 50 concurrent readers asking for random
  keys for a few seconds (about 1,000 expiries a second). The baseline is a plain
  dict that never refreshes (what a request costs when nothing ever expires).
- upstream fetches caused by 100 concurrent first requests for one cold key;
- memory per cached key (tracemalloc, 10,000 keys with float values).

    python benchmarks/families.py [--seconds 4] [--keys 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

from _common import Row, Server, print_rows, trivial_app

from asgi_refresh import RefresherFamily, RefreshHandle, RefreshMiddleware

UPSTREAM_LATENCY = 0.02
TTL = 1.0
READERS = 50
PAUSE = 0.005  # each reader's pause between reads: at most 10,000 reads a second in all

Get = Callable[[Any], Awaitable[Any]]


class Upstream:
    """Counts fetches; each takes UPSTREAM_LATENCY."""

    def __init__(self, latency: float = UPSTREAM_LATENCY) -> None:
        self.fetches = 0
        self.latency = latency

    async def __call__(self, key: Any) -> float:
        self.fetches += 1
        if self.latency:
            await asyncio.sleep(self.latency)
        return random.random()


# -- the variants ----------------------------------------------------------------------


class HandWritten:
    """The cache people write: a dict of (value, expiry); an expired or missing key is fetched inline."""

    def __init__(self, fetch: Upstream, ttl: float = TTL) -> None:
        self.fetch = fetch
        self.ttl = ttl
        self.data: dict[Any, tuple[float, float]] = {}

    async def get(self, key: Any) -> Any:
        hit = self.data.get(key)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        value = await self.fetch(key)
        self.data[key] = (value, time.monotonic() + self.ttl)
        return value


def cashews_get(fetch: Upstream, ttl: float = TTL) -> Get:
    """cashews' in-memory cache with early refresh: refreshed in the background from 80% of the TTL."""
    from cashews import Cache

    cache = Cache()
    cache.setup("mem://", size=1_000_000)

    @cache.early(ttl=ttl, early_ttl=ttl * 0.8, key="rate:{key}")
    async def get(key: Any) -> Any:
        return await fetch(key)

    return get


class Family:
    """RefresherFamily in a running middleware (its lifespan driven in process)."""

    def __init__(self, fetch: Upstream, ttl: float = TTL, max_keys: int = 100_000) -> None:
        self.middleware = RefreshMiddleware(
            trivial_app,
            families=[RefresherFamily("rates", fetch, every=ttl, idle_ttl="1h", max_keys=max_keys)],
        )
        self.server = Server(self.middleware)

    async def __aenter__(self) -> Get:
        await self.server.start()
        handle: RefreshHandle = self.server.state["asgi_refresh"]

        async def get(key: Any) -> Any:
            return await handle.get("rates", key)

        return get

    async def __aexit__(self, *exc_info: object) -> None:
        await self.server.stop()


# -- the measurements ------------------------------------------------------------------


async def read_p99(get: Get, keys: int, seconds: float) -> tuple[float, int]:
    """p99 latency (seconds) of reads of random hot keys by concurrent readers; and how many reads."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def reader() -> None:
        rng = random.Random()
        while time.perf_counter() < stop:
            key = rng.randrange(keys)
            before = time.perf_counter()
            await get(key)
            latencies.append(time.perf_counter() - before)
            await asyncio.sleep(PAUSE)

    await asyncio.gather(*(reader() for _ in range(READERS)))
    return statistics.quantiles(latencies, n=100)[98], len(latencies)


async def warm(get: Get, keys: int) -> None:
    await asyncio.gather(*(get(key) for key in range(keys)))


async def latency_rows(keys: int, seconds: float) -> list[Row]:
    results: dict[str, tuple[float, int, int]] = {}

    plain: dict[Any, float] = {key: random.random() for key in range(keys)}

    async def baseline(key: Any) -> Any:
        return plain[key]

    p99, reads = await read_p99(baseline, keys, seconds)
    results["no refresh (plain dict)"] = (p99, reads, 0)

    upstream = Upstream()
    hand = HandWritten(upstream)
    await warm(hand.get, keys)
    upstream.fetches = 0
    p99, reads = await read_p99(hand.get, keys, seconds)
    results["hand-written dict with expiry"] = (p99, reads, upstream.fetches)

    upstream = Upstream()
    early = cashews_get(upstream)
    await warm(early, keys)
    upstream.fetches = 0
    p99, reads = await read_p99(early, keys, seconds)
    results["cashews early refresh"] = (p99, reads, upstream.fetches)

    upstream = Upstream()
    async with Family(upstream, ttl=3600) as get:
        await warm(get, keys)
        upstream.fetches = 0
        p99, reads = await read_p99(get, keys, seconds)
    results["RefresherFamily, no expiry in the run"] = (p99, reads, upstream.fetches)

    upstream = Upstream()
    async with Family(upstream) as get:
        await warm(get, keys)
        upstream.fetches = 0
        p99, reads = await read_p99(get, keys, seconds)
    results["RefresherFamily"] = (p99, reads, upstream.fetches)

    base = results["no refresh (plain dict)"][0]
    rows = []
    for name, (p99, reads, fetches) in results.items():
        # The family against itself without expiries: what the refreshes add to a read.
        own = results["RefresherFamily, no expiry in the run"][0] if name == "RefresherFamily" else base
        rows.append(
            Row(
                f"p99 read, {keys} hot keys, ttl {TTL:g}s: {name}",
                f"{p99 * 1e3:.3f} ms",
                f"{own * 1e3:.3f} ms",
                p99 / own,
            )
        )
        if fetches:
            rows.append(
                Row(
                    f"  upstream fetches/s meanwhile ({reads / seconds:,.0f} reads/s): {name}",
                    f"{fetches / seconds:,.0f}",
                    f"{keys / TTL:,.0f}",
                    fetches / seconds / (keys / TTL),
                )
            )
    return rows


async def cold_key_rows() -> list[Row]:
    counts: dict[str, int] = {}

    upstream = Upstream()
    hand = HandWritten(upstream)
    await asyncio.gather(*(hand.get("EUR") for _ in range(100)))
    counts["hand-written dict with expiry"] = upstream.fetches

    upstream = Upstream()
    early = cashews_get(upstream)
    await asyncio.gather(*(early("EUR") for _ in range(100)))
    counts["cashews early refresh"] = upstream.fetches

    upstream = Upstream()
    async with Family(upstream) as get:
        await asyncio.gather(*(get("EUR") for _ in range(100)))
    counts["RefresherFamily"] = upstream.fetches

    return [
        Row(
            f"upstream fetches for 100 concurrent first gets of a cold key: {name}",
            str(count),
            "1",
            count / 1,
        )
        for name, count in counts.items()
    ]


async def per_key_bytes(variant: str, count: int) -> float:
    """Bytes per key that ``variant`` keeps for ``count`` keys (the cache only, not the values)."""
    values = [random.random() for _ in range(count)]

    async def fetch(key: int) -> float:
        return values[key]

    gc.collect()
    tracemalloc.start()
    try:
        async with _Adapter(variant, fetch) as get:
            await asyncio.sleep(0)
            gc.collect()
            before = tracemalloc.get_traced_memory()[0]
            for start in range(0, count, 1000):
                await asyncio.gather(*(get(key) for key in range(start, min(start + 1000, count))))
            gc.collect()
            after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return (after - before) / count


class _Adapter:
    """An async context manager giving a get, for a variant made from a fetch function."""

    def __init__(self, variant: str, fetch: Callable[[int], Awaitable[float]]) -> None:
        self.variant = variant
        self.fetch = fetch
        self.family: Family | None = None

    async def __aenter__(self) -> Get:
        upstream: Any = self.fetch
        if self.variant == "hand":
            return HandWritten(upstream, ttl=3600).get
        if self.variant == "cashews":
            return cashews_get(upstream, ttl=3600)
        self.family = Family(upstream, ttl=3600, max_keys=1_000_000)
        return await self.family.__aenter__()

    async def __aexit__(self, *exc_info: object) -> None:
        if self.family is not None:
            await self.family.__aexit__(*exc_info)


async def memory_rows(count: int = 10_000) -> list[Row]:
    sizes = {}
    for variant, name in (
        ("hand", "hand-written dict with expiry"),
        ("cashews", "cashews early refresh"),
        ("family", "RefresherFamily"),
    ):
        sizes[name] = await per_key_bytes(variant, count)
    base = sizes["hand-written dict with expiry"]
    return [
        Row(
            f"memory per cached key ({count:,} keys, float values): {name}",
            f"{size:.0f} B",
            f"{base:.0f} B",
            size / base,
        )
        for name, size in sizes.items()
    ]


async def measure(seconds: float = 4.0, keys: int = 1000, memory_keys: int = 10_000) -> list[Row]:
    return [*await latency_rows(keys, seconds), *await cold_key_rows(), *await memory_rows(memory_keys)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--memory-keys", type=int, default=10_000)
    args = parser.parse_args()
    print_rows(asyncio.run(measure(args.seconds, args.keys, args.memory_keys)))


if __name__ == "__main__":
    main()
