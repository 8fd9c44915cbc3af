"""The app the real-server tests start: a counter refreshed every 200 ms, and a probe.

Environment: ``FAIL_STARTUP=1`` makes the required refresher fail (startup must
stop the server, naming it). ``UNRULY=1`` makes the wrapped app ignore
``scope["type"]`` (it answers the lifespan with an HTTP response) and adds a
refresher whose fetch and hook raise what must never end a worker
(``KeyboardInterrupt``, ``SystemExit``). Each response says which process served it, the
counter value it saw, and what the server gave the app (lifespan, state).
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import MutableMapping
from typing import Any

import anyio

from asgi_refresh import Refresher, RefreshMiddleware

_counter = itertools.count(1)
SEEN: dict[str, Any] = {"lifespan": False, "lifespan_state": False, "request_state": None}


async def count() -> int:
    if os.environ.get("FAIL_STARTUP"):
        raise ConnectionRefusedError("upstream at 127.0.0.1:9 refused the connection")
    return next(_counter)


_slow_calls = itertools.count()


async def slow() -> int:
    """Loads at once, then hangs: a fetch is always under way when shutdown comes."""
    if next(_slow_calls) == 0:
        return 0
    try:
        await anyio.sleep(30)
    except anyio.get_cancelled_exc_class():
        # Proof that shutdown cancelled the fetch and awaited it, rather than dropping it.
        print("slow fetch cancelled and cleaned up", flush=True)
        raise
    return 1  # pragma: no cover


_unruly_calls = itertools.count(1)


async def unruly() -> int:
    """Raises KeyboardInterrupt, then SystemExit(3), then returns, over and over."""
    call = next(_unruly_calls)
    if call % 3 == 1:
        raise KeyboardInterrupt
    if call % 3 == 2:
        raise SystemExit(3)
    return call


def exit_on_change(old: Any, new: Any) -> None:
    raise SystemExit(4)


UNRULY = bool(os.environ.get("UNRULY"))


async def inner(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan" and not UNRULY:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                print("app shutdown", flush=True)
                await send({"type": "lifespan.shutdown.complete"})
                return
    state = scope.get("state") or {}
    body = json.dumps(
        {
            "pid": os.getpid(),
            "counter": state.get("counter"),
            **SEEN,
        }
    ).encode()
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


middleware = RefreshMiddleware(
    inner,
    refreshers=[
        Refresher("counter", count, every="200ms", jitter=0),
        Refresher("slow", slow, every="100ms", timeout=None),
        *(
            [Refresher("unruly", unruly, every="50ms", required=False, on_change=exit_on_change)]
            if UNRULY
            else []
        ),
    ],
    startup_timeout="1s",
    shutdown_timeout="3s",
)


async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    """The probe: records what the server hands over, before the middleware sees it."""
    if scope["type"] == "lifespan":
        SEEN["lifespan"] = True
        SEEN["lifespan_state"] = "state" in scope
    elif scope["type"] == "http":
        state = scope.get("state")
        if state is None:
            SEEN["request_state"] = "none"
        else:
            # A marker left on the dict tells a fresh copy from one handed out again.
            SEEN["request_state"] = "same dict every time" if state.get(_MARK) else "a copy per request"
            state[_MARK] = True
    await middleware(scope, receive, send)


_MARK = "real_server_app.seen"
