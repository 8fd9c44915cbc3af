"""Drive the wrapped app's lifespan as a nested conversation that we control."""

from __future__ import annotations

import enum
import logging
import math
from typing import TYPE_CHECKING

import anyio

from ._clock import Clock
from ._contain import describe_error, escapes
from ._types import ASGIApp, Message, Scope

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

logger = logging.getLogger("asgi_refresh")


class AppState(enum.Enum):
    """Where the wrapped app's lifespan is, as the middleware sees it."""

    NOT_STARTED = "not started"
    STARTING = "starting"  # sent lifespan.startup, waiting for the reply
    UNSUPPORTED = "unsupported"  # it does not do lifespan: refreshers run without it
    STARTED = "started"  # it answered startup.complete
    FAILED = "failed"  # it answered startup.failed or raised during startup
    SHUTTING_DOWN = "shutting down"  # sent lifespan.shutdown, waiting for the reply
    DONE = "done"  # shut down, or ended on its own


class AppLifespan:
    """The wrapped app's side of the lifespan, as seen by the middleware.

    The middleware plays server to the app: it sends ``lifespan.startup`` once the
    refreshers have published, and ``lifespan.shutdown`` before they stop. Each
    exchange returns None when the app is fine, or the reason it failed. What the
    app raised is kept in `error`, for the middleware to re-raise unchanged once it
    has reported the failure, as the app would have done without us.
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
        self.state = AppState.NOT_STARTED
        self.error: BaseException | None = None
        """What the app's lifespan raised, if anything (not when it does not do lifespan)."""

    async def startup(self, task_group: TaskGroup) -> str | None:
        """Start the app's lifespan; return None once it is up, or why it failed."""
        task_group.start_soon(self._run, name="asgi_refresh:app-lifespan")
        self.state = AppState.STARTING
        reply = await self._exchange("lifespan.startup")
        if reply is not None and str(reply.get("type", "")).startswith("lifespan."):
            failure = self._failure(reply, "startup")
            self.state = AppState.STARTED if failure is None else AppState.FAILED
            return failure
        if reply is None and self.error is not None and self._has_received:
            self.state = AppState.FAILED
            return describe_error(self.error)
        self._unsupported(reply)
        return None

    async def shutdown(self, shutdown_timeout: float) -> str | None:
        """Shut the app's lifespan down; return None, or why it failed."""
        if self.state is AppState.UNSUPPORTED:
            return None
        if self._finished.is_set():  # it ended on its own after startup
            self.state = AppState.DONE
            return None if self.error is None else describe_error(self.error)
        self.state = AppState.SHUTTING_DOWN
        reply = await self._exchange("lifespan.shutdown")
        # It answered; give it shutdown_timeout to return before cancelling it.
        with self._clock.move_on_at(self._clock.monotonic() + shutdown_timeout):
            await self._finished.wait()
        self.cancel()
        self.state = AppState.DONE
        if reply is not None:
            failure = self._failure(reply, "shutdown")
            if failure is not None:
                return failure
        return None if self.error is None else describe_error(self.error)

    def cancel(self) -> None:
        """Stop the app's lifespan task if it is still running."""
        self._cancel_scope.cancel()

    async def end(self, shutdown_timeout: float) -> None:
        """Let an app that failed its startup finish (it raises after reporting), then stop it.

        Starlette's router sends ``startup.failed`` and then raises: waiting for the
        raise is what lets the middleware hand that exception on unchanged.
        """
        if self.state is AppState.FAILED:
            with self._clock.move_on_at(self._clock.monotonic() + shutdown_timeout):
                await self._finished.wait()
        self.cancel()

    def close(self) -> None:
        """Release the message streams; call once the lifespan is over."""
        for stream in (self._to_app, self._app_inbox, self._app_outbox, self._from_app):
            stream.close()

    def _unsupported(self, reply: Message | None) -> None:
        # Raised or returned before reading its first message (the usual `assert
        # scope["type"] == "http"`), returned without answering, or answered with a
        # message that is not a lifespan one (an app that ignores scope["type"]):
        # servers run such an app without lifespan, and so do we.
        if reply is not None:
            reason = f"it answered lifespan.startup with {str(reply.get('type'))!r}"
        elif self.error is not None:
            reason = f"it raised {describe_error(self.error)} before reading lifespan.startup"
        elif self._has_received:
            reason = "it returned after reading lifespan.startup without answering"
        else:
            reason = "it returned before reading lifespan.startup"
        self.state = AppState.UNSUPPORTED
        self.error = None  # not a lifespan failure: nothing to re-raise
        self.cancel()  # one that answered with an HTTP message may still be running
        logger.info(
            "The wrapped app does not do the ASGI lifespan protocol (%s); refreshers "
            "run and requests get their values all the same",
            reason,
        )

    async def _run(self) -> None:
        with self._cancel_scope, self._app_outbox:
            try:
                await self._app(self._scope, self._receive, self._send)
            except BaseException as exc:  # the app's own: re-raised by the middleware after reporting
                if escapes(exc):
                    raise
                self.error = exc
                if self.state is AppState.STARTED and anyio.current_effective_deadline() != -math.inf:
                    # It ended on its own while the app runs and nobody waits for a
                    # reply: say so now, not at shutdown. (Raised while cancelled, it
                    # goes to the server instead: see the middleware.)
                    logger.error("The wrapped app's lifespan raised while the app was running", exc_info=exc)
            finally:
                self._finished.set()

    async def _send(self, message: Message) -> None:
        # Never a checkpoint when there is room, as a server's send: Starlette's
        # router sends `shutdown.failed` from an `except BaseException:` while it is
        # being cancelled, and a send that yields there would be cancelled, losing
        # the app's own exception that it re-raises right after.
        try:
            self._app_outbox.send_nowait(message)
        except anyio.WouldBlock:
            await self._app_outbox.send(message)

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
