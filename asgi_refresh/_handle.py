"""The control handle at ``scope["state"]["asgi_refresh"]``, and the error its refresh raises."""

from __future__ import annotations

import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

import anyio
import anyio.lowlevel

if TYPE_CHECKING:
    from asgi_refresh._status import Status, Unhealthy


T = TypeVar("T")

Kind = Literal["refresher", "family", "derived"]
"""What a name in ``status()`` stands for."""


class RefreshError(RuntimeError):
    """A refresher could not do what was asked of it; the cause is the ``__cause__``.

    Raised by ``handle.refresh(name)`` when the fetch fails (the previous value
    stays published), and by the middleware after it has reported
    ``lifespan.startup.failed`` because a required refresher could not load (or
    ``lifespan.shutdown.failed`` because one would not stop), so that test clients
    such as ``TestClient`` and ``asgi_lifespan.LifespanManager`` raise it. A
    ``RuntimeError``, as that failure always was.

    Also raised by ``handle.get(name, key)`` when a key of a `RefresherFamily`
    has no value and cannot load.

    Attributes:
        name: The refresher (or family) that failed (the first one, when several did).
        key: The family's key that could not load; None for a refresher.
    """

    def __init__(self, name: str, message: str, *, key: object = None) -> None:
        super().__init__(message)
        self.name = name
        self.key = key


@dataclass(frozen=True)
class LoopHome:
    """The event loop the refreshers run on, so that other threads can reach it.

    The runtime's state (cancel scopes, events, the published dict) belongs to
    that loop: touched from another thread, anyio raises ``no running event loop``
    or, worse, leaves a cancel scope half-cancelled so that shutdown waits for the
    next scheduled refresh. Calls from other threads (a sync test beside
    ``TestClient``'s portal thread, a plain ``def`` fetch in its worker thread) are
    carried onto the loop instead.
    """

    token: anyio.lowlevel.EventLoopToken
    thread: int

    @classmethod
    def here(cls) -> LoopHome:
        """The loop running the calling task."""
        return cls(anyio.lowlevel.current_token(), threading.get_ident())

    def is_away(self) -> bool:
        """Whether the caller runs in another thread than the loop."""
        return threading.get_ident() != self.thread

    def call(self, func: Callable[..., T], *args: Any) -> T:
        """Run ``func(*args)`` on the loop and return what it returns (or raise what it raises).

        Blocks the calling thread for one turn of the loop. Once the loop has
        finished nothing runs there any more, so ``func`` runs right here.
        """
        import anyio.from_thread  # on first use: most apps never call in from another thread

        try:
            return anyio.from_thread.run_sync(func, *args, token=self.token)
        except anyio.RunFinishedError:
            return func(*args)

    async def wait(self, func: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """Await ``func(*args)`` on the loop, from a task of another loop in another thread."""
        import anyio.from_thread
        import anyio.to_thread

        def blocking() -> T:
            return anyio.from_thread.run(func, *args, token=self.token)

        # Abandoned on cancellation: the caller stops waiting, the call finishes
        # on the refreshers' loop (a shared fetch others may be waiting for).
        return await anyio.to_thread.run_sync(blocking, abandon_on_cancel=True)


class Controls(Protocol):
    """What the handle controls: one lifespan's running refreshers (the runtime)."""

    @property
    def home(self) -> LoopHome | None:
        """The loop the refreshers run on, from startup until they have stopped; None otherwise."""

    @property
    def names(self) -> list[str]:
        """The refresher names, in the order they were given."""

    def kind(self, name: str) -> Kind | None:
        """Whether ``name`` is a refresher, a family or a derived value; None if it is none of them."""

    async def refresh(self, name: str) -> Any:
        """Fetch ``name`` now; its value, or `RefreshError`."""

    async def get(self, name: str, key: object) -> Any:
        """The value of family ``name`` for ``key``."""

    def status(self) -> dict[str, Status]:
        """The status report."""

    def value(self, name: str) -> Any:
        """The value published for ``name`` now."""

    async def wait_for(self, name: str) -> Any:
        """The value published for ``name``, once it has one."""

    def override(self, name: str, value: Any) -> None:
        """Publish ``value`` for ``name`` and stop refreshing it (tests)."""

    @property
    def running(self) -> bool:
        """Whether the refreshers run (between startup and shutdown)."""

    def refresh_soon(self, name: str) -> None:
        """Start a fetch of ``name`` without waiting for it (`LookupError` for an unknown name)."""

    def unhealthy(self) -> list[Unhealthy]:
        """The required refreshers without a fresh enough value: names, reasons and ages."""

    async def accept(self, name: str) -> Any:
        """Publish the value held back."""

    async def reject(self, name: str) -> None:
        """Drop the value held back."""

    async def pin(self, name: str, version: str) -> Any:
        """Publish a kept version until unpinned."""

    def unpin(self, name: str) -> None:
        """Follow the upstream again."""

    async def rollback(self, name: str) -> str:
        """Pin the version before the current one."""


class RefreshHandle:
    """Control of the running refreshers, at ``scope["state"]["asgi_refresh"]``.

    Handlers reach it as ``request.state.asgi_refresh``; tests get it from
    ``RefreshMiddleware.handle`` or the lifespan state.

    Every method works from any thread: called outside the event loop the
    refreshers run on (a sync test beside ``TestClient``, whose app runs in a
    portal thread; a plain ``def`` fetch in its worker thread), a method is carried
    onto that loop and waits for it. The ``async`` ones are awaited in an async
    function as usual, on any event loop; from sync code, run them on the app's
    loop: ``client.portal.call(handle.refresh, "names")`` with ``TestClient``.
    """

    def __init__(self, runtime: Controls) -> None:
        self._runtime = runtime

    def _call(self, func: Callable[..., T], *args: Any) -> T:
        home = self._runtime.home
        if home is None or not home.is_away():
            return func(*args)
        return home.call(func, *args)

    async def _wait(self, func: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        home = self._runtime.home
        if home is None or not home.is_away():
            return await func(*args)
        return await home.wait(func, *args)

    @property
    def names(self) -> list[str]:
        """The refresher names, in the order they were given.

        Only what fetches: neither families nor derived values, which have no fetch
        of their own to pin or override (``status()`` has an entry for each).
        """
        return self._runtime.names

    @property
    def running(self) -> bool:
        """Whether the refreshers are running: from startup until they stop at shutdown."""
        return self._runtime.running

    async def refresh(self, name: str) -> Any:
        """Fetch ``name`` now, publish the value and return it.

        Concurrent calls for one name share one fetch. A successful refresh also
        restarts the refresher's schedule from now.

        Raises:
            LookupError: there is no refresher called ``name``.
            RefreshError: the fetch failed; the previous value stays published.
            RuntimeError: the refreshers are not running.
        """
        return await self._wait(self._runtime.refresh, name)

    async def get(self, name: str, key: object) -> Any:
        """The value of `RefresherFamily` ``name`` for ``key``.

        A warm key is answered at once, without waiting for any fetch (a value
        past the family's ``every`` too: one refresh starts in the background). A
        cold key is loaded first; concurrent calls for one cold key share one
        fetch. The value is the one object the family holds: do not mutate it.

        Raises:
            LookupError: there is no family called ``name``.
            TypeError: ``key`` is not a str, an int or a tuple of them.
            ValueError: ``key`` is too long (over 256 characters).
            RefreshError: the key has no value and its load failed (its ``key``
                attribute says which); a key that failed is not fetched again
                before its backoff ends: calls meanwhile get the same error at once.
            RuntimeError: the refreshers are not running.
        """
        return await self._wait(self._runtime.get, name, key)

    def status(self) -> dict[str, Status]:
        """Return a JSON-serialisable report keyed by refresher name.

        Each entry has ``source`` (``"http"``, ``"file"`` or ``"python"`` for
        any other fetch), ``required``, ``stale`` (true when the value is older
        than the refresher's ``max_stale``, or it has no fetched value yet and
        a ``max_stale`` is set, or it is a `Fresh` value past its expiry),
        ``last_success_at``, ``last_changed_at`` and
        ``next_refresh_at`` (ISO 8601 UTC or None), ``last_outcome`` (``"changed"``,
        ``"unchanged"``, ``"not_modified"``, ``"failed"`` or None before the first
        fetch), ``last_error`` (None or a one-line description, never the value),
        ``consecutive_failures``, ``refresh_count`` (successful fetches, including
        unchanged and not-modified ones), ``last_duration`` and ``age`` (seconds
        since the last successful fetch, or None), and ``lag`` (seconds by which
        the last scheduled fetch started late: near 0 unless the process cannot
        keep up).

        A `RefresherFamily` has an entry under its name too, with the same
        fields (``source`` is ``"family"``; ``last_error`` and
        ``consecutive_failures`` are those of its most failing key) and
        ``family``: its number of ``keys``, ``loads``, ``refreshes``,
        ``failures``, ``hits``, ``misses``, ``evictions`` and up to 10
        ``failing_keys`` (each key shown as its escaped ``repr``, at most 80
        characters). Never a value.
        """
        return self._call(self._runtime.status)

    def value(self, name: str) -> Any:
        """The value published for ``name`` right now.

        For code outside a request that needs a refreshed value, such as the
        fetch of another refresher (an API call that needs the current token).

        Raises:
            LookupError: there is no refresher called ``name``, or it is required
                and has not loaded yet.
        """
        return self._call(self._runtime.value, name)

    async def wait_for(self, name: str) -> Any:
        """The value published for ``name``, once it has one.

        Waits for the first load of a required refresher, so the fetch of another
        refresher can depend on it (an API call that needs the current token)
        without failing while both load at startup.

        Raises:
            LookupError: there is no refresher called ``name``.
        """
        return await self._wait(self._runtime.wait_for, name)

    async def accept(self, name: str) -> Any:
        """Publish the value that ``name``'s guards held back (quarantine); return it.

        With a coordinator, the process holding the lease publishes it, for every
        process.

        Raises:
            LookupError: no refresher called ``name``, or it holds no value back.
            TimeoutError: with a coordinator, the lease holder did not act in time.
        """
        return await self._wait(self._runtime.accept, name)

    async def reject(self, name: str) -> None:
        """Drop the value that ``name``'s guards held back; the published value stays.

        The same value fetched again stays held back, quietly; a different one is
        guarded anew.

        Raises:
            LookupError: no refresher called ``name``, or it holds no value back.
            TimeoutError: with a coordinator, the lease holder did not act in time.
        """
        await self._wait(self._runtime.reject, name)

    async def pin(self, name: str, version: str) -> Any:
        """Publish kept version ``version`` of ``name`` (``"3-9f2c41ab"`` or ``"3"``) until `unpin`.

        The refresher keeps fetching while pinned (``status()`` shows what the
        upstream has under ``upstream``) but publishes only the pinned version.
        With a coordinator the pin holds for every process, including ones that
        start later. Returns the pinned value.

        Raises:
            LookupError: no refresher called ``name``, it keeps no versions
                (``keep_versions``), or it keeps no such version.
            TimeoutError: with a coordinator, the lease holder did not act in time.
        """
        return await self._wait(self._runtime.pin, name, version)

    def unpin(self, name: str) -> None:
        """Follow the upstream again: a fetch starts now, and its value is published as usual.

        Until it succeeds, the pinned value stays published.

        Raises:
            LookupError: no refresher called ``name``, or it keeps no versions.
        """
        self._call(self._runtime.unpin, name)

    async def rollback(self, name: str) -> str:
        """Pin the version published before the current one; return its id.

        Raises:
            LookupError: no refresher called ``name``, or no earlier version is kept.
        """
        return await self._wait(self._runtime.rollback, name)


def override(handle: RefreshHandle, name: str, value: Any) -> None:
    """Publish ``value`` for ``name`` and stop refreshing it, from any thread (for the testing helpers)."""
    handle._call(handle._runtime.override, name, value)
