"""What a misbehaving fetch, hook, test or app setup must not be able to break."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Literal

import anyio
import pytest
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from asgi_refresh import Refresher, RefreshError, RefreshMiddleware
from asgi_refresh._contain import describe_error
from asgi_refresh.testing import FakeClock, override

from .helpers import FakeServer, ScriptedApp, Upstream, hang, published

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # trio's Cancelled cannot be raised by user code
async def test_a_stray_cancelled_error_is_a_failure_not_a_shutdown() -> None:
    """A fetch raising CancelledError nobody asked for fails that fetch; everything keeps running."""
    clock = FakeClock()
    bad = Upstream("v1", asyncio.CancelledError(), "v3")
    good = Upstream()
    middleware = RefreshMiddleware(
        ScriptedApp(),
        refreshers=[Refresher("bad", bad, every=60, jitter=0), Refresher("good", good, every=60, jitter=0)],
        clock=clock,
    )
    async with LifespanManager(middleware):
        handle = middleware.handle
        await clock.advance(60)
        status = handle.status()["bad"]
        assert status["last_error"] == "RuntimeError: fetch raised CancelledError without being cancelled"
        assert published(middleware)["bad"] == "v1"
        await clock.advance(1)
        assert published(middleware)["bad"] == "v3"
        assert await handle.refresh("good") == good.calls


async def test_override_during_a_fetch_keeps_the_pinned_value() -> None:
    """A fetch that finishes after override() is discarded, and the refresher stays quiet."""
    clock = FakeClock()
    gate = anyio.Event()

    async def gated() -> str:
        await gate.wait()
        return "fetched"

    upstream = Upstream("v1", gated)
    middleware = RefreshMiddleware(
        ScriptedApp(), refreshers=[Refresher("n", upstream, every=60, jitter=0)], clock=clock
    )
    async with LifespanManager(middleware):
        await clock.advance(60)  # the gated fetch is now in flight
        override(middleware.handle, "n", "PINNED")
        gate.set()
        await clock.advance(600)
        assert published(middleware)["n"] == "PINNED"
        assert upstream.calls == 2


async def test_a_hanging_hook_blocks_neither_the_schedule_nor_refresh(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """on_change runs after the fetch is done, bounded by the refresher's timeout."""
    clock = FakeClock()
    upstream = Upstream()
    refresher = Refresher("n", upstream, every=60, jitter=0, timeout=10, on_change=lambda old, new: hang())
    async with LifespanManager(
        RefreshMiddleware(ScriptedApp(), refreshers=[refresher], clock=clock)
    ) as manager:
        del manager
        await clock.advance(60 * 5)
        assert upstream.calls == 6
    assert caplog.text.count("on_change hook did not finish within 10s") >= 5


async def test_refresh_returns_without_waiting_for_hooks() -> None:
    """A refresh() caller gets the value as soon as it is published."""
    hook_done = anyio.Event()

    async def slow_hook(old: Any, new: Any) -> None:
        await hook_done.wait()

    refresher = Refresher("n", Upstream(), every=60, on_change=slow_hook, timeout=None)
    middleware = RefreshMiddleware(ScriptedApp(), refreshers=[refresher], clock=FakeClock())
    async with LifespanManager(middleware):
        with anyio.fail_after(5):
            assert await middleware.handle.refresh("n") == 2
        hook_done.set()


async def test_refresh_racing_an_override_returns_the_pinned_value() -> None:
    """A refresh() whose fetch finishes after override() returns what is published."""
    gate = anyio.Event()

    async def gated() -> str:
        await gate.wait()
        return "fetched"

    middleware = RefreshMiddleware(
        ScriptedApp(), refreshers=[Refresher("n", Upstream("v1", gated), every=60)], clock=FakeClock()
    )
    async with LifespanManager(middleware):
        results: list[Any] = []

        async def call() -> None:
            results.append(await middleware.handle.refresh("n"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await anyio.wait_all_tasks_blocked()
            override(middleware.handle, "n", "PINNED")
            gate.set()
        assert results == ["PINNED"]
        assert published(middleware)["n"] == "PINNED"


async def test_on_change_hooks_run_one_at_a_time_in_order() -> None:
    """A slow hook does not let a later change's hook overtake it."""
    seen: list[Any] = []
    first_hook_may_finish = anyio.Event()

    async def on_change(old: Any, new: Any) -> None:
        if new == 2:
            await first_hook_may_finish.wait()
        seen.append(new)

    refresher = Refresher("n", Upstream(), every=60, on_change=on_change, timeout=None)
    middleware = RefreshMiddleware(ScriptedApp(), refreshers=[refresher], clock=FakeClock())
    async with LifespanManager(middleware):
        await middleware.handle.refresh("n")  # 2: its hook waits
        await middleware.handle.refresh("n")  # 3
        await anyio.wait_all_tasks_blocked()
        first_hook_may_finish.set()
        await anyio.wait_all_tasks_blocked()
    assert seen == [1, 2, 3]


async def test_a_thread_that_cannot_start_does_not_block_the_refresher(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Failing to start a worker thread is one failed attempt; the next one starts normally."""
    original = threading.Thread.start
    failures = iter([RuntimeError("can't start new thread")])

    def start(self: threading.Thread) -> None:
        error = next(failures, None)
        if error is not None:
            raise error
        original(self)

    def fetch() -> str:
        return "v"

    monkeypatch.setattr(threading.Thread, "start", start)
    middleware = RefreshMiddleware(
        ScriptedApp(), refreshers=[Refresher("n", fetch, every=60, required=False)], clock=FakeClock()
    )
    async with LifespanManager(middleware):
        assert middleware.handle.status()["n"]["last_error"] == "RuntimeError: can't start new thread"
        assert await middleware.handle.refresh("n") == "v"


async def test_sys_exit_in_a_blocking_fetch_is_a_failed_fetch() -> None:
    """SystemExit raised in the worker thread fails the fetch; it does not end the lifespan."""

    def fetch() -> str:
        raise SystemExit(3)

    middleware = RefreshMiddleware(
        ScriptedApp(),
        refreshers=[Refresher("n", fetch, every=60, required=False, default="d")],
        clock=FakeClock(),
    )
    async with LifespanManager(middleware):
        error = middleware.handle.status()["n"]["last_error"]
        assert error == "SystemExit: 3", "described as an async fetch raising it is: one rule"
        assert published(middleware)["n"] == "d"


async def test_stacked_middlewares_fail_startup_clearly() -> None:
    """Two RefreshMiddleware around one app would overwrite each other's handle: say so."""
    inner = RefreshMiddleware(ScriptedApp(), refreshers=[Refresher("flags", Upstream(), every=60)])
    outer = RefreshMiddleware(inner, refreshers=[Refresher("names", Upstream(), every=60)])
    server = FakeServer(outer)
    async with anyio.create_task_group() as tg:
        await server.startup(tg)
        await server.finished.wait()
    assert len(server.sent) == 1
    assert server.sent[0]["type"] == "lifespan.startup.failed"
    assert "Two RefreshMiddleware instances wrap the same app" in server.sent[0]["message"]


async def test_startup_failure_is_reported_within_shutdown_timeout_despite_a_stubborn_fetch() -> None:
    """A required fetch that shields itself still lets startup.failed reach the server in time."""
    clock = FakeClock()
    release = anyio.Event()

    async def stubborn() -> str:
        with anyio.CancelScope(shield=True):
            await release.wait()
        return "late"

    middleware = RefreshMiddleware(
        ScriptedApp(),
        refreshers=[Refresher("names", stubborn, every=60, timeout=None)],
        startup_timeout=5,
        shutdown_timeout=2,
        clock=clock,
    )
    server = FakeServer(middleware)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.startup, tg)
        await clock.advance(5)
        await clock.advance(2)
        assert server.sent == [
            {
                "type": "lifespan.startup.failed",
                "message": "Refresher 'names' could not load within startup_timeout (5s): no fetch "
                "finished within 5s; refreshers 'names' did not stop within shutdown_timeout (2s)",
            }
        ]
        release.set()


def test_one_fake_clock_serves_lifespans_on_both_backends() -> None:
    """Timers of finished sleeps are disarmed, so a clock reused in another event loop is safe."""
    clock = FakeClock()
    app = RefreshMiddleware(ScriptedApp(), refreshers=[Refresher("n", Upstream(), every=60)], clock=clock)

    async def scenario() -> None:
        # Leaves the refresher's sleep (due at 60) behind when the lifespan ends;
        # the next run's advance passes 60, where a stale timer would fire.
        async with LifespanManager(app):
            for _ in range(20):
                await app.handle.refresh("n")
            await clock.advance(30)

    anyio.run(scenario, backend="asyncio")
    anyio.run(scenario, backend="trio")
    assert all(timer.fire is None for timer in clock._timers)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_testclient_on_both_backends_with_status_from_a_sync_endpoint(
    backend: Literal["asyncio", "trio"],
) -> None:
    """A plain-def endpoint runs in a thread; status() and values work there with the real clock."""

    def health(request: Request) -> JSONResponse:
        return JSONResponse({"names": request.state.names, "status": request.state.asgi_refresh.status()})

    app = Starlette(
        routes=[Route("/health", health)],
        middleware=[
            Middleware(RefreshMiddleware, refreshers=[Refresher("names", Upstream(["a"]), every=60)])
        ],
    )
    with TestClient(app, backend=backend) as client:
        body = client.get("/health").json()
        assert body["names"] == ["a"]
        assert body["status"]["names"]["refresh_count"] == 1
        assert body["status"]["names"]["age"] >= 0
        assert client.app_state["asgi_refresh"].status()["names"]["next_refresh_at"] is not None


async def test_a_failed_refresh_now_moves_the_next_attempt_earlier() -> None:
    """An hourly refresher whose refresh() fails retries after backoff_initial, not in an hour."""
    clock = FakeClock()
    upstream = Upstream("v1", OSError("down"), "v3")
    upstream.clock = clock
    middleware = RefreshMiddleware(
        ScriptedApp(),
        refreshers=[Refresher("n", upstream, every="1h", jitter=0, backoff_initial=5)],
        clock=clock,
    )
    async with LifespanManager(middleware):
        await clock.advance(600)
        with pytest.raises(RefreshError):
            await middleware.handle.refresh("n")
        await clock.advance(5)
        assert published(middleware)["n"] == "v3"
    assert upstream.call_times == [0, 600, 605]


async def test_a_hung_blocking_fetch_does_not_pile_up_threads() -> None:
    """While an abandoned thread is still blocked, later attempts fail fast instead of starting more."""
    release = threading.Event()
    threads: list[threading.Thread] = []

    def blocking() -> str:
        threads.append(threading.current_thread())
        release.wait(10)
        return "late"

    middleware = RefreshMiddleware(
        ScriptedApp(),
        refreshers=[Refresher("n", blocking, every=0.05, timeout=0.05, required=False, backoff_initial=0.01)],
    )
    try:
        async with LifespanManager(middleware):
            await anyio.sleep(0.5)  # real time: a thread cannot run on the fake clock
            status = middleware.handle.status()["n"]
            assert status["consecutive_failures"] > 3
            assert status["last_error"] is not None
            assert "still blocked in its worker thread" in status["last_error"]
        assert len(threads) == 1
        assert threads[0].daemon, "a hung fetch cannot keep the process alive"
        assert threads[0].name == "asgi_refresh:n"
    finally:
        release.set()
        for thread in threads:
            await anyio.to_thread.run_sync(thread.join, 5)


def test_describe_error_looks_inside_single_exception_groups() -> None:
    """A task group's wrapper says nothing; the error it wraps is what status() shows."""
    assert (
        describe_error(ExceptionGroup("unhandled errors in a TaskGroup", [ValueError("bad")]))
        == "ValueError: bad"
    )
    assert describe_error(KeyError()) == "KeyError"


async def test_values_never_reach_logs_or_status(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Logging never includes values: a failing fetch's WARNING shows only the error."""
    secret = "s3cr3t-token"
    clock = FakeClock()
    middleware = RefreshMiddleware(
        ScriptedApp(),
        refreshers=[Refresher("token", Upstream(secret, OSError("down")), every=60)],
        clock=clock,
    )
    with caplog.at_level(logging.DEBUG, logger="asgi_refresh"):
        async with LifespanManager(middleware):
            await clock.advance(60)
            assert secret not in str(middleware.handle.status())
    assert secret not in caplog.text
