"""The scheduling rules, as pure functions: when a refresher fetches next.

Everything here takes numbers and returns numbers (seconds on the runtime's
monotonic clock, or durations), so each rule is tested on its own, by table,
without a runtime, a clock or an event loop. The random draw for jitter is passed
in (a number in ``[0, 1)``) for the same reason.
"""

from __future__ import annotations

from typing import NamedTuple

MIN_REFRESH_IN = 1.0
"""An expiring value that is already (nearly) expired is renewed this often at most, not in a busy loop."""

MAX_RETRY_AFTER = 3600.0
"""The longest wait an upstream (``Retry-After``) or a ``SourceError`` can impose."""


class Due(NamedTuple):
    """The next grid point (the nominal time of the next refresh) and when to fetch."""

    grid: float
    due: float


def after_success(
    *,
    grid: float,
    started: float,
    now: float,
    every: float,
    jitter: float,
    draw: float,
    on_grid: bool,
    refresh_in: float | None,
) -> Due:
    """When to fetch after a successful fetch that started at ``started``.

    Fixed rate: the scheduled refresh of a healthy refresher keeps the grid, so
    neither fetch time nor wake-up latency makes it drift. A first load, a
    recovery, a refresh-now or a refresh late by a whole interval re-anchors it.
    When the upstream said when (``refresh_in``: an expiry, caching headers),
    that is the new anchor. Jitter only moves a refresh earlier than its grid
    point, never later.

    Args:
        grid: The grid point this fetch was scheduled for (``-inf`` before the first).
        started: When the fetch started.
        now: Now (when it finished).
        every: The refresher's interval.
        jitter: The refresher's jitter fraction (``0 <= jitter <= 0.5``).
        draw: A random number in ``[0, 1)``.
        on_grid: Whether this was the scheduled refresh of a healthy refresher.
        refresh_in: Seconds until the next refresh if the upstream said so, else None.
    """
    if refresh_in is not None:
        grid = now + refresh_in
        spread = min(every, refresh_in)
    else:
        base = grid if on_grid and grid + every > started else started
        grid = base + every
        spread = every
    return Due(grid, grid - spread * jitter * draw)


def backoff(
    failures: int, *, initial: float, multiplier: float, cap: float, jitter: float, draw: float
) -> float:
    """The delay before retry number ``failures`` (1 for the first): exponential, capped, jittered.

    Jitter only shortens a delay (by up to ``jitter`` of it), so the cap holds.
    """
    try:
        delay = initial * multiplier ** (failures - 1)
    except OverflowError:
        delay = cap
    return min(delay, cap) * (1 - jitter * draw)


def retry_delay(
    backoff_delay: float,
    *,
    now: float,
    every: float,
    backoff_initial: float,
    expires_at: float | None,
    leeway: float,
    retry_after: float | None,
) -> float:
    """The delay before the next attempt after a failure, all rules applied.

    An expiring value (a token) must not be left expired for a whole backoff
    cap: retry by its expiry, and then within its leeway (never in a busy loop).
    An upstream that asked us to wait (``Retry-After``) is obeyed, for an hour at
    most; a ``retry_after`` that is not a positive number is ignored.
    """
    delay = backoff_delay
    if expires_at is not None:
        until_expiry = expires_at - now
        bound = until_expiry if until_expiry > 0 else max(leeway, backoff_initial)
        delay = min(delay, max(bound, min(MIN_REFRESH_IN, every)))
    if isinstance(retry_after, int | float) and retry_after > 0:  # not NaN, not negative
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return delay


def renew_in(expires_in: float, leeway: float, every: float) -> float:
    """Seconds until an expiring value is renewed: before expiry, never later than ``every``.

    Never sooner than a second (or ``every``, if shorter): an already expired
    value must not make a busy loop.
    """
    return min(max(expires_in - leeway, min(MIN_REFRESH_IN, every)), every)


def due_after_takeover(
    *, now: float, every: float, last_success: float | None, expires_at: float | None, leeway: float
) -> float:
    """When a process that just took a lease over fetches: it keeps the cluster's schedule.

    That is when the value published here is ``every`` old (or due for renewal
    before it expires); at once if there is none.
    """
    if last_success is None:
        return now
    due = last_success + every
    if expires_at is not None:
        due = min(due, expires_at - leeway)
    return max(now, due)


def due_when_standalone(*, now: float, every: float, last_success: float | None) -> float:
    """When a follower fetches once the backend is lost: when its value is due, at once if it has none."""
    return now if last_success is None else max(now, last_success + every)


BEHIND_AFTER = 1.0
"""A refresh this late (seconds) or less is never falling behind, whatever its interval."""


def is_behind(lag: float, every: float, *, after: float = BEHIND_AFTER) -> bool:
    """Whether a refresh starting ``lag`` seconds late means the process is falling behind.

    Later than a whole interval and more than ``after`` seconds: a hiccup of the
    event loop is not falling behind.
    """
    return lag > max(every, after)


def expired(now: float, expires_at: float | None) -> bool:
    """Whether a value with this expiry has expired (an expiry that is not a number has)."""
    return expires_at is not None and not now < expires_at
