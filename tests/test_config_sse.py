"""``source = "sse"`` in a configuration: the SSESource it builds, every bad input it refuses, and a live stream."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager
from hypothesis import given, settings
from hypothesis import strategies as st

from asgi_refresh import ConfigError, Refresher, RefreshMiddleware, SSESource
from asgi_refresh._config import Config, load_config, source_options
from asgi_refresh._duration import parse_duration
from asgi_refresh.demo.upstream import serve

from .helpers import ScriptedApp
from .sse_server_app import SSEUpstream

pytestmark = pytest.mark.anyio

SECRET = "sse-config-secret-4711"
STREAM = "https://flags.example.com/stream"
DOCUMENT = "https://flags.example.com/flags"


def check_flags(value: Any) -> Any:
    """A validate function: ``tests.test_config_sse:check_flags``."""
    return value


def parse_upper(body: bytes) -> str:
    """A parse function: ``tests.test_config_sse:parse_upper``."""
    return body.decode().upper()


def load(config: Any, environ: dict[str, str] | None = None) -> Config:
    """`load_config` as `RefreshMiddleware.from_config` calls it, with SECRET in the environment."""
    return load_config(
        config, {"FLAGS_TOKEN": SECRET} if environ is None else environ, middleware=RefreshMiddleware
    )


def sse(**options: Any) -> dict[str, Any]:
    """A valid ``[refreshers.flags]`` table of an SSE source, with ``options`` on top."""
    return {"source": "sse", "url": STREAM, "every": "5m", **options}


def built(**options: Any) -> SSESource:
    """The SSESource that ``sse(**options)`` builds."""
    source = load({"refreshers": {"flags": sse(**options)}}).refreshers[0].fetch
    assert isinstance(source, SSESource)
    return source


def problems_or_none(config: Any) -> list[str] | None:
    """None if ``config`` builds; its problems if it is a ConfigError (anything else fails the test)."""
    try:
        load(config)
    except ConfigError as error:
        return error.problems
    return None


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Wait for ``condition``, which another thread's server makes true."""
    with anyio.fail_after(within):
        while not condition():  # noqa: ASYNC110 - the server is in another thread: nothing to wait on
            await anyio.sleep(0.002)


def connected(middleware: RefreshMiddleware) -> bool:
    """Whether the refresher ``flags`` has its stream open."""
    return bool(middleware.handle.status()["flags"]["stream"]["connected"])


def problems(config: Any, environ: dict[str, str] | None = None) -> list[str]:
    """The problems of ``config`` (it must have some)."""
    with pytest.raises(ConfigError) as caught:
        load(config, environ)
    return caught.value.problems


TOML = f"""
[refreshers.flags]
source = "sse"
url = "{STREAM}"
on_event = "refetch"
fetch_url = "{DOCUMENT}"
events = ["flags", "message"]
heartbeat_timeout = "45s"
reconnect_delay = "500ms"
max_reconnect_delay = "2m"
max_bytes = 4096
headers = {{ Authorization = "Bearer ${{FLAGS_TOKEN}}", Accept-Language = "en" }}
params = {{ tenant = "acme" }}
auth = ["user", "${{FLAGS_TOKEN}}"]
sse_timeout = "3s"
parse = "tests.test_config_sse:parse_upper"
validate = "tests.test_config_sse:check_flags"
every = "10m"
timeout = "20s"
required = false
default = "off"
"""


def test_every_option_in_a_file_reaches_the_sse_source(tmp_path: Path) -> None:
    """Each key of a TOML [refreshers.flags] table with source = "sse" is on the built SSESource (and its fetch_url's)."""
    path = tmp_path / "refresh.toml"
    path.write_text(TOML)
    config = load(path)
    (refresher,) = config.refreshers
    assert config.sources == {"flags": "sse"}
    assert (refresher.name, refresher.every, refresher.timeout, refresher.required, refresher.default) == (
        "flags",
        600.0,
        20.0,
        False,
        "off",
    )
    source = refresher.fetch
    assert isinstance(source, SSESource)
    assert source.safe_url == STREAM
    assert source.on_event == "refetch"
    assert source.fetch_url == DOCUMENT
    assert source.events == frozenset({"flags", "message"})
    assert (source.heartbeat_timeout, source.reconnect_delay, source.max_reconnect_delay) == (
        45.0,
        0.5,
        120.0,
    )
    assert source.max_bytes == 4096
    assert source._connect_timeout.connect == 3.0
    document = source._document
    assert document is not None
    for http in (source._stream, document):  # the stream and fetch_url are asked the same way
        assert http._request["headers"] == {"Authorization": f"Bearer {SECRET}", "Accept-Language": "en"}
        assert http._request["auth"] == ("user", SECRET)
        assert http._request["timeout"] == 3.0
        assert http.url.params["tenant"] == "acme"
        assert http._parser.format is parse_upper
        assert http._parser.validate is check_flags
    assert str(document.url).startswith(DOCUMENT)
    assert SECRET in config.secrets  # masked wherever the command line prints


def test_only_a_url_gives_the_sources_own_defaults() -> None:
    """Left out, every option is SSESource's default: value events, no fetch_url, all event types, 1m heartbeat."""
    source = built()
    python = SSESource(STREAM)
    assert (source.on_event, source.fetch_url, source.events) == ("value", None, None)
    assert (
        source.heartbeat_timeout,
        source.reconnect_delay,
        source.max_reconnect_delay,
        source.max_bytes,
    ) == (
        python.heartbeat_timeout,
        python.reconnect_delay,
        python.max_reconnect_delay,
        python.max_bytes,
    )
    assert source._stream._parser.format == "json"
    assert "timeout" not in source._stream._request  # the shared client's own


def test_a_json_file_and_a_mapping_build_the_same_source(tmp_path: Path) -> None:
    """The same table as JSON and as a mapping built in Python (which may hold objects) gives an equal source."""
    import tomllib

    document = tomllib.loads(TOML)
    path = tmp_path / "refresh.json"
    path.write_text(json.dumps(document))
    from_json = load(path).refreshers[0].fetch
    table = {**document["refreshers"]["flags"], "validate": check_flags, "parse": parse_upper}
    from_mapping = load({"refreshers": {"flags": table}}).refreshers[0].fetch
    for source in (from_json, from_mapping):
        assert isinstance(source, SSESource)
        assert (source.on_event, source.fetch_url, source.events, source.reconnect_delay) == (
            "refetch",
            DOCUMENT,
            frozenset({"flags", "message"}),
            0.5,
        )
        assert source._stream._parser.validate is check_flags


def test_one_event_type_may_be_a_string() -> None:
    """A string for events is the one type; with a fetch_url given, on_event = "value" keeps fetch_url as the safety net."""
    source = built(events="flags", fetch_url=DOCUMENT, on_event="value")
    assert source.events == frozenset({"flags"})
    assert (source.on_event, source.fetch_url) == ("value", DOCUMENT)


def test_an_sse_refresher_may_take_its_token_from_another_refresher() -> None:
    """A bearer auth works for an SSE stream as for HTTP: the dependency is recorded."""
    config = load(
        {
            "refreshers": {
                "token": {"source": "http", "url": "https://auth.example.com/token", "every": "1h"},
                "flags": sse(auth={"bearer": "token"}),
            }
        }
    )
    assert config.needs["flags"] == ("token",)


BAD: list[tuple[dict[str, Any], list[str]]] = [
    # unknown keys and keys of other sources
    ({"heartbeat": "1m"}, ["refreshers.flags.heartbeat: unknown key; did you mean 'heartbeat_timeout'?"]),
    (
        {"wait": "1m"},
        [
            "refreshers.flags.wait: unknown key for source 'sse' ('wait' is an option of source 'longpoll'); "
            "known keys: auth, backoff_initial, backoff_max, backoff_multiplier, default, events, every, "
            "fetch_url, guard, headers, heartbeat_timeout, jitter, keep_versions, max_bytes, "
            "max_reconnect_delay, max_stale, on_change, on_error, on_event, params, parse, reconnect_delay, "
            "required, snapshot, snapshot_max_age, source, sse_timeout, timeout, url, validate"
        ],
    ),
    (
        {"http_timeout": "1s"},
        [
            "refreshers.flags.http_timeout: unknown key for source 'sse' ('http_timeout' is an option of "
            "source 'http'); did you mean 'sse_timeout'?"
        ],
    ),
    # wrong types
    (
        {"heartbeat_timeout": [1]},
        ['refreshers.flags.heartbeat_timeout: expected a duration like "5m", got a list'],
    ),
    (
        {"reconnect_delay": True},
        ['refreshers.flags.reconnect_delay: expected a duration like "5m", got true'],
    ),
    ({"max_bytes": "1 MB"}, ['refreshers.flags.max_bytes: expected an integer, got "1 MB"']),
    ({"headers": "Bearer x"}, ['refreshers.flags.headers: expected a table of strings, got "Bearer x"']),
    ({"headers": {"X-Retries": 3}}, ["refreshers.flags.headers.X-Retries: expected a string, got 3"]),
    ({"params": ["a"]}, ["refreshers.flags.params: expected a table, got a list"]),
    (
        {"events": 5},
        ['refreshers.flags.events: expected a string or a list of strings like ["message", "flags"], got 5'],
    ),
    ({"events": ["flags", 2]}, ["refreshers.flags.events.1: expected a string, got 2"]),
    ({"on_event": 1}, ['refreshers.flags.on_event: expected one of "value", "refetch", got 1']),
    (
        {"fetch_url": 5},
        ['refreshers.flags.fetch_url: expected a URL like "https://api.example.com/names", got 5'],
    ),
    (
        {"url": {"href": STREAM}},
        ['refreshers.flags.url: expected a URL like "https://api.example.com/names", got a table'],
    ),
    # bad URLs, each under its own key
    (
        {"url": "ftp://flags.example.com/stream"},
        [
            "refreshers.flags.url: must be an absolute http:// or https:// URL (got 'ftp://flags.example.com/stream')"
        ],
    ),
    (
        {"url": "/stream"},
        ["refreshers.flags.url: must be an absolute http:// or https:// URL (got '/stream')"],
    ),
    (
        {"fetch_url": "flags.json"},
        ["refreshers.flags.fetch_url: must be an absolute http:// or https:// URL (got 'flags.json')"],
    ),
    # non-positive durations
    ({"heartbeat_timeout": "0s"}, ["refreshers.flags.heartbeat_timeout: must be > 0 (got '0s')"]),
    ({"heartbeat_timeout": 0}, ["refreshers.flags.heartbeat_timeout: must be > 0 (got 0)"]),
    (
        {"reconnect_delay": "-1s"},
        ['refreshers.flags.reconnect_delay: expected a positive duration like "5m", got "-1s"'],
    ),
    ({"max_reconnect_delay": "0ms"}, ["refreshers.flags.max_reconnect_delay: must be > 0 (got '0ms')"]),
    ({"sse_timeout": "0s"}, ["refreshers.flags.sse_timeout: timeout must be > 0 (got '0s')"]),
    (
        {"heartbeat_timeout": "soon"},
        ['refreshers.flags.heartbeat_timeout: expected a duration like "5m", got "soon"'],
    ),
    (
        {"reconnect_delay": "2m", "max_reconnect_delay": "1m"},
        ["refreshers.flags.reconnect_delay: reconnect_delay (2m) must not exceed max_reconnect_delay (1m)"],
    ),
    ({"max_bytes": 0}, ["refreshers.flags.max_bytes: must be a positive number of bytes (got 0)"]),
    # on_event and what it needs
    (
        {"on_event": "valeu"},
        [
            'refreshers.flags.on_event: expected one of "value", "refetch", got "valeu" (did you mean \'value\'?)'
        ],
    ),
    (
        {"on_event": "refresh"},
        [
            'refreshers.flags.on_event: expected one of "value", "refetch", got "refresh" (did you mean \'refetch\'?)'
        ],
    ),
    (
        {"on_event": "refetch"},
        [
            'refreshers.flags.fetch_url: on_event = "refetch" needs fetch_url: the document an event says changed'
        ],
    ),
    (
        {"on_event": "refetch", "fetch_url": "ftp://flags.example.com/doc"},
        [
            "refreshers.flags.fetch_url: must be an absolute http:// or https:// URL (got 'ftp://flags.example.com/doc')"
        ],
    ),
    (
        {"on_event": "refetch", "fetch_url": ["https://flags.example.com/doc"]},
        ['refreshers.flags.fetch_url: expected a URL like "https://api.example.com/names", got a list'],
    ),
    (
        {"events": []},
        [
            "refreshers.flags.events: an empty list matches nothing; name at least one, or leave events out for all"
        ],
    ),
    # callables and formats
    (
        {"parse": "jsn"},
        [
            'refreshers.flags.parse: expected one of "json", "toml", "text", "bytes" or an import string like "yaml:safe_load", got "jsn" (did you mean \'json\'?)'
        ],
    ),
    (
        {"validate": "tests.test_config_sse:nothing_here"},
        [
            "refreshers.flags.validate: 'tests.test_config_sse' has no attribute 'nothing_here' (in 'tests.test_config_sse:nothing_here')"
        ],
    ),
    (
        {"validate": "tests.test_config_sse:SECRET"},
        [
            "refreshers.flags.validate: 'tests.test_config_sse:SECRET' is not callable (it is str); name a function or class"
        ],
    ),
    # a live client cannot come from a file
    (
        {"client": "myapp:client"},
        [
            "refreshers.flags.client: not configurable in a file: a live `httpx.AsyncClient` cannot "
            "come from a file; build that refresher in Python"
        ],
    ),
    # missing
    ({"url": None}, ['refreshers.flags.url: expected a URL like "https://api.example.com/names", got null']),
]


@pytest.mark.parametrize(("options", "expected"), BAD, ids=[json.dumps(options) for options, _ in BAD])
def test_each_bad_sse_option_is_one_problem_under_its_key(
    options: dict[str, Any], expected: list[str]
) -> None:
    """A wrong type, a bad URL, a non-positive duration, an on_event typo: named by refresher and key, saying what to do."""
    assert problems({"refreshers": {"flags": sse(**options)}}) == expected


def test_a_missing_url_is_reported() -> None:
    """No url: the key is named, with what it expects."""
    table = sse()
    del table["url"]
    assert problems({"refreshers": {"flags": table}}) == [
        'refreshers.flags.url: missing; expected a URL like "https://api.example.com/names"'
    ]


def test_every_problem_of_an_sse_refresher_is_reported_at_once() -> None:
    """Bad URL, bad durations, a typo and an unknown key together: all reported in one ConfigError."""
    found = problems(
        {
            "refreshers": {
                "flags": sse(
                    url="ws://flags.example.com/stream",
                    heartbeat_timeout="0s",
                    reconnect_delay="soon",
                    on_event="vlaue",
                    max_bytes=-1,
                    heartbeet="1m",
                )
            }
        }
    )
    assert sorted(found) == sorted(
        [
            "refreshers.flags.heartbeet: unknown key; did you mean 'heartbeat_timeout'?",
            'refreshers.flags.reconnect_delay: expected a duration like "5m", got "soon"',
            'refreshers.flags.on_event: expected one of "value", "refetch", got "vlaue" (did you mean \'value\'?)',
            "refreshers.flags.url: must be an absolute http:// or https:// URL (got 'ws://flags.example.com/stream')",
            "refreshers.flags.max_bytes: must be a positive number of bytes (got -1)",
            "refreshers.flags.heartbeat_timeout: must be > 0 (got '0s')",
        ]
    )


def test_values_from_the_environment_are_never_shown_in_sse_problems() -> None:
    """A header value with a newline, a bad duration and a bad URL read from ${VARS}: named, never shown."""
    environ = {
        "BAD_HEADER": f"{SECRET}\nX-Injected: 1",
        "BEAT": "secret-soon",
        "STREAM_URL": f"ftp://{SECRET}/x",
    }
    found = problems(
        {
            "refreshers": {
                "flags": sse(
                    url="${STREAM_URL}",
                    headers={"Authorization": "${BAD_HEADER}"},
                    heartbeat_timeout="${BEAT}",
                )
            }
        },
        environ,
    )
    assert len(found) == 3, found
    assert any(line.startswith("refreshers.flags.url: ") for line in found)
    assert any(line.startswith("refreshers.flags.headers: ") for line in found)
    assert (
        'refreshers.flags.heartbeat_timeout: expected a duration like "5m", got the value of ${BEAT} (not shown)'
        in found
    )
    for line in found:
        assert SECRET not in line
        assert "secret-soon" not in line


def test_without_httpx_sse_the_config_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sse extra missing: one problem at the refresher's table, SSESource's own message with the pip command."""
    monkeypatch.setitem(sys.modules, "httpx_sse", None)
    with pytest.raises(ImportError) as caught:
        SSESource(STREAM)
    assert problems({"refreshers": {"flags": sse(fetch_url=DOCUMENT)}}) == [
        f"refreshers.flags: {caught.value}"
    ]
    assert "pip install 'asgi-refresh[sse]'" in str(caught.value)


def test_the_reference_knows_every_sse_option() -> None:
    """Every SSESource parameter but the live client is a key, and none of an unknown kind."""
    keys = {option.parameter: option for option in source_options("sse")}
    assert set(keys) == {
        "url",
        "on_event",
        "fetch_url",
        "events",
        "heartbeat_timeout",
        "max_bytes",
        "reconnect_delay",
        "max_reconnect_delay",
        "headers",
        "params",
        "auth",
        "timeout",
        "parse",
        "validate",
    }
    assert keys["timeout"].key == "sse_timeout"  # the refresher has a timeout of its own
    assert keys["on_event"].kind == "choice"
    assert keys["on_event"].choices == ("value", "refetch")
    assert all(option.kind != "unknown" for option in keys.values())


# -- hypothesis -------------------------------------------------------------------------------

durations = st.one_of(
    st.integers(min_value=-5, max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        ["0s", "1ms", "250ms", "1s", "90s", "1h30m", "-1s", "soon", "", "5", "1e3", "none", "1d"]
    ),
    st.text(max_size=6),
    st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(heartbeat=durations, first=durations, longest=durations)
def test_any_durations_build_the_source_they_say_or_a_config_error(
    heartbeat: Any, first: Any, longest: Any
) -> None:
    """Whatever the three durations, the source gets exactly their seconds, or each bad one is a problem under its key."""
    options = {"heartbeat_timeout": heartbeat, "reconnect_delay": first, "max_reconnect_delay": longest}
    found = problems_or_none({"refreshers": {"flags": sse(**options)}})
    if found is not None:
        assert found
        for line in found:
            assert line.startswith(tuple(f"refreshers.flags.{key}: " for key in options)), line
        return
    source = built(**options)
    assert source.heartbeat_timeout == parse_duration(heartbeat) > 0
    assert source.reconnect_delay == parse_duration(first) > 0
    assert source.max_reconnect_delay == parse_duration(longest) >= source.reconnect_delay


@settings(max_examples=200, deadline=None)
@given(
    key=st.sampled_from([option.key for option in source_options("sse")] + ["source", "every", "unknown"]),
    value=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
        lambda children: (
            st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
        ),
        max_leaves=8,
    ),
)
def test_any_value_for_any_sse_key_is_built_or_a_config_error(key: str, value: Any) -> None:
    """Whatever JSON-like value an SSE key gets, the config builds an SSESource or lists problems under the table."""
    config = {"refreshers": {"flags": sse(**{key: value})}}
    found = problems_or_none(config)
    if found is not None:
        assert found
        assert all(line.startswith("refreshers.flags") for line in found), found
        return
    assert isinstance(load(config).refreshers[0].fetch, SSESource)


# -- a middleware built from the config, on a real stream ---------------------------------------


@pytest.fixture
def upstream() -> Iterator[tuple[SSEUpstream, str]]:
    app = SSEUpstream()
    with serve(app) as base_url:
        app.base_url = base_url
        try:
            yield app, base_url
        finally:
            app.drop()  # uvicorn waits for open responses at shutdown


async def test_a_middleware_from_a_config_file_streams_values(
    upstream: tuple[SSEUpstream, str], tmp_path: Path
) -> None:
    """From a TOML file: the first value from fetch_url, then each event published within moments, with the token sent."""
    server, base_url = upstream
    server.document = {"v": 0}
    path = tmp_path / "refresh.toml"
    path.write_text(
        f"""
[refreshers.flags]
source = "sse"
url = "{base_url}/stream"
fetch_url = "{base_url}/doc"
headers = {{ Authorization = "Bearer ${{FLAGS_TOKEN}}" }}
heartbeat_timeout = "5s"
reconnect_delay = "50ms"
every = "1h"
"""
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLAGS_TOKEN", SECRET)
        middleware = RefreshMiddleware.from_config(ScriptedApp(), path)
    (refresher,) = middleware.refreshers
    assert isinstance(refresher, Refresher)
    assert isinstance(refresher.fetch, SSESource)
    async with LifespanManager(middleware):
        handle = middleware.handle
        assert handle.value("flags") == {"v": 0}
        await until(lambda: connected(middleware))
        for number in (1, 2, 3):
            server.emit({"v": number})
            await until(lambda number=number: handle.value("flags") == {"v": number})  # type: ignore[misc]
        stream = handle.status()["flags"]["stream"]
        assert stream["events"] == 3
        assert stream["reconnects"] == 0
        transport = httpx.ASGITransport(app=middleware)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            assert (await client.get("/")).status_code == 200


async def test_a_refetch_stream_from_a_mapping_fetches_the_document_on_each_event(
    upstream: tuple[SSEUpstream, str],
) -> None:
    """on_event = "refetch", events = ["changed"]: a "changed" event fetches fetch_url; other event types do nothing."""
    server, base_url = upstream
    server.document = {"v": "first"}
    config = {
        "refreshers": {
            "flags": sse(
                url=f"{base_url}/stream",
                fetch_url=f"{base_url}/doc",
                on_event="refetch",
                events=["changed"],
                reconnect_delay="50ms",
                every="1h",
            )
        }
    }
    middleware = RefreshMiddleware.from_config(ScriptedApp(), config)
    async with LifespanManager(middleware):
        handle = middleware.handle
        assert handle.value("flags") == {"v": "first"}
        await until(lambda: connected(middleware))
        # The first GET, then the catch-up GET once connected: done before the events, so
        # only an event can fetch the document (which each emit changes) from here on.
        await until(lambda: server.doc_requests == 2)
        server.emit({"v": "ignored"}, event="other")
        server.emit({"v": "second"}, event="changed")
        await until(lambda: handle.value("flags") == {"v": "second"})
        stream = handle.status()["flags"]["stream"]
        assert stream["events"] == 1  # the "other" event did not count
        assert server.doc_requests == 3  # nor fetch
