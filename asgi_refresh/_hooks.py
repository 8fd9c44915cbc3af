"""A refresher's hooks: run after its fetches, one call at a time, never more than one of each waiting."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from asgi_refresh._clock import Clock
from asgi_refresh._contain import escapes, is_async_callable
from asgi_refresh._duration import format_duration
from asgi_refresh._thread import ThreadCall

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

logger = logging.getLogger("asgi_refresh")

HookName = Literal["on_change", "on_error"]


class Hooks:
    """The ``on_change`` / ``on_error`` calls due for one refresher, coalesced.

    A hook slower than the changes it is told about must not build a queue
    without end. So at most one call of each hook waits while another runs:
    changes that arrive meanwhile are merged into the waiting ``on_change`` call
    (``old`` from before the first of them, ``new`` the latest), so consecutive
    calls chain (each ``old`` is the previous ``new``); a new failure replaces
    the waiting ``on_error`` call's exception with the latest one.
    """

    __slots__ = (
        "_change",
        "_error",
        "_hooks",
        "_name",
        "_owner",
        "_running",
        "_thread",
        "_timeout",
        "_waiting",
    )

    def __init__(
        self,
        name: str,
        *,
        on_change: Callable[..., object] | None,
        on_error: Callable[..., object] | None,
        timeout: float | None,
        owner: tuple[str, str] = ("Refresher", "refresher"),
    ) -> None:
        self._name = name
        # How log lines name what the hooks belong to: ("Derived", "derived value") for one.
        self._owner = owner
        self._hooks: dict[HookName, Callable[..., object] | None] = {
            "on_change": on_change,
            "on_error": on_error,
        }
        self._timeout = timeout
        self._waiting: list[HookName] = []  # in the order they became due, each at most once
        self._change: tuple[Any, Any] | None = None
        self._error: BaseException | None = None
        self._running = False  # a task is taking calls off this queue
        self._thread: ThreadCall | None = None  # the last plain hook's thread

    def change(self, old: Any, new: Any) -> None:
        """``on_change(old, new)`` is due, merged into a waiting one."""
        if self._hooks["on_change"] is None:
            return
        if self._change is not None:
            old = self._change[0]
        else:
            self._waiting.append("on_change")
        self._change = (old, new)

    def error(self, exc: BaseException) -> None:
        """``on_error(exc)`` is due; a waiting one now gets ``exc``, the latest."""
        if self._hooks["on_error"] is None:
            return
        if self._error is None:
            self._waiting.append("on_error")
        self._error = exc

    def start(self, clock: Clock, task_group: TaskGroup) -> None:
        """Run what is due in a task of the lifespan's, unless one runs already."""
        if self._waiting and not self._running:
            self._running = True
            task_group.start_soon(self._run, clock, name=f"asgi_refresh:hooks:{self._name}")

    async def _run(self, clock: Clock) -> None:
        # One task per refresher at a time, started once a fetch is done: a slow or
        # hanging hook delays neither the schedule nor refresh() callers, calls never
        # overlap or reorder, and what waits meanwhile is coalesced.
        try:
            while (due := self.next()) is not None:
                hook_name, args = due
                hook = self._hooks[hook_name]
                assert hook is not None
                await self._call(clock, hook_name, hook, args)
        finally:
            self._running = False

    async def _call(
        self, clock: Clock, hook_name: str, hook: Callable[..., object], args: tuple[Any, ...]
    ) -> None:
        name, timeout = self._name, self._timeout
        try:
            with clock.move_on_at(clock.monotonic() + timeout) if timeout else nullcontext():
                if is_async_callable(hook):
                    await hook(*args)  # type: ignore[misc]
                    return
                # A plain hook may block (a sync client, a file write): it runs in a
                # worker thread, as a plain fetch does, so it never stalls the loop.
                if self._thread is not None and self._thread.is_running():
                    raise RuntimeError(
                        "its previous call is still blocked in its worker thread (it timed out "
                        "and was abandoned); this call is skipped"
                    )
                self._thread = ThreadCall(partial(hook, *args), name=f"asgi_refresh:{name}:{hook_name}")
                self._thread.start()
                with clock.hold():
                    result = await self._thread.result()
                if inspect.isawaitable(result):
                    await result
                return
            logger.error(
                "%s %r: %s hook did not finish within %s; cancelled, the %s carries on",
                self._owner[0],
                name,
                hook_name,
                format_duration(timeout or 0),
                self._owner[1],
                extra={"refresher": name, "outcome": "hook_failed"},
            )
        except BaseException as exc:  # the hook's failure, not ours: contained
            if escapes(exc):
                raise
            logger.error(
                "%s %r: %s hook raised; ignored, the %s carries on",
                self._owner[0],
                name,
                hook_name,
                self._owner[1],
                exc_info=exc,
                extra={"refresher": name, "outcome": "hook_failed"},
            )

    def next(self) -> tuple[HookName, tuple[Any, ...]] | None:
        """The call to make next, taken off the queue; None when nothing waits."""
        if not self._waiting:
            return None
        name = self._waiting.pop(0)
        if name == "on_change":
            args: tuple[Any, ...] = self._change or (None, None)
            self._change = None
        else:
            args = (self._error,)
            self._error = None
        return name, args
