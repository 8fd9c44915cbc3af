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
