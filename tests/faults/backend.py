"""A poisoned coordination backend: malformed records written behind the coordinators' backs.

Whoever can write to the Redis server or the SQLite file can write anything: a
counter that is not a number, a field that is not UTF-8, ``meta`` that is not a
JSON object, a value of the wrong type or far too big, a key of the wrong type, a
lease that never expires. `RedisPoisoner` and `SQLitePoisoner` write such things
with the backend's own client, field by field, and `POISONS` lists the cases every
coordinator must survive (each as a failed load of that one refresher).

`Misbehaving` stands for a coordinator of your own with bugs: it wraps a real one
and raises what it should not, or returns things that are not records.

Usage::

    poisoner = SQLitePoisoner(path, prefix)  # or RedisPoisoner(url, prefix)
    poisoner.apply("names", POISONS["version is a fraction"])
    coordinator = Misbehaving(SQLiteCoordinator(path), "returns junk")
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from asgi_refresh._cluster.base import Coordinator

Backend = Literal["redis", "sqlite"]

DELETE = object()
"""A field value that stands for "remove the field" (or NULL it, in SQLite)."""


@dataclass(frozen=True)
class Poison:
    """One way to damage a stored entry.

    Attributes:
        field: The entry's field to overwrite (``version``, ``data``, ``meta``...),
            or ``"meta:<key>"`` to change one key of the stored meta (keeping the
            rest, fingerprint included), or ``"type"`` to replace the entry with a
            key of another type (Redis only).
        redis: What to write in Redis (bytes, or `DELETE`); None: not a Redis case.
        sqlite: What to write in SQLite (any SQLite value, or `DELETE`); None: not
            an SQLite case.
    """

    field: str
    redis: Any = None
    sqlite: Any = None

    def applies_to(self, backend: Backend) -> bool:
        """Whether this poison has a form for ``backend``."""
        return (self.redis if backend == "redis" else self.sqlite) is not None


def _deep(levels: int) -> bytes:
    return b'{"a":' + b"[" * levels + b"]" * levels + b"}"


POISONS: dict[str, Poison] = {
    # The counters.
    "version is a fraction": Poison("version", b"1.5", 1.5),
    "version is negative": Poison("version", b"-1", -1),
    "version is text": Poison("version", b"abc", "abc"),
    "version has 30 digits": Poison("version", b"9" * 30, "9" * 30),
    # Digits Redis's HINCRBY refuses (SQLite's integer affinity reads "007" as 7).
    "version has a leading zero": Poison("version", b"007"),
    "requested has a leading zero": Poison("requested", b"00"),
    "version is missing": Poison("version", DELETE, None),
    "answered is text": Poison("answered", b"soon", "soon"),
    "answered is a fraction": Poison("answered", b"2.5", 2.5),
    "requested is text": Poison("requested", b"x", "x"),
    "requested is huge": Poison("requested", b"1" * 100_000, "1" * 100_000),
    # The time it was stored.
    "stored_at is text": Poison("stored_at", b"soon", "soon"),
    "stored_at is NaN": Poison("stored_at", b"nan", "nan"),
    "stored_at is infinite": Poison("stored_at", b"inf", float("inf")),
    "stored_at is 1e300": Poison("stored_at", b"1e300", 1e300),
    "stored_at is missing": Poison("stored_at", DELETE, DELETE),
    # Who stored it.
    "stored_by is not UTF-8": Poison("stored_by", b"\xff\xfe host", b"\xff\xfe host"),
    "stored_by holds an ANSI escape": Poison("stored_by", b"host\x1b[31m", "host\x1b[31m"),
    "stored_by is huge": Poison("stored_by", b"h" * 100_000, "h" * 100_000),
    # The metadata.
    "meta is a list": Poison("meta", b"[1]", "[1]"),
    "meta is not JSON": Poison("meta", b"not json", "not json"),
    "meta is not UTF-8": Poison("meta", b"\xff{}", b"\xff{}"),
    "meta holds NaN": Poison("meta", b'{"fetched_at": NaN}', '{"fetched_at": NaN}'),
    "meta holds 1e400": Poison("meta", b'{"fetched_at": 1e400}', '{"fetched_at": 1e400}'),
    "meta nests 10,000 deep": Poison("meta", _deep(10_000), _deep(10_000).decode()),
    "meta is huge": Poison("meta", b'{"a":"' + b"x" * 200_000 + b'"}', '{"a":"' + "x" * 200_000 + '"}'),
    "meta is missing": Poison("meta", DELETE, DELETE),
    "meta's fetch time is text": Poison("meta:fetched_at", "soon", "soon"),
    "meta's fetch time is 1e300": Poison("meta:fetched_at", 1e300, 1e300),
    "meta's fetch time is negative": Poison("meta:fetched_at", -5.0, -5.0),
    "meta's lifetime is 1e300": Poison("meta:lifetime", 1e300, 1e300),
    "meta's leeway is negative": Poison("meta:leeway", -1.0, -1.0),
    "meta lacks its fetch times": Poison("meta:started", DELETE, DELETE),
    "meta's fingerprint is another app's": Poison("meta:source", "0123456789abcdef", "0123456789abcdef"),
    # The value itself.
    "data is text": Poison("data", None, '{"version": 99}'),
    "data is not JSON": Poison("data", b"\xff not json", b"\xff not json"),
    "data is missing": Poison("data", DELETE, None),
    # The key itself.
    "the entry is a list": Poison("type", b"list", None),
    "the entry is a string": Poison("type", b"string", None),
}
"""Every malformed record a coordinator must survive, by what is wrong with it."""


class Poisoner(Protocol):
    """Writes damaged records under one prefix of one backend."""

    backend: Backend

    def apply(self, name: str, poison: Poison) -> None:
        """Damage ``name``'s entry as ``poison`` says."""

    def set_lease(self, name: str, owner: Any, expires_in: float | None) -> None:
        """Write a lease for ``name``: ``expires_in`` None for one that never expires."""


class RedisPoisoner:
    """Damages the entries of one prefix on a Redis server, with redis-py's own client."""

    backend: Backend = "redis"

    def __init__(self, url: str, prefix: str) -> None:
        import redis  # the test extra has it

        self.client = redis.Redis.from_url(url)
        self.prefix = prefix

    def entry(self, name: str) -> str:
        return f"{self.prefix}:entry:{name}"

    def apply(self, name: str, poison: Poison) -> None:
        key = self.entry(name)
        if poison.field == "type":
            self.client.delete(key)
            if poison.redis == b"list":
                self.client.rpush(key, b"x")
            else:
                self.client.set(key, b"x")
            return
        if poison.field.startswith("meta:"):
            raw = self.client.hget(key, "meta")
            self.client.hset(key, "meta", _with_meta_key(raw, poison.field[5:], poison.redis))
            return
        if poison.redis is DELETE:
            self.client.hdel(key, poison.field)
        else:
            self.client.hset(key, poison.field, poison.redis)

    def set_lease(self, name: str, owner: Any, expires_in: float | None) -> None:
        key = f"{self.prefix}:lease:{name}"
        self.client.delete(key)
        if owner == "hash":  # a lease key of the wrong type
            self.client.hset(key, "owner", "x")
        elif expires_in is None:
            self.client.set(key, owner)
        else:
            self.client.set(key, owner, px=max(1, int(expires_in * 1000)))

    def publish(self, message: bytes) -> None:
        """Send anything on the coordinators' channel."""
        self.client.publish(f"{self.prefix}:changes", message)

    def close(self) -> None:
        self.client.close()


class SQLitePoisoner:
    """Damages the rows of one prefix in an SQLite file, with its own connection."""

    backend: Backend = "sqlite"

    def __init__(self, path: Path, prefix: str) -> None:
        self.path = path
        self.prefix = prefix

    def _run(self, action: Callable[[sqlite3.Connection], object]) -> None:
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            action(db)
        finally:
            db.close()

    def apply(self, name: str, poison: Poison) -> None:
        def write(db: sqlite3.Connection) -> None:
            where, args = "WHERE prefix = ? AND name = ?", (self.prefix, name)
            if poison.field.startswith("meta:"):
                (raw,) = db.execute(f"SELECT meta FROM asgi_refresh_entries {where}", args).fetchone()
                value: Any = _with_meta_key(raw, poison.field[5:], poison.sqlite).decode()
                field = "meta"
            else:
                field, value = poison.field, None if poison.sqlite is DELETE else poison.sqlite
            db.execute(f"UPDATE asgi_refresh_entries SET {field} = ? {where}", (value, *args))

        self._run(write)

    def set_lease(self, name: str, owner: Any, expires_in: float | None) -> None:
        import time

        expires = 1e300 if expires_in is None else time.time() + expires_in
        self._run(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO asgi_refresh_leases (prefix, name, owner, expires_at) VALUES (?, ?, ?, ?)",
                (self.prefix, name, owner, expires),
            )
        )

    def set_seq(self, value: Any) -> None:
        """Damage the change counter that subscribers poll."""
        self._run(
            lambda db: db.execute(
                "UPDATE asgi_refresh_changes SET seq = ? WHERE prefix = ?", (value, self.prefix)
            )
        )

    def close(self) -> None:
        pass


def _with_meta_key(raw: bytes | str | None, key: str, value: Any) -> bytes:
    """The stored meta JSON with ``key`` set to ``value`` (or removed, for `DELETE`)."""
    meta = json.loads(raw or "{}")
    if value is DELETE:
        meta.pop(key, None)
    else:
        meta[key] = value
    return json.dumps(meta).encode()


Misbehaviour = Literal[
    "fine", "raises", "reads raise", "stores raise", "returns junk", "wrong types", "no clock"
]


class Misbehaving(Coordinator):
    """A coordinator of your own with bugs: wraps a real one and misbehaves as `mode` says.

    - ``"raises"``: every operation raises ``KeyError`` (not `CoordinatorUnavailable`);
    - ``"reads raise"``: ``load`` and ``head`` raise ``ValueError`` (a parser's bug);
    - ``"stores raise"``: ``store`` raises ``ValueError`` (a limit of the backend);
    - ``"returns junk"``: ``load`` and ``head`` return things that are not records;
    - ``"wrong types"``: they return records whose fields have the wrong types;
    - ``"no clock"``: they do not report the backend's time (``time`` is None);
    - ``"fine"``: it behaves.
    """

    def __init__(self, inner: Any, mode: Misbehaviour = "fine") -> None:
        self.inner = inner
        self.mode = mode

    @property
    def owner(self) -> str:
        owner: str = self.inner.owner
        return owner

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def __aenter__(self) -> Misbehaving:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _raise(self) -> None:
        if self.mode == "raises":
            raise KeyError("a bug in the backend")

    async def acquire(self, name: str, ttl: float) -> bool:
        self._raise()
        held: bool = await self.inner.acquire(name, ttl)
        return held

    async def release(self, name: str) -> None:
        self._raise()
        await self.inner.release(name)

    async def store(self, name: str, data: bytes, meta: Any, *, answered: int = 0) -> int | None:
        self._raise()
        if self.mode == "stores raise":
            raise ValueError("the value is too big for this backend")
        version: int | None = await self.inner.store(name, data, meta, answered=answered)
        return version

    async def load(self, name: str) -> Any:
        self._raise()
        if self.mode == "reads raise":
            raise ValueError("invalid literal for int() with base 10: b'1.5'")
        stored = await self.inner.load(name)
        if stored is None:
            return None
        if self.mode == "returns junk":
            return {"version": stored.version, "data": stored.data}
        if self.mode == "wrong types":
            return dataclasses.replace(stored, version=str(stored.version), stored_at=float("nan"))
        if self.mode == "no clock":
            return dataclasses.replace(stored, time=None)
        return stored

    async def head(self, name: str) -> Any:
        self._raise()
        if self.mode == "reads raise":
            raise ValueError("invalid literal for int() with base 10: b'1.5'")
        head = await self.inner.head(name)
        if self.mode == "returns junk":
            return "a head"
        if self.mode == "wrong types":
            return head._replace(requested="1")
        if self.mode == "no clock":
            return head._replace(time=None)
        return head

    async def request_refresh(self, name: str) -> int:
        self._raise()
        number: int = await self.inner.request_refresh(name)
        return number

    def subscribe(self) -> Any:
        self._raise()
        return self.inner.subscribe()
