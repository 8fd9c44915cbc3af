"""Turning a fetched body into a value: parse, validate, and errors that say where."""

from __future__ import annotations

import hashlib
import json
import time
import tomllib
from collections.abc import Callable
from typing import Any, Literal, TypeAlias

import anyio.lowlevel

from asgi_refresh._option_error import OptionTypeError, OptionValueError
from asgi_refresh._sources import incremental
from asgi_refresh._sources.context import SourceContext
from asgi_refresh._sources.outcome import Fresh, SourceError
from asgi_refresh._text import printable

Format: TypeAlias = "Literal['json', 'toml', 'text', 'bytes'] | Callable[[bytes], Any]"
"""How a body becomes a value: a format name, or a callable that takes the raw bytes."""

Validate: TypeAlias = "Callable[[Any], Any]"

FORMATS = ("json", "toml", "text", "bytes")
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
"""The largest document a source takes unless told otherwise (``max_bytes``)."""

_FORMAT_TYPES: dict[str, type] = {"toml": dict, "text": str, "bytes": bytes}  # json: any JSON value
# Parsing a big document on the event loop would stall every request meanwhile.
THREAD_THRESHOLD = 64 * 1024
_BUSY = 0.001  # seconds of incremental parsing at most before the event loop gets a turn


async def digest(context: SourceContext, body: bytes) -> bytes:
    """A hash of ``body`` to tell an unchanged document without parsing it.

    Big bodies are hashed in a thread: hashlib lets go of the GIL while it works,
    so the event loop runs on meanwhile.
    """
    if len(body) < THREAD_THRESHOLD:
        return blake2b(body)
    return await context.run_in_thread(lambda: blake2b(body))


def max_bytes_option(owner: str, max_bytes: object) -> int:
    """``max_bytes`` checked: a positive int (not a bool).

    Raises:
        ValueError: it is anything else.
    """
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
        raise OptionValueError(
            owner, "max_bytes", f"max_bytes must be a positive number of bytes (got {max_bytes!r})"
        )
    return max_bytes


def too_big(where: str, max_bytes: int, detail: str, what: str = "response body") -> SourceError:
    """The error for a document past ``max_bytes``, saying what to do about it."""
    return SourceError(
        f"{where}: {what} exceeds max_bytes ({max_bytes} bytes; {detail}); "
        "raise max_bytes if the document really is that big"
    )


def blake2b(data: bytes) -> bytes:
    """The content hash both sources use: 128 bits of BLAKE2b."""
    return hashlib.blake2b(data, digest_size=16).digest()


class Parser:
    """Parse then validate a body, off the event loop when it is big."""

    def __init__(self, owner: str, option: str, format: Format, validate: Validate | None) -> None:
        if not callable(format) and format not in FORMATS:
            raise OptionValueError(
                owner,
                option,
                f"{option} must be one of {', '.join(map(repr, FORMATS))} or a callable that "
                f"takes the body's bytes (got {format!r})",
            )
        if validate is not None and not callable(validate):
            raise OptionTypeError(
                owner,
                "validate",
                "validate must be a callable that returns the value or raises, such as "
                f"pydantic.TypeAdapter(list[str]).validate_python (got {validate!r})",
            )
        self.format = format
        self.validate = validate

    async def __call__(
        self, context: SourceContext, body: bytes, where: str, encoding: str | None = None
    ) -> Any:
        """The value of ``body``; raises `SourceError` naming ``where`` if it is unusable."""
        if len(body) < THREAD_THRESHOLD:
            return self._value(body, where, encoding)
        if self.format == "json" and incremental.available():
            try:
                value = await _parse_incrementally(body)
            except incremental.Fallback:
                pass  # json.loads decides: the same value, or its error with line and column
            else:
                if self.validate is None:
                    return value
                return await context.run_in_thread(lambda: self._checked(value, where))
        return await context.run_in_thread(lambda: self._value(body, where, encoding))

    def _value(self, body: bytes, where: str, encoding: str | None) -> Any:
        try:
            value = self._parse(body, encoding or "utf-8")
        except Exception as exc:
            if isinstance(self.format, str):
                raise SourceError(f"{where}: invalid {self.format}: {_reason(exc)}") from None
            # A third-party parser's message may quote the document (yaml does): its
            # type and position only.
            raise SourceError(f"{where}: the parse function raised {_kind_and_position(exc)}") from None
        return self._checked(value, where)

    def _checked(self, value: Any, where: str) -> Any:
        """A parsed ``value`` through ``validate``, if there is one."""
        if self.validate is None:
            return value
        if isinstance(value, Fresh):  # a token parser: validate what it wraps
            return Fresh(
                self._validated(value.value, where), expires_in=value.expires_in, leeway=value.leeway
            )
        return self._validated(value, where)

    def check(self, value: Any, where: str) -> Any:
        """``value`` as ``validate`` returns it, for a value that was parsed elsewhere.

        A value that another process stored is untrusted input: it gets the same
        checks as a body fetched here, short of parsing (the type the format
        produces, then ``validate``). Raises `SourceError` naming ``where``.
        """
        expected = _FORMAT_TYPES.get(self.format) if isinstance(self.format, str) else None
        if expected is not None and not isinstance(value, expected):
            raise SourceError(
                f"{where}: a {self.format} value must be {expected.__name__} (got {type(value).__name__})"
            )
        return value if self.validate is None else self._validated(value, where)

    def _parse(self, body: bytes, encoding: str) -> Any:
        if self.format == "json":
            return json.loads(body)  # detects UTF-8/16/32 itself
        if self.format == "toml":
            return tomllib.loads(body.decode("utf-8"))
        if self.format == "text":
            return body.decode(encoding)
        if self.format == "bytes":
            return body
        assert callable(self.format)
        return self.format(body)

    def _validated(self, value: Any, where: str) -> Any:
        assert self.validate is not None
        try:
            valid = self.validate(value)
        except Exception as exc:
            raise SourceError(f"{where}: validation failed: {_reason(exc)}") from None
        if valid is None and value is not None:
            raise SourceError(
                f"{where}: validate returned None; it must return the (possibly converted) value "
                "or raise, e.g. `lambda v: (check(v), v)[1]` for a checker that returns nothing"
            )
        return valid


async def _parse_incrementally(body: bytes) -> Any:
    """``body``'s JSON value, built a slice at a time with the event loop's turns between.

    Raises:
        incremental.Fallback: ``json.loads`` must parse it instead.
    """
    parser = incremental.IncrementalJSON(body)
    busy_since = time.perf_counter()
    for start in range(0, len(body), incremental.SLICE):
        parser.feed(start, start + incremental.SLICE)
        if time.perf_counter() - busy_since > _BUSY:
            await anyio.lowlevel.checkpoint()
            busy_since = time.perf_counter()
    return parser.close()


def _kind_and_position(exc: Exception) -> str:
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:  # yaml counts from 0
        line, column = getattr(mark, "line", -1) + 1, getattr(mark, "column", -1) + 1
    else:  # json and toml style, from 1
        line, column = getattr(exc, "lineno", None), getattr(exc, "colno", None)
    where = f" at line {line}, column {column}" if isinstance(line, int) and isinstance(column, int) else ""
    return f"{type(exc).__name__}{where} (its message is not shown: it may quote the document)"


def _reason(exc: Exception) -> str:
    """The exception in one line, without the input when the library can leave it out."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        # pydantic's ValidationError: its str() quotes the offending input, which
        # may be the secret we are loading; its errors() can leave it out.
        try:
            details = errors(include_url=False, include_input=False)
        except TypeError:
            details = None
        if isinstance(details, list) and details:
            parts = [
                f"{'.'.join(map(str, item.get('loc', ()))) or '(root)'}: {item.get('msg', '?')}"
                for item in details[:5]
                if isinstance(item, dict)
            ]
            more = f" (and {len(details) - 5} more)" if len(details) > 5 else ""
            return f"{type(exc).__name__}: " + "; ".join(parts) + more
    text = printable(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
