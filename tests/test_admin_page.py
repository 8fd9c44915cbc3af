"""The status page in a real browser: headless Chromium driven by Playwright, against uvicorn.

Needs Chromium (Debian's ``chromium`` package). ``.ci/run`` installs it when
missing and runs with ``CI=true``, where a missing browser fails the test; only a
local run without it skips, saying what to install.
``ASGI_REFRESH_WRITE_DOCS=1`` also saves the screenshot the docs show.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import ConsoleMessage, Page, expect, sync_playwright

from asgi_refresh import Refresher, RefresherFamily, RefreshMiddleware, max_shrink, required_keys
from asgi_refresh.demo.upstream import serve

from .helpers import ScriptedApp

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
