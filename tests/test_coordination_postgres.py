"""PostgresCoordinator on a real PostgreSQL server: the contract, and what is its own.

The server is a throwaway cluster (tests/postgres_server.py). Its own: the database's
clock, the schema made on first use (by processes racing), LISTEN/NOTIFY with the
polling fallback, failures (stopped, read-only, slow) as CoordinatorUnavailable,
hostile rows as BadRecord, and the password that never shows.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import psycopg
import pytest
from asgi_lifespan import LifespanManager

from asgi_refresh import CoordinatorUnavailable, PostgresCoordinator, Refresher, RefreshMiddleware
from asgi_refresh._cluster.base import BadRecord, Change, Coordinator
from asgi_refresh._cluster.contract import CoordinatorContract, counters, next_change
from asgi_refresh._cluster.postgres import _Listener, _parse_notification
from tests.faults.proxy import FlappingProxy
from tests.postgres_server import PostgresServer

from .helpers import Counting, ScriptedApp

pytestmark = pytest.mark.anyio


def _prefix() -> str:
    return f"pg{uuid.uuid4().hex[:8]}"


class TestPostgresCoordinator(CoordinatorContract):
    """PostgreSQL passes the contract that every backend must pass."""

    # A call is a thread hop and a round trip with row locks: on a loaded CI machine a
    # few of them in a row can take a good part of the default 0.3 s lease.
    lease_ttl = 1.0

    @pytest.fixture
    def new_coordinator(self, postgres_dsn: str) -> Callable[[str], Coordinator]:
        return lambda prefix: PostgresCoordinator(postgres_dsn, prefix=prefix, poll_interval=0.2)


@pytest.fixture
def pg(postgres_server: PostgresServer) -> Callable[..., PostgresCoordinator]:
    """Makes coordinators on the session's server under one fresh prefix (options may override)."""
    prefix = _prefix()

    def make(**options: Any) -> PostgresCoordinator:
        dsn = options.pop("dsn", postgres_server.dsn)
        return PostgresCoordinator(dsn, **{"prefix": prefix, **options})

    return make


# -- the database's clock, and what a load reports -------------------------------------------


async def test_leases_and_stored_times_are_on_the_database_clock(
    pg: Callable[..., PostgresCoordinator], postgres_server: PostgresServer
) -> None:
    """A lease's expiry is the database's clock plus the ttl; stored_at and time are the database's clock."""
    async with pg() as first:
        assert await first.acquire("names", 30)
        assert await first.store("names", b"1", {}) == 1
        stored, head = await first.load("names"), await first.head("names")
        ((db_now, expires),) = postgres_server.execute(
            "SELECT extract(epoch FROM clock_timestamp())::float8, extract(epoch FROM expires_at)::float8 "
            "FROM asgi_refresh.leases WHERE prefix = %s AND name = 'names'",
            [first.prefix],
        )
    assert stored is not None
    assert stored.time is not None
    assert head.time is not None
    assert abs(stored.time - db_now) < 5
    assert abs(stored.stored_at - db_now) < 5
    assert 25 < expires - db_now <= 30


# -- the password never shows ------------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "postgresql://app:hunter2-secret@127.0.0.1:{port}/postgres",
        "postgresql://app:hunter2%2Dsecret@127.0.0.1:{port}/postgres",
        "host=127.0.0.1 port={port} user=app password=hunter2-secret dbname=postgres",
        "postgresql://127.0.0.1:{port}/postgres?user=app&password=hunter2-secret",
    ],
    ids=["url", "url, percent-encoded", "key=value", "query"],
)
async def test_the_password_never_reaches_errors_logs_status_or_repr(
    template: str, caplog: pytest.LogCaptureFixture, postgres_server: PostgresServer
) -> None:
    """Down (port 1) or refusing the user: the password is in no error, repr, status or log line."""
    for port in (1, postgres_server.port):
        coordinator = PostgresCoordinator(template.format(port=port), timeout=1)
        assert "hunter2" not in repr(coordinator)
        assert "***" in repr(coordinator)
        assert "hunter2" not in coordinator.backend
        async with coordinator:
            with pytest.raises(CoordinatorUnavailable) as raised:
                await coordinator.acquire("names", 10)  # refused (port 1), or no role "app"
        assert "hunter2" not in str(raised.value)
        assert str(raised.value).startswith(f"PostgreSQL at 127.0.0.1:{port}/postgres: ")
        middleware = RefreshMiddleware(
            ScriptedApp(), refreshers=[Refresher("names", Counting(), every="1m")], coordinator=coordinator
        )
        async with LifespanManager(middleware, startup_timeout=10):
            with anyio.fail_after(5):
                while middleware.handle.status()["names"]["coordination"]["error"] is None:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            shown = [json.dumps(middleware.handle.status()), caplog.text]
        assert "hunter2" not in "".join(shown), shown
    with pytest.raises(ValueError, match="not shown here") as bad:
        PostgresCoordinator("host=db password=hunter2 = oops")
    assert "hunter2" not in str(bad.value)


# -- the schema, made on first use ------------------------------------------------------------


async def test_coordinators_starting_together_on_a_fresh_schema_all_work(
    postgres_server: PostgresServer,
) -> None:
    """Eight coordinators whose first calls race to create one schema: each works, one holds the lease."""
    schema = f"race_{uuid.uuid4().hex[:8]}"
    prefix = _prefix()
    # Each first call connects (a server process each) and waits its turn to create the
    # schema: a timeout that eight of them in a row fit in on a loaded machine.
    coordinators = [
        PostgresCoordinator(postgres_server.dsn, schema=schema, prefix=prefix, timeout=10) for _ in range(8)
    ]
    held: list[bool] = []
    try:
        for coordinator in coordinators:
            await coordinator.open()

        async def first_call(coordinator: PostgresCoordinator) -> None:
            held.append(await coordinator.acquire("names", 30))

        async with anyio.create_task_group() as task_group:
            for coordinator in coordinators:
                task_group.start_soon(first_call, coordinator)
        assert sorted(held) == [False] * 7 + [True]
    finally:
        for coordinator in coordinators:
            await coordinator.close()
    tables = postgres_server.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s ORDER BY 1", [schema]
    )
    assert tables == [("changes",), ("entries",), ("leases",)]
    postgres_server.execute(f'DROP SCHEMA "{schema}" CASCADE')


async def test_without_create_schema_missing_tables_are_unavailable_until_made_from_ddl(
    postgres_server: PostgresServer,
) -> None:
    """create_schema=False: a missing table is CoordinatorUnavailable that says what to do; ddl() makes it."""
    schema = f"own_{uuid.uuid4().hex[:8]}"
    async with PostgresCoordinator(postgres_server.dsn, schema=schema, create_schema=False) as coordinator:
        with pytest.raises(
            CoordinatorUnavailable, match=r"do not exist: create them \(PostgresCoordinator\.ddl"
        ):
            await coordinator.head("names")
        for statement in coordinator.ddl():
            postgres_server.execute(statement)
        assert counters(await coordinator.head("names")) == (None, 0, 0)
    postgres_server.execute(f'DROP SCHEMA "{schema}" CASCADE')


def test_bad_arguments_are_refused() -> None:
    """A schema that is not a plain identifier, a bad dsn or poll interval: a ValueError naming it."""
    for schema in ("", "My Schema", "x;drop", "pg_catalog", "9lives", "a" * 64, 5):
        with pytest.raises(ValueError, match="schema must be a PostgreSQL schema name"):
            PostgresCoordinator("host=db", schema=schema)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dsn must name a database"):
        PostgresCoordinator(" ")
    with pytest.raises(ValueError, match=r"PostgresCoordinator: poll_interval"):
        PostgresCoordinator("host=db", poll_interval=0)
    with pytest.raises(TypeError, match="create_schema must be true or false"):
        PostgresCoordinator("host=db", create_schema="no")  # type: ignore[arg-type]
    coordinator = PostgresCoordinator("postgresql://app:pw-123@db:6543/shop", schema="refresh", prefix="shop")
    assert repr(coordinator) == (
        "PostgresCoordinator('user=app password=*** dbname=shop host=db port=6543', "
        "schema='refresh', prefix='shop')"
    )
    assert coordinator.backend == "PostgreSQL at db:6543/shop"


def test_the_guide_shows_the_ddl_that_the_coordinator_runs() -> None:
    """The statements in the guide, for teams that manage their schemas, are ddl()'s."""
    guide = (Path(__file__).parents[1] / "docs" / "guides" / "coordination.md").read_text()
    statements = "\n".join(f"{statement};" for statement in PostgresCoordinator("host=db").ddl())
    assert f"```sql\n{statements}\n```" in guide


async def test_the_dsn_s_own_settings_and_edge_cases(postgres_server: PostgresServer) -> None:
    """A DSN's own timeouts and name are kept; a value over max_bytes, use before open, a late call are refused."""
    dsn = (
        f"host=127.0.0.1 port={postgres_server.port} user=postgres dbname=postgres connect_timeout=5 "
        "tcp_user_timeout=5000 application_name='my app'"
    )
    coordinator = PostgresCoordinator(dsn, prefix=_prefix(), max_bytes=10)
    assert "application_name='my app'" in repr(coordinator)
    with pytest.raises(RuntimeError, match="is not open"):
        async with coordinator.subscribe():
            pass  # pragma: no cover
    async with coordinator:
        assert await coordinator.acquire("names", 10)
        with pytest.raises(ValueError, match=r"the value is 11 bytes, over max_bytes \(10\)"):
            await coordinator.store("names", b"x" * 11, {})
        (name,) = postgres_server.execute(
            "SELECT application_name FROM pg_stat_activity WHERE application_name = 'my app'"
        )
        assert name == ("my app",)
        assert coordinator.describe(ZeroDivisionError()) is None
    with pytest.raises(psycopg.OperationalError, match="is closed"):  # a call abandoned at shutdown, run late
        coordinator._with_connection(lambda connection: None)
    with pytest.raises(TypeError, match="dsn must be a string"):
        PostgresCoordinator(b"host=db")  # type: ignore[arg-type]


async def test_a_subscription_given_up_while_it_connects_leaves_no_connection_open(
    pg: Callable[..., PostgresCoordinator],
) -> None:
    """Abandoned before or after its start: the listener's connection is closed either way."""
    async with pg() as coordinator:
        early = _Listener(coordinator)
        early.abandon()
        await anyio.to_thread.run_sync(early.start)
        assert early._connection is None
        late = _Listener(coordinator)
        await anyio.to_thread.run_sync(late.start)
        connection = late._connection
        assert connection is not None
        late.abandon()
        assert connection.closed


def test_a_listener_delivers_each_change_once_and_only_its_own() -> None:
    """A notification on another channel, or of a change a counter check already delivered, is not delivered."""
    listener = _Listener(PostgresCoordinator("host=db", prefix="shop"))
    delivered: list[object] = []
    listener._deliver = delivered.append  # type: ignore[method-assign,assignment]
    listener._names = {"names": (3, 1)}
    listener._notified("another_channel", "stored names 4 9")
    listener._notified(listener.coordinator.channel, "stored names 3 9")  # already known
    listener._notified(listener.coordinator.channel, "refresh_requested names 1 10")  # already known
    assert delivered == []
    listener._notified(listener.coordinator.channel, "refresh_requested names 2 11")
    assert delivered == [Change("refresh_requested", "names", 2)]
    assert listener._names == {"names": (3, 2)}
    assert listener._seq == 11


def test_importing_the_package_does_not_import_psycopg() -> None:
    """Psycopg is an optional dependency: importing asgi_refresh leaves it unimported."""
    code = "import sys, asgi_refresh; assert 'psycopg' not in sys.modules, 'psycopg was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_without_psycopg_it_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without psycopg, PostgresCoordinator raises an ImportError naming the extra to install."""
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(ImportError, match=r"pip install 'asgi-refresh\[postgres\]'"):
        PostgresCoordinator("host=db")


# -- notifications, and polling when they do not come ----------------------------------------


async def test_foreign_notifications_on_the_channel_are_ignored(
    pg: Callable[..., PostgresCoordinator], postgres_server: PostgresServer
) -> None:
    """NOTIFYs on our channel that are not changes of ours are ignored; the next change arrives."""
    async with pg() as holder, pg() as follower:
        assert await holder.acquire("names", 10)
        async with follower.subscribe() as changes:
            for payload in [
                "not a change",
                "vanished names 1 1",
                "stored names x 1",
                "stored a:b 1 1",
                "x" * 7000,
            ]:
                postgres_server.execute("SELECT pg_notify(%s, %s)", [holder.channel, payload])
            with anyio.move_on_after(0.3) as quiet:
                await anext(changes)
            assert quiet.cancelled_caught
            assert await holder.store("names", b"1", {}) == 1
            assert await next_change(changes) == Change("stored", "names", 1)


def test_a_notification_is_a_change_of_ours_or_ignored() -> None:
    """What the statements send parses; anything else is None."""
    assert _parse_notification("stored names 3 17") == (Change("stored", "names", 3), 17)
    assert _parse_notification("refresh_requested names 2 18") == (
        Change("refresh_requested", "names", 2),
        18,
    )
    for payload in [
        "",
        "stored names 3",
        "stored names -3 1",
        "stored names 3 -1",
        "stored names 1 " + "9" * 30,
        None,
    ]:
        assert _parse_notification(payload) is None


# -- failures: stopped, read-only, slow, a lost listening connection -------------------------


async def test_a_stopped_server_is_unavailable_and_a_restarted_one_works_again(
    stoppable_postgres: PostgresServer,
) -> None:
    """Stopped: every operation and the subscription fail with CoordinatorUnavailable in time; restarted: they work."""
    async with PostgresCoordinator(stoppable_postgres.dsn, prefix=_prefix(), timeout=1) as coordinator:
        assert await coordinator.acquire("names", 10)
        async with coordinator.subscribe() as changes:
            stoppable_postgres.stop()
            with pytest.raises(CoordinatorUnavailable, match="subscription lost"):
                await next_change(changes)
        for operation in (
            lambda: coordinator.acquire("names", 10),
            lambda: coordinator.head("names"),
            lambda: coordinator.load("names"),
            lambda: coordinator.store("names", b"1", {}),
            lambda: coordinator.request_refresh("names"),
            lambda: coordinator.poll(["names"], 10),
        ):
            started = time.monotonic()
            with pytest.raises(CoordinatorUnavailable, match=r"PostgreSQL at 127\.0\.0\.1:\d+/postgres: "):
                await operation()
            assert time.monotonic() - started < 2.0
        with pytest.raises(CoordinatorUnavailable):
            async with coordinator.subscribe():
                pass  # pragma: no cover
        stoppable_postgres.start()
        assert await coordinator.acquire("names", 10)  # the data survived: still our lease
        assert await coordinator.store("names", b"1", {}) == 1
        async with coordinator.subscribe() as changes:
            assert await coordinator.request_refresh("names") == 1
            assert await next_change(changes) == Change("refresh_requested", "names", 1)


async def test_a_read_only_database_is_unavailable_and_writable_again_works(
    postgres_server: PostgresServer, postgres_database: Callable[[str], str]
) -> None:
    """A failover to a read-only replica (writes refused, SQLSTATE 25006): CoordinatorUnavailable; reads go on."""
    dsn = postgres_database("ro")
    dbname = dsn.rpartition("/")[2]
    async with PostgresCoordinator(dsn, prefix=_prefix(), timeout=1) as coordinator:
        assert await coordinator.acquire("names", 10)
        postgres_server.execute(f'ALTER DATABASE "{dbname}" SET default_transaction_read_only = on')
        postgres_server.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [dbname]
        )
        with pytest.raises(CoordinatorUnavailable):  # the connection was lost
            await coordinator.store("names", b"1", {})
        with pytest.raises(CoordinatorUnavailable, match=r"ReadOnlySqlTransaction \(25006\)"):
            await coordinator.store("names", b"1", {})  # connected again, to a read-only database
        assert counters(await coordinator.head("names")) == (None, 0, 0)
        postgres_server.execute(f'ALTER DATABASE "{dbname}" RESET default_transaction_read_only')
        with pytest.raises(CoordinatorUnavailable, match=r"ReadOnlySqlTransaction"):
            await coordinator.acquire("names", 10)  # the connection keeps its session's setting...
        assert await coordinator.acquire("names", 10)  # ... and a failure drops it: the next one writes
        assert await coordinator.store("names", b"1", {}) == 1


async def test_a_statement_past_the_statement_timeout_is_unavailable(
    pg: Callable[..., PostgresCoordinator], postgres_server: PostgresServer
) -> None:
    """A lease row locked by another session: the server cancels the wait (57014 or 55P03) before our timeout."""
    # The server's bounds are 80% of the timeout (2.4 s): its error has 0.6 s to come back.
    async with pg(timeout=3) as coordinator:
        assert await coordinator.acquire("names", 10)
        with psycopg.connect(postgres_server.dsn) as blocker:
            blocker.execute(
                "SELECT 1 FROM asgi_refresh.leases WHERE prefix = %s FOR UPDATE", [coordinator.prefix]
            )
            started = time.monotonic()
            with pytest.raises(CoordinatorUnavailable, match=r"\((57014|55P03)\)"):
                await coordinator.acquire("names", 10)
            assert time.monotonic() - started < coordinator.timeout
            blocker.rollback()
        assert await coordinator.acquire("names", 10)


async def test_a_server_that_stops_answering_is_unavailable_in_time_and_the_next_call_gets_another_connection(
    postgres_server: PostgresServer,
) -> None:
    """Behind a proxy that holds a query for 3 s: the call fails at its timeout; the next one, fast again, works at once."""
    with FlappingProxy(("127.0.0.1", postgres_server.port)) as proxy:
        dsn = f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres"
        async with PostgresCoordinator(dsn, prefix=_prefix(), timeout=0.5) as coordinator:
            assert await coordinator.acquire("names", 10)
            proxy.delay = 3.0
            started = time.monotonic()
            with pytest.raises(CoordinatorUnavailable, match=r"no answer within 0\.5s"):
                await coordinator.head("names")  # no bound in libpq for a server that stops answering
            assert time.monotonic() - started < 1.5
            proxy.delay = 0.0
            started = time.monotonic()
            assert counters(await coordinator.head("names")) == (None, 0, 0)  # while the first still waits
            assert time.monotonic() - started < 1.0


async def test_a_killed_listening_connection_falls_back_to_polling_and_listens_again(
    postgres_server: PostgresServer, postgres_database: Callable[[str], str]
) -> None:
    """pg_terminate_backend on the listener, and no new connection possible: changes come by polling; then LISTEN again."""
    dsn = postgres_database("listen")
    dbname = dsn.rpartition("/")[2]
    role = f"r_{uuid.uuid4().hex[:8]}"
    postgres_server.execute(f'CREATE ROLE "{role}" LOGIN')
    postgres_server.execute(f'ALTER DATABASE "{dbname}" OWNER TO "{role}"')
    app_dsn = postgres_server.dsn_for(dbname, role)
    prefix = _prefix()

    def listeners() -> list[tuple[Any, ...]]:
        return postgres_server.execute(
            "SELECT pid FROM pg_stat_activity WHERE usename = %s AND application_name = 'asgi_refresh (changes)'",
            [role],
        )

    try:
        async with (
            PostgresCoordinator(app_dsn, prefix=prefix, poll_interval=0.2) as follower,
            PostgresCoordinator(dsn, prefix=prefix) as holder,  # the superuser: not limited
        ):
            assert await follower.head("names") is not None  # its own connection, and the tables
            assert await holder.acquire("names", 10)
            async with follower.subscribe() as changes:
                ((pid,),) = listeners()
                postgres_server.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT 1')  # only the one it has
                postgres_server.execute("SELECT pg_terminate_backend(%s)", [pid])
                assert await holder.store("names", b"1", {}) == 1
                assert await next_change(changes) == Change("stored", "names", 1)
                assert await holder.request_refresh("names") == 1
                assert await next_change(changes) == Change("refresh_requested", "names", 1)
                assert listeners() == [], "no listening connection: those came by polling"
                postgres_server.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT -1')
                with anyio.fail_after(5):
                    while not listeners():  # noqa: ASYNC110 - another process's doing
                        await anyio.sleep(0.05)
                assert await holder.store("names", b"2", {}) == 2
                assert await next_change(changes) == Change("stored", "names", 2)
    finally:
        postgres_server.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        postgres_server.execute(f'DROP ROLE IF EXISTS "{role}"')


# -- one poll for every lease ------------------------------------------------------------------


def _count_thread_hops(coordinator: PostgresCoordinator, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the blocking calls (each one worker-thread hop) that ``coordinator`` makes."""
    hops = [0]
    call = coordinator.call

    async def counted(func: Callable[[], Any]) -> Any:
        hops[0] += 1
        return await call(func)

    monkeypatch.setattr(coordinator, "call", counted)
    return hops


async def test_a_poll_of_a_thousand_names_is_one_thread_hop_and_close_gives_them_back_in_one(
    pg: Callable[..., PostgresCoordinator], monkeypatch: pytest.MonkeyPatch
) -> None:
    """1,000 leases renewed or taken and heads read in one blocking call; released at close in one."""
    names = [f"r{i}" for i in range(1000)]
    async with pg() as first, pg() as second:
        for name in names[:10]:
            assert await first.acquire(name, 10)
            assert await first.store(name, b"1", {}) == 1
        assert await first.request_refresh("r500") == 1
        hops = _count_thread_hops(second, monkeypatch)
        polled = await second.poll(names, 10)
        assert hops == [1]
        assert list(polled) == names
        assert [name for name, poll in polled.items() if not poll.held] == names[:10]
        assert counters(polled["r3"].head) == (1, 0, 0)
        assert counters(polled["r500"].head) == (None, 1, 0)
        assert all(not isinstance(poll.head, BadRecord) and poll.head.time for poll in polled.values())
        again = await second.poll(names, 10)
        assert [name for name, poll in again.items() if not poll.held] == names[:10], "renewed, not lost"
        await second.close()
        assert hops == [3], "the leases were given back in one call"
        assert all(poll.held for poll in (await first.poll(names, 10)).values()), "free at once"


async def test_a_poll_is_chunked_and_answers_each_name_once_in_order(
    pg: Callable[..., PostgresCoordinator], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past CHUNK names a poll makes several statements in one hop; a name asked twice is answered once."""
    import asgi_refresh._cluster.postgres as postgres_backend

    monkeypatch.setattr(postgres_backend, "CHUNK", 3)
    async with pg() as first, pg() as second:
        assert await first.acquire("r4", 10)
        assert await first.store("r4", b"1", {}) == 1
        hops = _count_thread_hops(second, monkeypatch)
        assert await second.poll([], 10) == {}
        assert hops == [0]
        polled = await second.poll(["r6", "r0", "r4", "r1", "r0", "r5", "r2", "r3"], 10)
        assert hops == [1]
        assert list(polled) == ["r6", "r0", "r4", "r1", "r5", "r2", "r3"]
        assert {name: poll.held for name, poll in polled.items()} == {name: name != "r4" for name in polled}
        await second.close()
        others = ["r0", "r1", "r2", "r3", "r5", "r6"]
        assert all(poll.held for poll in (await first.poll(others, 10)).values()), "given back at close"


# -- hostile rows ----------------------------------------------------------------------------


_POISONS = {
    "version is negative": "version = -1",
    "version is huge": "version = 9000000000000000000",
    "requested is negative": "requested = -5",
    "answered is huge": "answered = 10000000000000000",
    "stored_at is NaN": "stored_at = 'NaN'",
    "stored_at is infinite": "stored_at = 'Infinity'",
    "stored_at is 1e300": "stored_at = 1e300",
    "stored_by is huge": "stored_by = repeat('h', 100000)",
    "stored_by holds an ANSI escape": "stored_by = E'host\\x1b[31m'",
    "meta is a list": "meta = '[1]'",
    "meta is not JSON": "meta = 'not json'",
    "meta is huge": "meta = '{\"a\":\"' || repeat('x', 200000) || '\"}'",
    "meta is missing": "meta = NULL",
    "data is missing": "data = NULL",
    "data is over max_bytes": "data = decode(repeat('ab', 5000), 'hex')",
}


async def test_hostile_rows_are_a_bad_record_of_that_name_only(
    pg: Callable[..., PostgresCoordinator], postgres_server: PostgresServer
) -> None:
    """Rows damaged each their own way: load (or head, or poll) of that name is a BadRecord; the others are fine."""
    names = {case: f"bad{i}" for i, case in enumerate(_POISONS)}
    async with pg(max_bytes=4096) as holder, pg(max_bytes=4096) as reader:
        for name in ["good", *names.values()]:
            assert await holder.acquire(name, 10)
            assert await holder.store(name, b"1", {}) == 1
        for case, change in _POISONS.items():
            postgres_server.execute(
                f"UPDATE asgi_refresh.entries SET {change} WHERE prefix = %s AND name = %s",
                [holder.prefix, names[case]],
            )
        polled = await reader.poll(["good", *names.values()], 10)
        for case, name in names.items():
            if case != "requested is negative":  # a load does not read it
                with pytest.raises(BadRecord):
                    await reader.load(name)
            if case.split()[0] in ("version", "requested", "answered"):
                assert isinstance(polled[name].head, BadRecord), case
                with pytest.raises(BadRecord):
                    await reader.head(name)
        loaded = await reader.load("good")
        assert loaded is not None
        assert loaded.data == b"1"
        assert counters(polled["good"].head) == (1, 0, 0)
        for name in names.values():  # a store replaces the damage
            assert await holder.store(name, b"2", {}) is not None
            stored = await reader.load(name)
            assert stored is not None
            assert stored.data == b"2"


@pytest.mark.parametrize(
    "damage",
    [
        "version = -1, requested = -5, answered = 10000000000000000",
        "version = 9000000000000000000, requested = 9000000000000000000, answered = -1",
    ],
    ids=["negative", "huge"],
)
async def test_store_and_request_repair_damaged_counters_instead_of_failing(
    damage: str, pg: Callable[..., PostgresCoordinator], postgres_server: PostgresServer
) -> None:
    """Counters out of range: a refresh request and a store still work, and leave a usable record."""
    async with pg() as coordinator:
        assert await coordinator.acquire("names", 10)
        assert await coordinator.store("names", b"1", {}) == 1
        postgres_server.execute(
            f"UPDATE asgi_refresh.entries SET {damage} WHERE prefix = %s", [coordinator.prefix]
        )
        postgres_server.execute(
            "UPDATE asgi_refresh.changes SET seq = -7 WHERE prefix = %s", [coordinator.prefix]
        )
        with pytest.raises(BadRecord):
            await coordinator.head("names")
        assert await coordinator.request_refresh("names") == 1
        version = await coordinator.store("names", b"2", {}, answered=1)
        assert version == 1
        assert counters(await coordinator.head("names")) == (1, 1, 1)
        stored = await coordinator.load("names")
        assert stored is not None
        assert (stored.data, stored.answered) == (b"2", 1)


async def test_a_lease_this_package_did_not_write_is_taken_over(
    pg: Callable[..., PostgresCoordinator], postgres_server: PostgresServer
) -> None:
    """A lease row that never expires (or expires absurdly late) is not obeyed: it would stop every fetch."""
    async with pg() as coordinator:
        assert await coordinator.head("names") is not None  # the tables exist
        for expiry in ("infinity", "2999-01-01"):
            postgres_server.execute(
                "INSERT INTO asgi_refresh.leases VALUES (%s, 'names', 'intruder', %s) "
                "ON CONFLICT (prefix, name) DO UPDATE SET owner = 'intruder', expires_at = excluded.expires_at",
                [coordinator.prefix, expiry],
            )
            assert await coordinator.acquire("names", 10)
