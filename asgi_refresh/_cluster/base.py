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
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol, Self, runtime_checkable

from asgi_refresh._text import printable

MetaValue = str | int | float | bool | None
"""What fetch metadata (an ETag, an expiry) may hold: it is stored as JSON."""

DEFAULT_PREFIX = "asgi_refresh"
DEFAULT_TIMEOUT = 2.0
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
"""The largest stored value a backend reads (its encoded bytes); a bigger one is a `BadRecord`."""


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


class Poll(NamedTuple):
    """One name's lease and head, as `Coordinator.poll` reads them.

    Attributes:
        held: Whether this process holds the lease now.
        head: The name's head, or the `BadRecord` that reading it raised.
    """

    held: bool
    head: Head | BadRecord


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
    with a new `owner`. Opening an open instance, or any operation on one that is
    not open, raises `RuntimeError`; closing twice is harmless. Opening does not
    contact the backend: a backend that is down at startup must not stop the app
    from starting. Every other operation may raise `CoordinatorUnavailable`, and
    returns or raises within the backend's ``timeout``; nothing else is raised
    for a backend problem. A backend that comes back is used again by the next
    operation.

    Whatever a backend reads is untrusted input (anyone who can write to the
    server can write anything): ``load`` and ``head`` check every field and raise
    `BadRecord` for a record they cannot use, rather than return it half-checked;
    ``store`` and ``request_refresh`` replace a damaged record rather than fail
    on it, and a lease key that is not a lease is taken over.

    Names are refresher names (Python identifiers); everything the backend keeps
    is namespaced by its ``prefix``, so coordinators with different prefixes on
    one server or file never see each other's leases, values or changes. A ttl
    that is not positive, or a name that is not an identifier, is a `ValueError`.

    Subclass it to inherit `poll` and ``async with``. Every rule above is a test
    in `asgi_refresh.testing.CoordinatorContract`: a backend of your own passes
    it by subclassing it (see the guide "Write your own coordinator").
    """

    @property
    def owner(self) -> str:
        """Who this process is to the others, unique per process and per open."""

    async def open(self) -> None:
        """Get ready for one lifespan (a new `owner`); does not contact the backend."""

    async def close(self) -> None:
        """Release the leases still held (best effort, bounded) and free resources."""

    async def __aenter__(self) -> Self:
        """`open`, returning self."""
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """`close`."""
        await self.close()

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
                refresh-now requests this fetch answers. Never lowers the stored one,
                and never raises it past the requests the entry has counted (a fetch
                that began before the backend lost its data answers none of the new ones).

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

    async def poll(self, names: Sequence[str], ttl: float) -> dict[str, Poll]:
        """Renew or take the lease of every name and read its head (each process, every ``lease_ttl / 3``).

        The default makes one `acquire` and one `head` call per name (a head that
        raises anything but `CoordinatorUnavailable` is that name's `BadRecord`); a backend that
        can do it all in one round trip (a script, a transaction) should, so that a
        thousand idle refreshers cost one call per poll, not two thousand. A name
        whose head is malformed gets its `BadRecord` in place of the head.

        Returns:
            A `Poll` per name, in the order given.

        Raises:
            CoordinatorUnavailable: the backend failed (for all names: the caller
                falls back to fetching for itself).
        """
        polled: dict[str, Poll] = {}
        for name in names:
            held = await self.acquire(name, ttl)
            try:
                head: Head | BadRecord = await self.head(name)
            except CoordinatorUnavailable:
                raise
            except BadRecord as exc:
                head = exc
            except Exception as exc:  # a parser that let int() or json.loads fail: that name's record is bad
                head = BadRecord(f"head() raised {type(exc).__name__}: {printable(str(exc), 200)}")
            polled[name] = Poll(held, head)
        return polled

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
