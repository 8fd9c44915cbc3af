"""A plain function as a source: what ``Refresher(name, fetch)`` runs when ``fetch`` is not a `Source`."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, cast

from asgi_refresh._contain import is_async_callable
from asgi_refresh._sources.base import Source, is_source
from asgi_refresh._sources.context import SourceContext, done_opening, opening
from asgi_refresh._sources.outcome import Fetched
from asgi_refresh._thread import ThreadCall


class FunctionSource(Source):
    """Calls a zero-argument callable: ``async def`` on the event loop, plain ``def`` in a thread.

    A plain function may block (a sync HTTP client, a file read), so it runs in a
    daemon thread of its own, which shutdown and timeouts can abandon; one at a
    time, so that a hung call cannot pile up threads. A plain function that returns
    a coroutine (``lambda: load(url)``) has it awaited on the event loop.

    A callable that is also an async context manager (a source written before the
    `Source` protocol) is entered at `open` and exited at `close`;
    `SourceContext.current()` gives it its context while it enters.
    """

    kind = "python"

    def __init__(self, fetch: Callable[[], Any], *, name: str) -> None:
        self._fetch = fetch
        self._name = name
        self._is_async = is_async_callable(fetch)
        kind = type(fetch)
        self._manages_context = hasattr(kind, "__aenter__") and hasattr(kind, "__aexit__")
        self._context: SourceContext | None = None
        self._entered = False
        self._thread: ThreadCall | None = None

    @property
    def origin(self) -> str:
        """The function's (or the callable's class's) qualified name."""
        target: object = self._fetch
        while isinstance(target, functools.partial):
            target = target.func
        if not (inspect.isfunction(target) or inspect.ismethod(target) or inspect.isbuiltin(target)):
            target = type(target)  # an object with __call__: its class says what it is
        module = getattr(target, "__module__", None) or "?"
        return f"python {module}.{getattr(target, '__qualname__', type(target).__name__)}"

    async def open(self, context: SourceContext) -> None:
        """Keep the context; enter the callable if it is an async context manager."""
        self._context = context
        if self._manages_context:
            token = opening(context)
            try:
                await self._fetch.__aenter__()  # type: ignore[attr-defined]
            finally:
                done_opening(token)
            self._entered = True

    async def close(self) -> None:
        """Exit the callable if `open` entered it."""
        if self._entered:
            self._entered = False
            await self._fetch.__aexit__(None, None, None)  # type: ignore[attr-defined]

    async def fetch(self) -> Fetched:
        """Call the function; its value (or its `Fetched`) is the result."""
        if self._is_async:
            result = await self._fetch()
        else:
            result = await self._call_in_thread()
        return result if isinstance(result, Fetched) else Fetched(result)

    async def _call_in_thread(self) -> Any:
        if self._thread is not None and self._thread.is_running():
            raise RuntimeError(
                "the previous fetch is still blocked in its worker thread (it timed out "
                "and was abandoned); not starting another until it returns"
            )
        context = self._context
        assert context is not None, "opened before its first fetch"
        call = self._thread = ThreadCall(self._fetch, name=f"asgi_refresh:{self._name}")
        call.start()
        with context.clock.hold():
            value = await call.result()
        if inspect.iscoroutine(value):
            # `lambda: load(url)`: the plain function ran in the thread; the coroutine
            # it made belongs on the event loop.
            return await value
        if inspect.isawaitable(value):
            raise TypeError(
                f"Refresher {self._name!r}: fetch is a plain function that returned "
                f"{type(value).__name__}; return the value itself, or declare fetch `async def`"
            )
        return value


def source_for(fetch: Source | Callable[[], Any], name: str) -> Source:
    """The source refresher ``name`` fetches with: ``fetch`` if it is a `Source`, else a `FunctionSource`."""
    if is_source(fetch):
        return fetch
    return FunctionSource(cast("Callable[[], Any]", fetch), name=name)


def fetcher_of(source: Source) -> Callable[[], Awaitable[Any]]:
    """What the runtime awaits for one fetch from ``source``.

    Its ``fetch``; for an ``async def`` wrapped in a `FunctionSource`, the function
    itself: a fetch is then nothing but awaiting it, and the runtime reads a plain
    value as it reads a `Fetched` one. No wrapper coroutine and no `Fetched` per
    refresh (a fifth of what the runtime spends on a refresh).
    """
    if isinstance(source, FunctionSource) and source._is_async:
        fetch: Callable[[], Awaitable[Any]] = source._fetch
        return fetch
    return source.fetch
