"""Last known good: starting from snapshots with the upstream down, and what writing them costs.

1. Cold start: a real ``uvicorn`` process serving an app with 100 HTTP refreshers,
   from process start to the first request answered with their values. Once with
   the upstream up (the baseline: a normal start), once with it down and a
   snapshot of every value on disk.
2. Writing: a refresher whose 1 MB value changes at every refresh, with and
   without ``snapshot_dir``; and one whose value is unchanged (the snapshot is
   only touched). Time per refresh against the same refresh without snapshots,
   and the bytes written.

    python benchmarks/snapshots.py [--refreshers 100] [--rounds 3] [--refreshes 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from _common import Row, Server, free_port, print_rows, trivial_app

from asgi_refresh import Refresher, RefreshMiddleware

HERE = Path(__file__).parent


class _Values(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"path": self.path, "names": ["ada", "grace"]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("etag", '"v1"')
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return


def _first_answer(env: dict[str, str]) -> float:
    """Seconds from starting a uvicorn process to its first answer with every value."""
    port = free_port()
    started = time.perf_counter()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "bench_apps:snapshot_app",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=HERE,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with httpx.Client() as client:
            while True:
                try:
                    reply = client.get(f"http://127.0.0.1:{port}/", timeout=1)
                    if reply.status_code == 200 and reply.json()["loaded"] == int(env["BENCH_REFRESHERS"]):
                        return time.perf_counter() - started
                except httpx.TransportError:
                    pass
                if process.poll() is not None:
                    raise RuntimeError("the app exited: its startup failed")
                time.sleep(0.005)
    finally:
        process.terminate()
        process.wait(10)


def cold_start(refreshers: int, rounds: int) -> list[Row]:
    """From process start to first request served: a normal start against one from snapshots."""
    with tempfile.TemporaryDirectory() as directory:
        upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Values)
        thread = threading.Thread(target=upstream.serve_forever, daemon=True)
        thread.start()
        env = {
            "BENCH_REFRESHERS": str(refreshers),
            "BENCH_UPSTREAM": f"http://127.0.0.1:{upstream.server_address[1]}",
            "BENCH_SNAPSHOTS": directory,
        }
        live, from_snapshots = [], []
        try:
            live.append(_first_answer(env))  # writes the snapshots (at shutdown at the latest)
            for _ in range(rounds):
                live.append(_first_answer(env))
        finally:
            upstream.shutdown()
            upstream.server_close()
        written = len([name for name in os.listdir(directory) if name.endswith(".snapshot")])
        assert written == refreshers, f"{written} snapshots written, not {refreshers}"
        for _ in range(rounds):
            from_snapshots.append(_first_answer(env))  # the upstream's port is closed now
    snapshot, normal = statistics.median(from_snapshots), statistics.median(live[1:])
    return [
        Row(
            f"process start -> first request, {refreshers} refreshers, from snapshots (upstream down)",
            f"{snapshot * 1000:.0f} ms",
            f"{normal * 1000:.0f} ms",
            snapshot / normal,
        )
    ]


def _megabyte(counter: int) -> dict[str, Any]:
    return {"version": counter, "rows": [{"id": i, "name": f"name-{i:06d}"} for i in range(30_000)]}


async def _refreshes(snapshot_dir: str | None, refreshes: int, *, changing: bool) -> tuple[float, int]:
    """Seconds per refresh (including the snapshot written for it), and bytes of its snapshot."""
    counter = 0
    value = _megabyte(0)

    async def fetch() -> dict[str, Any]:
        nonlocal counter, value
        counter += 1
        if changing:
            value = _megabyte(counter)
        return value

    app = RefreshMiddleware(
        trivial_app, refreshers=[Refresher("big", fetch, every="1h")], snapshot_dir=snapshot_dir
    )
    async with Server(app):
        handle = app.handle
        writer = None if snapshot_dir is None else handle._runtime.keeper.writer  # type: ignore[attr-defined]
        started = time.perf_counter()
        for _ in range(refreshes):
            await handle.refresh("big")
            if writer is not None:
                await writer.flush()  # counted: the write is part of what a refresh costs
        took = (time.perf_counter() - started) / refreshes
    size = 0 if snapshot_dir is None else (Path(snapshot_dir) / "big.snapshot").stat().st_size
    return took, size


async def write_cost(refreshes: int, rounds: int) -> list[Row]:
    """A refresh of a 1 MB value with snapshots against the same refresh without."""
    rows = []
    for changing in (True, False):
        with_snapshots, without = [], []
        size = 0
        for _ in range(rounds):
            with tempfile.TemporaryDirectory() as directory:
                took, size = await _refreshes(directory, refreshes, changing=changing)
                with_snapshots.append(took)
            without.append((await _refreshes(None, refreshes, changing=changing))[0])
        kept, plain = statistics.median(with_snapshots), statistics.median(without)
        what = "changed: written" if changing else "unchanged: touched"
        written = f", {size / 1e6:.2f} MB" if changing else ", 0 bytes"
        rows.append(
            Row(
                f"refresh of a 1 MB value, {what}{written}",
                f"{kept * 1000:.1f} ms",
                f"{plain * 1000:.1f} ms",
                kept / plain,
            )
        )
    return rows


async def measure(refreshers: int = 100, rounds: int = 3, refreshes: int = 30) -> list[Row]:
    rows = await asyncio.to_thread(cold_start, refreshers, rounds)
    return [*rows, *await write_cost(refreshes, rounds)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--refreshers", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--refreshes", type=int, default=30)
    args = parser.parse_args()
    print_rows(asyncio.run(measure(args.refreshers, args.rounds, args.refreshes)))
