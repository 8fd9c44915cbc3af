"""The examples run and do what their docstrings say."""

from __future__ import annotations

import importlib.util
import sys
from datetime import datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from asgi_refresh import RefreshError
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


async def test_starlette_app_serves_and_refreshes_on_demand() -> None:
    """GET / shows the data and its status; POST /refresh loads the next value."""
    app = load("starlette_app").app
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            first = (await client.get("/")).json()
            assert first["data"]["names"]
            assert first["status"]["refresh_count"] == 1
            refreshed = (await client.post("/refresh")).json()
            assert refreshed["data"]["names"] != first["data"]["names"]
            assert (await client.get("/")).json()["status"]["refresh_count"] == 2


async def test_starlette_app_answers_502_with_the_reason_when_a_refresh_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """POST /refresh whose fetch fails: 502 with the reason, and GET / still serves the last value."""
    module = load("starlette_app")

    def unreachable() -> Any:
        raise ConnectionError("upstream unreachable")

    async with LifespanManager(module.app) as manager, client_for(manager.app) as client:
        first = (await client.get("/")).json()
        monkeypatch.setattr(module, "_rota", _Raising(unreachable))
        failed = await client.post("/refresh")
        assert failed.status_code == 502
        assert failed.json() == {
            "name": "names",
            "error": "Refresher 'names' failed: ConnectionError: upstream unreachable",
        }
        assert (await client.get("/")).json()["data"] == first["data"]


class _Raising:
    """An iterator whose next() raises what ``make_error`` makes."""

    def __init__(self, make_error: Any) -> None:
        self.make_error = make_error

    def __next__(self) -> Any:
        return self.make_error()


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


def client_for(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")  # type: ignore[arg-type]


async def test_plain_asgi_serves_the_refreshed_quote() -> None:
    """The framework-less app reads scope["state"]: the quote and its age."""
    app = load("plain_asgi").app
    async with LifespanManager(app), client_for(app) as client:
        page = (await client.get("/")).json()
    assert page["quote"] in ("Simple is better than complex.", "Flat is better than nested.")
    assert page["age"] >= 0


async def test_fastapi_app_converts_with_refreshed_rates() -> None:
    """Typed Refreshed parameters, refresh-now and status through RefreshControl."""
    app = load("fastapi_app").app
    async with LifespanManager(app) as manager, client_for(manager.app) as client:
        first = (await client.get("/convert", params={"amount": 10, "currency": "USD"})).json()
        assert first["currency"] == "USD"
        assert first["amount"] == round(10 * first["rate"], 2)
        unknown = await client.get("/convert", params={"amount": 10, "currency": "GBP"})
        assert unknown.status_code == 404
        refreshed = (await client.post("/rates/refresh")).json()
        assert refreshed["USD"] != first["rate"]
        assert (await client.get("/status")).json()["rates"]["refresh_count"] == 2


async def test_fastapi_app_answers_502_with_the_reason_when_a_refresh_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """POST /rates/refresh answers 502 naming the failure, and /convert keeps the last good rates."""
    module = load("fastapi_app")
    async with LifespanManager(module.app) as manager, client_for(manager.app) as client:
        first = (await client.get("/convert", params={"amount": 10, "currency": "USD"})).json()

        class Down:
            def __next__(self) -> dict[str, float]:
                raise OSError("the rates API is down")

        monkeypatch.setattr(module, "_rates", Down())
        failed = await client.post("/rates/refresh")
        assert failed.status_code == 502
        assert failed.json() == {
            "detail": {"name": "rates", "error": "Refresher 'rates' failed: OSError: the rates API is down"}
        }
        again = (await client.get("/convert", params={"amount": 10, "currency": "USD"})).json()
        assert again == first


async def test_config_reload_picks_up_an_edit_and_survives_a_broken_file(tmp_path: Path) -> None:
    """An edit shows at the next request after a refresh; a broken save keeps the last good config."""
    config = tmp_path / "config.toml"
    config.write_text('greeting = "hello"\n')
    app = load("config_reload").make_app(config)
    async with LifespanManager(app), client_for(app) as client:
        assert (await client.get("/")).json()["config"] == {"greeting": "hello"}
        config.write_text('greeting = "hi"\n')
        await app.handle.refresh("config")
        assert (await client.get("/")).json()["config"] == {"greeting": "hi"}
        config.write_text('greeting = "unterminated\n')
        with pytest.raises(RefreshError):
            await app.handle.refresh("config")
        page = (await client.get("/")).json()
        assert page["config"] == {"greeting": "hi"}
        assert "invalid toml" in page["error"]
