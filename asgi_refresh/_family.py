"""The ``RefresherFamily`` spec: data per key, loaded on first use and kept fresh while it is used.

Keys come from requests, so they are hostile input: `checked_key` bounds their
type and size before anything (a dict, a log line, a fetch) sees them, and
`shown_key` is the only form in which a key reaches logs, events and ``status()``.
"""

from __future__ import annotations

import inspect
import keyword
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from ._contain import is_async_callable
from ._duration import Duration, format_duration, positive_duration
from ._option_error import OptionTypeError, OptionValueError
from ._refresher import MAX_JITTER, MIN_EVERY, RESERVED_NAME, RESERVED_PREFIX
from ._text import printable

Key = str | int | tuple[str | int, ...]
"""What a family is keyed by: a string, an int, or a flat tuple of them (``("EUR", "USD")``)."""

KeyFetch = Callable[[Any], Awaitable[Any]] | Callable[[Any], Any]
"""``fetch(key)``: ``async def``, plain ``def`` (run in a thread) or an object with ``async __call__``."""

MAX_KEY_CHARS = 256
"""The longest key: characters of its strings plus 20 per int, over all its parts."""
MAX_KEY_PARTS = 8
"""The most parts a tuple key may have."""
_MAX_INT_BITS = 64  # an int key is an id, not a number whose repr costs a second to print
_INT_CHARS = 20  # what an int part counts for in MAX_KEY_CHARS
_SHOWN_KEY_CHARS = 80
MAX_MAX_KEYS = 10_000_000
_MAX_BACKOFF_MULTIPLIER = 100.0


@dataclass(frozen=True, init=False)
class RefresherFamily:
    """Data per key, known only at run time: settings per tenant, rates per currency pair, a JWKS per issuer.

    ``await handle.get(name, key)`` returns the value for ``key``. The first
    request for a key loads it (concurrent requests for one cold key share one
    fetch); after that the key is served at once and refreshed in the background
    every ``every`` while it is being used. A request for a value older than
    ``every`` gets it at once while one refresh runs (stale-while-revalidate): no
    request waits for a fetch once its key is warm. Keys unused for ``idle_ttl``
    stop refreshing and are dropped, and at most ``max_keys`` are kept (the least
    recently used is dropped first).

    Keys come from requests, so they are checked: a ``str``, an ``int`` or a flat
    tuple of them, at most 256 characters in all (`ValueError` / `TypeError`
    otherwise, with a message that never echoes the key in full).

    Args:
        name: The family's name, for ``handle.get(name, key)``, ``status()`` and
            logs: a Python identifier, unique among refreshers and families.
        fetch: ``fetch(key)`` returns the value for one key. ``async def`` (and
            objects with ``async __call__``) run on the event loop; a plain
            ``def`` runs in a worker thread so that a blocking client never
            stalls requests.
        every: How old a key's value may get before it is refreshed: seconds, a
            ``timedelta`` or a string like ``"5m"``; at least 10 ms.
        idle_ttl: A key not asked for in this long stops refreshing and is
            dropped; the next request for it loads it again.
        max_keys: The most keys kept at once; beyond it a key that failed without
            a value is dropped first, then the least recently used. Also the most
            first loads under way at once: past it a cold key is refused with
            `RefreshError` (a flood of distinct keys).
        preload: Keys to load at startup, before the app's own startup runs, as a
            refresher's first load.
        required: If true, startup fails unless every ``preload`` key loads
            within the middleware's ``startup_timeout``; if false, startup goes on
            and a preload key that fails keeps retrying in the background.
        timeout: Longest one fetch may take, or ``None`` for no limit. A plain
            ``def`` fetch past it is abandoned and its thread runs on. A family
            runs at most 8 threads (or ``max_keys``, if fewer): a fetch waits for
            one, and fails at once while all are abandoned and still blocked.
        jitter: Fraction of ``every`` (``0 <= jitter <= 0.5``) by which each
            key's refresh is randomly moved earlier, so that keys loaded together
            spread out.
        backoff_initial: After a key's fetch fails, the wait before it is
            fetched again (a cold key: requests meanwhile get the error at once).
        backoff_max: Longest wait between retries of a key; ``None`` means ``every``.
        backoff_multiplier: Growth of the wait per consecutive failure of a key.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: an argument is out of range.
    """

    name: str
    fetch: KeyFetch
    every: float
    idle_ttl: float
    max_keys: int
    preload: tuple[Key, ...]
    required: bool
    timeout: float | None
    jitter: float
    backoff_initial: float
    backoff_max: float | None
    backoff_multiplier: float

    def __init__(
        self,
        name: str,
        fetch: KeyFetch,
        *,
        every: Duration,
        idle_ttl: Duration = "1h",
        max_keys: int = 1000,
        preload: Iterable[Key] = (),
        required: bool = True,
        timeout: Duration | None = "30s",
        jitter: float = 0.1,
        backoff_initial: Duration = "1s",
        backoff_max: Duration | None = None,
        backoff_multiplier: float = 2.0,
    ) -> None:
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise OptionValueError(
                "",
                "name",
                f"RefresherFamily name must be a Python identifier, like 'rates' or 'tenant_settings' "
                f"(got {name!r:.80})",
            )
        if name == RESERVED_NAME or name.startswith(RESERVED_PREFIX):
            raise OptionValueError(
                "",
                "name",
                f"RefresherFamily name {name!r} is reserved (the control handle, and the records "
                f"a coordinator keeps, start with {RESERVED_NAME!r}); choose another name",
            )
        owner = f"RefresherFamily {name!r}"
        if not callable(fetch):
            raise OptionTypeError(
                owner, "fetch", f"fetch must be a callable taking the key (got {fetch!r:.80})"
            )
        _check_one_argument(owner, fetch)
        seconds = positive_duration(owner, "every", every)
        if seconds < MIN_EVERY:
            raise OptionValueError(
                owner,
                "every",
                f"every must be at least {format_duration(MIN_EVERY)} (a schedule, not a busy loop) "
                f"(got {every!r})",
            )
        idle = positive_duration(owner, "idle_ttl", idle_ttl)
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or not 1 <= max_keys <= MAX_MAX_KEYS:
            raise OptionValueError(
                owner,
                "max_keys",
                f"max_keys must be a whole number from 1 to {MAX_MAX_KEYS:,} (got {max_keys!r:.80})",
            )
        if isinstance(preload, str | bytes) or not isinstance(preload, Iterable):
            raise OptionTypeError(
                owner, "preload", f"preload must be a list of keys, like ['EUR', 'USD'] (got {preload!r:.80})"
            )
        keys: list[Key] = []
        for key in preload:
            try:
                checked = checked_key(name, key)
            except (TypeError, ValueError) as exc:
                # checked_key's own "Family 'f': " would say the family twice.
                text = str(exc).removeprefix(f"Family {name!r}: ")
                raise OptionValueError(owner, "preload", f"preload: {text}") from None
            if checked not in keys:
                keys.append(checked)
        if len(keys) > max_keys:
            raise OptionValueError(
                owner, "preload", f"preload has {len(keys)} keys, more than max_keys ({max_keys})"
            )
        if not isinstance(required, bool):
            raise OptionTypeError(owner, "required", f"required must be True or False (got {required!r:.80})")
        if not isinstance(jitter, int | float) or isinstance(jitter, bool) or not 0 <= jitter <= MAX_JITTER:
            raise OptionValueError(
                owner,
                "jitter",
                f"jitter must be a fraction of every, 0 <= jitter <= {MAX_JITTER} (got {jitter!r})",
            )
        initial = positive_duration(owner, "backoff_initial", backoff_initial)
        cap = None if backoff_max is None else positive_duration(owner, "backoff_max", backoff_max)
        if cap is not None and cap > seconds:
            raise OptionValueError(
                owner,
                "backoff_max",
                f"backoff_max must not exceed every ({format_duration(seconds)}): a failing key "
                f"must be retried at least as often as a healthy one is refreshed (got {backoff_max!r})",
            )
        if (
            not isinstance(backoff_multiplier, int | float)
            or isinstance(backoff_multiplier, bool)
            or not 1 <= backoff_multiplier <= _MAX_BACKOFF_MULTIPLIER
        ):
            raise OptionValueError(
                owner,
                "backoff_multiplier",
                f"backoff_multiplier must be between 1 and {_MAX_BACKOFF_MULTIPLIER:g} "
                f"(got {backoff_multiplier!r})",
            )
        set_field = object.__setattr__
        set_field(self, "name", name)
        set_field(self, "fetch", fetch)
        set_field(self, "every", seconds)
        set_field(self, "idle_ttl", idle)
        set_field(self, "max_keys", max_keys)
        set_field(self, "preload", tuple(keys))
        set_field(self, "required", required)
        set_field(self, "timeout", None if timeout is None else positive_duration(owner, "timeout", timeout))
        set_field(self, "jitter", float(jitter))
        set_field(self, "backoff_initial", initial)
        set_field(self, "backoff_max", cap)
        set_field(self, "backoff_multiplier", float(backoff_multiplier))

    @property
    def is_async(self) -> bool:
        """Whether ``fetch`` runs on the event loop (true) or in a worker thread."""
        return is_async_callable(self.fetch)


def _check_one_argument(owner: str, fetch: Callable[..., Any]) -> None:
    try:
        signature = inspect.signature(fetch)
    except (TypeError, ValueError):  # some builtins have no signature: trust them
        return
    try:
        signature.bind(None)
    except TypeError:
        raise OptionTypeError(
            owner,
            "fetch",
            f"fetch is called with the key as its one argument, but it takes "
            f"({', '.join(signature.parameters)}); bind the others first, "
            "e.g. functools.partial(fetch, client) or lambda key: fetch(client, key)",
        ) from None


def checked_key(family: str, key: object) -> Key:
    """``key`` as the family stores it, or a `TypeError` / `ValueError` that never echoes it in full.

    Only plain ``str`` and ``int`` (and flat tuples of them) are taken, as their
    exact built-in types: a subclass could hash and compare as it likes, and the
    key is hashed and compared on every request. ``bool`` is refused (``True ==
    1`` would make two keys one).
    """
    kind = type(key)
    if kind is str:
        if len(key) > MAX_KEY_CHARS:  # type: ignore[arg-type]
            raise _too_long(family, key)
        return key  # type: ignore[return-value]
    if kind is int:
        if key.bit_length() > _MAX_INT_BITS:  # type: ignore[attr-defined]
            raise ValueError(
                f"Family {family!r}: an int key must fit in {_MAX_INT_BITS} bits (got an int of "
                f"{key.bit_length()} bits)"  # type: ignore[attr-defined]
            )
        return key  # type: ignore[return-value]
    if kind is tuple:
        parts: tuple[object, ...] = key  # type: ignore[assignment]
        if not parts or len(parts) > MAX_KEY_PARTS:
            raise ValueError(
                f"Family {family!r}: a tuple key must have 1 to {MAX_KEY_PARTS} parts (got {len(parts)})"
            )
        size = 0
        for part in parts:
            part_kind = type(part)
            if part_kind is str:
                size += len(part)  # type: ignore[arg-type]
            elif part_kind is int:
                if part.bit_length() > _MAX_INT_BITS:  # type: ignore[attr-defined]
                    raise ValueError(f"Family {family!r}: an int in a key must fit in {_MAX_INT_BITS} bits")
                size += _INT_CHARS
            else:
                raise TypeError(
                    f"Family {family!r}: the parts of a tuple key must be str or int "
                    f"(got a {part_kind.__name__:.40})"
                )
        if size > MAX_KEY_CHARS:
            raise _too_long(family, key)
        return parts  # type: ignore[return-value]
    raise TypeError(
        f"Family {family!r}: a key must be a str, an int or a tuple of them (got a {kind.__name__:.40}); "
        "convert it first, e.g. str(key)"
    )


def _too_long(family: str, key: object) -> ValueError:
    # Neither the key nor its start: a refused key is an attacker's text, and this
    # message may well be logged or sent back to them.
    return ValueError(
        f"Family {family!r}: a key may have at most {MAX_KEY_CHARS} characters "
        f"(got a {type(key).__name__} of more)"
    )


def shown_key(key: Hashable, limit: int = _SHOWN_KEY_CHARS) -> str:
    """A key as logs, events and ``status()`` show it: its repr, escaped, one line, bounded."""
    try:
        text = repr(key)
    except Exception:  # a checked key never gets here; a hostile one may have an odd repr
        text = f"<{type(key).__name__}>"
    return printable(text[: limit * 8], limit)
