"""One FastAPI app four ways, for the through-uvicorn benchmark: who keeps ``names`` fresh.

- ``bare``: no refreshing at all (the baseline);
- ``refreshed``: RefreshMiddleware, the handler reads ``request.state.names``;
- ``repeat_every``: fastapi-utils' ``@repeat_every`` started in the lifespan,
  writing ``app.state.names``;
- ``hand_written``: the usual ``asyncio.create_task`` loop in the lifespan.

Every variant refreshes once a minute, so during a run the request path is all
that differs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request

from asgi_refresh import Refresher, RefreshMiddleware
from asgi_refresh.demo.upstream import Upstream

NAMES = ["ada", "grace", "katherine"]


async def load_names() -> list[str]:
    return list(NAMES)


def _app(lifespan: Any = None, *, per_request: bool = False) -> FastAPI:
    """The app; its handler reads ``request.state.names`` or ``request.app.state.names``."""
    app = FastAPI(lifespan=lifespan)
    if per_request:

        @app.get("/")
        async def from_request(request: Request) -> list[str]:
            names: list[str] = request.state.names
            return names

    else:

        @app.get("/")
        async def from_app(request: Request) -> list[str]:
            names: list[str] = request.app.state.names
            return names

    return app


bare = _app()
bare.state.names = NAMES

refreshed = RefreshMiddleware(
    _app(per_request=True), refreshers=[Refresher("names", load_names, every="60s")]
)


@contextlib.asynccontextmanager
async def _repeat_every_lifespan(app: FastAPI) -> AsyncIterator[None]:
    from fastapi_utils.tasks import repeat_every

    @repeat_every(seconds=60)
    async def refresh() -> None:
        app.state.names = await load_names()

    app.state.names = await load_names()
    await refresh()
    yield


repeat_every = _app(_repeat_every_lifespan)


@contextlib.asynccontextmanager
async def _hand_written_lifespan(app: FastAPI) -> AsyncIterator[None]:
    async def loop() -> None:
        while True:
            await asyncio.sleep(60)
            app.state.names = await load_names()

    app.state.names = await load_names()
    task = asyncio.create_task(loop())
    yield
    task.cancel()


hand_written = _app(_hand_written_lifespan)


# -- busy: the same app while 1,000 values refresh every 100 ms (benchmarks/busy.py) ----------

BUSY = 1000


async def _busy_value() -> int:
    return 1


refreshed_busy = RefreshMiddleware(
    _app(per_request=True),
    refreshers=[
        Refresher("names", load_names, every="60s"),
        *(Refresher(f"value{i}", _busy_value, every="100ms") for i in range(BUSY)),
    ],
)


@contextlib.asynccontextmanager
async def _hand_written_busy_lifespan(app: FastAPI) -> AsyncIterator[None]:
    values: dict[str, int] = {}

    async def loop(name: str) -> None:
        while True:
            await asyncio.sleep(0.1)
            values[name] = await _busy_value()

    app.state.names = await load_names()
    tasks = [asyncio.create_task(loop(f"value{i}")) for i in range(BUSY)]
    yield
    for task in tasks:
        task.cancel()


hand_written_busy = _app(_hand_written_busy_lifespan)


# -- a 5 MB JSON document that changes on every request (benchmarks/sources.py) -----------


def document(megabytes: float, salt: int = 0) -> list[dict[str, Any]]:
    """A JSON array of small records, about ``megabytes`` once encoded."""
    count = int(megabytes * 1024 * 1024 / 64)
    return [{"id": i, "name": f"user-{i}-{salt}", "active": i % 3 == 0} for i in range(count)]


class _ChangingDocument:
    """Serves ``/doc-5mb`` in two versions, taking turns: every fetch is a full 200 and a parse.

    In a process of its own, so that serving 5 MB holds nobody's GIL but its own:
    the stall measured in the fetching process is the fetch's. ``/`` answers once
    both versions are built.
    """

    def __init__(self) -> None:
        self._upstream: Upstream | None = None
        self._versions: list[Any] = []
        self._turn = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._upstream is None:
            self._upstream = Upstream()
            for salt in range(2):
                self._upstream.set("/doc-5mb", document(5, salt))
                self._versions.append(self._upstream.documents["/doc-5mb"])
        if scope["path"] == "/doc-5mb":
            self._turn += 1
            self._upstream.documents["/doc-5mb"] = self._versions[self._turn % 2]
            await self._upstream(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


changing_document = _ChangingDocument()


def snapshot_app() -> Any:
    """For benchmarks/snapshots.py: ``BENCH_REFRESHERS`` HTTP refreshers of ``BENCH_UPSTREAM``,
    snapshotted to ``BENCH_SNAPSHOTS``; ``/`` answers how many have a value."""
    import os

    from asgi_refresh import HTTPSource

    count = int(os.environ["BENCH_REFRESHERS"])
    upstream = os.environ["BENCH_UPSTREAM"]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        state = scope["state"]
        loaded = sum(1 for i in range(count) if state.get(f"r{i}") is not None)
        body = f'{{"loaded": {loaded}}}'.encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return RefreshMiddleware(
        app,
        refreshers=[
            Refresher(f"r{i}", HTTPSource(f"{upstream}/r{i}", timeout="2s"), every="1h") for i in range(count)
        ],
        snapshot_dir=os.environ["BENCH_SNAPSHOTS"],
        startup_timeout="20s",
    )
