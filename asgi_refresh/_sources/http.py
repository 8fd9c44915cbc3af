"""`HTTPSource`: fetch a document over HTTP with httpx, politely and safely."""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Mapping
from contextlib import AsyncExitStack, aclosing
from typing import Any

import anyio.lowlevel
import httpx

from asgi_refresh.__about__ import __version__
from asgi_refresh._duration import Duration, format_duration, positive_duration
from asgi_refresh._option_error import OptionTypeError, OptionValueError
from asgi_refresh._sources.base import Source, Standalone
from asgi_refresh._sources.bearer import BearerToken, _BoundBearer
from asgi_refresh._sources.context import SourceContext
from asgi_refresh._sources.decoding import BodyDecoder, accept_encoding
from asgi_refresh._sources.headers import content_length, freshness_lifetime, retry_after
from asgi_refresh._sources.outcome import Fetched, Fresh, SourceError
from asgi_refresh._sources.parsing import (
    DEFAULT_MAX_BYTES,
    THREAD_THRESHOLD,
    Format,
    Parser,
    Validate,
    digest,
    max_bytes_option,
    too_big,
)
from asgi_refresh._sources.retire import retire
from asgi_refresh._text import printable

DEFAULT_TIMEOUT = 10.0
MAX_RETRY_AFTER = 3600.0  # a broken Retry-After must not stop refreshes for days
_BUSY = 0.002  # seconds of decoding at most before the event loop gets a turn
_DEFAULT_PORTS = {"http": 80, "https": 443}
_SHARED_CLIENT_KEY = "asgi_refresh.httpx.AsyncClient"
_URL_IN_TEXT = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")


class HTTPSource(Standalone, Source):
    """Fetch a document over HTTP: use it as the ``fetch`` of a `Refresher`.

    ```python
    Refresher("names", HTTPSource("https://api.example.com/names"), every="1h")
    ```

    Every poll is a conditional request once a value is loaded (``If-None-Match``
    / ``If-Modified-Since`` from the last ``ETag`` / ``Last-Modified``); a ``304``
    keeps the value, counts as a success and calls no ``on_change``. The body is
    streamed and given up as soon as it passes ``max_bytes``; its content codings
    (gzip, deflate, and br or zstd when a library that bounds them is installed)
    are undone by the source in small slices under that cap, whatever the stack, and
    any other coding is refused. Redirects are followed within the origin only,
    judged by the URL httpx would request. A ``429`` or ``503``
    with ``Retry-After`` delays the next attempt as asked (at most an hour). Any
    failure (a non-2xx status, a timeout, a refused connection, a body that does
    not parse or validate) is reported with the status code and the URL without
    its query string or credentials; the last good value stays published.

    All sources of one middleware share one ``httpx.AsyncClient``, opened at
    startup and closed at shutdown, unless you pass ``client``: yours is used as is
    and never closed by us.

    Args:
        url: Absolute ``http://`` or ``https://`` URL.
        method: HTTP method.
        headers: Request headers. Their values are never logged or shown.
        params: Query parameters (never logged or shown).
        auth: Any httpx authentication: ``("user", "password")``, an
            ``httpx.Auth``, or a callable that takes and returns the request.
        data: Form fields to send as the body (an OAuth token request).
        json: A JSON body to send.
        timeout: httpx timeout for each request (connect, read, write, pool), or
            None for none; the refresher's own ``timeout`` bounds the whole fetch.
        client: Your own ``httpx.AsyncClient`` (proxies, certificates, transports).
        parse: ``"json"`` (the default), ``"toml"``, ``"text"`` (decoded with the
            response's charset, else UTF-8), ``"bytes"``, or a callable that takes
            the body's bytes. It may return a `Fresh` (a token endpoint).
        validate: Called with the parsed value; returns the value to publish
            (possibly converted) or raises. ``pydantic.TypeAdapter(T).validate_python``
            works as is.
        max_bytes: Largest body accepted, after decompression.
        min_every: With ``max_every``, lets the server's caching headers choose the
            next refresh: ``Cache-Control: max-age`` (less ``Age``) or ``Expires``,
            clamped to ``[min_every, max_every]``. Without them, ``every`` rules.
        max_every: See ``min_every``.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: an argument is out of range.
    """

    kind = "http"

    def __init__(
        self,
        url: str | httpx.URL,
        *,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        auth: httpx.Auth | tuple[str, str] | Any = None,
        data: Mapping[str, Any] | None = None,
        json: Any = None,
        timeout: Duration | None = None,
        client: httpx.AsyncClient | None = None,
        parse: Format = "json",
        validate: Validate | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        min_every: Duration | None = None,
        max_every: Duration | None = None,
    ) -> None:
        try:
            parsed = httpx.URL(url)
        except (TypeError, httpx.InvalidURL) as exc:
            raise OptionValueError("HTTPSource", "url", f"url is not a valid URL: {exc}") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise OptionValueError(
                "HTTPSource",
                "url",
                f"url must be an absolute http:// or https:// URL (got {safe_url(parsed)!r})",
            )
        # The query of the URL and `params` together, once: httpx would let one replace the other.
        self.url = parsed.copy_merge_params(params) if params else parsed
        self.safe_url = safe_url(parsed)
        owner = f"HTTPSource({self.safe_url!r})"
        for header, value in (headers or {}).items():
            if not isinstance(value, str) or value != value.strip() or "\n" in value or "\r" in value:
                # Not echoed back: it is likely a credential read from a file with its newline.
                raise OptionValueError(
                    owner,
                    "headers",
                    f"the value of header {header!r} must be a string without surrounding "
                    "whitespace or line breaks (was it read from a file with its newline?)",
                )
        if data is not None and json is not None:
            raise OptionValueError(owner, "data", "pass a form body (data=) or a JSON body (json=), not both")
        if not isinstance(method, str) or not method.isalpha():
            raise OptionValueError(
                owner, "method", f"method must be an HTTP method like 'GET' (got {method!r})"
            )
        self.method = method.upper()
        self.where = f"{self.method} {self.safe_url}"
        if client is not None and not isinstance(client, httpx.AsyncClient):
            raise OptionTypeError(
                owner, "client", f"client must be an httpx.AsyncClient (got {type(client).__name__})"
            )
        max_bytes = max_bytes_option(owner, max_bytes)
        if (min_every is None) != (max_every is None):
            raise OptionValueError(
                owner,
                # The one given: that is the key a config file has.
                "min_every" if min_every is not None else "max_every",
                "set both min_every and max_every to follow the server's caching headers, or neither",
            )
        self.min_every = None if min_every is None else positive_duration(owner, "min_every", min_every)
        self.max_every = None if max_every is None else positive_duration(owner, "max_every", max_every)
        if self.min_every is not None and self.max_every is not None and self.min_every > self.max_every:
            raise OptionValueError(
                owner,
                "min_every",
                f"min_every ({format_duration(self.min_every)}) must not exceed "
                f"max_every ({format_duration(self.max_every)})",
            )
        self._request: dict[str, Any] = {
            "headers": dict(headers or {}),
            "auth": auth,
            "data": data,
            "json": json,
        }
        if timeout is not None:  # otherwise the client's own: 10 s on the shared one
            self._request["timeout"] = positive_duration(owner, "timeout", timeout)
        self._client = client
        self._parser = Parser(owner, "parse", parse, validate)
        self.max_bytes = max_bytes
        # Per lifespan, between enter and exit:
        self._context: SourceContext | None = None
        self._open_client: httpx.AsyncClient | None = None
        self._etag: str | None = None
        self._last_modified: str | None = None
        self.last_status: int | None = None  # of the last fetch's response, for its event
        self.last_size: int | None = None  # of the last fetch's body, decoded, for its event
        self._cached: Any = None
        self._digest: bytes | None = None  # of the body behind the cached value
        self._expires_at: float | None = None  # of the cached value, if it was a Fresh (monotonic)

    def __repr__(self) -> str:
        return f"HTTPSource({self.safe_url!r}, method={self.method!r})"

    @property
    def origin(self) -> str:
        """Method, URL without userinfo, query or fragment, and the names (not values) of its parameters."""
        names = sorted(set(self.url.params.keys()))
        return f"http {self.method} {self.safe_url} params={','.join(names)}"

    async def open(self, context: SourceContext) -> None:
        """Take the shared HTTP client (or yours) for this lifespan."""
        # Claimed before the first await, so that a second refresher sharing this
        # source is refused; released again if opening fails, so it can be retried.
        self._context = SourceContext.claim(self, self._context, context)
        try:
            auth = self._request["auth"]
            if isinstance(auth, BearerToken):
                auth = auth._bind(context.handle)
            client = self._client or await context.shared(_SHARED_CLIENT_KEY, _new_client)
        except BaseException:
            self._context = None
            raise
        self._open_client, self._request["auth"] = client, auth
        self._etag = self._last_modified = None
        self._cached, self._digest, self._expires_at = None, None, None
        _redact.endpoints[_endpoint(self.url)] += 1

    async def close(self) -> None:
        """Give the client back; the lifespan closes the shared one."""
        if self._context is None:
            return
        self._context, self._open_client = None, None
        if isinstance(self._request["auth"], _BoundBearer):
            self._request["auth"] = self._request["auth"].token
        endpoint = _endpoint(self.url)
        _redact.endpoints[endpoint] -= 1
        if _redact.endpoints[endpoint] <= 0:
            del _redact.endpoints[endpoint]

    async def fetch(self) -> Fetched:
        """Fetch once; returns the value with what the server said about its freshness.

        Raises:
            SourceError: the request failed or the body is unusable.
            RuntimeError: the source is not open (not run by a middleware, nor
                entered with ``async with``).
        """
        context = SourceContext.required(self, self._context)
        client = self._open_client
        assert client is not None  # set whenever the context is
        headers = dict(self._request["headers"])
        if not any(name.lower() == "accept-encoding" for name in headers):
            # Never what httpx would offer (br, zstd with whatever library is
            # installed): only codings the source can undo within max_bytes.
            headers["Accept-Encoding"] = accept_encoding()
        # Validators only make a read conditional: on a POST, If-None-Match is a
        # precondition the server must fail with 412.
        if self._loaded and self.method in ("GET", "HEAD"):
            if self._etag is not None:
                headers["If-None-Match"] = self._etag
            if self._last_modified is not None:
                headers["If-Modified-Since"] = self._last_modified
        # What the fetch's event reports (tracing): the last response's status, the body's size.
        self.last_status = self.last_size = None
        try:
            async with AsyncExitStack() as responses:
                response = await self._send(client, headers, responses)
                self.last_status = response.status_code
                if response.status_code == 304 and self._loaded:
                    self._remember_validators(response, keep_missing=True)
                    return Fetched(
                        self._cached_now(), not_modified=True, refresh_in=self._refresh_in(response)
                    )
                if not response.is_success:
                    raise self._status_error(response)
                body = await self._read(response)
                self.last_size = len(body)
                encoding = response.charset_encoding
                unchanged = self._unchanged(response)
        except httpx.TimeoutException as exc:
            raise SourceError(f"{self.where}: timed out ({type(exc).__name__})") from None
        except httpx.LocalProtocolError as exc:
            # Its message quotes the offending header or body: possibly a credential.
            raise SourceError(
                f"{self.where}: {type(exc).__name__}: httpx refused to send the request "
                "(a header or body it cannot encode)"
            ) from None
        except httpx.HTTPError as exc:
            raise SourceError(f"{self.where}: {type(exc).__name__}: {self._scrub(str(exc))}") from None
        if unchanged and self._loaded:
            # The upstream said so in its own way (a blocking query's index): no digest, no parse.
            return Fetched(self._cached_now(), not_modified=True)
        refresh_in = self._refresh_in(response)
        body_digest = await digest(context, body)
        if self._loaded and body_digest == self._digest:
            # The same body again (a server without validators): no parse, no
            # comparison of two big values, nothing new to publish.
            # A token grant sent again is good for its expires_in from now.
            self._remember_validators(response, keep_missing=False)
            self._expires_at = _expiry(context, self._cached)
            return Fetched(self._cached, not_modified=True, refresh_in=refresh_in)
        value = await self._parser(context, body, self.where, encoding)
        # Remembered only once the body is good: a broken document must be fetched
        # in full next time, not confirmed with a 304.
        self._remember_validators(response, keep_missing=False)
        previous, self._cached, self._digest = self._cached, value, body_digest
        self._expires_at = _expiry(context, value)
        # Once the new value is published, the old one is freed in pieces, not in one stall.
        retire(context, previous, len(body), THREAD_THRESHOLD)
        del previous
        return Fetched(value, refresh_in=refresh_in)

    def check(self, value: Any) -> Any:
        """``value`` as ``validate`` returns it; `SourceError` if it is not one this source could produce.

        For a value that did not come from this source's own fetch: one that
        another process stored in the coordination backend, untrusted like a body.
        """
        return self._parser.check(value, self.where)

    def handover(self) -> dict[str, str] | None:
        """What a process taking over needs to ask this server "changed since?" (coordination).

        None when there is nothing to hand over: no body yet, a method whose
        requests are not conditional, or an expiring value (a token is fetched
        again, not confirmed).
        """
        if not self._loaded or self.method not in ("GET", "HEAD") or isinstance(self._cached, Fresh):
            return None
        if self._etag is None and self._last_modified is None:
            return None
        assert self._digest is not None
        validators = {"digest": self._digest.hex()}
        if self._etag is not None:
            validators["etag"] = self._etag
        if self._last_modified is not None:
            validators["last_modified"] = self._last_modified
        return validators

    def take_over(self, value: Any, handover: Mapping[str, str]) -> None:
        """Take over another process's validators for ``value``, the value it stored.

        The next request is then conditional, and a 304 confirms ``value``.
        """
        digest_hex, etag, modified = (handover.get(key) for key in ("digest", "etag", "last_modified"))
        if not isinstance(digest_hex, str) or self._context is None or self.method not in ("GET", "HEAD"):
            return
        try:
            body_digest = bytes.fromhex(digest_hex)
        except ValueError:
            return
        self._etag = etag if isinstance(etag, str) else None
        self._last_modified = modified if isinstance(modified, str) else None
        self._cached, self._digest, self._expires_at = value, body_digest, None

    def _target(self) -> httpx.URL:
        """The URL of the next request: ``url``; a subclass adds per-request parameters (an index)."""
        return self.url

    def _unchanged(self, response: httpx.Response) -> bool:
        """Whether a successful ``response`` says the value is the one cached, other than by a 304.

        Called once per successful response, its body read; a subclass reads its own
        headers here (a blocking query's index). HTTPSource has no such signal.
        """
        return False

    @property
    def _loaded(self) -> bool:
        """Whether a body has been parsed and cached (what a 304 may confirm)."""
        return self._digest is not None

    def _cached_now(self) -> Any:
        """The cached value, a token with what is left of its lifetime."""
        if not isinstance(self._cached, Fresh) or self._expires_at is None:
            return self._cached
        assert self._context is not None
        left = max(self._expires_at - self._context.clock.monotonic(), 0.0)
        return Fresh(self._cached.value, expires_in=left, leeway=min(self._cached.leeway, left))

    async def _send(
        self,
        client: httpx.AsyncClient,
        headers: dict[str, str],
        responses: AsyncExitStack,
        *,
        read_timeout: httpx.Timeout | None = None,
    ) -> httpx.Response:
        r"""The response to our request, after the redirects we may follow (closed with ``responses``).

        On the shared client, httpx builds each redirect's request and we judge
        that very request before it is sent: the URL httpx would really ask for,
        however odd the ``Location`` (``http:/x``, ``//host``, ``\host``).
        Your own ``client=`` follows its own policy.
        """
        ours = self._client is None
        options = {**self._request, "headers": headers}
        if read_timeout is not None:  # an event stream: reads bounded by its heartbeat instead
            options["timeout"] = read_timeout
        if ours:
            options["follow_redirects"] = False
        response = await responses.enter_async_context(client.stream(self.method, self._target(), **options))
        hops = 0
        while ours and response.next_request is not None:
            request = response.next_request
            if _origin(request.url) != _origin(self.url):
                raise SourceError(
                    f"{self.where}: redirected to another origin ({printable(safe_url(request.url), 200)}); "
                    "not followed, so that request headers do not leak. Use the new URL, or pass your own "
                    "client= that follows such redirects"
                )
            hops += 1
            if hops > client.max_redirects:
                raise SourceError(f"{self.where}: more than {client.max_redirects} redirects; not followed")
            await response.aclose()
            response = await client.send(
                request, stream=True, follow_redirects=False, auth=self._request["auth"]
            )
            responses.push_async_callback(response.aclose)
        return response

    async def _read(self, response: httpx.Response) -> bytes:
        # Decoded here, not by httpx: it would inflate each network chunk in full,
        # so 2 kB of "gzip, gzip" could become gigabytes in one call.
        decoder = BodyDecoder(
            response.headers.get_list("Content-Encoding"), where=self.where, max_bytes=self.max_bytes
        )
        declared = content_length(response.headers.get("Content-Length"))
        if declared is not None and declared > decoder.wire_limit:
            raise too_big(self.where, self.max_bytes, f"Content-Length is {declared} bytes")
        chunks = []
        busy_since = time.perf_counter()
        async with aclosing(response.aiter_raw()) as body:  # type: ignore[type-var]
            async for raw in body:
                for piece in decoder.feed(raw):
                    if piece:
                        chunks.append(piece)
                    if time.perf_counter() - busy_since > _BUSY:
                        await anyio.lowlevel.checkpoint()
                        busy_since = time.perf_counter()
        decoder.finish()
        return b"".join(chunks)

    def _status_error(self, response: httpx.Response) -> SourceError:
        code = response.status_code
        retry = None
        if code in (429, 503):
            headers = response.headers
            retry = retry_after(
                headers.get("Retry-After"), headers.get("Date"), self._wall(), limit=MAX_RETRY_AFTER
            )
        reason = printable(response.reason_phrase, 100)  # any bytes the server chose
        status = f"HTTP {code} {reason}" if reason else f"HTTP {code}"
        return SourceError(f"{status} from {self.where}", retry_after=retry)

    def _remember_validators(self, response: httpx.Response, *, keep_missing: bool) -> None:
        etag = response.headers.get("ETag")
        last_modified = response.headers.get("Last-Modified")
        if etag is not None or not keep_missing:
            self._etag = etag
        if last_modified is not None or not keep_missing:
            self._last_modified = last_modified

    def _refresh_in(self, response: httpx.Response) -> float | None:
        if self.min_every is None or self.max_every is None:
            return None
        headers = response.headers
        lifetime = freshness_lifetime(
            headers.get_list("Cache-Control"),
            headers.get("Expires"),
            headers.get("Date"),
            headers.get("Age"),
            self._wall(),
        )
        if lifetime is None:
            return None
        return min(max(lifetime, self.min_every), self.max_every)

    def _wall(self) -> float:
        assert self._context is not None
        return self._context.clock.wall()

    def _scrub(self, text: str) -> str:
        # httpx messages rarely carry a URL, but one may hold credentials or a key.
        text = _URL_IN_TEXT.sub(lambda match: _safe_url_text(match.group()) + "…", text)
        query = self.url.query.decode("ascii", "replace")
        if query:
            text = text.replace(query, "…")
        return printable(text) or "no details"


class _RedactSourceURLs(logging.Filter):
    """Keeps httpx's own INFO line ("HTTP Request: GET <url> ...") free of our secrets.

    httpx logs every request's full URL, query string included. For requests to
    an open HTTPSource's endpoint, the URL in that line loses its query string and
    credentials; other requests are left alone.
    """

    def __init__(self) -> None:
        super().__init__()
        self.endpoints: Counter[tuple[bytes, str, int | None, str]] = Counter()

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(arg, httpx.URL) for arg in record.args):
            record.args = tuple(
                safe_url(arg) + ("?…" if arg.query else "")
                if isinstance(arg, httpx.URL) and _endpoint(arg) in self.endpoints
                else arg
                for arg in record.args
            )
        return True


def _endpoint(url: httpx.URL) -> tuple[bytes, str, int | None, str]:
    return (url.raw_scheme, url.host, url.port, url.path)


_redact = _RedactSourceURLs()
logging.getLogger("httpx").addFilter(_redact)


def _expiry(context: SourceContext, value: Any) -> float | None:
    return context.clock.monotonic() + value.expires_in if isinstance(value, Fresh) else None


def safe_url(url: httpx.URL) -> str:
    """``url`` without credentials, query string or fragment: what logs may show."""
    return str(url.copy_with(userinfo=None, query=None, fragment=None)) if url.host else str(url.path)


def _safe_url_text(text: str) -> str:
    try:
        return safe_url(httpx.URL(text))
    except (TypeError, httpx.InvalidURL):
        return "(a URL)"


def _new_client() -> httpx.AsyncClient:
    # Redirects are followed by HTTPSource._send, which judges each one first.
    return httpx.AsyncClient(
        follow_redirects=False,
        timeout=DEFAULT_TIMEOUT,
        headers={"User-Agent": f"asgi-refresh/{__version__}"},
    )


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    """Scheme, host and port, the default port spelled out: what a redirect must keep.

    httpx only drops ``Authorization`` when a redirect leaves the origin; a key in
    another header would go to the new host, or over plain HTTP after a downgrade.
    """
    return (url.scheme, url.host, url.port or _DEFAULT_PORTS.get(url.scheme))
