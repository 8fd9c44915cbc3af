"""The status page in a real browser: headless Chromium driven by Playwright, against uvicorn.

Needs Chromium (Debian's ``chromium`` package). ``.ci/run`` installs it when
missing and runs with ``CI=true``, where a missing browser fails the test; only a
local run without it skips, saying what to install.
``ASGI_REFRESH_WRITE_DOCS=1`` also saves the screenshot the docs show.
"""

from __future__ import annotations

import itertools
import os
import queue
import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import ConsoleMessage, Page, expect, sync_playwright

from asgi_refresh import (
    Fetched,
    Refresher,
    RefresherFamily,
    RefreshMiddleware,
    Source,
    SSESource,
    max_shrink,
    required_keys,
)
from asgi_refresh.demo.upstream import serve

from .helpers import ScriptedApp
from .sse_server_app import SSEUpstream

TOKEN = "token-typed-into-the-page"
SCREENSHOT = Path(__file__).parent.parent / "docs" / "images" / "status-page.png"


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        reason = "Chromium is missing: apt-get install chromium (.ci/run does this)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return found


def build_app() -> RefreshMiddleware:
    counter = itertools.count(1)

    async def names() -> list[str]:
        return [f"name-{next(counter)}"]

    async def rates() -> dict[str, float]:
        raise ConnectionError("rates.example is unreachable")

    return RefreshMiddleware(
        ScriptedApp(),
        refreshers=[
            Refresher("names", names, every="1h", max_stale="3h"),
            Refresher("feature_flags", lambda: {"beta": True}, every="5m"),
            Refresher("rates", rates, every="10m", required=False, default={}, backoff_initial="1m"),
        ],
        admin_path="/_refresh",
        admin_token=TOKEN,
        startup_timeout="10s",
    )


def test_status_page_shows_the_refreshers_and_refreshes_one() -> None:
    """Load the page, type the token, read the table, click Refresh and see the count go up."""
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error" and "401" not in message.text:  # the first load, before the token
            problems.append(message.text)

    with serve(build_app(), lifespan="on") as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 420})
            page.on("console", on_console)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.goto(f"{url}/_refresh")
            expect(page.locator("#message")).to_have_text("Enter the admin token to see the refreshers.")

            page.fill("#token", TOKEN)
            page.get_by_role("button", name="Use token").click()
            names = page.locator("tr[data-name=names]")
            expect(names.locator("td.count")).to_have_text("1")
            expect(names.locator("td.state")).to_have_text("ok")
            rows = page.locator("#rows tr")
            expect(rows).to_have_count(3)
            assert [row.get_attribute("data-name") for row in rows.all()] == [
                "names",
                "feature_flags",
                "rates",
            ]
            rates = page.locator("tr[data-name=rates]")
            expect(rates.locator("td.state")).to_have_text("missing")
            expect(rates.locator("td.error")).to_have_text("ConnectionError: rates.example is unreachable")

            names.get_by_role("button", name="Refresh").click()
            expect(names.locator("td.count")).to_have_text("2")
            expect(page.locator("#message")).to_have_text("Refreshed names.")

            page.reload()  # the token stays for the tab (sessionStorage)
            expect(names.locator("td.count")).to_have_text("2")
            expect(names.locator("td.origin")).to_have_text("fetched")
            expect(page.locator("#rows tr.lkg")).to_have_count(0)  # nothing kept: no second row
        finally:
            browser.close()
    assert problems == [], "the page ran without script errors or CSP violations"


# A key an upstream could send: shown as text, it stays text (the page never parses data as HTML).
HOSTILE_KEY = "<img src=x onerror=window.pwned=1>"


class LastKnownGoodUpstream:
    """What the refreshers of `last_known_good_app` fetch; the test changes it between clicks."""

    def __init__(self) -> None:
        self.names = ["ada", "grace", "katherine", "barbara"]
        self.flags: dict[str, bool] = {"beta": True}
        self.rates_down = False


def last_known_good_app(upstream: LastKnownGoodUpstream, snapshots: Path) -> RefreshMiddleware:
    async def names() -> list[str]:
        return list(upstream.names)

    async def flags() -> dict[str, bool]:
        return dict(upstream.flags)

    async def rates() -> dict[str, float]:
        if upstream.rates_down:
            raise ConnectionError("rates.example is unreachable")
        return {"EUR": 1.0, "USD": 1.08}

    return RefreshMiddleware(
        ScriptedApp(),
        refreshers=[
            Refresher("names", names, every="1h", guard=max_shrink(0.5), keep_versions=5),
            Refresher("flags", flags, every="1h", guard=required_keys("beta")),
            Refresher("rates", rates, every="10m", backoff_initial="1m"),
        ],
        snapshot_dir=snapshots,
        admin_path="/_refresh",
        admin_token=TOKEN,
        startup_timeout="10s",
    )


def click(page: Page, name: str, label: str, message: str | re.Pattern[str]) -> None:
    """Click ``label`` for refresher ``name`` (in its row or its last-known-good row); wait for ``message``."""
    rows = page.locator(f"#rows tr[data-name={name}], #rows tr[data-lkg={name}]")
    rows.get_by_role("button", name=label, exact=True).click()
    expect(page.locator("#message")).to_have_text(message)


def test_status_page_shows_last_known_good_and_acts_on_it(tmp_path: Path) -> None:
    """Snapshot origin, a quarantine with Accept/Reject, kept versions with Pin/Rollback/Unpin: all from the page."""
    upstream = LastKnownGoodUpstream()
    snapshots = tmp_path / "snapshots"
    with serve(last_known_good_app(upstream, snapshots), lifespan="on"):
        pass  # a first run: it leaves a snapshot of each value
    upstream.rates_down = True  # the second run starts without the rates' upstream
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        # Chromium logs each error status: the first load (401) and the refused Accept (409).
        if message.type == "error" and not re.search(r"status of (401|409)\b", message.text):
            problems.append(message.text)

    middleware = last_known_good_app(upstream, snapshots)
    with serve(middleware, lifespan="on") as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 700})
            page.on("console", on_console)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.goto(f"{url}/_refresh")
            page.fill("#token", TOKEN)
            page.get_by_role("button", name="Use token").click()

            # The rates come from the snapshot the first run left: flagged, with its age.
            rates = page.locator("tr[data-name=rates]")
            expect(rates.locator("td.origin")).to_have_text(re.compile(r"^snapshot, \d+ s old$"))
            expect(rates.locator("td.origin")).to_have_class("origin flag")
            expect(rates.locator("td.error")).to_have_text("ConnectionError: rates.example is unreachable")
            expect(page.locator("tr[data-lkg=rates] section.snapshot")).to_contain_text(
                "Serving its snapshot of a value fetched"
            )
            assert middleware.handle.value("rates") == {"EUR": 1.0, "USD": 1.08}

            # names keeps versions: each one listed, newest first, with a Pin button.
            names = page.locator("tr[data-name=names]")
            details = page.locator("tr[data-lkg=names]")
            expect(names.locator("td.origin")).to_have_text("fetched")
            upstream.names = ["ada", "grace", "katherine", "barbara", "margaret"]
            click(page, "names", "Refresh", "Refreshed names.")
            kept = [each["id"] for each in middleware.handle.status()["names"]["versions"]]
            assert len(kept) == 2
            expect(details.locator("table.versions tr")).to_have_count(2)
            assert [
                row.get_attribute("data-version") for row in details.locator("table.versions tr").all()
            ] == kept
            expect(details.locator(f"tr[data-version='{kept[0]}']")).to_contain_text("published")

            # A value that lost most of its items is held back: reason, summary, Accept and Reject.
            upstream.names = ["ada"]
            click(page, "names", "Refresh", "Refreshed names. A guard holds the value it fetched back.")
            held = details.locator("section.quarantine")
            expect(held.locator(".reason")).to_have_text(
                "it shrank from 5 to 1 items (80%), more than max_shrink allows (50%)"
            )
            expect(held.locator(".summary")).to_have_text("list of 5 → list of 1")
            expect(held.get_by_role("button", name="Accept")).to_be_visible()
            shot = page.screenshot(full_page=True)  # the docs show this moment
            click(page, "names", "Reject", "Rejected: names keeps its published value.")
            expect(held.locator("h2")).to_have_text("Held back (rejected)")
            assert middleware.handle.value("names") == ["ada", "grace", "katherine", "barbara", "margaret"]
            click(page, "names", "Accept", "Accepted: names publishes the value that was held back.")
            expect(held).to_have_count(0)
            assert middleware.handle.value("names") == ["ada"]
            kept = [each["id"] for each in middleware.handle.status()["names"]["versions"]]
            expect(details.locator("table.versions tr")).to_have_count(3)

            # Rollback pins the version before; the upstream's newer value shows beside it.
            click(page, "names", "Rollback", "Rolled names back to the version before.")
            expect(names.locator("td.origin")).to_have_text(f"pinned to {kept[1]}")
            expect(names.locator("td.origin")).to_have_class("origin flag")
            assert middleware.handle.value("names") == ["ada", "grace", "katherine", "barbara", "margaret"]
            expect(details.locator(f"tr[data-version='{kept[1]}'] td").last).to_have_text("pinned")
            expect(details.locator("section.pin .upstream")).to_have_text(
                "Upstream now: nothing fetched since the pin."
            )
            upstream.names = ["ada", "grace"]
            click(
                page,
                "names",
                "Refresh",
                "Refreshed names. It is pinned: the value it fetched is not published.",
            )
            expect(details.locator("section.pin .upstream")).to_have_text(
                re.compile(r"^Upstream now: \d+ B, digest [0-9a-f]{8}, fetched (just now|\d+ s ago)$")
            )
            # Pin any kept version by its button.
            details.locator(f"tr[data-version='{kept[2]}']").get_by_role("button", name="Pin").click()
            expect(page.locator("#message")).to_have_text(f"Pinned names to {kept[2]}.")
            expect(names.locator("td.origin")).to_have_text(f"pinned to {kept[2]}")
            assert middleware.handle.value("names") == ["ada", "grace", "katherine", "barbara"]
            click(page, "names", "Unpin", "Unpinned: names follows its upstream again.")
            expect(names.locator("td.origin")).to_have_text("fetched")
            expect(details.locator("section.pin")).to_have_count(0)
            assert middleware.handle.value("names") == ["ada", "grace"]

            # The server's reason for a refused action (409) is what the page shows.
            page.evaluate('post("names", "Accept", "/accept", "accepted")')
            expect(page.locator("#message")).to_have_text(
                "Refresher 'names' holds no value back; nothing to accept"
            )

            # Keys from upstream are shown as text: a key that looks like HTML stays text.
            upstream.flags = {HOSTILE_KEY: True}
            click(page, "flags", "Refresh", "Refreshed flags. A guard holds the value it fetched back.")
            flags_held = page.locator("tr[data-lkg=flags] section.quarantine")
            expect(flags_held.locator(".reason")).to_have_text("it lacks required keys: 'beta'")
            expect(flags_held.locator(".keys").first).to_have_text(f"Keys added (1): {HOSTILE_KEY}")
            expect(flags_held.locator(".keys").last).to_have_text("Keys removed (1): beta")
            assert page.locator("img").count() == 0
            assert page.evaluate("window.pwned") is None
        finally:
            browser.close()
    assert problems == [], "the page ran without script errors or CSP violations"
    assert shot.startswith(b"\x89PNG")
    if os.environ.get("ASGI_REFRESH_WRITE_DOCS") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        SCREENSHOT.write_bytes(shot)
    assert SCREENSHOT.exists(), "docs/images/status-page.png: run with ASGI_REFRESH_WRITE_DOCS=1 to make it"


def loopback_only_app() -> RefreshMiddleware:
    counter = itertools.count(1)

    async def names() -> list[str]:
        return [f"name-{next(counter)}"]

    return RefreshMiddleware(
        ScriptedApp(),
        refreshers=[Refresher("names", names, every="1h")],
        admin_path="/_refresh",
        admin_loopback_only=True,
        startup_timeout="10s",
    )


ATTACK = """<!doctype html>
<form id="form" method="post" action="{target}"></form>
<script>
fetch("{target}", {{method: "POST", mode: "no-cors"}}).finally(() => document.getElementById("form").submit());
</script>
"""


def attacker(target: str) -> Any:
    """A web page of another origin that posts to the admin endpoint twice: a fetch, then a form."""
    page = ATTACK.format(target=target).encode()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/html")]}
        )
        await send({"type": "http.response.body", "body": page})

    return app


def test_loopback_only_page_refreshes_and_other_origins_cannot() -> None:
    """Without a token: the page's own Refresh works; a page on another port posts twice and gets 403 twice."""
    middleware = loopback_only_app()
    with serve(middleware, lifespan="on") as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(f"{url}/_refresh")
            names = page.locator("tr[data-name=names]")
            expect(names.locator("td.count")).to_have_text("1")
            names.get_by_role("button", name="Refresh").click()
            expect(page.locator("#message")).to_have_text("Refreshed names.")
            expect(names.locator("td.count")).to_have_text("2")

            refused: list[int] = []
            with serve(attacker(f"{url}/_refresh/names")) as evil:
                evil_page = browser.new_page()
                evil_page.on(
                    "response",
                    lambda response: (
                        refused.append(response.status) if "/_refresh/names" in response.url else None
                    ),
                )
                with (
                    evil_page.expect_response(lambda response: "/_refresh/names" in response.url),
                    evil_page.expect_navigation(url=f"{url}/_refresh/names"),
                ):
                    evil_page.goto(evil)
            assert refused == [403, 403], "the fetch and the form post are both refused"
            assert "cross-origin requests are refused" in evil_page.content()
            assert middleware.handle.status()["names"]["refresh_count"] == 2, "nothing was refreshed"
        finally:
            browser.close()


# -- a streaming refresher's connection (status()["<name>"]["stream"]) ----------------------


@contextmanager
def serve_on(backend: str, app: Any) -> Iterator[str]:
    """Run ``app`` with its lifespan on 127.0.0.1: uvicorn for asyncio, hypercorn's trio worker for trio."""
    if backend == "asyncio":
        with serve(app, lifespan="on") as url:
            yield url
        return
    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve

    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    started: queue.Queue[tuple[str, Any, Any] | BaseException] = queue.Queue()

    async def main() -> None:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(partial(hypercorn_serve, app, config, shutdown_trigger=stop.wait))
            started.put((binds[0], trio.lowlevel.current_trio_token(), stop))

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # handed to the test's thread, which raises it
            started.put(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    running = started.get(timeout=20)
    if isinstance(running, BaseException):
        raise RuntimeError("hypercorn (trio) did not start") from running
    url, token, stop = running
    try:
        yield url
    finally:
        trio.from_thread.run_sync(stop.set, trio_token=token)
        thread.join(10)


class Reporting(Source):
    """A source of one's own whose ``state()`` reports what the test gives it."""

    kind = "feed"

    def __init__(self, state: Any) -> None:
        self.reported = state

    async def fetch(self) -> Fetched:
        return Fetched({"items": [1, 2]})

    def state(self) -> Any:
        if isinstance(self.reported, BaseException):
            raise self.reported
        return self.reported() if callable(self.reported) else self.reported


def iso_ago(seconds: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat()


def open_page(browser: Any, url: str, problems: list[str]) -> Page:
    """A page of the status, the token typed in; console errors and page errors go to ``problems``."""

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error" and "401" not in message.text:  # the first load, before the token
            problems.append(message.text)

    page: Page = browser.new_page(viewport={"width": 1100, "height": 600})
    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(f"{url}/_refresh")
    page.fill("#token", TOKEN)
    page.get_by_role("button", name="Use token").click()
    return page


def streams_app() -> RefreshMiddleware:
    # Times as of each status(): the ages the page shows do not depend on how fast it loads.
    def connected() -> dict[str, Any]:
        return {
            "connected": True,
            "connected_since": iso_ago(30),
            "last_event_at": iso_ago(5),
            "reconnects": 1,
            "events": 42,
            "refused_events": 0,
            "last_error": "SSE http://127.0.0.1/feed: the server ended the stream",
        }

    def down() -> dict[str, Any]:
        return {
            "connected": False,
            "connected_since": None,
            "last_event_at": iso_ago(600),
            "reconnects": 3,
            "events": 7,
            "refused_events": 2,
            "last_error": "SSE http://127.0.0.1/news: 503 Service Unavailable",
        }

    return RefreshMiddleware(
        ScriptedApp(),
        refreshers=[
            Refresher("feed", Reporting(connected), every="1h"),
            Refresher("news", Reporting(down), every="1h"),
            Refresher("names", lambda: ["ada"], every="1h"),
        ],
        admin_path="/_refresh",
        admin_token=TOKEN,
        startup_timeout="10s",
    )


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_status_page_shows_a_streams_state(backend: str) -> None:
    """A connected stream: "streaming", since when, last event, counts; a down one: "stream down" and its error."""
    problems: list[str] = []
    with serve_on(backend, streams_app()) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            page = open_page(browser, url, problems)
            feed = page.locator("tr[data-name=feed]")
            expect(feed.locator(".badge")).to_have_text("streaming")
            expect(feed.locator(".badge")).to_have_class("badge streaming")
            expect(feed.locator("td").nth(3)).to_have_text("feedstreaming")
            panel = page.locator("tr[data-lkg=feed] section.stream")
            expect(panel).to_have_class("stream up")
            expect(panel.locator("h2")).to_have_text("Stream connected")
            # Ages as of the page's render, 30 s and 5 s at status(): older by however long the
            # page took to read and render it (it reads every 3 s), the same for both (each
            # rounded to the second on its own).
            since = r"^Connected since ({}) s ago; last event (\d+) s ago\.$"
            expect(panel.locator(".since")).to_have_text(re.compile(since.format(r"3\d")))
            ages = re.fullmatch(since.format(r"\d+"), panel.locator(".since").text_content() or "")
            assert ages is not None
            assert abs(int(ages[1]) - int(ages[2]) - 25) <= 1, ages[0]
            tooltip = panel.locator(".since time").first.get_attribute("title")
            assert tooltip is not None
            assert tooltip.endswith("+00:00")
            expect(panel.locator(".counts")).to_have_text("Reconnects: 1, events: 42, refused events: 0")
            expect(panel.locator(".error")).to_have_text(
                "Last error: SSE http://127.0.0.1/feed: the server ended the stream"
            )

            news = page.locator("tr[data-name=news]")
            expect(news.locator(".badge")).to_have_text("stream down")
            expect(news.locator(".badge")).to_have_class("badge down")
            down = page.locator("tr[data-lkg=news] section.stream")
            expect(down).to_have_class("stream down")
            expect(down.locator("h2")).to_have_text("Stream down")
            expect(down.locator(".since")).to_have_text("Last event 10 min ago.")
            expect(down.locator(".counts")).to_have_text("Reconnects: 3, events: 7, refused events: 2")
            expect(down.locator(".error")).to_have_text(
                "Last error: SSE http://127.0.0.1/news: 503 Service Unavailable"
            )
            expect(news.locator("td.state")).to_have_text("ok")  # the value it has is still good

            # A refresher without a stream looks as before: no badge, no second row.
            names = page.locator("tr[data-name=names]")
            expect(names.locator("td.count")).to_have_text("1")
            expect(names.locator("td").nth(3)).to_have_text("python")
            expect(names.locator(".badge")).to_have_count(0)
            expect(names).not_to_have_class(re.compile("has-lkg"))
            expect(page.locator("tr[data-lkg=names]")).to_have_count(0)
        finally:
            browser.close()
    assert problems == [], "the page ran without script errors or CSP violations"


# What a state() of one's own might return: markup in every string, wrong types, nesting, sizes.
SCRIPT = "<script>window.pwned=1</script>"
IMAGE = "<img src=x onerror=window.pwned=1>"


def hostile_app() -> RefreshMiddleware:
    odd = {
        "connected": "<b>yes</b>",
        "connected_since": SCRIPT,
        "last_event_at": 12345,
        "reconnects": "1; DROP TABLE",
        "events": -5,
        "refused_events": 1.5,
        "last_error": 404,
        "nested": {"connected": True, "last_error": IMAGE},
        "list": [IMAGE, {"a": [1, 2]}],
        IMAGE: IMAGE,
    }
    loud = {
        "connected": False,
        "connected_since": IMAGE,
        "last_event_at": "x" * 10_000,
        "reconnects": 2**60,  # kept by status(), past what a browser counts exactly
        "events": 10**30,  # left out by status(): no counter is that big
        "refused_events": float("nan"),  # left out by status(): not JSON
        "last_error": IMAGE + "A" * 100_000,
    }
    return RefreshMiddleware(
        ScriptedApp(),
        refreshers=[
            Refresher("odd", Reporting(odd), every="1h"),
            Refresher("loud", Reporting(loud), every="1h"),
            Refresher("broken", Reporting(RuntimeError(IMAGE)), every="1h"),
            Refresher("not_a_mapping", Reporting([IMAGE, SCRIPT]), every="1h"),
            Refresher("names", lambda: ["ada"], every="1h"),
        ],
        admin_path="/_refresh",
        admin_token=TOKEN,
        startup_timeout="10s",
    )


# Straight into the page's render(): what status() can never send (its bounds drop it), checked
# all the same, as the page must not trust that the server bounded it.
RENDER_JUNK = """(junk) => {
  render({refreshers: {
    as_array: {source: "feed", last_success_at: null, last_error: null, stream: junk.array},
    as_text: {source: "feed", last_success_at: null, last_error: null, stream: junk.text},
    nested: {source: "feed", last_success_at: null, last_error: null, stream: junk.nested},
    huge: {source: "feed", last_success_at: null, last_error: null, stream: junk.huge},
  }});
  const read = (name) => {
    const badge = document.querySelector(`tr[data-name=${name}] .badge`);
    const panel = document.querySelector(`tr[data-lkg=${name}] section.stream`);
    return {
      badge: badge ? badge.textContent : null,
      panel: panel ? panel.textContent : null,
      error: panel && panel.querySelector(".error") ? panel.querySelector(".error").textContent : null,
      title: panel && panel.querySelector(".error") ? panel.querySelector(".error").title.length : null,
    };
  };
  return {rows: document.querySelectorAll("#rows tr[data-name]").length, as_array: read("as_array"),
          as_text: read("as_text"), nested: read("nested"), huge: read("huge"),
          images: document.querySelectorAll("img, iframe").length,
          scripts: document.querySelectorAll("script").length};
}"""


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_status_page_shows_a_hostile_state_as_bounded_text(backend: str) -> None:
    """Markup, wrong types, nesting and huge values from a state() of one's own: text, bounded; other rows unharmed."""
    problems: list[str] = []
    with serve_on(backend, hostile_app()) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            page = open_page(browser, url, problems)
            names = page.locator("tr[data-name=names]")
            expect(names.locator("td.count")).to_have_text("1")
            expect(names.locator("td.state")).to_have_text("ok")
            expect(page.locator("#rows tr[data-name]")).to_have_count(5)

            # Wrong types: shown as unknown ("–"), never as what they say.
            odd = page.locator("tr[data-name=odd]")
            expect(odd.locator(".badge")).to_have_text("stream")
            expect(odd.locator(".badge")).to_have_class("badge unknown")
            panel = page.locator("tr[data-lkg=odd] section.stream")
            expect(panel.locator("h2")).to_have_text("Stream")
            expect(panel.locator(".since")).to_have_text("Last event none yet.")
            expect(panel.locator(".counts")).to_have_text("Reconnects: –, events: –, refused events: –")
            expect(panel.locator(".error")).to_have_count(0)

            # Markup stays text; the error is cut to 300 characters (500 in its tooltip, status()'s bound).
            loud = page.locator("tr[data-name=loud]")
            expect(loud.locator(".badge")).to_have_text("stream down")
            panel = page.locator("tr[data-lkg=loud] section.stream")
            expect(panel.locator(".since")).to_have_text("Last event none yet.")
            expect(panel.locator(".counts")).to_have_text("Reconnects: –, events: –, refused events: –")
            shown = (IMAGE + "A" * 300)[:300]
            expect(panel.locator(".error")).to_have_text(f"Last error: {shown}…")
            title = panel.locator(".error").get_attribute("title")
            assert title == (IMAGE + "A" * 500)[:500]

            # A state() that raises, or returns no mapping: no stream shown, the row as any other.
            for name in ("broken", "not_a_mapping"):
                row = page.locator(f"tr[data-name={name}]")
                expect(row.locator("td.state")).to_have_text("ok")
                expect(row.locator(".badge")).to_have_count(0)
                expect(page.locator(f"tr[data-lkg={name}]")).to_have_count(0)

            assert page.locator("img, iframe").count() == 0
            assert page.locator("script").count() == 1  # the page's own
            assert page.evaluate("window.pwned") is None

            # What status() never sends, straight into render(): still text, still bounded.
            junk = {
                "array": [True, IMAGE],
                "text": IMAGE,
                "nested": {
                    "connected": {"nested": True},
                    "connected_since": [IMAGE],
                    "last_event_at": {"toString": IMAGE},
                    "reconnects": {"valueOf": 3},
                    "events": [5],
                    "refused_events": None,
                    "last_error": {"text": IMAGE},
                },
                "huge": {
                    "connected": True,
                    "connected_since": "2026-12-02T15:12:56+00:00" + "9" * 100_000,
                    "last_error": SCRIPT * 100_000,
                    "events": 2**53,
                },
            }
            seen = page.evaluate(RENDER_JUNK, junk)
            assert seen["rows"] == 4
            assert seen["as_array"] == {"badge": None, "panel": None, "error": None, "title": None}
            assert seen["as_text"] == {"badge": None, "panel": None, "error": None, "title": None}
            assert seen["nested"] == {
                "badge": "stream",
                "panel": "StreamLast event none yet.Reconnects: –, events: –, refused events: –",
                "error": None,
                "title": None,
            }
            assert seen["huge"]["badge"] == "streaming"
            assert seen["huge"]["panel"].startswith("Stream connectedConnected since –; last event none yet.")
            assert seen["huge"]["error"] == "Last error: " + (SCRIPT * 100)[:300] + "…"
            assert seen["huge"]["title"] == 2000
            assert seen["images"] == 0
            assert seen["scripts"] == 1
            assert page.evaluate("window.pwned") is None
        finally:
            browser.close()
    assert problems == [], "the page ran without script errors or CSP violations"


@pytest.fixture
def sse_upstream() -> Iterator[tuple[SSEUpstream, str]]:
    upstream = SSEUpstream(keepalive=0.2)
    with serve(upstream) as base_url:
        upstream.base_url = base_url
        try:
            yield upstream, base_url
        finally:
            upstream.drop()  # uvicorn waits for open responses at shutdown


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_status_page_follows_a_real_sse_stream(backend: str, sse_upstream: tuple[SSEUpstream, str]) -> None:
    """An SSESource on a real stream: "streaming" with its events counted, then "stream down" with the error."""
    upstream, base_url = sse_upstream
    upstream.emit({"v": 1})
    middleware = RefreshMiddleware(
        ScriptedApp(),
        refreshers=[
            Refresher(
                "prices",
                SSESource(f"{base_url}/stream", fetch_url=f"{base_url}/doc", reconnect_delay=0.05),
                every="1h",
            )
        ],
        admin_path="/_refresh",
        admin_token=TOKEN,
        startup_timeout="10s",
    )
    problems: list[str] = []
    with serve_on(backend, middleware) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            page = open_page(browser, url, problems)
            prices = page.locator("tr[data-name=prices]")
            panel = page.locator("tr[data-lkg=prices] section.stream")
            expect(prices.locator(".badge")).to_have_text("streaming")
            upstream.emit({"v": 2})
            page.evaluate("load()")  # not waiting for the next reload, 3 s away
            expect(panel.locator(".counts")).to_have_text("Reconnects: 0, events: 2, refused events: 0")
            expect(panel.locator(".since")).to_have_text(
                re.compile(r"^Connected since (just now|\d+ s ago); last event (just now|\d+ s ago)\.$")
            )

            upstream.refuse = True  # the reconnects get a 503: the stream stays down
            upstream.drop()
            page.evaluate("load()")
            expect(prices.locator(".badge")).to_have_text("stream down")
            expect(panel.locator("h2")).to_have_text("Stream down")
            expect(panel.locator(".error")).to_have_text(re.compile(r"^Last error: .*503"))
            expect(prices.locator("td.state")).to_have_text("ok")
        finally:
            browser.close()
    assert problems == [], "the page ran without script errors or CSP violations"


def test_a_family_shows_its_keys_and_no_refresh_button() -> None:
    """A family's row says how many keys it holds and has no Refresh button (its keys load when asked for)."""

    async def rate(key: str) -> float:
        return 1.0

    app = RefreshMiddleware(
        ScriptedApp(),
        refreshers=[Refresher("names", lambda: ["a"], every="1h")],
        families=[RefresherFamily("rates", rate, every="5m", preload=["EUR", "USD"])],
        admin_path="/_refresh",
        admin_token=TOKEN,
    )
    with serve(app, lifespan="on") as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(f"{url}/_refresh")
            page.fill("#token", TOKEN)
            page.get_by_role("button", name="Use token").click()
            rates = page.locator("tr[data-name=rates]")
            expect(rates.locator("td.origin")).to_have_text("2 keys")
            expect(rates.locator("td.state")).to_have_text("ok")
            expect(rates.get_by_role("button", name="Refresh")).to_have_count(0)
            expect(page.locator("tr[data-name=names]").get_by_role("button", name="Refresh")).to_have_count(1)
        finally:
            browser.close()
