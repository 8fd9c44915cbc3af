"""The scheduling rules on their own: pure functions, checked by table (asgi_refresh._schedule)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asgi_refresh import _schedule as schedule

INF = math.inf


@pytest.mark.parametrize(
    ("case", "kwargs", "expected"),
    [
        (
            "first load anchors the grid at its start",
            {"grid": -INF, "started": 10, "now": 12, "on_grid": False, "refresh_in": None},
            (70, 70),
        ),
        (
            "a healthy scheduled refresh keeps the grid, however long it took",
            {"grid": 70, "started": 70.5, "now": 75, "on_grid": True, "refresh_in": None},
            (130, 130),
        ),
        (
            "a refresh late by a whole interval re-anchors",
            {"grid": 70, "started": 131, "now": 132, "on_grid": True, "refresh_in": None},
            (191, 191),
        ),
        (
            "a refresh-now or a recovery re-anchors at its start",
            {"grid": 70, "started": 100, "now": 101, "on_grid": False, "refresh_in": None},
            (160, 160),
        ),
        (
            "the upstream said when: a new anchor from now",
            {"grid": 70, "started": 100, "now": 101, "on_grid": True, "refresh_in": 15},
            (116, 116),
        ),
    ],
)
def test_after_success(case: str, kwargs: dict[str, Any], expected: tuple[float, float]) -> None:
    """Fixed rate by default; re-anchored on first loads, recoveries, lateness or upstream advice."""
    assert schedule.after_success(every=60, jitter=0, draw=0.5, **kwargs) == expected, case


@pytest.mark.parametrize(
    ("every", "jitter", "draw", "refresh_in", "due"),
    [
        (60, 0.1, 0.0, None, 130.0),  # no draw: on the grid
        (60, 0.1, 0.5, None, 127.0),  # half the jitter window earlier
        (60, 0.5, 0.999, None, 100.03),  # never later, never more than jitter * every earlier
        (60, 0.1, 0.5, 10, 110.5),  # jitter spreads over the shorter of every and refresh_in
    ],
)
def test_jitter_only_moves_earlier(
    every: float, jitter: float, draw: float, refresh_in: float | None, due: float
) -> None:
    """The fetch moves earlier than its grid point by jitter x the interval x the draw."""
    result = schedule.after_success(
        grid=70,
        started=70,
        now=101,
        every=every,
        jitter=jitter,
        draw=draw,
        on_grid=True,
        refresh_in=refresh_in,
    )
    assert result.due == pytest.approx(due)
    assert result.due <= result.grid


@pytest.mark.parametrize(
    ("failures", "initial", "multiplier", "cap", "jitter", "draw", "delay"),
    [
        (1, 1, 2, 60, 0, 0, 1),
        (2, 1, 2, 60, 0, 0, 2),
        (6, 1, 2, 60, 0, 0, 32),
        (7, 1, 2, 60, 0, 0, 60),  # capped
        (3, 1, 2, 60, 0.5, 0.5, 3),  # jitter only shortens: 4 x (1 - 0.25)
        (10_000, 1, 100, 60, 0, 0, 60),  # past float range: the cap
    ],
)
def test_backoff(
    failures: int, initial: float, multiplier: float, cap: float, jitter: float, draw: float, delay: float
) -> None:
    """Exponential from backoff_initial, capped, jittered downwards only."""
    assert (
        schedule.backoff(failures, initial=initial, multiplier=multiplier, cap=cap, jitter=jitter, draw=draw)
        == delay
    )


@pytest.mark.parametrize(
    ("case", "backoff_delay", "expires_at", "leeway", "retry_after", "delay"),
    [
        ("plain backoff", 30, None, 0, None, 30),
        ("a token expiring in 5 s is retried by its expiry", 30, 105, 0, None, 5),
        ("an expired token is retried within its leeway", 30, 90, 10, None, 10),
        ("never a busy loop for an expired token", 30, 100, 0, None, 1),
        ("Retry-After longer than the backoff wins", 30, None, 0, 120, 120),
        ("Retry-After shorter than the backoff does not hurry it", 30, None, 0, 5, 30),
        ("Retry-After is obeyed for an hour at most", 30, None, 0, INF, 3600),
        ("a NaN Retry-After is ignored", 30, None, 0, math.nan, 30),
        ("a negative Retry-After is ignored", 30, None, 0, -5, 30),
    ],
)
def test_retry_delay(
    case: str,
    backoff_delay: float,
    expires_at: float | None,
    leeway: float,
    retry_after: float | None,
    delay: float,
) -> None:
    """Backoff, bounded by an expiring value's lifetime and raised by the upstream's Retry-After."""
    assert (
        schedule.retry_delay(
            backoff_delay,
            now=100,
            every=3600,
            backoff_initial=1,
            expires_at=expires_at,
            leeway=leeway,
            retry_after=retry_after,
        )
        == delay
    ), case


@pytest.mark.parametrize(
    ("expires_in", "leeway", "every", "renew"),
    [
        (3600, 30, 7200, 3570),  # before expiry, by the leeway
        (3600, 30, 600, 600),  # never later than every
        (0, 30, 600, 1),  # already expired: in a second, not a busy loop
        (0, 0, 0.1, 0.1),  # ...or every, if shorter
    ],
)
def test_renew_in(expires_in: float, leeway: float, every: float, renew: float) -> None:
    """An expiring value is renewed before it expires, within [min(1 s, every), every]."""
    assert schedule.renew_in(expires_in, leeway, every) == renew


@pytest.mark.parametrize(
    ("last_success", "expires_at", "due"),
    [
        (None, None, 100),  # nothing published here: fetch at once
        (80, None, 140),  # keep the cluster's schedule: when the value is every old
        (0, None, 100),  # overdue: at once
        (80, 120, 110),  # an expiring value is renewed before expiry (less leeway)
    ],
)
def test_due_after_takeover(last_success: float | None, expires_at: float | None, due: float) -> None:
    """A new lease holder fetches when the value is due, not at once."""
    assert (
        schedule.due_after_takeover(
            now=100, every=60, last_success=last_success, expires_at=expires_at, leeway=10
        )
        == due
    )


@pytest.mark.parametrize(("last_success", "due"), [(None, 100), (80, 140), (0, 100)])
def test_due_when_standalone(last_success: float | None, due: float) -> None:
    """A follower that loses the backend fetches when its value is due."""
    assert schedule.due_when_standalone(now=100, every=60, last_success=last_success) == due


@pytest.mark.parametrize(
    ("lag", "every", "behind"),
    [(0.5, 0.01, False), (1.5, 0.01, True), (30, 60, False), (61, 60, True)],
)
def test_is_behind(lag: float, every: float, behind: bool) -> None:
    """Later than a whole interval and more than a second means falling behind."""
    assert schedule.is_behind(lag, every) is behind


@pytest.mark.parametrize(
    ("expires_at", "expired"), [(None, False), (101, False), (100, True), (math.nan, True)]
)
def test_expired(expires_at: float | None, expired: bool) -> None:
    """At or past its expiry a value has expired; an expiry that is not a number has too."""
    assert schedule.expired(100, expires_at) is expired


@given(
    failures=st.integers(1, 10_000),
    initial=st.floats(0.01, 3600),
    multiplier=st.floats(1, 100),
    cap=st.floats(0.01, 86400),
    jitter=st.floats(0, 0.5),
    draw=st.floats(0, 1, exclude_max=True),
)
def test_backoff_is_always_within_the_cap(
    failures: int, initial: float, multiplier: float, cap: float, jitter: float, draw: float
) -> None:
    """Whatever the numbers, the delay is finite, positive and at most the cap."""
    delay = schedule.backoff(
        failures, initial=initial, multiplier=multiplier, cap=cap, jitter=jitter, draw=draw
    )
    assert 0 < delay <= cap
