"""Derived values while they run: computed from their inputs, published in the same snapshot.

A new value of an input is held by the publisher (`Publisher.publish`) instead of
being published. This module's one task takes what is held, computes the derived
values that depend on it in dependency order (each bounded by its timeout), and
publishes the inputs and the derived values together in one synchronous step, so
that a request's snapshot never mixes an old derived value with a new input. A
compute that fails keeps the last good derived value and holds nothing back.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio

from ._clock import Clock
from ._contain import describe_error, escapes
from ._derived import Derived, dependents, order
from ._duration import format_duration
from ._failure_log import REPEAT_WARNING_EVERY
from ._handle import RefreshError
from ._hooks import Hooks
from ._publisher import Publisher, differs
from ._slot import History, Slot
from ._thread import ThreadCall

if TYPE_CHECKING:
    from ._events import Events
    from ._status import Status, Unhealthy

logger = logging.getLogger("asgi_refresh")

_SOURCE = "derived"  # what a compute is, in its events


class ComputeTimeout(TimeoutError):
    """A compute ran past its ``timeout``; shown as ``TimeoutError`` in status and logs."""

    shown_as = "TimeoutError"


class Node:
    """One derived value's running state: its value's state and its computes so far."""

    __slots__ = (
        "attempted",
        "computes",
        "forced",
        "history",
        "hooks",
        "inputs_moved_on",
        "loaded",
        "spec",
        "thread",
        "warned",
        "warned_at",
    )

    def __init__(self, spec: Derived) -> None:
        self.spec = spec
        self.history = History()  # refresh_count counts good computes
        self.loaded = False  # a computed value (not the default) is published
        self.attempted = False  # a compute has finished, either way
        self.computes = 0  # computes finished, either way (what handle.refresh waits for)
        self.inputs_moved_on = False  # the last compute failed: the published value is of older inputs
        self.forced = False  # computed in the next round whatever changed (handle.refresh)
        self.thread: ThreadCall | None = None  # the last plain compute's thread
        self.warned_at = -math.inf  # when a failure was last logged at WARNING
        self.warned = False  # the current run of failures was logged at WARNING
        self.hooks = (
            None
            if spec.on_change is None and spec.on_error is None
            else Hooks(
                spec.name,
                on_change=spec.on_change,
                on_error=spec.on_error,
                timeout=spec.timeout,
                owner=("Derived", "derived value"),
            )
        )


class Derivation:
    """The derived values of one lifespan: one task computing them whenever inputs change."""

    def __init__(
        self,
        derived: Iterable[Derived],
        *,
        slots: Mapping[str, Slot],
        publisher: Publisher,
        clock: Clock,
        events: Events | None,
        start_hooks: Callable[[Hooks], None],
    ) -> None:
        self.order = order(list(derived), slots)
        self.nodes = {spec.name: Node(spec) for spec in self.order}
        self._dependents = dependents(self.order)
        self._slots = slots
        self._publisher = publisher
        self._clock = clock
        self._events = events
        self._start_hooks = start_hooks
        self._wake: anyio.Event | None = None
        self._running = False
        self._first_pending = True  # some derived value has not been computed once yet

    # -- lifecycle -----------------------------------------------------------------

    def prepare(self) -> None:
        """Publish the defaults of the derived values that are not required (before anything runs)."""
        for node in self.nodes.values():
            if not node.spec.required:
                self._publisher.publish(node.spec.name, node.spec.default)

    async def run(self) -> None:
        """Compute whenever an input changes (or a first compute can run), until cancelled."""
        publisher = self._publisher
        publisher.hold(frozenset(self._dependents))
        publisher.on_progress = self._progress
        publisher.on_hold = self._poke
        self._running = True
        try:
            while True:
                if not publisher.holding and not self._due():
                    self._wake = anyio.Event()
                    await self._wake.wait()
                    self._wake = None
                await self._round()
                publisher.nudge()
        finally:
            self._running = False
            publisher.on_progress = publisher.on_hold = None
            publisher.release()  # shutting down: whatever is held is published as it is

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _progress(self) -> None:
        """A refresher loaded or failed: a derived value waiting for its first compute may run now."""
        # Told of every fetch for the life of the app: after startup, one attribute read.
        if self._first_pending and self._wake is not None and self._due():
            self._wake.set()

    def _due(self) -> bool:
        """Whether a derived value must be computed without an input change (first, or forced)."""
        return any(
            node.forced or (not node.attempted and self._ready(node.spec)) for node in self.nodes.values()
        )

    def settled(self) -> bool:
        """Whether startup may end: every derived value whose inputs have values has been computed once."""
        return not self._publisher.holding and all(
            node.attempted or not self._ready(node.spec) for node in self.nodes.values()
        )

    # -- one round: take what is held, compute, publish together ---------------------

    async def _round(self) -> None:
        publisher = self._publisher
        held = publisher.begin()
        dirty: set[str] = set()
        for name in held:
            dirty.update(spec.name for spec in self._dependents.get(name, ()))
        for node in self.nodes.values():
            if node.forced or not node.attempted:
                dirty.add(node.spec.name)
            node.forced = False
        computed: dict[str, Any] = {}
        changes: list[tuple[Node, Any, Any, float | None]] = []
        for spec in self.order:  # dependency order: a value's inputs are computed before it
            if spec.name not in dirty or not self._ready(spec):
                continue
            node = self.nodes[spec.name]
            arguments = {name: self._newest(name, computed) for name in spec.inputs}
            started = self._clock.monotonic()
            try:
                value = await self._compute(node, arguments)
            except BaseException as exc:  # user code: its failure, never ours
                if escapes(exc):
                    if self._events is not None:  # its span (tracing) ends with it
                        self._events.emit(
                            "cancelled", spec.name, self._clock.monotonic() - started, source=_SOURCE
                        )
                    raise
                if isinstance(exc, anyio.get_cancelled_exc_class()):
                    exc = RuntimeError("compute raised CancelledError without being cancelled")
                self._failed(node, exc, self._clock.monotonic() - started)
                continue
            duration = self._clock.monotonic() - started
            old = self._newest(spec.name, computed)
            changed = not node.loaded or differs(old, value)
            self._succeeded(node, duration, changed)
            if changed:
                computed[spec.name] = value
                changes.append((node, old, value, duration))
                dirty.update(each.name for each in self._dependents.get(spec.name, ()))
        publisher.commit(computed)  # the inputs and what derives from them: one snapshot
        self._first_pending = not all(node.attempted for node in self.nodes.values())
        for node, old, value, took in changes:
            if self._events is not None:
                self._events.emit("changed", node.spec.name, took)
            if node.hooks is not None:
                node.hooks.change(old, value)
                self._start_hooks(node.hooks)

    def _newest(self, name: str, computed: Mapping[str, Any]) -> Any:
        """What ``name`` will be in this round's snapshot: never a value held after the round began."""
        if name in computed:
            return computed[name]
        return self._publisher.in_round(name)

    def _ready(self, spec: Derived) -> bool:
        """Whether every input of ``spec`` has a value to compute from (a loaded one, or its default)."""
        for name in spec.inputs:
            slot = self._slots.get(name)
            if slot is not None:
                if not (slot.loaded or (slot.attempted and not slot.spec.required)):
                    return False
                continue
            node = self.nodes[name]
            if not (node.loaded or (node.attempted and not node.spec.required)):
                return False
        return True

    async def _compute(self, node: Node, arguments: dict[str, Any]) -> Any:
        spec, clock = node.spec, self._clock
        if self._events is not None:
            self._events.emit("started", spec.name, source=_SOURCE)
        timeout = spec.timeout
        result: Any = None
        with clock.move_on_at(clock.monotonic() + timeout) as scope:
            if spec.is_async:
                result = await spec.compute(**arguments)
            else:
                # A plain compute may be heavy: a worker thread of its own, so the loop
                # (and every request) runs on while it works.
                if node.thread is not None and node.thread.is_running():
                    raise RuntimeError(
                        "its previous compute is still running in its worker thread (it timed "
                        "out and was abandoned); this one is skipped"
                    )
                node.thread = ThreadCall(
                    partial(spec.compute, **arguments), name=f"asgi_refresh:{spec.name}:compute"
                )
                node.thread.start()
                with clock.hold():
                    result = await node.thread.result()
                if inspect.isawaitable(result):  # a plain def returning a coroutine (a lambda)
                    result = await result
        if scope.cancelled_caught:
            raise ComputeTimeout(f"compute timed out after {format_duration(timeout)}")
        return result

    def _succeeded(self, node: Node, duration: float, changed: bool) -> None:
        history, name = node.history, node.spec.name
        failures = history.consecutive_failures
        history.refresh_count += 1
        history.consecutive_failures = 0
        node.computes += 1
        history.last_error = history.last_exception = None
        history.last_duration = duration
        history.last_success_mono = self._clock.monotonic()
        history.last_success_at = wall = self._clock.wall()
        history.last_outcome = "changed" if changed else "unchanged"
        if changed:
            history.last_changed_at = wall
        node.loaded = node.attempted = True
        node.inputs_moved_on = False
        if failures and node.warned:
            node.warned = False
            logger.info(
                "Derived %r computed again after %d failures",
                name,
                failures,
                extra={"refresher": name, "outcome": "recovered", "duration": duration},
            )
        if self._events is not None:
            self._events.emit("succeeded", name, duration, source=_SOURCE)

    def _failed(self, node: Node, exc: BaseException, duration: float) -> None:
        history, name = node.history, node.spec.name
        history.consecutive_failures += 1
        node.computes += 1
        history.last_error = error = describe_error(exc)
        history.last_exception = exc
        history.last_duration = duration
        history.last_outcome = "failed"
        node.attempted = True
        node.inputs_moved_on = True
        now = self._clock.monotonic()
        loud = now - node.warned_at >= REPEAT_WARNING_EVERY
        if loud:
            node.warned_at, node.warned = now, True
        if node.spec.required and not node.loaded:
            # Required and never computed: that is startup, which fails without it (the app
            # never serves without a required value), so "computed again later" is not what happens.
            outcome = "it is required and has no value yet, so startup fails because of it"
        else:
            outcome = (
                f"{'keeping the last good value' if node.loaded else 'no value computed yet'}, its inputs "
                f"are published without it. It is computed again when an input changes, or by "
                f"handle.refresh({name!r})"
            )
        logger.log(
            logging.WARNING if loud else logging.DEBUG,
            "Derived %r: compute failed (%d in a row): %s; %s",
            name,
            history.consecutive_failures,
            error,
            outcome,
            exc_info=exc
            if loud and history.consecutive_failures == 1 and not isinstance(exc, ComputeTimeout)
            else None,
            extra={
                "refresher": name,
                "outcome": "failed",
                "duration": duration,
                "error": error,
                "consecutive_failures": history.consecutive_failures,
            },
        )
        if self._events is not None:
            self._events.emit("failed", name, duration, exc, error, source=_SOURCE)
        if node.hooks is not None:
            node.hooks.error(exc)
            self._start_hooks(node.hooks)

    # -- what the handle asks -------------------------------------------------------

    async def refresh(self, name: str) -> Any:
        """Compute ``name`` again now from the published inputs; its value, or the compute's exception."""
        node = self.nodes[name]
        if not self._running:
            raise RuntimeError("asgi_refresh is not running (no lifespan)")
        if not self._ready(node.spec):
            missing = [each for each in node.spec.inputs if not self._has_value(each)]
            raise LookupError(f"Derived {name!r} cannot be computed yet: no value for {', '.join(missing)}")
        node.forced = True
        history = node.history
        count = node.computes  # not successes + failures in a row: one success after a failure keeps that sum
        self._poke()
        await self._publisher.until(lambda: node.computes != count)
        if history.last_outcome == "failed":
            raise RefreshError(
                name, f"Derived {name!r} failed: {history.last_error}"
            ) from history.last_exception
        await self._publisher.settled()
        return self._publisher.state[name]

    def refresh_soon(self, name: str) -> None:
        """Compute ``name`` again in the next round, without waiting for it."""
        self.nodes[name].forced = True
        self._poke()

    def _has_value(self, name: str) -> bool:
        slot = self._slots.get(name)
        if slot is not None:
            return slot.loaded or (slot.attempted and not slot.spec.required)
        node = self.nodes[name]
        return node.loaded or (node.attempted and not node.spec.required)

    def value(self, name: str) -> Any:
        """The value published for derived ``name`` now; `LookupError` before a required one is computed."""
        node = self.nodes[name]
        state = self._publisher.state
        if (node.spec.required and not node.loaded) or name not in state:
            raise LookupError(
                f"Derived {name!r} has not been computed yet; `await handle.wait_for({name!r})` waits for it"
            )
        return state[name]

    async def wait_for(self, name: str) -> Any:
        """The value published for derived ``name``, once a required one has been computed."""
        node = self.nodes[name]
        await self._publisher.until(lambda: node.loaded or not node.spec.required)
        await self._publisher.settled()
        return self._publisher.state[name]

    def failures(self, startup_timeout: float) -> list[tuple[str, str, BaseException | None]]:
        """The required derived values without a value after startup: name, why, the exception."""
        found = []
        for node in self.nodes.values():
            if node.loaded or not node.spec.required:
                if not node.loaded:
                    logger.warning(
                        "Derived %r has no value yet (%s); serving its default",
                        node.spec.name,
                        node.history.last_error or "its inputs have no value",
                        extra={"refresher": node.spec.name, "outcome": "default"},
                    )
                continue
            if node.history.last_error is not None:
                cause = f"its compute failed: {node.history.last_error}"
            elif not self._ready(node.spec):
                missing = [each for each in node.spec.inputs if not self._has_value(each)]
                cause = f"its inputs have no value: {', '.join(missing)}"
            else:
                cause = f"no compute finished within {format_duration(startup_timeout)}"
            found.append(
                (
                    node.spec.name,
                    f"Derived {node.spec.name!r} could not be computed: {cause}",
                    node.history.last_exception,
                )
            )
        return found

    def unhealthy(self) -> list[Unhealthy]:
        """The required derived values without a value."""
        return [
            {"name": node.spec.name, "reason": "not loaded", "age": None, "max_stale": None}
            for node in self.nodes.values()
            if node.spec.required and not node.loaded
        ]

    def status(self) -> dict[str, Status]:
        """Each derived value's status entry: the refreshers' shape, ``source`` ``"derived"``."""
        from ._report import iso

        now = self._clock.monotonic()
        report: dict[str, Status] = {}
        for name, node in self.nodes.items():
            history = node.history
            age = None if history.last_success_mono is None else max(now - history.last_success_mono, 0.0)
            report[name] = {
                "source": "derived",
                "required": node.spec.required,
                "stale": node.inputs_moved_on,
                "last_success_at": iso(history.last_success_at),
                "last_changed_at": iso(history.last_changed_at),
                "last_outcome": history.last_outcome,
                "expires_at": None,
                "last_error": history.last_error,
                "consecutive_failures": history.consecutive_failures,
                "refresh_count": history.refresh_count,
                "next_refresh_at": None,
                "last_duration": None if history.last_duration is None else round(history.last_duration, 6),
                "age": None if age is None else round(age, 6),
                "lag": None,
                "origin": "computed" if node.loaded else ("default" if not node.spec.required else None),
                "version": None,
                "versions": [],
                "pin": None,
                "upstream": None,
                "quarantined": None,
                "snapshot": None,
                "derived": {"inputs": list(node.spec.inputs), "inputs_moved_on": node.inputs_moved_on},
            }
        return report
