"""A refresher's hooks waiting to run: one call at a time, never more than one of each waiting."""

from __future__ import annotations

from typing import Any, Literal

from ._thread import ThreadCall

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

    __slots__ = ("_change", "_error", "_waiting", "running", "thread")

    def __init__(self) -> None:
        self._waiting: list[HookName] = []  # in the order they became due, each at most once
        self._change: tuple[Any, Any] | None = None
        self._error: BaseException | None = None
        self.running = False  # a task is taking calls off this queue
        self.thread: ThreadCall | None = None  # the last plain hook's thread

    def change(self, old: Any, new: Any) -> None:
        """``on_change(old, new)`` is due, merged into a waiting one."""
        if self._change is not None:
            old = self._change[0]
        else:
            self._waiting.append("on_change")
        self._change = (old, new)

    def error(self, exc: BaseException) -> None:
        """``on_error(exc)`` is due; a waiting one now gets ``exc``, the latest."""
        if self._error is None:
            self._waiting.append("on_error")
        self._error = exc

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
