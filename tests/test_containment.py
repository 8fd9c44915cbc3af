"""One rule for user code: whatever it raises, or however long it blocks, is its own failure (issue 12)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import pytest
from asgi_lifespan import LifespanManager

from asgi_refresh import Fresh, Refresher, RefreshError, RefreshEvent, RefreshMiddleware, SourceError
from asgi_refresh.testing import FakeClock

from .helpers import ScriptedApp, Upstream, published

pytestmark = pytest.mark.anyio


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise ValueError("no str for you")


RAISED: list[Callable[[], BaseException]] = [
    KeyboardInterrupt,
    lambda: SystemExit(3),
    GeneratorExit,
    UnprintableError,
    lambda: BaseExceptionGroup("several", [KeyboardInterrupt(), ValueError("x")]),
]
IDS = ["KeyboardInterrupt", "SystemExit", "GeneratorExit", "unprintable", "group"]


def middleware_with(*refreshers: Refresher, **options: Any) -> tuple[RefreshMiddleware, FakeClock]:
    clock = FakeClock()
    return RefreshMiddleware(ScriptedApp(), refreshers=list(refreshers), clock=clock, **options), clock


@pytest.mark.parametrize("make_error", RAISED, ids=IDS)
async def test_whatever_an_async_fetch_raises_is_that_refreshers_failure(
    make_error: Callable[[], BaseException],
) -> None:
    """The failure shows in status, the last good value stays, the next refresh runs."""
    calls = 0

    async def fetch() -> int:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise make_error()
        return calls

    middleware, clock = middleware_with(Refresher("n", fetch, every="1m", jitter=0))
    async with LifespanManager(middleware):
        await clock.advance("1m")
        status = middleware.handle.status()["n"]
        assert status["consecutive_failures"] == 1
        assert status["last_error"] is not None
        assert published(middleware)["n"] == 1, "the last good value stays"
        await clock.advance("1m")
        assert published(middleware)["n"] == 3, "the refresher carries on"


@pytest.mark.parametrize("make_error", RAISED, ids=IDS)
async def test_whatever_a_sync_fetch_raises_is_that_refreshers_failure(
    make_error: Callable[[], BaseException],
) -> None:
    """Plain fetches (run in a thread) follow the same rule and are described the same way."""

    def fetch() -> int:
        raise make_error()

    middleware, _ = middleware_with(Refresher("n", fetch, every="1m", required=False, default=0))
    async with LifespanManager(middleware):
        assert middleware.handle.status()["n"]["consecutive_failures"] == 1


async def test_refresh_now_of_a_fetch_raising_system_exit_raises_refresh_error() -> None:
    """refresh() turns the contained exception into RefreshError with it as the cause."""

    async def fetch() -> int:
        raise SystemExit(4)

    middleware, _ = middleware_with(Refresher("n", fetch, every="1m", required=False, default=0))
    async with LifespanManager(middleware):
        with pytest.raises(RefreshError, match="SystemExit: 4") as caught:
            await middleware.handle.refresh("n")
        assert isinstance(caught.value.__cause__, SystemExit)


def test_an_exception_whose_str_raises_is_described() -> None:
    """status() shows the type and says the message could not be read."""

    async def fetch() -> int:
        raise UnprintableError

    async def main() -> str:
        middleware, _ = middleware_with(Refresher("n", fetch, every="1m", required=False, default=0))
        async with LifespanManager(middleware):
            return middleware.handle.status()["n"]["last_error"] or ""

    assert anyio.run(main) == "UnprintableError: (its message could not be read: its __str__ raised)"


@pytest.mark.parametrize("make_error", RAISED, ids=IDS)
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_whatever_a_hook_raises_is_logged_and_the_refresher_carries_on(
    make_error: Callable[[], BaseException], kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """on_change and on_error, plain or async, raising anything: logged, refreshing goes on."""

    def sync_hook(*args: Any) -> None:
        raise make_error()

    async def async_hook(*args: Any) -> None:
        raise make_error()

    hook = sync_hook if kind == "sync" else async_hook
    upstream = Upstream(1, OSError("down"), 2, 3)
    middleware, clock = middleware_with(
        Refresher("n", upstream, every="1m", jitter=0, backoff_initial=60, on_change=hook, on_error=hook)
    )
    async with LifespanManager(middleware):
        for _ in range(3):
            await clock.advance("1m")
        assert published(middleware)["n"] == 3
    hook_errors = [r for r in caplog.records if "hook raised" in r.getMessage()]
    assert len(hook_errors) == 4, "on_change x3 (1, 2, 3) and on_error x1"


@pytest.mark.parametrize("make_error", RAISED, ids=IDS)
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_whatever_a_listener_raises_is_logged_and_ignored(
    make_error: Callable[[], BaseException], kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A listener, plain or async, raising anything never stops events or refreshes."""
    seen: list[str] = []

    def sync_listener(event: RefreshEvent) -> None:
        raise make_error()

    async def async_listener(event: RefreshEvent) -> None:
        raise make_error()

    listener = sync_listener if kind == "sync" else async_listener
    middleware, clock = middleware_with(
        Refresher("n", Upstream(), every="1m", jitter=0),
        listeners=[listener, lambda event: seen.append(event.kind)],
    )
    async with LifespanManager(middleware):
        await clock.advance("1m")
        await clock.advance("1m")
        assert published(middleware)["n"] == 3
    assert seen.count("succeeded") == 3
    assert any("event listener" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)


@pytest.mark.parametrize("make_error", RAISED, ids=IDS)
async def test_a_source_raising_anything_on_open_or_close_is_contained(
    make_error: Callable[[], BaseException], caplog: pytest.LogCaptureFixture
) -> None:
    """A source whose __aenter__ raises fails that load; one whose __aexit__ raises is logged at shutdown."""

    class Source:
        opened = 0

        async def __aenter__(self) -> Source:
            Source.opened += 1
            if Source.opened == 1:
                raise make_error()
            return self

        async def __aexit__(self, *exc_info: object) -> None:
            raise make_error()

        async def __call__(self) -> str:
            return "value"

    middleware, clock = middleware_with(
        Refresher("n", Source(), every="1m", required=False, default="d", backoff_initial=1)
    )
    async with LifespanManager(middleware):
        assert (middleware.handle.status()["n"]["last_error"] or "").startswith("SourceError: could not open")
        await clock.advance("1s")
        assert published(middleware)["n"] == "value"
    assert "closing the source of 'n' failed" in caplog.text


async def test_a_blocking_sync_hook_runs_in_a_thread_and_never_stalls_the_loop() -> None:
    """A plain on_change that blocks holds neither the event loop, the schedule, nor refresh()."""
    release = threading.Event()
    loop_thread = threading.get_ident()
    hook_threads: list[int] = []
    started = anyio.Event()
    token = anyio.lowlevel.current_token()

    def on_change(old: Any, new: Any) -> None:
        hook_threads.append(threading.get_ident())
        anyio.from_thread.run_sync(started.set, token=token)
        release.wait(10)

    upstream = Upstream()
    middleware, _ = middleware_with(
        Refresher("n", upstream, every="1m", jitter=0, timeout=None, on_change=on_change)
    )
    async with LifespanManager(middleware):
        with anyio.fail_after(5):
            await started.wait()  # the first change's hook runs, and now blocks
            assert await middleware.handle.refresh("n") == 2, "refresh-now is not held up"
            assert await middleware.handle.refresh("n") == 3, "nor is the loop"
        release.set()
    assert hook_threads[0] != loop_thread


async def test_a_slow_async_hook_sees_changes_coalesced_never_a_queue() -> None:
    """Changes arriving while on_change runs merge into one waiting call whose old chains on."""
    calls: list[tuple[Any, Any]] = []
    gate, second = anyio.Event(), anyio.Event()

    async def on_change(old: Any, new: Any) -> None:
        calls.append((old, new))
        if len(calls) == 1:
            await gate.wait()
        else:
            second.set()

    middleware, clock = middleware_with(
        Refresher("n", Upstream(), every="1m", jitter=0, timeout=None, on_change=on_change)
    )
    async with LifespanManager(middleware):
        for _ in range(10):
            await clock.advance("1m")
        assert calls == [(None, 1)], "the first call still runs"
        gate.set()
        with anyio.fail_after(5):
            await second.wait()
        await clock.advance(0)
    assert calls == [(None, 1), (1, 11)], "ten changes, one waiting call: from before the first to the latest"


async def test_on_error_waiting_behind_a_slow_hook_gets_the_latest_exception() -> None:
    """Failures arriving while on_error runs leave one waiting call, with the newest error."""
    errors: list[str] = []
    gate, second = anyio.Event(), anyio.Event()

    async def on_error(exc: BaseException) -> None:
        errors.append(str(exc))
        if len(errors) == 1:
            await gate.wait()
        else:
            second.set()

    failures = [OSError(f"down {i}") for i in range(1, 6)]
    middleware, clock = middleware_with(
        Refresher(
            "n",
            Upstream(0, *failures),
            every="1m",
            jitter=0,
            timeout=None,
            backoff_initial=60,
            on_error=on_error,
        )
    )
    async with LifespanManager(middleware):
        for _ in range(5):
            await clock.advance("1m")
        gate.set()
        with anyio.fail_after(5):
            await second.wait()
    assert errors == ["down 1", "down 5"]


async def test_failure_logs_are_rate_limited_per_refresher_whatever_the_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A message that changes every attempt logs at most 2 WARNINGs per refresher per 5 minutes."""
    attempt = 0

    async def fetch() -> int:
        nonlocal attempt
        attempt += 1
        if attempt == 1:
            return 0
        raise OSError(f"request id {attempt} failed")

    middleware, clock = middleware_with(
        Refresher("n", fetch, every="1s", jitter=0, backoff_initial=1, backoff_max=1)
    )
    with caplog.at_level(logging.INFO, logger="asgi_refresh"):
        async with LifespanManager(middleware):
            for _ in range(20):
                await clock.advance("1m")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert attempt > 1000
    assert len(warnings) == 4, "20 minutes of failures: one WARNING per 5 minutes"
    assert "more failures since the last warning, logged at DEBUG" in warnings[1].getMessage()


async def test_a_flapping_refresher_logs_no_recovery_per_flap(caplog: pytest.LogCaptureFixture) -> None:
    """Fail, recover, fail, recover...: one WARNING and one recovery INFO per 5 minutes, not per flap."""
    attempt = 0

    async def fetch() -> int:
        nonlocal attempt
        attempt += 1
        if attempt % 2 == 0:
            raise OSError("flap")
        return attempt

    middleware, clock = middleware_with(
        Refresher("n", fetch, every="1s", jitter=0, backoff_initial=1, backoff_max=1)
    )
    with caplog.at_level(logging.INFO, logger="asgi_refresh"):
        async with LifespanManager(middleware):
            await clock.advance("4m")
    loud = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert attempt > 200
    assert [r.levelname for r in loud] == ["WARNING", "INFO"], [r.getMessage() for r in loud]


async def test_a_process_that_cannot_keep_up_says_so_once_and_shows_the_lag(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Refreshes starting late by more than a whole interval: one WARNING, `lag` in status."""
    refreshers = [Refresher(f"r{i}", Upstream(), every="100ms", jitter=0) for i in range(20)]
    middleware, clock = middleware_with(*refreshers)
    async with LifespanManager(middleware):
        await clock.advance("1s")
        assert middleware.handle.status()["r0"]["lag"] == 0
        for _ in range(3):
            clock.jump("5s")  # the loop was blocked for 5 s, three times
            await clock.advance(0)
        lags = [entry["lag"] for entry in middleware.handle.status().values()]
        assert all(lag is not None and lag >= 4.9 for lag in lags), lags
        await clock.advance("1s")
        assert middleware.handle.status()["r0"]["lag"] == 0, "caught up again"
    behind = [r.getMessage() for r in caplog.records if "cannot keep up" in r.getMessage()]
    assert len(behind) == 1, "one WARNING, not one per refresher or per stall"
    assert "and 20 refreshers are behind" in behind[0]


async def test_status_never_raises_whatever_a_fetch_said_about_expiry_or_retry() -> None:
    """A token valid for 95 years and a retry_after of infinity: status() stays JSON, retries go on."""
    upstream = Upstream(
        Fresh("token", expires_in=3e9),  # about 95 years: the most a duration may be
        SourceError("slow down", retry_after=float("inf")),
        SourceError("slow down", retry_after=float("nan")),
        "again",
    )
    middleware, clock = middleware_with(Refresher("t", upstream, every="1h", jitter=0, backoff_initial=1))
    async with LifespanManager(middleware):
        json.dumps(middleware.handle.status(), allow_nan=False)
        await clock.advance("1h")
        assert upstream.calls == 2
        json.dumps(middleware.handle.status(), allow_nan=False)
        await clock.advance("1h")  # an infinite retry_after waits an hour at most
        assert upstream.calls == 3
        await clock.advance("2s")  # a NaN retry_after is ignored: the backoff rules
        assert upstream.calls == 4
        assert published(middleware)["t"] == "again"
