"""A blocking-query endpoint as Consul serves one, for the long-poll tests (run under uvicorn).

``GET /<key>?index=N&wait=W`` answers with the key's value and ``X-Consul-Index``
once the store's index passes ``N``, or when ``W`` (plus Consul's jitter, up to
``W / 16``) has passed; ``index`` 0 or absent answers at once. Every request is
recorded. The test thread changes the store while uvicorn's thread serves it.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

_WAIT = re.compile(r"(\d+)(ms|s|m)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0}


@dataclass
class Query:
    """One request as the server saw it."""

    path: str
    index: int
    wait: float | None
    params: dict[str, list[str]]
    headers: dict[str, str]
    started: float
    ended: float | None = None


@dataclass
class BlockingKV:
    """A KV store with one index for all keys, answering blocking queries.

    Attributes:
        index_header: What to send as the index instead of the real one (hostile tests).
        at_once: Answer every query at once, with the same index (a server that does not block).
        token: If set, a request without ``X-Consul-Token: <token>`` gets a 403.
    """

    index: int = 1
    values: dict[str, bytes] = field(default_factory=dict)
    queries: list[Query] = field(default_factory=list)
    index_header: str | None = None
    at_once: bool = False
    token: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, path: str, value: Any) -> None:
        """Store ``value`` (as JSON) at ``path`` under the next index."""
        with self.lock:
            self.values[path] = json.dumps(value).encode()
            self.index += 1

    def restore(self, path: str, value: Any, index: int) -> None:
        """Store ``value`` under an older ``index`` (a snapshot restored: the index goes backwards)."""
        with self.lock:
            self.values[path] = json.dumps(value).encode()
            self.index = index

    def waiting(self) -> int:
        """How many queries are held now."""
        with self.lock:
            return sum(1 for query in self.queries if query.ended is None and query.index > 0)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        params = parse_qs(scope["query_string"].decode(), keep_blank_values=True)
        headers = {key.decode().lower(): value.decode() for key, value in scope["headers"]}
        index_text = params.get("index", ["0"])[0]
        match = _WAIT.fullmatch(params.get("wait", [""])[0])
        wait = int(match[1]) * _UNITS[match[2]] if match else None
        query = Query(
            scope["path"],
            int(index_text) if index_text.isdigit() else -1,
            wait,
            params,
            headers,
            time.monotonic(),
        )
        with self.lock:
            self.queries.append(query)
        if self.token is not None and headers.get("x-consul-token") != self.token:
            await self._answer(send, query, 403, b"ACL not found", str(self.index))
            return
        hold = (wait if wait is not None else 300.0) * (1 + random.random() / 16)
        deadline = query.started + hold
        # Consul's rule: held while the store's index is not past the one asked for.
        while (  # noqa: ASYNC110 - the test's thread changes the store: no event of this loop's to set
            not self.at_once and query.index > 0 and self.index <= query.index and time.monotonic() < deadline
        ):
            await asyncio.sleep(0.001)
        with self.lock:
            body, index = self.values.get(scope["path"]), self.index
        if body is None:
            await self._answer(send, query, 404, b"", str(index))
            return
        await self._answer(
            send, query, 200, body, str(index) if self.index_header is None else self.index_header
        )

    async def _answer(self, send: Any, query: Query, status: int, body: bytes, index: str) -> None:
        headers = [(b"content-type", b"application/json"), (b"x-consul-index", index.encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        query.ended = time.monotonic()
