"""The plumbing of a coordinator on a blocking client (redis-py, sqlite3), written once.

Blocking calls run in worker threads, bounded by the backend's timeout and
reported as `CoordinatorUnavailable` when the backend fails; a subscription's
changes arrive through a memory stream (`ChangeStream`); `BlockingCoordinator`
brackets a lifespan (a new owner at each open, the leases given back at close).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import TypeVar

import anyio
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream

from asgi_refresh._cluster.base import Change, Coordinator, CoordinatorUnavailable
from asgi_refresh._cluster.records import new_owner

T = TypeVar("T")

_RELEASE_ON_CLOSE = 1.0  # at most this long to give the leases back at close


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


class BlockingCoordinator(Coordinator):
    """What a coordinator on a blocking client shares: the lifespan, the leases held, calls off the loop.

    A subclass writes the operations (`acquire`, `store`, `load`, ...) with `call`,
    which runs one blocking call in a worker thread within the timeout, and fills
    in three hooks: `backend` (how messages name it), `describe` (which exceptions
    are the backend failing), and `disconnect` (drop connections at close).
    `open` starts a lifespan with a new `owner`; `close` gives back the leases
    still held, bounded as a whole, then disconnects.

    Args:
        timeout: How long one operation may take before `CoordinatorUnavailable`.
        threads: How many calls may run at once (a connection pool's size; 1 for a
            single connection).
    """

    def __init__(self, *, timeout: float, threads: int) -> None:
        self.timeout = timeout
        self._threads = threads
        self._owner = new_owner()
        self._open = False
        self._held: set[str] = set()
        self._limiter: anyio.CapacityLimiter | None = None

    @property
    def backend(self) -> str:
        """How messages name the backend, without credentials (``Redis at host:6379``)."""
        return repr(self)

    @property
    def owner(self) -> str:
        """Who this process is to the others, unique per process and per open."""
        return self._owner

    def describe(self, exc: BaseException) -> str | None:
        """A one-line message for an exception that means the backend failed; None for anything else.

        What it recognises becomes `CoordinatorUnavailable`; anything else is a bug
        and propagates as it is.
        """
        return None

    def connect(self) -> None:
        """Get ready at `open` (make a client; no connection yet: the backend may be down)."""

    def disconnect(self) -> None:
        """Drop the connections at `close` (in a worker thread); must not raise."""

    async def open(self) -> None:
        """Start a lifespan with a new `owner`; does not contact the backend."""
        if self._open:
            raise RuntimeError(f"{self!r} is already open: one coordinator serves one lifespan at a time")
        self._owner = new_owner()
        self._held = set()
        self._limiter = anyio.CapacityLimiter(self._threads)
        self.connect()
        self._open = True

    async def close(self) -> None:
        """Give back the leases still held (best effort, bounded as a whole), then disconnect."""
        if not self._open:
            return
        try:
            # One bounded attempt: a backend that is down must not hold up shutdown.
            with anyio.move_on_after(_RELEASE_ON_CLOSE, shield=True):
                with contextlib.suppress(CoordinatorUnavailable):
                    await self.release_all(sorted(self._held))
        finally:
            self._open = False
            self._held = set()
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.disconnect)

    async def release_all(self, names: Sequence[str]) -> None:
        """Give up the leases on ``names`` that we hold; `close` gives back every lease still held with it.

        This default releases one name at a time, stopping at the first failure; a
        backend that can release them all in one call (a script, a transaction)
        overrides it, so that a process with a thousand leases shuts down in one call.
        """
        for name in names:
            await self.release(name)

    def holds(self, name: str, held: bool) -> None:
        """Record whether this process holds ``name``'s lease, so that `close` gives it back."""
        if held:
            self._held.add(name)
        else:
            self._held.discard(name)

    async def call(self, func: Callable[[], T]) -> T:
        """Run ``func`` (a blocking backend call) in a worker thread, within the timeout.

        Raises:
            CoordinatorUnavailable: the backend failed (`describe`) or did not answer in time.
            RuntimeError: the coordinator is not open.
        """
        if not self._open or self._limiter is None:
            raise RuntimeError(f"{self!r} is not open: use `async with` or call open() first")
        return await call_blocking(
            func, timeout=self.timeout, limiter=self._limiter, describe=self.describe, backend=self.backend
        )
