"""Prometheus metrics of last known good: quarantines, operators' actions, pins and snapshot starts.

The metrics of fetches themselves (counts, durations, ages) are tested with the
events they are built on, in tests/test_events.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from asgi_lifespan import LifespanManager
from prometheus_client import CollectorRegistry

from asgi_refresh import Refresher, RefreshEvent, RefreshMiddleware, max_shrink
from asgi_refresh.prometheus import PrometheusMetrics
from asgi_refresh.testing import FakeClock

from .helpers import START, ScriptedApp, Upstream
from .test_events import kinds, scrape

pytestmark = pytest.mark.anyio

FOUR = ["ada", "grace", "katherine", "barbara"]
FIVE = [*FOUR, "margaret"]
GAUGES = ("asgi_refresh_value_held_back", "asgi_refresh_value_pinned", "asgi_refresh_value_from_snapshot")
ACTIONS = ("accept", "reject", "pin", "unpin")


def kept_metrics(registry: CollectorRegistry, name: str = "names") -> dict[str, float]:
    """The last-known-good series of one refresher: gauges by name, counters by name and action."""
    samples = scrape(registry)
    label = (("name", name),)
    found = {gauge: samples[(gauge, label)] for gauge in GAUGES}
    found["quarantines"] = samples[("asgi_refresh_quarantines_total", label)]
    found["restores"] = samples[("asgi_refresh_snapshot_restores_total", label)]
    for action in ACTIONS:
        found[action] = samples[("asgi_refresh_operator_actions_total", (("action", action), *label))]
    return found


def gauges(registry: CollectorRegistry, name: str = "names") -> tuple[float, float, float]:
    """(held back, pinned, from snapshot) for ``name``."""
    found = kept_metrics(registry, name)
    return found[GAUGES[0]], found[GAUGES[1]], found[GAUGES[2]]


def guarded(upstream: Upstream, registry: CollectorRegistry, clock: FakeClock) -> RefreshMiddleware:
    refresher = Refresher("names", upstream, every="1h", jitter=0, guard=max_shrink(0.5), keep_versions=5)
    return RefreshMiddleware(
        ScriptedApp(),
        refreshers=[refresher],
        clock=clock,
        listeners=[PrometheusMetrics(registry, clock=clock)],
    )


async def test_every_series_starts_at_zero_with_the_first_attempt() -> None:
    """Gauges and counters of last known good exist, at 0, from a refresher's first fetch on."""
    clock = FakeClock(START)
    registry = CollectorRegistry()
    plain = Refresher("flags", Upstream({"beta": True}), every="1h")
    middleware = RefreshMiddleware(
        ScriptedApp(), refreshers=[plain], clock=clock, listeners=[PrometheusMetrics(registry, clock=clock)]
    )
    async with LifespanManager(middleware):
        assert kept_metrics(registry, "flags") == dict.fromkeys(
            [*GAUGES, "quarantines", "restores", *ACTIONS], 0.0
        )


async def test_quarantine_and_operator_actions_are_counted_and_gauged() -> None:
    """Held back: gauge 1 and counted; reject keeps it held; accept ends it; rollback pins; unpin unpins."""
    clock = FakeClock(START)
    registry = CollectorRegistry()
    upstream = Upstream(FOUR, FIVE, ["ada"], ["ada"], ["ada"], ["ada"])
    middleware = guarded(upstream, registry, clock)
    async with LifespanManager(middleware):
        handle = middleware.handle
        await handle.refresh("names")  # FIVE: published
        await handle.refresh("names")  # one name: held back
        assert gauges(registry) == (1, 0, 0)
        assert kept_metrics(registry)["quarantines"] == 1
        await handle.reject("names")
        await handle.refresh("names")  # the same value again: held back quietly
        found = kept_metrics(registry)
        assert (found["reject"], found["quarantines"]) == (1, 1), "counted once, when it was first held back"
        assert gauges(registry) == (1, 0, 0), "rejected, it is still held back"
        await handle.accept("names")
        assert gauges(registry) == (0, 0, 0)
        assert handle.value("names") == ["ada"]
        await handle.rollback("names")
        assert gauges(registry) == (0, 1, 0)
        await handle.refresh("names")  # fetched while pinned: withheld, still pinned
        assert gauges(registry) == (0, 1, 0)
        handle.unpin("names")
        assert gauges(registry) == (0, 0, 0)
        found = kept_metrics(registry)
        assert {action: found[action] for action in ACTIONS} == {
            "accept": 1,
            "reject": 1,
            "pin": 1,
            "unpin": 1,
        }


async def test_the_held_back_gauge_drops_when_the_quarantine_ends_by_itself() -> None:
    """No operator needed: the upstream going back to the published value, or a newer value passing, ends it."""
    clock = FakeClock(START)
    registry = CollectorRegistry()
    upstream = Upstream(FOUR, ["ada"], FOUR, ["ada"], FIVE)
    middleware = guarded(upstream, registry, clock)
    async with LifespanManager(middleware):
        handle = middleware.handle
        await handle.refresh("names")
        assert gauges(registry) == (1, 0, 0)
        await handle.refresh("names")  # back to what is published
        assert handle.status()["names"]["quarantined"] is None
        assert gauges(registry) == (0, 0, 0)
        await handle.refresh("names")
        assert gauges(registry) == (1, 0, 0)
        await handle.refresh("names")  # a newer value that passes the guard
        assert handle.value("names") == FIVE
        assert gauges(registry) == (0, 0, 0)
        assert kept_metrics(registry)["quarantines"] == 2


async def test_the_snapshot_gauge_follows_a_start_from_the_snapshot(tmp_path: Path) -> None:
    """The first load fails: from_snapshot 1 and a restore counted; a fetch held back keeps it; one published ends it."""
    clock = FakeClock(START)
    snapshots = tmp_path / "snapshots"
    # A first run leaves the snapshot; the second has the same source (the same fetch class).
    async with LifespanManager(
        RefreshMiddleware(
            ScriptedApp(),
            refreshers=[Refresher("names", Upstream(FOUR), every="1h")],
            clock=clock,
            snapshot_dir=snapshots,
        )
    ):
        pass
    registry = CollectorRegistry()
    upstream = Upstream(OSError("down"), ["ada"], FIVE)
    middleware = RefreshMiddleware(
        ScriptedApp(),
        refreshers=[Refresher("names", upstream, every="1h", jitter=0, guard=max_shrink(0.5))],
        clock=clock,
        listeners=[PrometheusMetrics(registry, clock=clock)],
        snapshot_dir=snapshots,
    )
    async with LifespanManager(middleware):
        handle = middleware.handle
        assert handle.status()["names"]["origin"] == "snapshot"
        assert handle.value("names") == FOUR
        assert gauges(registry) == (0, 0, 1)
        assert kept_metrics(registry)["restores"] == 1
        await handle.refresh("names")  # held back: the snapshot is still what is served
        assert handle.status()["names"]["origin"] == "snapshot"
        assert gauges(registry) == (1, 0, 1)
        await handle.refresh("names")  # a value that passes: published
        assert handle.status()["names"]["origin"] == "fetched"
        assert gauges(registry) == (0, 0, 0)


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
