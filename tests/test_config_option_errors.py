"""Constructors blame an option by name (an attribute), and the config files each complaint under that key."""

from __future__ import annotations

import ast
import inspect
import pickle
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

import asgi_refresh
from asgi_refresh import (
    BearerToken,
    ConfigError,
    FileSource,
    HTTPSource,
    Refresher,
    RefreshMiddleware,
    SQLiteCoordinator,
    SSESource,
)
from asgi_refresh._option_error import OptionError, OptionTypeError, OptionValueError
from asgi_refresh._types import ASGIApp

from .helpers import ScriptedApp


async def load() -> list[str]:
    """A fetch: ``tests.test_config_option_errors:load``."""
    return ["ada"]


def names(**options: Any) -> dict[str, Any]:
    """A valid ``[refreshers.names]`` table, with ``options`` on top."""
    return {"source": "python", "target": "tests.test_config_option_errors:load", "every": "1h", **options}


def http(**options: Any) -> dict[str, Any]:
    """A valid ``[refreshers.names]`` table of an HTTP source, with ``options`` on top."""
    return {"source": "http", "url": "https://api.example.com/names", "every": "1h", **options}


def problems(config: dict[str, Any], middleware: type[RefreshMiddleware] = RefreshMiddleware) -> list[str]:
    """The problems ``from_config`` reports for ``config`` (it must report some)."""
    with pytest.raises(ConfigError) as caught:
        middleware.from_config(ScriptedApp(), config)
    return caught.value.problems


# -- the constructors -----------------------------------------------------------------------------


def _wrapped(app: ASGIApp, **options: Any) -> RefreshMiddleware:
    return RefreshMiddleware(app, refreshers=[], **options)


CASES: list[tuple[Callable[[], object], type[Exception], str, str]] = [
    (lambda: Refresher("names", load, every="1ms"), ValueError, "every", "Refresher 'names': every must be"),
    (lambda: Refresher("names", load, every="soon"), ValueError, "every", "Refresher 'names': every: "),
    (lambda: Refresher("names", load, every=[1]), TypeError, "every", "Refresher 'names': every: "),  # type: ignore[arg-type]
    (lambda: Refresher("names", 5, every="1h"), TypeError, "fetch", "Refresher 'names': fetch must be"),  # type: ignore[arg-type]
    (lambda: Refresher("names", len, every="1h"), TypeError, "fetch", "Refresher 'names': fetch is called"),  # type: ignore[arg-type]
    (
        lambda: Refresher("names", load, every="1h", jitter=2),
        ValueError,
        "jitter",
        "Refresher 'names': jitter",
    ),
    (lambda: Refresher("names", load, every="1m", backoff_max="1h"), ValueError, "backoff_max", "Refresher"),
    (lambda: Refresher("names", load, every="1h", on_error=5), TypeError, "on_error", "Refresher 'names': "),  # type: ignore[arg-type]
    (lambda: Refresher("my-names", load, every="1h"), ValueError, "name", "Refresher name must be"),
    (lambda: HTTPSource("ftp://x"), ValueError, "url", "HTTPSource: url must be an absolute"),
    (lambda: HTTPSource("http://x", method="G T"), ValueError, "method", "HTTPSource('http://x'): method"),
    (
        lambda: HTTPSource("http://x", max_bytes=0),
        ValueError,
        "max_bytes",
        "HTTPSource('http://x'): max_bytes",
    ),
    (lambda: HTTPSource("http://x", parse="xml"), ValueError, "parse", "HTTPSource('http://x'): parse must"),  # type: ignore[arg-type]
    (lambda: HTTPSource("http://x", validate=5), TypeError, "validate", "HTTPSource('http://x'): validate"),  # type: ignore[arg-type]
    (
        lambda: HTTPSource("http://x", headers={"A": " b"}),
        ValueError,
        "headers",
        "HTTPSource('http://x'): the",
    ),
    (lambda: HTTPSource("http://x", max_every="1m"), ValueError, "max_every", "HTTPSource('http://x'): set"),
    (
        lambda: SSESource("http://x/s", fetch_url="ftp://x/doc"),
        ValueError,
        "fetch_url",
        "SSESource('http://x/s'): fetch_url must be an absolute",
    ),
    (
        lambda: SSESource("http://x/s", reconnect_delay=10, max_reconnect_delay=1),
        ValueError,
        "reconnect_delay",
        "SSESource('http://x/s'): reconnect_delay (10s) must not exceed",
    ),
    (
        lambda: SSESource("http://x/s", on_event="push"),  # type: ignore[arg-type]
        ValueError,
        "on_event",
        "SSESource('http://x/s'): on_event must be 'value' or 'refetch'",
    ),
    (lambda: FileSource("flags.yaml"), ValueError, "format", "FileSource("),
    (lambda: FileSource(5), TypeError, "path", "FileSource: path must be"),  # type: ignore[arg-type]
    (lambda: FileSource("f.json", watch="yes"), TypeError, "watch", "FileSource("),  # type: ignore[arg-type]
    (lambda: BearerToken("a-b"), ValueError, "refresher", "BearerToken: refresher must be"),
    (
        lambda: _wrapped(ScriptedApp(), startup_timeout=0),
        ValueError,
        "startup_timeout",
        "RefreshMiddleware: ",
    ),
    (
        lambda: _wrapped(ScriptedApp(), admin_path="x"),
        ValueError,
        "admin_path",
        "RefreshMiddleware: admin_path",
    ),
    (lambda: _wrapped(ScriptedApp(), admin_loopback_only=True), ValueError, "admin_loopback_only", "Refresh"),
    (
        lambda: _wrapped(ScriptedApp(), listeners=print),
        TypeError,
        "listeners",
        "RefreshMiddleware: listeners",
    ),
    (lambda: _wrapped(ScriptedApp(), codec=5), TypeError, "codec", "RefreshMiddleware: codec must"),
    (lambda: SQLiteCoordinator(":memory:"), ValueError, "path", "path must be a file"),
    (lambda: SQLiteCoordinator(5), TypeError, "path", "path must be a str or a Path (got int)"),  # type: ignore[arg-type]
    (lambda: SQLiteCoordinator("x.db", poll_interval=0), ValueError, "poll_interval", "SQLiteCoordinator: "),
    (lambda: SQLiteCoordinator("x.db", prefix=""), ValueError, "prefix", "prefix must be a non-empty"),
]


@pytest.mark.parametrize(("build", "kind", "option", "start"), CASES)
def test_a_constructor_error_names_the_option_it_blames(
    build: Callable[[], object], kind: type[Exception], option: str, start: str
) -> None:
    """Each check raises the ValueError or TypeError users catch, with ``.option`` naming the argument."""
    with pytest.raises(kind) as caught:
        build()
    error = caught.value
    assert isinstance(error, OptionError)
    assert error.option == option
    assert str(error).startswith(start)
    assert str(error) == (f"{error.owner}: {error.text}" if error.owner else error.text)


def test_an_option_error_keeps_its_parts_through_pickle_and_copy() -> None:
    """It is rebuilt whole (owner, option, text), as the standard exceptions are."""
    error = OptionValueError("Refresher 'names'", "every", "every must be > 0 (got 0)")
    again = pickle.loads(pickle.dumps(error))
    assert (type(again), again.owner, again.option, again.text, str(again)) == (
        OptionValueError,
        "Refresher 'names'",
        "every",
        "every must be > 0 (got 0)",
        "Refresher 'names': every must be > 0 (got 0)",
    )


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("every must be > 0", "must be > 0"),
        ("every: expected a duration", "expected a duration"),
        ("every and max_stale disagree", "every and max_stale disagree"),
        ("every or nothing", "every or nothing"),
        ("set both every and max_stale", "set both every and max_stale"),
        ("everyone", "everyone"),
        ("every (2m) must not exceed max_stale (1m)", "every (2m) must not exceed max_stale (1m)"),
    ],
)
def test_the_detail_drops_only_the_option_name_in_front(text: str, detail: str) -> None:
    """Under its own key, ``every must be > 0`` reads ``must be > 0``; other sentences stay whole."""
    assert OptionTypeError("X", "every", text).detail == detail


# -- each complaint under the key it blames --------------------------------------------------------


def test_a_bad_header_value_is_reported_under_headers_and_hides_nothing() -> None:
    """A header value with a newline: under ``headers`` (it was the table, and stopped the checks there)."""
    found = problems({"refreshers": {"names": http(headers={"X-Token": "abc\n"}, method="G T")}})
    assert found == [
        "refreshers.names.headers: the value of header 'X-Token' must be a string without surrounding "
        "whitespace or line breaks (was it read from a file with its newline?)",
        "refreshers.names.method: must be an HTTP method like 'GET' (got 'G T')",
    ]


def test_max_every_alone_is_reported_under_max_every() -> None:
    """``max_every`` without ``min_every``: the complaint is under the key the file has."""
    assert problems({"refreshers": {"names": http(max_every="1h")}}) == [
        "refreshers.names.max_every: set both min_every and max_every to follow the server's caching "
        "headers, or neither"
    ]


def test_admin_loopback_only_alone_is_reported_under_its_own_key() -> None:
    """``admin_loopback_only = true`` without ``admin_path``: under the key the file has."""
    assert problems({"refreshers": {"names": names()}, "middleware": {"admin_loopback_only": True}}) == [
        "middleware.admin_loopback_only: admin_token and admin_loopback_only need admin_path, the prefix "
        'to serve the admin endpoints under (e.g. admin_path = "/_refresh")'
    ]


@pytest.mark.parametrize(
    ("coordinator", "expected"),
    [
        (
            {"backend": "sqlite", "path": "x.db", "timeout": 0},
            "middleware.coordinator.timeout: must be > 0 (got 0)",
        ),
        (
            {"backend": "sqlite", "path": "x.db", "poll_interval": "soon"},
            "middleware.coordinator.poll_interval: expected a duration like",
        ),
        (
            {"backend": "sqlite", "path": "x.db", "prefix": "a b"},
            "middleware.coordinator.prefix: must be a non-empty string without whitespace (got 'a b')",
        ),
        (
            {"backend": "sqlite", "path": "x.db", "max_bytes": -1},
            "middleware.coordinator.max_bytes: must be a positive number of bytes (got -1)",
        ),
        ({"backend": "sqlite", "path": 5}, "middleware.coordinator.path: must be a str or a Path (got int)"),
        ({"backend": "redis", "url": ""}, "middleware.coordinator.url: must be a Redis URL such as"),
    ],
)
def test_a_bad_coordinator_option_is_reported_under_its_key(
    coordinator: dict[str, Any], expected: str
) -> None:
    """``[middleware.coordinator]``: a backend's complaint names the key (it was the table, owner and all)."""
    (problem,) = problems({"refreshers": {"names": names()}, "middleware": {"coordinator": coordinator}})
    assert problem.startswith(expected), problem


# -- the middleware class is given, not imported -----------------------------------------------------


class WithRegion(RefreshMiddleware):
    """A middleware with one more option.

    Args:
        app: The app.
        region: Where it runs.
        options: The options of `RefreshMiddleware`.
    """

    def __init__(self, app: ASGIApp, *, region: str = "eu", **options: Any) -> None:
        if region not in ("eu", "us"):
            raise OptionValueError("WithRegion", "region", f"region must be 'eu' or 'us' (got {region!r})")
        super().__init__(app, **options)
        self.region = region


def test_a_subclass_from_config_reads_its_own_options_and_the_inherited_ones() -> None:
    """``WithRegion.from_config``: ``region`` is a [middleware] key beside RefreshMiddleware's own."""
    built = WithRegion.from_config(
        ScriptedApp(),
        {"refreshers": {"names": names()}, "middleware": {"region": "us", "startup_timeout": "5s"}},
    )
    assert isinstance(built, WithRegion)
    assert (built.region, built.startup_timeout) == ("us", 5.0)
    found = problems(
        {"refreshers": {"names": names()}, "middleware": {"region": "mars", "startup_timeout": 0}}, WithRegion
    )
    assert found == [
        "middleware.region: must be 'eu' or 'us' (got 'mars')",
        "middleware.startup_timeout: must be > 0 (got 0)",
    ]
    assert problems({"refreshers": {"names": names()}, "middleware": {"regoin": "us"}}, WithRegion) == [
        "middleware.regoin: unknown key; did you mean 'region'?"
    ]


class Plain(RefreshMiddleware):
    """A subclass that keeps RefreshMiddleware's constructor."""


def test_a_subclass_without_its_own_constructor_has_the_same_options() -> None:
    """``Plain.from_config`` builds a Plain from the keys RefreshMiddleware has."""
    built = Plain.from_config(
        ScriptedApp(), {"refreshers": {"names": names()}, "middleware": {"startup_timeout": "5s"}}
    )
    assert isinstance(built, Plain)
    assert built.startup_timeout == 5.0


def test_a_backend_without_its_library_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """No redis-py: one problem at the coordinator's table, with the pip command (not a traceback)."""
    from asgi_refresh._cluster import redis

    def missing() -> None:
        raise ImportError("RedisCoordinator needs redis-py: pip install 'asgi-refresh[redis]'")

    monkeypatch.setattr(redis, "_import_redis", missing)
    coordinator = {"backend": "redis", "url": "redis://127.0.0.1:1/0"}
    assert problems({"refreshers": {"names": names()}, "middleware": {"coordinator": coordinator}}) == [
        "middleware.coordinator: RedisCoordinator needs redis-py: pip install 'asgi-refresh[redis]'"
    ]


def _imports(path: Path) -> Iterable[str]:
    """Every module ``path`` imports, relative ones as ``asgi_refresh.<name>``, wherever the import is."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "asgi_refresh." * (node.level > 0) + (node.module or "")
            yield from (f"{base}.{alias.name}" for alias in node.names)
            yield base


def test_the_config_imports_neither_the_middleware_nor_the_reference_page() -> None:
    """_config depends on no module that depends on it: no import of _middleware or _cli, even a lazy one."""
    package = Path(inspect.getfile(asgi_refresh)).parent
    imported = set(_imports(package / "_config.py"))
    assert not {
        name for name in imported if name.startswith(("asgi_refresh._middleware", "asgi_refresh._cli"))
    }
    assert not hasattr(asgi_refresh._config, "reference_markdown"), "the docs generator lives in tests/"
