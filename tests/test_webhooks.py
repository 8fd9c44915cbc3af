"""Signed webhooks: GitHub, GitLab and Standard Webhooks deliveries at ``{admin_path}/hooks/{hook}``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
import respx
from asgi_lifespan import LifespanManager
from hypothesis import given, settings
from hypothesis import strategies as st

from asgi_refresh import Clock, HTTPSource, Refresher, RefreshEvent, RefreshMiddleware, Webhook
from asgi_refresh._events import Events
from asgi_refresh._webhooks import MIN_GAP, Webhooks, _verify
from asgi_refresh.testing import FakeClock

from .helpers import START, ScriptedApp, Upstream

pytestmark = pytest.mark.anyio

TOKEN = "s3cret-admin-token-for-tests"
GITHUB = "github-webhook-secret-for-tests"
GITLAB = "gitlab-webhook-token-for-tests"
STANDARD_KEY = b"standard-webhook-key-32-bytes!!!"
STANDARD = "whsec_" + base64.b64encode(STANDARD_KEY).decode()
SCHEMES = ("github", "gitlab", "standard")
NOW = START.timestamp()


def hook(scheme: str, *refreshers: str, **options: Any) -> Webhook:
    names = refreshers or ("names",)
    if scheme == "github":
        return Webhook(names, github_secret=GITHUB, **options)
    if scheme == "gitlab":
        return Webhook(names, gitlab_token=GITLAB, **options)
    return Webhook(names, standard_secret=STANDARD, **options)


def signed(
    scheme: str, body: bytes, *, delivery: str = "msg_1", at: float = NOW, key: bytes | None = None
) -> dict[str, str]:
    """The headers a genuine sender of ``scheme`` adds to ``body``."""
    if scheme == "github":
        digest = hmac.new(key or GITHUB.encode(), body, hashlib.sha256).hexdigest()
        return {"X-Hub-Signature-256": f"sha256={digest}", "X-GitHub-Delivery": delivery}
    if scheme == "gitlab":
        return {"X-Gitlab-Token": (key or GITLAB.encode()).decode()}
    stamp = str(int(at))
    mac = hmac.new(key or STANDARD_KEY, f"{delivery}.{stamp}.".encode() + body, hashlib.sha256).digest()
    return {
        "webhook-id": delivery,
        "webhook-timestamp": stamp,
        "webhook-signature": "v1," + base64.b64encode(mac).decode(),
    }


@asynccontextmanager
async def running(
    hooks: dict[str, Webhook],
    *refreshers: Refresher,
    clock: FakeClock | None = None,
    listeners: tuple[Callable[[RefreshEvent], object], ...] = (),
    **options: Any,
) -> AsyncIterator[tuple[httpx.AsyncClient, RefreshMiddleware]]:
    """A running middleware with webhooks, and a client from a public address."""
    options.setdefault("admin_token", TOKEN)
    middleware = RefreshMiddleware(
        ScriptedApp(),
        refreshers=list(refreshers) or [Refresher("names", Upstream(), every="1h")],
        clock=clock or FakeClock(START),
        admin_path="/_refresh",
        admin_webhooks=hooks,
        listeners=listeners,
        **options,
    )
    async with LifespanManager(middleware):
        transport = httpx.ASGITransport(app=middleware, client=("203.0.113.7", 4321))
        async with httpx.AsyncClient(transport=transport, base_url="https://app.example") as http:
            yield http, middleware


def counted(*names: str) -> tuple[Refresher, ...]:
    return tuple(Refresher(name, Upstream(), every="1h") for name in names)


def calls(middleware: RefreshMiddleware, name: str) -> int:
    fetch = next(spec.fetch for spec in middleware.refreshers if spec.name == name)
    assert isinstance(fetch, Upstream)
    return fetch.calls


async def settle() -> None:
    for _ in range(20):
        await anyio.lowlevel.checkpoint()


# -- each scheme: valid, invalid, missing, replayed, too old, oversized ---------------------


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_a_valid_delivery_refreshes_now_and_answers_202(scheme: str) -> None:
    """A correctly signed delivery answers 202 at once and fetches the hook's refreshers."""
    async with running({"deploy": hook(scheme, "names", "flags")}, *counted("names", "flags", "other")) as (
        http,
        middleware,
    ):
        body = b'{"ref": "refs/heads/main"}'
        response = await http.post("/_refresh/hooks/deploy", content=body, headers=signed(scheme, body))
        assert response.status_code == 202
        assert response.json() == {"hook": "deploy", "refreshing": ["names", "flags"]}
        await settle()
        assert (calls(middleware, "names"), calls(middleware, "flags"), calls(middleware, "other")) == (
            2,
            2,
            1,
        )


def _tampered(scheme: str, body: bytes) -> dict[str, str]:
    headers = signed(scheme, body)
    if scheme == "github":
        headers["X-Hub-Signature-256"] = headers["X-Hub-Signature-256"][:-2] + "00"
    elif scheme == "gitlab":
        headers["X-Gitlab-Token"] = GITLAB[:-1] + "X"
    else:
        headers["webhook-signature"] = "v1," + base64.b64encode(b"x" * 32).decode()
    return headers


@pytest.mark.parametrize(
    ("scheme", "case"),
    [
        (scheme, case)
        for scheme in SCHEMES
        for case in ("invalid", "missing", "wrong_secret", "body_changed", "repeated_header")
        if not (scheme == "gitlab" and case == "body_changed")  # GitLab's token signs no body
    ],
)
async def test_a_bad_signature_is_401_with_one_message_and_no_refresh(scheme: str, case: str) -> None:
    """Any bad or missing signature answers the same 401 and fetches nothing."""
    async with running({"deploy": hook(scheme)}) as (http, middleware):
        body = b'{"ok": true}'
        if case == "invalid":
            headers: Any = _tampered(scheme, body)
        elif case == "missing":
            headers = {}
        elif case == "wrong_secret":
            headers = signed(scheme, body, key=b"another-secret-of-the-same-kind!")
        elif case == "body_changed":
            headers = signed(scheme, body + b" ")
        else:
            headers = list(signed(scheme, body).items()) * 2
        response = await http.post("/_refresh/hooks/deploy", content=body, headers=headers)
        assert response.status_code == 401
        assert response.json() == {"error": "invalid or missing webhook signature"}
        await settle()
        assert calls(middleware, "names") == 1


async def test_the_admin_token_does_not_let_a_delivery_in() -> None:
    """The admin token is no webhook signature: a delivery carrying only it is refused."""
    async with running({"deploy": hook("github")}) as (http, middleware):
        response = await http.post(
            "/_refresh/hooks/deploy", content=b"{}", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert response.status_code == 401
        await settle()
        assert calls(middleware, "names") == 1


@pytest.mark.parametrize("skew", [-301, 301, -(10**9)])
async def test_standard_a_timestamp_out_of_the_window_is_401(skew: float) -> None:
    """A Standard Webhooks delivery signed too long ago (or ahead) is refused like a bad signature."""
    async with running({"deploy": hook("standard")}) as (http, _middleware):
        body = b"{}"
        response = await http.post(
            "/_refresh/hooks/deploy", content=body, headers=signed("standard", body, at=max(NOW + skew, 0))
        )
        assert response.status_code == 401
        assert response.json() == {"error": "invalid or missing webhook signature"}
        ok = await http.post(
            "/_refresh/hooks/deploy", content=body, headers=signed("standard", body, at=NOW - 299)
        )
        assert ok.status_code == 202


async def test_standard_the_tolerance_is_the_hooks() -> None:
    """``tolerance`` widens or narrows the Standard Webhooks window."""
    async with running({"deploy": hook("standard", tolerance="10s")}) as (http, _):
        body = b"{}"
        old = await http.post(
            "/_refresh/hooks/deploy", content=body, headers=signed("standard", body, at=NOW - 11)
        )
        assert old.status_code == 401


async def test_standard_a_replayed_id_is_answered_without_a_refresh() -> None:
    """A webhook-id seen within the window answers 200 duplicate and fetches nothing more."""
    clock = FakeClock(START)
    async with running({"deploy": hook("standard")}, clock=clock) as (http, middleware):
        body = b"{}"
        headers = signed("standard", body, delivery="msg_42")
        first = await http.post("/_refresh/hooks/deploy", content=body, headers=headers)
        assert first.status_code == 202
        await settle()
        await clock.advance(MIN_GAP * 5)  # past the pacing gap: only the replay check stops it
        again = await http.post("/_refresh/hooks/deploy", content=body, headers=headers)
        assert again.status_code == 200
        assert again.json() == {"hook": "deploy", "duplicate": True}
        await settle()
        assert calls(middleware, "names") == 2
        other = signed("standard", body, delivery="msg_43", at=clock.wall())
        assert (await http.post("/_refresh/hooks/deploy", content=body, headers=other)).status_code == 202


async def test_standard_a_replay_of_a_timestamp_from_ahead_stays_a_replay() -> None:
    """An id signed 299 s ahead of our clock is still a replay 400 s later, while its timestamp passes."""
    clock = FakeClock(START)
    async with running({"deploy": hook("standard")}, clock=clock) as (http, middleware):
        body = b"{}"
        headers = signed("standard", body, delivery="msg_ahead", at=NOW + 299)
        assert (await http.post("/_refresh/hooks/deploy", content=body, headers=headers)).status_code == 202
        await settle()
        await clock.advance(400)
        again = await http.post("/_refresh/hooks/deploy", content=body, headers=headers)
        assert again.status_code == 200
        assert again.json()["duplicate"] is True
        await clock.advance(300)  # now its timestamp is out of the window: refused as too old
        late = await http.post("/_refresh/hooks/deploy", content=body, headers=headers)
        assert late.status_code == 401
        await settle()
        assert calls(middleware, "names") == 2


@pytest.mark.parametrize("scheme", ["github", "gitlab"])
async def test_github_and_gitlab_replays_only_refresh_again_paced(scheme: str) -> None:
    """GitHub and GitLab sign no timestamp: a replay is a valid delivery, and pacing bounds its cost."""
    clock = FakeClock(START)
    async with running({"deploy": hook(scheme)}, clock=clock) as (http, middleware):
        body = b"{}"
        headers = signed(scheme, body)
        for _ in range(50):
            response = await http.post("/_refresh/hooks/deploy", content=body, headers=headers)
            assert response.status_code == 202
        await settle()
        assert calls(middleware, "names") == 2  # the first load and one refresh
        await clock.advance(MIN_GAP)
        await settle()
        assert calls(middleware, "names") == 3  # one more at the end of the gap for all the rest


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_an_oversized_body_is_413_and_not_read_past_the_cap(scheme: str) -> None:
    """A body over max_body answers 413 (its Content-Length says so: nothing is read), and nothing is refreshed."""
    async with running({"deploy": hook(scheme, max_body=1000)}) as (http, middleware):
        body = b"x" * 1001
        stated = await http.post("/_refresh/hooks/deploy", content=body, headers=signed(scheme, body))
        assert stated.status_code == 413
        assert stated.json() == {"error": "the body is larger than 1000 bytes"}
        exact = b"y" * 1000
        fits = await http.post("/_refresh/hooks/deploy", content=exact, headers=signed(scheme, exact))
        assert fits.status_code == 202
        await settle()
        assert calls(middleware, "names") == 2


async def test_the_body_is_read_no_further_than_the_cap() -> None:
    """Without a Content-Length (chunked), reading stops at the first chunk past the cap: 413."""
    webhooks = Webhooks({"deploy": hook("github", max_body=1000)})
    received = 0

    async def receive() -> dict[str, Any]:
        nonlocal received
        received += 1
        return {"type": "http.request", "body": b"x" * 400, "more_body": True}

    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    class Target:
        clock: Clock = FakeClock(START)
        events: Events | None = None

        def refresh_after_change(self, name: str) -> None:
            raise AssertionError("nothing may be refreshed")

        def start_source_task(self, func: Any, name: str) -> None:
            raise AssertionError("nothing may be started")

    scope = {"type": "http", "method": "POST", "headers": []}
    await webhooks(scope, receive, send, "deploy", Target())
    assert sent[0]["status"] == 413
    assert received == 3  # 1200 bytes: the third chunk crossed the cap, and no fourth was asked for


# -- routing: unknown hook, method, token and loopback -------------------------------------


async def test_an_unknown_hook_is_404_and_a_wrong_method_405() -> None:
    """An unknown hook answers 404; a GET to a known one, 405 with Allow: POST."""
    async with running({"deploy": hook("github")}) as (http, _):
        assert (await http.post("/_refresh/hooks/nope", content=b"{}")).status_code == 404
        assert (await http.post("/_refresh/hooks/a%2Fb", content=b"{}")).status_code == 404
        assert (await http.post("/_refresh/hooks/x/y", content=b"{}")).status_code == 404
        wrong = await http.get("/_refresh/hooks/deploy")
        assert wrong.status_code == 405
        assert wrong.headers["allow"] == "POST"


async def test_loopback_only_mode_does_not_block_deliveries() -> None:
    """admin_loopback_only guards the admin endpoints, not the signed webhooks from outside."""
    async with running({"deploy": hook("gitlab")}, admin_loopback_only=True, admin_token=None) as (
        http,
        middleware,
    ):
        assert (await http.get("/_refresh", headers={"Authorization": f"Bearer {TOKEN}"})).status_code == 403
        body = b"{}"
        response = await http.post(
            "/_refresh/hooks/deploy",
            content=body,
            headers={**signed("gitlab", body), "X-Forwarded-For": "140.82.112.1"},
        )
        assert response.status_code == 202
        await settle()
        assert calls(middleware, "names") == 2


async def test_without_webhooks_the_hooks_path_is_the_admins() -> None:
    """With no admin_webhooks, /hooks/... is an unknown admin path, signed or not."""
    middleware = RefreshMiddleware(
        ScriptedApp(),
        refreshers=[Refresher("names", Upstream(), every="1h")],
        clock=FakeClock(START),
        admin_path="/_refresh",
        admin_token=TOKEN,
    )
    async with LifespanManager(middleware):
        transport = httpx.ASGITransport(app=middleware)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
            response = await http.post("/_refresh/hooks/deploy", headers=signed("github", b""))
            assert response.status_code == 404
            assert response.json() == {"error": "not found"}


async def test_a_delivery_with_no_lifespan_is_503() -> None:
    """Without a running lifespan a delivery answers 503 and reads no body."""
    middleware = RefreshMiddleware(
        ScriptedApp(),
        refreshers=[Refresher("names", Upstream(), every="1h")],
        admin_path="/_refresh",
        admin_token=TOKEN,
        admin_webhooks={"deploy": hook("github")},
    )
    transport = httpx.ASGITransport(app=middleware)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
        response = await http.post("/_refresh/hooks/deploy", content=b"{}", headers=signed("github", b"{}"))
    assert response.status_code == 503


# -- what is said: events, metrics, logs; never a secret -----------------------------------


async def test_every_delivery_sends_an_event_and_counts_in_prometheus(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each delivery to a hook sends a ``webhook`` event with its outcome; the metric counts them."""
    from prometheus_client import CollectorRegistry

    from asgi_refresh.prometheus import PrometheusMetrics

    registry = CollectorRegistry()
    events: list[RefreshEvent] = []
    clock = FakeClock(START)
    async with running(
        {"deploy": hook("standard", max_body=10)},
        clock=clock,
        listeners=(events.append, PrometheusMetrics(registry, clock=clock)),
    ) as (http, _):
        caplog.set_level(logging.DEBUG, logger="asgi_refresh")
        body = b"{}"
        headers = signed("standard", body)
        await http.post("/_refresh/hooks/deploy", content=body, headers=headers)
        await http.post("/_refresh/hooks/deploy", content=body, headers=headers)
        await http.post("/_refresh/hooks/deploy", content=body, headers={})
        await http.post("/_refresh/hooks/deploy", content=b"x" * 11, headers=headers)
        await http.post("/_refresh/hooks/nope", content=body, headers=headers)
    webhook_events = [(event.name, event.error) for event in events if event.kind == "webhook"]
    assert webhook_events == [
        ("deploy", None),
        ("deploy", "duplicate"),
        ("deploy", "unauthorized"),
        ("deploy", "too_large"),
    ]
    for outcome, count in [("accepted", 1), ("duplicate", 1), ("unauthorized", 1), ("too_large", 1)]:
        value = registry.get_sample_value(
            "asgi_refresh_webhook_deliveries_total", {"hook": "deploy", "outcome": outcome}
        )
        assert value == count
    assert STANDARD not in caplog.text
    assert STANDARD_KEY.decode() not in caplog.text
    assert "refused" in caplog.text


def test_a_webhook_never_shows_its_secret() -> None:
    """repr() of a Webhook (and so of the middleware's options) hides every secret."""
    for scheme in SCHEMES:
        text = repr(hook(scheme))
        assert GITHUB not in text
        assert GITLAB not in text
        assert STANDARD not in text
        assert "names" in text


# -- pacing: a burst costs a handful of fetches ---------------------------------------------


async def test_a_burst_of_1000_deliveries_costs_at_most_a_handful_of_fetches() -> None:
    """1,000 valid deliveries within a second fetch the upstream twice: now, and once after the gap."""
    clock = FakeClock(START)
    with respx.mock(assert_all_called=False) as mock:
        route = mock.get("https://upstream.example/names").mock(return_value=httpx.Response(200, json=["a"]))
        refresher = Refresher("names", HTTPSource("https://upstream.example/names"), every="1h")
        async with running({"deploy": hook("github")}, refresher, clock=clock) as (http, _):
            assert route.call_count == 1
            body = b'{"zen": "Keep it logically awesome."}'
            headers = signed("github", body)
            for _ in range(1000):
                response = await http.post("/_refresh/hooks/deploy", content=body, headers=headers)
                assert response.status_code == 202
                await settle()  # each fetch ends before the next delivery: single-flight alone would not pace

            await clock.advance(MIN_GAP)
            await settle()
            fetched = route.call_count - 1
    assert fetched == 2


async def test_a_delivery_during_a_fetch_is_followed_by_another_fetch() -> None:
    """A fetch under way when a delivery comes may have read the old data: another follows it."""
    clock = FakeClock(START)
    release = anyio.Event()
    fetching = anyio.Event()
    versions = iter(range(100))

    async def fetch() -> int:
        value = next(versions)
        if value == 1:
            fetching.set()
            await release.wait()
        return value

    async with running({"deploy": hook("gitlab")}, Refresher("names", fetch, every="1h"), clock=clock) as (
        http,
        middleware,
    ):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(middleware.handle.refresh, "names")  # fetch 1 starts (reads "old" data)
            await fetching.wait()
            response = await http.post(
                "/_refresh/hooks/deploy", content=b"{}", headers=signed("gitlab", b"{}")
            )
            assert response.status_code == 202
            release.set()
        await settle()
        assert middleware.handle.status()["names"]["refresh_count"] == 3
        assert middleware.handle.value("names") == 2  # the fetch after the delivery's


# -- configuration errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: Webhook(["names"]), ValueError, "exactly one of"),
        (lambda: Webhook(["names"], github_secret=GITHUB, gitlab_token=GITLAB), ValueError, "exactly one of"),
        (lambda: Webhook([], github_secret=GITHUB), ValueError, "at least one refresher"),
        (lambda: Webhook("names", github_secret=GITHUB), TypeError, "list of refresher names"),
        (lambda: Webhook(["names"], github_secret="short"), ValueError, "at least 16 characters"),
        (lambda: Webhook(["names"], github_secret=GITHUB + "\n"), ValueError, "whitespace"),
        (lambda: Webhook(["names"], gitlab_token=12345), TypeError, "must be a string"),  # type: ignore[arg-type]
        (lambda: Webhook(["names"], standard_secret="whsec_not*base64!!!!"), ValueError, "base64"),
        (lambda: Webhook(["names"], github_secret=GITHUB, tolerance=-1), ValueError, "tolerance"),
        (lambda: Webhook(["names"], github_secret=GITHUB, max_body=0), ValueError, "max_body"),
    ],
)
def test_a_bad_webhook_is_refused_with_a_clear_error(
    make: Callable[[], Any], error: type, message: str
) -> None:
    """Webhook checks its arguments and says what is wrong."""
    with pytest.raises(error, match=message) as caught:
        make()
    assert GITHUB not in str(caught.value)
    assert GITLAB not in str(caught.value)


@pytest.mark.parametrize(
    ("hooks", "options", "message"),
    [
        ({"deploy": hook("github", "nope")}, {}, "do not exist: 'nope'"),
        ({"bad/name": hook("github")}, {}, "hook name"),
        ({"deploy": "not a webhook"}, {}, "must be a Webhook"),
        (["deploy"], {}, "must be a mapping of hook names"),
        ({"deploy": hook("github")}, {"admin_path": None}, "needs admin_path"),
    ],
)
def test_the_middleware_checks_its_webhooks(hooks: Any, options: dict[str, Any], message: str) -> None:
    """admin_webhooks names known refreshers, valid hook names, Webhook objects, and needs admin_path."""
    kwargs: dict[str, Any] = {"admin_path": "/_refresh", "admin_token": TOKEN, **options}
    if kwargs["admin_path"] is None:
        kwargs.pop("admin_token")
    with pytest.raises((ValueError, TypeError), match=message):
        RefreshMiddleware(
            ScriptedApp(),
            refreshers=[Refresher("names", Upstream(), every="1h")],
            admin_webhooks=hooks,
            **kwargs,
        )


def test_a_refresher_named_hooks_cannot_go_with_webhooks() -> None:
    """A refresher called 'hooks' would share {admin_path}/hooks/...: refused with webhooks."""
    with pytest.raises(ValueError, match="named 'hooks'"):
        RefreshMiddleware(
            ScriptedApp(),
            refreshers=[Refresher("hooks", Upstream(), every="1h")],
            admin_path="/_refresh",
            admin_token=TOKEN,
            admin_webhooks={"deploy": hook("github", "hooks")},
        )


# -- hostile headers: the verifier never raises -----------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    scheme=st.sampled_from(SCHEMES),
    headers=st.dictionaries(
        st.sampled_from(
            [
                b"x-hub-signature-256",
                b"x-gitlab-token",
                b"webhook-id",
                b"webhook-timestamp",
                b"webhook-signature",
            ]
        ),
        st.lists(st.binary(max_size=300), min_size=1, max_size=3),
    ),
    body=st.binary(max_size=200),
)
def test_hostile_headers_are_refused_never_raised(
    scheme: str, headers: dict[bytes, list[bytes]], body: bytes
) -> None:
    """Any header bytes at all are a refusal (None), never an exception."""
    assert _verify(hook(scheme), headers, body, NOW) is None


# -- configuration files ----------------------------------------------------------------------


CONFIG = """
[refreshers.names]
source = "python"
target = "tests.test_webhooks:count_fetch"
every = "1h"

[middleware]
admin_path = "/_refresh"
admin_token = "${ADMIN_TOKEN}"

[middleware.admin_webhooks.deploy]
refreshers = ["names"]
github_secret = "${HOOK_SECRET}"
max_body = 4096
"""
FETCHES: list[int] = []


async def count_fetch() -> int:
    FETCHES.append(1)
    return len(FETCHES)


async def test_a_config_file_serves_its_webhooks(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """``[middleware.admin_webhooks.<hook>]`` with a secret from the environment serves the hook."""
    monkeypatch.setenv("ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("HOOK_SECRET", GITHUB)
    path = tmp_path / "refresh.toml"
    path.write_text(CONFIG)
    FETCHES.clear()
    middleware = RefreshMiddleware.from_config(ScriptedApp(), path, clock=FakeClock(START))
    async with LifespanManager(middleware):
        transport = httpx.ASGITransport(app=middleware)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
            body = b"{}"
            good = await http.post("/_refresh/hooks/deploy", content=body, headers=signed("github", body))
            bad = await http.post("/_refresh/hooks/deploy", content=body, headers=signed("gitlab", body))
            big = await http.post(
                "/_refresh/hooks/deploy", content=b"x" * 4097, headers=signed("github", body)
            )
            await settle()
    assert (good.status_code, bad.status_code, big.status_code) == (202, 401, 413)
    assert len(FETCHES) == 2


def test_a_bad_webhook_table_reports_every_problem_and_no_secret(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unknown keys, bad secrets and unknown refreshers are reported by key, secrets masked."""
    from asgi_refresh import ConfigError

    secret_with_newline = GITHUB + " "
    monkeypatch.setenv("ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("HOOK_SECRET", secret_with_newline)
    path = tmp_path / "refresh.toml"
    path.write_text(
        CONFIG
        + """
[middleware.admin_webhooks.other]
refreshers = ["names"]
gitlab_token = "short"
colour = "blue"
"""
    )
    with pytest.raises(ConfigError) as caught:
        RefreshMiddleware.from_config(ScriptedApp(), path)
    text = str(caught.value)
    assert "middleware.admin_webhooks.deploy.github_secret: has leading or trailing whitespace" in text
    assert "middleware.admin_webhooks.other.colour: unknown key" in text
    assert "middleware.admin_webhooks.other.gitlab_token: must be at least 16" in text
    assert "exactly one" not in text
    assert GITHUB not in text
    path.write_text(CONFIG.replace('refreshers = ["names"]', 'refreshers = ["nope"]'))
    monkeypatch.setenv("HOOK_SECRET", GITHUB)
    with pytest.raises(ConfigError, match=r"middleware.admin_webhooks: .*'nope'"):
        RefreshMiddleware.from_config(ScriptedApp(), path)


class _Runtime:
    """A stand-in runtime for raw ASGI calls: it records what a delivery asks of it."""

    def __init__(self) -> None:
        self.clock: Clock = FakeClock(START)
        self.events: Events | None = None
        self.refreshed: list[str] = []

    def refresh_after_change(self, name: str) -> None:
        self.refreshed.append(name)

    def start_source_task(self, func: Any, name: str) -> None:
        raise AssertionError("nothing may be queued")


async def test_a_body_too_slow_or_abandoned_is_not_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """A body that stalls answers 408 after the read limit; a client that leaves is not refreshed for."""
    monkeypatch.setattr("asgi_refresh._webhooks._READ_TIMEOUT", 0.05)
    webhooks = Webhooks({"deploy": hook("github")})
    runtime = _Runtime()
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def stall() -> dict[str, Any]:
        await anyio.sleep_forever()
        raise AssertionError

    scope = {"type": "http", "method": "POST", "headers": []}
    with anyio.fail_after(5):
        await webhooks(scope, stall, send, "deploy", runtime)
    assert sent[0]["status"] == 408

    async def leave() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    sent.clear()
    await webhooks(scope, leave, send, "deploy", runtime)
    assert sent[0]["status"] == 408
    assert runtime.refreshed == []
