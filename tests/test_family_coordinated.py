"""Families with a coordinator: three middlewares sharing an SQLite file stand in for three workers.

The families' schedule runs on one shared test clock; the backend runs in real
time (threads), which is why the test waits a little after each step.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from asgi_lifespan import LifespanManager

from asgi_refresh import JSONCodec, RefresherFamily, RefreshMiddleware, SQLiteCoordinator
from asgi_refresh._cluster.base import CoordinatorUnavailable
from asgi_refresh._family_store import FamilyStore
from asgi_refresh.testing import FakeClock

from .helpers import ScriptedApp

pytestmark = pytest.mark.anyio


class Upstream:
    """fetch(key) counting calls per key; a short real pause, as a network call has."""

    def __init__(self) -> None:
        self.calls: Counter[Any] = Counter()

    async def __call__(self, key: Any) -> str:
        self.calls[key] += 1
        await anyio.sleep(0.005)
        return f"{key}@{self.calls[key]}"


@asynccontextmanager
async def workers(
    path: Path, upstream: Upstream, clock: FakeClock, count: int = 3, **options: Any
) -> AsyncIterator[list[RefreshMiddleware]]:
    middlewares = [
        RefreshMiddleware(
            ScriptedApp(),
            families=[RefresherFamily("rates", upstream, every="1m", jitter=0, idle_ttl="1h", **options)],
            clock=clock,
            coordinator=SQLiteCoordinator(path, poll_interval=0.02),
        )
        for _ in range(count)
    ]
    async with AsyncExitStack() as stack:
        for middleware in middlewares:
            await stack.enter_async_context(LifespanManager(middleware, startup_timeout=10))
        yield middlewares


async def get_everywhere(middlewares: list[RefreshMiddleware], key: Any) -> list[Any]:
    got: list[Any] = [None] * len(middlewares)

    async def one(index: int) -> None:
        got[index] = await middlewares[index].handle.get("rates", key)

    async with anyio.create_task_group() as task_group:
        for index in range(len(middlewares)):
            for _ in range(10):  # concurrent requests in each worker too
                task_group.start_soon(one, index)
    return got


async def settle(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Wait in real time (the backend runs in threads) until ``condition()``."""
    with anyio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110 - other workers' effects: nothing to wait on here
            await anyio.sleep(0.01)


async def test_three_workers_fetch_each_key_once_per_interval(tmp_path: Path) -> None:
    """Cold keys load once for the cluster (the others load the stored value); then one fetch per key per interval."""
    clock, upstream = FakeClock(), Upstream()
    async with workers(tmp_path / "refresh.db", upstream, clock) as middlewares:
        for key in ("EUR", "USD", ("EUR", "GBP")):
            values = await get_everywhere(middlewares, key)
            assert len(set(values)) == 1  # every worker serves the one stored value
        assert upstream.calls == {"EUR": 1, "USD": 1, ("EUR", "GBP"): 1}
        for interval in range(1, 6):
            await clock.advance("1m")
            due = interval + 1
            await settle(lambda: all(count >= due for count in upstream.calls.values()))  # noqa: B023
            await anyio.sleep(0.2)  # time for a second fetch in the cluster, if there were one
            for key in ("EUR", "USD", ("EUR", "GBP")):
                await get_everywhere(middlewares, key)  # in use: keeps every worker refreshing
        assert upstream.calls == {"EUR": 6, "USD": 6, ("EUR", "GBP"): 6}
        adopted = sum(m.handle.status()["rates"]["family"]["adopted"] for m in middlewares)
        assert adopted >= 2 * 3 * 6 - 3  # the other workers loaded nearly every value from the store
        served: set[Any] = set()
        with anyio.fail_after(5):  # each worker loads the stored value in real time (a thread)
            while served != {"EUR@6"}:
                served = {await m.handle.get("rates", "EUR") for m in middlewares}
                await anyio.sleep(0.01)
        assert upstream.calls == {"EUR": 6, "USD": 6, ("EUR", "GBP"): 6}, "they loaded it, not fetched it"


async def test_a_cold_key_loads_from_the_store_in_a_worker_started_later(tmp_path: Path) -> None:
    """A worker that starts after a key was stored loads it from the coordinator, not the upstream."""
    clock, upstream = FakeClock(), Upstream()
    path = tmp_path / "refresh.db"
    async with workers(path, upstream, clock, count=1) as first:
        assert await first[0].handle.get("rates", "EUR") == "EUR@1"
        async with workers(path, upstream, clock, count=1) as later:
            assert await later[0].handle.get("rates", "EUR") == "EUR@1"
            assert later[0].handle.status()["rates"]["family"]["adopted"] == 1
    assert upstream.calls == {"EUR": 1}


async def test_keys_are_kept_in_a_bounded_set_of_reserved_records(tmp_path: Path) -> None:
    """A key never becomes a record name: records are numbered under the reserved prefix, at most 64 per max_keys."""
    clock, upstream = FakeClock(), Upstream()
    hostile = "../../etc\x00passwd' OR 1=1 --"
    async with workers(tmp_path / "refresh.db", upstream, clock, count=1, max_keys=1) as (middleware,):
        assert await middleware.handle.get("rates", hostile) == f"{hostile}@1"
        for key in range(150):  # a flood of distinct keys
            await middleware.handle.get("rates", key)
    coordinator = SQLiteCoordinator(tmp_path / "refresh.db")
    async with coordinator:
        store = FamilyStore(middleware.families[0], coordinator, JSONCodec(), 15.0)
        name = store.record(hostile)
        assert name.startswith("asgi_refresh__family__rates__")
        assert name.isidentifier()
        assert hostile not in name
        assert store.digest("1") != store.digest(1) != store.digest(("1",))
        records = {store.record(key) for key in range(150)}
        assert len(records) <= 64
        for record in records:
            assert await coordinator.load(record) is not None


async def test_keys_sharing_a_record_never_get_each_others_value(tmp_path: Path) -> None:
    """Two keys whose hashes share a record never get each other's value; each is fetched for itself."""
    clock, upstream = FakeClock(), Upstream()
    async with workers(tmp_path / "refresh.db", upstream, clock, count=2, max_keys=1) as middlewares:
        store = FamilyStore(
            middlewares[0].families[0], SQLiteCoordinator(tmp_path / "x.db"), JSONCodec(), 15.0
        )
        by_record: dict[str, list[int]] = {}
        for key in range(200):
            by_record.setdefault(store.record(key), []).append(key)
        first, second = next(keys for keys in by_record.values() if len(keys) >= 2)[:2]
        for middleware in middlewares:  # they take turns in the record: each is fetched as needed
            assert (await middleware.handle.get("rates", first)).startswith(f"{first}@")
            assert (await middleware.handle.get("rates", second)).startswith(f"{second}@")


async def test_a_coordinator_that_is_down_means_fetching_here(tmp_path: Path) -> None:
    """When the backend fails, each worker fetches its keys itself and says so in status."""

    class Down(SQLiteCoordinator):
        async def load(self, name: str) -> Any:
            raise CoordinatorUnavailable("backend down")

    clock, upstream = FakeClock(), Upstream()
    middleware = RefreshMiddleware(
        ScriptedApp(),
        families=[RefresherFamily("rates", upstream, every="1m")],
        clock=clock,
        coordinator=Down(tmp_path / "refresh.db"),
    )
    async with LifespanManager(middleware, startup_timeout=10):
        assert await middleware.handle.get("rates", "EUR") == "EUR@1"
        family = middleware.handle.status()["rates"]["family"]
        assert "backend down" in (family["coordinator_error"] or "")


async def test_a_value_the_codec_refuses_is_served_here(tmp_path: Path) -> None:
    """A fetched value the codec cannot encode is still served by this process; status says why it is not shared."""
    clock = FakeClock()

    async def fetch(key: str) -> set[str]:
        return {key}

    middleware = RefreshMiddleware(
        ScriptedApp(),
        families=[RefresherFamily("rates", fetch, every="1m")],
        clock=clock,
        coordinator=SQLiteCoordinator(tmp_path / "refresh.db"),
    )
    async with LifespanManager(middleware, startup_timeout=10):
        assert await middleware.handle.get("rates", "EUR") == {"EUR"}
        error = middleware.handle.status()["rates"]["family"]["coordinator_error"]
        assert error is not None
        assert "cannot be encoded" in error


async def test_a_lease_held_by_a_dead_process_is_waited_for_then_fetched_here(tmp_path: Path) -> None:
    """A key whose lease another process holds and never stores is fetched here after a bounded wait."""
    clock, upstream = FakeClock(), Upstream()
    path = tmp_path / "refresh.db"
    middleware = RefreshMiddleware(
        ScriptedApp(),
        families=[RefresherFamily("rates", upstream, every="1m", timeout="0.2s")],
        clock=clock,
        coordinator=SQLiteCoordinator(path, poll_interval=0.02),
        lease_ttl="0.2s",
    )
    async with SQLiteCoordinator(path) as dead:
        # Taken before this process starts polling the file every 20 ms: under load, the
        # dead process's first write could wait past its timeout behind those.
        store = FamilyStore(middleware.families[0], dead, JSONCodec(), 0.2)
        assert await dead.acquire(store.record("EUR"), 60)  # and it never stores nor lets go
        async with LifespanManager(middleware, startup_timeout=10):
            with anyio.fail_after(5):
                assert await middleware.handle.get("rates", "EUR") == "EUR@1"


async def test_the_timeout_bounds_the_fetch_not_the_wait_for_a_dead_holder(tmp_path: Path) -> None:
    """On the real clock: the wait for a dead holder's lease (timeout + lease_ttl) is not cut by the fetch's timeout.

    Before, the timeout (0.2 s) ended the wait (0.4 s) first: every request for the
    key failed with a TimeoutError until the dead holder's lease expired.
    """
    upstream = Upstream()
    path = tmp_path / "refresh.db"
    middleware = RefreshMiddleware(
        ScriptedApp(),
        families=[RefresherFamily("rates", upstream, every="1m", timeout="0.2s")],
        coordinator=SQLiteCoordinator(path, poll_interval=0.02),
        lease_ttl="0.2s",
    )
    async with SQLiteCoordinator(path) as dead:
        # Taken before this process starts polling the file every 20 ms: under load, the
        # dead process's first write could wait past its timeout behind those.
        store = FamilyStore(middleware.families[0], dead, JSONCodec(), 0.2)
        assert await dead.acquire(store.record("EUR"), 60)  # and it never stores nor lets go
        async with LifespanManager(middleware, startup_timeout=10):
            with anyio.fail_after(5):
                assert await middleware.handle.get("rates", "EUR") == "EUR@1"
