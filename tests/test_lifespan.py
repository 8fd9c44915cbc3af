"""The lifecycle table of DESIGN.md, one test (or more) per row."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import anyio
import pytest

from asgi_refresh import Refresher, RefreshMiddleware
from asgi_refresh.testing import FakeClock

from .helpers import FakeServer, ScriptedApp, Upstream, hang

pytestmark = pytest.mark.anyio


def make(app: Any, *refreshers: Refresher, **options: Any) -> tuple[RefreshMiddleware, FakeClock]:
    clock = FakeClock()
    return RefreshMiddleware(app, refreshers=list(refreshers), clock=clock, **options), clock


async def test_startup_completes_once_after_values_are_published() -> None:
    """All refreshers load, then the app's startup runs (and can read them), then one startup.complete."""
    inner = ScriptedApp()
    names = Upstream(["ada", "grace"])
    middleware, _ = make(inner, Refresher("names", names, every="1h"))
    server = FakeServer(middleware)
    async with anyio.create_task_group() as tg:
        reply = await server.startup(tg)
        assert reply == {"type": "lifespan.startup.complete"}
        assert inner.startup_state is not None
        assert inner.startup_state["names"] == ["ada", "grace"]
        assert server.state["names"] == ["ada", "grace"]
        assert await server.shutdown() == {"type": "lifespan.shutdown.complete"}
    assert [m["type"] for m in server.sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert inner.events == ["lifespan.startup", "lifespan.shutdown"]


async def test_initial_loads_run_concurrently() -> None:
    """Startup takes as long as the slowest load, not the sum of them."""
    clock = FakeClock()
    finished: list[float] = []

    def slow(seconds: float) -> Any:
        async def fetch() -> float:
            await clock.sleep_until(clock.monotonic() + seconds)
            finished.append(clock.monotonic())
            return seconds

        return fetch

    refreshers = [Refresher(f"r{i}", slow(i + 1), every="1h") for i in range(5)]
    middleware = RefreshMiddleware(ScriptedApp(), refreshers=refreshers, clock=clock)
    server = FakeServer(middleware)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.startup, tg)
        await clock.advance(5)
        assert server.sent == [{"type": "lifespan.startup.complete"}]
        assert sorted(finished) == [1, 2, 3, 4, 5]
        await server.shutdown()


async def test_required_refresher_that_cannot_load_fails_startup() -> None:
    """One startup.failed naming the refresher and the cause, after retrying within the budget."""
    names = Upstream(ConnectionRefusedError("upstream refused"))
    inner = ScriptedApp()
    middleware, clock = make(inner, Refresher("names", names, every="1h"), startup_timeout="10s")
    server = FakeServer(middleware)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.startup, tg)
        await clock.advance("10s")
        await server.finished.wait()
    assert len(server.sent) == 1
    failed = server.sent[0]
    assert failed["type"] == "lifespan.startup.failed"
    assert "'names'" in failed["message"]
    assert "ConnectionRefusedError: upstream refused" in failed["message"]
    assert "startup_timeout (10s)" in failed["message"]
    assert isinstance(server.error, RuntimeError), "raised after reporting, as Starlette's router does"
    assert str(server.error) == failed["message"]
    assert names.calls > 1, "a required refresher retries within the startup budget"
    assert inner.events == [], "the app's own startup never ran"
    calls = names.calls
    await clock.advance("2h")
    assert names.calls == calls, "nothing left running after startup.failed"


async def test_required_refresher_that_hangs_fails_startup_at_the_budget() -> None:
    """A first fetch still running at the deadline fails startup with a timeout cause."""
    middleware, clock = make(
        ScriptedApp(), Refresher("names", hang, every="1h", timeout=None), startup_timeout="5s"
    )
    server = FakeServer(middleware)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.startup, tg)
        await clock.advance("5s")
        await server.finished.wait()
    assert server.sent == [
        {
            "type": "lifespan.startup.failed",
            "message": "Refresher 'names' could not load within startup_timeout (5s): "
            "no fetch finished within 5s",
        }
    ]


async def test_non_required_refresher_publishes_default_and_keeps_retrying() -> None:
    """Startup completes with the default published; a later retry publishes the real value."""
    flags = Upstream(OSError("down"), OSError("still down"), {"beta": True})
    inner = ScriptedApp()
    middleware, clock = make(
        inner,
        Refresher("flags", flags, every="1m", required=False, default={}, jitter=0),
    )
    server = FakeServer(middleware)
    async with anyio.create_task_group() as tg:
        assert await server.startup(tg) == {"type": "lifespan.startup.complete"}
        assert inner.startup_state is not None
        assert inner.startup_state["flags"] == {}
        await clock.advance("1s")  # first retry after backoff_initial
        assert flags.calls == 2
        await clock.advance("2s")  # second retry, backoff doubled
        assert flags.calls == 3
        assert server.state["flags"] == {"beta": True}
        await server.shutdown()


async def test_app_startup_failed_is_forwarded_once_and_refreshers_stop() -> None:
    """The wrapped app's startup.failed reaches the server once; no refresh runs afterwards."""
    names = Upstream()
    middleware, clock = make(ScriptedApp("fail_startup"), Refresher("names", names, every="1m"))
    server = FakeServer(middleware)
    async with anyio.create_task_group() as tg:
        await server.startup(tg)
        await server.finished.wait()
    assert server.sent == [{"type": "lifespan.startup.failed", "message": "app says no"}]
    await clock.advance("1h")
    assert names.calls == 1


async def test_app_without_lifespan_support_still_gets_refreshed_data(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An app raising before its first receive(): refreshers run, startup completes, INFO says why."""
    inner = ScriptedApp("raise_before_receive")
    names = Upstream("v1", "v2")
    middleware, clock = make(inner, Refresher("names", names, every="1m", jitter=0))
    server = FakeServer(middleware)
    with caplog.at_level(logging.INFO, logger="asgi_refresh"):
        async with anyio.create_task_group() as tg:
            assert await server.startup(tg) == {"type": "lifespan.startup.complete"}
            await clock.advance("1m")
            await server.request()
            assert inner.request_states[-1]["names"] == "v2"
            assert await server.shutdown() == {"type": "lifespan.shutdown.complete"}
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    assert any("does not do the ASGI lifespan protocol" in r.getMessage() for r in infos)
    assert "AssertionError: this app only speaks http" in caplog.text


async def test_app_returning_without_lifespan_is_treated_as_unsupported() -> None:
    """An app that simply returns from a lifespan scope does not fail startup."""
    middleware, _ = make(ScriptedApp("return_before_receive"), Refresher("names", Upstream(), every="1m"))
    server = FakeServer(middleware)
    async with anyio.create_task_group() as tg:
        assert await server.startup(tg) == {"type": "lifespan.startup.complete"}
        assert await server.shutdown() == {"type": "lifespan.shutdown.complete"}


async def test_app_raising_after_reading_startup_fails_startup_with_its_text() -> None:
    """startup.failed carries the exception type and message."""
    middleware, _ = make(ScriptedApp("raise_after_receive"), Refresher("names", Upstream(), every="1m"))
    server = FakeServer(middleware)
    async with anyio.create_task_group() as tg:
        await server.startup(tg)
        await server.finished.wait()
    assert server.sent == [{"type": "lifespan.startup.failed", "message": "RuntimeError: database is down"}]


async def test_shutdown_runs_app_first_then_stops_refreshers() -> None:
    """The app's shutdown sees refreshers still published; then they are cancelled and awaited."""
    order: list[str] = []
    cancelled = anyio.Event()

    async def fetch() -> str:
        if order:  # the refresh in flight at shutdown
            try:
                await hang()
            finally:
                order.append("fetch cancelled")
                cancelled.set()
        order.append("fetched")
        return "v"

    class App(ScriptedApp):
        async def lifespan(self, scope: Any, receive: Any, send: Any) -> None:
            await receive()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            order.append("app shutdown")
            await send({"type": "lifespan.shutdown.complete"})

    middleware, clock = make(App(), Refresher("names", fetch, every="1m", jitter=0, timeout=None))
    server = FakeServer(middleware)
    async with anyio.create_task_group() as tg:
        await server.startup(tg)
        await clock.advance("1m")  # a second fetch is now hanging
        assert await server.shutdown() == {"type": "lifespan.shutdown.complete"}
    assert order == ["fetched", "app shutdown", "fetch cancelled"]
    assert cancelled.is_set()


async def test_sync_fetch_that_hangs_does_not_block_shutdown() -> None:
    """A blocking fetch in a thread is abandoned: shutdown completes without waiting for it."""
    release = threading.Event()
    hanging = threading.Event()
    calls = 0

    def fetch() -> int:
        nonlocal calls
        calls += 1
        if calls > 1:
            hanging.set()
            release.wait(10)
        return calls

    middleware = RefreshMiddleware(
        ScriptedApp(),
        refreshers=[Refresher("n", fetch, every=0.01, jitter=0, timeout=None)],
        shutdown_timeout=5,
    )
    server = FakeServer(middleware)
    try:
        # One bound on startup, the wait for a fetch thread to hang and shutdown, ample on a
        # busy machine: a shutdown that waited for that thread (10 s from its hang) overruns it.
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                await server.startup(tg)
                assert await anyio.to_thread.run_sync(hanging.wait, 5)
                assert await server.shutdown() == {"type": "lifespan.shutdown.complete"}
    finally:
        release.set()


async def test_async_fetch_ignoring_cancellation_is_bounded_by_shutdown_timeout() -> None:
    """A shielded fetch past shutdown_timeout gives one shutdown.failed naming it, not a hang."""
    release = anyio.Event()
    started = anyio.Event()

    async def stubborn() -> str:
        if started.is_set():
            return "late"
        started.set()
        with anyio.CancelScope(shield=True):
            await release.wait()
        return "late"

    names = Upstream("v1", stubborn)
    middleware, clock = make(
        ScriptedApp(), Refresher("names", names, every="1m", jitter=0), shutdown_timeout="5s"
    )
    server = FakeServer(middleware)
    async with anyio.create_task_group() as tg:
        await server.startup(tg)
        await clock.advance("1m")
        assert names.calls == 2
        tg.start_soon(server.shutdown)
        await clock.advance("5s")
        assert server.sent[-1] == {
            "type": "lifespan.shutdown.failed",
            "message": "refreshers 'names' did not stop within shutdown_timeout (5s)",
        }
        release.set()
    assert [m["type"] for m in server.sent] == ["lifespan.startup.complete", "lifespan.shutdown.failed"]


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        ("fail_shutdown", "app could not shut down"),
        ("raise_in_shutdown", "RuntimeError: could not close pool"),
    ],
)
async def test_app_shutdown_failure_is_reported_once(behaviour: Any, message: str) -> None:
    """The app's failed or raising shutdown gives exactly one shutdown.failed with its text."""
    middleware, _ = make(ScriptedApp(behaviour), Refresher("names", Upstream(), every="1m"))
    server = FakeServer(middleware)
    async with anyio.create_task_group() as tg:
        await server.startup(tg)
        assert await server.shutdown() == {"type": "lifespan.shutdown.failed", "message": message}
    assert len(server.sent) == 2


async def test_nothing_is_awaited_after_shutdown_complete() -> None:
    """The middleware returns straight after sending shutdown.complete (no checkpoint follows)."""
    middleware, _ = make(ScriptedApp(), Refresher("names", Upstream(), every="1m"))
    to_app, inbox = anyio.create_memory_object_stream[dict[str, Any]](2)
    sent: list[str] = []
    with to_app, inbox, anyio.CancelScope() as scope:

        async def send(message: Any) -> None:
            sent.append(message["type"])
            if message["type"] == "lifespan.shutdown.complete":
                scope.cancel()  # any await after this would now raise

        await to_app.send({"type": "lifespan.startup"})
        await to_app.send({"type": "lifespan.shutdown"})
        await middleware({"type": "lifespan", "state": {}}, inbox.receive, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert not scope.cancelled_caught


async def test_server_send_exception_on_startup_failed_propagates_unchanged() -> None:
    """Like hypercorn, a server that raises on startup.failed sees its own exception."""

    class LifespanFailureError(Exception):
        pass

    error = LifespanFailureError("startup failed")
    middleware, _clock = make(ScriptedApp("fail_startup"), Refresher("names", Upstream(), every="1m"))
    to_app, inbox = anyio.create_memory_object_stream[dict[str, Any]](1)

    async def send(message: Any) -> None:
        raise error

    await to_app.send({"type": "lifespan.startup"})
    with to_app, inbox, pytest.raises(LifespanFailureError) as caught:
        await middleware({"type": "lifespan", "state": {}}, inbox.receive, send)
    assert caught.value is error


async def test_server_send_exception_on_startup_complete_propagates_unchanged() -> None:
    """An exception from send(startup.complete) comes out as itself, with everything stopped."""
    error = ConnectionResetError("server went away")
    names = Upstream()
    middleware, clock = make(ScriptedApp(), Refresher("names", names, every="1m"))
    to_app, inbox = anyio.create_memory_object_stream[dict[str, Any]](1)

    async def send(message: Any) -> None:
        raise error

    await to_app.send({"type": "lifespan.startup"})
    with to_app, inbox, pytest.raises(ConnectionResetError) as caught:
        await middleware({"type": "lifespan", "state": {}}, inbox.receive, send)
    assert caught.value is error
    await clock.advance("1h")
    assert names.calls == 1


async def test_cancelling_the_lifespan_task_leaves_nothing_pending(anyio_backend: str) -> None:
    """Cancelling the server's lifespan task cancels fetches and the app's lifespan, all awaited."""
    fetch_cleaned_up = anyio.Event()
    app_cleaned_up = anyio.Event()
    tasks_before = asyncio.all_tasks() if anyio_backend == "asyncio" else set()

    async def fetch() -> str:
        try:
            await hang()
        finally:
            fetch_cleaned_up.set()
        return "never"

    class App(ScriptedApp):
        async def lifespan(self, scope: Any, receive: Any, send: Any) -> None:
            try:
                await receive()
                await send({"type": "lifespan.startup.complete"})
                await receive()
            finally:
                app_cleaned_up.set()

    middleware, clock = make(
        App(),
        Refresher("names", Upstream("v1"), every="1m"),
        Refresher("slow", fetch, every="1m", required=False, timeout=None),
        startup_timeout="1s",
    )
    server = FakeServer(middleware)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.startup, tg)
        await clock.advance("1s")
        assert server.sent == [{"type": "lifespan.startup.complete"}]
        tg.cancel_scope.cancel()
    assert fetch_cleaned_up.is_set()
    assert app_cleaned_up.is_set()
    if anyio_backend == "asyncio":
        assert asyncio.all_tasks() == tasks_before


@pytest.mark.parametrize("mode", ["copy", "none", "startup_copy", "shared"])
async def test_requests_see_current_values_whatever_the_server_does_with_state(mode: Any) -> None:
    """With a copied, missing, once-copied or shared lifespan state, requests see the latest value."""
    inner = ScriptedApp()
    middleware, clock = make(inner, Refresher("names", Upstream("v1", "v2"), every="1m", jitter=0))
    server = FakeServer(middleware, state=mode)
    async with anyio.create_task_group() as tg:
        await server.startup(tg)
        await server.request()
        await clock.advance("1m")
        await server.request()
        await server.shutdown()
    assert [s["names"] for s in inner.request_states] == ["v1", "v2"]
    assert all(s["asgi_refresh"] is inner.request_states[0]["asgi_refresh"] for s in inner.request_states)


async def test_state_copied_per_request_is_passed_through_untouched() -> None:
    """On a server that copies lifespan state per request the middleware adds no work: same dict."""
    inner = ScriptedApp()
    middleware, _ = make(inner, Refresher("names", Upstream("v1"), every="1m"))
    server = FakeServer(middleware, state="copy")
    async with anyio.create_task_group() as tg:
        await server.startup(tg)
        scope = server.request_scope()
        original = scope["state"]
        await middleware(scope, _no_receive, _discard)
        await server.shutdown()
    assert inner.request_states[-1] is original


async def test_server_without_lifespan_serves_requests_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No lifespan at all (--lifespan off, a bare transport): requests work, one WARNING says why."""
    inner = ScriptedApp()
    middleware, _ = make(inner, Refresher("names", Upstream(), every="1m"))
    server = FakeServer(middleware, state="none")
    with caplog.at_level(logging.WARNING, logger="asgi_refresh"):
        replies = await server.request()
        await server.request()
    assert replies[0]["status"] == 200
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "no ASGI lifespan is running" in warnings[0].getMessage()
    assert "--lifespan on" in warnings[0].getMessage()


async def test_one_instance_runs_two_lifespans_in_a_row() -> None:
    """Test clients start and stop the same app repeatedly: each lifespan gets fresh runtime."""
    names = Upstream("first", "second")
    inner = ScriptedApp()
    middleware, _clock = make(inner, Refresher("names", names, every="1h"))
    for expected in ("first", "second"):
        server = FakeServer(middleware)
        async with anyio.create_task_group() as tg:
            assert await server.startup(tg) == {"type": "lifespan.startup.complete"}
            await server.request()
            assert await server.shutdown() == {"type": "lifespan.shutdown.complete"}
        assert inner.request_states[-1]["names"] == expected
    handles = {id(s["asgi_refresh"]) for s in inner.request_states}
    assert len(handles) == 2


async def _no_receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _discard(message: Any) -> None:
    pass


def test_the_startup_check_costs_o_n_in_all_not_per_refresh() -> None:
    """Startup waits for every refresher; checking that must not walk all of them at each progress.

    It did: 20,000 refreshers took 33 s to start (each refresh re-checked all).
    """
    from types import SimpleNamespace

    from asgi_refresh._runtime import _all_settled

    reads = 0

    class Probe:
        spec = SimpleNamespace(required=False)

        def __init__(self) -> None:
            self.tried = False
            self.restoring = False

        @property
        def attempted(self) -> bool:
            nonlocal reads
            reads += 1
            return self.tried

    slots = [Probe() for _ in range(1000)]
    settled = _all_settled(slots, simulated=False)  # type: ignore[arg-type]
    for slot in slots:  # progress after each first fetch, as the runtime reports it
        assert not settled()
        slot.tried = True
    assert settled()
    assert reads <= 3 * len(slots)
