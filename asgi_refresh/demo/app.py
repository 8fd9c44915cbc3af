"""The demo: a FastAPI app kept fresh from a local upstream that keeps changing.

    python -m asgi_refresh.demo [--port 8000]

Four refreshers, all fed from 127.0.0.1, no internet needed:

- ``names``: JSON over HTTP with an ETag (polls that find nothing new are 304s);
- ``settings``: a TOML file the demo rewrites now and then;
- ``token``: a token from a local token endpoint, renewed before it expires;
- ``orders``: JSON fetched with that token.

Open the printed URL: the page shows each value, when it was fetched and changed
and when the next refresh is due ("12 s ago", "in 3 s"), and updates itself every
two seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse

from asgi_refresh import (
    BearerToken,
    FileSource,
    Fresh,
    HTTPSource,
    Refresher,
    RefreshError,
    RefreshHandle,
    RefreshMiddleware,
)
from asgi_refresh.demo.upstream import Upstream, serve
from asgi_refresh.fastapi import RefreshControl

logger = logging.getLogger("asgi_refresh.demo")

NAMES = [["ada", "grace"], ["ada", "grace", "katherine"], ["barbara", "margaret", "radia"]]
SETTINGS = ['greeting = "hello"\nbanner = false\n', 'greeting = "bonjour"\nbanner = true\n']


def token_grant(body: bytes) -> Fresh[str]:
    """An OAuth-style grant: the token, good for ``expires_in`` seconds."""
    grant = json.loads(body)
    return Fresh(grant["access_token"], expires_in=grant["expires_in"])


def build(
    upstream: Upstream, upstream_url: str, settings: Path, *, change_every: float = 7.0
) -> RefreshMiddleware:
    """The demo app, wrapped, and the story it tells: the upstream changes every ``change_every``."""
    upstream.set("/names", NAMES[0])
    upstream.set("/protected", {"open orders": 3})
    settings.write_text(SETTINGS[0])

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The app's own lifespan runs after the first loads: the data is already here.
        logger.info("first values loaded: %s", ", ".join(middleware.handle.names))
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(change_the_world, upstream, settings, change_every)
            yield
            task_group.cancel_scope.cancel()

    app = FastAPI(title="asgi_refresh demo", lifespan=lifespan)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return PAGE

    @app.get("/data")
    async def data(control: RefreshControl) -> dict[str, Any]:
        """Each value with its age and schedule."""
        return snapshot(control)

    @app.get("/status")
    async def status(control: RefreshControl) -> dict[str, Any]:
        """``handle.status()``: what each refresher is doing."""
        return control.status()

    @app.post("/refresh/{name}")
    async def refresh(name: str, control: RefreshControl) -> Any:
        """Refresh one now; answers like one entry of /data (the token stays hidden)."""
        if name not in control.names:
            raise HTTPException(404, f"no refresher named {name!r}; there are {', '.join(control.names)}")
        try:
            await control.refresh(name)
        except RefreshError as exc:  # the upstream failed: say why, the last good value stays
            raise HTTPException(502, {"name": name, "error": str(exc)}) from exc
        return snapshot(control)[name]

    def announce(name: str) -> Callable[[Any, Any], None]:
        def on_change(old: Any, new: Any) -> None:
            logger.info("%s changed: %s", name, "(a new token)" if name == "token" else new)

        return on_change

    middleware = RefreshMiddleware(
        app,
        refreshers=[
            Refresher("names", HTTPSource(f"{upstream_url}/names"), every="3s", on_change=announce("names")),
            Refresher("settings", FileSource(settings), every="2s", on_change=announce("settings")),
            Refresher(
                "token",
                HTTPSource(f"{upstream_url}/token", method="POST", parse=token_grant),
                every="1h",
                on_change=announce("token"),
            ),
            Refresher(
                "orders",
                HTTPSource(f"{upstream_url}/protected", auth=BearerToken("token")),
                every="5s",
            ),
        ],
        # The demo listens on 127.0.0.1 only, so its admin endpoints need no token.
        admin_path="/_refresh",
        admin_loopback_only=True,
    )
    return middleware


async def change_the_world(upstream: Upstream, settings: Path, every: float) -> None:
    """Move the upstream on: new names, rewritten settings (by rename), more orders."""
    for turn in itertools.count(1):
        await anyio.sleep(every)
        upstream.set("/names", NAMES[turn % len(NAMES)])
        upstream.set("/protected", {"open orders": 3 + turn})
        temporary = settings.with_suffix(".tmp")
        temporary.write_text(SETTINGS[turn % len(SETTINGS)])
        temporary.replace(settings)


def snapshot(control: RefreshHandle) -> dict[str, Any]:
    """Each refresher's value (never the token's) with its age and schedule."""
    status = control.status()
    return {
        name: {
            "value": "(secret)" if name == "token" else control.value(name),
            "age": status[name]["age"],
            "last_success_at": status[name]["last_success_at"],
            "last_outcome": status[name]["last_outcome"],
            "last_changed_at": status[name]["last_changed_at"],
            "next_refresh_at": status[name]["next_refresh_at"],
            "refresh_count": status[name]["refresh_count"],
        }
        for name in control.names
    }


# The page holds no data: it reads /data every two seconds and shows times relative
# to now ("12 s ago", "in 3 min"), computed in the browser so that they keep ticking
# between reads, with the ISO time as a tooltip. No external resources.
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>asgi_refresh demo</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2rem; }
td, th { padding: .3rem .8rem; text-align: left; }
tr:nth-child(even) { background: #f4f4f4; }
code { font-size: .9em; }
time { text-decoration: underline dotted; cursor: help; }
#message { color: #c33; min-height: 1.4em; }
</style></head>
<body><h1>asgi_refresh demo</h1>
<p>Values kept fresh from a local upstream that changes every few seconds. This page updates itself.
JSON: <a href="/data">/data</a>, <a href="/status">/status</a>, API docs: <a href="/docs">/docs</a>.
The operators' status page, with a refresh button per refresher: <a href="/_refresh">/_refresh</a>.</p>
<noscript><p>This page needs JavaScript to show the values; they are at
<a href="/data">/data</a>.</p></noscript>
<table><thead><tr><th>refresher</th><th>value</th><th>last fetch</th><th>fetched</th><th>changed</th>
<th>fetches</th><th>next refresh</th></tr></thead><tbody id="rows"></tbody></table>
<p id="message"></p>
<script>
"use strict";
const rows = document.getElementById("rows");
const message = document.getElementById("message");

function span(seconds) {
  const s = Math.round(Math.abs(seconds));
  if (s < 90) return s + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}

// "12 s ago", "in 3 min"; a due time already past is "now" (the fetch is running).
function relative(iso, due) {
  const seconds = (Date.parse(iso) - Date.now()) / 1000;
  if (Math.abs(seconds) < 0.5 || (due && seconds < 0)) return "now";
  return seconds > 0 ? "in " + span(seconds) : span(seconds) + " ago";
}

function timeCell(row, iso, className) {
  const td = row.insertCell();
  td.className = className;
  if (!iso) {
    td.textContent = "–";
    return;
  }
  const time = document.createElement("time");
  time.dateTime = iso;
  time.title = iso;
  if (className === "next") time.dataset.due = "";
  td.append(time);
}

function tick() {
  for (const time of document.querySelectorAll("time[datetime]")) {
    time.textContent = relative(time.dateTime, "due" in time.dataset);
  }
}

function textCell(row, text, className) {
  const td = row.insertCell();
  td.className = className;
  td.textContent = text;
  return td;
}

function render(data) {
  rows.replaceChildren();
  for (const [name, entry] of Object.entries(data)) {
    const row = rows.insertRow();
    row.dataset.name = name;
    textCell(row, name, "name");
    const code = document.createElement("code");
    code.textContent = JSON.stringify(entry.value);
    textCell(row, "", "value").append(code);
    textCell(row, entry.last_outcome || "–", "outcome");
    timeCell(row, entry.last_success_at, "fetched");
    timeCell(row, entry.last_changed_at, "changed");
    textCell(row, String(entry.refresh_count), "count");
    timeCell(row, entry.next_refresh_at, "next");
  }
  tick();
}

async function load() {
  try {
    const response = await fetch("/data", {headers: {"Accept": "application/json"}});
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json());
    message.textContent = "";
  } catch (error) {
    message.textContent = "Could not read /data: " + error.message;
  }
}

load();
setInterval(load, 2000);
setInterval(tick, 1000);
</script></body></html>
"""


# Run as a subprocess by tests/test_demo.py, where coverage does not follow it.
def main(argv: list[str] | None = None) -> None:  # pragma: no cover
    """Start the local upstream and the demo app under uvicorn on 127.0.0.1."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m asgi_refresh.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (default 8000)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    upstream = Upstream(token_lifetime=15)
    with (
        tempfile.TemporaryDirectory(prefix="asgi-refresh-demo-") as directory,
        serve(upstream) as upstream_url,
    ):
        app = build(upstream, upstream_url, Path(directory) / "settings.toml")
        print(f"\n  asgi_refresh demo: open http://127.0.0.1:{args.port}/  (Ctrl+C stops)\n", flush=True)
        uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
