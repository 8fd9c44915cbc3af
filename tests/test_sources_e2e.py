"""End to end against a real local upstream: uvicorn on 127.0.0.1, real sockets, real HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from asgi_lifespan import LifespanManager

from asgi_refresh import BearerToken, Fresh, HTTPSource, Refresher, RefreshMiddleware
from asgi_refresh.demo.upstream import Upstream, serve

from .helpers import ScriptedApp

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[Upstream, str]]:
    app = Upstream(token_lifetime=300)
    with serve(app) as base_url:
        yield app, base_url


def token(body: bytes) -> Fresh[str]:
    grant = json.loads(body)
    return Fresh(grant["access_token"], expires_in=grant["expires_in"])


async def test_conditional_polling_against_a_real_server(upstream: tuple[Upstream, str]) -> None:
    """First a 200, then 304s with no body, then the change: counted at the server."""
    server, base_url = upstream
    server.set("/names", ["ada", "grace"])
    middleware = RefreshMiddleware(
        ScriptedApp(), refreshers=[Refresher("names", HTTPSource(f"{base_url}/names"), every="1h")]
    )
    before = server.requests["/names"], server.not_modified["/names"]
    async with LifespanManager(middleware):
        handle = middleware.handle
        assert handle.value("names") == ["ada", "grace"]
        assert await handle.refresh("names") == ["ada", "grace"]
        assert handle.status()["names"]["last_outcome"] == "not_modified"
        server.set("/names", ["ada", "grace", "linus"])
        assert await handle.refresh("names") == ["ada", "grace", "linus"]
        assert handle.status()["names"]["last_outcome"] == "changed"
    assert server.requests["/names"] - before[0] == 3
    assert server.not_modified["/names"] - before[1] == 1


async def test_a_token_refresher_feeds_a_second_refresher(upstream: tuple[Upstream, str]) -> None:
    """The token endpoint's grant is renewed before expiry and used by another refresher's requests."""
    server, base_url = upstream
    server.set("/protected", {"orders": 3})
    middleware = RefreshMiddleware(
        ScriptedApp(),
        refreshers=[
            Refresher("token", HTTPSource(f"{base_url}/token", method="POST", parse=token), every="1h"),
            Refresher("orders", HTTPSource(f"{base_url}/protected", auth=BearerToken("token")), every="1h"),
        ],
    )
    async with LifespanManager(middleware):
        handle = middleware.handle
        assert handle.value("orders") == {"orders": 3}
        status: dict[str, Any] = handle.status()
        assert status["orders"]["consecutive_failures"] == 0
        assert status["token"]["next_refresh_at"] < status["orders"]["next_refresh_at"]
        assert handle.value("token") == server.tokens[-1]
