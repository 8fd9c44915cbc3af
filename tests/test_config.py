"""Declarative configuration: loading, interpolation, validation, and equivalence with the Python API."""

from __future__ import annotations

import contextlib
import inspect
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from hypothesis import given, settings
from hypothesis import strategies as st

from asgi_refresh import (
    BearerToken,
    ConfigError,
    Derived,
    FileSource,
    HTTPSource,
    LongPollSource,
    Refresher,
    RefreshMiddleware,
    SSESource,
)
from asgi_refresh._config import (
    Config,
    load_config,
    middleware_options,
    options_of,
    refresher_options,
)
from asgi_refresh.testing import FakeClock

from .helpers import START, ScriptedApp

pytestmark = pytest.mark.anyio


async def load_names() -> list[str]:
    """A fetch for `source = "python"` tests: ``tests.test_config:load_names``."""
    return ["ada", "grace"]


def on_change(old: Any, new: Any) -> None:
    """A hook for the tests."""


def check_names(value: Any) -> Any:
    """A validate function for the tests."""
    return value


def on_error(exc: BaseException) -> None:
    """An on_error hook for the tests."""


def needs_an_argument(url: str) -> list[str]:
    """A fetch that cannot be called with no arguments."""
    return [url]


NOT_CALLABLE = 42


class TokenAuth(httpx.Auth):
    """An httpx auth to import by name."""


TOKEN_AUTH = TokenAuth()


def load(source: Any, environ: Mapping[str, str] | None = None) -> Config:
    """`load_config` given the middleware class, as `RefreshMiddleware.from_config` calls it."""
    return load_config(source, environ, middleware=RefreshMiddleware)


def refresher(**options: Any) -> dict[str, Any]:
    """A valid ``[refreshers.names]`` table with ``options`` on top."""
    return {"source": "python", "target": "tests.test_config:load_names", "every": "1h", **options}


def problems_of(config: Any, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(config, environ=environ or {})
    problems = caught.value.problems
    message = str(caught.value).splitlines()
    assert message[1:] == [f"  {problem}" for problem in problems] or message == problems
    return problems


def only_problem(config: Any, environ: dict[str, str] | None = None) -> str:
    problems = problems_of(config, environ)
    assert len(problems) == 1, problems
    return problems[0]


# -- each validation error --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            {"refreshers": {"names": refresher(every="soon")}},
            'refreshers.names.every: expected a duration like "5m", got "soon"',
        ),
        (
            {"refreshers": {"names": refresher(every=-5)}},
            'refreshers.names.every: expected a positive duration like "5m", got -5',
        ),
        (
            {"refreshers": {"names": refresher(timeout="-1s")}},
            'refreshers.names.timeout: expected a positive duration like "5m", got "-1s"',
        ),
        (
            {"refreshers": {"names": refresher(every=True)}},
            'refreshers.names.every: expected a duration like "5m", got true',
        ),
        (
            {"refreshers": {"names": refresher(required="yes")}},
            'refreshers.names.required: expected true or false, got "yes"',
        ),
        (
            {"refreshers": {"names": refresher(jitter="a lot")}},
            'refreshers.names.jitter: expected a number, got "a lot"',
        ),
        (
            {"refreshers": {"names": refresher(required=None)}},
            "refreshers.names.required: expected true or false, got null",
        ),
        (
            {"refreshers": {"names": refresher(jiter=0.1)}},
            "refreshers.names.jiter: unknown key; did you mean 'jitter'?",
        ),
        (
            {"refreshers": {"names": refresher(path="x.json")}},
            "refreshers.names.path: unknown key for source 'python' ('path' is an option of source 'file')",
        ),
        (
            {"refreshers": {"names": refresher(fetch="tests.test_config:load_names")}},
            'refreshers.names.fetch: unknown key; give source = "python" and target = "module:function"',
        ),
        (
            {"refreshers": {"names": {"target": "tests.test_config:load_names", "every": "1h"}}},
            'refreshers.names.source: missing: say where the data comes from, one of "http", "file", "longpoll", "sse", "python"',
        ),
        (
            {"refreshers": {"names": refresher(source="htp", url="http://x")}},
            'refreshers.names.source: expected one of "http", "file", "longpoll", "sse", "python", got "htp" (did you mean \'http\'?)',
        ),
        (
            {"refreshers": {"names": {"source": "http", "every": "1h"}}},
            'refreshers.names.url: missing; expected a URL like "https://api.example.com/names"',
        ),
        (
            {"refreshers": {"names": {"source": "file", "every": "1h"}}},
            "refreshers.names.path: missing; expected a file path",
        ),
        (
            {"refreshers": {"names": {"source": "python", "every": "1h"}}},
            'refreshers.names.target: missing; expected an import string like "myapp.rates:load"',
        ),
        (
            {"refreshers": {"names": {"source": "python", "target": "tests.test_config:load_names"}}},
            'refreshers.names.every: missing (here or in [defaults]); expected a duration like "5m"',
        ),
        (
            {"refreshers": {"names": refresher(target="load_names")}},
            'refreshers.names.target: expected an import string like "myapp.rates:load", got "load_names"',
        ),
        (
            {"refreshers": {"names": refresher(target="tests.no_such_module:load")}},
            "refreshers.names.target: module 'tests.no_such_module' not found (in 'tests.no_such_module:load')",
        ),
        (
            {"refreshers": {"names": refresher(target="tests.test_config:load_name")}},
            "refreshers.names.target: 'tests.test_config' has no attribute 'load_name' "
            "(in 'tests.test_config:load_name'); did you mean 'load_names'?",
        ),
        (
            {"refreshers": {"names": refresher(target="tests.test_config:TokenAuth.nothing")}},
            "refreshers.names.target: 'tests.test_config.TokenAuth' has no attribute 'nothing'",
        ),
        (
            {"refreshers": {"names": refresher(target="tests.test_config:NOT_CALLABLE")}},
            "refreshers.names.target: 'tests.test_config:NOT_CALLABLE' is not callable (it is int)",
        ),
        (
            {"refreshers": {"names": refresher(target="tests.test_config:needs_an_argument")}},
            "refreshers.names.target: fetch is called with no arguments, but it takes (url)",
        ),
        (
            {"refreshers": {"names": refresher(on_change="tests.test_config:on_chang")}},
            "refreshers.names.on_change: 'tests.test_config' has no attribute 'on_chang'",
        ),
        (
            {"refreshers": {"names": refresher(jitter=0.9)}},
            "refreshers.names.jitter: must be a fraction of every, 0 <= jitter <= 0.5 (got 0.9)",
        ),
        (
            {"refreshers": {"names": refresher(every="0.001s")}},
            "refreshers.names.every: must be at least 10ms (a schedule, not a busy loop) (got '0.001s')",
        ),
        (
            {"refreshers": {"my-names": refresher()}},
            "refreshers.my-names: Refresher name must be a Python identifier",
        ),
        (
            {"refreshers": {"no.dots": refresher()}},
            'refreshers."no.dots": Refresher name must be a Python identifier',
        ),
        (
            {"refreshers": {"asgi_refresh": refresher()}},
            "refreshers.asgi_refresh: Refresher name 'asgi_refresh' is reserved for the control handle",
        ),
        (
            {"refreshers": {"names": {"source": "http", "url": "ftp://x", "every": "1h"}}},
            "refreshers.names.url: must be an absolute http:// or https:// URL (got 'ftp://x')",
        ),
        (
            {"refreshers": {"names": {"source": "http", "url": "http://x", "every": "1h", "max_bytes": 0}}},
            "refreshers.names.max_bytes: must be a positive number of bytes (got 0)",
        ),
        (
            {"refreshers": {"names": {"source": "http", "url": "http://x", "every": "1h", "max_bytes": 1.5}}},
            "refreshers.names.max_bytes: expected an integer, got 1.5",
        ),
        (
            {
                "refreshers": {
                    "names": {"source": "http", "url": "http://x", "every": "1h", "min_every": "1m"}
                }
            },
            "refreshers.names.min_every: set both min_every and max_every",
        ),
        (
            {
                "refreshers": {
                    "names": {"source": "http", "url": "http://x", "every": "1h", "headers": {"X": 5}}
                }
            },
            "refreshers.names.headers.X: expected a string, got 5",
        ),
        (
            {
                "refreshers": {
                    "names": {"source": "http", "url": "http://x", "every": "1h", "headers": "X: 1"}
                }
            },
            'refreshers.names.headers: expected a table of strings, got "X: 1"',
        ),
        (
            {"refreshers": {"names": {"source": "http", "url": "http://x", "every": "1h", "parse": "jsn"}}},
            'refreshers.names.parse: expected one of "json", "toml", "text", "bytes" or an import string '
            'like "yaml:safe_load", got "jsn" (did you mean \'json\'?)',
        ),
        (
            {"refreshers": {"names": {"source": "http", "url": "http://x", "every": "1h", "auth": ["user"]}}},
            'refreshers.names.auth: expected ["user", "password"], { bearer = "<refresher>" } or an import string, got a list',
        ),
        (
            {
                "refreshers": {
                    "names": {
                        "source": "http",
                        "url": "http://x",
                        "every": "1h",
                        "auth": "tests.test_config:NOT_CALLABLE",
                    }
                }
            },
            "refreshers.names.auth: 'tests.test_config:NOT_CALLABLE' is int: expected an httpx.Auth or a callable",
        ),
        (
            {
                "refreshers": {
                    "names": {"source": "http", "url": "http://x", "every": "1h", "auth": {"bearer": "tokn"}}
                }
            },
            "refreshers.names.auth.bearer: no refresher named 'tokn' to take the token from",
        ),
        (
            {
                "refreshers": {
                    "names": {"source": "http", "url": "http://x", "every": "1h", "auth": {"bearer": "names"}}
                }
            },
            "refreshers.names.auth.bearer: a refresher cannot authenticate with its own value",
        ),
        (
            {
                "refreshers": {
                    "names": {"source": "http", "url": "http://x", "every": "1h", "auth": {"bearer": "a-b"}}
                }
            },
            "refreshers.names.auth.bearer: refresher must be a refresher name, like 'token' (got 'a-b')",
        ),
        (
            {"refreshers": {"names": {"source": "file", "path": "flags.yaml", "every": "1h"}}},
            "refreshers.names.format: cannot tell the format from the extension '.yaml'",
        ),
        (
            {"refreshers": {"names": {"source": "file", "path": 5, "every": "1h"}}},
            "refreshers.names.path: expected a file path, got 5",
        ),
        (
            {"refreshers": {"names": refresher()}, "defaults": {"url": "http://x"}},
            "defaults.url: unknown key; source options go in each [refreshers.<name>] table",
        ),
        (
            {"refreshers": {"names": refresher()}, "defaults": {"evry": "1h"}},
            "defaults.evry: unknown key; did you mean 'every'?",
        ),
        (
            {"refreshers": {"names": refresher()}, "middleware": {"startup_timout": "1m"}},
            "middleware.startup_timout: unknown key; did you mean 'startup_timeout'?",
        ),
        (
            {"refreshers": {"names": refresher()}, "middleware": {"shutdown_timeout": 0}},
            "middleware.shutdown_timeout: must be > 0 (got 0)",
        ),
        (
            {"refreshers": {"names": refresher()}, "refresher": {}},
            "refresher: unknown key; did you mean 'refreshers'?",
        ),
        (
            {"refreshers": {"names": refresher()}, "middleware": []},
            "middleware: expected a table, got a list",
        ),
        ({"refreshers": {"names": "http://x"}}, 'refreshers.names: expected a table, got "http://x"'),
        (
            {"defaults": {"every": "1h"}},
            "refreshers: missing: add one [refreshers.<name>] table per refresher",
        ),
        ({"refreshers": {}}, "refreshers: no refreshers: add one [refreshers.<name>] table per refresher"),
        ([1, 2], "(argument): expected a path to a .toml or .json file, or a mapping (got list)"),
    ],
)
def test_each_validation_error_names_its_key(config: Any, expected: str) -> None:
    """Every kind of mistake is one problem that starts with its key path and says what is expected."""
    assert only_problem(config).startswith(expected)


def test_every_problem_is_reported_at_once() -> None:
    """Problems in defaults, several refreshers and the middleware come out together, in one error."""
    config = {
        "defaults": {"jitter": 2},
        "refreshers": {
            "names": refresher(every="soon"),
            "flags": {"source": "file", "path": "flags.json", "every": "1h", "watch": "yes"},
            "rates": refresher(target="tests.nowhere:load"),
        },
        "middleware": {"startup_timeout": "later"},
    }
    with pytest.raises(ConfigError) as caught:
        load(config, environ={})
    error = caught.value
    assert isinstance(error, ValueError)
    assert [problem.split(":")[0] for problem in error.problems] == [
        "refreshers.names.every",
        "refreshers.names.jitter",  # a bad every hides nothing
        "refreshers.flags.watch",
        "refreshers.flags.jitter",
        "refreshers.rates.target",
        "refreshers.rates.jitter",
        "middleware.startup_timeout",
    ]
    assert str(error).startswith("invalid configuration (a mapping) (7 problems):\n  refreshers.names.every:")


def test_problems_that_hide_behind_others_are_reported_at_once(tmp_path: Path) -> None:
    """A bad name, constructor checks after the first, and the admin options come out in one run."""
    path = tmp_path / "refresh.toml"
    path.write_text(
        """
[defaults]
every = "1m"
jiter = 0.1

[refreshers.my-name]
source = "http"
url = "https://api.example.com/names"
backoff_max = "2m"

[refreshers.rates]
source = "python"
target = "tests.test_config:load_names"
backoff_max = "2m"
max_stale = "10s"

[refreshers.flags]
source = "file"

[refreshers.orders]
source = "http"
url = 5
min_every = "1m"

[middleware]
admin_path = "_refresh"
startup_timeout = "soon"
listeners = ["asgi_refresh.prometheus:PrometheusMetrics"]
"""
    )
    problems = problems_of(path)
    assert [problem.split(": ")[0] for problem in problems] == [
        "defaults.jiter",
        "refreshers.my-name",
        "refreshers.my-name.backoff_max",
        "refreshers.rates.backoff_max",
        "refreshers.rates.max_stale",
        "refreshers.flags.path",
        "refreshers.orders.url",
        "refreshers.orders.min_every",
        "middleware.startup_timeout",
        "middleware.listeners.0",
        "middleware.admin_path",
        "middleware.admin_path",
    ]
    assert problems[1].startswith("refreshers.my-name: Refresher name must be a Python identifier")
    assert problems[2].startswith("refreshers.my-name.backoff_max: must not exceed every (1m)")
    assert "'refresher'" not in "".join(problems), "the stand-in name is never shown"
    assert problems[-2].startswith(
        "middleware.admin_path: must be a path under the root that starts with '/'"
    )
    assert problems[-1].startswith("middleware.admin_path: is set but admin_token is not")


def test_constructor_messages_are_written_in_toml_terms() -> None:
    """A constructor's ``name=value`` hints come out as the file writes them, under their config keys."""
    both = {"source": "http", "url": "http://x", "every": "1h", "data": {"a": "b"}, "json": {"a": 1}}
    assert problems_of({"refreshers": {"names": both}, "middleware": {"admin_token": "a-token"}}) == [
        "refreshers.names.data: pass a form body (data = ...) or a JSON body (json = ...), not both",
        "middleware.admin_token: admin_token and admin_loopback_only need admin_path, the prefix to serve "
        'the admin endpoints under (e.g. admin_path = "/_refresh")',
    ]


@pytest.mark.parametrize(
    ("middleware", "expected"),
    [
        (
            {"admin_path": "/_refresh", "admin_token": "short"},
            ["middleware.admin_token: must be at least 16 characters"],
        ),
        (
            {"admin_path": "/_refresh", "admin_token": "${UNSET}"},
            ["middleware.admin_token: environment variable UNSET is not set"],
        ),
        (
            {"admin_path": 5, "admin_token": "a-token-long-enough-1234"},
            ["middleware.admin_path: expected a string, got 5"],
        ),
    ],
)
def test_a_bad_admin_value_is_not_reported_as_a_missing_one(middleware: Any, expected: list[str]) -> None:
    """An admin_path or admin_token that is wrong is reported once, not also as absent."""
    problems = problems_of({"refreshers": {"names": refresher()}, "middleware": middleware})
    assert len(problems) == len(expected), problems
    for problem, start in zip(problems, expected, strict=True):
        assert problem.startswith(start)


def test_a_complaint_that_names_no_key_is_reported_at_the_table() -> None:
    """A constructor complaint about no known option is reported once, at the table's own path."""
    from asgi_refresh._config import Option, _Builder

    def refuses(**kwargs: Any) -> None:
        raise ValueError("X: something is wrong as a whole")

    builder = _Builder(Path.cwd(), {}, RefreshMiddleware)
    option = Option("X", "size", "size", "int", False, 1, "")
    assert builder.construct(refuses, {"size": 2}, ("middleware",), {"size": option}) is None
    assert builder.problems == ["middleware: X: something is wrong as a whole"]


def test_a_json_file_with_a_name_twice_is_an_error(tmp_path: Path) -> None:
    """JSON silently keeps the last of two equal keys; the config refuses them instead."""
    path = tmp_path / "refresh.json"
    table = json.dumps(refresher())
    path.write_text(f'{{"refreshers": {{"names": {table}, "names": {table}}}}}')
    assert only_problem(path) == "refreshers.names: defined twice (JSON keeps only the last); remove one"


def test_a_toml_file_with_a_table_twice_is_an_error(tmp_path: Path) -> None:
    """TOML refuses a table declared twice; the error names the table and the line."""
    path = tmp_path / "refresh.toml"
    path.write_text('[refreshers.names]\nsource = "python"\n[refreshers.names]\nevery = "1h"\n')
    problem = only_problem(path)
    assert problem.startswith(f"{path}: invalid TOML: ")
    assert "('refreshers', 'names')" in problem
    assert "line 3" in problem


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("refresh.yaml", "a: 1", "cannot tell the format: name the file *.toml or *.json (got '.yaml')"),
        ("refresh.json", "{nope", "invalid JSON at line 1, column 2: Expecting property name"),
        ("refresh.toml", "a = = 1", "invalid TOML: Invalid value (at line 1, column 5)"),
        ("refresh.toml", b"a = '\xff'", "not UTF-8 text"),
        ("missing.toml", None, "file not found"),
        ("refresh.json", "[1]", None),
    ],
)
def test_a_file_that_cannot_be_read_is_a_config_error(
    tmp_path: Path, name: str, content: str | bytes | None, expected: str | None
) -> None:
    """Unreadable, unparsable or oddly named files are a ConfigError naming the file."""
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    problem = only_problem(path)
    if expected is None:
        assert (
            problem
            == "(top level): expected a table with defaults, refreshers, families, derived, middleware, got a list"
        )
    else:
        assert problem.startswith(f"{path}: {expected}")


def test_a_missing_file_is_not_called_an_invalid_configuration(tmp_path: Path) -> None:
    """A file that is not there is just that, under the public name asgi_refresh.ConfigError."""
    with pytest.raises(ConfigError) as caught:
        load(tmp_path / "missing.toml")
    assert str(caught.value) == f"{tmp_path / 'missing.toml'}: file not found"
    assert f"{type(caught.value).__module__}.{type(caught.value).__name__}" == "asgi_refresh.ConfigError"


def test_one_problem_is_one_problem() -> None:
    """The count in the message agrees with the number: 1 problem, 2 problems."""
    assert (
        str(ConfigError("(a mapping)", ["a: x"])) == "invalid configuration (a mapping) (1 problem):\n  a: x"
    )
    assert str(ConfigError("(a mapping)", ["a: x", "b: y"])).startswith(
        "invalid configuration (a mapping) (2 problems):\n"
    )


def test_a_directory_is_not_readable(tmp_path: Path) -> None:
    """A path that is a directory is reported, not a traceback."""
    (tmp_path / "dir.toml").mkdir()
    assert only_problem(tmp_path / "dir.toml").startswith(f"{tmp_path / 'dir.toml'}: cannot read: ")


def test_something_else_than_a_path_or_mapping_is_refused() -> None:
    """from_config(app, 42) says what it takes."""
    assert only_problem(42) == "(argument): expected a path to a .toml or .json file, or a mapping (got int)"


def test_import_errors_inside_the_module_are_told_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module that exists but fails to import is not reported as "not found"."""
    (tmp_path / "cfg_raises.py").write_text("raise RuntimeError('no database')\n")
    (tmp_path / "cfg_needs.py").write_text("import cfg_not_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    problems = problems_of(
        {
            "refreshers": {
                "a": refresher(target="cfg_raises:load"),
                "b": refresher(target="cfg_needs:load"),
            }
        }
    )
    assert problems == [
        "refreshers.a.target: importing 'cfg_raises' raised RuntimeError: no database",
        "refreshers.b.target: importing 'cfg_needs' failed: ModuleNotFoundError: No module named 'cfg_not_installed'",
    ]


# -- interpolation --------------------------------------------------------------------------


def test_variables_are_read_from_the_environment() -> None:
    """${VAR} takes the variable's value, ${VAR:-default} the default when unset or empty, $${ is literal."""
    config = load(
        {
            "refreshers": {
                "names": {
                    "source": "http",
                    "url": "https://${HOST}/names",
                    "headers": {
                        "Authorization": "Bearer ${TOKEN}",
                        "X-Region": "${REGION:-eu}",
                        "X-Zone": "${ZONE:-a}",
                        "X-Literal": "$${NOT_A_VAR} costs $5",
                    },
                    "every": "${EVERY:-1h}",
                }
            }
        },
        environ={"HOST": "api.example.com", "TOKEN": "s3cret-token", "ZONE": ""},
    )
    (names,) = config.refreshers
    assert isinstance(names.fetch, HTTPSource)
    assert str(names.fetch.url) == "https://api.example.com/names"
    assert names.fetch._request["headers"] == {
        "Authorization": "Bearer s3cret-token",
        "X-Region": "eu",
        "X-Zone": "a",
        "X-Literal": "${NOT_A_VAR} costs $5",
    }
    assert names.every == 3600
    assert "s3cret-token" in config.secrets
    assert config.scrub("Bearer s3cret-token") == "Bearer ***"


def test_variables_are_read_from_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit environment, os.environ is used."""
    monkeypatch.setenv("ASGI_REFRESH_TEST_EVERY", "5m")
    config = load({"refreshers": {"names": refresher(every="${ASGI_REFRESH_TEST_EVERY}")}})
    assert config.refreshers[0].every == 300


def test_a_missing_variable_names_the_variable_and_the_key() -> None:
    """An unset variable without a default is an error naming both, and how to fix it."""
    config = {"refreshers": {"names": refresher(every="${EVERY}")}}
    assert only_problem(config, {"OTHER": "1"}) == (
        "refreshers.names.every: environment variable EVERY is not set; set it, or give a default: "
        "${EVERY:-default}"
    )
    assert only_problem(config, {"EVERY": ""}) == (
        "refreshers.names.every: environment variable EVERY is not set (it is empty); set it, or give a "
        "default: ${EVERY:-default}"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${}", "bad reference ${}: expected ${NAME} or ${NAME:-default}"),
        ("${1X}", "bad reference ${1X}: expected ${NAME} or ${NAME:-default}"),
        ("${OPEN", "unterminated ${ (write $${ for a literal ${)"),
    ],
)
def test_malformed_references_are_errors(text: str, expected: str) -> None:
    """A reference that is not ${NAME} or ${NAME:-default} is reported, not passed through."""
    assert (
        only_problem({"refreshers": {"names": refresher(every=text)}})
        == f"refreshers.names.every: {expected}"
    )


def test_values_from_the_environment_are_never_shown() -> None:
    """An interpolated value that is wrong is reported by variable name, and scrubbed from other messages."""
    config = {
        "refreshers": {
            "names": {
                "source": "http",
                "url": "https://x/${SECRET}",
                "every": "1h",
                "http_timeout": "${SECRET}",
                "method": "${SECRET}",
            }
        }
    }
    problems = problems_of(config, {"SECRET": "hunter2-xyz!"})
    assert problems == [
        'refreshers.names.http_timeout: expected a duration like "5m" or "none", got the value of ${SECRET} (not shown)',
        "refreshers.names.method: must be an HTTP method like 'GET' (got '***')",
    ]


def test_numbers_and_booleans_from_the_environment_are_read_as_written() -> None:
    """A whole value "${VAR}" for a number or boolean option is converted, as the shell cannot type it."""
    config = load(
        {
            "refreshers": {
                "names": refresher(jitter="${JITTER}", required="${REQUIRED}", backoff_multiplier="${M}"),
                "flags": {
                    "source": "http",
                    "url": "http://x",
                    "every": "1h",
                    "max_bytes": "${MAX}",
                },
            }
        },
        environ={"JITTER": "0.25", "REQUIRED": "False", "M": "3", "MAX": "1000"},
    )
    names, flags = config.refreshers
    assert (names.jitter, names.required, names.backoff_multiplier) == (0.25, False, 3.0)
    assert isinstance(flags.fetch, HTTPSource)
    assert flags.fetch.max_bytes == 1000
    assert only_problem({"refreshers": {"names": refresher(jitter="${J}")}}, {"J": "lots"}) == (
        "refreshers.names.jitter: expected a number, got the value of ${J} (not shown)"
    )


# -- defaults, None, relative paths ------------------------------------------------------------


def test_defaults_apply_to_every_refresher_and_a_refresher_overrides_them() -> None:
    """[defaults] fills what a refresher leaves out; its own value wins."""
    config = load(
        {
            "defaults": {"jitter": 0.2, "timeout": "10s", "every": "5m"},
            "refreshers": {
                "names": {"source": "python", "target": "tests.test_config:load_names"},
                "rates": refresher(jitter=0, every="1h"),
            },
        },
        environ={},
    )
    names, rates = config.refreshers
    assert (names.jitter, names.timeout, names.every) == (0.2, 10.0, 300.0)
    assert (rates.jitter, rates.timeout, rates.every) == (0.0, 10.0, 3600.0)


def test_none_is_written_as_the_string_none_in_toml(tmp_path: Path) -> None:
    """TOML has no null: timeout = "none" means no limit, and JSON null does too."""
    path = tmp_path / "refresh.toml"
    path.write_text(
        '[defaults]\ntimeout = "10s"\n'
        '[refreshers.a]\nsource = "python"\ntarget = "tests.test_config:load_names"\nevery = "1h"\ntimeout = "none"\n'
    )
    assert load(path).refreshers[0].timeout is None
    assert load({"refreshers": {"a": refresher(timeout=None)}}).refreshers[0].timeout is None


def test_relative_paths_are_resolved_against_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a file, path = "flags.json" is next to the file; in a mapping, in the current directory."""
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "refresh.toml"
    path.write_text('[refreshers.flags]\nsource = "file"\npath = "flags.json"\nevery = "5s"\n')
    monkeypatch.chdir(tmp_path)
    from_file = load(Path("conf/refresh.toml")).refreshers[0].fetch
    from_mapping = load({"refreshers": {"flags": {"source": "file", "path": "flags.json", "every": "5s"}}})
    absolute = load({"refreshers": {"flags": {"source": "file", "path": "/etc/flags.json", "every": "5s"}}})
    assert isinstance(from_file, FileSource)
    assert from_file.path == tmp_path / "conf" / "flags.json"
    assert from_mapping.refreshers[0].fetch.path == tmp_path / "flags.json"  # type: ignore[union-attr]
    assert absolute.refreshers[0].fetch.path == Path("/etc/flags.json")  # type: ignore[union-attr]


# -- equivalence with the Python API -----------------------------------------------------------


TOML = """
[defaults]
jitter = 0.2
timeout = "10s"

[refreshers.token]
source = "http"
url = "https://auth.example.com/token"
method = "POST"
data = { grant_type = "client_credentials" }
auth = ["client", "${CLIENT_SECRET}"]
every = "1h"

[refreshers.names]
source = "http"
url = "https://api.example.com/names?page=1"
headers = { Accept = "application/json" }
params = { limit = 100 }
auth = { bearer = "token" }
http_timeout = "5s"
parse = "json"
validate = "tests.test_config:check_names"
max_bytes = 1000
min_every = "1m"
max_every = "1h"
every = "1h"
on_change = "tests.test_config:on_change"

[refreshers.flags]
source = "file"
path = "flags.json"
format = "json"
watch = false
every = "5s"
required = false
default = { dark_mode = false }

[refreshers.rates]
source = "python"
target = "tests.test_config:load_names"
every = "10m"
backoff_initial = "2s"
backoff_max = "5m"
backoff_multiplier = 3
on_error = "tests.test_config:on_error"

[middleware]
startup_timeout = "1m"
shutdown_timeout = "20s"
"""


def python_api(base: Path) -> list[Refresher]:
    """The refreshers of TOML, written with the Python API."""
    return [
        Refresher(
            "token",
            HTTPSource(
                "https://auth.example.com/token",
                method="POST",
                data={"grant_type": "client_credentials"},
                auth=("client", "shh-secret"),
            ),
            every="1h",
            jitter=0.2,
            timeout="10s",
        ),
        Refresher(
            "names",
            HTTPSource(
                "https://api.example.com/names?page=1",
                headers={"Accept": "application/json"},
                params={"limit": 100},
                auth=BearerToken("token"),
                timeout="5s",
                parse="json",
                validate=check_names,
                max_bytes=1000,
                min_every="1m",
                max_every="1h",
            ),
            every="1h",
            jitter=0.2,
            timeout="10s",
            on_change=on_change,
        ),
        Refresher(
            "flags",
            FileSource(base / "flags.json", format="json", watch=False),
            every="5s",
            required=False,
            default={"dark_mode": False},
            jitter=0.2,
            timeout="10s",
        ),
        Refresher(
            "rates",
            load_names,
            every="10m",
            backoff_initial="2s",
            backoff_max="5m",
            backoff_multiplier=3,
            on_error=on_error,
            jitter=0.2,
            timeout="10s",
        ),
    ]


def comparable(value: Any) -> Any:
    """A refresher or source as plain data: its fields, sources compared by what they hold."""
    if isinstance(value, Refresher):
        fields = {name: getattr(value, name) for name in value.__dataclass_fields__}
        return {**fields, "fetch": comparable(value.fetch)}
    if isinstance(value, HTTPSource):
        request = {**value._request, "auth": comparable(value._request["auth"])}
        return (
            "HTTPSource",
            str(value.url),
            value.method,
            request,
            value.max_bytes,
            value.min_every,
            value.max_every,
            value._parser.format,
            value._parser.validate,
        )
    if isinstance(value, FileSource):
        return ("FileSource", value.path, value._parser.format, value._parser.validate, value.watch)
    if isinstance(value, BearerToken):
        return ("BearerToken", value.refresher)
    return value


@pytest.mark.parametrize("form", ["toml", "json", "mapping"])
def test_config_builds_the_same_objects_as_the_python_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    """TOML, JSON and a mapping all build refreshers equal, field by field, to the Python API's."""
    import tomllib

    document = tomllib.loads(TOML)
    source: Any
    if form == "toml":
        source = tmp_path / "refresh.toml"
        source.write_text(TOML)
    elif form == "json":
        source = tmp_path / "refresh.json"
        source.write_text(json.dumps(document))
    else:
        source = document
    monkeypatch.chdir(tmp_path)  # where the mapping's relative path goes
    config = load(source, environ={"CLIENT_SECRET": "shh-secret"})
    assert [comparable(r) for r in config.refreshers] == [comparable(r) for r in python_api(tmp_path)]
    assert config.middleware == {"startup_timeout": "1m", "shutdown_timeout": "20s"}
    assert config.needs == {"token": (), "names": ("token",), "flags": (), "rates": ()}
    assert config.sources == {"token": "http", "names": "http", "flags": "file", "rates": "python"}


def test_auth_may_name_an_httpx_auth() -> None:
    """An auth = "module:attr" imports an httpx.Auth object (or a callable)."""
    config = load(
        {
            "refreshers": {
                "n": {
                    "source": "http",
                    "url": "http://x",
                    "every": "1h",
                    "auth": "tests.test_config:TOKEN_AUTH",
                }
            }
        }
    )
    assert config.refreshers[0].fetch._request["auth"] is TOKEN_AUTH  # type: ignore[union-attr]


def test_a_mapping_may_hold_python_objects() -> None:
    """A mapping built in Python may give callables and auth objects directly instead of import strings."""
    auth = BearerToken("names")
    config = load(
        {
            "refreshers": {
                "names": {"source": "python", "target": load_names, "every": "1h", "on_change": on_change},
                "other": {"source": "http", "url": "http://x", "every": "1h", "auth": auth},
            }
        }
    )
    names, other = config.refreshers
    assert config.targets["names"] == "tests.test_config:load_names"
    assert names.fetch is load_names
    assert names.on_change is on_change
    assert other.fetch._request["auth"] is auth  # type: ignore[union-attr]


async def test_from_config_runs_like_the_python_api(tmp_path: Path) -> None:
    """from_config wraps the app; keyword options such as clock override the [middleware] table."""
    path = tmp_path / "refresh.toml"
    path.write_text(
        '[middleware]\nstartup_timeout = "5s"\n'
        '[refreshers.names]\nsource = "python"\ntarget = "tests.test_config:load_names"\nevery = "1h"\n'
        '[refreshers.flags]\nsource = "file"\npath = "flags.json"\nevery = "5s"\n'
    )
    (tmp_path / "flags.json").write_text('{"dark_mode": true}')
    clock = FakeClock(START)
    middleware = RefreshMiddleware.from_config(ScriptedApp(), path, clock=clock, shutdown_timeout="3s")
    assert (middleware.startup_timeout, middleware.shutdown_timeout, middleware.clock) == (5.0, 3.0, clock)
    async with LifespanManager(middleware):
        assert middleware.handle.value("names") == ["ada", "grace"]
        assert middleware.handle.value("flags") == {"dark_mode": True}


def test_from_config_raises_config_error() -> None:
    """An invalid config fails at from_config, before anything runs."""
    with pytest.raises(ConfigError, match=r"refreshers\.names\.every: expected a duration"):
        RefreshMiddleware.from_config(ScriptedApp(), {"refreshers": {"names": refresher(every="soon")}})


# -- the options follow the signatures ---------------------------------------------------------


def test_every_constructor_parameter_is_a_config_key_of_a_known_kind() -> None:
    """Each parameter of the classes the config builds is a key or explicitly excluded, and its type is understood.

    Fails when an option is added with a type the config does not know how to read:
    add its annotation to `_config.KINDS` (or exclude it in EXCLUDED, saying why).
    """
    from asgi_refresh._config import EXCLUDED

    for cls in (Refresher, HTTPSource, FileSource, LongPollSource, SSESource, RefreshMiddleware, Derived):
        keys = {option.parameter for option in options_of(cls)}
        for name in inspect.signature(cls).parameters:
            assert name in keys or f"{cls.__name__}.{name}" in EXCLUDED, (cls.__name__, name)
        for option in options_of(cls):
            assert option.kind != "unknown", (
                f"{cls.__name__}.{option.parameter}: add its annotation to _config.KINDS"
            )
            assert option.meaning, f"{cls.__name__}.{option.parameter} has no Args: entry in the docstring"
    assert {option.key for option in refresher_options()} >= {"every", "required", "default", "timeout"}
    assert {option.key for option in middleware_options(RefreshMiddleware)} >= {
        "startup_timeout",
        "shutdown_timeout",
    }


@pytest.mark.parametrize(
    ("annotation", "kind"),
    [
        ("Duration | None", ("duration", True)),
        ("int | float", ("number", False)),
        ("str | os.PathLike[str]", ("path", False)),
        ("Callable[[Any, Any], object] | None", ("callable", True)),
        ("Iterable[Listener]", ("objects", False)),
        ("str | TokenCheck | None", ("token", True)),
        ("None | Coordinator", ("coordinator", True)),
        # Not in the table, however plausible: a new option's type is a decision, not a guess.
        ("Sequence[Listener] | None", ("unknown", True)),
        ("Callable[[str], object]", ("unknown", False)),
        ("list[Fetch]", ("unknown", False)),
        ("frozenset[int]", ("unknown", False)),
    ],
)
def test_kinds_come_from_an_explicit_table(annotation: str, kind: tuple[str, bool]) -> None:
    """An annotation's kind is looked up, spaces and ``None`` aside; one that is not listed is unknown."""
    from asgi_refresh._config import kind_of

    assert kind_of(annotation) == kind


def test_every_kind_has_a_converter_and_an_expectation() -> None:
    """Each kind of the Literal is read by one converter and described in problems and on the reference page."""
    from typing import get_args

    from asgi_refresh._config import _CONVERTERS, _EXPECTED, KINDS, Kind

    from .config_reference import TYPE_NAMES

    kinds = set(get_args(Kind))
    assert set(_CONVERTERS) == kinds
    assert set(_EXPECTED) == kinds
    assert set(TYPE_NAMES) == kinds
    assert set(KINDS.values()) <= kinds


def test_lists_of_import_strings_are_imported() -> None:
    """A list-of-callables option imports each entry and names the bad one by its index."""
    from asgi_refresh._config import Option, _Builder

    builder = _Builder(Path.cwd(), {}, RefreshMiddleware)
    callables = Option("X", "hooks", "hooks", "callables", True, None, "")
    objects = Option("X", "listeners", "listeners", "objects", True, None, "")
    assert builder.convert(callables, ["tests.test_config:on_change"], ("middleware", "hooks")) == (
        True,
        [on_change],
    )
    assert builder.convert(objects, ["tests.test_config:TOKEN_AUTH", on_change], ("m", "l")) == (
        True,
        [TOKEN_AUTH, on_change],
    )
    assert builder.convert(callables, "x:y", ("m", "hooks"))[0] is False
    assert builder.convert(objects, "x:y", ("m", "l"))[0] is False
    assert builder.convert(callables, ["tests.test_config:NOT_CALLABLE"], ("m", "hooks"))[0] is False
    assert builder.convert(Option("X", "u", "u", "unknown", False, None, ""), {1}, ("m", "u")) == (True, {1})
    assert builder.convert(Option("X", "s", "s", "str", False, "", ""), 5, ("m", "s"))[0] is False
    assert builder.problems == [
        'm.hooks: expected a list of import strings like ["myapp.hooks:notify"], got "x:y"',
        'm.l: expected a list of import strings like ["myapp.hooks:listener"], got "x:y"',
        "m.hooks.0: 'tests.test_config:NOT_CALLABLE' is not callable (it is int); name a function or class",
        "m.s: expected a string, got 5",
    ]


def test_a_class_is_refused_as_a_listener() -> None:
    """Naming a listener class (not an instance) is an error that says what to write instead."""
    from asgi_refresh.prometheus import PrometheusMetrics

    problems = problems_of(
        {
            "refreshers": {"names": refresher()},
            "middleware": {"listeners": ["asgi_refresh.prometheus:PrometheusMetrics", PrometheusMetrics]},
        }
    )
    assert problems == [
        "middleware.listeners.0: 'asgi_refresh.prometheus:PrometheusMetrics' is a class; name an instance "
        "or a function: e.g. define `prometheus_metrics = PrometheusMetrics()` in a module of yours and "
        'write "myapp.listeners:prometheus_metrics"',
        "middleware.listeners.1: asgi_refresh.prometheus.PrometheusMetrics is a class; name an instance "
        "or a function: e.g. define `prometheus_metrics = PrometheusMetrics()` in a module of yours and "
        'write "myapp.listeners:prometheus_metrics"',
    ]


def check_admin_token(token: str) -> bool:
    return token == "from-the-check"


def test_the_control_plane_is_configurable() -> None:
    """Admin endpoints, listeners and max_stale come from the file like every other option."""
    config = load(
        {
            "refreshers": {"names": refresher(max_stale="3h")},
            "middleware": {
                "admin_path": "/_refresh",
                "admin_token": "${ADMIN_TOKEN}",
                "listeners": ["tests.test_config:on_change"],
            },
        },
        environ={"ADMIN_TOKEN": "a-token-from-the-environment"},
    )
    assert config.refreshers[0].max_stale == 10800.0
    assert config.middleware == {
        "admin_path": "/_refresh",
        "admin_token": "a-token-from-the-environment",
        "listeners": [on_change],
    }
    checked = load(
        {
            "refreshers": {"names": refresher()},
            "middleware": {
                "admin_path": "/_refresh",
                "admin_token": {"check": "tests.test_config:check_admin_token"},
            },
        }
    )
    assert checked.middleware["admin_token"] is check_admin_token
    wrong_type = problems_of(
        {"refreshers": {"names": refresher()}, "middleware": {"admin_path": "/_refresh", "admin_token": 5}}
    )
    assert wrong_type[0] == (
        'middleware.admin_token: expected a string like "${ADMIN_TOKEN}" or '
        '{ check = "myapp.auth:check_token" } or "none", got 5'
    )
    missing = problems_of({"refreshers": {"names": refresher()}, "middleware": {"admin_path": "/_refresh"}})
    assert missing == [
        'middleware.admin_path: is set but admin_token is not. Set admin_token = "${ADMIN_TOKEN}" (a secret '
        "string, or a callable that checks the bearer token), or admin_loopback_only = true to serve the "
        "admin endpoints without a token to requests from 127.0.0.1 / ::1 only"
    ]


def test_the_coordinator_is_configurable(tmp_path: Path) -> None:
    """[middleware.coordinator] picks a backend and passes its options; mistakes name their key."""
    from asgi_refresh import RedisCoordinator, SQLiteCoordinator

    config_file = tmp_path / "refresh.toml"
    config_file.write_text(
        '[refreshers.names]\nsource = "python"\ntarget = "tests.test_config:load_names"\nevery = "1h"\n'
        '[middleware]\nlease_ttl = "30s"\n'
        '[middleware.coordinator]\nbackend = "sqlite"\npath = "refresh.db"\nprefix = "myapp"\n'
    )
    config = load(config_file)
    coordinator = config.middleware["coordinator"]
    assert isinstance(coordinator, SQLiteCoordinator)
    assert coordinator.path == str(tmp_path / "refresh.db"), "relative to the file"
    assert coordinator.prefix == "myapp"
    assert config.middleware["lease_ttl"] == "30s"
    redis = load(
        {
            "refreshers": {"names": refresher()},
            "middleware": {"coordinator": {"backend": "redis", "url": "redis://127.0.0.1:1/0"}},
        }
    )
    assert isinstance(redis.middleware["coordinator"], RedisCoordinator)
    assert problems_of(
        {"refreshers": {"names": refresher()}, "middleware": {"coordinator": {"backend": "redsi"}}}
    ) == [
        'middleware.coordinator.backend: expected "redis", "sqlite", "postgres" or "nats", got "redsi" '
        "(did you mean 'redis'?)"
    ]
    assert problems_of(
        {
            "refreshers": {"names": refresher()},
            "middleware": {"coordinator": {"backend": "sqlite", "path": "x.db", "pol_interval": 1}},
        }
    )[0].startswith("middleware.coordinator.pol_interval: unknown key")
    assert problems_of(
        {"refreshers": {"names": refresher()}, "middleware": {"codec": "asgi_refresh:JSONCodec"}}
    ) == [
        "middleware.codec: 'asgi_refresh:JSONCodec' is a class; name an instance, e.g. `codec = JSONCodec()` "
        'in your module, written "myapp.module:codec"'
    ]


def test_a_postgres_coordinator_is_configurable() -> None:
    """Backend = "postgres" takes a dsn and the backend's options; a misspelt backend is named."""
    from asgi_refresh import PostgresCoordinator

    config = load(
        {
            "refreshers": {"names": refresher()},
            "middleware": {
                "coordinator": {
                    "backend": "postgres",
                    "dsn": "postgresql://app@db:5432/shop",
                    "schema": "refresh",
                    "prefix": "shop",
                    "timeout": "3s",
                    "create_schema": False,
                }
            },
        }
    )
    coordinator = config.middleware["coordinator"]
    assert isinstance(coordinator, PostgresCoordinator)
    assert (coordinator.schema, coordinator.prefix, coordinator.timeout) == ("refresh", "shop", 3.0)
    assert not coordinator.create_schema
    assert problems_of(
        {"refreshers": {"names": refresher()}, "middleware": {"coordinator": {"backend": "postgre"}}}
    ) == [
        'middleware.coordinator.backend: expected "redis", "sqlite", "postgres" or "nats", got "postgre" '
        "(did you mean 'postgres'?)"
    ]
    assert problems_of(
        {
            "refreshers": {"names": refresher()},
            "middleware": {
                "coordinator": {"backend": "postgres", "dsn": "postgresql://db/x", "schema": "A-B"}
            },
        }
    )[0].startswith("middleware.coordinator.schema: must be a PostgreSQL schema name")


# -- hostile files and values: bounded, every problem at once, secrets masked in every form --


BAD_EVERY: list[Any] = ["soon", True, "1ms", -5, 0, 1e12, "9" * 100 + "d", float("nan"), [1], None]


@pytest.mark.parametrize("every", BAD_EVERY, ids=repr)
def test_a_bad_every_hides_none_of_the_refreshers_other_problems(every: Any) -> None:
    """With every invalid, too small or too large, the refresher's other options are still all checked."""
    table = {
        "source": "http",
        "url": "https://api.example.com/names",
        "every": every,
        "jitter": 0.9,
        "backoff_multiplier": 0.5,
        "timeout": "-3s",
        "max_bytes": -1,
        "jiter": 0.1,
    }
    problems = problems_of({"refreshers": {"names": table}})
    assert sorted(problem.split(":")[0] for problem in problems) == [
        "refreshers.names.backoff_multiplier",
        "refreshers.names.every",
        "refreshers.names.jiter",
        "refreshers.names.jitter",
        "refreshers.names.max_bytes",
        "refreshers.names.timeout",
    ]


def test_a_missing_every_hides_none_of_the_refreshers_other_problems() -> None:
    """No every at all (nor in [defaults]): 'missing', and the rest is checked as well."""
    problems = problems_of({"refreshers": {"names": {**refresher(jitter=0.9), "every": None}}})
    assert problems == [
        'refreshers.names.every: expected a duration like "5m", got null',
        "refreshers.names.jitter: must be a fraction of every, 0 <= jitter <= 0.5 (got 0.9)",
    ]
    del_every = refresher(jitter=0.9)
    del del_every["every"]
    assert [p.split(":")[0] for p in problems_of({"refreshers": {"names": del_every}})] == [
        "refreshers.names.every",
        "refreshers.names.jitter",
    ]


def test_a_bad_every_in_defaults_is_reported_once_and_hides_nothing() -> None:
    """[defaults] every = "soon": one problem there, none made up per refresher, their own problems all shown."""
    names, rates = refresher(jitter=0.9), refresher(backoff_multiplier=0.5)
    del names["every"], rates["every"]
    problems = problems_of({"defaults": {"every": "soon"}, "refreshers": {"names": names, "rates": rates}})
    assert [problem.split(":")[0] for problem in problems] == [
        "defaults.every",
        "refreshers.names.jitter",
        "refreshers.rates.backoff_multiplier",
    ]


@pytest.mark.parametrize(
    ("every", "options"),
    [
        ("soon", {"backoff_max": "2h"}),
        ("soon", {"max_stale": "1m"}),
        ("soon", {"max_stale": "1ms"}),
        (
            "soon",
            {"backoff_max": "2h", "max_stale": "1h"},
        ),  # no every agrees with both: that check is skipped
        ("1ms", {"backoff_max": "2h", "max_stale": "1h"}),
        ("1ms", {"max_stale": "5ms"}),
    ],
)
def test_a_stand_in_every_makes_up_no_complaint(every: str, options: dict[str, str]) -> None:
    """Range checks that need every are not made against the stand-in: only every itself is reported."""
    problems = problems_of({"refreshers": {"names": refresher(every=every, **options)}})
    assert [problem.split(":")[0] for problem in problems] == ["refreshers.names.every"]


def nested(depth: int, leaf: Any = 1) -> Any:
    """``depth`` lists one inside the other, built without recursion."""
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def test_tables_and_lists_nest_at_most_32_deep() -> None:
    """The top level counts as 1: 29 lists under refreshers.names.default are the limit."""
    config = load({"refreshers": {"names": refresher(required=False, default=nested(29))}})
    assert config.refreshers[0].default == nested(29)
    problem = only_problem({"refreshers": {"names": refresher(required=False, default=nested(30))}})
    assert problem.startswith("refreshers.names.default.0.0.0.0.0.…: tables and lists nest more than 32 deep")


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("arrays.toml", "x = " + "[" * 5000 + "]" * 5000),
        ("tables.toml", "x = " + "{a = " * 5000 + "1" + "}" * 5000),
        ("dotted.toml", "[" + ".".join(["a"] * 5000) + "]\n"),
        ("shallow-arrays.toml", "x = " + "[" * 100 + "]" * 100),
        ("arrays.json", "[" * 100_000 + "]" * 100_000),
        ("objects.json", '{"a":' * 100_000 + "1" + "}" * 100_000),
        ("shallow.json", "[" * 100 + "]" * 100),
    ],
)
def test_deeply_nested_files_are_a_config_error(tmp_path: Path, name: str, text: str) -> None:
    """Thousands of nested arrays or tables: one problem line (it was a RecursionError traceback)."""
    (tmp_path / name).write_text(text)
    problem = only_problem(tmp_path / name)
    assert "nest more than 32 deep" in problem
    assert len(problem) < 300


def test_deeply_nested_and_cyclic_mappings_are_a_config_error() -> None:
    """from_config with a mapping 100,000 deep, or one that holds itself: ConfigError, not RecursionError."""
    assert "nest more than 32 deep" in only_problem(
        {"refreshers": {"names": refresher(default=nested(100_000))}}
    )
    cyclic: dict[str, Any] = {"source": "python"}
    cyclic["self"] = cyclic
    assert "nest more than 32 deep" in only_problem({"refreshers": {"names": cyclic}})
    with pytest.raises(ConfigError, match="nest more than 32 deep"):
        RefreshMiddleware.from_config(
            ScriptedApp(), {"refreshers": {"names": refresher(default=nested(5000))}}
        )


def test_a_file_over_1_mib_is_refused_before_parsing(tmp_path: Path) -> None:
    """A configuration is a few KiB: a bigger file is read no further than 1 MiB and refused."""
    big = tmp_path / "big.toml"
    big.write_text("# padding\n" * (1024 * 1024 // 10 + 1))
    assert (
        only_problem(big)
        == f"{big}: larger than 1024 KiB; a configuration is a few KiB (is this the right file?)"
    )
    exactly = tmp_path / "exactly.json"
    exactly.write_text(json.dumps({"refreshers": {"names": refresher()}}).ljust(1024 * 1024))
    assert load(exactly).refreshers[0].name == "names"


def test_a_device_or_a_pipe_is_not_read(tmp_path: Path) -> None:
    """refresh.toml -> /dev/zero (which never ends) or a FIFO (which blocks): refused at once."""
    (tmp_path / "zero.toml").symlink_to("/dev/zero")
    assert only_problem(tmp_path / "zero.toml").endswith(
        ": cannot read: not a regular file (a pipe, a device...)"
    )
    import os

    os.mkfifo(tmp_path / "pipe.json")
    assert only_problem(tmp_path / "pipe.json").endswith(
        ": cannot read: not a regular file (a pipe, a device...)"
    )


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("digits.json", '{"refreshers": {"names": {"every": ' + "1" * 5000 + "}}}"),
        ("digits.toml", "x = " + "1" * 5000),
    ],
)
def test_an_integer_of_5000_digits_is_a_config_error(tmp_path: Path, name: str, text: str) -> None:
    """Python refuses to read ints over 4300 digits with a ValueError: one problem line, not a traceback."""
    (tmp_path / name).write_text(text)
    assert "Exceeds the limit (4300 digits)" in only_problem(tmp_path / name)


@pytest.mark.parametrize(
    "value",
    [10**400, 10**5000, float("nan"), float("inf"), -float("inf")],
    ids=["1e400", "1e5000", "nan", "inf", "-inf"],
)
def test_numbers_no_option_means_are_refused(value: Any) -> None:
    """A duration of 10**400 s (it raised OverflowError), nan or inf as a number option: a problem each."""
    problems = problems_of(
        {"refreshers": {"names": refresher(every=value, jitter=value, backoff_multiplier=value)}}
    )
    assert [problem.split(":")[0] for problem in problems] == [
        "refreshers.names.every",
        "refreshers.names.jitter",
        "refreshers.names.backoff_multiplier",
    ]


def test_a_huge_value_is_quoted_cut_short() -> None:
    """A megabyte of text in a bad value gives a problem line of a few dozen characters."""
    assert len(only_problem({"refreshers": {"names": refresher(every="x" * 1_000_000)}})) < 200


class CountedKey(str):
    """A str that counts how often it is compared for equality."""

    comparisons = 0

    def __eq__(self, other: object) -> bool:
        CountedKey.comparisons += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_duplicate_json_keys_are_found_in_linear_time() -> None:
    """Finding the keys given twice compares keys O(n) times, not O(n²) (20,000 keys took 20 s)."""
    from asgi_refresh._config import _json_object

    size = 4000
    pairs: list[tuple[str, Any]] = [(CountedKey(f"key{index}"), index) for index in range(size)]
    pairs.append((CountedKey("key7"), -1))
    CountedKey.comparisons = 0
    result = _json_object(pairs)
    assert getattr(result, "twice", None) == ["key7"]
    assert CountedKey.comparisons < 4 * size, CountedKey.comparisons  # quadratic: 16,000,000


def test_20000_json_keys_with_duplicates_load_at_once(tmp_path: Path) -> None:
    """A JSON object of 20,000 keys, one given twice: its problems in linear time, not quadratic."""
    import time

    def checked(count: int) -> tuple[float, list[str]]:
        keys = ", ".join(f'"k{index}": {index}' for index in range(count))
        path = tmp_path / f"keys{count}.json"
        path.write_text('{"refreshers": {"names": {"source": "python", ' + keys + ', "k7": 0}}}')
        started = time.perf_counter()
        problems = problems_of(path)
        return time.perf_counter() - started, problems

    # A ratio, not seconds (a loaded CI machine took 5 s): ten times the keys take ten
    # times as long if linear, a hundred times if quadratic.
    small = min(checked(2_000)[0] for _ in range(3))
    large, problems = checked(20_000)
    assert large < 40 * small, (large, small)
    assert "refreshers.names.k7: defined twice (JSON keeps only the last); remove one" in problems


SECRETS = [
    "pässwörd-é",  # non-ASCII: percent-encoded as UTF-8
    "a b c d",  # spaces: %20 in a path, + in params
    'k"e<y>`{|}^\\',
    "abcd?efg#hij",  # ? and # cut a path: the head is what a URL path shows
    "a%2Fb%c",
    "+/=AbC+/=",
    "tab\there\x00",  # httpx refuses it in a URL: masked as written all the same
]


@pytest.mark.parametrize("secret", SECRETS)
def test_a_secret_in_a_url_is_masked_in_every_form_httpx_gives_it(secret: str) -> None:
    """A ${VAR} in a URL path, query, params or credentials: no form of it survives scrub()."""
    from urllib.parse import quote

    from asgi_refresh._config import scrub

    head = secret.split("?")[0].split("#")[0]
    shown = [f"GET {secret}: refused"]
    builds: list[Callable[[], httpx.URL]] = [
        lambda: httpx.URL(f"https://api.example.com/{head}/names"),
        lambda: httpx.URL("https://api.example.com/names", params={"key": secret}),
        lambda: httpx.URL("https://api.example.com/names?key=" + secret.split("#")[0]),
        lambda: httpx.URL(scheme="https", host="api.example.com", username=secret, path="/"),
    ]
    for build in builds:
        with contextlib.suppress(httpx.InvalidURL):  # a URL httpx refuses is never shown
            shown.append(str(build()))
    for text in shown:
        masked = scrub(text, frozenset({secret}))
        assert "***" in masked, text
        for form in {secret, head, quote(head), quote(secret, safe="")}:
            assert len(form) < 4 or form not in masked, (text, masked)


@given(st.text(min_size=4, max_size=16).filter(lambda text: not set(text) & set("?#")))
def test_no_secret_survives_in_a_url_path_or_params(secret: str) -> None:
    """Any text of 4+ characters, as httpx puts it in a path or in params, is masked whole."""
    from asgi_refresh._config import scrub

    shown = str(httpx.URL("https://api.example.com/names", params={"key": secret}))
    forms = {shown: shown.split("?key=", 1)[1]}  # each text, and the secret as it shows there
    with contextlib.suppress(httpx.InvalidURL):  # a URL httpx refuses is never shown
        shown = str(httpx.URL(f"https://api.example.com/{secret}/names"))
        forms[shown] = shown.removeprefix("https://api.example.com/").removesuffix("/names")
    for text, form in forms.items():
        masked = scrub(text, frozenset({secret}))
        assert "***" in masked, (secret, text)
        assert form not in masked or "*" in form, (secret, masked)


def test_a_secret_in_a_url_path_is_never_shown_by_the_config_error(tmp_path: Path) -> None:
    """A problem quoting the URL (a bad scheme) masks the secret in its encoded form too."""
    path = tmp_path / "refresh.toml"
    path.write_text('[refreshers.names]\nsource = "http"\nurl = "ftp://h/${KEY}/names"\nevery = "1h"\n')
    problems = problems_of(path, {"KEY": "pä ss wörd"})
    assert "p%C3%A4%20ss%20w%C3%B6rd" not in "".join(problems)
    assert "pä ss wörd" not in "".join(problems)


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(max_size=20),
        st.sampled_from(["1h", "none", "${HOME}", "$${X}", "${", "tests.test_config:load_names"]),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(
    key=st.sampled_from(
        [o.key for o in refresher_options() if o.parameter not in ("name", "fetch")]
        + ["source", "target", "url", "path", "headers", "params", "parse", "format", "auth", "max_bytes"]
        + ["min_every", "watch", "unknown_key"]
    ),
    value=json_values,
    source=st.sampled_from(["python", "http", "file"]),
)
def test_any_value_for_any_key_is_built_or_a_config_error(key: str, value: Any, source: str) -> None:
    """Whatever JSON-like value a key gets, load_config builds or raises ConfigError; never anything else."""
    table = {"source": source, "every": "1h", "target": "tests.test_config:load_names", key: value}
    if source == "http":
        table = {"url": "https://api.example.com/", **table}
        del table["target"]
    elif source == "file":
        table = {"path": "flags.json", **table}
        del table["target"]
    problems = config_problems({"refreshers": {"names": table}, "middleware": {}}, {"HOME": "/home/x"})
    assert problems is None or problems
    assert all(problem.startswith(("refreshers.", "(top level)")) for problem in problems or [])


def config_problems(config: Any, environ: dict[str, str]) -> list[str] | None:
    """None if ``config`` builds; its problems if it is a ConfigError (anything else fails the test)."""
    try:
        load(config, environ=environ)
    except ConfigError as error:
        return error.problems
    return None


@given(st.text(max_size=40))
def test_escaped_text_reads_back_as_written(text: str) -> None:
    """Any text with each ${ written $${ interpolates to itself, with no problem."""
    config = load(
        {"refreshers": {"names": refresher(required=False, default=text.replace("${", "$${"))}}, environ={}
    )
    assert config.refreshers[0].default == text


@given(
    text=st.text(alphabet=st.sampled_from(list("${}:-_AB1 \\x")), max_size=30),
    environ=st.dictionaries(st.sampled_from(["A", "B", "A1", "_"]), st.text(max_size=8), max_size=3),
)
def test_interpolation_gives_a_value_or_config_errors_only(text: str, environ: dict[str, str]) -> None:
    """Any mix of $, braces, names and defaults: a value, or ConfigError problems naming the key."""
    problems = config_problems({"refreshers": {"names": refresher(required=False, default=text)}}, environ)
    assert all(problem.startswith("refreshers.names.default: ") for problem in problems or []), problems
