"""`SSESource`: a value pushed over Server-Sent Events, with polling as the safety net.

A task of the lifespan holds the stream open (``context.start_soon``); each event
is parsed as `HTTPSource` parses a body, buffered, and the runtime is told to
fetch now (``context.refresh_soon``): the next `fetch` returns the buffered value
without touching the network. While the stream is down, `fetch` polls the
companion document instead, on the refresher's ``every``: nothing is lost, only
slower. The wire format is read by ``httpx-sse`` (the ``sse`` extra), over a byte
stream that this module bounds first: a hostile server cannot make an event (or
a line) grow past ``max_bytes`` in memory.
"""

from __future__ import annotations

import logging
import math
import random
import re
import secrets
from collections.abc import AsyncIterator, Collection, Mapping
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, Literal

import anyio
import httpx

from asgi_refresh._duration import Duration, format_duration, positive_duration
from asgi_refresh._option_error import OptionError, OptionTypeError, OptionValueError
from asgi_refresh._sources.base import Source, Standalone
from asgi_refresh._sources.context import SourceContext
from asgi_refresh._sources.http import HTTPSource
from asgi_refresh._sources.outcome import Fetched, SourceError
from asgi_refresh._sources.parsing import Format, Validate, blake2b, max_bytes_option, too_big
from asgi_refresh._text import printable

if TYPE_CHECKING:
    from asgi_refresh._status import StreamStatus

logger = logging.getLogger("asgi_refresh")

DEFAULT_EVENT_MAX_BYTES = 1024 * 1024
"""The largest event data an `SSESource` takes unless told otherwise."""
# Field names, an id, an event type around the data: what an event may carry past max_bytes
# before the byte guard gives up on it (the data itself is checked exactly once decoded).
_FIELD_SLACK = 4096
_MIN_RECONNECT = 0.1  # a `retry: 0` with a server that closes at once must not make a hot loop
_HEALTHY = 10.0  # seconds up after which an ended stream is not a failure to back off from
_MAX_EVENT_ID = 1024  # a Last-Event-ID we send back: bounded, and ASCII so that httpx can send it
_LOG_EVERY = 60.0  # seconds between WARNINGs about refused events (all are counted)
# A first fetch waiting for the stream gives up at this fraction of the refresher's
# timeout, with the reason; the timeout itself would end it with none.
_SAY_WHY = 0.9
_ASCII_ID = re.compile(r"^[\x20-\x7e]*$")


class SSESource(Standalone, Source):
    """A value pushed by a Server-Sent Events stream; use it as the ``fetch`` of a `Refresher`.

    ```python
    Refresher("flags", SSESource("https://flags.example.com/stream",
                                 fetch_url="https://flags.example.com/flags"), every="5m")
    ```

    A task holds the stream open for the lifespan. With ``on_event="value"`` (the
    default) each event's data is the new value, parsed as `HTTPSource` parses a
    body (JSON unless ``parse`` says otherwise) and published within milliseconds;
    with ``on_event="refetch"`` an event only says "changed", and the document at
    ``fetch_url`` is fetched at once. While connected, the refresher's scheduled
    fetches cost nothing (no request: the stream would have said).

    The stream is reconnected with ``Last-Event-ID`` when it ends, fails, or is
    silent longer than ``heartbeat_timeout`` (comments count: servers send them as
    keepalives); the server's ``retry:`` field sets the delay, repeated failures
    back off with jitter up to ``max_reconnect_delay``. While it is down the
    refresher's ``every`` schedule fetches ``fetch_url`` (conditionally, as
    `HTTPSource` does), or fails without one; after a reconnect ``fetch_url`` is
    fetched once, for what the stream may have missed. ``status()`` shows the
    connection under ``"stream"``.

    An event whose data is bigger than ``max_bytes``, does not parse or does not
    validate is refused: counted, logged (a WARNING at most once a minute) and
    skipped; the stream goes on and the last good value stays published. The
    stream is read without content codings (``Accept-Encoding: identity``).
    Headers, query and credentials are handled as by `HTTPSource`: never logged
    nor shown, and redirects are followed within the origin only.

    Args:
        url: Absolute ``http://`` or ``https://`` URL of the event stream.
        on_event: ``"value"``: an event's data is the value; ``"refetch"``: an
            event triggers a fetch of ``fetch_url`` (required then).
        fetch_url: The same value as a document (a URL, fetched with this
            source's ``headers``, ``params``, ``auth``, ``parse`` and ``validate``,
            or your own `HTTPSource`): the first value, the polling safety net while
            the stream is down, the catch-up after a reconnect.
        events: Only events of these types count (``"message"`` is the type of
            an event without ``event:``); None for all.
        heartbeat_timeout: A stream silent this long (no event, no comment) is
            taken for dead and reconnected.
        max_bytes: Largest data of one event, in bytes.
        reconnect_delay: The delay before a reconnect when the server sets none.
        max_reconnect_delay: The longest delay between reconnects (backoff, and a
            server's ``retry:``).
        headers: Request headers (the stream's and ``fetch_url``'s).
        params: Query parameters.
        auth: Any httpx authentication, or a `BearerToken`.
        timeout: httpx timeout to connect (and for ``fetch_url``); the stream's
            reads are bounded by ``heartbeat_timeout`` instead.
        client: Your own ``httpx.AsyncClient``.
        parse: How an event's data (and the ``fetch_url`` document) becomes a value,
            as for `HTTPSource`.
        validate: Called with the parsed value, as for `HTTPSource`.

    Raises:
        ImportError: ``httpx-sse`` is not installed (``pip install 'asgi-refresh[sse]'``).
        TypeError: an argument has the wrong type.
        ValueError: an argument is out of range.
    """

    kind = "sse"

    def __init__(
        self,
        url: str | httpx.URL,
        *,
        on_event: Literal["value", "refetch"] = "value",
        fetch_url: str | httpx.URL | HTTPSource | None = None,
        events: str | Collection[str] | None = None,
        heartbeat_timeout: Duration = 60.0,
        max_bytes: int = DEFAULT_EVENT_MAX_BYTES,
        reconnect_delay: Duration = 1.0,
        max_reconnect_delay: Duration = 60.0,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        auth: httpx.Auth | tuple[str, str] | Any = None,
        timeout: Duration | None = None,
        client: httpx.AsyncClient | None = None,
        parse: Format = "json",
        validate: Validate | None = None,
    ) -> None:
        try:
            import httpx_sse  # noqa: F401
        except ImportError:
            raise ImportError(
                "SSESource needs httpx-sse: pip install 'asgi-refresh[sse]'", name="httpx_sse"
            ) from None
        max_bytes = max_bytes_option("SSESource", max_bytes)
        common: dict[str, Any] = {
            "headers": headers,
            "params": params,
            "auth": auth,
            "timeout": timeout,
            "client": client,
            "parse": parse,
            "validate": validate,
        }
        # The stream's URL, headers, credentials, redirects and parser: HTTPSource's, reused.
        self._stream = HTTPSource(url, max_bytes=max_bytes, **common)
        self.safe_url = self._stream.safe_url
        owner = f"SSESource({self.safe_url!r})"
        if on_event not in ("value", "refetch"):
            raise OptionValueError(
                owner, "on_event", f"on_event must be 'value' or 'refetch' (got {on_event!r})"
            )
        self.on_event = on_event
        if fetch_url is None or isinstance(fetch_url, HTTPSource):
            self._document = fetch_url
        elif isinstance(fetch_url, str | httpx.URL):
            try:
                self._document = HTTPSource(fetch_url, **common)
            except OptionError as exc:
                if exc.option != "url":
                    raise
                # Its own URL is this source's fetch_url: blamed as "url", it would send the
                # reader (and the config's problem line) to the stream's URL.
                raise type(exc)(owner, "fetch_url", f"fetch_url{exc.text.removeprefix('url')}") from None
        else:
            raise OptionTypeError(
                owner,
                "fetch_url",
                f"fetch_url must be a URL or an HTTPSource (got {type(fetch_url).__name__})",
            )
        if on_event == "refetch" and self._document is None:
            raise OptionValueError(
                owner, "fetch_url", "on_event='refetch' needs fetch_url: the document an event says changed"
            )
        if isinstance(events, str):
            events = (events,)
        if events is not None and not all(isinstance(each, str) for each in events):
            raise OptionTypeError(owner, "events", f"events must be event type names (got {events!r})")
        self.events = None if events is None else frozenset(events)
        self.heartbeat_timeout = positive_duration(owner, "heartbeat_timeout", heartbeat_timeout)
        self.reconnect_delay = positive_duration(owner, "reconnect_delay", reconnect_delay)
        self.max_reconnect_delay = positive_duration(owner, "max_reconnect_delay", max_reconnect_delay)
        if self.reconnect_delay > self.max_reconnect_delay:
            raise OptionValueError(
                owner,
                "reconnect_delay",
                f"reconnect_delay ({format_duration(self.reconnect_delay)}) must not exceed "
                f"max_reconnect_delay ({format_duration(self.max_reconnect_delay)})",
            )
        self.max_bytes = max_bytes
        self._connect_timeout = httpx.Timeout(
            None, connect=positive_duration(owner, "timeout", timeout) if timeout is not None else 10.0
        )
        self.where = f"SSE {self.safe_url}"
        self._context: SourceContext | None = None
        self._reset()

    def _reset(self) -> None:
        """Per-lifespan state, cleared at open."""
        self._task_scope: anyio.CancelScope | None = None
        self._connected = False
        self._changed = (
            anyio.Event()
        )  # set on a new value or a lost stream: a waiting first fetch looks again
        self._pending: tuple[Any] | None = None  # a value from the stream, not fetched yet
        self._last: Any = None
        self._last_digest: bytes | None = None
        self._loaded = False
        self._opened_at: float | None = None  # when open began, until the first fetch
        self._resync = True  # fetch_url is fetched once after each (re)connect
        self._dirty = False  # on_event="refetch": an event came since the last fetch
        self._last_event_id: str | None = None
        self._server_retry: float | None = None
        self._activity = 0.0
        self._connected_since: float | None = None
        self._last_event_at: float | None = None
        self._reconnects = 0
        self._last_error: str | None = None
        self._received = 0
        self._refused = 0
        self._logged_at: float | None = None

    def __repr__(self) -> str:
        return f"SSESource({self.safe_url!r})"

    @property
    def origin(self) -> str:
        """``sse`` and the stream's URL without credentials or query."""
        return f"sse {self.safe_url}"

    @property
    def fetch_url(self) -> str | None:
        """``fetch_url`` without credentials or query; None without one. ``asgi-refresh check`` shows it."""
        return None if self._document is None else self._document.safe_url

    async def open(self, context: SourceContext) -> None:
        """Open the stream's client (and ``fetch_url``'s), then start the stream task."""
        opening = context.clock.monotonic()
        self._context = SourceContext.claim(self, self._context, context)
        try:
            await self._stream.open(context)
            if self._document is not None:
                try:
                    await self._document.open(context)
                except BaseException:
                    await self._stream.close()
                    raise
        except BaseException:
            self._context = None
            raise
        self._reset()
        self._opened_at = opening  # the first fetch's time began with the opening
        if not context.start_soon(self._run):
            logger.info("%r: streaming needs a running middleware; fetch_url only", self)

    async def close(self) -> None:
        """Stop the stream and give the clients back."""
        if self._context is None:
            return
        self._context = None
        if self._task_scope is not None:
            self._task_scope.cancel()
        self._connected = False
        try:
            await self._stream.close()
        finally:
            if self._document is not None:
                await self._document.close()

    async def fetch(self) -> Fetched:
        """The value the stream sent last, at once; or ``fetch_url``'s while the stream is down.

        Raises:
            SourceError: the stream is down and there is no ``fetch_url`` (or it failed).
            RuntimeError: the source is not open.
        """
        context = SourceContext.required(self, self._context)
        began = context.clock.monotonic() if self._opened_at is None else self._opened_at
        self._opened_at = None
        give_up = math.inf if context.timeout is None else began + context.timeout * _SAY_WHY
        while True:
            if self._pending is not None:
                (value,), self._pending = self._pending, None
                if self._document is not None and (self._resync or self._dirty):
                    context.refresh_soon()  # the catch-up this fetch was asked for is still due
                return Fetched(value)
            if self._document is not None and (
                not self._connected or self._resync or self._dirty or not self._loaded
            ):
                return await self._fetch_document()
            if self._connected and self._loaded:
                return Fetched(self._last, not_modified=True)  # the stream would have said
            if context.standalone:
                raise SourceError(
                    f"{self.where}: streaming needs a running middleware, and there is no fetch_url"
                )
            if not self._connected and self._last_error is not None:
                raise SourceError(
                    f"{self.where}: the stream is down ({self._last_error}) and there is no fetch_url"
                )
            # Connecting, or connected without a first event: wait for either to change,
            # and say why before the refresher's timeout ends the fetch without a reason.
            with context.clock.move_on_at(give_up) as waiting:
                await self._changed.wait()
            if waiting.cancelled_caught:
                said = "sent no event" if self._connected else "did not connect"
                raise SourceError(
                    f"{self.where}: the stream {said} within {format_duration(give_up - began)}, and "
                    "there is no fetch_url: the first value is the stream's first event. Set fetch_url "
                    "to a document with the same value, or a longer timeout if events are rare"
                )

    async def _fetch_document(self) -> Fetched:
        assert self._document is not None
        resync, dirty = self._resync, self._dirty
        # Cleared before the request: an event during it asks for another (refresh_again).
        self._resync = self._dirty = False
        try:
            fetched = await self._document.fetch()
        except BaseException:
            self._resync, self._dirty = self._resync or resync, self._dirty or dirty
            raise
        self._last, self._loaded = fetched.value, True
        self._last_digest = None  # the next event is a change, whatever it holds
        if self._pending is not None:
            # An event came while the document was on its way: the stream's value is
            # the newer one; publishing the document's would go back in time.
            (value,), self._pending = self._pending, None
            self._last = value
            return Fetched(value)
        return fetched

    def check(self, value: Any) -> Any:
        """``value`` as ``validate`` returns it; `SourceError` if this source could not produce it."""
        return self._stream.check(value)

    def take_over(self, value: Any, handover: Mapping[str, str]) -> None:
        """Continue from ``value`` (fetched elsewhere): what a quiet stream confirms."""
        if self._context is not None:
            self._last, self._loaded, self._last_digest = value, True, None
            if self._document is not None:
                self._document.take_over(value, handover)

    def handover(self) -> Mapping[str, str] | None:
        """``fetch_url``'s validators, if there is one (the stream has nothing to hand over)."""
        return None if self._document is None else self._document.handover()

    def state(self) -> StreamStatus:
        """The stream's connection, for ``status()["<name>"]["stream"]``."""
        return {
            "connected": self._connected,
            "connected_since": iso(self._connected_since) if self._connected else None,
            "last_event_at": iso(self._last_event_at),
            "reconnects": self._reconnects,
            "events": self._received,
            "refused_events": self._refused,
            "last_error": self._last_error,
        }

    # -- the stream task ----------------------------------------------------------------

    async def _run(self) -> None:
        context = self._context
        if context is None:  # closed before the task started
            return
        # The task runs in the lifespan's task group: whatever escapes it would end the
        # lifespan. A bug here costs the stream, never the app: fetch_url polls on.
        try:
            await self._stream_forever(context)
        except Exception as exc:
            self._connected, self._last_error = False, f"the stream task failed: {type(exc).__name__}"
            self._wake()
            logger.error(
                "Refresher %r: the stream task failed; %s",
                context.name,
                "fetch_url is polled on every" if self._document is not None else "no fetch_url to poll",
                exc_info=exc,
                extra={"refresher": context.name, "outcome": "stream_failed"},
            )

    async def _stream_forever(self, context: SourceContext) -> None:
        failures = 0
        with anyio.CancelScope() as scope:
            self._task_scope = scope
            while self._context is context:
                received, began = self._received, context.clock.monotonic()
                try:
                    await self._connect_once(context)
                    error = f"{self.where}: the server ended the stream"
                except SourceError as exc:
                    error = str(exc)
                except Exception as exc:  # anything a hostile stream can provoke: contained
                    error = f"{type(exc).__name__}: {self._stream._scrub(str(exc))}"
                was_connected = self._connected
                self._connected, self._last_error = False, error
                self._reconnects += 1
                self._wake()
                # A stream that delivered an event, or stayed up a while (a proxy that ends
                # idle connections), was healthy: back to the first delay. One that ends at
                # once, again and again, backs off.
                healthy = self._received > received or (
                    was_connected and context.clock.monotonic() - began >= _HEALTHY
                )
                failures = 0 if healthy else failures + 1
                delay = self._delay(failures)
                logger.log(
                    logging.WARNING if failures > 1 or not was_connected else logging.INFO,
                    "Refresher %r: %s; reconnecting in %.2gs%s",
                    context.name,
                    error,
                    delay,
                    "" if self._document is not None else " (no fetch_url to poll meanwhile)",
                    extra={"refresher": context.name, "outcome": "stream_lost"},
                )
                if was_connected and self._document is not None:
                    context.refresh_soon()  # poll now: the stream may have missed something
                await context.clock.sleep_until(context.clock.monotonic() + delay)

    def _delay(self, failures: int) -> float:
        base = self._server_retry if self._server_retry is not None else self.reconnect_delay
        base = min(max(base, _MIN_RECONNECT), self.max_reconnect_delay)
        if failures <= 1:
            return base
        backoff = min(self.max_reconnect_delay, base * 2 ** min(failures - 1, 30))
        return random.uniform(backoff / 2, backoff)  # jitter: many workers must not reconnect in step

    async def _connect_once(self, context: SourceContext) -> None:
        headers = {
            **self._stream._request["headers"],
            "Accept": "text/event-stream",
            "Cache-Control": "no-store",
            # Content codings are not undone here: a stream has no end to bound them by.
            "Accept-Encoding": "identity",
        }
        if self._last_event_id:
            headers["Last-Event-ID"] = self._last_event_id
        client = self._stream._open_client
        assert client is not None
        self._activity = context.clock.monotonic()
        silent = False
        async with anyio.create_task_group() as task_group:

            async def watchdog() -> None:
                nonlocal silent
                while True:
                    deadline = self._activity + self.heartbeat_timeout
                    if context.clock.monotonic() >= deadline:
                        silent = True
                        task_group.cancel_scope.cancel()
                        return
                    await context.clock.sleep_until(deadline)

            task_group.start_soon(watchdog)
            # Caught in here: raised through the task group it would come out as a group.
            try:
                await self._stream_events(context, client, headers)
            except SourceError as exc:
                failure: str | None = str(exc)
            except httpx.TimeoutException as exc:
                failure = f"{self.where}: timed out ({type(exc).__name__})"
            except httpx.HTTPError as exc:
                failure = f"{self.where}: {type(exc).__name__}: {self._stream._scrub(str(exc))}"
            except Exception as exc:  # anything a hostile stream can provoke: contained
                failure = f"{self.where}: {type(exc).__name__}: {self._stream._scrub(str(exc))}"
            else:
                failure = None
            task_group.cancel_scope.cancel()
        if silent:
            raise SourceError(
                f"{self.where}: silent for {format_duration(self.heartbeat_timeout)} "
                "(heartbeat_timeout: no event and no comment), taken for dead"
            )
        if failure is not None:
            raise SourceError(failure)

    async def _stream_events(
        self, context: SourceContext, client: httpx.AsyncClient, headers: dict[str, str]
    ) -> None:
        from httpx_sse import EventSource

        async with AsyncExitStack() as responses:
            response = await self._stream._send(
                client, headers, responses, read_timeout=self._connect_timeout
            )
            if not response.is_success:
                raise self._stream._status_error(response)
            content_type = response.headers.get("Content-Type", "").partition(";")[0].strip().lower()
            if content_type != "text/event-stream":
                raise SourceError(
                    f"{self.where}: not an event stream (Content-Type {printable(content_type, 100)!r})"
                )
            coding = response.headers.get("Content-Encoding", "identity").strip().lower()
            if coding not in ("", "identity"):
                raise SourceError(
                    f"{self.where}: the stream is encoded ({printable(coding, 50)}); asked for none"
                )
            self._connected, self._resync = True, True
            self._connected_since = context.clock.wall()
            self._activity = context.clock.monotonic()
            self._wake()
            if self._document is not None:
                context.refresh_soon()  # catch up with what the stream did not replay
            guard = _EventGuard(response, self.max_bytes + _FIELD_SLACK, self._touch)
            bounded = httpx.Response(
                response.status_code,
                headers={"Content-Type": "text/event-stream; charset=utf-8"},
                stream=guard,
            )
            async for event in EventSource(bounded).aiter_sse():
                if event.id == "":
                    self._last_event_id = None  # an empty id: reset, as the spec says
                elif _ASCII_ID.match(event.id) and len(event.id) <= _MAX_EVENT_ID:
                    self._last_event_id = event.id
                if event.retry is not None and event.retry >= 0:
                    self._server_retry = min(event.retry / 1000, self.max_reconnect_delay)
                if event.event == guard.marker:
                    self._refuse(context, too_big(self.where, self.max_bytes, "over the limit", "an event"))
                    continue
                kind = event.event or "message"
                if self.events is not None and kind not in self.events:
                    continue
                if not event.data and (self.on_event == "value" or kind == "message"):
                    # Only an id, a retry or an event type (a ping): no value in it. With
                    # on_event="refetch", a named event without data is a change signal;
                    # one of the default type is not: once an id was sent, httpx-sse ends
                    # one at every blank line (after each `: ping` comment), an id alone.
                    continue
                await self._receive(context, event.data)

    def _touch(self) -> None:
        assert self._context is not None
        self._activity = self._context.clock.monotonic()

    async def _receive(self, context: SourceContext, data: str) -> None:
        body = data.encode()
        if len(body) > self.max_bytes:
            self._refuse(
                context, too_big(self.where, self.max_bytes, f"{len(body)} bytes", "an event's data")
            )
            return
        self._last_event_at = context.clock.wall()
        if self.on_event == "refetch":
            self._received += 1
            self._dirty = True
            context.refresh_soon()
            return
        body_digest = blake2b(body)
        if self._loaded and body_digest == self._last_digest:
            self._received += 1
            return  # the same data again: nothing to publish
        try:
            value = await self._stream._parser(context, body, f"{self.where} (an event)", "utf-8")
        except SourceError as exc:
            self._refuse(context, exc)
            return
        self._received += 1
        self._last, self._last_digest, self._loaded = value, body_digest, True
        self._pending = (value,)
        self._wake()
        context.refresh_soon()

    def _refuse(self, context: SourceContext, error: SourceError) -> None:
        self._refused += 1
        self._last_error = str(error)
        now = context.clock.monotonic()
        if self._logged_at is None or now - self._logged_at >= _LOG_EVERY:
            self._logged_at = now
            logger.warning(
                "Refresher %r: an event was refused (%s); the stream goes on, the last good value stays",
                context.name,
                error,
                extra={"refresher": context.name, "outcome": "event_refused"},
            )

    def _wake(self) -> None:
        changed, self._changed = self._changed, anyio.Event()
        changed.set()


def iso(wall: float | None) -> str | None:
    """``wall`` (seconds since the epoch) as ISO 8601 in UTC, as ``status()`` shows times."""
    from datetime import UTC, datetime

    return None if wall is None else datetime.fromtimestamp(wall, UTC).isoformat()


class _EventGuard(httpx.AsyncByteStream):
    """The stream's bytes, with no event (nor line) longer than ``limit`` let through.

    httpx-sse buffers a line, and an event's data lines, until they end: a server
    that never sends a newline would fill the memory. Past ``limit`` bytes since the
    last blank line (comment lines aside), the rest of that event is dropped up to
    its blank line, and the event reaches the parser marked (its type set to
    ``marker``) so that it is refused, not published truncated.
    """

    _TERMINATOR = re.compile(rb"\r\n|\r|\n")

    def __init__(self, response: httpx.Response, limit: int, touch: Any) -> None:
        self._response = response
        self._limit = limit
        self._touch = touch
        self.marker = f"asgi-refresh-too-big-{secrets.token_hex(8)}"
        self._event_size = 0  # bytes of this event so far, comment lines aside
        self._line_size = 0
        self._comment = False  # the current line is a comment
        self._at_line_start = True
        self._after_cr = False  # a chunk ended in \r: a \n starting the next one is part of it
        self._skipping = False
        self._open_line = False  # what was let through ends inside a line

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._response.aiter_raw():
            self._touch()
            out = self._filter(chunk)
            if out:
                yield out

    def _filter(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        position = 0
        if self._after_cr and chunk.startswith(b"\n"):
            if not self._skipping:
                out.append(b"\n")
            position = 1
        self._after_cr = False
        for match in self._TERMINATOR.finditer(chunk, position):
            self._content(chunk[position : match.start()], out)
            self._line_end(match.group(), out)
            position = match.end()
        self._content(chunk[position:], out)
        if chunk.endswith(b"\r"):
            self._after_cr = True
        return b"".join(out)

    def _content(self, piece: bytes, out: list[bytes]) -> None:
        if not piece:
            return
        if self._at_line_start:
            self._comment = piece.startswith(b":")
            self._at_line_start = False
        self._line_size += len(piece)
        if not self._comment:
            self._event_size += len(piece)
        if self._skipping:
            return
        if self._event_size > self._limit or self._line_size > self._limit:
            self._skipping = True
            return
        out.append(piece)
        self._open_line = True

    def _line_end(self, terminator: bytes, out: list[bytes]) -> None:
        blank = self._at_line_start
        self._at_line_start, self._line_size = True, 0
        if self._comment or not blank:
            self._comment = False
            if not self._skipping:
                out.append(terminator)
                self._open_line = False
            return
        # A blank line: the event ends.
        self._event_size = 0
        if self._skipping:
            self._skipping = False
            # End the line cut short (if any), mark the event, end it: refused, never
            # published in part.
            out.append((b"\n" if self._open_line else b"") + b"event: " + self.marker.encode() + b"\n\n")
        else:
            out.append(terminator)
        self._open_line = False

    async def aclose(self) -> None:
        await self._response.aclose()
