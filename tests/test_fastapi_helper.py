"""asgi_refresh.fastapi: Refreshed(name) and RefreshControl as typed FastAPI parameters."""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import Depends, FastAPI, WebSocket
from starlette.testclient import TestClient

from asgi_refresh import Refresher, RefreshHandle, RefreshMiddleware
from asgi_refresh.fastapi import RefreshControl, Refreshed

from .helpers import Upstream

pytestmark = pytest.mark.anyio


def first_name(names: Annotated[list[str], Refreshed("names")]) -> str:
    return names[0]


def make_app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(
        RefreshMiddleware, refreshers=[Refresher("names", Upstream(["a"], ["a", "b"]), every="1h")]
    )

    @app.get("/names")
    async def names(names: Annotated[list[str], Refreshed("names")]) -> list[str]:
        return names

    @app.get("/first")
    async def first(name: Annotated[str, Depends(first_name)]) -> str:
        return name

    @app.post("/refresh")
    async def refresh(control: RefreshControl) -> Any:
        assert isinstance(control, RefreshHandle)
        return await control.refresh("names")

    @app.get("/missing")
    async def missing(value: Annotated[int, Refreshed("nothing")]) -> int:
        return value  # pragma: no cover

    @app.websocket("/ws")
    async def ws(websocket: WebSocket, names: Annotated[list[str], Refreshed("names")]) -> None:
        await websocket.accept()
        await websocket.send_json(names)
        await websocket.close()

    return app


async def test_handlers_get_the_value_and_the_handle_typed() -> None:
    """Refreshed gives the value of the request (also inside other dependencies); RefreshControl the handle."""
    app = make_app()
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            assert (await client.get("/names")).json() == ["a"]
            assert (await client.get("/first")).json() == "a"
            assert (await client.post("/refresh")).json() == ["a", "b"]
            assert (await client.get("/names")).json() == ["a", "b"]


def test_websockets_and_clear_errors() -> None:
    """Works in WebSocket handlers; an unknown name, or no middleware, is a clear error."""
    with TestClient(make_app()) as client:
        with client.websocket_connect("/ws") as websocket:
            assert websocket.receive_json() == ["a"]
        with pytest.raises(
            RuntimeError,
            match=r"Refreshed\('nothing'\): no value for this request. No refresher is named 'nothing'",
        ):
            client.get("/missing")
    bare = FastAPI()

    @bare.get("/")
    async def index(names: Annotated[list[str], Refreshed("names")], control: RefreshControl) -> Any:
        return names  # pragma: no cover

    with (
        TestClient(bare) as client,
        pytest.raises(RuntimeError, match="Is the app wrapped in RefreshMiddleware"),
    ):
        client.get("/")

    @bare.get("/control")
    async def control_only(control: RefreshControl) -> Any:
        return None  # pragma: no cover

    with (
        TestClient(bare) as client,
        pytest.raises(RuntimeError, match="RefreshControl: no asgi_refresh handle"),
    ):
        client.get("/control")


def test_a_bad_name_fails_at_import_time() -> None:
    """Refreshed('not a name') fails where it is written, not at the first request."""
    with pytest.raises(ValueError, match="Refreshed: name must be a refresher name"):
        Refreshed("not a name")
