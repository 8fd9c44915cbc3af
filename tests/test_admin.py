"""The admin endpoints: status, refresh-now, readiness, authentication and the page shell."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager

from asgi_refresh import Fresh, Refresher, RefreshMiddleware
from asgi_refresh.testing import FakeClock

from .helpers import START, ScriptedApp, Upstream

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


async def test_a_token_check_that_raises_refuses_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    """A broken check fails closed: 500, logged with its traceback, nothing served."""

    def check(token: str) -> bool:
        raise RuntimeError("secret store unreachable")

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
    """Unknown name 404, wrong method 405 with Allow, bad wait 400, nested path 404."""
    async with admin_client(names()) as (http, _):
        unknown = await http.post("/_refresh/nope", headers=AUTH)
        assert unknown.status_code == 404
        assert unknown.json() == {"error": "no refresher named 'nope'"}
        get_name = await http.get("/_refresh/names", headers=AUTH)
        assert get_name.status_code == 405
        assert get_name.headers["allow"] == "POST"
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
    await middleware._admin(scope, send, handle, "/_refresh/names")
    assert sent[0]["status"] == 503
