"""The wrapped app behaves exactly as without the middleware, faults included (issue 12, items 1-3)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette
from starlette.testclient import TestClient

from asgi_refresh import Refresher, RefreshError, RefreshMiddleware
from asgi_refresh._types import Receive, Scope, Send
from asgi_refresh.testing import FakeClock

from .helpers import FakeServer, Upstream

pytestmark = pytest.mark.anyio


class BootError(Exception):
    pass


class BodyError(Exception):
    pass


class CleanupError(Exception):
    pass


def booting_app() -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        raise BootError("database unreachable")
        yield  # pragma: no cover

    return Starlette(lifespan=lifespan)


def wrapped(app: Any, *refreshers: Refresher, **options: Any) -> RefreshMiddleware:
    return RefreshMiddleware(app, refreshers=list(refreshers), **options)


def both(make_app: Callable[[], Any]) -> list[Any]:
    """The app bare, and wrapped with zero and with one refresher."""
    return [
        make_app(),
        wrapped(make_app()),
        wrapped(make_app(), Refresher("names", Upstream(["ada"]), every="1h")),
    ]


def test_testclient_gets_the_apps_own_startup_exception() -> None:
    """Starlette's lifespan raising BootError reaches TestClient as BootError, wrapped or not."""
    for app in both(booting_app):
        with pytest.raises(BootError, match="database unreachable") as caught, TestClient(app):
            pass  # pragma: no cover
        assert caught.value.__cause__ is None


async def test_lifespan_manager_gets_the_apps_own_startup_exception() -> None:
    """asgi-lifespan sees the app's BootError (the same exception object), wrapped or not."""
    for app in both(booting_app):
        with anyio.fail_after(5):
            try:
                async with LifespanManager(app):
                    pass  # pragma: no cover
            except* BootError as group:
                [error] = group.exceptions
        assert str(error) == "database unreachable"


async def test_the_server_hears_startup_failed_then_the_same_exception_object() -> None:
    """After startup.failed (Starlette's traceback text), the app's own exception object is raised."""
    raised: list[BaseException] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "Traceback: BootError"})
        raised.append(BootError("boot"))
        raise raised[0]

    server = FakeServer(wrapped(app, Refresher("names", Upstream(["ada"]), every="1h"), clock=FakeClock()))
    async with anyio.create_task_group() as tg:
        await server.startup(tg)
        await server.finished.wait()
    assert server.sent == [{"type": "lifespan.startup.failed", "message": "Traceback: BootError"}]
    assert server.error is raised[0]


async def test_an_app_that_reports_failure_without_raising_raises_nothing() -> None:
    """startup.failed sent, then a plain return: the server gets the message and no exception."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no"})

    server = FakeServer(wrapped(app, Refresher("names", Upstream(["ada"]), every="1h"), clock=FakeClock()))
    async with anyio.create_task_group() as tg:
        await server.startup(tg)
        await server.finished.wait()
    assert server.sent == [{"type": "lifespan.startup.failed", "message": "no"}]
    assert server.error is None


def test_a_refreshers_startup_failure_is_a_refresh_error_chaining_its_cause() -> None:
    """A required refresher that cannot load: RefreshError (a RuntimeError) from the fetch's exception."""

    async def unreachable() -> list[str]:
        raise ConnectionError("upstream down")

    app = wrapped(Starlette(), Refresher("names", unreachable, every="1h"), startup_timeout="0.1s")
    with pytest.raises(RefreshError) as caught, TestClient(app):
        pass  # pragma: no cover
    assert isinstance(caught.value, RuntimeError), "what users caught before still catches it"
    assert caught.value.name == "names"
    assert str(caught.value).startswith("Refresher 'names' could not load within startup_timeout (100ms)")
    assert isinstance(caught.value.__cause__, ConnectionError)


def test_the_apps_shutdown_exception_reaches_the_test_client_unchanged() -> None:
    """An app whose lifespan raises at shutdown: TestClient raises that exception, wrapped or not."""

    def make() -> Starlette:
        @asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            yield
            raise CleanupError("pool would not close")

        return Starlette(lifespan=lifespan)

    for app in both(make):
        with pytest.raises(CleanupError, match="pool would not close"), TestClient(app):
            pass


def cleanup_failing_app() -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "lifespan"
        await receive()
        await send({"type": "lifespan.startup.complete"})
        try:
            await receive()
        finally:
            raise CleanupError("cleanup failed")

    return app


def reporting_cleanup_failing_app() -> Any:
    """As Starlette's router: a failing cleanup is reported as shutdown.failed, then re-raised."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})
        try:
            try:
                await receive()
            finally:
                raise CleanupError("cleanup failed")
        except BaseException:
            await send({"type": "lifespan.shutdown.failed", "message": "Traceback: CleanupError"})
            raise

    return app


def shape(exc: BaseException) -> Any:
    """An exception tree by types: groups with their members, leaves with their context's type."""
    if isinstance(exc, BaseExceptionGroup):
        return (type(exc).__name__, [shape(member) for member in exc.exceptions])
    context = exc.__cause__ or exc.__context__
    return (type(exc).__name__, None if context is None else type(context).__name__)


async def outcome_of_body_error(app: Any) -> Any:
    """The shape of what comes out of a LifespanManager whose body raises BodyError."""
    try:
        async with LifespanManager(app):
            raise BodyError("body")
    except BaseException as exc:
        return shape(exc)
    raise AssertionError("nothing was raised")  # pragma: no cover


async def test_an_error_raised_while_the_app_is_cancelled_comes_out_as_without_us(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A `finally:` raising CleanupError while the lifespan is cancelled is not swallowed or logged."""
    for make_app in (cleanup_failing_app, reporting_cleanup_failing_app):
        bare = await outcome_of_body_error(make_app())
        assert "CleanupError" in repr(bare)
        for app in both(make_app)[1:]:
            with anyio.fail_after(5):
                assert await outcome_of_body_error(app) == bare
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], "raised, so not logged too"


@pytest.mark.parametrize(
    "reply",
    [
        {"type": "http.response.start", "status": 200, "headers": []},
        {"type": "websocket.close"},
    ],
)
async def test_an_app_that_ignores_the_scope_type_is_run_without_lifespan(
    reply: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """An app answering lifespan.startup with a non-lifespan message: startup completes, refreshers run."""
    calls: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append(scope["type"])
        await send(reply)
        await send({"type": "http.response.body", "body": b"hello"})

    names = Upstream("v1", "v2")
    clock = FakeClock()
    middleware = wrapped(app, Refresher("names", names, every="1m", jitter=0), clock=clock)
    server = FakeServer(middleware)
    with caplog.at_level(logging.INFO, logger="asgi_refresh"):
        async with anyio.create_task_group() as tg:
            assert await server.startup(tg) == {"type": "lifespan.startup.complete"}
            await clock.advance("1m")
            assert server.state["names"] == "v2", "refreshers keep running"
            assert await server.shutdown() == {"type": "lifespan.shutdown.complete"}
    assert calls == ["lifespan"]
    assert f"it answered lifespan.startup with {reply['type']!r}" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_an_app_that_answers_startup_with_a_wrong_lifespan_message_fails_startup() -> None:
    """A lifespan message that is not a reply to startup is a protocol error, not 'unsupported'."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "lifespan.shutdown.complete"})

    server = FakeServer(wrapped(app, clock=FakeClock()))
    async with anyio.create_task_group() as tg:
        await server.startup(tg)
        await server.finished.wait()
    assert server.sent == [
        {
            "type": "lifespan.startup.failed",
            "message": "the wrapped app sent 'lifespan.shutdown.complete' in reply to lifespan.startup",
        }
    ]


async def test_the_app_gets_the_servers_own_lifespan_scope() -> None:
    """The lifespan scope reaches the app as the very dict the server passed (state added if missing)."""
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})

    for mode in ("copy", "none"):
        server = FakeServer(wrapped(app, clock=FakeClock()), state=mode)
        async with anyio.create_task_group() as tg:
            await server.startup(tg)
            await server.shutdown()
        assert seen[-1] is server.scope
        assert "state" in seen[-1]


async def test_an_app_that_reads_startup_and_returns_runs_without_lifespan(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Reading lifespan.startup and returning without a reply: treated as no lifespan, as uvicorn does."""

    async def silent(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()

    clock = FakeClock()
    middleware = wrapped(silent, Refresher("names", Upstream("v1", "v2"), every="1m", jitter=0), clock=clock)
    with caplog.at_level(logging.INFO, logger="asgi_refresh"), anyio.fail_after(5):
        async with LifespanManager(middleware):
            await clock.advance("1m")
            assert middleware.handle.value("names") == "v2"
    assert "it returned after reading lifespan.startup without answering" in caplog.text
