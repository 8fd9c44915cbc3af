"""The admin endpoints: status, refresh-now, readiness and a status page, under one prefix.

Served by the middleware itself, before the wrapped app, for HTTP requests whose
path is the prefix or under it. Nothing else is touched: the only cost for every
other request is one string comparison.
"""

from __future__ import annotations

import hmac
import inspect
import ipaddress
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qs

from ._admin_page import CONTENT_SECURITY_POLICY, PAGE
from ._contain import describe_error, escapes
from ._handle import Controls, Kind, RefreshError
from ._option_error import OptionTypeError, OptionValueError
from ._text import printable
from ._types import Receive, Scope, Send
from ._webhooks import HOOK_NAME

if TYPE_CHECKING:
    from ._webhooks import Target, Webhooks

logger = logging.getLogger("asgi_refresh")

TokenCheck = Callable[[str], bool | Awaitable[bool]]
"""A custom check of the bearer token a request presents: true lets it in."""

_OWNER = "RefreshMiddleware"  # the admin options are the middleware's: its errors say so
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_NOT_RUNNING = "asgi_refresh is not running (no lifespan)"
_TRUE, _FALSE = frozenset({"true", "1", "yes"}), frozenset({"false", "0", "no"})
# The names of the headers a proxy, a load balancer or a CDN adds when it relays a
# request (compared lowercased, with "_" read as "-"): Forwarded and Via (RFC 7239,
# RFC 9110: every proxy should send Via), anything with "forwarded" in its name
# (X-Forwarded-For, -Host, -Proto, X-Original-Forwarded-For, CloudFront-Forwarded-Proto),
# the client-address headers (X-Real-IP, X-Client-IP, True-Client-IP, CF-Connecting-IP,
# Fastly-Client-IP, X-Cluster-Client-IP, X-Azure-ClientIP...) and Envoy's. A direct
# client sends none of them; one occurrence, even empty, means "relayed".
_FORWARDING = re.compile(r"forwarded|^via$|(?:^|-)ip(?:v6)?$|clientip$|socketip$|^x-envoy-external-address$")
# Host as a client sends it: a name or a bracketed IPv6 address, and an optional port.
_HOST = re.compile(r"(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>[^\[\]:/@?#%\\\s]+))(?::(?P<port>[0-9]{1,5}))?")
_DEFAULT_PORTS = {"http": 80, "https": 443}
# A POST that a browser says comes from this origin (or from the user: a typed URL).
_OWN_SITES = frozenset({"same-origin", "none"})
_JSON_HEADERS = [
    (b"content-type", b"application/json"),
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
]


def checked_admin_path(path: object) -> str:
    """The prefix, without a trailing slash; a clear error for anything else."""
    if not isinstance(path, str) or not path.startswith("/") or path.rstrip("/") == "":
        raise OptionValueError(
            _OWNER,
            "admin_path",
            "admin_path must be a path under the root that starts with '/', "
            f'like "/_refresh" (got {path!r})',
        )
    if any(part in ("", ".", "..") for part in path.rstrip("/").split("/")[1:]) or "?" in path:
        raise OptionValueError(
            _OWNER, "admin_path", f'admin_path must be a plain path like "/_refresh" (got {path!r})'
        )
    return path.rstrip("/")


class Admin:
    """The admin endpoints of one middleware (see `RefreshMiddleware`'s ``admin_*`` options)."""

    def __init__(
        self,
        path: str,
        *,
        token: str | TokenCheck | None,
        loopback_only: bool,
        webhooks: Webhooks | None = None,
    ) -> None:
        if token is None and not loopback_only:
            raise OptionValueError(
                _OWNER,
                "admin_path",
                "admin_path is set but admin_token is not. Pass admin_token= "
                "(a secret string, or a callable that checks the bearer token), or "
                "admin_loopback_only=True to serve the admin endpoints without a token to "
                "requests from 127.0.0.1 / ::1 only",
            )
        if isinstance(token, str):
            if token != token.strip():
                raise OptionValueError(
                    _OWNER,
                    "admin_token",
                    "admin_token has leading or trailing whitespace; strip it "
                    "(a token read from a file often ends with a newline)",
                )
            if len(token) < 16:
                raise OptionValueError(
                    _OWNER,
                    "admin_token",
                    "admin_token must be at least 16 characters, e.g. "
                    "secrets.token_urlsafe(32) read from the environment (got a shorter one)",
                )
            secret = token.encode()
            self._check: TokenCheck | None = lambda presented: hmac.compare_digest(presented.encode(), secret)
        elif token is None or callable(token):
            self._check = token
        else:
            raise OptionTypeError(
                _OWNER,
                "admin_token",
                "admin_token must be a string, a callable taking the bearer "
                f"token and returning a bool, or None (got {type(token).__name__})",
            )
        if not isinstance(loopback_only, bool):
            raise OptionTypeError(
                _OWNER,
                "admin_loopback_only",
                f"admin_loopback_only must be True or False (got {loopback_only!r})",
            )
        self.path = path
        self._under = path + "/"
        self._hooks = path + "/hooks/"
        self._webhooks = webhooks
        self._loopback_only = loopback_only

    def owns(self, path: str) -> bool:
        """Whether a request for ``path`` (without the ``root_path``) is an admin request."""
        return path == self.path or path.startswith(self._under)

    async def __call__(
        self, scope: Scope, send: Send, handle: Controls | None, path: str, receive: Receive | None = None
    ) -> None:
        if self._webhooks is not None and receive is not None and path.startswith(self._hooks):
            # Before the token and loopback checks: a webhook proves itself by its
            # signature, and comes from the sender's servers (often through a proxy).
            hook = path[len(self._hooks) :].removesuffix("/")
            if HOOK_NAME.fullmatch(hook):
                runtime = cast("Target | None", handle)  # the runtime is both
                await self._webhooks(scope, receive, send, hook, runtime)
                return
            await _Reply(send, False).json(404, {"error": "not found"})
            return
        reply = _Reply(send, scope["method"] == "HEAD")
        method = "GET" if scope["method"] == "HEAD" else scope["method"]
        target = _target(path[len(self.path) :])
        headers = _Headers(scope["headers"])
        if target is None:
            await reply.json(404, {"error": "not found"})
            return
        if target == "health" and method == "GET":
            # Unauthenticated on purpose: a readiness probe (kubelet) carries no secret
            # and does not come from loopback. It shows names and ages, never values.
            await self._health(reply, handle)
            return
        if target == "health" and (
            method != "POST" or handle is None or handle.kind(target) in (None, "family")
        ):
            await reply.json(405, {"error": "use GET"}, allow=b"GET, HEAD")
            return
        if self._loopback_only:
            refused = _not_loopback(scope, headers)
            if refused is not None:
                error = f"the admin endpoints answer direct requests from 127.0.0.1 / ::1 only ({refused})"
                await reply.json(403, {"error": error})
                return
        if target == "" and method == "GET" and "text/html" in headers.get(b"accept"):
            await reply.page()  # a static shell: it fetches the data with the token typed in it
            return
        if method == "POST" and self._check is None:
            # Without a token, nothing else stops a web page in the operator's browser
            # from posting here. (A browser cannot add a bearer token cross-site.)
            cross = _cross_origin(scope, headers)
            if cross is not None:
                await reply.json(403, {"error": f"cross-origin requests are refused ({cross})"})
                return
        if self._check is not None and not await self._authorized(reply, headers):
            return
        if handle is None:
            await reply.json(503, {"error": _NOT_RUNNING})
            return
        if target == "":
            if method != "GET":
                await reply.json(405, {"error": "use GET"}, allow=b"GET, HEAD")
                return
            await reply.json(200, {"refreshers": handle.status()})
            return
        target, _, action = target.partition("/")
        kind = handle.kind(target)
        if kind is None:
            await reply.json(404, {"error": f"no refresher named {target!r}"})
            return
        if action:
            if method != "POST":
                await reply.json(405, {"error": f"use POST to {action}"}, allow=b"POST")
                return
            if kind != "refresher":
                await reply.json(*_no_action(target, kind, action))
                return
            await self._act(reply, handle, target, action, scope)
            return
        if method == "GET":
            await reply.json(200, {"name": target, "status": handle.status()[target]})
            return
        if method != "POST":
            await reply.json(
                405, {"error": "use GET for the status, POST to refresh"}, allow=b"GET, HEAD, POST"
            )
            return
        if kind == "family":
            await reply.json(*_no_action(target, kind, "refresh"))
            return
        wait = _query_flag(scope, "wait")
        if wait is None:
            await reply.json(400, {"error": "wait must be true or false"})
            return
        try:
            await self._refresh(reply, handle, target, wait=wait)
        except LookupError as exc:  # a derived value whose inputs have no value yet
            await reply.json(409, {"name": target, "error": str(exc)})
        except RuntimeError as exc:  # between startup and the first loop, or while stopping
            await reply.json(503, {"error": str(exc)})

    async def _authorized(self, reply: _Reply, headers: _Headers) -> bool:
        presented_headers = headers.values(b"authorization")
        # Header bytes are latin-1 on the wire; a UTF-8 token arrives as its bytes.
        # Two Authorization headers are ambiguous (which one did a proxy check?): refused.
        raw = presented_headers[0] if len(presented_headers) == 1 else ""
        raw = raw.encode("latin-1").decode("utf-8", "replace")
        scheme, _, presented = raw.partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented:
            hint = "send the admin token as 'Authorization: Bearer <token>'"
            await reply.json(401, {"error": hint}, challenge="")
            return False
        assert self._check is not None
        try:
            allowed = self._check(presented)
            if inspect.isawaitable(allowed):
                allowed = await allowed
        except BaseException as exc:  # user code: whatever it raises refuses the request, and only that
            if escapes(exc):
                raise
            logger.error("asgi_refresh: the admin_token check raised; the request is refused", exc_info=exc)
            await reply.json(500, {"error": "the admin token check failed"})
            return False
        if allowed is not True:
            await reply.json(401, {"error": "invalid admin token"}, challenge=', error="invalid_token"')
            return False
        return True

    async def _health(self, reply: _Reply, handle: Controls | None) -> None:
        if handle is None:
            await reply.json(503, {"status": "unavailable", "error": _NOT_RUNNING})
            return
        # Names, reasons and ages only: this endpoint needs no token, and an error
        # line from a user's own fetch may quote a URL with a key in it.
        failing = handle.unhealthy()
        if failing:
            await reply.json(503, {"status": "unavailable", "failing": failing})
        else:
            await reply.json(200, {"status": "ok"})

    async def _act(self, reply: _Reply, handle: Controls, name: str, action: str, scope: Scope) -> None:
        """Last known good: accept, reject, pin, unpin or roll back one refresher."""
        try:
            if action == "accept":
                await handle.accept(name)
            elif action == "reject":
                await handle.reject(name)
            elif action == "pin":
                version = _query_value(scope, "version")
                if not version:
                    await reply.json(400, {"error": "pin needs ?version=V, a version id from the status"})
                    return
                await handle.pin(name, version)
            elif action == "unpin":
                handle.unpin(name)
            else:
                await handle.rollback(name)
        except (LookupError, ValueError) as exc:  # nothing held back, no such version...
            await reply.json(409, {"name": name, "error": str(exc)})
            return
        except TimeoutError as exc:
            await reply.json(504, {"name": name, "error": str(exc) or "the lease holder did not answer"})
            return
        except RuntimeError as exc:  # not running
            await reply.json(503, {"error": str(exc)})
            return
        await reply.json(200, {"name": name, "status": handle.status()[name]})

    async def _refresh(self, reply: _Reply, handle: Controls, name: str, *, wait: bool) -> None:
        if not wait:
            handle.refresh_soon(name)
            await reply.json(202, {"name": name, "refreshing": True})
            return
        try:
            await handle.refresh(name)
        except RefreshError as exc:
            cause = exc.__cause__
            error = describe_error(cause) if cause is not None else str(exc)
            await reply.json(502, {"name": name, "error": error, "status": handle.status()[name]})
            return
        await reply.json(200, {"name": name, "status": handle.status()[name]})


class _Headers:
    """A request's headers as the ASGI scope lists them: in order, repeated names kept."""

    def __init__(self, raw: Iterable[tuple[bytes, bytes]]) -> None:
        self._raw = raw

    def get(self, name: bytes) -> str:
        """The first value of ``name`` (lowercase), or ""."""
        values = self.values(name)
        return values[0] if values else ""

    def values(self, name: bytes) -> list[str]:
        """Every value of ``name`` (lowercase), in order: one per header line."""
        return [value.decode("latin-1") for key, value in self._raw if key.lower() == name]

    def relayed_by(self) -> str | None:
        """The name of the first header that says a proxy relayed the request, or None.

        Any occurrence counts, whatever its value (an empty one too) and wherever it
        is in the list: a server may hand the app the first, the last or all of them.
        Names are compared lowercased, with "_" read as "-".
        """
        for key, _ in self._raw:
            name = key.decode("latin-1").strip().lower().replace("_", "-")
            if _FORWARDING.search(name):
                return name
        return None


class _Reply:
    def __init__(self, send: Send, head: bool) -> None:
        self._send = send
        self._head = head

    async def json(
        self, status: int, body: Any, *, allow: bytes | None = None, challenge: str | None = None
    ) -> None:
        headers = list(_JSON_HEADERS)
        if allow is not None:
            headers.append((b"allow", allow))
        if challenge is not None:
            headers.append((b"www-authenticate", f'Bearer realm="asgi_refresh"{challenge}'.encode()))
        await self._body(status, headers, json.dumps(body).encode())

    async def page(self) -> None:
        headers = [
            (b"content-type", b"text/html; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
            (b"referrer-policy", b"no-referrer"),
            (b"x-content-type-options", b"nosniff"),
        ]
        await self._body(200, headers, PAGE)

    async def _body(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        headers.append((b"content-length", str(len(body)).encode()))
        await self._send({"type": "http.response.start", "status": status, "headers": headers})
        await self._send({"type": "http.response.body", "body": b"" if self._head else body})


def forwarding_header(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The name of the first header of an ASGI header list that says a proxy relayed the request."""
    return _Headers(headers).relayed_by()


def _not_loopback(scope: Scope, headers: _Headers) -> str | None:
    """Why a request is not from a direct client on this host, or None if it is."""
    client = scope.get("client")
    address = client[0] if isinstance(client, tuple | list) and client else None
    if not isinstance(address, str) or not _is_loopback_address(address):
        return "this client is not on 127.0.0.1 / ::1"
    relayed = headers.relayed_by()
    if relayed is not None:
        # Relayed by a proxy on this host: the real client is elsewhere.
        return f"a proxy relayed it: it carries {printable(relayed, 60)}"
    # The Host must be a loopback name too. A reverse proxy on this host would make
    # every request look local (its Host is the public name), and a web page using
    # DNS rebinding reaches 127.0.0.1 under its own host name: both are refused.
    hosts = headers.values(b"host")
    if len(hosts) > 1:
        return "it has more than one Host header"
    if not hosts or hosts[0] == "":
        return None  # HTTP/1.0 without Host: a local tool, not a browser
    parsed = _parse_host(hosts[0])
    if parsed is None or not (parsed[0] in _LOOPBACK_HOSTS or _is_loopback_address(parsed[0])):
        return "its Host is not a loopback name"
    return None


def _parse_host(text: str) -> tuple[str, int | None] | None:
    """``(host, port)`` of a Host header value, lowercased; None if it is not one."""
    match = _HOST.fullmatch(text.strip().lower())
    if match is None:
        return None
    port = None if match["port"] is None else int(match["port"])
    if port is not None and port > 65535:
        return None
    return match["v6"] or match["name"], port


def _is_loopback_address(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 on a dual-stack socket
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


_ACTIONS = frozenset({"accept", "reject", "pin", "unpin", "rollback"})


def _no_action(name: str, kind: Kind, action: str) -> tuple[int, dict[str, str]]:
    """The answer to an operator's action on a family or a derived value: what it is, and why not."""
    if kind == "family":
        # 404, as for no such refresher: a family's keys load when a request asks for them.
        why = (
            f"{name!r} is a refresher family: its keys load when a request asks for them and "
            f"refresh on their own, so there is nothing to {action}; GET {name} for its status"
        )
        return 404, {"name": name, "error": why}
    why = (
        f"{name!r} is a derived value: it is computed from its inputs, so it has no versions, "
        f"pins or held-back values to {action}; {action} one of its inputs instead"
    )
    return 409, {"name": name, "error": why}


def _target(rest: str) -> str | None:
    """What follows the prefix: "" for the prefix itself, a name, ``name/action``, or None.

    One trailing slash is allowed; empty segments and other deeper paths are not.
    """
    if rest in ("", "/"):
        return ""
    if not rest.startswith("/"):
        return None
    target = rest[1:].removesuffix("/")
    name, slash, action = target.partition("/")
    if not name or (slash and action not in _ACTIONS):
        return None
    return target


def _cross_origin(scope: Scope, headers: _Headers) -> str | None:
    """Why a POST looks sent by a web page of another origin (a form, a fetch), or None.

    The browser's own word decides: ``Sec-Fetch-Site`` when it sends it (every
    current browser), else ``Origin``, else ``Referer`` (older browsers). Without
    any of them the request is not from a browser page (curl, a script, a probe).
    Every occurrence of a header is checked, not only the first.
    """
    sites = headers.values(b"sec-fetch-site")
    if sites:
        for site in sites:
            if site.strip().lower() not in _OWN_SITES:
                return f"Sec-Fetch-Site: {printable(site, 40) or '(empty)'}"
        return None
    own = _own_origin(scope, headers)
    origins = headers.values(b"origin")
    for origin in origins:
        # "null" (a sandboxed frame, a data: URL, a privacy redirect) is no origin.
        if own is None or _origin_of(origin) != own:
            return f"Origin: {printable(origin, 80) or '(empty)'}"
    if origins:
        return None
    for referer in headers.values(b"referer"):
        if own is None or _origin_of(referer) != own:
            return "Referer from another origin"
    return None


def _own_origin(scope: Scope, headers: _Headers) -> tuple[str, str, int] | None:
    """This server's origin as the request names it: its scheme and its one Host."""
    hosts = headers.values(b"host")
    parsed = _parse_host(hosts[0]) if len(hosts) == 1 else None
    scheme = scope.get("scheme") or "http"
    if parsed is None or scheme not in _DEFAULT_PORTS:
        return None
    host, port = parsed
    return scheme, host, _DEFAULT_PORTS[scheme] if port is None else port


def _origin_of(url: str) -> tuple[str, str, int] | None:
    """The origin of a URL (an Origin or Referer value); None for "null" or anything odd."""
    scheme, _, rest = url.strip().partition("://")
    scheme = scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        return None
    authority = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    parsed = _parse_host(authority)
    if parsed is None:
        return None
    host, port = parsed
    return scheme, host, _DEFAULT_PORTS[scheme] if port is None else port


def _query_value(scope: Scope, name: str) -> str | None:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True).get(name)
    return values[-1][:100] if values else None


def _query_flag(scope: Scope, name: str) -> bool | None:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True).get(name)
    if not values:
        return False
    value = values[-1].lower()
    if value == "":
        return True  # a bare ?wait
    return True if value in _TRUE else False if value in _FALSE else None
