"""HTTPSource against a local upstream: bytes per poll, and event-loop stalls while fetching.

1. Bytes per poll of an unchanged ~1 MB JSON document: HTTPSource (conditional
   requests, so a 304 with no body) against a plain ``httpx`` GET each poll (what
   a hand-written refresher does). Body bytes as counted by the upstream.
2. Event-loop stall: the worst latency of a trivial endpoint, requested in a
   tight loop on the same event loop, while a ~5 MB JSON document is fetched and
   parsed over and over; against the same loop with no refresh running, and
   against a hand-written fetch that parses on the event loop. HTTPSource is
   measured twice when ijson is installed: as it parses without the big-json
   extra (json.loads in a thread) and with it (a slice at a time on the loop).
   The floor: the same GET with no parse at all.

Everything runs on 127.0.0.1: for the bytes, the upstream is uvicorn in a thread;
for the stalls, uvicorn in a process of its own (serving 5 MB in a thread of this
process held the GIL and counted as our stall). Figures are ratios measured side
by side in one run.

    python benchmarks/sources.py [--polls 50] [--rounds 5] [--seconds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any
from unittest import mock

import httpx
from _common import Row, Server, print_rows, trivial_app
from bench_apps import document
from uvicorn_load import _start, _stop

from asgi_refresh import HTTPSource, Refresher, RefreshMiddleware
from asgi_refresh._sources import incremental
from asgi_refresh.demo.upstream import Upstream, serve


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
    async with Server(middleware):
        before = upstream.bytes_sent["/doc-1mb"]
        for _ in range(polls):
            await middleware.handle.refresh("doc")
        conditional = (upstream.bytes_sent["/doc-1mb"] - before) / polls
    return plain, conditional


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


async def stalls(base_url: str, rounds: int, seconds: float) -> dict[str, float]:
    """Median over rounds of the worst trivial-request latency, per variant.

    The upstream (`bench_apps.changing_document`) runs in a process of its own and
    changes the document on every request, so every fetch is a full 200 and a parse.
    """
    middleware = RefreshMiddleware(
        trivial_app, refreshers=[Refresher("doc", HTTPSource(f"{base_url}/doc-5mb"), every="1h")]
    )

    async def refresh() -> None:
        await middleware.handle.refresh("doc")

    results: dict[str, list[float]] = {
        "no refresh": [],
        "HTTPSource": [],
        "hand-written": [],
        "GET, no parse": [],
    }
    if incremental.available():
        results["HTTPSource, big-json"] = []
    async with Server(middleware), httpx.AsyncClient() as client:

        async def hand_written() -> None:
            json.loads((await client.get(f"{base_url}/doc-5mb")).content)  # parsed on the loop

        async def download_only() -> None:
            await client.get(f"{base_url}/doc-5mb")

        for _ in range(rounds):
            results["no refresh"].append(await worst_latency(middleware, seconds, None))
            with mock.patch.object(incremental, "available", return_value=False):  # as without the extra
                results["HTTPSource"].append(await worst_latency(middleware, seconds, refresh))
            if "HTTPSource, big-json" in results:
                results["HTTPSource, big-json"].append(await worst_latency(middleware, seconds, refresh))
            results["hand-written"].append(await worst_latency(middleware, seconds, hand_written))
            results["GET, no parse"].append(await worst_latency(middleware, seconds, download_only))
    return {name: statistics.median(values) for name, values in results.items()}


async def measure(polls: int = 50, rounds: int = 5, seconds: float = 2.0) -> list[Row]:
    """Bytes per poll with and without conditional requests; loop stalls while fetching 5 MB."""
    upstream = Upstream()
    with serve(upstream) as base_url:
        plain, conditional = await bytes_per_poll(upstream, base_url, polls)
    server = _start("changing_document")
    try:
        worst = await stalls(f"http://127.0.0.1:{server[1]}", rounds, seconds)
    finally:
        _stop([server])
    base = worst["no refresh"]
    rows = [
        Row(
            "body bytes per poll, unchanged 1 MB JSON: HTTPSource / GET",
            f"{conditional:,.0f} B",
            f"{plain:,.0f} B",
            conditional / plain,
        )
    ]
    for name in ("HTTPSource", "HTTPSource, big-json", "hand-written", "GET, no parse"):
        if name in worst:
            rows.append(
                Row(
                    f"worst request latency, 5 MB JSON fetched: {name} / idle",
                    f"{worst[name] * 1000:.1f} ms",
                    f"{base * 1000:.1f} ms",
                    worst[name] / base,
                )
            )
    return rows  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--polls", type=int, default=50, help="polls of the 1 MB document per variant")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the stall measurement")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one stall round")
    args = parser.parse_args()
    print_rows(asyncio.run(measure(args.polls, args.rounds, args.seconds)))
