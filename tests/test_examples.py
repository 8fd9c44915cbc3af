"""The examples run and do what their docstrings say."""

from __future__ import annotations

import importlib.util
import sys
from datetime import datetime, timedelta
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from asgi_lifespan import LifespanManager

from asgi_refresh.demo.upstream import Upstream, serve

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_quickstart_serves_and_refreshes_on_demand() -> None:
    """GET / shows the data and its status; POST /refresh loads the next value."""
    app = load("quickstart").app
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            first = (await client.get("/")).json()
            assert first["data"]["names"]
            assert first["status"]["refresh_count"] == 1
            refreshed = (await client.post("/refresh")).json()
            assert refreshed["data"]["names"] != first["data"]["names"]
            assert (await client.get("/")).json()["status"]["refresh_count"] == 2


async def test_token_renewal_renews_before_expiry_and_feeds_orders() -> None:
    """The token endpoint's grant is used by the orders refresher; renewal is due before expiry."""
    upstream = Upstream(token_lifetime=20)
    upstream.set("/protected", {"orders": ["#1"]})
    with serve(upstream) as upstream_url:
        app = load("token_renewal").make_app(upstream_url)
        async with LifespanManager(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                page = (await client.get("/")).json()
    assert page["orders"] == {"orders": ["#1"]}
    renewed = datetime.fromisoformat(page["token renewed at"])
    assert datetime.fromisoformat(page["next renewal at"]) - renewed == pytest.approx(
        timedelta(seconds=18), abs=timedelta(seconds=2)
    )
    assert upstream.requests["/token"] == 1
