"""Coordination through a Redis server: leases with ``SET NX PX``, changes by pub/sub.

Keys, for prefix ``p`` and refresher ``name``:

- ``p:lease:name`` — a string, the holder's owner id, expiring after the lease ttl;
- ``p:entry:name`` — a hash: ``version``, ``data``, ``meta`` (JSON), ``stored_at``,
  ``stored_by``, ``requested``, ``answered``;
- ``p:changes`` — the pub/sub channel, messages ``stored <name> <version>`` and
  ``refresh_requested <name> <number>``.

Everything that must be atomic (renew, release, a fenced store, a refresh request
and its message) is one small Lua script.

redis-py's asyncio client runs on asyncio only, and this package also runs on
trio; so this uses redis-py's blocking client in worker threads, each call bounded
by the socket timeouts and by ``timeout``. Coordination calls happen per fetch and
per lease renewal, never per request, so a thread hop costs nothing that matters.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.from_thread
import anyio.lowlevel

from ._coordination import (
    DEFAULT_PREFIX,
    DEFAULT_TIMEOUT,
    Change,
    ChangeStream,
    Coordinator,
    CoordinatorUnavailable,
    Head,
    MetaValue,
    Stored,
    call_blocking,
    check_name,
    check_prefix,
    decode_meta,
    encode_meta,
    new_owner,
)
from ._duration import Duration, positive_duration

if TYPE_CHECKING:
    import redis

_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: lease, entry. ARGV: owner, data, meta, stored_at, answered, channel, name.
_STORE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return false
end
local version = redis.call('HINCRBY', KEYS[2], 'version', 1)
local answered = tonumber(redis.call('HGET', KEYS[2], 'answered') or '0')
if tonumber(ARGV[5]) > answered then
  answered = tonumber(ARGV[5])
end
redis.call('HSET', KEYS[2], 'data', ARGV[2], 'meta', ARGV[3], 'stored_at', ARGV[4],
           'stored_by', ARGV[1], 'answered', answered)
redis.call('PUBLISH', ARGV[6], 'stored ' .. ARGV[7] .. ' ' .. version)
return version
"""

# KEYS: entry. ARGV: channel, name.
_REQUEST = """
local number = redis.call('HINCRBY', KEYS[1], 'requested', 1)
redis.call('PUBLISH', ARGV[1], 'refresh_requested ' .. ARGV[2] .. ' ' .. number)
return number
"""

_LISTEN_WAIT = 0.25  # how long one blocking read of the subscription waits before checking for close
_HEALTH_CHECK_EVERY = 5  # seconds: an idle subscription pings, so a dead server is noticed
_RELEASE_ON_CLOSE = 1.0  # at most this long to give the leases back at close
_SOCKET_SHARE = 0.8  # of the timeout, for the socket timeouts


def _import_redis() -> Any:
    try:
        import redis  # an optional dependency: imported when used
    except ImportError as exc:
        raise ImportError("RedisCoordinator needs redis-py: pip install 'asgi-refresh[redis]'") from exc
    return redis


def _safe_url(url: str) -> str:
    """``url`` without its password, for messages and repr."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + host))


class RedisCoordinator:
    """Coordinates the processes of a cluster through one Redis server.

    For each refresher, one process holds a lease and is the only one that
    fetches; it stores the value in Redis, and the others load it. Needs the
    ``redis`` extra: ``pip install 'asgi-refresh[redis]'``. Works on asyncio and trio.

    Args:
        url: The server, as redis-py understands it: ``redis://host:6379/0``,
            ``rediss://`` for TLS, ``unix:///path.sock``.
        prefix: Namespace of every key and of the channel, so that several apps
            can share one Redis.
        timeout: How long any one operation may take, connecting included,
            before it fails with `CoordinatorUnavailable` (seconds, or a
            duration like ``"2s"``).
    """

    def __init__(
        self, url: str, *, prefix: str = DEFAULT_PREFIX, timeout: Duration = DEFAULT_TIMEOUT
    ) -> None:
        self._redis = _import_redis()
        if not isinstance(url, str) or not url:
            raise ValueError(f"url must be a Redis URL such as 'redis://localhost:6379/0' (got {url!r})")
        self.url = url
        self.prefix = check_prefix(prefix)
        self.timeout = positive_duration("RedisCoordinator", "timeout", timeout)
        self._owner = new_owner()
        self._client: redis.Redis | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        self._held: set[str] = set()
        self._scripts: dict[str, Any] = {}
        self._channel = f"{self.prefix}:changes"

    def __repr__(self) -> str:
        return f"RedisCoordinator({_safe_url(self.url)!r}, prefix={self.prefix!r})"

    @property
    def owner(self) -> str:
        """Who this process is to the others, unique per process and per open."""
        return self._owner

    # -- lifecycle -----------------------------------------------------------------

    async def open(self) -> None:
        """Make the client (no connection yet: Redis may be down at startup)."""
        if self._client is not None:
            raise RuntimeError(f"{self!r} is already open: one coordinator serves one lifespan at a time")
        self._owner = new_owner()
        self._held = set()
        self._limiter = anyio.CapacityLimiter(8)
        try:
            client = self._redis.Redis.from_url(
                self.url,
                # A little below the timeout: a dead server then reports as itself.
                socket_timeout=self.timeout * _SOCKET_SHARE,
                socket_connect_timeout=self.timeout * _SOCKET_SHARE,
                retry=self._redis.retry.Retry(self._redis.backoff.NoBackoff(), 0),
                health_check_interval=_HEALTH_CHECK_EVERY,
            )
        except ValueError as exc:
            raise ValueError(f"{self!r}: bad url: {exc}") from None
        self._client = client
        self._scripts = {
            "acquire": client.register_script(_ACQUIRE),
            "release": client.register_script(_RELEASE),
            "store": client.register_script(_STORE),
            "request": client.register_script(_REQUEST),
        }

    async def close(self) -> None:
        """Give back the leases still held (best effort) and close the connections."""
        client = self._client
        if client is None:
            return
        try:
            # Bounded as a whole, and given up at the first failure: a backend that
            # is down must not hold up shutdown once per lease.
            with anyio.move_on_after(_RELEASE_ON_CLOSE, shield=True):
                for name in sorted(self._held):
                    try:
                        await self.release(name)
                    except CoordinatorUnavailable:
                        break
        finally:
            self._client = None
            self._held = set()
            # Closing only drops sockets; a thread still talking to a dead server
            # ends by its socket timeout.
            client.close()

    async def __aenter__(self) -> RedisCoordinator:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- operations ----------------------------------------------------------------

    def _key(self, kind: Literal["lease", "entry"], name: str) -> str:
        return f"{self.prefix}:{kind}:{check_name(name)}"

    def _open_client(self) -> redis.Redis:
        if self._client is None:
            raise RuntimeError(f"{self!r} is not open: use `async with` or call open() first")
        return self._client

    def _describe(self, exc: BaseException) -> str | None:
        if isinstance(exc, self._redis.RedisError | OSError):
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return None

    async def _call(self, func: Callable[[], Any]) -> Any:
        assert self._limiter is not None
        return await call_blocking(
            func,
            timeout=self.timeout,
            limiter=self._limiter,
            describe=self._describe,
            backend=f"Redis at {_safe_url(self.url)}",
        )

    async def acquire(self, name: str, ttl: float) -> bool:
        """Take or renew the lease on ``name`` for ``ttl`` seconds; False if another holds it."""
        self._open_client()
        lease = self._key("lease", name)
        millis = max(1, math.ceil(positive_duration("RedisCoordinator", "ttl", ttl) * 1000))
        script = self._scripts["acquire"]
        # Counted as held before the call: if shutdown abandons it, the lease it may
        # still take is given back at close, not left to expire.
        self._held.add(name)
        held = bool(await self._call(lambda: script(keys=[lease], args=[self._owner, millis])))
        if not held:
            self._held.discard(name)
        return held

    async def release(self, name: str) -> None:
        """Give up the lease on ``name`` if we hold it."""
        self._open_client()
        lease = self._key("lease", name)
        script = self._scripts["release"]
        await self._call(lambda: script(keys=[lease], args=[self._owner]))
        self._held.discard(name)

    async def store(
        self, name: str, data: bytes, meta: Mapping[str, MetaValue], *, answered: int = 0
    ) -> int | None:
        """Store ``data`` as the new version of ``name`` if we hold its lease; None if not."""
        self._open_client()
        keys = [self._key("lease", name), self._key("entry", name)]
        meta_text = encode_meta(meta)
        wall = time.time()
        script = self._scripts["store"]
        args = [self._owner, bytes(data), meta_text, repr(wall), int(answered), self._channel, name]
        version = await self._call(lambda: script(keys=keys, args=args))
        if version is None:
            self._held.discard(name)
            return None
        return int(version)

    async def load(self, name: str) -> Stored | None:
        """The stored value of ``name``, or None."""
        client = self._open_client()
        entry = self._key("entry", name)
        fields = ("version", "data", "meta", "stored_at", "stored_by", "answered")
        values = await self._call(lambda: client.hmget(entry, fields))
        version, data, meta, stored_at, stored_by, answered = values
        if data is None or version is None:
            return None
        return Stored(
            version=int(version),
            data=bytes(data),
            meta=decode_meta(meta),
            stored_at=float(stored_at or 0.0),
            stored_by=(stored_by or b"").decode(),
            answered=int(answered or 0),
        )

    async def head(self, name: str) -> Head:
        """Version and refresh-now counters of ``name`` (one HMGET)."""
        client = self._open_client()
        entry = self._key("entry", name)
        version, requested, answered = await self._call(
            lambda: client.hmget(entry, ("version", "requested", "answered"))
        )
        return Head(
            version=int(version) if version is not None else None,
            requested=int(requested or 0),
            answered=int(answered or 0),
        )

    async def request_refresh(self, name: str) -> int:
        """Count a refresh-now request for ``name`` and tell the lease holder; its number."""
        self._open_client()
        entry = self._key("entry", name)
        script = self._scripts["request"]
        return int(await self._call(lambda: script(keys=[entry], args=[self._channel, name])))

    # -- changes -------------------------------------------------------------------

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[Change]]:
        """Changes under the prefix from now on, read from the pub/sub channel."""
        client = self._open_client()
        pubsub = client.pubsub()  # type: ignore[no-untyped-call]

        def subscribed() -> None:
            pubsub.subscribe(self._channel)
            # Wait for the confirmation: only then is a change published later sure to arrive.
            while True:
                message = pubsub.get_message(timeout=self.timeout)
                if message is None:
                    raise self._redis.TimeoutError("no subscription confirmation")
                if message["type"] == "subscribe":
                    return

        try:
            await self._call(subscribed)
        except BaseException:
            _close_quietly(pubsub)
            raise
        send, receive = anyio.create_memory_object_stream[Change | CoordinatorUnavailable](math.inf)
        stop = threading.Event()
        listener = threading.Thread(
            target=self._listen,
            args=(pubsub, stop, send, anyio.lowlevel.current_token()),
            name=f"asgi_refresh:redis:{self.prefix}",
            daemon=True,  # blocked on a dead server, it must not keep the process alive
        )
        listener.start()
        try:
            with send, receive:  # closed here, on the event loop: the thread may outlive it
                yield ChangeStream(receive)
        finally:
            stop.set()  # the thread closes the subscription itself, within _LISTEN_WAIT

    def _listen(self, pubsub: Any, stop: threading.Event, send: Any, token: Any) -> None:
        """In its own thread: read the channel until ``stop``, handing changes to the loop."""

        def deliver(item: Change | CoordinatorUnavailable) -> None:
            # The event loop may be gone, or the reader too: then nobody waits.
            with contextlib.suppress(Exception):
                anyio.from_thread.run_sync(send.send_nowait, item, token=token)

        try:
            while not stop.is_set():
                message = pubsub.get_message(ignore_subscribe_messages=True, timeout=_LISTEN_WAIT)
                if message is not None and message["type"] == "message":
                    change = _parse_change(message["data"])
                    if change is not None:
                        deliver(change)
        except Exception as exc:
            if not stop.is_set():
                lost = CoordinatorUnavailable(
                    f"Redis at {_safe_url(self.url)}: subscription lost: {self._describe(exc) or exc!r}"
                )
                lost.__cause__ = exc
                deliver(lost)
        finally:
            _close_quietly(pubsub)


def _parse_change(data: bytes) -> Change | None:
    try:
        kind, name, number = data.decode().split(" ")
        if kind == "stored":
            return Change("stored", name, int(number))
        if kind == "refresh_requested":
            return Change("refresh_requested", name, int(number))
    except ValueError:
        pass
    return None  # not ours: someone else published on the channel


def _close_quietly(pubsub: Any) -> None:
    with contextlib.suppress(Exception):
        pubsub.close()


if TYPE_CHECKING:
    _check: type[Coordinator] = RedisCoordinator
