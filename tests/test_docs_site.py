"""The docs site draws its diagrams offline: built by mkdocs, served on 127.0.0.1, read in Chromium.

Every request to a host other than 127.0.0.1 is refused, as on a machine with no
internet. Needs Chromium, mkdocs (the ``docs`` extra) and the Mermaid file that
``.ci/fetch-mermaid`` puts into the docs' assets; ``.ci/run`` provides all three and
runs with ``CI=true``, where a missing one fails the test. A local run without
them skips, saying what to do.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Route, expect, sync_playwright
from starlette.staticfiles import StaticFiles

from asgi_refresh.demo.upstream import serve

from .test_admin_page import chromium

ROOT = Path(__file__).parent.parent
MERMAID = ROOT / "docs" / "assets" / "javascripts" / "mermaid.min.js"


# mkdocs-material draws each diagram into a closed shadow root; opened here, before
# any of the page's scripts run, so that the test can see the SVG inside.
OPEN_SHADOW_ROOTS = """
const attachShadow = Element.prototype.attachShadow;
Element.prototype.attachShadow = function (init) {
  return attachShadow.call(this, {...init, mode: "open"});
};
"""


def needed(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


# A whole mkdocs build (bounded on its own: 300 s), then Chromium: half a minute and more of
# the suite's 60 s on a loaded CI machine.
@pytest.mark.timeout(360)
def test_the_sequence_diagram_renders_with_no_network(tmp_path: Path) -> None:
    """Concepts' sequence diagram is drawn as an SVG from the site's own Mermaid; nothing is fetched elsewhere."""
    browser_path = chromium()
    if importlib.util.find_spec("mkdocs") is None:
        needed('mkdocs is missing: pip install -e ".[docs]"')
    if not MERMAID.exists():
        needed(f"{MERMAID.relative_to(ROOT)} is missing: run bash .ci/fetch-mermaid")
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(site)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        check=True,
        timeout=300,
    )
    refused: list[str] = []
    served: list[str] = []

    def loopback_only(route: Route) -> None:
        url = route.request.url
        if urlsplit(url).hostname == "127.0.0.1":
            served.append(url)
            route.continue_()
        else:
            refused.append(url)
            route.abort("internetdisconnected")

    with serve(StaticFiles(directory=site, html=True)) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=browser_path,
            args=["--no-sandbox", "--disable-background-networking", "--disable-component-update"],
        )
        try:
            page = browser.new_page()
            page.route("**/*", loopback_only)
            page.add_init_script(OPEN_SHADOW_ROOTS)
            page.goto(f"{url}/concepts/")
            diagram = page.locator("div.mermaid svg")
            expect(diagram).to_be_visible()
            expect(diagram).to_contain_text("RefreshMiddleware")
            expect(diagram).to_contain_text("lifespan.startup.complete")
            expect(page.get_by_text("sequenceDiagram")).to_have_count(0)  # no raw diagram text left
        finally:
            browser.close()
    assert f"{url}/assets/javascripts/mermaid.min.js" in served
    assert not [address for address in refused if "mermaid" in address], refused
