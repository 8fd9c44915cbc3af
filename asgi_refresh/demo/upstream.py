"""A local upstream for the demo, the end-to-end tests and the benchmarks.

A tiny ASGI app (no framework) that serves documents the caller sets, with the
HTTP caching a real API has: an ``ETag`` per document, ``304 Not Modified`` for
a matching ``If-None-Match``, and counters of requests and body bytes sent. It
also issues short-lived tokens at ``POST /token`` and, like a real token server,
still accepts the previous token for a short grace period after issuing a new
one (a request sent just before a renewal lands just after it). Its ``down``
switch makes every document answer ``503`` (an outage). `serve` runs it under
uvicorn on 127.0.0.1 in a background thread.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import anyio

from asgi_refresh._types import Receive, Scope, Send


@dataclass(frozen=True)
class Document:
    """One served body with its validator."""

    body: bytes
    content_type: str
    etag: str
    content_encoding: str | None = None

    @classmethod
    def of(
        cls, value: Any, content_type: str = "application/json", content_encoding: str | None = None
    ) -> Document:
        """``value`` served: JSON-encoded unless it is bytes already, with its ETag."""
        body = value if isinstance(value, bytes) else json.dumps(value).encode()
        etag = '"' + hashlib.blake2b(body, digest_size=8).hexdigest() + '"'
        return cls(body, content_type, etag, content_encoding)


@dataclass(frozen=True)
class Keyed:
    """Documents computed per key: ``GET {prefix}{key}`` for a key that matches ``pattern``."""

    pattern: re.Pattern[str]
    value_of: Callable[[str], Any]


STREAM_PREFIX = "/stream"
"""``GET /stream{path}``: the document at ``path`` as a Server-Sent Events stream."""
# How often an open stream looks for a change. The world is changed from other threads
# (the demo's event loop, a test's) and the upstream may run under any event loop: a
# look every 20 ms is simpler than a wake-up across threads and libraries, and 20 ms is
# nothing next to a page that reads every 2 s.
_LOOK_EVERY = 0.02
_LINES = re.compile(rb"\r\n|\r|\n")


class Upstream:
    """An ASGI app serving documents with ETags; counts what it sends.

    Set ``down`` to true for an outage: every document and stream then answers
    ``503``, and the open streams end. The token endpoint keeps working (in real
    life, a separate service).

    ``GET /stream{path}`` streams the document at ``path`` as Server-Sent Events:
    a ``retry:`` field first, then the current body as an event (``id:`` a number
    that grows with each change, ``data:`` the body), then one event per change
    and a ``: keepalive`` comment after ``keepalive`` seconds without one. The
    stream carries a state, not a log: a client that reconnects with the
    ``Last-Event-ID`` of the current body gets nothing until the next change;
    with any other id (or none) it gets the current body at once, not the
    changes in between, which only the current body matters after.

    Args:
        token_lifetime: ``expires_in`` of the tokens ``POST /token`` issues, in seconds.
        token_grace: Seconds for which the previous token is still accepted after
            a new one is issued.
        clock: Monotonic seconds, for the grace period (tests pass their own).
        keepalive: Seconds of quiet after which a stream gets a comment (a
            client's heartbeat timeout, a proxy's idle timeout, are longer).
        retry: The reconnection delay the streams ask for, in milliseconds.
    """

    def __init__(
        self,
        *,
        token_lifetime: int = 60,
        token_grace: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        keepalive: float = 5.0,
        retry: int = 1000,
    ) -> None:
        self.documents: dict[str, Document] = {}
        self.keyed: dict[str, Keyed] = {}  # prefix -> documents computed per key (serve_keys)
        self.event_ids: dict[str, int] = {}  # path -> the id of its current body, as streamed
        self._changes = 0  # ids grow across all documents: a document removed and set again goes on
        self.keepalive = keepalive
        self.retry = retry
        self.streams_open = 0
        self.requests: Counter[str] = Counter()
        self.not_modified: Counter[str] = Counter()
        self.bytes_sent: Counter[str] = Counter()
        self.token_lifetime = token_lifetime
        self.token_grace = token_grace
        self.tokens: list[str] = []
        self.down = False
        self._clock = clock
        self._issued_at = -float("inf")  # when the newest token was issued
        self._lock = threading.Lock()

    def set(
        self,
        path: str,
        value: Any,
        *,
        content_type: str = "application/json",
        content_encoding: str | None = None,
    ) -> None:
        """Serve ``value`` at ``path``: JSON-encoded unless it is bytes already.

        With ``content_encoding``, bytes are sent as they are, labelled with it
        (compress them yourself).
        """
        document = Document.of(value, content_type, content_encoding)
        with self._lock:
            before = self.documents.get(path)
            self.documents[path] = document
            if before is None or before.body != document.body:
                self._changes += 1
                self.event_ids[path] = self._changes

    def serve_keys(self, prefix: str, value_of: Callable[[str], Any], *, pattern: str) -> None:
        """Serve ``GET {prefix}{key}``: ``value_of(key)`` as JSON, for keys that match ``pattern``.

        ``pattern`` must match the whole key (``[A-Z]{3}``): any other key answers
        ``404`` without ``value_of`` seeing it, and so does a key for which it
        returns None. The value is computed at each request (no document is
        kept per key), with an ETag (``304`` for a matching ``If-None-Match``)
        as the documents have.
        """
        with self._lock:
            self.keyed[prefix] = Keyed(re.compile(pattern), value_of)

    def _document(self, path: str) -> Document | None:
        """The document at ``path``: a set one, or one computed for a key."""
        document = self.documents.get(path)
        if document is not None:
            return document
        for prefix, keyed in list(self.keyed.items()):
            if path.startswith(prefix) and keyed.pattern.fullmatch(path.removeprefix(prefix)):
                value = keyed.value_of(path.removeprefix(prefix))
                return None if value is None else Document.of(value)
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request."""
        if scope["type"] != "http":
            return  # no lifespan: nothing to set up
        path, method = scope["path"], scope["method"]
        with self._lock:
            self.requests[path] += 1
        if path == "/token" and method == "POST":
            token = secrets.token_urlsafe(16)
            with self._lock:
                self.tokens.append(token)
                self._issued_at = self._clock()
            body = json.dumps({"access_token": token, "expires_in": self.token_lifetime}).encode()
            await _respond(send, 200, body, [(b"content-type", b"application/json")])
            return
        if self.down:
            await _respond(send, 503, b"the upstream is down", [(b"content-type", b"text/plain")])
            return
        if path.startswith(STREAM_PREFIX + "/") and method == "GET":
            await self._stream(path.removeprefix(STREAM_PREFIX), scope, receive, send)
            return
        if path == "/protected":
            authorization = dict(scope["headers"]).get(b"authorization", b"").decode()
            if authorization not in {f"Bearer {token}" for token in self._accepted_tokens()}:
                await _respond(send, 401, b"", [])
                return
        document = self._document(path)
        if document is None or method != "GET":
            await _respond(send, 404 if document is None else 405, b"", [])
            return
        headers = [(b"etag", document.etag.encode())]
        if dict(scope["headers"]).get(b"if-none-match", b"").decode() == document.etag:
            with self._lock:
                self.not_modified[path] += 1
            await _respond(send, 304, b"", headers)
            return
        with self._lock:
            self.bytes_sent[path] += len(document.body)
        headers.append((b"content-type", document.content_type.encode()))
        if document.content_encoding:
            headers.append((b"content-encoding", document.content_encoding.encode()))
        await _respond(send, 200, document.body, headers)

    async def _stream(self, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        """The document at ``path`` as an event stream, until the client leaves or the upstream goes down."""
        if path not in self.documents:
            await _respond(send, 404, b"", [])
            return
        last_id = dict(scope["headers"]).get(b"last-event-id", b"").decode("latin-1")
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),  # a buffering proxy in front would hold the events back
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        with self._lock:
            self.streams_open += 1
        try:
            async with anyio.create_task_group() as task_group:

                async def leave_with_the_client() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    task_group.cancel_scope.cancel()

                task_group.start_soon(leave_with_the_client)
                await self._send_events(path, last_id, send)
                task_group.cancel_scope.cancel()
        finally:
            with self._lock:
                self.streams_open -= 1

    async def _send_events(self, path: str, sent: str, send: Send) -> None:
        await _more(send, f"retry: {self.retry}\n\n".encode())
        quiet_since = time.monotonic()
        while not self.down:
            with self._lock:
                document, event_id = self.documents.get(path), str(self.event_ids.get(path))
            if document is None:
                break  # removed: the stream ends (the client's reconnect gets a 404)
            if event_id != sent:
                data = b"".join(b"data: " + line + b"\n" for line in _LINES.split(document.body))
                await _more(send, b"id: " + event_id.encode() + b"\n" + data + b"\n")
                sent, quiet_since = event_id, time.monotonic()
            elif time.monotonic() - quiet_since >= self.keepalive:
                await _more(send, b": keepalive\n\n")
                quiet_since = time.monotonic()
            await anyio.sleep(_LOOK_EVERY)
        await send({"type": "http.response.body", "body": b""})  # down: the stream ends

    def _accepted_tokens(self) -> list[str]:
        """The newest token, and the one before it during the grace period after a renewal."""
        with self._lock:
            in_grace = self._clock() - self._issued_at < self.token_grace
            return self.tokens[-2:] if in_grace else self.tokens[-1:]


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _more(send: Send, body: bytes) -> None:
    await send({"type": "http.response.body", "body": body, "more_body": True})


@contextmanager
def serve(app: Any, *, port: int = 0, lifespan: Literal["on", "off"] = "off") -> Iterator[str]:
    """Run ``app`` under uvicorn on 127.0.0.1 in a thread; yield its base URL.

    ``port=0`` picks a free port; ``lifespan="on"`` runs the app's lifespan (and
    fails if its startup fails). Needs uvicorn (the ``demo`` and ``test`` extras).
    """
    import uvicorn

    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Inherited by each accepted connection: without it, on a kept-alive connection
        # a response's body (written after its headers) waits ~40 ms for the client's
        # delayed ACK (Nagle), and a pushed change would seem 40 ms slower than it is.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", port))
    except OSError:  # the port is taken: no socket left open behind the error
        sock.close()
        raise
    config = uvicorn.Config(app, lifespan=lifespan, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the local server did not start")
            threading.Event().wait(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(5)
        sock.close()
