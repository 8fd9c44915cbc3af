"""Expiring values (Fresh), change detection and handle.value, for any fetch."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from asgi_refresh import Fresh, Refresher, RefreshMiddleware, SourceError
from asgi_refresh._publisher import SNAPSHOT_KEY
from asgi_refresh.testing import FakeClock

from .helpers import START, ScriptedApp, Upstream, published, running

pytestmark = pytest.mark.anyio


def next_refresh(handle: Any, name: str = "token") -> float:
    """Seconds from START to the next refresh that status() reports."""
    from datetime import datetime

    when = handle.status()[name]["next_refresh_at"]
    return (datetime.fromisoformat(when) - START).total_seconds()


@pytest.mark.parametrize(
    ("fresh", "every", "expected"),
    [
        (Fresh("t", expires_in=100), "1h", 90),  # leeway 10%
        (Fresh("t", expires_in="1h"), "2h", 3570),  # leeway capped at 30 s
        (Fresh("t", expires_in="1h"), "10m", 600),  # never later than every
        (Fresh("t", expires_in=600, leeway="2m"), "1h", 480),  # a leeway of your own
        (Fresh("t", expires_in=timedelta(seconds=0)), "1h", 1),  # expired: renewed, not in a busy loop
        (Fresh("t", expires_in=0), "100ms", 0.1),  # ...and never later than every
    ],
)
async def test_fresh_schedules_the_renewal_before_expiry(
    fresh: Fresh[str], every: str, expected: float
) -> None:
    """The next refresh is at expiry minus the leeway, within [1 s or every, every]."""
    async with running(Refresher("token", Upstream(fresh), every=every, jitter=0)) as handle:
        assert handle.value("token") == "t"
        assert next_refresh(handle) == pytest.approx(expected)


async def test_token_renewal_keeps_ahead_of_expiry() -> None:
    """A token that lives 5 minutes is renewed every 4.5 minutes, from a sync fetch too."""
    clock = FakeClock(START)
    issued: list[float] = []

    def issue_token() -> Fresh[str]:
        issued.append(clock.monotonic())
        return Fresh(f"token-{len(issued)}", expires_in="5m")

    async with running(Refresher("token", issue_token, every="1h", jitter=0), clock=clock) as handle:
        await clock.advance("30m")
        assert handle.value("token") == f"token-{len(issued)}"
    assert issued == [270.0 * i for i in range(7)]


async def test_jitter_moves_an_expiry_renewal_only_earlier() -> None:
    """With jitter, a renewal comes early by at most jitter x the time to renewal."""
    for _ in range(20):
        async with running(
            Refresher("token", Upstream(Fresh("t", expires_in=100)), every="1h", jitter=0.5)
        ) as h:
            assert 45 <= next_refresh(h) <= 90


def test_fresh_checks_its_arguments_and_hides_its_value() -> None:
    """Negative or malformed durations are clear errors; repr never shows the secret."""
    with pytest.raises(ValueError, match=r"Fresh: expires_in must be >= 0 \(got -1\)"):
        Fresh("t", expires_in=-1)
    with pytest.raises(ValueError, match="Fresh: leeway: expected a duration"):
        Fresh("t", expires_in=1, leeway="soon")
    with pytest.raises(TypeError, match="Fresh: expires_in: expected seconds"):
        Fresh("t", expires_in=None)  # type: ignore[arg-type]
    assert repr(Fresh("SECRET", expires_in=60)) == "Fresh(<str>, expires_in=60, leeway=6)"


# -- change detection -----------------------------------------------------------------


async def test_an_equal_value_publishes_nothing_new() -> None:
    """A poll returning equal data keeps the published object and snapshot, and calls no on_change."""
    clock = FakeClock(START)
    changes: list[Any] = []
    upstream = Upstream({"a": [1]}, {"a": [1]}, {"a": [2]})
    refresher = Refresher(
        "data", upstream, every="1m", jitter=0, on_change=lambda old, new: changes.append(new)
    )
    middleware = RefreshMiddleware(ScriptedApp(), refreshers=[refresher], clock=clock)
    from asgi_lifespan import LifespanManager

    async with LifespanManager(middleware):
        state = published(middleware)
        first, snapshot = state["data"], state[SNAPSHOT_KEY]
        await clock.advance("1m")
        assert state["data"] is first
        assert state[SNAPSHOT_KEY] is snapshot, "nothing new for requests to copy"
        status = middleware.handle.status()["data"]
        assert status["last_outcome"] == "unchanged"
        assert status["refresh_count"] == 2
        assert status["last_changed_at"] == START.isoformat()
        await clock.advance("1m")
        assert state["data"] == {"a": [2]}
        assert (
            middleware.handle.status()["data"]["last_changed_at"]
            == (START + timedelta(minutes=2)).isoformat()
        )
    assert changes == [{"a": [1]}, {"a": [2]}]


async def test_refresh_returns_the_published_value_when_unchanged() -> None:
    """handle.refresh() returns what requests see: the equal value already published."""
    upstream = Upstream([1], [1])
    async with running(Refresher("data", upstream, every="1h")) as handle:
        first = handle.value("data")
        assert await handle.refresh("data") is first


async def test_handle_value_reads_the_published_value() -> None:
    """handle.value(name) is the current value; unknown or not yet loaded names are errors."""
    upstream = Upstream(SourceError("down"))
    refreshers = [
        Refresher("a", Upstream(1), every="1h"),
        Refresher("b", upstream, every="1h", required=False, default="fallback"),
    ]
    async with running(*refreshers) as handle:
        assert handle.value("a") == 1
        assert handle.value("b") == "fallback"
        with pytest.raises(LookupError, match="No refresher named 'c'"):
            handle.value("c")
        assert json.dumps(handle.status())


async def test_a_fetch_can_wait_for_another_refreshers_first_load() -> None:
    """handle.wait_for() lets one fetch depend on another; value() before a first load is an error."""
    clock = FakeClock(START)
    seen: list[str] = []
    middleware: RefreshMiddleware

    async def needs_token() -> str:
        try:
            middleware.handle.value("token")
        except LookupError as exc:
            seen.append(str(exc))
        return f"called with {await middleware.handle.wait_for('token')}"

    async def slow_token() -> str:
        await clock.sleep_until(5)
        return "t"

    middleware = RefreshMiddleware(
        ScriptedApp(),
        refreshers=[
            Refresher("token", slow_token, every="1h"),
            Refresher("api", needs_token, every="1h", backoff_initial="10s", jitter=0),
        ],
        clock=clock,
    )
    import anyio
    from asgi_lifespan import LifespanManager

    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.advance, 20)
        async with LifespanManager(middleware):
            assert middleware.handle.value("api") == "called with t"
            status = middleware.handle.status()["api"]
            assert status["consecutive_failures"] == 0
            assert status["last_duration"] == 5.0
    assert seen == [
        "Refresher 'token' has not loaded a value yet; `await handle.wait_for('token')` waits for it"
    ]


async def test_an_expiring_value_is_retried_by_its_expiry_then_within_its_leeway() -> None:
    """Failed renewals retry no later than expiry, then at most a leeway apart, not `every`."""
    clock = FakeClock(START)
    upstream = Upstream(Fresh("t", expires_in=100), *[SourceError("auth server down")] * 20)
    upstream.clock = clock
    refresher = Refresher("token", upstream, every="1h", jitter=0, backoff_initial="4s")
    async with running(refresher, clock=clock) as handle:
        assert handle.status()["token"]["expires_at"] == (START + timedelta(seconds=100)).isoformat()
        await clock.advance(200)
    # 90 renewal fails; backoff 4 and 8 s; then capped by expiry at 100; then the 10 s leeway.
    assert upstream.call_times[:7] == [0, 90, 94, 100, 110, 120, 130]
