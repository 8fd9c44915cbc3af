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
        """Seconds on a clock that never goes backwards (schedules and ages); any thread."""

    def wall(self) -> float:
        """Seconds since the epoch (timestamps in ``status()``); any thread."""

    async def sleep_until(self, deadline: float) -> None:
        """Sleep until ``monotonic()`` reaches ``deadline``."""

    def move_on_at(self, deadline: float) -> AbstractContextManager[anyio.CancelScope]:
        """A cancel scope that is cancelled when ``monotonic()`` reaches ``deadline``."""

    def hold(self) -> AbstractContextManager[None]:
        """Keep simulated time still while work the event loop can't see (a thread) runs."""


class SystemClock:
    """Real time: ``time.monotonic()``, readable from any thread, on asyncio and trio."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep_until(self, deadline: float) -> None:
        await anyio.sleep(max(0.0, deadline - time.monotonic()))

    def move_on_at(self, deadline: float) -> AbstractContextManager[anyio.CancelScope]:
        # The event loop's clock has its own origin (trio offsets it on purpose).
        return anyio.CancelScope(deadline=anyio.current_time() + deadline - time.monotonic())

    def hold(self) -> AbstractContextManager[None]:
        return nullcontext()
