"""The status page: one static HTML document that reads the JSON status with ``fetch``.

It holds no data itself, so it can be served without the token: the token the
operator types is kept in the tab's ``sessionStorage`` and sent as a bearer
token with each request. No external resources; the inline style and script
are allowed by their hashes in the Content-Security-Policy, nothing else is.
Everything the status says is put in the page as text nodes (``textContent``),
never parsed as HTML: a reason, a key or an error line may come from upstream.

Below a refresher's row, a second row shows last known good when there is
something to show: a value its guards hold back (with Accept and Reject), its
kept versions (with Pin, Rollback and Unpin), what the upstream has while it is
pinned, and its snapshot when it serves one or could not write or use one.
A streaming refresher (one whose entry has ``stream``) gets a badge beside its
source, "streaming" or "stream down", and a Stream panel in that second row: since
when it is connected, its last event, reconnects, events, refused events and its
last error. A source of one's own fills ``stream`` from its ``state()``, so every
field is checked for its type and bounded before it is shown; one that is not what
it should be shows as "–", never as markup and never as an error that stops the page.
"""

from __future__ import annotations

import base64
import hashlib

_STYLE = """
:root { color-scheme: light dark; --line: #8884; --muted: #888; --bad: #d33; --warn: #c80; --good: #2a2;
  --flag: #c8800026; }
body { font: 14px/1.4 system-ui, sans-serif; margin: 2rem auto; max-width: 76rem; padding: 0 1rem; }
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
td.flag { background: var(--flag); font-weight: 600; }
tr.has-lkg > td { border-bottom: none; }
td.lkg { padding-top: 0; }
.panels { display: flex; flex-wrap: wrap; gap: .6rem 2rem; }
section { border-left: 3px solid var(--line); padding: .1rem .7rem; max-width: 38rem; }
section.quarantine, section.snapshot { border-left-color: var(--warn); }
section.pin { border-left-color: var(--warn); }
section.stream { border-left-color: var(--good); }
section.stream.down { border-left-color: var(--bad); }
section.stream.unknown { border-left-color: var(--line); }
.badge { display: inline-block; margin-left: .4rem; padding: 0 .4rem; border: 1px solid currentColor;
  border-radius: .7rem; font-size: .8rem; font-weight: 600; white-space: nowrap; }
.badge.streaming { color: var(--good); }
.badge.down { color: var(--bad); }
.badge.unknown { color: var(--muted); }
section p.error { color: var(--bad); }
section h2 { font-size: .95rem; margin: 0 0 .2rem; }
section p { margin: .15rem 0; overflow-wrap: anywhere; }
.muted { color: var(--muted); }
.actions { display: flex; gap: .4rem; margin-top: .3rem; }
table.versions { margin: 0; width: auto; }
table.versions td { padding: .15rem .6rem .15rem 0; border: none; vertical-align: middle; }
time { text-decoration: underline dotted; cursor: help; }
#message { margin-top: 1rem; min-height: 1.4em; }
"""

_SCRIPT = """
"use strict";
const base = location.pathname.replace(/\\/+$/, "");
const rows = document.getElementById("rows");
const message = document.getElementById("message");
const tokenInput = document.getElementById("token");
const busy = new Set();  // refreshers with an action under way: their buttons stay disabled
const COLUMNS = 10;
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

function ago(iso) {
  const s = (Date.now() - Date.parse(iso)) / 1000;
  return s < 1 ? "just now" : seconds(s) + " ago";
}

function bytes(n) {
  if (n === null || n === undefined) return "size unknown";
  if (n < 1024) return n + " B";
  if (n < 1048576) return (n / 1024).toFixed(1) + " KiB";
  return (n / 1048576).toFixed(1) + " MiB";
}

function state(entry) {
  if (entry.last_success_at === null) return entry.last_error ? "missing" : "loading";
  if (entry.stale) return "stale";
  if (entry.consecutive_failures > 0) return "retrying";
  return "ok";
}

// Where the published value came from; the ones an operator should notice are flagged.
function origin(entry) {
  if (entry.family) return [entry.family.keys + (entry.family.keys === 1 ? " key" : " keys"), false];
  if (entry.origin === "snapshot") return ["snapshot, " + seconds(entry.age) + " old", true];
  if (entry.origin === "pinned") return ["pinned to " + entry.pin, true];
  if (entry.origin === "override") return ["override", true];
  return [entry.origin || "–", false];
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

// "12 s ago", with the ISO time as a tooltip; "–" for none.
function time(iso) {
  if (!iso) return document.createTextNode("–");
  const node = element("time", ago(iso));
  node.dateTime = iso;
  node.title = iso;
  return node;
}

function paragraph(...parts) {
  const p = element("p");
  p.append(...parts);
  return p;
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

// A button that POSTs ``path`` under the refresher; ``done`` is the message when it worked.
function button(name, label, path, done) {
  const node = element("button", label);
  node.type = "button";
  node.dataset.refresher = name;
  node.disabled = busy.has(name);
  node.addEventListener("click", () => post(name, label, path, done));
  return node;
}

function actions(...buttons) {
  const box = element("div", undefined, "actions");
  box.append(...buttons);
  return box;
}

function render(report) {
  rows.replaceChildren();
  for (const [name, entry] of Object.entries(report.refreshers)) {
    const row = rows.insertRow();
    row.dataset.name = name;
    cell(row, name);
    const current = state(entry);
    cell(row, current, "state " + current);
    const [where, flagged] = origin(entry);
    cell(row, where, flagged ? "origin flag" : "origin");
    const source = cell(row, entry.source);
    const stream = streamState(entry.stream);
    if (stream) source.append(badge(stream));
    cell(row, seconds(entry.age), "num age");
    cell(row, until(entry.next_refresh_at));
    cell(row, String(entry.refresh_count), "num count");
    cell(row, String(entry.consecutive_failures), "num failures");
    cell(row, entry.last_error || "", "error");
    // A family's keys load when asked for: there is nothing to refresh by name.
    const act = row.insertCell();
    if (!entry.family) act.append(button(name, "Refresh", "?wait=true", "Refreshed " + name + "."));
    // The second row (class "lkg", as it first showed last known good only) holds every panel.
    const panels = lastKnownGood(name, entry);
    if (stream) panels.unshift(streamPanel(stream));
    if (panels.length) {
      row.classList.add("has-lkg");
      const more = rows.insertRow();
      more.className = "lkg";
      more.dataset.lkg = name;
      const td = cell(more, "", "lkg");
      td.colSpan = COLUMNS;
      const box = element("div", undefined, "panels");
      box.append(...panels);
      td.append(box);
    }
  }
}

// -- a streaming source's connection (entry.stream) ---------------------------------------
// A source of one's own fills it from its state(): user code. Each field is kept only when it
// has its type and a sane size, else it shows as "–"; the page shows text, never markup.
const STREAM_ERROR_SHOWN = 300;   // characters of the last error in the panel
const STREAM_ERROR_TITLE = 2000;  // characters of it in the tooltip

function streamCount(value) {
  return Number.isSafeInteger(value) && value >= 0 ? value : null;
}

function streamTime(value) {
  return typeof value === "string" && value.length <= 64 && Number.isFinite(Date.parse(value))
    ? value : null;
}

// The checked state, or null when the entry has none (or not an object): then nothing is shown.
function streamState(stream) {
  if (stream === null || typeof stream !== "object" || Array.isArray(stream)) return null;
  const connected = typeof stream.connected === "boolean" ? stream.connected : null;
  return {
    connected: connected,
    since: streamTime(stream.connected_since),
    lastEvent: streamTime(stream.last_event_at),
    reconnects: streamCount(stream.reconnects),
    events: streamCount(stream.events),
    refused: streamCount(stream.refused_events),
    error: typeof stream.last_error === "string" && stream.last_error ? stream.last_error : null,
  };
}

function badge(stream) {
  if (stream.connected === true) return element("span", "streaming", "badge streaming");
  if (stream.connected === false) return element("span", "stream down", "badge down");
  return element("span", "stream", "badge unknown");
}

function counted(value) {
  return value === null ? "–" : String(value);
}

function streamPanel(stream) {
  const up = stream.connected;
  const section = element("section", undefined,
                          "stream " + (up === true ? "up" : up === false ? "down" : "unknown"));
  section.append(element("h2", up === true ? "Stream connected" : up === false ? "Stream down" : "Stream"));
  const since = element("p", undefined, "since");
  if (up === true) since.append("Connected since ", time(stream.since), "; last event ");
  else since.append("Last event ");
  since.append(stream.lastEvent ? time(stream.lastEvent) : "none yet", ".");
  section.append(since);
  const counts = "Reconnects: " + counted(stream.reconnects) + ", events: " + counted(stream.events)
    + ", refused events: " + counted(stream.refused);
  section.append(element("p", counts, "counts"));
  if (stream.error !== null) {
    const error = stream.error;
    const shown = error.length > STREAM_ERROR_SHOWN ? error.slice(0, STREAM_ERROR_SHOWN) + "…" : error;
    const line = element("p", "Last error: " + shown, "error");
    line.title = error.slice(0, STREAM_ERROR_TITLE);
    section.append(line);
  }
  return section;
}

function lastKnownGood(name, entry) {
  const panels = [];
  if (entry.quarantined) panels.push(quarantine(name, entry.quarantined));
  if (entry.pin) panels.push(pinned(name, entry));
  if (entry.versions && entry.versions.length) panels.push(versions(name, entry));
  const snapshot = snapshotPanel(entry);
  if (snapshot) panels.push(snapshot);
  return panels;
}

function quarantine(name, held) {
  const section = element("section", undefined, "quarantine");
  section.append(element("h2", held.rejected ? "Held back (rejected)" : "Held back by a guard"));
  section.append(paragraph(element("span", held.reason, "reason")));
  const after = held.rejected
    ? "; rejected: the same value fetched again stays held back."
    : "; the last good value stays published.";
  section.append(paragraph("Since ", time(held.since), after));
  const s = held.summary || {};
  const size = (type, n) => (type || "?") + (n === null || n === undefined ? "" : " of " + n);
  const change = size(s.old_type, s.old_size) + " → " + size(s.new_type, s.new_size);
  section.append(paragraph(element("span", change, "summary")));
  for (const [label, listed, count] of [["Keys added", s.keys_added, s.keys_added_count],
                                        ["Keys removed", s.keys_removed, s.keys_removed_count]]) {
    if (!count) continue;
    const shown = listed || [];
    const rest = count > shown.length ? " and " + (count - shown.length) + " more" : "";
    const text = label + " (" + count + "): " + shown.join(", ") + rest;
    section.append(paragraph(element("span", text, "keys")));
  }
  section.append(actions(
    button(name, "Accept", "/accept", "Accepted: " + name + " publishes the value that was held back."),
    button(name, "Reject", "/reject", "Rejected: " + name + " keeps its published value.")));
  return section;
}

function pinned(name, entry) {
  const section = element("section", undefined, "pin");
  section.append(element("h2", "Pinned to " + entry.pin));
  section.append(paragraph("It keeps fetching, and publishes only this version until unpinned."));
  const upstream = entry.upstream;
  const line = element("p", undefined, "upstream");
  if (upstream) {
    const digest = upstream.digest ? ", digest " + upstream.digest : "";
    line.append("Upstream now: " + bytes(upstream.size) + digest + ", fetched ", time(upstream.fetched_at));
  } else {
    line.append("Upstream now: nothing fetched since the pin.");
  }
  section.append(line);
  const done = "Unpinned: " + name + " follows its upstream again.";
  section.append(actions(button(name, "Unpin", "/unpin", done)));
  return section;
}

function versions(name, entry) {
  const section = element("section", undefined, "versions");
  section.append(element("h2", "Kept versions"));
  const table = element("table", undefined, "versions");
  for (const each of entry.versions) {
    const row = table.insertRow();
    row.dataset.version = each.id;
    cell(row, each.id, "id");
    row.insertCell().append(time(each.fetched_at));
    cell(row, bytes(each.size), "num size");
    const mark = row.insertCell();
    if (each.id === entry.pin) {
      mark.textContent = "pinned";
      continue;
    }
    if (each.id === entry.version) mark.append(element("span", "published ", "muted"));
    const pin = "/pin?version=" + encodeURIComponent(each.id);
    mark.append(button(name, "Pin", pin, "Pinned " + name + " to " + each.id + "."));
  }
  section.append(table);
  // Rollback pins the version before the published one: offered when there is one.
  const current = parseInt(entry.version, 10);
  if (entry.versions.some((each) => parseInt(each.id, 10) < current)) {
    const done = "Rolled " + name + " back to the version before.";
    section.append(actions(button(name, "Rollback", "/rollback", done)));
  }
  return section;
}

function snapshotPanel(entry) {
  const snapshot = entry.snapshot;
  const lines = [];
  if (entry.origin === "snapshot") {
    lines.push(paragraph("Serving its snapshot of a value fetched ", time(entry.last_success_at),
                         ": no fetch has succeeded since startup."));
  }
  if (snapshot && snapshot.error) lines.push(paragraph("Not written: " + snapshot.error));
  if (snapshot && snapshot.not_used) lines.push(paragraph("Not used: " + snapshot.not_used));
  if (!lines.length) return null;
  const section = element("section", undefined, "snapshot");
  section.append(element("h2", "Snapshot"), ...lines);
  return section;
}

// A refresh that worked but published nothing new says why: held back, or pinned.
function withheld(body) {
  const outcome = body.status ? body.status.last_outcome : null;
  if (outcome === "quarantined") return " A guard holds the value it fetched back.";
  if (outcome === "pinned") return " It is pinned: the value it fetched is not published.";
  return "";
}

// One POST for a button. The message says what happened, or the server's reason (409, 504...).
async function post(name, label, path, done) {
  busy.add(name);
  for (const node of document.querySelectorAll("button[data-refresher]")) {
    if (node.dataset.refresher === name) node.disabled = true;
  }
  message.textContent = label + " " + name + "…";
  try {
    const url = base + "/" + encodeURIComponent(name) + path;
    const response = await fetch(url, {method: "POST", headers: headers()});
    const body = await response.json().catch(() => ({}));
    const refused = body.error || response.status + " " + response.statusText;
    message.textContent = !response.ok ? refused : path === "?wait=true" ? done + withheld(body) : done;
  } catch (error) {
    message.textContent = "Could not reach the server: " + error;
  }
  busy.delete(name);
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
  <thead><tr><th>Name</th><th>State</th><th>Origin</th><th>Source</th><th>Age</th><th>Next refresh</th>
  <th>Refreshes</th><th>Failures</th><th>Last error</th><th></th></tr></thead>
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
