"""What a source gets from the lifespan it runs in: clock, shared resources, threads.

The runtime hands each source its `SourceContext` in `Source.open`. A fetch that
is a plain async context manager (a source written before the `Source` protocol)
is entered instead, and `SourceContext.current()` returns its context while it
enters. A source opened by hand (``async with source:`` in a script or a test)
gets a standalone context: the system clock, and resources of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from contextvars import ContextVar
from typing import Any, Protocol, TypeVar

import anyio

from asgi_refresh._clock import Clock, SystemClock
from asgi_refresh._thread import ThreadCall

T = TypeVar("T")


class SharedResources:
    """Objects the sources of one lifespan share, made once per key (one HTTP client)."""

    def __init__(self) -> None:
        self.objects: dict[str, Any] = {}
        self.lock = anyio.Lock()  # two sources opening at once must not make two clients


class Values(Protocol):
    """Read access to the published values: what `SourceContext.handle` offers a source.

    The running middleware's `RefreshHandle` is one; a source that needs another
    refresher's value (a token) reads it through this.
    """

    def value(self, name: str) -> Any:
        """The value published for ``name`` now (`LookupError` before its first load)."""

    async def wait_for(self, name: str) -> Any:
        """The value published for ``name``, once it has one."""


class Lifespan(Protocol):
    """What a source's context asks of the running middleware (the runtime implements it)."""

    def start_source_task(self, func: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        """Run ``func`` in the lifespan's task group until shutdown."""

    def source_changed(self, name: str) -> None:
        """Refresher ``name``'s source says its data changed: fetch it soon."""


_opening: ContextVar[SourceContext | None] = ContextVar("asgi_refresh_opening_source", default=None)


class SourceContext:
    """The lifespan as one source sees it, handed to `Source.open`; valid until the source closes.

    Attributes:
        name: The refresher's name (for messages and thread names).
        clock: The middleware's clock (a `FakeClock` in tests): use it for any
            waiting and timing of your own, so that tests drive it.
        handle: The running middleware's `RefreshHandle`, to read another
            refresher's value (a token); None for a source opened by hand.
        timeout: The refresher's ``timeout`` in seconds (what bounds each fetch),
            or None for none (and for a source opened by hand): a source whose
            fetch waits on purpose (a blocking query) waits less than this.
    """

    __slots__ = ("_lifespan", "_shared", "_stack", "clock", "handle", "name", "timeout")

    def __init__(
        self,
        *,
        name: str,
        clock: Clock,
        shared: SharedResources,
        stack: AsyncExitStack,
        handle: Values | None = None,
        lifespan: Lifespan | None = None,
        timeout: float | None = None,
    ) -> None:
        self.name = name
        self.timeout = timeout
        self.clock = clock
        self._shared = shared
        self._stack = stack
        self.handle = handle  # the RefreshHandle of the running middleware; None standalone
        self._lifespan = lifespan  # None: opened by hand

    @staticmethod
    def claim(source: object, open_context: SourceContext | None, context: SourceContext) -> SourceContext:
        """``context``, for ``source`` being opened; refuses a source that is open already.

        Args:
            source: The source (its repr names it in messages).
            open_context: The context the source holds now, if it is open.
            context: The context it is being opened with.
        """
        if open_context is not None:
            raise RuntimeError(
                f"{source!r} is already open: a source serves one refresher of one running "
                "middleware; create one source per refresher"
            )
        return context

    @staticmethod
    def required(source: object, open_context: SourceContext | None) -> SourceContext:
        """The context of an open ``source``; a clear error if it was never entered."""
        if open_context is None:
            raise RuntimeError(
                f"{source!r} is not open: use it as the fetch of a Refresher, or enter it "
                "first with `async with source:`"
            )
        return open_context

    @staticmethod
    def current(owner: str) -> SourceContext:
        """The context of the refresher being opened, or a standalone one for ``owner``."""
        context = _opening.get()
        if context is not None:
            return context
        return SourceContext(
            name=owner, clock=SystemClock(), shared=SharedResources(), stack=AsyncExitStack()
        )

    @property
    def standalone(self) -> bool:
        """Whether the source was entered by hand rather than by a running middleware."""
        return self._lifespan is None

    async def shared(self, key: str, factory: Callable[[], AbstractAsyncContextManager[T]]) -> T:
        """One object per lifespan for ``key`` (an HTTP client), closed when the lifespan ends."""
        async with self._shared.lock:
            if key not in self._shared.objects:
                self._shared.objects[key] = await self._stack.enter_async_context(factory())
        value: T = self._shared.objects[key]
        return value

    async def aclose_standalone(self) -> None:
        """Close what a standalone context opened; the lifespan closes its own."""
        if self.standalone:
            await self._stack.aclose()

    async def run_in_thread(self, func: Callable[[], T]) -> T:
        """Run a blocking call (file I/O, a big parse) off the event loop.

        A daemon thread, so that a hung call (a dead network file system) cannot
        keep the process alive at shutdown; test clocks hold still meanwhile.
        """
        call = ThreadCall(func, name=f"asgi_refresh:{self.name}")
        call.start()
        with self.clock.hold():
            result: T = await call.result()
        return result

    def start_soon(self, func: Callable[[], Coroutine[Any, Any, None]]) -> bool:
        """Run ``func`` in the lifespan's task group until shutdown; False if standalone."""
        if self._lifespan is None:
            return False
        self._lifespan.start_source_task(func, f"asgi_refresh:{self.name}:source")
        return True

    def refresh_soon(self) -> None:
        """Ask for a refresh of this source's refresher now (a watched file changed)."""
        if self._lifespan is not None:
            self._lifespan.source_changed(self.name)


def opening(context: SourceContext) -> Any:
    """Make ``context`` what `SourceContext.current` returns; returns the reset token."""
    return _opening.set(context)


def done_opening(token: Any) -> None:
    """Undo `opening`."""
    _opening.reset(token)
