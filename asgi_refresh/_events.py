"""Refresh events: what happened to each fetch, for metrics, alerts and tracing."""

from __future__ import annotations

import contextvars
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import anyio

from ._clock import Clock
from ._contain import describe_error, escapes

if TYPE_CHECKING:  # anyio loads its streams on first use: so do we
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

logger = logging.getLogger("asgi_refresh")

EventKind = Literal[
    "started",
    "succeeded",
    "not_modified",
    "failed",
    "cancelled",
    "changed",
    "quarantined",
    "quarantine_ended",
    "accepted",
    "rejected",
    "pinned",
    "unpinned",
    "restored",
    "webhook",
]

Listener = Callable[["RefreshEvent"], object]
"""A callable taking a `RefreshEvent`; plain or ``async def``."""

_QUEUE_SIZE = 10_000  # async listener calls waiting to run; beyond this, events are dropped
_LISTENER_TIMEOUT = 30.0
_REPEAT_ERROR_EVERY = 300.0  # a listener that keeps raising logs one ERROR per this many seconds


@dataclass(frozen=True, slots=True)
class RefreshEvent:
    """Something that happened to one refresher's fetch.

    Every fetch sends ``started`` and then exactly one of ``succeeded``,
    ``not_modified`` (the source said the data is unchanged: an HTTP 304 or an
    unchanged file), ``failed`` or ``cancelled`` (shutdown stopped it before it
    ended; ``duration`` is how long it had run, nothing was recorded). A
    ``succeeded`` fetch whose value differs from the published one is followed
    by ``changed`` once the new value is published.

    Last known good adds: ``quarantined`` (a guard held a fetched value back;
    ``error`` says why), ``accepted`` and ``rejected`` (an operator decided on
    it), ``quarantine_ended`` (the held value was dropped without an operator:
    the upstream went back to the published value, or sent a newer one that
    passes the guards), ``pinned`` and ``unpinned``, and ``restored`` (a
    refresher whose first load failed started from its snapshot). An
    ``accepted`` or ``pinned`` that changes the published value comes with a
    ``changed`` (sent first: the value is published by then).

    Webhooks add ``webhook``: one per delivery to a configured hook (see
    `Webhook`), whatever became of it. Its ``name`` is the hook's name, not a
    refresher's, and its ``error`` is None for an accepted delivery, else what
    became of it: ``"duplicate"`` (a replayed ``webhook-id``: answered, not
    refreshed), ``"unauthorized"`` (a bad or missing signature, or a timestamp
    out of the window), ``"too_large"`` or ``"timeout"`` (the body).

    Attributes:
        kind: ``"started"``, ``"succeeded"``, ``"not_modified"``, ``"failed"``,
            ``"cancelled"``, ``"changed"``, one of last known good's kinds above, or ``"webhook"``.
        name: The refresher's name (the hook's for ``webhook``).
        at: When it happened, in seconds since the epoch (the middleware's clock).
        duration: How long the fetch took, in seconds; None for ``started``.
        error: One line describing the failure (``"TimeoutError: ..."``) for
            ``failed``, the guard's reason for ``quarantined``, a refused
            delivery's outcome for ``webhook``, else None. Never the value, never a secret from a URL.
        exception: The exception of a ``failed`` fetch, else None.
        key: For a fetch of a `RefresherFamily` key (``name`` is then the
            family's): the key as ``repr`` shows it, escaped and at most 80
            characters (keys come from requests). None for a refresher.
        source: The kind of source fetched (``"http"``, ``"file"``, ``"python"``,
            ``"derived"`` for a derived value's compute...), on ``started`` and the
            event that ends a fetch (``cancelled`` included); else None.
        http_status: The HTTP status the last response of the fetch had, on the
            event that ends it (``succeeded``, ``not_modified``, ``failed``), when
            the source speaks HTTP and got one; else None.
        size: The bytes of the body fetched (before parsing, after decoding), on
            the event that ends a fetch, when the source reports it; else None.
        origin: On ``started``, for a fetch that a caller asked for (refresh-now:
            ``handle.refresh()``, ``refresh_soon()``, the admin endpoint, a webhook,
            a request for a family key), the caller's `contextvars.Context` at that
            moment, so that tracing can link the fetch to the request that caused
            it. Only captured when a listener has a true ``wants_origin``
            attribute (`asgi_refresh.otel.OpenTelemetryListener` does); else None.
    """

    kind: EventKind
    name: str
    at: float
    duration: float | None = None
    error: str | None = None
    exception: BaseException | None = None
    key: str | None = None
    source: str | None = None
    http_status: int | None = None
    size: int | None = None
    origin: contextvars.Context | None = None


class Events:
    """Hands events to the listeners: plain ones at once, async ones in order on one task.

    A plain listener runs inline, where the event happens, so it must be quick (a
    counter, a log line). An ``async`` listener's calls are queued and awaited
    one at a time on a task of their own, so a slow one never delays a fetch or
    the schedule. A listener that raises, or an async one that takes longer than
    30 s, is logged and skipped; the refreshers carry on. A listener that keeps
    raising logs one ERROR with its traceback every 5 minutes; the raises in
    between go to DEBUG and are counted in the next ERROR.
    """

    def __init__(self, listeners: Iterable[Listener], clock: Clock) -> None:
        self._listeners = tuple(listeners)
        self._clock = clock
        self._send: MemoryObjectSendStream[tuple[Listener, Awaitable[object]]]
        self._receive: MemoryObjectReceiveStream[tuple[Listener, Awaitable[object]]]
        self._send, self._receive = anyio.create_memory_object_stream[tuple[Listener, Awaitable[object]]](
            _QUEUE_SIZE
        )
        # The callers' context is captured for a fetch only if a listener wants it
        # (tracing): otherwise refresh-now costs nothing more.
        self.wants_origin = any(getattr(each, "wants_origin", False) is True for each in self._listeners)
        # Listeners that look at each request (tracing's versions read, when asked for).
        self.request_hooks = tuple(
            (each, hook) for each in self._listeners if callable(hook := getattr(each, "on_request", None))
        )
        self._dropped: set[int] = set()  # listeners (by id) whose events were dropped, logged once each
        self._raised: dict[int, _Raised] = {}  # listeners (by id) that raised: when it was logged at ERROR

    def emit(
        self,
        kind: EventKind,
        name: str,
        duration: float | None = None,
        exception: BaseException | None = None,
        error: str | None = None,
        *,
        key: str | None = None,
        source: str | None = None,
        http_status: int | None = None,
        size: int | None = None,
        origin: contextvars.Context | None = None,
    ) -> None:
        event = RefreshEvent(
            kind, name, self._clock.wall(), duration, error, exception, key, source, http_status, size, origin
        )
        for listener in self._listeners:
            try:
                result = listener(event)
            except BaseException as exc:  # a listener is user code: whatever it raises is contained
                self._log_raised(listener, f" on {event.kind!r} of {event.name!r}", exc)
                continue
            if inspect.isawaitable(result):
                self._queue(listener, result)

    def origin(self) -> contextvars.Context | None:
        """The caller's context, for a fetch it asks for now; None unless a listener wants it."""
        return contextvars.copy_context() if self.wants_origin else None

    def _queue(self, listener: Listener, call: Awaitable[object]) -> None:
        try:
            self._send.send_nowait((listener, call))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            _close(call)  # a fetch that outlived shutdown: nobody is listening any more
        except anyio.WouldBlock:
            _close(call)
            if id(listener) not in self._dropped:
                self._dropped.add(id(listener))
                logger.error(
                    "asgi_refresh: event listener %s is not keeping up (%d calls queued); "
                    "dropping its events",
                    _describe(listener),
                    _QUEUE_SIZE,
                )

    async def run(self) -> None:
        """Await queued async listener calls, in order, until cancelled."""
        receive = self._receive
        try:
            async for listener, call in receive:
                try:
                    with self._clock.move_on_at(self._clock.monotonic() + _LISTENER_TIMEOUT) as scope:
                        await call
                    if scope.cancelled_caught:
                        logger.error(
                            "asgi_refresh: event listener %s did not finish within %gs; cancelled",
                            _describe(listener),
                            _LISTENER_TIMEOUT,
                        )
                except BaseException as exc:  # a listener is user code: contained
                    if escapes(exc):
                        raise
                    self._log_raised(listener, "", exc)
        finally:
            self._send.close()
            # Calls never awaited are closed, so Python does not warn "never awaited".
            while True:
                try:
                    _, call = receive.receive_nowait()
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
                _close(call)
            receive.close()

    def observe_request(self, versions: Callable[[], Mapping[str, str]]) -> None:
        """Call each listener's ``on_request`` with ``versions``; contain what it raises as for an event."""
        for listener, hook in self.request_hooks:
            try:
                hook(versions)
            except BaseException as exc:  # a listener is user code: the request goes on
                self._log_raised(listener, " on a request (on_request)", exc)

    def _log_raised(self, listener: Listener, where: str, exc: BaseException) -> None:
        """An ERROR with the traceback, unless this listener had one less than 5 minutes ago."""
        now = self._clock.monotonic()
        raised = self._raised.get(id(listener))
        if raised is not None and now - raised.logged_at < _REPEAT_ERROR_EVERY:
            raised.since += 1
            logger.debug(
                "asgi_refresh: event listener %s raised again%s: %s; ignored",
                _describe(listener),
                where,
                describe_error(exc),
            )
            return
        more = ""
        if raised is not None and raised.since:
            more = f" (it raised {raised.since} more times since the last such error, logged at DEBUG)"
        self._raised[id(listener)] = _Raised(logged_at=now)
        logger.error(
            "asgi_refresh: event listener %s raised%s%s; ignored, the refreshers carry on",
            _describe(listener),
            where,
            more,
            exc_info=exc,
        )


def _close(call: Awaitable[object]) -> None:
    close: Callable[[], Any] | None = getattr(call, "close", None)
    if close is not None:
        close()


def _describe(listener: Listener) -> str:
    return getattr(listener, "__qualname__", None) or type(listener).__qualname__


@dataclass(slots=True)
class _Raised:
    """When a listener's raise was last logged at ERROR, and how many were quiet since."""

    logged_at: float
    since: int = 0
