"""Per-request overhead of RefreshMiddleware, as a ratio against a bare pass-through.

Both variants wrap the same trivial Starlette app and run under the same in-process
"server" that, like uvicorn, copies the lifespan state into every request. The
pass-through's lifespan state is padded to the same size, so the only difference
is the middleware itself. Variants are timed in alternating rounds in one run, and
the ratio of medians is printed: absolute times on a shared machine mean little.

    python benchmarks/overhead.py [--refreshers 100] [--rounds 40] [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

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


def constant(value: int) -> Any:
    async def fetch() -> int:
        return value

    return fetch


class Server:
    """Runs one app's lifespan and serves requests to it, uvicorn-style."""

    def __init__(self, app: Any, padding: int) -> None:
        self.app = app
        self.state: dict[str, Any] = {f"pad{i}": i for i in range(padding)}
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def start(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": self.state}
        self.task = asyncio.ensure_future(self.app(scope, self.inbox.get, self.outbox.put))
        await self.inbox.put({"type": "lifespan.startup"})
        reply = await self.outbox.get()
        assert reply["type"] == "lifespan.startup.complete", reply

    async def stop(self) -> None:
        await self.inbox.put({"type": "lifespan.shutdown"})
        await self.outbox.get()
        await self.task

    async def requests(self, count: int) -> int:
        """Serve ``count`` GET / requests; return the elapsed nanoseconds."""
        body = {"type": "http.request", "body": b"", "more_body": False}

        async def receive() -> dict[str, Any]:
            return body

        async def send(message: dict[str, Any]) -> None:
            pass

        app, state = self.app, self.state
        started = time.perf_counter_ns()
        for _ in range(count):
            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "GET",
                "scheme": "http",
                "path": "/",
                "raw_path": b"/",
                "query_string": b"",
                "root_path": "",
                "headers": [],
                "client": ("127.0.0.1", 5000),
                "server": ("127.0.0.1", 8000),
                "state": state.copy(),
            }
            await app(scope, receive, send)
        return time.perf_counter_ns() - started


async def main(refreshers: int, rounds: int, requests: int) -> float:
    routes = [Route("/", hello)]
    refreshed = RefreshMiddleware(
        Starlette(routes=routes),
        refreshers=[Refresher(f"r{i}", constant(i), every="1h") for i in range(refreshers)],
    )
    # Same number of state entries as the refreshed app: values, handle, snapshot marker.
    servers = {
        "pass-through": Server(PassThrough(Starlette(routes=routes)), padding=refreshers + 2),
        "RefreshMiddleware": Server(refreshed, padding=0),
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
    ratio = per_request["RefreshMiddleware"] / per_request["pass-through"]
    print(f"trivial Starlette app, {refreshers} refreshers, {rounds} rounds x {requests} requests")
    print(f"{'variant':<20} {'median ns/request':>18}")
    for name, value in per_request.items():
        print(f"{name:<20} {value:>18.0f}")
    print(f"ratio RefreshMiddleware / pass-through: {ratio:.3f} (target <= 1.03)")
    return ratio


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--refreshers", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--requests", type=int, default=2000)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.refreshers, arguments.rounds, arguments.requests))
