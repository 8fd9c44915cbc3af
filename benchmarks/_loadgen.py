"""A small HTTP/1.1 load generator: keep-alive connections on loopback, GET in a loop."""

from __future__ import annotations

import asyncio
import time

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


async def _connection(port: int, stop_at: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    done = 0
    try:
        while time.perf_counter() < stop_at:
            writer.write(REQUEST)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            done += 1
    finally:
        counts.append(done)
        writer.close()


async def requests_per_second(port: int, *, connections: int = 16, seconds: float = 3.0) -> float:
    """Completed requests per second over ``connections`` keep-alive connections."""
    counts: list[int] = []
    started = time.perf_counter()
    stop_at = started + seconds
    await asyncio.gather(*(_connection(port, stop_at, counts) for _ in range(connections)))
    return sum(counts) / (time.perf_counter() - started)
