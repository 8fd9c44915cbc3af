"""HTTPSource: requests, parsing, conditional requests, server-driven freshness, errors, secrets."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pydantic
import pytest
import respx

from asgi_refresh import BearerToken, Fresh, HTTPSource, Refresher, RefreshError, SourceError
from asgi_refresh._sources.context import Values
from asgi_refresh.testing import FakeClock

from .helpers import START, running, startup_failure

pytestmark = pytest.mark.anyio

URL = "https://api.example.com/names"


@pytest.fixture
def upstream() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as mock:
        yield mock


def status_of(handle: Any, name: str = "names") -> dict[str, Any]:
    entry: dict[str, Any] = handle.status()[name]
    return entry


def at(seconds: float) -> str:
    """The ISO timestamp ``seconds`` after START, as status() shows it."""
    return datetime_after(seconds).isoformat()


def datetime_after(seconds: float) -> datetime:
    return START + timedelta(seconds=seconds)


# -- requests and parsing -------------------------------------------------------------


async def test_loads_json_and_publishes_it(upstream: respx.MockRouter) -> None:
    """The default source GETs the URL and publishes the parsed JSON."""
    upstream.get(URL).respond(json=["ada", "grace"])
    async with running(Refresher("names", HTTPSource(URL), every="1h")) as handle:
        assert handle.value("names") == ["ada", "grace"]


async def test_sends_method_headers_params_auth_and_body(upstream: respx.MockRouter) -> None:
    """Every request option reaches the server: method, headers, params, auth and form data."""
    route = upstream.post("https://auth.example.com/token").respond(json={"ok": True})
    source = HTTPSource(
        "https://auth.example.com/token",
        method="post",
        headers={"X-Tenant": "t1"},
        params={"scope": "read"},
        auth=("client", "s3cret"),
        data={"grant_type": "client_credentials"},
    )
    async with running(Refresher("token", source, every="1h")):
        request = route.calls.last.request
    assert request.method == "POST"
    assert request.headers["X-Tenant"] == "t1"
    assert request.url.params["scope"] == "read"
    assert request.headers["Authorization"].startswith("Basic ")
    assert request.content == b"grant_type=client_credentials"
    assert request.headers["User-Agent"].startswith("asgi-refresh/")


async def test_json_body_is_sent(upstream: respx.MockRouter) -> None:
    """A ``json=`` body is sent as JSON."""
    route = upstream.post(URL).respond(json=[1])
    async with running(Refresher("names", HTTPSource(URL, method="POST", json={"q": 1}), every="1h")):
        assert json.loads(route.calls.last.request.content) == {"q": 1}


@pytest.mark.parametrize(
    ("parse", "response", "expected"),
    [
        ("text", httpx.Response(200, content="héllo".encode("latin-1"), headers={"Content-Type": "text/plain; charset=latin-1"}), "héllo"),
        ("text", httpx.Response(200, content="héllo".encode()), "héllo"),
        ("bytes", httpx.Response(200, content=b"\x00\x01"), b"\x00\x01"),
        ("toml", httpx.Response(200, content=b"a = 1"), {"a": 1}),
        (lambda body: body.decode().split(","), httpx.Response(200, content=b"a,b"), ["a", "b"]),
    ],
)  # fmt: skip
async def test_parse_options(
    upstream: respx.MockRouter, parse: Any, response: httpx.Response, expected: Any
) -> None:
    """``parse`` picks text (with the response charset), bytes, TOML or a callable."""
    upstream.get(URL).mock(return_value=response)
    async with running(Refresher("names", HTTPSource(URL, parse=parse), every="1h")) as handle:
        assert handle.value("names") == expected


async def test_pydantic_type_adapter_validates_and_converts(upstream: respx.MockRouter) -> None:
    """``validate=TypeAdapter(T).validate_python`` works as is and its result is published."""
    upstream.get(URL).respond(json=[{"id": "1"}, {"id": 2}])

    class Item(pydantic.BaseModel):
        id: int

    source = HTTPSource(URL, validate=pydantic.TypeAdapter(list[Item]).validate_python)
    async with running(Refresher("names", source, every="1h")) as handle:
        assert handle.value("names") == [Item(id=1), Item(id=2)]


async def test_validation_failure_keeps_the_last_value_and_hides_the_input(
    upstream: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    """A document that fails validation is an error naming the field, not quoting the data."""
    route = upstream.get(URL)
    route.side_effect = [httpx.Response(200, json=[1, 2]), httpx.Response(200, json=[1, "SECRET-VALUE"])]
    source = HTTPSource(URL, validate=pydantic.TypeAdapter(list[int]).validate_python)
    async with running(Refresher("names", source, every="1h")) as handle:
        with pytest.raises(RefreshError, match=r"validation failed: ValidationError: 1: Input should be"):
            await handle.refresh("names")
        assert handle.value("names") == [1, 2]
        assert "SECRET-VALUE" not in json.dumps(handle.status())
    assert "SECRET-VALUE" not in caplog.text


async def test_a_validator_that_returns_none_is_an_error(upstream: respx.MockRouter) -> None:
    """A checker that returns nothing would publish None; that is reported instead."""
    upstream.get(URL).respond(json=[1])
    source = HTTPSource(URL, validate=lambda value: None)
    assert "validate returned None" in await startup_failure(Refresher("names", source, every="1h"))


async def test_a_big_document_is_parsed(upstream: respx.MockRouter) -> None:
    """A body past the thread threshold is parsed (off the event loop) like a small one."""
    document = [f"name-{i}" for i in range(20_000)]
    upstream.get(URL).respond(json=document)
    async with running(Refresher("names", HTTPSource(URL), every="1h")) as handle:
        assert handle.value("names") == document


# -- conditional requests -------------------------------------------------------------


async def test_etag_makes_the_next_poll_conditional_and_304_keeps_the_value(
    upstream: respx.MockRouter,
) -> None:
    """After an ETag, polls send If-None-Match; a 304 is a success that publishes nothing new."""
    route = upstream.get(URL)
    route.side_effect = [
        httpx.Response(200, json=["a"], headers={"ETag": '"v1"'}),
        httpx.Response(304),
        httpx.Response(200, json=["b"], headers={"ETag": '"v2"'}),
    ]
    changes: list[tuple[Any, Any]] = []
    clock = FakeClock(START)
    refresher = Refresher(
        "names", HTTPSource(URL), every="1m", jitter=0, on_change=lambda old, new: changes.append((old, new))
    )
    async with running(refresher, clock=clock) as handle:
        first = handle.value("names")
        assert "If-None-Match" not in route.calls[0].request.headers
        await clock.advance("1m")
        assert route.calls[1].request.headers["If-None-Match"] == '"v1"'
        assert handle.value("names") is first, "a 304 publishes nothing new"
        status = status_of(handle)
        assert status["last_outcome"] == "not_modified"
        assert status["refresh_count"] == 2
        assert status["last_changed_at"] == at(0)
        assert changes == [(None, ["a"])]
        await clock.advance("1m")
        assert route.calls[2].request.headers["If-None-Match"] == '"v1"', "a 304 keeps the validator"
        assert handle.value("names") == ["b"]
        assert status_of(handle)["last_changed_at"] == at(120)
    assert changes == [(None, ["a"]), (["a"], ["b"])]


async def test_last_modified_is_sent_as_if_modified_since(upstream: respx.MockRouter) -> None:
    """Last-Modified comes back as If-Modified-Since."""
    stamp = "Wed, 21 Oct 2015 07:28:00 GMT"
    route = upstream.get(URL)
    route.side_effect = [httpx.Response(200, json=1, headers={"Last-Modified": stamp}), httpx.Response(304)]
    async with running(Refresher("names", HTTPSource(URL), every="1m")) as handle:
        await handle.refresh("names")
    assert route.calls[1].request.headers["If-Modified-Since"] == stamp


async def test_a_body_that_does_not_parse_does_not_keep_its_etag(upstream: respx.MockRouter) -> None:
    """A broken document is fetched in full next time, never confirmed by a 304."""
    route = upstream.get(URL)
    route.side_effect = [
        httpx.Response(200, json=["a"], headers={"ETag": '"v1"'}),
        httpx.Response(200, content=b"{broken", headers={"ETag": '"v2"'}),
        httpx.Response(200, json=["c"], headers={"ETag": '"v3"'}),
    ]
    async with running(Refresher("names", HTTPSource(URL), every="1m")) as handle:
        with pytest.raises(RefreshError, match="invalid json"):
            await handle.refresh("names")
        await handle.refresh("names")
    assert route.calls[2].request.headers["If-None-Match"] == '"v1"'


async def test_a_304_before_any_value_is_an_error(upstream: respx.MockRouter) -> None:
    """A 304 to a request that had nothing to confirm gives us nothing to publish."""
    upstream.get(URL).respond(304)
    message = await startup_failure(Refresher("names", HTTPSource(URL), every="1m"))
    assert "SourceError: HTTP 304 Not Modified from GET https://api.example.com/names" in message


# -- server-driven freshness ----------------------------------------------------------


def freshness_source() -> HTTPSource:
    return HTTPSource(URL, min_every="1m", max_every="1h")


@pytest.mark.parametrize(
    ("headers", "next_refresh"),
    [
        ({"Cache-Control": "public, max-age=300"}, 300),
        ({"Cache-Control": "max-age=300", "Age": "100"}, 200),
        ({"Cache-Control": "max-age=5"}, 60),
        ({"Cache-Control": "max-age=86400"}, 3600),
        ({"Cache-Control": "no-cache"}, 60),
        ({"Cache-Control": "max-age=oops"}, 60),
        ({"Expires": format_datetime(datetime_after(900), usegmt=True)}, 900),
        ({"Expires": "0"}, 60),
        (
            {
                "Expires": format_datetime(datetime_after(1000), usegmt=True),
                "Date": format_datetime(datetime_after(400), usegmt=True),
            },
            600,
        ),
        ({}, 120),
    ],
)
async def test_caching_headers_set_the_next_refresh_within_bounds(
    upstream: respx.MockRouter, headers: dict[str, str], next_refresh: float
) -> None:
    """max-age (less Age) or Expires choose the next refresh, clamped to [min_every, max_every]."""
    upstream.get(URL).respond(json=1, headers=headers)
    refresher = Refresher("names", freshness_source(), every="2m", jitter=0)
    async with running(refresher) as handle:
        assert status_of(handle)["next_refresh_at"] == at(next_refresh)


async def test_caching_headers_are_ignored_unless_opted_in(upstream: respx.MockRouter) -> None:
    """Without min_every/max_every, ``every`` rules whatever the server says."""
    upstream.get(URL).respond(json=1, headers={"Cache-Control": "max-age=5"})
    async with running(Refresher("names", HTTPSource(URL), every="2m", jitter=0)) as handle:
        assert status_of(handle)["next_refresh_at"] == at(120)


async def test_a_304_also_carries_freshness(upstream: respx.MockRouter) -> None:
    """The caching headers of a 304 set the next refresh too."""
    route = upstream.get(URL)
    route.side_effect = [
        httpx.Response(200, json=1, headers={"ETag": '"a"'}),
        httpx.Response(304, headers={"Cache-Control": "max-age=600"}),
    ]
    clock = FakeClock(START)
    async with running(Refresher("names", freshness_source(), every="2m", jitter=0), clock=clock) as handle:
        await clock.advance("2m")
        assert status_of(handle)["next_refresh_at"] == at(720)


@pytest.mark.parametrize("code", [429, 503])
@pytest.mark.parametrize("form", ["seconds", "date"])
async def test_retry_after_delays_the_next_attempt(upstream: respx.MockRouter, code: int, form: str) -> None:
    """429/503 with Retry-After (seconds or an HTTP date) wait that long, not the backoff."""
    clock = FakeClock(START)
    retry_after = "300" if form == "seconds" else format_datetime(datetime_after(600 + 300), usegmt=True)
    route = upstream.get(URL)
    route.side_effect = [
        httpx.Response(200, json=1),
        httpx.Response(code, headers={"Retry-After": retry_after}),
        httpx.Response(200, json=2),
    ]
    refresher = Refresher("names", HTTPSource(URL), every="10m", jitter=0, backoff_initial="1s")
    async with running(refresher, clock=clock) as handle:
        await clock.advance("10m")  # the scheduled refresh is refused
        status = status_of(handle)
        assert status["last_error"].startswith(f"SourceError: HTTP {code} ")
        assert status["next_refresh_at"] == at(600 + 300)
        await clock.advance(299)
        assert route.call_count == 2, "nothing before Retry-After"
        await clock.advance(1)
        assert route.call_count == 3
        assert handle.value("names") == 2


async def test_retry_after_is_bounded(upstream: respx.MockRouter) -> None:
    """A Retry-After of a week is honoured for an hour at most."""
    route = upstream.get(URL)
    route.side_effect = [httpx.Response(200, json=1), httpx.Response(429, headers={"Retry-After": "604800"})]
    clock = FakeClock(START)
    async with running(Refresher("names", HTTPSource(URL), every="10m", jitter=0), clock=clock) as handle:
        await clock.advance("10m")
        assert status_of(handle)["next_refresh_at"] == at(600 + 3600)


async def test_an_unreadable_retry_after_falls_back_to_backoff(upstream: respx.MockRouter) -> None:
    """A Retry-After that is neither seconds nor a date is ignored."""
    route = upstream.get(URL)
    route.side_effect = [httpx.Response(200, json=1), httpx.Response(503, headers={"Retry-After": "soon"})]
    clock = FakeClock(START)
    refresher = Refresher("names", HTTPSource(URL), every="10m", jitter=0, backoff_initial="5s")
    async with running(refresher, clock=clock) as handle:
        await clock.advance("10m")
        assert status_of(handle)["next_refresh_at"] == at(605)


# -- failures and secrets -------------------------------------------------------------

SECRET_URL = "https://user:PASSWORD@api.example.com/names?api_key=QUERYSECRET"


@pytest.mark.parametrize(
    ("mock", "message"),
    [
        ({"return_value": httpx.Response(500)}, "SourceError: HTTP 500 Internal Server Error from GET https://api.example.com/names"),
        ({"return_value": httpx.Response(404)}, "SourceError: HTTP 404 Not Found from GET https://api.example.com/names"),
        ({"return_value": httpx.Response(200, content=b"<html>")}, "SourceError: GET https://api.example.com/names: invalid json: JSONDecodeError: Expecting value: line 1 column 1 (char 0)"),
        ({"side_effect": httpx.ConnectError("[Errno 111] Connection refused")}, "SourceError: GET https://api.example.com/names: ConnectError: [Errno 111] Connection refused"),
        ({"side_effect": httpx.ReadTimeout("timed out")}, "SourceError: GET https://api.example.com/names: timed out (ReadTimeout)"),
        ({"side_effect": httpx.ConnectError(f"cannot reach {SECRET_URL}")}, "SourceError: GET https://api.example.com/names: ConnectError: cannot reach https://api.example.com/names…"),
    ],
)  # fmt: skip
async def test_each_failure_is_a_clear_error_without_secrets(
    upstream: respx.MockRouter, caplog: pytest.LogCaptureFixture, mock: dict[str, Any], message: str
) -> None:
    """Status code or cause, URL without credentials or query; the last value stays; no secret leaks."""
    route = upstream.get(url__startswith="https://api.example.com/names")
    route.respond(json=["good"])
    source = HTTPSource(
        SECRET_URL,
        headers={"Authorization": "Bearer HEADERSECRET"},
        params={"token": "PARAMSECRET"},
        auth=("user", "AUTHSECRET"),
    )
    with caplog.at_level(logging.DEBUG, logger="asgi_refresh"):
        async with running(Refresher("names", source, every="1m")) as handle:
            route.mock(**mock)
            with pytest.raises(RefreshError) as raised:
                await handle.refresh("names")
            assert handle.value("names") == ["good"]
            status = status_of(handle)
    assert status["last_error"] == message
    assert message in caplog.text
    leaked = json.dumps(status) + caplog.text + str(raised.value) + repr(source)
    for secret in ("PASSWORD", "QUERYSECRET", "HEADERSECRET", "PARAMSECRET", "AUTHSECRET", "api_key"):
        assert secret not in leaked


# httpx's streams are nested async generators; leaving one early makes trio warn as
# they are collected (encode/httpx#3686). Harmless, and not ours to fix.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_the_body_is_capped_while_streaming(upstream: respx.MockRouter) -> None:
    """An endless body fails as soon as it passes max_bytes, without reading the rest."""

    class Endless(httpx.AsyncByteStream):
        sent = 0

        def __aiter__(self) -> Endless:
            return self

        async def __anext__(self) -> bytes:
            self.sent += 1024
            return b"x" * 1024

    endless = Endless()
    route = upstream.get(URL)
    route.side_effect = [httpx.Response(200, json=["small"]), httpx.Response(200, stream=endless)]
    async with running(Refresher("names", HTTPSource(URL, max_bytes=10_000), every="1m")) as handle:
        with pytest.raises(RefreshError, match=r"response body exceeds max_bytes \(10000 bytes"):
            await handle.refresh("names")
        assert handle.value("names") == ["small"]
    assert endless.sent <= 11 * 1024


async def test_a_declared_length_over_the_cap_fails_before_reading(upstream: respx.MockRouter) -> None:
    """A Content-Length past max_bytes fails without reading the body."""
    upstream.get(URL).respond(content=b"[" + b"1," * 100 + b"1]", headers={"Content-Length": "203"})
    message = await startup_failure(Refresher("names", HTTPSource(URL, max_bytes=100), every="1m"))
    assert "Content-Length is 203 bytes" in message


# -- lifetime of the client -----------------------------------------------------------


async def test_sources_of_one_middleware_share_one_client_closed_at_shutdown(
    upstream: respx.MockRouter,
) -> None:
    """One httpx.AsyncClient per middleware, opened at startup and closed at shutdown."""
    upstream.get(URL).respond(json=1)
    upstream.get("https://api.example.com/other").respond(json=2)
    first, second = HTTPSource(URL), HTTPSource("https://api.example.com/other")
    async with running(Refresher("names", first, every="1h"), Refresher("other", second, every="1h")):
        client = first._open_client
        assert client is not None
        assert client is second._open_client
        assert not client.is_closed
    assert client.is_closed
    assert first._open_client is None


async def test_a_client_of_your_own_is_used_and_never_closed(upstream: respx.MockRouter) -> None:
    """``client=`` is used for the requests and left open at shutdown."""
    route = upstream.get(URL).respond(json=1)
    async with httpx.AsyncClient(headers={"X-Mine": "yes"}) as client:
        async with running(Refresher("names", HTTPSource(URL, client=client), every="1h")):
            pass
        assert not client.is_closed
    assert route.calls.last.request.headers["X-Mine"] == "yes"


async def test_a_source_can_be_used_by_hand(upstream: respx.MockRouter) -> None:
    """``async with source: await source()`` works outside a middleware, with its own client."""
    upstream.get(URL).respond(json=[1])
    source = HTTPSource(URL)
    async with source:
        fetched = await source()
        client = source._open_client
    assert fetched.value == [1]
    assert client is not None
    assert client.is_closed


async def test_a_source_that_is_not_open_says_so() -> None:
    """Calling a source that nobody entered is a clear error."""
    with pytest.raises(RuntimeError, match="is not open: use it as the fetch of a Refresher"):
        await HTTPSource(URL)()


async def test_one_source_in_two_refreshers_fails_startup(upstream: respx.MockRouter) -> None:
    """A source serves one refresher: sharing one fails startup, naming the refresher."""
    upstream.get(URL).respond(json=1)
    source = HTTPSource(URL)
    message = await startup_failure(Refresher("a", source, every="1h"), Refresher("b", source, every="1h"))
    assert re.match(r"Refresher '[ab]' could not load within startup_timeout \(10s\): ", message)
    assert "SourceError: could not open its source: RuntimeError: HTTPSource(" in message
    assert "already open: a source serves one refresher" in message


async def test_a_token_endpoint_parse_can_return_fresh(upstream: respx.MockRouter) -> None:
    """A parse callable returning Fresh schedules the renewal before expiry, validated inside."""
    upstream.post("https://auth.example.com/token").respond(json={"access_token": "t1", "expires_in": 300})
    source = HTTPSource(
        "https://auth.example.com/token",
        method="POST",
        parse=lambda body: Fresh(json.loads(body)["access_token"], expires_in=json.loads(body)["expires_in"]),
        validate=str.upper,
    )
    async with running(Refresher("token", source, every="1h", jitter=0)) as handle:
        assert handle.value("token") == "T1"
        assert status_of(handle, "token")["next_refresh_at"] == at(270)


# -- arguments ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"url": "ftp://example.com/x"}, ValueError, "absolute http:// or https:// URL"),
        ({"url": "/relative"}, ValueError, "absolute http:// or https:// URL"),
        ({"url": "https://u:PW@example.com/x?k=1", "method": "GET /"}, ValueError, "method must be an HTTP method"),
        ({"max_bytes": 0}, ValueError, "max_bytes must be a positive number"),
        ({"max_bytes": True}, ValueError, "max_bytes must be a positive number"),
        ({"min_every": "1m"}, ValueError, "set both min_every and max_every"),
        ({"min_every": "1h", "max_every": "1m"}, ValueError, r"min_every \(1h\) must not exceed max_every \(1m\)"),
        ({"min_every": "soon", "max_every": "1m"}, ValueError, "min_every: expected a duration"),
        ({"timeout": -1}, ValueError, "timeout must be > 0"),
        ({"parse": "yaml"}, ValueError, "parse must be one of 'json', 'toml', 'text', 'bytes' or a callable"),
        ({"validate": "strict"}, TypeError, "validate must be a callable"),
        ({"client": object()}, TypeError, "client must be an httpx.AsyncClient"),
        ({"url": 5}, ValueError, "url is not a valid URL"),
    ],
)  # fmt: skip
def test_bad_arguments_are_clear_errors(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    """Every bad argument fails at construction, naming the source (without its secrets)."""
    kwargs = {"url": "https://example.com/x", **kwargs}
    with pytest.raises(error, match=message) as raised:
        HTTPSource(**kwargs)
    assert "PW" not in str(raised.value)


async def test_the_same_body_again_is_not_parsed_again(upstream: respx.MockRouter) -> None:
    """A server without validators sending identical bytes: no parse, nothing new published."""
    upstream.get(URL).respond(json=["a"])
    parsed: list[bytes] = []

    def parse(body: bytes) -> Any:
        parsed.append(body)
        return json.loads(body)

    async with running(Refresher("names", HTTPSource(URL, parse=parse), every="1m")) as handle:
        first = handle.value("names")
        assert await handle.refresh("names") is first
        assert handle.status()["names"]["last_outcome"] == "not_modified"
    assert len(parsed) == 1


async def test_the_same_token_body_keeps_its_expiry(upstream: respx.MockRouter) -> None:
    """An identical grant is a new lifetime from now; a 304 keeps what is left of the old one."""
    route = upstream.post("https://auth.example.com/token")
    grant = httpx.Response(200, json={"access_token": "t", "expires_in": 300}, headers={"ETag": '"g"'})
    route.side_effect = [grant, grant, httpx.Response(304)]
    source = HTTPSource(
        "https://auth.example.com/token",
        method="POST",
        parse=lambda body: Fresh(json.loads(body)["access_token"], expires_in=json.loads(body)["expires_in"]),
    )
    clock = FakeClock(START)
    async with running(Refresher("token", source, every="1h", jitter=0), clock=clock) as handle:
        await clock.advance(270)
        assert status_of(handle, "token")["next_refresh_at"] == at(540)
        await clock.advance(270)
        assert handle.value("token") == "t"
        # 30 s of the grant left at the 304, all of it leeway: renewed at once (the 1 s floor).
        assert status_of(handle, "token")["next_refresh_at"] == at(541)
        assert status_of(handle, "token")["expires_at"] == at(570)


async def test_httpx_own_request_log_shows_no_query_string(
    upstream: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    """Httpx logs each request's URL at INFO; for our sources it loses query and credentials."""
    upstream.get(url__startswith="https://api.example.com/").respond(json=1)
    with caplog.at_level(logging.INFO):
        async with (
            running(Refresher("names", HTTPSource(SECRET_URL, params={"t": "PARAMSECRET"}), every="1h")),
            httpx.AsyncClient() as theirs,
        ):  # not ours: left alone
            await theirs.get("https://api.example.com/other?mine=VISIBLE")
    lines = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert any(line.startswith("HTTP Request: GET https://api.example.com/names?… ") for line in lines), lines
    assert any("mine=VISIBLE" in line for line in lines)
    for secret in ("PASSWORD", "QUERYSECRET", "PARAMSECRET"):
        assert secret not in caplog.text


# -- review: URLs, methods, redirects, timeouts ----------------------------------------


async def test_the_urls_query_and_params_both_reach_the_server(upstream: respx.MockRouter) -> None:
    """A query in the URL is kept, and params are added to it, not put in its place."""
    route = upstream.get(url__startswith="https://api.example.com/names").respond(json=1)
    source = HTTPSource(f"{URL}?api_key=K&v=2", params={"limit": 10})
    async with running(Refresher("names", source, every="1h")):
        pass
    assert route.calls.last.request.url == httpx.URL(f"{URL}?api_key=K&v=2&limit=10")


async def test_a_post_never_sends_validators(upstream: respx.MockRouter) -> None:
    """If-None-Match on a POST is a precondition (412), not a cache check: only reads send it."""
    route = upstream.post(URL)
    route.side_effect = [httpx.Response(200, json=1, headers={"ETag": '"a"'}), httpx.Response(200, json=2)]
    async with running(Refresher("names", HTTPSource(URL, method="POST"), every="1h")) as handle:
        assert await handle.refresh("names") == 2
    assert "If-None-Match" not in route.calls.last.request.headers


async def test_redirects_are_followed_within_the_origin_only(upstream: respx.MockRouter) -> None:
    """A same-origin redirect is followed; one to another origin is refused, headers kept home."""
    upstream.get(URL).respond(301, headers={"Location": "/v2/names"})
    upstream.get("https://api.example.com/v2/names").respond(json=["moved"])
    elsewhere = upstream.get("http://other.example.net/names").respond(json=["stolen"])
    upstream.get("https://api.example.com/away").respond(
        302, headers={"Location": "http://other.example.net/names"}
    )
    source = HTTPSource(URL, headers={"X-Api-Key": "KEYSECRET"})
    away = HTTPSource("https://api.example.com/away", headers={"X-Api-Key": "KEYSECRET"})
    refreshers = [Refresher("names", source, every="1h"), Refresher("away", away, every="1h", required=False)]
    async with running(*refreshers) as handle:
        assert handle.value("names") == ["moved"]
        error = handle.status()["away"]["last_error"] or ""
    assert error.startswith(
        "SourceError: GET https://api.example.com/away: redirected to another origin (http://other.example.net/names); not followed"
    )
    assert not elsewhere.called


async def test_timeouts_default_to_the_clients_own(upstream: respx.MockRouter) -> None:
    """The shared client times out after 10 s; your client keeps its timeout unless you pass one."""
    route = upstream.get(URL).respond(json=1)
    async with running(Refresher("names", HTTPSource(URL), every="1h")):
        assert route.calls.last.request.extensions["timeout"] == httpx.Timeout(10.0).as_dict()
    async with httpx.AsyncClient(timeout=httpx.Timeout(60, connect=2)) as client:
        async with running(Refresher("names", HTTPSource(URL, client=client), every="1h")):
            assert route.calls.last.request.extensions["timeout"] == httpx.Timeout(60, connect=2).as_dict()
        async with running(Refresher("names", HTTPSource(URL, client=client, timeout=3), every="1h")):
            assert route.calls.last.request.extensions["timeout"] == httpx.Timeout(3).as_dict()


async def test_an_error_that_would_quote_a_header_is_not_shown(upstream: respx.MockRouter) -> None:
    """Httpx's LocalProtocolError quotes the header it refused: only its kind is reported."""
    route = upstream.get(URL)
    route.side_effect = [
        httpx.Response(200, json=1),
        httpx.LocalProtocolError("Illegal header value b'HEADERSECRET'"),
    ]
    async with running(Refresher("names", HTTPSource(URL), every="1h")) as handle:
        with pytest.raises(RefreshError) as raised:
            await handle.refresh("names")
        assert "HEADERSECRET" not in json.dumps(handle.status())
    assert "HEADERSECRET" not in str(raised.value)
    assert "LocalProtocolError: httpx refused to send the request" in str(raised.value)


def test_header_values_and_bodies_are_checked_up_front() -> None:
    """A header value with a newline (a token read from a file) or two bodies fail at once."""
    with pytest.raises(
        ValueError, match="the value of header 'Authorization' must be a string without"
    ) as raised:
        HTTPSource(URL, headers={"Authorization": "Bearer SECRET\n"})
    assert "SECRET" not in str(raised.value)
    with pytest.raises(ValueError, match=r"pass a form body \(data=\) or a JSON body \(json=\), not both"):
        HTTPSource(URL, data={"a": "1"}, json={"b": 2})


async def test_an_asctime_expires_is_read_as_gmt(
    upstream: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Old-style dates without a zone are GMT, whatever the machine's time zone."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        expires = time.asctime(time.gmtime(datetime_after(900).timestamp()))
        upstream.get(URL).respond(json=1, headers={"Expires": expires})
        async with running(Refresher("names", freshness_source(), every="2m", jitter=0)) as handle:
            assert status_of(handle)["next_refresh_at"] == at(900)
    finally:
        monkeypatch.undo()
        time.tzset()


# -- BearerToken ------------------------------------------------------------------------


async def test_bearer_token_sends_the_other_refreshers_current_value(upstream: respx.MockRouter) -> None:
    """auth=BearerToken("token") waits for the token at startup and sends the current one."""
    tokens = upstream.post("https://auth.example.com/token")
    tokens.side_effect = [httpx.Response(200, json="t1"), httpx.Response(200, json="t2")]
    orders = upstream.get(URL).respond(json=[])
    refreshers = [
        Refresher("token", HTTPSource("https://auth.example.com/token", method="POST"), every="1h"),
        Refresher("names", HTTPSource(URL, auth=BearerToken("token")), every="1h"),
    ]
    async with running(*refreshers) as handle:
        assert orders.calls.last.request.headers["Authorization"] == "Bearer t1"
        await handle.refresh("token")
        await handle.refresh("names")
        assert orders.calls.last.request.headers["Authorization"] == "Bearer t2"


async def test_bearer_token_needs_a_running_middleware() -> None:
    """Entered by hand there is no other refresher to read: a clear error; bad names fail early."""
    source = HTTPSource(URL, auth=BearerToken("token"))
    for _ in range(2):  # a failed open leaves the source closed, so it can be retried
        with pytest.raises(RuntimeError, match=r"BearerToken\('token'\) reads another refresher's value"):
            async with source:
                pass  # pragma: no cover
    with pytest.raises(ValueError, match="BearerToken: refresher must be a refresher name"):
        BearerToken("a token")
    bound = BearerToken("token")._bind(runtime_values())
    with pytest.raises(RuntimeError, match=r"works with httpx\.AsyncClient only"):
        next(bound.sync_auth_flow(httpx.Request("GET", URL)))


# -- hostile freshness headers: ignored, never an exception ---------------------------------

HUGE = "1" + "0" * 5000


@pytest.mark.parametrize(
    ("retry_after", "next_refresh"),
    [
        ("²", 605),  # a Unicode digit: str.isdigit() says yes, RFC 9110 says no
        ("٣", 605),
        (HUGE, 600 + 3600),  # delta-seconds too big: 2^31, then our one-hour bound
        ("-5", 605),
        ("NaN", 605),
        ("inf", 605),
        ("1e3", 605),
        ("3.5", 605),
        (" 120 ", 720),
        ("0x10", 605),
        ("", 605),
        ("Fri, 31 Dec 99999 23:59:59 GMT", 605),
        ("Mon, 01 Jan 0001 00:00:00 GMT", 605),  # a date long past: no wait asked, so the backoff
        ("Sat, 01 Jan 2030 00:15:00 GMT, Sat, 01 Jan 2030 00:20:00 GMT", 605),  # two header lines
        ("Sat, 01 Jan 2030 00:15:00 GMT garbage", 605),
        ("Sat, 31 Feb 2030 00:15:00 GMT", 605),
    ],
)
async def test_a_malformed_retry_after_leaves_the_real_error_and_backoff(
    upstream: respx.MockRouter, retry_after: str, next_refresh: int
) -> None:
    """Whatever the Retry-After, the 503 is reported as such; an unreadable one means our own backoff."""
    route = upstream.get(URL)
    route.side_effect = [
        httpx.Response(200, json=1),
        httpx.Response(503, headers=[(b"Retry-After", retry_after.encode())]),
    ]
    clock = FakeClock(START)
    refresher = Refresher("names", HTTPSource(URL), every="10m", jitter=0, backoff_initial="5s")
    async with running(refresher, clock=clock) as handle:
        await clock.advance("10m")
        status = status_of(handle)
        assert status["last_error"] == f"SourceError: HTTP 503 Service Unavailable from GET {URL}"
        assert status["next_refresh_at"] == at(next_refresh)
        assert handle.value("names") == 1


@pytest.mark.parametrize(
    ("headers", "next_refresh"),
    [
        ([("Cache-Control", "max-age=300"), ("Age", "²")], 300),  # a bad Age is ignored
        ([("Cache-Control", "max-age=300"), ("Age", HUGE)], 60),  # an Age past 2^31: stale
        ([("Cache-Control", "max-age=300"), ("Age", "-100")], 300),
        ([("Cache-Control", "max-age=300"), ("Age", "100"), ("Age", "100")], 300),
        ([("Cache-Control", "max-age=²")], 60),  # an invalid max-age: stale
        ([("Cache-Control", f"max-age={HUGE}")], 3600),
        ([("Cache-Control", 'max-age="300"')], 300),
        ([("Cache-Control", "max-age=300"), ("Cache-Control", "max-age=600")], 60),  # conflicting: stale
        ([("Cache-Control", 'private="a, max-age=5", max-age=300')], 300),  # a comma inside quotes
        ([("Cache-Control", "MAX-AGE=300")], 300),
        ([("Cache-Control", ",,," * 5000 + "max-age=300")], 300),
        ([("Expires", "Fri, 31 Dec 99999 23:59:59 GMT")], 60),  # an invalid Expires: already expired
        ([("Expires", "²")], 60),
        ([("Expires", format_datetime(datetime_after(900), usegmt=True)), ("Date", "garbage")], 900),
        ([("Expires", format_datetime(datetime_after(900), usegmt=True)), ("Age", "600")], 300),
    ],
)
async def test_malformed_caching_headers_never_fail_a_good_response(
    upstream: respx.MockRouter, headers: list[tuple[str, str]], next_refresh: int
) -> None:
    """A 200 with broken caching headers is published; the next refresh stays within [min_every, max_every]."""
    upstream.get(URL).respond(
        json=["good"], headers=[(name.encode(), value.encode()) for name, value in headers]
    )
    refresher = Refresher("names", freshness_source(), every="2m", jitter=0)
    async with running(refresher) as handle:
        assert handle.value("names") == ["good"]
        assert status_of(handle)["next_refresh_at"] == at(next_refresh)


async def test_a_reason_phrase_with_terminal_controls_is_escaped(upstream: respx.MockRouter) -> None:
    """An upstream's reason phrase is outside text: ANSI, C1 CSI and bidi overrides are shown, not obeyed."""
    phrase = "Down \x1b[31mRED\x9b2J\u202eevil\nInjected: line"
    upstream.get(URL).mock(return_value=httpx.Response(503, extensions={"reason_phrase": phrase.encode()}))
    message = await startup_failure(Refresher("names", HTTPSource(URL), every="1h"))
    # httpx itself drops what is not ASCII (U+009B, U+202E); the rest is escaped here.
    assert message.endswith(f"HTTP 503 Down \\x1b[31mRED2Jevil Injected: line from GET {URL}")


@pytest.mark.parametrize(
    ("location", "followed"),
    [
        ("https://api.example.com:443/v2", True),  # the default port, spelled out
        ("https://API.Example.COM/v2", True),
        ("//api.example.com/v2", True),
        ("https:/v2", True),  # no host: httpx keeps ours, and the scheme is the same
        ("http:/v2", False),  # ... but here the scheme (and port) change: a downgrade
        ("http://api.example.com/v2", False),
        ("http://api.example.com:443/v2", False),
        ("https://api.example.com:8443/v2", False),
        ("https://api.example.com@evil.example/v2", False),
        ("https://evil.example#@api.example.com/v2", False),
        ("https://xn--bcher-kva.example/v2", False),
        ("ftp://api.example.com/v2", False),
    ],
)
async def test_redirects_are_judged_by_the_url_httpx_would_request(
    upstream: respx.MockRouter, location: str, followed: bool
) -> None:
    """Scheme, host and port of the resolved redirect decide; default ports and case are the same origin."""
    upstream.get(URL).respond(302, headers={"Location": location})
    moved = upstream.get("https://api.example.com/v2").respond(json=["moved"])
    anywhere = upstream.route(url__regex=r".*/v2$").respond(json=["stolen"])
    source = HTTPSource(URL, headers={"X-Api-Key": "KEYSECRET"})
    async with source:
        if followed:
            assert (await source()).value == ["moved"]
            assert moved.calls.last.request.headers["X-Api-Key"] == "KEYSECRET"
            return
        with pytest.raises(SourceError, match=r"redirected to another origin \(.*\); not followed") as raised:
            await source()
    assert not anywhere.called
    assert "KEYSECRET" not in str(raised.value)


async def test_a_redirect_to_an_idna_host_is_the_same_origin_however_spelled(
    upstream: respx.MockRouter,
) -> None:
    """A Unicode host and its punycode are one origin."""
    upstream.get("https://xn--bcher-kva.example/a").respond(
        302, headers={"Location": "https://xn--bcher-kva.example/b"}
    )
    upstream.get("https://xn--bcher-kva.example/b").respond(json=["b"])
    source = HTTPSource("https://bücher.example/a")
    async with source:
        assert (await source()).value == ["b"]


async def test_your_own_client_follows_its_own_redirect_policy(upstream: respx.MockRouter) -> None:
    """client= is used as configured: its follow_redirects decides, not our origin check."""
    upstream.get(URL).respond(302, headers={"Location": "https://other.example/names"})
    upstream.get("https://other.example/names").respond(json=["elsewhere"])
    async with httpx.AsyncClient(follow_redirects=True) as client:
        source = HTTPSource(URL, client=client)
        async with source:
            assert (await source()).value == ["elsewhere"]


def runtime_values() -> Values:
    """A stand-in for the running middleware's handle, for a source bound outside one."""

    class Handle:
        def value(self, name: str) -> Any:
            return "token"

        async def wait_for(self, name: str) -> Any:
            return "token"

    return Handle()
