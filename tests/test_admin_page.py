"""The status page in a real browser: headless Chromium driven by Playwright, against uvicorn.

Needs Chromium (Debian's ``chromium`` package). ``.ci/run`` installs it when
missing and runs with ``CI=true``, where a missing browser fails the test; only a
local run without it skips, saying what to install.
``ASGI_REFRESH_WRITE_DOCS=1`` also saves the screenshot the docs show.
"""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import ConsoleMessage, expect, sync_playwright

from asgi_refresh import Refresher, RefreshMiddleware
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
            shot = page.screenshot(full_page=True)
            assert shot.startswith(b"\x89PNG")
            if os.environ.get("ASGI_REFRESH_WRITE_DOCS") == "1":
                SCREENSHOT.parent.mkdir(exist_ok=True)
                SCREENSHOT.write_bytes(shot)
        finally:
            browser.close()
    assert problems == [], "the page ran without script errors or CSP violations"
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
