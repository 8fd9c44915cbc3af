"""Durations: seconds, ``timedelta`` or strings like ``"90s"``, ``"5m"``, ``"1h30m"``."""

from __future__ import annotations

import math
import re
import sys
from typing import TYPE_CHECKING, TypeAlias, TypeGuard

from ._option_error import OptionTypeError, OptionValueError

if TYPE_CHECKING:
    from datetime import timedelta

Duration: TypeAlias = "int | float | timedelta | str"
"""What every duration option accepts: seconds, a ``timedelta`` or a string."""

_UNIT_SECONDS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
# Each unit at most once, largest first: "1h30m" yes, "30m1h" and "1s1s" no. ASCII
# digits only: "١h" is not a duration a person meant to write.
_GRAMMAR = re.compile(
    "-?" + "".join(rf"(?:(?P<{unit}>[0-9]+(?:\.[0-9]+)?){unit})?" for unit in _UNIT_SECONDS)
)
EXAMPLES = '"90s", "5m" or "1h30m"'
MAX_SECONDS = 100 * 365.25 * 86400
"""The longest duration (100 years, either sign): longer ones are mistakes, and dates
that far ahead overflow ``datetime`` (a status line, an expiry) later, far from the cause."""
_MAX_TEXT = 64  # "1d23h59m59.999s" is 15 characters: longer text is not a duration


def parse_duration(value: object) -> float:
    """Return ``value`` as seconds: finite, and at most `MAX_SECONDS` either way.

    Raises:
        TypeError: ``value`` is not a number, ``timedelta`` or string.
        ValueError: a string is not of the form ``"1h30m"``, or the duration is not
            finite or longer than 100 years. Nothing else, whatever ``value`` is.
    """
    if isinstance(value, bool):
        # bool is an int subclass: `every=True` is a mistake, not one second.
        raise TypeError(f"expected seconds, a timedelta or a string like {EXAMPLES} (got {_shown(value)})")
    try:
        if isinstance(value, int | float):
            seconds = float(value)
        elif _is_timedelta(value):
            seconds = value.total_seconds()
        elif isinstance(value, str):
            seconds = _parse_text(value)
        else:
            raise TypeError(
                f"expected seconds, a timedelta or a string like {EXAMPLES} (got {_shown(value)})"
            )
    except OverflowError:  # an int too large for a float: 10**400
        seconds = math.inf
    if not math.isfinite(seconds):
        raise ValueError(f"expected a finite duration (got {_shown(value)})")
    if abs(seconds) > MAX_SECONDS:
        raise ValueError(f"expected a duration of at most 100 years (got {_shown(value)})")
    return seconds


def _is_timedelta(value: object) -> TypeGuard[timedelta]:
    # A timedelta exists only once its module is imported: importing it here would
    # cost every app 2 ms at import time for the apps that pass one.
    datetime = sys.modules.get("datetime")
    return datetime is not None and isinstance(value, datetime.timedelta)


def _parse_text(value: str) -> float:
    text = value.strip().replace(" ", "").lower() if len(value) <= _MAX_TEXT else ""
    match = _GRAMMAR.fullmatch(text)
    if match is None or not any(match.groupdict().values()):
        raise ValueError(f"expected a duration like {EXAMPLES} (got {_shown(value)})")
    seconds = sum(float(number) * _UNIT_SECONDS[unit] for unit, number in match.groupdict().items() if number)
    return -seconds if text.startswith("-") else seconds


def _shown(value: object) -> str:
    """``value`` for a message: its repr, cut short (outside text may be huge)."""
    try:
        text = repr(value)
    except Exception:  # a repr that raises is still a value to refuse
        text = f"a {type(value).__name__}"
    return text if len(text) <= 40 else text[:39] + "…"


def positive_duration(owner: str, option: str, value: object) -> float:
    """Parse a duration option that must be > 0, with errors that name its owner.

    Raises:
        OptionTypeError: ``value`` is not a duration (``"<owner>: <option>: expected ..."``).
        OptionValueError: malformed, or not > 0 (``"<owner>: <option> must be > 0 (got ...)"``).
    """
    try:
        seconds = parse_duration(value)
    except TypeError as exc:
        raise OptionTypeError(owner, option, f"{option}: {exc}") from None
    except ValueError as exc:
        raise OptionValueError(owner, option, f"{option}: {exc}") from None
    if seconds <= 0:
        raise OptionValueError(owner, option, f"{option} must be > 0 (got {_shown(value)})")
    return seconds


def format_duration(seconds: float) -> str:
    """Return a short human form of ``seconds`` for messages: ``"1h30m"``, ``"2.5s"``."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    if seconds < 60 or seconds != int(seconds):
        return f"{seconds:g}s"
    whole = int(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, whole = divmod(whole, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
