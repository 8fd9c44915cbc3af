"""The testing switch: a clock and pinned values for every middleware that starts under it.

Process-wide on purpose, not a context variable. Starlette's ``TestClient`` runs
the app's lifespan in a portal thread that anyio starts with a context of its own
(an empty one on Python 3.14), so a context variable set by the test is not seen
where the middleware starts. See "The testing switch" in docs/design.md.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

from asgi_refresh._clock import Clock, SystemClock
from asgi_refresh._handle import RefreshHandle, override


class Switch(MutableMapping[str, Any]):
    """One ``fake_time()`` block: its clock, and the values it pins (a mapping of name to value).

    Setting a value pins it for every middleware that starts later under the
    switch (no fetch at all for it) and for those running now (carried onto their
    event loop). Deleting one stops pinning it for middlewares that start later.
    """

    def __init__(self, clock: Clock | None, pins: Mapping[str, Any] | None = None) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._pins: dict[str, Any] = dict(pins or {})
        self._running: list[RefreshHandle] = []
        self._used: set[str] = set()  # pinned names some middleware had

    # -- the mapping ---------------------------------------------------------------

    def __getitem__(self, name: str) -> Any:
        return self._pins[name]

    def __setitem__(self, name: str, value: Any) -> None:
        with self._lock:
            running = list(self._running)
        owners = [handle for handle in running if name in handle.names]
        if running and not owners:
            known = ", ".join(sorted({known for handle in running for known in handle.names})) or "none"
            raise LookupError(f"No running refresher named {name!r} (known: {known})")
        with self._lock:
            self._pins[name] = value
            if owners:
                self._used.add(name)
        # Outside the lock: the loop we wait for may be starting a middleware, which takes it.
        for handle in owners:
            override(handle, name, value)

    def __delitem__(self, name: str) -> None:
        with self._lock:
            del self._pins[name]

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            return iter(list(self._pins))

    def __len__(self) -> int:
        return len(self._pins)

    def __repr__(self) -> str:
        return f"<pinned values {sorted(self._pins)!r}>"

    # -- what the middleware calls -------------------------------------------------

    def clock_for(self, clock: Clock) -> Clock:
        """The clock a middleware configured with ``clock`` runs on: ours instead of the real one."""
        if self.clock is not None and isinstance(clock, SystemClock):
            return self.clock
        return clock

    def started(self, handle: RefreshHandle) -> None:
        """Pin our values in a middleware that is starting (on its event loop, before any fetch)."""
        with self._lock:
            self._running.append(handle)
            for name, value in self._pins.items():
                if name in handle.names:
                    self._used.add(name)
                    override(handle, name, value)

    def stopped(self, handle: RefreshHandle) -> None:
        """Forget a middleware whose lifespan has ended."""
        with self._lock:
            if handle in self._running:
                self._running.remove(handle)

    def unused(self) -> list[str]:
        """Pinned names that no middleware started under the switch had."""
        with self._lock:
            return sorted(set(self._pins) - self._used)


_switches: list[Switch] = []  # entered blocks, innermost last
_switches_lock = threading.Lock()


def active() -> Switch | None:
    """The switch of the innermost ``fake_time()`` block, in any thread; None (normally)."""
    switches = _switches
    return switches[-1] if switches else None


def enter(switch: Switch) -> None:
    """Make ``switch`` the active one."""
    with _switches_lock:
        _switches.append(switch)


def leave(switch: Switch) -> None:
    """Deactivate ``switch`` (blocks may end out of order in different threads)."""
    with _switches_lock:
        # By identity: switches are mappings, and two with the same pins are equal.
        _switches[:] = [entered for entered in _switches if entered is not switch]
