"""The ``Refresher`` spec: what to load, how often, and what to do when it fails."""

from __future__ import annotations

import inspect
import keyword
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Union

from ._contain import is_async_callable
from ._duration import Duration, format_duration, positive_duration
from ._guards import Guard, checked_guards
from ._option_error import OptionTypeError, OptionValueError
from ._sources.base import Source, is_source

RESERVED_NAME = "asgi_refresh"
RESERVED_PREFIX = "asgi_refresh__"  # a coordinator's control and version records of a refresher
MIN_EVERY = 0.01
MAX_JITTER = 0.5
MAX_KEEP_VERSIONS = 100
_MAX_BACKOFF_MULTIPLIER = 100.0  # finite: a retry delay must stay a number

Fetch = Union["Source", Callable[[], Awaitable[Any]], Callable[[], Any]]
"""A `Source`, or a zero-argument callable: ``async def``, ``def`` or an object with ``async __call__``."""


@dataclass(frozen=True, init=False)
class Refresher:
    """One piece of data to load at startup and keep fresh.

    A `Refresher` is an immutable description; `RefreshMiddleware` runs it. Every
    argument is checked here, so a mistake fails at import time with a message that
    names the refresher, not at 3 a.m. in a background task.

    Args:
        name: Key under ``scope["state"]`` (so ``request.state.<name>``). A Python
            identifier, unique per middleware; ``asgi_refresh`` is reserved.
        fetch: Zero-argument callable returning the value. ``async def`` and objects
            with ``async __call__`` run on the event loop; a plain ``def`` runs in a
            worker thread so that a blocking client never stalls requests (if it
            returns a coroutine, as ``lambda: load(url)`` does, that coroutine is
            then awaited on the event loop).
        every: Interval between refreshes: seconds, a ``timedelta`` or a string like
            ``"90s"``, ``"5m"``, ``"1h30m"``; at least 10 ms. The schedule is
            fixed-rate: refreshes keep to a grid ``every`` apart, whatever each
            fetch takes, so it does not drift.
        required: If true, startup fails unless the first load succeeds within the
            middleware's ``startup_timeout``. If false, ``default`` is published
            until a load succeeds.
        default: Value published before the first successful load of a refresher
            that is not required.
        timeout: Longest one fetch may take, or ``None`` for no limit.
        jitter: Fraction of ``every`` (``0 <= jitter <= 0.5``) by which each
            refresh is randomly moved *earlier* than its slot on the fixed-rate
            grid, so that many workers spread out; it never makes one later.
        backoff_initial: Delay before the first retry after a failure (capped
            by ``backoff_max``).
        backoff_max: Longest delay between retries; ``None`` means ``every``.
            Never more than ``every``: a failing refresher retries at least as
            often as a healthy one refreshes.
        backoff_multiplier: Growth factor of the retry delay per consecutive failure.
        max_stale: How old the last good value may get before it counts as stale:
            ``status()`` then says ``"stale": true`` and the admin health endpoint
            answers 503 while a required refresher is stale. ``None`` (the
            default) means no limit. Give it room for a few failed refreshes,
            e.g. three times ``every``.
        on_change: Called as ``on_change(old, new)`` after a fetched value that
            differs from the published one is published (``old`` is the default, or
            ``None``, on the first load). Sync or async; if it raises, the error is
            logged and the refresher carries on.
        on_error: Called as ``on_error(exc)`` after a failed fetch. Sync or async;
            if it raises, the error is logged and the refresher carries on.
        guard: A change guard ``guard(old, new) -> None | str``, or a list of
            them, asked before a fetched value that differs from the published
            one is published: a string is the reason to hold it back
            (quarantine) while the last good value stays published, until it is
            accepted or a later fetch brings an acceptable one. Built-in:
            `max_shrink` and `required_keys`. Sync guards of your own run in a
            worker thread, bounded by ``timeout``; one that raises holds the value
            back too. Not asked for the first value (there is nothing to compare).
        keep_versions: How many published versions to keep (in memory, in the
            coordinator and in the snapshot directory) for ``handle.pin`` and
            ``handle.rollback``; 0 (the default) keeps none.
        snapshot: Whether the middleware's ``snapshot_dir`` keeps this
            refresher's value. None (the default): yes, unless the fetch returns
            a `Fresh` (a token: kept only in memory). False for values that must
            never touch the disk.
        snapshot_max_age: The oldest snapshot this refresher may start from;
            None: the middleware's ``snapshot_max_age``.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: an argument is out of range.
    """

    name: str
    fetch: Fetch
    every: float
    required: bool
    default: Any
    timeout: float | None
    jitter: float
    backoff_initial: float
    backoff_max: float | None
    backoff_multiplier: float
    max_stale: float | None
    on_change: Callable[[Any, Any], object] | None
    on_error: Callable[[BaseException], object] | None
    guard: tuple[Guard, ...]
    keep_versions: int
    snapshot: bool | None
    snapshot_max_age: float | None

    def __init__(
        self,
        name: str,
        fetch: Fetch,
        *,
        every: Duration,
        required: bool = True,
        default: Any = None,
        timeout: Duration | None = "30s",
        jitter: float = 0.1,
        backoff_initial: Duration = "1s",
        backoff_max: Duration | None = None,
        backoff_multiplier: float = 2.0,
        max_stale: Duration | None = None,
        on_change: Callable[[Any, Any], object] | None = None,
        on_error: Callable[[BaseException], object] | None = None,
        guard: Guard | Iterable[Guard] | None = None,
        keep_versions: int = 0,
        snapshot: bool | None = None,
        snapshot_max_age: Duration | None = None,
    ) -> None:
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise OptionValueError(
                "",
                "name",
                f"Refresher name must be a Python identifier so that request.state.<name> "
                f"works, like 'names' or 'feature_flags' (got {name!r})",
            )
        if name == RESERVED_NAME:
            raise OptionValueError(
                "",
                "name",
                f"Refresher name {RESERVED_NAME!r} is reserved for the control handle; choose another name",
            )
        if name.startswith(RESERVED_PREFIX):
            raise OptionValueError(
                "",
                "name",
                f"Refresher names starting with {RESERVED_PREFIX!r} are reserved for what a "
                f"coordinator keeps beside the values (got {name!r}); choose another name",
            )
        problem = _Problems(name)
        if is_source(fetch):
            pass  # a source: the runtime opens it and calls its fetch()
        elif not callable(fetch):
            raise problem.type_error("fetch", "fetch must be a Source or a zero-argument callable", fetch)
        else:
            _check_no_arguments(problem, fetch)
        seconds = problem.duration("every", every)
        if seconds < MIN_EVERY:
            raise problem.value_error(
                "every",
                f"every must be at least {format_duration(MIN_EVERY)} (a schedule, not a busy loop)",
                every,
            )
        if not isinstance(required, bool):
            raise problem.type_error("required", "required must be True or False", required)
        if not isinstance(jitter, int | float) or isinstance(jitter, bool) or not 0 <= jitter <= MAX_JITTER:
            raise problem.value_error(
                "jitter", f"jitter must be a fraction of every, 0 <= jitter <= {MAX_JITTER}", jitter
            )
        initial = problem.duration("backoff_initial", backoff_initial)
        cap = None if backoff_max is None else problem.duration("backoff_max", backoff_max)
        if cap is not None and cap > seconds:
            raise problem.value_error(
                "backoff_max",
                f"backoff_max must not exceed every ({format_duration(seconds)}): a failing "
                "refresher must retry at least as often as a healthy one refreshes",
                backoff_max,
            )
        if (
            not isinstance(backoff_multiplier, int | float)
            or isinstance(backoff_multiplier, bool)
            or not 1 <= backoff_multiplier <= _MAX_BACKOFF_MULTIPLIER  # NaN fails this too
        ):
            raise problem.value_error(
                "backoff_multiplier",
                f"backoff_multiplier must be between 1 and {_MAX_BACKOFF_MULTIPLIER:g}",
                backoff_multiplier,
            )
        stale_after = None if max_stale is None else problem.duration("max_stale", max_stale)
        if stale_after is not None and stale_after < seconds:
            raise problem.value_error(
                "max_stale",
                f"max_stale must be at least every ({format_duration(seconds)}): a healthy "
                "refresher's value gets that old between two refreshes",
                max_stale,
            )
        for hook_name, hook in (("on_change", on_change), ("on_error", on_error)):
            if hook is not None and not callable(hook):
                raise problem.type_error(hook_name, f"{hook_name} must be callable or None", hook)
        guards = checked_guards(problem.owner, guard)
        if (
            isinstance(keep_versions, bool)
            or not isinstance(keep_versions, int)
            or not 0 <= keep_versions <= MAX_KEEP_VERSIONS
        ):
            raise problem.value_error(
                "keep_versions",
                f"keep_versions must be a whole number from 0 to {MAX_KEEP_VERSIONS}",
                keep_versions,
            )
        if snapshot is not None and not isinstance(snapshot, bool):
            raise problem.type_error("snapshot", "snapshot must be True, False or None", snapshot)
        max_age = None if snapshot_max_age is None else problem.duration("snapshot_max_age", snapshot_max_age)

        set_field = object.__setattr__
        set_field(self, "name", name)
        set_field(self, "fetch", fetch)
        set_field(self, "every", seconds)
        set_field(self, "required", required)
        set_field(self, "default", default)
        set_field(self, "timeout", None if timeout is None else problem.duration("timeout", timeout))
        set_field(self, "jitter", float(jitter))
        set_field(self, "backoff_initial", initial)
        set_field(self, "backoff_max", cap)
        set_field(self, "backoff_multiplier", float(backoff_multiplier))
        set_field(self, "max_stale", stale_after)
        set_field(self, "on_change", on_change)
        set_field(self, "on_error", on_error)
        set_field(self, "guard", guards)
        set_field(self, "keep_versions", keep_versions)
        set_field(self, "snapshot", snapshot)
        set_field(self, "snapshot_max_age", max_age)

    @property
    def is_async(self) -> bool:
        """Whether ``fetch`` runs on the event loop (true) or in a worker thread."""
        return is_async_callable(self.fetch)


def _check_no_arguments(problem: _Problems, fetch: Callable[..., Any]) -> None:
    try:
        signature = inspect.signature(fetch)
    except (TypeError, ValueError):  # some builtins have no signature: trust them
        return
    try:
        signature.bind()
    except TypeError:
        raise problem.type_error(
            "fetch",
            f"fetch is called with no arguments, but it takes ({', '.join(signature.parameters)}); "
            "bind them first, "
            "e.g. functools.partial(fetch, url) or lambda: fetch(url)",
            fetch,
        ) from None


class _Problems:
    """Builds the ``Refresher 'names': ...`` errors, each blaming its option."""

    def __init__(self, name: str) -> None:
        self.owner = f"Refresher {name!r}"

    def type_error(self, option: str, what: str, got: object) -> OptionTypeError:
        return OptionTypeError(self.owner, option, f"{what} (got {got!r})")

    def value_error(self, option: str, what: str, got: object) -> OptionValueError:
        return OptionValueError(self.owner, option, f"{what} (got {got!r})")

    def duration(self, option: str, value: object) -> float:
        return positive_duration(self.owner, option, value)
