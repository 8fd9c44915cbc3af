"""Push against polling: how soon every worker serves a change, what an unchanged document costs, what a webhook burst costs.

1. Latency from an upstream change to *every* worker serving it: one real
   ``uvicorn --workers 3`` (``benchmarks/push_worker_app.py``) whose workers each
   run two refreshers on one upstream, `SSESource` (its ``fetch_url`` polled every
   5 s as the safety net) and `HTTPSource` polling every 5 s. Each worker writes
   when it publishes a change (its ``on_change``); the figure per change is the
   latest worker's time minus the moment the upstream emitted it (one host, one
   clock). The same changes, at random moments. p50 and p99.
2. The same in one process, read the way a request reads it (``handle.value``,
   checked every 0.5 ms).
3. Upstream requests per hour for one unchanged document, per process, over a
   quiet window: `SSESource` (stream connections and document GETs) against
   `HTTPSource` polling every 5 s (its conditional GETs). The SSE stream's
   keepalive comments are not requests; the stream is one held connection.
4. A burst of 1,000 signed webhook deliveries spread over 3 uvicorn processes
   coordinated through Redis (``tests/cluster_app.py``, the refresher polling once
   an hour): how many times the upstream is fetched.

Everything runs on 127.0.0.1 (the upstreams are uvicorn in threads of this
process: the test suite's SSE upstream, the demo's document upstream; Redis from
the test extra). Ratios are measured side by side in one run.

    python benchmarks/push.py [--changes 40] [--quiet 30] [--every 5] [--workers 3]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
from _common import Row, free_port, print_rows, trivial_app
from cluster import Setup, _until

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' SSE upstream

from asgi_lifespan import LifespanManager

from asgi_refresh import HTTPSource, Refresher, RefreshMiddleware, SSESource
from asgi_refresh.demo.upstream import serve
from tests.sse_server_app import SSEUpstream

HERE = Path(__file__).resolve().parent


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def worker_latencies(changes: int, every: float, workers: int) -> tuple[list[float], list[float]]:
    """Seconds from each change to the last of ``workers`` uvicorn workers publishing it: (SSE, polling)."""
    upstream = SSEUpstream(keepalive=15)
    with serve(upstream) as base_url, tempfile.TemporaryDirectory() as directory:
        upstream.base_url = base_url
        upstream.emit({"change": 0})
        log = Path(directory) / "changes.log"
        log.touch()
        command = [sys.executable, "-m", "uvicorn", "push_worker_app:app", "--app-dir", str(HERE)]
        command += ["--host", "127.0.0.1", "--port", str(free_port()), "--workers", str(workers)]
        env = {**os.environ, "UPSTREAM_URL": base_url, "CHANGE_LOG": str(log), "EVERY": f"{every}s"}
        with (Path(directory) / "uvicorn.log").open("wb") as output:
            server = subprocess.Popen(
                [*command, "--no-access-log", "--log-level", "warning"],
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
            try:
                published = Published(log)
                _until(lambda: published.count({"change": 0}) == (workers, workers), 60, "the workers start")
                _until(lambda: upstream.connections >= workers, 10, "every worker's stream connects")
                time.sleep(0.5)  # the catch-up GET after each connection is done
                pushed: list[float] = []
                polled: list[float] = []
                for number in range(1, changes + 1):
                    time.sleep(random.uniform(0, every))  # a random phase against the polls
                    wanted = {"change": number}
                    emitted = time.time()
                    upstream.emit(wanted)
                    _until(lambda: published.count(wanted) == (workers, workers), every * 3 + 10, str(wanted))  # noqa: B023
                    sse, poll = published.latest(wanted)
                    pushed.append(sse - emitted)
                    polled.append(poll - emitted)
            finally:
                server.terminate()
                server.wait(30)
                upstream.drop()
    return pushed, polled


class Published:
    """The workers' ``<pid> <name> <value> <time>`` lines, read as they come."""

    def __init__(self, log: Path) -> None:
        self._file = log.open("rb")
        self._partial = b""
        self._seen: dict[tuple[str, str], dict[str, float]] = {}  # (name, value) -> pid -> time

    def _read(self) -> None:
        data = self._partial + self._file.read()
        *lines, self._partial = data.split(b"\n")
        for line in lines:
            pid, name, value, stamp = line.decode().split(" ")
            self._seen.setdefault((name, value), {}).setdefault(pid, float(stamp))

    def count(self, value: object) -> tuple[int, int]:
        """How many workers published ``value``: (SSE, polling)."""
        self._read()
        key = json.dumps(value, separators=(",", ":"))
        return len(self._seen.get(("pushed", key), {})), len(self._seen.get(("polled", key), {}))

    def latest(self, value: object) -> tuple[float, float]:
        """When the last worker published ``value``: (SSE, polling)."""
        key = json.dumps(value, separators=(",", ":"))
        return max(self._seen[("pushed", key)].values()), max(self._seen[("polled", key)].values())


WEBHOOK_SECRET = "push-benchmark-webhook-secret"


def webhook_burst(deliveries: int, processes: int) -> tuple[int, float]:
    """Signed deliveries spread over ``processes`` coordinated processes: (upstream fetches, seconds)."""
    with ExitStack() as stack:
        setup = Setup(stack, ["redis"])
        env = setup.env("redis", "/hooked", EVERY="1h", LEASE_TTL="3s", WEBHOOK_SECRET=WEBHOOK_SECRET)
        with setup.clusters([env], processes) as (nodes,), httpx.Client() as http:
            _until(lambda: all(node.page()["value"] == {"version": 0} for node in nodes), 10, "version 0")
            setup.upstream.set("/hooked", {"version": 1})
            before = setup.upstream.requests["/hooked"]
            body = b'{"ref": "refs/heads/main"}'
            signature = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
            headers = {"X-Hub-Signature-256": signature, "X-GitHub-Event": "push"}
            started = time.monotonic()
            for index in range(deliveries):
                url = f"{nodes[index % processes].url}/_refresh/hooks/deploy"
                response = http.post(url, content=body, headers=headers, timeout=10)
                if response.status_code != 202:
                    raise RuntimeError(f"delivery {index}: HTTP {response.status_code} {response.text}")
            took = time.monotonic() - started
            _until(lambda: all(node.page()["value"] == {"version": 1} for node in nodes), 10, "version 1")
            time.sleep(2.5)  # the refreshes queued at the end of the burst
            return setup.upstream.requests["/hooked"] - before, took


async def latencies(changes: int, every: float) -> tuple[list[float], list[float]]:
    """Seconds from each change to it being served: (SSE, polling)."""
    upstream = SSEUpstream(keepalive=15)
    with serve(upstream) as base_url:
        upstream.base_url = base_url
        upstream.emit({"change": 0})
        middleware = RefreshMiddleware(
            trivial_app,
            refreshers=[
                Refresher(
                    "pushed", SSESource(f"{base_url}/stream", fetch_url=f"{base_url}/doc"), every=every
                ),
                Refresher("polled", HTTPSource(f"{base_url}/doc"), every=every),
            ],
        )
        pushed: list[float] = []
        polled: list[float] = []
        try:
            async with LifespanManager(middleware):
                handle = middleware.handle
                while not handle.status()["pushed"].get("stream", {}).get("connected"):  # noqa: ASYNC110 - another thread's server
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.2)  # the catch-up GET after connecting is done
                for number in range(1, changes + 1):
                    await asyncio.sleep(random.uniform(0, every))  # a random phase against the poll
                    wanted = {"change": number}
                    event_id = upstream.emit(wanted)
                    emitted = upstream.emitted_at[event_id]
                    seen: dict[str, float] = {}
                    while len(seen) < 2:
                        now = time.perf_counter()
                        for name in ("pushed", "polled"):
                            if name not in seen and handle.value(name) == wanted:
                                seen[name] = now - emitted
                        await asyncio.sleep(0.0005)
                    pushed.append(seen["pushed"])
                    polled.append(seen["polled"])
        finally:
            upstream.drop()
    return pushed, polled


async def requests_per_hour(quiet: float, every: float) -> tuple[float, float]:
    """Upstream requests per hour for an unchanged document: (SSE, polling)."""
    counts = []
    for make in (
        lambda base: SSESource(f"{base}/stream", fetch_url=f"{base}/doc"),
        lambda base: HTTPSource(f"{base}/doc"),
    ):
        upstream = SSEUpstream(keepalive=15)
        with serve(upstream) as base_url:
            upstream.base_url = base_url
            upstream.emit({"unchanged": True})
            middleware = RefreshMiddleware(
                trivial_app, refreshers=[Refresher("doc", make(base_url), every=every)]
            )
            try:
                async with LifespanManager(middleware):
                    await asyncio.sleep(1.0)  # startup and the first connection settle
                    before = upstream.doc_requests + upstream.stream_requests
                    await asyncio.sleep(quiet)
                    counts.append(upstream.doc_requests + upstream.stream_requests - before)
            finally:
                upstream.drop()
    sse, polling = (count * 3600 / quiet for count in counts)
    return sse, polling


def latency_rows(what: str, pushed: list[float], polled: list[float], every: float) -> list[Row]:
    rows = []
    for label, fraction in (("p50", 0.5), ("p99", 0.99)):
        sse, poll = percentile(pushed, fraction), percentile(polled, fraction)
        rows.append(
            Row(
                f"{what}, {label} of {len(pushed)}: SSE / polling every {every:g} s",
                f"{sse * 1000:.1f} ms",
                f"{poll * 1000:.0f} ms",
                sse / poll,
            )
        )
    means = f"SSE {statistics.mean(pushed) * 1000:.1f} ms, polling {statistics.mean(polled) * 1000:.0f} ms"
    worst = f"SSE {max(pushed) * 1000:.1f} ms, polling {max(polled) * 1000:.0f} ms"
    rows.append(Row(f"  (means: {means}; worst: {worst})", "", "", None))
    return rows


async def measure(
    changes: int = 40, quiet: float = 30.0, every: float = 5.0, workers: int = 3, deliveries: int = 1000
) -> list[Row]:
    rows = latency_rows(
        f"change to served by all {workers} uvicorn workers",
        *worker_latencies(changes, every, workers),
        every,
    )
    rows += latency_rows("change to served in one process", *await latencies(changes, every), every)
    sse_rate, polling_rate = await requests_per_hour(quiet, every)
    rows.append(
        Row(
            f"upstream requests/hour per process, unchanged doc: SSE / polling every {every:g} s",
            f"{sse_rate:,.0f}",
            f"{polling_rate:,.0f}",
            sse_rate / polling_rate if polling_rate else None,
        )
    )
    fetched, took = webhook_burst(deliveries, workers)
    rows.append(
        Row(
            f"{deliveries:,} signed webhook deliveries over {workers} processes (Redis), in {took:.1f} s: "
            "upstream fetches",
            f"{fetched}",
            "",
            None,
        )
    )
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--changes", type=int, default=40)
    parser.add_argument("--quiet", type=float, default=30.0, help="seconds of the quiet window")
    parser.add_argument("--every", type=float, default=5.0, help="the polling interval, seconds")
    parser.add_argument("--workers", type=int, default=3, help="uvicorn workers (and webhook processes)")
    parser.add_argument("--deliveries", type=int, default=1000, help="webhook deliveries in the burst")
    args = parser.parse_args()
    print_rows(asyncio.run(measure(args.changes, args.quiet, args.every, args.workers, args.deliveries)))
