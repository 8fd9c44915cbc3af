"""One lifespan's worth of running refreshers: load, schedule, back off, publish.

Everything here lives for exactly one lifespan. The middleware creates a `Runtime`
when the server starts the lifespan and drops it at shutdown, so that one
middleware instance can serve several lifespans in a row (test clients do that).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Coroutine, Iterable, Mapping, MutableMapping
from contextlib import AsyncExitStack
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple, TypedDict

import anyio

from . import _report as status
from . import _schedule as schedule
from ._clock import Clock
from ._contain import describe_error, escapes
from ._duration import format_duration
from ._events import EventKind, Events, Listener
from ._failure_log import FailureLog
from ._fingerprint import content_digest
from ._handle import Kind, LoopHome, RefreshError, RefreshHandle
from ._publisher import SNAPSHOT_KEY, Publisher, differs
from ._refresher import RESERVED_NAME, Refresher
from ._scheduler import Scheduler
from ._slot import Flight, Held, Slot, Version, stopped_while_refreshing
from ._sources.context import SharedResources, SourceContext
from ._sources.outcome import Fetched, Fresh, SourceError

if TYPE_CHECKING:
    from pathlib import Path

    from anyio.abc import TaskGroup, TaskStatus

    from ._cluster.base import Codec, Coordinator
    from ._cluster.coordination import Coordination
    from ._derivation import Derivation
    from ._derived import Derived
    from ._families import Families
    from ._family import RefresherFamily
    from ._hooks import Hooks
    from ._keeper import ClusterKept, Keeper
    from ._status import Status, Unhealthy

logger = logging.getLogger("asgi_refresh")


_CLOSE_TIMEOUT = 10.0  # closing sources when the runtime ends other than by `stop`


class _Facts(TypedDict):
    source: str
    http_status: int | None
    size: int | None


def _facts(slot: Slot) -> _Facts:
    """What the event ending a fetch says of it besides its outcome (looked up: not part of `Source`)."""
    source = slot.source
    status, size = getattr(source, "last_status", None), getattr(source, "last_size", None)
    return {
        "source": source.kind,
        "http_status": status if type(status) is int else None,
        "size": size if type(size) is int else None,
    }


class _FetchTimeout(TimeoutError):
    """A fetch ran past its ``timeout``; shown as ``TimeoutError`` in status and logs."""

    shown_as = "TimeoutError"


class Runtime:
    """The running refreshers of one lifespan, publishing into one state dict."""

    def __init__(
        self,
        refreshers: Iterable[Refresher],
        *,
        state: MutableMapping[str, Any],
        clock: Clock,
        listeners: Iterable[Listener] = (),
        coordinator: Coordinator | None = None,
        codec: Codec | None = None,
        lease_ttl: float = 15.0,
        snapshot_dir: Path | None = None,
        snapshot_max_age: float | None = None,
        families: Iterable[RefresherFamily] = (),
        derived: Iterable[Derived] = (),
    ) -> None:
        self.slots = {spec.name: Slot(spec) for spec in refreshers}
        listeners = tuple(listeners)
        self.events = Events(listeners, clock) if listeners else None  # none: nothing emitted at all
        self.state = state
        self.clock = clock
        self.handle = RefreshHandle(self)
        self.home: LoopHome | None = None  # the loop we run on, for calls from other threads
        self._task_group: TaskGroup | None = None
        self._scope = anyio.CancelScope()
        self._stopped = anyio.Event()
        self._shared = SharedResources()  # what the sources share (one HTTP client)
        self._sources = AsyncExitStack()  # what the sources share (a client), closed after them
        self._opened: list[Slot] = []  # the opened sources' slots, in the order they opened
        self._close_deadline: float | None = None
        self.publisher = Publisher(state, self.slots, clock)
        self.derivation: Derivation | None = None
        derived = tuple(derived)
        if derived:
            # On first use: apps without derived values never load it.
            from ._derivation import Derivation

            self.derivation = Derivation(
                derived,
                slots=self.slots,
                publisher=self.publisher,
                clock=clock,
                events=self.events,
                start_hooks=self._start_derived_hooks,
            )
        self.coordination: Coordination | None = None
        self.keeper: Keeper | None = None  # last known good: guards, versions, snapshots
        keeps = snapshot_dir is not None or any(
            slot.spec.guard or slot.spec.keep_versions for slot in self.slots.values()
        )
        if coordinator is not None or keeps:
            # On first use: apps without a coordinator or last known good never load them.
            from ._cluster.base import JSONCodec

            codec = codec or JSONCodec()
        if keeps:
            from ._keeper import Keeper

            assert codec is not None
            self.keeper = Keeper(
                clock=clock, codec=codec, snapshot_dir=snapshot_dir, snapshot_max_age=snapshot_max_age
            )
        if coordinator is not None:
            from ._cluster.coordination import Coordination

            assert codec is not None
            self.coordination = Coordination(self, coordinator, codec, lease_ttl)
        families = tuple(families)
        self.families: Families | None = None
        if families:
            from ._families import Families  # on first use: apps without a family never load it

            self.families = Families(
                families, clock, self.events, coordinator=coordinator, codec=codec, lease_ttl=lease_ttl
            )
        fetches = None if self.coordination is None else self.coordination.fetches  # a follower does not
        self.scheduler = Scheduler(self.clock, self.slots, self._fly, fetches)

    @property
    def running(self) -> bool:
        """Whether the refreshers are running (between start and stop)."""
        return self._task_group is not None

    @property
    def stopped(self) -> bool:
        """Whether every refresher task has ended after `stop`."""
        return self._stopped.is_set()

    # -- lifecycle -----------------------------------------------------------------

    def prepare(self) -> None:
        """Put the handle, the defaults and a snapshot marker in the state, before anything runs.

        Synchronous, so that nothing (a request, ``middleware.handle``) can see the
        state half-filled.
        """
        self.home = LoopHome.here()
        self.state[RESERVED_NAME] = self.handle
        for slot in self.slots.values():
            if not slot.spec.required:
                self.publisher.publish(slot.spec.name, slot.spec.default)
                slot.kept.origin = "default"
        if self.derivation is not None:
            self.derivation.prepare()
        self.state[SNAPSHOT_KEY] = object()

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        """Run every refresher until `stop`; report started once all loops run (after `prepare`).

        Started with ``task_group.start(runtime.run)``.
        """
        try:
            with self._scope:
                if self.coordination is not None:
                    await self.coordination.open()
                async with anyio.create_task_group() as task_group:
                    self._task_group = task_group
                    if self.events is not None:
                        task_group.start_soon(self.events.run, name="asgi_refresh:events")
                    if self.derivation is not None:
                        task_group.start_soon(self.derivation.run, name="asgi_refresh:derived")
                    if self.keeper is not None and self.keeper.writer is not None:
                        task_group.start_soon(self.keeper.writer.run, name="asgi_refresh:snapshots")
                    if self.coordination is not None:
                        task_group.start_soon(self.coordination.watch, name="asgi_refresh:coordination")
                        task_group.start_soon(self.coordination.keep_leases, name="asgi_refresh:leases")
                    self.scheduler.start(task_group)
                    if self.families is not None:
                        self.families.start(task_group)
                    task_status.started()
        finally:
            self._task_group = None
            if self.coordination is not None:
                await self.coordination.close()
            await self._close_sources()
            self._stopped.set()
            self.home = None  # nothing runs any more: other threads may call in directly

    async def _open_source(self, slot: Slot) -> None:
        """Open the refresher's source for the rest of the lifespan.

        Done as part of its first fetch, so it is bounded and retried like one:
        a source that cannot open is a failed load, not a crash.
        """
        context = SourceContext(
            name=slot.spec.name,
            clock=self.clock,
            shared=self._shared,
            stack=self._sources,
            handle=self.handle,
            lifespan=self,
            timeout=slot.spec.timeout,
        )
        try:
            await slot.source.open(context)
        except BaseException as exc:  # a source is user code: contained
            if escapes(exc):
                raise
            raise SourceError(f"could not open its source: {describe_error(exc)}") from exc
        slot.opened = True
        self._opened.append(slot)

    async def _close_sources(self) -> None:
        deadline = self._close_deadline or self.clock.monotonic() + _CLOSE_TIMEOUT
        # Shielded: shutdown cancelled us, and a source must still close its client.
        with anyio.CancelScope(shield=True), self.clock.move_on_at(deadline):
            # The sources first, last opened first; then what they shared (a client).
            while self._opened:
                slot = self._opened.pop()
                slot.opened = False
                try:
                    await slot.source.close()
                except BaseException as exc:  # a source is user code: contained
                    if escapes(exc):
                        raise
                    logger.error(
                        "asgi_refresh: closing the source of %r failed; ignored at shutdown",
                        slot.spec.name,
                        exc_info=exc,
                    )
            try:
                await self._sources.aclose()
            except BaseException as exc:  # a source's shared resource: contained
                if escapes(exc):
                    raise
                logger.error("asgi_refresh: closing a source failed; ignored at shutdown", exc_info=exc)

    # -- what sources ask of the lifespan (asgi_refresh._sources.context.Lifespan) ------

    def start_source_task(self, func: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        """Run a source's own task (a file watch) in the task group until shutdown."""
        assert self._task_group is not None
        self._task_group.start_soon(func, name=name)

    def source_changed(self, name: str) -> None:
        """A source says its data changed (a watched file): fetch it soon."""
        slot = self.slots[name]
        if slot.overridden:
            return
        if slot.flight is not None:
            slot.timing.refresh_again = True  # that fetch may have read the old data
        else:
            self.scheduler.reschedule(slot, self.clock.monotonic())

    def refresh_after_change(self, name: str) -> None:
        """The upstream of ``name`` says it changed (a webhook): fetch it now.

        A fetch under way here may have read the old data, so another follows it (as
        for a watched file). A process that does not hold the lease asks the holder
        to fetch (refresh-now), so that every process serves the change.
        """
        slot = self.slot(name)
        if slot.overridden:
            return
        coordination = self.coordination
        if slot.flight is not None and (coordination is None or coordination.fetches(slot)):
            slot.timing.refresh_again = True
        else:
            self.start_refresh(slot)

    async def load(self, startup_timeout: float, *, simulated: bool = False) -> RefreshError | None:
        """Wait for the first loads; return why startup must fail, or None.

        Loads run concurrently, so this takes as long as the slowest one. Required
        refreshers must get a value (retrying with backoff until the budget runs
        out); the others only need to have tried once.

        ``simulated``: the clock is a test's, which moves only when the test moves it
        (`asgi_refresh.testing.fake_time`). Retries would wait for it forever, so
        required refreshers get their first fetch only, and ``startup_timeout`` also
        bounds the wait in real seconds (a first fetch stuck on real I/O).
        """
        with (
            self.clock.move_on_at(self.clock.monotonic() + startup_timeout),
            anyio.move_on_after(startup_timeout if simulated else math.inf),
        ):
            settled = _all_settled(list(self.slots.values()), simulated)
            derivation = self.derivation
            ready = settled if derivation is None else (lambda: settled() and derivation.settled())
            if self.families is None:
                await self.publisher.until(ready)
            else:
                async with anyio.create_task_group() as loading:
                    # Retried like a required refresher, except on a test's clock (see above).
                    loading.start_soon(partial(self.families.preload, retry=not simulated))
                    await self.publisher.until(ready)
        failures: list[str] = []
        failed: list[Slot] = []
        for slot in self.slots.values():
            if slot.loaded:
                continue
            cause = slot.history.last_error or f"no fetch finished within {format_duration(startup_timeout)}"
            if slot.kept.snapshot_problem is not None:
                cause = f"{cause}; snapshot not used: {slot.kept.snapshot_problem}"
            if slot.spec.required and simulated:
                failed.append(slot)
                failures.append(
                    f"Refresher {slot.spec.name!r} could not load: {cause} (under "
                    "asgi_refresh.testing.fake_time, a failed first fetch fails startup at once; "
                    "pin the refresher's value to test without it)"
                )
            elif slot.spec.required:
                failed.append(slot)
                failures.append(
                    f"Refresher {slot.spec.name!r} could not load within startup_timeout "
                    f"({format_duration(startup_timeout)}): {cause}"
                )
            else:
                logger.warning(
                    "Refresher %r has no value yet (%s); serving its default and retrying",
                    slot.spec.name,
                    cause,
                    extra={"refresher": slot.spec.name, "outcome": "default"},
                )
        if self.families is not None:
            family = self.families.startup_failure(format_duration(startup_timeout))
            if family is not None and not failed:
                return family
            if family is not None:
                failures.append(str(family))
        if self.derivation is not None and not failed:  # a missing input says more than what it misses
            derived = self.derivation.failures(startup_timeout)
            if derived:
                error = RefreshError(derived[0][0], "; ".join(message for _, message, _ in derived))
                error.__cause__ = derived[0][2]
                return error
        if not failed:
            return None
        error = RefreshError(failed[0].spec.name, "; ".join(failures))
        error.__cause__ = failed[0].history.last_exception  # what the fetch raised, for the traceback
        return error

    async def stop(self, shutdown_timeout: float) -> list[str]:
        """Cancel every refresher and wait for them, at most ``shutdown_timeout``.

        Returns:
            The names of refreshers whose fetch ignored cancellation past the
            timeout (empty when everything stopped).
        """
        self._close_deadline = self.clock.monotonic() + shutdown_timeout
        self._scope.cancel()
        with self.clock.move_on_at(self._close_deadline):
            await self._stopped.wait()
        if self._stopped.is_set():
            return []
        return [name for name, slot in self.slots.items() if slot.flight is not None] or list(self.slots)

    # -- the port coordination uses (asgi_refresh._cluster.coordination.Host) --------

    @property
    def entries(self) -> Mapping[str, Slot]:
        """Every refresher, by name."""
        return self.slots

    def published(self, name: str) -> Any:
        """The value published for ``name`` now (or held to be published with its derived values)."""
        return self.publisher.current(name)

    def versions(self) -> dict[str, str]:
        """What identifies each published value, for tracing: its kept version, or when it changed.

        The id of the version published (``3-9f2c41ab``) for a refresher that keeps
        versions; else the time its value last changed (ISO 8601), which tells
        two values apart as well. Derived values too; not families (per key).
        """
        found: dict[str, str] = {}
        for name, slot in self.slots.items():
            current = slot.kept.current
            shown = current.id if current is not None else status.iso(slot.history.last_changed_at)
            if shown is not None:
                found[name] = shown
        if self.derivation is not None:
            for name, node in self.derivation.nodes.items():
                shown = status.iso(node.history.last_changed_at)
                if shown is not None:
                    found[name] = shown
        return found

    def reschedule(self, name: str, due: float) -> None:
        """Fetch ``name`` at ``due``, or never (``inf``) until woken."""
        self.scheduler.reschedule(self.slots[name], due)

    def refresh_now(self, name: str) -> None:
        """Start a fetch of ``name`` now, unless one is under way."""
        self.start_refresh(self.slots[name])

    # -- fetching ------------------------------------------------------------------

    async def join_flight(self, slot: Slot) -> Flight:
        """Wait for the slot's fetch in progress, starting one if there is none."""
        flight = self.start_refresh(slot)
        await flight.wait()
        return flight

    def start_refresh(self, slot: Slot) -> Flight:
        """Start a fetch outside the schedule, unless one is under way: then that is it."""
        # The fetch runs in the scheduler's workers, not in the caller's task: a
        # request that gives up waiting must not cancel everyone else's fetch.
        flight = slot.flight
        if flight is None:
            flight = self.scheduler.fetch_now(slot)
            if self.events is not None and self.events.wants_origin:
                flight.origin = self.events.origin()  # tracing links the fetch to this caller
        return flight

    async def _fly(self, slot: Slot, flight: Flight) -> None:
        """Run one fetch for everyone waiting on ``flight``."""
        share_now = False
        data: bytes | None = None  # encoded for the coordinator; None: what is published (a 304)
        answered = 0  # the refresh-now requests this fetch answers
        stopping = False
        try:
            if slot.overridden:
                flight.value = self.publisher.current(slot.spec.name)
                return
            coordination = self.coordination
            if (
                coordination is not None
                and not coordination.fetches(slot)
                and await self._ask_leader(slot, flight)
            ):
                return
            started = self.clock.monotonic()
            if self.events is not None:
                self.events.emit("started", slot.spec.name, source=slot.source.kind, origin=flight.origin)
            try:
                answered = 0 if coordination is None else coordination.requested(slot.spec.name)
                result = _unwrap(slot.spec, await self._fetch(slot, flight, started))
                if result.not_modified and (slot.kept.withheld or slot.kept.pinned is not None):
                    # The source confirms the value it fetched last, which was not published:
                    # weighed as a new value (held back again, or published once unpinned).
                    result = result._replace(not_modified=False)
                keeper = self.keeper
                if coordination is not None and not result.not_modified:
                    value, data = coordination.roundtrip(slot.spec.name, result.value)
                    result = result._replace(value=value)
                elif (
                    keeper is not None
                    and not result.not_modified
                    and keeper.encodes(slot, fresh=result.fresh is not None)
                    and (not slot.loaded or differs(self.publisher.current(slot.spec.name), result.value))
                ):
                    data = keeper.encode(slot, result.value)
                withheld = None
                if keeper is not None and not result.not_modified:
                    withheld = await self._screen(keeper, slot, result.value, data)
            except BaseException as exc:  # whatever the user's fetch raises is data, not a crash
                if escapes(exc):
                    if self.events is not None:  # its span (tracing) ends with it
                        took = self.clock.monotonic() - started
                        self.events.emit("cancelled", slot.spec.name, took, source=slot.source.kind)
                    raise
                if isinstance(exc, anyio.get_cancelled_exc_class()):
                    # A CancelledError nobody asked for (a library awaiting a future
                    # cancelled elsewhere) is the fetch failing, not us shutting down.
                    exc = RuntimeError("fetch raised CancelledError without being cancelled")
                flight.error = exc
                slot.fatal = getattr(exc, "cannot_be_retried", False) is True
                self._record_failure(slot, exc, started)
            else:
                if withheld is None:
                    self._record_success(slot, result, started, flight.on_grid, data)
                else:
                    self._record_withheld(slot, result, started, flight.on_grid, withheld, data)
                    data = None  # what is stored is what is published: the last good value
                # Held for its derived values: published with them, before anyone is told.
                await self.publisher.settled()
                # What is published now: the fetched value, or the equal one already
                # there, or the pinned one if the refresher was overridden meanwhile.
                flight.value = self.publisher.current(slot.spec.name)
                if coordination is not None:
                    share_now = True
        except BaseException:
            # Shutdown cancelled us; callers waiting outside (a request) get an error,
            # not a hang and not a half-finished value.
            flight.error = stopped_while_refreshing(slot.spec.name)
            stopping = True
            raise
        finally:
            slot.flight = None
            if slot.timing.refresh_again:
                slot.timing.refresh_again = False
                slot.timing.next_due = self.clock.monotonic()  # that fetch may have read the old data
            if not stopping:
                # Before waking the callers: a refresh that fell due meanwhile starts now.
                self.scheduler.after_flight(slot)
            flight.finish()
        if share_now:
            # After `done`: this process serves the value already, and a refresh-now
            # arriving meanwhile starts a new fetch rather than joining a finished one.
            await self._share(slot, data, answered)

    async def _fetch(self, slot: Slot, flight: Flight, started: float) -> Any:
        """Fetch from the slot's source (opening it first), within the refresher's timeout.

        Returns a `Fetched`, or the value an ``async def`` fetch returned (`fetcher_of`).
        """
        timeout = slot.spec.timeout
        if timeout is not None:
            self.scheduler.arm(flight, started + timeout)
        try:
            if not slot.opened:
                await self._open_source(slot)
            if slot.kept.handover is not None:  # the validators of a snapshot: a 304 confirms it
                handover, slot.kept.handover = slot.kept.handover, None
                slot.source.take_over(self.publisher.current(slot.spec.name), handover)
            if self.coordination is not None:
                self.coordination.before_fetch(slot)
            return await slot.fetch()
        finally:
            # Past its deadline: a timeout, whatever the fetch raised or returned once
            # cancelled; unless shutdown cancelled it too, which must go on.
            if timeout is not None and self.scheduler.disarm(flight) and not self._scope.cancel_called:
                raise _FetchTimeout(f"fetch timed out after {format_duration(timeout)}") from None

    async def _ask_leader(self, slot: Slot, flight: Flight) -> bool:
        """Refresh-now where another process holds the lease: it fetches, we publish what it stored.

        Returns False when we must fetch ourselves (the backend is down, or we took
        the lease over meanwhile).
        """
        assert self.coordination is not None
        try:
            if not await self.coordination.ask_leader(slot):
                return False
        except TimeoutError as exc:
            flight.error = exc
        else:
            await self.publisher.settled()  # the adopted value, published with its derived values
            flight.value = self.publisher.current(slot.spec.name)
        return True

    async def share_published(self, name: str) -> None:
        """Store the value published here for the others; it answers no refresh-now request.

        For a value fetched while the backend was down, or lost by a backend that
        came back empty.
        """
        await self._share(self.slots[name], None, 0)

    async def _share(self, slot: Slot, data: bytes | None, answered: int) -> None:
        """Store what the lease holder fetched, with the refresh-now requests it answers.

        No bytes: store the value published here (a 304 confirmed it).
        """
        coordination = self.coordination
        assert coordination is not None
        if data is None:
            try:
                data = coordination.codec.encode(self.publisher.current(slot.spec.name))
            except BaseException:  # user code (a codec), refused before, at the fetch that published it
                return
        # What goes with it (when it was fetched, its lifetime, its ETag) is the
        # coordination's business: times cross hosts on the backend's clock.
        await coordination.share(slot, data, answered)

    async def _screen(self, keeper: Keeper, slot: Slot, value: Any, data: bytes | None) -> str | None:
        """Why a fetched value must not be published ("pinned", or a guard's reason), or None.

        A value held back before and fetched again stays held (quietly); one equal
        to what is published ends a quarantine (the upstream is back to normal).
        """
        kept = slot.kept
        if kept.pinned is not None:
            return "pinned"
        if not slot.spec.guard or not slot.loaded or slot.overridden:
            return None
        published = self.publisher.current(slot.spec.name)
        if not differs(published, value):
            if kept.held is not None:
                self._release_held(slot, "the upstream is back to the published value")
            return None
        held = kept.held
        if held is not None and _same(held, value, data):
            if not held.here:  # held back by the last lease holder: ours to accept or reject now
                held.value, held.data, held.here = value, data, True
            return held.reason
        reason = await keeper.screen(slot, published, value)
        if reason is None:
            if held is not None:
                self._release_held(slot, "a newer value passes its guards")
            return None
        self._hold(slot, published, value, data, reason)
        return reason

    def _hold(self, slot: Slot, old: Any, value: Any, data: bytes | None, reason: str) -> None:
        from ._guards import summarize

        name = slot.spec.name
        digest = None if data is None else content_digest(data)
        slot.kept.held = Held(value, data, digest, reason, summarize(old, value), self.clock.wall())
        logger.warning(
            "Refresher %r: a new value is held back (%s); the last good value stays published. "
            "Accept or reject it: handle.accept(%r) / handle.reject(%r), or the admin endpoints "
            "POST .../%s/accept and .../%s/reject",
            name,
            reason,
            name,
            name,
            name,
            name,
            extra={"refresher": name, "outcome": "quarantined"},
        )
        if self.events is not None:
            self.events.emit("quarantined", name, error=reason)

    def _release_held(self, slot: Slot, why: str) -> None:
        slot.kept.held = None
        logger.info(
            "Refresher %r: the value held back is dropped: %s",
            slot.spec.name,
            why,
            extra={"refresher": slot.spec.name, "outcome": "quarantine_ended"},
        )
        if self.events is not None:  # without it, a listener cannot tell this from a value held again
            self.events.emit("quarantine_ended", slot.spec.name)

    def _record_withheld(
        self, slot: Slot, result: _Unwrapped, started: float, on_grid: bool, why: str, data: bytes | None
    ) -> None:
        """A good fetch whose value is not published: held back by a guard, or the refresher is pinned."""
        if slot.overridden:
            return
        history, now = slot.history, self.clock.monotonic()
        history.last_duration = duration = now - started
        history.refresh_count += 1
        history.consecutive_failures = 0
        history.last_error = history.last_exception = None
        history.last_outcome = "pinned" if why == "pinned" else "quarantined"
        slot.kept.withheld = True
        slot.fatal = False
        slot.attempted = True
        held = slot.kept.held
        if why != "pinned" and held is not None:  # fetched (again) now: accepted, it is this old
            held.fetched_at, held.fresh = self.clock.wall(), result.fresh
        if why == "pinned":
            digest = "" if data is None else content_digest(data)
            size = None if data is None else len(data)
            slot.kept.upstream = Version(0, digest, self.clock.wall(), None, None, size)
        self.publisher.progress(slot)
        self.scheduler.after_success(slot, started, now, on_grid, result.refresh_in)
        if self.events is not None:
            self.events.emit("succeeded", slot.spec.name, duration, **_facts(slot))

    def _record_success(
        self, slot: Slot, result: _Unwrapped, started: float, on_grid: bool, data: bytes | None = None
    ) -> None:
        if slot.overridden:  # overridden while fetching: the pinned value wins
            return
        spec = slot.spec
        value, not_modified, refresh_in, fresh = result
        failures = slot.history.consecutive_failures
        now = self.clock.monotonic()
        slot.history.last_duration = duration = now - started
        slot.history.refresh_count += 1
        slot.kept.withheld = False
        changed, old = self.publisher.take(
            slot,
            value,
            not_modified=not_modified,
            now=now,
            age=0.0,
            expires_in=None if fresh is None else fresh.expires_in,
            leeway=0.0 if fresh is None else fresh.leeway,
        )
        self.scheduler.after_success(slot, started, now, on_grid, refresh_in)
        if self.keeper is not None:
            self._keep(slot, value, data, changed=changed, fresh=fresh, handover=_handover_of(slot))
        slot.kept.origin = "fetched"
        log = slot.history.log
        recovered = (
            bool(failures)
            and log is not None
            and log.recovered(spec.name, failures=failures, duration=duration)
        )
        if not recovered and logger.isEnabledFor(logging.DEBUG):  # nothing formatted for a level that is off
            logger.debug(
                "Refresher %r refreshed: %s in %s",
                spec.name,
                "recovered" if failures else slot.history.last_outcome,
                format_duration(duration),
                extra={"refresher": spec.name, "outcome": slot.history.last_outcome, "duration": duration},
            )
        if self.events is not None:
            kind: EventKind = "not_modified" if not_modified else "succeeded"
            self.events.emit(kind, spec.name, duration, **_facts(slot))
        if changed:
            self._announce_change(slot, old, value, duration)

    def _keep(
        self,
        slot: Slot,
        value: Any,
        data: bytes | None,
        *,
        changed: bool,
        fresh: Fresh[Any] | None,
        handover: Mapping[str, str] | None,
        version: str | None = None,
        age: float = 0.0,
        expiry: float | None = None,
    ) -> None:
        """After a publish: a version and a snapshot for a new value, a touched snapshot for the same one.

        ``expiry``: when a value adopted from the coordinator expires (wall clock); it
        counts as a `Fresh`, as it was one where it was fetched.
        """
        keeper = self.keeper
        assert keeper is not None
        is_fresh = fresh is not None or expiry is not None
        if not changed:
            keeper.confirm(slot, fresh=is_fresh)
            return
        if data is None and keeper.encodes(slot, fresh=is_fresh):
            try:
                data = keeper.encode(slot, value)
            except TypeError as exc:
                logger.warning(
                    "Refresher %r: %s",
                    slot.spec.name,
                    exc,
                    extra={"refresher": slot.spec.name, "outcome": "not_kept"},
                )
                return
        wall = self.clock.wall()
        keeper.keep(
            slot,
            value,
            data,
            version=version,
            fetched_at=wall - age,
            handover=dict(handover) if handover else None,
            expires_at=expiry if fresh is None else wall - age + fresh.expires_in,
            fresh=is_fresh,
        )

    def _record_failure(self, slot: Slot, exc: BaseException, started: float) -> None:
        if slot.overridden:
            return
        if not slot.loaded and not slot.restoring and self._can_restore(slot):
            slot.restoring = True  # the first load failed: start from the snapshot meanwhile
            assert self._task_group is not None
            self._task_group.start_soon(self._restore, slot, name=f"asgi_refresh:{slot.spec.name}:restore")
        spec, now = slot.spec, self.clock.monotonic()
        slot.history.last_duration = now - started
        slot.history.consecutive_failures += 1
        slot.history.last_error = describe_error(exc)
        slot.history.last_exception = exc
        slot.history.last_outcome = "failed"
        slot.attempted = True
        self.publisher.progress(slot)
        delay = self.scheduler.after_failure(slot, exc, now)
        if slot.history.log is None:
            slot.history.log = FailureLog()
        slot.history.log.failed(
            spec.name,
            now=now,
            failures=slot.history.consecutive_failures,
            error=slot.history.last_error,
            loaded=slot.loaded,
            delay=delay,
            duration=slot.history.last_duration,
            exc=exc,
            # A timeout's traceback is our own code; a SourceError's message says all it knows.
            traceback=not isinstance(exc, _FetchTimeout | SourceError),
        )
        if self.events is not None:
            self.events.emit(
                "failed", spec.name, slot.history.last_duration, exc, slot.history.last_error, **_facts(slot)
            )
        if slot.hooks is not None:
            slot.hooks.error(exc)
            self._start_hooks(slot)

    def _can_restore(self, slot: Slot) -> bool:
        keeper = self.keeper
        return (
            keeper is not None
            and keeper.writer is not None
            and slot.spec.snapshot is not False
            and slot.kept.snapshot_problem is None
            and self._task_group is not None
        )

    async def _restore(self, slot: Slot) -> None:
        """Publish the slot's snapshot: its first load failed, and the upstream may be down for a while."""
        assert self.keeper is not None
        try:
            restored = await self.keeper.restore(slot)
        finally:
            slot.restoring = False
        name = slot.spec.name
        if restored is None or slot.loaded or slot.overridden:  # a fetch got there first
            self.publisher.progress(slot)
            return
        history = slot.history
        # Published as a good value, but the refresher is still failing: status says so.
        failures, error, exception, outcome = (
            history.consecutive_failures,
            history.last_error,
            history.last_exception,
            history.last_outcome,
        )
        changed, old = self.publisher.take(
            slot,
            restored.value,
            not_modified=False,
            now=self.clock.monotonic(),
            age=restored.age,
            expires_in=restored.expires_in,
            leeway=0.0,
        )
        history.consecutive_failures, history.last_error = failures, error
        history.last_exception, history.last_outcome = exception, outcome
        slot.kept.origin = "snapshot"
        slot.kept.snapshot_age = restored.age
        slot.kept.handover = restored.handover
        if restored.version is not None and slot.spec.keep_versions:
            from ._keeper import parse_version

            number, digest = parse_version(restored.version)
            if number is not None and digest is not None:
                slot.kept.versions = [
                    Version(number, digest, self.clock.wall() - restored.age, None, restored.value)
                ]
        logger.warning(
            "Refresher %r could not load (%s); serving its snapshot from %s ago until a fetch succeeds",
            name,
            error,
            format_duration(max(restored.age, 0.001)),
            extra={"refresher": name, "outcome": "snapshot", "age": restored.age},
        )
        if self.events is not None:
            self.events.emit("restored", name)
        if changed and slot.hooks is not None:
            slot.hooks.change(old, restored.value)
            self._start_hooks(slot)

    def _announce_change(self, slot: Slot, old: Any, new: Any, duration: float | None = None) -> None:
        """A different value is published: the ``changed`` event, then ``on_change``."""
        if self.events is not None:
            self.events.emit("changed", slot.spec.name, duration)
        if slot.hooks is not None:
            slot.hooks.change(old, new)
            self._start_hooks(slot)

    def _start_hooks(self, slot: Slot) -> None:
        if slot.hooks is not None and self._task_group is not None:
            slot.hooks.start(self.clock, self._task_group)

    def _start_derived_hooks(self, hooks: Hooks) -> None:
        if self._task_group is not None:
            hooks.start(self.clock, self._task_group)

    # -- publishing ----------------------------------------------------------------

    def adopt(
        self,
        name: str,
        value: Any,
        *,
        age: float,
        expires_in: float | None,
        leeway: float,
        data: bytes | None = None,
        cluster: ClusterKept | None = None,
    ) -> None:
        """Publish a value that another process fetched and stored (coordination).

        ``cluster``: what the lease holder said about it (its version, a pin, a value
        it holds back), for this process's status.
        """
        slot = self.slots[name]
        if slot.overridden:
            return
        if cluster is not None:
            kept = slot.kept
            kept.held = cluster.held
            kept.pinned = None
            kept.upstream = cluster.upstream
        changed, old = self.publisher.take(
            slot,
            value,
            not_modified=False,
            now=self.clock.monotonic(),
            age=age,
            expires_in=expires_in,
            leeway=leeway,
        )
        version = None if cluster is None else cluster.version
        if self.keeper is not None:
            # A value with a lifetime is the holder's Fresh (a token): kept off the disk as it is there.
            expiry = None if expires_in is None else self.clock.wall() + expires_in
            self._keep(
                slot,
                value,
                data,
                changed=changed,
                fresh=None,
                handover=None,
                version=version,
                age=age,
                expiry=expiry,
            )
        slot.kept.origin = "coordinator"
        if cluster is not None and cluster.pin is not None:
            slot.kept.pinned = slot.kept.find(cluster.pin) or _version(
                cluster.pin, self.clock.wall() - age, data, value
            )
            slot.kept.origin = "pinned"
        if changed:
            self._announce_change(slot, old, value)

    def adopt_failed(self, name: str, error: str) -> None:
        """A stored value this process cannot use: counts as a failed load (startup moves on)."""
        slot = self.slots[name]
        slot.history.last_error = error
        slot.history.last_outcome = "failed"
        slot.attempted = True
        self.publisher.progress(slot)

    def override(self, name: str, value: Any) -> None:
        slot = self.slot(name)
        slot.overridden = True
        slot.kept.origin = "override"
        slot.loaded = slot.attempted = True
        self.publisher.progress(slot)
        self.publisher.publish(name, value)
        self.scheduler.reschedule(slot, math.inf)

    # -- what the handle controls (asgi_refresh._handle.Controls) --------------------

    @property
    def names(self) -> list[str]:
        """The refresher names, in the order they were given."""
        return list(self.slots)

    def kind(self, name: str) -> Kind | None:
        """Whether ``name`` is a refresher, a family or a derived value; None if it is none of them."""
        if name in self.slots:
            return "refresher"
        if self.families is not None and name in self.families.runs:
            return "family"
        return "derived" if self._derived(name) is not None else None

    async def get(self, name: str, key: object) -> Any:
        """The value of family ``name`` for ``key``, loading it on first use."""
        families = self.families
        if families is None:
            raise LookupError(f"No refresher family named {name!r:.80} (known: none)")
        return await families.family(name).get(key)

    def _derived(self, name: str) -> Derivation | None:
        """The derivation, if ``name`` is a derived value."""
        derivation = self.derivation
        return derivation if derivation is not None and name in derivation.nodes else None

    async def refresh(self, name: str) -> Any:
        """Fetch ``name`` now (joining a fetch under way); its value, or `RefreshError`.

        A derived value is computed again from the published inputs.
        """
        derivation = self._derived(name)
        if derivation is not None:
            return await derivation.refresh(name)
        flight = await self.join_flight(self.slot(name))
        if flight.error is not None:
            message = f"Refresher {name!r} failed: {describe_error(flight.error)}"
            raise RefreshError(name, message) from flight.error
        return flight.value

    # -- last known good: quarantine, pins (asgi_refresh._handle.Controls) ---------------

    async def accept(self, name: str) -> Any:
        """Publish the value ``name``'s guards held back; return it."""
        slot = self.slot(name)
        if await self._forward(slot, "accept"):
            await self.publisher.settled()
            return self.state[name]
        held = slot.kept.held
        if held is None or not held.here:
            raise LookupError(f"Refresher {name!r} holds no value back; nothing to accept")
        slot.kept.held = None
        self._publish_kept(
            slot,
            held.value,
            held.data,
            age=max(self.clock.wall() - held.fetched_at, 0.0),
            origin="fetched",
            fresh=held.fresh,
        )
        logger.info(
            "Refresher %r: the value held back was accepted and is published",
            name,
            extra={"refresher": name, "outcome": "accepted"},
        )
        if self.events is not None:
            self.events.emit("accepted", name)
        await self._share_control(slot)
        await self.publisher.settled()
        return self.state[name]

    async def reject(self, name: str) -> None:
        """Drop the value ``name``'s guards held back: the same value fetched again stays held, quietly."""
        slot = self.slot(name)
        if await self._forward(slot, "reject"):
            return
        held = slot.kept.held
        if held is None or not held.here:
            raise LookupError(f"Refresher {name!r} holds no value back; nothing to reject")
        held.rejected = True
        logger.info(
            "Refresher %r: the value held back was rejected; the published value stays",
            name,
            extra={"refresher": name, "outcome": "rejected"},
        )
        if self.events is not None:
            self.events.emit("rejected", name)
        await self._share_control(slot)

    async def pin(self, name: str, version: str) -> Any:
        """Publish kept version ``version`` of ``name`` and keep it published until `unpin`; return it."""
        slot = self.slot(name)
        if not isinstance(version, str) or not version or len(version) > 100:
            raise ValueError(
                f"Refresher {name!r}: a version is a string like '3-9f2c41ab' or '3' (got {version!r:.60})"
            )
        self._needs_versions(slot, "pin")
        if await self._forward(slot, "pin", version):
            await self.publisher.settled()
            return self.state[name]
        chosen = slot.kept.find(version)
        if chosen is None and self.keeper is not None:
            chosen = await self.keeper.load_version(slot, version)
        if chosen is None:
            known = ", ".join(each.id for each in slot.kept.versions) or "none"
            raise LookupError(f"Refresher {name!r} keeps no version {version!r} (kept: {known})")
        self._pin(slot, chosen)
        await self._share_control(slot)
        await self.publisher.settled()
        return self.state[name]

    def unpin(self, name: str) -> None:
        """Follow the upstream again: the next fetch (started now) publishes what it brings."""
        slot = self.slot(name)
        self._needs_versions(slot, "unpin")
        coordination = self.coordination
        if coordination is not None and not coordination.fetches(slot):
            if self._task_group is None:
                raise RuntimeError("asgi_refresh is not running (no lifespan)")
            self._task_group.start_soon(self._unpin_elsewhere, slot, name=f"asgi_refresh:{name}:unpin")
            return
        if slot.kept.pinned is None:
            return
        slot.kept.pinned = None
        slot.kept.upstream = None
        slot.kept.withheld = True  # the source's last value (and its ETag) is not the pinned one
        slot.kept.origin = "fetched"
        logger.info(
            "Refresher %r is unpinned; it publishes what it fetches again",
            name,
            extra={"refresher": name, "outcome": "unpinned"},
        )
        if self.events is not None:
            self.events.emit("unpinned", name)
        self.start_refresh(slot)

    async def _unpin_elsewhere(self, slot: Slot) -> None:
        """`unpin` on a process that does not hold the lease: the holder unpins, for all.

        Nobody waits for it: whatever goes wrong is logged, never raised into the
        task group (that would stop every refresher of this process).
        """
        name = slot.spec.name
        try:
            if not await self._forward(slot, "unpin"):
                self.unpin(name)  # it holds the lease now, or the backend is down: it unpins itself
        except Exception as exc:
            logger.warning(
                "Refresher %r could not unpin (%s); see its pin in the status, and unpin again",
                name,
                describe_error(exc),
                extra={"refresher": name, "outcome": "unpin_failed"},
            )

    async def rollback(self, name: str) -> str:
        """Pin the version published before the current one; return its id."""
        slot = self.slot(name)
        self._needs_versions(slot, "rollback")
        # The lease holder picks the version: a process that started later keeps fewer.
        if await self._forward(slot, "rollback"):
            pinned = slot.kept.pinned
            if pinned is None:
                raise LookupError(f"Refresher {name!r} was unpinned meanwhile; roll back again")
            return pinned.id
        current = slot.kept.current
        earlier = [each for each in slot.kept.versions if current is None or each.number < current.number]
        if not earlier:
            raise LookupError(f"Refresher {name!r} keeps no version before the current one to roll back to")
        target = earlier[-1].id
        await self.pin(name, target)
        return target

    async def act(self, name: str, action: str, argument: str | None) -> None:
        """Carry out an operator's action asked on another process (this one holds the lease)."""
        if action == "accept":
            await self.accept(name)
        elif action == "reject":
            await self.reject(name)
        elif action == "pin":
            await self.pin(name, argument or "")
        elif action == "unpin":
            self.unpin(name)
        elif action == "rollback":
            await self.rollback(name)

    def _needs_versions(self, slot: Slot, what: str) -> None:
        if not slot.spec.keep_versions:
            raise LookupError(
                f"Refresher {slot.spec.name!r} keeps no versions to {what}; give it keep_versions=5"
            )

    def _pin(self, slot: Slot, version: Version) -> None:
        name = slot.spec.name
        slot.kept.pinned = version
        self._publish_kept(slot, version.value, version.data, age=None, origin="pinned")
        logger.warning(
            "Refresher %r is pinned to version %s; it keeps fetching but publishes only that until unpinned",
            name,
            version.id,
            extra={"refresher": name, "outcome": "pinned", "version": version.id},
        )
        if self.events is not None:
            self.events.emit("pinned", name)

    def _publish_kept(
        self,
        slot: Slot,
        value: Any,
        data: bytes | None,
        *,
        age: float | None,
        origin: str,
        fresh: Fresh[Any] | None = None,
    ) -> None:
        """Publish a value an operator chose (accepted, pinned): a change like any other."""
        name = slot.spec.name
        old = self.publisher.current(name)
        changed = differs(old, value)
        if changed:
            self.publisher.publish(name, value)
            slot.history.last_changed_at = self.clock.wall()
        if age is not None:  # an accepted value: fetched, only held back
            now = self.clock.monotonic()
            slot.history.last_success_mono = now - age
            slot.history.last_success_at = self.clock.wall() - age
            # Its own expiry (a token), not the one of the value it replaces.
            slot.expires_at = None if fresh is None else now - age + fresh.expires_in
            slot.leeway = 0.0 if fresh is None else fresh.leeway
        slot.loaded = slot.attempted = True
        slot.kept.withheld = True  # the source's last value may not be this one: its next 304 is weighed
        self.publisher.progress(slot)
        if self.keeper is not None and origin != "pinned":
            self._keep(
                slot,
                value,
                data,
                changed=changed,
                fresh=fresh,
                handover=None,
                age=0.0 if age is None else age,
            )
        elif self.keeper is not None and changed and data is not None and self.keeper.writer is not None:
            self.keeper.snapshot_pinned(slot, data)
        slot.kept.origin = origin
        if changed:
            self._announce_change(slot, old, value)

    async def _forward(self, slot: Slot, action: str, argument: str | None = None) -> bool:
        """An operator's action on a process that does not hold the lease: the holder acts, for all.

        Returns False when this process acts itself (no coordinator, it holds the
        lease, or the backend is down).
        """
        coordination = self.coordination
        if coordination is None or coordination.fetches(slot):
            return False
        return await coordination.control(slot, action, argument)

    async def _share_control(self, slot: Slot) -> None:
        """Store what an operator's action published, with the cluster's state, for the others."""
        if self.coordination is not None and self.coordination.fetches(slot):
            await self._share(slot, None, 0)

    def refresh_soon(self, name: str) -> None:
        """Start a fetch of ``name`` without waiting for it (a compute, for a derived value)."""
        derivation = self._derived(name)
        if derivation is not None:
            derivation.refresh_soon(name)
            return
        self.start_refresh(self.slot(name))

    def value(self, name: str) -> Any:
        """The value published for ``name`` now; `LookupError` before a required one has loaded."""
        derivation = self._derived(name)
        if derivation is not None:
            return derivation.value(name)
        return self.publisher.value(self.slot(name))

    async def wait_for(self, name: str) -> Any:
        """The value published for ``name``, once a required one has loaded."""
        derivation = self._derived(name)
        if derivation is not None:
            return await derivation.wait_for(name)
        return await self.publisher.wait_for(self.slot(name))

    def slot(self, name: str) -> Slot:
        """The refresher called ``name``; a `LookupError` naming the known ones if there is none."""
        try:
            return self.slots[name]
        except KeyError:
            if self._derived(name) is not None:
                raise LookupError(
                    f"{name!r} is a derived value: it is computed, not fetched, so it has no fetch, "
                    "versions or pins of its own; act on its inputs instead"
                ) from None
            known = ", ".join(sorted(self.slots)) or "none"
            raise LookupError(f"No refresher named {name!r} (known: {known})") from None

    def unhealthy(self) -> list[Unhealthy]:
        """The required refreshers without a value younger than their ``max_stale``.

        Also the required families whose ``preload`` keys have not all loaded, and
        the required derived values not computed yet.
        """
        found = status.unhealthy(list(self.slots.values()), self.clock.monotonic())
        if self.families is not None:
            found.extend(self.families.unhealthy())
        if self.derivation is not None:
            found.extend(self.derivation.unhealthy())
        return found

    def status(self) -> dict[str, Status]:
        """Each refresher's status entry (`asgi_refresh._status.Status`)."""
        now, wall = self.clock.monotonic(), self.clock.wall()
        writer = None if self.keeper is None else self.keeper.writer
        report: dict[str, Status] = {}
        for name, slot in self.slots.items():
            # A follower has no schedule of its own: the lease holder's refresh reaches it.
            scheduled = (
                self.running
                and not slot.overridden
                and (self.coordination is None or self.coordination.fetches(slot))
            )
            report[name] = status.entry(slot, now=now, wall=wall, scheduled=scheduled, snapshots=writer)
            if self.coordination is not None:
                report[name]["coordination"] = self.coordination.status(slot)
        if self.families is not None:
            for name, run in self.families.runs.items():
                report[name] = run.status(wall=status.iso)
        if self.derivation is not None:
            report.update(self.derivation.status())
        return report


class _Unwrapped(NamedTuple):
    value: Any
    not_modified: bool
    refresh_in: float | None  # seconds until the next refresh, if not `every` on the grid
    fresh: Fresh[Any] | None  # what the fetch said about the value's expiry


def _all_settled(slots: list[Slot], simulated: bool) -> Callable[[], bool]:
    """Whether startup may end: each required refresher loaded (or cannot be), each other one tried.

    Checked at every refresher's progress: the slots found settled are dropped, so
    that startup costs O(n) checks in all, not O(n) per refresh (O(n²): 20,000
    refreshers took 33 s to start).
    """
    pending = slots[::-1]

    def settled(slot: Slot) -> bool:
        if slot.restoring:  # its first load failed: its snapshot is being read
            return False
        if slot.spec.required and not simulated:
            return slot.loaded or slot.fatal
        return slot.attempted

    def check() -> bool:
        while pending and settled(pending[-1]):
            pending.pop()
        return not pending

    return check


def _handover_of(slot: Slot) -> Mapping[str, str] | None:
    """The source's validators for a snapshot; none if it raises (a source is user code)."""
    try:
        return slot.source.handover()
    except Exception:
        logger.debug(
            "Refresher %r: its source's handover() raised; the snapshot has no validators", slot.spec.name
        )
        return None


def _version(version: str, fetched_at: float, data: bytes | None, value: Any) -> Version:
    from ._keeper import parse_version

    number, digest = parse_version(version)
    return Version(number or 0, digest or "", fetched_at, data, value)


def _same(held: Held, value: Any, data: bytes | None) -> bool:
    """Whether ``value`` is the value held back (fetched again)."""
    if held.digest is not None and data is not None:
        return held.digest == content_digest(data)
    return not differs(held.value, value)


def _unwrap(spec: Refresher, result: Any) -> _Unwrapped:
    """Split a fetch result into the value and what the upstream said about it."""
    not_modified, refresh_in, fresh = False, None, None
    if isinstance(result, Fetched):
        not_modified, refresh_in, result = result.not_modified, result.refresh_in, result.value
    if isinstance(result, Fresh):
        fresh = result
        # Renew before expiry, never later than `every`, never in a busy loop.
        until_expiry = schedule.renew_in(fresh.expires_in, fresh.leeway, spec.every)
        refresh_in = until_expiry if refresh_in is None else min(refresh_in, until_expiry)
        result = fresh.value
    return _Unwrapped(result, not_modified, refresh_in, fresh)
