"""Test doubles: a scriptable ASGI server and a scriptable wrapped app."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Literal, cast

import anyio
from anyio.abc import TaskGroup
from asgi_lifespan import LifespanManager

from asgi_refresh import JSONCodec, Refresher, RefreshHandle, RefreshMiddleware
from asgi_refresh._cluster.base import MetaValue
from asgi_refresh._fingerprint import fingerprint
from asgi_refresh._runtime import Runtime
from asgi_refresh._sources.function import source_for
from asgi_refresh._types import ASGIApp, Message, Receive, Scope, Send
from asgi_refresh.testing import FakeClock

START = datetime(2030, 1, 1, tzinfo=UTC)

StateMode = Literal["copy", "none", "startup_copy", "shared"]


class FakeServer:
    """Plays the server side of ASGI, recording every lifespan message the app sends.

    ``state`` says how the server treats lifespan state, like the real ones do:
    ``copy`` (uvicorn, hypercorn/asyncio: a copy per request), ``none`` (no state at
    all, daphne-like), ``startup_copy`` (one copy taken at startup and handed to
    every request, as older hypercorn trio workers did) and ``shared`` (the lifespan dict
    itself in every request).
    """

    def __init__(self, app: ASGIApp, state: StateMode = "copy") -> None:
        self.app = app
        self.mode = state
        self.state: dict[str, Any] = {}
        self.sent: list[Message] = []
        self._startup_copy: dict[str, Any] | None = None
        self._reply = anyio.Event()
        self.finished = anyio.Event()
        self.error: BaseException | None = None

    async def run_lifespan(self) -> None:
        scope: dict[str, Any] = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.3"}}
        if self.mode != "none":
            scope["state"] = self.state
        self.scope = scope
        try:
            await self.app(scope, self._inbox.receive, self._send)
        except Exception as exc:
            self.error = exc
        finally:
            self._to_app.close()
            self._inbox.close()
            self.finished.set()
            self._reply.set()

    async def _send(self, message: Message) -> None:
        self.sent.append(dict(message))
        self._reply.set()

    async def _exchange(self, event: str) -> Message | None:
        self._reply = anyio.Event()
        count = len(self.sent)
        await self._to_app.send({"type": event})
        await self._reply.wait()
        return self.sent[count] if len(self.sent) > count else None

    async def startup(self, task_group: TaskGroup) -> Message | None:
        self._to_app, self._inbox = anyio.create_memory_object_stream[Message](2)
        task_group.start_soon(self.run_lifespan)
        reply = await self._exchange("lifespan.startup")
        self._startup_copy = dict(self.state)
        return reply

    async def shutdown(self) -> Message | None:
        reply = await self._exchange("lifespan.shutdown")
        await self.finished.wait()
        return reply

    def request_scope(self, path: str = "/") -> dict[str, Any]:
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [],
            "client": ("127.0.0.1", 1234),
            "server": ("127.0.0.1", 80),
        }
        if self.mode == "copy":
            scope["state"] = dict(self.state)
        elif self.mode == "startup_copy":
            assert self._startup_copy is not None
            scope["state"] = self._startup_copy
        elif self.mode == "shared":
            scope["state"] = self.state
        return scope

    async def request(self, path: str = "/") -> list[Message]:
        """Send one GET through the app and return what it sent back."""
        replies: list[Message] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            replies.append(message)

        await self.app(self.request_scope(path), receive, send)
        return replies


Behaviour = Literal[
    "complete",
    "fail_startup",
    "raise_before_receive",
    "return_before_receive",
    "raise_after_receive",
    "fail_shutdown",
    "raise_in_shutdown",
]


class ScriptedApp:
    """A wrapped ASGI app whose lifespan does what the test asks and records what it saw."""

    def __init__(self, behaviour: Behaviour = "complete") -> None:
        self.behaviour = behaviour
        self.events: list[str] = []
        self.startup_state: dict[str, Any] | None = None
        self.request_states: list[dict[str, Any]] = []
        self.on_startup: Callable[[Scope], None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(scope, receive, send)
            return
        state = scope.get("state", {})
        self.request_states.append(state)
        body = repr({k: v for k, v in state.items() if not k.startswith("asgi_refresh")}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    async def lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        behaviour = self.behaviour
        if behaviour == "raise_before_receive":
            raise AssertionError("this app only speaks http")
        if behaviour == "return_before_receive":
            return
        message = await receive()
        self.events.append(message["type"])
        self.startup_state = dict(scope.get("state", {}))
        if self.on_startup is not None:
            self.on_startup(scope)
        if behaviour == "raise_after_receive":
            raise RuntimeError("database is down")
        if behaviour == "fail_startup":
            await send({"type": "lifespan.startup.failed", "message": "app says no"})
            return
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        self.events.append(message["type"])
        if behaviour == "raise_in_shutdown":
            raise RuntimeError("could not close pool")
        if behaviour == "fail_shutdown":
            await send({"type": "lifespan.shutdown.failed", "message": "app could not shut down"})
            return
        await send({"type": "lifespan.shutdown.complete"})


class Upstream:
    """A fetch whose results the test scripts: values to return, or exceptions to raise."""

    def __init__(self, *results: Any) -> None:
        self.results = list(results)
        self.calls = 0
        self.call_times: list[float] = []
        self.clock: Any = None

    async def __call__(self) -> Any:
        self.calls += 1
        if self.clock is not None:
            self.call_times.append(self.clock.monotonic())
        result = self.results[min(self.calls, len(self.results)) - 1] if self.results else self.calls
        if isinstance(result, BaseException):
            raise result
        if callable(result):
            return await result()
        return result


async def hang() -> Any:
    """A fetch that never finishes on its own."""
    await anyio.sleep(math.inf)


def published(middleware: Any) -> dict[str, Any]:
    """The state dict the running lifespan publishes into (what new requests copy)."""
    live: dict[str, Any] | None = middleware._live
    assert live is not None, "no lifespan is running"
    return live


@asynccontextmanager
async def running(*refreshers: Refresher, clock: FakeClock | None = None) -> AsyncIterator[RefreshHandle]:
    """Run the refreshers in a lifespan driven by asgi-lifespan; yield the handle."""
    clock = clock or FakeClock(START)
    middleware = RefreshMiddleware(ScriptedApp(), refreshers=list(refreshers), clock=clock)
    async with LifespanManager(middleware):
        yield middleware.handle


async def startup_failure(
    *refreshers: Refresher, startup_timeout: str = "10s", start: datetime = START, **options: Any
) -> str:
    """Start a lifespan (the middleware given ``options``) whose startup must fail; return the startup.failed message."""
    clock = FakeClock(start)
    middleware = RefreshMiddleware(
        ScriptedApp(), refreshers=list(refreshers), clock=clock, startup_timeout=startup_timeout, **options
    )
    server = FakeServer(middleware)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.startup, tg)
        await clock.advance(startup_timeout)
        await server.finished.wait()
    assert [message["type"] for message in server.sent] == ["lifespan.startup.failed"], server.sent
    message: str = server.sent[0]["message"]
    return message


def runtime_of(handle: RefreshHandle) -> Runtime:
    """The runtime behind a handle, for tests that look at its insides."""
    return cast(Runtime, handle._runtime)


@asynccontextmanager
async def lifespan(
    *refreshers: Refresher, clock: FakeClock | None = None, **options: Any
) -> AsyncIterator[RefreshMiddleware]:
    """Run the refreshers in a middleware given ``options``; yield the middleware."""
    middleware = RefreshMiddleware(
        ScriptedApp(), refreshers=list(refreshers), clock=clock or FakeClock(START), **options
    )
    async with LifespanManager(middleware):
        yield middleware


async def written(middleware: RefreshMiddleware) -> None:
    """Wait until the snapshots queued so far are on disk."""
    keeper = runtime_of(middleware.handle).keeper
    assert keeper is not None
    assert keeper.writer is not None
    await keeper.writer.flush()


class Counting:
    """A fetch that returns how many times it was called (a new, larger value every time)."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> dict[str, int]:
        self.calls += 1
        return {"version": self.calls}


def meta_of(refresher: Refresher, **more: MetaValue) -> dict[str, MetaValue]:
    """What a process of the app running ``refresher`` stores with a value it fetched just now."""
    now = time.time()  # the SQLite backend's clock is this host's
    return {
        "source": fingerprint(source_for(refresher.fetch, refresher.name), JSONCodec()),
        "fetched_at": now,
        "started": now,
        "error": 0.0,
        **more,
    }
