"""HTTPSource against a local upstream: bytes per poll, and event-loop stalls while fetching.

1. Bytes per poll of an unchanged ~1 MB JSON document: HTTPSource (conditional
   requests, so a 304 with no body) against a plain ``httpx`` GET each poll (what
   a hand-written refresher does). Body bytes as counted by the upstream.
2. Event-loop stall: the worst latency of a trivial endpoint, requested in a
   tight loop on the same event loop, while a ~5 MB JSON document is fetched and
   parsed over and over; against the same loop with no refresh running, and
   against a hand-written fetch that parses on the event loop.

Everything runs on 127.0.0.1; the upstream is uvicorn in a thread. Figures are
ratios measured side by side in one run.

    python benchmarks/sources.py [--polls 50] [--rounds 5] [--seconds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from asgi_refresh import HTTPSource, Refresher, RefreshMiddleware
from asgi_refresh.demo.upstream import Upstream, serve


def document(megabytes: float, salt: int = 0) -> list[dict[str, Any]]:
    """A JSON array of small records, about ``megabytes`` once encoded."""
    count = int(megabytes * 1024 * 1024 / 64)
    return [{"id": i, "name": f"user-{i}-{salt}", "active": i % 3 == 0} for i in range(count)]


async def trivial_app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def bytes_per_poll(upstream: Upstream, base_url: str, polls: int) -> tuple[float, float]:
    """Body bytes the upstream sent per poll: (plain GET, HTTPSource)."""
    upstream.set("/doc-1mb", document(1))
    async with httpx.AsyncClient() as client:
        before = upstream.bytes_sent["/doc-1mb"]
        for _ in range(polls):
            json.loads((await client.get(f"{base_url}/doc-1mb")).content)
        plain = (upstream.bytes_sent["/doc-1mb"] - before) / polls

    middleware = RefreshMiddleware(
        trivial_app, refreshers=[Refresher("doc", HTTPSource(f"{base_url}/doc-1mb"), every="1h")]
    )
    async with lifespan(middleware):
        before = upstream.bytes_sent["/doc-1mb"]
        for _ in range(polls):
            await middleware.handle.refresh("doc")
        conditional = (upstream.bytes_sent["/doc-1mb"] - before) / polls
    return plain, conditional


class lifespan:
    """Drive an app's lifespan in process (what the server would do)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def __aenter__(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        self.task = asyncio.ensure_future(self.app(scope, self.inbox.get, self.outbox.put))
        await self.inbox.put({"type": "lifespan.startup"})
        reply = await self.outbox.get()
        assert reply["type"] == "lifespan.startup.complete", reply

    async def __aexit__(self, *exc: object) -> None:
        await self.inbox.put({"type": "lifespan.shutdown"})
        await self.outbox.get()
        await self.task


async def worst_latency(app: Any, seconds: float, background: Callable[[], Awaitable[None]] | None) -> float:
    """Max latency of a trivial request arriving every millisecond, while ``background`` repeats.

    Latency runs from when the request is due (arrives) to its response: an
    in-process request never yields to the loop, so a stall shows up as the
    wait before it can start.
    """
    stop = time.perf_counter() + seconds
    worst = 0.0

    async def repeat() -> None:
        assert background is not None
        while time.perf_counter() < stop:
            await background()

    task = asyncio.ensure_future(repeat()) if background else None
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        while time.perf_counter() < stop:
            due = time.perf_counter() + 0.001
            await asyncio.sleep(0.001)
            await client.get("/")
            worst = max(worst, time.perf_counter() - due)
    if task is not None:
        await task
    return worst


async def stalls(upstream: Upstream, base_url: str, rounds: int, seconds: float) -> dict[str, float]:
    """Median over rounds of the worst trivial-request latency, per variant."""
    # Two versions, hashed once up front: swapping them costs the loop nothing, so
    # every fetch is a full 200 and a parse, and the stall measured is the fetch's.
    versions = []
    for salt in range(2):
        upstream.set("/doc-5mb", document(5, salt))
        versions.append(upstream.documents["/doc-5mb"])
    turn = itertools.count()

    def change() -> None:
        upstream.documents["/doc-5mb"] = versions[next(turn) % 2]

    change()
    middleware = RefreshMiddleware(
        trivial_app, refreshers=[Refresher("doc", HTTPSource(f"{base_url}/doc-5mb"), every="1h")]
    )

    async def refresh() -> None:
        change()
        await middleware.handle.refresh("doc")

    results: dict[str, list[float]] = {"no refresh": [], "HTTPSource": [], "hand-written": []}
    async with lifespan(middleware), httpx.AsyncClient() as client:

        async def hand_written() -> None:
            change()
            json.loads((await client.get(f"{base_url}/doc-5mb")).content)  # parsed on the loop

        for _ in range(rounds):
            results["no refresh"].append(await worst_latency(middleware, seconds, None))
            results["HTTPSource"].append(await worst_latency(middleware, seconds, refresh))
            results["hand-written"].append(await worst_latency(middleware, seconds, hand_written))
    return {name: statistics.median(values) for name, values in results.items()}


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--polls", type=int, default=50, help="polls of the 1 MB document per variant")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the stall measurement")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one stall round")
    args = parser.parse_args()

    upstream = Upstream()
    with serve(upstream) as base_url:
        plain, conditional = await bytes_per_poll(upstream, base_url, args.polls)
        worst = await stalls(upstream, base_url, args.rounds, args.seconds)

    print("Bytes per poll, unchanged ~1 MB JSON document (body bytes sent by the upstream)")
    print(f"  plain GET every poll        {plain:12,.0f}")
    print(f"  HTTPSource (conditional)    {conditional:12,.0f}")
    print(f"  ratio conditional / plain   {conditional / plain:12.6f}")
    print()
    print("Worst latency of a trivial endpoint while a ~5 MB JSON document is fetched and parsed")
    base = worst["no refresh"]
    for name, value in worst.items():
        print(f"  {name:<27} {value * 1000:9.1f} ms   x{value / base:6.2f} of no refresh")


if __name__ == "__main__":
    asyncio.run(main())
