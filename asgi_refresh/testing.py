"""Helpers for testing apps that use asgi_refresh: simulated time and value overrides.

```python
from asgi_refresh.testing import FakeClock

clock = FakeClock()
app = RefreshMiddleware(inner, refreshers=[...], clock=clock)
async with LifespanManager(app) as manager:
    await clock.advance("1h")  # the hourly refresh runs now, in milliseconds
```
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from ._duration import Duration, parse_duration
from ._handle import RefreshHandle

if TYPE_CHECKING:  # imported on first use (see __getattr__): it imports pytest
    from ._cluster.contract import CoordinatorContract

__all__ = ["CoordinatorContract", "FakeClock", "override"]


class FakeClock:
    """A clock that only moves when told to, for tests of schedules.

    Time starts at 0 on the monotonic scale and at ``start`` on the wall clock.
    `advance` moves it forward, firing every sleep and timeout that falls due on
    the way, in order, and lets the woken tasks run (including fetches in worker
    threads) before going further. Works under asyncio and trio.

    Args:
        start: Wall-clock time at monotonic 0, as epoch seconds or an aware
            ``datetime``; defaults to the real time now.
    """

    def __init__(self, start: float | datetime | None = None) -> None:
        if isinstance(start, datetime):
            start = start.timestamp()
        self._wall_at_zero = time.time() if start is None else float(start)
        self._now = 0.0
        self._timers: list[_Timer] = []
        self._order = itertools.count()
        self._holds = 0
        self._released: anyio.Event | None = None

    def monotonic(self) -> float:
        """Simulated seconds since the clock was made."""
        return self._now

    def wall(self) -> float:
        """Simulated epoch seconds."""
        return self._wall_at_zero + self._now

    async def sleep_until(self, deadline: float) -> None:
        """Sleep until `advance` reaches ``deadline``."""
        if deadline <= self._now:
            await anyio.lowlevel.checkpoint()
            return
        woken = anyio.Event()
        with self._timer(deadline, woken.set):
            await woken.wait()

    @contextmanager
    def move_on_at(self, deadline: float) -> Iterator[anyio.CancelScope]:
        """A cancel scope that `advance` cancels when it reaches ``deadline``."""
        with anyio.CancelScope() as scope:
            if deadline <= self._now:
                scope.cancel()
            with self._timer(deadline, scope.cancel):
                yield scope

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Keep `advance` from moving on while the block (a fetch in a thread) runs."""
        self._holds += 1
        try:
            yield
        finally:
            self._holds -= 1
            if self._holds == 0 and self._released is not None:
                self._released.set()

    async def advance(self, duration: Duration) -> None:
        """Move time forward by ``duration``, running everything that falls due.

        Raises:
            ValueError: ``duration`` is negative.
        """
        seconds = parse_duration(duration)
        if seconds < 0:
            raise ValueError(f"FakeClock.advance: time only moves forward (got {duration!r})")
        target = self._now + seconds
        await self._settle()
        while self._timers and self._timers[0].deadline <= target:
            timer = heapq.heappop(self._timers)
            if timer.fire is None:  # its sleep or scope ended early
                continue
            self._now = max(self._now, timer.deadline)
            timer.fire()
            await self._settle()
        self._now = target
        await self._settle()

    def jump(self, duration: Duration) -> None:
        """Move time forward at once, running nothing on the way.

        What a blocked event loop, a saturated CPU or a suspended VM looks like:
        sleeps and timeouts that fell due meanwhile fire late, at the next
        `advance` (``await clock.advance(0)`` to run them now).

        Raises:
            ValueError: ``duration`` is negative.
        """
        seconds = parse_duration(duration)
        if seconds < 0:
            raise ValueError(f"FakeClock.jump: time only moves forward (got {duration!r})")
        self._now += seconds

    @contextmanager
    def _timer(self, deadline: float, fire: Callable[[], object]) -> Iterator[None]:
        # Disarmed on exit, so a sleep or scope that ends early never fires later
        # (possibly in another event loop, when one clock serves several tests).
        timer = _Timer(deadline, next(self._order), fire)
        heapq.heappush(self._timers, timer)
        try:
            yield
        finally:
            timer.fire = None

    async def _settle(self) -> None:
        """Return once every other task is blocked and no thread holds the clock."""
        while True:
            await _wait_all_tasks_blocked()
            if self._holds == 0:
                return
            self._released = anyio.Event()
            await self._released.wait()


@dataclass(order=True)
class _Timer:
    deadline: float
    order: int
    fire: Callable[[], object] | None = field(compare=False)


def override(handle: RefreshHandle, name: str, value: Any) -> None:
    """Publish ``value`` for ``name`` and stop refreshing it until the lifespan ends.

    For tests that need a known value: later requests see ``value``, and
    ``handle.refresh(name)`` returns it without fetching.

    Raises:
        LookupError: there is no refresher called ``name``.
    """
    handle._runtime.override(name, value)


_settling: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()


async def _wait_all_tasks_blocked() -> None:
    try:
        this_task = asyncio.current_task()
    except RuntimeError:  # not asyncio: trio's own check is exact and needs no polling
        await anyio.wait_all_tasks_blocked()
        return
    # anyio's asyncio version polls with 0.1 s real sleeps, which would turn
    # "an hour in milliseconds" into minutes. Yielding with sleep(0) until no other
    # task is runnable gives the same answer without real waiting. Tasks doing the
    # same (two advance() calls at once) count as blocked, or both would spin.
    assert this_task is not None
    _settling.add(this_task)
    try:
        while True:
            await asyncio.sleep(0)
            for task in asyncio.all_tasks():
                if task is this_task or task in _settling:
                    continue
                waiter = task._fut_waiter  # type: ignore[attr-defined]
                if waiter is None or waiter.done():
                    break
            else:
                return
    finally:
        _settling.discard(this_task)


def __getattr__(name: str) -> Any:
    """`CoordinatorContract` on first use: it imports pytest, which an app's own code never needs."""
    if name == "CoordinatorContract":
        from ._cluster.contract import CoordinatorContract

        return CoordinatorContract
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
