"""Per-request overhead of RefreshMiddleware, as a ratio against a bare pass-through.

Both variants wrap the same trivial Starlette app and run under the same in-process
"server" that, like uvicorn, copies the lifespan state into every request. The
pass-through's lifespan state is padded to the same size, so the only difference
is the middleware itself. A third variant has the admin endpoints enabled
(``admin_path="/_refresh"``) and is sent the same requests, outside that prefix. Variants are timed in alternating rounds in one run, and
the ratio of medians is printed: absolute times on a shared machine mean little.

    python benchmarks/overhead.py [--refreshers 100] [--rounds 40] [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from typing import Any

from _common import Row, Server, constant, print_rows
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from asgi_refresh import Refresher, RefreshMiddleware


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


class PassThrough:
    """The baseline: a pure ASGI middleware that only forwards."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


async def measure(refreshers: int = 100, rounds: int = 40, requests: int = 2000) -> list[Row]:
    """Per-request time behind RefreshMiddleware (without, then with admin endpoints) over the
    pass-through's, median of rounds."""
    routes = [Route("/", hello)]

    def refreshed(**options: Any) -> RefreshMiddleware:
        return RefreshMiddleware(
            Starlette(routes=routes),
            refreshers=[Refresher(f"r{i}", constant(i), every="1h") for i in range(refreshers)],
            **options,
        )

    # Same number of state entries as the refreshed app: values, handle, snapshot marker.
    servers = {
        "pass-through": Server(PassThrough(Starlette(routes=routes)), padding=refreshers + 2),
        "RefreshMiddleware": Server(refreshed(), padding=0),
        "with admin": Server(
            refreshed(admin_path="/_refresh", admin_token="benchmark-admin-token"), padding=0
        ),
    }
    for server in servers.values():
        await server.start()
    assert len(servers["pass-through"].state) == len(servers["RefreshMiddleware"].state)
    for server in servers.values():  # warm up
        await server.requests(requests // 4)
    samples: dict[str, list[int]] = {name: [] for name in servers}
    for round_number in range(rounds):
        order = list(servers.items())
        if round_number % 2:
            order.reverse()
        for name, server in order:
            samples[name].append(await server.requests(requests))
    for server in servers.values():
        await server.stop()

    per_request = {name: statistics.median(values) / requests for name, values in samples.items()}
    baseline = per_request["pass-through"]
    return [
        Row(
            f"per-request time in process, {refreshers} refreshers{suffix} (<= 1.03)",
            f"{per_request[name]:.0f} ns",
            f"{baseline:.0f} ns",
            per_request[name] / baseline,
        )
        for name, suffix in (("RefreshMiddleware", ""), ("with admin", ", admin on"))
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--refreshers", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--requests", type=int, default=2000)
    arguments = parser.parse_args()
    print_rows(asyncio.run(measure(arguments.refreshers, arguments.rounds, arguments.requests)))
