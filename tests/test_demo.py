"""The demo: in process (every endpoint, the world changing) and as ``python -m asgi_refresh.demo``."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager
from playwright.sync_api import expect, sync_playwright

from asgi_refresh.demo.app import build
from asgi_refresh.demo.upstream import Upstream, serve

from .test_admin_page import chromium
from .test_real_servers import BAD_SIGNS, free_port

pytestmark = pytest.mark.anyio


@pytest.fixture
def local_upstream() -> Iterator[tuple[Upstream, str]]:
    upstream = Upstream(token_lifetime=15)
    with serve(upstream) as url:
        yield upstream, url


async def test_the_demo_shows_values_that_change(
    local_upstream: tuple[Upstream, str], tmp_path: Path
) -> None:
    """The page, /data and /status answer; the upstream moves on and the data follows."""
    upstream, url = local_upstream
    app = build(upstream, url, tmp_path / "settings.toml", change_every=0.3)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
            page = await client.get("/")
            assert page.status_code == 200
            assert "<h1>asgi_refresh demo</h1>" in page.text
            data: dict[str, Any] = (await client.get("/data")).json()
            assert data["names"]["value"] == ["ada", "grace"]
            assert data["settings"]["value"] == {"greeting": "hello", "banner": False}
            assert data["token"]["value"] == "(secret)"
            assert data["orders"]["value"] == {"open orders": 3}
            await anyio.sleep(0.4)  # the world changes once
            for name in ("names", "settings", "orders"):
                assert (await client.post(f"/refresh/{name}")).status_code == 200
            assert (await client.post("/refresh/nope")).status_code == 404
            renewed = await client.post("/refresh/token")
            assert renewed.json()["value"] == "(secret)"
            assert upstream.tokens[-1] not in renewed.text + (await client.get("/status")).text
            data = (await client.get("/data")).json()
            assert data["names"]["value"] == ["ada", "grace", "katherine"]
            assert data["settings"]["value"] == {"greeting": "bonjour", "banner": True}
            assert data["orders"]["value"]["open orders"] >= 4
            status = (await client.get("/status")).json()
            assert status["token"]["expires_at"] is not None
            assert all(entry["last_error"] is None for entry in status.values())


async def test_a_failed_refresh_now_is_a_502_with_the_reason(
    local_upstream: tuple[Upstream, str], tmp_path: Path
) -> None:
    """POST /refresh/{name} whose fetch fails: 502 naming the cause; the last good value stays."""
    upstream, url = local_upstream
    settings = tmp_path / "settings.toml"
    app = build(upstream, url, settings, change_every=3600)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
            settings.write_text("greeting = [unclosed")
            failed = await client.post("/refresh/settings")
            assert failed.status_code == 502
            detail = failed.json()["detail"]
            assert detail["name"] == "settings"
            assert "invalid toml" in detail["error"], detail
            data = (await client.get("/data")).json()
            assert data["settings"]["value"] == {"greeting": "hello", "banner": False}


# In the page: read /data, render it with the page's own code, and return the data with
# the title and datetime of the settings' time cells.
SETTINGS_TIMES = """async () => {
  const data = await (await fetch("/data", {headers: {"Accept": "application/json"}})).json();
  render(data);
  const shown = {};
  for (const cell of ["fetched", "changed"]) {
    const time = document.querySelector(`tr[data-name=settings] td.${cell} time`);
    shown[cell] = [time.title, time.dateTime];
  }
  return [data, shown];
}"""


def test_the_demo_page_shows_relative_times_with_the_iso_time_as_tooltip(
    local_upstream: tuple[Upstream, str], tmp_path: Path
) -> None:
    """In Chromium: the page reads /data and shows "N s ago" / "in N s", the ISO time in each tooltip."""
    upstream, url = local_upstream
    problems: list[str] = []
    app = build(upstream, url, tmp_path / "settings.toml", change_every=3600)
    with serve(app, lifespan="on") as demo, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on(
                "response",
                lambda response: (
                    problems.append(f"{response.status} {response.url}")
                    if response.status >= 400 and not response.url.endswith("/favicon.ico")
                    else None
                ),
            )
            page.goto(demo)
            names = page.locator("tr[data-name=names]")
            expect(names.locator("td.value")).to_have_text('["ada","grace"]')
            expect(names.locator("td.fetched time")).to_have_text(re.compile(r"^(now|\d+ s ago)$"))
            expect(names.locator("td.next time")).to_have_text(re.compile(r"^(now|in \d+ s)$"))
            # The settings are fetched every 2 s and the page reads /data every 2 s: a /data
            # read here may be newer than the one on the page. So the page reads /data and
            # renders it, and the cells are read, in one go (nothing else runs in between).
            data, shown = page.evaluate(SETTINGS_TIMES)
            assert shown["fetched"] == [data["settings"]["last_success_at"]] * 2
            assert shown["changed"] == [data["settings"]["last_changed_at"]] * 2
            expect(page.locator("tr[data-name=token] td.value")).to_have_text('"(secret)"')
            seconds_from_now = {-12: "12 s ago", 180: "in 3 min", -7200: "2.0 h ago", 0.2: "now"}
            for offset, expected in seconds_from_now.items():
                shown = page.evaluate(
                    f"relative(new Date(Date.now() + {offset * 1000}).toISOString(), false)"
                )
                assert shown == expected
            assert page.evaluate("relative(new Date(Date.now() - 3000).toISOString(), true)") == "now"
        finally:
            browser.close()
    assert problems == [], "the page ran without script errors or failed requests"


async def test_the_upstream_accepts_the_previous_token_for_a_grace_period() -> None:
    """Just after a renewal the previous token still works (as with real token servers); after the grace, 401."""
    now = [100.0]
    upstream = Upstream(token_grace=5, clock=lambda: now[0])
    upstream.set("/protected", {"orders": 3})
    transport = httpx.ASGITransport(app=upstream)
    async with httpx.AsyncClient(transport=transport, base_url="http://upstream") as client:

        async def orders(token: str) -> int:
            response = await client.get("/protected", headers={"Authorization": f"Bearer {token}"})
            return response.status_code

        async def new_token() -> str:
            token: str = (await client.post("/token")).json()["access_token"]
            return token

        assert await orders("none-yet") == 401
        first = await new_token()
        assert await orders(first) == 200
        now[0] += 60
        second = await new_token()
        assert await orders(second) == 200
        assert await orders(first) == 200, "the previous token, right after the renewal"
        now[0] += 4.9
        assert await orders(first) == 200
        now[0] += 0.1
        assert await orders(first) == 401, "the previous token, once the grace period is over"
        assert await orders(second) == 200
        third = await new_token()
        assert await orders(first) == 401, "only the one before the newest is honoured"
        assert (await orders(second), await orders(third)) == (200, 200)


def test_the_readme_mentions_every_option_of_the_demo() -> None:
    """Each option that `python -m asgi_refresh.demo --help` lists is shown in the README, with the command."""
    done = subprocess.run(
        [sys.executable, "-m", "asgi_refresh.demo", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    options = set(re.findall(r"^  (--[a-z-]+)", done.stdout, re.MULTILINE)) - {"--help"}
    assert options == {"--port"}
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for option in options:
        assert re.search(rf"python -m asgi_refresh\.demo {option}\b", readme), option


def test_python_m_asgi_refresh_demo_serves_and_stops_cleanly() -> None:
    """The README's first command: it prints its URL, serves, and exits on Ctrl+C without a traceback."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "asgi_refresh.demo", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                data = httpx.get(f"http://127.0.0.1:{port}/data", timeout=1).json()
                break
            except httpx.TransportError:
                assert process.poll() is None, process.communicate()[0]
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert data["names"]["value"] == ["ada", "grace"]
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert f"open http://127.0.0.1:{port}/" in output
    assert not [sign for sign in BAD_SIGNS if sign in output], output
