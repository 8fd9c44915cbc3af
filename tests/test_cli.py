"""The command line, ``python -m asgi_refresh check|fetch``, against a local upstream and temp files.

Every test runs twice: as a real subprocess (what an operator runs) and in-process
through ``main()`` (so that coverage sees it).
"""

from __future__ import annotations

import importlib
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager

import asgi_refresh._sources.http
from asgi_refresh import RefreshMiddleware
from asgi_refresh import _snapshots as snapshots
from asgi_refresh._cli import main
from asgi_refresh.demo.upstream import Upstream, serve

from .helpers import ScriptedApp
from .sse_server_app import SSEUpstream

SECRET = "sekrit-cli-value-123"
ODD_SECRET = "pä ss wörd<+>"  # percent-encoded in a URL path: p%C3%A4%20ss%20w%C3%B6rd%3C+%3E

TOKENS_MODULE = """\
import json

import anyio

from asgi_refresh import Fetched, Fresh, Source
from asgi_refresh._snapshots import DEFAULT_MAX_BYTES as HUGE


def grant(body):
    data = json.loads(body)
    return Fresh(data["access_token"], expires_in=data["expires_in"])


async def hang():
    await anyio.sleep(3600)


def a_set():
    return {1}


def quick():
    return [1, 2, 3]


async def _later():
    await anyio.sleep(0.2)
    return "later"


def deferred():
    return _later()


class PlainSource:
    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc_info):
        return None

    def __call__(self):
        return "plain"


plain_source = PlainSource()


def hostile():
    return {"text": "\x1b[2J\x1b[31mred\u009b1m\u202eevil\x07"}


def failing():
    raise OSError("\x1b[31mdisk on fire\u202e")


def short_lived():
    return Fresh({"key": "k-123"}, expires_in=600)


class SetCodec:
    def encode(self, value):
        return json.dumps(sorted(value) if isinstance(value, set) else value).encode()

    def decode(self, data):
        return json.loads(data)

    def __repr__(self):
        return "SetCodec()"


set_codec = SetCodec()


def huge():
    return "x" * HUGE


class NoValidators(Source):
    kind = "custom"

    async def fetch(self):
        return Fetched(["v"])

    def handover(self):
        raise RuntimeError("no validators today")

    async def __call__(self):  # a config's target must be callable
        return await self.fetch()


no_validators = NoValidators()
"""


@dataclass
class Ran:
    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)


Run = Callable[..., Ran]


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[Upstream, str]]:
    app = Upstream(token_lifetime=300)
    app.set("/names", ["ada", "grace"])
    app.set("/protected", {"orders": 3})
    with serve(app) as base_url:
        yield app, base_url


class SlowTokens:
    """The upstream, with a token endpoint that takes TOKEN_DELAY to answer."""

    def __init__(self, app: Upstream) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/token":
            await anyio.sleep(TOKEN_DELAY)
        await self.app(scope, receive, send)


TOKEN_DELAY = 0.5


@pytest.fixture(scope="module")
def slow_tokens() -> Iterator[str]:
    app = Upstream(token_lifetime=300)
    app.set("/protected", {"orders": 3})
    with serve(SlowTokens(app)) as base_url:
        yield base_url


@pytest.fixture(params=["subprocess", "in-process"])
def cli(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Run:
    """Run the command line in tmp_path with NAMES_TOKEN set, one way or the other."""
    (tmp_path / "cli_tokens.py").write_text(TOKENS_MODULE)
    env = {"NAMES_TOKEN": SECRET, "ODD_TOKEN": ODD_SECRET}

    def subprocess_run(*args: str) -> Ran:
        done = subprocess.run(
            [sys.executable, "-m", "asgi_refresh", *args],
            cwd=tmp_path,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return Ran(done.returncode, done.stdout, done.stderr)

    def in_process(*args: str) -> Ran:
        monkeypatch.chdir(tmp_path)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        path = list(sys.path)
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse: --help, usage errors
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            sys.path[:] = path
            sys.modules.pop("cli_tokens", None)
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    return subprocess_run if request.param == "subprocess" else in_process


def write(tmp_path: Path, base_url: str, extra: str = "") -> str:
    (tmp_path / "flags.toml").write_text("dark_mode = true\n")
    (tmp_path / "refresh.toml").write_text(
        f"""
[defaults]
timeout = "10s"

[refreshers.names]
source = "http"
url = "{base_url}/names?key=${{NAMES_TOKEN}}"
headers = {{ Authorization = "Bearer ${{NAMES_TOKEN}}", X-Api-Key = "literal-key-in-file" }}
every = "1h"

[refreshers.token]
source = "http"
url = "{base_url}/token"
method = "POST"
parse = "cli_tokens:grant"
every = "1h"

[refreshers.orders]
source = "http"
url = "{base_url}/protected"
auth = {{ bearer = "token" }}
every = "5m"

[refreshers.flags]
source = "file"
path = "flags.toml"
every = "5s"
watch = true
required = false
default = {{}}
{extra}
"""
    )
    return "refresh.toml"


def no_secrets(ran: Ran) -> None:
    for text in (ran.out, ran.err):
        assert SECRET not in text
        assert "literal-key-in-file" not in text
        assert "key=" not in text


# -- check ----------------------------------------------------------------------------------


def test_check_prints_a_table_of_the_refreshers(cli: Run, tmp_path: Path) -> None:
    """Check validates and lists name, source, schedule and required; no header or query is shown."""
    ran = cli("check", write(tmp_path, "https://api.example.com"))
    assert ran.code == 0, ran.err
    lines = ran.out.splitlines()
    assert lines[0] == "refresh.toml: valid, 4 refreshers"
    assert lines[2].split() == ["NAME", "SOURCE", "SCHEDULE", "REQUIRED"]
    assert lines[3].split() == ["names", "http", "GET", "https://api.example.com/names", "every", "1h", "yes"]
    assert lines[4].split() == [
        "token",
        "http",
        "POST",
        "https://api.example.com/token",
        "every",
        "1h",
        "yes",
    ]
    assert lines[5].split() == [
        "orders",
        "http",
        "GET",
        "https://api.example.com/protected",
        "every",
        "5m",
        "yes",
    ]
    assert lines[6].split() == [
        "flags",
        "file",
        str(tmp_path / "flags.toml"),
        "every",
        "5s",
        "+",
        "watch",
        "no",
    ]
    no_secrets(ran)


def test_check_json_is_one_document(cli: Run, tmp_path: Path) -> None:
    """Check --json prints one JSON document for scripts."""
    ran = cli("check", "--json", write(tmp_path, "https://api.example.com"))
    assert ran.code == 0
    document = ran.json
    assert document["ok"] is True
    assert [item["name"] for item in document["refreshers"]] == ["names", "token", "orders", "flags"]
    assert document["refreshers"][2] == {
        "name": "orders",
        "source": "http",
        "from": "GET https://api.example.com/protected",
        "every": 300.0,
        "schedule": "every 5m",
        "timeout": 10.0,
        "required": True,
        "needs": ["token"],
    }
    no_secrets(ran)


def test_check_shows_cache_header_schedules(cli: Run, tmp_path: Path) -> None:
    """A source that follows caching headers says so in the schedule, with its bounds."""
    (tmp_path / "refresh.json").write_text(
        json.dumps(
            {
                "refreshers": {
                    "rates": {
                        "source": "http",
                        "url": "https://x/rates",
                        "every": "1h",
                        "min_every": "1m",
                        "max_every": "1h",
                    }
                }
            }
        )
    )
    ran = cli("check", "refresh.json")
    assert ran.code == 0
    assert "every 1h (cache headers, 1m..1h)" in ran.out
    assert ran.out.startswith("refresh.json: valid, 1 refresher\n")


def sse_config(tmp_path: Path, base_url: str, extra: str = "") -> str:
    """Two SSE refreshers: ``pushed`` with a fetch_url, ``streamed`` with the stream alone."""
    (tmp_path / "refresh.toml").write_text(
        f"""
[refreshers.pushed]
source = "sse"
url = "{base_url}/stream?key=${{NAMES_TOKEN}}"
fetch_url = "{base_url}/doc"
events = ["flags"]  # not the test's events (type "message"): its value is the document's
headers = {{ Authorization = "Bearer ${{NAMES_TOKEN}}" }}
reconnect_delay = "50ms"
every = "5m"

[refreshers.streamed]
source = "sse"
url = "{base_url}/stream"
reconnect_delay = "50ms"
every = "5m"
timeout = "1s"
{extra}
"""
    )
    return "refresh.toml"


def test_check_shows_an_sse_stream_its_fetch_url_and_schedule(cli: Run, tmp_path: Path) -> None:
    """An SSE refresher's row: the stream's URL, its fetch_url, and every as the fallback (or none to poll)."""
    path = sse_config(tmp_path, "https://flags.example.com")
    ran = cli("check", path)
    assert ran.code == 0, ran.err
    lines = ran.out.splitlines()
    assert lines[3].split() == [
        "pushed",
        "sse",
        "https://flags.example.com/stream",
        "+",
        "fetch_url",
        "https://flags.example.com/doc",
        "stream",
        "(value);",
        "every",
        "5m",
        "while",
        "it",
        "is",
        "down",
        "yes",
    ]
    assert lines[4].split()[:3] == ["streamed", "sse", "https://flags.example.com/stream"]
    assert "stream (value) only: no fetch_url to poll" in lines[4]
    no_secrets(ran)
    document = cli("check", "--json", path).json
    assert document["refreshers"][1] == {
        "name": "streamed",
        "source": "sse",
        "from": "https://flags.example.com/stream",
        "every": 300.0,
        "schedule": "stream (value) only: no fetch_url to poll",
        "timeout": 1.0,
        "required": True,
        "needs": [],
    }


@pytest.fixture
def sse_upstream() -> Iterator[tuple[SSEUpstream, str]]:
    app = SSEUpstream()
    with serve(app) as base_url:
        app.base_url = base_url
        try:
            yield app, base_url
        finally:
            app.drop()  # uvicorn waits for open responses at shutdown


def test_fetch_of_an_sse_refresher_gets_fetch_url_or_the_first_event(
    cli: Run, tmp_path: Path, sse_upstream: tuple[SSEUpstream, str]
) -> None:
    """With fetch_url, fetch gets the document (as startup does); without, the stream's first event."""
    server, base_url = sse_upstream
    server.emit({"v": "event"})
    server.document = {"v": "document"}
    path = sse_config(tmp_path, base_url)
    # Long enough for a cold client to connect and read the first event on a loaded
    # machine (the 0.9 s of a 1 s timeout were not): it returns at that event.
    (tmp_path / path).write_text((tmp_path / path).read_text().replace('timeout = "1s"', 'timeout = "10s"'))
    ran = cli("fetch", "--json", path)
    assert ran.code == 0, ran.out + ran.err
    pushed, streamed = ran.json["refreshers"]
    assert (pushed["outcome"], pushed["preview"]) == ("ok", '{"v":"document"}')
    assert (streamed["outcome"], streamed["preview"]) == ("ok", '{"v":"event"}')
    assert server.doc_requests >= 1
    no_secrets(ran)


def test_a_quiet_stream_without_fetch_url_says_why_fetch_failed(
    cli: Run, tmp_path: Path, sse_upstream: tuple[SSEUpstream, str]
) -> None:
    """Connected, no event within the timeout: the error says the first value is the first event, and what to set."""
    server, base_url = sse_upstream
    server.document = {"v": "document"}
    path = sse_config(tmp_path, base_url)
    # Long enough that a loaded machine (the suite on every core) connects well within
    # it: the message is the connected stream's, not "did not connect within".
    (tmp_path / path).write_text((tmp_path / path).read_text().replace('timeout = "1s"', 'timeout = "3s"'))
    ran = cli("fetch", "--json", path, "streamed")
    assert ran.code == 1
    (streamed,) = ran.json["refreshers"]
    assert streamed["error"] == (
        f"SourceError: SSE {base_url}/stream: the stream sent no event within 2.7s, and there is no "
        "fetch_url: the first value is the stream's first event. Set fetch_url to a document with the "
        "same value, or a longer timeout if events are rare"
    )


def test_a_quiet_stream_cut_off_by_the_command_timeout_says_why(
    cli: Run, tmp_path: Path, sse_upstream: tuple[SSEUpstream, str]
) -> None:
    """No timeout of its own: --timeout cuts it off, with the same explanation."""
    _, base_url = sse_upstream
    path = sse_config(tmp_path, base_url)
    (tmp_path / path).write_text((tmp_path / path).read_text().replace('timeout = "1s"', 'timeout = "none"'))
    ran = cli(
        "fetch", path, "streamed", "--timeout", "3s"
    )  # connected well within it, even on a loaded machine
    assert ran.code == 1
    assert "no result within 3s (--timeout); the stream is connected but sent no event yet" in ran.out


def test_a_stream_that_is_down_without_fetch_url_fails_with_the_streams_reason(
    cli: Run, tmp_path: Path, sse_upstream: tuple[SSEUpstream, str]
) -> None:
    """A refused stream and nothing to poll: the fetch fails at once naming the stream's error, no more."""
    server, base_url = sse_upstream
    server.refuse = True
    path = sse_config(tmp_path, base_url)
    # A refusal ends the fetch at once: a long timeout costs nothing, and a loaded
    # machine (the suite on every core) cannot turn it into "did not connect within".
    (tmp_path / path).write_text((tmp_path / path).read_text().replace('timeout = "1s"', 'timeout = "20s"'))
    ran = cli("fetch", "--json", path, "streamed")
    assert ran.code == 1
    (streamed,) = ran.json["refreshers"]
    error = streamed["error"]
    assert error.startswith(f"SourceError: SSE {base_url}/stream: the stream is down (")
    assert "HTTP 503" in error
    assert error.endswith("and there is no fetch_url")


def test_an_invalid_config_exits_2_listing_every_problem(cli: Run, tmp_path: Path) -> None:
    """Problems go to stderr, one per line with its key path, and the exit status is 2."""
    path = write(tmp_path, "https://x", '[refreshers.extra]\nsource = "htp"\nevery = "soon"\n')
    ran = cli("check", path)
    assert ran.code == 2
    assert ran.out == ""
    assert ran.err.splitlines() == [
        "invalid configuration in 'refresh.toml' (2 problems):",
        '  refreshers.extra.source: expected one of "http", "file", "longpoll", "sse", "python", got "htp" (did you mean \'http\'?)',
        '  refreshers.extra.every: expected a duration like "5m", got "soon"',
    ]
    as_json = cli("fetch", "--json", path)
    assert as_json.code == 2
    assert as_json.json["ok"] is False
    assert len(as_json.json["problems"]) == 2


def test_a_missing_file_exits_2(cli: Run) -> None:
    """A config that does not exist is said to be missing, not invalid, and not a traceback."""
    ran = cli("check", "nowhere.toml")
    assert ran.code == 2
    assert ran.err == "nowhere.toml: file not found\n"


def test_one_problem_is_one_problem(cli: Run, tmp_path: Path) -> None:
    """The count of problems is singular when there is one."""
    path = write(tmp_path, "https://x", '[refreshers.extra]\nsource = "http"\nurl = "https://x"\n')
    ran = cli("check", path)
    assert ran.code == 2
    assert ran.err.splitlines()[0] == "invalid configuration in 'refresh.toml' (1 problem):"


# -- fetch ----------------------------------------------------------------------------------


def test_fetch_runs_each_refresher_once(cli: Run, tmp_path: Path, upstream: tuple[Upstream, str]) -> None:
    """Fetch shows outcome, time, size and preview; a token's value is hidden; exit 0."""
    ran = cli("fetch", write(tmp_path, upstream[1]))
    assert ran.code == 0, ran.out + ran.err
    rows = {line.split()[0]: line for line in ran.out.splitlines()[1:5]}
    assert rows.keys() == {"names", "token", "orders", "flags"}
    assert rows["names"].split()[1] == "ok"
    assert rows["names"].split()[3:] == ["15", "B", "JSON", '["ada","grace"]']
    assert rows["token"].endswith("(hidden: looks like a secret)")
    assert rows["orders"].endswith('{"orders":3}')
    assert rows["flags"].endswith('{"dark_mode":true}')
    assert ran.out.splitlines()[-1] == "4 ok, 0 failed"
    no_secrets(ran)


def test_fetch_json_and_a_failed_required_refresher(
    cli: Run, tmp_path: Path, upstream: tuple[Upstream, str]
) -> None:
    """A required refresher that fails makes the exit status 1; --json says which, and why."""
    path = write(
        tmp_path,
        upstream[1],
        f'[refreshers.gone]\nsource = "http"\nurl = "{upstream[1]}/gone"\nevery = "1h"\n',
    )
    ran = cli("fetch", "--json", path)
    assert ran.code == 1
    document = ran.json
    assert document["ok"] is False
    gone = document["refreshers"][-1]
    assert gone["name"] == "gone"
    assert gone["outcome"] == "failed"
    assert gone["error"] == f"SourceError: HTTP 404 Not Found from GET {upstream[1]}/gone"
    names = document["refreshers"][0]
    assert names["size"] == 15
    assert names["size_of"] == "JSON"
    assert names["duration"] > 0
    assert document["refreshers"][1]["needed_by"] == ["orders"]
    table = cli("fetch", path)
    assert table.code == 1
    assert table.out.splitlines()[-1] == "4 ok, 1 failed; a required refresher failed"
    no_secrets(ran)


def test_a_failed_refresher_that_is_not_required_still_exits_0(
    cli: Run, tmp_path: Path, upstream: tuple[Upstream, str]
) -> None:
    """Required = false failing is reported, not fatal."""
    extra = (
        f'[refreshers.gone]\nsource = "http"\nurl = "{upstream[1]}/gone"\nevery = "1h"\nrequired = false\n'
    )
    ran = cli("fetch", write(tmp_path, upstream[1], extra), "gone", "-v")
    assert ran.code == 0
    assert "FAILED (not required)" in ran.out
    assert ran.out.splitlines()[-1] == "0 ok, 1 failed"
    assert "WARNING asgi_refresh: Refresher 'gone' failed" in ran.err  # -v shows the log


def test_the_verbose_log_masks_values_from_the_environment(
    cli: Run, tmp_path: Path, upstream: tuple[Upstream, str]
) -> None:
    """With -v, a value from ${VAR} in a URL path is masked in the log lines as in the table."""
    extra = (
        f'[refreshers.gone]\nsource = "http"\nurl = "{upstream[1]}/private/${{NAMES_TOKEN}}"\n'
        'every = "1h"\nrequired = false\n'
    )
    ran = cli("fetch", write(tmp_path, upstream[1], extra), "gone", "-v")
    assert ran.code == 0
    assert "WARNING asgi_refresh: Refresher 'gone' failed" in ran.err
    assert f"{upstream[1]}/private/***" in ran.err
    no_secrets(ran)


def test_fetching_one_name_fetches_what_it_needs(
    cli: Run, tmp_path: Path, upstream: tuple[Upstream, str]
) -> None:
    """Fetch orders also fetches token, which orders authenticates with."""
    ran = cli("fetch", "--json", write(tmp_path, upstream[1]), "orders")
    assert ran.code == 0
    assert [item["name"] for item in ran.json["refreshers"]] == ["token", "orders"]
    assert ran.json["refreshers"][1]["preview"] == '{"orders":3}'


def test_a_failed_dependency_is_named(cli: Run, tmp_path: Path, upstream: tuple[Upstream, str]) -> None:
    """When the token fails, orders is reported as not fetched because of it, at once."""
    path = write(tmp_path, upstream[1])
    config = (tmp_path / path).read_text().replace(f"{upstream[1]}/token", f"{upstream[1]}/no-token")
    (tmp_path / path).write_text(config)
    ran = cli("fetch", path, "orders", "--json")
    assert ran.code == 1
    token, orders = ran.json["refreshers"]
    assert token["outcome"] == orders["outcome"] == "failed"
    assert orders["error"] == "not fetched: it needs 'token', which failed"


def test_each_row_times_its_own_fetch(
    cli: Run, tmp_path: Path, slow_tokens: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row's time is its own fetch: not the HTTP client's creation, nor the wait for a slow token."""
    real_new_client = asgi_refresh._sources.http._new_client

    def cold_new_client() -> Any:
        # In process, httpx's first client is already warm; make it as slow as a cold
        # one is in a fresh process (imports, TLS setup), blocking the event loop.
        time.sleep(0.3)
        return real_new_client()

    monkeypatch.setattr(asgi_refresh._sources.http, "_new_client", cold_new_client)
    (tmp_path / "refresh.toml").write_text(
        f"""
[defaults]
every = "1h"

[refreshers.fast]
source = "python"
target = "cli_tokens:quick"

[refreshers.token]
source = "http"
url = "{slow_tokens}/token"
method = "POST"
parse = "cli_tokens:grant"

[refreshers.orders]
source = "http"
url = "{slow_tokens}/protected"
auth = {{ bearer = "token" }}
"""
    )
    ran = cli("fetch", "--json", "refresh.toml")
    assert ran.code == 0, ran.out + ran.err
    took = {item["name"]: item["duration"] for item in ran.json["refreshers"]}
    assert took["fast"] < 0.05, took
    assert took["token"] >= TOKEN_DELAY, took
    assert took["orders"] < TOKEN_DELAY / 2, took


def test_every_kind_of_fetch_is_timed(cli: Run, tmp_path: Path) -> None:
    """A coroutine returned by a plain function is timed to its end; a plain source and a failure get a time too."""
    (tmp_path / "refresh.toml").write_text(
        '[defaults]\nevery = "1h"\n'
        '[refreshers.deferred]\nsource = "python"\ntarget = "cli_tokens:deferred"\n'
        '[refreshers.plain]\nsource = "python"\ntarget = "cli_tokens:plain_source"\n'
        '[refreshers.failing]\nsource = "python"\ntarget = "cli_tokens:failing"\nrequired = false\n'
    )
    ran = cli("fetch", "--json", "refresh.toml")
    assert ran.code == 0, ran.out + ran.err
    deferred, plain, failing = ran.json["refreshers"]
    assert (deferred["outcome"], deferred["preview"]) == ("ok", '"later"')
    assert 0.2 <= deferred["duration"] < 5
    assert (plain["outcome"], plain["preview"]) == ("ok", '"plain"')
    assert 0 < plain["duration"] < 5
    assert failing["outcome"] == "failed"
    assert 0 <= failing["duration"] < 5


def test_fetch_gives_up_after_timeout(cli: Run, tmp_path: Path) -> None:
    """A fetch with no timeout of its own that hangs is cut off by --timeout."""
    (tmp_path / "refresh.toml").write_text(
        '[refreshers.slow]\nsource = "python"\ntarget = "cli_tokens:hang"\nevery = "1h"\ntimeout = "none"\n'
    )
    ran = cli("fetch", "refresh.toml", "--timeout", "300ms")
    assert ran.code == 1
    assert "no result within 300ms (--timeout)" in ran.out


def test_sizes_say_what_they_count(cli: Run, tmp_path: Path) -> None:
    """Text is counted in UTF-8 bytes, bytes as bytes, other values by their repr; --no-preview hides data."""
    (tmp_path / "note.txt").write_text("héllo\n")
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01")
    (tmp_path / "refresh.toml").write_text(
        '[defaults]\nevery = "1h"\n'
        '[refreshers.note]\nsource = "file"\npath = "note.txt"\n'
        '[refreshers.blob]\nsource = "file"\npath = "blob.bin"\nformat = "bytes"\n'
        '[refreshers.odd]\nsource = "python"\ntarget = "cli_tokens:a_set"\n'
    )
    ran = cli("fetch", "--json", "refresh.toml")
    assert ran.code == 0
    note, blob, odd = ran.json["refreshers"]
    assert (note["size"], note["size_of"], note["preview"]) == (7, "UTF-8 text", '"héllo\\n"')
    assert (blob["size"], blob["size_of"], blob["preview"]) == (2, "bytes", "b'\\x00\\x01'")
    assert (odd["size"], odd["size_of"], odd["preview"]) == (3, "repr", "{1}")
    hidden = cli("fetch", "--json", "--no-preview", "refresh.toml")
    assert [item["preview"] for item in hidden.json["refreshers"]] == [None, None, None]


def test_a_long_preview_is_cut_to_one_line(cli: Run, tmp_path: Path) -> None:
    """The preview is one line of at most 60 characters."""
    (tmp_path / "long.json").write_text(json.dumps({"text": "word " * 40}, indent=2))
    (tmp_path / "refresh.toml").write_text(
        '[refreshers.long]\nsource = "file"\npath = "long.json"\nevery = "1h"\n'
    )
    preview = cli("fetch", "--json", "refresh.toml").json["refreshers"][0]["preview"]
    assert len(preview) == 60
    assert preview.endswith("…")
    assert "\n" not in preview


def test_an_unknown_name_exits_2(cli: Run, tmp_path: Path) -> None:
    """Fetch of a name the config does not have says which names it has."""
    ran = cli("fetch", write(tmp_path, "https://x"), "order")
    assert ran.code == 2
    assert ran.err.strip() == (
        "refresh.toml: no refresher named 'order' (known: names, token, orders, flags); did you mean 'orders'?"
    )


# -- the command line itself ------------------------------------------------------------------


def test_help_reads_well(cli: Run) -> None:
    """--help lists the commands and the exit statuses; each command has its own help."""
    ran = cli("--help")
    assert ran.code == 0
    assert "check     validate CONFIG and list its refreshers" in ran.out
    assert "fetch     fetch each refresher once and show what came back" in ran.out
    assert "  1  fetch: at least one required refresher failed" in ran.out
    fetch = cli("fetch", "--help")
    assert fetch.code == 0
    assert "--no-preview" in fetch.out
    assert "The preview shows the data itself" in fetch.out
    assert "--write-snapshot DIR" in fetch.out
    assert "a middleware with snapshot_dir = DIR starts from" in " ".join(fetch.out.split())
    assert "with --write-snapshot, any\n     refresher failed" in fetch.out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), "the following arguments are required: COMMAND"),
        (("check",), "the following arguments are required: CONFIG"),
        (("lint", "x.toml"), "invalid choice: 'lint'"),
        (("fetch", "x.toml", "--timeout", "soon"), "argument --timeout: expected a duration like"),
        (("fetch", "x.toml", "--timeout", "0s"), "argument --timeout: must be > 0 (got '0s')"),
    ],
)
def test_usage_errors_exit_2(cli: Run, args: tuple[str, ...], expected: str) -> None:
    """A wrong command line is exit status 2 with argparse's usage message."""
    ran = cli(*args)
    assert ran.code == 2
    assert expected in ran.err


def test_the_console_script_is_declared() -> None:
    """Pyproject declares asgi-refresh = asgi_refresh._cli:main."""
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"] == {"asgi-refresh": "asgi_refresh._cli:main"}


def test_a_reader_that_goes_away_is_not_an_error(tmp_path: Path) -> None:
    """`asgi-refresh check CONFIG | head -1`: the closed pipe ends the command quietly, exit 0."""
    config = tmp_path / "refresh.toml"
    config.write_text('[refreshers.names]\nsource = "python"\ntarget = "time:time"\nevery = "1h"\n')
    process = subprocess.Popen(
        [sys.executable, "-m", "asgi_refresh", "check", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    process.stdout.close()  # before the command writes anything
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0
    assert b"Traceback" not in stderr
    assert b"BrokenPipeError" not in stderr


# -- hostile input: deep files, terminal controls, encoded secrets ---------------------------

RAW_CONTROLS = ("\x1b", "\x9b", "\u202e", "\x07")


def no_raw_controls(ran: Ran) -> None:
    """Nothing a terminal would act on reaches stdout or stderr unescaped."""
    for text in (ran.out, ran.err):
        for char in RAW_CONTROLS:
            assert char not in text, (char, text)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("deep.toml", "x = " + "[" * 5000 + "]" * 5000),
        ("deep.json", "[" * 100_000 + "]" * 100_000),
        ("digits.json", "1" * 5000),
    ],
)
def test_a_hostile_file_exits_2_with_one_line(cli: Run, tmp_path: Path, name: str, text: str) -> None:
    """Deeply nested or 5000-digit files: exit 2 and one problem line, not a traceback (it was exit 1)."""
    (tmp_path / name).write_text(text)
    ran = cli("check", name)
    assert ran.code == 2
    assert "Traceback" not in ran.err
    assert len(ran.err.splitlines()) == 2, ran.err
    assert ran.err.splitlines()[1].startswith(f"  {name}: ")


def test_outside_text_is_escaped_in_every_output(cli: Run, tmp_path: Path) -> None:
    """A path, an import error, a fetch error and a value with terminal controls: shown escaped, in text and JSON."""
    (tmp_path / "odd_module.py").write_text('raise RuntimeError("\\x1b[2Jwiped\\u202e")\n')
    (tmp_path / "bad.toml").write_text(
        '[refreshers.odd]\nsource = "python"\ntarget = "odd_module:load"\nevery = "1h"\n'
    )
    for json_flag in ((), ("--json",)):
        ran = cli("check", *json_flag, "bad.toml")
        assert ran.code == 2
        assert "wiped" in ran.out + ran.err
        no_raw_controls(ran)
    assert "\\x1b[2Jwiped\\u202e" in cli("check", "bad.toml").err

    (tmp_path / "refresh.toml").write_text(
        '[defaults]\nevery = "1h"\nrequired = false\n'
        '[refreshers.path]\nsource = "file"\npath = "\\u001b[31mred.json"\n'
        '[refreshers.data]\nsource = "python"\ntarget = "cli_tokens:hostile"\n'
        '[refreshers.fails]\nsource = "python"\ntarget = "cli_tokens:failing"\n'
    )
    commands: list[tuple[str, ...]] = [
        ("check", "refresh.toml"),
        ("check", "--json", "refresh.toml"),
        ("fetch", "refresh.toml"),
        ("fetch", "-v", "--json", "refresh.toml"),
        ("fetch", "refresh.toml", "\x1b[31mnope"),
    ]
    for args in commands:
        ran = cli(*args)
        assert ran.code in (0, 2), ran.err
        no_raw_controls(ran)
    text = cli("fetch", "refresh.toml").out
    assert "\\x1b[31mdisk on fire\\u202e" in text
    assert "\\u001b[2J" in text  # the preview is JSON: C0 controls escaped there, the rest by printable
    assert "\\x9b1m\\u202eevil" in text
    assert "\\x1b[31mred.json" in cli("check", "refresh.toml").out


def test_a_secret_in_a_url_path_is_masked_percent_encoded(cli: Run, tmp_path: Path) -> None:
    """${ODD_TOKEN} in a URL path shows percent-encoded: masked there too, in check, fetch and the -v log."""
    (tmp_path / "refresh.toml").write_text(
        '[refreshers.odd]\nsource = "http"\nurl = "http://127.0.0.1:9/v1/${ODD_TOKEN}/names"\n'
        'every = "1h"\nrequired = false\nhttp_timeout = "2s"\n'
    )
    encoded = "p%C3%A4%20ss%20w%C3%B6rd%3C+%3E"
    for args in (
        ("check", "refresh.toml"),
        ("fetch", "-v", "refresh.toml"),
        ("fetch", "--json", "refresh.toml"),
    ):
        ran = cli(*args)
        assert ran.code == 0, ran.err
        assert "http://127.0.0.1:9/v1/***/names" in ran.out
        for text in (ran.out, ran.err):
            assert encoded not in text
            assert ODD_SECRET not in text


# -- fetch with the config's codec, and --write-snapshot ---------------------------------------


def test_fetch_encodes_with_the_configs_codec(cli: Run, tmp_path: Path) -> None:
    """A refresher that keeps versions is encoded with [middleware] codec, as in the app (JSON refused a set)."""
    (tmp_path / "refresh.toml").write_text(
        '[middleware]\ncodec = "cli_tokens:set_codec"\n'
        '[refreshers.odd]\nsource = "python"\ntarget = "cli_tokens:a_set"\nevery = "1h"\nkeep_versions = 2\n'
    )
    ran = cli("fetch", "--json", "refresh.toml")
    assert ran.code == 0, ran.out + ran.err
    assert ran.json["refreshers"][0]["outcome"] == "ok"
    assert ran.json["refreshers"][0]["preview"] == "{1}"


def snapshot_config(tmp_path: Path, base_url: str, extra: str = "") -> str:
    """A config with an HTTP source (ETags), a file, a refresher opted out and a Fresh token."""
    (tmp_path / "flags.json").write_text('{"dark_mode": true}')
    (tmp_path / "refresh.toml").write_text(
        f"""
[defaults]
every = "1h"

[refreshers.names]
source = "http"
url = "{base_url}/names"
keep_versions = 2

[refreshers.flags]
source = "file"
path = "flags.json"

[refreshers.private]
source = "python"
target = "cli_tokens:quick"
snapshot = false
required = false
default = []

[refreshers.token]
source = "python"
target = "cli_tokens:short_lived"
required = false
{extra}
"""
    )
    return "refresh.toml"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def written(middleware: RefreshMiddleware, name: str) -> bool:
    """Whether the running middleware has written ``name``'s snapshot."""
    snapshot = middleware.handle.status()[name]["snapshot"]
    return snapshot is not None and snapshot["written_at"] is not None


def importable_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Let this process import ``cli_tokens`` from tmp_path (for from_config), until the test ends."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "cli_tokens", importlib.import_module("cli_tokens"))


@pytest.mark.anyio
async def test_a_written_snapshot_is_what_startup_reads_with_the_upstream_down(
    cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, anyio_backend: str
) -> None:
    """Written by the CLI, read by a middleware whose upstream is down: it starts, serves it, origin snapshot."""
    app = Upstream()
    app.set("/names", ["ada", "grace"])
    with serve(app) as base_url:
        path = snapshot_config(tmp_path, base_url)
        ran = await anyio.to_thread.run_sync(cli, "fetch", path, "--write-snapshot", "snaps")
    assert ran.code == 0, ran.out + ran.err
    snaps = tmp_path / "snaps"
    assert sorted(entry.name for entry in snaps.iterdir()) == [
        "flags.snapshot",
        "names.snapshot",
        "names@1.snapshot",  # keep_versions: version 1 is kept, as the runtime keeps it
    ]
    assert mode(snaps) == 0o700
    assert {mode(entry) for entry in snaps.iterdir()} == {0o600}
    sent = app.bytes_sent["/names"]
    (tmp_path / "flags.json").unlink()  # the file is gone too

    importable_here(tmp_path, monkeypatch)
    middleware = RefreshMiddleware.from_config(
        ScriptedApp(), tmp_path / path, snapshot_dir=snaps, startup_timeout="20s"
    )
    async with LifespanManager(middleware) as manager:
        handle = middleware.handle
        status = handle.status()
        assert status["names"]["origin"] == status["flags"]["origin"] == "snapshot"
        assert status["names"]["last_outcome"] == "failed"  # the upstream is down: it says so
        assert status["names"]["version"] is not None
        assert status["names"]["version"].startswith("1-")
        assert status["private"]["origin"] == status["token"]["origin"] == "fetched"
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            body = (await client.get("/")).text
        assert "'names': ['ada', 'grace']" in body
        assert "'flags': {'dark_mode': True}" in body
        port = int(base_url.rsplit(":", 1)[1])
        with serve(app, port=port):  # the upstream is back: the snapshot's ETag makes it a 304
            assert await handle.refresh("names") == ["ada", "grace"]
        assert app.not_modified["/names"] >= 1
        assert app.bytes_sent["/names"] == sent
        assert handle.status()["names"]["origin"] == "fetched"


@pytest.mark.anyio
async def test_the_cli_writes_the_files_the_runtime_writes(
    cli: Run,
    tmp_path: Path,
    upstream: tuple[Upstream, str],
    monkeypatch: pytest.MonkeyPatch,
    anyio_backend: str,
) -> None:
    """Same bytes, fingerprint, version id, HTTP validators and kept version as a running middleware's."""
    path = snapshot_config(tmp_path, upstream[1])
    ran = await anyio.to_thread.run_sync(cli, "fetch", path, "--write-snapshot", "from-cli")
    assert ran.code == 0, ran.out + ran.err
    importable_here(tmp_path, monkeypatch)
    middleware = RefreshMiddleware.from_config(
        ScriptedApp(), tmp_path / path, snapshot_dir=tmp_path / "runtime"
    )
    async with LifespanManager(middleware):
        # Written in a worker thread, which signals nothing: wait for both (a write still
        # pending at shutdown can be lost, tests/test_config_last_known_good.py's xfail).
        with anyio.fail_after(10):
            while not all(written(middleware, name) for name in ("names", "flags")):  # noqa: ASYNC110 - a worker thread writes it
                await anyio.sleep(0.01)
    for name in ("names", "flags"):
        from_cli = snapshots.read(tmp_path / "from-cli" / f"{name}.snapshot", name)
        from_runtime = snapshots.read(tmp_path / "runtime" / f"{name}.snapshot", name)
        assert from_cli.data == from_runtime.data
        assert set(from_cli.meta) == set(from_runtime.meta)
        for key in ("source", "version", "etag", "digest", "last_modified", "size", "checksum", "name"):
            assert from_cli.meta.get(key) == from_runtime.meta.get(key), key
    assert snapshots.read(tmp_path / "from-cli" / "names.snapshot", "names").meta["etag"]
    assert sorted(entry.name for entry in (tmp_path / "runtime").iterdir()) == sorted(
        entry.name for entry in (tmp_path / "from-cli").iterdir()
    )


def test_write_snapshot_says_what_it_wrote_and_skipped(
    cli: Run, tmp_path: Path, upstream: tuple[Upstream, str]
) -> None:
    """A table of the snapshots: written (file, version), skipped (opted out, a Fresh token) and why."""
    ran = cli("fetch", snapshot_config(tmp_path, upstream[1]), "--write-snapshot", "snaps")
    assert ran.code == 0, ran.out + ran.err
    lines = ran.out.splitlines()
    start = lines.index("4 ok, 0 failed") + 2
    assert lines[start].split() == ["NAME", "SNAPSHOT", "FILE", "/", "REASON"]
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in lines[start + 1 : start + 5]}
    version = snapshots.read(tmp_path / "snaps" / "names.snapshot", "names").meta["version"]
    assert rows["names"] == ["written", f"snaps/names.snapshot, version {version}"]
    assert rows["flags"][0] == "written"
    assert rows["private"] == ["skipped", "snapshot = false"]
    assert rows["token"] == [
        "skipped",
        "its value is a Fresh token, kept only in memory (set snapshot = true to write it)",
    ]
    assert lines[-1] == "snapshots in snaps: 2 written, 2 skipped, 0 not written"


def test_write_snapshot_exits_1_naming_each_refresher_not_written(
    cli: Run, tmp_path: Path, upstream: tuple[Upstream, str]
) -> None:
    """A failed fetch (even a refresher not required) or a value the codec refuses: exit 1, which ones, others written."""
    extra = (
        f'[refreshers.gone]\nsource = "http"\nurl = "{upstream[1]}/gone"\nrequired = false\n'
        '[refreshers.odd]\nsource = "python"\ntarget = "cli_tokens:a_set"\nrequired = false\n'
    )
    path = snapshot_config(tmp_path, upstream[1], extra)
    ran = cli("fetch", "--json", path, "--write-snapshot", "snaps")
    assert ran.code == 1
    document = ran.json
    assert document["ok"] is False
    assert document["snapshot_dir"] == "snaps"
    written = {item["name"]: item["snapshot"] for item in document["refreshers"]}
    assert written["gone"] == {
        "outcome": "not written",
        "file": None,
        "version": None,
        "detail": "its fetch failed",
    }
    assert written["odd"]["outcome"] == "not written"
    assert written["odd"]["detail"].startswith("JSONCodec() cannot encode it: TypeError: ")
    assert written["names"]["outcome"] == "written"
    assert written["names"]["file"] == os.path.join("snaps", "names.snapshot")
    assert sorted(entry.name for entry in (tmp_path / "snaps").iterdir()) == [
        "flags.snapshot",
        "names.snapshot",
        "names@1.snapshot",
    ]
    table = cli("fetch", path, "--write-snapshot", "snaps")
    assert table.code == 1
    assert table.out.splitlines()[-1] == "snapshots in snaps: 2 written, 2 skipped, 2 not written"
    without = cli("fetch", "--json", path)
    assert without.code == 0  # without the flag, refreshers that are not required may fail
    assert {item["snapshot"] for item in without.json["refreshers"]} == {None}


def test_a_fresh_token_is_written_when_snapshot_is_true(cli: Run, tmp_path: Path) -> None:
    """With snapshot = true a Fresh token is written too, with its expiry, as the runtime would."""
    (tmp_path / "refresh.toml").write_text(
        '[refreshers.token]\nsource = "python"\ntarget = "cli_tokens:short_lived"\nevery = "1h"\nsnapshot = true\n'
    )
    before = time.time()
    ran = cli("fetch", "refresh.toml", "--write-snapshot", "snaps")
    assert ran.code == 0, ran.out + ran.err
    snapshot = snapshots.read(tmp_path / "snaps" / "token.snapshot", "token")
    assert json.loads(snapshot.data) == {"key": "k-123"}
    expires_at = snapshot.meta["expires_at"]
    assert isinstance(expires_at, float)
    assert before + 590 < expires_at < time.time() + 600


def test_write_snapshot_into_a_file_exits_2(cli: Run, tmp_path: Path) -> None:
    """A DIR that is a file is a wrong command line: exit 2 before fetching anything."""
    (tmp_path / "taken").write_text("a file")
    (tmp_path / "refresh.toml").write_text(
        '[refreshers.odd]\nsource = "python"\ntarget = "cli_tokens:failing"\nevery = "1h"\n'
    )
    ran = cli("fetch", "refresh.toml", "--write-snapshot", "taken")
    assert ran.code == 2
    assert ran.err == "--write-snapshot taken: exists and is not a directory\n"
    assert ran.out == ""


def test_a_snapshot_that_cannot_be_made_is_not_written_and_says_why(cli: Run, tmp_path: Path) -> None:
    """A source whose handover() raises, a value over the size startup reads, a DIR under a file: exit 1, each named."""
    (tmp_path / "refresh.toml").write_text(
        '[defaults]\nevery = "1h"\n'
        '[refreshers.odd]\nsource = "python"\ntarget = "cli_tokens:no_validators"\n'
        '[refreshers.huge]\nsource = "python"\ntarget = "cli_tokens:huge"\n'
        '[refreshers.fine]\nsource = "python"\ntarget = "cli_tokens:quick"\n'
    )
    ran = cli("fetch", "--json", "--no-preview", "refresh.toml", "--write-snapshot", "snaps")
    assert ran.code == 1, ran.out + ran.err
    odd, huge, fine = (item["snapshot"] for item in ran.json["refreshers"])
    assert odd["detail"] == "its source's handover() raised RuntimeError: no validators today"
    limit = snapshots.DEFAULT_MAX_BYTES
    assert huge["detail"] == f"{limit + 2} bytes encoded, over the {limit} a snapshot may hold"
    assert (odd["outcome"], huge["outcome"], fine["outcome"]) == ("not written", "not written", "written")
    assert sorted(entry.name for entry in (tmp_path / "snaps").iterdir()) == ["fine.snapshot"]
    (tmp_path / "taken").write_text("a file")
    under_a_file = cli("fetch", "--json", "refresh.toml", "fine", "--write-snapshot", "taken/snaps")
    assert under_a_file.code == 1
    (fine,) = (item["snapshot"] for item in under_a_file.json["refreshers"])
    assert fine["outcome"] == "not written"
    assert fine["detail"].startswith("NotADirectoryError: ")
