"""Prometheus metrics of last known good, and the events they are built on."""

from __future__ import annotations

import pytest
from asgi_lifespan import LifespanManager

from asgi_refresh import Refresher, RefreshEvent, RefreshMiddleware, max_shrink
from asgi_refresh.testing import FakeClock

from .helpers import START, ScriptedApp, Upstream
from .test_events import kinds

pytestmark = pytest.mark.anyio

FOUR = ["ada", "grace", "katherine", "barbara"]
FIVE = [*FOUR, "margaret"]


async def test_a_quarantine_that_ends_by_itself_sends_quarantine_ended() -> None:
    """The upstream back to the published value, or a newer value passing, ends it with an event; held again: none."""
    clock = FakeClock(START)
    events: list[RefreshEvent] = []
    upstream = Upstream(FOUR, ["ada"], ["ada"], FOUR, ["ada"], FIVE)
    middleware = RefreshMiddleware(
        ScriptedApp(),
        refreshers=[Refresher("names", upstream, every="1h", jitter=0, guard=max_shrink(0.5))],
        clock=clock,
        listeners=[events.append],
    )
    async with LifespanManager(middleware):
        for _ in range(5):
            await middleware.handle.refresh("names")
    assert [kind for kind in kinds(events) if kind.startswith("quarantine")] == [
        "quarantined",  # ["ada"]; fetched again: held quietly, no event
        "quarantine_ended",  # FOUR again: what is published
        "quarantined",
        "quarantine_ended",  # FIVE: passes the guard, published
    ]
    ended = [event for event in events if event.kind == "quarantine_ended"]
    assert [(event.name, event.error) for event in ended] == [("names", None)] * 2
