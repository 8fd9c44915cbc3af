"""A big value that was replaced, freed a piece at a time rather than all at once on the event loop.

Freeing a parsed 5 MB JSON document (80,000 dicts and their strings) takes 5 to
30 ms, all in one C call wherever its last reference goes: in the middle of the
event loop, after the new value is published. A source that replaced a big
value hands it to `retire`: a task waits until nothing else holds it (the
published state has moved on, requests that began before are done), then takes
its lists and dicts apart a slice at a time, with the loop's turns between.

Only what nobody else can see is taken apart: a container is emptied only when
the reference we hold is its only one, which on CPython ``sys.getrefcount`` tells
exactly. A value still held elsewhere after `WAIT` is let go whole, as without
this module; so is everything on an interpreter whose reference counts are not
that plain (free-threaded CPython, PyPy).
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Iterator
from typing import Any

import anyio.lowlevel

from asgi_refresh._clock import Clock
from asgi_refresh._sources.context import SourceContext

WAIT = 2.0
"""Seconds to wait for others to let go of a replaced value before we let go of it whole."""

PIECE = 256
"""Items freed per step: tens of microseconds, between two looks at the clock."""

_BUSY = 0.001  # seconds of freeing at most before the event loop gets a turn
_FIRST_DELAY = 0.005
# Reference counts tell "only we hold it" on CPython with its GIL; not free-threaded, not PyPy.
_EXACT_COUNTS = sys.implementation.name == "cpython" and bool(getattr(sys, "_is_gil_enabled", lambda: True)())


def retire(context: SourceContext, old: Any, size: int, threshold: int) -> None:
    """Free ``old`` (a value this source replaced) in pieces, if it is big; else let it go now.

    ``size`` is the size of the body it was parsed from: a cheap tell of a big value.
    """
    if size < threshold or type(old) not in (list, dict) or not _EXACT_COUNTS:
        return
    holder = [old]
    del old
    clock = context.clock
    context.start_soon(lambda: free_in_pieces(holder, clock))


async def free_in_pieces(holder: list[Any], clock: Clock) -> None:
    """Once ``holder`` has the only reference to its one item, free that item a piece at a time."""
    deadline = clock.monotonic() + WAIT
    delay = _FIRST_DELAY
    while sys.getrefcount(holder[0]) > 2:  # the holder's reference and the argument's
        now = clock.monotonic()
        if now >= deadline:
            holder.clear()  # someone still uses it: they free it, as without us
            return
        await clock.sleep_until(min(now + delay, deadline))
        delay *= 2
    busy_since = time.perf_counter()
    for _ in pieces(holder):
        if time.perf_counter() - busy_since > _BUSY:
            await anyio.lowlevel.checkpoint()
            busy_since = time.perf_counter()


def pieces(holder: list[Any]) -> Iterator[None]:
    """Take apart the one item of ``holder``; yields after each piece freed.

    A list or dict that only we hold is emptied from the end, ``PIECE`` items at
    a time. What a piece held is freed with it, except the containers that may
    be big: those go on the stack to be taken apart in turn. In a wide container
    (more than ``PIECE`` items, a list of records) only wide children may be big:
    its narrow records are freed whole, a piece of them at a time, without a step
    of ours each. In a narrow one (``{"items": [...]}``) any container child may
    be. Anything else (held elsewhere too, another type) is simply let go of: that
    frees little, or nothing if another holder remains.
    """
    stack = [holder.pop()]
    while stack:
        item = stack.pop()
        if type(item) is list and sys.getrefcount(item) <= 2:  # our local and the argument
            keep = _wide if len(item) > PIECE else _may_be_big
            while item:
                piece = item[-PIECE:]
                del item[-PIECE:]
                stack.extend([child for child in piece if keep(child)])
                del piece
                yield
        elif type(item) is dict and sys.getrefcount(item) <= 2:
            keep = _wide if len(item) > PIECE else _may_be_big
            while item:
                taken = [item.popitem() for _ in range(min(PIECE, len(item)))]
                stack.extend([child for _, child in taken if keep(child)])
                del taken
                yield
        del item
        yield


def _wide(value: Any) -> bool:
    return type(value) in (list, dict) and len(value) > PIECE


def _may_be_big(value: Any) -> bool:
    """A container that may hold many objects, not one to free in a single step."""
    if type(value) is list:
        return True
    # A small dict of only strings and numbers is untracked by the garbage collector:
    # it frees in one cheap step.
    return type(value) is dict and (gc.is_tracked(value) or len(value) > PIECE)
