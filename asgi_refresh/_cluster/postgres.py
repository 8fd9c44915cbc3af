"""Coordination through PostgreSQL: leases as rows on the database's clock, changes by LISTEN/NOTIFY.

Three tables in one schema (``asgi_refresh`` by default), shared by every prefix
(a ``prefix`` column keeps them apart); `ddl` returns the statements:

- ``leases(prefix, name, owner, expires_at)`` — one row per lease; ``expires_at``
  is set and compared on the database's clock (``clock_timestamp()``), never a
  host's;
- ``entries(prefix, name, version, data, meta, stored_at, stored_by, requested,
  answered)`` — the stored value and the refresh-now counters;
- ``changes(prefix, seq)`` — bumped by every store and refresh request: what a
  subscriber compares to notice a change that no notification told it of.

Every operation is one statement (a fenced store, its change counter and its
NOTIFY are one statement with data-modifying CTEs), so a lease check and what it
guards are atomic and each operation is one round trip. A poll of `CHUNK` leases
and heads is one statement too.

psycopg's async API runs on asyncio only, and this package also runs on trio; so
this uses psycopg's blocking API in worker threads, as the Redis backend does:
up to `CONNECTIONS` connections for the operations, made as calls overlap, and one
connection per subscription that LISTENs in a thread of its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit

import anyio
import anyio.from_thread
import anyio.lowlevel

from asgi_refresh._cluster.base import (
    DEFAULT_MAX_BYTES,
    DEFAULT_PREFIX,
    DEFAULT_TIMEOUT,
    BadRecord,
    Change,
    Coordinator,
    CoordinatorUnavailable,
    Head,
    MetaValue,
    Poll,
    Stored,
)
from asgi_refresh._cluster.blocking import BlockingCoordinator, ChangeStream
from asgi_refresh._cluster.records import (
    MAX_COUNT,
    MAX_META_BYTES,
    MAX_OWNER_CHARS,
    check_max_bytes,
    check_name,
    check_prefix,
    encode_meta,
    parse_count,
    parse_head,
    parse_stored,
)
from asgi_refresh._duration import Duration, positive_duration
from asgi_refresh._option_error import OptionTypeError, OptionValueError
from asgi_refresh._text import printable

if TYPE_CHECKING:
    import psycopg

T = TypeVar("T")

DEFAULT_SCHEMA = "asgi_refresh"
DEFAULT_POLL_INTERVAL = 1.0

# The tables, as `ddl` returns them for teams that manage their schemas themselves.
# {schema} is the quoted schema name.
_DDL = (
    "CREATE SCHEMA IF NOT EXISTS {schema}",
    """CREATE TABLE IF NOT EXISTS {schema}.leases (
    prefix text NOT NULL,
    name text NOT NULL,
    owner text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (prefix, name)
)""",
    """CREATE TABLE IF NOT EXISTS {schema}.entries (
    prefix text NOT NULL,
    name text NOT NULL,
    version bigint NOT NULL DEFAULT 0,
    data bytea,
    meta text,
    stored_at double precision,
    stored_by text,
    requested bigint NOT NULL DEFAULT 0,
    answered bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (prefix, name)
)""",
    """CREATE TABLE IF NOT EXISTS {schema}.changes (
    prefix text PRIMARY KEY,
    seq bigint NOT NULL
)""",
)
_TABLES = ("leases", "entries", "changes")

# Every statement checks the counters it reads: the tables hold whatever anyone
# wrote, and a damaged counter is replaced, not obeyed or failed on. The change
# counter starts again at a random value: one a subscriber saw before the damage
# would hide this change from it.
_COUNTER = f"{{0}} BETWEEN 0 AND {MAX_COUNT}"
_NOW = "extract(epoch FROM clock_timestamp())::float8"
_BUMP = (
    "bump AS (INSERT INTO {schema}.changes AS c (prefix, seq) SELECT %(prefix)s, 1 FROM {source} "
    "ON CONFLICT (prefix) DO UPDATE SET seq = CASE WHEN c.seq BETWEEN 0 AND 4611686018427387903 "
    "THEN c.seq + 1 ELSE 2 + floor(random() * 1e12)::bigint END RETURNING seq)"
)
# Take or renew the leases of %(names)s, unless another owner holds one (a row of
# another owner, unexpired). A row that is not a lease we wrote (an expiry absurdly
# far ahead, NULLs in a table made by hand) is taken over, not obeyed: it would
# stop every fetch forever. In name order, so that two processes polling the same
# names lock their rows in the same order (no deadlock).
_TAKE = (
    "INSERT INTO {schema}.leases AS l (prefix, name, owner, expires_at) "
    "SELECT %(prefix)s, n, %(owner)s, clock_timestamp() + make_interval(secs => %(ttl)s) "
    'FROM unnest(%(names)s::text[]) AS n ORDER BY n COLLATE "C" '
    "ON CONFLICT (prefix, name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at "
    "WHERE NOT coalesce(l.owner <> excluded.owner AND l.expires_at > clock_timestamp() "
    "AND l.expires_at <= clock_timestamp() + make_interval(secs => %(longest)s), false) "
    "RETURNING name"
)
_POLL = (
    f"WITH taken AS ({_TAKE}) "
    "SELECT w.name, t.name IS NOT NULL, e.version, e.requested, e.answered, "
    f"{_NOW} FROM unnest(%(names)s::text[]) AS w(name) LEFT JOIN taken t ON t.name = w.name "
    "LEFT JOIN {schema}.entries e ON e.prefix = %(prefix)s AND e.name = w.name"
)
# In name order too, and only our own rows.
_RELEASE = (
    "DELETE FROM {schema}.leases WHERE prefix = %(prefix)s AND owner = %(owner)s AND name IN ("
    "SELECT name FROM {schema}.leases WHERE prefix = %(prefix)s AND owner = %(owner)s "
    'AND name = ANY(%(names)s::text[]) ORDER BY name COLLATE "C" FOR UPDATE)'
)
# Fenced: nothing is written unless we hold the lease, and the lease row stays
# locked until the store commits, so a process that takes it over meanwhile stores
# after us. The NOTIFY is sent at commit, with the store.
_STORE = (
    "WITH held AS (SELECT 1 FROM {schema}.leases WHERE prefix = %(prefix)s AND name = %(name)s "
    "AND owner = %(owner)s AND expires_at > clock_timestamp() FOR UPDATE), "
    "entry AS (INSERT INTO {schema}.entries AS e "
    "(prefix, name, version, data, meta, stored_at, stored_by, requested, answered) "
    f"SELECT %(prefix)s, %(name)s, 1, %(data)s, %(meta)s, {_NOW}, %(owner)s, 0, 0 FROM held "
    "ON CONFLICT (prefix, name) DO UPDATE SET "
    f"version = CASE WHEN e.version BETWEEN 0 AND {MAX_COUNT - 1} THEN e.version + 1 ELSE 1 END, "
    "data = excluded.data, meta = excluded.meta, stored_at = excluded.stored_at, "
    "stored_by = excluded.stored_by, "
    f"requested = CASE WHEN {_COUNTER.format('e.requested')} THEN e.requested ELSE 0 END, "
    # Never past the requests counted here (a new row has none): a store that began
    # before the entry was lost carries a number from before, which would answer new ones.
    f"answered = LEAST(CASE WHEN {_COUNTER.format('e.answered')} "
    "THEN GREATEST(e.answered, %(answered)s) ELSE %(answered)s END, "
    f"CASE WHEN {_COUNTER.format('e.requested')} THEN e.requested ELSE 0 END) "
    "RETURNING version), "
    + _BUMP.replace("{source}", "entry")
    + " SELECT entry.version, pg_notify(%(channel)s, concat_ws(' ', 'stored', %(name)s, entry.version, "
    "bump.seq)) FROM entry, bump"
)
_REQUEST = (
    "WITH entry AS (INSERT INTO {schema}.entries AS e (prefix, name, requested) "
    "VALUES (%(prefix)s, %(name)s, 1) ON CONFLICT (prefix, name) DO UPDATE SET "
    f"requested = CASE WHEN e.requested BETWEEN 0 AND {MAX_COUNT - 1} THEN e.requested + 1 ELSE 1 END "
    "RETURNING requested), "
    + _BUMP.replace("{source}", "entry")
    + " SELECT entry.requested, pg_notify(%(channel)s, concat_ws(' ', 'refresh_requested', %(name)s, "
    "entry.requested, bump.seq)) FROM entry, bump"
)
_ONE_ENTRY = (
    "FROM (SELECT 1) AS one LEFT JOIN {schema}.entries e ON e.prefix = %(prefix)s AND e.name = %(name)s"
)
_HEAD = f"SELECT {_NOW}, e.version, e.requested, e.answered {_ONE_ENTRY}"
# Sizes first, and a field over its limit is not sent at all: a damaged or hostile
# row cannot fill this process's memory.
_SIZED = "octet_length(e.{0}), CASE WHEN octet_length(e.{0}) <= {1} THEN e.{0} END"
_LOAD = (
    f"SELECT {_NOW}, e.prefix IS NOT NULL, e.version, {_SIZED.format('data', '%(max_bytes)s')}, "
    f"{_SIZED.format('meta', MAX_META_BYTES)}, e.stored_at, "
    f"{_SIZED.format('stored_by', MAX_OWNER_CHARS * 4)}, e.answered {_ONE_ENTRY}"
)
_SEQ = "SELECT seq FROM {schema}.changes WHERE prefix = %(prefix)s"
_NAMES = (
    "SELECT name, version, requested FROM {schema}.entries "
    "WHERE prefix = %(prefix)s AND length(name) <= 200 LIMIT %(limit)s"
)

_MAX_NAMES = 100_000  # rows a subscriber reads per change: a flooded table must not fill memory
_LONGEST_LEASE = 86400.0  # a lease expiring later than this (or 100 ttls) is not ours: taken over
_LEASE_FACTOR = 100
_SHARE = 0.8  # of the timeout, for the statement timeout and the lock wait: an error, not silence
_LISTEN_WAIT = 0.25  # how long one wait for notifications lasts before checking for the end
_MAX_PAYLOAD = 300  # a notification of ours is short: "refresh_requested <name> <number> <seq>"
# Names per statement of a poll or a release: a process with 100,000 leases makes
# 200 short statements (one round trip each, all in one worker thread), not one
# transaction that holds 100,000 row locks.
CHUNK = 500
# Connections for the operations, made as calls overlap and kept: a call abandoned at
# its timeout (a server that stopped answering) holds one, and the next takes another.
# Each subscription has one more, to listen on.
CONNECTIONS = 2
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_SECRET_KEYS = ("password", "sslpassword")


def _import_psycopg() -> Any:
    try:
        import psycopg  # an optional dependency: imported when used
    except ImportError as exc:
        raise ImportError(
            "PostgresCoordinator needs psycopg 3: pip install 'asgi-refresh[postgres]'"
        ) from exc
    return psycopg


class _SchemaMissing(Exception):
    """The tables do not exist and the coordinator may not create them."""


class PostgresCoordinator(BlockingCoordinator):
    """Coordinates the processes of a cluster through one PostgreSQL database.

    For each refresher, one process holds a lease (a row whose expiry is on the
    database's clock) and is the only one that fetches; it stores the value in a
    table, and the others hear of it by LISTEN/NOTIFY and load it. A check of a
    change counter every ``poll_interval`` catches what a notification did not
    bring (a listening connection that was lost, a pooler that drops
    notifications). Needs the ``postgres`` extra: ``pip install
    'asgi-refresh[postgres]'`` (psycopg 3). Works on asyncio and trio.

    Args:
        dsn: The database, as libpq understands it: a URL
            (``postgresql://user:password@host:5432/db``) or ``key=value`` pairs.
            Several hosts with ``target_session_attrs=read-write`` follow a failover:
            after a lost connection, the next operation connects again.
        schema: The PostgreSQL schema of the tables (lowercase letters, digits and
            underscores); several apps can share it, kept apart by ``prefix``.
        prefix: Namespace of the rows and the notifications, so that several apps
            can share one schema.
        timeout: How long any one operation may take, connecting included, before
            it fails with `CoordinatorUnavailable` (seconds, or a duration like
            ``"2s"``). Statements are bounded a little below it on the server
            (``statement_timeout``).
        poll_interval: Time between two checks of the change counter by a
            subscriber, for the changes no notification brought.
        max_bytes: The largest stored value (encoded) that is read or written:
            a bigger one is refused before it is read. 32 MiB by default.
        create_schema: Create the schema and tables on first use if they are
            missing (``CREATE ... IF NOT EXISTS``, serialised by an advisory lock,
            so processes starting together do not race). False: they must exist
            (see `ddl`); until they do, operations fail with `CoordinatorUnavailable`.

    The DSN's password never appears in messages, ``status()`` or ``repr``.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = DEFAULT_SCHEMA,
        prefix: str = DEFAULT_PREFIX,
        timeout: Duration = DEFAULT_TIMEOUT,
        poll_interval: Duration = DEFAULT_POLL_INTERVAL,
        max_bytes: int = DEFAULT_MAX_BYTES,
        create_schema: bool = True,
    ) -> None:
        self._psycopg = _import_psycopg()
        if not isinstance(dsn, str):
            raise OptionTypeError("", "dsn", f"dsn must be a string (got {type(dsn).__name__})")
        if not dsn.strip():
            raise OptionValueError(
                "", "dsn", "dsn must name a database, such as 'postgresql://user@host:5432/db' (got '')"
            )
        self._params = _parse_dsn(self._psycopg, dsn)
        self._secrets = _secrets_in(dsn, self._params)
        super().__init__(
            timeout=positive_duration("PostgresCoordinator", "timeout", timeout), threads=CONNECTIONS
        )
        self.dsn = dsn
        self.schema = check_schema(schema)
        self.prefix = check_prefix(prefix)
        self.poll_interval = positive_duration("PostgresCoordinator", "poll_interval", poll_interval)
        self.max_bytes = check_max_bytes("PostgresCoordinator", max_bytes)
        if not isinstance(create_schema, bool):
            raise OptionTypeError(
                "", "create_schema", f"create_schema must be true or false (got {create_schema!r})"
            )
        self.create_schema = create_schema
        digest = hashlib.sha256(f"{self.schema}\0{self.prefix}".encode()).hexdigest()
        self.channel = f"asgi_refresh_{digest[:16]}"
        self._lock_key = int.from_bytes(
            hashlib.sha256(f"asgi_refresh:{self.schema}".encode()).digest()[:8], "big", signed=True
        )
        self._sql = {key: _compose(self._psycopg, self.schema, text) for key, text in _STATEMENTS.items()}
        self._pool = threading.Lock()  # guards the idle connections and the count of those in use
        self._idle: list[psycopg.Connection[Any]] = []
        self._busy = 0
        self._generation = 0  # bumped at each disconnect: a connection of a closed lifespan is not kept

    def __repr__(self) -> str:
        return f"PostgresCoordinator({self._safe_dsn()!r}, schema={self.schema!r}, prefix={self.prefix!r})"

    @property
    def backend(self) -> str:
        """``PostgreSQL at host:port/dbname`` (no user, no password)."""
        host = self._params.get("host") or self._params.get("hostaddr") or "localhost"
        port = self._params.get("port")
        where = f"{host}:{port}" if port else host
        return f"PostgreSQL at {where}/{self._params.get('dbname') or self._params.get('user') or ''}"

    def ddl(self) -> list[str]:
        """The statements that create the schema and its tables, for teams that manage schemas themselves."""
        quoted = '"' + self.schema + '"'
        return [statement.format(schema=quoted) for statement in _DDL]

    def _safe_dsn(self) -> str:
        shown = {key: ("***" if key in _SECRET_KEYS else value) for key, value in self._params.items()}
        return " ".join(f"{key}={_quote_value(str(value))}" for key, value in shown.items())

    # -- connections, in worker threads ----------------------------------------------

    def describe(self, exc: BaseException) -> str | None:
        """Psycopg's and the socket's errors, with their SQLSTATE, without credentials."""
        if isinstance(exc, self._psycopg.Error | OSError | _SchemaMissing):
            text = self._scrub(str(exc).strip())
            code = getattr(exc, "sqlstate", None)
            kind = type(exc).__name__ + (f" ({code})" if isinstance(code, str) else "")
            return f"{kind}: {text}" if text else kind
        return None

    def _scrub(self, text: str) -> str:
        """``text`` (an error from psycopg or the server) without our credentials, on one line."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return printable(text, 500)

    def _open_connection(self, application_name: str) -> psycopg.Connection[Any]:
        """A new connection, its timeouts set; the tables checked (and created if allowed)."""
        options: dict[str, Any] = {}
        if "connect_timeout" not in self._params:
            # libpq's and psycopg's least is 2 s: past our timeout, the call is abandoned,
            # and its thread ends by this bound.
            options["connect_timeout"] = max(2, math.ceil(self.timeout * _SHARE))
        if "application_name" not in self._params:
            options["application_name"] = application_name
        if "tcp_user_timeout" not in self._params:  # a dead peer: data unacknowledged this long
            options["tcp_user_timeout"] = max(1000, math.ceil(self.timeout * 1000))
        connection: psycopg.Connection[Any] = self._psycopg.connect(
            self.dsn, autocommit=True, prepare_threshold=None, **options
        )
        try:
            bound = f"{max(1, math.floor(self.timeout * _SHARE * 1000))}ms"
            connection.execute(
                "SELECT set_config('statement_timeout', %s, false), set_config('lock_timeout', %s, false)",
                (bound, bound),
            )
            self._check_tables(connection)
        except BaseException:
            connection.close()
            raise
        return connection

    def _check_tables(self, connection: psycopg.Connection[Any]) -> None:
        """Create the schema and tables if any is missing (once, whoever races); or say they are missing."""
        sql = self._psycopg.sql
        names = [sql.Identifier(self.schema, table).as_string(connection) for table in _TABLES]
        row = connection.execute("SELECT to_regclass(%s), to_regclass(%s), to_regclass(%s)", names).fetchone()
        if row is not None and all(found is not None for found in row):
            return
        if not self.create_schema:
            raise _SchemaMissing(
                f"the tables of schema {self.schema!r} do not exist: create them "
                "(PostgresCoordinator.ddl() gives the statements) or pass create_schema=True"
            )
        with connection.transaction():
            # Processes that start together each create what is missing, one at a time:
            # CREATE ... IF NOT EXISTS alone races (a unique violation in the catalog).
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_key,))
            for statement in self.ddl():
                connection.execute(statement.encode())

    def disconnect(self) -> None:
        """Close the idle connections; one that an abandoned call still uses is closed when the call ends."""
        with self._pool:
            idle, self._idle = self._idle, []
            self._generation += 1
        for connection in idle:
            _close_quietly(connection)

    def _checkout(self) -> tuple[psycopg.Connection[Any], int]:
        """An idle connection, or a new one while fewer than `CONNECTIONS` are in use."""
        with self._pool:
            if not self._open:  # a call abandoned at shutdown: no new connection for nobody
                raise self._psycopg.OperationalError(f"{self!r} is closed")
            generation = self._generation
            while self._idle:
                connection = self._idle.pop()
                if not connection.closed:
                    self._busy += 1
                    return connection, generation
            if self._busy >= CONNECTIONS:
                raise TimeoutError(f"all {CONNECTIONS} connections are busy with calls that did not finish")
            self._busy += 1
        try:
            return self._open_connection("asgi_refresh"), generation
        except BaseException:
            with self._pool:
                self._busy -= 1
            raise

    def _checkin(self, connection: psycopg.Connection[Any], generation: int, healthy: bool) -> None:
        """Keep the connection for the next call, unless it failed or the coordinator closed meanwhile."""
        with self._pool:
            self._busy -= 1
            if healthy and self._open and generation == self._generation and not connection.closed:
                self._idle.append(connection)
                return
        _close_quietly(connection)

    def _with_connection(self, func: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run ``func`` on a connection of the coordinator's own; any failure closes it.

        After a failure the connection may be dead, in a failed transaction, or on a
        server that became a read-only replica: the next call connects again (and a
        DSN with several hosts and ``target_session_attrs=read-write`` finds the primary).
        A call abandoned at its timeout keeps its connection until it ends (a server
        that stopped answering has no client-side bound but the socket's): the next
        call takes another, up to `CONNECTIONS` at once.
        """
        connection, generation = self._checkout()
        healthy = False
        try:
            result = func(connection)
            healthy = True
            return result
        finally:
            self._checkin(connection, generation, healthy)

    async def _call(self, func: Callable[[psycopg.Connection[Any]], T]) -> T:
        if not self._open:
            raise RuntimeError(f"{self!r} is not open: use `async with` or call open() first")
        return await self.call(lambda: self._with_connection(func))

    def _rows(
        self, statement: str, params: Mapping[str, Any]
    ) -> Callable[[psycopg.Connection[Any]], list[Any]]:
        query = self._sql[statement]
        return lambda connection: connection.execute(query, params).fetchall()

    # -- operations --------------------------------------------------------------------

    def _params_for(self, **params: Any) -> dict[str, Any]:
        return {"prefix": self.prefix, "owner": self.owner, "channel": self.channel, **params}

    async def acquire(self, name: str, ttl: float) -> bool:
        """Take or renew the lease on ``name`` for ``ttl`` seconds; False if another holds it."""
        check_name(name)
        seconds, longest = _lease_seconds(ttl)
        params = self._params_for(names=[name], ttl=seconds, longest=longest)
        # Counted as held before the call: if shutdown abandons it, the lease it may
        # still take is given back at close, not left to expire.
        self.holds(name, True)
        held = bool(await self._call(self._rows("take", params)))
        self.holds(name, held)
        return held

    async def release(self, name: str) -> None:
        """Give up the lease on ``name`` if we hold it."""
        await self.release_all([name])

    async def release_all(self, names: Sequence[str]) -> None:
        """Give up the leases on ``names`` that we hold: one statement per `CHUNK` names, one thread hop."""
        wanted = [check_name(name) for name in names]
        query, owner = self._sql["release"], self.owner

        def release(connection: psycopg.Connection[Any]) -> None:
            for start in range(0, len(wanted), CHUNK):
                params = {"prefix": self.prefix, "owner": owner, "names": wanted[start : start + CHUNK]}
                connection.execute(query, params)

        if wanted:
            await self._call(release)
        for name in wanted:
            self.holds(name, False)

    async def poll(self, names: Sequence[str], ttl: float) -> dict[str, Poll]:
        """Renew or take the lease of every name and read every head: one statement per `CHUNK` names.

        All of it in one worker thread: a thousand idle refreshers cost two short
        statements per poll, not two thousand calls. A malformed head is the
        `BadRecord` of its name only.
        """
        wanted = list(dict.fromkeys(check_name(name) for name in names))  # one answer each, in order
        seconds, longest = _lease_seconds(ttl)
        query, owner = self._sql["poll"], self.owner

        def poll(connection: psycopg.Connection[Any]) -> list[Any]:
            rows: list[Any] = []
            for start in range(0, len(wanted), CHUNK):
                params = {
                    "prefix": self.prefix,
                    "owner": owner,
                    "names": wanted[start : start + CHUNK],
                    "ttl": seconds,
                    "longest": longest,
                }
                rows += connection.execute(query, params).fetchall()
            return rows

        for name in wanted:  # counted as held before the call, as in `acquire`
            self.holds(name, True)
        rows = await self._call(poll) if wanted else []
        answers = {
            name: (held, _head(version, requested, answered, now))
            for name, held, version, requested, answered, now in rows
        }
        if set(answers) != set(wanted):  # pragma: no cover - not what our statement returns
            raise CoordinatorUnavailable(f"{self.backend}: unexpected reply to a poll")
        polled: dict[str, Poll] = {}
        for name in wanted:
            held, head = answers[name]
            polled[name] = Poll(bool(held), head)
            self.holds(name, bool(held))
        return polled

    async def store(
        self, name: str, data: bytes, meta: Mapping[str, MetaValue], *, answered: int = 0
    ) -> int | None:
        """Store ``data`` as the new version of ``name`` if we hold its lease; None if not.

        Raises:
            ValueError: ``data`` is bigger than ``max_bytes`` (the others would refuse it).
        """
        check_name(name)
        meta_text = encode_meta(meta)
        blob = bytes(data)
        if len(blob) > self.max_bytes:
            raise ValueError(f"{self!r}: the value is {len(blob)} bytes, over max_bytes ({self.max_bytes})")
        params = self._params_for(
            name=name, data=blob, meta=meta_text, answered=min(max(int(answered), 0), MAX_COUNT)
        )
        rows = await self._call(self._rows("store", params))
        if not rows:
            self.holds(name, False)
            return None
        return int(rows[0][0])

    async def load(self, name: str) -> Stored | None:
        """The stored value of ``name``, or None; `BadRecord` if it is malformed or too big."""
        check_name(name)
        rows = await self._call(self._rows("load", self._params_for(name=name, max_bytes=self.max_bytes)))
        (now, found, version, *sized, stored_at, owner_size, owner, answered) = rows[0]
        if not found:
            return None
        data_size, data, meta_size, meta = sized
        limits = {"data": self.max_bytes, "meta": MAX_META_BYTES, "stored_by": MAX_OWNER_CHARS * 4}
        for field, size in (("data", data_size), ("meta", meta_size), ("stored_by", owner_size)):
            if size is not None and size > limits[field]:
                hint = "; raise max_bytes if that is right" if field == "data" else ""
                raise BadRecord(f"{field} is {size} bytes (at most {limits[field]}){hint}")
        fields = {
            "version": version,
            "data": data,
            "meta": meta,
            "stored_at": stored_at,
            "stored_by": owner,
            "answered": answered,
        }
        return parse_stored(fields, max_bytes=self.max_bytes, time=now)

    async def head(self, name: str) -> Head:
        """Version and refresh-now counters of ``name`` (one primary-key read); `BadRecord` if malformed."""
        check_name(name)
        rows = await self._call(self._rows("head", self._params_for(name=name)))
        now, version, requested, answered = rows[0]
        head = _head(version, requested, answered, now)
        if isinstance(head, BadRecord):
            raise head
        return head

    async def request_refresh(self, name: str) -> int:
        """Count a refresh-now request for ``name`` and tell the lease holder; its number."""
        check_name(name)
        rows = await self._call(self._rows("request", self._params_for(name=name)))
        return int(rows[0][0])

    # -- changes ---------------------------------------------------------------------

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[Change]]:
        """Changes under the prefix from now on: notifications, and a check of the change counter."""
        if not self._open:
            raise RuntimeError(f"{self!r} is not open: use `async with` or call open() first")
        listener = _Listener(self)
        try:
            await self.call(listener.start)
        except BaseException:
            listener.abandon()
            raise
        send, receive = anyio.create_memory_object_stream[Change | CoordinatorUnavailable](math.inf)
        listener.deliver_to(send, anyio.lowlevel.current_token())
        thread = threading.Thread(
            target=listener.run,
            name=f"asgi_refresh:postgres:{self.prefix}",
            daemon=True,  # blocked on a dead server, it must not keep the process alive
        )
        thread.start()
        try:
            with send, receive:  # closed here, on the event loop: the thread may outlive it
                yield ChangeStream(receive)
        finally:
            listener.stop.set()  # the thread closes its connection itself, within _LISTEN_WAIT


class _Listener:
    """One subscription's connection and what it knows: the change counter, each name's counters.

    ``start`` (in a worker thread) connects, LISTENs and reads where things stand;
    ``run`` (in a thread of its own) hands each notification of ours to the loop
    and, every ``poll_interval``, compares the change counter with the last one it
    knows of, reading every name's counters when they differ. A lost connection is
    made again at once; until it can be, the coordinator's own connection is polled;
    when that fails too, the subscription ends with `CoordinatorUnavailable`.
    """

    def __init__(self, coordinator: PostgresCoordinator) -> None:
        self.coordinator = coordinator
        self.stop = threading.Event()
        self._connection: psycopg.Connection[Any] | None = None
        self._state = threading.Lock()
        self._abandoned = False
        self._seq: int | None = None
        self._names: dict[str, tuple[int, int]] = {}
        self._send: Any = None
        self._token: Any = None

    def deliver_to(self, send: Any, token: Any) -> None:
        self._send, self._token = send, token

    def _deliver(self, item: Change | CoordinatorUnavailable) -> None:
        # The event loop may be gone, or the reader too: then nobody waits.
        with contextlib.suppress(Exception):
            anyio.from_thread.run_sync(self._send.send_nowait, item, token=self._token)

    def start(self) -> None:
        """Connect and LISTEN, then read where things stand (after LISTEN: no change falls between)."""
        connection = self.coordinator._open_connection("asgi_refresh (changes)")
        try:
            self._listen(connection)
            self._seq, self._names = self._snapshot(connection)
        except BaseException:
            connection.close()
            raise
        with self._state:
            if self._abandoned:
                connection.close()
                return
            self._connection = connection

    def abandon(self) -> None:
        """The subscription was given up while ``start`` ran: ``start`` closes what it made."""
        with self._state:
            self._abandoned = True
            connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def _listen(self, connection: psycopg.Connection[Any]) -> None:
        sql = self.coordinator._psycopg.sql
        connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.coordinator.channel)))

    def _snapshot(self, connection: psycopg.Connection[Any]) -> tuple[int | None, dict[str, tuple[int, int]]]:
        """The change counter, then every name's (version, requested): a change between shows next time."""
        seq = self._read_seq(connection)
        query = self.coordinator._sql["names"]
        names: dict[str, tuple[int, int]] = {}
        for name, version, requested in connection.execute(
            query, {"prefix": self.coordinator.prefix, "limit": _MAX_NAMES}
        ):
            if isinstance(name, str) and name.isidentifier():
                names[name] = (_count_or(version, -1), _count_or(requested, -1))
        return seq, names

    def _read_seq(self, connection: psycopg.Connection[Any]) -> int | None:
        row = connection.execute(self.coordinator._sql["seq"], {"prefix": self.coordinator.prefix}).fetchone()
        return None if row is None or not isinstance(row[0], int) else row[0]

    def _catch_up(self, connection: psycopg.Connection[Any]) -> None:
        """If the change counter moved past what we know, deliver what differs from what we knew."""
        if self._read_seq(connection) == self._seq:
            return
        self._seq, names = self._snapshot(connection)
        for name, (version, requested) in names.items():
            old_version, old_requested = self._names.get(name, (0, 0))
            if version != old_version and version:
                # A damaged version reads -1: still a change, which the reader's load reports.
                self._deliver(Change("stored", name, version))
            if requested != old_requested and requested > 0:
                self._deliver(Change("refresh_requested", name, min(requested, MAX_COUNT)))
        self._names = names

    def _notified(self, channel: str, payload: str) -> None:
        """A notification: one of ours is delivered (unless already known); anything else is ignored."""
        if channel != self.coordinator.channel:
            return
        parsed = _parse_notification(payload)
        if parsed is None:
            return  # not ours: someone else notified on the channel
        change, seq = parsed
        version, requested = self._names.get(change.name, (0, 0))
        known = version if change.kind == "stored" else requested
        self._seq = seq  # notifications come in commit order: the counter as of the latest
        if change.number == known:
            return  # already delivered by a check of the counter
        if change.name in self._names or len(self._names) < _MAX_NAMES:
            if change.kind == "stored":
                self._names[change.name] = (change.number, requested)
            else:
                self._names[change.name] = (version, change.number)
        self._deliver(change)

    def run(self) -> None:
        """In its own thread: notifications, and the counter every ``poll_interval``, until ``stop``."""
        coordinator = self.coordinator
        next_check = time.monotonic() + coordinator.poll_interval
        try:
            while not self.stop.is_set():
                connection = self._connection
                if connection is None:
                    self._recover()
                    next_check = time.monotonic() + coordinator.poll_interval
                    continue
                try:
                    wait = min(_LISTEN_WAIT, max(0.0, next_check - time.monotonic()))
                    for notify in connection.notifies(timeout=wait):
                        self._notified(notify.channel, notify.payload)
                    if time.monotonic() >= next_check:
                        self._catch_up(connection)
                        next_check = time.monotonic() + coordinator.poll_interval
                except (coordinator._psycopg.Error, OSError):
                    self._close()  # lost: listen again at once, or poll until we can
        except Exception as exc:
            if not self.stop.is_set():
                lost = CoordinatorUnavailable(
                    f"{coordinator.backend}: subscription lost: {coordinator.describe(exc) or repr(exc)}"
                )
                lost.__cause__ = exc
                self._deliver(lost)
        finally:
            self._close()

    def _recover(self) -> None:
        """Listen again on a new connection, catching up; failing that, poll through the coordinator's own.

        Raises:
            Exception: neither works: the backend is lost (the subscription ends).
        """
        coordinator = self.coordinator
        try:
            connection = coordinator._open_connection("asgi_refresh (changes)")
        except (coordinator._psycopg.Error, OSError) as exc:
            lost: BaseException = exc
        else:
            try:
                self._listen(connection)
                self._catch_up(connection)
            except (coordinator._psycopg.Error, OSError) as exc:
                _close_quietly(connection)
                lost = exc
            except BaseException:
                _close_quietly(connection)
                raise
            else:
                self._connection = connection
                return
        try:
            coordinator._with_connection(self._catch_up)
        except Exception as exc:
            raise exc from lost
        self.stop.wait(coordinator.poll_interval)

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            _close_quietly(connection)


def _close_quietly(connection: psycopg.Connection[Any]) -> None:
    with contextlib.suppress(Exception):
        connection.close()


def _parse_notification(payload: object) -> tuple[Change, int] | None:
    """The change a notification announces, and the change counter with it; None if it is not ours."""
    if not isinstance(payload, str) or len(payload) > _MAX_PAYLOAD:
        return None
    try:
        kind, name, number, seq = payload.split(" ")
        if name.isidentifier() and kind in ("stored", "refresh_requested"):
            change = Change(kind, name, parse_count("number", number))  # type: ignore[arg-type]
            return change, _parse_seq(seq)
    except ValueError:  # BadRecord included
        pass
    return None


def _parse_seq(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,19}", text):
        raise ValueError(text)
    return int(text)


def _count_or(value: object, default: int) -> int:
    """A counter read from the table, or ``default`` if it is not one (damaged)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT:
        return value
    return default


def _head(version: object, requested: object, answered: object, now: object) -> Head | BadRecord:
    """A head from one entry's counters (all None: no entry), or its `BadRecord`."""
    try:
        return parse_head(version, requested, answered, time=now if isinstance(now, float) else None)
    except BadRecord as exc:
        return exc


def _lease_seconds(ttl: float) -> tuple[float, float]:
    """A lease's lifetime, and the longest one that is ours (a longer one is taken over)."""
    seconds = positive_duration("PostgresCoordinator", "ttl", ttl)
    return seconds, max(seconds * _LEASE_FACTOR, _LONGEST_LEASE)


def check_schema(schema: object) -> str:
    """``schema`` if it is a plain lowercase PostgreSQL identifier; a clear `ValueError` if not."""
    if not isinstance(schema, str) or not _SCHEMA_NAME.fullmatch(schema) or schema.startswith("pg_"):
        raise OptionValueError(
            "",
            "schema",
            "schema must be a PostgreSQL schema name of 1 to 63 lowercase letters, digits and "
            f"underscores, not starting with a digit or pg_ (got {schema!r})",
        )
    return schema


def _parse_dsn(psycopg: Any, dsn: str) -> dict[str, Any]:
    """The DSN's parameters; a `ValueError` that shows none of it (it may hold a password)."""
    try:
        params: dict[str, Any] = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        raise OptionValueError(
            "",
            "dsn",
            "dsn is not a connection string that libpq understands: use a URL such as "
            "'postgresql://user@host:5432/db' or key=value pairs such as 'host=db dbname=app' "
            "(not shown here: it may hold a password)",
        ) from None
    return params


def _secrets_in(dsn: str, params: Mapping[str, Any]) -> list[str]:
    """The credentials the DSN carries, as they may appear in an error message."""
    found = [str(params[key]) for key in _SECRET_KEYS if params.get(key)]
    with contextlib.suppress(ValueError):
        parts = urlsplit(dsn)
        if parts.password:
            found += [parts.password, unquote(parts.password)]
    # Longest first: a secret that contains another is masked whole.
    return sorted({secret for secret in found if len(secret) >= 3}, key=len, reverse=True)


def _quote_value(value: str) -> str:
    if value and not re.search(r"[\s'\\]", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


_STATEMENTS = {
    "take": _TAKE,
    "poll": _POLL,
    "release": _RELEASE,
    "store": _STORE,
    "request": _REQUEST,
    "head": _HEAD,
    "load": _LOAD,
    "seq": _SEQ,
    "names": _NAMES,
}


def _compose(psycopg: Any, schema: str, text: str) -> Any:
    """``text`` with the schema's quoted name in place of ``{schema}`` (its only brace)."""
    sql = psycopg.sql
    return sql.SQL(text).format(schema=sql.Identifier(schema))


if TYPE_CHECKING:
    _check: type[Coordinator] = PostgresCoordinator
