"""Sources as async context managers: opened at startup, closed at shutdown, woken by changes."""

from __future__ import annotations

from types import TracebackType

import anyio
import anyio.lowlevel
import pytest

from asgi_refresh import Refresher
from asgi_refresh._sources.context import SourceContext
from asgi_refresh.testing import FakeClock, override

from .helpers import START, running, startup_failure

pytestmark = pytest.mark.anyio


class RecordingSource:
    """A source that records its lifecycle and can be told to fail when closing."""

    def __init__(self, *, fail_on_exit: bool = False, fail_on_enter: bool = False) -> None:
        self.events: list[str] = []
        self.fail_on_exit = fail_on_exit
        self.fail_on_enter = fail_on_enter
        self.context: SourceContext | None = None
        self.release = anyio.Event()
        self.block = False

    async def __aenter__(self) -> RecordingSource:
        if self.fail_on_enter:
            raise ConnectionError("cannot open")
        self.context = SourceContext.current("recording")
        self.events.append("enter")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.events.append("exit")
        if self.fail_on_exit:
            raise OSError("cannot close")

    async def __call__(self) -> int:
        self.events.append("fetch")
        if self.block:
            await self.release.wait()
        return self.events.count("fetch")


async def test_a_source_is_opened_before_its_first_fetch_and_closed_after_its_last() -> None:
    """enter, fetches, exit: the source lives exactly as long as the lifespan."""
    source = RecordingSource()
    async with running(Refresher("n", source, every="1h")) as handle:
        await handle.refresh("n")
    assert source.events == ["enter", "fetch", "fetch", "exit"]


async def test_a_source_that_fails_to_close_is_logged_and_shutdown_completes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An error while closing is logged with its traceback; shutdown still completes."""
    source = RecordingSource(fail_on_exit=True)
    async with running(Refresher("n", source, every="1h")):
        pass
    assert "closing the source of 'n' failed; ignored at shutdown" in caplog.text
    assert "OSError: cannot close" in caplog.text


async def test_a_source_that_cannot_open_is_a_failed_load() -> None:
    """Opening is part of the first fetch: a required refresher fails startup naming it."""
    source = RecordingSource(fail_on_enter=True)
    message = await startup_failure(Refresher("n", source, every="1h"))
    assert message.startswith("Refresher 'n' could not load within startup_timeout (10s): ")
    assert message.endswith("SourceError: could not open its source: ConnectionError: cannot open")


async def test_a_source_that_cannot_open_yet_is_retried() -> None:
    """Not required: the default is served, the open is retried with backoff, and then it loads."""
    clock = FakeClock(START)
    source = RecordingSource(fail_on_enter=True)
    refresher = Refresher("n", source, every="1h", required=False, default=0, backoff_initial="1s", jitter=0)
    async with running(refresher, clock=clock) as handle:
        assert handle.value("n") == 0
        assert (
            handle.status()["n"]["last_error"]
            == "SourceError: could not open its source: ConnectionError: cannot open"
        )
        source.fail_on_enter = False
        await clock.advance("1s")
        assert handle.value("n") == 1
    assert source.events == ["enter", "fetch", "exit"]


async def test_a_change_signalled_during_a_fetch_triggers_another_fetch() -> None:
    """refresh_soon() while a fetch runs means that fetch may be stale: one more follows at once."""
    clock = FakeClock(START)
    source = RecordingSource()
    async with running(Refresher("n", source, every="1h"), clock=clock) as handle:
        assert source.context is not None
        source.block = True
        async with anyio.create_task_group() as tg:
            tg.start_soon(handle.refresh, "n")
            await clock.advance(0)
            source.context.refresh_soon()  # the file changed while we were reading it
            source.block = False
            source.release.set()
        await clock.advance(0)
        assert source.events.count("fetch") == 3
        source.context.refresh_soon()  # idle: fetches at once
        await clock.advance(0)
        assert source.events.count("fetch") == 4
        override(handle, "n", "pinned")
        source.context.refresh_soon()  # overridden: ignored
        await clock.advance("1h")
        assert source.events.count("fetch") == 4
        assert handle.value("n") == "pinned"


def test_a_standalone_context_uses_the_system_clock() -> None:
    """Outside a middleware, a source gets the system clock and no background tasks."""
    context = SourceContext.current("by hand")
    assert context.standalone
    assert context.start_soon(lambda: anyio.lowlevel.checkpoint()) is False
    context.refresh_soon()  # nothing to wake: a no-op
    assert isinstance(context.clock.monotonic(), float)
