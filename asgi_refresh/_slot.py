"""One refresher's running state, and the single-flight unit its fetches share."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import anyio

from asgi_refresh._failure_log import FailureLog
from asgi_refresh._hooks import Hooks
from asgi_refresh._refresher import Refresher
from asgi_refresh._sources.function import fetcher_of, source_for

if TYPE_CHECKING:
    from asgi_refresh._sources.outcome import Fresh


def stopped_while_refreshing(name: str) -> RuntimeError:
    """What the callers waiting on a fetch get when shutdown ends it (or it never started)."""
    return RuntimeError(f"asgi_refresh stopped while refreshing {name!r}")


class Flight:
    """One fetch that any number of callers wait for: the single-flight unit."""

    __slots__ = ("_done", "error", "finished", "on_grid", "origin", "value", "worker")

    def __init__(self, *, on_grid: bool) -> None:
        self._done: anyio.Event | None = None  # made only when someone waits
        self.finished = False
        self.value: Any = None
        self.error: BaseException | None = None
        self.on_grid = on_grid  # the scheduled refresh of a healthy refresher
        self.worker: Any = None  # the scheduler's worker that runs it: what its deadline cancels
        self.origin: Any = None  # the context of the caller that asked for it, for tracing (`Events.origin`)

    async def wait(self) -> None:
        """Return once the fetch has finished."""
        if not self.finished:
            if self._done is None:
                self._done = anyio.Event()
            await self._done.wait()

    def finish(self) -> None:
        """The fetch has finished: wake whoever waits."""
        self.finished = True
        if self._done is not None:
            self._done.set()


class History:
    """What happened to one refresher's fetches so far: what ``status()`` and the logs report."""

    __slots__ = (
        "consecutive_failures",
        "last_changed_at",
        "last_duration",
        "last_error",
        "last_exception",
        "last_outcome",
        "last_success_at",
        "last_success_mono",
        "log",
        "refresh_count",
    )

    def __init__(self) -> None:
        self.refresh_count = 0  # successful fetches
        self.consecutive_failures = 0
        self.last_success_mono: float | None = None  # when the published value was fetched
        self.last_success_at: float | None = None  # the same, on the wall clock
        self.last_duration: float | None = None
        self.last_changed_at: float | None = None  # wall clock
        self.last_outcome: str | None = None  # changed, unchanged, not_modified or failed
        self.last_error: str | None = None
        self.last_exception: BaseException | None = None  # of the current run of failures
        self.log: FailureLog | None = None  # how its failures were logged (made at its first)


class Timing:
    """When one refresher fetches next: the scheduler's state for it."""

    __slots__ = ("grid", "lag", "next_due", "queued", "refresh_again")

    def __init__(self) -> None:
        self.grid = -math.inf  # nominal time of the next scheduled refresh
        self.next_due = -math.inf  # when it fetches next (grid minus jitter, or a retry)
        self.queued: float | None = None  # the due time its scheduler entry stands for; None: none
        self.lag = 0.0  # how late the last scheduled refresh started
        self.refresh_again = False  # a watched file changed while a fetch was under way


class Version:
    """One published value as ``keep_versions`` keeps it: ``{number}-{digest}``, e.g. ``3-9f2c41ab``."""

    __slots__ = ("data", "digest", "fetched_at", "fresh", "number", "size", "value")

    def __init__(
        self,
        number: int,
        digest: str,
        fetched_at: float,
        data: bytes | None,
        value: Any,
        size: int | None = None,
    ) -> None:
        self.number = number
        self.digest = digest  # of its encoding (`content_digest`)
        self.fetched_at = fetched_at  # wall clock
        self.size = len(data) if data is not None else size  # bytes, encoded
        self.data = data  # the encoding, for the coordinator and the snapshot directory
        self.value = value
        self.fresh = False  # a `Fresh` (a token): kept off the disk unless snapshot=True

    @property
    def id(self) -> str:
        """What an operator names it by: ``number-digest``."""
        return f"{self.number}-{self.digest}"


class Held:
    """A fetched value that a guard held back (quarantine): not published until accepted."""

    __slots__ = (
        "data",
        "digest",
        "fetched_at",
        "fresh",
        "here",
        "reason",
        "rejected",
        "since",
        "summary",
        "value",
    )

    def __init__(
        self,
        value: Any,
        data: bytes | None,
        digest: str | None,
        reason: str,
        summary: dict[str, Any],
        since: float,
    ) -> None:
        self.value = value
        self.data = data
        self.digest = digest  # to recognise the same value fetched again
        self.reason = reason
        self.summary = summary  # sizes and keys, never values
        self.since = since  # wall clock
        self.fetched_at = since  # when it was last fetched (again): how old it is once accepted
        self.fresh: Fresh[Any] | None = None  # what its fetch said about its expiry (a token)
        self.rejected = False  # an operator said no: the same value fetched again stays held, quietly
        # Its value is in this process (False: the last lease holder held it back). Not
        # `value is None`: a fetch may return None, and a guard hold it back.
        self.here = True


class Kept:
    """What one refresher keeps as last known good: its versions, a pin, a held value, its origin."""

    __slots__ = (
        "handover",
        "held",
        "origin",
        "pinned",
        "snapshot_age",
        "snapshot_problem",
        "upstream",
        "versions",
        "withheld",
    )

    def __init__(self) -> None:
        self.origin: str | None = None  # default, fetched, coordinator, snapshot, pinned, override
        self.versions: list[Version] = []  # oldest first, at most keep_versions
        self.pinned: Version | None = None
        self.upstream: Version | None = None  # while pinned: the last value fetched (not published)
        self.held: Held | None = None
        self.handover: dict[str, str] | None = None  # validators from a snapshot, for the next fetch
        self.snapshot_age: float | None = None  # how old the snapshot started from was
        self.snapshot_problem: str | None = None  # why the snapshot could not be used, if it was tried
        # What the source fetched last is not what is published (held back, pinned, or
        # pinned until just now): its "not modified" confirms that, not the published value.
        self.withheld = False

    @property
    def current(self) -> Version | None:
        """The version published now: the pinned one, or the latest."""
        return self.pinned or (self.versions[-1] if self.versions else None)

    def find(self, version: str) -> Version | None:
        """The kept version named ``version`` (``3-9f2c41ab``, or just ``3``)."""
        for each in self.versions:
            if version in (each.id, str(each.number)):
                return each
        return None


class Slot:
    """What the runtime knows of one refresher while it runs: its value's state, its fetch, its past and plan.

    Plain data; the runtime (`asgi_refresh._runtime`) changes it, the status report
    (`asgi_refresh._status`) and coordination (through its ``Entry`` view) read it.
    """

    @property
    def fetching(self) -> bool:
        """Whether a fetch is under way."""
        return self.flight is not None

    def __init__(self, spec: Refresher) -> None:
        self.spec = spec
        self.history = History()
        self.timing = Timing()
        # Per lifespan: a source serves one refresher of one runtime.
        self.source = source_for(spec.fetch, spec.name)
        self.fetch = fetcher_of(self.source)  # what one fetch awaits
        self.opened = False
        self.flight: Flight | None = None
        self.expires_at: float | None = None  # the published value's expiry (a Fresh), monotonic
        self.leeway = 0.0
        self.overridden = False
        self.hooks = (
            None
            if spec.on_change is None and spec.on_error is None
            else Hooks(spec.name, on_change=spec.on_change, on_error=spec.on_error, timeout=spec.timeout)
        )
        self.loaded_event: anyio.Event | None = None  # made when someone waits for the first load
        self.attempted = False  # the first fetch has finished, either way
        self.loaded = False  # a fetched value (not the default) is published
        self.fatal = False  # the last failure cannot be cured by retrying (a value the codec refuses)
        self.kept = Kept()
        self.restoring = False  # its snapshot is being read back (its first load failed)
