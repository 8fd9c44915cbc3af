"""Real servers as subprocesses on 127.0.0.1: uvicorn, hypercorn (asyncio, trio), granian, daphne.

Each server runs `tests/real_server_app.py`: a counter refreshed every 200 ms. For
every server: fresh values reach requests on one keep-alive connection; SIGINT and
SIGTERM shut down within seconds with the refreshers awaited and no traceback; a
required refresher that cannot load stops the server with its name in the output.
What each server hands the app is recorded and checked against the compatibility
table in docs/compatibility.md (``ASGI_REFRESH_WRITE_DOCS=1`` rewrites it).
"""

from __future__ import annotations

import importlib.metadata
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from .server_process import free_port

ROOT = Path(__file__).parent.parent
COMPATIBILITY = ROOT / "docs" / "compatibility.md"
APP = "tests.real_server_app:app"
BAD_SIGNS = ("Traceback", "Task was destroyed", "was never awaited", "Exception in")


@dataclass(frozen=True)
class Server:
    name: str
    version_of: str
    lifespan: bool  # does it run the ASGI lifespan protocol

    def command(self, port: int) -> list[str]:
        python = sys.executable
        if self.name == "uvicorn":
            return [python, "-m", "uvicorn", APP, "--host", "127.0.0.1", "--port", str(port)]
        if self.name == "uvicorn --workers 2":
            return [
                python,
                "-m",
                "uvicorn",
                APP,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "2",
            ]
        if self.name.startswith("hypercorn"):
            worker = self.name.split()[-1].strip("()")
            return [python, "-m", "hypercorn", APP, "--bind", f"127.0.0.1:{port}", "--worker-class", worker]
        if self.name == "granian":
            return [
                python,
                "-m",
                "granian",
                "--interface",
                "asgi",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                APP,
            ]
        assert self.name == "daphne"
        return [python, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), APP]


SERVERS = [
    Server("uvicorn", "uvicorn", lifespan=True),
    Server("hypercorn (asyncio)", "hypercorn", lifespan=True),
    Server("hypercorn (trio)", "hypercorn", lifespan=True),
    Server("granian", "granian", lifespan=True),
    Server("daphne", "daphne", lifespan=False),
]
OBSERVED: dict[str, dict[str, Any]] = {}


class Running:
    def __init__(self, process: subprocess.Popen[str], url: str, output: str | None = None) -> None:
        self.process, self.url, self._output = process, url, output

    def output(self, within: float = 15) -> str:
        """Everything the server printed, once it has exited (waiting ``within`` seconds)."""
        if self._output is None:
            self._output = self.process.communicate(timeout=within)[0]
        return self._output

    def stop(self, signum: int = signal.SIGINT, within: float = 10) -> tuple[float, str]:
        """Send ``signum``; return how long the exit took and everything the server printed."""
        started = time.monotonic()
        self.process.send_signal(signum)
        try:
            output = self.output(within)
        except subprocess.TimeoutExpired:
            self.process.kill()
            output = self.process.communicate()[0]
            pytest.fail(
                f"still running {within:.0f} s after {signal.Signals(signum).name}, killed:\n{output}"
            )
        return time.monotonic() - started, output


def serving(process: subprocess.Popen[str], url: str) -> bool:
    """Wait until ``url`` answers (True) or the process has exited (False)."""
    deadline = time.monotonic() + 20
    while process.poll() is None:
        try:
            httpx.get(url, timeout=1)
            return True
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    return False


@contextmanager
def running(server: Server, **env: str) -> Iterator[Running]:
    for attempt in range(3):
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        process = subprocess.Popen(
            server.command(port),
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            if not serving(process, url):
                output = process.communicate()[0]
                if "address already in use" in output.lower() and attempt < 2:
                    continue  # the free port was taken before the server bound it: another one
                yield Running(process, url, output)  # exited on its own: the test looks at why
                return
            yield Running(process, url)
            return
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()


def pages_until_refreshed(live: Running, client: httpx.Client, *, at_least: int, **options: Any) -> list[Any]:
    """Requests on ``client`` 0.15 s apart: ``at_least`` of them, and until the counter rose by 3 (10 s at most).

    The counter is refreshed every 200 ms: on a busy machine a request or a refresh
    comes late, so a fixed number of requests may see fewer increments. A server
    that shows no counter (no lifespan) gets ``at_least``. The server must stay up
    throughout.
    """
    seen: list[Any] = []
    deadline = time.monotonic() + 10

    def more() -> bool:
        if len(seen) < at_least:
            return True
        first, last = seen[0]["counter"], seen[-1]["counter"]
        if not isinstance(first, int) or not isinstance(last, int):
            return False  # no counter to watch: the test looks at what the pages show
        return last < first + 3 and time.monotonic() < deadline

    while more():
        assert live.process.poll() is None, f"the server exited:\n{live.output()}"
        seen.append(client.get(live.url, **options).json())
        time.sleep(0.15)
    return seen


def observe(server: Server) -> tuple[list[Any], list[str], float, str]:
    """Requests on one connection, then SIGINT: the pages, the connection's events, the stop's time and output.

    What it saw goes into OBSERVED, for the compatibility table.
    """
    with running(server) as live, httpx.Client() as client:
        events: list[str] = []
        seen = pages_until_refreshed(
            live, client, at_least=8, extensions={"trace": lambda event, info: events.append(event)}
        )
        took, output = live.stop(signal.SIGINT)
    counters = [page["counter"] for page in seen]
    OBSERVED[server.name] = {
        "lifespan": seen[-1]["lifespan"],
        "lifespan_state": seen[-1]["lifespan_state"],
        "request_state": seen[-1]["request_state"],
        "fresh": server.lifespan and counters == sorted(counters) and counters[-1] > counters[0],
    }
    return seen, events, took, output


@pytest.mark.parametrize("server", SERVERS, ids=lambda s: s.name)
def test_fresh_values_on_one_connection_then_a_clean_sigint(server: Server) -> None:
    """Values keep refreshing for requests on one keep-alive connection; SIGINT exits cleanly."""
    seen, events, took, output = observe(server)
    counters = [page["counter"] for page in seen]
    assert events.count("connection.connect_tcp.complete") == 1, "one keep-alive connection for all"
    assert seen[-1]["lifespan"] is server.lifespan
    if server.lifespan:
        assert counters[-1] >= counters[0] + 3, f"values refreshed over the connection: {counters}"
        assert counters == sorted(counters)
        assert "slow fetch cancelled and cleaned up" in output, output
        assert output.index("app shutdown") < output.index("slow fetch cancelled"), (
            "app first, then refreshers"
        )
    else:
        assert set(counters) == {None}
        assert "no ASGI lifespan is running" in output, output
    assert took < 5, f"shutdown took {took:.1f} s"
    assert not [sign for sign in BAD_SIGNS if sign in output], output


# The suite in a process that ignores SIGINT, as a background job of a shell without job
# control (a CI runner's script, `bash .ci/run &`) is: its servers inherit that.
IGNORING_SIGINT = "import signal, sys, pytest; signal.signal(signal.SIGINT, signal.SIG_IGN); sys.exit(pytest.main(sys.argv[1:]))"


# A pytest of its own (conftest's imports, daphne's start, its test): a minute and more on a
# loaded CI machine. A daphne that ignores Ctrl+C fails the inner test within its own 10 s.
@pytest.mark.timeout(180)
def test_ctrl_c_stops_daphne_even_when_the_suite_runs_with_sigint_ignored() -> None:
    """Run as a background job (SIGINT ignored), the suite still stops daphne with Ctrl+C, as a terminal does."""
    test = (
        f"{Path(__file__).relative_to(ROOT)}::test_fresh_values_on_one_connection_then_a_clean_sigint[daphne]"
    )
    run = subprocess.run(
        [sys.executable, "-c", IGNORING_SIGINT, "-q", "-p", "no:cacheprovider", "--no-cov", test],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout, run.stdout


@pytest.mark.parametrize("server", [s for s in SERVERS if s.lifespan], ids=lambda s: s.name)
def test_sigterm_shuts_down_cleanly(server: Server) -> None:
    """SIGTERM (what Kubernetes sends) stops the server within seconds, refreshers awaited."""
    with running(server) as live:
        assert httpx.get(live.url).json()["counter"] >= 1
        time.sleep(0.3)  # the slow refresher's second fetch is under way
        took, output = live.stop(signal.SIGTERM)
    assert took < 5, f"shutdown took {took:.1f} s"
    assert "slow fetch cancelled and cleaned up" in output, output
    assert not [sign for sign in BAD_SIGNS if sign in output], output


@pytest.mark.parametrize("server", [s for s in SERVERS if s.lifespan], ids=lambda s: s.name)
def test_a_required_refresher_that_cannot_load_stops_the_server(server: Server) -> None:
    """Startup fails: the server exits, and its output names the refresher and the cause."""
    with running(server, FAIL_STARTUP="1") as live:
        try:
            output = live.output(within=15)
        except subprocess.TimeoutExpired:  # pragma: no cover - the failure this test exists for
            live.process.kill()
            pytest.fail(f"{server.name} kept running after startup failed:\n{live.process.communicate()[0]}")
    assert "Refresher 'counter' could not load within startup_timeout (1s)" in output, output
    assert "ConnectionRefusedError: upstream at 127.0.0.1:9 refused the connection" in output
    assert live.process.returncode != 0 or server.name.startswith("hypercorn"), output


@pytest.mark.parametrize("server", [s for s in SERVERS if s.lifespan], ids=lambda s: s.name)
def test_an_unruly_app_and_unruly_user_code_never_stop_the_server(server: Server) -> None:
    """An app ignoring scope["type"] and user code raising SystemExit never stop the server.

    The fetch raises KeyboardInterrupt and SystemExit, the hook SystemExit: fresh values keep
    being served and SIGINT exits cleanly.
    """
    with running(server, UNRULY="1") as live, httpx.Client() as client:
        assert live.process.poll() is None, live.output()
        counters = [page["counter"] for page in pages_until_refreshed(live, client, at_least=6)]
        assert live.process.poll() is None, "still running"
        took, output = live.stop(signal.SIGINT)
    assert counters[-1] >= counters[0] + 3, f"values kept refreshing: {counters}"
    assert "Refresher 'unruly' failed" in output, output
    assert took < 5, f"shutdown took {took:.1f} s"
    assert "Task was destroyed" not in output, output
    assert "never awaited" not in output, output


def test_uvicorn_workers_each_serve_fresh_data() -> None:
    """With --workers 2 both processes run their refreshers and serve current values."""
    server = Server("uvicorn --workers 2", "uvicorn", lifespan=True)
    with running(server) as live:
        by_pid: dict[int, list[int]] = {}
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (len(by_pid) < 2 or min(map(len, by_pid.values())) < 3):
            with httpx.Client() as client:  # a new connection each time: the kernel spreads them
                page = client.get(live.url).json()
            by_pid.setdefault(page["pid"], []).append(page["counter"])
            time.sleep(0.05)
        _, output = live.stop(signal.SIGINT, within=15)
    assert len(by_pid) == 2, f"both workers answered: {by_pid}"
    for counters in by_pid.values():
        assert counters == sorted(counters)
    assert output.count("slow fetch cancelled and cleaned up") == 2, output
    assert not [sign for sign in BAD_SIGNS if sign in output], output


def table() -> str:
    rows = [
        "| server | version | runs lifespan | lifespan `state` | request `state` | refreshed values in requests |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for server in SERVERS:
        seen = OBSERVED[server.name]
        version = importlib.metadata.version(server.version_of)
        yes = {True: "yes", False: "no"}
        result = "yes" if seen["fresh"] else "no: one WARNING, requests served without values"
        rows.append(
            f"| {server.name} | {version} | {yes[seen['lifespan']]} | {yes[seen['lifespan_state']]} "
            f"| {seen['request_state']} | {result} |"
        )
    return "\n".join(rows)


def without_versions(table: str) -> list[list[str]]:
    """The table's cells without the version column: a newer release must not fail CI by itself."""
    rows = []
    for row in table.splitlines():
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        rows.append(cells[:1] + cells[2:])
    return rows


# Five servers started, observed and stopped in turn when run alone (or on another xdist
# worker than their tests): 35 s of the suite's 60 s were seen on a loaded machine.
@pytest.mark.timeout(240)
def test_the_compatibility_table_in_the_docs_is_what_the_servers_do() -> None:
    """docs/compatibility.md shows exactly what the servers do, as the tests above observed them.

    A server they did not observe in this process (run alone, or on another xdist
    worker) is observed here.
    """
    for server in SERVERS:
        if server.name not in OBSERVED:
            observe(server)
    begin, end = "<!-- table: generated by tests/test_real_servers.py -->", "<!-- end of table -->"
    text = COMPATIBILITY.read_text()
    head, rest = text.split(begin)
    current, tail = rest.split(end)
    if os.environ.get("ASGI_REFRESH_WRITE_DOCS"):
        COMPATIBILITY.write_text(f"{head}{begin}\n{table()}\n{end}{tail}")
        return
    assert without_versions(current.strip()) == without_versions(table()), (
        "run with ASGI_REFRESH_WRITE_DOCS=1 to update docs/compatibility.md"
    )
