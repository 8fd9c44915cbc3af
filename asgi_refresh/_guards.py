"""Change guards: hold back a fetched value that is valid but suspicious, before anyone serves it.

A guard is ``guard(old, new) -> None | str``: None lets ``new`` be published, a
string is the reason to hold it back (quarantine). The built-in ones cover the
common accidents (an upstream that suddenly returns an empty list, a config that
lost half its keys); write your own for the rest.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sized
from typing import Any

from asgi_refresh._text import printable

Guard = Callable[[Any, Any], "str | Awaitable[str | None] | None"]
"""``guard(old, new)``: None to publish ``new``, or the reason to hold it back. Sync or async."""

_LISTED_KEYS = 20  # keys added or removed named in a summary; the rest are counted
_KEY_CHARS = 60


class max_shrink:
    """Hold back a value that lost more than ``fraction`` of its length (a list, a dict, a string).

    ``max_shrink(0.5)`` holds back a list of 1,000 items that comes back with 400.
    Values without a length, and a change of type, are left to other guards.

    Args:
        fraction: How much of its length a value may lose in one refresh,
            ``0 < fraction < 1``.

    Raises:
        ValueError: ``fraction`` is out of range.
    """

    inline = True  # cheap and never blocks: run on the event loop, not in a thread

    def __init__(self, fraction: float) -> None:
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction < 1:
            raise ValueError(f"max_shrink: fraction must be between 0 and 1, like 0.5 (got {fraction!r})")
        self.fraction = float(fraction)

    def __call__(self, old: Any, new: Any) -> str | None:
        if not isinstance(old, Sized) or not isinstance(new, Sized) or type(old) is not type(new):
            return None
        before, after = len(old), len(new)
        if before and (before - after) / before > self.fraction:
            return (
                f"it shrank from {before} to {after} items ({(before - after) / before:.0%}), "
                f"more than max_shrink allows ({self.fraction:.0%})"
            )
        return None

    def __repr__(self) -> str:
        return f"max_shrink({self.fraction:g})"


class required_keys:
    """Hold back a mapping that lacks any of ``keys`` (or a value that is not a mapping at all).

    Raises:
        ValueError: no keys given.
    """

    inline = True

    def __init__(self, *keys: str) -> None:
        if not keys:
            raise ValueError("required_keys: name at least one key, like required_keys('prices')")
        self.keys = tuple(keys)

    def __call__(self, old: Any, new: Any) -> str | None:
        if not isinstance(new, Mapping):
            return f"it is {_kind(new)}, not a mapping with the required keys"
        missing = [key for key in self.keys if key not in new]
        if missing:
            shown = ", ".join(repr(printable(str(key), _KEY_CHARS)) for key in missing[:_LISTED_KEYS])
            return f"it lacks required keys: {shown}"
        return None

    def __repr__(self) -> str:
        return f"required_keys({', '.join(map(repr, self.keys))})"


def checked_guards(owner: str, guard: object) -> tuple[Guard, ...]:
    """``guard`` as a tuple of guards: None, one callable, or an iterable of them."""
    from asgi_refresh._option_error import OptionTypeError

    if guard is None:
        return ()
    guards = (guard,) if callable(guard) else guard
    if isinstance(guards, str | bytes) or not isinstance(guards, Iterable):
        raise OptionTypeError(
            owner,
            "guard",
            f"guard must be a callable guard(old, new) -> None | str, or a list of them (got {guard!r})",
        )
    checked = tuple(guards)
    for each in checked:
        if isinstance(each, type):
            raise OptionTypeError(
                owner,
                "guard",
                f"guard must be a guard, not the class {each.__name__}: call it, like "
                f"{each.__name__}(...) (got {each!r})",
            )
        if not callable(each):
            raise OptionTypeError(
                owner, "guard", f"guard must hold callables guard(old, new) -> None | str (got {each!r})"
            )
    return checked


def summarize(old: Any, new: Any) -> dict[str, Any]:
    """What changed between ``old`` and ``new``, without any value: types, sizes, keys added and removed."""
    summary: dict[str, Any] = {"old_type": _type(old), "new_type": _type(new)}
    summary["old_size"] = len(old) if isinstance(old, Sized) else None
    summary["new_size"] = len(new) if isinstance(new, Sized) else None
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        added = [key for key in new if key not in old]
        removed = [key for key in old if key not in new]
        summary["keys_added"] = [printable(str(key), _KEY_CHARS) for key in added[:_LISTED_KEYS]]
        summary["keys_removed"] = [printable(str(key), _KEY_CHARS) for key in removed[:_LISTED_KEYS]]
        summary["keys_added_count"] = len(added)
        summary["keys_removed_count"] = len(removed)
    return summary


def _type(value: Any) -> str:
    return type(value).__name__


def _kind(value: Any) -> str:
    return "None" if value is None else f"a {_type(value)}"
