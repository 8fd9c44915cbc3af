"""The records a backend holds, checked field by field: everything read from a backend is untrusted.

The parsers here turn what a backend read (bytes, text, numbers) into `Stored`
and `Head`, checking types, ranges and sizes, and raise `BadRecord` naming the
field that is wrong. Every built-in backend uses them; a backend of your own
should too.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import socket
from collections.abc import Mapping
from typing import Any

from asgi_refresh._cluster.base import BadRecord, Head, MetaValue, Stored
from asgi_refresh._option_error import OptionValueError
from asgi_refresh._text import printable

MAX_META_BYTES = 64 * 1024  # the fetch metadata is a few small fields: an ETag, a few numbers
MAX_OWNER_CHARS = 256  # ``host:pid:random``; a hostname is at most 253 characters
MAX_FIELD_BYTES = 32  # a counter or a timestamp, as text
MAX_COUNT = 10**15 - 1  # versions and request numbers: 15 digits, exact as a Lua number (a double)
# Timestamps are seconds since the epoch; anything past this (year 5138) is not one.
MAX_TIMESTAMP = 1e11


def encode_meta(meta: Mapping[str, MetaValue]) -> str:
    """``meta`` as JSON text; a `TypeError` naming the bad entry if it is not JSON."""
    for key, value in meta.items():
        if not isinstance(key, str) or not (value is None or isinstance(value, str | int | float | bool)):
            raise TypeError(
                f"meta must map str to str, int, float, bool or None (got {key!r}: {type(value).__name__})"
            )
    return json.dumps(dict(meta), separators=(",", ":"))


def decode_meta(raw: object) -> dict[str, MetaValue]:
    """What `encode_meta` made, checked: a `BadRecord` for anything else.

    An object of at most `MAX_META_BYTES` whose values are strings, booleans,
    None, integers within a double's exact range or finite floats.
    """
    text = _text("meta", raw, MAX_META_BYTES)
    try:
        decoded = json.loads(
            text, parse_constant=_no_constant, parse_int=_bounded_int, parse_float=_finite_float
        )
    except BadRecord:
        raise
    except (ValueError, RecursionError) as exc:
        raise BadRecord(f"meta is not JSON ({type(exc).__name__})") from None
    if not isinstance(decoded, dict):
        raise BadRecord(f"meta must be a JSON object (got {_json_kind(decoded)})")
    for key, value in decoded.items():
        if not (value is None or isinstance(value, str | int | float | bool)):
            raise BadRecord(f"meta[{printable(key, 40)!r}] must be a string, number, boolean or null")
    return decoded


def _no_constant(name: str) -> Any:
    raise BadRecord(f"meta holds {name}, which is not a number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses as inf
        raise BadRecord("meta holds a number out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 16:  # also spares int() a quadratic parse of a huge number
        raise BadRecord("meta holds an integer out of range")
    return int(text)


def _json_kind(value: object) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _text(what: str, raw: object, limit: int) -> str:
    """``raw`` as text: a str, or bytes that are UTF-8; at most ``limit`` bytes."""
    if isinstance(raw, bytes | bytearray | memoryview):
        if len(raw) > limit:
            raise BadRecord(f"{what} is {len(raw)} bytes (at most {limit})")
        try:
            return bytes(raw).decode()
        except UnicodeDecodeError:
            raise BadRecord(f"{what} is not UTF-8 text") from None
    if isinstance(raw, str):
        if len(raw) > limit:
            raise BadRecord(f"{what} is {len(raw)} characters (at most {limit})")
        return raw
    raise BadRecord(f"{what} must be text (got {_kind(raw)})")


# Written as Redis writes an integer (no sign, no leading zero): the only form Redis's
# HINCRBY counts on, so the scripts and this parser agree on what a counter is.
_COUNT = re.compile(r"0|[1-9][0-9]{0,14}")
_NUMBER = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?")  # what the backends write: digits, a point, digits


def parse_count(what: str, raw: object) -> int:
    """A version or request number as a backend holds it: 0 to `MAX_COUNT`; else `BadRecord`."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, bytes | str):
        text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
        if _COUNT.fullmatch(text) is None:
            raise BadRecord(f"{what} must be a whole number of at most 15 digits, without leading zeros")
        value = int(text)
    else:
        raise BadRecord(f"{what} must be a whole number (got {_kind(raw)})")
    if not 0 <= value <= MAX_COUNT:
        raise BadRecord(f"{what} is out of range (0 to {MAX_COUNT})")
    return value


def parse_timestamp(what: str, raw: object) -> float:
    """Seconds since the epoch as a backend holds them: finite, 0 to `MAX_TIMESTAMP`; else `BadRecord`."""
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        value = float(raw)
    elif isinstance(raw, bytes | str):
        text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
        if _NUMBER.fullmatch(text) is None:
            raise BadRecord(f"{what} must be a number of seconds since the epoch")
        value = float(text)
    else:
        raise BadRecord(f"{what} must be a number (got {_kind(raw)})")
    if not (math.isfinite(value) and 0 <= value <= MAX_TIMESTAMP):
        raise BadRecord(f"{what} is not a time (seconds since the epoch)")
    return value


def parse_owner(raw: object) -> str:
    """Who stored a value: printable text of at most `MAX_OWNER_CHARS`; else `BadRecord`."""
    text = _text("stored_by", raw, MAX_OWNER_CHARS * 4)
    if not text or len(text) > MAX_OWNER_CHARS or printable(text) != text:
        raise BadRecord(f"stored_by must be printable text of 1 to {MAX_OWNER_CHARS} characters")
    return text


def parse_data(raw: object, max_bytes: int) -> bytes:
    """The stored value's bytes: binary, at most ``max_bytes``; else `BadRecord`."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise BadRecord(f"data must be bytes (got {_kind(raw)})")
    if len(raw) > max_bytes:
        raise BadRecord(
            f"data is {len(raw)} bytes, over max_bytes ({max_bytes}); raise max_bytes if that is right"
        )
    return bytes(raw)


def parse_stored(fields: Mapping[str, object], *, max_bytes: int, time: float | None = None) -> Stored | None:
    """A `Stored` from the raw fields of one entry, each checked; None if nothing is stored.

    ``fields`` maps ``version``, ``data``, ``meta``, ``stored_at``, ``stored_by``
    and ``answered`` to what the backend read (bytes, str, int, float or None for
    a missing field). An entry without ``version`` and ``data`` holds only
    refresh-now counters: nothing is stored. Raises `BadRecord` naming the first
    field that is wrong.
    """
    version, data = fields.get("version"), fields.get("data")
    if data is None and version in (None, 0, b"0", "0"):
        return None
    for required in ("version", "data", "meta", "stored_at", "stored_by"):
        if fields.get(required) is None:
            raise BadRecord(f"{required} is missing")
    answered = fields.get("answered")
    return Stored(
        version=parse_count("version", version),
        data=parse_data(data, max_bytes),
        meta=decode_meta(fields["meta"]),
        stored_at=parse_timestamp("stored_at", fields["stored_at"]),
        stored_by=parse_owner(fields["stored_by"]),
        answered=0 if answered is None else parse_count("answered", answered),
        time=time,
    )


def parse_head(version: object, requested: object, answered: object, *, time: float | None = None) -> Head:
    """A `Head` from the raw counters of one entry (None for a missing one), each checked."""
    number = None if version is None else parse_count("version", version)
    return Head(
        version=number or None,  # 0: only refresh-now counters, nothing stored
        requested=0 if requested is None else parse_count("requested", requested),
        answered=0 if answered is None else parse_count("answered", answered),
        time=time,
    )


def _kind(value: object) -> str:
    return type(value).__name__


def new_owner() -> str:
    """An owner id that says where it runs: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(6)}"


def check_prefix(prefix: str) -> str:
    """``prefix`` if it is usable as a namespace; a clear `ValueError` if not."""
    if not isinstance(prefix, str) or not prefix or any(char.isspace() for char in prefix):
        raise OptionValueError(
            "", "prefix", f"prefix must be a non-empty string without whitespace (got {prefix!r})"
        )
    return prefix


def check_max_bytes(owner: str, max_bytes: object) -> int:
    """``max_bytes`` if it is a positive number of bytes; a clear `ValueError` if not."""
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
        raise OptionValueError(
            owner, "max_bytes", f"max_bytes must be a positive number of bytes (got {max_bytes!r})"
        )
    return max_bytes


def check_name(name: str) -> str:
    """``name`` if it is a refresher name (an identifier); a clear `ValueError` if not."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a coordinated name must be a refresher name, a Python identifier (got {name!r})")
    return name
