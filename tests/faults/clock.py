"""Clock skew: run one process (or one middleware of a test) with a wall clock that is off.

Hosts' wall clocks disagree, by seconds when NTP is slow to converge, by an hour
after a time-zone mistake. `SkewedClock` wraps any `Clock` (the system's, or a
test's `FakeClock`) and moves only its wall clock; the monotonic clock, which the
schedule runs on, is untouched, as on a real host.

Usage::

    clock = FakeClock()
    ahead = SkewedClock(clock, 3600)  # this "host" thinks it is an hour later
    RefreshMiddleware(app, refreshers=[...], clock=ahead, coordinator=...)
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import anyio

from asgi_refresh import Clock


class SkewedClock:
    """``base`` with its wall clock ``seconds`` ahead (negative: behind)."""

    def __init__(self, base: Clock, seconds: float) -> None:
        self.base = base
        self.seconds = seconds

    def monotonic(self) -> float:
        return self.base.monotonic()

    def wall(self) -> float:
        return self.base.wall() + self.seconds

    async def sleep_until(self, deadline: float) -> None:
        await self.base.sleep_until(deadline)

    def move_on_at(self, deadline: float) -> AbstractContextManager[anyio.CancelScope]:
        return self.base.move_on_at(deadline)

    def hold(self) -> AbstractContextManager[None]:
        return self.base.hold()
