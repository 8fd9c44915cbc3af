"""When each refresher fetches: its loop, its next due time, and what a fetch's outcome does to it.

The rules themselves (the fixed-rate grid, jitter, backoff, expiry, ``Retry-After``)
are pure functions in `asgi_refresh._schedule`; this applies them to the running
refreshers, on the runtime's clock.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Awaitable, Callable, Mapping

import anyio

from asgi_refresh import _schedule as schedule
from asgi_refresh._clock import Clock
from asgi_refresh._duration import format_duration
from asgi_refresh._failure_log import REPEAT_WARNING_EVERY
from asgi_refresh._slot import Flight, Slot
from asgi_refresh._sources.outcome import SourceError

logger = logging.getLogger("asgi_refresh")


class Scheduler:
    """One loop per refresher, asleep until its due time; a reschedule wakes it.

    Args:
        clock: The runtime's clock.
        slots: The refreshers.
        fly: Runs one fetch for everyone waiting on a flight (the runtime's).
        fetches: Whether this process fetches a refresher itself (not a follower).
    """

    def __init__(
        self,
        clock: Clock,
        slots: Mapping[str, Slot],
        fly: Callable[[Slot, Flight], Awaitable[None]],
        fetches: Callable[[Slot], bool],
    ) -> None:
        self._clock = clock
        self._slots = slots
        self._fly = fly
        self._fetches = fetches
        self._random = random.Random()
        self._warned_behind_at = -math.inf

    async def keep_fresh(self, slot: Slot) -> None:
        """Fetch whenever the slot is due; the outcome of each fetch sets the next due time."""
        clock = self._clock
        while True:
            due = (
                slot.timing.next_due if self._fetches(slot) else math.inf
            )  # a follower: taking over wakes us
            if due > clock.monotonic():
                # A fetch outside the schedule (refresh-now) moves next_due and
                # cancels this sleep, so the loop re-reads the new due time.
                with anyio.CancelScope() as slot.timing.wakeup:
                    if math.isinf(due):  # overridden, or not the lease holder: only a wakeup ends this
                        await anyio.sleep_forever()
                    await clock.sleep_until(due)
                slot.timing.wakeup = None
                continue
            if due > -math.inf:  # not the first load: how late is this refresh?
                self._note_lag(slot, clock.monotonic() - due)
            await self._scheduled_refresh(slot)

    async def _scheduled_refresh(self, slot: Slot) -> None:
        # A function of its own so that the loop's locals do not keep the last
        # flight alive while it sleeps: with thousands of refreshers, that adds up.
        flight = slot.flight
        if flight is not None:  # a refresh-now is under way: it is this refresh
            await flight.done.wait()
            return
        # The scheduled fetch runs right here, in this refresher's own task: no task
        # per refresh. Hooks run apart, so they never delay the schedule.
        flight = slot.flight = Flight(on_grid=slot.history.consecutive_failures == 0)
        await self._fly(slot, flight)

    def reschedule(self, slot: Slot, due: float) -> None:
        """Fetch ``slot`` at ``due`` (``inf``: not until rescheduled again)."""
        slot.timing.next_due = due
        if slot.timing.wakeup is not None:
            slot.timing.wakeup.cancel()

    def after_success(self, slot: Slot, started: float, on_grid: bool, refresh_in: float | None) -> None:
        """Schedule the next fetch after a good one that started at ``started``."""
        spec = slot.spec
        slot.timing.grid, due = schedule.after_success(
            grid=slot.timing.grid,
            started=started,
            now=self._clock.monotonic(),
            every=spec.every,
            jitter=spec.jitter,
            draw=self._random.random(),
            on_grid=on_grid,
            refresh_in=refresh_in,
        )
        self.reschedule(slot, due)

    def after_failure(self, slot: Slot, exc: BaseException, now: float) -> float:
        """Schedule the retry after a failed fetch; the delay it waits."""
        spec = slot.spec
        delay = schedule.retry_delay(
            schedule.backoff(
                slot.history.consecutive_failures,
                initial=spec.backoff_initial,
                multiplier=spec.backoff_multiplier,
                cap=spec.every if spec.backoff_max is None else spec.backoff_max,
                jitter=spec.jitter,
                draw=self._random.random(),
            ),
            now=now,
            every=spec.every,
            backoff_initial=spec.backoff_initial,
            expires_at=slot.expires_at,
            leeway=slot.leeway,
            retry_after=exc.retry_after if isinstance(exc, SourceError) else None,
        )
        self.reschedule(slot, now + delay)
        return delay

    def _note_lag(self, slot: Slot, lag: float) -> None:
        # A process that cannot keep up (a saturated CPU, a blocked loop, too many
        # refreshers for one core) starts every refresh later: say so once every
        # few minutes instead of quietly refreshing at a fraction of the rate asked.
        slot.timing.lag = lag
        now = self._clock.monotonic()
        if (
            not schedule.is_behind(lag, slot.spec.every)
            or now - self._warned_behind_at < REPEAT_WARNING_EVERY
        ):
            return
        self._warned_behind_at = now
        behind = sum(
            1
            for other in self._slots.values()
            if schedule.is_behind(now - other.timing.next_due, other.spec.every)
        )
        logger.warning(
            "asgi_refresh: this process cannot keep up with its refresh schedule: refresher "
            "%r started %s late (every %s), and %d refreshers are behind. The event loop is "
            "blocked or the CPU is saturated: fewer refreshers, a longer `every`, more CPU, "
            "or work moved off the event loop (plain `def` fetches run in threads). "
            "status() shows each refresher's `lag`.",
            slot.spec.name,
            format_duration(lag),
            format_duration(slot.spec.every),
            behind,
            extra={"refresher": slot.spec.name, "outcome": "behind", "lag": lag},
        )
