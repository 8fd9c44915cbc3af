"""Log lines written by 1,000 refreshers that fail with a message changing on every attempt.

Driven by a FakeClock (minutes of schedule in seconds). The baseline is what a
limit by message text would allow: a WARNING per failure, since no two messages
are alike. The target: at most 2 lines per refresher per 5 minutes.

    python benchmarks/failure_logs.py [--refreshers 1000] [--minutes 10]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging

from _common import Row, Server, print_rows, trivial_app

from asgi_refresh import Refresher, RefreshMiddleware
from asgi_refresh.testing import FakeClock


class Counter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.lines += 1


async def measure(refreshers: int = 1000, minutes: int = 10) -> list[Row]:
    attempts = itertools.count(1)

    async def fetch() -> int:
        attempt = next(attempts)
        if attempt <= refreshers:
            return attempt  # the first loads succeed; then the upstream goes bad
        raise ConnectionError(f"request {attempt} failed at port {40000 + attempt % 20000}")

    counter = Counter()
    logger = logging.getLogger("asgi_refresh")
    logger.addHandler(counter)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    clock = FakeClock()
    app = RefreshMiddleware(
        trivial_app,
        refreshers=[
            Refresher(f"r{i}", fetch, every="10s", backoff_initial="1s", backoff_max="10s")
            for i in range(refreshers)
        ],
        clock=clock,
    )
    try:
        async with Server(app):
            for _ in range(minutes * 6):
                await clock.advance("10s")
    finally:
        logger.removeHandler(counter)
        logger.propagate = True
    failures = next(attempts) - 1 - refreshers
    windows = minutes / 5
    per_refresher = counter.lines / refreshers / windows
    return [
        Row(
            f"log lines per refresher per 5 min, {refreshers} failing, changing messages",
            f"{per_refresher:.2f}",
            f"{failures / refreshers / windows:.0f}",
            per_refresher / (failures / refreshers / windows),
        )
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--refreshers", type=int, default=1000)
    parser.add_argument("--minutes", type=int, default=10)
    args = parser.parse_args()
    print_rows(asyncio.run(measure(args.refreshers, args.minutes)))
