"""The demo: a FastAPI app kept fresh from a local upstream that keeps changing.

    python -m asgi_refresh.demo [--port 8000] [--upstream-down]

Six refreshers, a family and a derived value, all fed from 127.0.0.1, no internet needed:

- ``names``: JSON over HTTP with an ETag (polls that find nothing new are 304s),
  guarded by ``max_shrink(0.5)`` and keeping its last five versions;
- ``settings``: a TOML file the demo rewrites now and then;
- ``token``: a token from a local token endpoint, renewed before it expires;
- ``orders``: JSON fetched with that token;
- ``price``: pushed by a Server-Sent Events stream every time it moves (every
  second), with the same price as a document polled while the stream is down;
- ``release``: polled only hourly, and refreshed at once by a signed webhook;
- ``rates``: a `RefresherFamily`, one exchange rate per currency (``GET
  /rate?currency=USD``), loaded on first use from the upstream's
  ``/rate/{currency}``, refreshed every 10 s while it is asked for;
- ``welcome``: a `Derived` value, computed from ``names`` and ``settings`` and
  published in the same snapshot as they are.

Open the printed URL: the page shows each value, where it came from, when it was
fetched and changed and when the next refresh is due ("12 s ago", "in 3 s"),
and updates itself every two seconds. Its buttons break the upstream (the names
come back empty: the guard holds them back until you accept or reject them),
take it down and bring it back (the price stream ends, reconnects and comes
back), pin or roll back the names, and publish a release: the demo then signs a
webhook delivery with its secret (server-side: the secret never reaches the
browser) and posts it to its own ``/_refresh/hooks/release``, which refreshes
``release`` at once. Its currency field asks for a rate: a three-letter code
(``eur`` is ``EUR``), anything else refused with a 400 that does not repeat it.

Every good value is also written to a snapshot directory in the user's cache
(``$XDG_CACHE_HOME/asgi-refresh-demo``, else ``~/.cache/asgi-refresh-demo``):
``--upstream-down`` starts the demo with its upstream down, and the names and
orders then start from the snapshots of the last run.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import random
import re
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import httpx
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse

from asgi_refresh import (
    BearerToken,
    Derived,
    FileSource,
    Fresh,
    HTTPSource,
    Refresher,
    RefresherFamily,
    RefreshError,
    RefreshHandle,
    RefreshMiddleware,
    SourceError,
    SSESource,
    Webhook,
    max_shrink,
)
from asgi_refresh.demo.upstream import STREAM_PREFIX, Upstream, serve
from asgi_refresh.fastapi import RefreshControl, RefreshedKey

logger = logging.getLogger("asgi_refresh.demo")

NAMES = [["ada", "grace"], ["ada", "grace", "katherine"], ["barbara", "margaret", "radia"]]
BROKEN_NAMES: list[str] = []  # what a broken upstream sends: valid JSON, and every name gone
SETTINGS = ['greeting = "hello"\nbanner = false\n', 'greeting = "bonjour"\nbanner = true\n']
KEEP_VERSIONS = 5
SYMBOL = "ACME"
HOOK = "release"
"""The demo's webhook: ``POST {ADMIN_PATH}/hooks/release`` refreshes ``release``."""
ADMIN_PATH = "/_refresh"
PRICE_POLL_EVERY = "10s"  # while the stream is down; while it is up, the stream says it all
REFRESH_WAIT = 3.0  # seconds POST /release waits to see the webhook's refresh land
RATES = {
    "USD": 1.0,
    "EUR": 0.92,
    "GBP": 0.79,
    "JPY": 151.2,
    "CHF": 0.88,
    "CAD": 1.36,
    "AUD": 1.52,
    "SEK": 10.45,
}
"""The currencies the upstream quotes: units per US dollar, before each turn moves them (up to 2%)."""
CURRENCY = re.compile(r"[A-Z]{3}")
"""A currency code, as the upstream's ``/rate/{currency}`` and the demo's ``/rate`` take it."""
RATE_PREFIX = "/rate/"
RATE_EVERY = "10s"
RATE_PRELOAD = ["EUR"]
RATE_MAX_KEYS = 50  # the most currencies kept (and first loads at once): a flood of codes stays small
RATE_IDLE_TTL = "5m"  # a currency nobody asked for in 5 minutes is dropped


def token_grant(body: bytes) -> Fresh[str]:
    """An OAuth-style grant: the token, good for ``expires_in`` seconds."""
    grant = json.loads(body)
    return Fresh(grant["access_token"], expires_in=grant["expires_in"])


class World:
    """What the upstream serves, moving on every ``change_every`` seconds; the page's switches.

    ``broken``: the names come back as an empty list (until fixed); ``upstream.down``:
    every document answers 503 and the price stream ends. The price moves on its own
    (`tick`), a release is published by the page's button (`publish`).
    """

    def __init__(self, upstream: Upstream, settings: Path) -> None:
        self.upstream = upstream
        self.settings = settings
        self.turn = 0
        self.broken = False
        self.ticks = 0
        self.cents = 10_000
        self.releases = 0
        self._walk = random.Random(18)  # the same price walk on every run
        self.quoted_at = _now()  # when the rates last moved (each turn)
        self.show()
        self.show_price()
        self.show_release()
        settings.write_text(SETTINGS[0])
        upstream.serve_keys(RATE_PREFIX, self.rate, pattern=CURRENCY.pattern)

    def rate(self, currency: str) -> dict[str, Any] | None:
        """What the upstream's ``/rate/{currency}`` serves this turn; None (a 404) for an unknown currency."""
        per_usd = quote(currency, self.turn)
        if per_usd is None:
            return None
        return {"currency": currency, "per_usd": per_usd, "as_of": self.quoted_at}

    def show(self) -> None:
        """Serve this turn's names and orders."""
        self.upstream.set("/names", BROKEN_NAMES if self.broken else NAMES[self.turn % len(NAMES)])
        self.upstream.set("/protected", {"open orders": 3 + self.turn})

    def show_price(self) -> None:
        """Serve the price (as a document, and so on its stream)."""
        price = {"symbol": SYMBOL, "price": self.cents / 100, "tick": self.ticks}
        self.upstream.set("/price", price)

    def tick(self) -> None:
        """The price moves by up to a dollar either way (never below one)."""
        self.ticks += 1
        self.cents = max(100, self.cents + self._walk.randint(-100, 100))
        self.show_price()

    def show_release(self) -> None:
        """Serve the current release."""
        self.upstream.set("/release", {"version": f"1.{self.releases}"})

    def publish(self) -> None:
        """A new release upstream (what a deploy webhook announces)."""
        self.releases += 1
        self.show_release()

    def move_on(self) -> None:
        """Next turn: new names, more orders, moved rates, the settings rewritten (by rename)."""
        self.quoted_at = _now()
        self.turn += 1
        self.show()
        temporary = self.settings.with_suffix(".tmp")
        temporary.write_text(SETTINGS[self.turn % len(SETTINGS)])
        temporary.replace(self.settings)

    def switch(self, action: Literal["break", "fix", "down", "up"]) -> None:
        """Flip one of the page's switches."""
        if action in ("break", "fix"):
            self.broken = action == "break"
            self.show()
        else:
            self.upstream.down = action == "down"

    def state(self) -> dict[str, bool]:
        """The switches, for the page."""
        return {"broken": self.broken, "down": self.upstream.down}


def _now() -> str:
    return datetime.now(UTC).isoformat()


def quote(currency: str, turn: int) -> float | None:
    """Units of ``currency`` per US dollar at ``turn`` (the same on every run); None if it is not quoted.

    Each turn moves a rate by up to 2% either way around its `RATES` entry; the
    dollar is always 1.
    """
    base = RATES.get(currency)
    if base is None or currency == "USD":
        return base
    return round(base * (1 + random.Random(f"{currency}/{turn}").uniform(-0.02, 0.02)), 4)


def welcome(names: list[str], settings: dict[str, Any]) -> str:
    """The derived ``welcome``: the settings' greeting to everyone in ``names`` ("Hello, ada and grace!")."""
    greeting = str(settings.get("greeting", "hello")).capitalize()
    people = [str(name) for name in names]
    if not people:
        return f"{greeting}, nobody!"
    listed = people[0] if len(people) == 1 else ", ".join(people[:-1]) + " and " + people[-1]
    return f"{greeting}, {listed}!"


DERIVED = [Derived("welcome", welcome, inputs=["names", "settings"])]
"""``welcome``, from names and settings: published in the same snapshot as the change that moved it."""


def rate_loader(upstream_url: str) -> Callable[[str], Awaitable[dict[str, Any] | None]]:
    """The ``rates`` family's fetch: ``GET {upstream_url}/rate/{currency}``."""

    async def load_rate(currency: str) -> dict[str, Any] | None:
        # Only codes the demo's /rate checked get here: a key goes into the URL as it is.
        url = f"{upstream_url}{RATE_PREFIX}{currency}"
        try:
            async with httpx.AsyncClient(timeout=5) as client:
                response = await client.get(url)
        except httpx.HTTPError as exc:  # an upstream that is gone: an expected failure, said in one line
            raise SourceError(f"{type(exc).__name__} from GET {url}") from exc
        if response.status_code == 404:
            return None  # not quoted: kept like a rate (asked again, no fetch), and dropped when idle
        if response.status_code != 200:
            raise SourceError(f"HTTP {response.status_code} from GET {url}")
        rate: dict[str, Any] = response.json()
        return rate

    return load_rate


def currency_code(currency: str = "") -> str:
    """The ``currency`` query parameter as a family key (``eur`` is ``EUR``); 400 unless three letters.

    Checked here, not by FastAPI's validation: its 422 would echo the input back.
    """
    code = currency.strip()
    if not (len(code) == 3 and code.isascii() and code.isalpha()):
        raise HTTPException(400, {"error": "a currency is three letters, like EUR", "refused": True})
    return code.upper()


def sign(
    secret: str, body: bytes, *, delivery_id: str | None = None, at: int | None = None
) -> dict[str, str]:
    """Standard Webhooks headers for ``body``: what a sender holding ``secret`` attaches.

    The signature is the base64 HMAC-SHA256, keyed with ``secret`` (plain text, not
    ``whsec_``), of ``"{webhook-id}.{webhook-timestamp}.{body}"``.
    """
    delivery_id = delivery_id or f"msg_{secrets.token_hex(8)}"
    timestamp = str(int(time.time()) if at is None else at)
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    signature = base64.b64encode(hmac.new(secret.encode(), signed, hashlib.sha256).digest()).decode()
    return {"webhook-id": delivery_id, "webhook-timestamp": timestamp, "webhook-signature": f"v1,{signature}"}


def build(
    upstream: Upstream,
    upstream_url: str,
    settings: Path,
    *,
    change_every: float = 7.0,
    tick_every: float = 1.0,
    snapshot_dir: Path | None = None,
    webhook_secret: str | None = None,
) -> RefreshMiddleware:
    """The demo app, wrapped, and the story it tells: the upstream changes every ``change_every``.

    The price moves every ``tick_every`` seconds and is pushed by a stream. With
    ``snapshot_dir``, every good value is written there, and a refresher that
    cannot load at startup (the upstream is down) starts from its snapshot.
    ``webhook_secret`` signs the deliveries to the ``release`` hook (a new random
    one when None).
    """
    world = World(upstream, settings)
    secret = webhook_secret if webhook_secret is not None else secrets.token_hex(16)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The app's own lifespan runs after the first loads: the data is already here.
        logger.info("first values loaded: %s", ", ".join(middleware.handle.names))
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(change_the_world, world, change_every)
            task_group.start_soon(move_the_price, world, tick_every)
            yield
            task_group.cancel_scope.cancel()

    app = FastAPI(title="asgi_refresh demo", lifespan=lifespan)

    @app.exception_handler(RefreshError)
    async def not_loaded(request: Request, exc: RefreshError) -> JSONResponse:
        # A currency's first load failed (the upstream is down): no rate to answer with yet.
        return JSONResponse({"detail": {"name": exc.name, "error": str(exc)}}, status_code=503)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return PAGE

    @app.get("/data")
    async def data(control: RefreshControl) -> dict[str, Any]:
        """Each value with its age, schedule and last known good (origin, versions, quarantine)."""
        return report(control)

    @app.get("/status")
    async def status(control: RefreshControl) -> dict[str, Any]:
        """``handle.status()``: what each refresher is doing."""
        return control.status()

    @app.post("/refresh/{name}")
    async def refresh(name: str, control: RefreshControl) -> Any:
        """Refresh one now; answers like one entry of /data (the token stays hidden)."""
        shown = shown_names(control)
        if name not in shown:
            raise HTTPException(404, f"no refresher named {name!r}; there are {', '.join(shown)}")
        try:
            await control.refresh(name)
        except RefreshError as exc:  # the upstream failed: say why, the last good value stays
            raise HTTPException(502, {"name": name, "error": str(exc)}) from exc
        return report(control)[name]

    @app.get("/rate")
    async def rate(
        value: Annotated[dict[str, Any] | None, RefreshedKey("rates", key_from=currency_code)],
        code: Annotated[str, Depends(currency_code)],
    ) -> dict[str, Any]:
        """``?currency=EUR``: the rate the ``rates`` family holds for it, loaded on first use.

        400 for anything but three letters (the answer does not repeat it), 404 for
        a currency the upstream does not quote, 503 while a first load fails.
        """
        if value is None:
            raise HTTPException(404, {"error": f"the upstream quotes no rate for {code}"})
        return value

    @app.get("/rates")
    async def rates(control: RefreshControl) -> dict[str, Any]:
        """The ``rates`` family's counters: keys held, loads (one per cold key), hits, misses, failures."""
        entry = control.status()["rates"]
        family: dict[str, Any] = dict(entry.get("family") or {})
        counts = ("keys", "max_keys", "loading", "loads", "refreshes", "hits", "misses", "failures")
        return {**{count: family.get(count) for count in counts}, "last_error": entry["last_error"]}

    @app.get("/upstream")
    async def upstream_state() -> dict[str, bool]:
        """The upstream's switches: ``broken`` (the names come back empty) and ``down``."""
        return world.state()

    @app.post("/upstream/{action}")
    async def switch(action: Literal["break", "fix", "down", "up"]) -> dict[str, bool]:
        """Break or fix the names, take the upstream down or bring it back."""
        world.switch(action)
        return world.state()

    @app.post("/release")
    async def release(control: RefreshControl) -> dict[str, Any]:
        """Publish a release upstream, then deliver its webhook, signed here, to the demo's own hook.

        Answers the delivery's status and body, and whether ``release`` was refreshed
        (and to what) within a few seconds.
        """
        world.publish()
        before = control.status()["release"]["refresh_count"]
        body = json.dumps({"type": "release.published", "data": {"version": f"1.{world.releases}"}}).encode()
        headers = {"content-type": "application/json", **sign(secret, body)}
        # Through the middleware in process: the delivery takes the path a sender's takes
        # (signature checked, refresh started), with no port or Host to trust.
        transport = httpx.ASGITransport(app=middleware, client=("127.0.0.1", 0))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            delivered = await client.post(f"{ADMIN_PATH}/hooks/{HOOK}", content=body, headers=headers)
        refreshed = False
        if delivered.status_code == 202:
            with anyio.move_on_after(REFRESH_WAIT):
                # A look at the count every 20 ms, for at most a few seconds of one click: simpler
                # than a listener registered for the lifespan to wake this one request.
                while control.status()["release"]["refresh_count"] == before:  # noqa: ASYNC110
                    await anyio.sleep(0.02)
                refreshed = True
        return {
            "delivery": {"status": delivered.status_code, "body": delivered.json()},
            "refreshed": refreshed,
            "release": report(control)["release"],
        }

    def announce(name: str) -> Callable[[Any, Any], None]:
        def on_change(old: Any, new: Any) -> None:
            logger.info("%s changed: %s", name, "(a new token)" if name == "token" else new)

        return on_change

    middleware = RefreshMiddleware(
        app,
        refreshers=[
            Refresher(
                "names",
                HTTPSource(f"{upstream_url}/names"),
                every="3s",
                on_change=announce("names"),
                # An upstream that suddenly sends far fewer names is held back for an operator.
                guard=max_shrink(0.5),
                keep_versions=KEEP_VERSIONS,
            ),
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
            Refresher(
                "price",
                SSESource(
                    f"{upstream_url}{STREAM_PREFIX}/price",
                    # Polled every PRICE_POLL_EVERY while the stream is down, and once after
                    # each reconnect, for what the stream missed.
                    fetch_url=f"{upstream_url}/price",
                    heartbeat_timeout="15s",  # the upstream sends a keepalive every 5 s
                    max_reconnect_delay="5s",  # back soon after an outage, for the demo
                ),
                every=PRICE_POLL_EVERY,
            ),
            Refresher(
                "release", HTTPSource(f"{upstream_url}/release"), every="1h", on_change=announce("release")
            ),
        ],
        families=[
            RefresherFamily(
                "rates",
                rate_loader(upstream_url),
                every=RATE_EVERY,
                idle_ttl=RATE_IDLE_TTL,
                max_keys=RATE_MAX_KEYS,
                preload=RATE_PRELOAD,
                # With the upstream down at startup (--upstream-down), the demo starts anyway:
                # EUR is retried in the background, and /rate answers 503 until it loads.
                required=False,
                timeout="5s",
            )
        ],
        derived=DERIVED,
        # The demo listens on 127.0.0.1 only, so its admin endpoints need no token.
        admin_path=ADMIN_PATH,
        admin_loopback_only=True,
        # A webhook proves itself by its signature, not by loopback: a sender with the secret.
        admin_webhooks={HOOK: Webhook(["release"], standard_secret=secret)},
        snapshot_dir=snapshot_dir,
    )
    return middleware


async def change_the_world(world: World, every: float) -> None:
    """Move the upstream on: new names, rewritten settings, more orders."""
    while True:
        await anyio.sleep(every)
        world.move_on()


async def move_the_price(world: World, every: float) -> None:
    """Move the price on: each move is pushed to the demo by the upstream's stream."""
    while True:
        await anyio.sleep(every)
        world.tick()


def shown_names(control: RefreshHandle) -> list[str]:
    """The refreshers, each derived value right after the last of its inputs (welcome after settings)."""
    shown: list[str] = []
    for name in control.names:
        shown.append(name)
        for each in DERIVED:
            if each.name not in shown and set(each.inputs) <= set(shown):
                shown.append(each.name)
    return shown


def report(control: RefreshHandle) -> dict[str, Any]:
    """Each refresher's value (never the token's) with its age, schedule, last known good and stream.

    The derived ``welcome`` too, after its inputs, with what it is computed from.
    """
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
            "last_error": status[name]["last_error"],
            "origin": status[name]["origin"],
            "version": status[name]["version"],
            "versions": status[name]["versions"],
            "pin": status[name]["pin"],
            "quarantined": status[name]["quarantined"],
            "stream": status[name].get("stream"),
            "derived": status[name].get("derived"),
        }
        for name in shown_names(control)
    }


def cache_directory() -> Path:
    """Where the demo keeps what outlives a run: ``$XDG_CACHE_HOME/asgi-refresh-demo``, or in ``~/.cache``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "asgi-refresh-demo"


@contextlib.contextmanager
def serve_upstream(upstream: Upstream, cache: Path) -> Iterator[str]:
    """Serve the upstream on the port it had last time (remembered in ``cache``), else on a free one.

    A snapshot is bound to its source's URL, port included: on another port, the
    names of the last run would not be used.
    """
    remembered = cache / "upstream-port"
    try:
        port = int(remembered.read_text().strip())
    except (OSError, ValueError):
        port = 0
    if not 1024 <= port <= 65535:
        port = 0
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(serve(upstream, port=port))
        except OSError:  # taken meanwhile: any free port (the snapshots then wait for the next run)
            url = stack.enter_context(serve(upstream))
        with contextlib.suppress(OSError):
            remembered.write_text(url.rsplit(":", 1)[1])
        yield url


# The page holds no data: it reads /data, /upstream and /rates (and the rate asked
# for, if any) every two seconds and shows
# times relative to now ("12 s ago", "in 3 min"), computed in the browser so that
# they keep ticking between reads, with the ISO time as a tooltip. Everything is
# put in as text (textContent), never as HTML. Its buttons use the admin endpoints
# (accept, reject, pin, unpin, rollback) and the demo's own /upstream switches.
# No external resources. The currency field's suggestions are the upstream's RATES.
PAGE_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>asgi_refresh demo</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2rem; }
table { border-collapse: collapse; }
td, th { padding: .3rem .8rem; text-align: left; vertical-align: top; border-bottom: 1px solid #ddd; }
tr.has-lkg > td { border-bottom: none; }
code { font-size: .9em; }
time { text-decoration: underline dotted; cursor: help; }
td.flag { background: #fdefd0; font-weight: 600; }
.panels { display: flex; flex-wrap: wrap; gap: .5rem 2rem; }
section { border-left: 3px solid #ccc; padding: .1rem .7rem; }
section.quarantine, section.pin, section.stream.down { border-left-color: #c80; }
section.stream.up { border-left-color: #393; }
section.derived { border-left-color: #36c; }
section.derived.stale { border-left-color: #c80; }
#rates { margin: 1rem 0; }
#rates form { display: flex; flex-wrap: wrap; gap: .5rem; align-items: center; margin: .4rem 0; }
#rate { min-height: 1.4em; }
#rate.refused, #rate.failed { color: #c33; }
section h2 { font-size: 1rem; margin: 0 0 .2rem; }
section p { margin: .15rem 0; }
table.versions td { border: none; padding: .1rem .8rem .1rem 0; vertical-align: middle; }
.muted { color: #888; }
#switches { display: flex; flex-wrap: wrap; gap: .5rem; align-items: center; }
#notice { min-height: 1.4em; }
#message { color: #c33; min-height: 1.4em; }
</style></head>
<body><h1>asgi_refresh demo</h1>
<p>Values kept fresh from a local upstream that changes every few seconds. This page updates itself.
JSON: <a href="/data">/data</a>, <a href="/status">/status</a>, API docs: <a href="/docs">/docs</a>.
The operators' status page, with a refresh button per refresher: <a href="/_refresh">/_refresh</a>.</p>
<p><code>names</code> keeps its last five versions (pin one, or roll back) and holds back a value that
lost more than half of its names (<code>guard=max_shrink(0.5)</code>): break the upstream to see it.
Every good value is also written to a snapshot: restart the demo with <code>--upstream-down</code>
and the names and orders start from there.</p>
<p><code>price</code> is pushed: the upstream streams it (Server-Sent Events) each time it moves, every
second. Take the upstream down and the stream ends: the demo reconnects (with <code>Last-Event-ID</code>)
and polls the price every 10 s meanwhile; bring it back and the stream resumes.
<code>release</code> is polled only hourly, but a signed webhook refreshes it at once: the button
publishes a release upstream, and the demo signs the delivery with its secret (on the server, never in
this page) and posts it to its own <code>/_refresh/hooks/release</code>.</p>
<p><code>welcome</code> is derived (<code>Derived</code>): computed from <code>names</code> and
<code>settings</code> whenever one of them changes, and published in the same snapshot as that change,
so its row changes at the moment theirs does, never one change behind. <code>rates</code> is data per
key (<code>RefresherFamily</code>): one exchange rate per currency, loaded the first time it is asked
for; see below the table.</p>
<div id="switches">The upstream: <strong id="upstream">–</strong>
<button type="button" data-switch="break">Break the names</button>
<button type="button" data-switch="fix">Fix the names</button>
<button type="button" data-switch="down">Take it down</button>
<button type="button" data-switch="up">Bring it back</button>
<button type="button" id="release">Publish a release (webhook)</button></div>
<noscript><p>This page needs JavaScript to show the values; they are at
<a href="/data">/data</a>.</p></noscript>
<table><thead><tr><th>refresher</th><th>value</th><th>origin</th><th>last fetch</th><th>fetched</th>
<th>changed</th><th>fetches</th><th>next refresh</th></tr></thead><tbody id="rows"></tbody></table>
<p id="notice" role="status"></p>
<p id="message"></p>
<section id="rates"><h2>Data per key: <code>rates</code></h2>
<p>Ask for a currency (<code>GET /rate?currency=USD</code>): its first request loads it from the
upstream (requests that arrive meanwhile share that one fetch), later ones are answered at once, and
while it is asked for (this page asks again every 2 s) it is refreshed every 10 s: the upstream moves
its rates every few seconds. Up to 50 currencies are kept; one unused for 5 minutes is dropped.
Anything but three letters is refused (HTTP 400) without being repeated back; try <code>XYZ</code> (not
quoted: 404), or take the upstream down (a currency already loaded keeps its last rate, a new one
answers 503).</p>
<form id="rate-form"><label for="currency">Currency</label>
<input id="currency" name="currency" list="currencies" value="EUR" size="8" maxlength="32"
autocomplete="off" spellcheck="false">
<datalist id="currencies">{currencies}</datalist>
<button type="submit">Get the rate</button></form>
<p id="rate" role="status"></p>
<p id="family" class="muted"></p>
</section>
<script>
"use strict";
const rows = document.getElementById("rows");
const message = document.getElementById("message");
const notice = document.getElementById("notice");
const COLUMNS = 8;
const SWITCHED = {break: "Broke the names: the upstream now sends an empty list.",
                  fix: "Fixed the names.", down: "The upstream is down: every document answers 503.",
                  up: "The upstream is back."};

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

function time(iso, due) {
  const node = document.createElement("time");
  node.dateTime = iso;
  node.title = iso;
  if (due) node.dataset.due = "";
  node.textContent = relative(iso, due);
  return node;
}

function timeCell(row, iso, className) {
  const td = row.insertCell();
  td.className = className;
  if (!iso) {
    td.textContent = "–";
    return;
  }
  td.append(time(iso, className === "next"));
}

function tick() {
  for (const node of document.querySelectorAll("time[datetime]")) {
    node.textContent = relative(node.dateTime, "due" in node.dataset);
  }
}

function textCell(row, text, className) {
  const td = row.insertCell();
  td.className = className;
  td.textContent = text;
  return td;
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function paragraph(...parts) {
  const p = element("p");
  p.append(...parts);
  return p;
}

// A button that POSTs to ``path``; the notice then says ``done``, or why the server refused.
function button(label, path, done) {
  const node = element("button", label);
  node.type = "button";
  node.addEventListener("click", () => act(node, path, done));
  return node;
}

function origin(entry) {
  if (entry.origin === "snapshot") return ["snapshot, " + span(entry.age || 0) + " old", true];
  if (entry.origin === "pinned") return ["pinned to " + entry.pin, true];
  return [entry.origin || "–", false];
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
    const [where, flagged] = origin(entry);
    textCell(row, where, flagged ? "origin flag" : "origin");
    textCell(row, entry.last_outcome || "–", "outcome");
    timeCell(row, entry.last_success_at, "fetched");
    timeCell(row, entry.last_changed_at, "changed");
    textCell(row, String(entry.refresh_count), "count");
    timeCell(row, entry.next_refresh_at, "next");
    const panels = lastKnownGood(name, entry);
    if (panels.length) {
      row.classList.add("has-lkg");
      const more = rows.insertRow();
      more.dataset.lkg = name;
      const td = textCell(more, "", "lkg");
      td.colSpan = COLUMNS;
      const box = element("div", undefined, "panels");
      box.append(...panels);
      td.append(box);
    }
  }
  tick();
}

function lastKnownGood(name, entry) {
  const panels = [];
  const admin = "/_refresh/" + encodeURIComponent(name);
  const held = entry.quarantined;
  if (held) {
    const section = element("section", undefined, "quarantine");
    section.append(element("h2", held.rejected ? "Held back, rejected" : "Held back by its guard"));
    section.append(paragraph(element("span", held.reason, "reason")));
    const s = held.summary || {};
    section.append(paragraph("Since ", time(held.since, false), ": " + s.old_type + " of " + s.old_size
                             + " → " + s.new_type + " of " + s.new_size + ". The last good value stays."));
    section.append(paragraph(
      button("Accept", admin + "/accept", "Accepted: " + name + " publishes the value held back."), " ",
      button("Reject", admin + "/reject", "Rejected: " + name + " keeps its value.")));
    panels.push(section);
  }
  if (entry.versions && entry.versions.length) {
    const section = element("section", undefined, entry.pin ? "versions pin" : "versions");
    section.append(element("h2", entry.pin ? "Pinned to " + entry.pin : "Kept versions, newest first"));
    const table = element("table", undefined, "versions");
    for (const each of entry.versions) {
      const row = table.insertRow();
      row.dataset.version = each.id;
      textCell(row, each.id, "id");
      row.insertCell().append(time(each.fetched_at, false));
      textCell(row, each.size === null ? "–" : each.size + " B", "size");
      const mark = row.insertCell();
      if (each.id === entry.pin) mark.textContent = "pinned";
      else {
        if (each.id === entry.version) mark.append(element("span", "published ", "muted"));
        mark.append(button("Pin", admin + "/pin?version=" + encodeURIComponent(each.id),
                           "Pinned " + name + " to " + each.id + "."));
      }
    }
    section.append(table);
    const current = parseInt(entry.version, 10);
    const buttons = [];
    if (entry.versions.some((each) => parseInt(each.id, 10) < current)) {
      const done = "Rolled " + name + " back to the version before.";
      buttons.push(button("Rollback", admin + "/rollback", done));
    }
    if (entry.pin) {
      buttons.push(button("Unpin", admin + "/unpin", "Unpinned: " + name + " follows its upstream."));
    }
    if (buttons.length) section.append(paragraph(...buttons));
    panels.push(section);
  }
  if (entry.stream) panels.push(streamPanel(entry.stream));
  if (entry.derived) panels.push(derivedPanel(entry));
  if (entry.origin === "snapshot") {
    const section = element("section", undefined, "snapshot");
    section.append(element("h2", "From its snapshot"));
    const why = " (" + (entry.last_error || "no error yet") + ").";
    section.append(paragraph("Fetched ", time(entry.last_success_at, false),
                             " by an earlier run; the upstream has not answered since startup" + why));
    panels.push(section);
  }
  return panels;
}

function count(n, word) {
  return n + " " + word + (n === 1 ? "" : "s");
}

// A streaming refresher's connection: up since when, its last event, how often it reconnected.
function streamPanel(stream) {
  const section = element("section", undefined, stream.connected ? "stream up" : "stream down");
  section.append(element("h2", stream.connected ? "Streaming" : "Stream down, polling meanwhile"));
  if (stream.connected) section.append(paragraph("Connected since ", time(stream.connected_since, false)));
  const last = stream.last_event_at ? time(stream.last_event_at, false) : "none yet";
  section.append(paragraph(element("span", count(stream.events, "event"), "events"), ", last ", last,
                           "; ", element("span", count(stream.reconnects, "reconnect"), "reconnects"),
                           stream.refused_events ? "; " + stream.refused_events + " refused" : ""));
  if (!stream.connected && stream.last_error) {
    section.append(paragraph(element("span", stream.last_error, "why")));
  }
  return section;
}

// A derived value: what it is computed from, and whether they moved on without it.
function derivedPanel(entry) {
  const moved = entry.derived.inputs_moved_on;
  const section = element("section", undefined, moved ? "derived stale" : "derived");
  section.append(element("h2", "Derived from " + entry.derived.inputs.join(" and ")));
  section.append(paragraph("Computed again whenever one of them changes, and published in the same "
                           + "snapshot as that change: it last changed ", time(entry.last_changed_at, false),
                           ", together with the input that moved it."));
  if (moved) {
    section.append(paragraph(element("span", "Its last compute failed (" + (entry.last_error || "no error")
                                     + "): its inputs moved on without it.", "why")));
  }
  return section;
}

function showSwitches(state) {
  const said = state.down ? "down (503)" : state.broken ? "sending an empty names list" : "working";
  document.getElementById("upstream").textContent = said;
  for (const node of document.querySelectorAll("button[data-switch]")) {
    const action = node.dataset.switch;
    node.disabled = (action === "break" && state.broken) || (action === "fix" && !state.broken)
      || (action === "down" && state.down) || (action === "up" && !state.down);
  }
}

for (const node of document.querySelectorAll("button[data-switch]")) {
  const action = node.dataset.switch;
  node.addEventListener("click", () => act(node, "/upstream/" + action, SWITCHED[action]));
}

const release = document.getElementById("release");
release.addEventListener("click", async () => {
  release.disabled = true;
  try {
    const response = await fetch("/release", {method: "POST", headers: {"Accept": "application/json"}});
    const body = await response.json();
    const delivery = body.delivery || {};
    const why = (body.release || {}).last_error || "still fetching";
    notice.textContent = "Webhook delivery: HTTP " + delivery.status + (delivery.status === 202
      ? (body.refreshed ? "; release refreshed at once: " + JSON.stringify((body.release || {}).value)
                        : "; release not refreshed yet (" + why + ")")
      : " (" + ((delivery.body || {}).error || "refused") + ")");
  } catch (error) {
    notice.textContent = "Could not reach the demo: " + error.message;
  }
  release.disabled = false;
  await load();
});

async function act(node, path, done) {
  node.disabled = true;
  try {
    const response = await fetch(path, {method: "POST", headers: {"Accept": "application/json"}});
    const body = await response.json().catch(() => ({}));
    notice.textContent = response.ok ? done : "Refused: " + (body.error || "HTTP " + response.status);
  } catch (error) {
    notice.textContent = "Could not reach the demo: " + error.message;
  }
  await load();
}

const rateLine = document.getElementById("rate");
const familyLine = document.getElementById("family");
let currency = null;  // the code asked for last: asked again every 2 s, until refused
let asks = 0;  // only the newest answer is shown

document.getElementById("rate-form").addEventListener("submit", (event) => {
  event.preventDefault();
  currency = document.getElementById("currency").value;
  loadRate();
});

// GET /rate?currency=...: the rate, or why not. A refused code is never shown back (the server's
// answer does not repeat it either).
async function loadRate() {
  if (currency === null) return;
  const ask = ++asks;
  let shown, state = "";
  try {
    const response = await fetch("/rate?currency=" + encodeURIComponent(currency),
                                 {headers: {"Accept": "application/json"}});
    const body = await response.json().catch(() => ({}));
    const why = (body.detail || {}).error || "no reason given";
    if (response.ok) {
      shown = [element("strong", body.currency), " " + body.per_usd + " per US dollar, quoted ",
               time(body.as_of, false)];
    } else if (response.status === 400) {
      shown = ["Refused (HTTP 400): " + why + "."];
      state = "refused";
    } else if (response.status === 404) {
      shown = ["Not quoted (HTTP 404): " + why + "."];
      state = "failed";
    } else {
      shown = ["No rate (HTTP " + response.status + "): " + why];
      state = "failed";
    }
  } catch (error) {
    shown = ["Could not reach the demo: " + error.message];
    state = "failed";
  }
  if (ask !== asks) return;  // a newer question was asked meanwhile
  if (state === "refused") currency = null;
  rateLine.replaceChildren(...shown);
  rateLine.className = state;
}

function many(n, one, more) {
  return n + " " + (n === 1 ? one : more);
}

// GET /rates: the family's counters (never a key or a value).
function showFamily(family) {
  let said = "rates holds " + many(family.keys, "currency", "currencies") + " (at most " + family.max_keys
    + "): " + count(family.loads, "first load") + ", " + count(family.hits, "hit") + ", "
    + many(family.misses, "miss", "misses") + ", " + count(family.failures, "failure") + ".";
  if (family.last_error) said += " Last error: " + family.last_error;
  familyLine.textContent = said;
}

async function load() {
  const rate = loadRate();
  try {
    const [data, upstream, family] = await Promise.all(["/data", "/upstream", "/rates"].map(async (path) => {
      const response = await fetch(path, {headers: {"Accept": "application/json"}});
      if (!response.ok) throw new Error("HTTP " + response.status + " from " + path);
      return response.json();
    }));
    render(data);
    showSwitches(upstream);
    showFamily(family);
    message.textContent = "";
  } catch (error) {
    message.textContent = "Could not read /data: " + error.message;
  }
  await rate;
}

load();
setInterval(load, 2000);
setInterval(tick, 1000);
</script></body></html>
"""
PAGE = PAGE_TEMPLATE.replace("{currencies}", "".join(f'<option value="{code}">' for code in RATES))


def webhook_help(url: str, secret: str) -> str:
    """How to deliver the ``release`` webhook with curl (Standard Webhooks, signed by openssl)."""
    return f"""  webhook: POST {url} refreshes release (Standard Webhooks; this run's secret: {secret})
  send one from a shell:
    body='{{"type": "release.published"}}'; id=msg_$(date +%s%N); ts=$(date +%s)
    sig=$(printf %s "$id.$ts.$body" | openssl dgst -sha256 -hmac '{secret}' -binary | base64)
    curl -s -X POST {url} -H "webhook-id: $id" -H "webhook-timestamp: $ts" \\
      -H "webhook-signature: v1,$sig" -d "$body"
"""


# Run as a subprocess by tests/test_demo.py, where coverage does not follow it.
def main(argv: list[str] | None = None) -> None:  # pragma: no cover
    """Start the local upstream and the demo app under uvicorn on 127.0.0.1."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m asgi_refresh.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (default 8000)")
    parser.add_argument(
        "--upstream-down",
        action="store_true",
        help="start with the local upstream down: the names and orders start from the last run's snapshots",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    upstream = Upstream(token_lifetime=15)
    upstream.down = args.upstream_down
    with contextlib.ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="asgi-refresh-demo-")))
        try:
            cache = cache_directory()
            cache.mkdir(parents=True, exist_ok=True)
        except (OSError, RuntimeError) as exc:  # no home, or a read-only one: snapshots for this run only
            cache = directory
            print(f"  (no cache directory: {exc}; snapshots last for this run only)")
        snapshots = cache / "snapshots"
        if args.upstream_down and not (snapshots / "names.snapshot").exists():
            parser.exit(2, f"No snapshot in {snapshots} yet: run the demo once without --upstream-down.\n")
        upstream_url = stack.enter_context(serve_upstream(upstream, cache))
        # A new secret each run, shown only here: the page's button has the demo sign for it.
        secret = secrets.token_hex(16)
        app = build(
            upstream, upstream_url, directory / "settings.toml", snapshot_dir=snapshots, webhook_secret=secret
        )
        print(f"\n  asgi_refresh demo: open http://127.0.0.1:{args.port}/  (Ctrl+C stops)", flush=True)
        print(f"  snapshots: {snapshots}", flush=True)
        print(webhook_help(f"http://127.0.0.1:{args.port}{ADMIN_PATH}/hooks/{HOOK}", secret), flush=True)
        uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
