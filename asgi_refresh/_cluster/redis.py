"""Coordination through a Redis server: leases with ``SET NX PX``, changes by pub/sub.

Keys, for prefix ``p`` and refresher ``name``:

- ``p:lease:name`` — a string, the holder's owner id, expiring after the lease ttl;
- ``p:entry:name`` — a hash: ``version``, ``data``, ``meta`` (JSON), ``stored_at``,
  ``stored_by``, ``requested``, ``answered``;
- ``p:changes`` — the pub/sub channel, messages ``stored <name> <version>`` and
  ``refresh_requested <name> <number>``.

Everything that must be atomic (renew, release, a fenced store, a refresh request
and its message) is one small Lua script; so is a poll of up to `CHUNK` leases and
heads.

redis-py's asyncio client runs on asyncio only, and this package also runs on
trio; so this uses redis-py's blocking client in worker threads, each call bounded
by the socket timeouts and by ``timeout``. Coordination calls happen per fetch and
once per lease poll for all the leases, never per request, so a thread hop costs
nothing that matters.
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal, NoReturn
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

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
    MAX_FIELD_BYTES,
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
from asgi_refresh._option_error import OptionValueError
from asgi_refresh._text import printable

if TYPE_CHECKING:
    import redis

# Every script checks what it reads: the keys hold whatever anyone wrote, and a
# script that fails on a damaged key would make the backend look down for every
# name. A key of the wrong type, a counter that is not a counter, a lease without
# an expiry (or with an absurd one): each is replaced, not obeyed.
_VALID = """
local function counter(value)
  return type(value) == 'string' and string.len(value) <= 15
    and (value == '0' or string.match(value, '^[1-9][0-9]*$') ~= nil)
end
local function kind(key)
  return redis.call('TYPE', key)['ok']
end
"""

# take(lease, owner, ttl in ms, the longest lease any process takes in ms): 1 if
# we hold the lease now (taken or renewed), 0 if another owner holds it.
_TAKE = """
local function take(lease, owner, millis, longest)
  if kind(lease) ~= 'string' then
    redis.call('DEL', lease)
  end
  local holder = redis.call('GET', lease)
  if holder == owner then
    redis.call('PEXPIRE', lease, millis)
    return 1
  end
  if holder then
    local left = redis.call('PTTL', lease)
    if left >= 0 and left <= longest then
      return 0
    end
  end
  redis.call('SET', lease, owner, 'PX', millis)
  return 1
end
"""

# KEYS: lease. ARGV: owner, ttl in ms, the longest lease any process takes (ms).
_ACQUIRE = _VALID + _TAKE + "return take(KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3]))\n"

# KEYS: the leases to give back. ARGV: owner. Returns how many were ours.
_RELEASE = (
    _VALID
    + """
local released = 0
for i = 1, #KEYS do
  if kind(KEYS[i]) == 'string' and redis.call('GET', KEYS[i]) == ARGV[1] then
    released = released + redis.call('DEL', KEYS[i])
  end
end
return released
"""
)

# KEYS: the lease and the entry of each name, in turn. ARGV: owner, ttl in ms, the
# longest lease (ms), the largest counter (bytes). Every lease is renewed or taken
# and every head read, in one script: what a process's lease loop does each cycle.
# Returns {seconds, microseconds} of the server's clock, then per name {held, status,
# ...} with the statuses of _READ: 'none', 'type' and the key's type, 'big' with the
# field and its size, or 'ok' with version, requested and answered (false if missing).
_POLL = (
    _VALID
    + _TAKE
    + """
if redis.replicate_commands then
  redis.replicate_commands()
end
local owner, millis, longest, limit = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local fields = {'version', 'requested', 'answered'}
local function head(entry)
  local what = kind(entry)
  if what == 'none' then
    return {'none'}
  end
  if what ~= 'hash' then
    return {'type', what}
  end
  for _, field in ipairs(fields) do
    local size = redis.call('HSTRLEN', entry, field)
    if size > limit then
      return {'big', field, size}
    end
  end
  local values = redis.call('HMGET', entry, 'version', 'requested', 'answered')
  return {'ok', values[1], values[2], values[3]}
end
local reply = {}
for i = 1, #KEYS, 2 do
  local answer = head(KEYS[i + 1])
  table.insert(answer, 1, take(KEYS[i], owner, millis, longest))
  reply[#reply + 1] = answer
end
local now = redis.call('TIME')
table.insert(reply, 1, now[2])
table.insert(reply, 1, now[1])
return reply
"""
)

# KEYS: lease, entry. ARGV: owner, data, meta, answered, channel, name.
# stored_at is the server's clock: every reader measures the value's age on it.
# (Redis before 5 replicates a script that reads the clock only as its effects.)
_STORE = (
    _VALID
    + """
if redis.replicate_commands then
  redis.replicate_commands()
end
if kind(KEYS[1]) ~= 'string' or redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return false
end
if kind(KEYS[2]) ~= 'hash' then
  redis.call('DEL', KEYS[2])
end
for _, field in ipairs({'version', 'requested'}) do
  if not counter(redis.call('HGET', KEYS[2], field)) then
    redis.call('HSET', KEYS[2], field, '0')
  end
end
local version = redis.call('HINCRBY', KEYS[2], 'version', 1)
local answered = redis.call('HGET', KEYS[2], 'answered')
if not counter(answered) then
  answered = '0'
end
if tonumber(ARGV[4]) > tonumber(answered) then
  answered = ARGV[4]
end
-- Never past the requests this entry has counted: a store that began before the
-- server lost its data carries a number from before, which would answer new requests.
local requested = redis.call('HGET', KEYS[2], 'requested')
if tonumber(answered) > tonumber(requested) then
  answered = requested
end
local now = redis.call('TIME')
local stored_at = now[1] .. '.' .. string.format('%06d', tonumber(now[2]))
redis.call('HSET', KEYS[2], 'data', ARGV[2], 'meta', ARGV[3], 'stored_at', stored_at,
           'stored_by', ARGV[1], 'answered', answered)
redis.call('PUBLISH', ARGV[5], 'stored ' .. ARGV[6] .. ' ' .. version)
return version
"""
)

# KEYS: entry. ARGV: channel, name.
_REQUEST = (
    _VALID
    + """
if kind(KEYS[1]) ~= 'hash' then
  redis.call('DEL', KEYS[1])
end
if not counter(redis.call('HGET', KEYS[1], 'requested')) then
  redis.call('HSET', KEYS[1], 'requested', '0')
end
local number = redis.call('HINCRBY', KEYS[1], 'requested', 1)
redis.call('PUBLISH', ARGV[1], 'refresh_requested ' .. ARGV[2] .. ' ' .. number)
return number
"""
)

# KEYS: entry. ARGV: the fields to read, as name and largest size in bytes, in turn.
# Returns {seconds, microseconds} of the server's clock, then a status: 'none' (no
# entry), 'type' (not a hash), 'big' with the field and its size, or 'ok' followed
# by the fields' values (false for a missing one). Sizes are checked before any
# value is read, so a huge field is never sent to us.
_READ = """
local now = redis.call('TIME')
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then
  return {now[1], now[2], 'none'}
end
if kind ~= 'hash' then
  return {now[1], now[2], 'type', kind}
end
local names = {}
for i = 1, #ARGV, 2 do
  local size = redis.call('HSTRLEN', KEYS[1], ARGV[i])
  if size > tonumber(ARGV[i + 1]) then
    return {now[1], now[2], 'big', ARGV[i], size}
  end
  names[#names + 1] = ARGV[i]
end
local reply = {now[1], now[2], 'ok'}
local values = redis.call('HMGET', KEYS[1], unpack(names))
for i = 1, #names do
  reply[#reply + 1] = values[i]
end
return reply
"""

_LISTEN_WAIT = 0.25  # how long one blocking read of the subscription waits before checking for close
_HEALTH_CHECK_EVERY = 5  # seconds: an idle subscription pings, so a dead server is noticed
_SOCKET_SHARE = 0.8  # of the timeout, for the socket timeouts
# A lease key that lives longer than this is not one that a process of this package
# set (they last two thirds of lease_ttl): it is taken over, not waited for forever.
_LONGEST_LEASE = 86400.0
_LEASE_FACTOR = 100  # ... or than this many times the ttl we ask for, if that is longer
_ENTRY_FIELDS = ("version", "data", "meta", "stored_at", "stored_by", "answered")
_HEAD_FIELDS = ("version", "requested", "answered")
# Names per script of a poll or a release: Redis runs nothing else while a script
# runs, so a process with 100,000 leases makes 200 short scripts (one round trip
# each, all in one worker thread), not one that stops the server for everyone.
CHUNK = 500


def _import_redis() -> Any:
    try:
        import redis  # an optional dependency: imported when used
    except ImportError as exc:
        raise ImportError("RedisCoordinator needs redis-py: pip install 'asgi-refresh[redis]'") from exc
    return redis


_SECRET_PARAMS = re.compile(r"pass|secret|token|key|auth|cred|user", re.IGNORECASE)


def _safe_url(url: str) -> str:
    """``url`` without its credentials, for messages and repr.

    The password of the userinfo and the value of every query parameter that may
    hold a credential (``password``, ``username``...) are masked.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
    except ValueError:  # a malformed netloc or port: show none of it
        return "(a Redis URL that cannot be parsed)"
    if parts.password is not None:
        host = (f"{parts.username}:***@" if parts.username else ":***@") + host
    elif parts.username:
        host = f"{parts.username}@{host}"
    query = "&".join(
        f"{key}={'***' if _SECRET_PARAMS.search(key) else value}"
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
    )
    return urlunsplit(parts._replace(netloc=host, query=query))


def _secrets_in(url: str) -> list[str]:
    """The credentials ``url`` carries, as they may appear in an error message."""
    try:
        parts = urlsplit(url)
        found = [parts.password or ""]
    except ValueError:
        found = []
        parts = None
    if parts is not None:
        found += [value for key, value in parse_qsl(parts.query) if _SECRET_PARAMS.search(key)]
    found += [unquote(secret) for secret in found]
    # Longest first: a secret that contains another is masked whole.
    return sorted({secret for secret in found if len(secret) >= 3}, key=len, reverse=True)


class RedisCoordinator(BlockingCoordinator):
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
        max_bytes: The largest stored value (encoded) that is read or written:
            a bigger one is refused before it is read, so a damaged or hostile
            entry cannot fill this process's memory. 32 MiB by default.

    The URL's password (in its userinfo or a ``?password=`` parameter) never
    appears in messages, ``status()`` or ``repr``.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: Duration = DEFAULT_TIMEOUT,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self._redis = _import_redis()
        if not isinstance(url, str) or not url:
            kind = "an empty string" if url == "" else type(url).__name__
            raise OptionValueError(
                "", "url", f"url must be a Redis URL such as 'redis://localhost:6379/0' (got {kind})"
            )
        super().__init__(timeout=positive_duration("RedisCoordinator", "timeout", timeout), threads=8)
        self.url = url
        self.prefix = check_prefix(prefix)
        self.max_bytes = check_max_bytes("RedisCoordinator", max_bytes)
        self._secrets = _secrets_in(url)
        self._client: redis.Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._channel = f"{self.prefix}:changes"

    def __repr__(self) -> str:
        return f"RedisCoordinator({_safe_url(self.url)!r}, prefix={self.prefix!r})"

    @property
    def backend(self) -> str:
        """``Redis at <url without credentials>``."""
        return f"Redis at {_safe_url(self.url)}"

    # -- lifecycle -----------------------------------------------------------------

    def connect(self) -> None:
        """Make the client (no connection yet: Redis may be down at startup)."""
        try:
            client = self._redis.Redis.from_url(
                self.url,
                # A little below the timeout: a dead server then reports as itself.
                socket_timeout=self.timeout * _SOCKET_SHARE,
                socket_connect_timeout=self.timeout * _SOCKET_SHARE,
                retry=self._redis.retry.Retry(self._redis.backoff.NoBackoff(), 0),
                health_check_interval=_HEALTH_CHECK_EVERY,
                # RESP2, what the scripts' replies are read as. redis-py 8 speaks RESP3 by
                # default and then asks for maintenance notifications at every connect, a
                # command Valkey and Redis before 8 refuse: a round trip more per connect,
                # and a connect failing half-way under load left its socket open.
                protocol=2,
            )
        except ValueError as exc:
            raise ValueError(f"{self!r}: bad url: {self._scrub(str(exc))}") from None
        self._client = client
        self._scripts = {
            "acquire": client.register_script(_ACQUIRE),
            "release": client.register_script(_RELEASE),
            "poll": client.register_script(_POLL),
            "store": client.register_script(_STORE),
            "request": client.register_script(_REQUEST),
            "read": client.register_script(_READ),
        }

    def disconnect(self) -> None:
        """Close the idle sockets and refuse new ones; a call still under way closes its own when it ends.

        A call abandoned at shutdown may run after this: the client's pool would open
        a connection for it that nobody closes (an unclosed socket, found by the
        test suite's warnings). Its pool refuses instead, and that call fails. A
        connection in use is not closed from here: redis-py's connections are not
        safe to disconnect from another thread (a disconnect between a connect's
        socket and its assignment loses that socket, unclosed); the pool closes it
        when the call gives it back, within the socket timeout if the server is dead.
        """
        client, self._client = self._client, None
        if client is not None:
            refused = self._redis.exceptions.ConnectionError(f"{self!r} is closed")

            def refuse() -> NoReturn:
                raise refused

            def close_instead(connection: Any, *_: Any) -> None:
                with contextlib.suppress(Exception):
                    connection.disconnect()

            with contextlib.suppress(Exception):
                pool = client.connection_pool
                pool.make_connection = refuse  # type: ignore[method-assign]  # shadows it
                pool.release = close_instead  # type: ignore[method-assign]  # shadows it
                pool.disconnect(inuse_connections=False)

    # -- operations ----------------------------------------------------------------

    def _key(self, kind: Literal["lease", "entry"], name: str) -> str:
        return f"{self.prefix}:{kind}:{check_name(name)}"

    def _open_client(self) -> redis.Redis:
        if self._client is None or not self._open:
            raise RuntimeError(f"{self!r} is not open: use `async with` or call open() first")
        return self._client

    def describe(self, exc: BaseException) -> str | None:
        """redis-py's and the socket's errors, without credentials."""
        if isinstance(exc, self._redis.RedisError | OSError):
            text = self._scrub(str(exc))
            return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        return None

    def _scrub(self, text: str) -> str:
        """``text`` (an error from redis-py or the server) without our credentials, on one line."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return printable(text, 500)

    async def acquire(self, name: str, ttl: float) -> bool:
        """Take or renew the lease on ``name`` for ``ttl`` seconds; False if another holds it."""
        self._open_client()
        lease = self._key("lease", name)
        millis, longest = _lease_millis(ttl)
        script = self._scripts["acquire"]
        # Counted as held before the call: if shutdown abandons it, the lease it may
        # still take is given back at close, not left to expire.
        self.holds(name, True)
        held = bool(await self.call(lambda: script(keys=[lease], args=[self.owner, millis, longest])))
        self.holds(name, held)
        return held

    async def release(self, name: str) -> None:
        """Give up the lease on ``name`` if we hold it."""
        await self.release_all([name])

    async def release_all(self, names: Sequence[str]) -> None:
        """Give up the leases on ``names`` that we hold: one script per `CHUNK` names, one thread hop."""
        self._open_client()
        leases = [self._key("lease", name) for name in names]
        script, owner = self._scripts["release"], self.owner

        def release() -> None:
            for start in range(0, len(leases), CHUNK):
                script(keys=leases[start : start + CHUNK], args=[owner])

        if leases:
            await self.call(release)
        for name in names:
            self.holds(name, False)

    async def poll(self, names: Sequence[str], ttl: float) -> dict[str, Poll]:
        """Renew or take the lease of every name and read every head: one script per `CHUNK` names.

        All of it in one worker thread: a thousand idle refreshers cost two short
        scripts per poll, not two thousand calls. A malformed head is the
        `BadRecord` of its name only.
        """
        self._open_client()
        millis, longest = _lease_millis(ttl)
        wanted = list(dict.fromkeys(names))  # one answer per name, in the order given
        keys = [key for name in wanted for key in (self._key("lease", name), self._key("entry", name))]
        script, args = self._scripts["poll"], [self.owner, millis, longest, MAX_FIELD_BYTES]

        def poll() -> list[Any]:
            return [
                script(keys=keys[start : start + 2 * CHUNK], args=args)
                for start in range(0, len(keys), 2 * CHUNK)
            ]

        # Counted as held before the call, as in `acquire`.
        for name in wanted:
            self.holds(name, True)
        replies = await self.call(poll) if wanted else []
        polled: dict[str, Poll] = {}
        for start, reply in zip(range(0, len(wanted), CHUNK), replies, strict=True):
            chunk = wanted[start : start + CHUNK]
            try:
                seconds, micros, *answers = reply
                now = _clock(seconds, micros)
                if len(answers) != len(chunk):
                    raise ValueError(len(answers))
                for name, (held, status, *rest) in zip(chunk, answers, strict=True):
                    polled[name] = Poll(held == 1, _head(status, rest, now))
                    self.holds(name, held == 1)
            except (TypeError, ValueError):  # not what our script returns: not a Redis we can use
                raise CoordinatorUnavailable(f"{self.backend}: unexpected reply to a poll") from None
        return polled

    async def store(
        self, name: str, data: bytes, meta: Mapping[str, MetaValue], *, answered: int = 0
    ) -> int | None:
        """Store ``data`` as the new version of ``name`` if we hold its lease; None if not.

        Raises:
            ValueError: ``data`` is bigger than ``max_bytes`` (the others would refuse it).
        """
        self._open_client()
        keys = [self._key("lease", name), self._key("entry", name)]
        meta_text = encode_meta(meta)
        blob = bytes(data)
        if len(blob) > self.max_bytes:
            raise ValueError(f"{self!r}: the value is {len(blob)} bytes, over max_bytes ({self.max_bytes})")
        script = self._scripts["store"]
        args = [self.owner, blob, meta_text, min(max(int(answered), 0), MAX_COUNT), self._channel, name]
        version = await self.call(lambda: script(keys=keys, args=args))
        if version is None:
            self.holds(name, False)
            return None
        return int(version)

    async def _read(
        self, name: str, limits: Sequence[tuple[str, int]]
    ) -> tuple[float, dict[str, Any] | None]:
        """The server's clock and the entry's fields (None if there is no entry), sizes checked first."""
        self._open_client()
        entry = self._key("entry", name)
        script = self._scripts["read"]
        args = [item for field, limit in limits for item in (field, limit)]
        reply = await self.call(lambda: script(keys=[entry], args=args))
        try:
            seconds, micros, status, *rest = reply
            now = _clock(seconds, micros)
        except (TypeError, ValueError):  # not what our script returns: not a Redis we can use
            raise CoordinatorUnavailable(f"{self.backend}: unexpected reply to a read") from None
        if status == b"none":
            return now, None
        if status == b"type":
            raise _wrong_type(rest[0])
        if status == b"big":
            raise _too_big(rest[0], rest[1], dict(limits))
        if len(rest) != len(limits):
            raise CoordinatorUnavailable(f"{self.backend}: unexpected reply to a read")
        return now, {field: value for (field, _), value in zip(limits, rest, strict=True)}

    async def load(self, name: str) -> Stored | None:
        """The stored value of ``name``, or None; `BadRecord` if it is malformed or too big."""
        sizes = {"data": self.max_bytes, "meta": MAX_META_BYTES, "stored_by": MAX_OWNER_CHARS * 4}
        limits = [(field, sizes.get(field, MAX_FIELD_BYTES)) for field in _ENTRY_FIELDS]
        now, fields = await self._read(name, limits)
        if fields is None:
            return None
        return parse_stored(fields, max_bytes=self.max_bytes, time=now)

    async def head(self, name: str) -> Head:
        """Version and refresh-now counters of ``name`` (one small read); `BadRecord` if malformed."""
        now, fields = await self._read(name, [(field, MAX_FIELD_BYTES) for field in _HEAD_FIELDS])
        if fields is None:
            return Head(None, 0, 0, time=now)
        return parse_head(fields["version"], fields["requested"], fields["answered"], time=now)

    async def request_refresh(self, name: str) -> int:
        """Count a refresh-now request for ``name`` and tell the lease holder; its number."""
        self._open_client()
        entry = self._key("entry", name)
        script = self._scripts["request"]
        return int(await self.call(lambda: script(keys=[entry], args=[self._channel, name])))

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

        # On failure, closed by whichever lets go last: the caller, or the call's
        # (abandoned) thread when it ends; never from one thread under another.
        handover = _Handover(pubsub)

        def subscribed_then_let_go() -> None:
            try:
                subscribed()
            finally:
                handover.let_go()

        try:
            await self.call(subscribed_then_let_go)
        except BaseException:
            handover.let_go()
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
                    f"{self.backend}: subscription lost: {self.describe(exc) or exc!r}"
                )
                lost.__cause__ = exc
                deliver(lost)
        finally:
            _close_quietly(pubsub)


def _clock(seconds: object, micros: object) -> float:
    """The server's clock from the two numbers of its TIME; `BadRecord` if they are not numbers."""
    return parse_count("the server's clock", seconds) + parse_count("the server's clock", micros) / 1e6


def _word(raw: object) -> str:
    """A short word of a script's reply (a key type, a field name), as text for a message."""
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)
    return printable(text, 20) or "(empty)"  # an empty word would leave a hole in the message


def _lease_millis(ttl: float) -> tuple[int, int]:
    """A lease's lifetime in milliseconds, and the longest one that is ours (a longer one is taken over)."""
    millis = max(1, math.ceil(positive_duration("RedisCoordinator", "ttl", ttl) * 1000))
    return millis, max(millis * _LEASE_FACTOR, int(_LONGEST_LEASE * 1000))


def _wrong_type(kind: object) -> BadRecord:
    return BadRecord(f"the entry is a Redis {_word(kind)}, not a hash")


def _too_big(field: object, size: object, limits: Mapping[str, int]) -> BadRecord:
    name = _word(field)
    hint = "; raise max_bytes if that is right" if name == "data" else ""
    return BadRecord(f"{name} is {_word(size)} bytes (at most {limits.get(name, 0)}){hint}")


_HEAD_LIMITS = dict.fromkeys(_HEAD_FIELDS, MAX_FIELD_BYTES)


def _head(status: object, rest: list[Any], now: float) -> Head | BadRecord:
    """One name's head from its part of a poll's reply, or the `BadRecord` it is.

    Raises:
        ValueError: the reply is not what the script returns (not a `BadRecord`).
    """
    try:
        if status == b"none" and not rest:
            return Head(None, 0, 0, time=now)
        if status == b"type" and len(rest) == 1:
            return _wrong_type(rest[0])
        if status == b"big" and len(rest) == 2:
            return _too_big(rest[0], rest[1], _HEAD_LIMITS)
        if status == b"ok" and len(rest) == 3:
            return parse_head(*rest, time=now)
    except BadRecord as exc:
        return exc
    raise ValueError(status)


def _parse_change(data: object) -> Change | None:
    """The change a channel message announces; None for anything that is not one of ours."""
    if not isinstance(data, bytes) or len(data) > 200:
        return None  # not ours: someone else published on the channel
    try:
        kind, name, number = data.decode().split(" ")
        if name.isidentifier() and kind in ("stored", "refresh_requested"):
            return Change(kind, name, parse_count("number", number))  # type: ignore[arg-type]
    except ValueError:  # BadRecord included
        pass
    return None


class _Handover:
    """A subscription its caller and the thread subscribing it both hold: the second to let go closes it."""

    def __init__(self, pubsub: Any) -> None:
        self._pubsub = pubsub
        self._lock = threading.Lock()
        self._holders = 2

    def let_go(self) -> None:
        """The thread as it ends, the caller if it gives the subscription up; the last one closes it."""
        with self._lock:
            self._holders -= 1
            last = self._holders == 0
        if last:
            _close_quietly(self._pubsub)


def _close_quietly(pubsub: Any) -> None:
    with contextlib.suppress(Exception):
        pubsub.close()


if TYPE_CHECKING:
    _check: type[Coordinator] = RedisCoordinator
