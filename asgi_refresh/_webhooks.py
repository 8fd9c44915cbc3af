"""Signed webhooks: ``POST {admin_path}/hooks/{hook}`` makes the named refreshers fetch now.

A delivery is let in by its signature alone (GitHub, GitLab or Standard Webhooks),
never by the admin token: the sender knows a shared secret, not the operator's
token. Everything in a delivery is hostile until its signature checks: the body is
read up to a cap (and no further), within a time limit, and every refusal answers
the same 401 whatever was wrong, so a prober learns nothing from it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import math
import re
import weakref
from collections import OrderedDict
from collections.abc import Callable, Collection, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import anyio

from ._duration import Duration, positive_duration
from ._option_error import OptionTypeError, OptionValueError
from ._text import printable
from ._types import Receive, Scope, Send

if TYPE_CHECKING:
    from ._clock import Clock
    from ._events import Events

logger = logging.getLogger("asgi_refresh")

Outcome = Literal["accepted", "duplicate", "unauthorized", "too_large", "timeout"]
"""What became of one delivery (the ``outcome`` label of the delivery metric)."""

HOOK_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""A hook's name: what may follow ``{admin_path}/hooks/``."""

MIN_GAP = 1.0
"""Seconds between two webhook-started refreshes of one refresher, in one process.

A delivery inside the gap is not dropped: one refresh at the gap's end answers all
of them (a change announced then is still fetched), so a burst of any size costs
the upstream two fetches per refresher and per gap.
"""

_SECRET_MIN_CHARS = 16
_READ_TIMEOUT = 10.0  # real seconds to receive a whole body: a trickling sender is dropped
_SEEN_MAX = 10_000  # webhook-ids remembered for the replay check, per middleware
_ID_MAX = 256
_REFUSED = "invalid or missing webhook signature"
_REFUSAL_LOG_EVERY = 60.0  # one WARNING per hook per minute about refused deliveries
_JSON_HEADERS = [
    (b"content-type", b"application/json"),
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
]
_OWNER = "Webhook"
_HINTS = {
    "unauthorized": "if it came from the real sender, check that its secret matches the Webhook's "
    "(and, for Standard Webhooks, that its clock is right)",
    "too_large": "if the sender's payloads are this big, raise the Webhook's max_body",
    "timeout": "the body did not arrive within 10 seconds",
}


@dataclass(frozen=True)
class Webhook:
    """One webhook: which refreshers it refreshes, and how a delivery proves it is genuine.

    Give ``RefreshMiddleware(admin_webhooks={"deploy": Webhook([...], ...)})``;
    the hook is then served at ``POST {admin_path}/hooks/deploy``. Set exactly one
    of ``github_secret``, ``gitlab_token`` and ``standard_secret``:

    ```python
    Webhook(["names", "flags"], github_secret=os.environ["DEPLOY_HOOK_SECRET"])
    ```

    Args:
        refreshers: The names of the refreshers a valid delivery refreshes (at once,
            with a coordinator cluster-wide through the lease holder).
        github_secret: GitHub's webhook secret: a delivery must carry
            ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>``.
        gitlab_token: GitLab's secret token: a delivery must carry it in
            ``X-Gitlab-Token``.
        standard_secret: A Standard Webhooks secret (``whsec_`` and base64, as
            Svix and others issue them; any other string is used as it is): a
            delivery must carry ``webhook-id``, ``webhook-timestamp`` and
            ``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``.
        tolerance: For ``standard_secret``: how far ``webhook-timestamp`` may be
            from now, either way; a ``webhook-id`` seen within it is a replay.
        max_body: The largest body accepted, in bytes (413 beyond it); the body is
            read no further.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: no refresher, not exactly one scheme, or a secret too short.
    """

    refreshers: Collection[str]
    github_secret: str | None = field(default=None, repr=False)
    gitlab_token: str | None = field(default=None, repr=False)
    standard_secret: str | None = field(default=None, repr=False)
    tolerance: Duration = "5m"
    max_body: int = 1_048_576

    def __post_init__(self) -> None:
        names = self.refreshers
        if isinstance(names, str) or not isinstance(names, Iterable):
            raise OptionTypeError(
                _OWNER,
                "refreshers",
                f'refreshers must be a list of refresher names, like ["names"] (got {names!r})',
            )
        names = tuple(names)
        if not names or not all(isinstance(name, str) for name in names):
            raise OptionValueError(
                _OWNER,
                "refreshers",
                f'refreshers must name at least one refresher, like ["names"] (got {names!r})',
            )
        object.__setattr__(self, "refreshers", tuple(dict.fromkeys(names)))
        given = [
            option
            for option in ("github_secret", "gitlab_token", "standard_secret")
            if getattr(self, option) is not None
        ]
        if len(given) != 1:
            raise OptionValueError(
                _OWNER,
                given[1] if len(given) > 1 else "github_secret",
                "set exactly one of github_secret, gitlab_token and standard_secret "
                f"(got {', '.join(given) or 'none'})",
            )
        option = given[0]
        secret = getattr(self, option)
        if not isinstance(secret, str):
            raise OptionTypeError(_OWNER, option, f"{option} must be a string (got {type(secret).__name__})")
        if secret != secret.strip():
            raise OptionValueError(
                _OWNER,
                option,
                f"{option} has leading or trailing whitespace; strip it "
                "(a secret read from a file often ends with a newline)",
            )
        if len(secret) < _SECRET_MIN_CHARS:
            raise OptionValueError(
                _OWNER,
                option,
                f"{option} must be at least {_SECRET_MIN_CHARS} characters, e.g. "
                "secrets.token_hex(32) read from the environment (got a shorter one)",
            )
        if option == "standard_secret":
            _standard_key(secret)  # a malformed whsec_ secret is refused now, not at each delivery
        object.__setattr__(self, "tolerance", positive_duration(_OWNER, "tolerance", self.tolerance))
        if isinstance(self.max_body, bool) or not isinstance(self.max_body, int) or self.max_body < 1:
            raise OptionValueError(
                _OWNER, "max_body", f"max_body must be a positive number of bytes (got {self.max_body!r})"
            )

    @property
    def scheme(self) -> str:
        """``"github"``, ``"gitlab"`` or ``"standard"``."""
        if self.github_secret is not None:
            return "github"
        return "gitlab" if self.gitlab_token is not None else "standard"


def checked_webhooks(hooks: object, refreshers: Collection[str]) -> dict[str, Webhook]:
    """``admin_webhooks`` as given to the middleware, checked against its refreshers."""
    owner, option = "RefreshMiddleware", "admin_webhooks"
    if not isinstance(hooks, Mapping):
        raise OptionTypeError(
            owner,
            option,
            'admin_webhooks must be a mapping of hook names to Webhook(...), like {"deploy": '
            f'Webhook(["names"], github_secret=...)}} (got {type(hooks).__name__})',
        )
    checked: dict[str, Webhook] = {}
    for name, hook in hooks.items():
        if not isinstance(name, str) or not HOOK_NAME.fullmatch(name):
            raise OptionValueError(
                owner,
                option,
                f"admin_webhooks: a hook name is letters, digits, '-' and '_' (1-64 of them) (got {name!r})",
            )
        if not isinstance(hook, Webhook):
            raise OptionTypeError(
                owner, option, f"admin_webhooks[{name!r}] must be a Webhook(...) (got {type(hook).__name__})"
            )
        unknown = [refresher for refresher in hook.refreshers if refresher not in refreshers]
        if unknown:
            known = ", ".join(sorted(refreshers)) or "none"
            raise OptionValueError(
                owner,
                option,
                f"admin_webhooks[{name!r}] names refreshers that do not exist: "
                f"{', '.join(map(repr, unknown))} (known: {known})",
            )
        checked[name] = hook
    if "hooks" in refreshers and checked:
        raise OptionValueError(
            owner,
            option,
            "a refresher named 'hooks' and admin_webhooks cannot go together: "
            "{admin_path}/hooks/... serves the webhooks; rename the refresher",
        )
    return checked


class Target(Protocol):
    """What a delivery acts on: one lifespan's running refreshers (the runtime)."""

    clock: Clock
    events: Events | None

    def refresh_after_change(self, name: str) -> None:
        """The upstream of ``name`` changed: fetch it now (after a fetch under way)."""

    def start_source_task(self, func: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        """Run a task until shutdown."""


class Webhooks:
    """The webhooks of one middleware: verification, replay memory, pacing."""

    def __init__(self, hooks: Mapping[str, Webhook]) -> None:
        self.hooks = dict(hooks)
        # hook -> {webhook-id: wall time first seen}, oldest first
        self._seen: dict[str, OrderedDict[str, float]] = {name: OrderedDict() for name in self.hooks}
        # Pacing belongs to a lifespan (its trailing refresh runs in that lifespan's tasks).
        self._gates: weakref.WeakKeyDictionary[Any, dict[str, _Gate]] = weakref.WeakKeyDictionary()
        self._refused: dict[str, tuple[float, int]] = {}  # hook -> (when logged, refused since)

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, hook_name: str, target: Target | None
    ) -> None:
        """Serve one request for ``{admin_path}/hooks/{hook_name}``."""
        hook = self.hooks.get(hook_name)
        if hook is None:
            await _reply(send, 404, {"error": f"no webhook named {printable(hook_name, 64)!r}"})
            return
        if scope["method"] != "POST":
            await _reply(send, 405, {"error": "use POST to deliver a webhook"}, allow=b"POST")
            return
        if target is None:
            await _reply(send, 503, {"error": "asgi_refresh is not running (no lifespan)"})
            return
        body = await _read_body(scope, receive, hook.max_body)
        if not isinstance(body, bytes):
            self._record(target, hook_name, body)
            if body == "too_large":
                await _reply(send, 413, {"error": f"the body is larger than {hook.max_body} bytes"})
            else:
                await _reply(send, 408, {"error": "the body did not arrive in time"})
            return
        verdict = _verify(hook, _headers(scope), body, target.clock.wall())
        if verdict is None:
            self._record(target, hook_name, "unauthorized")
            await _reply(send, 401, {"error": _REFUSED})
            return
        if verdict and self._replayed(hook_name, verdict, hook, target.clock.wall()):
            self._record(target, hook_name, "duplicate")
            await _reply(send, 200, {"hook": hook_name, "duplicate": True})
            return
        for name in hook.refreshers:
            self._trigger(target, name)
        self._record(target, hook_name, "accepted")
        await _reply(send, 202, {"hook": hook_name, "refreshing": list(hook.refreshers)})

    def _replayed(self, hook_name: str, delivery_id: str, hook: Webhook, now: float) -> bool:
        """Whether ``delivery_id`` was seen within the tolerance; remember it if not.

        An id is kept for twice the tolerance: a timestamp may be that far ahead of
        our clock and still pass, and it must stay a replay until it no longer does.
        Past `_SEEN_MAX` ids the oldest are forgotten (only senders with the secret
        can add ids, so only a sender's own flood reaches that).
        """
        seen = self._seen[hook_name]
        keep = 2 * float(hook.tolerance)  # type: ignore[arg-type]  # checked: seconds
        while seen:  # insertion order is time order: forget from the oldest
            at = next(iter(seen.values()))
            if now - at <= keep and len(seen) < _SEEN_MAX:
                break
            seen.popitem(last=False)
        if delivery_id in seen:
            return True
        seen[delivery_id] = now
        return False

    def _trigger(self, target: Target, name: str) -> None:
        """Refresh ``name`` now, or once at the end of its gap if it was refreshed less than `MIN_GAP` ago."""
        gates = self._gates.setdefault(target, {})
        gate = gates.setdefault(name, _Gate())
        if gate.trailing:
            return  # the refresh at the end of the gap answers this delivery too
        now = target.clock.monotonic()
        if now - gate.last >= MIN_GAP:
            gate.last = now
            _refresh(target, name)
            return
        gate.trailing = True

        async def trailing() -> None:
            try:
                await target.clock.sleep_until(gate.last + MIN_GAP)
            finally:
                gate.trailing = False
            gate.last = target.clock.monotonic()
            _refresh(target, name)

        try:
            target.start_source_task(trailing, f"asgi_refresh:{name}:webhook")
        except (AssertionError, AttributeError, RuntimeError):  # stopping: nothing to refresh any more
            gate.trailing = False

    def _record(self, target: Target, hook_name: str, outcome: Outcome) -> None:
        """The event (and so the metric) of one delivery; a WARNING now and then for refusals."""
        if target.events is not None:
            target.events.emit("webhook", hook_name, error=None if outcome == "accepted" else outcome)
        if outcome in ("accepted", "duplicate"):
            logger.debug(  # a burst would flood INFO: the event and the metric count them
                "asgi_refresh: webhook %r delivery %s",
                hook_name,
                outcome,
                extra={"hook": hook_name, "outcome": outcome},
            )
            return
        now = target.clock.monotonic()
        logged, since = self._refused.get(hook_name, (-math.inf, 0))
        if now - logged < _REFUSAL_LOG_EVERY:
            self._refused[hook_name] = (logged, since + 1)
            return
        self._refused[hook_name] = (now, 0)
        more = f" ({since} more refused since the last such warning)" if since else ""
        logger.warning(
            "asgi_refresh: webhook %r: a delivery was refused (%s)%s; %s",
            hook_name,
            outcome,
            more,
            _HINTS[outcome],
            extra={"hook": hook_name, "outcome": outcome},
        )


@dataclass(slots=True)
class _Gate:
    """When one refresher was last refreshed by a webhook, and whether a refresh is queued."""

    last: float = -math.inf
    trailing: bool = False


def _refresh(target: Target, name: str) -> None:
    try:
        target.refresh_after_change(name)
    except RuntimeError:  # between startup and the first loop, or while stopping: polling carries on
        logger.info("asgi_refresh: webhook refresh of %r skipped: not running", name)


async def _read_body(scope: Scope, receive: Receive, cap: int) -> bytes | Outcome:
    """The request body, or why not: over ``cap`` bytes (no more is read), or too slow."""
    for key, value in scope["headers"]:
        if key.lower() == b"content-length":
            text = value.decode("latin-1").strip()
            if not text.isdigit() or int(text[:20]) > cap:  # a stated length over the cap: not read at all
                return "too_large"
    chunks: list[bytes] = []
    size = 0
    with anyio.move_on_after(_READ_TIMEOUT):
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return "timeout"  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > cap:
                return "too_large"
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
    return "timeout"


def _headers(scope: Scope) -> dict[bytes, list[bytes]]:
    found: dict[bytes, list[bytes]] = {}
    for key, value in scope["headers"]:
        found.setdefault(key.lower(), []).append(value)
    return found


def _one(headers: Mapping[bytes, list[bytes]], name: bytes) -> bytes | None:
    """The header's only value; None if it is missing or repeated (which one would a proxy check?)."""
    values = headers.get(name, [])
    return values[0] if len(values) == 1 else None


def _verify(hook: Webhook, headers: Mapping[bytes, list[bytes]], body: bytes, now: float) -> str | None:
    """None for a refused delivery; else the delivery id to check for replays ("" for none)."""
    if hook.github_secret is not None:
        presented = _one(headers, b"x-hub-signature-256")
        expected = (
            b"sha256=" + hmac.new(hook.github_secret.encode(), body, hashlib.sha256).hexdigest().encode()
        )
        return (
            "" if presented is not None and hmac.compare_digest(presented.strip().lower(), expected) else None
        )
    if hook.gitlab_token is not None:
        presented = _one(headers, b"x-gitlab-token")
        # latin-1 on the wire: a UTF-8 token arrives as its bytes, compared as bytes.
        return (
            ""
            if presented is not None and hmac.compare_digest(presented, hook.gitlab_token.encode())
            else None
        )
    assert hook.standard_secret is not None
    delivery_id, timestamp, signatures = (
        _one(headers, b"webhook-id"),
        _one(headers, b"webhook-timestamp"),
        _one(headers, b"webhook-signature"),
    )
    if delivery_id is None or timestamp is None or signatures is None:
        return None
    if not 0 < len(delivery_id) <= _ID_MAX or not timestamp.isdigit() or len(timestamp) > 12:
        return None
    window = float(hook.tolerance)  # type: ignore[arg-type]  # checked: seconds
    if abs(now - int(timestamp)) > window:
        return None
    signed = delivery_id + b"." + timestamp + b"." + body
    expected = base64.b64encode(
        hmac.new(_standard_key(hook.standard_secret), signed, hashlib.sha256).digest()
    )
    valid = False
    for item in signatures.split()[:16]:  # several while a secret is rotated
        version, _, signature = item.partition(b",")
        # Every one is compared, whatever the others gave: the time taken says nothing.
        valid |= version == b"v1" and hmac.compare_digest(signature, expected)
    return delivery_id.decode("latin-1") if valid else None


def _standard_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret: ``whsec_<base64>`` decoded, else the text."""
    if not secret.startswith("whsec_"):
        return secret.encode()
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) < 16:
        raise OptionValueError(
            _OWNER,
            "standard_secret",
            "standard_secret starts with whsec_ but the rest is not the base64 of a key of "
            "at least 16 bytes; paste the secret exactly as the sender shows it",
        )
    return key


async def _reply(send: Send, status: int, body: Any, *, allow: bytes | None = None) -> None:
    payload = json.dumps(body).encode()
    headers = [*_JSON_HEADERS, (b"content-length", str(len(payload)).encode())]
    if allow is not None:
        headers.append((b"allow", allow))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
