"""The app's own requests while 1,000 values refresh every 100 ms, against the idle app.

Three uvicorn processes on 127.0.0.1 serve the same FastAPI app: ``bare`` (nothing
refreshing: the baseline), ``refreshed_busy`` (RefreshMiddleware with 1,000
refreshers every 100 ms) and ``hand_written_busy`` (1,000 ``asyncio.create_task``
loops every 100 ms, the seed pattern). Two figures per variant, medians over
alternating rounds:

- requests/s under load (16 keep-alive connections), as a ratio to the bare app;
- the p99 latency of paced requests (one connection, 200 requests/s) meanwhile,
  against the seed loop's.

    python benchmarks/busy.py [--rounds 5] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import time

from _common import Row, print_rows
from _loadgen import REQUEST, requests_per_second
from uvicorn_load import _start, _stop

VARIANTS = ["bare", "refreshed_busy", "hand_written_busy"]


async def paced_p99(port: int, *, seconds: float = 3.0, rate: float = 200.0) -> float:
    """The 99th percentile latency, in seconds, of requests sent ``rate`` times a second."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    latencies: list[float] = []
    try:
        started = time.perf_counter()
        sent = 0
        while time.perf_counter() - started < seconds:
            due = started + sent / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            before = time.perf_counter()
            writer.write(REQUEST)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - before)
            sent += 1
    finally:
        writer.close()
    return statistics.quantiles(latencies, n=100)[98]


async def measure(rounds: int = 5, seconds: float = 3.0) -> list[Row]:
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    rates: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    p99s: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    try:
        for variant in VARIANTS:
            servers[variant] = _start(variant)
        await asyncio.sleep(1.0)  # the busy ones' first loads are done and their schedules run
        for round_number in range(rounds):
            order = VARIANTS if round_number % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                port = servers[variant][1]
                rates[variant].append(await requests_per_second(port, connections=16, seconds=seconds))
                p99s[variant].append(await paced_p99(port, seconds=seconds))
    finally:
        _stop(servers.values())
    rate = {variant: statistics.median(values) for variant, values in rates.items()}
    p99 = {variant: statistics.median(values) for variant, values in p99s.items()}
    return [
        Row(
            "requests/s, 1,000 refreshers every 100 ms / idle app (target >= 0.9)",
            f"{rate['refreshed_busy']:,.0f}/s",
            f"{rate['bare']:,.0f}/s",
            rate["refreshed_busy"] / rate["bare"],
        ),
        Row(
            "requests/s, 1,000 hand-written loops every 100 ms / idle app",
            f"{rate['hand_written_busy']:,.0f}/s",
            f"{rate['bare']:,.0f}/s",
            rate["hand_written_busy"] / rate["bare"],
        ),
        Row(
            "paced p99 meanwhile: 1,000 refreshers / hand-written loops (target <= 2)",
            f"{p99['refreshed_busy'] * 1000:.1f} ms",
            f"{p99['hand_written_busy'] * 1000:.1f} ms",
            p99["refreshed_busy"] / p99["hand_written_busy"],
        ),
        Row("paced p99, idle app", f"{p99['bare'] * 1000:.1f} ms", "", None),
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    print_rows(asyncio.run(measure(args.rounds, args.seconds)))
