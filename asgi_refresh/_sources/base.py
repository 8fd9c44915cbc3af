"""What a source is: the contract between the runtime and every way of loading a value.

`HTTPSource`, `FileSource` and plain functions (`FunctionSource`) implement it,
with nothing the runtime knows about them beyond this; so does any source of
your own. The runtime:

1. opens a source once per lifespan (`Source.open`), as part of its refresher's
   first fetch: bounded by the fetch ``timeout`` and retried with backoff like
   a fetch, so an upstream that is down at startup is a failed load, not a crash;
2. fetches (`Source.fetch`) whenever the refresher is due, one fetch at a time;
3. closes it (`Source.close`) at shutdown, bounded and shielded from cancellation.

Between processes (a coordinator) or across restarts, a value may arrive that
this source did not fetch itself. Then `Source.check` checks it as a fetch
would, `Source.handover` says what the next holder needs to continue (HTTP
validators), and `Source.take_over` continues from such a value. `Source.origin`
names what the source fetches from, without secrets: stored values are bound to it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any, Protocol, TypeGuard, runtime_checkable

from asgi_refresh._sources.context import SourceContext, Values
from asgi_refresh._sources.outcome import Fetched

__all__ = ["Fetched", "Source", "SourceContext", "Values"]


@runtime_checkable
class Source(Protocol):
    """Where a refresher's values come from.

    Subclass it to get the defaults below (no setup, no validation of values from
    elsewhere, nothing to hand over), then write `fetch` and set `kind` and
    `origin`; or implement every member yourself. ``async with source:`` and
    ``await source()`` work on the built-in sources for use outside a middleware;
    a source of your own needs neither.

    A source that holds a connection (a stream) may also define ``state()``,
    returning a `StreamStatus`-shaped dict (``connected``, ``connected_since``,
    ``last_event_at``, ``reconnects``, ``last_error``...) that ``status()`` shows
    under ``"stream"``. It is looked up, not part of the protocol: a source
    without it is still a `Source`.

    Attributes:
        kind: A short word for ``status()["source"]``: ``"http"``, ``"file"``,
            ``"python"`` for plain functions, or your own.
    """

    kind: str = "custom"

    @property
    def origin(self) -> str:
        """What this source fetches from, without secrets (its kind and URL or path).

        Values stored elsewhere (by another process, in a snapshot) are bound to a
        hash of it: a value from another origin is never published. Never put a
        credential, a header value or a query value in it.
        """
        return f"{self.kind} {type(self).__module__}.{type(self).__qualname__}"

    async def open(self, context: SourceContext) -> None:
        """Get ready for one lifespan: make clients, start watches. Keep ``context``.

        Called once per lifespan, as part of the refresher's first fetch (so it is
        bounded and retried like one). A source serves one refresher: refuse a
        second `open` while open.
        """
        return

    async def fetch(self) -> Fetched:
        """Load the value now.

        Returns:
            `Fetched` with the value (or a `Fresh` with an expiry), whether the
            upstream confirmed the value already published (``not_modified``) and
            when to refresh next if the upstream said so (``refresh_in``).

        Raises:
            SourceError: the upstream failed or sent something unusable; its message
                is shown as is (no secrets in it), and ``retry_after`` delays the next
                attempt. Anything else it raises is a failed fetch too.
        """
        ...

    async def close(self) -> None:
        """Release what `open` took; called once at shutdown, after the last fetch."""
        return

    def check(self, value: Any) -> Any:
        """Check a value this source did not fetch itself, as a fetch would; return it.

        For a value another process stored, or a snapshot holds: untrusted input.
        Raise (any exception) to refuse it. Runs in a worker thread when the value
        is big; it must not need the event loop.
        """
        return value

    def handover(self) -> Mapping[str, str] | None:
        """What another process needs to continue from the last value fetched here.

        HTTP validators (an ETag), so that its first fetch can be conditional;
        stored with the value. None when there is nothing to hand over.
        """
        return None

    def take_over(self, value: Any, handover: Mapping[str, str]) -> None:
        """Continue from ``value``, fetched elsewhere, with what `handover` said there.

        Called while open, before the first fetch of this process since it published
        a value fetched elsewhere (by the lease holder, or from a snapshot).
        ``handover`` may be empty: the value came without one. A source that cannot
        use it ignores it.
        """
        return


class Standalone:
    """``async with source:`` and ``await source()``: a built-in source used outside a middleware.

    Opened with a context of its own (the system clock, a client of its own),
    closed with everything that context opened.
    """

    _standalone: SourceContext | None = None

    async def __aenter__(self) -> Any:
        source: Any = self
        context = SourceContext.current(repr(self))
        await source.open(context)
        if context.standalone:
            self._standalone = context
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        source: Any = self
        context, self._standalone = self._standalone, None
        try:
            await source.close()
        finally:
            if context is not None:
                await context.aclose_standalone()

    async def __call__(self) -> Fetched:
        """Fetch once (`Source.fetch`); the source must be open."""
        source: Any = self
        fetched: Fetched = await source.fetch()
        return fetched


def is_source(obj: object) -> TypeGuard[Source]:
    """``isinstance(obj, Source)``, without its cost where it is plainly not one.

    A protocol check inspects every method (50 µs on CPython 3.11); a refresher's
    fetch is usually a plain function, which has no ``fetch`` attribute at all.
    """
    return hasattr(obj, "fetch") and isinstance(obj, Source)


# What one value of ``state()`` may be, and its bounds: a key is cut to 100 characters,
# a string to 500, and at most 32 entries are read.
_STATE_KEYS = 32
_STATE_KEY_CHARS = 100
_STATE_STR_CHARS = 500
# Beyond 64 bits an integer is no counter; one of over 4300 digits makes json.dumps raise.
_STATE_INT_LIMIT = 2**63


def _state_value(value: object) -> tuple[bool, Any]:
    """``(True, value)`` as plain JSON for a kept value of ``state()``; ``(False, None)`` if left out.

    Subclasses become their base type through the base's own method, so that no method
    of the user's class runs again when the status is serialised.
    """
    if value is None or isinstance(value, bool):
        return True, value
    if isinstance(value, int):
        number = int.__int__(value)
        return (True, number) if -_STATE_INT_LIMIT < number < _STATE_INT_LIMIT else (False, None)
    if isinstance(value, float):
        # NaN and infinities are not JSON: json.dumps writes them, and a browser's
        # JSON.parse then refuses the whole status (the status page with it).
        real = float.__float__(value)
        return (True, real) if math.isfinite(real) else (False, None)
    if isinstance(value, str):
        return True, str.__str__(value)[:_STATE_STR_CHARS]
    return False, None


def source_state(source: object) -> dict[str, Any] | None:
    """What ``source.state()`` reports, if it has one: plain JSON values only, never raising.

    The optional hook of a streaming source (its connection, for ``status()``). It is
    user code: what it raises or returns that is not a flat mapping of JSON scalars is
    left out, so that ``status()`` stays JSON-serialisable and never fails. Bounded: at
    most 32 entries, keys of 100 characters, strings of 500, 64-bit integers, finite
    floats.
    """
    state = getattr(source, "state", None)
    if not callable(state):
        return None
    try:
        reported = state()
        if not isinstance(reported, Mapping):
            return None
        shown: dict[str, Any] = {}
        for key, value in itertools.islice(reported.items(), _STATE_KEYS):
            kept, plain = _state_value(value)
            if kept:
                shown[str.__str__(str(key))[:_STATE_KEY_CHARS]] = plain
        return shown
    except Exception:
        return None
