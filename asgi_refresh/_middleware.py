"""The ASGI middleware: the lifespan conversation with the server, and state per request."""

from __future__ import annotations

import logging
from collections.abc import Iterable, MutableMapping
from typing import Any

import anyio

from ._app_lifespan import AppLifespan
from ._clock import Clock, SystemClock
from ._duration import Duration, format_duration, parse_duration
from ._refresher import RESERVED_NAME, Refresher
from ._runtime import SNAPSHOT_KEY, RefreshHandle, Runtime
from ._types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("asgi_refresh")


class RefreshMiddleware:
    """Run refreshers around an ASGI app's lifespan and publish their values per request.

    At ``lifespan.startup`` the refreshers load (concurrently) and publish into the
    lifespan state *before* the wrapped app's own startup runs; at
    ``lifespan.shutdown`` the app shuts down first, then the refreshers stop. Every
    request then reads ``scope["state"][name]`` (``request.state.<name>`` in
    Starlette and FastAPI), always the freshest good value, and the control handle
    at ``scope["state"]["asgi_refresh"]``.

    Works as ``RefreshMiddleware(app, refreshers=[...])``, as
    ``app.add_middleware(RefreshMiddleware, refreshers=[...])`` and as
    ``Middleware(RefreshMiddleware, refreshers=[...])``.

    Args:
        app: The ASGI app to wrap.
        refreshers: What to load and keep fresh; names must be unique.
        startup_timeout: Budget for the first loads of required refreshers; past
            it, startup fails with a message naming the refresher and the cause.
        shutdown_timeout: How long to wait for refreshers to stop after the app has
            shut down, even if a fetch ignores cancellation.
        clock: Where the schedule reads time; tests pass
            `asgi_refresh.testing.FakeClock` to run hours of schedule in milliseconds.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: an argument is out of range, or two refreshers share a name.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        refreshers: Iterable[Refresher],
        startup_timeout: Duration = "30s",
        shutdown_timeout: Duration = "10s",
        clock: Clock | None = None,
    ) -> None:
        self.app = app
        self.refreshers = _checked_refreshers(refreshers)
        self.startup_timeout = _positive_duration("startup_timeout", startup_timeout)
        self.shutdown_timeout = _positive_duration("shutdown_timeout", shutdown_timeout)
        self.clock: Clock = clock if clock is not None else SystemClock()
        # The state dict of the lifespan that is running now, if any. The runtime
        # itself lives in `_lifespan`'s locals so that lifespans never share it.
        self._live: MutableMapping[str, Any] | None = None
        self._warned_no_lifespan = False

    @property
    def handle(self) -> RefreshHandle:
        """The control handle of the running lifespan.

        Raises:
            RuntimeError: no lifespan is running.
        """
        live = self._live
        if live is None:
            raise RuntimeError("asgi_refresh is not running: no lifespan has started, or it has shut down")
        handle: RefreshHandle = live[RESERVED_NAME]
        return handle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        live = self._live
        if live is not None:
            # O(1) on servers that copy the lifespan state into each request
            # (uvicorn, hypercorn/asyncio): the copy carries the current snapshot
            # marker. Otherwise (no state, a copy taken once at startup, or the live
            # dict itself, which we mutate) hand the request its own fresh copy.
            state = scope.get("state")
            if state is None or state is live or state.get(SNAPSHOT_KEY) is not live[SNAPSHOT_KEY]:
                scope["state"] = {**state, **live} if state else dict(live)
        elif not self._warned_no_lifespan:
            self._warned_no_lifespan = True
            logger.warning(
                "A request arrived but no ASGI lifespan is running, so refreshers are not "
                "running and request.state has none of their values. Run the server with "
                "lifespan enabled (uvicorn: --lifespan on), and in tests enter the app with "
                "`asgi_lifespan.LifespanManager(app)` or `with TestClient(app)`."
            )
        await self.app(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup: the only thing a server sends first
        state = scope.get("state")
        if state is None:  # a server without lifespan state: we keep our own
            state = {}
        runtime = Runtime(self.refreshers, state=state, clock=self.clock)
        app = AppLifespan(self.app, {**scope, "state": state})
        server = _ServerSend(send)
        startup_failure: str | None = None
        shutdown_reply: Message | None = None
        try:
            async with anyio.create_task_group() as task_group:
                await task_group.start(runtime.run)
                startup_failure = await runtime.load(self.startup_timeout)
                if startup_failure is None:
                    self._live = state
                    startup_failure = await app.startup(task_group)
                if startup_failure is not None or not await server.send(
                    {"type": "lifespan.startup.complete"}
                ):
                    app.cancel()
                    await runtime.stop(self.shutdown_timeout)
                else:
                    await receive()  # lifespan.shutdown
                    shutdown_reply = await self._shut_down(app, runtime)
                    if shutdown_reply["type"] == "lifespan.shutdown.failed" and await server.send(
                        shutdown_reply
                    ):
                        # A fetch that ignores cancellation keeps this task group
                        # open; the server hears the outcome now, not never.
                        shutdown_reply = None
        finally:
            app.close()
            if self._live is state:
                self._live = None
        if server.error is not None:
            raise server.error
        # Sent once everything has stopped, and nothing is awaited after them. The
        # server may raise here (hypercorn does on startup.failed): it propagates.
        if startup_failure is not None:
            logger.error("Startup failed: %s", startup_failure)
            await send({"type": "lifespan.startup.failed", "message": startup_failure})
        elif shutdown_reply is not None:
            await send(shutdown_reply)

    async def _shut_down(self, app: AppLifespan, runtime: Runtime) -> Message:
        """The app's shutdown first, then the refreshers'; return the message for the server."""
        failure = await app.shutdown(self.shutdown_timeout)
        stuck = await runtime.stop(self.shutdown_timeout)
        if stuck:
            failure = _join(
                failure,
                f"refreshers {', '.join(map(repr, stuck))} did not stop within "
                f"shutdown_timeout ({format_duration(self.shutdown_timeout)})",
            )
        if failure is None:
            return {"type": "lifespan.shutdown.complete"}
        logger.error("Shutdown failed: %s", failure)
        return {"type": "lifespan.shutdown.failed", "message": failure}


class _ServerSend:
    """The server's ``send``, with its exception kept to re-raise outside the task group.

    Raised inside the task group it would come out wrapped in an ExceptionGroup;
    the server must see its own exception unchanged.
    """

    def __init__(self, send: Send) -> None:
        self._send = send
        self.error: Exception | None = None

    async def send(self, message: Message) -> bool:
        try:
            await self._send(message)
        except Exception as exc:
            self.error = exc
            return False
        return True


def _join(first: str | None, second: str) -> str:
    return f"{first}; {second}" if first else second


def _positive_duration(option: str, value: object) -> float:
    try:
        seconds = parse_duration(value)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"RefreshMiddleware: {option}: {exc}") from None
    if seconds <= 0:
        raise ValueError(f"RefreshMiddleware: {option} must be > 0 (got {value!r})")
    return seconds


def _checked_refreshers(refreshers: Iterable[Refresher]) -> tuple[Refresher, ...]:
    if isinstance(refreshers, Refresher | str | bytes) or not isinstance(refreshers, Iterable):
        raise TypeError(f"RefreshMiddleware: refreshers must be a list of Refresher (got {refreshers!r})")
    checked = tuple(refreshers)
    seen: set[str] = set()
    for refresher in checked:
        if not isinstance(refresher, Refresher):
            raise TypeError(f"RefreshMiddleware: refreshers must be Refresher objects (got {refresher!r})")
        if refresher.name in seen:
            raise ValueError(
                f"RefreshMiddleware: two refreshers are named {refresher.name!r}; names must be unique"
            )
        seen.add(refresher.name)
    return checked
