"""Durations: seconds, ``timedelta`` or strings like ``"90s"``, ``"5m"``, ``"1h30m"``."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import TypeAlias

Duration: TypeAlias = "int | float | timedelta | str"
"""What every duration option accepts: seconds, a ``timedelta`` or a string."""

_UNIT_SECONDS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
# Each unit at most once, largest first: "1h30m" yes, "30m1h" and "1s1s" no.
_GRAMMAR = re.compile("-?" + "".join(rf"(?:(?P<{unit}>\d+(?:\.\d+)?){unit})?" for unit in _UNIT_SECONDS))
EXAMPLES = '"90s", "5m" or "1h30m"'


def parse_duration(value: object) -> float:
    """Return ``value`` as seconds.

    Raises:
        TypeError: ``value`` is not a number, ``timedelta`` or string.
        ValueError: a string is not of the form ``"1h30m"``, or the number is not finite.
    """
    if isinstance(value, bool):
        # bool is an int subclass: `every=True` is a mistake, not one second.
        raise TypeError(f"expected seconds, a timedelta or a string like {EXAMPLES} (got {value!r})")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, str):
        text = value.strip().replace(" ", "").lower()
        match = _GRAMMAR.fullmatch(text)
        if match is None or not any(match.groupdict().values()):
            raise ValueError(f"expected a duration like {EXAMPLES} (got {value!r})")
        seconds = sum(
            float(number) * _UNIT_SECONDS[unit] for unit, number in match.groupdict().items() if number
        )
        if text.startswith("-"):
            seconds = -seconds
    else:
        raise TypeError(f"expected seconds, a timedelta or a string like {EXAMPLES} (got {value!r})")
    if not math.isfinite(seconds):
        raise ValueError(f"expected a finite duration (got {value!r})")
    return seconds


def positive_duration(owner: str, option: str, value: object) -> float:
    """Parse a duration option that must be > 0, with errors that name its owner.

    Raises:
        TypeError: ``value`` is not a duration (``"<owner>: <option>: expected ..."``).
        ValueError: malformed, or not > 0 (``"<owner>: <option> must be > 0 (got ...)"``).
    """
    try:
        seconds = parse_duration(value)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{owner}: {option}: {exc}") from None
    if seconds <= 0:
        raise ValueError(f"{owner}: {option} must be > 0 (got {value!r})")
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
