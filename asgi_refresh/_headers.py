"""Reading the headers of an untrusted HTTP response: never raise, always bounded.

Every function here takes text that a server (or anything between it and us) chose,
and answers None, or a number within documented bounds, whatever that text is. A
header that cannot be read is ignored, or read the way RFC 9111 says a cache must
read it, so that a broken header never replaces a response's real outcome.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime

MAX_DELTA = 2**31
"""RFC 9111 §1.2.2: a delta-seconds too big to hold, or an overflow, counts as 2^31."""

_DIGITS = frozenset("0123456789")
_MAX_DATE_LENGTH = 64  # an IMF-fixdate is 29 characters, the longest valid form (RFC 850) 34
_MAX_DIRECTIVES = 64


def delta_seconds(value: str) -> int | None:
    """RFC 9111 ``delta-seconds`` (``1*DIGIT``): an int in ``[0, MAX_DELTA]``, or None.

    Only ASCII digits count (``str.isdigit`` accepts ``²`` and ``٣``); surrounding
    whitespace is allowed. A value too long to be smaller than `MAX_DELTA` is
    `MAX_DELTA` without being converted, so 5,000 digits cost nothing.
    """
    value = value.strip(" \t")
    if not value or not _DIGITS.issuperset(value):
        return None
    digits = value.lstrip("0") or "0"
    if len(digits) > len(str(MAX_DELTA)):
        return MAX_DELTA
    return min(int(digits), MAX_DELTA)


_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_MONTH = "(" + "|".join(_MONTHS) + ")"
_TIME = r"(\d\d):(\d\d):(\d\d)"
# RFC 9110 §5.6.7: IMF-fixdate, the obsolete RFC 850 form, and asctime. Matched in
# full (a date followed by anything else is no date); day of one or two digits and
# "UTC" for "GMT" are accepted, as servers send them. The weekday is not checked.
_IMF_FIXDATE = re.compile(rf"[a-z]{{3}}, (\d\d?) {_MONTH} (\d{{4}}) {_TIME} (?:gmt|utc)")
_RFC_850 = re.compile(rf"[a-z]{{6,9}}, (\d\d?)-{_MONTH}-(\d\d) {_TIME} (?:gmt|utc)")
_ASCTIME = re.compile(rf"[a-z]{{3}} {_MONTH} +(\d\d?) {_TIME} (\d{{4}})")


def http_date(value: str) -> float | None:
    """An HTTP date (IMF-fixdate, RFC 850 or asctime) as a POSIX timestamp, or None.

    Anything but one of those three forms, whole, is None, and so is a date that
    does not exist (31 February, hour 24) or falls outside the years 1 to 9999;
    every date is GMT, as RFC 9110 says. An RFC 850 two-digit year is 19yy from
    70 on, else 20yy. The result is finite.
    """
    text = value.strip(" \t").lower()
    if not text or len(text) > _MAX_DATE_LENGTH or not text.isascii():
        return None
    if match := _IMF_FIXDATE.fullmatch(text):
        day, month, year, hour, minute, second = match.groups()
    elif match := _RFC_850.fullmatch(text):
        day, month, short_year, hour, minute, second = match.groups()
        year = str((1900 if int(short_year) >= 70 else 2000) + int(short_year))
    elif match := _ASCTIME.fullmatch(text):
        month, day, hour, minute, second, year = match.groups()
    else:
        return None
    try:
        when = datetime(
            int(year), _MONTHS.index(month) + 1, int(day), int(hour), int(minute), int(second), tzinfo=UTC
        )
    except ValueError:
        return None
    return when.timestamp()


def retry_after(value: str | None, date: str | None, now: float, *, limit: float) -> float | None:
    """Seconds a ``Retry-After`` asks us to wait: in ``[0, limit]``, or None if unreadable.

    ``Retry-After`` is ``delay-seconds`` or an HTTP date. A date is read against
    the server's own ``Date`` when it sent a readable one (clocks disagree), else
    against ``now``. Negative numbers, fractions, non-ASCII digits and dates that
    are no dates are None: the caller's own backoff then applies.
    """
    if value is None:
        return None
    seconds: float | None = delta_seconds(value)
    if seconds is None:
        when = http_date(value)
        if when is None:
            return None
        seconds = when - (_date_or(date, now))
    return min(max(seconds, 0.0), limit)


def cache_directives(values: Iterable[str]) -> dict[str, str | None] | None:
    """``Cache-Control`` lines as ``{directive: argument}``, or None if a directive conflicts.

    Directive names are case-insensitive; an argument may be a token or a quoted
    string (which may hold commas). A directive repeated with another argument
    makes the result None: RFC 9111 §4.2.1 lets a cache then treat the response
    as stale, which is what the caller does. At most 64 directives are read.
    """
    directives: dict[str, str | None] = {}
    for name, argument in _directives(",".join(values)):
        if name in directives and directives[name] != argument:
            return None
        directives[name] = argument
        if len(directives) >= _MAX_DIRECTIVES:
            break
    return directives


def _directives(text: str) -> Iterable[tuple[str, str | None]]:
    # One pass, each search bounded by the next comma: a header of 16 kB of commas
    # costs 16 kB of work, not its square.
    position, end = 0, len(text)
    while position < end:
        comma = text.find(",", position)
        stop = end if comma == -1 else comma
        equals = text.find("=", position, stop)
        if equals == -1:
            name, argument = text[position:stop], None
            position = stop + 1
        else:
            name, start = text[position:equals], equals + 1
            while start < stop and text[start] in " \t":
                start += 1
            if start < stop and text[start] == '"':  # a quoted string may hold commas
                argument, after = _quoted(text, start + 1)
                comma = text.find(",", after)
                position = end if comma == -1 else comma + 1
            else:
                argument = text[start:stop].strip(" \t")
                position = stop + 1
        name = name.strip(" \t").lower()
        if name:
            yield name, argument


def _quoted(text: str, position: int) -> tuple[str, int]:
    """The quoted string starting after its opening quote, and where it ends."""
    characters = []
    while position < len(text):
        character = text[position]
        if character == "\\" and position + 1 < len(text):
            characters.append(text[position + 1])
            position += 2
            continue
        if character == '"':
            return "".join(characters), position + 1
        characters.append(character)
        position += 1
    return "".join(characters), position


def freshness_lifetime(
    cache_control: Iterable[str],
    expires: str | None,
    date: str | None,
    age: str | None,
    now: float,
) -> float | None:
    """Seconds a response stays fresh (RFC 9111 §4.2), or None if the server did not say.

    ``no-store``/``no-cache`` mean 0; so do an invalid or conflicting ``max-age``
    and an invalid ``Expires`` (``Expires: 0`` is the common one), as RFC 9111 says.
    ``max-age`` wins over ``Expires``; ``Age`` is subtracted from either, and is
    ignored when it is not ``delta-seconds``. The result is in ``[0, MAX_DELTA]``.
    """
    directives = cache_directives(cache_control)
    if directives is None:
        return 0.0
    if "no-store" in directives or "no-cache" in directives:
        return 0.0
    if "max-age" in directives:
        max_age = delta_seconds(directives["max-age"] or "")
        if max_age is None:
            return 0.0
        lifetime: float = max_age
    elif expires is not None:
        when = http_date(expires)
        if when is None:
            return 0.0
        lifetime = when - _date_or(date, now)
    else:
        return None
    current_age = delta_seconds(age) if age is not None else None
    return min(max(lifetime - (current_age or 0), 0.0), float(MAX_DELTA))


def content_length(value: str | None) -> int | None:
    """A ``Content-Length`` as an int, or None if absent or unreadable.

    A list of identical values (``42, 42``: a proxy merged two lines) is that
    value, as RFC 9110 §8.6 allows; a list of different values is None. A huge
    number is capped at 2^63 without being converted in full.
    """
    if value is None:
        return None
    values = {part.strip(" \t") for part in value.split(",")}
    if len(values) != 1:
        return None
    (number,) = values
    if not number or not _DIGITS.issuperset(number):
        return None
    digits = number.lstrip("0") or "0"
    return 2**63 if len(digits) > 19 else min(int(digits), 2**63)


def _date_or(date: str | None, now: float) -> float:
    when = http_date(date) if date is not None else None
    return now if when is None else when
