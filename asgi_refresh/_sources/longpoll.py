"""`LongPollSource`: watch a document with blocking queries, as Consul answers them.

A blocking query (``GET url?index=N&wait=W``) is held by the server until its
index passes ``N`` or ``W`` passes; the index comes back in a response header.
Each fetch is one such query, and asks to be fetched again at once
(`Fetched.refresh_in`), so a change reaches the app as soon as the server
answers. Everything HTTP (the shared client, ``max_bytes``, content codings,
same-origin redirects, errors without secrets, parsing) is `HTTPSource`'s: this
class only adds the index, the wait and the pacing between queries.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

from asgi_refresh._clock import Clock
from asgi_refresh._duration import Duration, format_duration, positive_duration
from asgi_refresh._option_error import OptionTypeError, OptionValueError
from asgi_refresh._sources.context import SourceContext
from asgi_refresh._sources.http import DEFAULT_TIMEOUT, HTTPSource
from asgi_refresh._sources.outcome import Fetched, Fresh
from asgi_refresh._sources.parsing import DEFAULT_MAX_BYTES, Format, Validate

MAX_INDEX = 2**64 - 1
"""The largest index accepted: Consul's are unsigned 64-bit integers."""

SERVER_JITTER = 1 / 16
"""Consul holds a query up to ``wait / 16`` longer than asked (to spread wake-ups)."""

MIN_WAIT = 0.5
"""The shortest blocking query worth making: a refresher ``timeout`` leaving less is refused."""

MAX_BACKOFF_STEPS = 30  # 2**30 times min_interval is past any cap: no overflow, no bignum
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an HTTP header name (RFC 9110 token)
_PARAM = re.compile(r"[A-Za-z0-9_.\-~]+")  # a query parameter name that needs no escaping


def parse_index(text: str | None) -> int | None:
    """The index a response header states, or None if it states none usable.

    Strict, as the header is hostile: 1 to 20 ASCII digits and at most 2**64 - 1.
    A sign, a space, an exponent, two headers joined by a comma or an overflow is
    no index (None), and the caller starts over from 0.
    """
    if text is None or not 0 < len(text) <= 20 or not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if value <= MAX_INDEX else None


def bounded_wait(wait: float, timeout: float | None) -> float:
    """The ``wait`` to ask for, so that the query ends within the refresher's ``timeout``.

    The server may hold a query ``wait / 16`` longer than asked, and the answer
    still has to arrive and be read: a margin of 10% of ``timeout`` (0.2 s to 5 s)
    is kept for that. Without a ``timeout``, ``wait`` as given.
    """
    if timeout is None:
        return wait
    margin = min(max(timeout * 0.1, 0.2), 5.0)
    return min(wait, (timeout - margin) / (1 + SERVER_JITTER))


def wait_text(seconds: float) -> str:
    """``seconds`` as a wait parameter, rounded down: ``"25s"``, or ``"750ms"`` under a second.

    The forms Consul (a Go duration) and most servers read; never longer than asked.
    """
    if seconds >= 1:
        return f"{int(seconds)}s"
    return f"{max(int(seconds * 1000), 1)}ms"


def pace(
    *, elapsed: float, advanced: bool, quick: bool, streak: int, min_interval: float, cap: float
) -> tuple[float, int]:
    """Seconds until the next query, and the new count of answers in a row that did not block.

    Queries start at least ``min_interval`` apart. An answer that came back early
    (``quick``) without a new index is a server that does not block (or an index
    that keeps resetting): the pause doubles with each one in a row, up to ``cap``.
    A new index, or an answer that waited, ends the streak.

    Args:
        elapsed: How long the query took.
        advanced: Whether the server's index moved forward.
        quick: Whether it answered in under half the wait.
        streak: Such early answers without a new index just before this one.
        min_interval: The shortest time between the starts of two queries.
        cap: The longest pause.
    """
    streak = 0 if advanced or not quick else streak + 1
    delay = max(min_interval - elapsed, 0.0)
    if streak:
        delay = max(delay, min(min_interval * 2 ** min(streak, MAX_BACKOFF_STEPS), cap))
    return delay, streak


class LongPollSource(HTTPSource):
    """Watch a document with blocking queries (long polling), as Consul serves them.

    ```python
    Refresher("flags", LongPollSource("http://127.0.0.1:8500/v1/kv/app/flags?raw"), every="5m")
    ```

    Each fetch is one ``GET url?index=N&wait=W``: the server holds it until the
    document's index passes ``N`` (then the new value is published at once) or
    ``W`` passes (an answer with the same index is a not-modified success, not
    parsed again), and the next query starts right away. ``W`` is ``wait``
    bounded by the refresher's ``timeout``, so that a quiet query never times out.
    Consul's rules hold: an index that goes backwards, or one that is missing, not
    a number or out of range, restarts from 0 (one query that does not block); a
    ``0`` is asked as ``1``. Queries start at least ``min_interval`` apart, and a
    server that keeps answering at once with the same index is asked less and less
    often (the pause doubles, up to ``W``): no busy loop. ``every`` is the safety
    net: failures back off as for any refresher.

    The HTTP side is `HTTPSource`'s: the shared client, ``max_bytes``, same-origin
    redirects only, header values and query values never logged or shown.

    Args:
        url: Absolute ``http://`` or ``https://`` URL of the blocking endpoint.
        index_header: The response header that carries the index.
        index_param: The query parameter that sends it back.
        wait_param: The query parameter that says how long the server may hold a query.
        wait: The longest hold to ask for (Consul's limit is 10 minutes); bounded
            by the refresher's ``timeout``, less a margin.
        min_interval: The shortest time between the starts of two queries.
        headers: Request headers. Their values are never logged or shown.
        params: Query parameters (never logged or shown).
        auth: Any httpx authentication, as for `HTTPSource`.
        client: Your own ``httpx.AsyncClient``; its read timeout is set per query
            to outlast the wait.
        parse: ``"json"`` (the default), ``"toml"``, ``"text"``, ``"bytes"``, or a
            callable that takes the body's bytes.
        validate: Called with the parsed value; returns the value to publish or raises.
        max_bytes: Largest body accepted, after decompression.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: an argument is out of range.
    """

    kind = "longpoll"

    def __init__(
        self,
        url: str | httpx.URL,
        *,
        index_header: str = "X-Consul-Index",
        index_param: str = "index",
        wait_param: str = "wait",
        wait: Duration = "5m",
        min_interval: Duration = "1s",
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        auth: httpx.Auth | tuple[str, str] | Any = None,
        client: httpx.AsyncClient | None = None,
        parse: Format = "json",
        validate: Validate | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        super().__init__(
            url,
            headers=headers,
            params=params,
            auth=auth,
            client=client,
            parse=parse,
            validate=validate,
            max_bytes=max_bytes,
        )
        owner = f"LongPollSource({self.safe_url!r})"
        for option, value, pattern in (
            ("index_header", index_header, _TOKEN),
            ("index_param", index_param, _PARAM),
            ("wait_param", wait_param, _PARAM),
        ):
            if not isinstance(value, str):
                raise OptionTypeError(owner, option, f"{option} must be a string (got {value!r})")
            if not pattern.fullmatch(value):
                raise OptionValueError(
                    owner, option, f"{option} must be a plain header or parameter name (got {value!r})"
                )
        if index_param == wait_param:
            raise OptionValueError(owner, "wait_param", "index_param and wait_param must differ")
        self.index_header, self.index_param, self.wait_param = index_header, index_param, wait_param
        self.wait = positive_duration(owner, "wait", wait)
        self.min_interval = positive_duration(owner, "min_interval", min_interval)
        self._owner = owner
        # Per lifespan, from open:
        self._clock: Clock | None = None
        self._wait = self.wait  # bounded by the refresher's timeout
        self._seen: int | None = None  # the server's last index; None: start over (index 0)
        self._pending: int | None = None  # the index of the answer being read
        self._answered = False  # whether the answer being read had an index header read
        self._streak = 0

    def __repr__(self) -> str:
        return f"LongPollSource({self.safe_url!r})"

    @property
    def origin(self) -> str:
        """URL without userinfo, query or fragment, and the names (not values) of its parameters."""
        names = sorted(set(self.url.params.keys()))
        return f"longpoll GET {self.safe_url} params={','.join(names)}"

    @property
    def index(self) -> int:
        """The index the next query sends: 0 to start over, else the last one seen (at least 1)."""
        return 0 if self._seen is None else max(self._seen, 1)

    async def open(self, context: SourceContext) -> None:
        """Take the HTTP client; bound the wait by the refresher's ``timeout``.

        Raises:
            OptionValueError: the refresher's ``timeout`` leaves no time for a
                blocking query.
        """
        wait = bounded_wait(self.wait, context.timeout)
        if wait < MIN_WAIT:
            assert context.timeout is not None  # unbounded, the wait is the option itself (> 0.5 s)
            raise OptionValueError(
                self._owner,
                "wait",
                f"the refresher's timeout ({format_duration(context.timeout)}) leaves "
                f"{format_duration(max(wait, 0.0))} for a blocking query, less than "
                f"{format_duration(MIN_WAIT)}: give the Refresher a timeout of a few seconds "
                "or more (the wait is bounded by it), or use HTTPSource to poll",
            )
        await super().open(context)
        self._clock, self._wait = context.clock, wait
        self._seen, self._pending, self._answered, self._streak = None, None, False, 0
        # The shared client gives up reading after 10 s: a blocking query is meant to take longer.
        self._request["timeout"] = httpx.Timeout(
            DEFAULT_TIMEOUT, read=wait * (1 + SERVER_JITTER) + DEFAULT_TIMEOUT
        )

    async def close(self) -> None:
        """Give the client back."""
        self._clock = None
        await super().close()

    async def fetch(self) -> Fetched:
        """One blocking query; the value if the index moved, else not-modified.

        Returns:
            `Fetched` whose ``refresh_in`` starts the next query at once, or after
            the pause that `pace` gives.

        Raises:
            SourceError: the request failed or the body is unusable (the index is
                kept: the next query returns at once if the document changed).
            RuntimeError: the source is not open.
        """
        clock = self._clock
        if clock is None:
            return await super().fetch()  # not open: HTTPSource's error
        started = clock.monotonic()
        self._pending, self._answered = None, False
        fetched = await super().fetch()
        elapsed = clock.monotonic() - started
        advanced = False
        if self._answered:  # a 304 says nothing of the index: it stays as it was
            new, self._answered = self._pending, False
            advanced = new is not None and (self._seen is None or new > self._seen)
            # Backwards, missing or not a number: start over from 0, as Consul says.
            self._seen = new if new is not None and (self._seen is None or new >= self._seen) else None
        refresh_in, self._streak = pace(
            elapsed=elapsed,
            advanced=advanced,
            quick=elapsed < self._wait / 2,
            streak=self._streak,
            min_interval=self.min_interval,
            cap=max(self._wait, self.min_interval),
        )
        return Fetched(fetched.value, not_modified=fetched.not_modified, refresh_in=refresh_in)

    def handover(self) -> dict[str, str] | None:
        """The body's digest and the index: a process taking over blocks from there.

        None before a value, after a reset, or for an expiring value.
        """
        if not self._loaded or self._seen is None or isinstance(self._cached, Fresh):
            return None
        assert self._digest is not None
        found = {"digest": self._digest.hex(), "index": str(self._seen)}
        if self._etag is not None:
            found["etag"] = self._etag
        if self._last_modified is not None:
            found["last_modified"] = self._last_modified
        return found

    def take_over(self, value: Any, handover: Mapping[str, str]) -> None:
        """Continue from ``value`` and the index another process saw it at.

        The next query blocks from that index, so it answers at once if the
        document changed since. An index that does not parse starts over from 0.
        """
        super().take_over(value, handover)
        if self._cached is value and self._loaded:
            index = handover.get("index")
            self._seen = parse_index(index) if isinstance(index, str) else None
            self._streak = 0

    def _target(self) -> httpx.URL:
        return self.url.copy_set_param(self.index_param, str(self.index)).copy_set_param(
            self.wait_param, wait_text(self._wait)
        )

    def _unchanged(self, response: httpx.Response) -> bool:
        self._pending, self._answered = parse_index(response.headers.get(self.index_header)), True
        return self._pending is not None and self._pending == self._seen


def consul_kv(
    address: str,
    key: str,
    *,
    token: str | None = None,
    datacenter: str | None = None,
    wait: Duration = "5m",
    min_interval: Duration = "1s",
    client: httpx.AsyncClient | None = None,
    parse: Format = "json",
    validate: Validate | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> LongPollSource:
    """A `LongPollSource` for one key of Consul's KV store (``GET /v1/kv/<key>?raw``).

    ```python
    Refresher("flags", consul_kv("http://127.0.0.1:8500", "app/flags", token=TOKEN), every="5m")
    ```

    The key's raw value is parsed with ``parse`` (JSON by default); a key that does
    not exist is a failed fetch (``HTTP 404``), and the last good value stays.

    Args:
        address: Consul's HTTP address, like ``"http://127.0.0.1:8500"``.
        key: The key, like ``"app/flags"``; no empty, ``.`` or ``..`` segment.
        token: An ACL token, sent as ``X-Consul-Token``; never logged or shown.
        datacenter: The datacenter to ask (``?dc=``); Consul's own by default.
        wait: The longest hold to ask for (Consul's limit is 10 minutes).
        min_interval: The shortest time between the starts of two queries.
        client: Your own ``httpx.AsyncClient``.
        parse: How to parse the value, as for `HTTPSource`.
        validate: Called with the parsed value; returns the value to publish or raises.
        max_bytes: Largest value accepted.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: an argument is out of range.
    """
    owner = "consul_kv"
    if not isinstance(address, str) or not isinstance(key, str):
        raise OptionTypeError(owner, "key", "address and key must be strings")
    segments = key.split("/")
    if not key or any(segment in ("", ".", "..") for segment in segments) or not key.isprintable():
        # Never a path that leaves /v1/kv/ once normalised.
        raise OptionValueError(
            owner,
            "key",
            f"key must be a path like 'app/flags', without empty, '.' or '..' parts (got {key!r})",
        )
    if token is not None and not isinstance(token, str):
        raise OptionTypeError(owner, "token", "token must be a string or None")
    if datacenter is not None and not isinstance(datacenter, str):
        raise OptionTypeError(
            owner, "datacenter", f"datacenter must be a string or None (got {type(datacenter).__name__})"
        )
    params = {"raw": "true"} if datacenter is None else {"raw": "true", "dc": datacenter}
    return LongPollSource(
        f"{address.rstrip('/')}/v1/kv/{quote(key, safe='/')}",
        params=params,
        headers=None if token is None else {"X-Consul-Token": token},
        wait=wait,
        min_interval=min_interval,
        client=client,
        parse=parse,
        validate=validate,
        max_bytes=max_bytes,
    )
