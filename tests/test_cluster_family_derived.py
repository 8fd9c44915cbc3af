"""A `RefresherFamily` and a `Derived` value across three real worker processes with a coordinator.

`tests/test_family_coordinated.py` and the coordinator test of
`tests/test_derived.py` run three middlewares in one process; here three worker
processes behind one port (``uvicorn --workers 3``, asyncio, as in
`tests/test_cluster.py`; and ``hypercorn --workers 3 --worker-class trio``) run
`tests/cluster_family_app.py` on 127.0.0.1, coordinated through the session's
Redis server or an SQLite file, and fetch from the counting upstream of
`tests/test_cluster.py` (served in a thread of the test process). Which worker
answered is in each response (``pid``): requests go on a new connection each,
twelve at once, until every worker has answered, since the kernel picks which
worker accepts a connection. Fetches are counted over windows of real time, as
in `tests/test_cluster.py`; every other wait polls a condition up to a deadline.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from asgi_refresh.demo.upstream import Upstream

from .cluster_family_app import build_catalog
from .redis_server import RedisServer
from .server_process import free_port
from .test_cluster import START_TIMEOUT, Node, assert_clean, redis_env, until, upstream

__all__ = ["upstream"]  # the fixture, shared with test_cluster

APP = "tests.cluster_family_app:app"
WORKERS = 3
KEYS = ("EUR", "USD", "GBP")
# Each server on each backend once across the two tests (all four pairs cost CI a minute
# more; the coordination paths are the backends' and the event loops', not the pairs').
FAMILY_CASES = [("uvicorn", "redis"), ("hypercorn-trio", "sqlite")]
DERIVED_CASES = [("uvicorn", "sqlite"), ("hypercorn-trio", "redis")]


class Workers(Node):
    """Three worker processes behind one port running `tests/cluster_family_app.py`.

    ``server`` is ``uvicorn`` (asyncio workers, as `Node` runs `tests/cluster_app.py`)
    or ``hypercorn-trio`` (``hypercorn --workers 3 --worker-class trio``): the
    package's coordination runs on both event loops.
    """

    def __init__(self, env: dict[str, str], server: str) -> None:
        self.server = server
        super().__init__(env, workers=WORKERS)

    def _start(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        if self.server == "uvicorn":
            command = ["uvicorn", APP, "--host", "127.0.0.1", "--port", str(self.port), "--no-access-log"]
        else:
            command = ["hypercorn", APP, "--bind", f"127.0.0.1:{self.port}", "--worker-class", "trio"]
        self.process = subprocess.Popen(
            [sys.executable, "-m", *command, "--workers", str(self.workers)],
            cwd=Path(__file__).parent.parent,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines = []
        self._reader = threading.Thread(target=self._read, args=(self.process,), daemon=True)
        self._reader.start()

    def ready(self) -> bool:
        """`Node.ready`; hypercorn says ``Running on`` once per worker, after that worker's startup."""
        if self.server == "uvicorn":
            return super().ready()
        if self.process.poll() is not None:
            self._reader.join(5)
            if "address already in use" in self.output.lower():
                self._close_pipe()
                self._start()
                return False
            pytest.fail(f"the server exited with {self.process.returncode}:\n{self.output}")
        if self.output.count("Running on") < self.workers:
            return False
        try:
            return httpx.get(f"{self.url}/value", timeout=2).status_code == 200
        except httpx.TransportError:
            return False


@contextmanager
def workers(env: dict[str, str], server: str) -> Iterator[Workers]:
    """Three workers behind one port, all started; stopped at the end."""
    node = Workers(env, server)
    try:
        until(node.ready, START_TIMEOUT, lambda: node.output)
        yield node
    finally:
        node.stop()


def backend_env(
    backend: str, url: str, tmp_path: Path, request: pytest.FixtureRequest, **more: str
) -> dict[str, str]:
    """The environment of workers coordinated through ``backend`` (``redis`` or ``sqlite``)."""
    if backend == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return redis_env(server, url, **more)
    return {"BACKEND": "sqlite", "DB_PATH": str(tmp_path / "refresh.db"), "UPSTREAM_URL": url, **more}


def everywhere(
    node: Workers, paths: Iterable[str], seconds: float = 10.0
) -> dict[str, dict[int, list[dict[str, Any]]]]:
    """GET each of ``paths`` until every worker has answered each; ``{path: {pid: [answers]}}``.

    Each request on a new connection (the kernel picks the worker that accepts
    it), twelve at once so that a busy worker leaves the next one to another.
    Each answer also says when it came (``answered_at``, `time.monotonic`).
    A client per thread: one client's pool shared by threads that each close their
    connection at once now and then read from a socket another thread closed.
    """
    paths = list(paths)
    answers: dict[str, dict[int, list[dict[str, Any]]]] = {path: {} for path in paths}
    limits = httpx.Limits(max_keepalive_connections=0)
    local, clients = threading.local(), list[httpx.Client]()

    def get(path: str) -> tuple[str, dict[str, Any]]:
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=10, limits=limits)
            clients.append(local.client)
        response = local.client.get(f"{node.url}{path}")
        assert response.status_code == 200, response.text
        page: dict[str, Any] = response.json()
        page["answered_at"] = time.monotonic()
        return path, page

    def missing() -> list[str]:
        return [path for path in paths if len(answers[path]) < WORKERS]

    deadline = time.monotonic() + seconds
    try:
        with ThreadPoolExecutor(12) as pool:
            while missing():
                if time.monotonic() > deadline:
                    pytest.fail(f"not every worker answered within {seconds:g} s: {answers}")
                batch = [path for path in missing() for _ in range(12 // len(missing()) + 1)]
                for path, page in pool.map(get, batch):
                    answers[path].setdefault(page["pid"], []).append(page)
    finally:
        for client in clients:
            client.close()
    return answers


def rate(key: str, version: int) -> dict[str, Any]:
    return {"key": key, "version": version}


@pytest.mark.parametrize(("server", "backend"), FAMILY_CASES)
def test_three_workers_fetch_each_key_of_a_family_once_per_interval(
    server: str, backend: str, upstream: tuple[Upstream, str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Each key loads once for the cluster, then one fetch per key per interval; every worker serves the same."""
    documents, url = upstream
    for key in KEYS:
        documents.set(f"/rate/{key}", rate(key, 1))
    # Long enough that every worker asks for every key within one interval on a loaded
    # machine (twelve requests at a time until each of the three has answered each), and
    # a coordinator timeout that a loaded machine's slow SQLite call does not reach (past
    # it, a process would rightly fetch for itself, as in an outage).
    every = 8.0
    env = backend_env(
        backend,
        url,
        tmp_path,
        request,
        MODE="family",
        EVERY=f"{every}s",
        LEASE_TTL="3s",
        COORDINATOR_TIMEOUT="5",
    )
    paths = [f"/rate/{key}" for key in KEYS]
    with workers(env, server) as node:
        assert not documents.requests, "nothing is preloaded: a key loads on its first request"
        started = time.monotonic()
        answers = everywhere(node, paths)
        # When the last worker to get a key first had it (the key was stored after `started`).
        cold = max(
            min(page["answered_at"] for page in pages) - started
            for path in paths
            for pages in answers[path].values()
        )
        fetched = {path: documents.requests[path] for path in paths}
        for key, path in zip(KEYS, paths, strict=True):
            served = [page["value"] for pages in answers[path].values() for page in pages]
            assert served == [rate(key, 1)] * len(served), answers[path]
        # Every worker had each key well within one interval: one load each for the cluster
        # (a worker asking later than `every` after it was stored would rightly fetch it again).
        assert cold < every, f"the workers took {cold:.1f} s to get every key: too slow to count loads"
        assert fetched == dict.fromkeys(paths, 1), f"cold loads across {WORKERS} workers: {fetched}"

        # Two and a half intervals with new values upstream: every worker serves them, one
        # fetch per key per interval for the cluster (each worker fetching would be three
        # per interval). Each refresh is due an interval after the last one ended: the
        # schedule drifts a little later each time, and the window's half interval more
        # keeps the second refresh in it.
        for key in KEYS:
            documents.set(f"/rate/{key}", rate(key, 2))
        before, started = documents.requests.copy(), time.monotonic()

        def all_new() -> bool:
            pages = everywhere(node, paths)
            return all(
                page["value"] == rate(key, 2)
                for key, path in zip(KEYS, paths, strict=True)
                for by_pid in pages[path].values()
                for page in by_pid
            )

        until(all_new, 3 * every, "every worker serves the new value of every key")
        time.sleep(max(0.0, started + 2.5 * every - time.monotonic()))
        answers = everywhere(node, paths)
        after = documents.requests.copy()
        intervals = (time.monotonic() - started) / every
        for key, path in zip(KEYS, paths, strict=True):
            served = [page["value"] for pages in answers[path].values() for page in pages]
            assert served == [rate(key, 2)] * len(served), answers[path]
            count = after[path] - before[path]
            assert intervals / 2 <= count <= intervals + 1, (
                f"{path}: {count} fetches in {intervals:.1f} intervals"
            )
        assert_clean([node])


def products(version: int) -> dict[str, Any]:
    return {"version": version, "items": [f"item{index}" for index in range(version + 1)]}


def prices(version: int) -> dict[str, Any]:
    return {"version": version, "prices": {f"item{index}": version * 10 + index for index in range(4)}}


@pytest.mark.parametrize(("server", "backend"), DERIVED_CASES)
def test_three_workers_fetch_the_inputs_of_a_derived_value_once_per_interval_and_serve_it_consistent(
    server: str, backend: str, upstream: tuple[Upstream, str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """One fetch per input per interval for the cluster; each worker derives from what it publishes, in one snapshot."""
    documents, url = upstream
    documents.set("/products", products(1))
    documents.set("/prices", prices(1))
    every = 1.0
    env = backend_env(backend, url, tmp_path, request, MODE="derived", EVERY=f"{every}s", LEASE_TTL="3s")
    inconsistent: list[dict[str, Any]] = []
    seen = 0
    done = threading.Event()

    def consistent(page: dict[str, Any]) -> bool:
        """Whether the derived value is the one its inputs give, as this one request read them."""
        nonlocal seen
        seen += 1
        if page["catalog"] != build_catalog(page["products"], page["prices"]):
            inconsistent.append(page)
            return False
        return True

    def hammer(node: Workers) -> None:
        """Requests one after the other, each on a new connection, each checked, until told to stop."""
        with httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            while not done.is_set():
                consistent(client.get(f"{node.url}/catalog").json())

    def serve_everywhere(node: Workers, built_from: list[int]) -> bool:
        """Whether every worker now serves the catalog built from these versions, consistent."""
        pages = [page for by_pid in everywhere(node, ["/catalog"])["/catalog"].values() for page in by_pid]
        return all(consistent(page) and page["catalog"]["built_from"] == built_from for page in pages)

    with workers(env, server) as node:
        thread = threading.Thread(target=hammer, args=(node,))
        thread.start()
        try:
            until(lambda: serve_everywhere(node, [1, 1]), 5, "every worker serves the first catalog")
            before, started = documents.requests.copy(), time.monotonic()
            for version in (2, 3):  # one input changes, then the other
                documents.set("/products", products(version))
                until(
                    lambda: serve_everywhere(node, [version, version - 1]),  # noqa: B023 - called here
                    4 * every,
                    f"every worker serves the catalog of products {version}",
                )
                documents.set("/prices", prices(version))
                until(
                    lambda: serve_everywhere(node, [version, version]),  # noqa: B023 - called here
                    4 * every,
                    f"every worker serves the catalog of prices {version}",
                )
            time.sleep(max(0.0, started + 5 * every - time.monotonic()))
            after = documents.requests.copy()
            intervals = (time.monotonic() - started) / every
        finally:
            done.set()
            thread.join(10)
        assert_clean([node])
    for path in ("/products", "/prices"):
        count = after[path] - before[path]
        assert intervals / 2 <= count <= intervals + 1, (
            f"{path}: {count} fetches in {intervals:.1f} intervals (3 workers fetching would be 3 a time)"
        )
    assert seen > 50, f"only {seen} requests were checked"
    assert inconsistent == [], f"{len(inconsistent)} of {seen} responses: {inconsistent[:3]}"
