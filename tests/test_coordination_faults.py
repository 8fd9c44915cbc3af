"""Coordination under faults: a poisoned backend, another app on the same prefix, outages, skew, floods.

Built on the fault-injection kit (`tests/faults`): the backend poisoner writes
malformed records behind the coordinators' backs, the flapping proxy cuts Redis
on a schedule, the skewed clock moves one process's wall clock. Each "worker" is
a RefreshMiddleware with its own coordinator on one real backend, as in
`test_coordinated.py`; the backends' own calls run in real time.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anyio
import pytest
from asgi_lifespan import LifespanManager

from asgi_refresh import (
    FileSource,
    Fresh,
    HTTPSource,
    RedisCoordinator,
    Refresher,
    RefreshMiddleware,
    SQLiteCoordinator,
)
from asgi_refresh._cluster.base import BadRecord, Coordinator, Poll
from asgi_refresh.demo.upstream import Upstream, serve
from asgi_refresh.testing import FakeClock

from .faults.backend import (
    POISONS,
    Backend,
    Misbehaving,
    Misbehaviour,
    Poison,
    Poisoner,
    RedisPoisoner,
    SQLitePoisoner,
)
from .faults.clock import SkewedClock
from .faults.proxy import FlappingProxy
from .helpers import Counting, ScriptedApp, meta_of, runtime_of
from .redis_server import RedisServer

pytestmark = pytest.mark.anyio


@dataclass
class Store:
    """One backend (a Redis server or an SQLite file) under one prefix, and its poisoner."""

    kind: Backend
    make: Callable[..., Coordinator]
    poisoner: Poisoner
    prefix: str


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A backend for coordinators of one app, with a poisoner for its records."""
    prefix = f"faults{uuid.uuid4().hex[:8]}"
    if request.param == "sqlite":  # (a test may pick one with indirect parametrisation)
        path = tmp_path / "refresh.db"
        yield Store(
            "sqlite",
            lambda **options: SQLiteCoordinator(path, **{"poll_interval": 0.02, "prefix": prefix, **options}),
            SQLitePoisoner(path, prefix),
            prefix,
        )
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    poisoner = RedisPoisoner(server.url, prefix)
    try:
        yield Store(
            "redis",
            lambda **options: RedisCoordinator(server.url, **{"prefix": prefix, **options}),
            poisoner,
            prefix,
        )
    finally:
        poisoner.close()


def worker(store: Store, fetch: Any, clock: Any, **options: Any) -> RefreshMiddleware:
    """One process of the app: a refresher ``names`` coordinated through ``store``."""
    refresher = Refresher("names", fetch, every="1m", jitter=0, timeout="5s")
    coordinator = options.pop("coordinator", None) or store.make()
    return RefreshMiddleware(
        ScriptedApp(), refreshers=[refresher], clock=clock, coordinator=coordinator, **options
    )


@asynccontextmanager
async def running(*middlewares: RefreshMiddleware) -> AsyncIterator[None]:
    async with AsyncExitStack() as stack:
        for middleware in middlewares:
            await stack.enter_async_context(LifespanManager(middleware, startup_timeout=10))
        yield


async def until(
    condition: Callable[[], bool], seconds: float = 5.0, what: Callable[[], object] | None = None
) -> None:
    """Wait (in real time: the backends poll and notify in real time) until ``condition()``."""
    with anyio.move_on_after(seconds):
        while not condition():  # noqa: ASYNC110 - other processes' effects: nothing to wait on here
            await anyio.sleep(0.01)
        return
    pytest.fail(f"not within {seconds:g} s: {what() if what else ''}")


def state(*middlewares: RefreshMiddleware) -> list[dict[str, Any]]:
    """What each process knows of the cluster, for a failure message."""
    found = []
    for middleware in middlewares:
        share = runtime_of(middleware.handle).coordination.shares["names"]  # type: ignore[union-attr]
        found.append(
            {
                "value": value(middleware),
                **{name: getattr(share, name) for name in share.__slots__ if name != "lock"},
            }
        )
    return found


class WatchedClock(FakeClock):
    """A FakeClock that tells until when its tasks sleep: the lease poll's next turn shows it is done."""

    def __init__(self) -> None:
        super().__init__()
        self.sleeping_until: list[float] = []

    async def sleep_until(self, deadline: float) -> None:
        self.sleeping_until.append(deadline)
        try:
            await super().sleep_until(deadline)
        finally:
            self.sleeping_until.remove(deadline)


def value(middleware: RefreshMiddleware) -> Any:
    return middleware.handle.value("names")


def coordination(middleware: RefreshMiddleware) -> dict[str, Any]:
    status = middleware.handle.status()
    json.dumps(status)  # status() is always JSON-serialisable (and never raises)
    result: dict[str, Any] = dict(status["names"]["coordination"])
    return result


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]


# -- a poisoned backend ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("store", "poison"),
    [
        pytest.param(kind, poison, id=f"{kind}-{name}")
        for name, poison in POISONS.items()
        for kind in ("sqlite", "redis")
        if poison.applies_to(kind)
    ],
    indirect=["store"],
)
async def test_a_malformed_record_is_a_failed_load_of_that_refresher_not_a_stopped_runtime(
    store: Store, poison: Poison, caplog: pytest.LogCaptureFixture
) -> None:
    """Any damaged field: a new process still starts, nobody stops, and the holder's next store repairs it."""
    clock = WatchedClock()
    upstream = Counting()
    holder = worker(store, upstream, clock)
    async with running(holder):
        assert value(holder) == {"version": 1}
        await clock.advance(5)  # a lease poll: the holder's startup is over (it may store again until then)
        # That poll done, with whatever it stores (real time: slow on a loaded machine):
        # a late store would repair the record before the newcomer reads it, a late read
        # would make the holder report the damage itself.
        share = runtime_of(holder.handle).coordination.shares["names"]  # type: ignore[union-attr]
        await until(
            lambda: 10.0 in clock.sleeping_until and share.version is not None and not share.storing,
            what=lambda: state(holder),
        )
        store.poisoner.apply("names", poison)
        newcomer = worker(store, upstream, clock, startup_timeout="5s")
        async with running(newcomer):
            # It started: the damaged record was a failed load, and it fetched for itself.
            assert isinstance(value(newcomer), dict)
            # Not taken for an outage: the holder has not read the damaged entry yet, or
            # (its watch saw it change) reports it as one it replaces at its next store.
            assert coordination(holder)["error"] in (None, share.bad)

            # The damage is reported, naming the refresher, at the newcomer's first read of
            # it; had that read timed out (a loaded machine: CI runs this beside other
            # suites), the newcomer fetched for itself and its next lease poll reads it.
            def reported() -> bool:
                return any(m.startswith("Refresher 'names': its stored") for m in warnings_of(caplog))

            for _ in range(3):
                with anyio.move_on_after(3):
                    while not reported():  # noqa: ASYNC110 - another runtime's log: nothing to wait on
                        await anyio.sleep(0.01)
                if reported():
                    break
                await clock.advance(5)  # a lease poll
            assert reported(), state(holder, newcomer)
            # Both runtimes still run: the holder's next fetch stores a good record again,
            # and the newcomer goes back to following it.
            calls = upstream.calls
            await clock.advance(60)
            await until(
                lambda: value(holder) == value(newcomer) and value(holder)["version"] > calls,
                what=lambda: state(holder, newcomer),
            )
            await until(lambda: coordination(newcomer)["role"] == "follower")
            assert coordination(newcomer)["error"] is None
            await until(lambda: coordination(holder)["error"] is None, what=lambda: coordination(holder))
            assert upstream.calls <= calls + 3, "a repair, maybe a refresh asked for, the scheduled fetch"
    assert not [m for m in warnings_of(caplog) if "Traceback" in m or "Exception" in m]


async def test_status_never_raises_whatever_times_are_stored(store: Store) -> None:
    """Expiries and fetch times of 1e300 (or unknown keys) never reach status() as dates it cannot show."""
    clock = FakeClock()
    refresher = Refresher("names", Counting(), every="1m")
    async with store.make() as squatter:
        assert await squatter.acquire("names", 60)
        meta = meta_of(refresher, expires_at=1e300, lifetime=1e300, leeway=1e300)
        await squatter.store("names", b'{"version": 0}', meta)
        follower = RefreshMiddleware(
            ScriptedApp(), refreshers=[refresher], clock=clock, coordinator=store.make()
        )
        async with running(follower):
            status = follower.handle.status()["names"]
            json.dumps(status)
            assert status["expires_at"] is None or status["expires_at"] < "3000"
            assert value(follower) == {"version": 1}, "the record was refused: this process fetched"
            assert "lifetime" in coordination(follower)["error"]


async def test_a_stored_value_that_fails_the_sources_validate_is_never_served(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """A stored {"evil": true} where validate wants a list: refused; this process fetches a valid one."""
    documents = Upstream()
    documents.set("/names", ["ada", "grace"])

    def names(document: Any) -> list[str]:
        if not isinstance(document, list) or not all(isinstance(item, str) for item in document):
            raise ValueError("expected a list of names")
        return document

    with serve(documents) as url:
        refresher = Refresher("names", HTTPSource(f"{url}/names", validate=names), every="1m")
        async with store.make() as squatter:
            assert await squatter.acquire("names", 60)
            await squatter.store("names", b'{"evil": true}', meta_of(refresher))
            follower = RefreshMiddleware(
                ScriptedApp(), refreshers=[refresher], clock=FakeClock(), coordinator=store.make()
            )
            async with running(follower):
                assert value(follower) == ["ada", "grace"]
                assert "does not pass the source's checks" in coordination(follower)["error"]
    assert any("validation failed: ValueError: expected a list of names" in m for m in warnings_of(caplog))
    assert not any("evil" in m for m in warnings_of(caplog)), "the value itself is never logged"


async def test_a_stored_value_of_the_wrong_type_for_the_format_is_refused(
    store: Store, tmp_path: Path
) -> None:
    """A text file's refresher never publishes a stored list: the format's type is checked too."""
    path = tmp_path / "motd.txt"
    path.write_text("hello")
    refresher = Refresher("names", FileSource(path), every="1m")
    async with store.make() as squatter:
        assert await squatter.acquire("names", 60)
        await squatter.store("names", b"[1, 2]", meta_of(refresher))
        follower = RefreshMiddleware(
            ScriptedApp(), refreshers=[refresher], clock=FakeClock(), coordinator=store.make()
        )
        async with running(follower):
            assert value(follower) == "hello"
            assert "a text value must be str (got list)" in coordination(follower)["error"]


@pytest.mark.parametrize(
    ("owner", "expires_in"),
    [("ghost", None), ("ghost", 10 * 365 * 86400.0), ("hash", 60.0)],
    ids=["never expires", "expires in ten years", "not a lease at all"],
)
async def test_a_lease_this_package_did_not_write_is_taken_over(
    store: Store, owner: str, expires_in: float | None
) -> None:
    """A lease without a sane expiry (or of the wrong type) would stop every fetch forever: it is taken."""
    damage: object = owner
    if owner == "hash" and store.kind == "sqlite":
        damage = b"\xff"  # a blob where text belongs
    async with store.make() as first:  # creates the tables
        await first.head("names")
    store.poisoner.set_lease("names", damage, expires_in)
    upstream = Counting()
    middleware = worker(store, upstream, FakeClock())
    async with running(middleware):
        assert value(middleware) == {"version": 1}
        assert coordination(middleware)["role"] == "leader"


async def test_a_stored_value_over_max_bytes_is_refused_before_it_is_read(store: Store) -> None:
    """A huge stored blob is a bad record named by its size; a holder never stores one."""
    async with store.make(max_bytes=1024) as small, store.make() as big:
        assert await big.acquire("names", 60)
        assert await big.store("names", b"x" * 4096, {}) == 1
        with pytest.raises(BadRecord, match=r"data is 4096 bytes .*at most 1024"):
            await small.load("names")
        assert await small.acquire("rates", 60)
        with pytest.raises(ValueError, match=r"the value is 4096 bytes, over max_bytes \(1024\)"):
            await small.store("rates", b"x" * 4096, {})

    refresher = Refresher("names", lambda: "x" * 4096, every="1m")
    middleware = RefreshMiddleware(
        ScriptedApp(), refreshers=[refresher], clock=FakeClock(), coordinator=store.make(max_bytes=1024)
    )
    with pytest.raises(BaseException) as failed:  # noqa: PT011 - trio wraps it in an ExceptionGroup
        async with running(middleware):
            pass
    message = str(failed.value) + "".join(str(e) for e in getattr(failed.value, "exceptions", ()))
    assert "over the coordinator's max_bytes (1024); raise max_bytes" in message


async def test_garbage_on_the_redis_channel_is_ignored(redis_server: RedisServer) -> None:
    """Anyone may publish on the channel: malformed, huge or out-of-range messages change nothing."""
    prefix = f"faults{uuid.uuid4().hex[:8]}"
    poisoner = RedisPoisoner(redis_server.url, prefix)
    upstream = Counting()
    middleware = RefreshMiddleware(
        ScriptedApp(),
        refreshers=[Refresher("names", upstream, every="1m")],
        clock=FakeClock(),
        coordinator=RedisCoordinator(redis_server.url, prefix=prefix),
    )
    try:
        async with running(middleware):
            for message in [
                b"stored names 1e400",
                b"stored names -5",
                b"refresh_requested names 99999999999999999999999",
                b"refresh_requested \xff\xfe 1",
                b"stored names " + b"9" * 100_000,
                b"\x1b[31m",
            ]:
                poisoner.publish(message)
            await anyio.sleep(0.3)
            assert value(middleware) == {"version": 1}
            assert upstream.calls == 1, "no message made the holder fetch"
            assert coordination(middleware)["role"] == "leader"
    finally:
        poisoner.close()


async def test_a_damaged_change_counter_in_sqlite_is_repaired_and_followers_follow(tmp_path: Path) -> None:
    """The counter SQLite subscribers poll, set to text or a blob: the next store sets it right again."""
    path = tmp_path / "refresh.db"
    store = Store("sqlite", lambda: SQLiteCoordinator(path, poll_interval=0.02), SQLitePoisoner(path, ""), "")
    poisoner = SQLitePoisoner(path, "asgi_refresh")  # the default prefix
    clock = FakeClock()
    upstream = Counting()
    first, second = worker(store, upstream, clock), worker(store, upstream, clock)
    async with running(first, second):
        await until(lambda: value(first) == value(second) == {"version": 1})
        for damage in ("text", b"\xff" * 10):
            poisoner.set_seq(damage)
            calls = upstream.calls
            await clock.advance(60)
            await until(lambda: value(first) == value(second) == {"version": calls + 1})  # noqa: B023


# -- another app on the same backend and prefix --------------------------------------------


async def test_two_apps_sharing_a_backend_and_prefix_each_serve_their_own_value(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """Two unrelated apps with a refresher 'names': never each other's value, one WARNING saying what to do."""
    clock = FakeClock()

    async def app_a() -> str:
        return "from app A"

    async def app_b() -> str:
        return "from app B"

    a1, a2 = worker(store, app_a, clock), worker(store, app_a, clock)
    b1, b2 = worker(store, app_b, clock), worker(store, app_b, clock)
    async with running(a1, a2, b1, b2):
        for _ in range(3):
            assert [value(m) for m in (a1, a2)] == ["from app A"] * 2
            assert [value(m) for m in (b1, b2)] == ["from app B"] * 2
            await clock.advance(60)
            await anyio.sleep(0.1)
        roles = sorted(coordination(m)["role"] for m in (a1, a2, b1, b2))
        assert roles == ["follower", "leader", "standalone", "standalone"], "the other app fetches for itself"
    foreign = [m for m in warnings_of(caplog) if "another source or codec" in m]
    assert len(foreign) == 2, foreign  # one per process of the app that does not hold the lease
    assert foreign[0].startswith(
        "Refresher 'names': its stored entry was written by a refresher with another"
    )
    assert "give each app its own prefix= on the coordinator" in foreign[0]


async def test_when_the_other_apps_holder_leaves_this_app_takes_the_lease(store: Store) -> None:
    """Leases on a shared prefix: the app without the lease is not starved, and takes it once it is free."""
    clock = FakeClock()

    async def app_a() -> str:
        return "A"

    async def app_b() -> str:
        return "B"

    a_holder = worker(store, app_a, clock)
    b1, b2 = worker(store, app_b, clock), worker(store, app_b, clock)
    async with running(a_holder), running(b1, b2):
        assert [coordination(m)["role"] for m in (a_holder, b1, b2)] == ["leader", "standalone", "standalone"]
        assert value(b1) == value(b2) == "B"
        # App A's holder shuts down and gives the lease back (its LifespanManager ends later).
        await runtime_of(a_holder.handle).stop(5)
        await clock.advance(5)  # a lease poll
        await until(lambda: sorted(coordination(m)["role"] for m in (b1, b2)) == ["follower", "leader"])
        assert value(b1) == value(b2) == "B"


# -- going back to an older value ---------------------------------------------------------


@pytest.mark.parametrize("outages", [3])
async def test_after_an_outage_no_process_goes_back_to_an_older_value(
    stoppable_redis: RedisServer, outages: int
) -> None:
    """Redis restarted empty, three times: nobody publishes a value older than one it published before.

    In each outage the holder fetches first, then the follower fetches on its own:
    when Redis is back, the holder stores again what it fetched, which is older
    than the follower's value; the follower keeps its newer value until an even
    newer one comes. Real time: the order of fetches is what is at stake.
    """
    upstream = Counting()
    prefix = f"outage{uuid.uuid4().hex[:8]}"
    published: dict[str, list[int]] = {"holder": [], "follower": []}

    def make(label: str, lease_ttl: str) -> RefreshMiddleware:
        def record(old: Any, new: Any) -> None:
            published[label].append(new["version"])

        refresher = Refresher("names", upstream, every="1h", jitter=0, timeout="5s", on_change=record)
        coordinator = RedisCoordinator(stoppable_redis.url, prefix=prefix, timeout=0.3)
        return RefreshMiddleware(
            ScriptedApp(), refreshers=[refresher], coordinator=coordinator, lease_ttl=lease_ttl
        )

    # Redis comes back empty: the lease goes to the first process to poll it. The
    # follower polls it once, at startup (an hour between polls), so that the holder
    # takes it again every time; the follower comes back through its subscription,
    # which loads what the holder stores and asks it for a newer value.
    holder, follower = make("holder", "0.9s"), make("follower", "1h")
    async with running(holder), running(follower):
        await until(lambda: value(holder) == value(follower) == {"version": 1})
        for _ in range(outages):
            assert [coordination(m)["role"] for m in (holder, follower)] == ["leader", "follower"]
            stoppable_redis.stop()
            first = await holder.handle.refresh("names")  # fetched here: it cannot store it
            second = await follower.handle.refresh("names")  # fetched later, on its own
            assert second["version"] > first["version"]
            stoppable_redis.start()
            await until(
                lambda: (
                    value(holder) == value(follower)
                    and value(follower)["version"] > second["version"]  # noqa: B023
                    and [coordination(m)["role"] for m in (holder, follower)] == ["leader", "follower"]
                ),
                seconds=15,
                what=lambda: (published, state(holder, follower)),
            )
    for label, versions in published.items():
        assert versions == sorted(versions), f"the {label} went back: {versions}"


async def test_a_flapping_redis_loses_no_request_sends_no_process_back_and_warns_once(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis behind a proxy that flips every 100 ms for 3 s: values only go forward, one WARNING each."""
    caplog.set_level(logging.INFO, logger="asgi_refresh")
    prefix = f"flap{uuid.uuid4().hex[:8]}"
    upstream = Counting()
    published: list[list[int]] = [[], []]

    def make(index: int, url: str) -> RefreshMiddleware:
        def record(old: Any, new: Any) -> None:
            published[index].append(new["version"])

        refresher = Refresher("names", upstream, every="0.2s", jitter=0, timeout="1s", on_change=record)
        coordinator = RedisCoordinator(url, prefix=prefix, timeout=0.3)
        return RefreshMiddleware(
            ScriptedApp(), refreshers=[refresher], coordinator=coordinator, lease_ttl="0.9s"
        )

    with FlappingProxy(("127.0.0.1", redis_server.port)) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        workers = [make(0, url), make(1, url)]
        async with running(*workers):
            flapping = proxy.flap(every=0.1, seconds=3.0)
            while flapping.is_alive():
                for middleware in workers:  # what requests see: always a value
                    assert isinstance(value(middleware), dict)
                await anyio.sleep(0.01)
            await until(
                lambda: sorted(coordination(m)["role"] for m in workers) == ["follower", "leader"], 10
            )
        assert proxy.flips >= 10
    for versions in published:
        assert versions == sorted(versions), f"a process went back: {versions}"
    unavailable = [
        r for r in caplog.records if r.getMessage().startswith("asgi_refresh: the coordinator is unava")
    ]
    assert sum(r.levelno == logging.WARNING for r in unavailable) <= 2, "one WARNING per process per outage"


# -- clock skew between hosts ---------------------------------------------------------------


@pytest.mark.parametrize("skew", [3600.0, -3600.0], ids=["an hour ahead", "an hour behind"])
async def test_a_holder_whose_wall_clock_is_off_does_not_change_a_tokens_expiry_elsewhere(
    store: Store, skew: float
) -> None:
    """A token stored by a host whose clock is an hour off: the others see its true remaining lifetime."""
    clock = FakeClock()
    calls = 0

    async def token() -> Fresh[str]:
        nonlocal calls
        calls += 1
        return Fresh(f"token-{calls}", expires_in=100, leeway=10)

    def make(host_clock: Any) -> RefreshMiddleware:
        refresher = Refresher("token", token, every="1h", jitter=0)
        return RefreshMiddleware(
            ScriptedApp(), refreshers=[refresher], clock=host_clock, coordinator=store.make()
        )

    holder = make(SkewedClock(clock, skew))
    async with running(holder):
        follower = make(clock)
        async with running(follower):
            await until(lambda: follower.handle.value("token") == "token-1")
            status = follower.handle.status()["token"]
            assert status["coordination"]["role"] == "follower"
            assert not status["stale"], "a fresh token is not expired"
            remaining = _epoch(status["expires_at"] or "") - clock.wall()
            # Real seconds went by since the fetch (the backend's clock ages it): a few at
            # most on a busy machine, against the hour of skew.
            assert 95 <= remaining <= 100.5, f"its lifetime is 100 s, not {remaining:.0f} s"
            assert abs(_epoch(status["last_success_at"] or "") - clock.wall()) < 5, "fetched just now"


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


# -- the Redis URL's password ---------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "redis://:hunter2-secret@127.0.0.1:{port}/0",
        "redis://app:hunter2-secret@127.0.0.1:{port}/0",
        "redis://127.0.0.1:{port}/0?password=hunter2-secret",
        "redis://127.0.0.1:{port}/0?username=app&password=hunter2%2Dsecret",
    ],
    ids=["userinfo", "user and password", "query", "query, percent-encoded"],
)
async def test_the_redis_password_never_reaches_logs_status_or_repr(
    template: str, caplog: pytest.LogCaptureFixture, redis_server: RedisServer
) -> None:
    """Down or refusing AUTH, whatever the URL form: the password shows as *** everywhere."""
    # Nothing listens on port 1. The real server has no password: it refuses a user
    # and password (WRONGPASS), and redis-py carries on when only a password is sent.
    for port in (1, redis_server.port):
        url = template.format(port=port)
        coordinator = RedisCoordinator(url, timeout=0.3)
        middleware = RefreshMiddleware(
            ScriptedApp(), refreshers=[Refresher("names", Counting(), every="1m")], coordinator=coordinator
        )
        async with running(middleware):
            if port == 1:
                await until(lambda: coordination(middleware)["error"] is not None)  # noqa: B023
                error = coordination(middleware)["error"]
                assert "Redis at redis://" in error, error
                assert "***" in error, error
            else:
                await anyio.sleep(0.2)
            shown = [repr(coordinator), json.dumps(middleware.handle.status()), caplog.text]
        assert "hunter2" not in "".join(shown), shown
        assert "***" in repr(coordinator)


# -- a flood of refresh-now requests ---------------------------------------------------------


async def test_a_flood_of_refresh_now_requests_costs_the_upstream_a_few_fetches(store: Store) -> None:
    """500 requests from other processes within a fraction of a second: a handful of fetches, all answered."""
    upstream = Counting()
    holder = worker(store, upstream, FakeClock())
    async with running(holder), store.make() as asker:
        started = time.monotonic()
        numbers = [await asker.request_refresh("names") for _ in range(500)]
        elapsed = time.monotonic() - started
        await until(lambda: asker_answered(holder) >= numbers[-1])
        fetches = upstream.calls - 1
        # At most one per 50 ms gap while they come (however long a loaded machine takes
        # to send them), plus the one under way and the one queued: far fewer than requests.
        assert 1 <= fetches <= math.ceil(elapsed / 0.05) + 3, (fetches, elapsed)


def asker_answered(middleware: RefreshMiddleware) -> int:
    coordination = runtime_of(middleware.handle).coordination
    assert coordination is not None
    return coordination.shares["names"].answered


# -- a coordinator of your own, with bugs ---------------------------------------------------


@pytest.mark.parametrize("mode", ["raises", "reads raise", "returns junk", "wrong types", "no clock"])
async def test_a_buggy_coordinator_of_your_own_never_stops_the_runtime(
    tmp_path: Path, mode: Misbehaviour, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever a backend raises or returns: a failed load or an outage, values served, status() fine."""
    path = tmp_path / "refresh.db"
    clock = FakeClock()
    upstream = Counting()
    store = Store("sqlite", lambda: SQLiteCoordinator(path, poll_interval=0.02), SQLitePoisoner(path, ""), "")
    holder = worker(store, upstream, clock)
    buggy = Misbehaving(SQLiteCoordinator(path, poll_interval=0.02), mode)
    newcomer = worker(store, upstream, clock, coordinator=buggy)
    async with running(holder), running(newcomer):
        assert isinstance(value(newcomer), dict)
        if mode == "no clock":  # works, on the host's wall clock
            assert value(newcomer) == {"version": 1}
            assert coordination(newcomer)["role"] == "follower"
        else:
            await until(lambda: coordination(newcomer)["role"] == "standalone")
            error = coordination(newcomer)["error"]
            assert "KeyError" in error or "ValueError" in error or "returned" in error, error
        await clock.advance(60)
        await anyio.sleep(0.1)
        assert isinstance(value(newcomer), dict)
        buggy.mode = "fine"
        calls = upstream.calls
        with anyio.fail_after(10):  # lease polls on the test clock; resubscribing runs in real time
            while not (
                value(holder) == value(newcomer)
                and value(holder)["version"] > calls
                and coordination(newcomer)["role"] == "follower"
            ):
                await clock.advance(20)
                await anyio.sleep(0.1)


class BatchPolling(Misbehaving):
    """A coordinator of one's own with a `poll` of its own (one call per lease poll), possibly wrong."""

    def __init__(self, inner: Any, answer: Literal["fine", "junk", "raises"] = "fine") -> None:
        super().__init__(inner)
        self.answer = answer
        self.polls = 0
        self.single = 0

    async def acquire(self, name: str, ttl: float) -> bool:
        self.single += 1
        return await super().acquire(name, ttl)

    async def head(self, name: str) -> Any:
        self.single += 1
        return await super().head(name)

    async def poll(self, names: Sequence[str], ttl: float) -> Any:
        self.polls += 1
        if self.answer == "raises":
            raise KeyError("a bug in poll")
        polled = {
            name: Poll(await self.inner.acquire(name, ttl), await self.inner.head(name)) for name in names
        }
        if self.answer == "junk":
            polled[names[0]] = "junk"  # type: ignore[assignment]
        return polled


async def test_a_coordinator_with_a_poll_of_its_own_is_polled_once_per_cycle(tmp_path: Path) -> None:
    """The runtime calls a backend's own `poll` (one call for every lease), never acquire and head one by one."""
    path = tmp_path / "refresh.db"
    clock = FakeClock()
    upstream = Counting()
    store = Store("sqlite", lambda: SQLiteCoordinator(path, poll_interval=0.02), SQLitePoisoner(path, ""), "")
    batched = BatchPolling(SQLiteCoordinator(path, poll_interval=0.02))
    holder = worker(store, upstream, clock, coordinator=batched, lease_ttl="15s")
    follower = worker(store, upstream, clock, lease_ttl="15s")
    async with running(holder), running(follower):
        await until(
            lambda: coordination(holder)["role"] == "leader" and value(follower) == {"version": 1},
            what=lambda: (coordination(holder), value(follower), batched.polls, batched.single),
        )
        polls = batched.polls
        for _ in range(6):
            await clock.advance(5)  # lease_ttl 15 s: a lease poll every 5 s
            await anyio.sleep(0.02)  # the poll runs in the backend's thread, in real time
        await until(lambda: batched.polls >= polls + 3, what=lambda: batched.polls - polls)
        assert batched.single == 0


@pytest.mark.parametrize("answer", ["junk", "raises"])
async def test_a_poll_of_your_own_that_fails_or_answers_junk_is_contained(
    tmp_path: Path, answer: Literal["junk", "raises"]
) -> None:
    """A poll that raises is an outage, one that answers junk a bad record: values served, and back when it behaves."""
    path = tmp_path / "refresh.db"
    clock = FakeClock()
    upstream = Counting()
    store = Store("sqlite", lambda: SQLiteCoordinator(path, poll_interval=0.02), SQLitePoisoner(path, ""), "")
    batched = BatchPolling(SQLiteCoordinator(path, poll_interval=0.02), answer)
    newcomer = worker(store, upstream, clock, coordinator=batched)
    async with running(newcomer):
        assert value(newcomer) == {"version": 1}
        error = coordination(newcomer)["error"] or ""
        assert (
            "KeyError: 'a bug in poll'" if answer == "raises" else "poll() returned no Poll for 'names'"
        ) in error
        batched.answer = "fine"
        await clock.advance(5)
        await until(lambda: coordination(newcomer)["error"] is None, what=lambda: coordination(newcomer))
        assert value(newcomer) == {"version": 1}


async def test_a_holder_whose_backend_refuses_to_store_serves_its_value_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A store that raises: this process serves what it fetched, one WARNING says why, the others catch up later.

    The error is not one the backend reports as an outage (`CoordinatorUnavailable`):
    it is treated as one all the same, and once stores work again, the others get
    the value.
    """
    path = tmp_path / "refresh.db"
    clock = FakeClock()
    upstream = Counting()
    store = Store("sqlite", lambda: SQLiteCoordinator(path, poll_interval=0.02), SQLitePoisoner(path, ""), "")
    buggy = Misbehaving(SQLiteCoordinator(path, poll_interval=0.02), "fine")
    holder = worker(store, upstream, clock, coordinator=buggy)
    follower = worker(store, upstream, clock)
    async with running(holder), running(follower):
        await until(lambda: value(follower) == {"version": 1})
        buggy.mode = "stores raise"
        await clock.advance(60)
        await anyio.sleep(0.05)
        assert value(holder) == {"version": 2}, "it serves what it fetched"
        unavailable = [m for m in warnings_of(caplog) if "the coordinator is unavailable" in m]
        assert len(unavailable) == 1, unavailable
        assert (
            "storing the value of 'names': ValueError: the value is too big for this backend"
            in unavailable[0]
        )
        buggy.mode = "fine"
        with anyio.fail_after(10):
            while value(holder) != value(follower):
                await clock.advance(5)
                await anyio.sleep(0.05)
