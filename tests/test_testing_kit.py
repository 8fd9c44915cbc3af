"""The testing kit as users' tests use it: from any thread, the fake_time switch, pinned values."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import anyio.from_thread
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI, Request
from starlette.applications import Starlette
from starlette.testclient import TestClient

from asgi_refresh import Refresher, RefreshError, RefreshHandle, RefreshMiddleware
from asgi_refresh.testing import FakeClock, fake_time, override, pinned_values

pytestmark = pytest.mark.filterwarnings("error")


def in_thread(body: Callable[[], None], *, within: float = 5.0) -> None:
    """Run ``body`` in a daemon thread; fail (instead of hanging the suite) if it has not ended in time."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            body()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(within)
    assert not thread.is_alive(), f"still running after {within} s (a hang)"
    if errors:
        raise errors[0]


class Feed:
    """A fetch returning the values given, one per call; an exception in the list is raised."""

    def __init__(self, *values: Any) -> None:
        self.values = list(values)
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        value = self.values[min(self.calls, len(self.values)) - 1]
        if isinstance(value, BaseException):
            raise value
        return value


def fastapi_app(fetch: Callable[[], Any], **options: Any) -> FastAPI:
    """A FastAPI app built with add_middleware, as users write it."""
    app = FastAPI()
    app.add_middleware(RefreshMiddleware, refreshers=[Refresher("names", fetch, every="1h")], **options)

    @app.get("/names")
    def names(request: Request) -> Any:
        return request.state.names

    return app


def handle_of(client: TestClient) -> RefreshHandle:
    handle: RefreshHandle = client.app_state["asgi_refresh"]
    return handle


# -- from any thread (issue 15, finding 1) ------------------------------------------------


def test_override_beside_testclient_publishes_and_exits_at_once() -> None:
    """The issue's repro: override() from the sync test thread works, and leaving TestClient does not hang."""

    def repro() -> None:
        app = RefreshMiddleware(Starlette(), refreshers=[Refresher("names", lambda: ["ada"], every="1h")])
        with TestClient(app) as client:
            override(client.app_state["asgi_refresh"], "names", ["x"])
            assert client.app_state["asgi_refresh"].value("names") == ["x"]

    started = time.monotonic()
    in_thread(repro)
    assert time.monotonic() - started < 4.0  # at once: in_thread's 5 s would be a hang


def test_handle_methods_work_from_the_test_thread() -> None:
    """status(), value(), refresh() (through the portal or another event loop) and wait_for() beside TestClient."""
    feed = Feed(["ada"], ["grace"], ["linus"])
    app = fastapi_app(feed)

    def body() -> None:
        with TestClient(app) as client:
            handle = handle_of(client)
            assert handle.running
            assert handle.names == ["names"]
            assert handle.value("names") == ["ada"]
            assert handle.status()["names"]["refresh_count"] == 1
            assert client.portal is not None
            assert client.portal.call(handle.refresh, "names") == ["grace"]
            assert anyio.run(handle.refresh, "names") == ["linus"]  # awaited on a loop of this thread
            assert anyio.run(handle.wait_for, "names") == ["linus"]
            assert client.get("/names").json() == ["linus"]
        assert not handle.running
        assert handle.status()["names"]["refresh_count"] == 3  # after the lifespan: read directly

    in_thread(body)


def test_a_plain_def_fetch_reads_the_handle_from_its_worker_thread() -> None:
    """A sync fetch (run in a thread) that calls value() and status() on the handle gets answers."""
    seen: list[Any] = []
    holder: dict[str, RefreshHandle] = {}

    def orders() -> list[str]:
        handle = holder["handle"]
        seen.append((handle.value("token"), handle.status()["token"]["refresh_count"]))
        return ["order"]

    middleware = RefreshMiddleware(
        Starlette(),
        refreshers=[
            Refresher("token", lambda: "t1", every="1h"),
            Refresher("orders", orders, every="1h", required=False),
        ],
    )

    def body() -> None:
        with TestClient(middleware) as client:
            holder["handle"] = handle_of(client)
            assert client.portal is not None
            client.portal.call(holder["handle"].refresh, "orders")

    in_thread(body)
    assert seen[-1] == ("t1", 1)


def test_advance_sync_beside_testclient_runs_the_hourly_refresh() -> None:
    """clock.advance_sync("1h") from the test thread runs the refresh on the app's loop before it returns."""
    clock = FakeClock()
    app = fastapi_app(Feed(["ada"], ["grace"]), clock=clock)

    def body() -> None:
        with TestClient(app) as client:
            assert client.get("/names").json() == ["ada"]
            clock.advance_sync("50m")  # before the refresh, whatever the jitter (10% of every)
            assert client.get("/names").json() == ["ada"]
            clock.advance_sync("10m")
            assert client.get("/names").json() == ["grace"]

    in_thread(body)


def test_advance_sync_with_no_loop_only_moves_time() -> None:
    """A clock that no event loop has used moves at once; negative durations are refused."""
    clock = FakeClock()
    clock.advance_sync("90s")
    assert clock.monotonic() == 90
    with pytest.raises(ValueError, match="only moves forward"):
        clock.advance_sync(-1)


@pytest.mark.anyio
async def test_advance_sync_on_its_own_loop_says_to_await_advance() -> None:
    """Called on the event loop it would wait for, advance_sync raises instead of deadlocking."""
    clock = FakeClock()
    app = RefreshMiddleware(Starlette(), refreshers=[Refresher("n", lambda: 1, every="1h")], clock=clock)
    async with LifespanManager(app):
        with pytest.raises(RuntimeError, match=r"await clock\.advance"):
            clock.advance_sync("1h")


@pytest.mark.anyio
async def test_an_async_test_beside_testclient_advances_and_refreshes_on_the_apps_loop() -> None:
    """Await clock.advance() and await handle.refresh() on the test's loop run on TestClient's loop."""
    with fake_time() as clock, TestClient(fastapi_app(Feed(["ada"], ["grace"], ["linus"]))) as client:
        handle = handle_of(client)
        await clock.advance("1h")
        assert client.get("/names").json() == ["grace"]
        assert await handle.refresh("names") == ["linus"]
        assert await handle.wait_for("names") == ["linus"]


@pytest.mark.anyio
async def test_one_clock_on_two_running_loops_is_refused() -> None:
    """Tasks of two event loops sleeping on one clock: advance says so instead of firing across loops."""
    clock = FakeClock()
    here = RefreshMiddleware(Starlette(), refreshers=[Refresher("n", lambda: 1, every="1h")], clock=clock)
    there = RefreshMiddleware(Starlette(), refreshers=[Refresher("m", lambda: 2, every="1h")], clock=clock)
    async with LifespanManager(here):
        with TestClient(there), pytest.raises(RuntimeError, match="two running event loops"):
            await clock.advance("1h")


# -- fake_time: a switch needing no change to the app (finding 2) ----------------------------


def test_fake_time_reaches_an_app_built_with_add_middleware() -> None:
    """Initial value, an hour later a new one, a failure keeps the old one, then a pinned value."""
    feed = Feed(["ada"], ["grace"], ConnectionError("upstream down"))

    def body() -> None:
        with fake_time() as clock, TestClient(fastapi_app(feed)) as client:
            assert client.get("/names").json() == ["ada"]
            clock.advance_sync("1h")
            assert client.get("/names").json() == ["grace"]
            clock.advance_sync("1h")
            assert client.get("/names").json() == ["grace"]
            assert handle_of(client).status()["names"]["last_error"] == "ConnectionError: upstream down"
            pinned_values()["names"] = ["pinned"]
            assert client.get("/names").json() == ["pinned"]

    in_thread(body)
    assert feed.calls >= 3  # the failure, and its retries within the hour


def test_fake_time_reaches_an_app_built_from_config(tmp_path: Any) -> None:
    """RefreshMiddleware.from_config under fake_time runs on its clock: the file is re-read an hour later."""
    data = tmp_path / "names.json"
    data.write_text('["ada"]')
    app = RefreshMiddleware.from_config(
        Starlette(), {"refreshers": {"names": {"source": "file", "path": str(data), "every": "1h"}}}
    )

    def body() -> None:
        with fake_time() as clock, TestClient(app) as client:
            assert handle_of(client).value("names") == ["ada"]
            data.write_text('["grace"]')
            clock.advance_sync("1h")
            assert handle_of(client).value("names") == ["grace"]

    in_thread(body)


def test_values_pinned_before_startup_are_published_without_a_fetch() -> None:
    """A required refresher whose upstream is down starts with its pinned value, and its fetch never runs."""
    feed = Feed(ConnectionError("no network in CI"))

    def body() -> None:
        with fake_time(overrides={"names": ["pinned"]}) as clock, TestClient(fastapi_app(feed)) as client:
            assert client.get("/names").json() == ["pinned"]
            clock.advance_sync("3h")
            assert client.get("/names").json() == ["pinned"]
            assert handle_of(client).status()["names"]["next_refresh_at"] is None

    in_thread(body)
    assert feed.calls == 0


def test_pinning_during_the_lifespan_checks_the_name() -> None:
    """pinned_values() set while an app runs applies at once; a name no running app has is a LookupError."""

    def body() -> None:
        with fake_time(), TestClient(fastapi_app(Feed(["ada"]))) as client:
            pins = pinned_values()
            pins["names"] = ["x"]
            assert client.get("/names").json() == ["x"]
            assert dict(pins) == {"names": ["x"]}
            with pytest.raises(LookupError, match=r"No running refresher named 'nmaes' \(known: names\)"):
                pins["nmaes"] = ["y"]
            del pins["names"]
            assert len(pins) == 0

    in_thread(body)


def test_a_pinned_name_that_no_app_has_fails_at_the_end_of_the_block() -> None:
    """A typo in a pinned name is reported when fake_time ends, naming it."""

    def body() -> None:
        with fake_time(overrides={"nmaes": ["x"]}), TestClient(fastapi_app(Feed(["ada"]))) as client:
            assert client.get("/names").json() == ["ada"]

    with pytest.raises(LookupError, match="refresher named 'nmaes'"):
        in_thread(body)


def test_under_fake_time_a_failed_first_fetch_fails_startup_at_once() -> None:
    """Startup does not wait for retries that simulated time would never bring: it fails with the cause."""

    def body() -> None:
        with fake_time(), pytest.raises(RefreshError, match="could not load: ConnectionError: down"):
            TestClient(fastapi_app(Feed(ConnectionError("down")))).__enter__()

    started = time.monotonic()
    in_thread(body)
    assert time.monotonic() - started < 4.0  # at once: in_thread's 5 s would be a hang


def test_a_middleware_given_its_own_clock_keeps_it() -> None:
    """fake_time replaces the real clock only: clock=FakeClock() passed by the test stays in charge."""
    own = FakeClock()
    app = fastapi_app(Feed(["ada"], ["grace"]), clock=own)

    def body() -> None:
        with fake_time() as switched, TestClient(app) as client:
            switched.advance_sync("1h")
            assert client.get("/names").json() == ["ada"]
            own.advance_sync("1h")
            assert client.get("/names").json() == ["grace"]

    in_thread(body)


def test_fake_time_blocks_nest_and_end() -> None:
    """The innermost block's clock wins; after the blocks, middlewares run on real time again."""
    app = RefreshMiddleware(Starlette(), refreshers=[Refresher("n", lambda: 1, every="1h")])

    def clock_of_a_lifespan() -> Any:
        with TestClient(app):
            return app._running.clock if app._running else None

    def body() -> None:
        with fake_time() as outer:
            with fake_time() as inner:
                assert clock_of_a_lifespan() is inner
            assert clock_of_a_lifespan() is outer
        assert type(clock_of_a_lifespan()).__name__ == "SystemClock"
        with pytest.raises(RuntimeError, match="needs an active `with fake_time"):
            pinned_values()

    in_thread(body)


@pytest.mark.anyio
async def test_fake_time_with_lifespan_manager() -> None:
    """The async way: LifespanManager and await clock.advance(), on asyncio and trio."""
    feed = Feed(["ada"], ["grace"])
    with fake_time(overrides={}) as clock:
        app = fastapi_app(feed)
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                assert (await client.get("/names")).json() == ["ada"]
                await clock.advance("1h")
                assert (await client.get("/names")).json() == ["grace"]
                pinned_values()["names"] = ["pinned"]
                assert (await client.get("/names")).json() == ["pinned"]


@pytest.fixture
def no_switch() -> Iterator[None]:
    yield
    from asgi_refresh import _switch

    assert _switch.active() is None


def test_leaving_fake_time_on_an_error_deactivates_it(no_switch: None) -> None:
    """An exception in the block ends the switch too, and is not replaced by the unused-pin check."""
    with pytest.raises(KeyError), fake_time(overrides={"unused": 1}):
        raise KeyError("the test's own failure")
