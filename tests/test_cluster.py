"""Coordination across real processes: uvicorn workers and separate servers standing in for hosts.

Every process runs `tests/cluster_app.py` on 127.0.0.1 and polls one document of
a counting upstream (the demo's `Upstream`, served in a thread of the test
process) every half second or so; the backend is the session's Redis server, its
PostgreSQL server or an SQLite file. Each test reads what each process publishes (``GET /value``) and
its role (``GET /_refresh``), and counts the upstream's requests. Waits poll a
condition up to a generous deadline: nothing below sleeps for a fixed time except
the windows that count fetches.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from asgi_refresh._types import Receive, Scope, Send
from asgi_refresh.demo.upstream import Upstream, serve

from .faults.proxy import FlappingProxy
from .nats_server import NATSServer
from .postgres_server import PostgresServer
from .redis_server import RedisServer
from .server_process import free_port

ROOT = Path(__file__).parent.parent
APP = "tests.cluster_app:app"
BAD_SIGNS = ("Traceback", "Task was destroyed", "was never awaited", "Exception in")
START_TIMEOUT = 30.0  # 8 interpreters starting at once on a 2-core CI machine


def until(condition: Callable[[], bool], seconds: float, what: Callable[[], object] | str = "") -> float:
    """Poll ``condition`` until it holds; return the seconds it took, or fail after ``seconds``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > seconds:
            detail = what() if callable(what) else what
            pytest.fail(f"not within {seconds:g} s: {detail}")
        time.sleep(0.02)
    return time.monotonic() - started


class Node:
    """One uvicorn process (with ``workers`` worker processes) running the cluster app."""

    def __init__(self, env: dict[str, str], workers: int = 1) -> None:
        self.env, self.workers = env, workers
        self.lines: list[str] = []
        self._start()

    def _start(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "uvicorn", APP, "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--no-access-log", *(["--workers", str(self.workers)] if self.workers > 1 else [])]
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines = []
        self._reader = threading.Thread(target=self._read, args=(self.process,), daemon=True)
        self._reader.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def ready(self) -> bool:
        """Whether every worker has started and the app answers; restarts on a port taken meanwhile."""
        if self.process.poll() is not None:
            self._reader.join(5)
            if "address already in use" in self.output.lower():
                self._close_pipe()
                self._start()
                return False
            pytest.fail(f"the server exited with {self.process.returncode}:\n{self.output}")
        if self.output.count("Application startup complete.") < self.workers:
            return False
        try:
            return httpx.get(f"{self.url}/value", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def value(self) -> Any:
        """What the process serving this request publishes."""
        return httpx.get(f"{self.url}/value", timeout=5).json()["value"]

    def coordination(self) -> dict[str, Any]:
        """The refresher's coordination status (role, version) in the process serving this request."""
        page = httpx.get(f"{self.url}/_refresh", timeout=5).json()
        coordination: dict[str, Any] = page["refreshers"]["data"]["coordination"]
        return coordination

    def role(self) -> str:
        role: str = self.coordination()["role"]
        return role

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> str:
        """SIGTERM, wait, and return everything the server printed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:  # pragma: no cover - a server that hangs at shutdown
                self.process.kill()
                self.process.wait()
        self._reader.join(5)
        self._close_pipe()
        return self.output

    def _close_pipe(self) -> None:
        if self.process.stdout is not None:
            self.process.stdout.close()


@contextmanager
def cluster(count: int, env: dict[str, str], workers: int = 1) -> Iterator[list[Node]]:
    """``count`` servers started at once (each with ``workers`` workers); stopped at the end."""
    nodes: list[Node] = []
    try:
        for _ in range(count):
            nodes.append(Node(env, workers))
        until(lambda: all(node.ready() for node in nodes), START_TIMEOUT, lambda: [n.output for n in nodes])
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def values(nodes: list[Node]) -> list[Any]:
    return [node.value() for node in nodes]


def roles(nodes: list[Node]) -> list[str]:
    return [node.role() for node in nodes]


def assert_clean(nodes: list[Node]) -> None:
    for node in nodes:
        output = node.stop()
        assert not [sign for sign in BAD_SIGNS if sign in output], output


class TimedUpstream(Upstream):
    """The demo's counting upstream, also noting when each request came (``arrivals``)."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[tuple[str, float]] = []  # (path, time.monotonic())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.arrivals.append((scope["path"], time.monotonic()))
        await super().__call__(scope, receive, send)

    def first_after(self, path: str, moment: float) -> float | None:
        """When the first request for ``path`` after ``moment`` came, if one did."""
        return next((at for each, at in list(self.arrivals) if each == path and at > moment), None)


@pytest.fixture
def upstream() -> Iterator[tuple[TimedUpstream, str]]:
    """The counting upstream on 127.0.0.1, and its base URL."""
    documents = TimedUpstream()
    with serve(documents) as url:
        yield documents, url


def redis_env(redis: RedisServer, url: str, **more: str) -> dict[str, str]:
    """The environment of processes coordinated through ``redis``, in a namespace of their own."""
    prefix = f"cluster{time.monotonic_ns()}"
    return {"BACKEND": "redis", "REDIS_URL": redis.url, "PREFIX": prefix, "UPSTREAM_URL": url, **more}


def postgres_env(postgres: PostgresServer, url: str, **more: str) -> dict[str, str]:
    """The environment of processes coordinated through ``postgres``, in a namespace of their own."""
    prefix = f"cluster{time.monotonic_ns()}"
    return {
        "BACKEND": "postgres",
        "POSTGRES_DSN": postgres.dsn,
        "PREFIX": prefix,
        "UPSTREAM_URL": url,
        **more,
    }


def nats_env(nats: NATSServer, url: str, **more: str) -> dict[str, str]:
    """The environment of processes coordinated through ``nats``, in a namespace of their own."""
    prefix = f"cluster{time.monotonic_ns()}"
    return {"BACKEND": "nats", "NATS_URL": nats.url, "PREFIX": prefix, "UPSTREAM_URL": url, **more}


def server_env(backend: str, request: pytest.FixtureRequest, url: str, **more: str) -> dict[str, str]:
    """The environment of processes coordinated through the session's Redis, PostgreSQL or NATS server."""
    if backend == "redis":
        return redis_env(request.getfixturevalue("redis_server"), url, **more)
    if backend == "nats":
        return nats_env(request.getfixturevalue("nats_server"), url, **more)
    return postgres_env(request.getfixturevalue("postgres_server"), url, **more)


@pytest.mark.parametrize("backend", ["redis", "sqlite", "postgres", "nats"])
def test_four_workers_fetch_once_per_interval_not_four_times(
    backend: str, upstream: tuple[Upstream, str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """With uvicorn --workers 4: one upstream fetch per interval with a coordinator, four without."""
    documents, url = upstream
    documents.set("/coordinated", {"version": 1})
    documents.set("/alone", {"version": 1})
    every, window = 0.5, 6.0
    timing = {"EVERY": f"{every}s", "LEASE_TTL": "3s"}
    if backend in ("redis", "postgres", "nats"):
        coordinated = server_env(backend, request, f"{url}/coordinated", **timing)
    else:
        db = str(tmp_path / "refresh.db")
        coordinated = {"BACKEND": "sqlite", "DB_PATH": db, "UPSTREAM_URL": f"{url}/coordinated", **timing}
    alone = {"BACKEND": "none", "UPSTREAM_URL": f"{url}/alone", **timing}
    with ExitStack() as stack:
        # Both start at once (their startup is most of this test's time), then are counted side by side.
        nodes = [Node(coordinated, workers=4), Node(alone, workers=4)]
        stack.callback(lambda: [node.stop() for node in nodes])
        until(lambda: all(node.ready() for node in nodes), START_TIMEOUT, lambda: [n.output for n in nodes])
        before = documents.requests.copy()
        started = time.monotonic()
        time.sleep(window)
        after = documents.requests.copy()
        intervals = (time.monotonic() - started) / every
        # Which worker says what: a new connection each time, so that the kernel spreads them.
        by_pid: dict[int, str] = {}
        deadline = time.monotonic() + 10
        while len(by_pid) < 4 and time.monotonic() < deadline:
            page = httpx.get(f"{nodes[0].url}/value", timeout=5).json()
            by_pid[page["pid"]] = page["coordination"]["role"]
    fetched = after["/coordinated"] - before["/coordinated"]
    fetched_alone = after["/alone"] - before["/alone"]
    assert fetched <= intervals + 2, f"{fetched} fetches in {intervals:.1f} intervals"
    assert fetched >= intervals / 2, f"the lease holder kept fetching: {fetched} in {intervals:.1f} intervals"
    assert fetched_alone >= 2.5 * intervals, f"without a coordinator, each worker fetches: {fetched_alone}"
    assert fetched * 2 < fetched_alone, (fetched, fetched_alone)
    if len(by_pid) == 4:  # the kernel spread the connections over all workers
        assert sorted(by_pid.values()) == ["follower", "follower", "follower", "leader"], by_pid
    else:
        assert list(by_pid.values()).count("leader") <= 1, by_pid


def test_separate_hosts_converge_on_every_new_version(
    redis_server: RedisServer, upstream: tuple[Upstream, str]
) -> None:
    """4 servers on their own ports (hosts): one leader, and all serve each new version."""
    documents, url = upstream
    documents.set("/data", {"version": 1})
    with cluster(4, redis_env(redis_server, f"{url}/data", EVERY="0.5s", LEASE_TTL="3s")) as nodes:
        until(lambda: values(nodes) == [{"version": 1}] * 4, 10, lambda: values(nodes))
        assert sorted(roles(nodes)) == ["follower", "follower", "follower", "leader"]
        for version in range(2, 5):
            documents.set("/data", {"version": version})
            expected = [{"version": version}] * 4
            until(lambda: values(nodes) == expected, 10, lambda: values(nodes))  # noqa: B023 - called here

        # Every fetch stores a new version (0.5 s apart): poll until one read sees them all
        # equal, the four read at once (one after the other, they span more than 0.5 s on
        # a loaded machine).
        def stored_versions() -> list[Any]:
            with ThreadPoolExecutor(len(nodes)) as pool:
                return list(pool.map(lambda node: node.coordination()["version"], nodes))

        until(lambda: len(set(stored_versions())) == 1, 10, stored_versions)
        assert_clean(nodes)


@pytest.mark.parametrize("backend", ["redis", "postgres", "nats"])
def test_killing_the_leader_moves_the_lease_and_fetching_resumes_within_its_ttl(
    backend: str, upstream: tuple[TimedUpstream, str], request: pytest.FixtureRequest
) -> None:
    """SIGKILL the lease holder: another process leads and fetches within lease_ttl (plus slack)."""
    documents, url = upstream
    documents.set("/data", {"version": 1})
    every, lease_ttl = 0.5, 1.5
    env = server_env(backend, request, f"{url}/data", EVERY=f"{every}s", LEASE_TTL=f"{lease_ttl}s")
    with cluster(3, env) as nodes:
        until(lambda: values(nodes) == [{"version": 1}] * 3, 10, lambda: values(nodes))
        leader = nodes[roles(nodes).index("leader")]
        survivors = [node for node in nodes if node is not leader]
        fetches = documents.requests["/data"]
        until(lambda: documents.requests["/data"] > fetches, 5, "the leader fetches every 0.5 s")
        os.kill(leader.pid, signal.SIGKILL)
        killed = time.monotonic()
        documents.set("/data", {"version": 2})
        leader.process.wait(5)
        # The lease lasts 2/3 of lease_ttl and is renewed every third, and a survivor
        # polls it every third: it leads within lease_ttl and fetches at once (overdue).
        # The upstream notes when the first request after the kill came; a thread per
        # survivor reads its role and value (one request) over and over, and notes when
        # it first leads and first serves the new version.
        seen: list[dict[str, float]] = [{}, {}]
        done = threading.Event()

        def follow(node: Node, marks: dict[str, float]) -> None:
            with httpx.Client(timeout=5) as client:
                while not done.is_set():
                    try:
                        page = client.get(f"{node.url}/value").json()
                    except httpx.TransportError:  # a slow answer: ask again (the wait is until's)
                        continue
                    now = time.monotonic() - killed
                    if page["coordination"]["role"] == "leader":
                        marks.setdefault("leader", now)
                    if page["value"] == {"version": 2}:
                        marks.setdefault("served", now)
                    time.sleep(0.02)

        def progress() -> dict[str, float]:
            marks = {}
            if led := [each["leader"] for each in seen if "leader" in each]:
                marks["leader"] = min(led)
            if all("served" in each for each in seen):
                marks["served"] = max(each["served"] for each in seen)
            fetched = documents.first_after("/data", killed)
            if fetched is not None:
                marks["fetched"] = fetched - killed
            return marks

        followers = [threading.Thread(target=follow, args=pair) for pair in zip(survivors, seen, strict=True)]
        for thread in followers:
            thread.start()
        try:
            until(lambda: len(progress()) == 3, 15, progress)
        finally:
            done.set()
            for thread in followers:
                thread.join(10)
        marks = progress()
        assert sorted(roles(survivors)) == ["follower", "leader"]
        bound = lease_ttl + 1.0  # 1 s of slack for a slow CI machine
        assert marks["fetched"] <= bound, (
            f"fetching resumed too late after the kill: {marks} (bound {bound} s)"
        )
        assert marks["served"] <= bound + 1, f"the survivors served the new version too late: {marks}"
        assert_clean(survivors)


@pytest.mark.parametrize("backend", ["redis", "postgres", "nats"])
def test_refresh_now_on_a_follower_reaches_every_process(
    backend: str, upstream: tuple[Upstream, str], request: pytest.FixtureRequest
) -> None:
    """POST /_refresh/data?wait=true on a follower: the leader fetches once, every process serves it."""
    documents, url = upstream
    documents.set("/data", {"version": 1})
    with cluster(3, server_env(backend, request, f"{url}/data", EVERY="1h", LEASE_TTL="3s")) as nodes:
        until(lambda: values(nodes) == [{"version": 1}] * 3, 10, lambda: values(nodes))
        follower = nodes[roles(nodes).index("follower")]
        fetches = documents.requests["/data"]
        documents.set("/data", {"version": 2})
        response = httpx.post(f"{follower.url}/_refresh/data?wait=true", timeout=15)
        assert response.status_code == 200, response.text
        assert response.json()["status"]["coordination"]["role"] == "follower"
        assert follower.value() == {"version": 2}, "the answer comes once the follower serves it"
        until(lambda: values(nodes) == [{"version": 2}] * 3, 5, lambda: values(nodes))
        # One fetch, by the leader. (Rarely two: a lease poll that read the request as
        # pending just before the answer was stored starts a second fetch.)
        assert documents.requests["/data"] - fetches in (1, 2)
        assert sorted(roles(nodes)) == ["follower", "follower", "leader"]
        assert_clean(nodes)


@pytest.mark.parametrize("backend", ["redis", "postgres", "nats"])
def test_requests_succeed_while_the_backend_is_down_and_coordination_resumes_after(
    backend: str, upstream: tuple[Upstream, str], request: pytest.FixtureRequest
) -> None:
    """The backend (Redis, PostgreSQL, NATS) stopped mid-run: every request still succeeds, roles go standalone, then back."""
    documents, url = upstream
    documents.set("/data", {"version": 1})
    server: RedisServer | PostgresServer | NATSServer = request.getfixturevalue(f"stoppable_{backend}")
    timing = {"EVERY": "0.5s", "LEASE_TTL": "1.5s", "COORDINATOR_TIMEOUT": "0.5"}
    env = server_env(backend, request, f"{url}/data", **timing)
    with cluster(3, env) as nodes:
        until(lambda: values(nodes) == [{"version": 1}] * 3, 10, lambda: values(nodes))
        assert sorted(roles(nodes)) == ["follower", "follower", "leader"]
        answers: list[int | str] = []
        done = threading.Event()

        def hammer() -> None:
            """Requests to every process, one after the other, until told to stop."""
            with httpx.Client(timeout=5) as client:
                while not done.is_set():
                    for node in nodes:
                        try:
                            answers.append(client.get(f"{node.url}/value").status_code)
                        except httpx.HTTPError as exc:
                            answers.append(repr(exc))

        thread = threading.Thread(target=hammer)
        thread.start()
        try:
            server.stop()
            during = len(answers)
            until(lambda: roles(nodes) == ["standalone"] * 3, 10, lambda: roles(nodes))
            documents.set("/data", {"version": 2})  # each process fetches it for itself
            until(lambda: values(nodes) == [{"version": 2}] * 3, 10, lambda: values(nodes))
            outage = len(answers) - during
            server.start()
            until(
                lambda: sorted(roles(nodes)) == ["follower", "follower", "leader"], 15, lambda: roles(nodes)
            )
            documents.set("/data", {"version": 3})
            until(lambda: values(nodes) == [{"version": 3}] * 3, 10, lambda: values(nodes))
        finally:
            done.set()
            thread.join(10)
        failed = [answer for answer in answers if answer != 200]
        assert not failed, f"{len(failed)} of {len(answers)} requests failed: {failed[:5]}"
        assert outage > 10, f"requests were made during the outage: {outage}"
        fetches, started = documents.requests["/data"], time.monotonic()
        time.sleep(2.0)
        intervals = (time.monotonic() - started) / 0.5
        fetched = documents.requests["/data"] - fetches
        assert fetched <= intervals + 2, (
            f"one fetch per interval again, not three: {fetched} in {intervals:.1f}"
        )
        outputs = [node.stop() for node in nodes]
    assert all("the coordinator is unavailable" in output for output in outputs), outputs
    assert all("Traceback" not in output for output in outputs), outputs


def test_a_flapping_redis_fails_no_request_sends_no_worker_back_and_warns_once_per_worker(
    redis_server: RedisServer, upstream: tuple[Upstream, str]
) -> None:
    """Redis behind a proxy flipping every 100 ms for 4 s, uvicorn --workers 2 (the benchmark, short)."""
    documents, url = upstream
    version = 1
    documents.set("/data", {"version": version})
    with FlappingProxy(("127.0.0.1", redis_server.port)) as proxy:
        env = {
            **redis_env(
                redis_server, f"{url}/data", EVERY="0.3s", LEASE_TTL="1.5s", COORDINATOR_TIMEOUT="0.5"
            ),
            "REDIS_URL": f"redis://127.0.0.1:{proxy.port}/0",
            "LOG_LEVEL": "INFO",
        }
        with cluster(1, env, workers=2) as (node,):
            highest: dict[int, int] = {}
            back: list[tuple[int, int, int]] = []
            failed: list[str] = []
            flapping = proxy.flap(every=0.1, seconds=4.0)
            with httpx.Client(timeout=5, limits=httpx.Limits(max_keepalive_connections=0)) as client:
                while flapping.is_alive():
                    version += 1
                    documents.set("/data", {"version": version})  # a newer document all the time
                    try:
                        page = client.get(f"{node.url}/value").json()
                    except (httpx.HTTPError, ValueError) as exc:
                        failed.append(repr(exc))
                        continue
                    pid, served = page["pid"], page["value"]["version"]
                    if served < highest.get(pid, 0):
                        back.append((pid, highest[pid], served))
                    highest[pid] = max(highest.get(pid, 0), served)
            output = node.stop()
        assert proxy.flips >= 15
    assert not failed, failed[:5]
    assert not back, f"a worker served an older value than it had served: {back[:5]}"
    warnings = [
        line.split()[0] for line in output.splitlines() if " WARNING asgi_refresh: the coordinator" in line
    ]
    assert 1 <= len(warnings) <= 2, output
    assert len(set(warnings)) == len(warnings), f"more than one WARNING from one worker: {output}"
