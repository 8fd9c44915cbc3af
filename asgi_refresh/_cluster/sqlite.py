"""Coordination through an SQLite file: the processes of one host, no server.

Three tables, shared by every prefix (a ``prefix`` column keeps them apart):

- ``asgi_refresh_leases(prefix, name, owner, expires_at)`` — one row per lease,
  ``expires_at`` in wall-clock seconds (every process is on one host, one clock);
- ``asgi_refresh_entries(prefix, name, version, data, meta, stored_at, stored_by,
  requested, answered)`` — the stored value and the refresh-now counters;
- ``asgi_refresh_changes(prefix, seq)`` — bumped by every store and refresh
  request, so that a subscriber's poll is one primary-key read while nothing
  changes.

Writes run in ``BEGIN IMMEDIATE`` transactions, so a lease check and what it
guards are atomic. The database is in WAL mode: readers never wait for a writer.
sqlite3 blocks, so every call runs in a worker thread on the coordinator's one
connection, one call at a time.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread

from asgi_refresh._cluster.base import (
    DEFAULT_MAX_BYTES,
    DEFAULT_PREFIX,
    DEFAULT_TIMEOUT,
    BadRecord,
    Change,
    Coordinator,
    Head,
    MetaValue,
    Poll,
    Stored,
)
from asgi_refresh._cluster.blocking import BlockingCoordinator
from asgi_refresh._cluster.records import (
    MAX_COUNT,
    MAX_FIELD_BYTES,
    MAX_META_BYTES,
    MAX_OWNER_CHARS,
    check_max_bytes,
    check_name,
    check_prefix,
    encode_meta,
    parse_head,
    parse_stored,
)
from asgi_refresh._duration import Duration, positive_duration
from asgi_refresh._option_error import OptionTypeError, OptionValueError

T = TypeVar("T")

DEFAULT_POLL_INTERVAL = 0.2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS asgi_refresh_leases (
    prefix TEXT NOT NULL,
    name TEXT NOT NULL,
    owner TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (prefix, name)
);
CREATE TABLE IF NOT EXISTS asgi_refresh_entries (
    prefix TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 0,
    data BLOB,
    meta TEXT,
    stored_at REAL,
    stored_by TEXT,
    requested INTEGER NOT NULL DEFAULT 0,
    answered INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (prefix, name)
);
CREATE TABLE IF NOT EXISTS asgi_refresh_changes (
    prefix TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
"""

# Every statement that reads a counter checks its type: the file holds whatever
# anyone wrote, and a damaged counter is replaced, not obeyed or failed on. The
# change counter starts again at a random value: one a subscriber saw before the
# damage would hide this change from it.
_BUMP = (
    "INSERT INTO asgi_refresh_changes (prefix, seq) VALUES (?, 1) ON CONFLICT (prefix) DO UPDATE SET "
    "seq = CASE WHEN typeof(seq) = 'integer' AND seq BETWEEN 0 AND 4611686018427387903 "
    "THEN seq + 1 ELSE abs(random() % 1000000000000) + 2 END"
)
_COUNTER = f"typeof({{0}}) = 'integer' AND {{0}} BETWEEN 0 AND {MAX_COUNT - 1}"
_STORE = (
    "INSERT INTO asgi_refresh_entries "
    "(prefix, name, version, data, meta, stored_at, stored_by, requested, answered) "
    "VALUES (?, ?, 1, ?, ?, ?, ?, 0, 0) ON CONFLICT (prefix, name) DO UPDATE SET "
    f"version = CASE WHEN {_COUNTER.format('version')} THEN version + 1 ELSE 1 END, "
    "data = excluded.data, meta = excluded.meta, stored_at = excluded.stored_at, "
    "stored_by = excluded.stored_by, "
    f"requested = CASE WHEN {_COUNTER.format('requested')} THEN requested ELSE 0 END, "
    # Never past the requests counted here (a new row has none): a store that began
    # before the entry was lost carries a number from before, which would answer new ones.
    f"answered = min(CASE WHEN {_COUNTER.format('answered')} THEN max(answered, ?) ELSE ? END, "
    f"CASE WHEN {_COUNTER.format('requested')} THEN requested ELSE 0 END)"
)
_REQUEST = (
    "INSERT INTO asgi_refresh_entries (prefix, name, requested) VALUES (?, ?, 1) "
    "ON CONFLICT (prefix, name) DO UPDATE SET "
    f"requested = CASE WHEN {_COUNTER.format('requested')} THEN requested + 1 ELSE 1 END"
)
# What a subscriber polls: a counter that is not one reads as -1 (a change, once it is repaired).
_SEQ = (
    "SELECT CASE WHEN typeof(seq) = 'integer' THEN seq ELSE -1 END FROM asgi_refresh_changes WHERE prefix = ?"
)
_NAMES = (
    "SELECT name, "
    "CASE WHEN typeof(version) = 'integer' THEN version ELSE -1 END, "
    "CASE WHEN typeof(requested) = 'integer' THEN requested ELSE -1 END "
    "FROM asgi_refresh_entries WHERE prefix = ? AND typeof(name) = 'text' AND length(name) <= 200 LIMIT ?"
)
# Take or renew a lease, unless another owner holds it (a row of ours, unexpired):
# ?1 prefix, ?2 name, ?3 owner, ?4 new expiry, ?5 now, ?6 the longest lease's expiry.
# A row that is not a lease we wrote (the wrong types, an expiry absurdly far ahead)
# is taken over, not obeyed: it would stop every fetch forever.
_TAKE = (
    "INSERT INTO asgi_refresh_leases (prefix, name, owner, expires_at) VALUES (?1, ?2, ?3, ?4) "
    "ON CONFLICT (prefix, name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at "
    "WHERE NOT (typeof(owner) = 'text' AND owner != excluded.owner "
    "AND typeof(expires_at) IN ('real', 'integer') AND expires_at > ?5 AND expires_at <= ?6)"
)
# A head: whether its counters are small enough to be counters, then the counters.
_SMALL = f"coalesce(length({{0}}), 0) <= {MAX_FIELD_BYTES}"
_HEAD = (
    f"{_SMALL.format('version')} AND {_SMALL.format('requested')} AND {_SMALL.format('answered')}, "
    "version, requested, answered"
)
# Names per statement of a poll or a release, within SQLite's oldest limit on
# parameters (999), and per transaction: another process's write waits for one
# chunk, not for a process's every lease.
CHUNK = 500
_MAX_NAMES = 100_000  # rows a subscriber reads per change: a flooded table must not fill memory
_LONGEST_LEASE = 86400.0  # a lease expiring later than this (or 100 ttls) is not ours: taken over
_LEASE_FACTOR = 100
_ENTRY_FIELDS = ("version", "data", "meta", "stored_at", "stored_by", "answered")


class SQLiteCoordinator(BlockingCoordinator):
    """Coordinates the worker processes of one host through an SQLite file.

    For each refresher, one process holds a lease and is the only one that
    fetches; it stores the value in the file, and the others notice by polling
    a change counter (one cheap read every ``poll_interval``) and load it. Uses
    only the standard library (SQLite 3.24 or later). The file must be on a local disk: SQLite's
    locking is not reliable over network file systems.

    Args:
        path: The database file; created with its tables if missing (its
            directory must exist).
        prefix: Namespace of the rows, so that several apps can share one file.
        poll_interval: Time between two checks for changes by a subscriber
            (seconds, or a duration like ``"200ms"``).
        timeout: How long any one operation may take, waiting for a lock
            included, before it fails with `CoordinatorUnavailable` (seconds, or
            a duration like ``"2s"``).
        max_bytes: The largest stored value (encoded) that is read or written:
            a bigger one is refused before it is read, so a damaged or hostile
            row cannot fill this process's memory. 32 MiB by default.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        prefix: str = DEFAULT_PREFIX,
        poll_interval: Duration = DEFAULT_POLL_INTERVAL,
        timeout: Duration = DEFAULT_TIMEOUT,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        if not isinstance(path, str | os.PathLike):
            raise OptionTypeError("", "path", f"path must be a str or a Path (got {type(path).__name__})")
        self.path = os.fspath(path)
        if not self.path or self.path == ":memory:" or self.path.startswith("file:"):
            raise OptionValueError(
                "", "path", f"path must be a file that the processes share (got {self.path!r})"
            )
        super().__init__(timeout=positive_duration("SQLiteCoordinator", "timeout", timeout), threads=1)
        self.prefix = check_prefix(prefix)
        self.poll_interval = positive_duration("SQLiteCoordinator", "poll_interval", poll_interval)
        self.max_bytes = check_max_bytes("SQLiteCoordinator", max_bytes)
        self._connection: sqlite3.Connection | None = None
        self._ready = False  # the pragmas are set and the tables exist
        self._lock = threading.Lock()  # one call at a time on the connection

    def __repr__(self) -> str:
        return f"SQLiteCoordinator({self.path!r}, prefix={self.prefix!r})"

    @property
    def backend(self) -> str:
        """``SQLite file <path>``."""
        return f"SQLite file {self.path}"

    def disconnect(self) -> None:
        """Close the file; an abandoned call may still hold it, and gives it up within the timeout."""
        if not self._lock.acquire(timeout=self.timeout):
            return  # pragma: no cover - a call stuck past its timeout; the connection dies with it
        try:
            if self._connection is not None:
                self._connection.close()
        finally:
            self._connection = None
            self._ready = False
            self._lock.release()

    # -- the connection, in a worker thread ----------------------------------------

    def describe(self, exc: BaseException) -> str | None:
        """sqlite3's and the file system's errors."""
        if isinstance(exc, sqlite3.Error | OSError):
            return f"{type(exc).__name__}: {exc}"
        return None

    async def _call(self, func: Callable[[sqlite3.Connection], T]) -> T:
        return await self.call(lambda: self._with_connection(func))

    def _with_connection(self, func: Callable[[sqlite3.Connection], T]) -> T:
        if not self._lock.acquire(timeout=self.timeout):
            raise TimeoutError("the connection is busy with a call that did not finish")
        try:
            connection = self._connect()
            try:
                return func(connection)
            except BaseException:
                if connection.in_transaction:
                    connection.rollback()
                raise
        finally:
            self._lock.release()

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            # Leave a little of the timeout for the error to come back as an error
            # ("database is locked") rather than as silence.
            self._connection = sqlite3.connect(
                self.path,
                timeout=self.timeout * 0.8,
                isolation_level=None,  # transactions are explicit
                check_same_thread=False,  # used from worker threads, one at a time
            )
        connection = self._connection
        if not self._ready:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    connection.execute(statement)
            connection.execute("COMMIT")
            self._ready = True
        return connection

    # -- operations ----------------------------------------------------------------

    async def acquire(self, name: str, ttl: float) -> bool:
        """Take or renew the lease on ``name`` for ``ttl`` seconds; False if another holds it."""
        check_name(name)
        positive_duration("SQLiteCoordinator", "ttl", ttl)
        owner = self.owner
        longest = max(ttl * _LEASE_FACTOR, _LONGEST_LEASE)

        def acquire(db: sqlite3.Connection) -> bool:
            db.execute("BEGIN IMMEDIATE")
            now = time.time()
            # A row that is not a lease we wrote (the wrong types, an expiry absurdly
            # far ahead) is taken over, not obeyed: it would stop every fetch forever.
            held = db.execute(
                "SELECT 1 FROM asgi_refresh_leases WHERE prefix = ? AND name = ? "
                "AND typeof(owner) = 'text' AND owner != ? "
                "AND typeof(expires_at) IN ('real', 'integer') AND expires_at > ? AND expires_at <= ?",
                (self.prefix, name, owner, now, now + longest),
            ).fetchone()
            if held is not None:
                db.execute("COMMIT")
                return False
            db.execute(
                "INSERT OR REPLACE INTO asgi_refresh_leases (prefix, name, owner, expires_at) "
                "VALUES (?, ?, ?, ?)",
                (self.prefix, name, owner, now + ttl),
            )
            db.execute("COMMIT")
            return True

        # Counted as held before the call: if shutdown abandons it, the lease it may
        # still take is given back at close, not left to expire.
        self.holds(name, True)
        held = await self._call(acquire)
        if not held:
            self.holds(name, False)
        return held

    async def release(self, name: str) -> None:
        """Give up the lease on ``name`` if we hold it."""
        await self.release_all([name])

    async def release_all(self, names: Sequence[str]) -> None:
        """Give up the leases on ``names`` that we hold: one statement per `CHUNK` names, one thread hop."""
        wanted = [check_name(name) for name in names]
        owner = self.owner

        def release(db: sqlite3.Connection) -> None:
            for chunk in _chunks(wanted):
                db.execute(
                    "DELETE FROM asgi_refresh_leases WHERE prefix = ? AND owner = ? "
                    f"AND name IN ({', '.join('?' * len(chunk))})",
                    (self.prefix, owner, *chunk),
                )

        if wanted:
            await self._call(release)
        for name in wanted:
            self.holds(name, False)

    async def poll(self, names: Sequence[str], ttl: float) -> dict[str, Poll]:
        """Renew or take the lease of every name and read every head: one transaction per `CHUNK` names.

        All of it in one worker thread: a thousand idle refreshers cost two short
        transactions per poll, not two thousand calls. A malformed head is the
        `BadRecord` of its name only.
        """
        wanted = list(dict.fromkeys(check_name(name) for name in names))  # one answer each, in order
        positive_duration("SQLiteCoordinator", "ttl", ttl)
        owner, prefix = self.owner, self.prefix
        longest = max(ttl * _LEASE_FACTOR, _LONGEST_LEASE)

        def poll(db: sqlite3.Connection) -> list[tuple[float, set[str], dict[str, Any]]]:
            answers = []
            for chunk in _chunks(wanted):
                db.execute("BEGIN IMMEDIATE")
                now = time.time()
                db.executemany(
                    _TAKE, [(prefix, name, owner, now + ttl, now, now + longest) for name in chunk]
                )
                marks = ", ".join("?" * len(chunk))
                mine = "FROM asgi_refresh_leases WHERE prefix = ? AND owner = ?"
                held = {
                    name
                    for (name,) in db.execute(
                        f"SELECT name {mine} AND name IN ({marks})", (prefix, owner, *chunk)
                    )
                }
                entries = f"FROM asgi_refresh_entries WHERE prefix = ? AND name IN ({marks})"
                heads = {
                    row[0]: row[1:] for row in db.execute(f"SELECT name, {_HEAD} {entries}", (prefix, *chunk))
                }
                db.execute("COMMIT")
                answers.append((time.time(), held, heads))
            return answers

        # Counted as held before the call, as in `acquire`.
        for name in wanted:
            self.holds(name, True)
        answers = await self._call(poll) if wanted else []
        polled: dict[str, Poll] = {}
        for chunk, (now, held, heads) in zip(_chunks(wanted), answers, strict=True):
            for name in chunk:
                self.holds(name, name in held)
                polled[name] = Poll(name in held, _head(heads.get(name), now))
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
        owner = self.owner
        blob = bytes(data)
        if len(blob) > self.max_bytes:
            raise ValueError(f"{self!r}: the value is {len(blob)} bytes, over max_bytes ({self.max_bytes})")
        number = min(max(int(answered), 0), MAX_COUNT)

        def store(db: sqlite3.Connection) -> int | None:
            db.execute("BEGIN IMMEDIATE")
            now = time.time()
            holder = db.execute(
                "SELECT 1 FROM asgi_refresh_leases "
                "WHERE prefix = ? AND name = ? AND owner = ? AND expires_at > ?",
                (self.prefix, name, owner, now),
            ).fetchone()
            if holder is None:
                db.execute("COMMIT")
                return None
            db.execute(_STORE, (self.prefix, name, blob, meta_text, now, owner, number, number))
            row = db.execute(  # not RETURNING: that needs SQLite 3.35, upserts only 3.24
                "SELECT version FROM asgi_refresh_entries WHERE prefix = ? AND name = ?", (self.prefix, name)
            ).fetchone()
            db.execute(_BUMP, (self.prefix,))
            db.execute("COMMIT")
            version: int = row[0]
            return version

        version = await self._call(store)
        if version is None:
            self.holds(name, False)
        return version

    async def load(self, name: str) -> Stored | None:
        """The stored value of ``name``, or None; `BadRecord` if it is malformed or too big."""
        check_name(name)
        where = "FROM asgi_refresh_entries WHERE prefix = ? AND name = ?"
        limits = {"data": self.max_bytes, "meta": MAX_META_BYTES, "stored_by": MAX_OWNER_CHARS * 4}

        def load(db: sqlite3.Connection) -> tuple[float, Any, Any]:
            db.execute("BEGIN")  # one snapshot for the sizes and the values
            try:
                sizes = db.execute(
                    f"SELECT {', '.join(f'length({field})' for field in _ENTRY_FIELDS)} {where}",
                    (self.prefix, name),
                ).fetchone()
                if sizes is None:
                    return time.time(), None, None
                # length() counts the bytes of a blob and the characters of text.
                for field, size in zip(_ENTRY_FIELDS, sizes, strict=True):
                    if size is not None and size > limits.get(field, MAX_FIELD_BYTES):
                        return time.time(), (field, size), None
                row = db.execute(f"SELECT {', '.join(_ENTRY_FIELDS)} {where}", (self.prefix, name)).fetchone()
                return time.time(), None, row
            finally:
                db.execute("COMMIT")

        now, too_big, row = await self._call(load)
        if too_big is not None:
            field, size = too_big
            hint = "; raise max_bytes if that is right" if field == "data" else ""
            raise BadRecord(f"{field} is {size} bytes (at most {limits.get(field, MAX_FIELD_BYTES)}){hint}")
        if row is None:
            return None
        return parse_stored(dict(zip(_ENTRY_FIELDS, row, strict=True)), max_bytes=self.max_bytes, time=now)

    async def head(self, name: str) -> Head:
        """Version and refresh-now counters of ``name`` (one primary-key read); `BadRecord` if malformed."""
        check_name(name)

        def read(db: sqlite3.Connection) -> tuple[float, Any]:
            row = db.execute(
                f"SELECT {_HEAD} FROM asgi_refresh_entries WHERE prefix = ? AND name = ?", (self.prefix, name)
            ).fetchone()
            return time.time(), row

        now, row = await self._call(read)
        head = _head(row, now)
        if isinstance(head, BadRecord):
            raise head
        return head

    async def request_refresh(self, name: str) -> int:
        """Count a refresh-now request for ``name``; its number."""
        check_name(name)

        def request(db: sqlite3.Connection) -> int:
            db.execute("BEGIN IMMEDIATE")
            db.execute(_REQUEST, (self.prefix, name))
            row = db.execute(
                "SELECT requested FROM asgi_refresh_entries WHERE prefix = ? AND name = ?",
                (self.prefix, name),
            ).fetchone()
            db.execute(_BUMP, (self.prefix,))
            db.execute("COMMIT")
            number: int = row[0]
            return number

        return await self._call(request)

    # -- changes -------------------------------------------------------------------

    def _snapshot(self, db: sqlite3.Connection) -> tuple[int, dict[str, tuple[int, int]]]:
        """The change counter and every name's (version, requested), in one read transaction."""
        db.execute("BEGIN")
        try:
            seq = self._seq(db)
            names = {
                name: (version, requested)
                for name, version, requested in db.execute(_NAMES, (self.prefix, _MAX_NAMES))
                if name.isidentifier()
            }
        finally:
            db.execute("COMMIT")
        return seq, names

    def _seq(self, db: sqlite3.Connection) -> int:
        row = db.execute(_SEQ, (self.prefix,)).fetchone()
        return row[0] if row else 0

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[Change]]:
        """Changes under the prefix from now on, found by polling every ``poll_interval``."""
        seq, names = await self._call(self._snapshot)
        yield _Poller(self, seq, names)


def _chunks(names: list[str]) -> list[list[str]]:
    return [names[start : start + CHUNK] for start in range(0, len(names), CHUNK)]


def _head(row: Sequence[Any] | None, now: float) -> Head | BadRecord:
    """A head from its row (whether its counters are small, then the counters), or its `BadRecord`."""
    if row is None:
        return Head(None, 0, 0, time=now)
    small, version, requested, answered = row
    if not small:
        return BadRecord("a counter is bigger than any number")
    try:
        return parse_head(version, requested, answered, time=now)
    except BadRecord as exc:
        return exc


class _Poller:
    """The changes of one subscription: a cheap read per poll, a full read on a change."""

    def __init__(self, owner: SQLiteCoordinator, seq: int, names: dict[str, tuple[int, int]]) -> None:
        self._coordinator = owner
        self._seq = seq
        self._names = names
        self._pending: deque[Change] = deque()

    def __aiter__(self) -> _Poller:
        return self

    async def __anext__(self) -> Change:
        coordinator = self._coordinator
        while not self._pending:
            await anyio.sleep(coordinator.poll_interval)
            if await coordinator._call(coordinator._seq) == self._seq:
                continue
            self._seq, names = await coordinator._call(coordinator._snapshot)
            for name, (version, requested) in names.items():
                old_version, old_requested = self._names.get(name, (0, 0))
                if version != old_version and version:
                    # A damaged version reads -1: still a change, which the reader's load reports.
                    self._pending.append(Change("stored", name, version))
                if requested != old_requested and requested > 0:
                    self._pending.append(Change("refresh_requested", name, min(requested, MAX_COUNT)))
            self._names = names
        return self._pending.popleft()


if TYPE_CHECKING:
    _check: type[Coordinator] = SQLiteCoordinator
