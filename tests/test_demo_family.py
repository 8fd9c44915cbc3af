"""The demo's data per key (the ``rates`` family, ``GET /rate?currency=``) and its derived ``welcome``."""

from __future__ import annotations

import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager
from playwright.sync_api import Dialog, expect, sync_playwright

from asgi_refresh import RefreshMiddleware
from asgi_refresh.demo import app as demo
from asgi_refresh.demo.app import (
    BROKEN_NAMES,
    NAMES,
    RATES,
    World,
    build,
    quote,
    welcome,
)
from asgi_refresh.demo.upstream import Upstream, serve

from .test_admin_page import chromium

pytestmark = pytest.mark.anyio


REFUSED = {"detail": {"error": "a currency is three letters, like EUR", "refused": True}}


@pytest.fixture
def local_upstream() -> Iterator[tuple[Upstream, str]]:
    upstream = Upstream(token_lifetime=15)
    with serve(upstream) as url:
        yield upstream, url


@asynccontextmanager
async def running_demo(
    local_upstream: tuple[Upstream, str], tmp_path: Path, **options: Any
) -> AsyncIterator[tuple[RefreshMiddleware, httpx.AsyncClient]]:
    """The demo app started (its lifespan run), and a client that talks to it in process."""
    upstream, url = local_upstream
    app = build(upstream, url, tmp_path / "settings.toml", **{"change_every": 3600, **options})
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
            yield app, client


async def wait_until(condition: Callable[[], object], what: str, *, within: float = 10.0) -> None:
    """Look at ``condition()`` every 10 ms until it holds; fail after ``within`` seconds."""
    with anyio.move_on_after(within):
        while not condition():  # noqa: ASYNC110 - another thread's server: nothing to wait on
            await anyio.sleep(0.01)
        return
    pytest.fail(f"{what}: not within {within} s")


async def test_a_cold_currency_is_fetched_once_for_all_the_requests_that_wait_for_it(
    local_upstream: tuple[Upstream, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty concurrent requests for a new currency (any case) share one upstream fetch; then it is warm."""
    upstream, _ = local_upstream
    gate = threading.Event()

    def held_quote(currency: str, turn: int) -> float | None:
        if currency == "GBP":
            gate.wait(10)  # the upstream answers GBP once the test lets it
        return quote(currency, turn)

    monkeypatch.setattr(demo, "quote", held_quote)
    async with running_demo(local_upstream, tmp_path) as (app, client):
        assert upstream.requests["/rate/EUR"] == 1, "EUR is preloaded at startup"
        answers: list[httpx.Response] = []

        async def ask(code: str) -> None:
            answers.append(await client.get("/rate", params={"currency": code}))

        async with anyio.create_task_group() as task_group:
            for code in ["GBP", "gbp", " Gbp "] * 6 + ["GBP", "GBP"]:
                task_group.start_soon(ask, code)
            await wait_until(
                lambda: upstream.requests["/rate/GBP"] == 1, "the first load reaches the upstream"
            )
            await anyio.sleep(0.2)  # every request is waiting for that load by now
            assert answers == [], "no request is answered before the one fetch"
            gate.set()
        assert [answer.status_code for answer in answers] == [200] * 20
        assert {answer.text for answer in answers} == {answers[0].text}
        rate = answers[0].json()
        assert (rate["currency"], rate["per_usd"]) == ("GBP", quote("GBP", 0))
        assert upstream.requests["/rate/GBP"] == 1, "one fetch for the twenty requests"

        assert (await client.get("/rate", params={"currency": "GBP"})).json() == rate
        assert upstream.requests["/rate/GBP"] == 1, "warm: answered without a fetch"
        family = (await client.get("/rates")).json()
        assert family["keys"] == 2
        assert family["max_keys"] == 50
        assert family["loads"] == 2, "EUR at startup, GBP once"
        assert family["hits"] >= 1
        assert (family["failures"], family["last_error"]) == (0, None)
        assert app.handle.status()["rates"]["family"]["keys"] == 2


HOSTILE = [
    "euro",
    "EU",
    "E1R",
    "€UR",
    "ﬀx",  # "FFX" once upper-cased: only ASCII letters are taken
    "E\nR",
    "<script>alert(1)</script>",
    "../../token",
    "x" * 10_000,
]


async def test_a_refused_currency_is_a_400_that_does_not_repeat_it(
    local_upstream: tuple[Upstream, str], tmp_path: Path
) -> None:
    """Anything but three ASCII letters: 400 with the same short body, the key neither echoed, fetched nor kept."""
    upstream, _ = local_upstream
    async with running_demo(local_upstream, tmp_path) as (_, client):
        before = sum(count for path, count in upstream.requests.items() if path.startswith("/rate/"))
        for hostile in HOSTILE:
            refused = await client.get("/rate", params={"currency": hostile})
            assert refused.status_code == 400, hostile
            assert refused.json() == REFUSED, "the same short answer, whatever was sent"
        for query in ("", "?currency=", "?other=EUR"):
            missing = await client.get(f"/rate{query}")
            assert (missing.status_code, missing.json()) == (400, REFUSED)
        after = sum(count for path, count in upstream.requests.items() if path.startswith("/rate/"))
        assert after == before, "a refused key never reaches the upstream"
        assert (await client.get("/rates")).json()["keys"] == 1, "nor the family: only EUR"


def test_the_upstream_serves_a_rate_for_three_upper_case_letters_it_quotes(
    local_upstream: tuple[Upstream, str], tmp_path: Path
) -> None:
    """GET /rate/{currency}: 200 with an ETag (304 when it matches); any other key, or an unquoted one, 404."""
    upstream, url = local_upstream
    World(upstream, tmp_path / "settings.toml")  # what the demo's world serves: the rates among it
    with httpx.Client(base_url=url, timeout=5) as plain:
        assert plain.get("/rate/EUR").json()["currency"] == "EUR"
        for path in ("/rate/eur", "/rate/EURO", "/rate/XYZ", "/rate/", "/rate/E%0AR"):
            assert plain.get(path).status_code == 404, path
        etag = plain.get("/rate/EUR").headers["etag"]
        assert plain.get("/rate/EUR", headers={"If-None-Match": etag}).status_code == 304


async def test_an_unquoted_currency_is_a_404_and_a_new_one_is_a_503_while_the_upstream_is_down(
    local_upstream: tuple[Upstream, str], tmp_path: Path
) -> None:
    """XYZ: 404, kept (asked again, no fetch). Upstream down: EUR keeps its rate, a cold GBP is 503, then loads once back."""
    upstream, url = local_upstream
    async with running_demo(local_upstream, tmp_path) as (_, client):
        for _ in range(3):
            unquoted = await client.get("/rate", params={"currency": "xyz"})
            assert unquoted.status_code == 404
            assert unquoted.json() == {"detail": {"error": "the upstream quotes no rate for XYZ"}}
        assert upstream.requests["/rate/XYZ"] == 1

        eur = (await client.get("/rate", params={"currency": "EUR"})).json()
        assert (await client.post("/upstream/down")).json()["down"] is True
        assert (await client.get("/rate", params={"currency": "EUR"})).json() == eur, "the last good rate"
        cold = await client.get("/rate", params={"currency": "GBP"})
        assert cold.status_code == 503
        detail = cold.json()["detail"]
        assert detail["name"] == "rates"
        assert f"key 'GBP' could not load: SourceError: HTTP 503 from GET {url}/rate/GBP" in detail["error"]
        failing = (await client.get("/rates")).json()
        assert failing["failures"] >= 1
        assert failing["last_error"] == f"SourceError: HTTP 503 from GET {url}/rate/GBP"

        await client.post("/upstream/up")
        answers: list[httpx.Response] = []

        async def loaded() -> bool:
            answers.append(await client.get("/rate", params={"currency": "GBP"}))
            return answers[-1].status_code == 200

        for _ in range(100):  # asked every 100 ms: it loads once its backoff (1 s) is over
            if await loaded():
                break
            await anyio.sleep(0.1)
        assert [answer.status_code for answer in answers][-1] == 200, "GBP loads once the upstream is back"
        assert {answer.status_code for answer in answers[:-1]} <= {503}
        assert answers[-1].json()["currency"] == "GBP"


async def test_a_rate_asked_for_follows_the_upstream(
    local_upstream: tuple[Upstream, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While asked for, a currency is refreshed every RATE_EVERY: the rates the upstream moves reach /rate."""
    monkeypatch.setattr(demo, "RATE_EVERY", "100ms")
    async with running_demo(local_upstream, tmp_path, change_every=0.2) as (_, client):
        first = (await client.get("/rate", params={"currency": "CHF"})).json()
        seen = {first["per_usd"]}
        with anyio.fail_after(10):
            while len(seen) < 3:
                await anyio.sleep(0.05)
                seen.add((await client.get("/rate", params={"currency": "CHF"})).json()["per_usd"])
        assert all(abs(rate / RATES["CHF"] - 1) <= 0.02 + 1e-4 for rate in seen), seen
        usd = (await client.get("/rate", params={"currency": "USD"})).json()
        assert usd["per_usd"] == 1.0, "the dollar never moves"


def test_welcome_greets_everyone_in_the_names() -> None:
    """The compute of the derived welcome: the settings' greeting, the names joined as a sentence."""
    assert welcome(["ada"], {"greeting": "hello"}) == "Hello, ada!"
    assert welcome(["ada", "grace"], {"greeting": "bonjour"}) == "Bonjour, ada and grace!"
    assert welcome(NAMES[2], {"greeting": "hi"}) == "Hi, barbara, margaret and radia!"
    assert welcome(BROKEN_NAMES, {"greeting": "hello"}) == "Hello, nobody!"
    assert welcome(["ada"], {}) == "Hello, ada!", "settings without a greeting"


async def test_the_derived_welcome_follows_its_inputs_in_the_same_snapshot(
    local_upstream: tuple[Upstream, str], tmp_path: Path
) -> None:
    """When names or settings change, welcome is recomputed and published with them; /data shows it after its inputs."""
    upstream, _ = local_upstream
    settings = tmp_path / "settings.toml"
    async with running_demo(local_upstream, tmp_path) as (app, client):
        handle = app.handle
        seen: list[tuple[Any, Any, Any]] = []

        def consistent() -> None:
            # What a request would see: the inputs and the value derived from them, one snapshot.
            names, greeting = handle.value("names"), handle.value("settings")["greeting"]
            seen.append((names, greeting, handle.value("welcome")))

        data = (await client.get("/data")).json()
        assert list(data)[:3] == ["names", "settings", "welcome"], "welcome comes right after its inputs"
        assert data["welcome"]["value"] == "Hello, ada and grace!"
        assert data["welcome"]["origin"] == "computed"
        assert data["welcome"]["derived"] == {"inputs": ["names", "settings"], "inputs_moved_on": False}
        assert data["names"]["derived"] is None

        upstream.set("/names", NAMES[1])
        await handle.refresh("names")
        consistent()
        settings.write_text('greeting = "bonjour"\nbanner = true\n')
        await handle.refresh("settings")
        consistent()
        assert (await client.post("/upstream/break")).status_code == 200
        await handle.refresh("names")  # held back by the guard: welcome does not move
        consistent()
        await handle.accept("names")
        consistent()
        assert seen == [
            (NAMES[1], "hello", "Hello, ada, grace and katherine!"),
            (NAMES[1], "bonjour", "Bonjour, ada, grace and katherine!"),
            (NAMES[1], "bonjour", "Bonjour, ada, grace and katherine!"),
            (BROKEN_NAMES, "bonjour", "Bonjour, nobody!"),
        ]
        recomputed = await client.post("/refresh/welcome")
        assert recomputed.status_code == 200
        assert recomputed.json()["value"] == "Bonjour, nobody!"
        status = (await client.get("/status")).json()
        assert status["welcome"]["source"] == "derived"
        assert status["welcome"]["last_error"] is None


def test_the_demo_page_shows_a_rate_per_currency_and_the_derived_welcome(
    local_upstream: tuple[Upstream, str], tmp_path: Path
) -> None:
    """In Chromium: welcome changes with the names; the rate form shows a rate, a refusal, a 404 and a 503."""
    upstream, url = local_upstream
    problems: list[str] = []
    expected_failures = re.compile(r"/rate\?currency=")  # the 400, 404 and 503 this test asks for
    app = build(upstream, url, tmp_path / "settings.toml", change_every=3600)
    with serve(app, lifespan="on") as site, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1000})
            page.on("pageerror", lambda error: problems.append(str(error)))

            def on_dialog(dialog: Dialog) -> None:  # an alert() would mean typed text ran as HTML
                problems.append(f"a dialog: {dialog.message}")
                dialog.dismiss()

            page.on("dialog", on_dialog)
            page.on(
                "response",
                lambda response: (
                    problems.append(f"{response.status} {response.url}")
                    if response.status >= 400
                    and not response.url.endswith("/favicon.ico")
                    and not expected_failures.search(response.url)
                    else None
                ),
            )
            page.goto(site)
            welcome_row = page.locator("tr[data-name=welcome]")
            expect(welcome_row.locator("td.value")).to_have_text('"Hello, ada and grace!"')
            expect(welcome_row.locator("td.origin")).to_have_text("computed")
            derived = page.locator("tr[data-lkg=welcome] section.derived")
            expect(derived.locator("h2")).to_have_text("Derived from names and settings")
            upstream.set("/names", NAMES[1])  # names is fetched every 3 s, the page reads every 2 s
            expect(welcome_row.locator("td.value")).to_have_text(
                '"Hello, ada, grace and katherine!"', timeout=20_000
            )
            expect(page.locator("tr[data-name=names] td.value")).to_have_text('["ada","grace","katherine"]')

            rate, family = page.locator("#rate"), page.locator("#family")
            expect(rate).to_have_text("")
            expect(family).to_have_text(re.compile(r"^rates holds 1 currency \(at most 50\): 1 first load, "))
            ask = page.get_by_role("button", name="Get the rate")
            ask.click()  # EUR, the field's first value
            expect(rate).to_have_text(re.compile(r"^EUR \d+\.\d+ per US dollar, quoted (now|\d+ s ago)$"))
            expect(rate.locator("strong")).to_have_text("EUR")
            page.fill("#currency", "<img src=x onerror=alert(1)>")
            ask.click()
            expect(rate).to_have_text("Refused (HTTP 400): a currency is three letters, like EUR.")
            expect(rate).to_have_class("refused")
            assert page.locator("#rates img").count() == 0, "nothing the user typed is put in as HTML"
            page.fill("#currency", "xyz")
            ask.click()
            expect(rate).to_have_text("Not quoted (HTTP 404): the upstream quotes no rate for XYZ.")
            expect(rate).to_have_class("failed")

            page.get_by_role("button", name="Take it down").click()
            page.fill("#currency", "gbp")
            ask.click()
            expect(rate).to_have_text(re.compile(r"^No rate \(HTTP 503\): .*key 'GBP' could not load"))
            expect(family).to_have_text(
                re.compile(r"Last error: SourceError: HTTP 503 from GET \S+/rate/GBP$")
            )
            page.fill("#currency", "EUR")
            ask.click()
            expect(rate).to_have_text(re.compile(r"^EUR \d+\.\d+ per US dollar"))
            page.get_by_role("button", name="Bring it back").click()
            page.fill("#currency", "GBP")
            ask.click()  # asked again every 2 s: loads once GBP's backoff is over
            expect(rate).to_have_text(re.compile(r"^GBP \d+\.\d+ per US dollar"), timeout=20_000)
        finally:
            browser.close()
    assert problems == [], "the page ran without script errors or unexpected failed requests"
