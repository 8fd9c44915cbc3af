"""Coordinated refreshers in one process: several middlewares stand in for workers.

Each "worker" is a RefreshMiddleware with its own coordinator instance on one real
backend (a Redis server, an SQLite file). The schedule runs on one shared test
clock; the backends' own leases and polling run in real time, which is why a few
waits below poll for up to a few seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from asgi_lifespan import LifespanManager

from asgi_refresh import (
    Fresh,
    HTTPSource,
    RedisCoordinator,
    Refresher,
    RefreshError,
    RefreshHandle,
    RefreshMiddleware,
    SQLiteCoordinator,
)
from asgi_refresh._cluster.base import Coordinator, CoordinatorUnavailable
from asgi_refresh._runtime import Runtime
from asgi_refresh.demo.upstream import Upstream, serve
from asgi_refresh.testing import FakeClock

from .helpers import Counting, FakeServer, ScriptedApp, meta_of, runtime_of
from .redis_server import RedisServer

pytestmark = pytest.mark.anyio

Backend = Callable[..., Coordinator]


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Makes coordinator instances on one backend, like the processes of a cluster would."""
    if request.param == "sqlite":
        path = tmp_path / "refresh.db"
        return lambda **options: SQLiteCoordinator(path, poll_interval=0.02, **options)
    server: RedisServer = request.getfixturevalue("redis_server")
    prefix = f"test{time.monotonic_ns()}"
    return lambda **options: RedisCoordinator(server.url, **{"prefix": prefix, **options})


@asynccontextmanager
async def workers(
    count: int, backend: Backend, upstream: Any, clock: FakeClock, **options: Any
) -> AsyncIterator[list[RefreshMiddleware]]:
    """``count`` running middlewares sharing one backend (each with its own coordinator)."""
    options.setdefault("lease_ttl", "15s")
    middlewares = [
        RefreshMiddleware(
            ScriptedApp(),
            refreshers=[Refresher("names", upstream, every="1m", jitter=0, timeout="5s")],
            clock=clock,
            coordinator=backend(),
            **options,
        )
        for _ in range(count)
    ]
    async with AsyncExitStack() as stack:
        for middleware in middlewares:
            await stack.enter_async_context(LifespanManager(middleware, startup_timeout=10))
        yield middlewares


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Wait (in real time: the backends poll and notify in real time) until ``condition()``."""
    with anyio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110 - other processes' effects: nothing to wait on here
            await anyio.sleep(0.01)


def values(middlewares: list[RefreshMiddleware]) -> list[Any]:
    return [middleware.handle.value("names") for middleware in middlewares]


def roles(middlewares: list[RefreshMiddleware]) -> list[str]:
    return [middleware.handle.status()["names"]["coordination"]["role"] for middleware in middlewares]


async def advance(clock: FakeClock, seconds: float) -> None:
    """Advance the test clock, then let the real-time backend calls (threads) finish."""
    await clock.advance(seconds)
    await anyio.sleep(0.01)


def quick_redis(server: RedisServer) -> Backend:
    """Coordinators on a Redis that a test stops and starts: a short timeout, a prefix of its own."""
    prefix = f"stoppable{time.monotonic_ns()}"
    return lambda **options: RedisCoordinator(server.url, prefix=prefix, timeout=0.5, **options)


async def coordinating_again(clock: FakeClock, middlewares: list[RefreshMiddleware]) -> None:
    """Advance the test clock until one leader and its follower agree again (after an outage)."""
    for _ in range(30):  # lease polls run on the test clock; resubscribing runs in real time
        await advance(clock, 5)
        if (
            sorted(roles(middlewares)) == ["follower", "leader"]
            and values(middlewares)[0] == values(middlewares)[1]
        ):
            return
        await anyio.sleep(0.05)


async def test_four_workers_fetch_once_per_interval_and_converge(backend: Backend) -> None:
    """4 workers over 20 intervals: 21 fetches (not 84), every worker serves each new version."""
    clock = FakeClock()
    upstream = Counting()
    async with workers(4, backend, upstream, clock) as middlewares:
        await until(lambda: values(middlewares) == [{"version": 1}] * 4)
        assert upstream.calls == 1
        assert sorted(roles(middlewares)) == ["follower", "follower", "follower", "leader"]
        reports = [middleware.handle.status()["names"] for middleware in middlewares]
        leader = next(report for report in reports if report["coordination"]["role"] == "leader")
        for report in reports:
            assert report["coordination"]["stored_by"] == leader["coordination"]["process"]
            assert report["coordination"]["error"] is None
            follows = report["coordination"]["role"] == "follower"
            assert (report["next_refresh_at"] is None) == follows, "a follower has no schedule of its own"
        for interval in range(2, 22):
            await advance(clock, 60)
            expected = [{"version": interval}] * 4
            await until(lambda: values(middlewares) == expected)  # noqa: B023 - called right here
        assert upstream.calls == 21


async def test_a_new_worker_starts_from_the_stored_value_without_fetching(backend: Backend) -> None:
    """A process that starts when a fresh value is stored uses it: no fetch at startup."""
    clock = FakeClock()
    upstream = Counting()
    async with workers(1, backend, upstream, clock) as first:
        assert values(first) == [{"version": 1}]
    async with workers(1, backend, upstream, clock) as second:
        assert values(second) == [{"version": 1}]
        assert upstream.calls == 1, "the stored value was one minute from due"
        await advance(clock, 60)
        await until(lambda: values(second) == [{"version": 2}])


async def test_refresh_now_on_a_follower_reaches_every_worker(backend: Backend) -> None:
    """handle.refresh on any worker: the lease holder fetches, all serve the result."""
    clock = FakeClock()
    upstream = Counting()
    async with workers(3, backend, upstream, clock) as middlewares:
        await until(lambda: values(middlewares) == [{"version": 1}] * 3)
        follower = next(
            m for m in middlewares if m.handle.status()["names"]["coordination"]["role"] == "follower"
        )
        assert await follower.handle.refresh("names") == {"version": 2}
        await until(lambda: values(middlewares) == [{"version": 2}] * 3)
        assert upstream.calls == 2


async def test_the_lease_moves_when_its_holder_shuts_down(backend: Backend) -> None:
    """The holder releases at shutdown; another worker takes over and keeps the schedule."""
    clock = FakeClock()
    upstream = Counting()
    async with workers(2, backend, upstream, clock) as middlewares:
        await until(lambda: values(middlewares) == [{"version": 1}] * 2)
        leader = middlewares[roles(middlewares).index("leader")]
        survivor = middlewares[1 - middlewares.index(leader)]
        async with AsyncExitStack():
            pass
        # Stop the leader's lifespan by hand: its LifespanManager is inside `workers`.
        handle: RefreshHandle = leader.handle
        await runtime_of(handle).stop(5)
        await advance(clock, 10)  # the survivor polls the lease every lease_ttl / 3 = 5 s
        await until(lambda: survivor.handle.status()["names"]["coordination"]["role"] == "leader")
        assert upstream.calls == 1, "the stored value is not due yet: no fetch at takeover"
        await advance(clock, 50)
        await until(lambda: values([survivor]) == [{"version": 2}])


async def test_a_value_the_codec_cannot_encode_fails_startup_at_once(backend: Backend) -> None:
    """A set is not JSON: a clear configuration error at startup, not 30 s of retries."""
    clock = FakeClock()

    async def a_set() -> set[str]:
        return {"ada", "grace"}

    middleware = RefreshMiddleware(
        ScriptedApp(), refreshers=[Refresher("names", a_set, every="1m")], clock=clock, coordinator=backend()
    )
    with pytest.raises(BaseException) as caught:  # noqa: PT011 - trio wraps it in an ExceptionGroup
        async with LifespanManager(middleware, startup_timeout=5):
            pass
    message = str(caught.value) + "".join(str(e) for e in getattr(caught.value, "exceptions", ()))
    assert "Refresher 'names' could not load" in message
    assert "cannot be shared with the other processes by JSONCodec()" in message
    assert "value of type set is not JSON-serialisable" in message


async def test_prefixes_keep_two_apps_apart(backend: Backend) -> None:
    """Two apps with different prefixes on one backend each fetch their own value."""
    clock = FakeClock()
    first, second = Counting(), Counting()
    app_a = RefreshMiddleware(
        ScriptedApp(),
        refreshers=[Refresher("names", first, every="1m")],
        clock=clock,
        coordinator=backend(prefix=f"app_a{time.monotonic_ns()}"),
    )
    app_b = RefreshMiddleware(
        ScriptedApp(),
        refreshers=[Refresher("names", second, every="1m")],
        clock=clock,
        coordinator=backend(prefix=f"app_b{time.monotonic_ns()}"),
    )
    async with LifespanManager(app_a), LifespanManager(app_b):
        assert app_a.handle.value("names") == {"version": 1}
        assert app_b.handle.value("names") == {"version": 1}
        assert (first.calls, second.calls) == (1, 1)


async def test_refresh_now_when_the_leader_cannot_answer_times_out_with_a_clear_error(tmp_path: Path) -> None:
    """A follower whose leader never stores gets a RefreshError naming the wait, and keeps its value."""
    clock = FakeClock()
    upstream = Counting()
    path = tmp_path / "refresh.db"
    refresher = Refresher("names", upstream, every="1m", timeout="1s")
    follower = RefreshMiddleware(
        ScriptedApp(),
        refreshers=[refresher],
        clock=clock,
        coordinator=SQLiteCoordinator(path, poll_interval=0.02),
        lease_ttl="1s",
    )
    squatter = SQLiteCoordinator(path)
    async with squatter:
        assert await squatter.acquire("names", ttl=60)
        await squatter.store("names", b'{"version": 0}', meta_of(refresher))
        async with LifespanManager(follower):
            assert follower.handle.value("names") == {"version": 0}
            errors: list[RefreshError] = []

            async def ask() -> None:
                try:
                    await follower.handle.refresh("names")
                except RefreshError as exc:
                    errors.append(exc)

            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(ask)
                    while not errors:  # the wait runs on the test clock: no real 2 s
                        await advance(clock, 0.5)  # (in steps: asking the backend takes real time)
            assert len(errors) == 1
            assert "did not store a new value within 2s" in str(errors[0])
            assert follower.handle.value("names") == {"version": 0}
    assert upstream.calls == 0


async def test_without_the_backend_each_worker_fetches_for_itself_then_coordinates_again(
    stoppable_redis: RedisServer,
) -> None:
    """Redis stopped mid-run: fallback (logged, in status), no failed request; back when it returns."""
    clock = FakeClock()
    upstream = Counting()
    backend = quick_redis(stoppable_redis)

    async with workers(2, backend, upstream, clock) as middlewares:
        await until(lambda: values(middlewares) == [{"version": 1}] * 2)
        stoppable_redis.stop()
        await advance(clock, 60)
        await until(lambda: roles(middlewares) == ["standalone", "standalone"])
        error = middlewares[0].handle.status()["names"]["coordination"]["error"]
        assert error is not None
        assert "Redis at redis://127.0.0.1" in error
        await advance(clock, 60)
        await until(lambda: upstream.calls >= 3, seconds=10)
        assert all(isinstance(value, dict) for value in values(middlewares)), "values stay published"
        stoppable_redis.start()
        await advance(clock, 60)
        await until(lambda: sorted(roles(middlewares)) == ["follower", "leader"], seconds=10)
        for _ in range(3):  # the refresh the former standalone processes ask for, once back
            await advance(clock, 5)
            await anyio.sleep(0.1)
        await until(lambda: values(middlewares)[0] == values(middlewares)[1])
        calls = upstream.calls
        await advance(clock, 60)
        await until(
            lambda: values(middlewares)[0] == values(middlewares)[1] == {"version": calls + 1}, seconds=10
        )
        assert upstream.calls == calls + 1, "one fetch per interval again"


async def test_the_next_lease_holder_asks_the_server_if_changed_since(tmp_path: Path) -> None:
    """The ETag is stored with the value: a takeover's first fetch is a 304, not a download."""
    upstream = Upstream()
    upstream.set("/names", ["ada", "grace"])
    clock = FakeClock()
    path = tmp_path / "refresh.db"
    with serve(upstream) as url:

        def worker() -> RefreshMiddleware:
            return RefreshMiddleware(
                ScriptedApp(),
                refreshers=[Refresher("names", HTTPSource(f"{url}/names"), every="1m", jitter=0)],
                clock=clock,
                coordinator=SQLiteCoordinator(path, poll_interval=0.02),
            )

        async with LifespanManager(worker()):
            pass
        second = worker()
        async with LifespanManager(second):
            assert second.handle.value("names") == ["ada", "grace"]
            assert upstream.requests["/names"] == 1, "started from the stored value"
            await advance(clock, 60)
            await until(lambda: second.handle.status()["names"]["refresh_count"] == 1)
            assert upstream.requests["/names"] == 2
            assert upstream.not_modified["/names"] == 1
            assert second.handle.status()["names"]["last_outcome"] == "not_modified"
            upstream.set("/names", ["ada", "grace", "edsger"])
            await advance(clock, 60)
            await until(lambda: second.handle.value("names") == ["ada", "grace", "edsger"])


async def test_a_stored_value_the_codec_cannot_decode_is_logged_and_fetched_here(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage in the backend is one WARNING naming the refresher; this process fetches for itself."""
    path = tmp_path / "refresh.db"
    squatter = SQLiteCoordinator(path)
    refresher = Refresher("names", Counting(), every="1m", required=True)
    async with squatter:
        assert await squatter.acquire("names", ttl=60)
        await squatter.store("names", b"\xff not json", meta_of(refresher))
        middleware = RefreshMiddleware(
            ScriptedApp(),
            refreshers=[refresher],
            clock=FakeClock(),
            coordinator=SQLiteCoordinator(path),
            startup_timeout="5s",
        )
        async with LifespanManager(middleware):
            assert middleware.handle.value("names") == {"version": 1}, "a required refresher still starts"
            coordination = middleware.handle.status()["names"]["coordination"]
            assert coordination["role"] == "standalone"
            assert "cannot be decoded by JSONCodec()" in (coordination["error"] or "")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("Refresher 'names': its stored value cannot be decoded by JSONCodec()")


async def test_an_expiring_value_keeps_its_expiry_across_processes(tmp_path: Path) -> None:
    """A Fresh token stored by the holder expires on every worker, and is renewed before it does."""
    clock = FakeClock()
    calls = 0

    async def token() -> Fresh[str]:
        nonlocal calls
        calls += 1
        return Fresh(f"token-{calls}", expires_in=100, leeway=10)

    path = tmp_path / "refresh.db"

    def worker() -> RefreshMiddleware:
        return RefreshMiddleware(
            ScriptedApp(),
            refreshers=[Refresher("token", token, every="1h", jitter=0)],
            clock=clock,
            coordinator=SQLiteCoordinator(path, poll_interval=0.02),
        )

    first, second = worker(), worker()
    began = time.monotonic()  # before the fetch
    async with LifespanManager(first), LifespanManager(second):
        await until(lambda: second.handle.value("token") == "token-1")
        elapsed = time.monotonic() - began  # after the follower loaded it
        expiries = [
            datetime.fromisoformat(m.handle.status()["token"]["expires_at"] or "") for m in (first, second)
        ]
        # The follower ages the value by the backend's clock: the real time between the
        # holder's store and its load, no more than went by here (the test clock stood still).
        aged = (expiries[0] - expiries[1]).total_seconds()
        assert abs(aged) <= elapsed + 0.01, (aged, elapsed)
    third = worker()
    async with LifespanManager(third):
        assert third.handle.value("token") == "token-1"
        await advance(clock, 85)
        assert calls == 1
        await advance(clock, 6)  # 90 s after the fetch: renewed before the expiry, by the new holder
        await until(lambda: third.handle.value("token") == "token-2")


async def test_a_holder_that_lost_its_lease_while_fetching_stores_nothing(tmp_path: Path) -> None:
    """Fencing: a holder stalled past lease_ttl cannot overwrite its successor's value."""
    path = tmp_path / "refresh.db"
    release = anyio.Event()
    calls = 0

    async def slow() -> int:
        nonlocal calls
        calls += 1
        if calls == 2:
            await release.wait()
        return calls

    middleware = RefreshMiddleware(
        ScriptedApp(),
        refreshers=[Refresher("names", slow, every="1m", timeout=None)],
        clock=FakeClock(),
        coordinator=SQLiteCoordinator(path, poll_interval=0.02),
        lease_ttl="0.3s",
    )
    successor = SQLiteCoordinator(path)
    async with LifespanManager(middleware), successor:
        refresh = anyio.Event()

        async def refresh_now() -> None:
            await middleware.handle.refresh("names")
            refresh.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(refresh_now)
            await until(lambda: calls == 2)
            await anyio.sleep(0.4)  # the lease runs out in real time; nobody renews it (no clock advance)
            assert await successor.acquire("names", ttl=60)
            release.set()
        await until(lambda: middleware.handle.status()["names"]["coordination"]["role"] == "follower")
        stored = await successor.load("names")
        assert stored is not None
        assert stored.version == 1, "the stalled holder's value (2) was refused"


# -- found in review: leases during long fetches, restarts, takeovers, outages ------------


async def test_a_fetch_longer_than_the_lease_keeps_it(tmp_path: Path) -> None:
    """Leases are renewed apart from fetches: a slow fetch never makes two leaders (real time)."""
    calls = 0
    every, fetch = 5.0, 3.0

    async def slow() -> int:
        nonlocal calls
        calls += 1
        await anyio.sleep(fetch)
        return calls

    path = tmp_path / "refresh.db"
    # The fetch (3 s) outlasts lease_ttl (2 s) and the lease in the backend (2/3 of it),
    # which is renewed every 2/3 s: a renewal may come up to 2/3 s late on a loaded
    # machine without the lease running out, while one that waited for the fetch would lose it.
    middlewares = [
        RefreshMiddleware(
            ScriptedApp(),
            refreshers=[Refresher("names", slow, every=f"{every}s", jitter=0, timeout="10s")],
            coordinator=SQLiteCoordinator(path, poll_interval=0.02),
            lease_ttl="2s",
        )
        for _ in range(2)
    ]
    seen: set[tuple[str, ...]] = set()
    async with AsyncExitStack() as stack:
        for middleware in middlewares:
            await stack.enter_async_context(LifespanManager(middleware, startup_timeout=15))
        started, began = calls, time.monotonic()
        while time.monotonic() - began < 8.0:  # the next fetch, and most of the interval after it
            seen.add(tuple(sorted(roles(middlewares))))
            await anyio.sleep(0.2)
        window = time.monotonic() - began
    assert seen == {("follower", "leader")}, "never two leaders, never none"
    # One fetch starts every 5 s for the cluster: at most this many in the window.
    assert calls - started <= int(window / every) + 1, (calls - started, window)


async def test_refresh_now_after_the_backend_lost_its_data_still_waits_for_a_new_value(
    stoppable_redis: RedisServer,
) -> None:
    """Redis restarted empty: request numbers and versions restart at 1, and nobody is fooled."""
    clock = FakeClock()
    upstream = Counting()
    backend = quick_redis(stoppable_redis)

    async with workers(2, backend, upstream, clock) as middlewares:
        await until(lambda: values(middlewares) == [{"version": 1}] * 2)
        follower = middlewares[roles(middlewares).index("follower")]
        assert await follower.handle.refresh("names") == {"version": 2}
        assert await follower.handle.refresh("names") == {"version": 3}
        stoppable_redis.stop()
        stoppable_redis.start()
        await coordinating_again(clock, middlewares)
        follower = middlewares[roles(middlewares).index("follower")]
        calls = upstream.calls
        answer: list[Any] = []

        async def refresh() -> None:
            answer.append(await follower.handle.refresh("names"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(refresh)
            for _ in range(
                50
            ):  # a request the holder missed while resubscribing: its next lease poll sees it
                if answer:
                    break
                await advance(clock, 5)
                await anyio.sleep(0.05)
        assert answer == [{"version": calls + 1}], "a new fetch, not the old value"
        await until(lambda: values(middlewares) == [{"version": calls + 1}] * 2)


async def test_a_follower_waiting_for_a_dead_holder_takes_over_and_fetches(tmp_path: Path) -> None:
    """Refresh-now while the holder is gone: when this process gets the lease, it fetches itself."""
    path = tmp_path / "refresh.db"
    upstream = Counting()
    squatter = SQLiteCoordinator(path)
    refresher = Refresher("names", upstream, every="1h", timeout="5s")
    async with squatter:
        assert await squatter.acquire("names", ttl=0.5)  # then never renewed: a dead holder
        await squatter.store("names", b'{"version": 0}', meta_of(refresher))
        middleware = RefreshMiddleware(
            ScriptedApp(),
            refreshers=[refresher],
            coordinator=SQLiteCoordinator(path, poll_interval=0.02),
            lease_ttl="0.6s",
        )
        async with LifespanManager(middleware):
            assert middleware.handle.value("names") == {"version": 0}
            with anyio.fail_after(3):
                assert await middleware.handle.refresh("names") == {"version": 1}
            assert middleware.handle.status()["names"]["coordination"]["role"] == "leader"


async def test_refresh_now_while_the_backend_is_down_fetches_locally(stoppable_redis: RedisServer) -> None:
    """No backend, no leader to ask: the follower fetches itself, and agrees again afterwards."""
    clock = FakeClock()
    upstream = Counting()
    backend = quick_redis(stoppable_redis)

    async with workers(2, backend, upstream, clock) as middlewares:
        await until(lambda: values(middlewares) == [{"version": 1}] * 2)
        follower = middlewares[roles(middlewares).index("follower")]
        stoppable_redis.stop()
        assert await follower.handle.refresh("names") == {"version": 2}
        assert follower.handle.status()["names"]["coordination"]["role"] == "standalone"
        stoppable_redis.start()
        await coordinating_again(clock, middlewares)
        await until(lambda: values(middlewares)[0] == values(middlewares)[1])
        assert sorted(roles(middlewares)) == ["follower", "leader"]
        assert values(middlewares)[0]["version"] >= 2, "the newest fetch wins, not the stale stored one"


async def test_a_required_refresher_with_nothing_stored_and_no_fetch_fails_startup(tmp_path: Path) -> None:
    """The startup rule holds with a coordinator: another holder that stores nothing is no value."""
    path = tmp_path / "refresh.db"
    squatter = SQLiteCoordinator(path)
    upstream = Counting()
    clock = FakeClock()
    middleware = RefreshMiddleware(
        ScriptedApp(),
        refreshers=[Refresher("names", upstream, every="1m")],
        clock=clock,
        coordinator=SQLiteCoordinator(path, poll_interval=0.02),
        startup_timeout="10s",
    )
    server = FakeServer(middleware)
    async with squatter:
        assert await squatter.acquire("names", ttl=60)
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.startup, tg)
            await anyio.sleep(0.2)
            await clock.advance(10)
            await server.finished.wait()
    assert [message["type"] for message in server.sent] == ["lifespan.startup.failed"]
    assert server.sent[0]["message"].startswith(
        "Refresher 'names' could not load within startup_timeout (10s)"
    )
    assert upstream.calls == 0


async def test_a_process_joining_after_the_backend_came_back_empty_finds_a_value(
    stoppable_redis: RedisServer,
) -> None:
    """Redis restarted without its data: the holder stores what it serves again, so a newcomer starts."""
    clock = FakeClock()
    upstream = Counting()
    backend = quick_redis(stoppable_redis)
    async with workers(2, backend, upstream, clock) as middlewares:
        await until(lambda: values(middlewares) == [{"version": 1}] * 2)
        stoppable_redis.stop()
        stoppable_redis.start()
        await coordinating_again(clock, middlewares)
        await advance(clock, 5)  # a lease poll with the backend back: the holder stores again
        async with workers(1, backend, upstream, clock) as joiner:
            assert values(joiner) == [{"version": 1}]
        assert upstream.calls == 1, "nobody fetched: the value was stored again"


async def test_an_outage_is_one_warning_however_often_the_backend_flaps(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Lost and back again and again: one WARNING; one INFO once it stayed back 10 s; then INFO only for a minute."""
    caplog.set_level(logging.DEBUG, logger="asgi_refresh")
    clock = FakeClock()
    runtime = Runtime(
        [Refresher("names", Counting(), every="1m")],
        state={},
        clock=clock,
        coordinator=SQLiteCoordinator(tmp_path / "refresh.db"),
    )
    coordination = runtime.coordination
    assert coordination is not None

    def lines(level: int) -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.levelno == level and "coordinator is" in r.getMessage()
        ]

    for _ in range(30):  # flapping: every second, lost then back
        coordination._lost(CoordinatorUnavailable("Redis at redis://cache: Connection refused"))
        await clock.advance(0.5)
        coordination._back()
        coordination._settle()
        await clock.advance(0.5)
    assert len(lines(logging.WARNING)) == 1
    assert lines(logging.WARNING)[0].startswith(
        "asgi_refresh: the coordinator is unavailable (Redis at redis"
    )
    assert lines(logging.INFO) == [], "not back for good while it flaps"
    await clock.advance(10)
    coordination._settle()
    assert lines(logging.INFO) == [
        "asgi_refresh: the coordinator is back; one process fetches for all again (after 29.5s and 30 interruptions)"
    ]
    coordination._lost(CoordinatorUnavailable("again"))  # a new outage, within a minute of the WARNING
    assert len(lines(logging.WARNING)) == 1
    assert lines(logging.INFO)[-1].startswith("asgi_refresh: the coordinator is unavailable (again)")
    coordination._back()
    await clock.advance(61)
    coordination._settle()
    coordination._lost(CoordinatorUnavailable("later"))
    assert len(lines(logging.WARNING)) == 2, "a minute later, an outage is a WARNING again"
