"""Coordination through NATS JetStream key-value: leases and fenced stores by revision, changes by a watch.

One KV bucket (``asgi_refresh`` by default, created on first use) holds, for
prefix ``p`` and refresher ``name``, three keys:

- ``p.lease.name`` — JSON ``{"owner": ..., "ttl": seconds}``; taken with a
  compare-and-set on the key's revision (create, or update of the revision read);
- ``p.entry.name`` — the stored value: a first line of JSON (version, meta,
  stored_by, answered), then the value's bytes;
- ``p.request.name`` — the refresh-now counter, a decimal number.

A lease expires on the server's clock: a lease's message carries the time the
server stored it, and the server tells its current time (``ts`` in a stream info
reply), so a lease is free once the server's now passes its time plus its ttl.
No host clock is trusted. A store is fenced: it is published with "the lease
key's last revision must still be the one I read" (``Nats-Expected-Last-Subject-
Sequence`` with ``-Subject``, nats-server 2.11+), so a holder that lost its lease
cannot overwrite the new holder's value. Changes reach subscribers through an
ordered consumer on the prefix's subjects (a KV watch from now on, headers only).

nats-py runs on asyncio only, and this package also runs on trio: the client
lives in its own asyncio event loop, in a thread of its own, and every call is
handed to that loop and awaited from a worker thread, bounded by ``timeout``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import math
import queue
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

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
from asgi_refresh._cluster.blocking import ChangeStream
from asgi_refresh._cluster.records import (
    MAX_COUNT,
    MAX_META_BYTES,
    MAX_OWNER_CHARS,
    check_max_bytes,
    check_name,
    encode_meta,
    new_owner,
    parse_count,
    parse_head,
    parse_stored,
)
from asgi_refresh._duration import Duration, positive_duration
from asgi_refresh._option_error import OptionValueError
from asgi_refresh._text import printable

T = TypeVar("T")

DEFAULT_BUCKET = "asgi_refresh"

_MAGIC = b"asgi-refresh/1\n"  # the first line of an entry of ours
_NUMBER_HEADER = "Asgi-Refresh-Number"  # the version or request number, for watchers (headers only)
_MAX_HEAD_LINE = MAX_META_BYTES + 4 * MAX_OWNER_CHARS + 1024  # an entry's JSON line: meta, owner, counters
_MAX_LEASE_BYTES = 4 * MAX_OWNER_CHARS + 200
_MAX_COUNTER_BYTES = 32
_RELEASE_ON_CLOSE = 1.0  # at most this long to give the leases back at close
_LONGEST_LEASE = 86400.0  # a lease that asks for longer is not one of ours: taken over
_LEASE_FACTOR = 100  # ... or for this many times the ttl we ask for, if that is longer
_RECONNECT_ATTEMPTS = 1  # per server, after the first: then the client gives up and the next call starts anew
_RECONNECT_WAIT = 0.1  # between those attempts
_PING_INTERVAL = 5  # an idle connection pings, so a server that hangs is noticed
_CONCURRENCY = 64  # reads in flight at once in one poll
_WRONG_LAST_SEQUENCE = (10071, 10164)  # the server's "the last revision is not the one you expected"
_MIN_SERVER = (2, 11)  # the fenced store needs Nats-Expected-Last-Subject-Sequence-Subject
_KEY_TOKEN = re.compile(r"[A-Za-z0-9_=/-]+")
_BUCKET = re.compile(r"[A-Za-z0-9_-]{1,64}")
_DEL, _PURGE = "DEL", "PURGE"


def _import_nats() -> Any:
    try:
        import nats  # an optional dependency: imported when used
        import nats.errors
        import nats.js.api
        import nats.js.errors
    except ImportError as exc:
        raise ImportError("NATSCoordinator needs nats-py: pip install 'asgi-refresh[nats]'") from exc
    return nats


def _safe_url(url: str) -> str:
    """``url`` without its userinfo (a user and password, or a token), for messages and repr."""
    try:
        parts = urlsplit(url if "://" in url else f"nats://{url}")
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
    except ValueError:
        return "(a NATS URL that cannot be parsed)"
    if "@" in parts.netloc:
        host = f"***@{host}"
    return f"{parts.scheme}://{host}"


def _secrets_in(url: str) -> list[str]:
    """The credentials ``url`` carries (user, password or token), as they may appear in a message."""
    try:
        parts = urlsplit(url if "://" in url else f"nats://{url}")
        found = [parts.username or "", parts.password or ""] if "@" in parts.netloc else []
        found.append(parts.netloc.rpartition("@")[0] if "@" in parts.netloc else "")
    except ValueError:
        found = []
    found += [unquote(secret) for secret in found]
    return sorted({secret for secret in found if len(secret) >= 3}, key=len, reverse=True)


def _check_prefix(prefix: object) -> str:
    """``prefix`` if it can start a KV key: dot-separated tokens of letters, digits, ``_=/-``."""
    if not isinstance(prefix, str) or not all(_KEY_TOKEN.fullmatch(token) for token in prefix.split(".")):
        raise OptionValueError(
            "NATSCoordinator",
            "prefix",
            "prefix must be dot-separated words of letters, digits and _ = / - "
            f"(a NATS KV key; got {prefix!r})",
        )
    return prefix


@dataclass(frozen=True, slots=True)
class _Message:
    """One key's last message, as the stream holds it: None data for a deleted key."""

    revision: int
    data: bytes | None
    time: float


@dataclass(frozen=True, slots=True)
class _Lease:
    owner: str
    ttl: float


class _LoopThread:
    """An asyncio event loop running in a daemon thread of its own, for a client that needs asyncio."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(lambda loop, context: None)  # the callers report what matters
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                tasks = asyncio.all_tasks(self.loop)
                for task in tasks:
                    task.cancel()
                self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def stop(self, wait: float) -> None:
        """Stop the loop (its tasks are cancelled) and wait for the thread, at most ``wait`` seconds."""
        with contextlib.suppress(RuntimeError):  # closed already
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(wait)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


async def _discard(client: Any, timeout: float) -> None:  # noqa: ASYNC109 - bounds a close, not a scope
    """Close a nats-py client, and its socket whatever happens to the close.

    ``Client.close`` flushes what is pending before it closes the socket: a flush
    that fails (the server went away), or a close cancelled because the call that
    made the client was abandoned, leaves the socket open, to be garbage-collected
    with a ResourceWarning. The client's transport is nats-py's own attribute.
    """
    try:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), timeout)
    finally:
        transport = getattr(client, "_transport", None)
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.close()


class NATSCoordinator(Coordinator):
    """Coordinates the processes of a cluster through a NATS server with JetStream.

    For each refresher, one process holds a lease and is the only one that
    fetches; it stores the value in a JetStream key-value bucket, and the others
    load it. Needs the ``nats`` extra (``pip install 'asgi-refresh[nats]'``) and
    nats-server 2.11 or later with JetStream enabled. Works on asyncio and trio.

    Args:
        servers: The server URL (``nats://host:4222``, ``tls://...``), or several
            of one cluster. Credentials may be given in the URL
            (``nats://user:password@host``, ``nats://token@host``); they never
            appear in messages, ``status()`` or ``repr``.
        bucket: The KV bucket, created (one revision kept per key) on first use
            if missing. Several apps may share it, each under its ``prefix``.
        prefix: Namespace of every key: dot-separated words of letters, digits
            and ``_ = / -``.
        timeout: How long any one operation may take, connecting included,
            before it fails with `CoordinatorUnavailable` (seconds, or a
            duration like ``"2s"``).
        max_bytes: The largest stored value (encoded) that is read or written.
            The server's ``max_payload`` (1 MiB unless configured) bounds what
            can be stored at all.
    """

    def __init__(
        self,
        servers: str | Sequence[str],
        *,
        bucket: str = DEFAULT_BUCKET,
        prefix: str = DEFAULT_PREFIX,
        timeout: Duration = DEFAULT_TIMEOUT,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self._nats = _import_nats()
        listed = [servers] if isinstance(servers, str) else servers
        if (
            isinstance(servers, bytes)
            or not isinstance(listed, Sequence)
            or not listed
            or not all(isinstance(url, str) and url for url in listed)
        ):
            raise OptionValueError(
                "NATSCoordinator",
                "servers",
                "servers must be a NATS URL such as 'nats://localhost:4222', or a list of them "
                f"(got {type(servers).__name__})",
            )
        if not isinstance(bucket, str) or _BUCKET.fullmatch(bucket) is None:
            raise OptionValueError(
                "NATSCoordinator",
                "bucket",
                f"bucket must be 1 to 64 letters, digits, _ or - (got {bucket!r})",
            )
        self.servers: list[str] = list(listed)
        self.bucket = bucket
        self.prefix = _check_prefix(prefix)
        self.timeout = positive_duration("NATSCoordinator", "timeout", timeout)
        self.max_bytes = check_max_bytes("NATSCoordinator", max_bytes)
        self._secrets = sorted(
            {secret for url in self.servers for secret in _secrets_in(url)}, key=len, reverse=True
        )
        self._stream = f"KV_{bucket}"
        self._owner = new_owner()
        self._open = False
        self._held: set[str] = set()
        self._thread: _LoopThread | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        # Owned by the loop thread:
        self._client: Any = None
        self._js: Any = None
        self._connecting: asyncio.Lock | None = None
        self._store_locks: dict[str, asyncio.Lock] = {}
        self._watchers: set[Callable[[CoordinatorUnavailable], None]] = set()

    def __repr__(self) -> str:
        shown = ", ".join(_safe_url(url) for url in self.servers)
        return f"NATSCoordinator({shown!r}, bucket={self.bucket!r}, prefix={self.prefix!r})"

    @property
    def backend(self) -> str:
        """``NATS at <urls without credentials>``."""
        return f"NATS at {', '.join(_safe_url(url) for url in self.servers)}"

    @property
    def owner(self) -> str:
        """Who this process is to the others, unique per process and per open."""
        return self._owner

    # -- lifecycle -----------------------------------------------------------------

    async def open(self) -> None:
        """Start a lifespan with a new `owner` and the client's thread; does not contact the server."""
        if self._open:
            raise RuntimeError(f"{self!r} is already open: one coordinator serves one lifespan at a time")
        self._owner = new_owner()
        self._held = set()
        self._limiter = anyio.CapacityLimiter(16)
        self._thread = _LoopThread(f"asgi_refresh:nats:{self.prefix}")
        self._open = True

    async def close(self) -> None:
        """Give back the leases still held (best effort, bounded), close the connection, stop the thread."""
        if not self._open:
            return
        try:
            with anyio.move_on_after(_RELEASE_ON_CLOSE, shield=True):
                with contextlib.suppress(CoordinatorUnavailable):
                    await self.release_all(sorted(self._held))
        finally:
            self._open = False
            self._held = set()
            thread, self._thread = self._thread, None
            if thread is not None:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._shutdown, thread)

    def _shutdown(self, thread: _LoopThread) -> None:
        """In a worker thread: close the client on its loop (bounded), then stop the loop and join it."""
        future = thread.submit(self._disconnect())
        with contextlib.suppress(Exception):
            future.result(self.timeout + 1)
        thread.stop(self.timeout + 1)

    async def _disconnect(self) -> None:
        client, self._client, self._js = self._client, None, None
        self._lost(CoordinatorUnavailable(f"{self.backend}: the coordinator was closed"))
        if client is not None:
            await _discard(client, self.timeout)

    # -- calls across threads ------------------------------------------------------

    async def _call(self, make: Callable[[], Awaitable[T]]) -> T:
        """Run ``make()`` on the client's loop and wait for it in a worker thread, within the timeout.

        Raises:
            CoordinatorUnavailable: the server failed or did not answer in time.
            RuntimeError: the coordinator is not open.
        """
        thread, limiter = self._thread, self._limiter
        if not self._open or thread is None or limiter is None:
            raise RuntimeError(f"{self!r} is not open: use `async with` or call open() first")

        async def run() -> T:
            js = await self._connected()
            try:
                return await make()
            except (self._nats.errors.NoRespondersError, self._nats.js.errors.NoStreamResponseError):
                # No stream takes the bucket's subjects: someone deleted the bucket. Make it
                # again and try once more, rather than fail until the next connection.
                await self._ensure_bucket(js)
                return await make()

        future = thread.submit(run())
        with anyio.move_on_after(self.timeout) as scope:
            try:
                return await anyio.to_thread.run_sync(
                    future.result, self.timeout + 1, abandon_on_cancel=True, limiter=limiter
                )
            except (concurrent.futures.CancelledError, concurrent.futures.TimeoutError) as exc:
                raise CoordinatorUnavailable(f"{self.backend}: the call was abandoned") from exc
            except Exception as exc:
                message = self.describe(exc)
                if message is None:
                    raise
                raise CoordinatorUnavailable(f"{self.backend}: {message}") from exc
            finally:
                if not future.done():
                    future.cancel()  # the task on the loop is cancelled, not left to run
        assert scope.cancelled_caught
        raise CoordinatorUnavailable(f"{self.backend}: no answer within {self.timeout:g}s")

    def describe(self, exc: BaseException) -> str | None:
        """nats-py's and the socket's errors, without credentials; None for anything else (a bug)."""
        nats = self._nats
        if isinstance(exc, CoordinatorUnavailable):
            return self._scrub(str(exc).removeprefix(f"{self.backend}: "))
        if isinstance(exc, nats.errors.Error | nats.js.errors.Error | OSError | asyncio.TimeoutError):
            text = self._scrub(str(exc))
            return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        return None

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return printable(text, 500)

    # -- on the client's loop ------------------------------------------------------

    async def _connected(self) -> Any:
        """The JetStream context on a live connection; connects (and makes the bucket) the first time."""
        client = self._client
        if client is not None and client.is_connected:
            return self._js
        if client is not None and not client.is_closed:
            # nats-py reconnects in the background; meanwhile a call fails at once, not after the timeout.
            raise CoordinatorUnavailable(f"{self.backend}: not connected (reconnecting)")
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._client is not None and self._client.is_connected:
                return self._js
            await self._connect()
        return self._js

    async def _connect(self) -> None:
        nats = self._nats
        client = nats.aio.client.Client()
        last_error: list[BaseException] = []

        async def on_error(exc: Exception) -> None:
            last_error[:] = [exc]  # nats-py would print it; the call that fails reports it

        async def on_disconnect() -> None:
            self._lost(CoordinatorUnavailable(f"{self.backend}: connection lost"))

        options: dict[str, Any] = {
            "servers": self.servers,
            "error_cb": on_error,
            "disconnected_cb": on_disconnect,
            # A couple of quick attempts, then the client closes: the next call makes a new
            # one. A call never waits on nats-py's reconnect loop, and a refused connection
            # fails at once instead of after the timeout.
            "allow_reconnect": True,
            "max_reconnect_attempts": _RECONNECT_ATTEMPTS,
            "reconnect_time_wait": _RECONNECT_WAIT,
            "connect_timeout": max(self.timeout * 0.8, 0.05),
            "ping_interval": _PING_INTERVAL,
            "max_outstanding_pings": 2,
            "name": f"asgi_refresh {self._owner}",
        }
        try:
            await asyncio.wait_for(client.connect(**options), self.timeout * 0.9)
        except BaseException as exc:
            await _discard(client, self.timeout)
            if isinstance(exc, asyncio.TimeoutError | nats.errors.Error | OSError):
                cause = last_error[0] if last_error else exc
                raise CoordinatorUnavailable(
                    f"{self.backend}: cannot connect ({self.describe(cause) or type(cause).__name__})"
                ) from cause
            raise
        try:
            try:
                server = client.connected_server_version
                numbers: tuple[int, ...] = (server.major, server.minor)
            except (ValueError, TypeError):  # a version that is not semver: a build of its own, let it try
                numbers = _MIN_SERVER
            version = ".".join(map(str, numbers))
            if numbers < _MIN_SERVER:
                raise CoordinatorUnavailable(
                    f"{self.backend}: nats-server {version} is too old: fenced stores need 2.11 or later"
                )
            js = client.jetstream(timeout=self.timeout)
            await self._ensure_bucket(js)
        except BaseException:
            await _discard(client, self.timeout)
            raise
        self._client, self._js = client, js

    async def _ensure_bucket(self, js: Any) -> None:
        """Make the bucket if it is missing; several processes racing to make it all succeed."""
        errors = self._nats.js.errors
        try:
            await js.stream_info(self._stream)
            return
        except errors.NotFoundError:
            pass
        except (errors.ServiceUnavailableError, self._nats.errors.NoRespondersError) as exc:
            raise CoordinatorUnavailable(
                f"{self.backend}: JetStream is not enabled on the server (nats-server -js)"
            ) from exc
        config = self._nats.js.api.KeyValueConfig(bucket=self.bucket, history=1)
        try:
            await js.create_key_value(config)
        except errors.BadRequestError:  # made meanwhile by another process, perhaps with other options
            await js.stream_info(self._stream)

    def _lost(self, error: CoordinatorUnavailable) -> None:
        """Tell every subscription of this coordinator that the connection is gone."""
        for watcher in list(self._watchers):
            watcher(error)

    def _subject(self, kind: str, name: str) -> str:
        return f"$KV.{self.bucket}.{self.prefix}.{kind}.{check_name(name)}"

    async def _server_now(self) -> float | None:
        """The server's clock (``ts`` of a stream info reply); None if this server does not say."""
        client = self._client
        reply = await client.request(f"$JS.API.STREAM.INFO.{self._stream}", b"", timeout=self.timeout)
        try:
            info = json.loads(reply.data)
            return _parse_time(info["ts"])
        except (ValueError, KeyError, TypeError):
            return None

    async def _get(self, subject: str) -> _Message | None:
        """The last message of ``subject``: None if there never was one; data None if it was deleted."""
        errors = self._nats.js.errors
        try:
            message = await self._js.get_msg(self._stream, subject=subject)
        except errors.NotFoundError:
            return None
        headers = message.headers or {}
        deleted = headers.get("KV-Operation") in (_DEL, _PURGE) or "Nats-Marker-Reason" in headers
        when = message.time.timestamp() if isinstance(message.time, datetime) else 0.0
        return _Message(int(message.seq), None if deleted else bytes(message.data or b""), when)

    async def _publish(self, subject: str, data: bytes, headers: dict[str, str]) -> int | None:
        """Publish ``data`` under the expectations in ``headers``; None if a revision was not as expected."""
        errors = self._nats.js.errors
        try:
            ack = await self._js.publish(subject, data, headers=headers, stream=self._stream)
        except errors.APIError as exc:
            if exc.err_code in _WRONG_LAST_SEQUENCE:
                return None
            raise
        return int(ack.seq)

    def _now(self, server: float | None) -> float:
        """The server's clock if it said (every 2.11 server does); else, defensively, this host's."""
        return server if server is not None else time.time()

    async def _acquire(self, name: str, ttl: float, now: float | None = None) -> bool:
        subject = self._subject("lease", name)
        record = json.dumps({"owner": self._owner, "ttl": ttl}).encode()
        longest = max(ttl * _LEASE_FACTOR, _LONGEST_LEASE)
        while True:
            if now is None:
                now, message = await asyncio.gather(self._server_now(), self._get(subject))
            else:
                message = await self._get(subject)
            lease = _parse_lease(message)
            if (
                message is not None
                and lease is not None
                and lease.owner != self._owner
                and self._now(now) < message.time + min(lease.ttl, longest)
            ):
                return False  # another's, and not expired on the server's clock
            last = 0 if message is None else message.revision
            headers = {"Nats-Expected-Last-Subject-Sequence": str(last)}
            if await self._publish(subject, record, headers) is not None:
                return True
            now = None  # someone wrote it meanwhile: look again

    async def _release(self, names: Sequence[str]) -> None:
        for name in names:
            subject = self._subject("lease", name)
            message = await self._get(subject)
            lease = _parse_lease(message)
            if message is not None and lease is not None and lease.owner == self._owner:
                headers = {
                    "KV-Operation": _DEL,
                    "Nats-Expected-Last-Subject-Sequence": str(message.revision),
                }
                await self._publish(subject, b"", headers)  # None: taken over meanwhile, not ours

    async def _head(self, name: str, now: float | None) -> Head:
        entry, request = await asyncio.gather(
            self._get(self._subject("entry", name)), self._get(self._subject("request", name))
        )
        fields = _entry_head(entry)
        requested = _counter(request)
        return parse_head(fields.get("version"), requested, fields.get("answered"), time=now)

    async def _store(self, name: str, data: bytes, meta_text: str, answered: int) -> int | None:
        lease_subject, entry_subject = self._subject("lease", name), self._subject("entry", name)
        lock = self._store_locks.setdefault(name, asyncio.Lock())
        async with lock:  # two stores of one name by this process would both read one version
            while True:
                now, lease_message, entry, request = await asyncio.gather(
                    self._server_now(),
                    self._get(lease_subject),
                    self._get(entry_subject),
                    self._get(self._subject("request", name)),
                )
                lease = _parse_lease(lease_message)
                if lease_message is None or lease is None or lease.owner != self._owner:
                    return None
                if self._now(now) >= lease_message.time + lease.ttl:
                    return None  # expired, though nobody took it over yet
                try:
                    fields = _entry_head(entry)
                    version = parse_count("version", fields.get("version") or 0)
                    previous = parse_count("answered", fields.get("answered") or 0)
                except BadRecord:  # a damaged entry is replaced, not failed on
                    version, previous = 0, 0
                try:
                    requested = parse_count("requested", _counter(request) or 0)
                except BadRecord:
                    requested = 0
                version = version + 1 if version < MAX_COUNT else 1
                line = json.dumps(
                    {
                        "version": version,
                        "meta": meta_text,
                        "stored_by": self._owner,
                        "answered": min(max(previous, answered), requested),
                    },
                    separators=(",", ":"),
                ).encode()
                headers = {
                    # Fenced: published only if the lease is still the revision we read.
                    "Nats-Expected-Last-Subject-Sequence": str(lease_message.revision),
                    "Nats-Expected-Last-Subject-Sequence-Subject": lease_subject,
                    _NUMBER_HEADER: str(version),
                }
                if await self._publish(entry_subject, _MAGIC + line + b"\n" + data, headers) is not None:
                    return version
                # The lease changed meanwhile (renewed by us, or taken over): look again.

    async def _request(self, name: str) -> int:
        subject = self._subject("request", name)
        while True:
            message = await self._get(subject)
            try:
                number = parse_count("requested", _counter(message) or 0)
            except BadRecord:
                number = 0  # a damaged counter is replaced, not failed on
            number = number + 1 if number < MAX_COUNT else 1
            last = 0 if message is None else message.revision
            headers = {"Nats-Expected-Last-Subject-Sequence": str(last), _NUMBER_HEADER: str(number)}
            if await self._publish(subject, str(number).encode(), headers) is not None:
                return number

    # -- operations ----------------------------------------------------------------

    async def acquire(self, name: str, ttl: float) -> bool:
        """Take or renew the lease on ``name`` for ``ttl`` seconds; False if another holds it."""
        ttl = positive_duration("NATSCoordinator", "ttl", ttl)
        check_name(name)
        self._held.add(name)  # counted before the call: an abandoned call's lease is given back at close
        held = await self._call(lambda: self._acquire(name, ttl))
        if not held:
            self._held.discard(name)
        return held

    async def release(self, name: str) -> None:
        """Give up the lease on ``name`` if we hold it."""
        await self.release_all([name])

    async def release_all(self, names: Sequence[str]) -> None:
        """Give up the leases on ``names`` that we hold, in one hop to the client's loop."""
        wanted = [check_name(name) for name in names]
        if wanted:
            await self._call(lambda: self._release(wanted))
        for name in wanted:
            self._held.discard(name)

    async def poll(self, names: Sequence[str], ttl: float) -> dict[str, Poll]:
        """Renew or take every lease and read every head, concurrently, in one hop to the client's loop."""
        ttl = positive_duration("NATSCoordinator", "ttl", ttl)
        wanted = [check_name(name) for name in dict.fromkeys(names)]
        self._held.update(wanted)

        async def poll() -> dict[str, Poll]:
            now = await self._server_now()
            gate = asyncio.Semaphore(_CONCURRENCY)

            async def one(name: str) -> Poll:
                async with gate:
                    held = await self._acquire(name, ttl, now)
                    try:
                        head: Head | BadRecord = await self._head(name, now)
                    except BadRecord as exc:
                        head = exc
                    return Poll(held, head)

            polls = await asyncio.gather(*(one(name) for name in wanted))
            return dict(zip(wanted, polls, strict=True))

        polled = await self._call(poll) if wanted else {}
        for name, entry in polled.items():
            if not entry.held:
                self._held.discard(name)
        return polled

    async def store(
        self, name: str, data: bytes, meta: Mapping[str, MetaValue], *, answered: int = 0
    ) -> int | None:
        """Store ``data`` as the new version of ``name`` if we hold its lease; None if not.

        Raises:
            ValueError: ``data`` is bigger than ``max_bytes`` or than the server's ``max_payload``.
        """
        check_name(name)
        meta_text = encode_meta(meta)
        blob = bytes(data)
        if len(blob) > self.max_bytes:
            raise ValueError(f"{self!r}: the value is {len(blob)} bytes, over max_bytes ({self.max_bytes})")
        wanted = min(max(int(answered), 0), MAX_COUNT)
        try:
            version = await self._call(lambda: self._store(name, blob, meta_text, wanted))
        except CoordinatorUnavailable as exc:
            if isinstance(exc.__cause__, self._nats.errors.MaxPayloadError):
                raise ValueError(
                    f"{self!r}: the value is {len(blob)} bytes, over the server's max_payload"
                ) from None
            raise
        if version is None:
            self._held.discard(name)
        return version

    async def load(self, name: str) -> Stored | None:
        """The stored value of ``name``, or None; `BadRecord` if it is malformed or too big."""
        check_name(name)

        async def load() -> tuple[float | None, _Message | None]:
            now, entry = await asyncio.gather(self._server_now(), self._get(self._subject("entry", name)))
            return now, entry

        now, entry = await self._call(load)
        if entry is None or entry.data is None:
            return None
        fields: dict[str, object] = dict(_entry_head(entry))
        fields["data"] = _entry_data(entry.data)
        fields["stored_at"] = entry.time
        return parse_stored(fields, max_bytes=self.max_bytes, time=now)

    async def head(self, name: str) -> Head:
        """Version and refresh-now counters of ``name``; `BadRecord` if malformed."""
        check_name(name)

        async def head() -> Head:
            return await self._head(name, await self._server_now())

        return await self._call(head)

    async def request_refresh(self, name: str) -> int:
        """Count a refresh-now request for ``name`` (the watchers hear of it); its number."""
        check_name(name)
        return await self._call(lambda: self._request(name))

    # -- changes -------------------------------------------------------------------

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[Change]]:
        """Changes under the prefix from now on: an ordered consumer of its new messages, headers only."""
        items: queue.SimpleQueue[Change | CoordinatorUnavailable | None] = queue.SimpleQueue()
        ended = threading.Event()

        def lost(error: CoordinatorUnavailable) -> None:
            if not ended.is_set():
                ended.set()
                items.put(error)

        async def handle(message: Any) -> None:
            change = _parse_change(message.subject, message.headers, f"$KV.{self.bucket}.{self.prefix}.")
            if change is not None and not ended.is_set():
                items.put(change)

        async def start() -> Any:
            api = self._nats.js.api
            subscription = await self._js.subscribe(
                f"$KV.{self.bucket}.{self.prefix}.>",
                stream=self._stream,
                cb=handle,
                ordered_consumer=True,
                deliver_policy=api.DeliverPolicy.NEW,
                headers_only=True,
            )
            self._watchers.add(lost)
            return subscription

        subscription = await self._call(start)

        async def stop() -> None:
            self._watchers.discard(lost)
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

        send, receive = anyio.create_memory_object_stream[Change | CoordinatorUnavailable](math.inf)
        forwarder = threading.Thread(
            target=_forward,
            args=(items, send, anyio.lowlevel.current_token()),
            name=f"asgi_refresh:nats-changes:{self.prefix}",
            daemon=True,
        )
        forwarder.start()
        try:
            with send, receive:
                yield ChangeStream(receive)
        finally:
            ended.set()
            items.put(None)  # the forwarder ends
            thread = self._thread
            if thread is not None:
                future = thread.submit(stop())
                with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await anyio.to_thread.run_sync(future.result, self.timeout)
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(forwarder.join, self.timeout)


def _forward(items: queue.SimpleQueue[Any], send: Any, token: Any) -> None:
    """In its own thread: hand what the subscription heard to the event loop of whoever iterates it."""
    while True:
        item = items.get()
        if item is None:
            return
        with contextlib.suppress(Exception):  # the loop or the reader may be gone: nobody waits
            anyio.from_thread.run_sync(send.send_nowait, item, token=token)
        if isinstance(item, CoordinatorUnavailable):
            return


_TIME = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)")


def _parse_time(text: object) -> float | None:
    """An RFC 3339 time with up to nanoseconds (Go's format) as seconds since the epoch."""
    match = _TIME.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        return None
    zone = "+00:00" if match[3] == "Z" else match[3]
    seconds = datetime.fromisoformat(match[1] + zone).timestamp()
    return seconds + (float(f"0.{match[2]}") if match[2] else 0.0)


def _parse_lease(message: _Message | None) -> _Lease | None:
    """The lease a key holds; None if it holds none, or holds something that is not a lease (taken over)."""
    if message is None or message.data is None or len(message.data) > _MAX_LEASE_BYTES:
        return None
    try:
        record = json.loads(message.data)
        owner, ttl = record["owner"], record["ttl"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return None
    if not isinstance(owner, str) or isinstance(ttl, bool) or not isinstance(ttl, int | float):
        return None
    if not (math.isfinite(ttl) and ttl > 0):
        return None
    return _Lease(owner, float(ttl))


def _split_entry(data: bytes) -> tuple[bytes, bytes]:
    """An entry's JSON line and its value's bytes; `BadRecord` if it is not an entry of ours."""
    if not data.startswith(_MAGIC):
        raise BadRecord("the entry is not a record of asgi_refresh (no asgi-refresh/1 line)")
    end = data.find(b"\n", len(_MAGIC), len(_MAGIC) + _MAX_HEAD_LINE + 1)
    if end < 0:
        raise BadRecord(f"the entry's first line is missing or over {_MAX_HEAD_LINE} bytes")
    return data[len(_MAGIC) : end], data[end + 1 :]


def _entry_head(message: _Message | None) -> dict[str, object]:
    """The fields of an entry's JSON line (None for a missing entry's), unchecked but of JSON types."""
    if message is None or message.data is None:
        return {}
    line, _ = _split_entry(message.data)
    try:
        fields = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise BadRecord(f"the entry's first line is not JSON ({type(exc).__name__})") from None
    if not isinstance(fields, dict):
        raise BadRecord("the entry's first line must be a JSON object")
    return {key: fields.get(key) for key in ("version", "meta", "stored_by", "answered")}


def _entry_data(data: bytes) -> bytes:
    return _split_entry(data)[1]


def _counter(message: _Message | None) -> object:
    """A refresh-now counter's raw value (None for none); checked by the caller's parser."""
    if message is None or message.data is None:
        return None
    if len(message.data) > _MAX_COUNTER_BYTES:
        raise BadRecord(f"requested is {len(message.data)} bytes (at most {_MAX_COUNTER_BYTES})")
    return message.data


def _parse_change(subject: object, headers: object, start: str) -> Change | None:
    """The change a watched message announces; None for anything that is not one of ours."""
    if not isinstance(subject, str) or not subject.startswith(start) or not isinstance(headers, dict):
        return None
    kind, _, name = subject[len(start) :].partition(".")
    if not name.isidentifier() or kind not in ("entry", "request"):
        return None
    if headers.get("KV-Operation") is not None or "Nats-Marker-Reason" in headers:
        return None
    try:
        number = parse_count("number", headers.get(_NUMBER_HEADER))
    except BadRecord:
        return None
    return Change("stored" if kind == "entry" else "refresh_requested", name, number)


if TYPE_CHECKING:
    _check: type[Coordinator] = NATSCoordinator
