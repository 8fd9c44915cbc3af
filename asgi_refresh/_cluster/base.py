"""What several processes share to fetch once for all: the backend protocol and its types.

A coordination backend (Redis, an SQLite file) lets the processes of a cluster
agree, per refresher, on one lease holder that fetches; it stores what the holder
fetched, so that the others load it instead of fetching, and carries "something
changed" and "refresh now" between them.

The backend moves bytes and never sees a value: encoding a value is the codec's
job (`JSONCodec` by default), so a backend cannot run code from the data it holds
(no pickle anywhere).
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol, TypeVar, runtime_checkable

import anyio
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream

from asgi_refresh._text import printable

T = TypeVar("T")

MetaValue = str | int | float | bool | None
"""What fetch metadata (an ETag, an expiry) may hold: it is stored as JSON."""

DEFAULT_PREFIX = "asgi_refresh"
DEFAULT_TIMEOUT = 2.0
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
"""The largest stored value a backend reads (its encoded bytes); a bigger one is a `BadRecord`."""

MAX_META_BYTES = 64 * 1024  # the fetch metadata is a few small fields: an ETag, a few numbers
MAX_OWNER_CHARS = 256  # ``host:pid:random``; a hostname is at most 253 characters
MAX_FIELD_BYTES = 32  # a counter or a timestamp, as text
MAX_COUNT = 10**15 - 1  # versions and request numbers: 15 digits, exact as a Lua number (a double)
# Timestamps are seconds since the epoch; anything past this (year 5138) is not one.
MAX_TIMESTAMP = 1e11


class BadRecord(ValueError):
    """What the backend holds for one name is not a record this package can use.

    A field of the wrong type, out of range, not UTF-8, too big, or missing: data
    that another program wrote, or that was damaged. ``load`` and ``head`` raise it
    for that name only; the runtime counts it as a failed load of that refresher
    (logged, shown in ``status()``) and carries on, and the next store replaces
    the record. The message names the field and what is wrong with it, never its
    content.
    """


class CoordinatorUnavailable(Exception):
    """The coordination backend cannot be reached or did not answer in time.

    Every backend raises this, and only this, for a backend that is down, slow,
    locked or refusing: the caller falls back to fetching for itself and tries the
    backend again later. The backend's own exception is the ``__cause__``.
    """


@dataclass(frozen=True, slots=True)
class Stored:
    """A value that the lease holder stored for everyone, as the backend holds it.

    Attributes:
        version: Bumped by every store of this name. Strictly increasing while the
            backend keeps its data; a backend that lost its data (a Redis restarted
            without persistence) starts again at 1, so compare with ``!=``.
        data: The value as the codec encoded it.
        meta: The fetch metadata stored with it (ETag, expiry as wall time...).
        stored_at: When it was stored, in seconds since the epoch (the storer's clock).
        stored_by: The `owner` of the coordinator that stored it.
        answered: The highest refresh-now request number this value answers
            (see `Coordinator.request_refresh`); 0 if none.
        time: The backend's own clock when it answered this load, in seconds since
            the epoch, on the same clock as ``stored_at``; None if the backend
            cannot tell. With it, a reader measures how long ago the value was
            stored whatever its own clock says (hosts' clocks differ).
    """

    version: int
    data: bytes
    meta: Mapping[str, MetaValue] = field(default_factory=dict)
    stored_at: float = 0.0
    stored_by: str = ""
    answered: int = 0
    time: float | None = None


class Head(NamedTuple):
    """The cheap part of one name's entry: what a follower or a lease holder polls.

    Attributes:
        version: The stored value's version; None if nothing is stored.
        requested: How many refresh-now requests were made for the name so far.
        answered: The highest request number that the stored value answers.
        time: The backend's own clock when it answered, in seconds since the
            epoch (the clock of `Stored.stored_at`); None if it cannot tell.
    """

    version: int | None
    requested: int
    answered: int
    time: float | None = None

    @property
    def pending(self) -> bool:
        """Whether a refresh-now request is waiting for a fetch."""
        return self.requested > self.answered


class Change(NamedTuple):
    """One thing that happened to a name, as a subscription delivers it.

    Attributes:
        kind: ``"stored"`` (a new value is stored) or ``"refresh_requested"``.
        name: The refresher's name.
        number: The new version for ``"stored"``, the request number for
            ``"refresh_requested"``.
    """

    kind: Literal["stored", "refresh_requested"]
    name: str
    number: int


@runtime_checkable
class Coordinator(Protocol):
    """A coordination backend, as the runtime uses it: one instance per process.

    ``open`` and ``close`` (or ``async with``) bracket one lifespan; an instance
    may be opened again after it was closed (test clients run several lifespans),
    with a new `owner`. Opening does not contact the backend: a backend that is
    down at startup must not stop the app from starting. Every other operation
    may raise `CoordinatorUnavailable`, and returns or raises within the
    backend's ``timeout``; nothing else is raised for a backend problem. A
    backend that comes back is used again by the next operation.

    Whatever a backend reads is untrusted input (anyone who can write to the
    server can write anything): ``load`` and ``head`` check every field and raise
    `BadRecord` for a record they cannot use, rather than return it half-checked;
    ``store`` and ``request_refresh`` replace a damaged record rather than fail
    on it, and a lease key that is not a lease is taken over.

    Names are refresher names (Python identifiers); everything the backend keeps
    is namespaced by its ``prefix``, so coordinators with different prefixes on
    one server or file never see each other's leases, values or changes.
    """

    @property
    def owner(self) -> str:
        """Who this process is to the others, unique per process and per open."""

    async def open(self) -> None:
        """Get ready for one lifespan (a new `owner`); does not contact the backend."""

    async def close(self) -> None:
        """Release the leases still held (best effort, bounded) and free resources."""

    async def __aenter__(self) -> Coordinator:
        """`open`, returning self."""

    async def __aexit__(self, *exc_info: object) -> None:
        """`close`."""

    async def acquire(self, name: str, ttl: float) -> bool:
        """Take the lease on ``name`` for ``ttl`` seconds, or renew it if we hold it.

        Returns:
            True if we hold the lease now, False if another owner holds it. A lease
            that its holder neither renews nor releases is free after ``ttl``.
        """

    async def release(self, name: str) -> None:
        """Give up the lease on ``name`` if we hold it, so another can take it at once."""

    async def store(
        self, name: str, data: bytes, meta: Mapping[str, MetaValue], *, answered: int = 0
    ) -> int | None:
        """Store a fetched value, only if we still hold the lease (fencing).

        Atomically: check the lease, bump the version, store ``data`` and ``meta``,
        then tell the subscribers. A lease holder that stalled past its ``ttl`` and
        lost the lease to another cannot overwrite the newer value.

        Args:
            name: The refresher.
            data: The encoded value.
            meta: JSON-serialisable fetch metadata (``TypeError`` if it is not).
            answered: `Head.requested` as read before the fetch started: the
                refresh-now requests this fetch answers. Never lowers the stored one.

        Returns:
            The new version, or None if we do not hold the lease (nothing changed).
        """

    async def load(self, name: str) -> Stored | None:
        """The stored value of ``name``, or None if nothing is stored.

        Raises:
            BadRecord: what is stored is malformed or bigger than the backend reads.
        """

    async def head(self, name: str) -> Head:
        """Version and refresh-now counters of ``name``: one cheap read.

        Raises:
            BadRecord: a counter is malformed.
        """

    async def request_refresh(self, name: str) -> int:
        """Ask the lease holder, wherever it is, to fetch ``name`` now.

        Durable: the request is counted in the backend, so a holder that is busy
        fetching, or that takes the lease later, still sees it as `Head.pending`.
        Whoever asked can wait for a `Stored` whose ``answered`` reaches the
        returned number.

        Returns:
            The request's number (1, 2, ... per name).
        """

    def subscribe(self) -> AbstractAsyncContextManager[AsyncIterator[Change]]:
        """Changes to any name under the prefix, from the moment the context is entered.

        Use as ``async with coordinator.subscribe() as changes: async for change in
        changes: ...``. A change made after entering is delivered; so read the state
        you start from (`head`, `load`) after entering, not before. Consecutive
        changes of one name may be delivered as one. Entering, and iterating, raise
        `CoordinatorUnavailable` when the backend is lost; subscribe again later and
        re-read `head` of each name, since changes in between are not replayed.
        """


class Codec(Protocol):
    """Turns values into bytes that can cross process boundaries, and back.

    `JSONCodec` is the default. A codec must never execute code found in the
    data (no pickle): the bytes come from a shared server.
    """

    def encode(self, value: Any) -> bytes:
        """The bytes for ``value``; ``TypeError`` with a clear message if it cannot."""

    def decode(self, data: bytes) -> Any:
        """The value that `encode` made ``data`` from."""


class JSONCodec:
    """Values as compact UTF-8 JSON: dicts, lists, strings, numbers, booleans, None.

    What JSON has no type for changes on the way: a tuple comes back as a list, a
    dict key ``1`` as ``"1"``. A value JSON cannot hold (a set, a datetime, an
    object) is refused with a `TypeError` that names its type.
    """

    def encode(self, value: Any) -> bytes:
        """Encode ``value`` as JSON.

        Raises:
            TypeError: ``value`` holds something JSON cannot represent.
        """
        try:
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_refuse)
        except ValueError as exc:  # a circular reference
            raise TypeError(f"value is not JSON-serialisable ({exc}); pass a codec=") from None
        except TypeError as exc:
            raise TypeError(str(exc)) from None  # the message says it all; no json internals
        return text.encode()

    def decode(self, data: bytes) -> Any:
        """Decode JSON ``data``."""
        return json.loads(data)

    def __repr__(self) -> str:
        return "JSONCodec()"


def _refuse(value: object) -> Any:
    kind = type(value).__name__
    hint = "to a list" if isinstance(value, set | frozenset) else "to dicts, lists, strings and numbers"
    raise TypeError(f"value of type {kind} is not JSON-serialisable; convert it ({hint}) or pass a codec=")


def encode_meta(meta: Mapping[str, MetaValue]) -> str:
    """``meta`` as JSON text; a `TypeError` naming the bad entry if it is not JSON."""
    for key, value in meta.items():
        if not isinstance(key, str) or not (value is None or isinstance(value, str | int | float | bool)):
            raise TypeError(
                f"meta must map str to str, int, float, bool or None (got {key!r}: {type(value).__name__})"
            )
    return json.dumps(dict(meta), separators=(",", ":"))


def decode_meta(raw: object) -> dict[str, MetaValue]:
    """What `encode_meta` made, checked: a `BadRecord` for anything else.

    An object of at most `MAX_META_BYTES` whose values are strings, booleans,
    None, integers within a double's exact range or finite floats.
    """
    text = _text("meta", raw, MAX_META_BYTES)
    try:
        decoded = json.loads(
            text, parse_constant=_no_constant, parse_int=_bounded_int, parse_float=_finite_float
        )
    except BadRecord:
        raise
    except (ValueError, RecursionError) as exc:
        raise BadRecord(f"meta is not JSON ({type(exc).__name__})") from None
    if not isinstance(decoded, dict):
        raise BadRecord(f"meta must be a JSON object (got {_json_kind(decoded)})")
    for key, value in decoded.items():
        if not (value is None or isinstance(value, str | int | float | bool)):
            raise BadRecord(f"meta[{printable(key, 40)!r}] must be a string, number, boolean or null")
    return decoded


def _no_constant(name: str) -> Any:
    raise BadRecord(f"meta holds {name}, which is not a number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses as inf
        raise BadRecord("meta holds a number out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 16:  # also spares int() a quadratic parse of a huge number
        raise BadRecord("meta holds an integer out of range")
    return int(text)


def _json_kind(value: object) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _text(what: str, raw: object, limit: int) -> str:
    """``raw`` as text: a str, or bytes that are UTF-8; at most ``limit`` bytes."""
    if isinstance(raw, bytes | bytearray | memoryview):
        if len(raw) > limit:
            raise BadRecord(f"{what} is {len(raw)} bytes (at most {limit})")
        try:
            return bytes(raw).decode()
        except UnicodeDecodeError:
            raise BadRecord(f"{what} is not UTF-8 text") from None
    if isinstance(raw, str):
        if len(raw) > limit:
            raise BadRecord(f"{what} is {len(raw)} characters (at most {limit})")
        return raw
    raise BadRecord(f"{what} must be text (got {_kind(raw)})")


_COUNT = re.compile(r"[0-9]{1,15}")
_NUMBER = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?")  # what the backends write: digits, a point, digits


def parse_count(what: str, raw: object) -> int:
    """A version or request number as a backend holds it: 0 to `MAX_COUNT`; else `BadRecord`."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, bytes | str):
        text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
        if _COUNT.fullmatch(text) is None:
            raise BadRecord(f"{what} must be a whole number of at most 15 digits")
        value = int(text)
    else:
        raise BadRecord(f"{what} must be a whole number (got {_kind(raw)})")
    if not 0 <= value <= MAX_COUNT:
        raise BadRecord(f"{what} is out of range (0 to {MAX_COUNT})")
    return value


def parse_timestamp(what: str, raw: object) -> float:
    """Seconds since the epoch as a backend holds them: finite, 0 to `MAX_TIMESTAMP`; else `BadRecord`."""
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        value = float(raw)
    elif isinstance(raw, bytes | str):
        text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
        if _NUMBER.fullmatch(text) is None:
            raise BadRecord(f"{what} must be a number of seconds since the epoch")
        value = float(text)
    else:
        raise BadRecord(f"{what} must be a number (got {_kind(raw)})")
    if not (math.isfinite(value) and 0 <= value <= MAX_TIMESTAMP):
        raise BadRecord(f"{what} is not a time (seconds since the epoch)")
    return value


def parse_owner(raw: object) -> str:
    """Who stored a value: printable text of at most `MAX_OWNER_CHARS`; else `BadRecord`."""
    text = _text("stored_by", raw, MAX_OWNER_CHARS * 4)
    if not text or len(text) > MAX_OWNER_CHARS or printable(text) != text:
        raise BadRecord(f"stored_by must be printable text of 1 to {MAX_OWNER_CHARS} characters")
    return text


def parse_data(raw: object, max_bytes: int) -> bytes:
    """The stored value's bytes: binary, at most ``max_bytes``; else `BadRecord`."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise BadRecord(f"data must be bytes (got {_kind(raw)})")
    if len(raw) > max_bytes:
        raise BadRecord(
            f"data is {len(raw)} bytes, over max_bytes ({max_bytes}); raise max_bytes if that is right"
        )
    return bytes(raw)


def parse_stored(fields: Mapping[str, object], *, max_bytes: int, time: float | None = None) -> Stored | None:
    """A `Stored` from the raw fields of one entry, each checked; None if nothing is stored.

    ``fields`` maps ``version``, ``data``, ``meta``, ``stored_at``, ``stored_by``
    and ``answered`` to what the backend read (bytes, str, int, float or None for
    a missing field). An entry without ``version`` and ``data`` holds only
    refresh-now counters: nothing is stored. Raises `BadRecord` naming the first
    field that is wrong.
    """
    version, data = fields.get("version"), fields.get("data")
    if data is None and version in (None, 0, b"0", "0"):
        return None
    for required in ("version", "data", "meta", "stored_at", "stored_by"):
        if fields.get(required) is None:
            raise BadRecord(f"{required} is missing")
    answered = fields.get("answered")
    return Stored(
        version=parse_count("version", version),
        data=parse_data(data, max_bytes),
        meta=decode_meta(fields["meta"]),
        stored_at=parse_timestamp("stored_at", fields["stored_at"]),
        stored_by=parse_owner(fields["stored_by"]),
        answered=0 if answered is None else parse_count("answered", answered),
        time=time,
    )


def parse_head(version: object, requested: object, answered: object, *, time: float | None = None) -> Head:
    """A `Head` from the raw counters of one entry (None for a missing one), each checked."""
    number = None if version is None else parse_count("version", version)
    return Head(
        version=number or None,  # 0: only refresh-now counters, nothing stored
        requested=0 if requested is None else parse_count("requested", requested),
        answered=0 if answered is None else parse_count("answered", answered),
        time=time,
    )


def _kind(value: object) -> str:
    return type(value).__name__


def new_owner() -> str:
    """An owner id that says where it runs: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(6)}"


def check_prefix(prefix: str) -> str:
    """``prefix`` if it is usable as a namespace; a clear `ValueError` if not."""
    if not isinstance(prefix, str) or not prefix or any(char.isspace() for char in prefix):
        raise ValueError(f"prefix must be a non-empty string without whitespace (got {prefix!r})")
    return prefix


def check_max_bytes(owner: str, max_bytes: object) -> int:
    """``max_bytes`` if it is a positive number of bytes; a clear `ValueError` if not."""
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
        raise ValueError(f"{owner}: max_bytes must be a positive number of bytes (got {max_bytes!r})")
    return max_bytes


def check_name(name: str) -> str:
    """``name`` if it is a refresher name (an identifier); a clear `ValueError` if not."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a coordinated name must be a refresher name, a Python identifier (got {name!r})")
    return name


async def call_blocking(
    func: Callable[[], T],
    *,
    timeout: float,  # noqa: ASYNC109 - the deadline of a thread we may abandon, not a scope
    limiter: anyio.CapacityLimiter,
    describe: Callable[[BaseException], str | None],
    backend: str,
) -> T:
    """Run a blocking backend call in a worker thread, bounded by ``timeout``.

    A call still running at the deadline is abandoned (its thread finishes on its
    own: the backends bound their blocking a little below ``timeout``, so that a
    slow backend mostly reports its own error) and reported as
    `CoordinatorUnavailable`, as is every exception that ``describe`` recognises as
    a backend problem (it returns the message, or None for anything else, which
    propagates as it is).
    """
    with anyio.move_on_after(timeout) as scope:
        try:
            return await anyio.to_thread.run_sync(func, abandon_on_cancel=True, limiter=limiter)
        except Exception as exc:
            message = describe(exc)
            if message is None:
                raise
            raise CoordinatorUnavailable(f"{backend}: {message}") from exc
    assert scope.cancelled_caught
    raise CoordinatorUnavailable(f"{backend}: no answer within {timeout:g}s")


class ChangeStream:
    """The iterator a subscription yields: changes, or the error that ended them."""

    def __init__(self, receive: MemoryObjectReceiveStream[Change | CoordinatorUnavailable]) -> None:
        self._receive = receive

    def __aiter__(self) -> ChangeStream:
        return self

    async def __anext__(self) -> Change:
        try:
            item = await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None
        if isinstance(item, CoordinatorUnavailable):
            raise item
        return item
