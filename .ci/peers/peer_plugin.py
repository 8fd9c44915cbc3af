"""pytest plugin: run another project's own test suite with every ASGI app wrapped.

Loaded from outside the peer suite, with no edit to its files::

    PYTHONPATH=.ci/peers python -m pytest -p peer_plugin --peer-wrap=two --peer-outcomes=out.json

How every app under test is reached, once. A test suite runs an app through a
client or a lifespan driver, or calls it itself, never through a server:

- ``starlette.testclient.TestClient``: after its own ``__init__``, which adapts an
  ASGI2 app to ASGI3 first (wrapping before would hide an ASGI2 app from that
  check), both places that hold the app are swapped: ``client.app``, which runs the
  lifespan, and the transport's ``app``, which runs requests and websockets. One
  middleware instance serves both, as one server would.
- ``httpx.ASGITransport`` and ``httpx2.ASGITransport`` (``AsyncClient(app=...)``
  builds one too): their ``__init__`` gets the wrapped app.
- ``asgi_lifespan.LifespanManager``: its ``__init__`` gets the wrapped app. Its
  ``manager.app`` (its state shim around that, which tests then hand to
  ``ASGITransport``) contains our wrapper already, so it is remembered and not
  wrapped a second time.
- A test that calls an app itself (``await app(scope, receive, send)`` with a scope
  and channels of its own) is the server: every ASGI class of Starlette (any class in
  a ``starlette.*`` module whose ``async __call__`` takes ``scope, receive, send``:
  the app, routers, routes, responses, middleware) gets a ``__call__`` that, when no
  wrapper is running in the current context (a context variable set by ours), runs
  the call through a new middleware instead. Inside a wrapper (the router under the
  app, a response under a route) calls go straight through, so only the outermost
  app is wrapped. The classes are patched before each test, once their module is
  imported, so the plugin imports nothing that the suite would not.

Entry points patch the class (not a name in a module), so names imported before the
patch are covered too. An app that is a ``RefreshMiddleware`` already is never wrapped
again. Not reached: a plain function app that a test calls itself. The outcome file
counts, per test, the apps wrapped.

Modes (``--peer-wrap``): ``baseline`` patches nothing (the plugin only records
outcomes, so all three runs load the same code), ``zero`` wraps with no refreshers,
``two`` wraps with two refreshers that refresh every 50 ms, one ``async`` and one
plain (run in a worker thread), each returning a counter.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import json
import math
import re
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import pytest

MODES = ("baseline", "zero", "two")
EVERY = 0.05  # seconds between refreshes in mode "two"

_wrapped_in_test = 0  # apps wrapped while the current test ran
_reached: weakref.WeakSet[Any] = weakref.WeakSet()  # apps that contain a wrapper already
_outcomes: dict[str, dict[str, Any]] = {}
_fetches = {"async": 0, "sync": 0}  # done in mode "two": proof that the refreshers ran
_fetches_lock = threading.Lock()  # the sync fetches run in worker threads
_inside_wrapper: ContextVar[bool] = ContextVar("peer_inside_wrapper", default=False)
_scanned: set[str] = set()  # modules whose ASGI classes are patched (or have none)
_wrap_app: Callable[[Any], Any] | None = None  # set in the wrapped modes


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add the plugin's options."""
    group = parser.getgroup("peer", "asgi_refresh peer suites")
    group.addoption("--peer-wrap", choices=MODES, default="baseline", help="how to wrap every app")
    group.addoption("--peer-outcomes", default=None, help="write each test's outcome to this JSON file")
    group.addoption(
        "--peer-trio-loose-groups",
        action="store_true",
        help="run pytest-trio tests with strict_exception_groups=False (the trio semantics of "
        "suites written for trio < 0.25)",
    )
    group.addoption(
        "--peer-trio-deadline",
        type=float,
        default=None,
        help="cancel a pytest-trio test still running after this many seconds (it fails with "
        "trio.TooSlowError); unlike pytest-timeout's signal, this leaves trio able to run the next test",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Patch the entry points that run apps, as the mode asks."""
    global _wrap_app
    mode = config.getoption("--peer-wrap")
    if config.getoption("--peer-trio-loose-groups"):
        loose = re.escape("trio.run(..., strict_exception_groups=False)")
        config.addinivalue_line("filterwarnings", f"ignore:{loose}:trio.TrioDeprecationWarning")
    if mode != "baseline":
        _wrap_app = functools.partial(_wrap, refreshers=_refreshers if mode == "two" else tuple)
        _patch_entry_points(_wrap_app)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give pytest-trio tests the runner that the trio options ask for."""
    loose = bool(config.getoption("--peer-trio-loose-groups"))
    deadline: float | None = config.getoption("--peer-trio-deadline")
    if not loose and deadline is None:
        return
    run = functools.partial(_run_trio, strict_exception_groups=not loose, deadline=deadline)
    for item in items:
        marker = item.get_closest_marker("trio")
        if marker is not None and "run" not in marker.kwargs:
            # pytest-trio takes the first trio marker that names a runner.
            item.add_marker(pytest.mark.trio(run=run), append=False)


def pytest_runtest_logstart(nodeid: str, location: object) -> None:
    """Start counting the apps this test wraps."""
    global _wrapped_in_test
    _wrapped_in_test = 0


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Patch the ASGI classes of the Starlette modules imported so far."""
    if _wrap_app is not None:
        _patch_direct_calls(_wrap_app)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Fold the setup, call and teardown reports into one outcome per test."""
    entry = _outcomes.setdefault(report.nodeid, {"outcome": "passed", "message": ""})
    if report.when == "setup":
        if report.failed:
            _set(entry, "error", report)
        elif report.skipped:
            _set(entry, "xfailed" if hasattr(report, "wasxfail") else "skipped", report)
    elif report.when == "call":
        if report.failed:
            _set(entry, "failed", report)
        elif report.skipped:
            _set(entry, "xfailed" if hasattr(report, "wasxfail") else "skipped", report)
        elif hasattr(report, "wasxfail"):
            _set(entry, "xpassed", report)
    elif report.failed and entry["outcome"] not in ("error", "failed"):
        _set(entry, "error", report)  # in teardown; a failed call stays the headline


def pytest_runtest_logfinish(nodeid: str, location: object) -> None:
    """Record how many apps the test wrapped."""
    if nodeid in _outcomes:
        _outcomes[nodeid]["wrapped"] = _wrapped_in_test


def pytest_collectreport(report: pytest.CollectReport) -> None:
    """A module that fails to collect counts as one error."""
    if report.failed:
        _outcomes[report.nodeid or "<collection>"] = {
            "outcome": "error",
            "message": _message(report),
            "wrapped": 0,
        }


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write the outcomes file."""
    path = session.config.getoption("--peer-outcomes")
    if path:
        data = {
            "mode": session.config.getoption("--peer-wrap"),
            "exitstatus": int(exitstatus),
            "fetches": _fetches,
        }
        Path(path).write_text(json.dumps({**data, "tests": _outcomes}, indent=1, sort_keys=True))


def _run_trio(
    test: Callable[[], Any], *, strict_exception_groups: bool, deadline: float | None, **options: Any
) -> Any:
    import trio

    async def bounded() -> Any:
        with trio.fail_after(math.inf if deadline is None else deadline):
            return await test()

    return trio.run(bounded, strict_exception_groups=strict_exception_groups, **options)


def _set(entry: dict[str, Any], outcome: str, report: pytest.TestReport) -> None:
    entry["outcome"] = outcome
    entry["message"] = _message(report)


def _message(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The crash line of a failure (or the reason of a skip), short."""
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        text = str(crash.message)
    elif isinstance(report.longrepr, tuple):  # a skip: (path, line, reason)
        text = str(report.longrepr[-1])
    else:
        text = str(report.longrepr or "")
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first[:300]


def _refreshers() -> tuple[Any, ...]:
    """Two refreshers every 50 ms: an async fetch and a sync one, each a counter."""
    from asgi_refresh import Refresher

    async_count = itertools.count()
    sync_count = itertools.count()

    async def peer_async_counter() -> int:
        _count_fetch("async")
        return next(async_count)

    def peer_sync_counter() -> int:
        _count_fetch("sync")
        return next(sync_count)

    return (
        Refresher("peer_async_counter", peer_async_counter, every=EVERY),
        Refresher("peer_sync_counter", peer_sync_counter, every=EVERY),
    )


def _count_fetch(kind: str) -> None:
    with _fetches_lock:
        _fetches[kind] += 1


def _wrap(app: Any, *, refreshers: Callable[[], tuple[Any, ...]]) -> Any:
    """``RefreshMiddleware(app)``, unless ``app`` already runs through one."""
    global _wrapped_in_test
    from asgi_refresh import RefreshMiddleware

    if isinstance(app, RefreshMiddleware) or _is_reached(app):
        return app
    _wrapped_in_test += 1
    return _middleware_class()(app, refreshers=refreshers())


@functools.cache
def _middleware_class() -> type[Any]:
    from asgi_refresh import RefreshMiddleware

    class PeerRefreshMiddleware(RefreshMiddleware):
        """RefreshMiddleware, marking the context so that calls under it are not wrapped."""

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            token = _inside_wrapper.set(True)
            try:
                await super().__call__(scope, receive, send)
            finally:
                _inside_wrapper.reset(token)

    return PeerRefreshMiddleware


def _patch_direct_calls(wrap: Callable[[Any], Any]) -> None:
    for name in [n for n in sys.modules if n not in _scanned and n.partition(".")[0] == "starlette"]:
        _scanned.add(name)
        if name == "starlette.testclient":  # its _WrapASGI2 runs under TestClient's wrapper
            continue
        for cls in list(vars(sys.modules[name]).values()):
            call = getattr(cls, "__dict__", {}).get("__call__") if isinstance(cls, type) else None
            if call is not None and cls.__module__ == name and _is_asgi_call(call):
                cls.__call__ = _outermost_wrapped(call, wrap)


def _is_asgi_call(call: object) -> bool:
    if not inspect.iscoroutinefunction(call):
        return False
    return list(inspect.signature(call).parameters)[1:] == ["scope", "receive", "send"]


def _outermost_wrapped(call: Callable[..., Any], wrap: Callable[[Any], Any]) -> Callable[..., Any]:
    @functools.wraps(call)
    async def __call__(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if _inside_wrapper.get():
            await call(self, scope, receive, send)
        else:  # called by the test itself: wrap this app, as a server would see it
            # The wrapper calls this very method, not self(): a subclass whose own
            # __call__ ends in super().__call__() would otherwise run twice.
            await wrap(functools.partial(call, self))(scope, receive, send)

    return __call__


def _is_reached(app: Any) -> bool:
    try:
        return app in _reached
    except TypeError:  # unhashable: never one of ours
        return False


def _patch_entry_points(wrap: Callable[[Any], Any]) -> None:
    patched = 0
    for patch in (_patch_testclient, _patch_asgi_transports, _patch_lifespan_manager):
        patched += sum(1 for _ in patch(wrap))
    if patched == 0:
        raise pytest.UsageError("peer_plugin: none of the entry points it wraps is installed")


def _patch_testclient(wrap: Callable[[Any], Any]) -> Iterator[None]:
    try:
        from starlette.testclient import TestClient
    except ImportError:  # no starlette, or no httpx client for it
        return
    original = TestClient.__init__

    @functools.wraps(original)
    def __init__(self: Any, app: Any, *args: Any, **kwargs: Any) -> None:
        original(self, app, *args, **kwargs)
        transport = self._transport
        if transport.app is not self.app:
            raise RuntimeError(
                "peer_plugin: TestClient's transport no longer holds client.app; "
                "update _patch_testclient for this Starlette"
            )
        self.app = transport.app = wrap(self.app)

    TestClient.__init__ = __init__  # type: ignore[method-assign]
    yield


def _patch_asgi_transports(wrap: Callable[[Any], Any]) -> Iterator[None]:
    for name in ("httpx", "httpx2"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        transport = module.ASGITransport
        transport.__init__ = _wrapping_init(transport.__init__, wrap)
        yield


def _wrapping_init(original: Callable[..., None], wrap: Callable[[Any], Any]) -> Callable[..., None]:
    @functools.wraps(original)
    def __init__(self: Any, app: Any, *args: Any, **kwargs: Any) -> None:
        original(self, wrap(app), *args, **kwargs)

    return __init__


def _patch_lifespan_manager(wrap: Callable[[Any], Any]) -> Iterator[None]:
    try:
        from asgi_lifespan import LifespanManager
    except ImportError:
        return
    original = LifespanManager.__init__

    @functools.wraps(original)
    def __init__(self: Any, app: Any, *args: Any, **kwargs: Any) -> None:
        original(self, wrap(app), *args, **kwargs)
        # What tests hand on to ASGITransport: it holds our wrapper already.
        _reached.add(self.app)

    LifespanManager.__init__ = __init__  # type: ignore[method-assign]
    yield
