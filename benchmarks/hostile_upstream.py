"""HTTPSource against decompression bombs: peak memory and event-loop stalls, per encoding stack.

A hostile upstream (tests/faults/upstream.py, on 127.0.0.1) serves ~2 GiB of zeros
compressed into a few kilobytes under several encoding stacks (``gzip, gzip`` on
one header line and on two, three gzips, ``br``, ``zstd``, ``br, zstd``), and a
small JSON document as the baseline. Each fetch runs in a fresh subprocess with
``max_bytes`` = 1 MiB, so that its peak RSS (``ru_maxrss``) is its own; a ticker
task on the same event loop measures its worst lateness (the loop stall) while
the fetch runs. Figures: peak RSS and worst stall of each bomb, against the
baseline subprocess fetching the small body in the same run; targets are at most
20 MB above the baseline and at most 50 ms of stall.

    python benchmarks/hostile_upstream.py [--size-mib 2048] [--max-bytes 1048576] [--backend asyncio]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the fault-injection kit in tests/

from _common import Row, print_rows

from asgi_refresh import HTTPSource, SourceError
from tests.faults.upstream import HostileUpstream, Reply, bomb, can_encode, encode

MiB = 1024 * 1024


def stacks(size: int) -> list[tuple[str, list[str], bytes]]:
    """(label, Content-Encoding lines, body) for each bomb; the inner gzip is made once."""
    started = time.perf_counter()
    inner = bomb(size, ["gzip"])
    gzip_gzip = encode(inner, ["gzip"])
    found = [
        ("gzip, gzip", ["gzip, gzip"], gzip_gzip),
        ("gzip | gzip (two lines)", ["gzip", "gzip"], gzip_gzip),
        ("gzip, gzip, gzip", ["gzip, gzip, gzip"], encode(gzip_gzip, ["gzip"])),
    ]
    if can_encode("br"):
        found.append(("br", ["br"], bomb(size, ["br"])))
    if can_encode("zstd"):
        found.append(("zstd", ["zstd"], bomb(size, ["zstd"])))
    if can_encode("br") and can_encode("zstd"):
        found.append(("br, zstd", ["br, zstd"], bomb(size, ["br", "zstd"])))
    print(
        f"bombs built in {time.perf_counter() - started:.1f} s: "
        + ", ".join(f"{label} {len(body):,} B" for label, _, body in found),
        file=sys.stderr,
    )
    return found


async def child(url: str, max_bytes: int) -> dict[str, Any]:
    """In the subprocess: one fetch with a ticker measuring the loop's worst lateness."""
    worst = 0.0
    done = anyio.Event()
    outcome = ""

    async def ticker() -> None:
        nonlocal worst
        last = time.perf_counter()
        while not done.is_set():
            await anyio.sleep(0.001)
            now = time.perf_counter()
            worst = max(worst, now - last - 0.001)
            last = now

    async def fetch() -> None:
        nonlocal outcome, worst
        source = HTTPSource(url, max_bytes=max_bytes, parse="bytes")
        try:
            # Entering makes the httpx client (loading CA certificates takes ~100 ms
            # on the loop, once per middleware): not what is measured here.
            async with source:
                await anyio.sleep(0.05)
                worst = 0.0
                started = time.perf_counter()
                try:
                    outcome = f"{len((await source()).value)} bytes"
                except SourceError as exc:
                    outcome = str(exc)
                outcome += f" in {(time.perf_counter() - started) * 1000:.0f} ms"
        finally:
            done.set()

    async with anyio.create_task_group() as group:
        group.start_soon(ticker)
        await fetch()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"rss_mb": peak_kb / 1024, "stall_ms": worst * 1000, "outcome": outcome}


def run_child(url: str, max_bytes: int, backend: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", url, "--max-bytes", str(max_bytes), "--backend", backend]
    result = subprocess.run(command, capture_output=True, text=True, check=True, timeout=600)
    measured: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return measured


def measure(size: int, max_bytes: int, backend: str) -> list[Row]:
    rows = []
    bombs = stacks(size)
    with HostileUpstream() as upstream:
        upstream.route("/small", Reply.json({"names": ["ada", "grace"]}))
        for index, (_, lines, body) in enumerate(bombs):
            upstream.route(
                f"/bomb{index}", Reply(headers=[("Content-Encoding", line) for line in lines], body=body)
            )
        baseline = run_child(upstream.url("/small"), max_bytes, backend)
        print(f"baseline: {baseline}", file=sys.stderr)
        for index, (label, _, body) in enumerate(bombs):
            result = run_child(upstream.url(f"/bomb{index}"), max_bytes, backend)
            print(f"{label}: {result}", file=sys.stderr)
            name = f"{size // MiB} MiB bomb '{label}' ({len(body):,} B)"
            rows.append(
                Row(
                    f"{name}: peak RSS",
                    f"{result['rss_mb']:.1f} MB",
                    f"{baseline['rss_mb']:.1f} MB",
                    result["rss_mb"] / baseline["rss_mb"],
                )
            )
            rows.append(
                Row(
                    "  above baseline (target <= 20 MB)",
                    f"{result['rss_mb'] - baseline['rss_mb']:.1f} MB",
                    "",
                    None,
                )
            )
            rows.append(
                Row(
                    "  worst event-loop stall (target <= 50 ms)",
                    f"{result['stall_ms']:.1f} ms",
                    f"{baseline['stall_ms']:.1f} ms",
                    result["stall_ms"] / max(baseline["stall_ms"], 0.001),
                )
            )
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=2048, help="decoded size of each bomb")
    parser.add_argument("--max-bytes", type=int, default=MiB)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--child", metavar="URL", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        print(json.dumps(anyio.run(child, options.child, options.max_bytes, backend=options.backend)))
    else:
        print(f"max_bytes = {options.max_bytes:,}, backend = {options.backend}")
        print_rows(measure(options.size_mib * MiB, options.max_bytes, options.backend))
