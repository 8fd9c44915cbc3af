"""RefresherFamily: data per key, loaded on first use, refreshed while used, dropped when idle."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from asgi_lifespan import LifespanManager
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asgi_refresh import (
    RefresherFamily,
    RefreshError,
    RefreshEvent,
    RefreshHandle,
    RefreshMiddleware,
    SourceError,
)
from asgi_refresh._family import MAX_KEY_CHARS, checked_key, shown_key
from asgi_refresh.testing import FakeClock

from .helpers import ScriptedApp, startup_failure

pytestmark = pytest.mark.anyio


class Upstream:
    """fetch(key): counts calls per key, returns ``key@n``; a gate holds fetches; keys in ``failing`` raise."""

    def __init__(self) -> None:
        self.calls: dict[Any, int] = {}
        self.gate: anyio.Event | None = None
        self.failing: set[Any] = set()
        self.started = 0

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    async def __call__(self, key: Any) -> str:
        self.started += 1
        if self.gate is not None:
            await self.gate.wait()
        self.calls[key] = self.calls.get(key, 0) + 1
        if key in self.failing:
            raise ConnectionError(f"upstream down for {key!r}")
        return f"{key}@{self.calls[key]}"


@asynccontextmanager
async def running(*families: RefresherFamily, **options: Any) -> AsyncIterator[RefreshHandle]:
    middleware = RefreshMiddleware(ScriptedApp(), families=families, **options)
    async with LifespanManager(middleware):
        yield middleware.handle


async def test_one_fetch_for_100_concurrent_gets_of_a_cold_key() -> None:
    """100 concurrent requests for one cold key cause exactly one fetch, and all get its value."""
    upstream = Upstream()
    upstream.gate = anyio.Event()
    got: list[str] = []
    async with running(RefresherFamily("rates", upstream, every="1m"), clock=FakeClock()) as handle:

        async def one() -> None:
            got.append(await handle.get("rates", "EUR"))

        async with anyio.create_task_group() as task_group:
            for _ in range(100):
                task_group.start_soon(one)
            await anyio.wait_all_tasks_blocked()
            assert upstream.started == 1
            upstream.gate.set()
    assert upstream.calls == {"EUR": 1}
    assert got == ["EUR@1"] * 100
    family = handle.status()["rates"]["family"]
    assert family["loads"] == 1
    assert family["misses"] == 100
    assert family["keys"] == 1


async def test_a_stale_value_is_served_at_once_while_one_refresh_runs() -> None:
    """Past every, a request gets the old value at once; one refresh runs; the next request gets the new one."""
    clock, upstream = FakeClock(), Upstream()
    family = RefresherFamily("rates", upstream, every="1m", idle_ttl="1h", jitter=0)
    async with running(family, clock=clock) as handle:
        assert await handle.get("rates", "EUR") == "EUR@1"
        upstream.gate = anyio.Event()
        clock.jump("61s")  # the schedule has not run: only requests see the age
        with anyio.fail_after(1):  # real seconds: the request must not wait for the fetch
            assert await handle.get("rates", "EUR") == "EUR@1"
            assert await handle.get("rates", "EUR") == "EUR@1"
        await anyio.wait_all_tasks_blocked()
        assert upstream.started == 2  # one refresh for both stale requests
        upstream.gate.set()
        await anyio.wait_all_tasks_blocked()
        assert await handle.get("rates", "EUR") == "EUR@2"
        assert upstream.calls == {"EUR": 2}


async def test_keys_in_use_are_refreshed_in_the_background_on_schedule() -> None:
    """A key that is being used is refreshed every `every` without any request waiting for it."""
    clock, upstream = FakeClock(), Upstream()
    async with running(RefresherFamily("rates", upstream, every="1m", jitter=0), clock=clock) as handle:
        assert await handle.get("rates", "EUR") == "EUR@1"
        for expected in (2, 3, 4):
            await clock.advance("1m")
            assert upstream.calls["EUR"] == expected  # refreshed before any request asked
            assert await handle.get("rates", "EUR") == f"EUR@{expected}"
        assert handle.status()["rates"]["family"]["refreshes"] == 3


async def test_idle_keys_stop_refreshing_and_are_dropped() -> None:
    """A key unused for idle_ttl is dropped, and fetched no more; a key in use stays."""
    clock, upstream = FakeClock(), Upstream()
    family = RefresherFamily("rates", upstream, every="1m", idle_ttl="5m", jitter=0)
    async with running(family, clock=clock) as handle:
        await handle.get("rates", "idle")
        await handle.get("rates", "busy")
        for _ in range(10):
            await clock.advance("1m")
            await handle.get("rates", "busy")
        summary = handle.status()["rates"]["family"]
        assert summary["keys"] == 1
        assert summary["evicted_idle"] == 1
        assert upstream.calls["idle"] <= 6  # refreshed while it counted as in use, then never again
        before = upstream.calls["idle"]
        await clock.advance("1h")
        assert upstream.calls["idle"] == before
        assert await handle.get("rates", "idle") == f"idle@{before + 1}"  # loaded again on demand


async def test_a_key_used_at_an_inexact_time_is_dropped_when_idle_exactly() -> None:
    """Used at 0.4 with idle_ttl 1: at 1.4, 1.4 - 0.4 < 1 in floats; the family drops it, not spins on it."""
    clock = FakeClock()
    upstream = Upstream()
    upstream.failing.add("gone")  # no value: nothing to refresh before it is idle
    async with running(RefresherFamily("rates", upstream, every="1h", idle_ttl=1.0), clock=clock) as handle:
        await clock.advance(0.4)
        with pytest.raises(RefreshError):
            await handle.get("rates", "gone")
        await clock.advance(1.0)
        assert handle.status()["rates"]["family"]["evicted_idle"] == 1


async def test_at_most_max_keys_least_recently_used_dropped_first() -> None:
    """Beyond max_keys the least recently used key is dropped; asking for it again loads it again."""
    upstream = Upstream()
    async with running(
        RefresherFamily("rates", upstream, every="1h", max_keys=3), clock=FakeClock()
    ) as handle:
        for key in ("a", "b", "c"):
            await handle.get("rates", key)
        await handle.get("rates", "a")  # a is recent now: b is the least recently used
        await handle.get("rates", "d")
        summary = handle.status()["rates"]["family"]
        assert summary["keys"] == 3
        assert summary["evicted_lru"] == 1
        assert await handle.get("rates", "a") == "a@1"
        assert await handle.get("rates", "b") == "b@2"  # dropped, so fetched again


async def test_keys_that_failed_without_a_value_are_dropped_before_good_ones() -> None:
    """A flood of keys that do not exist upstream takes the places of each other, not of good values."""
    upstream = Upstream()
    upstream.failing.update(f"missing{n}" for n in range(10))
    async with running(
        RefresherFamily("rates", upstream, every="1h", max_keys=5, preload=["p"]), clock=FakeClock()
    ) as handle:
        for key in ("good1", "good2"):
            await handle.get("rates", key)
        for n in range(10):
            with pytest.raises(RefreshError):
                await handle.get("rates", f"missing{n}")
        assert await handle.get("rates", "good1") == "good1@1", "kept: not fetched again"
        assert await handle.get("rates", "good2") == "good2@1"
        summary = handle.status()["rates"]["family"]
        assert summary["keys"] == 5
        assert summary["evicted_lru"] == 8  # missing0..7 made room for the next missing key
        assert summary["failing_count"] == 2


async def test_preloaded_keys_are_never_dropped_for_other_keys() -> None:
    """Preloaded keys are kept like refreshers: when they fill max_keys, other keys are refused, not them."""
    upstream = Upstream()
    family = RefresherFamily("rates", upstream, every="1h", max_keys=2, preload=["EUR", "USD"])
    async with running(family, clock=FakeClock()) as handle:
        with pytest.raises(RefreshError, match="preloaded keys fill max_keys"):
            await handle.get("rates", "GBP")
        assert await handle.get("rates", "EUR") == "EUR@1"
        assert handle.status()["rates"]["family"]["keys"] == 2


async def test_a_flood_of_distinct_keys_stays_within_max_keys() -> None:
    """Thousands of distinct keys at once keep at most max_keys entries and fetches; the rest are refused."""
    upstream = Upstream()
    upstream.gate = anyio.Event()
    refused = 0
    async with running(
        RefresherFamily("rates", upstream, every="1h", max_keys=50), clock=FakeClock()
    ) as handle:

        async def one(key: int) -> None:
            nonlocal refused
            try:
                await handle.get("rates", key)
            except RefreshError as exc:
                refused += "refused" in str(exc)

        async with anyio.create_task_group() as task_group:
            for key in range(2000):
                task_group.start_soon(one, key)
            await anyio.wait_all_tasks_blocked()
            assert upstream.started == 50
            assert handle.status()["rates"]["family"]["keys"] <= 50
            upstream.gate.set()
        assert refused == 1950
        assert handle.status()["rates"]["family"]["keys"] <= 50


async def test_refreshes_under_way_do_not_refuse_a_cold_key() -> None:
    """Only first loads count against the flood bound: keys refreshing at once never make a cold key wait."""
    clock, upstream = FakeClock(), Upstream()
    family = RefresherFamily("rates", upstream, every="1m", max_keys=2, jitter=0)
    async with running(family, clock=clock) as handle:
        await handle.get("rates", "a")
        await handle.get("rates", "b")
        upstream.gate = anyio.Event()
        await clock.advance("1m")  # both refreshes start, and wait at the gate
        assert handle.status()["rates"]["family"]["loading"] == 2
        upstream.gate.set()
        upstream.gate = None
        assert await handle.get("rates", "c") == "c@1"


async def test_a_failing_key_keeps_its_last_good_value() -> None:
    """A refresh that fails keeps the key's last good value; status lists the key; it recovers."""
    clock, upstream = FakeClock(), Upstream()
    family = RefresherFamily("rates", upstream, every="1m", jitter=0, backoff_initial="10s")
    async with running(family, clock=clock) as handle:
        assert await handle.get("rates", "EUR") == "EUR@1"
        await handle.get("rates", "USD")
        upstream.failing.add("EUR")
        await clock.advance("1m")
        assert await handle.get("rates", "EUR") == "EUR@1"
        assert await handle.get("rates", "USD") == "USD@2"
        entry = handle.status()["rates"]
        assert entry["family"]["failing_count"] == 1
        assert entry["family"]["failing_keys"][0]["key"] == "'EUR'"
        assert "upstream down" in (entry["last_error"] or "")
        upstream.failing.clear()
        await clock.advance("10s")  # the retry, after its backoff
        assert await handle.get("rates", "EUR") == "EUR@3"
        assert handle.status()["rates"]["family"]["failing_count"] == 0


async def test_a_cold_key_that_fails_raises_and_backs_off() -> None:
    """A cold key whose load fails raises RefreshError naming the family and key; retried only after backoff."""
    clock, upstream = FakeClock(), Upstream()
    upstream.failing.add("XXX")
    family = RefresherFamily("rates", upstream, every="1m", backoff_initial="5s", jitter=0)
    async with running(family, clock=clock) as handle:
        with pytest.raises(
            RefreshError, match="Family 'rates': key 'XXX' could not load: ConnectionError"
        ) as caught:
            await handle.get("rates", "XXX")
        assert caught.value.name == "rates"
        assert caught.value.key == "XXX"
        with pytest.raises(RefreshError, match="next attempt is in 5s"):
            await handle.get("rates", "XXX")
        assert upstream.calls == {"XXX": 1}  # not fetched on every request
        await clock.advance("5s")
        with pytest.raises(RefreshError):
            await handle.get("rates", "XXX")
        assert upstream.calls == {"XXX": 2}
        upstream.failing.clear()
        await clock.advance("10s")
        assert await handle.get("rates", "XXX") == "XXX@3"


async def test_failures_are_logged_once_per_family_not_per_key(caplog: pytest.LogCaptureFixture) -> None:
    """Fifty failing keys write one WARNING for the family; the rest go to DEBUG and are counted."""
    upstream = Upstream()
    upstream.failing.update(range(50))
    with caplog.at_level(logging.INFO, logger="asgi_refresh"):
        async with running(RefresherFamily("rates", upstream, every="1m"), clock=FakeClock()) as handle:
            for key in range(50):
                with pytest.raises(RefreshError):
                    await handle.get("rates", key)
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "Family 'rates': key 0 failed" in warnings[0].getMessage()
    assert handle.status()["rates"]["family"]["failing_count"] == 50
    assert len(handle.status()["rates"]["family"]["failing_keys"]) == 10
    assert "Traceback (most recent call last):" in warnings[0].getMessage(), (
        "the first failure has its traceback"
    )
    assert "ConnectionError: upstream down for 0" in warnings[0].getMessage()


async def test_a_key_in_a_fetchs_error_cannot_forge_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    """A fetch's message quoting the key (a request chose it): its traceback is logged with the text escaped."""

    async def unknown(key: str) -> str:
        raise ValueError(f"unknown tenant {key}")

    hostile = "ab\nWARNING forged line\x1b[31mRED"
    with caplog.at_level(logging.INFO, logger="asgi_refresh"):
        async with running(RefresherFamily("tenants", unknown, every="1m"), clock=FakeClock()) as handle:
            with pytest.raises(RefreshError):
                await handle.get("tenants", hostile)
    (warning,) = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert warning.exc_info is None
    text = caplog.handler.format(warning)
    assert "Traceback (most recent call last):" in text
    assert "ValueError: unknown tenant ab WARNING forged line\\x1b[31mRED" in text
    assert "\x1b" not in text
    assert not any(line.startswith("WARNING forged") for line in text.splitlines())


async def test_a_source_error_is_logged_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """A SourceError says all it knows in its message: one line, as for a refresher."""

    async def refused(key: str) -> str:
        raise SourceError(f"GET /rate/{key}: 404 Not Found")

    with caplog.at_level(logging.INFO, logger="asgi_refresh"):
        async with running(RefresherFamily("rates", refused, every="1m"), clock=FakeClock()) as handle:
            with pytest.raises(RefreshError):
                await handle.get("rates", "XYZ")
    (warning,) = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert "404 Not Found" in warning.getMessage()
    assert warning.exc_info is None


async def test_required_preload_fails_startup_naming_family_and_key() -> None:
    """A required family's preload key that cannot load within the budget fails startup with its name and key."""
    upstream = Upstream()
    upstream.failing.add("EUR")
    family = RefresherFamily("rates", upstream, every="1m", preload=["USD", "EUR"], backoff_initial="1s")
    message = await startup_failure(families=[family], startup_timeout="10s")
    assert message.startswith(
        "Family 'rates' could not preload key 'EUR' within startup_timeout (10s): ConnectionError"
    )
    assert upstream.calls["USD"] == 1
    assert upstream.calls["EUR"] > 2  # retried with backoff within the budget, like a required refresher


async def test_preload_loads_before_startup_and_optional_failures_do_not_block(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Preload keys are warm at startup; a family that is not required starts despite a failing one."""
    upstream = Upstream()
    upstream.failing.add("EUR")
    family = RefresherFamily("rates", upstream, every="1m", preload=["USD", "EUR"], required=False)
    async with running(family, clock=FakeClock()) as handle:
        assert upstream.calls == {"USD": 1, "EUR": 1}
        assert await handle.get("rates", "USD") == "USD@1"
        assert handle.status()["rates"]["family"]["hits"] == 1
    assert "Family 'rates' could not preload key 'EUR'" in caplog.text


async def test_a_preload_key_that_failed_keeps_retrying_in_the_background() -> None:
    """A family that is not required retries a failed preload key on its backoff, without any request."""
    clock, upstream = FakeClock(), Upstream()
    upstream.failing.add("EUR")
    family = RefresherFamily(
        "rates", upstream, every="1m", preload=["EUR"], required=False, backoff_initial="5s", jitter=0
    )
    async with running(family, clock=clock) as handle:
        await clock.advance("5s")
        assert upstream.calls == {"EUR": 2}
        upstream.failing.clear()
        await clock.advance("10s")
        assert upstream.calls == {"EUR": 3}
        assert handle.status()["rates"]["family"]["loads"] == 1
        assert await handle.get("rates", "EUR") == "EUR@3"


async def test_preloaded_keys_are_kept_and_refreshed_while_idle() -> None:
    """Preloaded keys behave like refreshers: refreshed on schedule, never dropped when idle."""
    clock, upstream = FakeClock(), Upstream()
    family = RefresherFamily("rates", upstream, every="1m", idle_ttl="2m", preload=["USD"], jitter=0)
    async with running(family, clock=clock) as handle:
        await clock.advance("10m")
        assert upstream.calls == {"USD": 11}
        assert handle.status()["rates"]["family"]["keys"] == 1


async def test_a_hanging_fetch_times_out() -> None:
    """A fetch past the family's timeout fails as TimeoutError; the caller gets RefreshError."""
    clock = FakeClock()

    async def hang(key: str) -> str:
        await anyio.sleep_forever()
        raise AssertionError  # pragma: no cover

    async with running(RefresherFamily("rates", hang, every="1m", timeout="5s"), clock=clock) as handle:
        async with anyio.create_task_group() as task_group:
            errors: list[BaseException] = []

            async def ask() -> None:
                try:
                    await handle.get("rates", "EUR")
                except RefreshError as exc:
                    errors.append(exc)

            task_group.start_soon(ask)
            await anyio.wait_all_tasks_blocked()
            await clock.advance("5s")
        assert len(errors) == 1
        assert "TimeoutError: fetch timed out after 5s" in str(errors[0])


async def test_a_plain_fetch_runs_in_a_worker_thread() -> None:
    """A plain def fetch runs off the event loop's thread."""
    loop_thread = threading.get_ident()
    threads: list[int] = []

    def fetch(key: str) -> str:
        threads.append(threading.get_ident())
        return key.upper()

    async with running(RefresherFamily("names", fetch, every="1m"), clock=FakeClock()) as handle:
        assert await handle.get("names", "abc") == "ABC"
    assert threads
    assert threads[0] != loop_thread


async def test_a_caller_that_gives_up_does_not_cancel_the_shared_fetch() -> None:
    """A request cancelled while waiting for a cold key leaves the fetch running for the others."""
    upstream = Upstream()
    upstream.gate = anyio.Event()
    async with running(RefresherFamily("rates", upstream, every="1m"), clock=FakeClock()) as handle:
        with anyio.move_on_after(0.05):
            await handle.get("rates", "EUR")
        upstream.gate.set()
        assert await handle.get("rates", "EUR") == "EUR@1"
        assert upstream.calls == {"EUR": 1}


async def test_shutdown_releases_requests_waiting_for_a_cold_key() -> None:
    """A request waiting for a first load when the lifespan shuts down gets a RefreshError, not a hang."""
    upstream = Upstream()
    upstream.gate = anyio.Event()  # never set: the fetch only ends by cancellation
    errors: list[RefreshError] = []
    with anyio.fail_after(5):
        async with (
            anyio.create_task_group() as task_group,
            running(RefresherFamily("rates", upstream, every="1m"), clock=FakeClock()) as handle,
        ):

            async def ask() -> None:
                try:
                    await handle.get("rates", "EUR")
                except RefreshError as exc:
                    errors.append(exc)

            task_group.start_soon(ask)
            await anyio.wait_all_tasks_blocked()
    assert len(errors) == 1
    assert "stopped while fetching a key of 'rates'" in str(errors[0])


async def test_events_name_the_family_and_a_bounded_key() -> None:
    """Fetch events carry the family's name and the key as a bounded repr."""
    events: list[RefreshEvent] = []
    upstream = Upstream()
    upstream.failing.add("bad\x1b[31m")
    async with running(
        RefresherFamily("rates", upstream, every="1m"), clock=FakeClock(), listeners=[events.append]
    ) as handle:
        await handle.get("rates", "EUR")
        with pytest.raises(RefreshError):
            await handle.get("rates", "bad\x1b[31m")
    kinds = [(event.kind, event.name, event.key) for event in events]
    assert kinds[:3] == [
        ("started", "rates", "'EUR'"),
        ("succeeded", "rates", "'EUR'"),
        ("changed", "rates", "'EUR'"),
    ]
    failed = [event for event in events if event.kind == "failed"]
    assert failed[0].key is not None
    assert "\x1b" not in failed[0].key


async def test_unknown_family_and_not_running_are_clear_errors() -> None:
    """An unknown family is a LookupError naming the known ones."""
    async with running(RefresherFamily("rates", Upstream(), every="1m"), clock=FakeClock()) as handle:
        with pytest.raises(LookupError, match=r"No refresher family named 'ratez' \(known: rates\)"):
            await handle.get("ratez", "EUR")
    with pytest.raises(RuntimeError, match="not running"):
        await handle.get("rates", "EUR")


# -- hostile keys ----------------------------------------------------------------------

keys = st.one_of(
    st.text(max_size=200),
    st.integers(),
    st.tuples(st.text(max_size=100), st.integers(), st.tuples(st.text(max_size=100))),
)
flat_keys = st.one_of(
    st.text(max_size=100),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.lists(st.one_of(st.text(max_size=20), st.integers(-(2**63), 2**63 - 1)), min_size=1, max_size=8).map(
        tuple
    ),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(flat_keys, max_size=20))
async def test_any_accepted_key_never_breaks_status_or_logs(
    caplog: pytest.LogCaptureFixture, chosen: list[Any]
) -> None:
    """Any key the API accepts loads, fails and is reported with status() JSON-safe and logs escaped and bounded."""
    upstream = Upstream()
    upstream.failing.update(chosen[::2])
    errors: list[str] = []
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="asgi_refresh"):
        async with running(RefresherFamily("rates", upstream, every="1m"), clock=FakeClock()) as handle:
            for key in chosen:
                try:
                    await handle.get("rates", key)
                except RefreshError as exc:
                    errors.append(str(exc))
            report = json.dumps(handle.status())
    assert len(report) < 10_000
    assert all(len(error) < 1000 for error in errors)
    for record in caplog.records:
        # One escaped line, then at most the first failure's traceback (its messages escaped too).
        line, *traceback = record.getMessage().split("\n")
        assert "\x1b" not in line
        assert len(line) < 2000
        assert traceback[:1] in ([], ["Traceback (most recent call last):"])
        assert len(traceback) < 30
        assert not any("\x1b" in each or len(each) > 2000 for each in traceback)


@given(keys)
def test_shown_keys_are_one_bounded_printable_line(key: Any) -> None:
    """A key as logs and status show it is one line, without terminal controls, at most 80 characters."""
    shown = shown_key(key)
    assert len(shown) <= 80
    assert shown.isprintable() or all(c.isprintable() or c == " " for c in shown)


@pytest.mark.parametrize(
    ("key", "error", "message"),
    [
        ("x" * (MAX_KEY_CHARS + 1), ValueError, "at most 256 characters"),
        (("x" * 200, "y" * 100), ValueError, "at most 256 characters"),
        (2**64, ValueError, "64 bits"),
        (tuple("abcdefghij"), ValueError, "1 to 8 parts"),
        ((), ValueError, "1 to 8 parts"),
        (b"bytes", TypeError, "got a bytes"),
        (1.5, TypeError, "got a float"),
        (True, TypeError, "got a bool"),
        (None, TypeError, "got a NoneType"),
        (["a"], TypeError, "got a list"),
        (("a", ("b",)), TypeError, "parts of a tuple key must be str or int"),
        (type("Sneaky", (str,), {})("a"), TypeError, "got a Sneaky"),
    ],
)
def test_bad_keys_are_refused_without_echoing_them(key: Any, error: type[Exception], message: str) -> None:
    """Keys of the wrong type or size are refused with a clear error that never repeats the key."""
    with pytest.raises(error, match=message) as caught:
        checked_key("rates", key)
    assert "xxxxxxxx" not in str(caught.value)
    assert "Family 'rates'" in str(caught.value)


async def test_an_oversize_key_from_a_request_is_refused_before_any_fetch() -> None:
    """handle.get refuses a key of a megabyte at once: no fetch, no entry, a short message."""
    upstream = Upstream()
    async with running(RefresherFamily("rates", upstream, every="1m"), clock=FakeClock()) as handle:
        with pytest.raises(ValueError, match="at most 256 characters") as caught:
            await handle.get("rates", "k" * 1_000_000)
        assert len(str(caught.value)) < 200
        assert upstream.started == 0
        assert handle.status()["rates"]["family"]["keys"] == 0


# -- the spec and the middleware ---------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"every": "1ms"}, ValueError, "every must be at least 10ms"),
        ({"every": "1m", "max_keys": 0}, ValueError, "max_keys must be a whole number"),
        ({"every": "1m", "idle_ttl": -1}, ValueError, "idle_ttl"),
        ({"every": "1m", "preload": "EUR"}, TypeError, "preload must be a list of keys"),
        ({"every": "1m", "preload": [1.5]}, ValueError, "preload: a key must be a str"),
        ({"every": "1m", "preload": ["a", "b"], "max_keys": 1}, ValueError, "more than max_keys"),
        ({"every": "1m", "backoff_max": "1h"}, ValueError, "backoff_max must not exceed every"),
        ({"every": "1m", "jitter": 0.9}, ValueError, "jitter must be a fraction"),
        ({"every": "1m", "required": "yes"}, TypeError, "required must be True or False"),
    ],
)
def test_bad_arguments_get_errors_naming_the_family(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    """Every argument is checked at construction, and the error names the family and the option."""
    with pytest.raises(error, match=message) as caught:
        RefresherFamily("rates", Upstream(), **kwargs)
    assert "RefresherFamily 'rates'" in str(caught.value)


def test_names_and_fetch_are_checked() -> None:
    """The name is an identifier that is not reserved; fetch takes the key."""
    with pytest.raises(ValueError, match="Python identifier"):
        RefresherFamily("not a name", Upstream(), every="1m")
    with pytest.raises(ValueError, match="reserved"):
        RefresherFamily("asgi_refresh__x", Upstream(), every="1m")
    with pytest.raises(TypeError, match="fetch is called with the key as its one argument"):
        RefresherFamily("rates", lambda: 1, every="1m")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="fetch must be a callable"):
        RefresherFamily("rates", "module:function", every="1m")  # type: ignore[arg-type]


def test_middleware_keeps_families_apart_and_names_unique() -> None:
    """A family in refreshers= is a clear error; a family may not share a refresher's name."""
    from asgi_refresh import Refresher

    family = RefresherFamily("rates", Upstream(), every="1m")
    with pytest.raises(TypeError, match=r"goes in families=\[\.\.\.\]"):
        RefreshMiddleware(ScriptedApp(), refreshers=[family])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="wrap a single one"):
        RefreshMiddleware(ScriptedApp(), families=family)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'rates' names two refreshers or families"):
        RefreshMiddleware(
            ScriptedApp(), refreshers=[Refresher("rates", lambda: 1, every="1m")], families=[family]
        )
    assert RefreshMiddleware(ScriptedApp(), families=[family]).families == (family,)


async def test_a_dropped_entrys_late_success_leaves_the_new_entry_for_its_key_alone() -> None:
    """Key k evicted while loading, asked again and failing: the first load ending well does not clear that failure."""
    gate = anyio.Event()
    calls = {"k": 0}

    async def fetch(key: str) -> str:
        if key != "k":
            return key
        calls["k"] += 1
        if calls["k"] == 1:
            await gate.wait()
            return "k@1"
        raise ConnectionError("down for k")

    async with running(RefresherFamily("rates", fetch, every="1h", max_keys=2), clock=FakeClock()) as handle:
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(handle.get, "rates", "k")  # first load of k, held at the gate
            await anyio.wait_all_tasks_blocked()
            await handle.get("rates", "j")
            await handle.get("rates", "m")  # k, least recently used, is dropped while loading
            with pytest.raises(RefreshError, match="down for k"):
                await handle.get("rates", "k")  # a new entry for k, whose load fails
            gate.set()  # the dropped entry's load ends well
        summary = handle.status()["rates"]["family"]
        assert summary["failing_count"] == 1
        assert [each["key"] for each in summary["failing_keys"]] == ["'k'"]


async def test_an_exception_whose_notes_cannot_be_printed_is_still_contained(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Notes whose __str__ raises, or notes that are not a list: logged without them; the family carries on."""

    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no")

    async def fetch(key: str) -> str:
        error = ValueError(f"bad {key}")
        error.__notes__ = [Unprintable()] if key == "a" else 5  # type: ignore[assignment,list-item]
        raise error

    with caplog.at_level(logging.INFO, logger="asgi_refresh"):
        async with running(RefresherFamily("rates", fetch, every="1h"), clock=FakeClock()) as handle:
            for key in ("a", "b"):
                with pytest.raises(RefreshError, match=f"bad {key}"):
                    await handle.get("rates", key)
            assert handle.status()["rates"]["family"]["failing_count"] == 2
    assert "(a note that could not be read)" in caplog.text
