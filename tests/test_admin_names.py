"""The admin endpoints and readiness for derived values and families, and how logs name a derived value."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager

from asgi_refresh import Derived, Refresher, RefresherFamily, RefreshMiddleware
from asgi_refresh.testing import FakeClock

from .helpers import START, ScriptedApp, published, runtime_of

pytestmark = pytest.mark.anyio

TOKEN = "s3cret-admin-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Scripted:
    """A fetch returning the value the test sets (raising it, if it is an exception)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    async def __call__(self) -> Any:
        if isinstance(self.value, BaseException):
            raise self.value
        return self.value


def http_to(middleware: RefreshMiddleware) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=middleware, client=("203.0.113.7", 4321))
    return httpx.AsyncClient(transport=transport, base_url="http://app.example")


@asynccontextmanager
async def admin_client(**options: Any) -> AsyncIterator[tuple[httpx.AsyncClient, RefreshMiddleware]]:
    """A running middleware with admin endpoints, and an httpx client talking to it."""
    middleware = RefreshMiddleware(
        ScriptedApp(), admin_path="/_refresh", admin_token=TOKEN, clock=FakeClock(START), **options
    )
    async with LifespanManager(middleware), http_to(middleware) as http:
        yield http, middleware


# -- derived values ----------------------------------------------------------------------


async def test_get_a_derived_value_answers_its_status(anyio_backend: str) -> None:
    """GET {prefix}/{derived} answers {"name", "status"}: its entry, source "derived"; HEAD the same, bodiless."""
    async with admin_client(
        refreshers=[Refresher("x", Scripted(3), every="1h")],
        derived=[Derived("double", lambda x: 2 * x, inputs=["x"])],
    ) as (http, _):
        response = await http.get("/_refresh/double", headers=AUTH)
        assert response.status_code == 200
        body = response.json()
        assert body["name"] == "double"
        assert body["status"]["source"] == "derived"
        assert body["status"]["derived"] == {"inputs": ["x"], "inputs_moved_on": False}
        assert body["status"]["refresh_count"] == 1
        head = await http.head("/_refresh/double", headers=AUTH)
        assert (head.status_code, head.content) == (200, b"")
        assert (await http.get("/_refresh/double")).status_code == 401, "the token is still required"


async def test_post_a_derived_value_computes_it_again(anyio_backend: str) -> None:
    """POST {prefix}/{derived}?wait=true recomputes and answers its status after; without wait, 202."""
    calls: list[int] = []

    def counted(x: int) -> int:
        calls.append(x)
        return len(calls)

    async with admin_client(
        refreshers=[Refresher("x", Scripted(7), every="1h")],
        derived=[Derived("n", counted, inputs=["x"])],
    ) as (http, middleware):
        waited = await http.post("/_refresh/n?wait=true", headers=AUTH)
        assert waited.status_code == 200
        assert waited.json()["name"] == "n"
        assert waited.json()["status"]["refresh_count"] == 2
        assert published(middleware)["n"] == 2
        soon = await http.post("/_refresh/n", headers=AUTH)
        assert (soon.status_code, soon.json()) == (202, {"name": "n", "refreshing": True})
        with anyio.fail_after(5):
            await runtime_of(middleware.handle).publisher.until(lambda: len(calls) == 3)
        assert calls == [7, 7, 7]


async def test_a_derived_value_whose_compute_fails_answers_502_with_the_error(anyio_backend: str) -> None:
    """POST ?wait=true when the compute raises: 502 with the error and the status; the last value stays."""
    source = Scripted(2)

    def half(x: int) -> int:
        if x % 2:
            raise ValueError(f"{x} is odd")
        return x // 2

    async with admin_client(
        refreshers=[Refresher("x", source, every="1h")],
        derived=[Derived("half", half, inputs=["x"])],
    ) as (http, middleware):
        source.value = 3
        await middleware.handle.refresh("x")
        response = await http.post("/_refresh/half?wait=true", headers=AUTH)
        assert response.status_code == 502
        assert response.json()["error"] == "ValueError: 3 is odd"
        assert response.json()["status"]["consecutive_failures"] == 2
        assert published(middleware)["half"] == 1


@pytest.mark.parametrize("action", ["accept", "reject", "pin?version=1", "unpin", "rollback"])
async def test_operator_actions_on_a_derived_value_answer_409_saying_why(
    anyio_backend: str, action: str
) -> None:
    """accept/reject/pin/unpin/rollback of a derived value: 409 saying it is computed, not 404 or 500."""
    async with admin_client(
        refreshers=[Refresher("x", Scripted(1), every="1h", keep_versions=3)],
        derived=[Derived("double", lambda x: 2 * x, inputs=["x"])],
    ) as (http, _):
        response = await http.post(f"/_refresh/double/{action}", headers=AUTH)
        assert response.status_code == 409
        verb = action.partition("?")[0]
        assert response.json() == {
            "name": "double",
            "error": "'double' is a derived value: it is computed from its inputs, so it has no versions, "
            f"pins or held-back values to {verb}; {verb} one of its inputs instead",
        }
        assert (await http.get(f"/_refresh/double/{action}", headers=AUTH)).status_code == 405


async def test_a_derived_value_named_health_is_computed_by_post(anyio_backend: str) -> None:
    """GET {prefix}/health stays readiness; POST computes a derived value that happens to be named health."""
    async with admin_client(
        refreshers=[Refresher("x", Scripted(1), every="1h")],
        derived=[Derived("health", lambda x: x > 0, inputs=["x"])],
    ) as (http, _):
        assert (await http.get("/_refresh/health")).json() == {"status": "ok"}
        response = await http.post("/_refresh/health?wait=true", headers=AUTH)
        assert response.status_code == 200
        assert response.json()["status"]["refresh_count"] == 2


async def test_handle_names_lists_the_refreshers_only(anyio_backend: str) -> None:
    """handle.names is what fetches (fake_time pins, webhooks): not the families, not the derived values."""
    async with admin_client(
        refreshers=[Refresher("x", Scripted(1), every="1h")],
        families=[RefresherFamily("rates", lambda key: 1.0, every="5m")],
        derived=[Derived("double", lambda x: 2 * x, inputs=["x"])],
    ) as (_, middleware):
        assert middleware.handle.names == ["x"]


# -- families ------------------------------------------------------------------------------


async def test_get_a_family_answers_its_status_and_post_is_404(anyio_backend: str) -> None:
    """GET {prefix}/{family} answers its entry; POST (nothing to refresh by name) is 404, saying why."""
    async with admin_client(
        refreshers=[Refresher("x", Scripted(1), every="1h")],
        families=[RefresherFamily("rates", lambda key: 1.0, every="5m", preload=["EUR"])],
    ) as (http, _):
        response = await http.get("/_refresh/rates", headers=AUTH)
        assert response.status_code == 200
        assert response.json()["name"] == "rates"
        assert response.json()["status"]["source"] == "family"
        assert response.json()["status"]["family"]["keys"] == 1
        for path in ("/_refresh/rates", "/_refresh/rates?wait=true", "/_refresh/rates/rollback"):
            refused = await http.post(path, headers=AUTH)
            assert refused.status_code == 404, path
            assert (
                "'rates' is a refresher family: its keys load when a request asks for them"
                in (refused.json()["error"])
            )


async def test_readiness_waits_for_a_required_familys_preload_keys(anyio_backend: str) -> None:
    """/health is 503 naming a required family until its preload keys load, then 200, as for a refresher."""
    gate, asked = anyio.Event(), anyio.Event()

    async def load(key: str) -> float:
        asked.set()
        await gate.wait()
        return 1.08

    middleware = RefreshMiddleware(
        ScriptedApp(),
        families=[RefresherFamily("rates", load, every="5m", preload=["EUR"])],
        admin_path="/_refresh",
        admin_token=TOKEN,
        clock=FakeClock(START),
    )
    started, stop = anyio.Event(), anyio.Event()

    async def serve() -> None:
        async with LifespanManager(middleware):
            started.set()
            await stop.wait()

    async with anyio.create_task_group() as task_group, http_to(middleware) as http:
        task_group.start_soon(serve)
        with anyio.fail_after(5):
            await asked.wait()
        loading = await http.get("/_refresh/health")
        assert loading.status_code == 503
        assert loading.json() == {
            "status": "unavailable",
            "failing": [{"name": "rates", "reason": "not loaded", "age": None, "max_stale": None}],
        }
        gate.set()
        with anyio.fail_after(5):
            await started.wait()
        assert (await http.get("/_refresh/health")).json() == {"status": "ok"}
        stop.set()


async def test_a_failing_family_is_ready_while_it_keeps_its_values(anyio_backend: str) -> None:
    """A required family whose refreshes fail keeps its last good values: ready, as a refresher without max_stale.

    A family that is not required never fails readiness, even with its preload keys failing.
    """
    failing = False

    async def load(key: str) -> float:
        if failing or key == "XXX":
            raise OSError("rates upstream down")
        return 1.08

    async with admin_client(
        families=[
            RefresherFamily("rates", load, every="5m", preload=["EUR"]),
            RefresherFamily("extra", load, every="5m", preload=["XXX"], required=False),
        ],
    ) as (http, middleware):
        failing = True
        clock = middleware.clock
        assert isinstance(clock, FakeClock)
        await clock.advance(3600)
        status = middleware.handle.status()
        assert status["rates"]["consecutive_failures"] > 0
        assert status["extra"]["family"]["failing_count"] == 1
        assert await middleware.handle.get("rates", "EUR") == 1.08
        assert (await http.get("/_refresh/health")).json() == {"status": "ok"}


# -- how logs name a derived value ---------------------------------------------------------


async def test_hook_failures_of_a_derived_value_are_logged_as_a_derived_value(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A derived value's on_change / on_error that raise are logged as "Derived 'x'", never "Refresher 'x'"."""
    source = Scripted(2)

    def half(x: int) -> int:
        if x % 2:
            raise ValueError(f"{x} is odd")
        return x // 2

    def broken_hook(*args: Any) -> None:
        raise RuntimeError("hook bug")

    caplog.set_level(logging.DEBUG, logger="asgi_refresh")
    async with admin_client(
        refreshers=[Refresher("x", source, every="1h")],
        derived=[Derived("half", half, inputs=["x"], on_change=broken_hook, on_error=broken_hook)],
    ) as (_, middleware):
        source.value = 3
        await middleware.handle.refresh("x")
        with anyio.fail_after(5):
            # The hooks run in a task of their own and log after they raise: nothing to wait on.
            while caplog.text.count("hook raised") < 2:  # noqa: ASYNC110
                await anyio.sleep(0.01)
    assert "Derived 'half': on_change hook raised; ignored, the derived value carries on" in caplog.text
    assert "Derived 'half': on_error hook raised; ignored, the derived value carries on" in caplog.text
    assert "Derived 'half': compute failed (1 in a row)" in caplog.text
    assert "Refresher 'half'" not in caplog.text
