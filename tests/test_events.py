"""Refresh events for listeners, the Prometheus metrics built on them, and log fields."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest
from asgi_lifespan import LifespanManager
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from asgi_refresh import Fresh, Refresher, RefreshEvent, RefreshMiddleware
from asgi_refresh._sources.outcome import Fetched
from asgi_refresh.prometheus import PrometheusMetrics
from asgi_refresh.testing import FakeClock

from .helpers import START, ScriptedApp, Upstream, runtime_of

pytestmark = pytest.mark.anyio


def middleware_with(*refreshers: Refresher, listeners: list[Any], clock: FakeClock) -> RefreshMiddleware:
    return RefreshMiddleware(ScriptedApp(), refreshers=list(refreshers), clock=clock, listeners=listeners)


def kinds(events: list[RefreshEvent]) -> list[str]:
    return [event.kind for event in events]


async def test_every_fetch_sends_started_then_its_outcome() -> None:
    """started, then succeeded (+ changed), not_modified or failed, with duration and error."""
    clock = FakeClock(START)
    events: list[RefreshEvent] = []
    upstream = Upstream("v1", "v1", Fetched("v1", not_modified=True), OSError("boom"), "v2")
    refresher = Refresher("names", upstream, every="1m", jitter=0, backoff_initial="1m")
    async with LifespanManager(middleware_with(refresher, listeners=[events.append], clock=clock)):
        for _ in range(4):
            await clock.advance(60)
    assert kinds(events) == [
        *("started", "succeeded", "changed"),
        *("started", "succeeded"),  # the same value: no changed
        *("started", "not_modified"),
        *("started", "failed"),
        *("started", "succeeded", "changed"),
    ]
    failed = next(event for event in events if event.kind == "failed")
    assert failed.name == "names"
    assert failed.error == "OSError: boom"
    assert isinstance(failed.exception, OSError)
    assert failed.duration == 0.0
    assert events[0].duration is None, "started has no duration yet"
    assert events[0].at == START.timestamp()
    assert events[-1].at == START.timestamp() + 240


async def test_async_listeners_get_events_in_order_without_delaying_fetches() -> None:
    """An async listener is awaited on its own task, in order, even when it is slow."""
    clock = FakeClock(START)
    seen: list[str] = []
    gate = anyio.Event()

    async def slow_listener(event: RefreshEvent) -> None:
        await gate.wait()
        seen.append(f"{event.kind}:{event.name}")

    upstream = Upstream(1, 2, 3)
    refresher = Refresher("names", upstream, every="10s", jitter=0)
    middleware = middleware_with(refresher, listeners=[slow_listener], clock=clock)
    async with LifespanManager(middleware):
        await clock.advance(20)  # within the listener's 30 s bound
        assert upstream.calls == 3, "the schedule did not wait for the listener"
        assert seen == []
        gate.set()
        await anyio.wait_all_tasks_blocked()
    assert seen == [f"{kind}:names" for kind in ["started", "succeeded", "changed"] * 3]


async def test_a_listener_that_raises_is_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    """Sync or async, a raising listener costs a log line, never a refresh or another listener."""
    clock = FakeClock(START)
    events: list[RefreshEvent] = []

    def broken(event: RefreshEvent) -> None:
        raise ValueError("listener bug")

    async def broken_async(event: RefreshEvent) -> None:
        raise ValueError("async listener bug")

    middleware = middleware_with(
        Refresher("names", Upstream(), every="1m"),
        listeners=[broken, broken_async, events.append],
        clock=clock,
    )
    async with LifespanManager(middleware):
        await anyio.wait_all_tasks_blocked()
        assert middleware.handle.value("names") == 1
    assert kinds(events) == ["started", "succeeded", "changed"]
    assert (
        "event listener test_a_listener_that_raises_is_logged_and_ignored.<locals>.broken raised"
        in caplog.text
    )
    assert "on 'started' of 'names'" in caplog.text
    assert "async listener bug" in caplog.text


async def test_a_listener_that_keeps_raising_logs_one_error_per_5_minutes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The first raise is an ERROR with a traceback; repeats go to DEBUG and are counted in the next ERROR."""
    caplog.set_level(logging.DEBUG, logger="asgi_refresh")
    clock = FakeClock(START)

    def broken(event: RefreshEvent) -> None:
        raise ValueError("listener bug")

    def raised(level: str) -> list[logging.LogRecord]:
        return [
            record
            for record in caplog.records
            if record.levelname == level and "event listener" in record.getMessage()
        ]

    refresher = Refresher("names", Upstream(), every="1s", jitter=0)
    async with LifespanManager(middleware_with(refresher, listeners=[broken], clock=clock)):
        await clock.advance(10)
        assert len(raised("ERROR")) == 1
        assert raised("ERROR")[0].exc_info is not None
        quiet = len(raised("DEBUG"))
        assert quiet >= 20, "every fetch sends events; each raise after the first is at DEBUG"
        assert raised("DEBUG")[0].exc_info is None
        assert (
            "raised again on 'succeeded' of 'names': ValueError: listener bug" in raised("DEBUG")[0].message
        )
        await clock.advance(290)
    first, second = raised("ERROR")
    records = caplog.records[caplog.records.index(first) : caplog.records.index(second)]
    quiet = sum(record in records for record in raised("DEBUG"))
    assert f"(it raised {quiet} more times since the last such error, logged at DEBUG)" in second.getMessage()


async def test_a_listener_that_hangs_is_cancelled_after_30s(caplog: pytest.LogCaptureFixture) -> None:
    """An async listener is bounded; the next events still arrive."""
    clock = FakeClock(START)
    seen: list[str] = []

    async def hangs_once(event: RefreshEvent) -> None:
        if not seen:
            seen.append("hung")
            await anyio.sleep_forever()
        seen.append(event.kind)

    middleware = middleware_with(
        Refresher("names", Upstream(), every="1m"), listeners=[hangs_once], clock=clock
    )
    async with LifespanManager(middleware):
        await clock.advance(30)
        await anyio.wait_all_tasks_blocked()
    assert seen == ["hung", "succeeded", "changed"]
    assert "did not finish within 30s" in caplog.text


async def test_events_left_queued_at_shutdown_are_closed_quietly() -> None:
    """Queued async listener calls are dropped at shutdown without 'never awaited' warnings."""
    clock = FakeClock(START)
    calls: list[str] = []

    async def listener(event: RefreshEvent) -> None:
        calls.append(event.kind)
        await anyio.sleep_forever()

    middleware = middleware_with(
        Refresher("names", Upstream(), every="1m"), listeners=[listener], clock=clock
    )
    async with LifespanManager(middleware):
        await anyio.wait_all_tasks_blocked()
    assert calls == ["started"], "the rest were queued behind the first and closed at shutdown"


async def test_a_listener_that_falls_behind_loses_events_with_one_error(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the queue bound, events for a slow async listener are dropped, logged once."""
    monkeypatch.setattr("asgi_refresh._events._QUEUE_SIZE", 2)
    clock = FakeClock(START)

    async def stuck(event: RefreshEvent) -> None:
        await anyio.sleep_forever()

    refresher = Refresher("names", Upstream(), every="1s", jitter=0)
    async with LifespanManager(middleware_with(refresher, listeners=[stuck], clock=clock)):
        await clock.advance(5)
    dropped = [record for record in caplog.records if "is not keeping up" in record.getMessage()]
    assert len(dropped) == 1
    assert dropped[0].levelname == "ERROR"


@pytest.mark.parametrize(
    ("listeners", "message"),
    [
        (print, "listeners must be a list of callables; wrap a single one in a list: listeners=\\[print\\]"),
        (["not callable"], "each listener must be a callable taking a RefreshEvent"),
        (42, "listeners must be a list of callables"),
        (
            [PrometheusMetrics],
            r"listener PrometheusMetrics is a class; pass an instance, e.g. listeners=\[PrometheusMetrics\(\)\]",
        ),
    ],
)
def test_bad_listeners_are_refused(listeners: Any, message: str) -> None:
    """The listeners option must be a list of callables; a lone callable gets a hint."""
    with pytest.raises(TypeError, match=message):
        RefreshMiddleware(ScriptedApp(), refreshers=[], listeners=listeners)


async def test_no_listener_means_no_events_object() -> None:
    """Without listeners nothing is built or emitted (the default costs nothing)."""
    middleware = RefreshMiddleware(ScriptedApp(), refreshers=[Refresher("names", Upstream(), every="1m")])
    async with LifespanManager(middleware):
        assert runtime_of(middleware.handle).events is None


# -- Prometheus ------------------------------------------------------------------------


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The exposition output, parsed back: {(sample name, labels): value}."""
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_prometheus_metrics_follow_the_refreshers() -> None:
    """The five documented metrics, scraped from prometheus_client's exposition output."""
    clock = FakeClock(START)
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry, clock=clock)

    async def taking_2s() -> str:
        await clock.sleep_until(clock.monotonic() + 2)
        return "v"

    upstream = Upstream(taking_2s, OSError("down"), OSError("down"), Fetched("v", not_modified=True))
    refresher = Refresher("names", upstream, every="1m", jitter=0, backoff_initial="1m")
    name = (("name", "names"),)
    middleware = middleware_with(refresher, listeners=[metrics], clock=clock)
    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.advance, 2)  # the first load takes 2 simulated seconds
        async with LifespanManager(middleware):
            await clock.advance(130)  # t=132: failed at t=60 and t=120
            samples = scrape(registry)
            assert (
                samples[("asgi_refresh_refreshes_total", (("name", "names"), ("outcome", "succeeded")))] == 1
            )
            assert samples[("asgi_refresh_refreshes_total", (("name", "names"), ("outcome", "failed")))] == 2
            assert samples[("asgi_refresh_refresh_duration_seconds_count", name)] == 3
            assert samples[("asgi_refresh_refresh_duration_seconds_sum", name)] == 2.0
            assert samples[("asgi_refresh_refresh_duration_seconds_bucket", (("le", "2.5"), *name))] == 3
            assert samples[("asgi_refresh_last_success_timestamp_seconds", name)] == START.timestamp() + 2
            assert samples[("asgi_refresh_consecutive_failures", name)] == 2
            assert samples[("asgi_refresh_value_age_seconds", name)] == 130.0
            await clock.advance(50)  # t=182: the 304 at t=180 is a success
            samples = scrape(registry)
            assert (
                samples[("asgi_refresh_refreshes_total", (("name", "names"), ("outcome", "not_modified")))]
                == 1
            )
            assert samples[("asgi_refresh_consecutive_failures", name)] == 0
            assert samples[("asgi_refresh_value_age_seconds", name)] == 2.0
            assert samples[("asgi_refresh_last_success_timestamp_seconds", name)] == START.timestamp() + 180


def test_prometheus_metrics_register_once_per_registry() -> None:
    """A second PrometheusMetrics in the same registry is prometheus_client's duplicate error."""
    registry = CollectorRegistry()
    PrometheusMetrics(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        PrometheusMetrics(registry)


# -- logs ------------------------------------------------------------------------------


async def test_log_records_carry_refresher_outcome_and_duration(caplog: pytest.LogCaptureFixture) -> None:
    """One WARNING per failure run and one INFO per recovery, with extra= fields to filter on."""
    caplog.set_level(logging.DEBUG, logger="asgi_refresh")
    clock = FakeClock(START)
    upstream = Upstream("v", OSError("down"), "v2")
    refresher = Refresher("names", upstream, every="1m", jitter=0, backoff_initial="1m")
    async with LifespanManager(middleware_with(refresher, listeners=[], clock=clock)):
        await clock.advance(120)
    records = [record for record in caplog.records if hasattr(record, "refresher")]
    summary = [(record.levelname, record.outcome, record.duration) for record in records]  # type: ignore[attr-defined]
    assert summary == [
        ("DEBUG", "changed", 0.0),
        ("WARNING", "failed", 0.0),
        ("INFO", "recovered", 0.0),
    ]
    failure = records[1]
    assert failure.error == "OSError: down"  # type: ignore[attr-defined]
    assert failure.consecutive_failures == 1  # type: ignore[attr-defined]
    assert failure.getMessage().startswith("Refresher 'names' failed (1 in a row): OSError: down")


async def test_fresh_values_send_events_too() -> None:
    """A Fresh (expiring) value sends the same events as any other."""
    clock = FakeClock(START)
    events: list[RefreshEvent] = []
    refresher = Refresher("token", Upstream(Fresh("t", expires_in=60)), every="1h")
    async with LifespanManager(middleware_with(refresher, listeners=[events.append], clock=clock)):
        pass
    assert kinds(events) == ["started", "succeeded", "changed"]


async def test_a_refresher_that_never_succeeds_has_an_infinite_age() -> None:
    """Series exist from the first attempt: the age alert fires for a refresher that never loaded."""
    clock = FakeClock(START)
    registry = CollectorRegistry()
    refresher = Refresher("rates", Upstream(OSError("down")), every="1m", required=False)
    async with LifespanManager(
        middleware_with(refresher, listeners=[PrometheusMetrics(registry, clock=clock)], clock=clock)
    ):
        samples = scrape(registry)
    assert samples[("asgi_refresh_value_age_seconds", (("name", "rates"),))] == float("inf")
    assert samples[("asgi_refresh_consecutive_failures", (("name", "rates"),))] == 1
