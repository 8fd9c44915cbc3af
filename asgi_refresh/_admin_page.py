"""The status page: one static HTML document that reads the JSON status with ``fetch``.

It holds no data itself, so it can be served without the token: the token the
operator types is kept in the tab's ``sessionStorage`` and sent as a bearer
token with each request. No external resources; the inline style and script
are allowed by their hashes in the Content-Security-Policy, nothing else is.
"""

from __future__ import annotations

import base64
import hashlib

_STYLE = """
:root { color-scheme: light dark; --line: #8884; --muted: #888; --bad: #d33; --warn: #c80; --good: #2a2; }
body { font: 14px/1.4 system-ui, sans-serif; margin: 2rem auto; max-width: 70rem; padding: 0 1rem; }
h1 { font-size: 1.3rem; margin: 0 0 .2rem; }
header { display: flex; flex-wrap: wrap; gap: 1rem; align-items: end; justify-content: space-between; }
#note { color: var(--muted); margin: 0; }
form { display: flex; gap: .4rem; }
input, button { font: inherit; padding: .25rem .5rem; }
table { border-collapse: collapse; width: 100%; margin-top: 1rem; }
th, td { text-align: left; padding: .4rem .6rem; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.error { color: var(--bad); max-width: 28rem; overflow-wrap: anywhere; }
.state { font-weight: 600; }
.ok { color: var(--good); }
.stale, .retrying { color: var(--warn); }
.missing { color: var(--bad); }
#message { margin-top: 1rem; min-height: 1.4em; }
"""

_SCRIPT = """
"use strict";
const base = location.pathname.replace(/\\/+$/, "");
const rows = document.getElementById("rows");
const message = document.getElementById("message");
const tokenInput = document.getElementById("token");
tokenInput.value = sessionStorage.getItem("asgi_refresh_token") || "";
document.getElementById("auth").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("asgi_refresh_token", tokenInput.value);
  load();
});

function headers() {
  const result = {"Accept": "application/json"};
  const token = sessionStorage.getItem("asgi_refresh_token");
  if (token) result["Authorization"] = "Bearer " + token;
  return result;
}

function seconds(value) {
  if (value === null || value === undefined) return "–";
  const s = Math.round(value);
  if (s < 90) return s + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}

function until(iso) {
  if (!iso) return "–";
  const s = (Date.parse(iso) - Date.now()) / 1000;
  return s <= 0 ? "now" : "in " + seconds(s);
}

function state(entry) {
  if (entry.last_success_at === null) return entry.last_error ? "missing" : "loading";
  if (entry.stale) return "stale";
  if (entry.consecutive_failures > 0) return "retrying";
  return "ok";
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function render(report) {
  rows.replaceChildren();
  for (const [name, entry] of Object.entries(report.refreshers)) {
    const row = rows.insertRow();
    row.dataset.name = name;
    cell(row, name);
    const current = state(entry);
    cell(row, current, "state " + current);
    cell(row, entry.source);
    cell(row, seconds(entry.age), "num age");
    cell(row, until(entry.next_refresh_at));
    cell(row, String(entry.refresh_count), "num count");
    cell(row, String(entry.consecutive_failures), "num failures");
    cell(row, entry.last_error || "", "error");
    const button = document.createElement("button");
    button.textContent = "Refresh";
    button.addEventListener("click", () => refresh(name, button));
    row.insertCell().append(button);
  }
}

async function refresh(name, button) {
  button.disabled = true;
  message.textContent = "Refreshing " + name + "…";
  try {
    const response = await fetch(base + "/" + encodeURIComponent(name) + "?wait=true",
                                 {method: "POST", headers: headers()});
    const body = await response.json();
    message.textContent = response.ok ? "Refreshed " + name + "." : (body.error || response.statusText);
  } catch (error) {
    message.textContent = "Could not reach the server: " + error;
  }
  button.disabled = false;
  load();
}

async function load() {
  try {
    const response = await fetch(base, {headers: headers()});
    if (response.status === 401) {
      message.textContent = "Enter the admin token to see the refreshers.";
      rows.replaceChildren();
      return;
    }
    const body = await response.json();
    if (!response.ok) {
      message.textContent = body.error || response.statusText;
      return;
    }
    render(body);
    document.getElementById("updated").textContent = new Date().toLocaleTimeString();
    if (message.textContent.startsWith("Enter")) message.textContent = "";
  } catch (error) {
    message.textContent = "Could not reach the server: " + error;
  }
}

load();
setInterval(load, 3000);
"""

_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>asgi_refresh status</title>
<style>{style}</style>
</head>
<body>
<header>
  <div>
    <h1>Refreshers</h1>
    <p id="note">Updated <span id="updated">–</span>; reloads every 3 s.</p>
  </div>
  <form id="auth">
    <input id="token" type="password" placeholder="admin token" autocomplete="off" aria-label="admin token">
    <button type="submit">Use token</button>
  </form>
</header>
<table>
  <thead><tr><th>Name</th><th>State</th><th>Source</th><th>Age</th><th>Next refresh</th><th>Refreshes</th>
  <th>Failures</th><th>Last error</th><th></th></tr></thead>
  <tbody id="rows"></tbody>
</table>
<p id="message" role="status"></p>
<script>{script}</script>
</body>
</html>
"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


PAGE = _HTML.format(style=_STYLE, script=_SCRIPT).encode()
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; script-src {_sha256(_SCRIPT)}; style-src {_sha256(_STYLE)}; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
