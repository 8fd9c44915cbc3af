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
