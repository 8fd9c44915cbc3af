"""The admin endpoints: status, refresh-now, readiness, authentication and the page shell."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager
from hypothesis import given
from hypothesis import strategies as st

from asgi_refresh import Fresh, Refresher, RefreshMiddleware
from asgi_refresh._admin import _cross_origin, _Headers, _not_loopback, forwarding_header
from asgi_refresh.testing import FakeClock

from .helpers import START, ScriptedApp, Upstream
from .server_process import free_port

pytestmark = pytest.mark.anyio

TOKEN = "s3cret-admin-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@asynccontextmanager
async def admin_client(
    *refreshers: Refresher,
    client: tuple[str, int] = ("203.0.113.7", 4321),
    base_url: str = "http://app.example",
    clock: FakeClock | None = None,
    **options: Any,
) -> AsyncIterator[tuple[httpx.AsyncClient, RefreshMiddleware]]:
    """A running middleware with admin endpoints, and an httpx client talking to it."""
    options.setdefault("admin_path", "/_refresh")
    if "admin_loopback_only" not in options:
        options.setdefault("admin_token", TOKEN)
    middleware = RefreshMiddleware(
        ScriptedApp(), refreshers=list(refreshers), clock=clock or FakeClock(START), **options
    )
    async with LifespanManager(middleware):
        transport = httpx.ASGITransport(app=middleware, client=client)
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as http:
            yield http, middleware


def names(*results: Any, **options: Any) -> Refresher:
    return Refresher("names", Upstream(*results) if results else Upstream(), every="1h", **options)


# -- configuration ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"admin_path": "/_refresh"}, ValueError, "admin_path is set but admin_token is not"),
        ({"admin_path": "/_refresh", "admin_token": "short"}, ValueError, "at least 16 characters"),
        ({"admin_path": "/_refresh", "admin_token": 12345}, TypeError, "admin_token must be a string"),
        ({"admin_path": "_refresh", "admin_token": TOKEN}, ValueError, "must be a path under the root"),
        ({"admin_path": "/", "admin_token": TOKEN}, ValueError, "must be a path under the root"),
        ({"admin_path": "/a/../b", "admin_token": TOKEN}, ValueError, "plain path"),
        ({"admin_token": TOKEN}, ValueError, "need admin_path"),
        ({"admin_loopback_only": True}, ValueError, "need admin_path"),
        (
            {"admin_path": "/_refresh", "admin_loopback_only": "yes"},
            TypeError,
            "admin_loopback_only must be True or False",
        ),
    ],
)
def test_bad_admin_options_are_refused_at_construction(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    """Admin endpoints never start unauthenticated by accident; bad options say what to do."""
    with pytest.raises(error, match=message):
        RefreshMiddleware(ScriptedApp(), refreshers=[names()], **options)


# -- status ----------------------------------------------------------------------------


async def test_status_lists_every_refresher_without_values() -> None:
    """GET {prefix} returns status() plus stale, required and source; never a value."""
    optional = Refresher("flags", Upstream({"beta": "top-secret-flag"}), every="5m", required=False)
    async with admin_client(names(["value-that-must-not-leak"]), optional) as (http, _):
        response = await http.get("/_refresh", headers=AUTH)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.headers["cache-control"] == "no-store"
        report = response.json()["refreshers"]
        assert list(report) == ["names", "flags"]
        assert report["names"]["source"] == "python"
        assert report["names"]["required"] is True
        assert report["flags"]["required"] is False
        assert report["names"]["stale"] is False
        assert report["names"]["refresh_count"] == 1
        assert "value-that-must-not-leak" not in response.text
        assert "top-secret-flag" not in response.text
        assert (await http.get("/_refresh/", headers=AUTH)).status_code == 200, "a trailing slash is the same"


async def test_head_answers_without_a_body() -> None:
    """HEAD on the status gives the status code and headers only."""
    async with admin_client(names()) as (http, _):
        response = await http.head("/_refresh", headers=AUTH)
        assert response.status_code == 200
        assert response.content == b""


async def test_requests_outside_the_prefix_pass_through_untouched() -> None:
    """Only the prefix and paths under it are admin: /_refreshing and / reach the app."""
    async with admin_client(names(["a"])) as (http, middleware):
        app = middleware.app
        assert isinstance(app, ScriptedApp)
        for path in ("/", "/_refreshing", "/other/_refresh"):
            response = await http.get(path)
            assert response.status_code == 200, path
            assert "['a']" in response.text
        assert len(app.request_states) == 3


async def test_admin_paths_under_the_prefix_are_served_by_the_middleware_only() -> None:
    """The wrapped app never sees an admin request, even one for an unknown path."""
    async with admin_client(names()) as (http, middleware):
        assert (await http.get("/_refresh/names/extra", headers=AUTH)).status_code == 404
        assert isinstance(middleware.app, ScriptedApp)
        assert middleware.app.request_states == []


# -- authentication --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "challenge"),
    [
        ({}, 'Bearer realm="asgi_refresh"'),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, 'Bearer realm="asgi_refresh"'),
        ({"Authorization": "Bearer "}, 'Bearer realm="asgi_refresh"'),
        (
            {"Authorization": "Bearer wrong-token-of-some-length"},
            'Bearer realm="asgi_refresh", error="invalid_token"',
        ),
        ({"Authorization": f"Bearer {TOKEN}x"}, 'Bearer realm="asgi_refresh", error="invalid_token"'),
    ],
)
async def test_missing_or_wrong_token_is_401_with_a_challenge(
    headers: dict[str, str], challenge: str
) -> None:
    """No token, another scheme or a wrong token: 401 with WWW-Authenticate, for every endpoint."""
    async with admin_client(names()) as (http, _):
        for method, path in (("GET", "/_refresh"), ("POST", "/_refresh/names"), ("POST", "/_refresh/nope")):
            response = await http.request(method, path, headers=headers)
            assert response.status_code == 401, (method, path)
            assert response.headers["www-authenticate"] == challenge
            assert TOKEN not in response.text


async def test_the_bearer_scheme_is_case_insensitive() -> None:
    """'bearer' works like 'Bearer' (RFC 7235: schemes are case-insensitive)."""
    async with admin_client(names()) as (http, _):
        assert (await http.get("/_refresh", headers={"Authorization": f"bearer {TOKEN}"})).status_code == 200


async def test_a_callable_checks_the_token() -> None:
    """admin_token may be a function given the presented token; sync or async."""
    seen: list[str] = []

    async def check(token: str) -> bool:
        seen.append(token)
        return token in {"rotated-token-one", "rotated-token-two"}

    async with admin_client(names(), admin_token=check) as (http, _):
        ok = await http.get("/_refresh", headers={"Authorization": "Bearer rotated-token-two"})
        assert ok.status_code == 200
        bad = await http.get("/_refresh", headers={"Authorization": "Bearer rotated-token-three"})
        assert bad.status_code == 401
    assert seen == ["rotated-token-two", "rotated-token-three"]
    async with admin_client(names(), admin_token=lambda token: token == "plain") as (http, _):
        assert (await http.get("/_refresh", headers={"Authorization": "Bearer plain"})).status_code == 200


@pytest.mark.parametrize("error", [RuntimeError, SystemExit, KeyboardInterrupt])
async def test_a_token_check_that_raises_refuses_and_logs(
    error: type[BaseException], caplog: pytest.LogCaptureFixture
) -> None:
    """A broken check (whatever it raises) fails closed: 500, logged with its traceback, nothing served."""

    def check(token: str) -> bool:
        raise error("secret store unreachable")

    async with admin_client(names(), admin_token=check) as (http, _):
        response = await http.get("/_refresh", headers=AUTH)
        assert response.status_code == 500
        assert "refreshers" not in response.json()
    assert "admin_token check raised" in caplog.text
    assert "secret store unreachable" in caplog.text


@pytest.mark.parametrize(
    ("client", "base_url", "expected"),
    [
        (("127.0.0.1", 5000), "http://127.0.0.1:8000", 200),
        (("127.0.0.1", 5000), "http://localhost:8000", 200),
        (("::1", 5000), "http://[::1]:8000", 200),
        (("10.0.0.5", 5000), "http://127.0.0.1:8000", 403),
        (("192.0.2.1", 5000), "http://app.example", 403),
        (("127.0.0.1", 5000), "http://app.example", 403),  # a proxy on this host, or DNS rebinding
        (("unix-socket", 0), "http://127.0.0.1", 403),
    ],
)
async def test_loopback_only_serves_local_requests_without_a_token(
    client: tuple[str, int], base_url: str, expected: int
) -> None:
    """admin_loopback_only: 127.0.0.1 / ::1 with a loopback Host are served, everyone else gets 403."""
    async with admin_client(names(), admin_loopback_only=True, client=client, base_url=base_url) as (http, _):
        assert (await http.get("/_refresh")).status_code == expected
        assert (await http.post("/_refresh/names")).status_code == (202 if expected == 200 else 403)


async def test_loopback_only_with_a_token_needs_both() -> None:
    """With a token as well, a local request still has to present it."""
    async with admin_client(
        names(),
        admin_loopback_only=True,
        admin_token=TOKEN,
        client=("127.0.0.1", 1),
        base_url="http://127.0.0.1",
    ) as (http, _):
        assert (await http.get("/_refresh")).status_code == 401
        assert (await http.get("/_refresh", headers=AUTH)).status_code == 200


async def test_a_request_without_client_address_is_not_loopback() -> None:
    """A server that gives no client address is not trusted as local."""
    middleware = RefreshMiddleware(
        ScriptedApp(),
        refreshers=[names()],
        clock=FakeClock(START),
        admin_path="/_refresh",
        admin_loopback_only=True,
    )
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/_refresh", "headers": [(b"host", b"127.0.0.1")]}
    async with LifespanManager(middleware):
        await middleware(scope, receive, send)
    assert sent[0]["status"] == 403


async def test_cross_origin_posts_are_refused() -> None:
    """A web page of another origin cannot trigger refreshes (a form post to localhost)."""
    async with admin_client(
        names(), admin_loopback_only=True, client=("127.0.0.1", 1), base_url="http://127.0.0.1:8000"
    ) as (http, _):
        evil = await http.post("/_refresh/names", headers={"Origin": "http://evil.example"})
        assert evil.status_code == 403
        cross_site = await http.post(
            "/_refresh/names", headers={"Origin": "http://127.0.0.1:8000", "Sec-Fetch-Site": "cross-site"}
        )
        assert cross_site.status_code == 403
        same = await http.post(
            "/_refresh/names", headers={"Origin": "http://127.0.0.1:8000", "Sec-Fetch-Site": "same-origin"}
        )
        assert same.status_code == 202


# -- refresh now -----------------------------------------------------------------------


async def test_post_with_wait_refreshes_and_returns_the_new_status() -> None:
    """POST {prefix}/{name}?wait=true: 200 with the refresher's status after the fetch."""
    upstream = Upstream(["a"], ["a", "b"])
    async with admin_client(Refresher("names", upstream, every="1h")) as (http, _):
        response = await http.post("/_refresh/names?wait=true", headers=AUTH)
        assert response.status_code == 200
        body = response.json()
        assert body["name"] == "names"
        assert body["status"]["refresh_count"] == 2
        assert body["status"]["last_outcome"] == "changed"
        assert "['a', 'b']" in (await http.get("/")).text
        assert upstream.calls == 2


async def test_post_with_wait_reports_a_failed_fetch_as_502_and_keeps_the_value() -> None:
    """A failed refresh-now: 502 with the error; the last good value stays published."""
    upstream = Upstream(["a"], OSError("upstream is down"))
    async with admin_client(Refresher("names", upstream, every="1h")) as (http, _):
        response = await http.post("/_refresh/names?wait=1", headers=AUTH)
        assert response.status_code == 502
        assert response.json()["error"] == "OSError: upstream is down"
        assert response.json()["status"]["consecutive_failures"] == 1
        assert "['a']" in (await http.get("/")).text


async def test_post_without_wait_is_accepted_and_refreshes_in_the_background() -> None:
    """POST without wait answers 202 at once; the fetch then runs."""
    release = anyio.Event()
    calls = 0

    async def fetch() -> int:
        nonlocal calls
        calls += 1
        if calls > 1:
            await release.wait()
        return calls

    async with admin_client(Refresher("names", fetch, every="1h")) as (http, middleware):
        response = await http.post("/_refresh/names", headers=AUTH)
        assert response.status_code == 202
        assert response.json() == {"name": "names", "refreshing": True}
        await anyio.wait_all_tasks_blocked()
        assert calls == 2, "the fetch started"
        release.set()
        await anyio.wait_all_tasks_blocked()
        assert middleware.handle.value("names") == 2


async def test_a_burst_of_50_posts_runs_one_fetch_at_a_time() -> None:
    """Single-flight: 50 concurrent POSTs (with and without wait) share one fetch."""
    release = anyio.Event()
    running = most = calls = 0

    async def fetch() -> int:
        nonlocal running, most, calls
        calls += 1
        running += 1
        most = max(most, running)
        if calls > 1:
            await release.wait()
        running -= 1
        return calls

    async with admin_client(Refresher("names", fetch, every="1h")) as (http, _):
        statuses: list[int] = []

        async def post(wait: bool) -> None:
            response = await http.post(f"/_refresh/names?wait={'true' if wait else 'false'}", headers=AUTH)
            statuses.append(response.status_code)

        async with anyio.create_task_group() as tg:
            for index in range(50):
                tg.start_soon(post, index % 2 == 0)
            await anyio.wait_all_tasks_blocked()
            assert calls == 2, "one fetch for the whole burst (plus the startup load)"
            release.set()
        assert sorted(statuses) == [200] * 25 + [202] * 25
        assert most == 1
        assert calls == 2


async def test_refresh_errors_unknown_names_and_methods() -> None:
    """Unknown name 404, GET a name for its status, wrong method 405 with Allow, bad wait 400, nested path 404."""
    async with admin_client(names()) as (http, _):
        unknown = await http.post("/_refresh/nope", headers=AUTH)
        assert unknown.status_code == 404
        assert unknown.json() == {"error": "no refresher named 'nope'"}
        get_name = await http.get("/_refresh/names", headers=AUTH)
        assert get_name.status_code == 200
        assert get_name.json()["name"] == "names"
        assert get_name.json()["status"]["refresh_count"] == 1
        put_name = await http.put("/_refresh/names", headers=AUTH)
        assert put_name.status_code == 405
        assert put_name.headers["allow"] == "GET, HEAD, POST"
        delete = await http.delete("/_refresh", headers=AUTH)
        assert delete.status_code == 405
        assert delete.headers["allow"] == "GET, HEAD"
        post_health = await http.post("/_refresh/health", headers=AUTH)
        assert post_health.status_code == 405
        assert (await http.post("/_refresh/names?wait=maybe", headers=AUTH)).status_code == 400
        assert (await http.get("/_refresh/names/deeper", headers=AUTH)).status_code == 404


async def test_a_refresher_named_health_is_refreshed_by_post() -> None:
    """GET {prefix}/health is readiness; POST refreshes a refresher that happens to be named health."""
    upstream = Upstream()
    async with admin_client(Refresher("health", upstream, every="1h")) as (http, _):
        assert (await http.get("/_refresh/health")).json() == {"status": "ok"}
        assert (await http.post("/_refresh/health?wait=true", headers=AUTH)).status_code == 200
        assert upstream.calls == 2


# -- readiness -------------------------------------------------------------------------


async def test_health_goes_stale_and_fresh_again_with_the_clock() -> None:
    """max_stale: 200 while the value is young enough, 503 with names and ages once it is not."""
    clock = FakeClock(START)
    upstream = Upstream("v1", OSError("down"), OSError("down"), OSError("down"), "v2")
    refresher = Refresher(
        "names", upstream, every="1m", max_stale="150s", jitter=0, backoff_initial="1m", backoff_max="1m"
    )
    optional = Refresher("extra", Upstream(OSError("never")), every="1m", required=False, max_stale="1m")
    async with admin_client(refresher, optional, clock=clock) as (http, _):
        healthy = await http.get("/_refresh/health")
        assert (healthy.status_code, healthy.json()) == (200, {"status": "ok"})
        await clock.advance(120)  # t=120: two failed refreshes, the value is 120 s old
        assert (await http.get("/_refresh/health")).status_code == 200
        await clock.advance(60)  # t=180: three failures, 180 s old > max_stale 150 s
        stale = await http.get("/_refresh/health")
        assert stale.status_code == 503
        assert stale.json() == {
            "status": "unavailable",
            "failing": [
                {
                    "name": "names",
                    "reason": "stale",
                    "age": 180.0,
                    "max_stale": 150.0,
                }
            ],
        }
        report = (await http.get("/_refresh", headers=AUTH)).json()["refreshers"]
        assert report["names"]["stale"] is True
        assert report["extra"]["stale"] is True, "an optional refresher shows stale but does not fail health"
        await clock.advance(60)  # t=240: the refresh succeeds
        assert (await http.get("/_refresh/health")).status_code == 200
        assert (await http.get("/_refresh", headers=AUTH)).json()["refreshers"]["names"]["stale"] is False


async def test_health_needs_no_token_and_ignores_loopback_only() -> None:
    """Readiness probes (kubelet) carry no token and come from the node: health answers them."""
    async with admin_client(names()) as (http, _):
        assert (await http.get("/_refresh/health")).status_code == 200
        assert (await http.head("/_refresh/health")).status_code == 200
    async with admin_client(names(), admin_loopback_only=True, client=("10.1.2.3", 1)) as (http, _):
        assert (await http.get("/_refresh/health")).status_code == 200
        assert (await http.get("/_refresh")).status_code == 403


async def test_without_a_running_lifespan_the_endpoints_answer_503() -> None:
    """Before startup or after shutdown: 503, not a crash."""
    middleware = RefreshMiddleware(
        ScriptedApp(), refreshers=[names()], admin_path="/_refresh", admin_token=TOKEN
    )
    transport = httpx.ASGITransport(app=middleware)
    async with httpx.AsyncClient(transport=transport, base_url="http://app.example") as http:
        health = await http.get("/_refresh/health")
        assert health.status_code == 503
        assert health.json()["status"] == "unavailable"
        status = await http.get("/_refresh", headers=AUTH)
        assert status.status_code == 503
        assert "not running" in status.json()["error"]


def test_max_stale_must_leave_room_for_one_interval() -> None:
    """A max_stale shorter than every would make a healthy refresher stale: refused."""
    with pytest.raises(ValueError, match=r"Refresher 'names': max_stale must be at least every \(1h\)"):
        Refresher("names", Upstream(), every="1h", max_stale="30m")
    with pytest.raises(ValueError, match="max_stale must be > 0"):
        Refresher("names", Upstream(), every="1h", max_stale=-1)
    assert Refresher("names", Upstream(), every="1m", max_stale="5m").max_stale == 300.0


# -- the page shell --------------------------------------------------------------------


async def test_a_browser_gets_the_status_page_without_data() -> None:
    """Accept: text/html gets the static page, with a strict CSP; it carries no values or token."""
    async with admin_client(names(["value-that-must-not-leak"])) as (http, _):
        response = await http.get(
            "/_refresh", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
        )
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        policy = response.headers["content-security-policy"]
        assert "default-src 'none'" in policy
        assert "script-src 'sha256-" in policy
        assert "<table>" in response.text
        assert "value-that-must-not-leak" not in response.text
        assert "names" not in response.text
        json_reply = await http.get("/_refresh", headers={"Accept": "application/json"})
        assert json_reply.status_code == 401, "without the token, the data is refused"


async def test_admin_requests_are_not_logged_as_failures(caplog: pytest.LogCaptureFixture) -> None:
    """Serving admin requests writes no warnings."""
    caplog.set_level(logging.WARNING, logger="asgi_refresh")
    async with admin_client(names()) as (http, _):
        await http.get("/_refresh", headers=AUTH)
        await http.get("/_refresh/health")
    assert caplog.records == []


# -- edges found in review ---------------------------------------------------------------


async def test_open_health_shows_no_error_text() -> None:
    """An error line may quote a URL with a key in it: health (no token) never shows it."""
    clock = FakeClock(START)
    upstream = Upstream("v", OSError("GET https://api.example.com/names?api_key=SUPERSECRET failed"))
    refresher = Refresher("names", upstream, every="1m", max_stale="1m", jitter=0, backoff_initial="1m")
    async with admin_client(refresher, clock=clock) as (http, _):
        await clock.advance(120)
        health = await http.get("/_refresh/health")
        assert health.status_code == 503
        assert "SUPERSECRET" not in health.text
        assert set(health.json()["failing"][0]) == {"name", "reason", "age", "max_stale"}


async def test_an_expired_value_fails_readiness() -> None:
    """A Fresh value past its expiry (a token that could not be renewed) is 'expired', stale."""
    clock = FakeClock(START)
    upstream = Upstream(Fresh("token", expires_in=60, leeway=10), OSError("auth server down"))
    async with admin_client(Refresher("token", upstream, every="1h", jitter=0), clock=clock) as (http, _):
        assert (await http.get("/_refresh/health")).status_code == 200
        await clock.advance(61)
        health = await http.get("/_refresh/health")
        assert health.status_code == 503
        assert health.json()["failing"][0]["reason"] == "expired"
        assert (await http.get("/_refresh", headers=AUTH)).json()["refreshers"]["token"]["stale"] is True


@pytest.mark.parametrize("header", ["X-Forwarded-For", "Forwarded", "X-Forwarded-Host", "X-Real-IP"])
async def test_loopback_only_refuses_requests_relayed_by_a_local_proxy(header: str) -> None:
    """Nginx on the same host sends Host: 127.0.0.1:port by default; its forwarding headers give it away."""
    async with admin_client(
        names(), admin_loopback_only=True, client=("127.0.0.1", 1), base_url="http://127.0.0.1:8000"
    ) as (http, _):
        assert (await http.get("/_refresh", headers={header: "198.51.100.7"})).status_code == 403
        assert (await http.get("/_refresh")).status_code == 200


async def test_an_ipv4_mapped_loopback_client_is_local() -> None:
    """A dual-stack socket reports 127.0.0.1 as ::ffff:127.0.0.1."""
    async with admin_client(
        names(), admin_loopback_only=True, client=("::ffff:127.0.0.1", 1), base_url="http://127.0.0.1"
    ) as (http, _):
        assert (await http.get("/_refresh")).status_code == 200


async def test_the_prefix_is_matched_below_the_root_path() -> None:
    """With uvicorn --root-path /api, the path carries /api in front; admin_path is below it."""
    middleware = RefreshMiddleware(
        ScriptedApp(), refreshers=[names()], clock=FakeClock(START), admin_path="/_refresh", admin_token=TOKEN
    )
    async with LifespanManager(middleware):
        transport = httpx.ASGITransport(app=middleware, root_path="/api")
        async with httpx.AsyncClient(transport=transport, base_url="http://app.example") as http:
            assert (await http.get("/api/_refresh/health")).json() == {"status": "ok"}
            assert (await http.get("/api/_refresh", headers=AUTH)).status_code == 200
            assert (await http.get("/api/other")).status_code == 200, "the app still gets the rest"
            assert (await http.get("/elsewhere/_refresh/health")).status_code == 200
            app = middleware.app
            assert isinstance(app, ScriptedApp)
            assert len(app.request_states) == 2


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/_refresh/names", 202),
        ("/_refresh/names/", 202),
        ("/_refresh//names", 404),
        ("/_refresh/names//", 404),
        ("/_refresh//", 404),
    ],
)
async def test_one_trailing_slash_is_allowed_and_empty_segments_are_not(path: str, expected: int) -> None:
    """Paths under the prefix are exact: one optional trailing slash, nothing looser."""
    async with admin_client(names()) as (http, _):
        assert (await http.post(path, headers=AUTH)).status_code == expected


async def test_a_bare_wait_flag_waits() -> None:
    """?wait alone means wait, like ?wait=true."""
    async with admin_client(names()) as (http, _):
        response = await http.post("/_refresh/names?wait", headers=AUTH)
        assert response.status_code == 200
        assert response.json()["status"]["refresh_count"] == 2


async def test_a_token_holder_may_post_from_any_origin() -> None:
    """With a token, the Origin check is moot (a browser cannot add the header cross-site): proxies may rewrite Host."""
    async with admin_client(names()) as (http, _):
        headers = {**AUTH, "Origin": "https://public.example", "Host": "127.0.0.1:8000"}
        assert (await http.post("/_refresh/names", headers=headers)).status_code == 202


def test_a_token_with_surrounding_whitespace_is_refused() -> None:
    """A token read from a file with its newline would never match: refused at construction."""
    with pytest.raises(ValueError, match="leading or trailing whitespace"):
        RefreshMiddleware(ScriptedApp(), refreshers=[], admin_path="/_refresh", admin_token=TOKEN + "\n")


async def test_a_utf8_token_matches() -> None:
    """A non-ASCII token arrives as its UTF-8 bytes and still matches."""
    token = "clé-secrète-très-longue"
    async with admin_client(names(), admin_token=token) as (http, _):
        headers = {b"Authorization": ("Bearer " + token).encode()}
        assert (await http.get("/_refresh", headers=headers)).status_code == 200


async def test_refresh_now_outside_the_running_window_is_503() -> None:
    """A refresh that reaches a runtime that has stopped gets 503, not a 500."""
    middleware = RefreshMiddleware(
        ScriptedApp(), refreshers=[names()], clock=FakeClock(START), admin_path="/_refresh", admin_token=TOKEN
    )
    async with LifespanManager(middleware):
        handle = middleware.handle
    sent: list[MutableMapping[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/_refresh/names",
        "query_string": b"",
        "headers": [(b"authorization", f"Bearer {TOKEN}".encode())],
    }
    assert middleware._admin is not None
    await middleware._admin(scope, send, handle._runtime, "/_refresh/names")
    assert sent[0]["status"] == 503


# -- who counts as local: forwarding headers, Host, cross-origin posts ----------------------
#
# Raw ASGI scopes: their headers are a list of pairs, so a repeated header (an empty
# X-Forwarded-For line, then one with an address) is what a server hands the app.

FORWARDING = [
    "Forwarded",
    "Via",
    "X-Forwarded-For",
    "X-Forwarded-Host",
    "X-Forwarded-Proto",
    "X-Forwarded-Port",
    "X-Forwarded-Server",
    "X-Original-Forwarded-For",
    "X-Real-IP",
    "X-Client-IP",
    "Client-IP",
    "True-Client-IP",
    "CF-Connecting-IP",
    "CF-Connecting-IPv6",
    "Fastly-Client-IP",
    "X-Cluster-Client-IP",
    "X-Azure-ClientIP",
    "X-Envoy-External-Address",
]
"""Headers a proxy, load balancer or CDN adds when it relays a request."""

ORDINARY = [
    "accept",
    "accept-encoding",
    "accept-language",
    "authorization",
    "cache-control",
    "connection",
    "content-length",
    "content-type",
    "cookie",
    "origin",
    "referer",
    "sec-fetch-dest",
    "sec-fetch-mode",
    "sec-fetch-site",
    "sec-ch-ua",
    "upgrade-insecure-requests",
    "user-agent",
    "x-request-id",
    "zip",
]
"""Headers a direct client (curl, a browser, a script) sends: none says "relayed"."""

LOCAL = ("127.0.0.1", 5000)
HOST = (b"host", b"127.0.0.1:8000")


async def raw_request(
    middleware: RefreshMiddleware,
    method: str,
    headers: list[tuple[bytes, bytes]],
    *,
    path: str = "/_refresh",
    client: Any = LOCAL,
    scheme: str = "http",
) -> tuple[int, dict[str, Any]]:
    """Send one request with exactly these header lines (repeats kept); its status and JSON body."""
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": b"",
        "headers": headers,
        "client": client,
        "scheme": scheme,
    }
    await middleware(scope, receive, send)
    body = b"".join(message.get("body", b"") for message in sent[1:])
    return sent[0]["status"], (json.loads(body) if body.startswith(b"{") else {})


@asynccontextmanager
async def loopback_only(**options: Any) -> AsyncIterator[RefreshMiddleware]:
    """A running middleware whose admin endpoints answer loopback clients without a token."""
    middleware = RefreshMiddleware(
        ScriptedApp(),
        refreshers=[names()],
        clock=FakeClock(START),
        admin_path="/_refresh",
        admin_loopback_only=True,
        **options,
    )
    async with LifespanManager(middleware):
        yield middleware


def spellings(name: str) -> list[bytes]:
    """How a header name may reach the app: lowercase (ASGI), as written, upper case, with "_"."""
    return [name.lower().encode(), name.encode(), name.upper().encode(), name.replace("-", "_").encode()]


@pytest.mark.parametrize("header", FORWARDING)
async def test_any_occurrence_of_a_forwarding_header_means_not_local(header: str) -> None:
    """Empty or not, first or repeated, in any case: a forwarding header refuses loopback-only access."""
    async with loopback_only() as middleware:
        assert (await raw_request(middleware, "GET", [HOST]))[0] == 200
        for name in spellings(header):
            for lines in (
                [(name, b""), (name, b"198.51.100.7")],  # the bypass: an empty line first
                [(name, b"198.51.100.7")],
                [(name, b"")],
                [(name, b" ")],
                [(b"x-forwarded-for", b""), (name, b"")],
                [(b"accept", b"*/*"), (name, b"198.51.100.7"), (name, b"")],
            ):
                status, body = await raw_request(middleware, "GET", [HOST, *lines])
                assert status == 403, (name, lines)
                assert "relayed" in body["error"], body
                posted, _ = await raw_request(middleware, "POST", [HOST, *lines], path="/_refresh/names")
                assert posted == 403, (name, lines)


async def test_a_forwarding_header_refuses_even_with_a_valid_token() -> None:
    """admin_loopback_only with a token still needs a direct local client."""
    async with loopback_only(admin_token=TOKEN) as middleware:
        bearer = (b"authorization", f"Bearer {TOKEN}".encode())
        assert (await raw_request(middleware, "GET", [HOST, bearer]))[0] == 200
        relayed = [HOST, bearer, (b"x-real-ip", b""), (b"x-real-ip", b"198.51.100.7")]
        assert (await raw_request(middleware, "GET", relayed))[0] == 403


@pytest.mark.parametrize(
    ("hosts", "expected"),
    [
        ([b"127.0.0.1:8000"], 200),
        ([b"LOCALHOST:8000"], 200),
        ([b"[::1]:8000"], 200),
        ([b"[::ffff:127.0.0.1]"], 200),
        ([], 200),  # HTTP/1.0 without a Host: a local tool
        ([b"127.0.0.1", b"evil.example"], 403),  # two Hosts: which one did the client mean?
        ([b"127.0.0.1", b"127.0.0.1"], 403),
        ([b"evil.example@127.0.0.1"], 403),
        ([b"127.0.0.1@evil.example"], 403),
        ([b"127.0.0.1/evil"], 403),
        ([b"[::1"], 403),
        ([b"127.0.0.1:99999"], 403),
        ([b"127.0.0.1:80:80"], 403),
        ([b"localhost.evil.example"], 403),
        ([b"\xff\xfe"], 403),
    ],
)
async def test_the_host_must_be_one_loopback_name(hosts: list[bytes], expected: int) -> None:
    """Exactly one Host, a loopback name or address with an optional port; anything odd is refused, never a 500."""
    async with loopback_only() as middleware:
        status, _ = await raw_request(middleware, "GET", [(b"host", host) for host in hosts])
        assert status == expected


@pytest.mark.parametrize(
    "client", [None, [], ("unix-socket", 0), (None, 0), (b"127.0.0.1", 1), ("10.0.0.1", 1)]
)
async def test_a_client_that_is_not_a_loopback_address_is_refused(client: Any) -> None:
    """No client address, a unix socket, bytes or a remote address: not local."""
    async with loopback_only() as middleware:
        assert (await raw_request(middleware, "GET", [HOST], client=client))[0] == 403


SAME = b"http://127.0.0.1:8000"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], 202),  # curl, a script, a probe: not a browser page
        ([(b"sec-fetch-site", b"same-origin")], 202),
        ([(b"sec-fetch-site", b"none")], 202),  # user-initiated
        ([(b"sec-fetch-site", b"cross-site")], 403),  # the reported bypass: no Origin
        ([(b"sec-fetch-site", b"same-site")], 403),  # another port of localhost is the same site
        ([(b"sec-fetch-site", b"")], 403),
        ([(b"sec-fetch-site", b"same-origin"), (b"sec-fetch-site", b"cross-site")], 403),
        ([(b"sec-fetch-site", b"cross-site"), (b"origin", SAME)], 403),
        ([(b"Sec-Fetch-Site", b"CROSS-SITE")], 403),
        # Referrer-Policy: no-referrer makes a browser send Origin: null on a same-origin POST.
        ([(b"sec-fetch-site", b"same-origin"), (b"origin", b"null")], 202),
        ([(b"origin", SAME)], 202),
        ([(b"origin", b"http://127.0.0.1:8000/")], 202),
        ([(b"origin", b"HTTP://127.0.0.1:8000")], 202),
        ([(b"origin", b"null")], 403),  # a sandboxed frame, a data: URL
        ([(b"origin", b"")], 403),
        ([(b"origin", b""), (b"origin", SAME)], 403),
        ([(b"origin", SAME), (b"origin", b"http://evil.example")], 403),
        ([(b"origin", b"http://evil.example")], 403),
        ([(b"origin", b"http://127.0.0.1:9000")], 403),  # another port: another origin
        ([(b"origin", b"https://127.0.0.1:8000")], 403),  # another scheme
        ([(b"origin", b"http://localhost:8000")], 403),  # another host name
        ([(b"origin", b"http://127.0.0.1@evil.example:8000")], 403),
        ([(b"origin", b"http://[::1")], 403),
        ([(b"referer", b"http://evil.example/page")], 403),  # an old browser: no Origin, no Sec-Fetch-*
        ([(b"referer", b"http://127.0.0.1:8000/_refresh")], 202),
        ([(b"referer", b"not a url")], 403),
    ],
)
async def test_posts_without_a_token_must_come_from_this_origin(
    headers: list[tuple[bytes, bytes]], expected: int
) -> None:
    """The browser's word decides: Sec-Fetch-Site, else every Origin, else Referer; none at all is not a browser page."""
    async with loopback_only() as middleware:
        status, body = await raw_request(middleware, "POST", [HOST, *headers], path="/_refresh/names")
        assert status == expected, body
        if expected == 403:
            assert "cross-origin requests are refused" in body["error"]


async def test_the_origin_check_uses_the_scheme_of_the_request() -> None:
    """Served over https, the page's own origin is https://host:port (default port 443)."""
    async with loopback_only() as middleware:
        host = (b"host", b"localhost")
        ok = [host, (b"origin", b"https://localhost")]
        assert (await raw_request(middleware, "POST", ok, path="/_refresh/names", scheme="https"))[0] == 202
        assert (await raw_request(middleware, "POST", ok, path="/_refresh/names", scheme="http"))[0] == 403
        odd = [host, (b"origin", b"https://localhost")]
        assert (await raw_request(middleware, "POST", odd, path="/_refresh/names", scheme="ws"))[0] == 403


async def test_two_authorization_headers_are_refused() -> None:
    """Two Authorization lines are ambiguous: 401, even when one holds the token."""
    async with admin_client(names()) as (_, middleware):
        bearer = (b"authorization", f"Bearer {TOKEN}".encode())
        assert (await raw_request(middleware, "GET", [bearer], client=("203.0.113.7", 1)))[0] == 200
        for lines in ([(b"authorization", b""), bearer], [bearer, bearer]):
            assert (await raw_request(middleware, "GET", lines, client=("203.0.113.7", 1)))[0] == 401


names_of_headers = st.one_of(
    st.sampled_from(ORDINARY), st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12)
).map(lambda name: name.encode())
header_lists = st.lists(st.tuples(names_of_headers, st.binary(max_size=30)), max_size=12)
any_header_lists = st.lists(st.tuples(st.binary(max_size=20), st.binary(max_size=40)), max_size=12)


@given(
    headers=header_lists,
    forwarding=st.sampled_from(FORWARDING).flatmap(lambda name: st.sampled_from(spellings(name))),
    value=st.one_of(st.just(b""), st.binary(max_size=30)),
    at=st.integers(min_value=0, max_value=12),
)
def test_a_forwarding_header_anywhere_in_any_list_is_found(
    headers: list[tuple[bytes, bytes]], forwarding: bytes, value: bytes, at: int
) -> None:
    """Wherever it is, whatever its value and whatever surrounds it, one forwarding header is found."""
    headers = [HOST, *headers[:at], (forwarding, value), *headers[at:]]
    assert forwarding_header(headers) is not None
    assert _not_loopback({"client": LOCAL, "headers": headers}, _Headers(headers)) is not None


@given(
    headers=st.lists(
        st.tuples(st.sampled_from(ORDINARY).map(str.encode), st.binary(max_size=30)), max_size=12
    )
)
def test_ordinary_headers_are_not_forwarding_headers(headers: list[tuple[bytes, bytes]]) -> None:
    """What curl, a browser or a script sends on its own never reads as "relayed"."""
    assert forwarding_header(headers) is None
    headers = [HOST, *headers]
    assert _not_loopback({"client": LOCAL, "headers": headers}, _Headers(headers)) is None


@given(
    headers=any_header_lists,
    client=st.one_of(
        st.none(),
        st.integers(),
        st.tuples(),
        st.tuples(st.one_of(st.text(max_size=20), st.binary(max_size=4), st.none()), st.integers()),
        st.just(LOCAL),
    ),
    scheme=st.one_of(st.none(), st.text(max_size=6), st.sampled_from(["http", "https"])),
)
def test_the_admin_checks_never_raise(headers: list[tuple[bytes, bytes]], client: Any, scheme: Any) -> None:
    """Arbitrary header bytes, client and scheme: each check answers (a reason or None), never an exception."""
    scope = {"client": client, "headers": headers, "scheme": scheme}
    reason = _not_loopback(scope, _Headers(headers))
    assert reason is None or isinstance(reason, str)
    reason = _cross_origin(scope, _Headers(headers))
    assert reason is None or isinstance(reason, str)


@given(
    headers=header_lists,
    site=st.one_of(
        st.sampled_from([b"cross-site", b"same-site", b"", b"CROSS-SITE"]), st.binary(max_size=12)
    ),
    at=st.integers(min_value=0, max_value=12),
)
def test_a_foreign_sec_fetch_site_anywhere_refuses_the_post(
    headers: list[tuple[bytes, bytes]], site: bytes, at: int
) -> None:
    """One Sec-Fetch-Site that is not same-origin or none, anywhere in the list, refuses the POST."""
    if site.strip().lower() in (b"same-origin", b"none"):
        site = b"cross-site"
    headers = [*headers[:at], (b"sec-fetch-site", site), *headers[at:]]
    assert _cross_origin({"client": LOCAL, "headers": headers}, _Headers([HOST, *headers])) is not None


# -- the same through real servers: the repeated header as it comes off the wire ------------

ROOT = Path(__file__).parent.parent
SERVER_APP = "tests.admin_server_app:app"
ADMIN_SERVERS = {
    "uvicorn --no-proxy-headers": "-m uvicorn {app} --no-proxy-headers --host 127.0.0.1 --port {port}",
    "hypercorn": "-m hypercorn {app} --bind 127.0.0.1:{port}",
    "daphne": "-m daphne -b 127.0.0.1 -p {port} {app}",
}
"""How each server is started (the ones on which the repeated header got through)."""


@pytest.fixture(params=list(ADMIN_SERVERS), scope="module")
def admin_server(request: pytest.FixtureRequest) -> Iterator[int]:
    """A real server on 127.0.0.1 running tests/admin_server_app.py; yields its port."""
    name: str = request.param
    port = free_port()
    arguments = ADMIN_SERVERS[name].format(app=SERVER_APP, port=port).split()
    process = subprocess.Popen(
        [sys.executable, *arguments],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, process.communicate()[0]
            try:
                raw_http(port, "GET /_refresh/health")
                break
            except OSError:
                assert time.monotonic() < deadline, f"{name} did not start"
                time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        process.communicate(timeout=15)


def raw_http(port: int, request_line: str, *header_lines: str) -> int:
    """Send one HTTP/1.1 request byte for byte (repeated header lines as written); its status."""
    lines = [f"{request_line} HTTP/1.1", f"Host: 127.0.0.1:{port}", *header_lines, "Connection: close"]
    payload = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        received = b""
        while b"\r\n" not in received:
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
    return int(received.split(b" ", 2)[1])


@pytest.mark.parametrize(
    "header",
    ["X-Forwarded-For", "Forwarded", "X-Real-IP", "True-Client-IP", "Via"],
)
def test_a_real_server_with_a_repeated_forwarding_header_is_refused(admin_server: int, header: str) -> None:
    """Off the wire: an empty forwarding header line, then one with an address, gets 403 (it got 200)."""
    # daphne runs no lifespan: 503 (not running) instead of 200, but past the check all the same.
    assert raw_http(admin_server, "GET /_refresh") in (200, 503)
    assert raw_http(admin_server, "GET /_refresh", f"{header}:", f"{header}: 198.51.100.7") == 403
    assert raw_http(admin_server, "GET /_refresh", f"{header}: 198.51.100.7", f"{header}:") == 403


def test_a_real_server_refuses_a_cross_site_post_without_origin(admin_server: int) -> None:
    """Off the wire: Sec-Fetch-Site: cross-site and no Origin gets 403, not a refresh."""
    assert (
        raw_http(admin_server, "POST /_refresh/names", "Content-Length: 0", "Sec-Fetch-Site: cross-site")
        == 403
    )
    assert raw_http(admin_server, "POST /_refresh/names", "Content-Length: 0") in (202, 503)
