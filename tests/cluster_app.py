"""The app that the cluster tests and benchmark start, one uvicorn process (or worker) each.

One refresher, ``data``, polls ``UPSTREAM_URL`` with an `HTTPSource` every
``EVERY`` and is coordinated through the backend that the environment names.
``GET /value`` answers ``{"pid": ..., "value": ..., "coordination": ...}``: which
process served the request, what it publishes, and its role (with ``uvicorn
--workers``, the only way to tell which worker said what). The admin endpoints are at ``/_refresh``
(loopback only): ``GET /_refresh`` shows each process's role and version under
``coordination``, ``POST /_refresh/data?wait=true`` is refresh-now.

Environment:
    UPSTREAM_URL: The document to poll (required).
    BACKEND: ``redis``, ``sqlite``, ``postgres``, ``nats`` or ``none`` (no
        coordinator: every process fetches for itself).
    REDIS_URL: The Redis server, for ``BACKEND=redis``.
    NATS_URL: The NATS server (JetStream enabled), for ``BACKEND=nats``.
    DB_PATH: The SQLite file, for ``BACKEND=sqlite``.
    POSTGRES_DSN: The PostgreSQL database, for ``BACKEND=postgres``.
    PREFIX: The coordinator's namespace (default ``cluster``).
    EVERY: The refresher's interval (default ``1s``).
    LEASE_TTL: The lease's ttl (default ``3s``).
    COORDINATOR_TIMEOUT: Seconds any one backend operation may take (default 1).
    POLL_INTERVAL: Seconds between an SQLite subscriber's checks (default 0.2),
        or a PostgreSQL one's checks of the change counter (default 1).
    GUARD: A change guard for ``data``: ``max_shrink:0.5`` (default: none).
    KEEP_VERSIONS: How many published versions ``data`` keeps, to pin and roll
        back through ``POST /_refresh/data/pin?version=V``, ``.../rollback`` and
        ``.../unpin`` (default 0).
    WEBHOOK_SECRET: If set, ``POST /_refresh/hooks/deploy`` is a GitHub-signed
        webhook with this secret that refreshes ``data``.
    LOG_LEVEL: If set (``INFO``, ``WARNING``...), the package's log lines go to
        stderr at that level as ``<pid> <LEVEL> <message>``, so that what each
        worker said can be counted (the benchmarks do).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from asgi_refresh import (
    HTTPSource,
    NATSCoordinator,
    PostgresCoordinator,
    RedisCoordinator,
    Refresher,
    RefreshMiddleware,
    SQLiteCoordinator,
    Webhook,
    max_shrink,
)
from asgi_refresh._cluster.base import Coordinator
from asgi_refresh._types import Receive, Scope, Send


def coordinator_from_env(env: Mapping[str, str] = os.environ) -> Coordinator | None:
    """The coordinator that ``BACKEND`` (and its options) name, or None for ``none``."""
    backend = env.get("BACKEND", "none")
    prefix = env.get("PREFIX", "cluster")
    timeout = float(env.get("COORDINATOR_TIMEOUT", "1"))
    if backend == "redis":
        return RedisCoordinator(env["REDIS_URL"], prefix=prefix, timeout=timeout)
    if backend == "sqlite":
        poll_interval = float(env.get("POLL_INTERVAL", "0.2"))
        return SQLiteCoordinator(env["DB_PATH"], prefix=prefix, poll_interval=poll_interval, timeout=timeout)
    if backend == "postgres":
        poll_interval = float(env.get("POLL_INTERVAL", "1"))
        return PostgresCoordinator(
            env["POSTGRES_DSN"], prefix=prefix, poll_interval=poll_interval, timeout=timeout
        )
    if backend == "nats":
        return NATSCoordinator(env["NATS_URL"], prefix=prefix, timeout=timeout)
    if backend == "none":
        return None
    raise ValueError(f"BACKEND must be redis, sqlite, postgres, nats or none (got {backend!r})")


def guard_from_env(env: Mapping[str, str] = os.environ) -> max_shrink | None:
    """The guard that ``GUARD`` names, or None when it is not set."""
    kind, _, argument = env.get("GUARD", "").partition(":")
    if kind == "max_shrink":
        return max_shrink(float(argument))
    if kind:
        raise ValueError(f"GUARD must be max_shrink:FRACTION (got {kind!r})")
    return None


async def inner(scope: Scope, receive: Receive, send: Send) -> None:
    """``GET /value``: this process's id, the value it publishes and its role; 404 otherwise."""
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
    found = scope["path"] == "/value"
    body = b""
    if found:
        handle = state["asgi_refresh"]
        coordination = handle.status()["data"].get("coordination")
        body = json.dumps(
            {"pid": os.getpid(), "value": state.get("data"), "coordination": coordination}
        ).encode()
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200 if found else 404, "headers": headers})
    await send({"type": "http.response.body", "body": body})


if os.environ.get("LOG_LEVEL"):
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(process)d %(levelname)s %(message)s"))
    package = logging.getLogger("asgi_refresh")
    package.addHandler(handler)
    package.setLevel(os.environ["LOG_LEVEL"])
    package.propagate = False

app = RefreshMiddleware(
    inner,
    refreshers=[
        Refresher(
            "data",
            HTTPSource(os.environ.get("UPSTREAM_URL", "http://127.0.0.1:9/unset"), timeout=5),
            every=os.environ.get("EVERY", "1s"),
            jitter=0,
            timeout="5s",
            guard=guard_from_env(),
            keep_versions=int(os.environ.get("KEEP_VERSIONS", "0")),
        )
    ],
    coordinator=coordinator_from_env(),
    lease_ttl=os.environ.get("LEASE_TTL", "3s"),
    admin_path="/_refresh",
    admin_loopback_only=True,
    admin_webhooks=(
        {"deploy": Webhook(["data"], github_secret=os.environ["WEBHOOK_SECRET"])}
        if os.environ.get("WEBHOOK_SECRET")
        else None
    ),
    shutdown_timeout="3s",
)
