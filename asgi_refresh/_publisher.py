"""Publishing values into the lifespan state, and waiting for them to arrive."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, MutableMapping
from typing import Any

import anyio

from asgi_refresh._clock import Clock
from asgi_refresh._slot import Slot

SNAPSHOT_KEY = "asgi_refresh.snapshot"
"""State key whose value is replaced on every publish: lets a request tell in O(1)
whether the state dict it was handed is the current snapshot."""


class Publisher:
    """Puts good values in the lifespan state and records them on their slots.

    Values are swapped by replacing the entry, never mutated: a request holding
    the old snapshot keeps seeing the old value for its whole life. Only a value
    that differs from the published one is published.
    """

    def __init__(self, state: MutableMapping[str, Any], slots: Mapping[str, Slot], clock: Clock) -> None:
        self.state = state
        self._slots = slots
        self._clock = clock
        self._progress: anyio.Event | None = None  # while someone waits: set when a slot makes progress
        # Derived values (asgi_refresh._derivation): a new value of one of their inputs
        # is held here until they are computed from it, then published with them.
        self._watched: Collection[str] = ()
        self._staged: dict[str, Any] = {}  # held, for the next round of computes
        self._committing: dict[str, Any] = {}  # held, being computed from now
        self._staged_count = 0  # values held so far
        self._begun_count = 0  # of which taken by `begin`
        self._committed_count = 0  # of which published
        self._committed: anyio.Event | None = None  # set at each commit while someone waits
        self.on_hold: Callable[[], None] | None = None  # the deriver, told of every value held
        self.on_progress: Callable[[], None] | None = None  # the deriver, told of every slot's progress

    def publish(self, name: str, value: Any) -> None:
        """Publish ``value`` for ``name``, as a new snapshot.

        While values are derived from ``name``, it is held instead, and published
        by `commit` with the values derived from it.
        """
        if name in self._watched:
            self._staged[name] = value
            self._staged_count += 1
            if self.on_hold is not None:
                self.on_hold()
            return
        self.state[name] = value
        self.state[SNAPSHOT_KEY] = object()

    def current(self, name: str, default: Any = None) -> Any:
        """The newest value of ``name``: held for its derived values, or published; ``default`` if none."""
        if name in self._staged:
            return self._staged[name]
        if name in self._committing:
            return self._committing[name]
        return self.state.get(name, default)

    def in_round(self, name: str) -> Any:
        """``name`` as the round under way will publish it: taken by `begin`, else published.

        Not a value held since `begin`: `commit` does not publish those, and a value
        derived from one would be published beside the older input.
        """
        if name in self._committing:
            return self._committing[name]
        return self.state.get(name)

    # -- holding values for their derived values (asgi_refresh._derivation) ----------

    def hold(self, names: Collection[str]) -> None:
        """From now on, hold new values of ``names`` until `commit` (none: publish at once again)."""
        self._watched = names

    def begin(self) -> dict[str, Any]:
        """The values held so far, now being computed from; later ones wait for the next round."""
        self._committing, self._staged = self._staged, {}
        self._begun_count = self._staged_count
        return self._committing

    def commit(self, derived: Mapping[str, Any]) -> None:
        """Publish the values taken by `begin` and ``derived`` together: one snapshot, no await between."""
        state = self.state
        for name, value in self._committing.items():
            state[name] = value
        for name, value in derived.items():
            state[name] = value
        if self._committing or derived:
            state[SNAPSHOT_KEY] = object()
        self._committing = {}
        self._committed_count = self._begun_count
        if self._committed is not None:
            self._committed.set()
            self._committed = None

    def release(self) -> None:
        """Stop holding (the deriver stopped): publish what is held as it is."""
        self._watched = ()
        self._committing.update(self._staged)
        self._staged = {}
        self._begun_count = self._staged_count
        self.commit({})

    @property
    def holding(self) -> bool:
        """Whether some value waits for `commit`."""
        return bool(self._staged or self._committing)

    async def settled(self) -> None:
        """Return once every value held before the call is published (at once if none is)."""
        target = self._staged_count
        while self._committed_count < target and self._watched:
            if self._committed is None:
                self._committed = anyio.Event()
            await self._committed.wait()

    def take(
        self,
        slot: Slot,
        value: Any,
        *,
        not_modified: bool,
        now: float,
        age: float,
        expires_in: float | None,
        leeway: float,
    ) -> tuple[bool, Any]:
        """Record a good value, fetched here or ``age`` seconds ago by another process (``now``: the clock's).

        Returns whether it was published (it differs) and the value it replaced.
        """
        spec, wall = slot.spec, self._clock.wall()
        had_value = slot.loaded or not spec.required
        old = self.current(spec.name)
        slot.history.last_success_mono = now - age
        slot.history.last_success_at = wall - age
        slot.history.last_error = None
        slot.history.last_exception = None
        slot.history.consecutive_failures = 0
        slot.fatal = False
        slot.expires_at = None if expires_in is None else now + expires_in
        slot.leeway = leeway
        # Only a different value is published: an equal one would hand requests a
        # new object for nothing and wake on_change for no change.
        changed = not had_value or (not not_modified and differs(old, value))
        if changed:
            self.publish(spec.name, value)
            slot.history.last_changed_at = wall
            slot.history.last_outcome = "changed"
        else:
            slot.history.last_outcome = "not_modified" if not_modified else "unchanged"
        slot.loaded = slot.attempted = True
        self.progress(slot)
        return changed, old

    def value(self, slot: Slot) -> Any:
        """The value published for ``slot`` now; `LookupError` before a required one has loaded."""
        name = slot.spec.name
        if (not slot.loaded and slot.spec.required) or name not in self.state:
            raise LookupError(
                f"Refresher {name!r} has not loaded a value yet; "
                f"`await handle.wait_for({name!r})` waits for it"
            )
        return self.state[name]

    async def wait_for(self, slot: Slot) -> Any:
        """The value published for ``slot``, once a required one has loaded."""
        if slot.spec.required and not slot.loaded:
            if slot.loaded_event is None:
                slot.loaded_event = anyio.Event()
            await slot.loaded_event.wait()
        await self.settled()  # held for its derived values: published with them
        return self.state[slot.spec.name]

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition()`` holds; it is checked whenever a slot makes progress."""
        while not condition():
            if self._progress is None:
                self._progress = anyio.Event()
            await self._progress.wait()

    def progress(self, slot: Slot) -> None:
        """``slot`` loaded, failed or was pinned: wake whoever waits for it."""
        # Events only while someone waits (startup, a fetch waiting for a token), not
        # one per refresh for the lifetime of the app.
        if self._progress is not None:
            self._progress.set()
            self._progress = None
        if slot.loaded and slot.loaded_event is not None:
            slot.loaded_event.set()
        if self.on_progress is not None:
            self.on_progress()

    def nudge(self) -> None:
        """Something besides a slot made progress (a derived value): wake whoever waits."""
        if self._progress is not None:
            self._progress.set()
            self._progress = None


def differs(old: Any, new: Any) -> bool:
    try:
        return bool(old != new)
    except BaseException:  # values whose != is odd (arrays) or raises (user code) count as changed
        return True
