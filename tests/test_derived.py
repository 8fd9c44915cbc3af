"""Derived values: computed from their inputs and published in the same snapshot as them."""

from __future__ import annotations

import logging
import threading
import tomllib
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from asgi_refresh import (
    ConfigError,
    Derived,
    OptionError,
    Refresher,
    RefreshError,
    RefreshEvent,
    RefreshMiddleware,
    SQLiteCoordinator,
)
from asgi_refresh._config import load_config
from asgi_refresh._types import Receive, Scope, Send
from asgi_refresh.fastapi import Refreshed
from asgi_refresh.testing import FakeClock

from .helpers import START, FakeServer, ScriptedApp, published, runtime_of

pytestmark = pytest.mark.anyio


class Counter:
    """A fetch returning 1, 2, 3...: a new value at every refresh."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> int:
        self.calls += 1
        return self.calls


class Scripted:
    """A fetch returning the value the test sets (raising it, if it is an exception)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    async def __call__(self) -> Any:
        if isinstance(self.value, BaseException):
            raise self.value
        return self.value


def pair(a: int, b: int) -> dict[str, int]:
    return {"a": a, "b": b}


def anything(**inputs: Any) -> dict[str, Any]:
    return inputs


@asynccontextmanager
async def running(
    refreshers: list[Refresher], derived: list[Derived], *, clock: FakeClock | None = None, **options: Any
) -> AsyncIterator[RefreshMiddleware]:
    middleware = RefreshMiddleware(
        ScriptedApp(), refreshers=refreshers, derived=derived, clock=clock or FakeClock(START), **options
    )
    async with LifespanManager(middleware):
        yield middleware


# -- the same snapshot -------------------------------------------------------------------


class Reader:
    """An app whose handler reads the inputs and the derived value across awaits, checking they agree."""

    def __init__(self) -> None:
        self.requests = 0
        self.mismatches: list[str] = []
        self.seen: set[int] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await ScriptedApp().lifespan(scope, receive, send)
            return
        state = scope["state"]
        a = state["a"]
        await anyio.lowlevel.checkpoint()  # other tasks (refreshes) run between the reads
        b = state["b"]
        await anyio.lowlevel.checkpoint()
        both = state["both"]
        await anyio.lowlevel.checkpoint()
        total = state["total"]
        if both != {"a": a, "b": b} or total != a + b + 1000 * a:
            self.mismatches.append(f"a={a} b={b} both={both} total={total}")
        self.requests += 1
        self.seen.add(a)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def test_a_request_never_sees_inputs_and_derived_values_out_of_step(anyio_backend: str) -> None:
    """2,000 input changes under concurrent requests: every request sees inputs and derived values agree."""
    app = Reader()
    a, b = Counter(), Counter()

    async def both(a: int, b: int) -> dict[str, int]:
        return {"a": a, "b": b}  # async: a thread per compute would cost more than the rest of the test

    async def total(both: dict[str, int], a: int) -> int:
        await anyio.lowlevel.checkpoint()  # the compute awaits too: requests run meanwhile
        return both["a"] + both["b"] + 1000 * a

    middleware = RefreshMiddleware(
        app,
        refreshers=[Refresher("a", a, every="1h"), Refresher("b", b, every="1h")],
        derived=[Derived("both", both, inputs=["a", "b"]), Derived("total", total, inputs=["both", "a"])],
        clock=FakeClock(START),
    )
    changes = 2000
    async with LifespanManager(middleware):
        handle = middleware.handle
        transport = httpx.ASGITransport(app=middleware)
        done = anyio.Event()

        async def change() -> None:
            for number in range(changes):
                await handle.refresh("a" if number % 2 else "b")
            done.set()

        async def ask(client: httpx.AsyncClient) -> None:
            while not done.is_set():
                response = await client.get("/")
                assert response.status_code == 200

        async with (
            httpx.AsyncClient(transport=transport, base_url="http://test") as client,
            anyio.create_task_group() as group,
        ):
            group.start_soon(change)
            for _ in range(4):
                group.start_soon(ask, client)
        assert a.calls + b.calls == changes + 2
        assert handle.value("both") == {"a": a.calls, "b": b.calls}
    assert app.mismatches == []
    assert app.requests > 100, app.requests
    assert len(app.seen) > 50, "requests ran while the inputs changed"


async def test_the_derived_value_is_published_with_the_input_change_that_caused_it(
    anyio_backend: str,
) -> None:
    """The live state never holds the new input with the old derived value, even while the compute runs."""
    source = Scripted(1)
    release = anyio.Event()
    seen_during_compute: list[Any] = []
    computing = anyio.Event()

    async def double(x: int) -> int:
        if x == 2:
            seen_during_compute.append(dict(published(middleware)))
            computing.set()
            await release.wait()
        return x * 2

    async with running([Refresher("x", source, every="1h")], [Derived("double", double, inputs=["x"])]) as (
        middleware
    ):
        live = published(middleware)
        assert (live["x"], live["double"]) == (1, 2)
        source.value = 2
        async with anyio.create_task_group() as group:
            group.start_soon(middleware.handle.refresh, "x")
            await computing.wait()
            assert (live["x"], live["double"]) == (1, 2), "the input waits for its derived value"
            release.set()
        assert (live["x"], live["double"]) == (2, 4)
    assert (seen_during_compute[0]["x"], seen_during_compute[0]["double"]) == (1, 2)


# -- startup -------------------------------------------------------------------------------


async def test_a_derived_value_is_computed_at_startup_in_a_worker_thread(anyio_backend: str) -> None:
    """A plain def compute runs once its inputs load, in a thread of its own, before startup completes."""
    threads: list[str] = []

    def names_upper(names: list[str]) -> list[str]:
        threads.append(threading.current_thread().name)
        return [name.upper() for name in names]

    async with running(
        [Refresher("names", Scripted(["ada"]), every="1h")],
        [Derived("upper", names_upper, inputs=["names"])],
    ) as middleware:
        assert published(middleware)["upper"] == ["ADA"]
        assert middleware.handle.value("upper") == ["ADA"]
        assert await middleware.handle.wait_for("upper") == ["ADA"]
    assert threads == ["asgi_refresh:upper:compute"]


async def test_a_required_derived_value_whose_compute_fails_fails_startup(anyio_backend: str) -> None:
    """startup.failed names the derived value and what its compute raised."""

    def broken(x: int) -> int:
        raise ValueError("bad data")

    middleware = RefreshMiddleware(
        ScriptedApp(),
        refreshers=[Refresher("x", Scripted(1), every="1h")],
        derived=[Derived("y", broken, inputs=["x"])],
        clock=FakeClock(START),
    )
    server = FakeServer(middleware)
    async with anyio.create_task_group() as group:
        group.start_soon(server.startup, group)
        await server.finished.wait()
    assert server.sent == [
        {
            "type": "lifespan.startup.failed",
            "message": "Derived 'y' could not be computed: its compute failed: ValueError: bad data",
        }
    ]


async def test_an_optional_derived_value_serves_its_default_until_a_compute_succeeds(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """required=False: startup completes with the default published; the next input change computes it."""
    source = Scripted(0)

    def inverse(x: int) -> float:
        return 1 / x

    async with running(
        [Refresher("x", source, every="1h")],
        [Derived("inverse", inverse, inputs=["x"], required=False, default=-1.0)],
    ) as middleware:
        assert published(middleware)["inverse"] == -1.0
        assert middleware.handle.status()["inverse"]["origin"] == "default"
        source.value = 4
        await middleware.handle.refresh("x")
        assert published(middleware)["inverse"] == 0.25
    assert "Derived 'inverse' has no value yet (ZeroDivisionError: division by zero)" in caplog.text


async def test_a_derived_value_waits_for_an_optional_input_to_try_first(anyio_backend: str) -> None:
    """An optional input whose first fetch fails: computed once, from its default, not before it tried."""
    calls: list[Any] = []

    async def failing() -> int:
        raise OSError("down")

    def show(x: Any, y: int) -> str:
        calls.append((x, y))
        return f"{x}/{y}"

    async with running(
        [
            Refresher("x", failing, every="1h", required=False, default="none"),
            Refresher("y", Scripted(5), every="1h"),
        ],
        [Derived("shown", show, inputs=["x", "y"])],
    ) as middleware:
        assert published(middleware)["shown"] == "none/5"
    assert calls == [("none", 5)]


# -- failures ----------------------------------------------------------------------------


async def test_a_failing_compute_keeps_the_last_good_value_and_holds_nothing_back(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The input publishes; the derived value stays; status says it failed and is stale; a later change heals it."""
    source = Scripted(2)

    def half(x: int) -> int:
        if x % 2:
            raise ValueError(f"{x} is odd")
        return x // 2

    async with running(
        [Refresher("x", source, every="1h")], [Derived("half", half, inputs=["x"])]
    ) as middleware:
        handle = middleware.handle
        source.value = 3
        assert await handle.refresh("x") == 3
        live = published(middleware)
        assert (live["x"], live["half"]) == (3, 1)
        entry = handle.status()["half"]
        assert entry["source"] == "derived"
        assert entry["last_error"] == "ValueError: 3 is odd"
        assert entry["consecutive_failures"] == 1
        assert entry["stale"] is True
        assert entry["derived"] == {"inputs": ["x"], "inputs_moved_on": True}
        assert entry["refresh_count"] == 1
        assert handle.status()["x"]["last_error"] is None
        with pytest.raises(RefreshError, match=r"Derived 'half' failed: ValueError: 3 is odd"):
            await handle.refresh("half")
        source.value = 8
        await handle.refresh("x")
        assert (live["x"], live["half"]) == (8, 4)
        entry = handle.status()["half"]
        assert (entry["last_error"], entry["consecutive_failures"], entry["stale"]) == (None, 0, False)
        assert entry["origin"] == "computed"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "Derived 'half': compute failed (1 in a row): ValueError: 3 is odd; keeping the last good value, "
        "its inputs are published without it. It is computed again when an input changes, or by "
        "handle.refresh('half')"
    ]
    assert warnings[0].refresher == "half"  # type: ignore[attr-defined]


async def test_whatever_a_compute_raises_is_contained(anyio_backend: str) -> None:
    """KeyboardInterrupt and SystemExit from a compute are its failure; the worker and the input carry on."""
    source = Scripted(1)
    raised: list[BaseException] = [KeyboardInterrupt(), SystemExit(3)]

    async def nasty(x: int) -> int:
        if x > 1:
            raise raised[x - 2]
        return x

    async with running(
        [Refresher("x", source, every="1h")], [Derived("y", nasty, inputs=["x"])]
    ) as middleware:
        for value in (2, 3):
            source.value = value
            await middleware.handle.refresh("x")
            assert (published(middleware)["x"], published(middleware)["y"]) == (value, 1)
        assert middleware.handle.status()["y"]["consecutive_failures"] == 2


async def test_a_slow_compute_is_bounded_by_its_timeout_and_the_input_publishes(anyio_backend: str) -> None:
    """A compute past its timeout fails as a TimeoutError; the input is published after at most the timeout."""
    clock = FakeClock(START)
    source = Scripted(1)

    async def slow(x: int) -> int:
        if x > 1:
            await anyio.sleep_forever()
        return x

    async with running(
        [Refresher("x", source, every="1h")], [Derived("y", slow, inputs=["x"], timeout="5s")], clock=clock
    ) as middleware:
        source.value = 2
        async with anyio.create_task_group() as group:
            group.start_soon(middleware.handle.refresh, "x")
            await clock.advance(4.9)
            assert published(middleware)["x"] == 1, "held while its derived value may still come"
            await clock.advance(0.2)
        assert (published(middleware)["x"], published(middleware)["y"]) == (2, 1)
        assert middleware.handle.status()["y"]["last_error"] == "TimeoutError: compute timed out after 5s"


# -- the graph ---------------------------------------------------------------------------


async def test_derived_values_are_computed_in_dependency_order_in_one_snapshot(anyio_backend: str) -> None:
    """A diamond (x -> left, right -> bottom): each computed once per change, inputs first, all published together."""
    order: list[str] = []
    source = Scripted(1)
    snapshots: list[Any] = []

    def left(x: int) -> int:
        order.append("left")
        return x + 1

    def right(x: int) -> int:
        order.append("right")
        return x * 10

    def bottom(left: int, right: int, x: int) -> tuple[int, int, int]:
        order.append("bottom")
        return (x, left, right)

    derived = [
        Derived("bottom", bottom, inputs=["left", "right", "x"]),  # given before its inputs
        Derived("right", right, inputs=["x"]),
        Derived("left", left, inputs=["x"]),
    ]
    async with running([Refresher("x", source, every="1h")], derived) as middleware:
        assert published(middleware)["bottom"] == (1, 2, 10)
        assert order.index("bottom") == 2
        assert sorted(order[:2]) == ["left", "right"]
        order.clear()
        live = published(middleware)
        marker = live["asgi_refresh.snapshot"]
        source.value = 2
        await middleware.handle.refresh("x")
        snapshots.append(live["asgi_refresh.snapshot"])
        assert (live["x"], live["left"], live["right"], live["bottom"]) == (2, 3, 20, (2, 3, 20))
        assert sorted(order[:2]) == ["left", "right"]
        assert order[2:] == ["bottom"], "each computed once, its inputs first"
        assert snapshots[0] is not marker


async def test_an_unchanged_derived_value_does_not_recompute_what_derives_from_it(anyio_backend: str) -> None:
    """parity(x) stays the same: what is derived from parity is not computed again."""
    source = Scripted(2)
    calls: list[str] = []

    def parity(x: int) -> str:
        return "even" if x % 2 == 0 else "odd"

    def label(parity: str) -> str:
        calls.append(parity)
        return parity.upper()

    async with running(
        [Refresher("x", source, every="1h")],
        [Derived("parity", parity, inputs=["x"]), Derived("label", label, inputs=["parity"])],
    ) as middleware:
        source.value = 4
        await middleware.handle.refresh("x")
        assert published(middleware)["label"] == "EVEN"
    assert calls == ["even"]


def test_a_cycle_is_a_construction_error_naming_it() -> None:
    """A cycle a -> b -> c -> a: the message names the cycle and what to do."""
    with pytest.raises(ValueError, match="cycle") as caught:
        RefreshMiddleware(
            ScriptedApp(),
            refreshers=[Refresher("x", Scripted(1), every="1h")],
            derived=[
                Derived("a", anything, inputs=["b", "x"]),
                Derived("b", anything, inputs=["c", "x"]),
                Derived("c", anything, inputs=["a", "x"]),
            ],
        )
    assert str(caught.value) == (
        "Derived 'a': inputs form a cycle of derived values: a -> b -> c -> a (each is computed from the "
        "next, so none can be computed first); compute one of them from refreshers only"
    )
    assert isinstance(caught.value, OptionError)


def test_an_unknown_input_is_a_construction_error_naming_it() -> None:
    """A typo in inputs: the message names the unknown input, the known names and what to do."""
    with pytest.raises(ValueError, match="prizes") as caught:
        RefreshMiddleware(
            ScriptedApp(),
            refreshers=[
                Refresher("products", Scripted(1), every="1h"),
                Refresher("prices", Scripted(1), every="1h"),
            ],
            derived=[Derived("catalog", anything, inputs=["products", "prizes"])],
        )
    assert str(caught.value) == (
        "Derived 'catalog': inputs name 'prizes', but no refresher or derived value has that name "
        "(known: prices, products); add it to refreshers=[...] or derived=[...], or fix the name"
    )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"name": "1x", "compute": pair, "inputs": ["a"]}, "Derived name must be a Python identifier"),
        ({"name": "asgi_refresh", "compute": pair, "inputs": ["a"]}, "is reserved"),
        ({"name": "d", "compute": 3, "inputs": ["a"]}, "Derived 'd': compute must be callable"),
        ({"name": "d", "compute": pair, "inputs": "a"}, "inputs must be a list of names"),
        ({"name": "d", "compute": pair, "inputs": []}, "inputs must name at least one"),
        ({"name": "d", "compute": pair, "inputs": ["a", "a"]}, "inputs lists 'a' twice"),
        (
            {"name": "d", "compute": pair, "inputs": ["a", "c"]},
            r"compute\(a=..., c=...\), but it takes \(a, b\)",
        ),
        ({"name": "d", "compute": pair, "inputs": ["a", "b"], "timeout": -1}, "timeout"),
        (
            {"name": "d", "compute": pair, "inputs": ["a", "b"], "timeout": None},
            "not None: a compute without",
        ),
        (
            {"name": "d", "compute": pair, "inputs": ["a", "b"], "required": 1},
            "required must be True or False",
        ),
        ({"name": "d", "compute": pair, "inputs": ["a", "b"], "on_change": 1}, "on_change must be callable"),
    ],
)
def test_derived_checks_its_arguments(arguments: dict[str, Any], message: str) -> None:
    """Each mistake fails at construction with a message naming the derived value and the option."""
    with pytest.raises((TypeError, ValueError), match=message):
        Derived(**arguments)


def test_names_are_unique_across_refreshers_and_derived_values() -> None:
    """A derived value named like a refresher, or put in refreshers=[...], is refused with what to do."""
    x = Refresher("x", Scripted(1), every="1h")
    with pytest.raises(ValueError, match="Derived 'x': the name is used twice"):
        RefreshMiddleware(ScriptedApp(), refreshers=[x], derived=[Derived("x", lambda y: y, inputs=["y"])])
    with pytest.raises(TypeError, match=r"Derived 'y' goes in derived=\[...\], not in refreshers=\[...\]"):
        RefreshMiddleware(ScriptedApp(), refreshers=[x, Derived("y", lambda x: x, inputs=["x"])])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"wrap a single one in a list: derived=\[Derived\('y', ...\)\]"):
        RefreshMiddleware(ScriptedApp(), refreshers=[x], derived=Derived("y", lambda x: x, inputs=["x"]))  # type: ignore[arg-type]


# -- hooks and events --------------------------------------------------------------------


async def test_on_change_and_events_as_for_refreshers(anyio_backend: str) -> None:
    """on_change(old, new) once per published change; started/succeeded/changed/failed events name the derived value."""
    source = Scripted(1)
    changes: list[tuple[Any, Any]] = []
    errors: list[BaseException] = []
    events: list[RefreshEvent] = []

    def square(x: int) -> int:
        if x < 0:
            raise ValueError("negative")
        return x * x

    changed_twice = anyio.Event()

    async def on_change(old: Any, new: Any) -> None:
        changes.append((old, new))
        if len(changes) == 2:
            changed_twice.set()

    derived = Derived("sq", square, inputs=["x"], on_change=on_change, on_error=errors.append)
    async with running(
        [Refresher("x", source, every="1h")], [derived], listeners=[events.append]
    ) as middleware:
        for value in (-2, 2, -1):  # 2 and -2 give the same square: no change
            source.value = value
            await middleware.handle.refresh("x")
        await middleware.handle.refresh("x")  # unchanged input: nothing computed
        with anyio.fail_after(5):
            await changed_twice.wait()
    assert changes == [(None, 1), (1, 4)]
    assert [type(exc) for exc in errors] == [ValueError, ValueError]
    kinds = [event.kind for event in events if event.name == "sq"]
    assert kinds == [
        "started",
        "succeeded",
        "changed",  # startup: 1
        "started",
        "failed",  # -2
        "started",
        "succeeded",
        "changed",  # 2
        "started",
        "failed",  # -1
    ]
    failed = next(event for event in events if event.name == "sq" and event.kind == "failed")
    assert failed.error == "ValueError: negative"


# -- the handle ------------------------------------------------------------------------------


async def test_the_handle_computes_again_and_refuses_what_a_derived_value_cannot_do(
    anyio_backend: str,
) -> None:
    """refresh(derived) computes from the published inputs; pin/accept name it as derived."""
    calls: list[int] = []

    def counted(x: int) -> int:
        calls.append(x)
        return len(calls)

    async with running(
        [Refresher("x", Scripted(7), every="1h", keep_versions=2)], [Derived("n", counted, inputs=["x"])]
    ) as middleware:
        handle = middleware.handle
        assert await handle.refresh("n") == 2
        assert published(middleware)["n"] == 2
        assert calls == [7, 7]
        runtime_of(handle).refresh_soon("n")  # the admin endpoint's POST without ?wait
        with anyio.fail_after(5):
            await runtime_of(handle).publisher.until(lambda: len(calls) == 3)
        assert published(middleware)["n"] == 3
        with pytest.raises(LookupError, match="'n' is a derived value: it is computed, not fetched"):
            await handle.pin("n", "1")
        assert runtime_of(handle).unhealthy() == []


async def test_pin_and_rollback_of_an_input_compute_again(anyio_backend: str) -> None:
    """Pinning an input to an older version publishes the value derived from it with it."""
    source = Scripted(1)
    async with running(
        [Refresher("x", source, every="1h", keep_versions=3)],
        [Derived("twice", lambda x: 2 * x, inputs=["x"])],
    ) as middleware:
        handle = middleware.handle
        source.value = 2
        await handle.refresh("x")
        assert published(middleware)["twice"] == 4
        await handle.rollback("x")
        live = published(middleware)
        assert (live["x"], live["twice"]) == (1, 2)
        handle.unpin("x")  # the fetch it starts publishes 2 again
        assert await handle.refresh("x") == 2
        assert live["twice"] == 4


async def test_a_snapshot_an_input_starts_from_is_published_with_its_derived_value(tmp_path: Path) -> None:
    """The upstream is down at startup: the input's snapshot is published, and the value derived from it."""
    derived = [Derived("count", lambda names: len(names), inputs=["names"])]
    async with running(
        [Refresher("names", Scripted(["ada", "bob"]), every="1h")], derived, snapshot_dir=tmp_path
    ):
        pass

    down = Scripted(OSError("connection refused"))  # the same source: its snapshot is its own
    async with running([Refresher("names", down, every="1h")], derived, snapshot_dir=tmp_path) as middleware:
        live = published(middleware)
        assert (live["names"], live["count"]) == (["ada", "bob"], 2)
        assert middleware.handle.status()["names"]["origin"] == "snapshot"
        assert middleware.handle.status()["count"]["origin"] == "computed"


async def test_a_compute_that_returns_a_coroutine_from_a_plain_def_is_awaited(anyio_backend: str) -> None:
    """A plain def returning a coroutine (``lambda x: later(x)``): it is awaited, as for a fetch."""

    async def later(x: int) -> int:
        return x + 100

    async with running(
        [Refresher("x", Scripted(1), every="1h")], [Derived("y", lambda x: later(x), inputs=["x"])]
    ) as middleware:
        assert published(middleware)["y"] == 101


# -- with a coordinator ------------------------------------------------------------------


async def test_followers_compute_the_derived_value_from_adopted_inputs_in_the_same_snapshot(
    anyio_backend: str, tmp_path: Path
) -> None:
    """3 workers on one SQLite store: one fetch per interval; every worker computes and publishes with it."""
    clock = FakeClock(START)
    upstream = Counter()
    computed: list[int] = []

    def summary(n: int) -> dict[str, int]:
        computed.append(n)
        return {"n": n, "square": n * n}

    mismatches: list[str] = []
    stop = anyio.Event()

    def check(event: RefreshEvent | None = None) -> None:
        # No worker's live state holds a new n with an old summary.
        for index, middleware in enumerate(middlewares):
            live = middleware._live
            if (
                live is not None
                and "summary" in live
                and live["summary"] != {"n": live["n"], "square": live["n"] ** 2}
            ):
                mismatches.append(f"worker {index}: n={live['n']} summary={live['summary']} at {event}")

    middlewares = [
        RefreshMiddleware(
            ScriptedApp(),
            refreshers=[Refresher("n", upstream, every="1m", jitter=0, timeout="5s")],
            derived=[Derived("summary", summary, inputs=["n"])],
            clock=clock,
            coordinator=SQLiteCoordinator(tmp_path / "refresh.db", poll_interval=0.02),
            listeners=[check],  # at every fetch, adoption and compute of every worker
        )
        for _ in range(3)
    ]

    async def watch() -> None:
        # And between them, in real time (a busy loop would keep the fake clock from settling).
        while not stop.is_set():
            check()
            await anyio.sleep(0.0005)

    def values() -> list[tuple[int, dict[str, int]]]:
        return [(published(m)["n"], published(m)["summary"]) for m in middlewares]

    async with AsyncExitStack() as stack:
        for middleware in middlewares:
            await stack.enter_async_context(LifespanManager(middleware, startup_timeout=10))
        async with anyio.create_task_group() as group:
            group.start_soon(watch)
            await until(lambda: values() == [(1, {"n": 1, "square": 1})] * 3)
            for interval in range(2, 8):
                await clock.advance(60)
                expected = [(interval, {"n": interval, "square": interval**2})] * 3
                await until(lambda: values() == expected)  # noqa: B023 - called right here
            follower = next(
                m for m in middlewares if m.handle.status()["n"]["coordination"]["role"] == "follower"
            )
            assert await follower.handle.refresh("n") == 8
            assert published(follower)["summary"] == {"n": 8, "square": 64}, (
                "published with the adopted input"
            )
            await until(lambda: values() == [(8, {"n": 8, "square": 64})] * 3)
            stop.set()
        statuses = [m.handle.status()["summary"] for m in middlewares]
    assert upstream.calls == 8, "one fetch per interval for the cluster"
    assert sorted(computed) == sorted(list(range(1, 9)) * 3), "each worker computes each value once"
    assert mismatches == []
    assert all("coordination" not in entry for entry in statuses), "nothing of a derived value is stored"


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Wait (in real time: the store is polled in real time) until ``condition()``."""
    with anyio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110 - other workers' effects: nothing to wait on here
            await anyio.sleep(0.01)


# -- configuration -----------------------------------------------------------------------


def total_of(products: list[dict[str, Any]], prices: dict[str, float]) -> float:
    """A compute for the configuration tests (imported by its import string)."""
    return sum(prices[product["id"]] for product in products)


def whatever(**inputs: Any) -> dict[str, Any]:
    """A compute that takes any inputs (so that the graph is what a test checks)."""
    return inputs


async def load_products() -> list[dict[str, Any]]:
    return [{"id": "a"}, {"id": "b"}]


async def load_prices() -> dict[str, float]:
    return {"a": 1.5, "b": 2.0}


CONFIG_REFRESHERS = """
[refreshers.products]
source = "python"
target = "tests.test_derived:load_products"
every = "1h"

[refreshers.prices]
source = "python"
target = "tests.test_derived:load_prices"
every = "1h"
"""


async def test_derived_values_come_from_a_config_file(anyio_backend: str, tmp_path: Path) -> None:
    """[derived.<name>] with compute = "module:function" and inputs: built, run and published like in Python."""
    path = tmp_path / "refresh.toml"
    path.write_text(
        CONFIG_REFRESHERS
        + """
[derived.total]
compute = "tests.test_derived:total_of"
inputs = ["products", "prices"]
timeout = "2s"
required = false
default = 0
"""
    )
    middleware = RefreshMiddleware.from_config(ScriptedApp(), path, clock=FakeClock(START))
    assert middleware.derived == (
        Derived("total", total_of, inputs=["products", "prices"], timeout="2s", required=False, default=0),
    )
    async with LifespanManager(middleware):
        assert published(middleware)["total"] == 3.5
        assert middleware.handle.status()["total"]["derived"] == {
            "inputs": ["products", "prices"],
            "inputs_moved_on": False,
        }


@pytest.mark.parametrize(
    ("derived", "problems"),
    [
        (
            '[derived.total]\ncompute = "tests.test_derived:whatever"\ninputs = ["products", "prizes"]',
            [
                "derived.total.inputs: name 'prizes', but no refresher or derived value has that name "
                "(known: prices, products); add it to a [refreshers.<name>] or [derived.<name>] table, "
                "or fix the name"
            ],
        ),
        (
            '[derived.a]\ncompute = "tests.test_derived:whatever"\ninputs = ["b"]\n'
            '[derived.b]\ncompute = "tests.test_derived:whatever"\ninputs = ["a", "prices"]',
            [
                "derived.a.inputs: form a cycle of derived values: a -> b -> a (each is computed from the "
                "next, so none can be computed first); compute one of them from refreshers only"
            ],
        ),
        (
            '[derived.total]\ncompute = "tests.test_derived:nothing"\nevery = "1h"',
            [
                "derived.total.compute: 'tests.test_derived' has no attribute 'nothing' "
                "(in 'tests.test_derived:nothing')",
                "derived.total.every: unknown key; known keys: compute, default, inputs, on_change, on_error, "
                "required, timeout",
                'derived.total.inputs: missing: add inputs = ["products", "prices"]',
            ],
        ),
        (
            '[derived.total]\ninputs = "products"',
            [
                'derived.total.inputs: expected a list of names like ["products", "prices"], got "products"',
                'derived.total.compute: missing: add compute = "myapp.catalog:build"',
            ],
        ),
        (
            '[derived.prices]\ncompute = "tests.test_derived:whatever"\ninputs = ["products"]',
            [
                "derived.prices: the name is used twice, by [refreshers.prices] and by [derived.prices]; "
                "names must be unique across [refreshers], [families] and [derived]"
            ],
        ),
        (
            '[derived.total]\ncompute = "tests.test_derived:total_of"\ninputs = ["products"]',
            [
                "derived.total.compute: is called as compute(products=...), but it takes (products, "
                "prices); name its parameters after the inputs, or take **inputs"
            ],
        ),
        ("[derived]\n1x = {}", ["derived.1x: Derived name must be a Python identifier"]),
    ],
)
def test_config_problems_with_derived_values_are_clear(derived: str, problems: list[str]) -> None:
    """Each mistake in a [derived.<name>] table is reported at its key, saying what to do."""
    with pytest.raises(ConfigError) as caught:
        load_config(tomllib.loads(CONFIG_REFRESHERS + derived), middleware=RefreshMiddleware)
    found = caught.value.problems
    assert len(found) == len(problems), found
    for line, expected in zip(found, problems, strict=True):
        assert line.startswith(expected), (line, expected)


# -- FastAPI -----------------------------------------------------------------------------


async def test_fastapi_reads_a_derived_value_like_a_refresher_value(anyio_backend: str) -> None:
    """Annotated[T, Refreshed("name")] works for a derived value: the one published for this request."""
    api = FastAPI()

    @api.get("/total")
    async def total(
        value: Annotated[float, Refreshed("total")], prices: Annotated[dict[str, float], Refreshed("prices")]
    ) -> dict[str, Any]:
        return {"total": value, "prices": prices}

    source = Scripted({"a": 1.5, "b": 2.0})
    app = RefreshMiddleware(
        api,
        refreshers=[
            Refresher("products", load_products, every="1h"),
            Refresher("prices", source, every="1h"),
        ],
        derived=[Derived("total", total_of, inputs=["products", "prices"])],
        clock=FakeClock(START),
    )
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client,
    ):
        assert (await client.get("/total")).json() == {"total": 3.5, "prices": {"a": 1.5, "b": 2.0}}
        source.value = {"a": 10.0, "b": 20.0}
        await app.handle.refresh("prices")
        assert (await client.get("/total")).json() == {"total": 30.0, "prices": {"a": 10.0, "b": 20.0}}


# -- review findings -----------------------------------------------------------------------


async def test_refresh_after_one_failed_compute_returns_when_the_compute_succeeds(anyio_backend: str) -> None:
    """One failure, then handle.refresh: the good compute answers it (successes + failures kept the same sum)."""
    source = Scripted(2)
    failing = [True]

    def half(x: int) -> int:
        if failing[0] and x % 2:
            raise ValueError(f"{x} is odd")
        return x // 2

    async with running(
        [Refresher("x", source, every="1h")], [Derived("half", half, inputs=["x"])]
    ) as middleware:
        handle = middleware.handle
        source.value = 3
        await handle.refresh("x")
        assert handle.status()["half"]["consecutive_failures"] == 1
        failing[0] = False
        with anyio.fail_after(10):
            assert await handle.refresh("half") == 1
        assert handle.status()["half"]["consecutive_failures"] == 0


async def test_a_value_held_during_a_round_is_not_computed_from_before_it_is_published(
    anyio_backend: str,
) -> None:
    """An input changing while a round computes waits for the next round: no derived value runs ahead of it."""
    y_fetched = anyio.Event()
    y_source = Scripted(10)
    handle_box: list[Any] = []

    async def first(x: int) -> int:
        if x == 2:  # while this round computes, y gets a new value (held for the next round)
            y_source.value = 20
            runtime_of(handle_box[0]).refresh_soon("y")
            await y_fetched.wait()
            await anyio.wait_all_tasks_blocked()
        return x

    class CountingY:
        async def __call__(self) -> int:
            value = await y_source()
            if value == 20:
                y_fetched.set()
            return int(value)

    x_source = Scripted(1)
    async with running(
        [Refresher("x", x_source, every="1h"), Refresher("y", CountingY(), every="1h")],
        [
            Derived("d1", first, inputs=["x"]),
            Derived("d2", lambda d1, y: {"d1": d1, "y": y}, inputs=["d1", "y"]),
        ],
    ) as middleware:
        handle_box.append(middleware.handle)
        x_source.value = 2
        with anyio.fail_after(10):
            await middleware.handle.refresh("x")
            live = published(middleware)
            assert live["d2"] == {"d1": live["d1"], "y": live["y"]}
            await middleware.handle.refresh("y")  # y's own round: d2 follows it
        live = published(middleware)
        assert (live["y"], live["d2"]) == (20, {"d1": 2, "y": 20})
