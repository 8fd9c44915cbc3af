"""The clock the scheduler reads and sleeps on, injectable so tests can drive time."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from typing import Protocol

import anyio


class Clock(Protocol):
    """Where the scheduler gets its time from.

    `SystemClock` is the real one; `asgi_refresh.testing.FakeClock` is the one tests
    drive. Deadlines are in the clock's own monotonic seconds.
    """

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (for schedules and ages)."""

    def wall(self) -> float:
        """Seconds since the epoch (for timestamps in ``status()``)."""

    async def sleep_until(self, deadline: float) -> None:
        """Sleep until ``monotonic()`` reaches ``deadline``."""

    def cancel_scope_at(self, deadline: float) -> anyio.CancelScope:
        """A cancel scope that is cancelled when ``monotonic()`` reaches ``deadline``."""

    def hold(self) -> AbstractContextManager[None]:
        """Keep simulated time still while work the event loop can't see (a thread) runs."""


class SystemClock:
    """The event loop's clock, as anyio sees it, under asyncio and trio alike."""

    def monotonic(self) -> float:
        return anyio.current_time()

    def wall(self) -> float:
        return time.time()

    async def sleep_until(self, deadline: float) -> None:
        await anyio.sleep_until(deadline)

    def cancel_scope_at(self, deadline: float) -> anyio.CancelScope:
        return anyio.CancelScope(deadline=deadline)

    def hold(self) -> AbstractContextManager[None]:
        return nullcontext()
