"""What the benchmarks share: an in-process server, a free port, and the table they print."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any


async def trivial_app(scope: Any, receive: Any, send: Any) -> None:
    """An app with nothing of its own to start, answering every request with "ok"."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def free_port() -> int:
    """A loopback port that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def constant(value: int) -> Callable[[], Awaitable[int]]:
    """A fetch that returns ``value`` at once."""

    async def fetch() -> int:
        return value

    return fetch


@dataclass(frozen=True)
class Row:
    """One line of a benchmark's results: a figure, its baseline, and their ratio."""

    benchmark: str
    figure: str
    baseline: str
    ratio: float | None

    def __str__(self) -> str:
        ratio = "" if self.ratio is None else f"{self.ratio:.3f}"
        return f"{self.benchmark:<58} {self.figure:>16} {self.baseline:>16} {ratio:>9}"


HEADER = f"{'benchmark':<58} {'figure':>16} {'baseline':>16} {'ratio':>9}"


def print_rows(rows: list[Row]) -> None:
    print(HEADER)
    print("-" * len(HEADER))
    for row in rows:
        print(row)


class Server:
    """Runs one app's lifespan and serves requests to it, uvicorn-style."""

    def __init__(self, app: Any, padding: int = 0) -> None:
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

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
