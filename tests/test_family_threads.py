"""RefresherFamily with a plain fetch that hangs: its abandoned threads are bounded per family, not per key."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext
from typing import Any

import anyio
import anyio.to_thread
import pytest
from asgi_lifespan import LifespanManager

from asgi_refresh import RefresherFamily, RefreshError, RefreshHandle, RefreshMiddleware
from asgi_refresh._families import MAX_BLOCKED_THREADS
from asgi_refresh.testing import FakeClock

from .helpers import ScriptedApp

pytestmark = pytest.mark.anyio

BLOCKED = "fetches of this family are still blocked in their worker threads past their timeout"


class ThreadBlindClock(FakeClock):
    """A FakeClock whose `advance` does not wait for fetches in threads.

    FakeClock holds time still while a thread runs, so that a quick blocking
    fetch finishes before the schedule moves on; a fetch that never returns would
    hold it for ever. Here time moves past their timeouts, as real time would.
    """

    def hold(self) -> Any:
        return nullcontext()


class Hanging:
    """A plain fetch(key) that blocks until its key (or every key) is released, then returns ``key!``."""

    def __init__(self, family: str) -> None:
        self.family = family
        self.threads: list[threading.Thread] = []
        self.thread_of: dict[Any, threading.Thread] = {}  # the last thread that fetched each key
        self._released: set[Any] = set()
        self._all = False
        self._condition = threading.Condition()

    def __call__(self, key: Any) -> str:
        with self._condition:
            self.threads.append(threading.current_thread())
            self.thread_of[key] = threading.current_thread()
            self._condition.notify_all()
            # Bounded, so that a failing test cannot leave a thread behind for long.
            self._condition.wait_for(lambda: self._all or key in self._released, timeout=30)
        return f"{key}!"

    async def finish(self, key: Any) -> None:
        """Release ``key`` and wait for its thread to end (once it has started)."""
        self.release(key)

        def wait() -> None:
            with self._condition:
                self._condition.wait_for(lambda: key in self.thread_of, timeout=5)
            self.thread_of[key].join(5)

        await anyio.to_thread.run_sync(wait)

    def release(self, *keys: Any) -> None:
        with self._condition:
            self._released.update(keys)
            self._condition.notify_all()

    def release_all(self) -> None:
        with self._condition:
            self._all = True
            self._condition.notify_all()

    def live_threads(self) -> list[threading.Thread]:
        """The family's fetch threads that are still running, whether waited for or abandoned."""
        return [thread for thread in threading.enumerate() if thread.name == f"asgi_refresh:{self.family}"]

    def alive(self) -> int:
        """How many of the family's fetch threads are still running."""
        return len(self.live_threads())

    async def join(self) -> None:
        """Release every key and wait for every thread to end.

        The threads running now are joined too, not only those that called fetch: a
        thread just started has not run its body yet (it is not in ``threads``).
        """
        self.release_all()
        with self._condition:
            called = list(self.threads)
        for thread in [*called, *self.live_threads()]:
            await anyio.to_thread.run_sync(thread.join, 5)


@asynccontextmanager
async def hanging(family: str) -> AsyncIterator[Hanging]:
    fetch = Hanging(family)
    try:
        yield fetch
    finally:
        # Joined off the event loop: a returning thread tells the loop it is done.
        await fetch.join()
        assert fetch.alive() == 0, "a test left a fetch thread behind"


@asynccontextmanager
async def running(family: RefresherFamily, clock: FakeClock) -> AsyncIterator[RefreshHandle]:
    middleware = RefreshMiddleware(ScriptedApp(), families=[family], clock=clock)
    async with LifespanManager(middleware):
        yield middleware.handle


async def wave(handle: RefreshHandle, clock: FakeClock, name: str, keys: list[str]) -> list[RefreshError]:
    """Ask for ``keys`` at once, let a second pass (their timeout), and return the errors they got."""
    errors: list[RefreshError] = []

    async def get(key: str) -> None:
        try:
            await handle.get(name, key)
        except RefreshError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as task_group:
        for key in keys:
            task_group.start_soon(get, key)
        await anyio.wait_all_tasks_blocked()
        await clock.advance("1s")
    return errors


@pytest.mark.parametrize(("max_keys", "bound"), [(1000, MAX_BLOCKED_THREADS), (3, 3)])
async def test_waves_of_cold_keys_leave_a_bounded_number_of_threads(max_keys: int, bound: int) -> None:
    """The user trial: waves of new keys of a hung family stop starting threads once enough are blocked.

    Before, each new key started a thread of its own (the rule was per key), and
    5 waves left one stuck thread per key asked for.
    """
    size = 40 if max_keys > bound else max_keys
    clock = ThreadBlindClock()
    async with hanging("slow") as fetch:
        family = RefresherFamily("slow", fetch, every="2s", timeout="1s", max_keys=max_keys)
        async with running(family, clock) as handle:
            errors = await wave(handle, clock, "slow", [f"a{i}" for i in range(size)])
            assert len(errors) == size
            assert all("TimeoutError: fetch timed out after 1s" in str(exc) for exc in errors)
            # At most `bound` threads at once: the rest of the wave waited for one, and timed out.
            assert fetch.alive() == bound
            for round_ in range(4):
                keys = [f"{round_}-{i}" for i in range(size)]
                with anyio.fail_after(5):  # real seconds: refused at once, no thread to wait for
                    errors = await wave(handle, clock, "slow", keys)
                assert len(errors) == size
                assert all(BLOCKED in str(exc) for exc in errors)
                assert fetch.alive() == bound, "no wave after the first starts a thread"
            summary = handle.status()["slow"]["family"]
            assert size >= bound
            assert summary["blocked_threads"] == bound
            assert summary["blocked_refusals"] == 4 * size
            assert summary["failures"] == 5 * size
            assert summary["refused"] == 0
            assert len(fetch.threads) == bound, "never more threads than the bound, even in the first wave"


async def test_the_error_names_the_family_the_blocked_fetches_and_what_to_do(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A refused fetch says why, how many threads are stuck and what to change; logged once per family."""
    clock = ThreadBlindClock()
    async with hanging("tenants") as fetch:
        caplog.set_level(logging.DEBUG, logger="asgi_refresh")
        family = RefresherFamily("tenants", fetch, every="2s", timeout="1s")
        async with running(family, clock) as handle:
            await wave(handle, clock, "tenants", [f"t{i}" for i in range(MAX_BLOCKED_THREADS)])
            caplog.clear()
            with pytest.raises(RefreshError) as info:
                await handle.get("tenants", "acme")
            message = str(info.value)
            assert message.startswith("Family 'tenants': key 'acme' could not load: SourceError: ")
            assert f"{MAX_BLOCKED_THREADS} {BLOCKED}" in message
            assert "give the blocking call a timeout of its own, or make fetch `async def`" in message
            assert info.value.name == "tenants"
            assert info.value.key == "acme"
            # The key backs off like any failure: asked again, it is not fetched again yet.
            with pytest.raises(RefreshError, match="failed just now"):
                await handle.get("tenants", "acme")
            for i in range(5):
                with pytest.raises(RefreshError):
                    await handle.get("tenants", f"other{i}")
            status = handle.status()["tenants"]
            assert status["family"]["blocked_threads"] == MAX_BLOCKED_THREADS
            assert status["family"]["blocked_refusals"] == 6
            refused = {entry["key"]: entry["last_error"] for entry in status["family"]["failing_keys"]}
            assert BLOCKED in (refused["'acme'"] or "")
    warnings = [record for record in caplog.records if record.levelno >= logging.WARNING]
    # The first timeouts already used the family's WARNING: the refusals are at DEBUG.
    assert warnings == []
    refusals = [record for record in caplog.records if BLOCKED in record.getMessage()]
    assert len(refusals) == 6
    assert all(record.exc_info is None for record in refusals), "its message says all there is"


async def test_the_first_refusal_is_a_warning_when_the_family_has_not_warned_yet(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The family's log budget is shared: one WARNING every few minutes, whichever failure comes first."""
    clock = ThreadBlindClock()
    async with hanging("quiet") as fetch:
        caplog.set_level(logging.WARNING, logger="asgi_refresh")
        family = RefresherFamily("quiet", fetch, every="2s", timeout="1s", max_keys=2)
        async with running(family, clock) as handle:
            await wave(handle, clock, "quiet", ["a", "b"])
            await clock.advance("10m")  # past the family's rate limit
            for key in ("c", "d", "e"):
                with pytest.raises(RefreshError):
                    await handle.get("quiet", key)
    refusals = [record for record in caplog.records if BLOCKED in record.getMessage()]
    assert len(refusals) == 1
    assert "Family 'quiet': key 'c' failed (1 in a row): SourceError: 2 fetches" in refusals[0].getMessage()


async def test_fetches_resume_as_the_blocked_threads_return() -> None:
    """One blocked thread returning lets one fetch start; all of them returning, the family is back."""
    clock = ThreadBlindClock()
    async with hanging("slow") as fetch:
        family = RefresherFamily("slow", fetch, every="2s", timeout="1s", backoff_initial="1s")
        async with running(family, clock) as handle:
            stuck = [f"s{i}" for i in range(MAX_BLOCKED_THREADS)]
            await wave(handle, clock, "slow", stuck)
            fetch.release("new", "next")
            with pytest.raises(RefreshError, match=BLOCKED):
                await handle.get("slow", "new")

            await fetch.finish(stuck[0])
            assert handle.status()["slow"]["family"]["blocked_threads"] == MAX_BLOCKED_THREADS - 1
            with anyio.fail_after(5):
                assert await handle.get("slow", "next") == "next!"

            await fetch.join()
            assert handle.status()["slow"]["family"]["blocked_threads"] == 0
            await clock.advance("1s")  # the failed key's backoff
            with anyio.fail_after(5):
                assert await handle.get("slow", "new") == "new!"
                assert await handle.get("slow", stuck[1]) == f"{stuck[1]}!"


async def test_warm_keys_keep_their_values_while_the_family_is_blocked() -> None:
    """Refreshes refused for blocked threads keep each warm key's last good value, served at once."""
    clock = ThreadBlindClock()
    async with hanging("rates") as fetch:
        family = RefresherFamily("rates", fetch, every="2s", timeout="1s", jitter=0, backoff_initial="1s")
        async with running(family, clock) as handle:
            fetch.release("EUR", "USD")
            with anyio.fail_after(5):
                assert await handle.get("rates", "EUR") == "EUR!"
                assert await handle.get("rates", "USD") == "USD!"
            await wave(handle, clock, "rates", [f"x{i}" for i in range(MAX_BLOCKED_THREADS)])
            threads = len(fetch.threads)

            await clock.advance("2s")  # EUR and USD fall due: their refreshes are refused
            with anyio.fail_after(1):  # real seconds: a warm key never waits
                assert await handle.get("rates", "EUR") == "EUR!"
                assert await handle.get("rates", "USD") == "USD!"
            summary = handle.status()["rates"]["family"]
            failing = {entry["key"]: entry["last_error"] for entry in summary["failing_keys"]}
            assert BLOCKED in (failing["'EUR'"] or "")
            assert BLOCKED in (failing["'USD'"] or "")
            assert summary["refreshes"] == 0
            assert len(fetch.threads) == threads

            await fetch.join()
            await clock.advance("2s")  # their retries, after the backoff: each starts a thread
            await fetch.join()  # the retries' threads, which return at once (started or not yet run)
            await anyio.wait_all_tasks_blocked()
            assert len(fetch.threads) == threads + 2
            summary = handle.status()["rates"]["family"]
            assert summary["refreshes"] == 2
            assert {entry["key"] for entry in summary["failing_keys"]} == {
                f"'x{i}'" for i in range(MAX_BLOCKED_THREADS)
            }
            assert await handle.get("rates", "EUR") == "EUR!"


async def test_a_burst_of_quick_plain_fetches_shares_the_familys_threads() -> None:
    """40 cold keys at once with a quick blocking fetch: all load, never more than the bound's threads at once."""
    running_now, most = 0, 0
    lock = threading.Lock()

    def load(key: str) -> str:
        nonlocal running_now, most
        with lock:
            running_now += 1
            most = max(most, running_now)
        threading.Event().wait(0.01)  # a quick blocking call
        with lock:
            running_now -= 1
        return key.upper()

    family = RefresherFamily("quick", load, every="1h", timeout="10s")
    async with running(family, FakeClock()) as handle:
        got: dict[str, str] = {}

        async def ask(key: str) -> None:
            got[key] = await handle.get("quick", key)

        with anyio.fail_after(20):
            async with anyio.create_task_group() as task_group:
                for i in range(40):
                    task_group.start_soon(ask, f"k{i}")
        assert got == {f"k{i}": f"K{i}" for i in range(40)}
        assert 1 < most <= MAX_BLOCKED_THREADS
        assert handle.status()["quick"]["family"]["failures"] == 0
