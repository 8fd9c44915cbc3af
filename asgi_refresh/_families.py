"""One lifespan's refresher families: keys loaded on first use, refreshed while used, dropped when idle.

Each family keeps its keys in one LRU-ordered dict and its wake-ups in one heap,
served by one task: a thousand warm keys cost a thousand heap entries and one
sleeping task. A request never waits for a fetch of a warm key: a value past
``every`` is served as it is while one background fetch runs, and keys in use are
refreshed on the family's schedule before they get there.
"""

from __future__ import annotations

import heapq
import inspect
import itertools
import logging
import math
import random
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio

from . import _schedule as schedule
from ._clock import Clock
from ._contain import describe_error, escaped_traceback, escapes
from ._duration import format_duration
from ._failure_log import REPEAT_WARNING_EVERY
from ._family import Key, RefresherFamily, checked_key, shown_key
from ._handle import RefreshError
from ._publisher import differs
from ._slot import Flight
from ._sources.outcome import SourceError
from ._thread import ThreadCall

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from ._cluster.base import Codec, Coordinator
    from ._events import Events
    from ._family_store import FamilyStore
    from ._status import FailingKey, FamilyStatus, Status, Unhealthy

logger = logging.getLogger("asgi_refresh")

_SOURCE = "python"  # what a family's fetch is, for its events (a refresher's plain function says the same)

MAX_FAILING_SHOWN = 10
"""The most failing keys ``status()`` lists for a family (it counts them all)."""

MAX_BLOCKED_THREADS = 8
"""The most threads of abandoned plain fetches a family lets run on (or ``max_keys``, if fewer).

A refresher starts no thread while its one abandoned thread is still blocked. A
family's keys fetch concurrently, so its bound is a few threads, not one: one
hung key must not stop the others, while an upstream that hangs for every key
stops the family after a handful of threads instead of one thread per key.
"""


class _FetchTimeout(TimeoutError):
    """A fetch ran past its ``timeout``; shown as ``TimeoutError``."""

    shown_as = "TimeoutError"


class Entry:
    """One key of a family: its value, its fetch, its failures and when the family looks at it next."""

    __slots__ = (
        "due",
        "error",
        "exception",
        "failures",
        "fetched_at",
        "flight",
        "key",
        "loaded",
        "preloaded",
        "retry_at",
        "thread",
        "used_at",
        "value",
        "version",
        "wake",
    )

    def __init__(self, key: Key, now: float) -> None:
        self.key = key
        self.value: Any = None
        self.loaded = False
        self.fetched_at = -math.inf  # monotonic, when its value was fetched
        self.used_at = now  # monotonic, when a request last asked for it
        self.due = math.inf  # when its next refresh is due (jitter applied)
        self.retry_at = -math.inf  # after a failure: not fetched again before this
        self.failures = 0  # consecutive
        self.error: str | None = None
        self.exception: BaseException | None = None
        self.flight: Flight | None = None
        self.thread: ThreadCall | None = None  # a plain fetch's last thread
        self.wake: float | None = None  # the time its heap entry stands for; None: none
        self.preloaded = False  # kept for the lifespan, like a refresher: never dropped
        self.version: int | None = None  # with a coordinator: the stored version of its value


@dataclass
class _Counts:
    loads: int = 0  # first loads that succeeded
    refreshes: int = 0  # refreshes of a warm key that succeeded
    failures: int = 0  # fetches that failed
    hits: int = 0  # gets served from a loaded value
    misses: int = 0  # gets that had to wait for (or were refused) a load
    evicted_idle: int = 0
    evicted_lru: int = 0
    refused: int = 0  # cold keys refused: too many first loads under way
    blocked_refusals: int = 0  # plain fetches failed at once: too many abandoned threads still blocked


class FamilyLog:
    """A family's budget of log lines: one WARNING every few minutes, whichever keys fail.

    Rate-limited by family, not by key: a thousand failing keys (an upstream that
    is down for every tenant) write one line per few minutes, not a thousand.
    """

    __slots__ = ("_logged_at", "_quiet", "_warned")

    def __init__(self) -> None:
        self._logged_at = -math.inf
        self._quiet = 0
        self._warned = False

    def failed(self, name: str, entry: Entry, *, now: float, delay: float, exc: BaseException) -> None:
        loud = now - self._logged_at >= REPEAT_WARNING_EVERY
        quiet = self._quiet
        if loud:
            self._logged_at, self._quiet, self._warned = now, 0, True
        else:
            self._quiet += 1
            if not logger.isEnabledFor(logging.DEBUG):
                return
        key = shown_key(entry.key)
        logger.log(
            logging.WARNING if loud else logging.DEBUG,
            "Family %r: key %s failed (%d in a row): %s; %s, retrying in %s%s%s",
            name,
            key,
            entry.failures,
            entry.error,
            "keeping the last good value" if entry.loaded else "no value loaded yet",
            format_duration(delay),
            f" ({quiet} more failures of this family since the last warning, logged at DEBUG)"
            if loud and quiet
            else "",
            # As for refreshers: a timeout's traceback is ours, a SourceError's message says all it
            # knows. Not exc_info: a fetch's message often quotes the key, which a request chose.
            "\n" + escaped_traceback(exc)
            if loud and entry.failures == 1 and not isinstance(exc, _FetchTimeout | SourceError)
            else "",
            extra={"refresher": name, "key": key, "outcome": "failed", "error": entry.error},
        )

    def recovered(self, name: str) -> None:
        """No key of the family fails any more: said once, if the failures were warned about."""
        if self._warned:
            self._warned = False
            logger.info(
                "Family %r recovered: no key is failing",
                name,
                extra={"refresher": name, "outcome": "recovered"},
            )


class FamilyRun:
    """One family's keys for one lifespan."""

    def __init__(
        self, spec: RefresherFamily, clock: Clock, events: Events | None, store: FamilyStore | None = None
    ) -> None:
        self.spec = spec
        self.store = store  # with a coordinator: the keys are shared with the other processes
        self._clock = clock
        self._events = events
        self.entries: OrderedDict[Key, Entry] = OrderedDict()  # least recently used first
        self.failing: dict[Key, Entry] = {}  # keys whose last fetch failed
        # Failing keys without a value (never preloaded ones): dropped first when the family
        # is full, so a flood of keys that do not exist upstream cannot push out good values.
        self.valueless: dict[Key, Entry] = {}
        self.counts = _Counts()
        self.loading = 0  # fetches under way (first loads and refreshes)
        self.cold_loading = 0  # first loads under way: what a flood of distinct keys would grow
        self._is_async = spec.is_async
        self.last_success_at: float | None = None  # wall clock
        self.last_changed_at: float | None = None
        self.last_duration: float | None = None
        self.last_outcome: str | None = None
        self._log = FamilyLog()
        self._blocked: list[ThreadCall] = []  # plain fetches abandoned (timed out) whose thread may run on
        self._max_blocked = min(spec.max_keys, MAX_BLOCKED_THREADS)
        self._threads = 0  # threads of plain fetches started and not returned: at most _max_blocked
        self._thread_returned: anyio.Event | None = None  # while a fetch waits for a thread
        self._random = random.Random()
        self._heap: list[tuple[float, int, Entry]] = []
        self._order = itertools.count()
        self._task_group: TaskGroup | None = None
        self._wakeup: anyio.CancelScope | None = None
        self._sleeping_until = -math.inf

    # -- what requests do ------------------------------------------------------------

    async def get(self, key: object) -> Any:
        """The value for ``key``: at once if it is loaded, else once its first load ends."""
        key = checked_key(self.spec.name, key)
        now = self._clock.monotonic()
        entries = self.entries
        entry = entries.get(key)
        if entry is not None and entry.loaded:
            self.counts.hits += 1
            entry.used_at = now
            entries.move_to_end(key)
            if entry.flight is None and now >= entry.fetched_at + self.spec.every and now >= entry.retry_at:
                self._start(entry)  # stale-while-revalidate: this request does not wait for it
            return entry.value
        self.counts.misses += 1
        if entry is None:
            entry = self._add(key, now)
        else:
            entry.used_at = now
            entries.move_to_end(key)
        flight = entry.flight
        if flight is None:
            if now < entry.retry_at:  # it failed just now: not fetched again on every request
                raise self._load_error(entry, entry.exception, backing_off=now)
            flight = self._start(entry)
        await flight.wait()
        if flight.error is not None:
            raise self._load_error(entry, flight.error)
        return flight.value

    def _load_error(
        self, entry: Entry, cause: BaseException | None, *, backing_off: float | None = None
    ) -> RefreshError:
        name = self.spec.name
        what = entry.error if cause is None else describe_error(cause)
        message = f"Family {name!r}: key {shown_key(entry.key)} could not load: {what}"
        if backing_off is not None:
            wait = format_duration(max(entry.retry_at - backing_off, 0.001))
            message += f" (failed just now; the next attempt is in {wait})"
        error = RefreshError(name, message, key=entry.key)
        error.__cause__ = cause
        return error

    def _add(self, key: Key, now: float) -> Entry:
        """A new entry for a cold key, dropping the least recently used one if the family is full."""
        if self._task_group is None:
            raise RuntimeError(
                f"Family {self.spec.name!r} cannot load a key: asgi_refresh is not running "
                "(the lifespan has not started or has shut down)"
            )
        if self.cold_loading >= self.spec.max_keys:
            # A flood of distinct keys: their entries are dropped as fast as they come,
            # but their fetches would run on; bounded like the entries. (Refreshes are
            # bounded by the entries themselves.)
            self.counts.refused += 1
            raise RefreshError(
                self.spec.name,
                f"Family {self.spec.name!r}: {self.cold_loading} keys are loading (max_keys is "
                f"{self.spec.max_keys}); key {shown_key(key)} refused, try again shortly",
                key=key,
            )
        entries = self.entries
        if len(entries) >= self.spec.max_keys:
            # A key that failed and has no value goes first, then the least recently used.
            victim = next(iter(self.valueless.values()), None) or next(
                (entry for entry in entries.values() if not entry.preloaded), None
            )
            if victim is None:
                self.counts.refused += 1
                raise RefreshError(
                    self.spec.name,
                    f"Family {self.spec.name!r}: its {len(entries)} preloaded keys fill max_keys; "
                    f"key {shown_key(key)} refused (raise max_keys to serve other keys too)",
                    key=key,
                )
            self._drop(victim)
            self.counts.evicted_lru += 1
        entry = entries[key] = Entry(key, now)
        return entry

    def _drop(self, entry: Entry) -> None:
        del self.entries[entry.key]
        self.failing.pop(entry.key, None)
        self.valueless.pop(entry.key, None)
        entry.wake = None  # its heap entry, if any, is stale now

    # -- fetching --------------------------------------------------------------------

    def _start(self, entry: Entry) -> Flight:
        task_group = self._task_group
        if task_group is None:
            raise RuntimeError(
                f"Family {self.spec.name!r} cannot fetch: asgi_refresh is not running "
                "(the lifespan has not started or has shut down)"
            )
        flight = entry.flight = Flight(on_grid=False)
        if self._events is not None and self._events.wants_origin:
            flight.origin = self._events.origin()  # tracing links the fetch to the request that asked
        cold = not entry.loaded
        self.loading += 1
        self.cold_loading += cold
        # In the lifespan's task group, not the caller's task: a request that gives up
        # waiting must not cancel the fetch everyone else waits for.
        task_group.start_soon(self._fly, entry, flight, cold, name=f"asgi_refresh:family:{self.spec.name}")
        return flight

    async def _fly(self, entry: Entry, flight: Flight, cold: bool) -> None:
        spec, clock = self.spec, self._clock
        name = spec.name
        try:
            started = clock.monotonic()
            if self._events is not None:
                self._events.emit(
                    "started", name, key=shown_key(entry.key), source=_SOURCE, origin=flight.origin
                )
            try:
                if self.store is None:
                    value, age = await self._timed_call(entry), 0.0
                else:
                    # The timeout bounds the fetch, not the wait for another process's: a
                    # holder that died with the lease is waited for (lease_ttl), then fetched here.
                    shared = await self.store.get(entry.key, entry.version, partial(self._timed_call, entry))
                    value, age, entry.version = shared.value, shared.age, shared.version
            except BaseException as exc:  # whatever the user's fetch raises is data, not a crash
                if escapes(exc):
                    if self._events is not None:  # its span (tracing) ends with it
                        self._events.emit(
                            "cancelled",
                            name,
                            clock.monotonic() - started,
                            key=shown_key(entry.key),
                            source=_SOURCE,
                        )
                    raise
                if isinstance(exc, anyio.get_cancelled_exc_class()):
                    exc = RuntimeError("fetch raised CancelledError without being cancelled")
                flight.error = exc
                self._failed(entry, exc, started)
            else:
                flight.value = self._succeeded(entry, value, started, age)
        except BaseException:
            # Shutdown cancelled us: whoever waits gets an error, not a hang.
            flight.error = RuntimeError(f"asgi_refresh stopped while fetching a key of {name!r}")
            raise
        finally:
            entry.flight = None
            self.loading -= 1
            self.cold_loading -= cold
            flight.finish()

    async def _timed_call(self, entry: Entry) -> Any:
        """`_call` within the family's timeout, counted from now."""
        timeout, clock = self.spec.timeout, self._clock
        if timeout is None:
            return await self._call(entry)
        late = _FetchTimeout(f"fetch timed out after {format_duration(timeout)}")
        with clock.move_on_at(clock.monotonic() + timeout) as scope:
            try:
                return await self._call(entry)
            except Exception:
                if scope.cancel_called:  # whatever the fetch made of being cancelled: its timeout
                    raise late from None
                raise
        raise late  # only when cancelled

    async def _call(self, entry: Entry) -> Any:
        fetch = self.spec.fetch
        if self._is_async:
            return await fetch(entry.key)
        if entry.thread is not None and entry.thread.is_running():
            raise RuntimeError(
                "the previous fetch of this key is still blocked in its worker thread (it timed "
                "out and was abandoned); not starting another until it returns"
            )
        # At most _max_blocked threads at once, per family: per key is not enough, a flood
        # of cold keys brings new entries, each with no thread of its own yet.
        while self._threads >= self._max_blocked:
            if self.blocked_threads() >= self._max_blocked:  # every one left behind past its timeout
                self.counts.blocked_refusals += 1
                raise SourceError(
                    f"{len(self._blocked)} fetches of this family are still blocked in their "
                    "worker threads past their timeout; not starting another until they return "
                    "(give the blocking call a timeout of its own, or make fetch `async def`)"
                )
            if self._thread_returned is None:
                self._thread_returned = anyio.Event()
            await self._thread_returned.wait()  # within this fetch's timeout
        call = entry.thread = ThreadCall(
            partial(fetch, entry.key), name=f"asgi_refresh:{self.spec.name}", on_return=self._returned
        )
        call.start()
        self._threads += 1
        try:
            with self._clock.hold():
                value = await call.result()
        except BaseException:
            if call.is_running():  # abandoned (its timeout, or shutdown): the thread runs on
                self._blocked.append(call)
            raise
        if inspect.iscoroutine(value):
            return await value  # `lambda key: load(key)`: the coroutine belongs on the event loop
        if inspect.isawaitable(value):
            raise TypeError(
                f"Family {self.spec.name!r}: fetch is a plain function that returned "
                f"{type(value).__name__}; return the value itself, or declare fetch `async def`"
            )
        return value

    def _returned(self) -> None:
        """A plain fetch's thread returned (on the event loop): a waiting fetch may start one."""
        self._threads -= 1
        waiting, self._thread_returned = self._thread_returned, None
        if waiting is not None:
            waiting.set()

    def blocked_threads(self) -> int:
        """How many abandoned plain fetches still run in their threads (forgets those that returned)."""
        blocked = self._blocked
        if blocked:
            blocked[:] = [call for call in blocked if call.is_running()]
        return len(blocked)

    def _succeeded(self, entry: Entry, value: Any, started: float, age: float = 0.0) -> Any:
        """Keep a good value fetched at ``started`` (or ``age`` seconds before now, by another process)."""
        clock, spec = self._clock, self.spec
        now = clock.monotonic()
        duration = now - started
        first = not entry.loaded
        changed = first or differs(entry.value, value)
        if changed:  # an equal value keeps the object requests have: one consistent view
            entry.value = value
        entry.loaded = True
        entry.fetched_at = now - age
        entry.failures = 0
        entry.error = None
        entry.exception = None
        entry.retry_at = -math.inf
        # Not for a dropped entry's late fetch: its key may be a new entry's by now.
        if self.entries.get(entry.key) is entry:
            self.valueless.pop(entry.key, None)
            if self.failing.pop(entry.key, None) is not None and not self.failing:
                self._log.recovered(spec.name)
        counts = self.counts
        if first:
            counts.loads += 1
        else:
            counts.refreshes += 1
        wall = clock.wall()
        self.last_success_at = wall
        self.last_duration = duration
        self.last_outcome = "changed" if changed else "unchanged"
        if changed:
            self.last_changed_at = wall
        if self._events is not None:
            key = shown_key(entry.key)
            self._events.emit("succeeded", spec.name, duration, key=key, source=_SOURCE)
            if changed:
                self._events.emit("changed", spec.name, duration, key=key)
        entry.due = entry.fetched_at + spec.every - spec.every * spec.jitter * self._random.random()
        self._look_again(entry, now)
        return entry.value

    def _failed(self, entry: Entry, exc: BaseException, started: float) -> None:
        spec = self.spec
        now = self._clock.monotonic()
        self.last_duration = now - started
        self.last_outcome = "failed"
        entry.failures += 1
        entry.error = describe_error(exc)
        entry.exception = exc
        delay = schedule.backoff(
            entry.failures,
            initial=spec.backoff_initial,
            multiplier=spec.backoff_multiplier,
            cap=spec.every if spec.backoff_max is None else spec.backoff_max,
            jitter=spec.jitter,
            draw=self._random.random(),
        )
        entry.retry_at = now + delay
        self.counts.failures += 1
        if self.entries.get(entry.key) is entry:
            self.failing[entry.key] = entry
            if not entry.loaded and not entry.preloaded:
                self.valueless[entry.key] = entry
        self._log.failed(spec.name, entry, now=now, delay=delay, exc=exc)
        if self._events is not None:
            self._events.emit(
                "failed",
                spec.name,
                self.last_duration,
                exc,
                entry.error,
                key=shown_key(entry.key),
                source=_SOURCE,
            )
        self._look_again(entry, now)

    # -- the schedule ----------------------------------------------------------------

    def _look_again(self, entry: Entry, now: float) -> None:
        """Plan the family's next look at ``entry``: its refresh or retry, or its drop when idle."""
        if self.entries.get(entry.key) is not entry:
            return  # dropped meanwhile (least recently used)
        idle_at = math.inf if entry.preloaded else entry.used_at + self.spec.idle_ttl
        self._plan(entry, max(min(_refresh_at(entry), idle_at), now))

    def _plan(self, entry: Entry, at: float) -> None:
        if entry.wake == at:
            return
        entry.wake = at
        if math.isinf(at):
            return
        heapq.heappush(self._heap, (at, next(self._order), entry))
        if len(self._heap) > 2 * len(self.entries) + 64:  # many stale entries: drop them
            self._heap = [(e.wake, next(self._order), e) for e in self.entries.values() if e.wake is not None]
            heapq.heapify(self._heap)
        if at < self._sleeping_until and self._wakeup is not None:
            self._wakeup.cancel()

    def _visit(self, entry: Entry, now: float) -> None:
        if entry.flight is not None:
            return  # its end plans the next look
        # The same sum as the planned look: ``now - used_at >= idle_ttl`` can be false at
        # ``used_at + idle_ttl`` (float rounding), and the look would be planned again for now.
        if not entry.preloaded and now >= entry.used_at + self.spec.idle_ttl:
            self._drop(entry)
            self.counts.evicted_idle += 1
            return
        if now >= _refresh_at(entry):
            self._start(entry)
            return
        self._look_again(entry, now)

    async def run(self, task_group: TaskGroup) -> None:
        """Refresh the keys in use when due and drop the idle ones, until cancelled."""
        self._task_group = task_group
        clock, heap = self._clock, self._heap
        try:
            while True:
                now = clock.monotonic()
                heap = self._heap
                while heap and heap[0][0] <= now:
                    at, _, entry = heapq.heappop(heap)
                    if entry.wake != at or self.entries.get(entry.key) is not entry:
                        continue  # planned again since, or dropped
                    entry.wake = None
                    self._visit(entry, now)
                    heap = self._heap
                wake = heap[0][0] if heap else math.inf
                with anyio.CancelScope() as self._wakeup:
                    self._sleeping_until = wake
                    if math.isinf(wake):
                        await anyio.sleep_forever()
                    await clock.sleep_until(wake)
                self._wakeup, self._sleeping_until = None, -math.inf
        finally:
            self._task_group = None

    # -- startup ---------------------------------------------------------------------

    async def preload(self, *, retry: bool) -> None:
        """Load the ``preload`` keys; with ``retry``, each until it loads (the caller bounds the wait)."""
        if not self.spec.preload:
            return
        now = self._clock.monotonic()
        async with anyio.create_task_group() as waiting:
            for key in self.spec.preload:
                entry = self.entries.get(key) or self._add(key, now)
                entry.preloaded = True
                waiting.start_soon(self._preload_one, entry, retry)

    async def _preload_one(self, entry: Entry, retry: bool) -> None:
        while not entry.loaded:
            flight = entry.flight or self._start(entry)
            await flight.wait()
            if entry.loaded or not retry:
                return
            await self._clock.sleep_until(entry.retry_at)

    def unloaded_preloads(self) -> list[Entry]:
        """The preload keys without a value."""
        return [
            entry
            for key in self.spec.preload
            if (entry := self.entries.get(key)) is not None and not entry.loaded
        ]

    # -- status ----------------------------------------------------------------------

    def summary(self) -> FamilyStatus:
        """Counts and the failing keys (bounded, shown escaped): never a value."""
        counts = self.counts
        failing: list[FailingKey] = [
            {"key": shown_key(entry.key), "consecutive_failures": entry.failures, "last_error": entry.error}
            for entry in itertools.islice(self.failing.values(), MAX_FAILING_SHOWN)
        ]
        return {
            "keys": len(self.entries),
            "max_keys": self.spec.max_keys,
            "loading": self.loading,
            "loads": counts.loads,
            "refreshes": counts.refreshes,
            "failures": counts.failures,
            "hits": counts.hits,
            "misses": counts.misses,
            "evictions": counts.evicted_idle + counts.evicted_lru,
            "evicted_idle": counts.evicted_idle,
            "evicted_lru": counts.evicted_lru,
            "refused": counts.refused,
            "blocked_threads": self.blocked_threads(),
            "blocked_refusals": counts.blocked_refusals,
            "failing_count": len(self.failing),
            "failing_keys": failing,
            "adopted": 0 if self.store is None else self.store.adopted,
            "coordinator_error": None if self.store is None else self.store.last_error,
        }

    def status(self, *, wall: Callable[[float | None], str | None]) -> Status:
        """The family's entry in ``status()``: the fields every entry has, and ``family``."""
        worst = max(self.failing.values(), key=lambda entry: entry.failures, default=None)
        return {
            "source": "family",
            "required": self.spec.required and bool(self.spec.preload),
            "stale": False,
            "last_success_at": wall(self.last_success_at),
            "last_changed_at": wall(self.last_changed_at),
            "last_outcome": self.last_outcome,
            "expires_at": None,
            "last_error": None if worst is None else worst.error,
            "consecutive_failures": 0 if worst is None else worst.failures,
            "refresh_count": self.counts.loads + self.counts.refreshes,
            "next_refresh_at": None,
            "last_duration": self.last_duration,
            "age": None,
            "lag": None,
            "origin": None,
            "version": None,
            "versions": [],
            "pin": None,
            "upstream": None,
            "quarantined": None,
            "snapshot": None,
            "family": self.summary(),
        }


def _refresh_at(entry: Entry) -> float:
    """When ``entry`` is fetched next without a request asking: its refresh, or its retry after a failure.

    A cold key that failed is fetched again when asked for, not before; except a
    preloaded one (of a family that is not required), which keeps retrying like a
    refresher that is not required.
    """
    if entry.loaded:
        return max(entry.due, entry.retry_at)
    return entry.retry_at if entry.preloaded else math.inf


class Families:
    """Every family of one lifespan, by name."""

    def __init__(
        self,
        specs: Iterable[RefresherFamily],
        clock: Clock,
        events: Events | None,
        *,
        coordinator: Coordinator | None = None,
        codec: Codec | None = None,
        lease_ttl: float = 15.0,
    ) -> None:
        def store(spec: RefresherFamily) -> FamilyStore | None:
            if coordinator is None or codec is None:
                return None
            from ._family_store import FamilyStore  # on first use: only with a coordinator

            return FamilyStore(spec, coordinator, codec, lease_ttl)

        self.runs = {spec.name: FamilyRun(spec, clock, events, store(spec)) for spec in specs}

    def start(self, task_group: TaskGroup) -> None:
        """Run every family's schedule in ``task_group``: keys can load from now on."""
        for run in self.runs.values():
            run._task_group = task_group  # before the first get, not when the task first runs
            task_group.start_soon(run.run, task_group, name=f"asgi_refresh:family:{run.spec.name}")

    def family(self, name: str) -> FamilyRun:
        """The family called ``name``; a `LookupError` naming the known ones if there is none."""
        try:
            return self.runs[name]
        except KeyError:
            known = ", ".join(sorted(self.runs)) or "none"
            raise LookupError(f"No refresher family named {name!r:.80} (known: {known})") from None

    async def preload(self, *, retry: bool) -> None:
        """Load every family's ``preload`` keys, concurrently."""
        async with anyio.create_task_group() as task_group:
            for run in self.runs.values():
                # One try for a family that is not required: startup does not wait on it.
                task_group.start_soon(partial(run.preload, retry=retry and run.spec.required))

    def unhealthy(self) -> list[Unhealthy]:
        """The required families with a ``preload`` key without a value (yet): readiness, as for refreshers.

        Names only: a key comes from outside and readiness needs no token. A loaded
        key keeps its last good value while its refreshes fail, as a refresher
        without ``max_stale`` does (a family has none), so only a missing one counts.
        """
        return [
            {"name": name, "reason": "not loaded", "age": None, "max_stale": None}
            for name, run in self.runs.items()
            if run.spec.required
            and any((entry := run.entries.get(key)) is None or not entry.loaded for key in run.spec.preload)
        ]

    def startup_failure(self, budget: str) -> RefreshError | None:
        """Why startup must fail: a required family's preload keys without a value; None if none.

        Logs a WARNING for the keys of a family that is not required.
        """
        failures: list[str] = []
        first: Entry | None = None
        first_name = ""
        for run in self.runs.values():
            for entry in run.unloaded_preloads():
                why = entry.error or f"no fetch finished within {budget}"
                if run.spec.required:
                    failures.append(
                        f"Family {run.spec.name!r} could not preload key {shown_key(entry.key)} "
                        f"within startup_timeout ({budget}): {why}"
                    )
                    if first is None:
                        first, first_name = entry, run.spec.name
                else:
                    logger.warning(
                        "Family %r could not preload key %s (%s); retrying in the background",
                        run.spec.name,
                        shown_key(entry.key),
                        why,
                        extra={"refresher": run.spec.name, "outcome": "default"},
                    )
        if first is None:
            return None
        error = RefreshError(first_name, "; ".join(failures), key=first.key)
        error.__cause__ = first.exception
        return error
