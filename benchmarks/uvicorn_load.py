"""Requests per second through uvicorn: RefreshMiddleware and its alternatives vs no refreshing.

Starts one uvicorn process per variant of `bench_apps` on 127.0.0.1 and loads
them in turn with keep-alive connections (rounds alternate the order); prints
each variant's median requests per second and its ratio to the bare app.

    python benchmarks/uvicorn_load.py [--rounds 5] [--seconds 3] [--connections 16]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import httpx
from _common import Row, free_port, print_rows
from _loadgen import requests_per_second

VARIANTS = ["bare", "refreshed", "repeat_every", "hand_written"]
HERE = Path(__file__).parent


def _start(variant: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            f"bench_apps:{variant}",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        cwd=HERE,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/").raise_for_status()
            return process, port
        except httpx.TransportError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise
            time.sleep(0.1)


def _stop(servers: Iterable[tuple[subprocess.Popen[bytes], int]]) -> None:
    """Stop the uvicorn processes `_start` started: politely, then not."""
    processes = [process for process, _ in servers]
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


async def measure(rounds: int = 5, seconds: float = 3.0, connections: int = 16) -> list[Row]:
    """Median requests per second per variant; each one's ratio to the bare app."""
    if importlib.util.find_spec("fastapi_utils") is None:
        raise SystemExit('uvicorn_load needs fastapi-utils: python -m pip install -e ".[bench]"')
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        for variant in VARIANTS:
            servers[variant] = _start(variant)
        samples: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
        for _, port in servers.values():  # warm up
            await requests_per_second(port, connections=connections, seconds=min(1.0, seconds))
        for round_number in range(rounds):
            order = VARIANTS if round_number % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                port = servers[variant][1]
                samples[variant].append(
                    await requests_per_second(port, connections=connections, seconds=seconds)
                )
    finally:
        _stop(servers.values())
    rate = {variant: statistics.median(values) for variant, values in samples.items()}
    return [
        Row(
            f"requests/s through uvicorn: {variant} / bare",
            f"{rate[variant]:,.0f}/s",
            f"{rate['bare']:,.0f}/s",
            rate[variant] / rate["bare"],
        )
        for variant in VARIANTS[1:]
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    print_rows(asyncio.run(measure(args.rounds, args.seconds, args.connections)))
