"""The coordination backends: one contract, tested on a real Redis and a real SQLite file."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
import threading
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
from asgi_refresh._cluster.base import BadRecord, Change, Coordinator, MetaValue, Stored
from asgi_refresh._cluster.blocking import call_blocking
from asgi_refresh._cluster.contract import CoordinatorContract, counters, next_change
from asgi_refresh._cluster.records import MAX_COUNT, decode_meta, encode_meta, parse_head, parse_stored
from asgi_refresh._cluster.redis import _head as _poll_head
from asgi_refresh._cluster.redis import _parse_change
from asgi_refresh._text import printable
from tests.faults.backend import POISONS, Poison, RedisPoisoner, SQLitePoisoner
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


# -- the contract (asgi_refresh.testing.CoordinatorContract), on each built-in backend ------


class TestRedisCoordinator(CoordinatorContract):
    """Redis passes the contract that every backend must pass."""

    @pytest.fixture
    def new_coordinator(self, redis_url: str) -> Callable[[str], Coordinator]:
        return lambda prefix: RedisCoordinator(redis_url, prefix=prefix)


class TestSQLiteCoordinator(CoordinatorContract):
    """SQLite passes the contract that every backend must pass."""

    @pytest.fixture
    def new_coordinator(self, tmp_path: Path) -> Callable[[str], Coordinator]:
        return lambda prefix: SQLiteCoordinator(tmp_path / "refresh.db", prefix=prefix, poll_interval=0.02)


class Incomplete(CoordinatorContract):
    """A subclass that forgot to say how to make its coordinators."""


def test_the_contract_says_what_a_subclass_must_define() -> None:
    """Without a new_coordinator fixture, the contract's tests fail with what to define, not a fixture error."""
    with pytest.raises(NotImplementedError, match="Incomplete: define a new_coordinator fixture"):
        Incomplete.new_coordinator.__wrapped__(Incomplete())  # type: ignore[attr-defined]


# -- the built-in backends' own behaviour ------------------------------------------------


async def test_redis_ignores_foreign_messages_on_its_channel(redis_url: str) -> None:
    """Messages on the changes channel that are not changes of ours are ignored; the next change arrives."""
    import redis

    prefix = f"foreign{uuid.uuid4().hex[:8]}"
    async with (
        RedisCoordinator(redis_url, prefix=prefix) as holder,
        RedisCoordinator(redis_url, prefix=prefix) as follower,
    ):
        assert await holder.acquire("names", 10)
        async with follower.subscribe() as changes:
            with redis.Redis.from_url(redis_url) as raw:
                raw.publish(f"{prefix}:changes", b"not a change")
                raw.publish(f"{prefix}:changes", b"vanished names 1")
            with anyio.move_on_after(0.3) as quiet:
                await anext(changes)
            assert quiet.cancelled_caught
            assert await holder.store("names", b"1", {}) == 1
            assert await next_change(changes) == Change("stored", "names", 1)


async def test_redis_connects_with_resp2_and_no_handshake_the_server_may_refuse(redis_url: str) -> None:
    """RESP2, no HELLO: redis-py 8's RESP3 connect asks for maintenance notifications, which Valkey refuses."""
    import redis

    with redis.Redis.from_url(redis_url, protocol=2) as raw:
        raw.config_resetstat()
        async with RedisCoordinator(redis_url, prefix=f"resp{uuid.uuid4().hex[:8]}") as coordinator:
            assert await coordinator.acquire("names", 10)
            async with coordinator.subscribe():
                await coordinator.store("names", b"1", {})
        commands = raw.info("commandstats")
    assert "cmdstat_hello" not in commands
    assert not [name for name in commands if "maint" in name.lower()]
    assert "cmdstat_evalsha" in commands or "cmdstat_eval" in commands


async def test_redis_after_close_a_late_call_cannot_open_a_connection(redis_url: str) -> None:
    """A call abandoned at shutdown that runs after close fails instead of leaking a new socket."""
    import redis

    coordinator = RedisCoordinator(redis_url, prefix=f"late{uuid.uuid4().hex[:8]}")
    await coordinator.open()
    client = coordinator._client  # what an abandoned call still holds
    assert client is not None
    await coordinator.close()
    with pytest.raises(redis.exceptions.ConnectionError, match="is closed"):
        client.ping()


async def test_redis_a_call_holding_its_connection_across_close_leaves_no_socket_open(redis_url: str) -> None:
    """A call that had its connection when close dropped it reconnects it (redis-py does); given back, it is closed."""
    coordinator = RedisCoordinator(redis_url, prefix=f"late{uuid.uuid4().hex[:8]}")
    await coordinator.open()
    client = coordinator._client
    assert client is not None
    pool = client.connection_pool
    try:  # what a call in a worker thread holds
        connection = pool.get_connection()
    except TypeError:  # redis-py before 5.3 names the command
        connection = pool.get_connection("PING")
    await coordinator.close()
    connection.send_command("PING")  # type: ignore[no-untyped-call]  # reconnects the dropped socket, as the call's next command would
    assert connection.read_response() in (b"PONG", "PONG", True)
    pool.release(connection)  # the call ends and gives it back
    assert connection._sock is None, "the pool closed it instead of keeping it open for nobody"


async def test_the_built_in_backends_report_their_clock(pair: tuple[Coordinator, Coordinator]) -> None:
    """Heads and stored values carry the backend's own time (the contract allows None; ours never are)."""
    first, second = pair
    assert await first.acquire("names", 10)
    assert await first.store("names", b"1", {}) == 1
    stored, head = await second.load("names"), await second.head("names")
    assert stored is not None
    assert stored.time is not None
    assert head.time is not None
    assert abs(stored.time - time.time()) < 5


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
        with pytest.raises(TypeError, match=r"meta must map str to .* \(got 'expires': datetime\)"):
            await coordinator.store("names", b"1", {"expires": datetime.now()})  # type: ignore[dict-item]


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
    released = threading.Event()
    started = time.monotonic()
    try:
        with pytest.raises(CoordinatorUnavailable, match=r"^Backend: no answer within 0\.1s$"):
            await call_blocking(
                lambda: released.wait(2),  # blocks 2 s unless let go
                timeout=0.1,
                limiter=limiter,
                describe=lambda exc: None,
                backend="Backend",
            )
        assert time.monotonic() - started < 1.0, "abandoned at the timeout, not waited for"
    finally:
        released.set()  # the abandoned thread ends (on trio, it gives the limiter back then)
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
                # SQLite's busy timeout or our own bound on the call, whichever a loaded machine hits first.
                with pytest.raises(
                    CoordinatorUnavailable, match=r"database is locked|no answer within 0\.3s"
                ):
                    await operation()
                assert time.monotonic() - started < 2.0  # the lock is held for ever: in time, not never
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
            # That attempt and closing the file each wait at most the timeout (0.3 s); 1 s of
            # slack for a loaded machine. The lock is held for ever: in time, not never.
            assert time.monotonic() - started < 2 * coordinator.timeout + 1.0
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


_REDIS_DAMAGE = st.one_of(
    st.binary(max_size=40), st.sampled_from([b"1.5", b"-3", b"9" * 20, b"00", b"007", b"+1", b" 1"])
)
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
    # A fresh prefix per example: what one example damaged is not the next one's start.
    async with make(prefix=f"example{uuid.uuid4().hex[:8]}") as coordinator:
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
    """Behind a proxy that delays every chunk by 5 s, a call fails at its timeout, not the delay; fast again, it works."""
    with FlappingProxy(("127.0.0.1", redis_server.port)) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        async with RedisCoordinator(url, prefix=f"slow{uuid.uuid4().hex[:8]}", timeout=0.3) as coordinator:
            assert await coordinator.acquire("names", 10)
            proxy.delay = 5.0
            started = time.monotonic()
            with pytest.raises(CoordinatorUnavailable):
                await coordinator.head("names")
            # The timeout is 0.3 s; a loaded CI machine adds to it, but nowhere near the 5 s delay.
            assert time.monotonic() - started < 2.0
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


# -- one poll for every lease -------------------------------------------------------------


def _count_thread_hops(coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the blocking calls (each one worker-thread hop) that ``coordinator`` makes."""
    assert isinstance(coordinator, RedisCoordinator | SQLiteCoordinator)
    hops = [0]
    call = coordinator.call

    async def counted(func: Callable[[], Any]) -> Any:
        hops[0] += 1
        return await call(func)

    monkeypatch.setattr(coordinator, "call", counted)
    return hops


def _poisoner(coordinator: Coordinator) -> RedisPoisoner | SQLitePoisoner:
    if isinstance(coordinator, RedisCoordinator):
        return RedisPoisoner(coordinator.url, coordinator.prefix)
    assert isinstance(coordinator, SQLiteCoordinator)
    return SQLitePoisoner(Path(coordinator.path), coordinator.prefix)


async def test_a_poll_of_a_thousand_names_is_one_thread_hop(
    pair: tuple[Coordinator, Coordinator], monkeypatch: pytest.MonkeyPatch
) -> None:
    """1,000 leases renewed or taken and 1,000 heads read in one blocking call, each answer right."""
    first, second = pair
    names = [f"r{i}" for i in range(1000)]
    for name in names[:10]:  # the other process holds ten leases and stored a value for each
        assert await first.acquire(name, 10)
        assert await first.store(name, b"1", {}) == 1
    assert await first.request_refresh("r3") == 1
    assert await first.request_refresh("r500") == 1
    hops = _count_thread_hops(second, monkeypatch)
    polled = await second.poll(names, 10)
    assert hops == [1]
    assert list(polled) == names
    assert [name for name, poll in polled.items() if not poll.held] == names[:10]
    assert {counters(poll.head) for poll in polled.values()} == {
        (None, 0, 0),
        (1, 0, 0),
        (1, 1, 0),
        (None, 1, 0),
    }
    assert counters(polled["r3"].head) == (1, 1, 0)
    assert counters(polled["r500"].head) == (None, 1, 0)
    assert all(poll.head.time is not None for poll in polled.values() if not isinstance(poll.head, BadRecord))
    again = await second.poll(names, 10)
    assert hops == [2]
    assert [name for name, poll in again.items() if not poll.held] == names[:10], "renewed, not lost"
    assert not await first.acquire("r999", 10), "the poll took the lease"


async def test_close_gives_back_every_lease_a_poll_took_in_one_call(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leases a poll took are released at close, all in one blocking call, so another takes them at once."""
    names = [f"r{i}" for i in range(1000)]
    async with make() as first, make() as second:
        assert await second.acquire("r7", 10)
        polled = await first.poll(names, 60)
        assert sum(poll.held for poll in polled.values()) == 999
        hops = _count_thread_hops(first, monkeypatch)
        await first.close()
        assert hops == [1]
        again = await second.poll(names, 60)
        assert all(poll.held for poll in again.values()), "every lease was free again at once"


async def test_a_poll_is_chunked_and_answers_each_name_once_in_order(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past CHUNK names a poll makes several short scripts or transactions in one hop; a name asked twice is answered once."""
    import asgi_refresh._cluster.redis as redis_backend
    import asgi_refresh._cluster.sqlite as sqlite_backend

    monkeypatch.setattr(redis_backend, "CHUNK", 3)
    monkeypatch.setattr(sqlite_backend, "CHUNK", 3)
    async with make() as first, make() as second:
        assert await first.acquire("r4", 10)
        assert await first.store("r4", b"1", {}) == 1
        hops = _count_thread_hops(second, monkeypatch)
        assert await second.poll([], 10) == {}
        assert hops == [0]
        names = ["r6", "r0", "r4", "r1", "r0", "r5", "r2", "r3"]
        polled = await second.poll(names, 10)
        assert hops == [1]
        assert list(polled) == ["r6", "r0", "r4", "r1", "r5", "r2", "r3"]
        assert {name: poll.held for name, poll in polled.items()} == {name: name != "r4" for name in polled}
        assert counters(polled["r4"].head) == (1, 0, 0)
        await second.close()
        others = ["r0", "r1", "r2", "r3", "r5", "r6"]
        assert all(poll.held for poll in (await first.poll(others, 10)).values()), "given back at close"


_HEAD_POISONS = [  # what damages a head (the counters, or the entry's type)
    "version is a fraction",
    "version is negative",
    "version has 30 digits",
    "version has a leading zero",
    "requested has a leading zero",
    "requested is text",
    "requested is huge",
    "answered is text",
    "answered is a fraction",
    "the entry is a list",
    "the entry is a string",
]


async def test_a_poisoned_head_is_a_bad_record_of_that_name_only(make: Make) -> None:
    """Heads damaged each their own way, in one poll: each is that name's BadRecord; the others are right."""
    async with make() as holder, make() as poller:
        poisoner = _poisoner(holder)
        cases = [case for case in _HEAD_POISONS if POISONS[case].applies_to(poisoner.backend)]
        bad = [f"bad{i}" for i in range(len(cases))]
        try:
            for name in ["before", *bad, "after"]:
                assert await holder.acquire(name, 10)
                assert await holder.store(name, b"1", {}) == 1
            await holder.release("after")
            for name, case in zip(bad, cases, strict=True):
                poisoner.apply(name, POISONS[case])
            polled = await poller.poll(["before", *bad, "after", "fresh"], 10)
        finally:
            poisoner.close()
        for name, case in zip(bad, cases, strict=True):
            assert isinstance(polled[name].head, BadRecord), case
            assert not polled[name].held, "the lease is another matter than the head"
        assert (polled["before"].held, counters(polled["before"].head)) == (False, (1, 0, 0))
        assert (polled["after"].held, counters(polled["after"].head)) == (True, (1, 0, 0))
        assert (polled["fresh"].held, counters(polled["fresh"].head)) == (True, (None, 0, 0))
        for name in bad:  # what head() says of each, poll says too
            with pytest.raises(BadRecord) as raised:
                await poller.head(name)
            assert str(raised.value) == str(polled[name].head)


async def test_redis_down_during_a_poll_is_coordinator_unavailable(
    stoppable_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With Redis stopped, a poll fails whole with CoordinatorUnavailable in time; close still ends in time; it recovers."""
    names = [f"r{i}" for i in range(1000)]
    prefix = f"down-{uuid.uuid4().hex[:8]}"
    async with RedisCoordinator(stoppable_redis.url, prefix=prefix, timeout=0.5) as coordinator:
        assert all(poll.held for poll in (await coordinator.poll(names, 10)).values())
        stoppable_redis.stop()
        started = time.monotonic()
        with pytest.raises(CoordinatorUnavailable, match=r"Redis at redis://127\.0\.0\.1:\d+/0: "):
            await coordinator.poll(names, 10)
        assert time.monotonic() - started < 1.5
        stoppable_redis.start()
        polled = await coordinator.poll(names, 10)
        assert all(poll.held for poll in polled.values())
        assert all(counters(poll.head) == (None, 0, 0) for poll in polled.values())
        stoppable_redis.stop()
        started = time.monotonic()
        await coordinator.close()  # the leases cannot be given back: one bounded attempt
        assert time.monotonic() - started < 1.5


async def test_sqlite_locked_during_a_poll_is_coordinator_unavailable(tmp_path: Path) -> None:
    """A database locked by another connection fails a poll whole with CoordinatorUnavailable in time; it works after."""
    path = tmp_path / "refresh.db"
    names = [f"r{i}" for i in range(1000)]
    async with SQLiteCoordinator(path, timeout=0.3) as coordinator:
        assert all(poll.held for poll in (await coordinator.poll(names, 10)).values())
        blocker = sqlite3.connect(path, isolation_level=None)
        try:
            blocker.execute("BEGIN EXCLUSIVE")
            started = time.monotonic()
            with pytest.raises(CoordinatorUnavailable, match="database is locked"):
                await coordinator.poll(names, 10)
            assert time.monotonic() - started < 1.0
            blocker.execute("ROLLBACK")
        finally:
            blocker.close()
        polled = await coordinator.poll(names, 10)
        assert all(poll.held for poll in polled.values())


async def test_a_redis_poll_reply_that_is_not_ours_is_coordinator_unavailable(redis_url: str) -> None:
    """A reply of the wrong shape (not what our script returns) fails the poll as a backend problem, never half-read."""
    async with RedisCoordinator(redis_url, prefix=f"odd{uuid.uuid4().hex[:8]}") as coordinator:
        replies: list[object] = [
            None,
            [b"1"],
            [b"1", b"2", [1, b"none"]],  # an answer per name is missing
            [b"1", b"2", [1, b"weird"], [1, b"none"]],
            [b"1", b"2", [1, b"ok", b"1"], [1, b"none"]],
            [b"x", b"2", [1, b"none"], [1, b"none"]],
        ]
        for reply in replies:
            coordinator._scripts["poll"] = lambda keys, args, reply=reply: reply
            with pytest.raises(CoordinatorUnavailable, match="unexpected reply to a poll"):
                await coordinator.poll(["names", "rates"], 10)


_REPLY_PART = st.one_of(st.binary(max_size=20), st.integers(), st.none(), st.sampled_from([b"0", b"1", b"7"]))


@settings(max_examples=300)
@given(
    status=st.one_of(st.sampled_from([b"none", b"type", b"big", b"ok"]), _REPLY_PART),
    rest=st.lists(_REPLY_PART, max_size=4),
)
def test_a_name_s_part_of_a_redis_poll_is_a_head_a_bad_record_or_a_wrong_reply(
    status: object, rest: list[Any]
) -> None:
    """Whatever one name's part of a poll reply holds: a checked Head, that name's BadRecord, or ValueError (a reply not ours)."""
    try:
        head = _poll_head(status, rest, 1_700_000_000.0)
    except BadRecord:  # pragma: no cover - a BadRecord is returned, never raised
        raise AssertionError("a BadRecord is the name's answer, not an exception") from None
    except ValueError:
        return
    if isinstance(head, BadRecord):
        assert printable(str(head)) == str(head)
        return
    assert head.time == 1_700_000_000.0
    for value in head[1:3]:
        assert isinstance(value, int)
        assert 0 <= value <= MAX_COUNT
    assert head.version is None or 1 <= head.version <= MAX_COUNT
