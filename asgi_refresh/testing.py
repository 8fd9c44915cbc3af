"""Helpers for testing apps that use asgi_refresh: simulated time and pinned values.

The switch needs no change to the app, however it is built (``RefreshMiddleware(...)``,
``app.add_middleware(RefreshMiddleware, ...)``, ``RefreshMiddleware.from_config``):
every middleware that starts its lifespan under `fake_time` runs on its `FakeClock`
and with its pinned values.

```python
from asgi_refresh.testing import fake_time

with fake_time(overrides={"flags": {"beta": True}}) as clock, TestClient(app) as client:
    clock.advance_sync("1h")  # the hourly refresh has run when this returns
```

In async tests, ``await clock.advance("1h")``. The pytest plugin that comes with
the package gives the same as fixtures: ``refresh_clock`` and ``refresh_overrides``.
Everything here works from any thread: a sync test beside ``TestClient`` (whose app
runs in a portal thread) as well as the app's own event loop.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

from . import _switch
from ._duration import Duration, parse_duration
from ._handle import LoopHome, RefreshHandle
from ._handle import override as handle_override

if TYPE_CHECKING:  # imported on first use (see __getattr__): it imports pytest
    from ._cluster.contract import CoordinatorContract

__all__ = ["CoordinatorContract", "FakeClock", "fake_time", "override", "pinned_values"]


class FakeClock:
    """A clock that only moves when told to, for tests of schedules.

    Time starts at 0 on the monotonic scale and at ``start`` on the wall clock.
    `advance` moves it forward, firing every sleep and timeout that falls due on
    the way, in order, and lets the woken tasks run (including fetches in worker
    threads) before going further. Works under asyncio and trio, and from any
    thread: `advance` and `advance_sync` run on the event loop whose tasks sleep on
    the clock (``TestClient``'s portal thread, say). One clock drives one running
    event loop at a time.

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
        self._home: LoopHome | None = None  # the loop whose tasks last slept on the clock

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

        Awaited on another event loop than the one whose tasks sleep on the clock
        (an async test beside ``TestClient``), it runs there and waits for it.

        Raises:
            ValueError: ``duration`` is negative.
            RuntimeError: tasks of two running event loops sleep on the clock.
        """
        seconds = _forward("advance", duration)
        home = self._loop()
        if home is None or not home.is_away():
            await self._advance(seconds)
            return
        await anyio.to_thread.run_sync(self._advance_on, home, seconds)

    def advance_sync(self, duration: Duration) -> None:
        """`advance`, for sync code: returns once everything that fell due has run.

        For sync tests, beside ``with TestClient(app) as client:``. It runs on the
        event loop whose tasks sleep on the clock, so it cannot be called from that
        loop itself: there, ``await clock.advance(...)``.

        Raises:
            ValueError: ``duration`` is negative.
            RuntimeError: called on the event loop it would wait for, or tasks of
                two running event loops sleep on the clock.
        """
        seconds = _forward("advance_sync", duration)
        home = self._loop()
        if home is None:
            self._now += seconds  # no event loop has used the clock: nothing can fall due
            return
        if not home.is_away():
            raise RuntimeError(
                "FakeClock.advance_sync waits for the event loop it is called on; "
                "in async code, use `await clock.advance(...)`"
            )
        self._advance_on(home, seconds)

    def _advance_on(self, home: LoopHome, seconds: float) -> None:
        try:
            anyio.from_thread.run(self._advance, seconds, token=home.token)
        except anyio.RunFinishedError:  # that loop has ended: nothing sleeps on it any more
            self._home = None
            self._now += seconds

    def _loop(self) -> LoopHome | None:
        """The event loop whose tasks sleep on the clock (or last did)."""
        threads = {timer.home.thread for timer in self._timers if timer.fire is not None}
        if len(threads) > 1:
            raise RuntimeError(
                "FakeClock: tasks of two running event loops sleep on this clock (two "
                "TestClients at once?); one clock drives one event loop at a time: give "
                "the other app a FakeClock of its own (RefreshMiddleware(..., clock=FakeClock()))"
            )
        return self._home

    async def _advance(self, seconds: float) -> None:
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
        self._now += _forward("jump", duration)

    @contextmanager
    def _timer(self, deadline: float, fire: Callable[[], object]) -> Iterator[None]:
        # Disarmed on exit, so a sleep or scope that ends early never fires later
        # (possibly in another event loop, when one clock serves several tests).
        home = self._home = LoopHome.here()
        timer = _Timer(deadline, next(self._order), fire, home)
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
    home: LoopHome = field(compare=False)  # the event loop of the task that sleeps


def _forward(method: str, duration: Duration) -> float:
    seconds = parse_duration(duration)
    if seconds < 0:
        raise ValueError(f"FakeClock.{method}: time only moves forward (got {duration!r})")
    return seconds


def override(handle: RefreshHandle, name: str, value: Any) -> None:
    """Publish ``value`` for ``name`` and stop refreshing it until the lifespan ends.

    For tests that need a known value: later requests see ``value``, and
    ``handle.refresh(name)`` returns it without fetching. Works from any thread,
    such as a sync test beside ``TestClient``. To pin a value before the lifespan
    starts, use `fake_time`'s ``overrides`` or `pinned_values`.

    Raises:
        LookupError: there is no refresher called ``name``.
    """
    handle_override(handle, name, value)


@contextmanager
def fake_time(
    start: float | datetime | None = None, *, overrides: Mapping[str, Any] | None = None
) -> Iterator[FakeClock]:
    """Run every `RefreshMiddleware` that starts its lifespan in the block on a `FakeClock`.

    A switch for tests that needs no change to the app: it applies however the
    middleware was built (directly, with ``app.add_middleware``, or by
    ``from_config``), and in whichever thread its lifespan starts (``TestClient``
    starts it in a portal thread of its own). A middleware given a clock of its
    own (``clock=...``) keeps it. The switch is process-wide: blocks may nest (the
    innermost wins), and a lifespan keeps the clock it started with.

    Pinned values (``overrides``, or later `pinned_values`) are published at
    startup, before the app's own startup, and never fetched: a test of an app
    whose upstream is unreachable pins it and starts at once.

    Under the switch, startup does not wait for retries (simulated time moves only
    when the test moves it): a required refresher whose first fetch fails fails
    startup at once, with its error.

    ```python
    with fake_time(overrides={"names": ["ada"]}) as clock, TestClient(app) as client:
        clock.advance_sync("1h")
    ```

    Args:
        start: The clock's wall-clock time at the start (see `FakeClock`).
        overrides: Values to pin, by refresher name.

    Yields:
        The `FakeClock` of the block.

    Raises:
        LookupError: on leaving the block, a pinned name matched no refresher of
            any middleware that started in it (a typo, or the wrong app).
    """
    clock = FakeClock(start)
    switch = _switch.Switch(clock, overrides)
    _switch.enter(switch)
    try:
        yield clock
    finally:
        _switch.leave(switch)
    if unused := switch.unused():
        raise LookupError(
            f"fake_time: no RefreshMiddleware that started in the block has a refresher named "
            f"{', '.join(map(repr, unused))}; pinned values are matched by refresher name"
        )


def pinned_values() -> MutableMapping[str, Any]:
    """The values pinned by the innermost `fake_time` block, as a mutable mapping of name to value.

    Setting a value pins it for every middleware that starts later in the block
    and for those running now (like `override`, from any thread). Deleting one
    stops pinning it for middlewares that start later; running ones keep it until
    their lifespan ends.

    ```python
    with fake_time(), TestClient(app) as client:
        pinned_values()["names"] = ["ada"]
    ```

    Raises:
        RuntimeError: no `fake_time` block is active.
        LookupError: (when setting) middlewares are running and none has a
            refresher of that name.
    """
    switch = _switch.active()
    if switch is None:
        raise RuntimeError(
            "asgi_refresh.testing.pinned_values() needs an active `with fake_time():` block "
            "(or the refresh_clock / refresh_overrides pytest fixtures)"
        )
    return switch


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
