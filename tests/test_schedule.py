"""Scheduling, backoff, timeouts, hooks and status, driven by the fake clock."""

from __future__ import annotations

import itertools
import json
import logging
import threading
from datetime import timedelta
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import sniffio
from asgi_lifespan import LifespanManager

from asgi_refresh import Refresher, RefreshError, RefreshMiddleware, SourceError
from asgi_refresh.testing import FakeClock

from .helpers import START, ScriptedApp, Upstream, hang, published, running, runtime_of

pytestmark = pytest.mark.anyio


async def test_fixed_rate_schedule_does_not_drift() -> None:
    """Refreshes start every `every` seconds exactly, however long each fetch takes."""
    clock = FakeClock(START)

    async def slow_fetch() -> float:
        started = clock.monotonic()
        await clock.sleep_until(started + 7)  # each fetch takes 7 s
        return started

    upstream = Upstream("first", slow_fetch)
    upstream.clock = clock
    async with running(Refresher("n", upstream, every=60, jitter=0), clock=clock):
        await clock.advance(300 * 60)
    assert upstream.call_times == [60.0 * i for i in range(301)]


async def test_a_fetch_slower_than_every_re_anchors_instead_of_catching_up() -> None:
    """A refresh that ends more than an interval late is followed by one, not a burst."""
    clock = FakeClock(START)

    async def slow() -> str:
        await clock.sleep_until(clock.monotonic() + 150)
        return "slow"

    upstream = Upstream("v1", slow, "v3")
    upstream.clock = clock
    async with running(Refresher("n", upstream, every=60, jitter=0, timeout=None), clock=clock):
        await clock.advance(300)
    assert upstream.call_times == [0, 60, 210, 270]


async def test_jitter_moves_refreshes_earlier_within_bounds() -> None:
    """Over 500 intervals each refresh falls within jitter*every before its grid slot."""
    clock = FakeClock(START)
    upstream = Upstream()
    upstream.clock = clock
    async with running(Refresher("n", upstream, every=100, jitter=0.2), clock=clock):
        await clock.advance(100 * 500)
    times = upstream.call_times
    assert len(times) == 501
    assert all(100 * k - 20 <= t <= 100 * k for k, t in enumerate(times)), "early by at most 20 s, never late"
    earliness = [100 * k - t for k, t in enumerate(times[1:], start=1)]
    assert max(earliness) - min(earliness) > 10, "jitter actually spreads refreshes"
    assert 8 < sum(earliness) / len(earliness) < 12, "uniform within the window"


async def test_backoff_grows_is_capped_and_resets_after_success() -> None:
    """Retries wait 1, 2, 4, ... capped at backoff_max; a success resets the sequence."""
    clock = FakeClock(START)
    down = OSError("down")
    upstream = Upstream("v1", down, down, down, down, down, down, "v2", down, down, "v3")
    upstream.clock = clock
    refresher = Refresher("n", upstream, every=600, jitter=0, backoff_initial=1, backoff_max=10)
    async with running(refresher, clock=clock) as handle:
        await clock.advance(600 + 1 + 2 + 4 + 8 + 10 + 10)
        assert handle.status()["n"]["refresh_count"] == 2
        await clock.advance(600 + 1 + 2)
    times = upstream.call_times
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(times)]
    assert gaps == [600, 1, 2, 4, 8, 10, 10, 600, 1, 2]


async def test_backoff_is_jittered_and_never_longer_than_every() -> None:
    """With jitter, each retry delay is within [(1-jitter)*d, d] and never beyond the interval."""
    clock = FakeClock(START)
    upstream = Upstream("v1", OSError("down"))
    upstream.clock = clock
    refresher = Refresher("n", upstream, every=30, jitter=0.5, backoff_initial=1, backoff_multiplier=3)
    async with running(refresher, clock=clock):
        await clock.advance(30 * 200)
    gaps = [b - a for a, b in zip(upstream.call_times[1:], upstream.call_times[2:], strict=False)]
    assert all(gap <= 30 for gap in gaps)
    nominal = [1, 3, 9, 27] + [30] * (len(gaps) - 4)
    assert all(n * 0.5 <= gap <= n for n, gap in zip(nominal, gaps, strict=True))


async def test_huge_multiplier_does_not_overflow() -> None:
    """A backoff exponent past float range (100 ** 160) just means the cap."""
    clock = FakeClock(START)
    upstream = Upstream("v1", OSError("down"))
    refresher = Refresher("n", upstream, every=5, jitter=0, backoff_initial=1, backoff_multiplier=100)
    async with running(refresher, clock=clock):
        await clock.advance(5 * 170)
    assert upstream.calls > 160


async def test_last_good_value_survives_failures_and_timeouts(caplog: pytest.LogCaptureFixture) -> None:
    """Errors and timeouts keep the previous value published, logged at WARNING with the name."""
    clock = FakeClock(START)
    upstream = Upstream(["ada"], ValueError("bad json"), hang, ["grace"])
    inner = ScriptedApp()
    middleware = RefreshMiddleware(
        inner,
        refreshers=[Refresher("names", upstream, every=60, jitter=0, timeout=5, backoff_initial=1)],
        clock=clock,
    )
    with caplog.at_level(logging.INFO, logger="asgi_refresh"):
        async with LifespanManager(middleware):
            handle = middleware.handle
            await clock.advance(60)  # ValueError
            assert True
            status = handle.status()["names"]
            assert status["last_error"] == "ValueError: bad json"
            await clock.advance(1)  # the hanging fetch starts
            await clock.advance(5)  # ... and times out
            status = handle.status()["names"]
            assert status["last_error"] == "TimeoutError: fetch timed out after 5s"
            assert status["consecutive_failures"] == 2
            assert published(middleware)["names"] == ["ada"]
            await clock.advance(2)
            assert published(middleware)["names"] == ["grace"]
    failures = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(failures) == 1, "one WARNING per refresher per 5 minutes, even when the error changes"
    assert all(getattr(r, "refresher", None) == "names" for r in failures)
    assert "Refresher 'names' failed (1 in a row): ValueError: bad json" in failures[0].getMessage()
    assert "keeping the last good value" in failures[0].getMessage()
    assert failures[0].exc_info is not None, "the first failure of a run carries the traceback"
    assert "recovered after 2 failed attempts" in caplog.text


async def fan_out() -> list[str]:
    """Waits in a task group of its own: a raw nursery on trio, as trio.open_tcp_stream has."""
    if sniffio.current_async_library() == "trio":  # a nursery of its own, as trio.open_tcp_stream has
        import trio

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            nursery.start_soon(trio.sleep_forever)
            await trio.sleep_forever()
    else:
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(anyio.sleep_forever)
            task_group.start_soon(anyio.sleep_forever)
            await anyio.sleep_forever()
    raise AssertionError  # pragma: no cover


async def test_a_fetch_with_a_task_group_times_out_as_a_timeout(caplog: pytest.LogCaptureFixture) -> None:
    """The deadline reaching a task group in the fetch (httpx connects through one on trio) is a timeout.

    The group raises its children's cancellations as an exception group (trio
    always does): before, that group was taken for the fetch's own failure, logged
    with its traceback, and the worker's cancellation was lost.
    """
    clock = FakeClock(START)

    upstream = Upstream(["ada"], fan_out, ["grace"])
    middleware = RefreshMiddleware(
        ScriptedApp(),
        refreshers=[Refresher("names", upstream, every=60, jitter=0, timeout=5, backoff_initial=1)],
        clock=clock,
    )
    with caplog.at_level(logging.INFO, logger="asgi_refresh"):
        async with LifespanManager(middleware):
            await clock.advance(60)  # the fan-out starts
            await clock.advance(5)  # ... and times out
            status = middleware.handle.status()["names"]
            assert status["last_error"] == "TimeoutError: fetch timed out after 5s"
            assert published(middleware)["names"] == ["ada"]
            await clock.advance(1)
            assert published(middleware)["names"] == ["grace"], "the worker goes on with the next fetch"
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "TimeoutError: fetch timed out after 5s" in warning.getMessage()
    assert warning.exc_info is None, "a timeout's traceback is our own code"


async def test_shutdown_reaching_a_task_group_in_a_fetch_is_no_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Shutdown cancelling a fetch inside its own nursery (trio raises a group of Cancelled) stops it quietly."""
    clock = FakeClock(START)
    upstream = Upstream(["ada"], fan_out)
    middleware = RefreshMiddleware(
        ScriptedApp(),
        refreshers=[Refresher("names", upstream, every=60, jitter=0, timeout=None)],
        clock=clock,
    )
    with caplog.at_level(logging.INFO, logger="asgi_refresh"):
        async with LifespanManager(middleware):
            await clock.advance(60)  # the fan-out starts, and is under way at shutdown
            assert upstream.calls == 2
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_which_failures_are_logged_with_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """A run's first WARNING has the traceback, unless a SourceError or a timeout; a new run within 5 min is DEBUG."""
    clock = FakeClock(START)
    upstream = Upstream(
        ["a"], SourceError("HTTP 503 from GET /names"), ["b"], hang, ["c"], OSError("disk"), ["d"]
    )
    refresher = Refresher("names", upstream, every=600, jitter=0, timeout=5, backoff_initial=1)
    with caplog.at_level(logging.DEBUG, logger="asgi_refresh"):
        async with running(refresher, clock=clock) as handle:
            await clock.advance(1900)  # three runs of one failure each, 10 minutes apart
            assert upstream.calls == 7
            upstream.results.append(OSError("again"))
            with pytest.raises(RefreshError):
                await handle.refresh("names")  # a new run, minutes after the last WARNING
    failures = [r for r in caplog.records if r.getMessage().startswith("Refresher 'names' failed")]
    assert [(r.levelname, r.exc_info is not None, getattr(r, "error", None)) for r in failures] == [
        ("WARNING", False, "SourceError: HTTP 503 from GET /names"),
        ("WARNING", False, "TimeoutError: fetch timed out after 5s"),
        ("WARNING", True, "OSError: disk"),
        ("DEBUG", False, "OSError: again"),
    ]


async def test_status_reports_every_field_as_json() -> None:
    """status() has the documented fields, with ISO timestamps and seconds, and dumps to JSON."""
    clock = FakeClock(START)

    async def fetch_taking_2s() -> str:
        await clock.sleep_until(clock.monotonic() + 2)
        return "v"

    upstream = Upstream(fetch_taking_2s, OSError("upstream 503"))
    refresher = Refresher("names", upstream, every="1m", jitter=0, backoff_initial=5)
    middleware = RefreshMiddleware(ScriptedApp(), refreshers=[refresher], clock=clock)
    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.advance, 2)  # the first load takes 2 simulated seconds
        async with LifespanManager(middleware):
            handle = middleware.handle
            assert handle.status() == {
                "names": {
                    "source": "python",
                    "required": True,
                    "stale": False,
                    "last_success_at": "2030-01-01T00:00:02+00:00",
                    "last_changed_at": "2030-01-01T00:00:02+00:00",
                    "last_outcome": "changed",
                    "expires_at": None,
                    "last_error": None,
                    "consecutive_failures": 0,
                    "refresh_count": 1,
                    "next_refresh_at": "2030-01-01T00:01:00+00:00",
                    "last_duration": 2.0,
                    "age": 0.0,
                    "lag": 0.0,
                    "origin": "fetched",
                    "version": None,
                    "versions": [],
                    "pin": None,
                    "upstream": None,
                    "quarantined": None,
                    "snapshot": None,
                }
            }
            await clock.advance(58)  # t=60: the scheduled refresh fails
            status = handle.status()["names"]
            assert status["last_error"] == "OSError: upstream 503"
            assert status["consecutive_failures"] == 1
            assert status["refresh_count"] == 1
            assert status["last_outcome"] == "failed"
            assert status["last_changed_at"] == "2030-01-01T00:00:02+00:00"
            assert status["age"] == 58.0
            assert status["next_refresh_at"] == "2030-01-01T00:01:05+00:00"
            assert json.loads(json.dumps(handle.status())) == handle.status()
    assert handle.status()["names"]["next_refresh_at"] is None, "nothing is scheduled after shutdown"


async def test_long_error_messages_are_bounded_in_status() -> None:
    """A huge exception message is cut to one bounded line."""
    upstream = Upstream("v", ValueError("x\n" * 1000))
    clock = FakeClock(START)
    async with running(Refresher("n", upstream, every=1, jitter=0), clock=clock) as handle:
        await clock.advance(1)
        error = handle.status()["n"]["last_error"]
    assert error is not None
    assert len(error) == 500
    assert "\n" not in error


async def test_refresh_now_is_single_flight_under_100_concurrent_calls() -> None:
    """100 concurrent refresh() calls share one fetch and all get its value."""
    clock = FakeClock(START)
    gate = anyio.Event()

    async def gated() -> str:
        await gate.wait()
        return "fresh"

    upstream = Upstream("initial", gated)
    results: list[Any] = []
    async with running(Refresher("n", upstream, every="1h"), clock=clock) as handle:

        async def call() -> None:
            results.append(await handle.refresh("n"))

        async with anyio.create_task_group() as tg:
            for _ in range(100):
                tg.start_soon(call)
            await anyio.wait_all_tasks_blocked()
            gate.set()
    assert upstream.calls == 2
    assert results == ["fresh"] * 100


async def test_refresh_now_failure_raises_and_keeps_the_value() -> None:
    """A failing refresh() raises RefreshError with the cause; the old value stays published."""
    clock = FakeClock(START)
    error = ConnectionError("refused")
    middleware = RefreshMiddleware(
        ScriptedApp(), refreshers=[Refresher("n", Upstream("v1", error), every="1h")], clock=clock
    )
    async with LifespanManager(middleware):
        with pytest.raises(RefreshError, match="Refresher 'n' failed: ConnectionError: refused") as caught:
            await middleware.handle.refresh("n")
        assert caught.value.name == "n"
        assert caught.value.__cause__ is error
        assert published(middleware)["n"] == "v1"


async def test_refresh_now_restarts_the_schedule() -> None:
    """After a manual refresh, the next scheduled one is a full interval later."""
    clock = FakeClock(START)
    upstream = Upstream()
    upstream.clock = clock
    async with running(Refresher("n", upstream, every=60, jitter=0), clock=clock) as handle:
        await clock.advance(50)
        assert await handle.refresh("n") == 2
        await clock.advance(59)
        assert upstream.calls == 2
        await clock.advance(1)
    assert upstream.call_times == [0, 50, 110]


async def test_refresh_unknown_name_lists_the_known_ones() -> None:
    """A typo in refresh() names what exists."""
    async with running(Refresher("names", Upstream(), every=60)) as handle:
        with pytest.raises(LookupError, match="No refresher named 'nmes' \\(known: names\\)"):
            await handle.refresh("nmes")
        assert handle.names == ["names"]


async def test_a_cancelled_caller_does_not_cancel_the_shared_fetch() -> None:
    """A request that gives up waiting leaves the fetch running for everyone else."""
    gate = anyio.Event()

    async def gated() -> str:
        await gate.wait()
        return "fresh"

    upstream = Upstream("v1", gated)
    async with running(Refresher("n", upstream, every="1h")) as handle:
        async with anyio.create_task_group() as tg:
            tg.start_soon(handle.refresh, "n")
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()  # the first caller gives up mid-fetch
        assert upstream.calls == 2
        async with anyio.create_task_group() as tg:
            tg.start_soon(handle.refresh, "n")
            await anyio.wait_all_tasks_blocked()
            gate.set()
        assert upstream.calls == 2, "the second caller joined the fetch the first one left running"
        assert handle.status()["n"]["refresh_count"] == 2


async def test_waiters_get_an_error_when_shutdown_interrupts_their_fetch() -> None:
    """A refresh() caller outside the runtime is released with RefreshError at shutdown."""
    clock = FakeClock(START)
    outcome: list[BaseException] = []
    middleware = RefreshMiddleware(
        ScriptedApp(), refreshers=[Refresher("n", Upstream("v1", hang), every="1h")], clock=clock
    )
    async with anyio.create_task_group() as tg, LifespanManager(middleware):
        handle = middleware.handle

        async def waiter() -> None:
            try:
                await handle.refresh("n")
            except RefreshError as exc:
                outcome.append(exc)

        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
    assert len(outcome) == 1
    assert "asgi_refresh stopped while refreshing 'n'" in str(outcome[0])


async def test_refresh_after_shutdown_is_a_clear_error() -> None:
    """The handle of a finished lifespan refuses to fetch."""
    async with running(Refresher("n", Upstream(), every="1h")) as handle:
        pass
    with pytest.raises(RuntimeError, match="asgi_refresh is not running"):
        await handle.refresh("n")


async def test_no_fetch_after_shutdown() -> None:
    """Once shutdown completes, no amount of time triggers another fetch."""
    clock = FakeClock(START)
    upstream = Upstream()
    async with running(Refresher("n", upstream, every=1), clock=clock):
        await clock.advance(10)
    calls = upstream.calls
    await clock.advance(3600)
    assert calls >= 10
    assert upstream.calls == calls


async def test_sync_fetch_runs_in_a_worker_thread() -> None:
    """A plain def never runs on the event loop thread; advance() waits for it."""
    loop_thread = threading.get_ident()
    threads: list[int] = []

    def fetch() -> int:
        threads.append(threading.get_ident())
        return len(threads)

    clock = FakeClock(START)
    middleware = RefreshMiddleware(
        ScriptedApp(), refreshers=[Refresher("n", fetch, every=60, jitter=0)], clock=clock
    )
    async with LifespanManager(middleware):
        await clock.advance(60)
        assert published(middleware)["n"] == 2
    assert threads
    assert loop_thread not in threads


async def test_sync_fetch_errors_are_failures_like_any_other() -> None:
    """An exception raised in the worker thread is recorded and the last value kept."""
    calls = 0

    def fetch() -> str:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise ValueError("bad row 7")
        return "v1"

    clock = FakeClock(START)
    middleware = RefreshMiddleware(ScriptedApp(), refreshers=[Refresher("n", fetch, every=60)], clock=clock)
    async with LifespanManager(middleware):
        with pytest.raises(RefreshError) as caught:
            await middleware.handle.refresh("n")
        assert isinstance(caught.value.__cause__, ValueError)
        assert middleware.handle.status()["n"]["last_error"] == "ValueError: bad row 7"
        assert published(middleware)["n"] == "v1"


async def test_plain_function_returning_a_coroutine_is_awaited() -> None:
    """lambda: load(url) works: the lambda runs in a thread, its coroutine on the loop."""
    loop_thread = threading.get_ident()
    seen: list[int] = []

    async def load(url: str) -> str:
        seen.append(threading.get_ident())
        return url

    middleware = RefreshMiddleware(
        ScriptedApp(), refreshers=[Refresher("n", lambda: load("v"), every=60)], clock=FakeClock(START)
    )
    async with LifespanManager(middleware):
        assert published(middleware)["n"] == "v"
    assert seen == [loop_thread]


async def test_plain_function_returning_another_awaitable_is_a_clear_error() -> None:
    """Only coroutines are awaited for a plain function; any other awaitable is a mistake."""

    class Pending:
        def __await__(self) -> Any:
            yield from ()

    async with running(
        Refresher("n", lambda: Pending(), every=60, required=False), clock=FakeClock(START)
    ) as handle:
        error = handle.status()["n"]["last_error"]
    assert error == (
        "TypeError: Refresher 'n': fetch is a plain function that returned Pending; "
        "return the value itself, or declare fetch `async def`"
    )


async def test_a_deadline_cancels_only_its_own_fetch_and_the_worker_goes_on() -> None:
    """A deadline passing after its fetch ended cancels nothing; after a timeout, the next fetch runs.

    Deadlines live on the worker running the fetch, which goes on in a new cancel scope.
    """
    clock = FakeClock(START)
    durations = iter([0, 3, 60, 0, 0])
    outcomes: list[str] = []

    async def fetch() -> int:
        duration = next(durations)
        if duration:
            await clock.sleep_until(clock.monotonic() + duration)
        outcomes.append(f"done after {duration}s")
        return len(outcomes)

    refresher = Refresher("n", fetch, every=4, jitter=0, timeout=5, backoff_initial=1)
    async with running(refresher, clock=clock) as handle:
        await clock.advance(4)  # a 3 s fetch starts; the first load's deadline (t=5) passes meanwhile
        await clock.advance(3)
        assert outcomes == ["done after 0s", "done after 3s"]
        assert handle.status()["n"]["consecutive_failures"] == 0
        await clock.advance(1)  # t=8: a fetch that hangs, cancelled at its deadline (t=13)
        await clock.advance(5)
        assert handle.status()["n"]["last_error"] == "TimeoutError: fetch timed out after 5s"
        await clock.advance(1)  # the retry, one second later, in a fresh cancel scope
        assert outcomes[-1] == "done after 0s"
        assert handle.status()["n"]["consecutive_failures"] == 0
        assert handle.value("n") == 3


async def test_sync_fetch_that_times_out_is_abandoned(caplog: pytest.LogCaptureFixture) -> None:
    """A blocking fetch past its timeout fails the attempt; its late result is discarded."""
    release = threading.Event()

    def blocking() -> str:
        release.wait(5)
        return "late"

    try:
        middleware = RefreshMiddleware(
            ScriptedApp(),
            refreshers=[Refresher("n", blocking, every=60, timeout=0.05, required=False, default="d")],
        )
        async with LifespanManager(middleware):
            status = middleware.handle.status()["n"]
            assert status["last_error"] == "TimeoutError: fetch timed out after 50ms"
            assert "failed (1 in a row): TimeoutError: fetch timed out after 50ms" in caplog.text
            assert "Traceback" not in caplog.text, "a timeout's traceback would only show our own code"
            assert published(middleware)["n"] == "d"
    finally:
        release.set()


async def test_hooks_see_changes_and_errors_and_their_own_failures_are_contained(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """on_change runs only when the value changes, on_error on failures; a raising hook is logged."""
    clock = FakeClock(START)
    changes: list[tuple[Any, Any]] = []
    errors: list[BaseException] = []

    async def on_change(old: Any, new: Any) -> None:
        changes.append((old, new))
        if new == "boom":
            raise RuntimeError("hook bug")

    def on_error(exc: BaseException) -> None:
        errors.append(exc)
        raise RuntimeError("error hook bug")

    failure = OSError("down")
    upstream = Upstream("a", "a", "b", failure, "boom", "c")
    refresher = Refresher(
        "n", upstream, every=10, jitter=0, backoff_initial=10, on_change=on_change, on_error=on_error
    )
    with caplog.at_level(logging.WARNING, logger="asgi_refresh"):
        async with running(refresher, clock=clock) as handle:
            await clock.advance(50)
            assert handle.status()["n"]["refresh_count"] == 5
    assert changes == [(None, "a"), ("a", "b"), ("b", "boom"), ("boom", "c")]
    assert errors == [failure]
    assert "on_change hook raised" in caplog.text
    assert "on_error hook raised" in caplog.text


async def test_on_change_for_a_non_required_refresher_starts_from_the_default() -> None:
    """The first fetched value is compared with the published default."""
    changes: list[tuple[Any, Any]] = []
    refreshers = [
        Refresher(
            "same",
            Upstream({}),
            every=10,
            required=False,
            default={},
            on_change=lambda o, n: changes.append((o, n)),
        ),
        Refresher(
            "other",
            Upstream([1]),
            every=10,
            required=False,
            default=[],
            on_change=lambda o, n: changes.append((o, n)),
        ),
    ]
    async with running(*refreshers):
        pass
    assert changes == [([], [1])]


async def test_values_with_odd_equality_count_as_changed() -> None:
    """A value whose != raises (like an array) still triggers on_change instead of crashing."""

    class Odd:
        def __ne__(self, other: object) -> bool:
            raise ValueError("ambiguous")

    changes: list[Any] = []
    clock = FakeClock(START)
    first, second = Odd(), Odd()
    refresher = Refresher(
        "n", Upstream(first, second), every=10, jitter=0, on_change=lambda o, n: changes.append(n)
    )
    async with running(refresher, clock=clock):
        await clock.advance(10)
    assert changes == [first, second]


async def test_a_refresh_due_while_a_refresh_now_runs_joins_it() -> None:
    """The schedule coming due during a refresh-now waits for that fetch instead of starting another."""
    clock = FakeClock(START)
    release = anyio.Event()
    calls: list[float] = []

    async def fetch() -> int:
        calls.append(clock.monotonic())
        if len(calls) == 2:
            await release.wait()
        return len(calls)

    async with running(Refresher("n", fetch, every="1m", jitter=0, timeout=None), clock=clock) as handle:
        async with anyio.create_task_group() as tg:
            tg.start_soon(handle.refresh, "n")
            await clock.advance(30)  # the refresh-now is blocked
            await clock.advance(40)  # and the scheduled refresh (t=60) came due meanwhile
            assert calls == [0, 0], "no second fetch while the first runs"
            release.set()
        # It ended late: the refresh due at 60 follows at once, and the grid holds.
        assert calls == [0, 0, 70]
        assert handle.status()["n"]["next_refresh_at"] == (START + timedelta(seconds=120)).isoformat()


async def test_on_change_sees_changes_in_order_when_refreshes_race() -> None:
    """Scheduled refreshes and refresh-now racing (trio shuffles task order): hooks stay in order.

    Real time, until more than 20 changes (half a second on an idle machine): the race
    needs the event loop's own scheduling.
    """
    counter = itertools.count(1)
    changes: list[tuple[Any, Any]] = []

    async def fetch() -> int:
        return next(counter)

    refresher = Refresher(
        "n", fetch, every="10ms", jitter=0, on_change=lambda old, new: changes.append((old, new))
    )
    middleware = RefreshMiddleware(ScriptedApp(), refreshers=[refresher])
    async with LifespanManager(middleware):
        with anyio.move_on_after(10):  # a bound: the assert below says what went wrong
            while len(changes) <= 20:
                await anyio.sleep(0.01)
                await middleware.handle.refresh("n")
    assert len(changes) > 20
    assert all(earlier[1] == later[0] for earlier, later in itertools.pairwise(changes)), changes


async def test_a_failure_that_repeats_is_logged_once_then_every_five_minutes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One WARNING when failures start, then every 5 minutes whatever the error; the rest at DEBUG."""
    clock = FakeClock(START)
    errors = [OSError("upstream down")] * 50 + [OSError("upstream on fire")] * 5 + ["ok"]
    upstream = Upstream("v", *errors)
    refresher = Refresher("n", upstream, every="1h", jitter=0, backoff_initial="10s", backoff_max="10s")
    caplog.set_level(logging.DEBUG, logger="asgi_refresh")
    async with running(refresher, clock=clock):
        await clock.advance("1h")  # the scheduled refresh starts the run of failures
        await clock.advance(55 * 10)  # 55 failures 10 s apart, then a success
    failures = [r for r in caplog.records if r.getMessage().startswith("Refresher 'n' failed")]
    warnings = [r.getMessage() for r in failures if r.levelno == logging.WARNING]
    assert len(failures) == 55
    assert [w.split(": ", 1)[1].split(";")[0] for w in warnings] == [
        "OSError: upstream down",  # the first
        "OSError: upstream down",  # 5 minutes later; a new error waits its turn (rate-limited per refresher)
    ]
    assert "(29 more failures since the last warning, logged at DEBUG)" in warnings[1]
    assert "recovered after 55 failed attempts" in caplog.text


async def test_a_refresh_now_never_waits_behind_another_refresh_nows_io() -> None:
    """Two refresh-nows started together: the quick one returns while the other waits on I/O."""
    gate = anyio.Event()
    slow_calls = 0

    async def slow() -> str:
        nonlocal slow_calls
        slow_calls += 1
        if slow_calls > 1:  # the first load returns; the refresh-now hangs on its upstream
            await gate.wait()
        return "slow"

    async def quick() -> str:
        return "quick"

    async with running(
        Refresher("slow", slow, every="1h", timeout=None), Refresher("quick", quick, every="1h")
    ) as handle:
        got: list[str] = []
        quick_done = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def refresh(name: str) -> None:
                got.append(await handle.refresh(name))
                if name == "quick":
                    quick_done.set()

            tg.start_soon(refresh, "quick")
            tg.start_soon(refresh, "slow")
            with anyio.fail_after(5):  # real seconds: a guard, never reached when it works
                await quick_done.wait()
            assert got == ["quick"]
            gate.set()
        assert sorted(got) == ["quick", "slow"]


async def test_fetches_still_queued_at_shutdown_release_their_waiters() -> None:
    """Shutdown before queued fetches started: their callers get an error, and refresh() afterwards says why."""
    runtime: Any = None
    flights: dict[str, Any] = {}
    calls = 0

    async def trigger() -> int:
        nonlocal calls
        calls += 1
        if calls > 1:  # a refresh-now: queue two more, and shutdown comes in this same turn
            for name in ("b", "c"):
                flights[name] = runtime.start_refresh(runtime.slots[name])
            runtime._scope.cancel()
            await anyio.sleep_forever()
        return 0

    async def other() -> int:
        await anyio.lowlevel.checkpoint()
        return 1

    middleware = RefreshMiddleware(
        ScriptedApp(),
        refreshers=[
            Refresher(name, fetch, every="1h") for name, fetch in (("a", trigger), ("b", other), ("c", other))
        ],
        clock=FakeClock(START),
    )
    async with LifespanManager(middleware):
        runtime = runtime_of(middleware.handle)
        with anyio.fail_after(5), pytest.raises(RuntimeError, match="stopped while refreshing 'a'"):
            await middleware.handle.refresh("a")
    assert sorted(flights) == ["b", "c"]
    for name, flight in flights.items():
        assert flight.finished, f"{name}'s waiters would wait forever"
        assert str(flight.error) == f"asgi_refresh stopped while refreshing {name!r}"
    with pytest.raises(RuntimeError, match="asgi_refresh is not running"):
        await middleware.handle.refresh("b")


async def test_shutdown_at_a_fetch_deadline_is_shutdown_not_a_timeout() -> None:
    """A fetch whose deadline passes as shutdown cancels it stops quietly: no timeout failure, no retry."""
    clock = FakeClock(START)
    runtime: Any = None
    calls = 0
    events: list[str] = []

    async def fetch() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            return 1
        try:
            await anyio.sleep_forever()
        finally:
            runtime._scope.cancel()  # shutdown arrives in the same turn as the deadline
        return 2  # pragma: no cover - cancelled above

    middleware = RefreshMiddleware(
        ScriptedApp(),
        refreshers=[Refresher("n", fetch, every=60, jitter=0, timeout=5)],
        clock=clock,
        listeners=[lambda event: events.append(event.kind)],
    )
    async with LifespanManager(middleware):
        runtime = runtime_of(middleware.handle)
        await clock.advance(60)  # the refresh starts and hangs
        await clock.advance(5)  # its deadline passes: the timeout and the shutdown coincide
        assert runtime.slots["n"].history.last_error is None, "shutdown, not a timed-out fetch"
    assert "failed" not in events
    assert calls == 2
