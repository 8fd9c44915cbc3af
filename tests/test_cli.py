"""The command line, ``python -m asgi_refresh check|fetch``, against a local upstream and temp files.

Every test runs twice: as a real subprocess (what an operator runs) and in-process
through ``main()`` (so that coverage sees it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

import asgi_refresh._http
from asgi_refresh._cli import main
from asgi_refresh.demo.upstream import Upstream, serve

SECRET = "sekrit-cli-value-123"
ODD_SECRET = "pä ss wörd<+>"  # percent-encoded in a URL path: p%C3%A4%20ss%20w%C3%B6rd%3C+%3E

TOKENS_MODULE = """\
import json

import anyio

from asgi_refresh import Fresh


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


def test_an_invalid_config_exits_2_listing_every_problem(cli: Run, tmp_path: Path) -> None:
    """Problems go to stderr, one per line with its key path, and the exit status is 2."""
    path = write(tmp_path, "https://x", '[refreshers.extra]\nsource = "htp"\nevery = "soon"\n')
    ran = cli("check", path)
    assert ran.code == 2
    assert ran.out == ""
    assert ran.err.splitlines() == [
        "invalid configuration in 'refresh.toml' (2 problems):",
        '  refreshers.extra.source: expected one of "http", "file", "python", got "htp" (did you mean \'http\'?)',
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
    real_new_client = asgi_refresh._http._new_client

    def cold_new_client() -> Any:
        # In process, httpx's first client is already warm; make it as slow as a cold
        # one is in a fresh process (imports, TLS setup), blocking the event loop.
        time.sleep(0.3)
        return real_new_client()

    monkeypatch.setattr(asgi_refresh._http, "_new_client", cold_new_client)
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
