"""asgi_refresh.fastapi.RefreshedKey: a family's value for the request's key, as a typed parameter."""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI, Header

from asgi_refresh import RefresherFamily, RefreshError, RefreshMiddleware
from asgi_refresh.fastapi import RefreshedKey

pytestmark = pytest.mark.anyio


def currency(code: str) -> str:
    return code.upper()


def tenant(x_tenant: Annotated[str, Header()]) -> tuple[str, str]:
    return ("tenant", x_tenant)


def make_app(calls: list[Any]) -> FastAPI:
    async def fetch(key: Any) -> Any:
        calls.append(key)
        if key == "XXX":
            raise ConnectionError("no such currency upstream")
        return {"key": list(key) if isinstance(key, tuple) else key, "n": len(calls)}

    app = FastAPI()
    app.add_middleware(RefreshMiddleware, families=[RefresherFamily("rates", fetch, every="1h")])

    @app.exception_handler(RefreshError)
    async def unavailable(request: Any, exc: RefreshError) -> Any:
        from fastapi.responses import JSONResponse

        return JSONResponse({"error": "unavailable", "family": exc.name}, status_code=503)

    @app.get("/rates/{code}")
    async def rates(rate: Annotated[dict[str, Any], RefreshedKey("rates", key_from=currency)]) -> Any:
        return rate

    @app.get("/settings")
    async def settings(value: Annotated[dict[str, Any], RefreshedKey("rates", key_from=tenant)]) -> Any:
        return value

    return app


async def test_the_key_comes_from_the_request_and_the_value_is_shared() -> None:
    """The key_from dependency picks the key; a second request for it is served from the family."""
    calls: list[Any] = []
    app = make_app(calls)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            assert (await client.get("/rates/eur")).json() == {"key": "EUR", "n": 1}
            assert (await client.get("/rates/EUR")).json() == {"key": "EUR", "n": 1}
            assert (await client.get("/settings", headers={"x-tenant": "acme"})).json() == {
                "key": ["tenant", "acme"],
                "n": 2,
            }
    assert calls == ["EUR", ("tenant", "acme")]


async def test_a_hostile_key_is_a_400_and_a_failed_load_reaches_the_app() -> None:
    """An oversize key answers 400 without echoing it; a key that cannot load raises RefreshError to the app."""
    calls: list[Any] = []
    app = make_app(calls)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            response = await client.get("/rates/" + "a" * 5000)
            assert response.status_code == 400
            assert "aaaaaaaa" not in response.text.lower()
            assert "at most 256 characters" in response.json()["detail"]
            response = await client.get("/rates/xxx")
            assert response.status_code == 503
            assert response.json() == {"error": "unavailable", "family": "rates"}
    assert calls == ["XXX"]


def test_arguments_are_checked() -> None:
    """A name that is not an identifier, or a key_from that is not callable, is refused at once."""
    with pytest.raises(ValueError, match="family name"):
        RefreshedKey("not a name", key_from=currency)
    with pytest.raises(TypeError, match="key_from must be a dependency"):
        RefreshedKey("rates", key_from="code")  # type: ignore[arg-type]
