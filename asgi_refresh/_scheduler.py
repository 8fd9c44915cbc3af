"""When each refresher fetches: one heap of due times for all, and what a fetch's outcome does to it.

The rules themselves (the fixed-rate grid, jitter, backoff, expiry, ``Retry-After``)
are pure functions in `asgi_refresh._schedule`; this applies them to the running
refreshers, on the runtime's clock, with one task and one timer for all of them.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from asgi_refresh import _schedule as schedule
from asgi_refresh._clock import Clock, SystemClock
from asgi_refresh._duration import format_duration
from asgi_refresh._failure_log import REPEAT_WARNING_EVERY
from asgi_refresh._slot import Flight, Slot, stopped_while_refreshing
from asgi_refresh._sources.outcome import SourceError

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

logger = logging.getLogger("asgi_refresh")

# Workers: started this many at a time (at least) while due fetches wait for one; at
# most this many kept idle; workers let other tasks run after this long (real time).
# Short, because a request needs a few turns of the event loop and may wait this long
# at each: at 1 ms, a burst of refreshes tripled the p99 of requests (benchmarks/busy.py).
_NEW_WORKERS = 16
_MAX_IDLE_WORKERS = 8
_FAIRNESS = 0.0003
# On real time, the scheduler wakes up to this late, so that refreshes due within it
# start in one wake-up: jitter spreads a thousand refreshers' due times apart, and a
# wake-up each cost more than the refreshes (benchmarks/scaling.py). Simulated time
# (a test's clock) stays exact.
_TIMER_SLACK = 0.001


class Worker:
    """One worker task: its cancel scope, and the deadline of the fetch it runs (``inf``: none)."""

    __slots__ = ("cancelled", "deadline", "scope", "timed_out")

    def __init__(self) -> None:
        self.scope: anyio.CancelScope | None = None  # entered anew after each timeout
        self.cancelled = False  # the scope is cancelled: leave it for a new one
        self.deadline = math.inf
        self.timed_out = False  # its fetch ran past its deadline: the scheduler cancelled the scope


class Scheduler:
    """One task wakes every refresher when it is due: a heap of due times, one sleep at a time.

    Refreshers are plain records, not tasks: a thousand idle ones cost a thousand
    heap entries and one sleeping task. Due fetches go to a small pool of worker
    tasks, which grows while fetches wait on I/O (so none queues behind a slow one)
    and shrinks back when idle: no task is spawned per refresh. Fetch deadlines
    live in a second heap, served by the same sleep: no timer is armed and
    cancelled per fetch.

    Args:
        clock: The runtime's clock.
        slots: The refreshers.
        fly: Runs one fetch for everyone waiting on a flight (the runtime's).
        fetches: Whether this process fetches a refresher itself (not a follower);
            None: always (no coordination).
    """

    def __init__(
        self,
        clock: Clock,
        slots: Mapping[str, Slot],
        fly: Callable[[Slot, Flight], Coroutine[Any, Any, None]],
        fetches: Callable[[Slot], bool] | None,
    ) -> None:
        self._clock = clock
        self._slack = _TIMER_SLACK if isinstance(clock, SystemClock) else 0.0
        self._slots = slots
        self._fly = fly
        self._fetches = fetches
        import random  # here: importing asgi_refresh stays cheap

        self._random = random.Random()
        self._warned_behind_at = -math.inf
        self._order = itertools.count()
        # (due, order, slot); an entry whose due is not its slot's `queued` is stale.
        self._due: list[tuple[float, int, Slot]] = []
        self._crew: set[Worker] = set()
        # No earlier deadline than this (a fetch that armed it may have ended since).
        self._earliest_deadline = math.inf
        self._wakeup: anyio.CancelScope | None = None
        self._sleeping_until = -math.inf  # not asleep
        self._task_group: TaskGroup | None = None
        # Due fetches waiting for a worker, the idle workers' wake-up events, the workers.
        self._ready: deque[Slot] = deque()
        self._idle: list[anyio.Event] = []
        self._workers = 0
        self._fetching = 0  # workers inside a fetch: when the scheduler runs, they wait on I/O
        self._yielded = time.monotonic()  # when a worker last let other tasks run
        for slot in slots.values():
            self.reschedule(slot, slot.timing.next_due)

    def start(self, task_group: TaskGroup) -> None:
        """Run the schedule and the workers in ``task_group`` until it ends; fetches can start now."""
        self._task_group = task_group
        task_group.start_soon(self._run, task_group, name="asgi_refresh:scheduler")

    async def _run(self, task_group: TaskGroup) -> None:
        """Start each refresher's fetch when it falls due, and cancel fetches past their deadline."""
        try:
            await self._serve(task_group)
        finally:
            self._task_group = None
            # Fetches queued but never started (refresh-now, due ones) will not run:
            # release whoever waits for them, and let a later refresh() say why.
            while self._ready:
                slot = self._ready.popleft()
                flight = slot.flight
                if flight is not None and flight.worker is None:
                    flight.error = stopped_while_refreshing(slot.spec.name)
                    slot.flight = None
                    flight.finish()

    async def _serve(self, task_group: TaskGroup) -> None:
        clock = self._clock
        while True:
            now = clock.monotonic()
            self._expire(now)
            self._start_due(now, task_group)
            while self._ready:
                await anyio.lowlevel.checkpoint()
                if self._ready and not self._runnable():
                    # Every worker waits inside a fetch (I/O): add workers until every
                    # due fetch has started, so that slow fetches never queue behind
                    # each other.
                    for _ in range(min(len(self._ready), max(_NEW_WORKERS, self._workers))):
                        self._spawn_worker(task_group)
            wake = min(
                self._due[0][0] if self._due else math.inf,
                self._earliest_deadline,
            )
            if wake <= now:
                continue
            # A reschedule or a deadline earlier than `wake` cancels this sleep.
            with anyio.CancelScope() as self._wakeup:
                self._sleeping_until = wake
                if math.isinf(wake):
                    await anyio.sleep_forever()
                await clock.sleep_until(wake + self._slack)
            self._wakeup, self._sleeping_until = None, -math.inf

    def _start_due(self, now: float, task_group: TaskGroup) -> None:
        due_heap = self._due
        while due_heap and due_heap[0][0] <= now:
            due, _, slot = heapq.heappop(due_heap)
            if slot.timing.queued != due:  # rescheduled since: another entry stands for it
                continue
            slot.timing.queued = None
            self._take_off(slot, due, now)
        self._hand_out(task_group)

    def _take_off(self, slot: Slot, due: float, now: float) -> None:
        """Queue ``slot``'s fetch (due at ``due``) for a worker, unless another process or fetch has it."""
        if slot.overridden or (self._fetches is not None and not self._fetches(slot)):
            return  # a follower has no schedule of its own: taking over reschedules it
        if due > -math.inf:  # not the first load: how late is this refresh?
            lag = slot.timing.lag = now - due
            if lag > schedule.BEHIND_AFTER and schedule.is_behind(lag, slot.spec.every):
                self._warn_behind(slot, lag, now)
        if slot.flight is not None:
            return  # a refresh-now under way is this refresh; its end schedules the next
        slot.flight = Flight(on_grid=slot.history.consecutive_failures == 0)
        self._ready.append(slot)

    def _hand_out(self, task_group: TaskGroup) -> None:
        """Idle workers take the queued fetches; without any, one new worker starts on them."""
        for _ in range(min(len(self._ready), len(self._idle))):
            self._idle.pop().set()
        if self._ready and not self._runnable():
            self._spawn_worker(task_group)
        if self._ready and self._wakeup is not None:
            # Queued from outside the schedule (refresh-now, a refresh that fell due
            # meanwhile): the scheduler adds workers while all of them wait on I/O,
            # so that this fetch never waits behind another one's I/O.
            self._wakeup.cancel()

    def _runnable(self) -> int:
        """Workers that will take queued fetches without a new one: not idle, not waiting inside a fetch."""
        return self._workers - self._fetching - len(self._idle)

    def _spawn_worker(self, task_group: TaskGroup) -> None:
        self._workers += 1
        task_group.start_soon(self._work, name="asgi_refresh:worker")

    async def _work(self) -> None:
        """Run queued fetches one after another; wait idle for more, or end when enough others wait.

        One cancel scope serves many fetches: a fetch past its deadline cancels
        it (`arm`), and the worker goes on in a new one. No scope is entered
        and left per fetch.
        """
        ready, worker = self._ready, Worker()
        self._crew.add(worker)
        try:
            while True:
                with anyio.CancelScope() as worker.scope:
                    worker.cancelled = False
                    while not worker.cancelled:
                        while ready and not worker.cancelled:
                            slot = ready.popleft()
                            flight = slot.flight
                            if flight is not None and flight.worker is None:
                                flight.worker = worker
                                self._fetching += 1
                                try:
                                    await self._fly(slot, flight)
                                finally:
                                    self._fetching -= 1
                            # Requests get the loop between fetches: the time since any
                            # worker last yielded counts, so that several workers running
                            # in one turn of the loop still hold it for _FAIRNESS in all.
                            if ready and time.monotonic() - self._yielded > _FAIRNESS:
                                self._yielded = time.monotonic()
                                await anyio.lowlevel.checkpoint()
                        if worker.cancelled:
                            break  # a deadline cancelled this scope: go on in a new one
                        if len(self._idle) >= _MAX_IDLE_WORKERS:
                            return
                        woken = anyio.Event()
                        self._idle.append(woken)
                        await woken.wait()
        finally:
            self._crew.discard(worker)
            self._workers -= 1

    def fetch_now(self, slot: Slot) -> Flight:
        """Start a fetch of ``slot`` outside its schedule, ahead of the due ones; its flight."""
        if self._task_group is None:
            raise RuntimeError(
                f"Refresher {slot.spec.name!r} cannot refresh: asgi_refresh is not running "
                "(the lifespan has not started or has shut down)"
            )
        flight = slot.flight = Flight(on_grid=False)
        self._ready.appendleft(slot)
        self._hand_out(self._task_group)
        return flight

    def reschedule(self, slot: Slot, due: float) -> None:
        """Fetch ``slot`` at ``due`` (``inf``: not until rescheduled again)."""
        timing = slot.timing
        timing.next_due = due
        if due == timing.queued:
            return
        if due == math.inf:
            timing.queued = None  # its entry, if any, is stale now
            return
        timing.queued = due
        heapq.heappush(self._due, (due, next(self._order), slot))
        if len(self._due) > 2 * len(self._slots) + 64:  # many stale entries: drop them
            self._due = [
                (s.timing.queued, next(self._order), s)
                for s in self._slots.values()
                if s.timing.queued is not None
            ]
            heapq.heapify(self._due)
        self._wake_before(due)

    def after_flight(self, slot: Slot) -> None:
        """After a fetch: start the next at once if it is due already, else make sure it is queued.

        A refresh that fell due while a refresh-now ran, or a watched file that
        changed meanwhile, is fetched right away, without a round through the
        scheduler's task.
        """
        timing, now = slot.timing, self._clock.monotonic()
        if timing.next_due <= now and self._task_group is not None:
            timing.queued = None  # its entry, if any, is stale now
            self._take_off(slot, timing.next_due, now)
            self._hand_out(self._task_group)
        elif timing.queued != timing.next_due:
            self.reschedule(slot, timing.next_due)

    def arm(self, flight: Flight, at: float) -> None:
        """Cancel the fetch of ``flight`` at ``at`` (the runtime's clock), unless `disarm` comes first.

        Nothing is allocated, pushed or armed per fetch: the worker notes the
        deadline, and the scheduler looks at its workers' deadlines when the
        earliest one it knows of passes (one sleep serves due times and deadlines).
        """
        worker: Worker = flight.worker  # fetches run in the scheduler's workers
        worker.deadline, worker.timed_out = at, False
        if at < self._earliest_deadline:
            self._earliest_deadline = at
            self._wake_before(at)

    def disarm(self, flight: Flight) -> bool:
        """The fetch of ``flight`` has ended; whether it ran past its deadline (and was cancelled)."""
        worker: Worker = flight.worker
        worker.deadline = math.inf
        return worker.timed_out

    def _wake_before(self, at: float) -> None:
        """Cut the scheduler's sleep short if it would sleep past ``at``."""
        if at < self._sleeping_until and self._wakeup is not None:
            self._wakeup.cancel()

    def _expire(self, now: float) -> None:
        """Cancel the fetches past their deadline; find the next deadline."""
        if now < self._earliest_deadline:
            return
        earliest = math.inf
        for worker in self._crew:
            if worker.deadline <= now:
                worker.deadline, worker.timed_out, worker.cancelled = math.inf, True, True
                if worker.scope is not None:
                    worker.scope.cancel()
            elif worker.deadline < earliest:
                earliest = worker.deadline
        self._earliest_deadline = earliest

    def after_success(
        self, slot: Slot, started: float, now: float, on_grid: bool, refresh_in: float | None
    ) -> None:
        """Schedule the next fetch after a good one that started at ``started`` and ended at ``now``."""
        spec = slot.spec
        slot.timing.grid, due = schedule.after_success(
            grid=slot.timing.grid,
            started=started,
            now=now,
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

    def _warn_behind(self, slot: Slot, lag: float, now: float) -> None:
        # A process that cannot keep up (a saturated CPU, a blocked loop, too many
        # refreshers for one core) starts every refresh later: say so once every
        # few minutes instead of quietly refreshing at a fraction of the rate asked.
        if now - self._warned_behind_at < REPEAT_WARNING_EVERY:
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
