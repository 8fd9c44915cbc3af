"""A Server-Sent Events upstream that a test drives from its own thread: emit, drop, go silent.

Served by uvicorn in a thread (``asgi_refresh.demo.upstream.serve``), so its event loop
is not the test's: the test calls `SSEUpstream.emit` and friends from its own thread,
and they wake the streams with ``call_soon_threadsafe``.

- ``GET /stream``: the event stream. Without ``Last-Event-ID`` it starts from the first
  event (with ``replay`` off, from the next one), with one it replays what came after
  that event, then sends each new one as it is emitted; ``: ping`` comments every
  ``keepalive`` seconds unless ``silent``.
- ``GET /doc``: the current value as a JSON document (what polling fetches); with a
  ``doc_gate``, answered only once the test sets it (with what it read on arrival).
- ``GET /elsewhere``: a redirect of the stream to another origin.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from typing import Any

Scope = dict[str, Any]


class SSEUpstream:
    """The upstream's state, shared between the test's thread and uvicorn's."""

    def __init__(self, *, keepalive: float | None = 0.5) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[int, bytes]] = []  # (id, the event as sent)
        self.emitted_at: dict[int, float] = {}  # id -> time.perf_counter() when emitted
        self.document: Any = None
        self.keepalive = keepalive
        self.silent = False  # no keepalives, no events: a stream that hangs
        self.refuse = False  # new streams get a 503 (the stream is down)
        self.end_at_once = False  # new streams end right after their headers
        self.doc_delay = 0.0  # seconds /doc takes to answer, with what it read on arrival
        # Set: /doc answers (with what it read on arrival) only once the test sets it.
        self.doc_gate: threading.Event | None = None
        self.generation = 0  # drop(): the streams of an older generation end
        self.connections = 0
        self.last_event_ids: list[str | None] = []  # what each connection sent
        self.doc_requests = 0
        self.doc_requests_at_connect: list[int] = []  # doc_requests as each stream was accepted
        self.pings = 0  # keepalive comments sent
        self.stream_requests = 0
        self.retry_ms: int | None = None  # a retry: field sent first on each connection
        self.replay = True  # a connection without Last-Event-ID starts from the first event
        self._wakers: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self.base_url = ""  # set by the fixture: for the cross-origin redirect

    # -- what the test does -----------------------------------------------------------------

    def emit(self, data: object, *, event: str | None = None) -> int:
        """Send ``data`` (as JSON) to every open stream as a new event; returns its id."""
        text = json.dumps(data)
        with self.lock:
            self.document = data
        lines = [f"data: {line}" for line in text.split("\n")]
        return self.emit_raw(
            ("".join(f"event: {event}\n" if event else "") + "\n".join(lines) + "\n\n").encode(),
            numbered=True,
        )

    def emit_raw(self, raw: bytes, *, numbered: bool = False) -> int:
        """Send ``raw`` bytes as they are (hostile input); with ``numbered``, prefixed by an ``id:``."""
        with self.lock:
            event_id = len(self.events) + 1
            payload = (f"id: {event_id}\n".encode() + raw) if numbered else raw
            self.events.append((event_id, payload))
            self.emitted_at[event_id] = time.perf_counter()
        self._wake()
        return event_id

    def drop(self) -> None:
        """End every open stream (the client must reconnect)."""
        with self.lock:
            self.generation += 1
        self._wake()

    def _wake(self) -> None:
        with self.lock:
            wakers = list(self._wakers)
        for loop, event in wakers:
            with contextlib.suppress(RuntimeError):  # that loop is closed: its stream is gone
                loop.call_soon_threadsafe(event.set)

    # -- the ASGI app -----------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/doc":
            with self.lock:
                self.doc_requests += 1
                body = json.dumps(self.document).encode()
            if self.doc_delay:
                await asyncio.sleep(self.doc_delay)
            gate = self.doc_gate
            if gate is not None:
                deadline = time.perf_counter() + 10  # never set (a failed test): answer anyway
                while not gate.is_set() and time.perf_counter() < deadline:  # noqa: ASYNC110 - set by the test's thread
                    await asyncio.sleep(0.001)
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        if path == "/elsewhere":
            other = self.base_url.replace("127.0.0.1", "localhost") + "/stream"
            await send(
                {"type": "http.response.start", "status": 307, "headers": [(b"location", other.encode())]}
            )
            await send({"type": "http.response.body", "body": b""})
            return
        if path == "/stream":
            await self._stream(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def _stream(self, scope: Scope, receive: Any, send: Any) -> None:
        headers = dict(scope["headers"])
        last_id = headers.get(b"last-event-id")
        with self.lock:
            self.stream_requests += 1
            refuse = self.refuse
        if refuse:
            await send({"type": "http.response.start", "status": 503, "headers": []})
            await send({"type": "http.response.body", "body": b"down"})
            return
        with self.lock:
            self.connections += 1
            self.doc_requests_at_connect.append(self.doc_requests)
            self.last_event_ids.append(None if last_id is None else last_id.decode())
            generation = self.generation
            position = 0 if self.replay else len(self.events)  # without replay: new events only
            if last_id is not None:
                position = next(
                    (
                        index + 1
                        for index, (each, _) in enumerate(self.events)
                        if str(each) == last_id.decode()
                    ),
                    0,
                )
        loop = asyncio.get_running_loop()
        woken = asyncio.Event()
        waker = (loop, woken)
        gone = asyncio.Event()

        async def watch_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()
            woken.set()

        watcher = asyncio.ensure_future(watch_disconnect())
        with self.lock:
            self._wakers.add(waker)
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-store")],
                }
            )
            if self.retry_ms is not None:
                await send(
                    {
                        "type": "http.response.body",
                        "body": f"retry: {self.retry_ms}\n\n".encode(),
                        "more_body": True,
                    }
                )
            while not gone.is_set() and not self.end_at_once:
                # Cleared before reading what is pending: an emit from now on (even one
                # during the send below) leaves it set, and the wait returns at once.
                woken.clear()
                with self.lock:
                    pending = self.events[position:]
                    position = len(self.events)
                    dropped = self.generation != generation
                    silent = self.silent
                if dropped:
                    break
                if pending and not silent:
                    await send(
                        {
                            "type": "http.response.body",
                            "body": b"".join(raw for _, raw in pending),
                            "more_body": True,
                        }
                    )
                elif pending:
                    position -= len(pending)  # held back while silent
                try:
                    await asyncio.wait_for(woken.wait(), self.keepalive if self.keepalive else None)
                except TimeoutError:
                    if not self.silent:
                        await send({"type": "http.response.body", "body": b": ping\n\n", "more_body": True})
                        with self.lock:
                            self.pings += 1
            if not gone.is_set():
                await send({"type": "http.response.body", "body": b""})
        finally:
            with self.lock:
                self._wakers.discard(waker)
            watcher.cancel()
