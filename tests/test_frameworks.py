"""Starlette, FastAPI and their test clients, through httpx.ASGITransport and asgi-lifespan."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI, Request
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

import asgi_refresh
from asgi_refresh import Refresher, RefreshError, RefreshMiddleware
from asgi_refresh.testing import FakeClock, override

from .helpers import Upstream

pytestmark = pytest.mark.anyio


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


def starlette_app(**middleware_options: Any) -> Starlette:
    """A Starlette app with its own lifespan state, wrapped via Middleware(RefreshMiddleware, ...)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        yield {"greeting": "hello world"}

    async def names(request: StarletteRequest) -> JSONResponse:
        return JSONResponse({"names": request.state.names, "greeting": request.state.greeting})

    return Starlette(
        routes=[Route("/names", names)],
        lifespan=lifespan,
        middleware=[Middleware(RefreshMiddleware, **middleware_options)],
    )


async def test_starlette_app_state_and_refreshed_state_side_by_side() -> None:
    """Starlette's own lifespan state and the refreshed values both reach request.state."""
    clock = FakeClock()
    app = starlette_app(
        refreshers=[Refresher("names", Upstream(["ada"], ["ada", "grace"]), every="1h", jitter=0)],
        clock=clock,
    )
    async with LifespanManager(app) as manager, client_for(manager.app) as client:
        assert (await client.get("/names")).json() == {"names": ["ada"], "greeting": "hello world"}
        await clock.advance("1h")
        assert (await client.get("/names")).json() == {"names": ["ada", "grace"], "greeting": "hello world"}


async def test_starlette_lifespan_reads_refreshed_values_at_startup() -> None:
    """The app's startup runs after the first load, so it can use the data."""
    seen: list[Any] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        seen.append("startup")
        yield

    async def startup_probe(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            seen.append(scope["state"]["names"])
        await inner(scope, receive, send)

    inner = Starlette(lifespan=lifespan)
    app = RefreshMiddleware(startup_probe, refreshers=[Refresher("names", Upstream(["ada"]), every="1h")])
    async with LifespanManager(app):
        pass
    assert seen == [["ada"], "startup"]


async def test_fastapi_add_middleware_and_request_state() -> None:
    """app.add_middleware(RefreshMiddleware, ...) and request.state.<name> in a FastAPI handler."""
    app = FastAPI()
    clock = FakeClock()
    app.add_middleware(
        RefreshMiddleware,
        refreshers=[Refresher("rates", Upstream({"EUR": 1.0}, {"EUR": 1.1}), every="10m", jitter=0)],
        clock=clock,
    )

    @app.get("/rates")
    async def rates(request: Request) -> dict[str, float]:
        result: dict[str, float] = request.state.rates
        return result

    @app.post("/refresh")
    async def refresh(request: Request) -> asgi_refresh.RefresherStatus:
        handle: asgi_refresh.RefreshHandle = request.state.asgi_refresh
        await handle.refresh("rates")
        return handle.status()["rates"]

    async with LifespanManager(app) as manager, client_for(manager.app) as client:
        assert (await client.get("/rates")).json() == {"EUR": 1.0}
        status = (await client.post("/refresh")).json()
        assert status["refresh_count"] == 2
        assert (await client.get("/rates")).json() == {"EUR": 1.1}


def test_starlette_testclient_inside_with() -> None:
    """TestClient in a with-block runs the lifespan; the clock is driven through its portal."""
    clock = FakeClock()
    app = starlette_app(
        refreshers=[Refresher("names", Upstream(["a"], ["b"]), every="1h", jitter=0)], clock=clock
    )
    with TestClient(app) as client:
        assert client.get("/names").json()["names"] == ["a"]
        assert client.portal is not None
        client.portal.call(clock.advance, "1h")
        assert client.get("/names").json()["names"] == ["b"]
        assert client.app_state["asgi_refresh"].status()["names"]["refresh_count"] == 2


def test_starlette_testclient_without_with_still_serves(caplog: pytest.LogCaptureFixture) -> None:
    """Without `with`, TestClient runs no lifespan: the request still gets an answer, not a crash."""

    async def hello(request: StarletteRequest) -> JSONResponse:
        return JSONResponse({"names": getattr(request.state, "names", None)})

    app = Starlette(
        routes=[Route("/", hello)],
        middleware=[Middleware(RefreshMiddleware, refreshers=[Refresher("names", Upstream(), every="1h")])],
    )
    response = TestClient(app).get("/")
    assert response.json() == {"names": None}
    assert "no ASGI lifespan is running" in caplog.text


async def test_a_request_sees_one_snapshot_across_awaits() -> None:
    """Values published while a request is in flight do not change what that request sees."""
    clock = FakeClock()
    proceed = anyio.Event()
    inside = anyio.Event()

    async def slow(request: StarletteRequest) -> JSONResponse:
        before = (request.state.names, request.state.flags)
        inside.set()
        await proceed.wait()
        return JSONResponse({"before": before, "after": (request.state.names, request.state.flags)})

    app = Starlette(
        routes=[Route("/", slow)],
        middleware=[
            Middleware(
                RefreshMiddleware,
                refreshers=[
                    Refresher("names", Upstream("n1", "n2"), every="1m", jitter=0),
                    Refresher("flags", Upstream("f1", "f2"), every="1m", jitter=0),
                ],
                clock=clock,
            )
        ],
    )
    async with LifespanManager(app) as manager, client_for(manager.app) as client:
        async with anyio.create_task_group() as tg:
            result: dict[str, Any] = {}

            async def request() -> None:
                result.update((await client.get("/")).json())

            tg.start_soon(request)
            await inside.wait()
            await clock.advance("1m")
            proceed.set()
        assert result == {"before": ["n1", "f1"], "after": ["n1", "f1"]}
        assert (await client.get("/")).json()["before"] == ["n2", "f2"]


async def test_override_pins_a_value_for_tests() -> None:
    """testing.override publishes a value and stops refreshing that refresher."""
    clock = FakeClock()
    upstream = Upstream(["real"])
    app = starlette_app(refreshers=[Refresher("names", upstream, every="1m")], clock=clock)
    async with LifespanManager(app) as manager, client_for(manager.app) as client:
        handle = await _handle_from_request(manager.app)
        override(handle, "names", ["fake"])
        assert (await client.get("/names")).json()["names"] == ["fake"]
        await clock.advance("1h")
        assert await handle.refresh("names") == ["fake"]
        assert upstream.calls == 1
        assert handle.status()["names"]["next_refresh_at"] is None
        with pytest.raises(LookupError):
            override(handle, "nope", 1)


async def _handle_from_request(app: Any) -> asgi_refresh.RefreshHandle:
    """Reach the handle the way a handler does: scope["state"]["asgi_refresh"]."""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        pass

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/names",
        "raw_path": b"/names",
        "query_string": b"",
        "headers": [],
        "root_path": "",
        "scheme": "http",
        "server": ("t", 80),
        "http_version": "1.1",
        "asgi": {"version": "3.0"},
    }
    await app(scope, receive, send)
    state: dict[str, Any] = scope["state"]  # type: ignore[assignment]
    handle: asgi_refresh.RefreshHandle = state["asgi_refresh"]
    return handle


def test_testclient_raises_the_startup_failure_and_does_not_hang() -> None:
    """A required refresher that cannot load: TestClient raises its message when entered."""

    async def unreachable() -> list[str]:
        raise ConnectionError("upstream down")

    app = RefreshMiddleware(
        Starlette(), refreshers=[Refresher("names", unreachable, every="1h")], startup_timeout="0.1s"
    )
    with (
        pytest.raises(
            RuntimeError, match=r"Refresher 'names' could not load within startup_timeout \(100ms\)"
        ),
        TestClient(app),
    ):
        pass  # pragma: no cover


async def test_lifespan_manager_raises_the_startup_failure() -> None:
    """asgi-lifespan surfaces the failure at once instead of timing out after 5 s."""

    async def unreachable() -> list[str]:
        raise ConnectionError("upstream down")

    app = RefreshMiddleware(
        Starlette(), refreshers=[Refresher("names", unreachable, every="1h")], startup_timeout="0.1s"
    )
    errors: tuple[BaseException, ...] = ()
    with anyio.fail_after(3):
        try:
            async with LifespanManager(app):
                pass  # pragma: no cover
        except* RuntimeError as failed:  # an ExceptionGroup under trio
            errors = failed.exceptions
    assert [type(error) for error in errors] == [RefreshError]
    assert str(errors[0]).startswith("Refresher 'names' could not load within startup_timeout")
