"""The coordination backends: one contract, tested on a real Redis and a real SQLite file."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asgi_refresh import CoordinatorUnavailable, JSONCodec, RedisCoordinator, SQLiteCoordinator
from asgi_refresh._cluster.base import BadRecord, Change, Coordinator, Head, MetaValue, Stored
from asgi_refresh._cluster.blocking import call_blocking
from asgi_refresh._cluster.records import MAX_COUNT, decode_meta, encode_meta, parse_head, parse_stored
from asgi_refresh._cluster.redis import _parse_change
from asgi_refresh._text import printable
from tests.faults.backend import Poison, RedisPoisoner, SQLitePoisoner
from tests.faults.proxy import FlappingProxy
from tests.redis_server import RedisServer

pytestmark = pytest.mark.anyio

Make = Callable[..., Coordinator]

TTL = 0.3  # short leases: expiry is waited for in real time


@pytest.fixture(params=["redis", "sqlite"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Make:
    """Makes coordinators of one backend that share one server or file, under a fresh prefix."""
    unique = f"test-{uuid.uuid4().hex[:8]}"  # the Redis server lives for the whole session

    def prefixed(options: dict[str, Any]) -> dict[str, Any]:
        prefix = options.get("prefix", unique)
        return {**options, "prefix": f"{unique}.{prefix}" if prefix and prefix != unique else prefix}

    if request.param == "redis":
        url: str = request.getfixturevalue("redis_url")

        def make_redis(**options: Any) -> Coordinator:
            return RedisCoordinator(url, **prefixed(options))

        return make_redis

    def make_sqlite(**options: Any) -> Coordinator:
        return SQLiteCoordinator(tmp_path / "refresh.db", **{"poll_interval": 0.02, **prefixed(options)})

    return make_sqlite


@pytest.fixture
async def pair(make: Make) -> AsyncIterator[tuple[Coordinator, Coordinator]]:
    """Two open coordinators of one backend: two processes of a cluster."""
    async with make() as first, make() as second:
        yield first, second


def counters(head: Head) -> tuple[int | None, int, int]:
    """A head's version and refresh-now counters, without the backend's clock (which moves)."""
    assert head.time is not None, "the built-in backends report their clock"
    return head.version, head.requested, head.answered


async def next_change(changes: AsyncIterator[Change]) -> Change:
    with anyio.fail_after(5):
        return await anext(changes)


# -- leases ----------------------------------------------------------------------------


async def test_one_owner_holds_a_lease(pair: tuple[Coordinator, Coordinator]) -> None:
    """Of two coordinators, only the first to ask gets the lease; names have separate leases."""
    first, second = pair
    assert first.owner != second.owner
    assert await first.acquire("names", TTL * 10)
    assert not await second.acquire("names", TTL * 10)
    assert await second.acquire("rates", TTL * 10)


async def test_the_holder_renews_its_lease(pair: tuple[Coordinator, Coordinator]) -> None:
    """Acquiring again renews: the lease outlives its first ttl and others still cannot take it."""
    first, second = pair
    assert await first.acquire("names", TTL)
    await anyio.sleep(TTL * 0.6)
    assert await first.acquire("names", TTL)
    await anyio.sleep(TTL * 0.6)
    assert not await second.acquire("names", TTL)


async def test_an_expired_lease_is_taken_over(pair: tuple[Coordinator, Coordinator]) -> None:
    """A holder that stops renewing loses the lease after its ttl, and the other takes it."""
    first, second = pair
    assert await first.acquire("names", TTL)
    assert not await second.acquire("names", TTL)
    await anyio.sleep(TTL + 0.1)
    assert await second.acquire("names", TTL * 10)
    assert not await first.acquire("names", TTL)


async def test_release_frees_the_lease_at_once(pair: tuple[Coordinator, Coordinator]) -> None:
    """A released lease can be taken right away; a non-holder's release changes nothing."""
    first, second = pair
    assert await first.acquire("names", TTL * 10)
    await second.release("names")
    assert not await second.acquire("names", TTL * 10)
    await first.release("names")
    assert await second.acquire("names", TTL * 10)


async def test_close_releases_the_leases_still_held(make: Make) -> None:
    """Shutting down gives the leases back: another process takes over without waiting for the ttl."""
    async with make() as other:
        async with make() as leaving:
            assert await leaving.acquire("names", 60)
            assert await leaving.acquire("rates", 60)
            await leaving.release("rates")
        assert await other.acquire("names", 60)
        assert await other.acquire("rates", 60)


# -- storing and loading ---------------------------------------------------------------


async def test_load_returns_what_was_stored(pair: tuple[Coordinator, Coordinator]) -> None:
    """Another process loads the data, meta, version and storer of what the holder stored."""
    first, second = pair
    assert await second.load("names") is None
    assert counters(await second.head("names")) == (None, 0, 0)
    assert await first.acquire("names", TTL * 10)
    meta: dict[str, MetaValue] = {
        "etag": '"abc"',
        "expires_at": 1_900_000_000.5,
        "size": 3,
        "gzip": False,
        "last_modified": None,
    }
    before = time.time()
    assert await first.store("names", b'["ada","bob"]', meta) == 1
    stored = await second.load("names")
    assert stored is not None
    assert (stored.version, stored.data, dict(stored.meta)) == (1, b'["ada","bob"]', meta)
    assert stored.stored_by == first.owner
    assert before - 1 <= stored.stored_at <= time.time() + 1
    assert stored.answered == 0
    assert counters(await second.head("names")) == (1, 0, 0)


async def test_versions_strictly_increase(pair: tuple[Coordinator, Coordinator]) -> None:
    """Every store bumps the name's version, whoever holds the lease; names count separately."""
    first, second = pair
    assert await first.acquire("names", TTL)
    assert [await first.store("names", str(i).encode(), {}) for i in range(3)] == [1, 2, 3]
    await first.release("names")
    assert await second.acquire("names", TTL)
    assert await second.store("names", b"4", {}) == 4
    assert await second.acquire("rates", TTL)
    assert await second.store("rates", b"1", {}) == 1
    loaded = await first.load("names")
    assert loaded is not None
    assert (loaded.version, loaded.data) == (4, b"4")


async def test_a_store_without_the_lease_is_refused(pair: tuple[Coordinator, Coordinator]) -> None:
    """Fencing: a store by a non-holder, or by a holder whose lease expired, returns None and changes nothing."""
    first, second = pair
    assert await second.store("names", b"never", {}) is None
    assert await first.acquire("names", TTL)
    assert await first.store("names", b"first", {}) == 1
    assert await second.store("names", b"intruder", {}) is None
    await anyio.sleep(TTL + 0.1)
    assert await first.store("names", b"stale", {}) is None  # expired, though nobody took over
    assert await second.acquire("names", TTL * 10)
    assert await first.store("names", b"stale", {}) is None
    loaded = await second.load("names")
    assert loaded is not None
    assert (loaded.version, loaded.data) == (1, b"first")


async def test_meta_must_be_json(pair: tuple[Coordinator, Coordinator]) -> None:
    """Metadata that JSON cannot hold is a TypeError naming the entry, before anything is stored."""
    first, _ = pair
    assert await first.acquire("names", TTL * 10)
    with pytest.raises(TypeError, match=r"meta must map str to .* \(got 'expires': datetime\)"):
        await first.store("names", b"1", {"expires": datetime.now()})  # type: ignore[dict-item]
    assert counters(await first.head("names")) == (None, 0, 0)


# -- refresh now and changes -----------------------------------------------------------


async def test_refresh_requests_are_counted_until_answered(pair: tuple[Coordinator, Coordinator]) -> None:
    """A refresh request stays pending until a store answers it; answered never goes back."""
    holder, asker = pair
    assert await asker.request_refresh("names") == 1
    assert await asker.request_refresh("names") == 2
    head = await holder.head("names")
    assert counters(head) == (None, 2, 0)
    assert head.pending
    assert await holder.load("names") is None  # a request stores no value
    assert await holder.acquire("names", TTL * 10)
    assert await holder.store("names", b"new", {}, answered=head.requested) == 1
    assert not (await asker.head("names")).pending
    assert await asker.request_refresh("names") == 3
    assert await holder.store("names", b"newer", {}, answered=1) == 2
    assert counters(await asker.head("names")) == (2, 3, 2)
    stored = await asker.load("names")
    assert stored is not None
    assert stored.answered == 2


async def test_changes_reach_other_processes(pair: tuple[Coordinator, Coordinator]) -> None:
    """A subscriber hears of a store and of a refresh request made by another coordinator."""
    holder, follower = pair
    assert await holder.acquire("names", TTL * 10)
    async with follower.subscribe() as changes:
        assert await holder.store("names", b"1", {}) == 1
        assert await next_change(changes) == Change("stored", "names", 1)
        assert await holder.request_refresh("names") == 1
        assert await next_change(changes) == Change("refresh_requested", "names", 1)
    async with holder.subscribe() as changes:
        assert await follower.request_refresh("names") == 2
        assert await next_change(changes) == Change("refresh_requested", "names", 2)


async def test_a_quiet_subscription_waits(pair: tuple[Coordinator, Coordinator]) -> None:
    """While nothing changes a subscriber gets nothing (and ignores foreign messages on the channel)."""
    holder, follower = pair
    assert await holder.acquire("names", TTL * 10)
    async with follower.subscribe() as changes:
        if isinstance(follower, RedisCoordinator):
            import redis

            with redis.Redis.from_url(follower.url) as raw:
                raw.publish(f"{follower.prefix}:changes", b"not a change")
                raw.publish(f"{follower.prefix}:changes", b"vanished names 1")
        with anyio.move_on_after(0.3) as quiet:
            await anext(changes)
        assert quiet.cancelled_caught
        assert await holder.store("names", b"1", {}) == 1
        assert await next_change(changes) == Change("stored", "names", 1)


async def test_prefixes_isolate(make: Make) -> None:
    """Coordinators with other prefixes on one server or file share no lease, value or change."""
    async with make(prefix="app-one") as one, make(prefix="app-two") as two:
        assert await one.acquire("names", TTL * 10)
        assert await two.acquire("names", TTL * 10)
        async with two.subscribe() as changes:
            assert await one.store("names", b"one", {}) == 1
            assert await one.request_refresh("names") == 1
            assert counters(await two.head("names")) == (None, 0, 0)
            assert await two.load("names") is None
            assert await two.store("names", b"two", {}) == 1
            assert await next_change(changes) == Change("stored", "names", 1)
        loaded = await two.load("names")
        assert loaded is not None
        assert loaded.data == b"two"


# -- lifecycle and configuration -------------------------------------------------------


async def test_a_coordinator_serves_one_lifespan_at_a_time(make: Make) -> None:
    """Use before open or after close is a RuntimeError; open twice is refused; reopening is a new owner."""
    coordinator = make()
    assert isinstance(coordinator, Coordinator)
    with pytest.raises(RuntimeError, match="is not open"):
        await coordinator.acquire("names", TTL)
    async with coordinator:
        owner = coordinator.owner
        with pytest.raises(RuntimeError, match="already open"):
            await coordinator.open()
    await coordinator.close()  # closing twice is harmless
    with pytest.raises(RuntimeError, match="is not open"):
        await coordinator.head("names")
    async with coordinator:
        assert coordinator.owner != owner


async def test_bad_arguments_are_refused(make: Make) -> None:
    """A bad prefix, timeout, ttl or name is a ValueError that says what was expected."""
    with pytest.raises(ValueError, match="prefix must be a non-empty string"):
        make(prefix="")
    with pytest.raises(ValueError, match=r"Coordinator: timeout must be > 0 \(got 0\)"):
        make(timeout=0)
    async with make() as coordinator:
        with pytest.raises(ValueError, match=r"Coordinator: ttl must be > 0 \(got -1\)"):
            await coordinator.acquire("names", -1)
        with pytest.raises(ValueError, match=r"a Python identifier \(got 'a:b'\)"):
            await coordinator.load("a:b")


def test_sqlite_needs_a_shared_file(tmp_path: Path) -> None:
    """An in-memory database cannot coordinate processes; a bad poll interval is refused."""
    with pytest.raises(ValueError, match="a file that the processes share"):
        SQLiteCoordinator(":memory:")
    with pytest.raises(
        ValueError, match=r"SQLiteCoordinator: poll_interval: expected a finite duration \(got inf\)"
    ):
        SQLiteCoordinator(tmp_path / "x.db", poll_interval=float("inf"))


def test_redis_url_is_checked_and_its_password_hidden() -> None:
    """A missing URL is refused; repr and messages never show the password."""
    with pytest.raises(ValueError, match="url must be a Redis URL"):
        RedisCoordinator("")
    coordinator = RedisCoordinator("redis://user:s3cret@cache:6379/0", prefix="shop")
    assert repr(coordinator) == "RedisCoordinator('redis://user:***@cache:6379/0', prefix='shop')"
    assert "s3cret" not in repr(RedisCoordinator("redis://:s3cret@cache/0"))
    assert (
        repr(RedisCoordinator("redis://cache")) == "RedisCoordinator('redis://cache', prefix='asgi_refresh')"
    )


async def test_redis_bad_url_scheme() -> None:
    """An unknown URL scheme is a ValueError at open, not a backend outage."""
    with pytest.raises(ValueError, match="bad url"):
        await RedisCoordinator("http://cache").open()


def test_importing_the_package_does_not_import_redis() -> None:
    """Redis is an optional dependency: importing asgi_refresh leaves it unimported."""
    code = "import sys, asgi_refresh; assert 'redis' not in sys.modules, 'redis was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_redis_coordinator_without_redis_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without redis-py, RedisCoordinator raises an ImportError naming the extra to install."""
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ImportError, match=r"pip install 'asgi-refresh\[redis\]'"):
        RedisCoordinator("redis://localhost")


# -- the backend going away ------------------------------------------------------------


async def test_redis_down_is_coordinator_unavailable_and_recovers(stoppable_redis: RedisServer) -> None:
    """With Redis stopped, each operation fails with CoordinatorUnavailable within the timeout; it recovers after."""
    async with RedisCoordinator(
        stoppable_redis.url, prefix=f"down-{uuid.uuid4().hex[:8]}", timeout=0.5
    ) as coordinator:
        assert await coordinator.acquire("names", 10)
        async with coordinator.subscribe() as changes:
            stoppable_redis.stop()
            with pytest.raises(CoordinatorUnavailable, match="subscription lost"):
                await next_change(changes)
        operations: list[Callable[[], Awaitable[object]]] = [
            lambda: coordinator.acquire("names", 10),
            lambda: coordinator.head("names"),
            lambda: coordinator.store("names", b"1", {}),
            lambda: coordinator.request_refresh("names"),
        ]
        for operation in operations:
            started = time.monotonic()
            with pytest.raises(CoordinatorUnavailable, match=r"Redis at redis://127\.0\.0\.1:\d+/0: "):
                await operation()
            assert time.monotonic() - started < 1.5
        with pytest.raises(CoordinatorUnavailable):
            async with coordinator.subscribe():
                pass  # pragma: no cover
        stoppable_redis.start()
        assert await coordinator.acquire("names", 10)  # a restarted server has no data: a fresh lease
        assert await coordinator.store("names", b"1", {}) == 1


async def test_redis_that_does_not_answer_times_out() -> None:
    """A server that accepts connections but never answers is CoordinatorUnavailable after the timeout."""
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(listener.serve, _ignore)
            async with RedisCoordinator(f"redis://127.0.0.1:{port}/0", timeout=0.3) as coordinator:
                started = time.monotonic()
                with pytest.raises(CoordinatorUnavailable, match=r"Timeout|no answer"):
                    await coordinator.head("names")
                assert time.monotonic() - started < 1.0
            task_group.cancel_scope.cancel()


async def test_a_call_past_the_timeout_is_abandoned() -> None:
    """A blocking call still running at the timeout is CoordinatorUnavailable; a bug in one propagates as itself."""
    limiter = anyio.CapacityLimiter(1)
    started = time.monotonic()
    with pytest.raises(CoordinatorUnavailable, match=r"^Backend: no answer within 0\.1s$"):
        await call_blocking(
            lambda: time.sleep(0.3),
            timeout=0.1,
            limiter=limiter,
            describe=lambda exc: None,
            backend="Backend",
        )
    assert time.monotonic() - started < 0.25
    with pytest.raises(ZeroDivisionError):
        await call_blocking(
            lambda: 1 / 0, timeout=1, limiter=limiter, describe=lambda exc: None, backend="Backend"
        )


async def _ignore(stream: anyio.abc.SocketStream) -> None:
    async with stream:
        await anyio.sleep_forever()


async def test_sqlite_locked_past_the_timeout_is_coordinator_unavailable(tmp_path: Path) -> None:
    """A database locked by another connection fails writes with CoordinatorUnavailable in time; they work again after."""
    path = tmp_path / "refresh.db"
    async with SQLiteCoordinator(path, timeout=0.3) as coordinator:
        assert await coordinator.acquire("names", 10)
        blocker = sqlite3.connect(path, isolation_level=None)
        try:
            blocker.execute("BEGIN EXCLUSIVE")
            operations: list[Callable[[], Awaitable[object]]] = [
                lambda: coordinator.acquire("names", 10),
                lambda: coordinator.store("names", b"1", {}),
                lambda: coordinator.request_refresh("names"),
            ]
            for operation in operations:
                started = time.monotonic()
                with pytest.raises(CoordinatorUnavailable, match="database is locked"):
                    await operation()
                assert time.monotonic() - started < 1.0
            assert counters(await coordinator.head("names")) == (None, 0, 0)  # WAL: reads go on
            blocker.execute("ROLLBACK")
        finally:
            blocker.close()
        assert await coordinator.store("names", b"1", {}) == 1
        assert await coordinator.acquire("rates", 10)
        blocker = sqlite3.connect(path, isolation_level=None)
        try:
            blocker.execute("BEGIN EXCLUSIVE")
            started = time.monotonic()
            await coordinator.close()  # two leases to give back, neither can be: one bounded attempt
            assert time.monotonic() - started < 1.0
        finally:
            blocker.close()


async def test_sqlite_file_that_cannot_be_opened(tmp_path: Path) -> None:
    """A database in a missing directory is CoordinatorUnavailable (it may be mounted later), not a crash."""
    async with SQLiteCoordinator(tmp_path / "missing" / "refresh.db", timeout=0.5) as coordinator:
        with pytest.raises(CoordinatorUnavailable, match="unable to open database file"):
            await coordinator.acquire("names", 10)
        (tmp_path / "missing").mkdir()
        assert await coordinator.acquire("names", 10)


# -- the codec -------------------------------------------------------------------------


def test_json_codec_round_trips_json_values() -> None:
    """JSON values come back equal, as compact UTF-8."""
    codec = JSONCodec()
    value = {"names": ["ada", "zoë"], "rate": 1.5, "on": True, "none": None, "n": 3}
    data = codec.encode(value)
    assert data == '{"names":["ada","zoë"],"rate":1.5,"on":true,"none":null,"n":3}'.encode()
    assert codec.decode(data) == value
    assert repr(codec) == "JSONCodec()"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            {"ids": {1, 2}},
            "value of type set is not JSON-serialisable; convert it (to a list) or pass a codec=",
        ),
        (
            Stored(1, b""),
            "value of type Stored is not JSON-serialisable; convert it (to dicts, lists, strings and numbers) or pass a codec=",
        ),
        ({(1, 2): "x"}, "keys must be str, int, float, bool or None, not tuple"),
    ],
)
def test_json_codec_refuses_what_json_cannot_hold(value: object, message: str) -> None:
    """A value JSON cannot represent is a TypeError naming its type and what to do."""
    with pytest.raises(TypeError) as caught:
        JSONCodec().encode(value)
    assert str(caught.value) == message


def test_json_codec_refuses_circular_values() -> None:
    """A value that contains itself is a TypeError, like any value JSON cannot hold."""
    value: list[object] = []
    value.append(value)
    with pytest.raises(TypeError, match=r"value is not JSON-serialisable .*Circular reference"):
        JSONCodec().encode(value)


# -- records read from the backend are untrusted: property tests --------------------------

_ANY_FIELD = st.one_of(
    st.none(),
    st.binary(max_size=40),
    st.text(max_size=40),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
)
_ENTRY_FIELDS = ("version", "data", "meta", "stored_at", "stored_by", "answered")


def _assert_usable(stored: Stored) -> None:
    """Everything the runtime relies on in a record that parsed."""
    assert 0 <= stored.version <= MAX_COUNT
    assert isinstance(stored.data, bytes)
    assert len(stored.data) <= 1024
    assert math.isfinite(stored.stored_at)
    assert printable(stored.stored_by) == stored.stored_by
    assert 0 < len(stored.stored_by) <= 256
    assert 0 <= stored.answered <= MAX_COUNT
    for key, value in stored.meta.items():
        assert isinstance(key, str)
        assert value is None or isinstance(value, str | bool | int) or math.isfinite(value)


@given(fields=st.fixed_dictionaries({}, optional=dict.fromkeys(_ENTRY_FIELDS, _ANY_FIELD)))
def test_a_record_parses_into_a_usable_stored_value_or_is_a_bad_record(fields: dict[str, Any]) -> None:
    """Whatever the fields hold: a checked Stored, None (nothing stored) or BadRecord; nothing else."""
    try:
        stored = parse_stored(fields, max_bytes=1024)
    except BadRecord:
        return
    if stored is None:
        assert fields.get("data") is None
    else:
        _assert_usable(stored)


_OWNERS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.-:", min_size=1, max_size=60)
_META_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)


@given(
    version=st.integers(min_value=1, max_value=MAX_COUNT),
    data=st.binary(max_size=1024),
    meta=st.dictionaries(st.text(max_size=20), _META_VALUES, max_size=6),
    seconds=st.integers(min_value=0, max_value=10**10),
    micros=st.integers(min_value=0, max_value=999_999),
    owner=_OWNERS,
    answered=st.integers(min_value=0, max_value=MAX_COUNT),
)
def test_every_record_the_backends_write_parses_back_as_written(
    version: int,
    data: bytes,
    meta: dict[str, MetaValue],
    seconds: int,
    micros: int,
    owner: str,
    answered: int,
) -> None:
    """Valid records are accepted, from Redis (all bytes) and from SQLite (typed columns) alike."""
    meta_text = encode_meta(meta)
    redis_fields = {
        "version": str(version).encode(),
        "data": data,
        "meta": meta_text.encode(),
        "stored_at": f"{seconds}.{micros:06d}".encode(),  # what the store script writes
        "stored_by": owner.encode(),
        "answered": str(answered).encode(),
    }
    sqlite_fields = {
        "version": version,
        "data": data,
        "meta": meta_text,
        "stored_at": seconds + micros / 1e6,
        "stored_by": owner,
        "answered": answered,
    }
    for fields in (redis_fields, sqlite_fields):
        stored = parse_stored(fields, max_bytes=1024)
        assert stored is not None
        assert (stored.version, stored.data, stored.stored_by, stored.answered) == (
            version,
            data,
            owner,
            answered,
        )
        assert dict(stored.meta) == json.loads(meta_text)
        assert stored.stored_at == pytest.approx(seconds + micros / 1e6, abs=1e-6)


@given(raw=st.one_of(st.binary(max_size=200), st.text(max_size=200)))
def test_meta_decodes_into_scalars_or_is_a_bad_record(raw: bytes | str) -> None:
    """Any bytes or text as meta: an object of finite scalars, or BadRecord."""
    try:
        meta = decode_meta(raw)
    except BadRecord:
        return
    assert isinstance(meta, dict)
    for value in meta.values():
        assert value is None or isinstance(value, str | bool | int) or math.isfinite(value)


@given(meta=st.dictionaries(st.text(max_size=20), _META_VALUES, max_size=8))
def test_meta_round_trips(meta: dict[str, MetaValue]) -> None:
    """What encode_meta writes, decode_meta reads back."""
    assert decode_meta(encode_meta(meta)) == json.loads(json.dumps(meta))


@given(version=_ANY_FIELD, requested=_ANY_FIELD, answered=_ANY_FIELD)
def test_a_head_is_checked_counters_or_a_bad_record(
    version: object, requested: object, answered: object
) -> None:
    """Any counters: whole numbers in range (version None: nothing stored), or BadRecord."""
    try:
        head = parse_head(version, requested, answered)
    except BadRecord:
        return
    assert head.version is None or 1 <= head.version <= MAX_COUNT
    assert 0 <= head.requested <= MAX_COUNT
    assert 0 <= head.answered <= MAX_COUNT


@given(message=st.one_of(st.binary(max_size=300), st.integers(), st.none()))
def test_a_channel_message_is_a_change_of_ours_or_ignored(message: object) -> None:
    """Whatever is published on the channel: one of our changes, well formed, or None."""
    change = _parse_change(message)
    if change is not None:
        assert change.kind in ("stored", "refresh_requested")
        assert change.name.isidentifier()
        assert 0 <= change.number <= MAX_COUNT


@given(name=st.from_regex(r"[a-z_][a-z0-9_]{0,20}", fullmatch=True), number=st.integers(0, MAX_COUNT))
def test_our_own_channel_messages_parse(name: str, number: int) -> None:
    """What the scripts publish is understood."""
    assert _parse_change(f"stored {name} {number}".encode()) == Change("stored", name, number)
    assert _parse_change(f"refresh_requested {name} {number}".encode()) == Change(
        "refresh_requested", name, number
    )


_REDIS_DAMAGE = st.one_of(st.binary(max_size=40), st.just(b"1.5"), st.just(b"-3"), st.just(b"9" * 20))
_SQLITE_DAMAGE = st.one_of(  # no NULL: the schema refuses it for counters
    st.binary(max_size=40),
    st.text(max_size=40),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
async def test_store_and_request_repair_damaged_counters_instead_of_failing(
    make: Make, data: st.DataObject
) -> None:
    """Counters damaged any way: a store and a refresh request still work, and leave a usable record."""
    async with make() as coordinator:
        poisoner: Any
        damage: st.SearchStrategy[Any]
        if isinstance(coordinator, RedisCoordinator):
            poisoner, damage = RedisPoisoner(coordinator.url, coordinator.prefix), _REDIS_DAMAGE
        else:
            assert isinstance(coordinator, SQLiteCoordinator)
            poisoner, damage = SQLitePoisoner(Path(coordinator.path), coordinator.prefix), _SQLITE_DAMAGE
        try:
            assert await coordinator.acquire("names", 60)
            assert await coordinator.store("names", b"1", {}) is not None
            for field in ("version", "requested", "answered"):
                poisoner.apply("names", Poison(field, data.draw(damage), data.draw(damage)))
            number = await coordinator.request_refresh("names")
            assert 1 <= number <= MAX_COUNT
            version = await coordinator.store("names", b"2", {}, answered=number)
            assert version is not None
            assert 1 <= version <= MAX_COUNT
            stored = await coordinator.load("names")
            assert stored is not None
            assert stored.data == b"2"
            head = await coordinator.head("names")
            assert head.version == version
            assert head.answered >= number
            assert not head.pending
        finally:
            poisoner.close()


async def test_a_redis_slowed_down_past_the_timeout_is_unavailable_in_time(redis_server: RedisServer) -> None:
    """Behind a proxy that delays every chunk by 1 s, each call fails within the timeout; fast again, it works."""
    with FlappingProxy(("127.0.0.1", redis_server.port)) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        async with RedisCoordinator(url, prefix=f"slow{uuid.uuid4().hex[:8]}", timeout=0.3) as coordinator:
            assert await coordinator.acquire("names", 10)
            proxy.delay = 1.0
            started = time.monotonic()
            with pytest.raises(CoordinatorUnavailable):
                await coordinator.head("names")
            assert time.monotonic() - started < 0.6
            proxy.delay = 0.0
            proxy.down()  # the slow connection is cut: the next call makes a new one
            proxy.up()
            with anyio.fail_after(5):
                while True:
                    try:
                        assert await coordinator.acquire("names", 10)
                        break
                    except CoordinatorUnavailable:  # the connection pool still held the cut one
                        await anyio.sleep(0.05)
