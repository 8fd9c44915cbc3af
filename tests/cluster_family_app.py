"""The app that the family and derived-value cluster tests start in each worker (uvicorn or hypercorn).

Like `tests/cluster_app.py` (whose ``coordinator_from_env`` it uses, so the same
environment names the backend), but with what `RefresherFamily` and `Derived`
need. ``MODE`` picks which:

``family``
    One family, ``rates``: ``fetch(key)`` is ``GET {UPSTREAM_URL}/rate/{key}`` (the
    counting upstream counts it per key). ``GET /rate/{key}`` answers ``{"pid",
    "key", "value"}``: which worker served it and the value it holds for the key.
``derived``
    Two refreshers, ``products`` and ``prices``, polling ``{UPSTREAM_URL}/products``
    and ``{UPSTREAM_URL}/prices``, and ``catalog`` derived from both with
    `build_catalog`. ``GET /catalog`` answers ``{"pid", "products", "prices",
    "catalog"}``, all three read from the one snapshot this request got, so that
    a test can check that ``catalog`` is `build_catalog` of the other two.

Either way ``GET /value`` answers ``{"pid": ...}`` (what `tests.test_cluster.Node`
polls to tell the server is up) and the admin endpoints are at ``/_refresh``.

Environment (besides the backend's, see `tests/cluster_app.py`):
    MODE: ``family`` or ``derived`` (required).
    UPSTREAM_URL: The counting upstream's base URL (required).
    EVERY: The family's and refreshers' interval (default ``1s``).
    LEASE_TTL: The lease's ttl (default ``3s``).
"""

from __future__ import annotations

import json
import os
from typing import Any

import httpx

from asgi_refresh import Derived, HTTPSource, Refresher, RefresherFamily, RefreshMiddleware
from asgi_refresh._types import Receive, Scope, Send

from .cluster_app import coordinator_from_env

UPSTREAM_URL = os.environ.get("UPSTREAM_URL", "http://127.0.0.1:9/unset")
EVERY = os.environ.get("EVERY", "1s")


async def fetch_rate(key: str) -> Any:
    """One key's value from the counting upstream: ``GET /rate/{key}``."""
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(f"{UPSTREAM_URL}/rate/{key}")
        response.raise_for_status()
        return response.json()


def build_catalog(products: dict[str, Any], prices: dict[str, Any]) -> dict[str, Any]:
    """Each product with its price, and the versions of both documents it was built from."""
    return {
        "built_from": [products["version"], prices["version"]],
        "items": {item: {"price": prices["prices"].get(item)} for item in products["items"]},
    }


async def respond(send: Send, status: int, payload: Any) -> None:
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps(payload).encode()})


async def inner(scope: Scope, receive: Receive, send: Send) -> None:
    """``GET /value``, and ``GET /rate/{key}`` or ``GET /catalog`` (by ``MODE``); 404 otherwise."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    state: dict[str, Any] = scope.get("state") or {}
    path: str = scope["path"]
    pid = os.getpid()
    if path == "/value":
        await respond(send, 200, {"pid": pid})
    elif path.startswith("/rate/") and "rates" in MODES[MODE]:
        key = path.removeprefix("/rate/")
        value = await state["asgi_refresh"].get("rates", key)
        await respond(send, 200, {"pid": pid, "key": key, "value": value})
    elif path == "/catalog" and "catalog" in MODES[MODE]:
        snapshot = {name: state[name] for name in ("products", "prices", "catalog")}
        await respond(send, 200, {"pid": pid, **snapshot})
    else:
        await respond(send, 404, {"pid": pid})


MODES = {"family": ("rates",), "derived": ("products", "prices", "catalog")}
MODE = os.environ.get("MODE", "family")
if MODE not in MODES:
    raise ValueError(f"MODE must be family or derived (got {MODE!r})")

app = RefreshMiddleware(
    inner,
    refreshers=(
        [
            Refresher(name, HTTPSource(f"{UPSTREAM_URL}/{name}", timeout=5), every=EVERY, jitter=0)
            for name in ("products", "prices")
        ]
        if MODE == "derived"
        else []
    ),
    derived=[Derived("catalog", build_catalog, inputs=("products", "prices"))] if MODE == "derived" else [],
    families=[RefresherFamily("rates", fetch_rate, every=EVERY, jitter=0)] if MODE == "family" else [],
    coordinator=coordinator_from_env(),
    lease_ttl=os.environ.get("LEASE_TTL", "3s"),
    admin_path="/_refresh",
    admin_loopback_only=True,
    shutdown_timeout="3s",
)
