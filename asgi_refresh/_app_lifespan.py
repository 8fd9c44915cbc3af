"""Drive the wrapped app's lifespan as a nested conversation that we control."""

from __future__ import annotations

import logging

import anyio
from anyio.abc import TaskGroup

from ._clock import Clock
from ._runtime import describe_error
from ._types import ASGIApp, Message, Scope

logger = logging.getLogger("asgi_refresh")


class AppLifespan:
    """The wrapped app's side of the lifespan, as seen by the middleware.

    The middleware plays server to the app: it sends ``lifespan.startup`` once the
    refreshers have published, and ``lifespan.shutdown`` before they stop. Each
    exchange returns None when the app is fine, or the reason it failed.
    """

    def __init__(self, app: ASGIApp, scope: Scope, clock: Clock) -> None:
        self._app = app
        self._scope = scope
        self._clock = clock
        self._to_app, self._app_inbox = anyio.create_memory_object_stream[Message](1)
        self._app_outbox, self._from_app = anyio.create_memory_object_stream[Message](1)
        self._cancel_scope = anyio.CancelScope()
        self._finished = anyio.Event()
        self._has_received = False
        self._error: Exception | None = None
        self._supported = True

    async def startup(self, task_group: TaskGroup) -> str | None:
        """Start the app's lifespan; return None once it is up, or why it failed."""
        task_group.start_soon(self._run, name="asgi_refresh:app-lifespan")
        reply = await self._exchange("lifespan.startup")
        if reply is not None:
            return self._failure(reply, "startup")
        if self._error is not None and self._has_received:
            return describe_error(self._error)
        # Raised (or returned) before reading its first message: the usual
        # `assert scope["type"] == "http"` of an app without lifespan support.
        self._supported = False
        reason = "it raised " + describe_error(self._error) if self._error else "it returned"
        logger.info(
            "The wrapped app does not do the ASGI lifespan protocol (%s before answering "
            "lifespan.startup); refreshers run and requests get their values all the same",
            reason,
        )
        return None

    async def shutdown(self, shutdown_timeout: float) -> str | None:
        """Shut the app's lifespan down; return None, or why it failed."""
        if not self._supported:
            return None
        if self._finished.is_set():  # it ended on its own after startup
            return None if self._error is None else describe_error(self._error)
        reply = await self._exchange("lifespan.shutdown")
        # It answered; give it shutdown_timeout to return before cancelling it.
        with self._clock.move_on_at(self._clock.monotonic() + shutdown_timeout):
            await self._finished.wait()
        self.cancel()
        if reply is not None:
            return self._failure(reply, "shutdown")
        return None if self._error is None else describe_error(self._error)

    def cancel(self) -> None:
        """Stop the app's lifespan task if it is still running."""
        self._cancel_scope.cancel()

    def close(self) -> None:
        """Release the message streams; call once the lifespan is over."""
        for stream in (self._to_app, self._app_inbox, self._app_outbox, self._from_app):
            stream.close()

    async def _run(self) -> None:
        with self._cancel_scope, self._app_outbox:
            try:
                await self._app(self._scope, self._receive, self._app_outbox.send)
            except Exception as exc:  # reported through startup()/shutdown()
                self._error = exc
                if self._has_received:
                    logger.error("The wrapped app's lifespan raised", exc_info=exc)
            finally:
                self._finished.set()

    async def _receive(self) -> Message:
        self._has_received = True
        return await self._app_inbox.receive()

    async def _exchange(self, event: str) -> Message | None:
        await self._to_app.send({"type": event})
        try:
            return await self._from_app.receive()
        except anyio.EndOfStream:
            return None

    @staticmethod
    def _failure(reply: Message, phase: str) -> str | None:
        kind = reply.get("type")
        if kind == f"lifespan.{phase}.complete":
            return None
        if kind == f"lifespan.{phase}.failed":
            return str(reply.get("message", "")) or f"the wrapped app reported {phase} failed"
        return f"the wrapped app sent {kind!r} in reply to lifespan.{phase}"
