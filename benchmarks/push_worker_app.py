"""The app each ``uvicorn --workers N`` process runs in ``benchmarks/push.py``.

Two refreshers watch one upstream: ``pushed`` streams it (`SSESource`, its
``fetch_url`` polled every ``EVERY`` as the safety net) and ``polled`` polls the
document every ``EVERY`` (`HTTPSource`). Each publishes into this worker's state;
their ``on_change`` appends ``<pid> <name> <value as JSON> <time.time()>`` to the
file ``CHANGE_LOG`` (one short ``O_APPEND`` write per line, so the workers' lines
do not interleave), which is how the benchmark learns when *every* worker serves a
change: the workers share one port, so a request cannot choose its worker.

Environment:
    UPSTREAM_URL: The SSE upstream's base URL (``/stream`` and ``/doc``).
    CHANGE_LOG: The file the lines go to.
    EVERY: The polling interval (default ``5s``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from asgi_refresh import HTTPSource, Refresher, RefreshMiddleware, SSESource

UPSTREAM = os.environ["UPSTREAM_URL"]
LOG = os.environ["CHANGE_LOG"]
EVERY = os.environ.get("EVERY", "5s")


def record(name: str) -> Callable[[Any, Any], Awaitable[None]]:
    async def on_change(old: Any, new: Any) -> None:
        stamp = time.time()  # first: what follows is the benchmark's cost, not the change's
        line = f"{os.getpid()} {name} {json.dumps(new, separators=(',', ':'))} {stamp:.6f}\n"
        descriptor = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(descriptor, line.encode())
        finally:
            os.close(descriptor)

    return on_change


async def ok(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


app = RefreshMiddleware(
    ok,
    refreshers=[
        Refresher(
            "pushed",
            SSESource(f"{UPSTREAM}/stream", fetch_url=f"{UPSTREAM}/doc"),
            every=EVERY,
            on_change=record("pushed"),
        ),
        Refresher("polled", HTTPSource(f"{UPSTREAM}/doc"), every=EVERY, on_change=record("polled")),
    ],
)
