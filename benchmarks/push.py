"""Push against polling: how soon a change is served, and what an unchanged document costs.

1. Latency from an upstream change to the middleware serving it (``handle.value``,
   what a request reads, checked every 0.5 ms): `SSESource` (its ``fetch_url`` polled
   every 5 s as the safety net) against `HTTPSource` polling every 5 s, both in one
   middleware watching one upstream, the same changes at random moments. p50 and p99.
2. Upstream requests per hour for one unchanged document, over a quiet window:
   `SSESource` (stream connections and document GETs) against `HTTPSource` polling
   every 5 s (its conditional GETs), each against an upstream of its own. The SSE
   stream's keepalive comments are not requests; the stream is one held connection.

Everything runs on 127.0.0.1 (uvicorn in a thread: the test suite's SSE upstream).
Ratios are measured side by side in one run. One process: how soon *every worker*
serves a change is this figure plus nothing, as each worker holds its own stream.

    python benchmarks/push.py [--changes 40] [--quiet 30] [--every 5]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path

from _common import Row, print_rows, trivial_app

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' SSE upstream

from asgi_lifespan import LifespanManager

from asgi_refresh import HTTPSource, Refresher, RefreshMiddleware, SSESource
from asgi_refresh.demo.upstream import serve
from tests.sse_server_app import SSEUpstream


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def latencies(changes: int, every: float) -> tuple[list[float], list[float]]:
    """Seconds from each change to it being served: (SSE, polling)."""
    upstream = SSEUpstream(keepalive=15)
    with serve(upstream) as base_url:
        upstream.base_url = base_url
        upstream.emit({"change": 0})
        middleware = RefreshMiddleware(
            trivial_app,
            refreshers=[
                Refresher(
                    "pushed", SSESource(f"{base_url}/stream", fetch_url=f"{base_url}/doc"), every=every
                ),
                Refresher("polled", HTTPSource(f"{base_url}/doc"), every=every),
            ],
        )
        pushed: list[float] = []
        polled: list[float] = []
        try:
            async with LifespanManager(middleware):
                handle = middleware.handle
                while not handle.status()["pushed"].get("stream", {}).get("connected"):  # noqa: ASYNC110 - another thread's server
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.2)  # the catch-up GET after connecting is done
                for number in range(1, changes + 1):
                    await asyncio.sleep(random.uniform(0, every))  # a random phase against the poll
                    wanted = {"change": number}
                    event_id = upstream.emit(wanted)
                    emitted = upstream.emitted_at[event_id]
                    seen: dict[str, float] = {}
                    while len(seen) < 2:
                        now = time.perf_counter()
                        for name in ("pushed", "polled"):
                            if name not in seen and handle.value(name) == wanted:
                                seen[name] = now - emitted
                        await asyncio.sleep(0.0005)
                    pushed.append(seen["pushed"])
                    polled.append(seen["polled"])
        finally:
            upstream.drop()
    return pushed, polled


async def requests_per_hour(quiet: float, every: float) -> tuple[float, float]:
    """Upstream requests per hour for an unchanged document: (SSE, polling)."""
    counts = []
    for make in (
        lambda base: SSESource(f"{base}/stream", fetch_url=f"{base}/doc"),
        lambda base: HTTPSource(f"{base}/doc"),
    ):
        upstream = SSEUpstream(keepalive=15)
        with serve(upstream) as base_url:
            upstream.base_url = base_url
            upstream.emit({"unchanged": True})
            middleware = RefreshMiddleware(
                trivial_app, refreshers=[Refresher("doc", make(base_url), every=every)]
            )
            try:
                async with LifespanManager(middleware):
                    await asyncio.sleep(1.0)  # startup and the first connection settle
                    before = upstream.doc_requests + upstream.stream_requests
                    await asyncio.sleep(quiet)
                    counts.append(upstream.doc_requests + upstream.stream_requests - before)
            finally:
                upstream.drop()
    sse, polling = (count * 3600 / quiet for count in counts)
    return sse, polling


async def measure(changes: int = 40, quiet: float = 30.0, every: float = 5.0) -> list[Row]:
    pushed, polled = await latencies(changes, every)
    sse_rate, polling_rate = await requests_per_hour(quiet, every)
    rows = []
    for label, fraction in (("p50", 0.5), ("p99", 0.99)):
        sse, poll = percentile(pushed, fraction), percentile(polled, fraction)
        rows.append(
            Row(
                f"change to served, {label} of {changes}: SSE / polling every {every:g} s",
                f"{sse * 1000:.1f} ms",
                f"{poll * 1000:.0f} ms",
                sse / poll,
            )
        )
    rows.append(
        Row(
            f"  (means: SSE {statistics.mean(pushed) * 1000:.1f} ms, polling {statistics.mean(polled) * 1000:.0f} ms)",
            "",
            "",
            None,
        )
    )
    rows.append(
        Row(
            f"upstream requests/hour, unchanged doc: SSE / polling every {every:g} s",
            f"{sse_rate:,.0f}",
            f"{polling_rate:,.0f}",
            sse_rate / polling_rate if polling_rate else None,
        )
    )
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--changes", type=int, default=40)
    parser.add_argument("--quiet", type=float, default=30.0, help="seconds of the quiet window")
    parser.add_argument("--every", type=float, default=5.0, help="the polling interval, seconds")
    args = parser.parse_args()
    print_rows(asyncio.run(measure(args.changes, args.quiet, args.every)))
