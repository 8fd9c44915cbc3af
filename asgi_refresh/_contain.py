"""The one rule for user code: whatever it raises is a failure of that code, never ours.

Fetches, sources, hooks, listeners, validators and codecs are user code. They may
raise anything, ``KeyboardInterrupt``, ``SystemExit`` and ``GeneratorExit``
included, and none of it may end the worker or the refreshers. The only exception
that passes through is the cancellation of one of our own scopes (shutdown, a
timeout): that one is ours, and swallowing it would hang shutdown.

Servers handle SIGINT and SIGTERM themselves (uvicorn, hypercorn, granian), so a
``KeyboardInterrupt`` that reaches a fetch was raised by user code, not by Ctrl-C.
"""

from __future__ import annotations

import inspect
import sys
import traceback

import anyio

from ._text import printable

_MAX_ERROR_CHARS = 500


def escapes(exc: BaseException) -> bool:
    """Whether ``exc``, raised by user code, must propagate: only our own cancellation does.

    Call it in ``except BaseException as exc:`` and re-raise when it says so;
    everything else is the user code's failure, to be recorded and logged.
    """
    cancelled = anyio.get_cancelled_exc_class()
    if isinstance(exc, BaseExceptionGroup):
        # A task group (a nursery) in user code that our cancellation reached raises
        # its children's cancellations as a group: trio always does, and httpx's
        # connect on trio runs one. Only a group of nothing but cancellations is ours.
        matched, rest = exc.split(cancelled)
        return matched is not None and rest is None and not is_stray_cancellation()
    return isinstance(exc, cancelled) and not is_stray_cancellation()


def is_stray_cancellation() -> bool:
    """Whether a just-caught cancellation exception was raised without anyone cancelling us.

    A library that awaits a future cancelled elsewhere raises ``CancelledError``
    into our task although nobody cancelled it: that is the fetch failing.
    """
    asyncio = sys.modules.get("asyncio")  # not imported: not on asyncio (and importing it costs 25 ms)
    if asyncio is None:
        return False
    try:
        task = asyncio.current_task()
    except RuntimeError:  # not asyncio: trio's Cancelled cannot be raised by user code
        return False
    # Every real cancellation (an anyio scope, or the server cancelling the task)
    # goes through task.cancel(), which counts here until it is handled.
    return task is not None and task.cancelling() == 0


def describe_error(exc: BaseException) -> str:
    """One line for logs and ``status()``: the exception type and its message, bounded.

    Safe on any exception user code raises: one whose ``__str__`` raises is still
    described, and outside text in the message is escaped (`printable`).
    """
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]  # a task group's wrapper says nothing; what it wraps does
    try:
        text = str(exc)
    except BaseException:  # user code's exception: even its __str__ may fail, and must not stop us
        text = "(its message could not be read: its __str__ raised)"
    kind = getattr(type(exc), "shown_as", None) or type(exc).__name__
    # Printable: the text may quote an upstream (a reason phrase, a parser's
    # excerpt of the body), and it reaches terminals, logs and the status page.
    return printable(f"{kind}: {text}" if text.strip() else kind, _MAX_ERROR_CHARS)


def is_async_callable(func: object) -> bool:
    """Whether calling ``func`` gives a coroutine to await (``async def``, or ``async __call__``).

    Anything else is a plain function: user code that may block, run in a thread.
    """
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None)  # noqa: B004 - we ask about __call__ itself
    )


def escaped_traceback(exc: BaseException) -> str:
    """``exc``'s traceback as logging prints it, with each exception's text and notes one printable line.

    For a traceback whose message may quote request input (a family's key): logged
    as ``exc_info``, a line break and a terminal escape in it would forge log lines.
    The frames are code and file names, not input, and stay as they are. Never
    raises: user code's exception may have a ``__str__`` or notes that do.
    """
    try:
        return _escaped_traceback(exc)
    except BaseException:  # anything user code made of its exception
        return f"(the traceback of {type(exc).__qualname__} could not be formatted)"


def _escaped_traceback(exc: BaseException) -> str:
    shown = traceback.TracebackException.from_exception(exc, max_group_width=5, max_group_depth=3)
    if not isinstance(getattr(shown, "_str", None), str):  # a Python that formats differently: no text
        return "".join(traceback.format_list(shown.stack)).rstrip("\n") + f"\n{type(exc).__qualname__}"
    seen: set[int] = set()
    pending = [shown]
    while pending:
        each = pending.pop()
        if id(each) in seen:
            continue
        seen.add(id(each))
        each._str = printable(str(each._str), 1000)  # type: ignore[attr-defined]  # checked above
        notes = getattr(each, "__notes__", None)
        if notes is not None:
            each.__notes__ = (
                [printable(_text_of(note), 1000) for note in notes] if isinstance(notes, list) else []
            )
        pending += [linked for linked in (each.__cause__, each.__context__) if linked is not None]
        pending += getattr(each, "exceptions", None) or []
    return "".join(shown.format()).rstrip("\n")


def _text_of(note: object) -> str:
    try:
        return str(note)
    except BaseException:  # a note whose __str__ raises
        return "(a note that could not be read)"
